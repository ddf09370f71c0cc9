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

import functools
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
# at most 65536 settings are tried: a weight's code (4 to 8 bits), and where the rest of its
# sub-block is zero, the sub-block's scale too (Q6_K: 6 + 8 bits)
MAX_CODE_BITS = 16


_READER = None


def _reader_class():
    """``gguf.GGUFReader`` with its metadata parsed about 5x faster (see ``reader``)."""
    global _READER
    if _READER is not None:
        return _READER
    from gguf import GGUFReader, GGUFValueType

    class Reader(GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            dt = np.dtype(dtype)
            arr = plain[offset: offset + dt.itemsize * int(count)].view(dt)[:int(count)]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

        def _get_field_parts(self, orig_offs, raw_type):
            if raw_type != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype, alen = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
            if raw_itype[0] != GGUFValueType.STRING or alen[0] == 0:
                return super()._get_field_parts(orig_offs, raw_type)
            u64, plain = np.dtype(np.uint64).newbyteorder(self.byte_order), self._plain
            parts, offs = [raw_itype, alen], orig_offs + 12
            for _ in range(int(alen[0])):  # each: its uint64 length, then its bytes
                slen = plain[offs:offs + 8].view(u64)
                parts += (slen, plain[offs + 8: offs + 8 + int(slen[0])])
                offs += 8 + int(slen[0])
            return offs - orig_offs, parts, list(range(3, len(parts), 2)), [GGUFValueType.ARRAY, GGUFValueType.STRING]

    _READER = Reader
    return Reader


def reader(path: str | Path):
    """``gguf.GGUFReader`` on ``path``, its metadata parsed about 5x faster (Qwen2.5's 152k-word
    vocabulary and merges: 10.5 s with the stock reader, 2.1 s here, on 2 cores). The stock
    reader slices its ``np.memmap`` once per value, and every memmap slice costs a subclass
    finalization; this one slices a plain ndarray view of the same map, and reads an array
    of strings in one loop. Fields and tensors are the same arrays, views of the file
    (``tests/models/test_load.py`` compares them with the stock reader's). One reader per file
    and version of it (path, inode, size, mtime): the sizes check before a streamed read and
    the stream itself share one parse (0.4 s on SmolLM2's file, 1.1 s on Qwen2.5-Coder's)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return _parsed(real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parsed(path: str, dev: int, ino: int, size: int, mtime_ns: int):
    """The reader of ``path`` as it was at that (device, inode, size, mtime): read-only views."""
    return _reader_class()(path)


@contextmanager
def faster_gguf():
    """transformers' own GGUF reading (config, tokenizer, weights, the name map), with our
    reader in place of ``gguf.GGUFReader`` and each ``gguf.get_tensor_name_map`` built once:
    transformers builds that map again for every module of the model (397 times on SmolLM2,
    9 s of a 30 s streamed load). transformers imports both from ``gguf`` when it calls
    them, so they are swapped in the ``gguf`` module for the block, and put back after."""

    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = _reader_class(), functools.lru_cache(maxsize=None)(saved[1])
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved


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


def check_gguf_sizes(path: str | Path) -> None:
    """A GGUF file's metadata against its tensor table, before transformers builds a config
    from it (issue 42: a config claiming 10^9 layers takes transformers' config alone 13 s,
    and the model's build far longer): ``{arch}.block_count`` may not exceed the blocks its
    tensors hold (``blk.N.``), and ``{arch}.embedding_length`` must be a width of the token
    embedding. A file the reader cannot parse is left to the load, which names it."""
    import re

    from superweight.errors import ModelLoadError

    try:
        r = reader(path)
        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
        field = r.fields.get(f"{arch}.block_count")
        want = int(field.parts[-1][0]) if field is not None else None
        width = r.fields.get(f"{arch}.embedding_length")
        hidden = int(width.parts[-1][0]) if width is not None else None
        blocks = {int(m.group(1)) for t in r.tensors for m in [re.match(r"blk\.(\d+)\.", t.name)] if m}
        emb = next((tuple(int(x) for x in t.shape) for t in r.tensors if t.name == "token_embd.weight"), None)
    except Exception:  # noqa: BLE001 - the reader raises several types; the load says what is wrong
        return
    if want is not None and blocks and want > max(blocks) + 1:
        raise ModelLoadError(f"{path}: its metadata says {want:,} blocks, its tensors hold {max(blocks) + 1}")
    if hidden is not None and emb is not None and hidden not in emb:
        raise ModelLoadError(f"{path}: its metadata says an embedding length of {hidden:,}, its token embedding is "
                             f"{' x '.join(map(str, emb))}")
