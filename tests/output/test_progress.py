"""Progress a person can follow: off a terminal, lines with the step, percent and time left."""
from __future__ import annotations

import io
import time

import pytest

from superweight.output.console import Lines
from superweight.progress import expect, progress_of, reporting


class Clock:
    """A fake monotonic clock: ``clock.at(t)`` moves it."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def _stamp(line: str) -> float:
    return float(line.split("[", 1)[1].split("s]", 1)[0])


def _percents(lines: list[str]) -> list[int]:
    return [int(ln.split("] ")[-1].split("%")[0]) for ln in lines if "%" in ln]


def test_off_a_terminal_a_lasting_step_prints_its_percent_and_time_left():
    out, clock = io.StringIO(), Clock()
    log = Lines(out, every=0.0, first=0.0, clock=clock, t0=0.0)
    with reporting(log):
        log("zeroing 3 candidate(s) on real text")
        clock.t = 1.0
        progress_of()(1, 4)  # what passes.run reports after each batched pass
        clock.t = 2.0
        progress_of()(4, 4)
    lines = _lines(out)
    assert lines[0] == "superweight: [    0 s] zeroing 3 candidate(s) on real text"
    assert lines[1].endswith("] 25%, about 3 s left")
    assert "] 100%" in lines[2]


def test_the_first_line_comes_within_two_seconds_and_then_one_every_five_while_a_step_runs():
    """Issue 40: a fake long step with no report at all (a conversion's first tensor, a long
    pass): the heartbeat's ticks say it every 5 s, with the time it has run; the first line
    of the run within 2 s of its start."""
    out, clock = io.StringIO(), Clock()
    log = Lines(out, clock=clock, t0=0.0)
    log("superweight detect: starting")
    for k in range(1, 241):  # 60 s of ticks, four a second, as the heartbeat thread calls them
        clock.t = k / 4
        if k == 6:
            log("loading model")
        log.tick()
    lines = _lines(out)
    stamps = [_stamp(ln) for ln in lines]
    assert stamps[0] <= 2 and "starting" in lines[0]
    assert all(b - a <= 6 for a, b in zip(stamps, stamps[1:])) and stamps[-1] >= 55  # 5 s, stamps in whole seconds
    assert lines[1].endswith("loading model") and "(running " in lines[-1]


def test_a_steps_percent_never_goes_down():
    """A step of several runs: declared (``expect``), the runs add up; undeclared, each new
    run is a new part with its own label (the stopword shift's backwards 93% -> 20%)."""
    out, clock = io.StringIO(), Clock()
    log = Lines(out, every=0.0, first=0.0, clock=clock, t0=0.0)
    with reporting(log):
        log("stopword shift over 50 LAMBADA prompts")
        expect(14)
        for run in range(4):  # runs of 4, 3 groups... as mean_next_token makes them
            for done in range(1, 4 if run % 2 else 5):
                clock.t += 1
                progress_of()(done, 3 if run % 2 else 4)
        log("zeroing 2 control set(s) on real text")
        for run in range(2):
            for done in (1, 2):
                clock.t += 1
                progress_of()(done, 2)
    lines = _lines(out)
    shift = [ln for ln in lines if "stopword" in ln]
    assert _percents(shift) == sorted(_percents(shift)) and _percents(shift)[-1] == 100
    ctl = [ln for ln in lines if "control" in ln]
    assert any("(part 2)" in ln for ln in ctl)
    for part in ("sets on real text  [", "(part 2)  ["):
        ps = _percents([ln for ln in ctl if part in ln.replace("set(s)", "sets")])
        assert ps == sorted(ps) and ps


def test_a_quick_command_or_an_early_error_prints_nothing():
    out, clock = io.StringIO(), Clock()
    log = Lines(out, clock=clock, t0=0.0)  # nothing in the run's first second
    log("loading model")
    clock.t = 0.5
    log.layer(3, 30)
    log("scanning")
    log.tick()
    assert out.getvalue() == ""
    assert progress_of()(1, 2) is None  # no reporter outside ``reporting``: nothing happens


def test_superweight_progress_off_and_false_print_nothing(monkeypatch, capsys):
    from superweight.output.console import status_line

    for word in ("off", "false", "0"):
        monkeypatch.setenv("SUPERWEIGHT_PROGRESS", word)
        err = io.StringIO()
        with status_line(None, False, stream=err) as log:
            log.t0 = -10.0
            log("a step")
            log.tick()
        assert err.getvalue() == ""


def test_a_gguf_conversion_reports_its_own_percent(tmp_path):
    """The conversion says how far it is, tensor by tensor, up to 100%."""
    from tiny import tiny_moe_gguf

    import superweight as sw
    from superweight.models.convert import convert_gguf

    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0)
    seen = []
    (tmp_path / "out").mkdir()
    with reporting(lambda done, total: seen.append((done, total))):
        convert_gguf(f, tmp_path / "out")
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] > 3
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


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
