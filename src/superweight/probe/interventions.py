"""The paper's interventions on super weights, as composable, reversible context managers.

    with zeroed(lm.adapter, sw):                          # prune the super weights
    with scaled(lm.adapter, sw, 2.0):                     # scale them by a factor
    with zeroed(lm.adapter, sw), activation_restored(lm.adapter, sw, values):
                                                          # prune them, put the super activation back
    with outliers_pruned(lm.adapter, fraction=1e-6, keep=sw):   # the control: prune the largest others

Each restores the model on exit, on error too, and composes with the others in one
``with`` statement (or an ``ExitStack``). Works on in-memory and streamed models.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from superweight.models.adapters import Adapter
from superweight.coords import Coord
from superweight.errors import UsageError
from superweight.probe.hooks import hooked

__all__ = ["edited", "edited_params", "zeroed", "scaled", "activation_restored", "outliers_pruned", "prunable_params"]


@contextmanager
def edited_params(adapter: Adapter, edits: list[tuple[str, tuple[int, ...], float]]) -> Iterator[None]:
    """Set single elements ``(parameter name, stored index, value)`` for the duration of the
    block; originals come back on exit, on error too. Parameters are edited in memory (or,
    for layers streamed from disk, as each layer is read), never on disk."""
    saved: list[tuple[torch.Tensor, tuple[int, ...], torch.Tensor]] = []
    pending: list[tuple[str, tuple[int, ...]]] = []
    try:
        with torch.no_grad():
            for name, idx, value in edits:
                param = adapter.model.get_parameter(name)
                if param.is_meta and adapter.streamer is not None:
                    adapter.streamer.edit(name, idx, value)
                    pending.append((name, idx))
                    continue
                saved.append((param, idx, param[idx].clone()))
                param[idx] = value
        yield
    finally:
        with torch.no_grad():
            for param, idx, old in reversed(saved):
                param[idx] = old
        for name, idx in pending:
            adapter.streamer.unedit(name, idx)


def edited(adapter: Adapter, values: dict[Coord, float]):
    """Set weights named by coordinates to new values inside the block (see ``edited_params``)."""
    edits = []
    for coord, value in values.items():
        site = adapter.site(coord)
        edits.append((site.param_name, site.stored_index(coord), float(value)))
    return edited_params(adapter, edits)


def zeroed(adapter: Adapter, coords):
    """Zero the given weights inside the block (see ``edited``)."""
    return edited(adapter, {c: 0.0 for c in coords})



def scaled(adapter: Adapter, coords, factor: float):
    """Multiply the given weights by ``factor`` inside the block."""
    if not math.isfinite(factor):
        raise UsageError(f"scale factor must be a finite number, not {factor!r}")
    return edited(adapter, {c: factor * adapter.value(c) for c in coords})


@contextmanager
def activation_restored(adapter: Adapter, coords, values: dict[Coord, float] | None = None) -> Iterator[None]:
    """Put each super weight's term back into its down projection's output on the token
    where it is largest, so the super activation keeps its intact value while the weight
    itself stays removed (enter this *inside* ``zeroed`` or pass ``values``).

    The intact output there is the ablated output plus X[t,col] * W[row,col]: the layer's
    input does not depend on its own weight, so this needs no second forward pass. The
    token t is, per sequence, the one with the largest |X[t,col]| (the first token on
    every model we know). ``values``: the original weights (read now if not given).
    """
    coords = list(coords)
    values = dict(values or {})
    for c in coords:
        if c not in values:
            values[c] = adapter.value(c)
    handles = []
    by_site: dict = {}
    for c in coords:
        site = adapter.site(c)
        if site.expert is not None:
            raise UsageError(f"restoring the activation of an expert's weight ({c}) is not supported yet")
        by_site.setdefault(id(site.module), (site, []))[1].append(c)

    for site, cs in by_site.values():
        def hook(mod, inp, out, cs=cs):
            x = inp[0]  # [B, T, in]
            out = out.clone()
            for c in cs:
                xc = x[..., c.col]  # [B, T]
                t = xc.abs().argmax(-1)  # [B]
                b = torch.arange(x.shape[0], device=x.device)
                out[b, t, c.row] += (xc[b, t] * values[c]).to(out.dtype)
            return out
        handles.append(site.module.register_forward_hook(hook))
    with hooked(handles):
        yield


def prunable_params(adapter: Adapter) -> list[tuple[str, nn.Parameter]]:
    """Every linear weight inside the decoder layers (``Adapter.linear_weights``)."""
    return adapter.linear_weights()


def _top_indices(w: torch.Tensor, k: int, keep: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    a = w.detach().abs().float().flatten().clone()
    for idx in keep:
        a[torch.tensor(idx).dot(torch.tensor(w.stride()))] = -1.0
    k = min(k, a.numel())
    flat = torch.topk(a, k).indices
    return [tuple(int(v) for v in torch.unravel_index(f, w.shape)) for f in flat]


def outliers_pruned(adapter: Adapter, fraction: float | None = 1e-6, topk: int | None = None, keep=()):
    """Zero the largest-magnitude weights of every decoder linear weight: the top
    ``fraction`` of each matrix (at least one), or the ``topk`` largest of each. The
    coordinates in ``keep`` (the super weights) are never pruned. The paper's control."""
    if topk is None and (fraction is None or not 0 < fraction < 1):
        raise UsageError(f"prune fraction must be in (0, 1), not {fraction!r}")
    if topk is not None and topk < 1:
        raise UsageError(f"prune top-k must be at least 1, not {topk}")
    kept: dict[str, list[tuple[int, ...]]] = {}
    for c in keep:
        site = adapter.site(c)
        kept.setdefault(site.param_name, []).append(site.stored_index(c))
    edits = []
    for name, p in prunable_params(adapter):
        w = adapter.read(name)
        k = topk if topk is not None else max(1, math.ceil(fraction * w.numel()))
        edits += [(name, idx, 0.0) for idx in _top_indices(w, k, kept.get(name, []))]
    return edited_params(adapter, edits)
