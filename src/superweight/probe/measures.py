"""Data-free measurements of what a change to the weights does to the model's predictions.

``Probe`` holds a few short built-in sentences (or the user's) and the intact model's
next-token distributions on them; ``probe.kl(lp)`` then measures, after an edit, the mean
KL(intact || edited) over every predicted position, and ``probe.ppl()`` the
perplexity on those sentences. ``perplexity`` is the GPTQ-style measure on a long text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from superweight.probe.passes import real_log_probs, stack  # noqa: F401 - re-exported: they were here

from superweight.probe.prompts import DEFAULT_PROMPT, PROBE_SENTENCES  # noqa: F401 - named here too


def _device(model) -> torch.device:
    return next(model.parameters()).device


def encode_prompts(lm, prompts) -> list[torch.Tensor]:
    """Each prompt as token ids [1, T] on the model's device; an empty one, one that tokenizes
    to nothing, or one longer than the context is refused in one line."""
    from superweight.errors import UsageError
    from superweight.probe.realtext import context_of

    if not prompts:
        raise UsageError("no prompt given")
    out = []
    for p in prompts:
        if not p or not p.strip():
            raise UsageError("empty prompt: give some text with --prompt")
        ids = lm.tokenizer(p, return_tensors="pt")["input_ids"]
        if ids.numel() == 0:
            raise UsageError(f"prompt {p!r} tokenizes to nothing")
        ctx = context_of(lm.model)
        if ctx is not None and ids.shape[1] > ctx:
            raise UsageError(f"a prompt of {ids.shape[1]} tokens is longer than {lm.name}'s context of {ctx} tokens; "
                             "give a shorter --prompt")
        out.append(ids.to(lm.device))
    return out


@dataclass
class Probe:
    model: object
    input_ids: torch.Tensor  # [B, T], right-padded
    mask: torch.Tensor  # [B, T] bool
    base_p: torch.Tensor  # [N, V] intact next-token probabilities at the N real positions
    neg_entropy: torch.Tensor  # [N] sum_v p log p
    rows: torch.Tensor  # [N] bool: real positions that predict a real next token
    targets: torch.Tensor  # [M] those next tokens
    intact_nll: float  # mean NLL of the intact model on the targets
    resume: object = None  # passes.Resume: the intact layer outputs on these sentences (edited rows start there)

    @staticmethod
    def encode(model, tokenizer, sentences=PROBE_SENTENCES) -> tuple[torch.Tensor, torch.Tensor]:
        """The sentences as a right-padded batch on the model's device: (ids [B, T], mask [B, T])."""
        ids = [tokenizer(s, add_special_tokens=True)["input_ids"] for s in sentences]
        ids = [i for i in ids if len(i) >= 2]
        if not ids:
            raise ValueError("probe sentences are empty after tokenization")
        input_ids, mask = stack([torch.tensor(i) for i in ids])
        dev = _device(model)
        return input_ids.to(dev), mask.to(dev)

    @classmethod
    def from_base(cls, model, input_ids: torch.Tensor, mask: torch.Tensor, base: torch.Tensor) -> "Probe":
        """A probe from the intact model's log-probs ``base`` [N, V] on ``encode``'s batch."""
        has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
        rows = has_next[mask]  # in the order of mask's real positions
        nxt = mask.clone()
        nxt[:, 0] = False
        targets = input_ids[nxt]  # the token after each position in ``rows``, same order
        nll = cls._nll(base, rows, targets)
        neg_entropy = (base.exp() * base).sum(-1)
        p = base.exp_()  # reuse the buffer: the probabilities are all we keep
        return cls(model, input_ids, mask, p, neg_entropy, rows, targets, nll)

    @staticmethod
    def _nll(lp: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> float:
        return float(-lp[rows].gather(-1, targets[:, None]).mean())

    def kl(self, lp: torch.Tensor) -> float:
        """Mean KL(intact || ``lp``) in nats over all real positions."""
        cross = torch.bmm(self.base_p[:, None, :], lp[:, :, None])[:, 0, 0]  # sum_v p log q, no [N, V] temporary
        return max(0.0, float((self.neg_entropy - cross).mean()))  # >= 0; rounding can dip below

    def ppl(self, lp: torch.Tensor | None = None) -> float:
        """Perplexity on the probe sentences (each position predicting the next token)."""
        nll = self.intact_nll if lp is None else self._nll(lp, self.rows, self.targets)
        return math.exp(nll)


def _tokens(tokenizer, text: str, need: int | None) -> torch.Tensor:
    """The text's tokens, or at least its first ``need`` (as the whole text would give them):
    a prefix cut at a line break, twice as long each time until it holds more than ``need``
    tokens, so the token at the cut is never one of them."""
    def enc(t):
        return tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"][0]

    if need is None:
        return enc(text)
    size = max(4096, 8 * need)
    while size < len(text):
        cut = text.rfind("\n", 0, size)
        ids = enc(text[:cut if cut > 0 else size])
        if ids.numel() > need + 1:
            return ids[:need]
        size *= 2
    return enc(text)


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 2048, max_windows: int | None = None) -> float:
    """GPTQ-style perplexity: tokenize the text, cut into non-overlapping windows of
    ``seqlen`` tokens (the ragged tail is dropped), exp of the mean token NLL. With
    ``max_windows``, only as much of the text as those windows need is tokenized.
    ``model``: a ``LoadedModel`` (the windows then go through ``passes.run``, the one
    engine: batched, the head a chunk at a time) or a bare causal LM (a plain loop)."""
    ids = _tokens(tokenizer, text, None if max_windows is None else max_windows * seqlen)
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    from superweight.models.load import LoadedModel

    if isinstance(model, LoadedModel):
        return _perplexity_passes(model, ids, n, seqlen)
    dev = _device(model)
    total, count = 0.0, 0
    for w in range(n):
        x = ids[w * seqlen : (w + 1) * seqlen][None].to(dev)
        logits = model(input_ids=x, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        total += float(nll)
        count += seqlen - 1
    return math.exp(total / count)


def _perplexity_passes(lm, ids: torch.Tensor, n: int, seqlen: int) -> float:
    from superweight.probe.passes import Chunked, Group, run

    x = ids[: n * seqlen].view(n, seqlen).to(lm.device)
    mask = torch.ones_like(x, dtype=torch.bool)

    class NLL(Chunked):
        """Summed NLL of one window's next tokens, a chunk of positions at a time."""

        def __init__(self, row: torch.Tensor):
            self.row = row

        def start(self):
            self.total = 0.0
            return self

        def add(self, lp, at):
            pos = torch.arange(at, at + lp.shape[0], device=lp.device)
            keep = (pos < seqlen - 1).nonzero().flatten()
            self.total += float(-lp[keep, self.row[pos[keep] + 1]].double().sum())

        def result(self):
            return self.total

    answers = run(lm, [Group(x[i: i + 1], mask[i: i + 1]) for i in range(n)], per_group=[NLL(x[i]) for i in range(n)])
    return math.exp(sum(a.value for a in answers) / (n * (seqlen - 1)))
