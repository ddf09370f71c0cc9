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
import types

# The public names are imported on first use (PEP 562), so that ``import superweight`` and
# the command line's start (``superweight --version``, a cached verdict) do not load torch.
_PUBLIC = {
    "Coord": "coords", "detect": "detect", "DetectConfig": "results", "DetectResult": "results", "Finding": "results",
    "Verdict": "verification", "VerifyResult": "verification", "verify": "verification",
    "verify_report": "verification", "verify_together": "verification",
    "Edit": "edit", "EditResult": "edit", "save_edited": "edit",
    "ModelLoadError": "errors", "SuperweightError": "errors", "UnsupportedModelError": "errors", "UsageError": "errors",
    "edited": "probe.interventions", "zeroed": "probe.interventions",
    "IndexEntry": "index", "compare": "index", "index": "index", "known": "index",
    "LoadedModel": "models.load", "load": "models.load",
    "Provenance": "verdicts", "detect_once": "verdicts", "verify_once": "verdicts",
}

__all__ = [
    "Coord", "DetectConfig", "detect_once", "verify_once", "Provenance", "DetectResult", "Finding", "Verdict", "VerifyResult", "detect", "verify", "verify_report",
    "verify_together", "load", "LoadedModel", "Edit", "EditResult", "save_edited",
    "index", "known", "compare", "IndexEntry", "zeroed", "edited",
    "SuperweightError", "UsageError", "ModelLoadError", "UnsupportedModelError",
]
from superweight.version import VERSION as __version__  # noqa: E402


def __getattr__(name: str):
    """The public names (``_PUBLIC``), imported on first use."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """Loading the submodules ``superweight.detect`` and ``superweight.index`` binds them on the
    package; the public functions of those names keep their place (as when they were imported eagerly)."""

    def __setattr__(self, name, value):
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

