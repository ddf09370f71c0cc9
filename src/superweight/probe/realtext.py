"""What an edit does to next-token predictions on real prose, in long windows, in two conditions.

A weight can matter in one way of starting a window and not the other (on Qwen2.5-Coder
the delimiter super activation matters when the first token is the document separator,
which then carries no massive activation of its own), so every window set comes twice:

- ``bos``: the window starts with the model's start token (the one its tokenizer prepends,
  else the GPT-2 style document separator ``<|endoftext|>`` when the vocabulary has it,
  else ``bos_token``, else ``eos_token``), then the text at a passage boundary. What comes
  right after the start token decides where the attention sink forms (on Qwen2.5-Coder: a
  word gets the first-token massive activation, a delimiter gets the delimiter one), so
  the bos windows alternate: the first (and every odd one) starts with the blank line that
  ends the passage before, the second (every even one) with the passage's first word;
- ``mid``: the window starts in the middle of a passage, with no special token.

Windows are ``window`` tokens (capped at the model's context), ``count`` of each, cut from
disjoint stretches of the text. An edit is measured against the intact model on the same
windows: the perplexity ratio ``exp(mean NLL edited - mean NLL intact)`` and the mean
KL(intact || edited) over every predicted position. The KL keeps the intact model's top
``TOP_K`` tokens per position and lumps the rest into one bucket, a lower bound on the
exact KL that is within 1e-3 nats of it on SmolLM2 and needs kilobytes, not a
vocabulary-sized tensor per position, between passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from superweight.errors import UsageError
from superweight.probe.passes import Chunked, Group, run, stack

CONDITIONS = ("bos", "mid")
TOP_K = 256


def start_token(tokenizer, vocab_size: int | None = None) -> tuple[int, str] | None:
    """(id, text) of the token a document starts with; None when the tokenizer has none.
    Ids the model has no embedding for (``>= vocab_size``: a tokenizer that added tokens
    the checkpoint never learned) are passed over."""
    def fits(tid):
        return tid is not None and (vocab_size is None or 0 <= tid < vocab_size)

    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    choices = [probe[0]] if len(probe) > len(bare) and probe[-len(bare):] == bare else []
    choices += [tokenizer.get_vocab().get("<|endoftext|>"), tokenizer.bos_token_id, tokenizer.eos_token_id]
    tid = next((t for t in choices if fits(t)), None)
    return None if tid is None else (int(tid), tokenizer.convert_ids_to_tokens(int(tid)))


def context_of(model) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@dataclass
class Windows:
    """Token windows of both conditions, right-padded batches on the model's device."""

    ids: dict[str, torch.Tensor]  # condition -> [n, T]
    mask: dict[str, torch.Tensor]
    window: int
    start: str | None  # the start token's text (bos condition)
    source: str

    @property
    def tokens(self) -> int:
        return sum(int(m.sum()) for m in self.mask.values())

    def to_dict(self) -> dict:
        return {"source": self.source, "window": self.window, "start_token": self.start,
                "windows": {c: int(self.ids[c].shape[0]) for c in self.ids}}


def make_windows(tokenizer, text: str, window: int, count: int, device, source: str = "text",
                 context: int | None = None, vocab_size: int | None = None) -> Windows:
    """``count`` windows of each condition (fewer if the text is short; at least one, else a
    UsageError naming the shortfall). Passages are the text's blank-line-separated blocks."""
    if context:
        window = min(window, context)
    if window < 16:
        raise UsageError(f"real-text windows must be at least 16 tokens, not {window}")
    start = start_token(tokenizer, vocab_size)
    passages = [p.strip() for p in text.split("\n\n") if p.strip()]
    stream: list[int] = []
    starts: list[int] = []  # token offset where each passage begins
    need = count * 2 * window
    gap = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    for p in passages:
        stream += gap
        starts.append(len(stream))
        stream += tokenizer(p, add_special_tokens=False)["input_ids"]
        if len(stream) >= need + window:
            break
    bos_rows, mid_rows = [], []
    pos = 0
    for k in range(count):
        b = next((s for s in starts if s >= pos + len(gap)), None)  # a passage's beginning
        if b is None:
            break
        if k % 2 == 0:
            b -= len(gap)  # the blank line before it
        first = stream[b: b + window - (1 if start else 0)]
        m = b + window + window // 3  # past the bos window, inside a passage
        mid = stream[m: m + window]
        if len(first) < window - (1 if start else 0) or len(mid) < window:
            break
        bos_rows.append(torch.tensor(([start[0]] if start else []) + first))
        mid_rows.append(torch.tensor(mid))
        pos = m + window
    if not bos_rows:
        raise UsageError(f"{source} has {len(stream):,} tokens: too short for one window of {window} tokens "
                         f"in each condition (needs about {2 * window + window // 3:,})")
    ids, mask = {}, {}
    for cond, rows in (("bos", bos_rows), ("mid", mid_rows)):
        i, m = stack(rows)
        ids[cond], mask[cond] = i.to(device), m.to(device)
    return Windows(ids, mask, window, start[1] if start else None, source)


@dataclass
class Baseline:
    """The intact model on one condition's windows."""

    nll: float  # mean NLL per predicted token
    rows: torch.Tensor  # [N] bool: real positions that predict a real next token
    targets: torch.Tensor  # [M]
    top: torch.Tensor  # [M, K] token ids of the intact model's top-K at each predicting position
    top_p: torch.Tensor  # [M, K] their probabilities
    rest: torch.Tensor  # [M] 1 - sum(top_p)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @staticmethod
    def building(ids: torch.Tensor, mask: torch.Tensor) -> "Chunked":
        """A ``passes.Chunked`` reducer that builds the Baseline a chunk of positions at a time."""
        return _BaselineOf(ids, mask)

    @property
    def comparing(self) -> "Chunked":
        """A ``passes.Chunked`` reducer giving (perplexity ratio edited / intact, mean
        KL(intact || edited) in nats), a chunk of positions at a time. Reads only the
        [M, K] entries it needs, never a copy of the [N, V] log-probabilities."""
        return _Compare(self)


class _BaselineOf(Chunked):
    def __init__(self, ids, mask):
        has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
        self.rows = has_next[mask]  # [N]: real positions that predict a real next token
        nxt = mask.clone()
        nxt[:, 0] = False
        self.targets = ids[nxt]  # [M]
        self.at_target = torch.full_like(self.rows, -1, dtype=torch.long)
        self.at_target[self.rows] = self.targets

    def start(self):
        self.nll, self.top, self.top_lp = 0.0, [], []
        return self

    def add(self, lp, at):
        sel = self.rows[at: at + lp.shape[0]].nonzero().flatten()
        self.nll += float(-lp[sel, self.at_target[at + sel]].sum())
        top_lp, top = lp.topk(min(TOP_K, lp.shape[-1]), dim=-1)  # then the rows: no copy of lp[sel]
        self.top.append(top[sel])
        self.top_lp.append(top_lp[sel])

    def result(self) -> Baseline:
        top_p = torch.cat(self.top_lp).exp()
        return Baseline(self.nll / max(int(self.rows.sum()), 1), self.rows, self.targets, torch.cat(self.top), top_p,
                        (1 - top_p.sum(-1)).clamp_min(0))


class _Compare(Chunked):
    def __init__(self, base: Baseline):
        self.b = base
        self.m_of = torch.cumsum(base.rows.long(), 0) - 1  # [N]: each predicting position's index among the M

    def start(self):
        self.nll, self.kl = 0.0, 0.0
        return self

    def add(self, lp, at):
        b = self.b
        sel = b.rows[at: at + lp.shape[0]].nonzero().flatten()
        m = self.m_of[at + sel]
        self.nll += float(-lp[sel, b.targets[m]].sum())
        q = lp[sel[:, None], b.top[m]].exp()
        q_rest = (1 - q.sum(-1)).clamp_min(1e-12)
        top_p, rest = b.top_p[m], b.rest[m]
        p = top_p.clamp_min(1e-12)
        kl = (top_p * (p.log() - q.clamp_min(1e-30).log())).sum(-1)
        kl = kl + torch.where(rest > 0, rest * (rest.clamp_min(1e-12).log() - q_rest.log()), 0.0)
        self.kl += float(kl.sum())

    def result(self) -> tuple[float, float]:
        n = max(int(self.b.rows.sum()), 1)
        return math.exp(self.nll / n - self.b.nll), max(0.0, self.kl / n)


@dataclass
class TextEffect:
    """What one edit does on real text, per condition."""

    ppl_ratio: dict[str, float]
    kl: dict[str, float]

    def worst(self) -> str:
        """The condition where the edit matters most (by KL)."""
        return max(self.kl, key=lambda c: self.kl[c])

    def to_dict(self) -> dict:
        return {c: {"ppl_ratio": self.ppl_ratio[c], "kl": self.kl[c]} for c in self.kl}


class RealText:
    """Intact baselines on ``Windows``; ``measure`` answers edits in batched passes."""

    def __init__(self, lm, windows: Windows):
        self.lm, self.windows = lm, windows
        groups = [Group(windows.ids[c], windows.mask[c], residual=True, keep=True) for c in CONDITIONS]
        answers = run(lm, groups, per_group=[Baseline.building(windows.ids[c], windows.mask[c]) for c in CONDITIONS])
        self.base: dict[str, Baseline] = {c: a.value for c, a in zip(CONDITIONS, answers)}
        # the intact residual stream on each condition's first window: embeddings, then each layer [T, H]
        self.hidden: dict[str, list] = {c: a.hidden for c, a in zip(CONDITIONS, answers)}
        # every decoder layer's intact output on the windows: an edit at layer L starts there
        self.resume = {c: a.resume for c, a in zip(CONDITIONS, answers)}

    def ppl(self, cond: str) -> float:
        return self.base[cond].ppl

    def measure(self, edits: list[tuple], conditions: list[tuple] | None = None) -> list[TextEffect]:
        """What zeroing each edit (a tuple of coordinates zeroed together) does, in batched
        passes: each row starts at its first edited layer. ``conditions``: per edit, the
        conditions to measure it in (default both); its TextEffect holds only those."""
        if not edits:
            return []
        conds = [tuple(cs) for cs in conditions] if conditions is not None else [CONDITIONS] * len(edits)
        w = self.windows
        pairs = [(zero, c) for zero, cs in zip(edits, conds) for c in cs]
        answers = iter(run(self.lm, [Group(w.ids[c], w.mask[c], zero=tuple(zero), resume=self.resume[c])
                                     for zero, c in pairs],
                           per_group=[self.base[c].comparing for _, c in pairs]))
        out = []
        for cs in conds:
            vals = {c: next(answers).value for c in cs}  # (perplexity ratio, KL)
            out.append(TextEffect({c: v[0] for c, v in vals.items()}, {c: v[1] for c, v in vals.items()}))
        return out
