"""The loader (models/load.py): what it is handed, and how it says what is wrong, in one line."""
from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

import superweight as sw
from superweight.models.load import check_device, resolve_dtype


def test_dtypes_resolve_by_name_and_device():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 and resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype(torch.float64, "cpu") == torch.float64
    with pytest.raises(sw.UsageError, match="int8"):
        resolve_dtype("int8", "cpu")


def test_a_device_this_machine_lacks_is_refused_before_any_work():
    check_device("cpu")
    for bad, said in (("banana", "is not a torch device"), ("cuda:7", "cuda:7")):
        with pytest.raises(sw.SuperweightError, match=said):
            check_device(bad)


@pytest.mark.parametrize("exc, want, never", [
    (KeyError("added_tokens"), "missing: 'added_tokens'", None),
    (RuntimeError("Weights only load failed. ... set `weights_only=False` ..."), "never runs their code", "False"),
    (ValueError("Couldn't instantiate the backend tokenizer from one of:\n(1) a file\n(2) another"),
     "(1) a file", None),
])
def test_library_errors_become_one_actionable_line(exc, want, never):
    from superweight.errors import first_line

    line = first_line(exc)
    assert want in line and "\n" not in line
    assert never is None or never not in line



# -- issue 24: what the loader is handed
@pytest.fixture
def alarm():
    """A hang becomes a failure after 30 s instead of a stuck run (a FIFO blocks its reader)."""
    import signal

    def hung(*_):
        raise TimeoutError("the command hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_is_refused_before_it_is_opened(tmp_path, cli_here, error_line, alarm):
    import os
    import shutil

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    error_line(cli_here("detect", str(fifo)), f"{fifo} is a FIFO, not a regular file")
    d = tmp_path / "M"
    d.mkdir()
    lm = tiny_model("llama")
    lm.model.config.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    os.mkfifo(d / "model.safetensors")
    for args in (["detect", str(d)], ["edit", str(d), "--zero", "1:1:1", "--out", str(tmp_path / "E")]):
        error_line(cli_here(*args), f"{d / 'model.safetensors'} is a FIFO, not a regular file")
    assert not (tmp_path / "E").exists()
    shutil.rmtree(d)


def test_a_damaged_gguf_header_is_named_as_such(tmp_path, cli_here, error_line, monkeypatch):
    """Streamed, transformers would fall back to reading the file as JSON and say so."""
    import struct

    from tiny import tiny_moe_gguf

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "good.gguf"
    tiny_moe_gguf(good, sw.Coord(1, 3, 5, 2), 400.0)
    data = bytearray(good.read_bytes())
    data[16:24] = struct.pack("<Q", 10**12)  # the key count: far past the file
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    for args in (["detect", str(bad), "--stream"], ["edit", str(bad), "--zero", "1:3:5:2", "--out", str(tmp_path / "E")]):
        proc = cli_here(*args)
        error_line(proc, f"cannot read GGUF file {bad}: its header is damaged or truncated")
        assert "JSON" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "cache", "good.gguf"]
