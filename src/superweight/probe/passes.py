"""Many questions, one forward pass: groups of rows that each see their own weights zeroed.

Detection asks, round after round: what does the model predict with weight A zeroed, with
its control zeroed, with B zeroed, ..., and where do the down projections spike with every
candidate so far zeroed? Each is a forward pass; when the decoder layers stream from disk
each pass is a read of the checkpoint. ``run`` answers them all in one pass: the groups'
rows are stacked into one right-padded batch, and zeroing W[r, c] of a linear map is
exactly subtracting X[..., c] * W[r, c] from output channel r, so a hook on each down
projection gives every group its own subtractions and records the spikes of the groups
that ask for them. Padding positions are masked out of every record.

Fused mixture-of-experts weights are handled the same way inside the experts loop: each
expert's down projection sees only its routed rows, whose batch rows the router's choices
give (``hooks.watch``); routing is per token, so the groups stay independent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from superweight.coords import Coord
from superweight.probe.measures import real_log_probs, stack  # noqa: F401 - stack: padding, re-exported for callers
from superweight.errors import UnsupportedModelError
from superweight.probe.hooks import summarize, watch
from superweight.models.load import LoadedModel

MAX_GROUPS = 16  # groups per pass: bounds the batch's activations
# Bytes of float32 logits per pass: vocabulary-sized tensors dominate a small model's memory,
# so a pass holds at most the larger of this and 1/32 of the model's weights.
LOGITS_BUDGET = 32 << 20


@dataclass(frozen=True)
class Group:
    ids: torch.Tensor  # [b, T], right-padded
    mask: torch.Tensor  # [b, T] bool
    zero: tuple[Coord, ...] = ()  # weights zeroed for these rows only
    scan: bool = False  # record every down projection's spike (no log-probs then)
    residual: bool = False  # also max |h| per channel after each layer, first row


@dataclass
class Answer:
    log_probs: torch.Tensor | None = None  # [N, V] at the real positions, row order (no reduce, no scan)
    value: object = None  # ``reduce`` of those log-probs, when a reducer was given (then no log_probs)
    records: dict = field(default_factory=dict)  # (layer, expert) -> SiteRecord, largest |Y| over rows
    which: dict = field(default_factory=dict)  # (layer, expert) -> row (prompt index) of that record
    residual: list = field(default_factory=list)  # per layer: (max |h| per channel [H], its token [H])
    hidden: list = field(default_factory=list)  # embeddings, then after each layer: h [T, H] float32, first row


def run(lm: LoadedModel, groups: list[Group], reduce=None, per_group: list | None = None) -> list[Answer]:
    """One Answer per group, in order, in as few passes as ``MAX_GROUPS`` and
    ``LOGITS_BUDGET`` allow. ``reduce``: applied to each group's log-probs as soon as they
    exist, and kept in their place (a few numbers instead of an [N, V] tensor per group);
    ``per_group``: one such function per group instead (None entries: ``reduce``)."""
    fns = list(per_group) if per_group is not None else [None] * len(groups)
    fns = [f or reduce for f in fns]
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    width = max(g.ids.shape[1] for g in groups)
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())  # meta ones count too
    budget = max(LOGITS_BUDGET, weights // 32)
    out: list[Answer] = []
    chunk: list[Group] = []
    rows = 0
    for g in groups:
        n = g.ids.shape[0]
        if chunk and (len(chunk) == MAX_GROUPS or (rows + n) * width * vocab * 4 > budget):
            out += _batched(lm, chunk, fns[len(out): len(out) + len(chunk)])
            chunk, rows = [], 0
        chunk.append(g)
        rows += n
    return out + _batched(lm, chunk, fns[len(out):])


def _keep(ans: Answer, rec, row: int) -> None:
    key = (rec.layer, rec.expert)
    if key not in ans.records or rec.max_output > ans.records[key].max_output:
        ans.records[key], ans.which[key] = rec, row


def _residual(hidden_states, rows: torch.Tensor) -> list:
    """(max |h| over real tokens per channel, argmax token) after each decoder layer."""
    out = []
    for h in hidden_states[1:]:
        mx, tok = h.float().abs()[rows].max(dim=0)
        out.append((mx, tok))
    return out


@torch.no_grad()
def _batched(lm: LoadedModel, groups: list[Group], reduce: list) -> list[Answer]:
    width = max(g.ids.shape[1] for g in groups)
    ids = torch.cat([_pad(g.ids, width) for g in groups])
    mask = torch.cat([_pad(g.mask, width) for g in groups])
    n, T = ids.shape
    spans, at = [], 0  # each group's rows in the batch
    for g in groups:
        spans.append(slice(at, at + g.ids.shape[0]))
        at += g.ids.shape[0]
    answers = [Answer() for _ in groups]
    # per site: [(group rows, [(coord, value)])] to subtract
    subtract: dict[int, list] = {}
    values: dict[Coord, float] = {}  # a streamed layer's value is a read from disk: once per coordinate
    for g, rows in zip(groups, spans):
        for c in g.zero:
            site = lm.adapter.site(c)
            if c not in values:
                values[c] = lm.adapter.value(c)
            by = subtract.setdefault(id(site.module), {}).setdefault(rows.start, (rows, []))
            by[1].append((c, values[c]))
    scans = [(k, g, rows) for k, (g, rows) in enumerate(zip(groups, spans)) if g.scan]
    keys = {(c.layer, c.expert) for c in values}
    watched = [s for s in lm.adapter.sites if scans or (s.layer, s.expert) in keys]

    def hook(site, x, y, tokens):
        # x: [N, in], y: [N, out], rows of the [n * T] batch (all of it, or an expert's share)
        if (tokens < 0).any():  # an experts module not given the router's choices
            raise UnsupportedModelError(f"{site.path}: cannot tell which batch rows each expert is given")
        b, t = tokens // T, tokens % T
        for rows, items in subtract.get(id(site.module), {}).values():
            sel = (b >= rows.start) & (b < rows.stop)
            for c, v in items:
                if c.expert == site.expert:
                    y[sel, c.row] -= (x[sel, c.col].float() * v).to(y.dtype)
        for k, g, rows in scans:
            gone = [(c.row, c.col) for c in g.zero if c.layer == site.layer and c.expert == site.expert]
            for row in range(rows.start, rows.stop):
                sel = (b == row) & mask[row, t]
                if sel.any():
                    _keep(answers[k], summarize(site, x[sel], y[sel], t[sel], zeroed=gone), row - rows.start)

    want = any(g.residual for g in groups)
    with watch(lm.adapter, hook, sites=watched, strict=True):
        o = lm.model(input_ids=ids, attention_mask=mask.long(), use_cache=False, output_hidden_states=want)
    logits = o.logits
    for k, (g, rows) in enumerate(zip(groups, spans)):
        if g.residual:
            real = mask[rows.start]
            answers[k].residual = _residual([h[rows.start] for h in o.hidden_states], real)
            answers[k].hidden = [h[rows.start][real].float() for h in o.hidden_states]
        if g.scan:
            continue
        lp = real_log_probs(logits[rows], mask[rows])
        if reduce[k]:
            answers[k].value = reduce[k](lp)
        else:
            answers[k].log_probs = lp
    return answers


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))
