"""The registry of ``quantize``'s output formats: name -> the class that implements it
(``format.Format``), as "module:class" so that the command line lists the names without
importing torch. A new format is one module defining a ``Format`` subclass plus its line
here; that holds for a format whose outputs need reading of their own as well
(``Format.quant_method``: ``readers`` hands it to the loader).
"""
from __future__ import annotations

import importlib

FORMATS = {  # name -> the class that implements it; the first is the default
    "dequantized": "superweight.quant.format:Dequantized",
    "compressed-tensors": "superweight.quant.packed:CompressedTensors",
    "gguf": "superweight.quant.gguf_out:GGUFFile",
}


def get(name: str):
    """The format called ``name`` (a ``Format``); an unknown one is refused in one line naming the choices."""
    from superweight.errors import UsageError

    if name not in FORMATS:
        raise UsageError(f"unknown format {name!r}: {', '.join(FORMATS)}")
    module, cls = FORMATS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def readers() -> dict:
    """quant_method -> the registered format that reads its own outputs back, for ``load``."""
    found = (get(name) for name in FORMATS)
    return {f.quant_method: f for f in found if f.quant_method}
