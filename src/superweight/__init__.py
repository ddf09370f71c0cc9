"""superweight: find, prove and protect the super weights of transformer language models.

Public API::

    import superweight as sw
    lm = sw.load()                      # the embedded SmolLM2-135M-Instruct, or a hub id / dir / .gguf
    result = sw.detect(lm)              # DetectResult: .super_weights, .rejected, .to_dict()
    sw.verify(lm, [sw.Coord(11, 507, 1229)])
    sw.known("HuggingFaceTB/SmolLM2-135M-Instruct")   # index entry or None
    sw.save_edited(sw.load(path, stream=True), [sw.Edit(sw.Coord(11, 507, 1229))], "out/")  # a zeroed copy
"""
import importlib.abc
import importlib.util
import sys

from superweight.coords import Coord
from superweight.detect import detect
from superweight.results import DetectConfig, DetectResult, Finding
from superweight.verification import Verdict, VerifyResult, verify, verify_report, verify_together
from superweight.edit import Edit, EditResult, save_edited
from superweight.errors import ModelLoadError, SuperweightError, UnsupportedModelError, UsageError
from superweight.probe.interventions import edited, zeroed
from superweight.index import IndexEntry, compare, index, known
from superweight.models.load import LoadedModel, load
from superweight.verdicts import Provenance, detect_once, verify_once

__all__ = [
    "Coord", "DetectConfig", "detect_once", "verify_once", "Provenance", "DetectResult", "Finding", "Verdict", "VerifyResult", "VerifyReport", "detect", "verify", "verify_report",
    "verify_together", "load", "LoadedModel", "Edit", "EditResult", "EditReport", "save_edited",
    "index", "known", "compare", "IndexEntry", "zeroed", "edited",
    "SuperweightError", "UsageError", "ModelLoadError", "UnsupportedModelError",
]
from superweight.version import VERSION as __version__  # noqa: E402

EditReport, VerifyReport = EditResult, VerifyResult  # their earlier names ("report" now means only the report command's page)


# Old flat module paths (superweight.quant, superweight.export, superweight.ablate, ...) keep
# working: each names the module that now lives in a subpackage (see _MOVED), the same
# module object, so attributes and monkeypatches agree.
_MOVED = {
    "model": "models.load", "adapters": "models.adapters", "streaming": "models.streaming", "pypi_models": "models.pypi",
    "hooks": "probe.hooks", "interventions": "probe.interventions", "passes": "probe.passes",
    "effect": "probe.measures", "realtext": "probe.realtext",
    "quantize": "quant.apply", "export": "quant.export", "actquant": "quant.w8a8", "qcompare": "quant.sweep",
    "ablate": "paper.ablate", "stopwords": "paper.stopwords", "zeroshot": "paper.zeroshot", "data": "paper.data",
    "report": "output.console", "plot": "output.plot", "atomic": "output.atomic", "outputs": "output.outputs",
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        head, _, leaf = fullname.partition(".")
        if head == __name__ and leaf in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.partition('.')[2]]}")

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Moved())


def __getattr__(name: str):
    """``superweight.model`` and the other flat names as attributes too, as in 0.1."""
    if name in _MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")  # before the path finder: superweight/data/ is a folder too
