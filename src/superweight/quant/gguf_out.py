"""``superweight quantize MODEL.gguf --format gguf``: a GGUF file llama.cpp loads, written by gguf-py.

Each decoder linear weight (``blk.N.*.weight``, 2-D) is read in the source's own type,
dequantized and quantized again to the chosen type by gguf-py's quantizer (the reference
row quantizers of llama.cpp, ported: ``gguf.quants.quantize``); the super weights' matrices
go to Q8_0 instead (or stay as they are with ``keep_type=None``). Everything else (the
embeddings, the norms, the head, every key of the header) is copied byte for byte.

The type follows ``--bits`` and ``--sym`` (llama.cpp's legacy types, 32 weights a block):
4 bits Q4_0 (symmetric, default) or Q4_1 (a minimum per block: ``--no-sym``), 5 bits Q5_0
or Q5_1, 8 bits Q8_0. gguf-py does not quantize k-quants (Q4_K and the like): for those,
``superweight recipe --for llama.cpp`` writes ``llama-quantize``'s ``--tensor-type``
arguments. A matrix whose row is not a multiple of 32 is copied as it is (the run says which).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from superweight.errors import UsageError
from superweight.quant.format import Format

TYPES = {(4, True): "Q4_0", (4, False): "Q4_1", (5, True): "Q5_0", (5, False): "Q5_1", (8, True): "Q8_0",
         (8, False): "Q8_0"}
KEEP = "Q8_0"
DECODER = re.compile(r"^blk\.\d+\.")


@dataclass
class GGUFReport:
    type: str
    keep_type: str | None
    file: str
    tensors: dict[str, str] = field(default_factory=dict)  # tensor -> the type written
    copied: list[str] = field(default_factory=list)  # decoder matrices left as they were (row not a multiple of 32)
    numel: int = 0
    bits: float = 0.0  # over the decoder's linear weights
    seconds: float = 0.0

    @property
    def bits_per_weight(self) -> float:
        return self.bits / max(self.numel, 1)

    def to_dict(self) -> dict:
        return {"format": "gguf", "type": self.type, "protected_type": self.keep_type, "file": self.file,
                "tensors": self.tensors, "copied": self.copied, "numel": self.numel,
                "bits_per_weight": round(self.bits_per_weight, 4), "seconds": round(self.seconds, 2)}


def gguf_type(bits: int, symmetric: bool) -> str:
    if (bits, symmetric) not in TYPES:
        raise UsageError(f"--format gguf writes llama.cpp's Q4_0/Q4_1 (--bits 4), Q5_0/Q5_1 (--bits 5) and Q8_0 "
                         f"(--bits 8), not {bits} bits; for k-quants use `superweight recipe --for llama.cpp`")
    return TYPES[(bits, symmetric)]


def quantize_gguf(src: Path, dest: Path, qtype: str, keep: list[str], keep_type: str | None = KEEP,
                  log=None) -> GGUFReport:
    """Write ``src`` (a GGUF file) to ``dest`` with its decoder matrices in ``qtype`` and the
    tensors named in ``keep`` in ``keep_type`` (None: as they are)."""
    import gguf

    from superweight.models import gguf_file

    t0 = time.perf_counter()
    reader = gguf_file.reader(src)
    names = {t.name for t in reader.tensors}
    missing = [k for k in keep if k not in names]
    if missing:
        raise UsageError(f"{src.name} has no tensor {', '.join(missing)}")
    rep = GGUFReport(qtype, keep_type, dest.name)

    def account(t, kind) -> None:  # the tensor as written, and its bits over the decoder's matrices
        n = int(np.prod(t.shape))
        block, size = gguf.GGML_QUANT_SIZES[kind]
        rep.tensors[t.name] = kind.name
        rep.numel, rep.bits = rep.numel + n, rep.bits + n * size * 8 / block

    replace = {}
    todo = [t for t in reader.tensors if DECODER.match(t.name) and len(t.shape) == 2]
    for i, t in enumerate(todo):
        want = keep_type if t.name in keep else qtype
        kind = t.tensor_type if want is None else gguf.GGMLQuantizationType[want]
        if want is not None and gguf_file.element_shape(t)[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
            rep.copied.append(t.name)  # its rows do not split into the type's blocks: left as it is
            kind, want = t.tensor_type, None
        if want is not None:
            replace[t.name] = (gguf.quants.quantize(gguf_file.values(t).astype(np.float32), kind), kind)
        account(t, kind)
        if log is not None and hasattr(log, "layer"):
            log.layer(i + 1, len(todo))
    gguf_file.write_copy(reader, dest, replace, {"superweight.quantize": f"{qtype}; protected {keep_type}: "
                                                                         f"{', '.join(keep) or 'none'}"}, log)
    rep.seconds = time.perf_counter() - t0
    return rep


class GGUFFile(Format):
    """``--format gguf``: one GGUF file from a GGUF source (``quantize_gguf``); the super
    weights' matrices at Q8_0. The quantizer is llama.cpp's (through gguf-py), not ours, so
    ``--group-size`` (its blocks are 32), ``--clip``, ``--keep-outliers``, ``--act-ratio``,
    ``--hold`` and ``--include``/``--exclude`` do not apply and are refused when given."""

    name = "gguf"
    whole_file = True
