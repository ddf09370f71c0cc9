"""Many questions, one forward pass: groups of rows that each see their own weights zeroed.

Detection asks, round after round: what does the model predict with weight A zeroed, with
its control zeroed, with B zeroed, ..., and where do the down projections spike with every
candidate so far zeroed? Each is a forward pass; when the decoder layers stream from disk
each pass is a read of the checkpoint. ``run`` answers them all in one pass: the groups'
rows are stacked into one right-padded batch, and zeroing W[r, c] of a linear map is
exactly subtracting X[..., c] * W[r, c] from output channel r, so a hook on each down
projection gives every group its own subtractions and records the spikes of the groups
that ask for them. Padding positions are masked out of every record.

Rows whose every edit sits at layer L or later are identical to the intact rows up to L:
a group that carries the intact model's layer outputs on its own windows (``Resume``,
recorded by a group with ``keep``) starts there. The decoder layers before L are swapped,
for that pass, for stand-ins that hand the recorded output on (the model's own forward
still runs: embeddings, masks, positions, the layers from L, the head), so they are
neither computed nor, when streamed, read from disk. A pass starts at the earliest such
layer of its groups; ``run`` orders groups by it, so passes stay homogeneous.

Fused mixture-of-experts weights are handled the same way inside the experts loop: each
expert's down projection sees only its routed rows, whose batch rows the router's choices
give (``hooks.watch``); routing is per token, so the groups stay independent.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from superweight.coords import Coord
from superweight.errors import UnsupportedModelError
from superweight.probe.hooks import hooked, summarize, watch
from superweight.progress import progress_of
from superweight.models.load import LoadedModel

MAX_GROUPS = 16  # groups per pass
# Tokens per pass (rows x width): bounds the batch's activations. The output head is not
# run over the batch at once but a chunk of positions at a time (``_head``), so no pass
# holds a vocabulary-sized tensor per position; memory grows with the largest layer, this
# many tokens and the head matrix, not with the vocabulary times the rows.
PASS_TOKENS = 2048
# Positions per call of the output head: an eighth of the hidden size (Qwen2.5-0.5B: 112,
# SmolLM2-135M: 72), so a chunk's float32 logits take an eighth of the head matrix's bytes:
# memory follows the model's largest tensor, and so does the cost of each call's read of
# it (Qwen's 545 MB head matrix: its intact windows took 13.0 s at 34 positions a call,
# 11.3 s at 110, 10.5 s at 220, with peaks of 1.44, 1.55 and 1.85 GB). ``HEAD_CHUNK``: a
# fixed number instead.
HEAD_SHARE = 8
HEAD_CHUNK: int | None = None
# What the passes computed since the last ``reset_stats``: decoder-layer token steps (a
# token through one layer, padding included), positions through the output head, passes.
STATS = {"layer_tokens": 0, "head_tokens": 0, "passes": 0}


@torch.no_grad()
def stack(rows: list, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows ([T_i] or [1, T_i] tensors, or lists of ids) -> right-padded ([b, T], mask
    [b, T]) on ``device`` (default: the first row's)."""
    rows = [torch.as_tensor(r) for r in rows]
    device = device if device is not None else rows[0].device
    width = max(r.shape[-1] for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        ids[b, : r.shape[-1]] = r.reshape(-1)
        mask[b, : r.shape[-1]] = True
    return ids, mask


def real_log_probs(logits: torch.Tensor, mask: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """logits [B, T, V], mask [B, T] (right-padded) -> [N, V] float32 log-probabilities at
    the N real positions, row by row. Float32 logits are normalized in place, ``chunk``
    positions at a time (no vocabulary-sized temporary beyond one chunk's), and returned as
    a view when every position is real: a window's logits are the largest tensor of a pass
    (311 MB for 512 tokens of a 152k vocabulary), so it exists once, not three times."""
    lp = logits if logits.dtype == torch.float32 else logits.float()
    flat = lp.view(-1, lp.shape[-1]) if lp.is_contiguous() else lp.reshape(-1, lp.shape[-1])
    for i in range(0, flat.shape[0], chunk):
        part = flat[i: i + chunk]
        part.copy_(torch.log_softmax(part, -1))  # not part.sub_(logsumexp): 5x slower on wide logits
    if bool(mask.all()):
        return flat if flat.data_ptr() == lp.data_ptr() else flat.contiguous()
    return flat[mask.reshape(-1)]


def reset_stats() -> dict:
    """The counts so far (a copy), then zero them."""
    old = dict(STATS)
    for k in STATS:
        STATS[k] = 0
    return old


@dataclass(frozen=True)
class Group:
    ids: torch.Tensor  # [b, T], right-padded
    mask: torch.Tensor  # [b, T] bool
    zero: tuple[Coord, ...] = ()  # weights zeroed for these rows only
    scan: bool = False  # record every down projection's spike (no log-probs then)
    residual: bool = False  # also max |h| per channel after each layer, first row
    keep: bool = False  # record every decoder layer's output on these rows (``Answer.resume``)
    resume: "Resume | None" = None  # the intact layer outputs on these rows: start at the first zeroed layer
    last: bool = False  # log-probs at each row's last real position only ([b, V]: the next token after it)

    @property
    def start(self) -> int:
        """The first decoder layer this group must compute (0 unless it can resume)."""
        if self.resume is None or not self.zero or self.scan or self.residual or self.keep:
            return 0
        return min(c.layer for c in self.zero)


@dataclass
class Resume:
    """The intact model's decoder-layer outputs on some rows, to start edited rows from."""

    outputs: list  # per layer: its output hidden state [b, T, H] (model dtype, model device)
    tuple_len: int | None = None  # the layers return (hidden, None, ...) of this length; None: a tensor


class _Replay(torch.nn.Module):
    """Stands in for a decoder layer the pass does not compute: returns the recorded hidden
    state, in the form the layer returns it. Attributes the model's loop reads off a layer
    (``attention_type``, say) come from the layer it stands in for."""

    def __init__(self, layer: torch.nn.Module, hidden: torch.Tensor, tuple_len: int | None):
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: its hooks (streaming) never run
        self._out = hidden if tuple_len is None else (hidden,) + (None,) * (tuple_len - 1)

    def forward(self, *args, **kwargs):
        return self._out

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)


@dataclass
class Answer:
    log_probs: torch.Tensor | None = None  # [N, V] at the real positions, row order (no reduce, no scan)
    value: object = None  # ``reduce`` of those log-probs, when a reducer was given (then no log_probs)
    records: dict = field(default_factory=dict)  # (layer, expert) -> SiteRecord, largest |Y| over rows
    which: dict = field(default_factory=dict)  # (layer, expert) -> row (prompt index) of that record
    resume: Resume | None = None  # with ``keep``: the intact layer outputs on this group's rows
    residual: list = field(default_factory=list)  # per layer: (max |h| per channel [H], its token [H])
    hidden: list = field(default_factory=list)  # embeddings, then after each layer: h [T, H] float32, first row


class Chunked:
    """A reducer that takes a group's log-probs a chunk of positions at a time, so they
    never exist whole: ``start()`` returns an accumulator with ``add(lp [c, V], at)`` (``at``:
    the chunk's first real position) and ``result()``."""

    def start(self):
        raise NotImplementedError


def run(lm: LoadedModel, groups: list[Group], reduce=None, per_group: list | None = None) -> list[Answer]:
    """One Answer per group, in order, in as few passes as ``MAX_GROUPS`` and
    ``PASS_TOKENS`` allow. ``reduce``: applied to each group's log-probs as soon as they
    exist, and kept in their place (a few numbers instead of an [N, V] tensor per group);
    a ``Chunked`` reducer is given them a chunk of positions at a time;
    ``per_group``: one such function per group instead (None entries: ``reduce``)."""
    fns = list(per_group) if per_group is not None else [None] * len(groups)
    fns = [f or reduce for f in fns]
    order = sorted(range(len(groups)), key=lambda i: groups[i].start)  # stable: passes start at one layer
    if order != list(range(len(groups))):
        answers = run(lm, [groups[i] for i in order], per_group=[fns[i] for i in order])
        out = [None] * len(groups)
        for i, a in zip(order, answers):
            out[i] = a
        return out
    width = max(g.ids.shape[1] for g in groups)
    out: list[Answer] = []
    chunk: list[Group] = []
    rows = 0
    report = progress_of()
    for g in groups:
        n = g.ids.shape[0]
        if chunk and (len(chunk) == MAX_GROUPS or (rows + n) * width > PASS_TOKENS
                      or g.start != chunk[0].start):
            out += _batched(lm, chunk, fns[len(out): len(out) + len(chunk)])
            report(len(out), len(groups))
            chunk, rows = [], 0
        chunk.append(g)
        rows += n
    out += _batched(lm, chunk, fns[len(out):])
    report(len(out), len(groups))
    return out


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
    start = min(g.start for g in groups)
    STATS["passes"] += 1
    STATS["layer_tokens"] += n * T * (len(lm.adapter.layers) - start)
    STATS["head_tokens"] += sum(int(mask[rows].sum()) for g, rows in zip(groups, spans) if not g.scan)
    kept = [(k, rows) for k, (g, rows) in enumerate(zip(groups, spans)) if g.keep]
    body = _head_apart(lm)  # (parent, attribute, body), or None: the head runs with the body
    final: list = []
    with watch(lm.adapter, hook, sites=watched, strict=True), _kept(lm, kept, answers), \
            _skipped(lm, groups, start, width), _final(body, final, want):
        extra = {"logits_to_keep": 1} if body else {}  # the head runs below, a chunk at a time
        try:
            o = lm.model(input_ids=ids, attention_mask=mask.long(), use_cache=False, output_hidden_states=want, **extra)
        except _BodyDone:  # the body's output is caught: the model's own head is not run
            o = final[2]
    for k, (g, rows) in enumerate(zip(groups, spans)):
        if g.residual:
            real = mask[rows.start]
            answers[k].residual = _residual([h[rows.start] for h in o.hidden_states], real)
            answers[k].hidden = [h[rows.start][real].float() for h in o.hidden_states]
    heads = [k for k, g in enumerate(groups) if not g.scan]
    if body is None:  # the model's own logits, normalized in place
        for k in heads:
            rows = spans[k]
            lp = real_log_probs(o.logits[rows], mask[rows])
            _answer(answers[k], reduce[k], [(0, lp[mask[rows].sum(1).cumsum(0) - 1] if groups[k].last else lp)])
    elif heads:  # every group's positions through the head together: one read of its matrix per chunk
        hs = []
        for k in heads:
            h, rows = final[0][spans[k]], spans[k]
            last = mask[rows].sum(1) - 1  # each row's last real position
            hs.append(h[torch.arange(h.shape[0], device=h.device), last] if groups[k].last else h[mask[rows]])
        ends = torch.tensor([x.shape[0] for x in hs]).cumsum(0).tolist()  # [b or N, H] each
        firsts = [0] + ends[:-1]
        accs = {k: (reduce[k].start() if isinstance(reduce[k], Chunked) else []) for k in heads}
        for at, lp in _head(lm, body, torch.cat(hs), final[1]):
            for k, a, e in zip(heads, firsts, ends):
                lo, hi = max(a, at), min(e, at + lp.shape[0])
                if lo < hi:  # this chunk holds positions lo..hi-1 of group k's
                    part, acc = lp[lo - at: hi - at], accs[k]
                    if isinstance(acc, list):
                        acc.append((lo - a, part.clone()))  # the buffer is the next chunk's
                    else:
                        acc.add(part, lo - a)
        for k in heads:
            _answer(answers[k], reduce[k], accs[k])
    return answers


def _answer(ans: Answer, fn, chunks) -> None:
    """A group's answer from its log-probs: ``chunks`` [(first position, [c, V])], or a
    Chunked reducer's accumulator that has seen them all."""
    if not isinstance(chunks, list):
        ans.value = chunks.result()
        return
    if isinstance(fn, Chunked):
        acc = fn.start()
        for at, lp in chunks:
            acc.add(lp, at)
        ans.value = acc.result()
        return
    lp = torch.cat([lp for _, lp in chunks])
    if fn:
        ans.value = fn(lp)
    else:
        ans.log_probs = lp


def _body(lm: LoadedModel) -> tuple[torch.nn.Module, str, torch.nn.Module] | None:
    """(parent, attribute, module) of the body the causal LM's forward calls before its head
    (``get_decoder``: ``model``, ``transformer``, OPT's ``model.decoder``), or None."""
    try:
        body = lm.model.get_decoder()
    except Exception:  # noqa: BLE001 - remote code without one
        return None
    for name, mod in lm.model.named_modules():
        if mod is body and name:
            parent, _, attr = name.rpartition(".")
            return lm.model.get_submodule(parent), attr, body
    return None


def _head_apart(lm: LoadedModel):
    """``_body(lm)`` where the model's head can run apart from its body (a causal LM whose
    forward takes ``logits_to_keep`` and that names its body), else None."""
    import inspect

    return _body(lm) if "logits_to_keep" in inspect.signature(lm.model.forward).parameters else None


class _BodyDone(Exception):
    """Raised once the body's output is caught: the model's own head is not needed."""


@contextmanager
def _final(body, out: list, hidden_states: bool = False):
    """Catch the body's last hidden state (after its final norm), its output type and the
    output itself into ``out``, then stop the model's forward (``_BodyDone``): its head
    would only be run again a chunk at a time. ``body``: ``_body``'s triple, or None
    (nothing to catch). With ``hidden_states`` the forward is stopped only when the
    body's output carries them (else the model's own output is needed for them)."""
    if body is None:
        yield
        return
    body = body[2]

    def hook(mod, args, kwargs, o):
        out[:] = [o[0] if isinstance(o, (tuple, list)) else o.last_hidden_state, type(o), o]
        if not hidden_states or getattr(o, "hidden_states", None) is not None:
            raise _BodyDone

    with hooked([body.register_forward_hook(hook, with_kwargs=True)]):
        yield


class _Body(torch.nn.Module):
    """Stands in for the model's body while its own forward runs the head on given hidden
    states, returned as the body returns them (its output class, or a tuple)."""

    def __init__(self, hidden: torch.Tensor, kind: type):
        super().__init__()
        self.hidden, self.kind = hidden, kind

    def forward(self, *args, **kwargs):
        if issubclass(self.kind, (tuple, list)):
            return (self.hidden,)
        return self.kind(last_hidden_state=self.hidden)


@torch.no_grad()
def _head(lm: LoadedModel, body: tuple, h: torch.Tensor, kind: type):
    """(first position, [c, V] float32 log-probs) for a chunk of positions of ``h`` [N, H]
    at a time (the chunks share one buffer: a chunk is valid until the next is asked for), through the model's own forward with its body swapped for the given
    hidden states: whatever the family does after the body (a tied head, Gemma 2's logit
    soft-capping, Cohere's logit scale) is its own code, not a copy. ``body``: ``_body``'s triple."""
    parent, attr, body = body
    step = HEAD_CHUNK or max(16, h.shape[-1] // HEAD_SHARE)
    if not HEAD_CHUNK:  # even chunks, up to 1.5x the budget: 130 positions in one read of the head, not 110 + 20
        n = max(1, round(h.shape[0] / step))
        step = -(-h.shape[0] // n)
    out = None
    try:
        for at in range(0, h.shape[0], step):
            part = h[at: at + step][None]  # [1, c, H]
            setattr(parent, attr, _Body(part, kind))
            ids = torch.zeros(1, part.shape[1], dtype=torch.long, device=part.device)
            logits = lm.model(input_ids=ids, use_cache=False).logits[0].float()
            # log_softmax, not lp - logsumexp(lp): CPU logsumexp over 152k-wide logits took
            # 1.7 ms a position, more than the head's matmul; log_softmax 0.3 ms. Into one
            # buffer for every chunk: the logits and it are the chunk's only [c, V] tensors.
            if out is None or out.shape[1] != logits.shape[1]:
                out = torch.empty(step, logits.shape[1], dtype=torch.float32, device=logits.device)
            lp = out[: logits.shape[0]]
            torch.log_softmax(logits, -1, out=lp)
            del logits
            yield at, lp
    finally:
        setattr(parent, attr, body)


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


@contextmanager
def _kept(lm: LoadedModel, kept: list, answers: list):
    """Record each decoder layer's output on the rows of the groups that ask (``keep``)."""
    if not kept:
        yield
        return
    for k, _ in kept:
        answers[k].resume = Resume([])

    def hook(mod, args, out):
        h = out if isinstance(out, torch.Tensor) else out[0]
        for k, rows in kept:
            r = answers[k].resume
            if not isinstance(out, torch.Tensor):
                r.tuple_len = len(out)
                if any(o is not None for o in out[1:]):  # a layer that returns more than its hidden state
                    r.outputs = None
            if r.outputs is not None:
                r.outputs.append(h[rows].detach().clone())

    try:
        with hooked([layer.register_forward_hook(hook) for layer in lm.adapter.layers]):
            yield
    finally:
        for k, _ in kept:
            if answers[k].resume.outputs is None or len(answers[k].resume.outputs) != len(lm.adapter.layers):
                answers[k].resume = None  # could not be recorded: later rows start from the embeddings


@contextmanager
def _skipped(lm: LoadedModel, groups: list[Group], start: int, width: int):
    """Swap decoder layers ``0 .. start-1`` for ``_Replay`` stand-ins that hand on the
    groups' recorded output of layer ``start - 1`` (each group's own rows, padded)."""
    if start == 0:
        yield
        return
    layers = lm.adapter.layers
    hidden = torch.cat([_pad_rows(g.resume.outputs[start - 1], width) for g in groups])
    tuple_len = groups[0].resume.tuple_len
    saved = [layers[i] for i in range(start)]
    try:
        for i in range(start):
            layers[i] = _Replay(saved[i], hidden, tuple_len)
        yield
    finally:
        for i in range(start):
            layers[i] = saved[i]


def _pad_rows(h: torch.Tensor, width: int) -> torch.Tensor:
    """[b, T, H] -> [b, width, H] (zeros after: padding positions, masked out everywhere)."""
    return h if h.shape[1] == width else torch.nn.functional.pad(h, (0, 0, 0, width - h.shape[1]))
