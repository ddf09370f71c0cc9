"""`superweight edit` (edit.py, models/gguf_file.py): the named weights change and nothing
else, in the source's own layout, for every storage layout; bad input in one line."""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from tiny import plant, saved, tiny_model
from transformers import AutoModelForCausalLM

import superweight as sw
from superweight.edit import EDIT_MANIFEST, Edit, save_edited
from superweight.models import gguf_file


def _params(path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _only_differences(a: dict, b: dict) -> dict[str, list[tuple]]:
    """{parameter: [indices where a and b differ]} for parameters that differ."""
    assert a.keys() == b.keys()
    out = {}
    for k in a:
        idx = torch.nonzero(a[k] != b[k])
        if len(idx):
            out[k] = [tuple(i.tolist()) for i in idx]
    return out


def test_sharded_llama_zero_and_scale_change_only_those_weights(tmp_path):
    lm = tiny_model("llama")
    plant(lm, sw.Coord(1, 5, 7), 50)
    src = saved(lm, tmp_path / "src", max_shard_size="100KB")
    before = {f.name: f.read_bytes() for f in src.iterdir()}
    streamed = sw.load(str(src), stream=True)
    edits = [Edit(sw.Coord(1, 5, 7)), Edit(sw.Coord(2, 3, 4), 2.5)]
    rep = save_edited(streamed, edits, tmp_path / "out", why="test")
    out = tmp_path / "out"
    assert {f.name: f.read_bytes() for f in src.iterdir()} == before  # the source is only read
    assert len(rep.files) > 1 and (out / "model.safetensors.index.json").read_bytes() == before["model.safetensors.index.json"]
    # shards without an edit are byte copies; the others differ only at the edited elements
    edited_files = {json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][c.tensor]
                    for c in rep.changes}
    for name in rep.files:
        if name not in edited_files:
            assert (out / name).read_bytes() == before[name]
    diff = _only_differences(_params(src), _params(out))
    assert diff == {"model.layers.1.mlp.down_proj.weight": [(5, 7)], "model.layers.2.mlp.down_proj.weight": [(3, 4)]}
    loaded = _params(out)
    assert loaded["model.layers.1.mlp.down_proj.weight"][5, 7] == 0
    assert loaded["model.layers.2.mlp.down_proj.weight"][3, 4] == pytest.approx(2.5 * streamed.adapter.value(sw.Coord(2, 3, 4)))
    m = json.loads((out / EDIT_MANIFEST).read_text())
    assert m["verified"] and m["format"] == "safetensors"
    assert [(c["coord"], c["op"], c["before"], c["after"], c["why"]) for c in m["changes"]] == [
        ("1:5:7", "zero", streamed.adapter.value(sw.Coord(1, 5, 7)), 0.0, "test"), ("2:3:4", "scale x2.5", rep.changes[1].before, rep.changes[1].after, "test")]
    assert {f.name for f in out.iterdir()} >= {"config.json", "tokenizer.json", EDIT_MANIFEST}


@pytest.mark.parametrize("family,coord,param,index", [
    ("mixtral", sw.Coord(1, 5, 7, expert=2), "model.layers.1.block_sparse_moe.experts.2.w2.weight", (5, 7)),
    ("gpt2", sw.Coord(1, 5, 7), "transformer.h.1.mlp.c_proj.weight", (7, 5)),
])
def test_stored_layouts_are_followed(tmp_path, family, coord, param, index):
    """A per-expert checkpoint (the model fuses the experts on load) and GPT-2's transposed
    Conv1D: the coordinate lands on the stored element the model reads there."""
    from safetensors import safe_open

    lm = tiny_model(family)
    src = saved(lm, tmp_path / "src")
    streamed = sw.load(str(src), stream=True)
    value = streamed.adapter.value(coord)
    rep = save_edited(streamed, [Edit(coord, -1.0)], tmp_path / "out")
    assert rep.changes[0].tensor == param
    with safe_open(str(src / "model.safetensors"), "pt") as a, safe_open(str(tmp_path / "out/model.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        x, y = a.get_tensor(param), b.get_tensor(param)
    assert x[index] == pytest.approx(value) and y[index] == pytest.approx(-value)
    assert [tuple(i.tolist()) for i in torch.nonzero(x != y)] == [index]
    again = sw.load(str(tmp_path / "out"), stream=True)
    assert again.adapter.value(coord) == pytest.approx(-value)


def test_bf16_checkpoint_stores_the_rounded_value(tmp_path):
    lm = tiny_model("qwen2")
    lm.model.to(torch.bfloat16)
    src = saved(lm, tmp_path / "src")
    streamed = sw.load(str(src), stream=True)
    rep = save_edited(streamed, [Edit(sw.Coord(0, 1, 2), 1 / 3)], tmp_path / "out")
    c = rep.changes[0]
    assert c.after == torch.tensor(c.before / 3).to(torch.bfloat16).item()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    assert model.model.layers[0].mlp.down_proj.weight[1, 2].item() == c.after


# -- quantization blocks -------------------------------------------------------------------

class _T:
    def __init__(self, data, qtype):
        self.data, self.tensor_type = data, qtype


@pytest.mark.parametrize("qname", ["Q4_0", "Q5_0", "Q8_0", "Q4_1", "Q5_1", "F16", "BF16"])
def test_one_value_changes_inside_its_block_or_the_edit_is_refused(qname):
    """Zeroing and negating the largest weight of a block: symmetric types (Q4_0, Q5_0,
    Q8_0) and floats hold zero in place, Q8_0 (codes -127..127) the sign flip too (Q4_0's
    largest weight has code -8, whose negation is not a code); wherever a type cannot hold
    the value, None, never a changed neighbour."""
    from gguf import GGMLQuantizationType, dequantize, quantize

    qtype = GGMLQuantizationType[qname]
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    x[2, 40] = 9.0  # a super weight, alone at the top of its block
    data = quantize(x, qtype)
    t = _T(data, qtype)
    vals = gguf_file.values(t).reshape(-1)
    flat = 2 * 64 + 40
    for target in (0.0, -float(vals[flat])):
        patch = gguf_file.set_in_place(t, flat, target)
        if patch is None:
            assert qname in ("Q4_1", "Q5_1") or target != 0 and qname in ("Q4_0", "Q5_0"), f"{qname}: {target}"
            continue
        raw = np.array(data, copy=True)
        off, new = patch
        raw.reshape(-1).view(np.uint8)[off:off + len(new)] = np.frombuffer(new, dtype=np.uint8)
        got = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(-1)
        assert got[flat] == np.float32(target)
        assert np.flatnonzero(got != vals).tolist() == ([flat] if vals[flat] != target else [])


def test_float_type_for_picks_f16_only_when_exact():
    assert gguf_file.float_type_for(np.array([0.5, -2.0, 0.0], dtype=np.float32)) == "F16"
    assert gguf_file.float_type_for(np.array([0.1], dtype=np.float32)) == "F32"
    assert gguf_file.float_type_for(np.array([1e6], dtype=np.float32)) == "F32"


def test_write_copy_keeps_keys_tensors_and_alignment(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), arch="llama")
    w.add_custom_alignment(64)
    w.add_uint32("llama.block_count", 2)
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    w.add_tensor("q", gguf.quantize(x, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("f", x[:2])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    new_f = np.zeros((2, 64), dtype=np.float16)
    gguf_file.write_copy(r, tmp_path / "b.gguf", {"f": (new_f, gguf.GGMLQuantizationType.F16)}, {"superweight.edit": "{}"})
    r2 = gguf.GGUFReader(str(tmp_path / "b.gguf"))
    assert set(r2.fields) == set(r.fields) | {"superweight.edit"}
    assert r2.fields["general.alignment"].contents() == 64
    assert r2.fields["tokenizer.ggml.tokens"].contents() == ["a", "b"]
    q, q2 = (next(t for t in rr.tensors if t.name == "q") for rr in (r, r2))
    assert q2.tensor_type == q.tensor_type and np.array_equal(q.data, q2.data)
    f2 = next(t for t in r2.tensors if t.name == "f")
    assert f2.tensor_type.name == "F16" and (np.asarray(f2.data) == 0).all()
    assert all(t.data_offset % 64 == 0 for t in r2.tensors)


# -- errors --------------------------------------------------------------------------------

@pytest.fixture
def tiny_dir(tmp_path):
    return saved(tiny_model("llama"), tmp_path / "src")


@pytest.mark.parametrize("args,message", [
    (["--zero", "9:1:1"], "layer 9 out of range"),
    (["--zero", "1:64:1"], "out of range for model.layers.1.mlp.down_proj"),
    (["--zero", "1:1:1", "1:1:1"], "edited twice"),
    (["--scale", "1:1:1"], "expected LAYER:ROW:COL=FACTOR"),
    (["--scale", "1:1:1=x"], "is not a number"),
    (["--scale", "1:1:1=inf"], "finite"),
    ([], "nothing to edit"),
])
def test_bad_edits_get_one_line(tiny_dir, tmp_path, capsys, args, message):
    from superweight.cli import main

    assert main(["edit", str(tiny_dir), *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_output_onto_the_source_or_an_existing_directory_is_refused(tiny_dir, tmp_path, capsys):
    from superweight.cli import main

    assert main(["edit", str(tiny_dir), "--zero", "1:1:1", "--out", str(tiny_dir)]) == 2
    assert "is the model being read" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    assert main(["edit", str(tiny_dir), "--zero", "1:1:1", "--out", str(tmp_path / "taken")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["edit", str(tiny_dir), "--zero", "1:1:1", "--out", str(tmp_path / "taken"), "--overwrite"]) == 2
    assert "not a superweight output" in capsys.readouterr().err
    assert (tmp_path / "taken" / "x").read_text() == "mine"


def test_bin_only_checkpoint_is_refused(tmp_path, capsys):
    from superweight.cli import main

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    lm.tokenizer.save_pretrained(tmp_path / "bin")
    for f in (tmp_path / "bin").glob("*.safetensors"):
        f.unlink()
    assert main(["edit", str(tmp_path / "bin"), "--zero", "1:1:1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "safetensors" in err[0], err


def test_a_full_disk_leaves_nothing(tiny_dir, tmp_path, capsys, monkeypatch):
    import shutil

    from superweight.cli import main

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(shutil, "copyfile", full)
    assert main(["edit", str(tiny_dir), "--zero", "1:1:1", "--out", str(tmp_path / "out")]) == 2
    assert "no space left on the device while writing --out" in capsys.readouterr().err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["src"]


# -- issue 24 ------------------------------------------------------------------------------

def _tree(d) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dtype, factor", [(torch.float16, 1e5), (torch.bfloat16, 1e37), (torch.float32, 1e40),
                                           ("gguf", 1e40)])
def test_a_scale_that_overflows_is_refused_before_any_work(tmp_path, capsys, dtype, factor):
    """One line naming the weight, the stored type and the largest factor that fits; that
    factor then works."""
    import re

    from tiny import tiny_moe_gguf

    from superweight.cli import main

    if dtype == "gguf":
        src, coord, tensor, kind = tmp_path / "m.gguf", "1:3:5:2", "blk.1.ffn_down_exps.weight", "float32"
        tiny_moe_gguf(src, sw.Coord(1, 3, 5, 2), 400.0)
    else:
        lm = tiny_model("llama")
        plant(lm, sw.Coord(1, 5, 7), 400)
        lm.model.to(dtype)
        src, coord, tensor, kind = saved(lm, tmp_path / "src"), "1:5:7", "model.layers.1.mlp.down_proj.weight", \
            str(dtype).removeprefix("torch.")
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main(["edit", str(src), "--scale", f"{coord}={factor:g}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"{tensor} is stored as {kind}" in err[0] and "overflows it; the largest factor that fits is" in err[0]
    assert _tree(tmp_path) == before  # nothing written, the source as it was
    fits = float(re.search(r"fits is (\S+)$", err[0]).group(1))
    assert fits < factor
    assert main(["edit", str(src), "--scale", f"{coord}={fits!r}", "--out", str(tmp_path / "out")]) == 0
    change = json.loads((tmp_path / "out" / EDIT_MANIFEST).read_text())["changes"][0]
    assert np.isfinite(change["after"]) and change["after"] == pytest.approx(change["before"] * fits, rel=1e-2)


def test_weight_files_the_index_does_not_list_are_not_copied(tmp_path, capsys):
    """Mistral ships consolidated.safetensors beside its index: an unedited copy of it in the
    output would still hold the zeroed weight."""
    import shutil

    from superweight.cli import main

    src = saved(tiny_model("llama"), tmp_path / "src", max_shard_size="300KB")
    assert (src / "model.safetensors.index.json").is_file()
    shards = sorted(p.name for p in src.glob("model-*.safetensors"))
    shutil.copyfile(src / shards[0], src / "consolidated.safetensors")
    before = _tree(src)
    assert main(["edit", str(src), "--zero", "1:1:1", "--out", str(tmp_path / "out")]) == 0
    assert "not copied" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / EDIT_MANIFEST).read_text())
    assert manifest["not_copied"] == ["consolidated.safetensors"]
    assert sorted(manifest["files"]) == shards
    assert not (tmp_path / "out" / "consolidated.safetensors").exists()
    assert _tree(src) == before


def test_re_editing_keeps_the_history(tmp_path):
    """A GGUF edited twice holds both records in its superweight.edit key; a safetensors
    edit of an edit, in its manifest."""
    from gguf import GGUFReader
    from tiny import tiny_moe_gguf

    from superweight.cli import main

    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0)
    assert main(["edit", str(f), "--zero", "1:3:5:2", "--out", str(tmp_path / "e1")]) == 0
    assert main(["edit", str(tmp_path / "e1" / "m.gguf"), "--scale", "0:1:1:0=2", "--out", str(tmp_path / "e2")]) == 0
    meta = json.loads(GGUFReader(str(tmp_path / "e2" / "m.gguf")).fields["superweight.edit"].contents())
    assert [c["coord"] for c in meta["changes"]] == ["0:1:1:0"]
    assert [[c["coord"] for c in h["changes"]] for h in meta["history"]] == [["1:3:5:2"]]
    manifest = json.loads((tmp_path / "e2" / EDIT_MANIFEST).read_text())
    assert [[c["coord"] for c in h["changes"]] for h in manifest["history"]] == [["1:3:5:2"]]
    src = saved(tiny_model("llama"), tmp_path / "src")
    assert main(["edit", str(src), "--zero", "1:1:1", "--out", str(tmp_path / "s1")]) == 0
    assert main(["edit", str(tmp_path / "s1"), "--zero", "1:2:2", "--out", str(tmp_path / "s2")]) == 0
    manifest = json.loads((tmp_path / "s2" / EDIT_MANIFEST).read_text())
    assert [c["coord"] for c in manifest["changes"]] == ["1:2:2"]
    assert [[c["coord"] for c in h["changes"]] for h in manifest["history"]] == [["1:1:1"]]


# -- real models ---------------------------------------------------------------------------

def test_smollm2_gguf_edit_loads_in_transformers_with_only_the_super_weight_changed(smol_gguf, tmp_path):
    """The real Q4_1 file: zero cannot be placed in a Q4_1 block (its grid is min + d*q), so
    the one tensor is stored as F32; transformers reads the result and only that weight
    differs from the original."""
    from gguf import GGUFReader

    from superweight.models.gguf_file import faster_gguf

    coord = sw.Coord(11, 507, 1229)
    rep = save_edited(smol_gguf, [Edit(coord)], tmp_path / "out")
    assert rep.retyped == {"blk.11.ffn_down.weight": ("Q4_1", "F32")}
    path = tmp_path / "out" / rep.files[0]
    meta = json.loads(GGUFReader(str(path)).fields["superweight.edit"].contents())
    assert meta["changes"][0]["coord"] == str(coord)
    with faster_gguf():  # transformers' loader, its name map built once (9 s less; the reader: test_load.py)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    got = model.state_dict()
    down = got["model.layers.11.mlp.down_proj.weight"]
    orig = smol_gguf.adapter.read("model.layers.11.mlp.down_proj.weight")
    assert down[507, 1229] == 0 and orig[507, 1229] == pytest.approx(rep.changes[0].before)
    assert [tuple(i.tolist()) for i in torch.nonzero(down != orig)] == [(507, 1229)]
    for name in ("model.layers.10.mlp.down_proj.weight", "model.layers.11.mlp.up_proj.weight", "model.embed_tokens.weight"):
        assert torch.equal(got[name], smol_gguf.adapter.read(name))


@pytest.mark.real
def test_qwen_gguf_k_quant_blocks_are_edited_in_place_where_they_can_be(tmp_path):
    """Qwen2.5-Coder's down projections are Q6_K (symmetric: zero and a sign flip fit in the
    block) and Q4_K (asymmetric: zero does not); gguf's reader checks the rest is untouched."""
    qwen_gguf = sw.load("qwen2.5-coder-0.5b", stream=True)
    rep = save_edited(qwen_gguf, [Edit(sw.Coord(3, 62, 2247)), Edit(sw.Coord(3, 62, 3016), -1.0),
                                  Edit(sw.Coord(5, 62, 956))], tmp_path / "out")
    how = {str(c.coord): c.how for c in rep.changes}
    assert how["3:62:2247"] == how["3:62:3016"] == "in place"
    assert rep.retyped == {"blk.5.ffn_down.weight": ("Q4_K", "F32")}
    assert rep.verified and [c.after for c in rep.changes] == [0.0, -rep.changes[1].before, 0.0]


def test_the_api_overwrites_only_its_own_edits(tmp_path):
    """``save_edited(..., overwrite=True)`` replaces an earlier edit, never a folder of the user's."""
    lm = tiny_model("llama")
    src = saved(lm, tmp_path / "src")
    streamed = sw.load(str(src), stream=True)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(sw.UsageError, match="not a superweight output"):
        save_edited(streamed, [Edit(sw.Coord(1, 5, 7))], theirs, overwrite=True)
    assert [f.name for f in theirs.iterdir()] == ["notes.txt"]
    save_edited(streamed, [Edit(sw.Coord(1, 5, 7))], tmp_path / "e")
    save_edited(streamed, [Edit(sw.Coord(2, 3, 4), 2.0)], tmp_path / "e", overwrite=True)
    assert (tmp_path / "e" / EDIT_MANIFEST).is_file()
