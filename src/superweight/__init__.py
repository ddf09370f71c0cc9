"""superweight: find, prove and protect the super weights of transformer language models.

Public API::

    import superweight as sw
    lm = sw.load()                      # the embedded SmolLM2-135M-Instruct, or a hub id / dir / .gguf
    result = sw.detect(lm)              # DetectResult: .super_weights, .rejected, .to_dict()
    sw.verify(lm, [sw.Coord(11, 507, 1229)])
    sw.known("HuggingFaceTB/SmolLM2-135M-Instruct")   # index entry or None
    sw.save_edited(sw.load(path, stream=True), [sw.Edit(sw.Coord(11, 507, 1229))], "out/")  # a zeroed copy
"""
import importlib
import sys

# The public names are imported on first use (PEP 562), so that ``import superweight`` and
# the command line's start (``superweight --version``, a cached verdict) do not load torch.
_PUBLIC = {
    "Coord": "coords", "detect": "find", "DetectConfig": "results", "DetectResult": "results", "Finding": "results",
    "Verdict": "verification", "VerifyResult": "verification", "verify": "verification",
    "verify_report": "verification", "verify_together": "verification",
    "Edit": "edit", "EditResult": "edit", "save_edited": "edit",
    "ModelLoadError": "errors", "SuperweightError": "errors", "UnsupportedModelError": "errors", "UsageError": "errors",
    "edited": "probe.interventions", "zeroed": "probe.interventions",
    "IndexEntry": "catalog", "compare": "catalog", "index": "catalog", "known": "catalog",
    "LoadedModel": "models.load",
    "Provenance": "verdicts", "detection": "verdicts", "Detection": "verdicts", "verify_once": "verdicts",
}

__all__ = [
    "Coord", "DetectConfig", "detection", "Detection", "verify_once", "Provenance", "DetectResult", "Finding", "Verdict", "VerifyResult", "detect", "verify", "verify_report",
    "verify_together", "load", "LoadedModel", "Edit", "EditResult", "save_edited",
    "index", "known", "compare", "IndexEntry", "zeroed", "edited",
    "SuperweightError", "UsageError", "ModelLoadError", "UnsupportedModelError",
]
from superweight.version import VERSION as __version__  # noqa: E402


def load(ref: str | None = None, *, dtype="auto", device: str = "cpu", trust_remote_code: bool = False,
         index_id: str | None = None, stream: bool | None = None, log=None):
    """A causal LM for detection (``models.load.load``, whose docstring says how each source is
    read), that also reads the outputs of every registered ``quantize`` format
    (``quant.formats.readers``): the embedded SmolLM2-135M-Instruct when ``ref`` is None, or
    a short name, hub id, directory or .gguf file."""
    from superweight.models.load import load as load_model
    from superweight.quant.formats import readers

    return load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code, index_id=index_id,
                      stream=stream, log=log, readers=readers())


def __getattr__(name: str):
    """The public names (``_PUBLIC``), imported on first use."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _html(result) -> str:
    from superweight.output.html import detect_fragment

    return detect_fragment(result)


def _jupyter_view() -> bool:
    """In an IPython kernel (Jupyter, VS Code, Colab), a ``DetectResult`` shows itself as the
    findings table and the detection figure (``output.html.detect_fragment``): registered
    here, by the type's name, so that nothing is imported until one is shown and
    ``results`` stays below ``output`` (no ``_repr_html_`` importing upward). Whether a
    shell was there to register with."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it before any user code
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    if shell is None:
        return False
    shell.display_formatter.formatters["text/html"].for_type_by_name("superweight.results", "DetectResult", _html)
    return True


_jupyter_view()

