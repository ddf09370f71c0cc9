"""The verdict cache: prove once, reuse everywhere, never trust a damaged or foreign entry."""
from __future__ import annotations

import json

import pytest
from tiny import plant, tiny_model

import superweight as sw
import superweight.verdicts as verdicts
from superweight.results import DetectConfig, DetectResult
from superweight.verdicts import cache_dir, detection, from_state, to_state, verify_once


def detect_once(lm, cfg, **kw):
    """(result, provenance) of ``detection``, as these tests read them."""
    d = detection(lm, cfg, **kw)
    return d.result, d.provenance

CFG = DetectConfig(window=32)
COORD = sw.Coord(1, 5, 7)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_VERDICT_CACHE", str(tmp_path / "cache" / "verdicts"))
    monkeypatch.delenv("SUPERWEIGHT_VERDICTS", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    lm = tiny_model("llama")
    plant(lm, COORD, 400)
    d = tmp_path_factory.mktemp("ckpt") / "m"
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def entry(cache) -> "Path":  # noqa: F821
    (f,) = (cache / "verdicts").glob("*.json")
    return f


def test_the_state_round_trips_every_field(planted_dir, cache):
    lm = sw.load(str(planted_dir))
    result = sw.detect(lm, CFG)
    back = from_state(DetectResult, to_state(result))
    assert back.to_dict() == result.to_dict()
    assert back.layers == result.layers and back.config == result.config
    graded = result.super_weights + result.strong
    assert graded and (back.super_weights + back.strong)[0].effect.controls == graded[0].effect.controls


def test_second_call_comes_from_the_cache(planted_dir, cache):
    lm = sw.load(str(planted_dir))
    first, p1 = detect_once(lm, CFG)
    assert p1.source == "computed" and p1.seconds > 0 and p1.computed_at
    again, p2 = detect_once(lm, CFG)
    assert p2.source == "cache" and p2.computed_at == p1.computed_at and p2.key == p1.key
    assert again.to_dict() == first.to_dict()
    assert (again.coords + again.strong_coords) == [COORD]
    assert "from the cache" in p2.describe()
    fresh, p3 = detect_once(lm, CFG, recompute=True)
    assert p3.source == "computed" and "--recompute" in p3.note
    other, p4 = detect_once(lm, DetectConfig(window=32, strong_kl=0.03))  # another config: another entry
    assert p4.source == "computed" and p4.key != p1.key
    assert len(list((cache / "verdicts").glob("*.json"))) == 2


@pytest.mark.parametrize("damage", ["number", "truncate", "mac", "foreign"])
def test_a_tampered_entry_is_recomputed_not_trusted(planted_dir, cache, damage):
    lm = sw.load(str(planted_dir))
    first, _ = detect_once(lm, CFG)
    f = entry(cache)
    e = json.loads(f.read_text())
    if damage == "number":  # a grade's number changed by hand: the MAC no longer verifies
        e["payload"]["probe_ppl"] = 1.0
        f.write_text(json.dumps(e))
    elif damage == "truncate":
        f.write_text(f.read_text()[:200])
    elif damage == "mac":
        e["payload"]["super_weights"] = []
        e["mac"] = "0" * 64
        f.write_text(json.dumps(e))
    else:  # an entry for another config, copied under this key's name
        detect_once(lm, DetectConfig(window=32, strong_kl=0.03))
        other = next(p for p in (cache / "verdicts").glob("*.json") if p != f)
        f.write_bytes(other.read_bytes())
    got, prov = detect_once(lm, CFG)
    assert prov.source == "computed" and prov.note.startswith("recomputed:"), prov
    assert got.to_dict() == first.to_dict()
    assert from_state(DetectResult, json.loads(f.read_text())["payload"]).to_dict() == first.to_dict()  # rewritten


def test_a_changed_checkpoint_is_another_entry(planted_dir, cache, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(planted_dir, copy)
    lm = sw.load(str(copy))
    _, p1 = detect_once(lm, CFG)
    w = load_file(copy / "model.safetensors")
    w["model.layers.0.mlp.down_proj.weight"][0, 0] += 1.0
    save_file(w, copy / "model.safetensors", metadata={"format": "pt"})
    _, p2 = detect_once(sw.load(str(copy)), CFG)
    assert p2.source == "computed" and p2.key != p1.key


def test_a_wrapped_model_and_the_off_switch_are_not_cached(planted_dir, cache, monkeypatch):
    lm = sw.load(str(planted_dir), stream=False)
    wrapped = sw.LoadedModel.wrap(lm.model, lm.tokenizer)
    _, prov = detect_once(wrapped, CFG)
    assert prov.source == "uncached" and "no checkpoint" in prov.note
    monkeypatch.setenv("SUPERWEIGHT_VERDICTS", "off")
    _, prov = detect_once(lm, CFG)
    assert prov.source == "uncached" and "off" in prov.note
    assert not list(cache.glob("verdicts/*.json"))


def test_verify_is_cached_per_coordinates(planted_dir, cache):
    lm = sw.load(str(planted_dir))
    rep, p1 = verify_once(lm, [COORD], CFG)
    assert p1.source == "computed" and rep.verdicts[0].grade in ("super", "strong")
    again, p2 = verify_once(lm, [COORD], CFG)
    assert p2.source == "cache" and again.to_dict() == rep.to_dict()
    _, p3 = verify_once(lm, [sw.Coord(1, 6, 7)], CFG)
    assert p3.source == "computed"


@pytest.mark.slow
def test_a_second_command_says_the_verdict_came_from_the_cache(planted_dir, cache, cli, cli_here, tmp_path,
                                                                monkeypatch):
    """The first commands in this process; the one that must find the verdict, a fresh process."""
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(cache))
    first = cli_here("detect", str(planted_dir), "--json", "-")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["verdict"]["source"] == "computed"
    q = cli_here("quantize", str(planted_dir), "--bits", "8", "--out", str(tmp_path / "q"))
    assert q.returncode == 0, q.stderr
    assert "super weights: verdict from the cache, computed" in q.stdout
    d = cli("detect", str(planted_dir), "--json", "-", env={**__import__("os").environ, "SUPERWEIGHT_CACHE": str(cache)})
    out = json.loads(d.stdout)
    assert out["verdict"]["source"] == "cache"
    assert "verdict from the cache" in d.stderr
    r = cli_here("detect", str(planted_dir), "--recompute", "--json", "-")
    assert json.loads(r.stdout)["verdict"]["source"] == "computed"


def test_a_cached_verdict_is_answered_without_loading_the_model(planted_dir, cache, cli_here, tmp_path):
    """The second ``detect`` reads the verdict from the checkpoint's fingerprint: no torch, no
    model; a copy of the checkpoint is the same entry, shown under the copy's own path."""
    import shutil
    import subprocess
    import sys

    first = cli_here("detect", str(planted_dir), "--window", "32", "--json", "-")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["verdict"]["source"] == "computed"
    copy = tmp_path / "copy"
    shutil.copytree(planted_dir, copy)
    code = ("import json, sys, io, contextlib; from superweight.cli import main; out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out): code = main(['detect', sys.argv[1], '--window', '32', '--json', '-'])\n"
            "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules,"
            " 'out': json.loads(out.getvalue())}))")
    for where in (planted_dir, copy):
        p = subprocess.run([sys.executable, "-c", code, str(where)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        assert got["code"] == 0 and not got["torch"] and not got["transformers"]
        assert got["out"]["verdict"]["source"] == "cache" and got["out"]["model"] == str(where)
        same = {k: v for k, v in json.loads(first.stdout).items() if k not in ("model", "verdict")}
        assert {k: v for k, v in got["out"].items() if k not in ("model", "verdict")} == same
    again = cli_here("detect", str(copy), "--window", "32", "--recompute", "--json", "-")
    assert json.loads(again.stdout)["verdict"]["source"] == "computed"


def test_a_short_secret_is_replaced_and_what_it_signed_is_not_trusted(planted_dir, cache):
    """A full disk at the first use once left an empty secret: entries signed with the empty
    key were trusted. Now a secret under 32 bytes is replaced, and such an entry recomputed."""
    from superweight.signing import mac
    from superweight.verdicts import _digest, verdict_key

    lm = sw.load(str(planted_dir))
    where = cache / "verdicts"
    where.mkdir(parents=True)
    (where / ".secret").write_text("")
    key = verdict_key(lm, CFG)
    real, _ = detect_once(lm, CFG, recompute=True)
    forged = to_state(real)
    forged["super_weights"], forged["strong"] = [], []
    body = {"key": key, "computed_at": "then", "seconds": 1.0, "payload": forged}
    (where / f"{_digest(key)}.json").write_text(json.dumps({**body, "mac": mac(b"", body)}))
    got, prov = detect_once(lm, CFG)
    assert prov.source == "computed" and "does not verify" in prov.note
    assert got.coords + got.strong_coords == [COORD]
    assert len(bytes.fromhex((where / ".secret").read_text())) == 32


def test_a_link_planted_in_the_cache_is_replaced_not_written_through(planted_dir, cache, tmp_path):
    from superweight.verdicts import _digest, verdict_key

    lm = sw.load(str(planted_dir))
    detect_once(lm, CFG)  # the cache and its secret exist
    entry(cache).unlink()
    outside = tmp_path / "precious.txt"
    outside.write_text("mine")
    path = cache / "verdicts" / f"{_digest(verdict_key(lm, CFG))}.json"
    path.symlink_to(outside)
    _, prov = detect_once(lm, CFG)
    assert prov.source == "computed"
    assert outside.read_text() == "mine" and not path.is_symlink() and path.is_file()


def test_an_edited_remembered_hash_is_not_trusted(tmp_path, monkeypatch):
    import hashlib

    from superweight.hashing import content_hash

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("SUPERWEIGHT_VERDICT_CACHE", str(tmp_path / "c" / "verdicts"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    true = hashlib.sha256(b"weights").hexdigest()
    assert content_hash(f) == true
    memo = tmp_path / "c" / "gguf" / "hashes.json"
    known = json.loads(memo.read_text())
    known[str(f.resolve())]["sha256"] = "0" * 64  # a stale verdict's checkpoint, by hand
    memo.write_text(json.dumps(known))
    assert content_hash(f) == true


def test_json_naming_the_runs_own_cache_entry_is_refused_not_waited_on(planted_dir, cache, cli_here):
    """The entry's lock is taken by the output check, then asked for by the cache: one line,
    at once, instead of waiting on itself forever."""
    from superweight.verdicts import _digest, verdict_key

    key = verdict_key(sw.load(str(planted_dir)), DetectConfig(window=32))
    path = cache / "verdicts" / f"{_digest(key)}.json"
    p = cli_here("detect", str(planted_dir), "--window", "32", "--json", str(path))
    assert p.returncode == 2 and "verdict cache" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_second_run_says_whose_proof_it_waits_for(planted_dir, cache, capsys):
    import threading

    from superweight.atomic import locked
    from superweight.verdicts import _digest, verdict_key

    lm = sw.load(str(planted_dir))
    path = cache / "verdicts" / f"{_digest(verdict_key(lm, CFG))}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    got = []
    with locked(path):  # another run (a thread here), proving this model
        t = threading.Thread(target=lambda: got.append(detect_once(lm, CFG)))
        t.start()
        t.join(1.0)
        assert t.is_alive()
    t.join(120)
    assert got and f"waiting for the run (pid {__import__('os').getpid()}) proving this model" in capsys.readouterr().err


def test_a_cached_verdict_names_the_model_as_it_is_named_now(planted_dir, cache, tmp_path):
    """Issue 40: a verdict proven on one copy (a path in a cache, say) and read for the same
    content under another name is reported under the name given now, by every reader."""
    import shutil

    from superweight.overview import ReportConfig, build_report

    first, _ = detect_once(sw.load(str(planted_dir)), CFG)
    assert first.model == str(planted_dir)
    other = tmp_path / "as-the-user-named-it"
    shutil.copytree(planted_dir, other)
    lm = sw.load(str(other))
    again, prov = detect_once(lm, CFG)
    assert prov.source == "cache" and again.model == str(other)
    rep = build_report(lm, ReportConfig(ablate=False, quant=False), CFG)
    assert rep.result.model == str(other) and rep.model == str(other)


def test_a_window_longer_than_the_context_is_capped_said_and_keyed_by_what_was_read(planted_dir, cache):
    """Issue 42 (minor): a huge --window was capped silently and its verdict keyed by the huge
    number (so never found again under the window really read)."""
    from dataclasses import replace

    from superweight.probe.realtext import context_of

    lm = sw.load(str(planted_dir))
    ctx = context_of(lm.model)
    said = []
    huge, p1 = detect_once(lm, replace(CFG, window=10**6), log=said.append)
    assert any(f"--window 1,000,000 is longer than the model's context: windows of {ctx:,} tokens" in s for s in said)
    same, p2 = detect_once(lm, replace(CFG, window=ctx))
    assert p2.source == "cache" and p2.key == p1.key


def test_a_full_disk_for_the_secret_is_said_as_such(planted_dir, cache, monkeypatch):
    """Issue 42 (minor): a full disk while writing the cache's secret said "not writable"."""
    import errno

    from superweight import signing

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(signing.tempfile, "mkstemp", full)
    _, prov = detect_once(sw.load(str(planted_dir)), CFG)
    assert prov.source == "uncached" and "no space left on the device for" in prov.note


def test_detect_asks_the_cache_once(planted_dir, cache, cli_here, monkeypatch):
    """Issue 41: ``superweight detect`` makes one call (``detection``) and the entry is read at
    most once a run: looked up by the source before loading; on a miss, loaded and proved
    with no second read (the lookup found none and no other run wrote it meanwhile); on a
    hit, never loaded."""
    import superweight.cli as cli

    asked, loads = [], []
    real_read, real_load = verdicts._read, cli._load
    monkeypatch.setattr(verdicts, "_read", lambda *a: asked.append("read") or real_read(*a))
    monkeypatch.setattr(cli, "_load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    miss = cli_here("detect", str(planted_dir), "--window", "32", "--json", "-")
    assert miss.returncode == 0, miss.stderr
    assert json.loads(miss.stdout)["verdict"]["source"] == "computed" and asked == [] and loads == [1]
    hit = cli_here("detect", str(planted_dir), "--window", "32", "--json", "-")
    assert json.loads(hit.stdout)["verdict"]["source"] == "cache" and asked == ["read"] and loads == [1]
    (cache / "verdicts" / f"{json.loads(hit.stdout)['verdict']['key']}.json").write_text("{}")  # damaged
    again = cli_here("detect", str(planted_dir), "--window", "32", "--json", "-")
    got = json.loads(again.stdout)["verdict"]
    assert got["source"] == "computed" and got["note"] == "recomputed: a damaged cache entry" and loads == [1, 1]


def test_an_entry_written_between_the_lookup_and_the_proof_is_read_not_proved_again(planted_dir, cache):
    """The lookup runs without the lock: another run may land the entry before this one
    takes it; this run then reads that verdict instead of proving again."""
    from superweight.models.source import resolve

    lm = sw.load(str(planted_dir))
    source = resolve(str(planted_dir))
    v = verdicts.Verdicts()
    assert v.lookup(source, CFG, "float32", "cpu", DetectResult) is None  # nothing yet
    detect_once(lm, CFG)  # another run proves and stores it meanwhile
    d = detection(lm, CFG, verdicts=v)
    assert d.provenance.source == "cache"
