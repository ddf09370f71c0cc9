"""Data-free measurements of what a change to the weights does to the model's predictions.

``Probe`` holds a few short built-in sentences (or the user's) and the intact model's
next-token distributions on them; ``probe.kl()`` then measures, after an edit, the mean
KL(intact || edited) over every predicted position, and ``probe.ppl()`` the
perplexity on those sentences. ``perplexity`` is the GPTQ-style measure on a long text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PROBE_SENTENCES: tuple[str, ...] = (
    "The capital of France is Paris, and it is known for the Eiffel Tower.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door and walked slowly into the dark room.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "The quick brown fox jumps over the lazy dog.",
    "Summer is hot. Winter is cold.",
    "He bought three apples, two oranges and a loaf of bread.",
    "Machine learning models are trained on large amounts of data.",
)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, V] next-token log-probabilities in float32."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return F.log_softmax(out.logits.float(), dim=-1)


@dataclass
class Probe:
    model: object
    input_ids: torch.Tensor  # [B, T], right-padded
    mask: torch.Tensor  # [B, T] bool
    base: torch.Tensor  # [B, T, V] intact log-probs

    @classmethod
    def build(cls, model, tokenizer, sentences=PROBE_SENTENCES) -> "Probe":
        ids = [tokenizer(s, add_special_tokens=True)["input_ids"] for s in sentences]
        ids = [i for i in ids if len(i) >= 2]
        if not ids:
            raise ValueError("probe sentences are empty after tokenization")
        width = max(len(i) for i in ids)
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for b, i in enumerate(ids):
            input_ids[b, : len(i)] = torch.tensor(i)
            mask[b, : len(i)] = True
        dev = _device(model)
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        return cls(model, input_ids, mask, log_probs(model, input_ids, mask.long()))

    def current(self) -> torch.Tensor:
        return log_probs(self.model, self.input_ids, self.mask.long())

    def kl(self, lp: torch.Tensor | None = None) -> float:
        """Mean KL(intact || now) in nats over all real positions."""
        lp = self.current() if lp is None else lp
        kl = (self.base.exp() * (self.base - lp)).sum(-1)
        return float(kl[self.mask].mean())

    def ppl(self, lp: torch.Tensor | None = None) -> float:
        lp = self.base if lp is None else lp
        tgt = self.input_ids[:, 1:]
        nll = -lp[:, :-1].gather(-1, tgt[..., None])[..., 0]
        return math.exp(float(nll[self.mask[:, 1:]].mean()))


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 2048, max_windows: int | None = None) -> float:
    """GPTQ-style perplexity: tokenize the whole text, cut into non-overlapping windows of
    ``seqlen`` tokens (the ragged tail is dropped), exp of the mean token NLL."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    dev = _device(model)
    total, count = 0.0, 0
    for w in range(n):
        x = ids[w * seqlen : (w + 1) * seqlen][None].to(dev)
        logits = model(input_ids=x, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        total += float(nll)
        count += seqlen - 1
    return math.exp(total / count)
