"""The ``compressed-tensors`` pack-quantized layout: integer codes packed into int32, a scale
(and an integer zero point) per group; what vLLM serves and transformers loads.

    tensors, q = pack("model.layers.0.mlp.down_proj", w, cfg)   # the module's stored tensors
    config = quantization_config(cfg, ignore=["lm_head", ...])   # config.json's quantization_config

Decisions, written down:

- The quantizer is ours (``rtn.quantize_codes``: group RTN) with an integer zero point
  (``QuantConfig(zero="int")``), the convention the format stores; ``--sym`` gives the
  symmetric variant. The format's codes and zero points are signed (ours minus
  ``2^(b-1)``; ``q - z`` is unchanged); the bit layout is compressed-tensors' own
  ``pack_to_int32``, which ``pack_codes`` reproduces faster for 2, 4 and 8 bits (checked
  against it bit for bit in the tests).
- The format has no sparse set, so the super-weight hold-out becomes the smallest
  protection it can store: the matrices that hold the super weights stay unquantized (at
  the checkpoint's dtype), named in the config's ``ignore`` list with every other linear
  module left out (the output head, ``--include``/``--exclude``). The massive-input columns
  of our simulated hold-out cannot be stored at all.
- Groups must divide every quantized matrix's input width (the format has no ragged group);
  fused 3-D expert weights are refused.
- Scales are stored at ``cfg.scale_dtype``, which ``quantize`` sets to the model's dtype
  (compressed-tensors' own convention): transformers dequantizes at the scale's dtype, so
  float16 scales under a float32 model round every weight to float16 on load (measured on a
  tiny llama: 5e-4 off), while scales at the model's dtype make the loaded model equal the
  simulation exactly. Float32 scales cost 32 bits a group, and the manifest counts them.
- Loading: transformers 5.24 with compressed-tensors 0.20.1 loads symmetric checkpoints
  either way, and asymmetric ones only with ``CompressedTensorsConfig(dequantize=True)``:
  compressed-tensors packs zero points along the rows (as vLLM reads them) and transformers
  allocates them unpacked, a size mismatch (checked 2026-11-30).
"""
from __future__ import annotations

import torch

from superweight.errors import UsageError
from superweight.quant.format import Format
from superweight.quant.rtn import MODEL_DTYPE, SCALE_DTYPES, QuantConfig, QuantizedTensor, quantize_codes

TENSORS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def check(cfg: QuantConfig) -> QuantConfig:
    """Refuse what the format cannot store, in one line each (the config checked itself when made)."""
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise UsageError("--format compressed-tensors needs the compressed-tensors package: "
                         "pip install 'superweight[packed]'") from None
    if cfg.layout != "group" or cfg.size is None:
        raise UsageError("compressed-tensors stores groups: give --group-size G, not blocks or whole rows")
    if cfg.clip is not None:
        raise UsageError("--format compressed-tensors takes no --clip (our packed path is plain group RTN)")
    if cfg.keep_fraction or cfg.act_ratio:
        raise UsageError("compressed-tensors stores no sparse weights: drop --keep-outliers and use --act-ratio 0 "
                         "(the super weights' matrices are left unquantized instead)")
    if not cfg.symmetric and cfg.zero != "int":
        raise UsageError("compressed-tensors stores integer zero points: use zero='int' (quantize sets it) or --sym")
    return cfg


def scheme(cfg: QuantConfig):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=cfg.bits, type="int", symmetric=cfg.symmetric, strategy="group",
                            group_size=cfg.size)
    return QuantizationScheme(targets=["Linear"], weights=args)


def quantization_config(cfg: QuantConfig, ignore: list[str]) -> dict:
    """The ``quantization_config`` entry of config.json, built by compressed-tensors."""
    from compressed_tensors.quantization import QuantizationConfig

    qc = QuantizationConfig(config_groups={"group_0": scheme(cfg)}, ignore=sorted(ignore),
                            format="pack-quantized", quantization_status="compressed")
    d = qc.model_dump(mode="json", exclude_none=True)
    d["quant_method"] = "compressed-tensors"
    return d


def fits(prefix: str, shape: tuple[int, ...], cfg: QuantConfig) -> None:
    """Refuse a weight the format cannot hold as one line: not 2-D, or a ragged last group."""
    if len(shape) != 2:
        raise UsageError(f"{prefix}: compressed-tensors here packs 2-D linear weights, not shape {shape}")
    if shape[1] % cfg.size:
        fit = [g for g in (256, 128, 64, 32, 16) if g <= shape[1] and shape[1] % g == 0][:2]
        raise UsageError(f"{prefix}: group size {cfg.size} does not divide its input width {shape[1]} "
                         "(compressed-tensors has no ragged group); "
                         + (f"pick a divisor: --group-size {' or '.join(map(str, fit))}" if fit
                            else "no group size from 16 to 256 divides it: leave it out with --exclude"))


def pack_codes(u: torch.Tensor, bits: int) -> torch.Tensor:
    """compressed-tensors' ``pack_to_int32`` of the offset-binary codes ``u`` ``[rows, cols]``
    (uint8) along the rows. For widths that divide 32 with whole words per row, the same
    layout computed a slice of rows at a time (the library's scatter takes 40 s of the 7B's
    packing): element i of each run of 32/bits sits in bits ``[bits*i, bits*(i+1))`` of its
    word; the tests check it against the library bit for bit. Other widths: the library."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    rows, cols = u.shape
    per = 32 // bits
    if 32 % bits or cols % per:
        return pack_to_int32((u.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8), bits)
    out = torch.empty(rows, cols // per, dtype=torch.int32)
    step = max(1, (1 << 20) // cols)
    for r0 in range(0, rows, step):
        v = u[r0:r0 + step].to(torch.int32).view(-1, cols // per, per)
        word = v[..., 0].clone()
        for i in range(1, per):
            word |= v[..., i] << (bits * i)
        out[r0:r0 + step] = word
    return out


def pack(prefix: str, w: torch.Tensor, cfg: QuantConfig) -> tuple[dict[str, torch.Tensor], QuantizedTensor]:
    """The stored tensors of one linear module (``prefix``: its name) whose ``[out, in]``
    weight is ``w``, and the quantizer's account (dequantized values included)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    fits(prefix, tuple(w.shape), cfg)
    q, c = quantize_codes(w, cfg)
    out = {f"{prefix}.weight_packed": pack_codes(c.q, cfg.bits),
           f"{prefix}.weight_scale": c.scale.to(SCALE_DTYPES[cfg.scale_dtype]),
           f"{prefix}.weight_shape": torch.tensor(list(w.shape), dtype=torch.int64)}
    if not cfg.symmetric:  # the format's zero points are signed: minus 2^(b-1), as its codes
        z = (c.zero - 2 ** (cfg.bits - 1)).to(torch.int8)
        out[f"{prefix}.weight_zero_point"] = pack_to_int32(z, cfg.bits, packed_dim=0)
    return out, q


def loading_line(out: str, symmetric: bool) -> str:
    """The exact Python that loads a pack: as it is when symmetric; dequantized when not
    (transformers allocates the zero points unpacked, the library packs them; see above)."""
    if symmetric:
        return f"AutoModelForCausalLM.from_pretrained({str(out)!r})"
    return ("from transformers import AutoModelForCausalLM, CompressedTensorsConfig; "
            f"AutoModelForCausalLM.from_pretrained({str(out)!r}, "
            "quantization_config=CompressedTensorsConfig(dequantize=True))")


class CompressedTensors(Format):
    """``--format compressed-tensors`` (``format.Format``): the chosen weights packed, the
    super weights' matrices left unquantized and named in the config's ``ignore``."""

    name = "compressed-tensors"

    def defaults(self) -> dict:
        # symmetric: the pack plain from_pretrained loads as it is; integer zero points when
        # asymmetric (the format's convention); no sparse hold-out; scales at the model's dtype
        return {"symmetric": True, "act_ratio": 0.0, "scale_dtype": MODEL_DTYPE, "zero": "int"}

    def check(self, cfg) -> None:
        check(cfg)

    def fits(self, name: str, shape: tuple[int, ...], cfg) -> None:
        fits(name.removesuffix(".weight"), shape, cfg)

    def leaves(self, held: bool) -> bool:
        return held  # no sparse hold-out: a held weight's whole matrix stays as it is

    def store(self, name: str, w, cfg, quantize):
        return pack(name.removesuffix(".weight"), w, cfg)

    def finish(self, out, lm, cfg, quantized_modules: set[str]) -> None:
        import json

        linear = [m for m, mod in lm.model.named_modules() if isinstance(mod, torch.nn.Linear)]
        config = json.loads((out / "config.json").read_text())
        config["quantization_config"] = quantization_config(cfg, [m for m in linear if m not in quantized_modules])
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def engines(self, cfg, shapes: dict[str, tuple[int, int]]) -> dict:
        from superweight.quant.engines import for_pack

        return for_pack(cfg.bits, cfg.size, cfg.symmetric, shapes)

    def loading(self, out: str, cfg) -> str | None:
        return loading_line(out, cfg.symmetric)

    def written(self, where: str, manifest: str, cfg, report) -> list[str]:
        dense = [t.name for t in report.tensors if t.blocks == 0]
        return [f"left unquantized (the format has no sparse hold-out): {', '.join(dense) or 'none'}",
                f"written to {where} in compressed-tensors' pack-quantized format "
                f"({'symmetric' if cfg.symmetric else 'asymmetric, --no-sym'}); manifest: {where}{manifest}"]
