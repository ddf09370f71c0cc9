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
import random
from dataclasses import dataclass

import torch

from superweight.errors import UsageError
from superweight.probe.passes import Chunked, Group, run, stack
from superweight.probe.tokens import tokens
from superweight.probe.records import TextEffect

CONDITIONS = ("bos", "mid")
TOP_K = 256


def start_token(tokenizer, vocab_size: int | None = None) -> tuple[int, str] | None:
    """(id, text) of the token a document starts with; None when the tokenizer has none.
    Ids the model has no embedding for (``>= vocab_size``: a tokenizer that added tokens
    the checkpoint never learned) are passed over."""
    def fits(tid):
        return tid is not None and (vocab_size is None or 0 <= tid < vocab_size)

    probe = tokens(tokenizer, "a", special=True)
    bare = tokens(tokenizer, "a")
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
    seed: int = 0  # 0: passages in the text's order; else shuffled by this seed

    @property
    def tokens(self) -> int:
        return sum(int(m.sum()) for m in self.mask.values())

    @property
    def count(self) -> int:
        """Windows per condition."""
        return int(self.ids[CONDITIONS[0]].shape[0])

    def rows(self, lo: int, hi: int) -> "Windows":
        """Windows ``lo`` to ``hi - 1`` of each condition."""
        return Windows({c: v[lo:hi] for c, v in self.ids.items()}, {c: v[lo:hi] for c, v in self.mask.items()},
                       self.window, self.start, self.source, self.seed)

    def to_dict(self) -> dict:
        return {"source": self.source, "window": self.window, "start_token": self.start, "seed": self.seed,
                "windows": {c: int(self.ids[c].shape[0]) for c in self.ids}}


def make_windows(tokenizer, text: str, window: int, count: int, device, source: str = "text",
                 context: int | None = None, vocab_size: int | None = None, seed: int = 0) -> Windows:
    """``count`` windows of each condition (fewer if the text is short; at least one, else a
    UsageError naming the shortfall). Passages are the text's blank-line-separated blocks,
    taken in the text's order (``seed`` 0) or shuffled by ``seed``: another draw of text."""
    if context:
        window = min(window, context)
    if window < 16:
        raise UsageError(f"real-text windows must be at least 16 tokens, not {window}")
    start = start_token(tokenizer, vocab_size)
    passages = [p.strip() for p in text.split("\n\n") if p.strip()]
    if seed:
        random.Random(seed).shuffle(passages)
    gap = tokens(tokenizer, "\n\n")
    stream: list[int] = []
    starts: list[int] = []  # token offset where each passage begins
    read, need = 0, count * 3 * window  # tokens read before a first try; twice as many while windows fall short
    while True:
        while read < len(passages) and len(stream) < need:
            stream += gap
            starts.append(len(stream))
            stream += tokens(tokenizer, passages[read])
            read += 1
        bos_rows, mid_rows = _cut(stream, starts, len(gap), window, count, start)
        if len(bos_rows) == count or read == len(passages):
            break
        need *= 2
    if not bos_rows:
        raise UsageError(f"{source} has {len(stream):,} tokens: too short for one window of {window} tokens "
                         f"in each condition (needs about {2 * window + window // 3:,})")
    ids, mask = {}, {}
    for cond, rows in (("bos", bos_rows), ("mid", mid_rows)):
        i, m = stack(rows)
        ids[cond], mask[cond] = i.to(device), m.to(device)
    return Windows(ids, mask, window, start[1] if start else None, source, seed)


def _cut(stream: list[int], starts: list[int], gap: int, window: int, count: int, start) -> tuple[list, list]:
    """Up to ``count`` (bos, mid) window pairs from a token stream: each bos window at a
    passage's beginning (every other one with the blank line before it), its mid window a
    third of a window past its end, inside the text; the next pair after that."""
    bos_rows, mid_rows = [], []
    pos = 0
    for k in range(count):
        b = next((s for s in starts if s >= pos + gap), None)  # a passage's beginning
        if b is None:
            break
        if k % 2 == 0:
            b -= gap  # the blank line before it
        first = stream[b: b + window - (1 if start else 0)]
        m = b + window + window // 3  # past the bos window, inside a passage
        mid = stream[m: m + window]
        if len(first) < window - (1 if start else 0) or len(mid) < window:
            break
        bos_rows.append(torch.tensor(([start[0]] if start else []) + first))
        mid_rows.append(torch.tensor(mid))
        pos = m + window
    return bos_rows, mid_rows


@dataclass
class Baseline:
    """The intact model on one condition's windows."""

    nll: float  # mean NLL per predicted token
    rows: torch.Tensor  # [N] bool: real positions that predict a real next token
    targets: torch.Tensor  # [M]
    top: torch.Tensor  # [M, K] token ids of the intact model's top-K at each predicting position
    top_p: torch.Tensor  # [M, K] their probabilities
    rest: torch.Tensor  # [M] 1 - sum(top_p)
    window: torch.Tensor  # [M] the window (batch row) of each predicting position
    window_nll: torch.Tensor  # [n] mean NLL per window

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @staticmethod
    def building(ids: torch.Tensor, mask: torch.Tensor) -> "Chunked":
        """A ``passes.Chunked`` reducer that builds the Baseline a chunk of positions at a time."""
        return _BaselineOf(ids, mask)

    @property
    def comparing(self) -> "Chunked":
        """A ``passes.Chunked`` reducer giving, per window, (mean NLL edited - intact, mean
        KL(intact || edited) in nats), a chunk of positions at a time. Reads only the
        [M, K] entries it needs, never a copy of the [N, V] log-probabilities."""
        return _Compare(self)


def _per_window(values: torch.Tensor, window: torch.Tensor, n: int) -> torch.Tensor:
    """[M] values -> [n] their mean within each window."""
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, window, values.double())
    return total / torch.bincount(window, minlength=n).clamp_min(1)


class _BaselineOf(Chunked):
    def __init__(self, ids, mask):
        has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
        self.rows = has_next[mask]  # [N]: real positions that predict a real next token
        nxt = mask.clone()
        nxt[:, 0] = False
        self.targets = ids[nxt]  # [M]
        self.window = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(mask)[has_next & mask]
        self.n = ids.shape[0]
        self.at_target = torch.full_like(self.rows, -1, dtype=torch.long)
        self.at_target[self.rows] = self.targets

    def start(self):
        self.nll, self.top, self.top_lp = [], [], []
        return self

    def add(self, lp, at):
        sel = self.rows[at: at + lp.shape[0]].nonzero().flatten()
        self.nll.append(-lp[sel, self.at_target[at + sel]].double())
        top_lp, top = lp.topk(min(TOP_K, lp.shape[-1]), dim=-1)  # then the rows: no copy of lp[sel]
        self.top.append(top[sel])
        self.top_lp.append(top_lp[sel])

    def result(self) -> Baseline:
        top_p = torch.cat(self.top_lp).exp()
        nll = torch.cat(self.nll).cpu()
        window = self.window.cpu()
        return Baseline(float(nll.sum()) / max(int(self.rows.sum()), 1), self.rows, self.targets, torch.cat(self.top),
                        top_p, (1 - top_p.sum(-1)).clamp_min(0), window, _per_window(nll, window, self.n))


class _Compare(Chunked):
    def __init__(self, base: Baseline):
        self.b = base
        self.m_of = torch.cumsum(base.rows.long(), 0) - 1  # [N]: each predicting position's index among the M

    def start(self):
        self.nll, self.kl = [], []
        return self

    def add(self, lp, at):
        b = self.b
        sel = b.rows[at: at + lp.shape[0]].nonzero().flatten()
        m = self.m_of[at + sel]
        self.nll.append(-lp[sel, b.targets[m]].double())
        q = lp[sel[:, None], b.top[m]].exp()
        q_rest = (1 - q.sum(-1)).clamp_min(1e-12)
        top_p, rest = b.top_p[m], b.rest[m]
        p = top_p.clamp_min(1e-12)
        kl = (top_p * (p.log() - q.clamp_min(1e-30).log())).sum(-1)
        kl = kl + torch.where(rest > 0, rest * (rest.clamp_min(1e-12).log() - q_rest.log()), 0.0)
        self.kl.append(kl.double())

    def result(self) -> tuple[list[float], list[float]]:
        b, n = self.b, int(self.b.window_nll.shape[0])
        nll = _per_window(torch.cat(self.nll).cpu(), b.window, n) - b.window_nll
        kl = _per_window(torch.cat(self.kl).cpu(), b.window, n).clamp_min(0)
        return nll.tolist(), kl.tolist()


def _ppl(stages: list[dict], cond: str) -> float:
    """The intact perplexity of ``cond`` over the windows of ``stages``."""
    return math.exp(float(torch.cat([s["base"][cond].window_nll for s in stages]).mean()))


class RealText:
    """Intact baselines on ``Windows``, computed a stage of windows at a time as the proof
    asks for more; ``measure`` answers edits in batched passes."""

    def __init__(self, lm, windows: Windows, first: int | None = None):
        self.lm, self.windows = lm, windows
        n, first = windows.count, min(first or windows.count, windows.count)
        self.stops = []  # windows per condition after each stage: first, then doubling up to all
        while not self.stops or self.stops[-1] < n:
            self.stops.append(min(n, first if not self.stops else 2 * self.stops[-1]))
        self.starts = [0] + self.stops[:-1]  # the first window of each stage
        self._stages: list[dict] = []  # per stage: {"base", "resume"} per condition
        self.hidden: dict[str, list] = {}  # the intact residual stream on each condition's first window
        self.summary: dict = {}  # what the proof read so far (``_stage`` keeps it)
        self._stage(0)
        self.finite = all(math.isfinite(b.nll) for b in self._stages[0]["base"].values())  # else: NaN or Inf somewhere

    @property
    def base(self) -> dict[str, Baseline]:
        """The first stage's intact baselines (its windows: ``stops[0]`` per condition)."""
        return self._stages[0]["base"]

    def ppl(self, cond: str) -> float:
        """The intact perplexity on the windows measured so far (``summary``'s windows)."""
        return _ppl(self._stages, cond)

    def _stage(self, k: int) -> dict:
        """The intact baselines and layer outputs of stage ``k``'s windows, computed on first use."""
        while len(self._stages) <= k:
            j = len(self._stages)
            w = self.windows.rows(self.starts[j], self.stops[j])
            groups = [Group(w.ids[c], w.mask[c], residual=j == 0, keep=True) for c in CONDITIONS]
            answers = run(self.lm, groups, per_group=[Baseline.building(w.ids[c], w.mask[c]) for c in CONDITIONS])
            self._stages.append({"w": w, "base": {c: a.value for c, a in zip(CONDITIONS, answers)},
                                 # every decoder layer's intact output on the windows: an edit at layer L starts there
                                 "resume": {c: a.resume for c, a in zip(CONDITIONS, answers)}})
            if j == 0:  # embeddings, then each layer [T, H]
                self.hidden = {c: a.hidden for c, a in zip(CONDITIONS, answers)}
            # what the proof read: its windows (the stages computed), the budget, the first
            # look, and the intact perplexity per condition on those windows
            self.summary = {**self.windows.rows(0, self.stops[j]).to_dict(), "budget": self.windows.count,
                            "first": self.stops[0], "ppl_intact": {c: _ppl(self._stages, c) for c in CONDITIONS}}
        return self._stages[k]

    def measure(self, edits: list[tuple], conditions: list[tuple] | None = None, windows: int | None = None,
                have: list[TextEffect | None] | None = None) -> list[TextEffect]:
        """What zeroing each edit (a tuple of coordinates zeroed together) does on the first
        ``windows`` windows of each condition (default: the first stage's), in batched
        passes: each row starts at its first edited layer. ``conditions``: per edit, the
        conditions to measure it in (default both); ``have``: per edit, what is already
        measured (those windows are not run again; the result extends it)."""
        if not edits:
            return []
        conds = [tuple(cs) for cs in conditions] if conditions is not None else [CONDITIONS] * len(edits)
        have = list(have) if have is not None else [None] * len(edits)
        upto = self.stops[0] if windows is None else windows
        todo = []  # (edit index, condition, stage)
        for i, cs in enumerate(conds):
            for c in cs:
                done = have[i].windows(c) if have[i] is not None else 0
                todo += [(i, c, k) for k, (lo, hi) in enumerate(zip(self.starts, self.stops)) if lo >= done and hi <= upto]
        groups, reducers = [], []
        for i, c, k in todo:
            st = self._stage(k)
            groups.append(Group(st["w"].ids[c], st["w"].mask[c], zero=tuple(edits[i]), resume=st["resume"][c]))
            reducers.append(st["base"][c].comparing)
        answers = run(self.lm, groups, per_group=reducers) if groups else []
        nll = [{c: [] for c in cs} for cs in conds]
        kls = [{c: [] for c in cs} for cs in conds]
        for (i, c, _), a in zip(todo, answers):
            nll[i][c] += a.value[0]
            kls[i][c] += a.value[1]
        out = []
        for i in range(len(edits)):
            new = TextEffect({c: v for c, v in nll[i].items() if v}, {c: v for c, v in kls[i].items() if v})
            out.append(new if have[i] is None else have[i].extended(new))
        return out
