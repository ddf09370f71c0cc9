"""Atomic writes: complete or nothing, and never a device or a link replaced by a file."""
import os
import stat
import threading

import pytest

from superweight.atomic import atomic_path


def test_a_file_appears_only_once_complete(tmp_path):
    dest = tmp_path / "out.json"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with atomic_path(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new"


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    # the same case as --json /dev/null: renaming over it would swap the device for a file
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    with atomic_path(fifo) as tmp:
        tmp.write_text("hello")
    reader.join(timeout=10)
    assert got == ["hello"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_link_is_followed(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and target.read_text() == "new"
