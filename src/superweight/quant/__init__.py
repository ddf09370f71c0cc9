"""Quantization: round-to-nearest of one tensor (``rtn``), applied to a model's decoder
weights in memory (``apply``), written as a checkpoint (``export``), simulated W8A8
(``w8a8``), and the sweep of methods against bits per weight (``sweep``).

``superweight.quant`` was the tensor module before it became this package; its names
are here as they were."""
__all__ = ["MSE_GRID", "PCT_GRID", "SCALE_DTYPES", "Z_GRID", "Clip", "QuantConfig", "QuantizedTensor", "quantize_tensor"]


def __getattr__(name: str):
    """The names above, imported from ``rtn`` on first use (PEP 562): the package itself
    imports no torch, so the command line can list the formats (``formats.py``) without it."""
    if name in __all__:
        from superweight.quant import rtn

        return getattr(rtn, name)
    raise AttributeError(f"module 'superweight.quant' has no attribute {name!r}")
