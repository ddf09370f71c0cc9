"""Text to token ids (probe/tokens.py): the prompts a proof scans and the probe sentences,
as the model reads a document, and the one-line refusals of what cannot be read."""
from __future__ import annotations

import pytest
from tiny import tiny_model

import superweight as sw
from superweight.probe.tokens import prompts, sentences, tokens


@pytest.fixture(scope="module")
def tok():
    return tiny_model("llama").tokenizer


def test_a_prompt_is_read_as_a_document_with_its_special_tokens(tok):
    plain, doc = tokens(tok, "Apple Inc. is a worldwide tech company."), prompts(tok, ["Apple Inc. is a worldwide tech company."])[0]
    assert doc[-len(plain):] == plain and len(doc) >= len(plain)
    if tok.bos_token_id is not None and tok("x")["input_ids"][0] == tok.bos_token_id:
        assert doc[0] == tok.bos_token_id and len(doc) == len(plain) + 1


@pytest.mark.parametrize("given,msg", [([], "no prompt given"), ([""], "empty prompt"), (["   "], "empty prompt")])
def test_no_prompt_or_an_empty_one_is_one_line(tok, given, msg):
    with pytest.raises(sw.UsageError, match=msg):
        prompts(tok, given)


def test_a_prompt_longer_than_the_context_names_the_model_and_both_lengths(tok):
    text = "one two three four five six seven eight nine ten"
    n = len(prompts(tok, [text])[0])
    assert prompts(tok, [text], context=n) == prompts(tok, [text])
    with pytest.raises(sw.UsageError, match=rf"a prompt of {n} tokens is longer than tiny's context of {n - 1} tokens"):
        prompts(tok, [text], context=n - 1, name="tiny")


def test_probe_sentences_that_predict_nothing_are_left_out(tok):
    got = sentences(tok, ["A whole sentence to predict.", ""])
    assert len(got) == 1 and len(got[0]) >= 2
    with pytest.raises(ValueError, match="empty after tokenization"):
        sentences(tok, ["", ""])
