"""Text to token ids: the one place that calls a tokenizer (plain lists, no torch).

``tokens`` is the call itself, with or without the special tokens the tokenizer adds to a
document. ``prompts`` and ``sentences`` encode the short texts a proof runs on (the
scanned prompts, the probe sentences); the real-text windows (``realtext.make_windows``)
and the GPTQ-style perplexity (``measures.perplexity``) cut long text through ``tokens``.
"""
from __future__ import annotations

from superweight.errors import UsageError


def tokens(tokenizer, text: str, special: bool = False) -> list[int]:
    """``text``'s token ids; ``special``: with the tokens the tokenizer adds to a document (a BOS)."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def prompts(tokenizer, texts, context: int | None = None, name: str = "the model") -> list[list[int]]:
    """Each prompt's ids, as the model reads a document (special tokens included). An empty
    prompt, one that tokenizes to nothing, or one longer than ``context`` is refused in one line."""
    if not texts:
        raise UsageError("no prompt given")
    out = []
    for p in texts:
        if not p or not p.strip():
            raise UsageError("empty prompt: give some text with --prompt")
        ids = tokens(tokenizer, p, special=True)
        if not ids:
            raise UsageError(f"prompt {p!r} tokenizes to nothing")
        if context is not None and len(ids) > context:
            raise UsageError(f"a prompt of {len(ids)} tokens is longer than {name}'s context of {context} tokens; "
                             "give a shorter --prompt")
        out.append(ids)
    return out


def sentences(tokenizer, texts) -> list[list[int]]:
    """The probe sentences' ids (special tokens included), those of fewer than two tokens
    left out (they predict nothing); none left is an error."""
    out = [ids for ids in (tokens(tokenizer, s, special=True) for s in texts) if len(ids) >= 2]
    if not out:
        raise ValueError("probe sentences are empty after tokenization")
    return out
