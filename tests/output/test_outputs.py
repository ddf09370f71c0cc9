"""What superweight promises about your files (issue 12): every output is checked before any
work, written by one run at a time, lands whole with the others or not at all, survives
SIGTERM/SIGHUP as it survives Ctrl-C, and never replaces the model or a user's directory.
Each case asserts the exit code, the single line, and what is (not) on disk afterwards."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import plant, tiny_model, tiny_moe_gguf

import superweight as sw
from superweight.atomic import Lock
from superweight.cli import main
from superweight.quant.export import MANIFEST

SRC = str(Path(__file__).resolve().parents[2] / "src")


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in Path(d).iterdir())


def one_line(capsys, code: int, pattern: str, expect: int = 2) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == expect, err
    assert len(lines) == 1, err
    assert lines[0].startswith("superweight: "), lines[0]
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny llama checkpoint (safetensors) with a planted super weight, read-only to the tests."""
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    lm = tiny_model("llama")
    plant(lm, sw.Coord(1, 5, 7), 400)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def quantize(model: Path, out: Path, *extra: str) -> int:
    return main(["quantize", str(model), "--out", str(out), "--no-keep-super", "--bits", "8", *extra])


# -- output targets are checked before any work (a missing model would fail later: it is never reached)
NOMODEL = "/no/such/model.gguf"


@pytest.mark.parametrize("argv, pattern", [
    (["detect", NOMODEL, "--json", "{file}/x.json"], "is not a directory"),
    (["detect", NOMODEL, "--json", "{dir}"], "is a directory"),
    (["detect", NOMODEL, "--plot", "{dir}"], "is a directory"),
    (["detect", NOMODEL, "--plot", "{file}/p.png"], "is not a directory"),
    (["detect", NOMODEL, "--json", "{dir}/ok.json", "--plot", "{dir}/missing/p.png"], "does not exist"),
    (["verify", NOMODEL, "--coords", "1:1:1", "--json", "{dir}/missing/v.json"], "does not exist"),
    (["ablate", NOMODEL, "--out", "{dir}/res", "--json", "{dir}/missing/a.json"], "does not exist"),
    (["scale", NOMODEL, "--factors", "0", "1", "--out", "{dir}/res", "--json", "{dir}/missing/s.json"], "does not exist"),
    (["quantize", NOMODEL, "--out", "{dir}/q", "--json", "{dir}/missing/q.json"], "does not exist"),
    (["quantize", NOMODEL, "--out", "{file}/q"], "is not a directory"),
    (["quantize", NOMODEL, "--out", "{file}"], "exists and is not a directory"),
    (["ablate", NOMODEL, "--out", "{file}"], "exists and is not a directory"),
    (["quant-compare", NOMODEL, "--out", "{file}/deeper"], "is not a directory"),
    (["detect", NOMODEL, "--json", "{dir}/same.json", "--plot", "{dir}/same.json"], "name the same place"),
    (["index", "--json", "{dir}"], "is a directory"),
])
def test_output_targets_are_refused_before_any_work(tmp_path, capsys, argv, pattern):
    (tmp_path / "file").write_text("a user's file")
    before = listing(tmp_path)
    argv = [a.format(dir=tmp_path, file=tmp_path / "file") for a in argv]
    one_line(capsys, main(argv), pattern)
    assert listing(tmp_path) == before  # nothing written, not even ok.json
    assert (tmp_path / "file").read_text() == "a user's file"


def test_a_read_only_directory_is_refused_before_any_work(tmp_path, capsys):
    """Checked by trying, so it holds for every user: root writes into a mode-0555
    directory, so as root the read-only directory is /proc, where no one makes files."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    if os.geteuid() == 0:
        ro = Path("/proc")
    before = listing(ro)
    for args in (["detect", NOMODEL, "--json", f"{ro}/x.json"], ["detect", NOMODEL, "--plot", f"{ro}/p.png"],
                 ["quantize", NOMODEL, "--out", f"{ro}/q"], ["ablate", NOMODEL, "--out", f"{ro}/res"]):
        one_line(capsys, main(args), "is not writable")
    assert listing(ro) == before


# -- numbers: one line and exit 2 at once, never an internal error after minutes of work
@pytest.mark.parametrize("argv, pattern", [
    (["detect", "--device", "banana"], "--device 'banana' is not a torch device"),
    (["detect", "--device", "cuda:7"], "--device cuda:7"),
    (["quantize", "--out", "{dir}/q", "--max-shard-size", "inf"], "--max-shard-size"),
    (["quantize", "--out", "{dir}/q", "--max-shard-size", "nan"], "--max-shard-size"),
    (["quantize", "--out", "{dir}/q", "--max-shard-size", "0.1"], "--max-shard-size must be positive"),
    (["ablate", "--seqlen", "0"], "--seqlen must be an integer >= 16"),
    (["ablate", "--seqlen", "-5"], "--seqlen must be an integer >= 16"),
    (["ablate", "--max-windows", "-1"], "--max-windows must be an integer >= 1"),
    (["ablate", "--stopword-prompts", "-5"], "--stopword-prompts must be an integer >= 0"),
    (["ablate", "--prune-fraction", "nan"], "--prune-fraction must be in (0, 1)"),
    (["ablate", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["scale", "--factors", "1", "inf"], "--factors must be finite"),
    (["quant-compare", "--hqq-groups", "0"], "--hqq-groups must be at least 1"),
    (["quant-compare", "--act-ratio", "nan"], "--act-ratio must be a finite number"),
    (["quant-compare", "--bits", "9"], "--bits must be from 2 to 8"),
    (["quant-compare", "--block-sizes", "--group-sizes", "--hqq-groups", "--no-quanto"], "nothing to compare"),
    (["quantize", "--out", "{dir}/q", "--format", "compressed-tensors", "--block-size", "64"], "compressed-tensors stores groups"),
    (["quantize", "--out", "{dir}/q", "--act-ratio", "nan"], "--act-ratio must be a finite number >= 0"),
    (["quantize", "--out", "{dir}/q", "--act-ratio=-inf"], "--act-ratio must be a finite number >= 0"),
    (["quantize", "--out", "{dir}/q", "--keep-outliers", "nan"], "keep fraction"),
    (["quantize", "--out", "{dir}/q", "--act-max-cols=-1"], "--act-max-cols"),
    (["detect", "--window", "8"], "at least 16 tokens"),
    (["verify", "--windows", "0"], "--windows must be a positive integer"),
])
def test_bad_numbers_are_one_line(tmp_path, capsys, argv, pattern):
    one_line(capsys, main([a.format(dir=tmp_path) for a in argv]), pattern)
    assert listing(tmp_path) == []


def test_quantize_out_dot_is_refused_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    one_line(capsys, main(["quantize", "--out", ".", "--overwrite"]), "refusing to replace the current directory")
    one_line(capsys, main(["quantize", "--out", str(tmp_path.parent), "--overwrite"]), "refusing to replace")
    assert listing(tmp_path) == ["notes.txt"]
    assert not [p for p in tmp_path.parent.iterdir() if ".superweight-staging." in p.name or p.name.startswith("..")]


def test_a_prompt_longer_than_the_context_is_one_line(tmp_path, capsys):
    lm = tiny_model("gpt2")  # 128 learned positions
    lm.model.save_pretrained(tmp_path / "gpt2")
    lm.tokenizer.save_pretrained(tmp_path / "gpt2")
    one_line(capsys, main(["detect", str(tmp_path / "gpt2"), "--prompt", "word " * 100]), "longer than")


# -- the model and the user's directories are never replaced
def test_out_is_never_the_model_nor_holds_it(tiny_dir, tmp_path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_dir.iterdir()}
    one_line(capsys, quantize(tiny_dir, tiny_dir, "--overwrite"), "is the model being read")
    one_line(capsys, quantize(tiny_dir, tiny_dir.parent, "--overwrite"), "holds the model being read")
    one_line(capsys, main(["ablate", str(tiny_dir), "--out", str(tiny_dir), "--coords", "1:5:7"]), "is the model")
    assert {p.name: p.stat().st_mtime_ns for p in tiny_dir.iterdir()} == before


def test_overwrite_replaces_only_our_own_output(tiny_dir, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    one_line(capsys, quantize(tiny_dir, theirs, "--overwrite"), "is not a superweight output")
    assert listing(theirs) == ["thesis.tex"]
    out = tmp_path / "q"
    assert quantize(tiny_dir, out) == 0
    assert quantize(tiny_dir, out, "--overwrite", "--bits", "4") == 0
    assert json.loads((out / MANIFEST).read_text())["config"]["bits"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_directory_that_appears_during_the_run_is_not_replaced(tiny_dir, tmp_path, capsys, monkeypatch):
    import superweight.quant.export as export

    out = tmp_path / "q"
    real = export.write_quantized

    def meanwhile(*a, **k):
        report = real(*a, **k)
        out.mkdir()
        (out / "mine.txt").write_text("made while superweight ran")
        return report

    monkeypatch.setattr(export, "write_quantized", meanwhile)
    one_line(capsys, quantize(tiny_dir, out, "--json", str(tmp_path / "q.json")), "appeared while this run was working")
    assert listing(out) == ["mine.txt"]
    assert listing(tmp_path) == ["q"]  # no JSON either: all or nothing


def test_a_second_run_to_the_same_out_is_refused(tiny_dir, tmp_path, capsys):
    out = tmp_path / "q"
    held = Lock(out)  # another run, mid-way
    try:
        one_line(capsys, quantize(tiny_dir, out), "is being written by another superweight run")
        one_line(capsys, main(["detect", str(tiny_dir), "--json", str(out)]), "being written by another")
    finally:
        held.release()
    assert listing(tmp_path) == []
    assert quantize(tiny_dir, out) == 0


def test_api_save_quantized_takes_the_same_lock(tiny_dir, tmp_path):
    from superweight.quant.export import save_quantized
    from superweight.quant.rtn import QuantConfig

    out = tmp_path / "q"
    held = Lock(out)
    try:
        with pytest.raises(sw.UsageError, match="another superweight run"):
            save_quantized(sw.load(str(tiny_dir)), QuantConfig(bits=8), out)
    finally:
        held.release()
    assert listing(tmp_path) == []


# -- issue 24: no output inside the model; clean-up removes only what a run of ours recorded
@pytest.fixture
def model_copy(tiny_dir, tmp_path) -> Path:
    import shutil

    d = tmp_path / "M"
    shutil.copytree(tiny_dir, d)
    return d


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("argv, pattern", [
    (["detect", "{m}", "--json", "{m}/config.json"], "--json {m}/config.json is inside the model being read"),
    (["detect", "{m}", "--plot", "{m}/new.png"], "is inside the model being read"),
    (["edit", "{m}", "--zero", "1:1:1", "--out", "{t}/E", "--json", "{m}/model.safetensors.index.json"],
     "is inside the model being read"),
    (["quantize", "{m}", "--out", "{m}/extra.safetensors"], "--out {m}/extra.safetensors is inside the model"),
    (["edit", "{m}", "--zero", "1:1:1", "--out", "{m}/sub/extra.safetensors"], "is inside the model being read"),
    (["report", "{m}", "--out", "{m}/report.html"], "is inside the model being read"),
])
def test_no_output_lands_inside_the_model_being_read(model_copy, tmp_path, capsys, argv, pattern):
    before = snapshot(model_copy)
    fmt = dict(m=model_copy, t=tmp_path)
    one_line(capsys, main([a.format(**fmt) for a in argv]), pattern.format(**fmt))
    assert snapshot(model_copy) == before
    assert listing(tmp_path) == ["M"]


def test_no_output_lands_inside_the_converted_gguf_cache(tmp_path, capsys, monkeypatch):
    """Issue 42: superweight's own cache is off limits by rule, refused before any work; the
    cache is as it was."""
    from superweight.models.load import _gguf_cache_dir

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0)
    sw.load(str(f), stream=False)  # converted once
    cache = _gguf_cache_dir(f)
    before = snapshot(cache)
    capsys.readouterr()  # the library's bar of that conversion (the API does not quiet it)
    one_line(capsys, main(["detect", str(f), "--json", str(cache / "config.json")]), "is inside superweight's cache")
    assert snapshot(cache) == before


def test_clean_up_never_touches_files_it_did_not_record(tmp_path, capsys):
    """Users' hidden files that look like temporaries, and another live run's staging
    directory (to a "q" in a missing folder, staged in the same place), all survive index,
    detect --dry-run and quantize --dry-run."""
    from superweight.output.outputs import Outputs

    mine = [".idx.json.20261130.old", ".idx.json.draft_v2.tmp", ".x.json.sw-abcdefgh.tmp", ".q.draft_v2.tmp"]
    old = time.time() - 7 * 86400
    for name in mine:
        (tmp_path / name).write_text("a user's file")
        os.utime(tmp_path / name, (old, old))
    live = Outputs()  # a run to {tmp}/first/q, mid-way: staged in {tmp}, since first/ does not exist yet
    staging = live.directory(str(tmp_path / "first" / "q"), "--out")
    try:
        assert main(["index", "--json", str(tmp_path / "idx.json")]) == 0
        assert main(["detect", NOMODEL, "--json", str(tmp_path / "x.json"), "--dry-run"]) == 0
        assert main(["quantize", NOMODEL, "--out", str(tmp_path / "second" / "q"), "--dry-run"]) == 0
        assert staging.is_dir()
    finally:
        live.discard()
    assert listing(tmp_path) == sorted(mine + ["idx.json"])
    assert all((tmp_path / n).read_text() == "a user's file" for n in mine)


def test_overwrite_decides_at_the_end_on_what_is_there(tiny_dir, tmp_path, capsys, monkeypatch):
    """--overwrite of our own earlier output: if someone replaces it with their own directory
    during the run, that directory is kept and nothing lands."""
    import shutil

    import superweight.quant.export as export

    out = tmp_path / "q"
    assert quantize(tiny_dir, out) == 0
    real_write = export.write_quantized

    def meanwhile(*a, **k):
        report = real_write(*a, **k)
        shutil.rmtree(out)
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
        return report

    monkeypatch.setattr(export, "write_quantized", meanwhile)
    one_line(capsys, quantize(tiny_dir, out, "--overwrite"), "is not a superweight output")
    assert listing(out) == ["thesis.tex"]
    assert listing(tmp_path) == ["q"]


def test_lock_files_do_not_pile_up(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    for i in range(3):
        assert quantize(tiny_dir, tmp_path / f"q{i}", "--json", str(tmp_path / f"q{i}.json")) == 0
    assert main(["index", "--json", str(tmp_path / "idx.json")]) == 0
    assert listing(tmp_path / "cache" / "locks") == []


def test_a_full_disk_while_writing_a_gguf_names_the_output(tmp_path, capsys, monkeypatch):
    """numpy's tofile, under gguf's writer, says only "N requested and 0 written" (no errno):
    with no room left on the filesystem, that is a full disk, named as such."""
    import collections
    import shutil

    import gguf

    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0)
    source = f.read_bytes()

    def full(*a, **k):
        raise OSError("4096 requested and 0 written")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    one_line(capsys, main(["edit", str(f), "--zero", "1:3:5:2", "--out", str(tmp_path / "E")]),
             f"no space left on the device while writing --out {tmp_path / 'E'}; nothing was written")
    assert listing(tmp_path) == ["m.gguf"]
    assert f.read_bytes() == source


# -- signals: SIGTERM and SIGHUP as Ctrl-C; what SIGKILL leaves, the next run clears
RUNNER = """
import sys, time
import superweight.quant.export as export
real = export.write_quantized
def slow(*a, **k):
    report = real(*a, **k)
    open(sys.argv[1], "w").write("written")
    time.sleep(120)
    return report
export.write_quantized = slow
from superweight.cli import main
sys.exit(main(sys.argv[2:]))
"""


def start_slow_quantize(tiny_dir: Path, tmp_path: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(marker), "quantize", str(tiny_dir), "--out", str(out),
                             "--no-keep-super", "--bits", "8", "--json", str(out) + ".json"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    marker.unlink()
    return proc, marker


def staged(where: Path) -> list[str]:
    return [p.name for p in where.iterdir() if ".superweight-staging." in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_leave_nothing(tiny_dir, tmp_path, sig):
    work = tmp_path / "work"
    work.mkdir()
    proc, _ = start_slow_quantize(tiny_dir, tmp_path, work / "q")
    assert staged(work)  # the output is staged, complete, not landed
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 128 + sig, err
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name}" in lines[0], err
    assert listing(work) == []


@pytest.mark.slow
def test_what_a_killed_run_left_is_cleared_by_the_next(tiny_dir, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    proc, _ = start_slow_quantize(tiny_dir, tmp_path, work / "q")
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    left = staged(work)
    assert len(left) == 2  # the staged directory and the staged JSON
    # not ours to clear, however they are named: another destination's staging, a run's to
    # a "q" in another folder (staged here, its folder missing), the user's own drafts
    theirs = [".other.superweight-staging.abcdefgh.tmp", ".q.superweight-staging.abcdefgh.tmp",
              ".q.json.20261130.old", ".q.draft_v2.tmp"]
    old = time.time() - 3600
    for name in theirs:
        (work / name).mkdir()
        os.utime(work / name, (old, old))
    assert quantize(tiny_dir, work / "q", "--json", str(work / "q.json")) == 0
    assert listing(work) == sorted(theirs + ["q", "q.json"])


# -- what the loader reads
def test_index_entries_outside_the_model_directory_are_refused(tiny_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "sharded"
    shutil.copytree(tiny_dir, d)
    (d / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "elsewhere.safetensors"), "pt") as h:
        names = list(h.keys())
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "../elsewhere.safetensors" for k in names}}))
    for stream in ("--stream", "--no-stream"):
        one_line(capsys, main(["detect", str(d), stream]), "names a shard outside the model directory")


def test_gguf_cache_follows_the_content_not_the_name_size_and_time(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0)
    first = {k: v.clone() for k, v in sw.load(str(f), stream=False).model.state_dict().items()}
    st = f.stat()
    g = tmp_path / "other.gguf"
    tiny_moe_gguf(g, sw.Coord(1, 3, 5, 2), 900.0)  # same shapes and size, other values
    assert g.stat().st_size == st.st_size
    os.replace(g, f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the time restored
    second = sw.load(str(f), stream=False).model.state_dict()
    assert any(not second[k].equal(v) for k, v in first.items())
    assert len([p for p in (tmp_path / "cache" / "gguf").iterdir() if p.is_dir()]) == 2


def test_gguf_conversion_clears_what_a_killed_conversion_left(tmp_path, monkeypatch):
    from superweight.models.load import _gguf_cache_dir

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0)
    target = _gguf_cache_dir(f)
    target.parent.mkdir(parents=True, exist_ok=True)
    killed = target.parent / f".{target.name}.sw-abcdefgh.tmp"  # a conversion of an older version, killed
    legacy = target.parent / ".tmp-abcdefgh"  # an older version's, two days old
    for p in (killed, legacy):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"\0" * 1000)
    old = time.time() - 2 * 86400
    os.utime(killed, (old, old))
    os.utime(legacy, (old, old))
    sw.load(str(f), stream=False)
    assert listing(target.parent) == sorted(["hashes.json", target.name])


def test_gguf_conversion_refuses_a_checkpoint_that_lacks_a_weight(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0, drop="blk.1.attn_q.")
    one_line(capsys, main(["detect", str(f), "--no-stream"]), "has no tensor for model.layers.1.self_attn.q_proj")
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir() if p.is_dir()]


@pytest.mark.slow
def test_offline_hub_id_and_broken_link_fail_fast_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    for ref, pattern in [("no-such-org/no-such-model", "hub cannot be reached"),
                         ("broken", "is a broken symbolic link")]:
        proc = subprocess.run([sys.executable, "-m", "superweight.cli", "detect", ref], capture_output=True,
                              text=True, timeout=120, env=env, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and pattern in lines[0], proc.stderr


@pytest.mark.slow
def test_first_gguf_use_prints_no_library_bar(tmp_path):
    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0)
    env = {**os.environ, "PYTHONPATH": SRC, "SUPERWEIGHT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "superweight.cli", "verify", str(f), "--no-stream",
                           "--coords", "1:3:5:2", "--window", "16"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no "Converting and de-quantizing GGUF tensors" bar, no warnings


# -- fuzz: whatever numbers a user types, the answer is a run or one line and exit 2
def test_numeric_options_fuzz(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    numbers = st.one_of(st.integers(-10**12, 10**12).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.sampled_from(["0", "-0", "1e309", "-1", "nan", "inf", "-inf", "1.5", "", "x", "0x10"]))
    options = {
        "detect": ["--window", "--windows"],
        "ablate": ["--seqlen", "--max-windows", "--limit", "--batch-size", "--stopword-prompts", "--prune-fraction",
                   "--prune-topk"],
        "scale": ["--factors", "--seqlen", "--max-windows"],
        "quantize": ["--bits", "--act-ratio", "--act-max-cols", "--keep-outliers", "--max-shard-size",
                     "--group-size", "--block-size"],
        "quant-compare": ["--bits", "--seqlen", "--max-windows", "--hqq-groups", "--act-ratio", "--limit",
                          "--group-sizes", "--block-sizes"],
    }
    cases = st.sampled_from(sorted(options)).flatmap(
        lambda cmd: st.tuples(st.just(cmd), st.lists(st.tuples(st.sampled_from(options[cmd]), numbers),
                                                     min_size=1, max_size=3)))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cases)
    def run(case):
        import contextlib
        import io

        cmd, opts = case
        argv = [cmd, "--dry-run"] + [f"{k}={v}" for k, v in opts]
        if cmd == "quantize":
            argv += ["--out", str(tmp_path / "q")]
        if cmd == "scale" and not any(k == "--factors" for k, _ in opts):
            argv += ["--factors", "1"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: not a number at all
                code = e.code
        lines = err.getvalue().strip().splitlines()
        assert code in (0, 2), (argv, err.getvalue())
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith("superweight: error:"), (argv, err.getvalue())
            assert "internal error" not in lines[0]

    run()
    assert listing(tmp_path) == []


def test_no_output_lands_inside_a_hub_models_cache_folder(tmp_path, monkeypatch, capsys):
    """A hub id's snapshot files are links into the same folder's blobs: the whole
    ``models--org--name`` folder is the model being read."""
    import huggingface_hub.constants

    from superweight.output.outputs import Outputs

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    with Outputs() as outs:
        outs.reading("org/name")
        for given in (snap / "config.json", tmp_path / "hub" / "models--org--name" / "blobs" / "x"):
            with pytest.raises(sw.UsageError, match="is inside the model being read"):
                outs.file(str(given), "--json") if given.parent.exists() else outs.directory(str(given), "--out")
        assert outs.file(str(tmp_path / "ok.json"), "--json") is not None


def test_percentages_read_as_percentages():
    """A zeroed weight's error is "100%", not "1e+02%" (as the audit table first showed it)."""
    from superweight.numbers import fmt_pct

    assert [fmt_pct(x) for x in (1.0, 0.153, 12.34, 0.053, 0.000123, 0.0, None, float("nan"))] == \
        ["100%", "15%", "1234%", "5.3%", "0.012%", "0%", "-", "-"]


def test_an_output_in_the_hub_cache_layout_may_not_name_a_blob_of_the_model(tiny_dir, tmp_path, capsys):
    """Issue 32: a model whose files are links into ../../blobs (the hub cache's layout); an
    output naming a blob, or a folder holding the blobs, is the model being read."""
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc"
    snap.mkdir(parents=True)
    for f in tiny_dir.iterdir():
        blob = repo / "blobs" / f"b-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    config_blob = repo / "blobs" / "b-config.json"
    before = config_blob.read_bytes()
    one_line(capsys, main(["detect", str(snap), "--json", str(config_blob)]), "is the model being read")
    one_line(capsys, main(["edit", str(snap), "--zero", "1:5:7", "--out", str(repo / "blobs"), "--overwrite"]),
             "the model being read")
    assert config_blob.read_bytes() == before


def test_no_output_lands_in_the_verdict_cache(tiny_dir, tmp_path, capsys):
    from superweight.signing import verdict_dir

    inside = verdict_dir() / "mine.json"
    one_line(capsys, main(["detect", str(tiny_dir), "--json", str(inside)]), "inside superweight's verdict cache")
    assert not inside.exists()


def test_overwrite_replaces_only_a_folder_of_our_own_files_there_from_the_start(tiny_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    out = tmp_path / "q"
    assert quantize(tiny_dir, out) == 0
    (out / "notes.txt").write_text("the user's, added later")
    one_line(capsys, quantize(tiny_dir, out, "--overwrite"), "holds files superweight did not write there (notes.txt)")
    assert (out / "notes.txt").read_text() == "the user's, added later"
    # a folder that appears while the run works, with our manifest in it: not replaced either
    import superweight.quant.export as export

    other = tmp_path / "r"
    real = export.write_quantized

    def meanwhile(*a, **k):
        report = real(*a, **k)
        other.mkdir()
        (other / MANIFEST).write_text(json.dumps({"written": [MANIFEST]}))
        (other / "thesis.tex").write_text("years of work")
        return report

    monkeypatch.setattr(export, "write_quantized", meanwhile)
    one_line(capsys, quantize(tiny_dir, other, "--overwrite"), "appeared while this run was working")
    assert listing(other) == [MANIFEST, "thesis.tex"]


def test_intervals_are_printed_with_the_digits_they_need():
    """Issue 40: the old prints ``x1.19 [1.2-1.2]`` (SmolLM2's 11:507:1487), ``x1.08 [1.1-1.1]``
    (Qwen's 2:62:1980, its point outside its printed interval) and ``x1.01 [1-1]``: each end with
    the digits that tell lo, point and hi apart, and ends that hold their point."""
    from superweight.numbers import fmt_interval, fmt_signed_pct

    assert fmt_interval(1.1903, 1.1712, 1.2087) == "1.19 [1.17-1.21]"
    assert fmt_interval(1.0801, 1.0712, 1.0933) == "1.08 [1.07-1.09]"
    assert fmt_interval(1.0055, 0.998, 1.004) == "1.006 [0.998-1.004]"  # a point outside: still apart
    assert fmt_interval(7.61, 4.3, 18.2) == "7.61 [4.3-18.2]"
    assert fmt_interval(3.624e5, 3.1e5, 4.2e5) == "3.62e+05 [3.1e+05-4.2e+05]"
    assert fmt_interval(None, 1, 2) == "-" and fmt_interval(float("nan"), 1, 2) == "-"
    for p, lo, hi in [(1.0 + k / 1000, 1.0 + (k - 3) / 1000, 1.0 + (k + 4) / 1000) for k in range(0, 40)]:
        pt, a, b = (float(x.strip("[]")) for x in fmt_interval(p, lo, hi).replace("-", " ").split())
        assert a <= pt <= b and a != pt != b
    assert [fmt_signed_pct(x) for x in (0.0004, -0.12, 0.0, None)] == ["+0.04%", "-12%", "0%", "-"]


def test_a_hub_model_named_without_an_org_is_guarded_like_any_other(tmp_path, capsys, monkeypatch):
    """Issue 42, reproduction 1 (data loss): ``gpt2``'s snapshot file, a link into the hub's
    ``blobs/``, named by ``--json`` or ``--plot``: refused before any work, the blob intact.
    ``org/name`` ids were guarded; an id without an org was not."""
    import huggingface_hub.constants as hc

    hub = tmp_path / "hub"
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo in ("gpt2", "openai-community/gpt2"):
        folder = hub / ("models--" + repo.replace("/", "--"))
        (folder / "blobs").mkdir(parents=True)
        (folder / "blobs" / "abc123").write_text('{"model_type": "gpt2"}')
        snap = folder / "snapshots" / "rev1"
        snap.mkdir(parents=True)
        (snap / "config.json").symlink_to(Path("../../blobs/abc123"))
        for flag in ("--json", "--plot"):
            one_line(capsys, main(["detect", repo, flag, str(snap / "config.json")]), "the model being read")
        assert (folder / "blobs" / "abc123").read_text() == '{"model_type": "gpt2"}'


def test_no_output_lands_anywhere_in_superweights_cache(tmp_path, capsys, monkeypatch):
    """Issue 42, reproduction 2: a converted GGUF's folder, fetched wheels, locks: the whole
    cache is superweight's, refused by rule whatever the source."""
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "gguf" / "m-0123-v2").mkdir(parents=True)
    (tmp_path / "cache" / "pypi").mkdir()
    for inside in ("gguf/m-0123-v2/config.json", "pypi/x.json", "new.json"):
        one_line(capsys, main(["index", "--json", str(tmp_path / "cache" / inside)]), "inside superweight's cache")
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.json")) == []


def test_an_output_path_that_is_not_utf8_is_written(tmp_path, capsys):
    """Issue 42, reproduction 6: a path's bytes as the OS has them (``os.fsencode``), not a
    crash in the lock's name."""
    dest = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xe9sultat-\xff.json")
    assert main(["index", "--json", dest]) == 0
    assert json.loads(Path(dest).read_text())[0]["model"]


def test_the_gguf_cache_trusts_only_its_marked_conversions_and_removes_only_its_own(tmp_path, monkeypatch):
    """Issue 42, reproductions 2 and 3: a converted folder counts only with the marker written
    last (a damaged one is converted again, a foreign one is refused, not deleted), and an
    older version's folder is removed only when it holds just a conversion's files and this
    run does not read it (it was removed whatever it held, even the other model of an audit)."""
    from superweight import paths
    from superweight.errors import ModelLoadError
    from superweight.models.load import CONVERTED_MARKER, _gguf_cache_dir, gguf_to_hf_dir

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "READING", set())
    f = tmp_path / "m.gguf"
    tiny_moe_gguf(f, sw.Coord(1, 3, 5, 2), 400.0)
    target = gguf_to_hf_dir(f)
    assert (target / CONVERTED_MARKER).is_file()
    (target / "model.safetensors").write_bytes(b"damaged")  # a file cut short: not trusted, converted again
    assert gguf_to_hf_dir(f) == target and (target / "model.safetensors").stat().st_size > 100
    old = _gguf_cache_dir(f, 1)
    shutil.copytree(target, old)
    paths.reading(old)  # the other model of this run (audit m.gguf OLD)
    shutil.rmtree(target)
    gguf_to_hf_dir(f)
    assert old.is_dir()
    (old / "notes.txt").write_text("mine")  # not read now, but holds a file a conversion does not write
    paths.READING.clear()
    shutil.rmtree(target)
    gguf_to_hf_dir(f)
    assert (old / "notes.txt").read_text() == "mine"
    (old / "notes.txt").unlink()
    shutil.rmtree(target)
    gguf_to_hf_dir(f)
    assert not old.exists()  # just a conversion's files, not read: removed
    (target / CONVERTED_MARKER).unlink()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="holds files superweight did not write"):
        gguf_to_hf_dir(f)
    assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("argv", [
    ["detect", "{m}", "--json", "{c}/x.json"], ["detect", "{m}", "--plot", "{c}/x.png"],
    ["verify", "{m}", "--coords", "1:1:1", "--json", "{c}/x.json"], ["index", "--json", "{c}/x.json"],
    ["ablate", "{m}", "--coords", "1:1:1", "--tasks", "none", "--out", "{c}/a"],
    ["scale", "{m}", "--coords", "1:1:1", "--factors", "0", "--tasks", "none", "--out", "{c}/s"],
    ["quantize", "{m}", "--out", "{c}/q"], ["recipe", "{m}", "--for", "torchao", "--coords", "1:1:1", "--out", "{c}/r.py"],
    ["quant-compare", "{m}", "--coords", "1:1:1", "--out", "{c}/qc"], ["edit", "{m}", "--zero", "1:1:1", "--out", "{c}/e"],
    ["audit", "{m}", "{m}", "--json", "{c}/x.json"], ["report", "{m}", "--out", "{c}/r.html"],
])
def test_every_command_that_writes_refuses_superweights_cache(model_copy, tmp_path, capsys, monkeypatch, argv):
    """Issue 42: the guard's table: each command that writes, into superweight's own cache
    (a folder of it that exists), refused in one line before any work, nothing written there."""
    cache = tmp_path / "cache"
    (cache / "gguf").mkdir(parents=True)
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(cache))
    before = sorted(p.name for p in cache.rglob("*"))
    fmt = dict(m=model_copy, c=cache / "gguf")
    one_line(capsys, main([a.format(**fmt) for a in argv]), "inside superweight's cache")
    assert sorted(p.name for p in cache.rglob("*") if p.suffix != ".lock") == before
