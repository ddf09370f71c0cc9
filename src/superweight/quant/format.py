"""What an output format of ``quantize`` is: one interface (``Format``), from the flag to the
manifest, and the plain format (``Dequantized``). The registry of names is ``formats.py``.

    fmt = formats.get("compressed-tensors")          # once, where the flag is read
    cfg = fmt.config(bits=4, size=128)               # its defaults under what is given; checked
    plan = export.plan(lm, fmt, cfg)                 # one preflight: names, shapes, resolved config
    stored, q = fmt.store(name, w, cfg, quantize)    # its tensors for one chosen weight
    fmt.leaves(held=True)                            # whether it leaves a held weight's matrix as it is
    fmt.finish(out, lm, cfg, quantized_modules)      # what the directory needs besides tensors
    fmt.engines(cfg, shapes); fmt.loading(out, cfg)  # the manifest's engines, the loading line

Reading back is the format's too, when transformers alone does not read its outputs right:
a format whose config.json carries ``quantization_config.quant_method`` = ``quant_method``
answers ``options`` (what ``from_pretrained`` is given) and ``after`` (what is done to the
loaded model); ``models.load.load`` takes the registered formats' readers
(``formats.readers``) beside its own for checkpoints in the wild (compressed-tensors,
bitsandbytes, HQQ, torchao), so a format that needs its own loading is still one module
and one registry line. This module imports no torch: the command line lists the names
without it.
"""
from __future__ import annotations


class Format:
    """The interface; the defaults are those of a format that stores each chosen weight as its
    quantized values (``Dequantized``)."""

    name = ""
    whole_file = False  # True: written as one file from a source of its own kind (gguf), not tensor by tensor
    in_place = False  # True: a weight's stored tensor is its quantized values, same name and shape, so a
    #                   model quantized in memory can be saved as it is (the path for hub ids and .bin)
    quant_method: str | None = None  # config.json's quantization_config.quant_method of its outputs, when
    #                                  they need reading of their own (``options``, ``after``)
    how = "read by its format"  # how such an output is read back, for the loader's messages

    def defaults(self) -> dict:
        """``QuantConfig`` fields this format needs unless the user gives them."""
        return {}

    def config(self, **given):
        """The ``QuantConfig`` of this format: its ``defaults`` under what is given (None: not
        given, but for ``size`` and ``clip``, whose None means whole rows and no clip), checked
        by the config and by the format (one line, before any model work)."""
        from superweight.quant.rtn import QuantConfig

        given = {k: v for k, v in given.items() if v is not None or k in ("size", "clip")}
        cfg = QuantConfig(**{**self.defaults(), **given})
        self.check(cfg)
        return cfg

    def check(self, cfg) -> None:
        """Refuse a config the format cannot store (``UsageError``, one line)."""

    def fits(self, name: str, shape: tuple[int, ...], cfg) -> None:
        """Refuse a matrix the format cannot store under ``cfg`` (one line naming it)."""

    def leaves(self, held: bool) -> bool:
        """Whether a chosen matrix is left as it is (unquantized); ``held``: it holds a weight
        to keep. This default holds out the weights themselves, inside the quantized matrix."""
        return False

    def store(self, name: str, w, cfg, quantize) -> tuple[dict, object]:
        """(the stored tensors by their names, the quantizer's account) for the chosen weight
        ``name`` ([out, in]); ``quantize(w)`` is our quantizer with the weight's hold-out and
        returns (values, account). Names are the model's: the writer renames them as
        ``save_pretrained`` would."""
        values, q = quantize(w)
        return {name: values}, q

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

    # -- reading back (only for a format with a ``quant_method``) --

    def options(self, quantization_config: dict) -> dict:
        """What ``from_pretrained`` is given to read one of its outputs."""
        return {}

    def after(self, model, quantization_config: dict):
        """What is done to the model once loaded (returns the blocks its weights were read
        in, for ``audit``, or None)."""
        return None


class Dequantized(Format):
    """Quantized values written back as floats at the model's dtype: any engine loads it;
    the super weights and the massive-input columns are held out exactly."""

    name = "dequantized"
    in_place = True

    def defaults(self) -> dict:
        return {"symmetric": False, "act_ratio": 10.0, "scale_dtype": "float16", "zero": "float"}

    def written(self, where: str, manifest: str, cfg, report) -> list[str]:
        return [f"written to {where} (dequantized floats; manifest: {where}{manifest})"]
