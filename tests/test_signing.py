"""signing.py: the cache's secret, what it signs, and the private writes of cache files."""
from __future__ import annotations

import os

import pytest

from superweight import signing


def test_the_secret_is_made_once_private_and_a_short_one_is_replaced(tmp_path):
    where = tmp_path / "v"
    first = signing.secret(where)
    assert first is not None and len(first) >= signing.SECRET_BYTES
    assert signing.secret(where) == first  # made once, then read
    assert (where / ".secret").stat().st_mode & 0o077 == 0  # private to its owner
    (where / ".secret").write_text("abcd")  # short: not a sound secret
    assert signing.known_secret(where) is None
    again = signing.secret(where)
    assert again is not None and again != first


def test_a_signature_verifies_only_its_body_under_its_key(tmp_path):
    key, other = b"k" * 32, b"o" * 32
    sig = signing.mac(key, ["path", "stamp", "sha"])
    assert signing.verifies(key, ["path", "stamp", "sha"], sig)
    assert not signing.verifies(key, ["path", "stamp", "sha2"], sig)
    assert not signing.verifies(other, ["path", "stamp", "sha"], sig)
    assert not signing.verifies(key, ["path", "stamp", "sha"], None)


def test_a_private_write_replaces_a_planted_link_not_its_target(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("theirs")
    dest = tmp_path / "cache" / "entry.json"
    dest.parent.mkdir()
    os.symlink(target, dest)
    signing.write_private(dest, "ours")
    assert target.read_text() == "theirs"
    assert not dest.is_symlink() and dest.read_text() == "ours"


def test_an_unwritable_folder_gives_no_secret_and_says_why(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: a file in the way stands for the unwritable folder
        where = tmp_path / "file"
        where.write_text("not a folder")
    else:
        where = tmp_path / "ro"
        where.mkdir(mode=0o500)
    why: list = []
    assert signing.secret(where, why) is None
    assert why and isinstance(why[0], OSError)
