"""GGUF files through the ``gguf`` package: values, one weight changed inside its
quantization block, and a copy written with the package's own writer.

Changing one weight of a quantized tensor without touching its neighbours: a block stores
shared scales and one code per weight. Which bits of the block are weight ``j``'s code is
found by flipping each bit of the block and dequantizing (``gguf``'s own dequantizer): the
bits that move weight ``j`` and nothing else. Every setting of those bits is then tried,
and one that gives exactly the new value, with every other weight of the block unchanged,
is kept. This needs no knowledge of any type's bit layout, so it holds for every type the
package dequantizes (Q4_0 to Q8_0, the K-quants, ...). When no setting gives the value
(zero is not on an asymmetric block's grid, a scaled value is rarely on any grid, an
IQ type's codes cover several weights), the one tensor is stored at a float type that
holds every value exactly (F16 where it can, else F32), and the change is recorded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
# at most 65536 settings are tried: a weight's code (4 to 8 bits), and where the rest of its
# sub-block is zero, the sub-block's scale too (Q6_K: 6 + 8 bits)
MAX_CODE_BITS = 16


def element_shape(t) -> tuple[int, ...]:
    """A tensor's shape in values (numpy order: the last axis is GGUF's first dimension)."""
    from gguf import quant_shape_from_byte_shape

    if t.data.dtype != np.uint8 or t.tensor_type.name in ("I8", "U8"):
        return tuple(t.data.shape)
    return quant_shape_from_byte_shape(tuple(t.data.shape), t.tensor_type)


def values(t) -> np.ndarray:
    """A tensor's values as float32, in ``element_shape``."""
    from gguf import dequantize

    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(element_shape(t))


def _exact_float(value: float, name: str) -> bool:
    import torch

    if name in ("F32", "F64"):
        return True
    dt = {"F16": torch.float16, "BF16": torch.bfloat16}[name]
    v = torch.tensor(value, dtype=torch.float32)
    return bool(torch.isfinite(v.to(dt)) and v.to(dt).float() == v)


def _float_bytes(value: float, name: str) -> bytes:
    import torch

    dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}[name]
    return torch.tensor([value], dtype=torch.float32).to(dt).view(torch.uint8).numpy().tobytes()


def set_in_place(t, flat: int, value: float) -> tuple[int, bytes] | None:
    """The bytes that set value ``flat`` of tensor ``t`` to ``value`` (float32) and change
    no other value: (byte offset in the tensor's data, new bytes), or None when the
    tensor's type cannot hold it there."""
    from gguf import GGML_QUANT_SIZES, dequantize

    name = t.tensor_type.name
    if name in FLOAT_TYPES:
        size = np.dtype({"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}[name]).itemsize
        return (flat * size, _float_bytes(value, name)) if _exact_float(value, name) else None
    bs, ts = GGML_QUANT_SIZES[t.tensor_type]
    raw = np.asarray(t.data).reshape(-1).view(np.uint8)
    b, j = divmod(flat, bs)
    block = raw[b * ts:(b + 1) * ts].copy()
    before = dequantize(block[None], t.tensor_type).reshape(-1).astype(np.float32)
    nbits = ts * 8
    flips = np.repeat(block[None], nbits, axis=0)
    flips[np.arange(nbits), np.arange(nbits) // 8] ^= (1 << (np.arange(nbits) % 8)).astype(np.uint8)
    with np.errstate(all="ignore"):
        after = dequantize(flips, t.tensor_type).reshape(nbits, bs).astype(np.float32)
    moved = ~((after == before) | (np.isnan(after) & np.isnan(before)))
    own = [i for i in range(nbits) if moved[i, j] and moved[i].sum() == 1]
    if not own or len(own) > MAX_CODE_BITS:
        return None
    k = len(own)
    settings = ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1).astype(np.uint8)  # [2^k, k]
    tries = np.repeat(block[None], 2 ** k, axis=0)
    for i, bit in enumerate(own):
        byte, mask = bit // 8, np.uint8(1 << (bit % 8))
        tries[:, byte] = (tries[:, byte] & ~mask) | (settings[:, i] * mask)
    with np.errstate(all="ignore"):
        got = dequantize(tries, t.tensor_type).reshape(len(tries), bs).astype(np.float32)
    others = np.ones(bs, dtype=bool)
    others[j] = False
    ok = (got[:, j] == np.float32(value)) & (got[:, others] == before[others]).all(axis=1)
    hits = np.flatnonzero(ok)
    if len(hits):  # the fewest bits changed: a weight's own code before a scale it alone uses
        was = np.array([(block[bit // 8] >> (bit % 8)) & 1 for bit in own], dtype=np.uint8)
        hits = hits[np.argsort((settings[hits] != was).sum(axis=1), kind="stable")]
    return None if not len(hits) else (b * ts, tries[hits[0]].tobytes())


def float_type_for(vals: np.ndarray) -> str:
    """F16 when every value is exactly a finite float16, else F32."""
    with np.errstate(over="ignore"):
        half = vals.astype(np.float16)
    return "F16" if np.isfinite(half).all() and (half.astype(np.float32) == vals).all() else "F32"


def architecture(reader) -> str:
    field = reader.fields.get("general.architecture")
    return bytes(field.parts[field.data[0]]).decode() if field else ""


def write_copy(reader, dest: Path, replace: dict, metadata: dict[str, str], log=None) -> None:
    """Write ``reader``'s file to ``dest`` with the ``gguf`` package's writer: every key and
    every tensor as they are (bytes copied, same order and alignment), except ``replace``
    (tensor name -> (numpy data, GGMLQuantizationType): a quantized tensor's raw bytes in
    its byte shape, or a float tensor's values), and with the string keys ``metadata``
    added."""
    import gguf

    writer = gguf.GGUFWriter(str(dest), arch=architecture(reader), endianess=reader.endianess)
    align = reader.fields.get(gguf.Keys.General.ALIGNMENT)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") or field.name in metadata:
            continue
        if field is align:
            writer.data_alignment = int(field.contents())
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for k, v in metadata.items():
        writer.add_string(k, v)
    chosen = []
    for t in reader.tensors:
        data, qtype = replace.get(t.name, (t.data, t.tensor_type))
        writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, qtype)
        chosen.append(data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, data in enumerate(chosen):
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        if log is not None and hasattr(log, "layer"):
            log.layer(i + 1, len(chosen))
    writer.close()


def header_error(path: Path, e: BaseException):
    """The one line for a GGUF file whose header ``gguf``'s reader cannot parse."""
    from superweight.errors import ModelLoadError, first_line

    return ModelLoadError(f"cannot read GGUF file {path}: its header is damaged or truncated ({first_line(e)})")
