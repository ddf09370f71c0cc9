"""Output formats of ``quantize``: one small interface and one registry.

A format says what it accepts, how it writes, how it is loaded and who serves it:

    fmt = formats.get("compressed-tensors")
    cfg = QuantConfig(**fmt.defaults(), bits=4, size=128)   # QuantConfig.for_format does this
    fmt.check(cfg); fmt.fits(name, shape, cfg)               # refused in one line, before any work
    stored, q = fmt.write(name, w, cfg, quantize)            # its tensors and account; None: quantize(w)
    fmt.finish(out_dir, lm, cfg, quantized_modules)          # what the directory needs besides tensors
    fmt.engines(cfg, shapes); fmt.loading(out, cfg)          # the manifest's engines, the loading line

``export.write_quantized`` is the only writer: it reads each tensor, asks the format, and
writes shards and the manifest. A new format is one module defining a ``Format`` subclass,
plus its line in ``FORMATS`` below (name -> "module:class", so that the command line lists
the names without importing torch). ``Dequantized`` (this file) writes the quantized values
back as floats; ``packed.CompressedTensors`` writes compressed-tensors' pack-quantized
layout.
"""
from __future__ import annotations

import importlib

FORMATS = {  # name -> the class that implements it; the first is the default
    "dequantized": "superweight.quant.formats:Dequantized",
    "compressed-tensors": "superweight.quant.packed:CompressedTensors",
    "gguf": "superweight.quant.gguf_out:GGUFFile",
}


class Format:
    """The interface; the defaults are those of a format that stores every tensor as the
    model holds it (dequantized floats)."""

    name = ""
    packs = False  # True: chosen tensors are stored in the format's own layout (``write`` answers)
    holds_out = "columns"  # what its hold-out keeps: "columns" (sparse, exact) or "matrices" (left unquantized)
    whole_file = False  # True: written as one file from a source of its own kind (gguf), not tensor by tensor

    def defaults(self) -> dict:
        """``QuantConfig`` fields this format needs unless the user gives them."""
        return {}

    def check(self, cfg) -> None:
        """Refuse a config the format cannot store (``UsageError``, one line)."""

    def fits(self, name: str, shape: tuple[int, ...], cfg) -> None:
        """Refuse a matrix the format cannot store under ``cfg`` (one line naming it)."""

    def write(self, name: str, w, cfg, quantize) -> tuple | None:
        """(stored tensors by their names, the quantizer's account) for the chosen weight
        ``name`` ([out, in]) when ``packs``; None when it is stored as ``quantize(w)``, our
        quantizer with the weight's hold-out, which returns (values, account)."""
        return None

    def finish(self, out, lm, cfg, quantized_modules: set[str]) -> None:
        """Anything the written directory ``out`` needs besides its tensors and the config."""

    def engines(self, cfg, shapes: dict[str, tuple[int, int]]) -> dict:
        from superweight.quant.engines import for_dense

        return for_dense()

    def loading(self, out: str, cfg) -> str | None:
        """The Python that loads the output, when plain ``from_pretrained`` is not enough to say."""
        return None

    def written(self, where: str, manifest: str, cfg, report) -> list[str]:
        """The console's lines about what was written."""
        return [f"written to {where} ({self.name}; manifest: {where}{manifest})"]


class Dequantized(Format):
    """Quantized values written back as floats at the model's dtype: any engine loads it;
    the super weights and the massive-input columns are held out exactly."""

    name = "dequantized"

    def defaults(self) -> dict:
        return {"symmetric": False, "act_ratio": 10.0, "scale_dtype": "float16", "zero": "float"}

    def written(self, where: str, manifest: str, cfg, report) -> list[str]:
        return [f"written to {where} (dequantized floats; manifest: {where}{manifest})"]


def get(name: str) -> Format:
    """The format called ``name``; an unknown one is refused in one line naming the choices."""
    from superweight.errors import UsageError

    if name not in FORMATS:
        raise UsageError(f"unknown format {name!r}: {', '.join(FORMATS)}")
    module, cls = FORMATS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
