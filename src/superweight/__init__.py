"""superweight: find, prove and protect the super weights of transformer language models.

Public API::

    import superweight as sw
    lm = sw.load()                      # the embedded SmolLM2-135M-Instruct, or a hub id / dir / .gguf
    result = sw.detect(lm)              # DetectResult: .super_weights, .rejected, .to_dict()
    sw.verify(lm, [sw.Coord(11, 507, 1229)])
    sw.known("HuggingFaceTB/SmolLM2-135M-Instruct")   # index entry or None
"""
from .coords import Coord
from .detect import DetectConfig, DetectResult, Finding, Verdict, detect, verify, verify_together
from .errors import ModelLoadError, SuperweightError, UnsupportedModelError, UsageError
from .hooks import edited, zeroed
from .index import IndexEntry, compare, index, known
from .model import LoadedModel, load

__all__ = [
    "Coord", "DetectConfig", "DetectResult", "Finding", "Verdict", "detect", "verify", "verify_together", "load", "LoadedModel",
    "index", "known", "compare", "IndexEntry", "zeroed", "edited",
    "SuperweightError", "UsageError", "ModelLoadError", "UnsupportedModelError",
]
__version__ = "0.1.0"
