"""Weights that are not numbers: found, named, refused.

A NaN or an infinity in one weight spreads through every forward pass: perplexities become
NaN, no ablation can be graded, and JSON cannot hold the numbers. Scanning every tensor costs
a read of the whole checkpoint, so commands scan only once a measurement comes out
non-finite, and then say which tensor is to blame.
"""
from __future__ import annotations

import math

import torch

from superweight.errors import SuperweightError


class NonFiniteError(SuperweightError):
    """The checkpoint holds NaN or Inf (or its activations overflow the dtype)."""


def nonfinite(lm) -> list[tuple[str, int]]:
    """(parameter name, count of NaN/Inf values) for every floating-point parameter that has
    any, in the model's order; a streamed layer's tensors are read from disk one at a time."""
    out = []
    for name, p in lm.model.named_parameters():
        if not p.dtype.is_floating_point:
            continue
        t = lm.adapter.read(name) if p.is_meta else p
        bad = int(t.numel() - torch.isfinite(t).sum())
        if bad:
            out.append((name, bad))
    return out


def refuse_nonfinite(lm, what: str) -> None:
    """Raise naming the tensor that holds NaN or Inf, called when ``what`` (a measurement)
    came out non-finite. All weights finite: the activations overflow the dtype."""
    bad = nonfinite(lm)
    if bad:
        name, n = bad[0]
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise NonFiniteError(f"{lm.name}: {name} holds {n} non-finite value(s) (NaN or Inf){more}; "
                             "the checkpoint is damaged, nothing can be measured on it")
    dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    hint = "" if dtype in ("float32", "float64") else "; try --dtype float32"
    raise NonFiniteError(f"{lm.name}: {what} is not finite although every weight is: the activations overflow "
                         f"{dtype}{hint}")


def require_finite(lm, what: str, *values: float) -> None:
    """``refuse_nonfinite`` when any of ``values`` is NaN or infinite."""
    if not all(math.isfinite(v) for v in values):
        refuse_nonfinite(lm, what)
