"""Simulated W8A8 (the paper's activation experiment) as a context over a loaded model.

    with w8a8(lm, holdout=sw):        # perplexity, lm-eval, anything runs on it unchanged
        ppl = perplexity(lm, lm.tokenizer, text)

- Weights: every decoder linear weight, ``bits``-bit symmetric abs-max RTN per tensor
  (``quant.quantize_tensor``, one block per tensor).
- Activations: the input of every decoder linear module, ``bits``-bit symmetric abs-max RTN
  per token (a forward pre-hook quantizes and dequantizes it).
- Hold-out (``holdout``: the super weights): before quantizing an input, the super
  activation's channel is replaced by the tensor's median, and put back in full precision
  after. The channel is the super weight's row for inputs of the model's hidden width (the
  residual stream after a norm, where the super activation lives) and its column for the
  input of its own down projection (where its massive input is).

Differences from the paper, decided here: the attention output projection's input is
quantized too (the paper lists q/k/v/gate/up/down; one rule for every family is simpler and
stricter), and the attention matmuls (QK^T, PV) stay in full precision.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch

from superweight.coords import Coord
from superweight.models.load import LoadedModel
from superweight.quant.rtn import QuantConfig
from superweight.quant.apply import quantizable, quantized
from superweight.probe.hooks import hooked


def fake_quant_per_token(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric abs-max RTN over the last dimension (one scale per token)."""
    qmax = 2 ** (bits - 1) - 1
    s = x.abs().amax(-1, keepdim=True).float() / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.clamp(torch.round(x.float() / s), -qmax, qmax) * s).to(x.dtype)


def quant_with_holdout(x: torch.Tensor, channels: list[int], bits: int = 8) -> torch.Tensor:
    """``fake_quant_per_token`` with ``channels`` replaced by the tensor's median before and
    restored exactly after."""
    if not channels:
        return fake_quant_per_token(x, bits)
    kept = x[..., channels].clone()
    y = x.clone()
    y[..., channels] = x.median().to(x.dtype)
    y = fake_quant_per_token(y, bits)
    y[..., channels] = kept
    return y


def _holdout_channels(lm: LoadedModel, name: str, in_features: int, holdout: list[Coord]) -> list[int]:
    hidden = getattr(lm.model.config, "hidden_size", None)
    chans = set()
    for c in holdout:
        site = lm.adapter.site(c)
        if name == site.param_name:
            chans.add(c.col)  # its own down projection: the massive input
        elif in_features == hidden:
            chans.add(c.row)  # the residual stream: the super activation's channel
    return sorted(chans)


@contextmanager
def w8a8(lm: LoadedModel, holdout=(), bits: int = 8, weights: bool = True) -> Iterator[None]:
    """Simulated W``bits``A``bits`` for the duration of the block (see the module docstring);
    ``holdout``: super-weight coordinates whose super activation is kept in full precision."""
    holdout = list(holdout)
    handles = []
    with ExitStack() as stack:
        if weights:
            stack.enter_context(quantized(lm, QuantConfig(bits=bits, layout="block", size=None, symmetric=True,
                                                          scale_dtype="float32")))
        for name, p in quantizable(lm):
            mod = lm.model.get_submodule(name.rsplit(".", 1)[0])
            if p.dim() != 2:  # fused experts: their inputs are routed inside the module
                continue
            in_features = lm.adapter.storage(p).in_features(p.shape)
            chans = _holdout_channels(lm, name, in_features, holdout)

            def pre(m, args, chans=chans):
                return (quant_with_holdout(args[0], chans, bits),) + tuple(args[1:])
            handles.append(mod.register_forward_pre_hook(pre))
        with hooked(handles):
            yield
