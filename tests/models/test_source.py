"""Resolving a model reference before anything is built, and naming its content."""
from __future__ import annotations

import json

import pytest

from superweight.errors import ModelLoadError
from superweight.models.source import dir_fingerprint, dtype_name, resolve


def _model_dir(tmp_path):
    d = tmp_path / "m"
    (d / "shards").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / ".extra.json").write_text("{}")
    (d / "shards" / ".part-1.safetensors").write_bytes(b"one")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "shards/.part-1.safetensors"}}))
    (d / "README.md").write_text("docs")
    return d


@pytest.mark.parametrize("change", ["hidden shard in a subfolder", "hidden top-level file", "config"])
def test_the_fingerprint_covers_every_file_the_loader_reads(tmp_path, change):
    d = _model_dir(tmp_path)
    before = dir_fingerprint(d)
    assert before is not None
    target = {"hidden shard in a subfolder": d / "shards" / ".part-1.safetensors",
              "hidden top-level file": d / ".extra.json", "config": d / "config.json"}[change]
    target.write_bytes(target.read_bytes() + b" ")
    assert dir_fingerprint(d) != before


def test_documentation_and_unlisted_subfolders_do_not_change_it(tmp_path):
    d = _model_dir(tmp_path)
    before = dir_fingerprint(d)
    (d / "README.md").write_text("other docs")
    (d / "original").mkdir()
    (d / "original" / "consolidated.pth").write_bytes(b"not read by the loader")
    assert dir_fingerprint(d) == before


def test_references_resolve_without_loading(tmp_path):
    d = _model_dir(tmp_path)
    s = resolve(str(d))
    assert s.path == d and s.name == str(d) and s.index_id is None
    hub = resolve("org/name")
    assert hub.path is None and hub.index_id == "org/name"
    assert resolve(str(d), index_id="org/base").index_id == "org/base"
    with pytest.raises(ModelLoadError, match="no such file"):
        resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "x.gguf").write_bytes(b"nope")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        resolve(str(tmp_path / "x.gguf"))
    assert dtype_name("auto", "cpu") == "float32" and dtype_name("auto", "cuda:1") == "bfloat16"
    assert dtype_name("bf16", "cpu") == "bfloat16" and dtype_name("float8", "cpu") is None
