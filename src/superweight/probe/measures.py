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

from superweight.probe.tokens import tokens


def _device(model) -> torch.device:
    return next(model.parameters()).device


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

    @classmethod
    def from_base(cls, model, input_ids: torch.Tensor, mask: torch.Tensor, base: torch.Tensor) -> "Probe":
        """A probe from the intact model's log-probs ``base`` [N, V] on a right-padded batch of sentences (``stack`` of ``tokens.sentences``)."""
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
        return torch.tensor(tokens(tokenizer, t), dtype=torch.long)

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
    nlls = window_nlls(model, tokenizer, text, seqlen, max_windows)
    return math.exp(math.fsum(nlls) / len(nlls))


@dataclass(frozen=True)
class Perplexity:
    """A perplexity over windows with its spread: ``value`` = exp(mean token NLL), ``lo``/``hi``
    its 95% bootstrap interval over the windows (exp of the mean NLL's, ``records.spread``);
    ``nlls``: each window's mean token NLL, for ratios paired window by window."""

    value: float
    lo: float
    hi: float
    nlls: tuple[float, ...] = ()

    @classmethod
    def of(cls, nlls) -> "Perplexity":
        from superweight.probe.records import spread

        lo, hi = spread(list(nlls))
        return cls(math.exp(math.fsum(nlls) / len(nlls)), math.exp(lo), math.exp(hi), tuple(nlls))

    def interval(self) -> list[float]:
        return [self.lo, self.hi]

    def ratio(self, ref: "Perplexity") -> tuple[float, float, float]:
        """This perplexity over ``ref``'s on the same windows, with the 95% bootstrap interval
        of the ratio paired window by window (the windows' own spread cancels)."""
        from superweight.probe.records import spread

        if not self.nlls or len(self.nlls) != len(ref.nlls):  # not the same windows: no pairing
            r = self.value / ref.value
            return r, r, r
        d = [a - b for a, b in zip(self.nlls, ref.nlls)]
        lo, hi = spread(d)
        return math.exp(math.fsum(d) / len(d)), math.exp(lo), math.exp(hi)


def perplexity_spread(model, tokenizer, text: str, seqlen: int = 2048, max_windows: int | None = None) -> Perplexity:
    """``perplexity`` with its interval over the windows."""
    return Perplexity.of(window_nlls(model, tokenizer, text, seqlen, max_windows))


@torch.no_grad()
def window_nlls(model, tokenizer, text: str, seqlen: int = 2048, max_windows: int | None = None) -> list[float]:
    """The mean token NLL of each window ``perplexity`` reads (windows of equal length, so
    exp of their mean is the perplexity)."""
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
    out = []
    for w in range(n):
        x = ids[w * seqlen : (w + 1) * seqlen][None].to(dev)
        logits = model(input_ids=x, use_cache=False).logits.float()
        out.append(float(F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")) / (seqlen - 1))
    return out


def _perplexity_passes(lm, ids: torch.Tensor, n: int, seqlen: int) -> list[float]:
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
    return [a.value / (seqlen - 1) for a in answers]
