"""Engine-quantized linears back to plain ones, with the block each engine quantized in.

bitsandbytes (``Linear4bit`` nf4/fp4, ``Linear8bitLt``), HQQ (``HQQLinear``) and torchao
(a weight that is one of its tensor subclasses) keep their weights in their own layouts,
which the adapter cannot index. ``dense_(model)`` replaces each such module by an
``nn.Linear`` holding the engine's own dequantization of its weight (what its kernels
multiply by), in place, and returns each module's block as the engine recorded it:

    blocks = dense_(model)     # {"model.layers.11.mlp.down_proj": ("hqq 4-bit group 64", 64), ...}

A block is ``(kind, size)``: ``size`` weights of the flattened ``[out, in]`` matrix share
one scale (None: not blockwise). ``audit`` reads it; nothing here is assumed. What is not
reproduced: LLM.int8's mixed-precision path, which computes the inputs above its threshold
(6.0, a super activation among them) in 16 bits; the weights are its int8 codes times their
row scales either way. bitsandbytes' CPU kernels repack a 4-bit weight on its first forward
and round their products to bfloat16: read a model before running it, and expect its
outputs within bfloat16's precision of the dense copy's. Modules of none of these engines
are left as they are.
"""
from __future__ import annotations

import torch
from torch import nn


def engine_weight(module: nn.Module) -> tuple[torch.Tensor, tuple[str, int | None]] | None:
    """(the dequantized ``[out, in]`` weight, its block) of an engine-quantized module; None
    for any other module."""
    kind = type(module).__name__
    if kind == "HQQLinear":
        meta = module.meta
        g, nbits = meta.get("group_size"), meta.get("nbits")
        return module.dequantize().reshape(meta["shape"]), (f"hqq {nbits}-bit group {g or 'row'}", g)
    if kind == "Linear4bit":
        import bitsandbytes.functional as F

        w = module.weight
        qs = w.quant_state
        return F.dequantize_4bit(w.data, qs), (f"bitsandbytes {qs.quant_type} block {qs.blocksize}", qs.blocksize)
    if kind == "Linear8bitLt":
        w = module.weight
        scb = getattr(w, "SCB", None)
        if scb is None:
            scb = module.state.SCB
        return w.data.float() * (scb.float()[:, None] / 127), ("bitsandbytes int8 per row", w.shape[1])
    w = getattr(module, "weight", None)
    if w is not None and type(w) not in (torch.Tensor, nn.Parameter) and hasattr(w, "dequantize") and \
            hasattr(w, "block_size") and type(w).__module__.startswith("torchao"):
        bs = tuple(w.block_size)
        size = bs[-1] if len(bs) == 2 and bs[0] == 1 else None
        code = str(getattr(w, "target_dtype", "")).replace("torch.", "")
        return w.dequantize(), (f"torchao {code} block {'x'.join(map(str, bs))}".replace("  ", " "), size)
    return None


def dense_(model: nn.Module) -> dict[str, tuple[str, int | None]]:
    """Replace every engine-quantized linear of ``model`` by a plain ``nn.Linear`` (in place);
    returns each replaced module's block by its name."""
    blocks = {}
    dtype = getattr(model, "dtype", torch.float32)  # the model's own: an engine's compute dtype may differ
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        dtype = torch.float32
    for name, module in list(model.named_modules()):
        got = engine_weight(module)
        if got is None:
            continue
        w, block = got
        bias = getattr(module, "bias", None)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w.to(dtype))
            if bias is not None:
                lin.bias.copy_(bias.to(dtype))
        lin.requires_grad_(False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, lin)
        blocks[name] = block
    return blocks
