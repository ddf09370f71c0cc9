"""Progress a person can follow: off a terminal, lines with the step, percent and time left."""
from __future__ import annotations

import io
import time

import pytest

from superweight.output.console import Lines
from superweight.probe.progress import progress_of, reporting


def test_off_a_terminal_a_lasting_step_prints_its_percent_and_time_left():
    out = io.StringIO()
    log = Lines(out, first=0.0, every=0.0)
    with reporting(log.step):
        log("zeroing 3 candidate(s) on real text")
        time.sleep(0.01)
        progress_of()(1, 4)  # what passes.run reports after each batched pass
        progress_of()(4, 4)
        progress_of()(2, 4)  # a second run in the same step: counted with the first
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("superweight: [") and lines[0].endswith("] zeroing 3 candidate(s) on real text")
    assert "25%, about " in lines[1] and lines[1].endswith(" left")
    assert "] 100%" in lines[2]
    assert "] 75%" in lines[3]  # 6 of 8 groups


def test_a_quick_step_or_an_early_error_prints_nothing():
    out = io.StringIO()
    log = Lines(out)  # lines only once a step has lasted 2 s
    log("loading model")
    log.layer(3, 30)
    log("scanning")
    assert out.getvalue() == ""
    assert progress_of()(1, 2) is None  # no reporter outside ``reporting``: nothing happens


@pytest.mark.slow  # the command in a fresh process
def test_detect_off_a_terminal_prints_its_steps_with_percent_to_stderr(tmp_path, monkeypatch):
    """The command itself, its output sent to a file: stderr follows the proof step by step
    (SUPERWEIGHT_PROGRESS=all: every update, unthrottled), stdout keeps only the JSON."""
    import json
    import os
    import subprocess
    import sys

    from tiny import plant, tiny_model

    import superweight as sw

    lm = tiny_model("llama")
    plant(lm, sw.Coord(1, 5, 7), 400)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    env = {**os.environ, "SUPERWEIGHT_PROGRESS": "all", "SUPERWEIGHT_VERDICTS": "off"}
    p = subprocess.run([sys.executable, "-m", "superweight.cli", "detect", str(tmp_path / "m"), "--window", "32",
                        "--json", "-"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["model"] == str(tmp_path / "m")
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("superweight: [")]
    assert any("round 1: scanning" in ln for ln in lines)
    assert any("zeroing" in ln and "%" in ln for ln in lines), p.stderr
    assert any("left" in ln for ln in lines) and any("100%" in ln for ln in lines)
