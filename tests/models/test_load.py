"""The loader (models/load.py): what it is handed, and how it says what is wrong, in one line."""
from __future__ import annotations

import numpy as np
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


def _same_reading(a, b) -> None:
    assert list(a.fields) == list(b.fields)
    for k, fa in a.fields.items():
        fb = b.fields[k]
        assert (fa.types, fa.data, fa.offset) == (fb.types, fb.data, fb.offset), k
        assert len(fa.parts) == len(fb.parts), k
        assert all(x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y) for x, y in zip(fa.parts, fb.parts)), k
        assert fa.contents() == fb.contents(), k
    assert [(t.name, t.tensor_type, t.data.shape, t.data_offset) for t in a.tensors] == \
           [(t.name, t.tensor_type, t.data.shape, t.data_offset) for t in b.tensors]
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a.tensors, b.tensors))


def test_our_gguf_reader_reads_what_the_stock_reader_reads(tmp_path):
    """``gguf_file.reader`` (fast metadata) against ``gguf.GGUFReader``: every field, part,
    type and tensor the same, on the real SmolLM2 file (49k-word vocabulary and merges) and
    on a file with empty and numeric arrays, a string array and a float scalar."""
    import gguf

    from superweight.models import gguf_file, pypi

    real = pypi.smollm2_path()
    _same_reading(gguf_file.reader(real), gguf.GGUFReader(str(real)))
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_array("t.empty", [])
    w.add_array("t.ints", [3, 1, 4])
    w.add_array("t.words", ["a", "", "ünï"])
    w.add_float32("t.x", 0.5)
    w.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _same_reading(gguf_file.reader(tmp_path / "m.gguf"), gguf.GGUFReader(str(tmp_path / "m.gguf")))


def test_transformers_reads_gguf_through_our_reader_only_inside_the_block():
    """``faster_gguf``: our reader and one name map per architecture inside; gguf's own after,
    also when the block raises."""
    import gguf

    from superweight.models.gguf_file import faster_gguf

    stock, maps = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError):
        with faster_gguf():
            assert issubclass(gguf.GGUFReader, stock) and gguf.GGUFReader is not stock
            arch = gguf.MODEL_ARCH.LLAMA
            assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
            raise RuntimeError
    assert gguf.GGUFReader is stock and gguf.get_tensor_name_map is maps
    assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is not gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)


@pytest.mark.parametrize("key, value, said", [("num_hidden_layers", 10**9, "config.json says 1,000,000,000 decoder layers"),
                                              ("hidden_size", 4096, "config.json says a hidden size of 4,096")])
def test_a_config_that_disagrees_with_its_weights_is_refused_before_torch_is_imported(tmp_path, key, value, said):
    """Issue 42, reproduction 4: a config.json claiming 10^9 layers ran silently for minutes.
    The config is compared with the safetensors headers before anything is built, in the
    command's first fraction of a second: one line, exit 2, torch not even imported."""
    import json
    import subprocess
    import sys

    from tiny import tiny_model

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    code = ("import sys\nfrom superweight.cli import main\n"
            f"code = main(['detect', {str(tmp_path / 'm')!r}])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "SUPERWEIGHT_VERDICTS": "off"})
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("superweight: error:")]
    assert p.returncode == 2 and len(lines) == 1 and said in lines[0], p.stderr


def test_a_gguf_whose_metadata_claims_more_blocks_than_its_tensors_is_refused_before_its_config(tmp_path, cli_here,
                                                                                            error_line, monkeypatch):
    """Issue 42, item 3 for GGUF files: the metadata's block count against the tensor table,
    before transformers makes a config of it (10^9 blocks took its config alone 13 s), on the
    converting path and on the streamed one."""
    from tiny import tiny_moe_gguf

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0, blocks=10**9)
    said = "its metadata says 1,000,000,000 blocks, its tensors hold 3"
    error_line(cli_here("detect", str(f), "--no-stream"), said)
    error_line(cli_here("edit", str(f), "--zero", "1:3:5:2", "--out", str(tmp_path / "e")), said)
    assert not (tmp_path / "e").exists()
