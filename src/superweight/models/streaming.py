"""Run a model whose decoder layers stay on disk.

The model is built on the meta device from its config (the model's own modules, no
hand-written forward). Embeddings, final norm and head are loaded once; each decoder
layer is read from the safetensors checkpoint by a forward pre-hook just before it runs
and put back on the meta device by a forward hook after. Peak memory is about one layer
plus the resident parts and the activations; each forward pass reads the layers' bytes
once (from the page cache when warm).

Page cache, managed so that repeated passes read little from disk: while a layer runs,
the next layer's bytes are requested from the kernel (``POSIX_FADV_WILLNEED``), so disk
reads overlap compute. When the decoder layers do not all fit in the memory available,
the layers that do fit (from the first) are left in the page cache and the rest are
dropped from it right after they run (``POSIX_FADV_DONTNEED``): a sequential pass over a
file larger than the cache would otherwise evict each page just before the next pass
wants it, and every pass would read the whole checkpoint from disk again.

Tensor names: a safetensors checkpoint is read under the model's parameter names through
transformers' own load-time conversion mapping (``Mapped``), so what ``from_pretrained``
renames or fuses streams too: Mixtral's and Qwen-MoE's per-expert tensors become the
layer's fused expert tensors as the layer is read. GGUF files go through transformers' GGUF
name map and tensor processors (``GGUFCheckpoint``), Qwen2/3-MoE's stacked gate and up
experts included.

Weight edits (``hooks.edited``) on a streamed layer are kept here and applied each time
the layer is materialized; ``read`` gives any parameter's stored value on demand.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open

from superweight.errors import ModelLoadError

ST_DTYPES = {  # safetensors dtype names -> torch
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_index(directory: Path, name: str = "model.safetensors.index.json") -> dict[str, Path] | None:
    """The weight map of a sharded checkpoint (None when it has no index). An entry that
    names a file outside the directory (``../other/model.safetensors``, an absolute path)
    is refused: a checkpoint reads only its own files. (Judged by the names, not by where
    links lead: a hub cache's snapshot links every file to a blob elsewhere.)"""
    directory = Path(directory)
    index = directory / name
    if not index.is_file():
        return None
    try:
        wm = json.loads(index.read_text())["weight_map"]
        items = [(str(k), str(v)) for k, v in wm.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{index} is not a valid shard index: {type(e).__name__}") from None
    root = os.path.normpath(os.path.abspath(directory))
    out = {}
    for k, v in items:
        f = os.path.normpath(os.path.join(root, v))
        if os.path.dirname(f) != root and not f.startswith(root + os.sep):
            raise ModelLoadError(f"{index} names a shard outside the model directory: {v}")
        out[k] = directory / v
    return out


class Checkpoint:
    """Which safetensors file holds each tensor (single file or sharded with an index)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        index = read_index(self.dir)
        if index is not None:
            self.where = index
        else:
            self.where = {}
            for f in sorted(self.dir.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():
                        self.where[k] = f
        missing = {f for f in set(self.where.values()) if not f.is_file()}
        if missing:
            raise ModelLoadError(f"shard listed in the index is missing: {sorted(missing)[0]}")
        self._spans: dict[str, tuple[Path, int, int]] | None = None
        self._meta: dict[str, tuple[torch.dtype, list[int]]] = {}
        self._maps: dict[Path, mmap.mmap] = {}

    def span(self, name: str) -> tuple[Path, int, int] | None:
        """(file, byte offset, byte length) of a tensor's data, for page-cache advice."""
        if self._spans is None:
            self._spans = {}
            for f in set(self.where.values()):
                try:
                    with open(f, "rb") as h:
                        n = int.from_bytes(h.read(8), "little")
                        header = json.loads(h.read(n))
                    size = f.stat().st_size
                except (OSError, ValueError):
                    continue  # a damaged shard is reported by the read itself
                for k, v in header.items():
                    if k != "__metadata__":
                        a, b = v["data_offsets"]
                        self._spans[k] = (f, 8 + n + a, b - a)
                        if v.get("dtype") in ST_DTYPES and 8 + n + b <= size:
                            self._meta[k] = (ST_DTYPES[v["dtype"]], v["shape"])
        return self._spans.get(name)

    def spans(self, name: str) -> list[tuple[Path, int, int]]:
        sp = self.span(name)
        return [] if sp is None else [sp]

    def meta(self, name: str) -> tuple[torch.dtype, list[int]]:
        """A stored tensor's dtype and shape, from its file's header."""
        self.span(name)
        return self._meta[name]

    def read_iter(self, names: list[str], view: bool = False):
        """(name, tensor) for each of ``names``, one file opened at a time. ``view``: a
        zero-copy tensor over a private (copy-on-write) map of the file, where the dtype
        allows: no copy of the bytes at all, the page cache is the weight; ``release``
        drops those pages from this process again."""
        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.where[n], []).append(n)
        for f, ns in by_file.items():
            if view and all(self.span(n) is not None and n in self._meta for n in ns):
                mm = self._map(f)
                for n in ns:
                    _, off, size = self._spans[n]
                    dtype, shape = self._meta[n]
                    count = size // torch.empty((), dtype=dtype).element_size()
                    t = torch.frombuffer(mm, dtype=dtype, count=count, offset=off) if count else torch.empty(0, dtype=dtype)
                    _populate(mm, off, size)
                    yield n, t.view(shape)
                continue
            with safe_open(str(f), framework="pt") as h:
                for n in ns:
                    yield n, h.get_tensor(n)

    def _map(self, f: Path) -> mmap.mmap:
        if f not in self._maps:
            with open(f, "rb") as h:
                self._maps[f] = mmap.mmap(h.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._maps[f]

    def release(self, spans) -> None:
        """Unmap these byte spans' pages from this process (they stay in the page cache), so
        resident memory stays at one layer however many layers a pass has viewed."""
        for f, off, n in spans:
            _unmap(self._maps.get(f), off, n)

    def read_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.read_iter(names))


class Mapped:
    """A safetensors checkpoint under the model's parameter names, through transformers'
    own load-time conversion mapping: the renames and fusions ``from_pretrained`` applies
    (Mixtral's and Qwen-MoE's per-expert tensors stacked into one fused ``down_proj``, a
    base model's keys under a ``ForCausalLM``'s prefix, legacy names). Each model tensor
    comes from one *job*: its checkpoint tensors and the converter that builds it, run only
    when the tensor is read; a job with no converter is the stored tensor itself (a
    zero-copy view when streamed). Only the tensors of the layer being read are touched."""

    def __init__(self, inner: Checkpoint, model: torch.nn.Module):
        from copy import deepcopy

        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            dot_natural_key,
            rename_source_key,
        )

        self.inner, self.dir, self.model = inner, inner.dir, model
        self._copy = deepcopy
        mapping = get_model_conversion_mapping(model)
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        renamings = [m for m in mapping if not isinstance(m, WeightConverter)]
        by_pattern = {p: c for c in converters for p in c.source_patterns}
        meta = model.state_dict()
        prefix = getattr(model, "base_model_prefix", None) or None
        # job key (first target's model name) -> (converter or None, [(source pattern, stored key)])
        self.jobs: dict[str, tuple[object, list[tuple[str, str]]]] = {}
        for key in sorted(inner.where, key=dot_natural_key):  # expert order, as transformers stacks them
            name, pattern = rename_source_key(key, renamings, converters, prefix, meta)
            if name not in meta and key in meta:
                name, pattern = key, None
            if name not in meta:
                continue  # a tensor the model does not use; transformers ignores it too
            conv = by_pattern[pattern] if pattern is not None else None
            self.jobs.setdefault(name, (conv, []))[1].append((pattern or key, key))
        self.where: dict[str, str] = {}  # model name -> its job
        for job, (conv, _) in self.jobs.items():
            for out in self._outputs(job, conv):
                if out in meta:
                    self.where[out] = job

    @staticmethod
    def _outputs(job: str, conv) -> list[str]:
        """Model names a job fills: its key, and for a split (qkv -> q, k, v) the other
        targets, named the way the converter names them (its key with the pattern swapped)."""
        if conv is None or len(conv.target_patterns) == 1:
            return [job]
        first = conv.target_patterns[0]
        return [job.replace(first, t, 1) for t in conv.target_patterns]

    def locate(self, name: str, index: tuple[int, ...]) -> tuple[str, int]:
        """Where element ``index`` of the model tensor ``name`` is stored: (stored tensor's
        key, flat element index in it). Found by running the tensor's own load-time
        conversion over tensors that hold their element numbers (every stored element is
        numbered once, across the job's sources), so whatever transformers stacks, splits
        or transposes on load is followed, not re-implemented."""
        job = self.where[name]
        conv, sources = self.jobs[job]
        if conv is None:
            key = sources[0][1]
            return key, _flat(index, self.model.get_parameter(name).shape)
        numbered, base = [], 0
        conv = self._copy(conv)
        for pattern, key in sources:
            shape = self.inner.meta(key)[1]
            n = _numel(shape)
            ids = torch.arange(base, base + n, dtype=torch.int64).view(shape)
            numbered.append((key, base, n))
            conv.add_tensor(job, key, pattern, lambda t=ids: t)
            base += n
        gid = int(conv.convert(job, model=self.model, config=getattr(self.model, "config", None))[name][index])
        key, start, _ = next(x for x in numbered if x[1] <= gid < x[1] + x[2])
        return key, gid - start

    def spans(self, name: str) -> list[tuple[Path, int, int]]:
        """Byte spans of every stored tensor the model tensor ``name`` is built from."""
        job = self.where.get(name)
        if job is None:
            return []
        return [sp for _, key in self.jobs[job][1] if (sp := self.inner.span(key)) is not None]

    def release(self, spans) -> None:
        self.inner.release(spans)

    def read_iter(self, names: list[str], view: bool = False):
        by_job: dict[str, list[str]] = {}
        for n in names:
            by_job.setdefault(self.where[n], []).append(n)
        plain = [j for j in by_job if self.jobs[j][0] is None]
        stored = {self.jobs[j][1][0][1]: j for j in plain}
        for key, t in self.inner.read_iter(list(stored), view=view):
            yield stored[key], t
        for job, wanted in by_job.items():
            conv, sources = self.jobs[job]
            if conv is None:
                continue
            conv = self._copy(conv)
            # copies, not views: a view's pages stay in this process until the layer is
            # released, beside the converter's stacked copy (0.7 GB more per Qwen-MoE layer)
            for pattern, key in sources:
                conv.add_tensor(job, key, pattern, lambda k=key: self.inner.read_many([k])[k])
            out = conv.convert(job, model=self.model, config=getattr(self.model, "config", None))
            for n in wanted:
                if n not in out:
                    raise ModelLoadError(f"converting {sources[0][1]} did not give {n}")
                yield n, out[n]

    def read_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.read_iter(names))

    def groups(self) -> list[list[str]]:
        """Model names, one list per job, in the checkpoint's file order: what to read,
        edit and write back together."""
        first = {job: str(self.inner.where[src[0][1]]) for job, (_, src) in self.jobs.items()}
        names: dict[str, list[str]] = {}
        for n, job in self.where.items():
            names.setdefault(job, []).append(n)
        return [names[j] for j in sorted(names, key=lambda j: first[j])]


class GGUFCheckpoint:
    """A GGUF file read through the ``gguf`` package's memory-mapped reader, under the model's
    parameter names: each tensor is dequantized (to float32) only when read. The name map
    and the per-architecture fix-ups (Llama's q/k row permutation, ...) are transformers'
    own, so this reads exactly what transformers' GGUF loader would."""

    def __init__(self, path: Path, model: torch.nn.Module, config):
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
        )

        from superweight.models.gguf_file import faster_gguf, reader

        self.dir = Path(path)
        try:
            self.reader = reader(path)
        except Exception as e:  # noqa: BLE001 - the reader raises several types on a bad file
            from superweight.models.gguf_file import header_error

            raise header_error(path, e) from e
        field = self.reader.fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field else ""
        self.cfg = config.to_dict()
        self.processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=self.cfg)
        if type(self.processor).__name__ == "GptOssTensorProcessor":
            # it splits the stacked experts into per-expert names that a second, load-time
            # conversion fuses again; not mirrored here
            raise ModelLoadError(f"{path.name}: per-layer GGUF reading does not handle {arch} experts; "
                                 "load it whole (--no-stream)")
        with faster_gguf():  # its name map built once, not once per module
            self.key_map = get_gguf_hf_weights_map(model, self.processor)  # gguf name -> model name
        # model name -> the GGUF tensors it is built from: one, or for fused MoE experts
        # (Qwen2/3-MoE, MiniMax-M2) the stacked gate and up tensors that make gate_up_proj;
        # the expert entries of the name map lack the ".weight" the file's names carry
        self.where: dict[str, list] = {}
        for t in self.reader.tensors:
            hf = self.key_map.get(t.name) or self.key_map.get(t.name.removesuffix(".weight"))
            if hf is not None:
                self.where.setdefault(hf, []).append(t)

    def span(self, name: str) -> tuple[Path, int, int] | None:
        sp = self.spans(name)
        return sp[0] if len(sp) == 1 else None

    def spans(self, name: str) -> list[tuple[Path, int, int]]:
        return [(self.dir, int(t.data_offset), int(t.n_bytes)) for t in self.where.get(name, [])]

    def groups(self) -> list[list[str]]:
        return [[n] for n in self.where]

    def release(self, spans) -> None:
        """Unmap these byte spans' pages from this process (see ``Checkpoint.release``)."""
        mm = getattr(self.reader.data, "_mmap", None)  # numpy's memmap keeps its mmap here
        for _, off, n in spans:
            _unmap(mm, off, n)

    def read_iter(self, names: list[str], view: bool = False):
        import numpy as np

        for n in names:
            # as transformers' load_gguf_checkpoint: the processor either gives the tensor
            # back (under its GGUF name) or builds the model tensor itself in "tensors"
            parsed = {"config": self.cfg, "tensors": {}}
            out = None
            for t in self.where[n]:
                r = self.processor.process(weights=dequantized(t), name=t.name,
                                           tensor_key_mapping=self.key_map, parsed_parameters=parsed)
                if r.name is not None:  # a fresh array is taken as it is; a view of the file is copied
                    w = r.weights
                    fresh = type(w) is np.ndarray and w.flags.writeable and w.flags.c_contiguous  # the map is read-only
                    out = torch.from_numpy(w if fresh else np.array(w, copy=True, order="C"))
            if n in parsed["tensors"]:
                out = parsed["tensors"][n]
            if out is None:
                raise ModelLoadError(f"{self.dir.name}: reading {self.where[n][0].name} did not give {n}")
            yield n, out

    def locate(self, name: str, index: tuple[int, ...]):
        """Where element ``index`` of the model tensor ``name`` is stored: (the GGUF tensor,
        flat element index into its dequantized values, numpy order). Found by running the
        tensor processor (transformers' GGUF fix-ups) over arrays that hold their element
        numbers instead of weights, as ``Mapped.locate`` does."""
        import numpy as np
        from gguf import quant_shape_from_byte_shape

        parsed = {"config": self.cfg, "tensors": {}}
        out, spans, base = None, [], 0
        for t in self.where[name]:
            shape = quant_shape_from_byte_shape(tuple(t.data.shape), t.tensor_type) \
                if t.data.dtype == np.uint8 and t.tensor_type.name not in ("I8",) else tuple(t.data.shape)
            n = int(np.prod(shape))
            ids = np.arange(base, base + n, dtype=np.float64).reshape(shape)  # exact below 2**53
            spans.append((t, base, n))
            base += n
            r = self.processor.process(weights=ids, name=t.name, tensor_key_mapping=self.key_map, parsed_parameters=parsed)
            if r.name is not None:
                out = torch.from_numpy(np.asarray(r.weights).copy())
        if name in parsed["tensors"]:
            out = parsed["tensors"][name]
        gid = int(out[index])
        t, start, _ = next(x for x in spans if x[1] <= gid < x[1] + x[2])
        return t, gid - start

    def read_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.read_iter(names))


SLAB = 64 << 20  # bytes of float32 output the GGUF dequantizer makes at a time


def dequantized(t):
    """A GGUF tensor's values (float32, numpy), dequantized a slab of rows at a time into one
    array, so that the dequantizer's temporaries (several times its output) stay a slab's
    size: a 150k-word embedding then costs its float32 size once, not three times."""
    import numpy as np
    from gguf import dequantize

    data = t.data
    if data.ndim < 2 or data.shape[0] < 2 or 4 * data.size < SLAB:  # small, or bytes of a 1-D tensor
        return dequantize(data, t.tensor_type)
    first = dequantize(data[:1], t.tensor_type)
    out = np.empty((data.shape[0], *first.shape[1:]), dtype=first.dtype)
    step = max(1, SLAB // max(1, first.nbytes))
    for i in range(0, data.shape[0], step):
        out[i:i + step] = dequantize(data[i:i + step], t.tensor_type)
    return out


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _flat(index: tuple[int, ...], shape) -> int:
    """Row-major flat position of ``index`` in a tensor of ``shape``."""
    flat = 0
    for i, d in zip(index, shape):
        flat = flat * int(d) + int(i)
    return flat


# MADV_POPULATE_READ (Linux 5.14): map a range's pages from the page cache in one call. A
# layer's tensors are read once per pass after ``release`` unmapped them the pass before;
# page by page, the faults cost Qwen2.5-Coder-0.5B 1.3-2 s a pass of 512 tokens on this
# 2-core VM (4.7 s against 2.5-3.3 s in memory); populated first, 3.2-3.5 s.
POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)


def _populate(mm: mmap.mmap, off: int, n: int) -> None:
    """Map a byte range's pages into this process at once; a no-op where the kernel cannot."""
    global POPULATE_READ
    if POPULATE_READ is None or n <= 0:
        return
    start = off - off % mmap.PAGESIZE
    try:
        mm.madvise(POPULATE_READ, start, min(off + n, len(mm)) - start)
    except (OSError, ValueError):  # an older kernel (EINVAL): fault the pages in as they are used
        POPULATE_READ = None


def _unmap(mm: mmap.mmap | None, off: int, n: int) -> None:
    """Drop a mapped byte range's pages from this process (not from the page cache)."""
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        start = off - off % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, start, min(off + n, len(mm)) - start)


# Share of the free memory that the layers kept in the page cache may fill. Linux keeps only
# part of memory for pages read more than once (its active list is balanced against the
# inactive one), so filling all of MemAvailable gets kept layers evicted too. Measured on a
# 26 GB checkpoint with 24 GB available, the second pass took 24 s keeping layers up to 100%
# of it, 21 s at 85%, 13 s at 70% and 16 s at 60% (docs/benchmarks.md).
CACHE_SHARE = 0.7
WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)  # absent off Linux/Unix: advice is skipped
DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


def _advise(spans, advice) -> None:
    """posix_fadvise over byte spans [(file, offset, length)]; a no-op where unsupported."""
    if advice is None or not hasattr(os, "posix_fadvise"):
        return
    for f, off, n in spans:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, off, n, advice)
        except OSError:
            pass
        finally:
            os.close(fd)


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cache_plan(layer_bytes: list[int], room: int | None) -> set[int]:
    """The layers to drop from the page cache after each use: none if all fit in ``room``
    bytes, else the ones past the longest prefix that does."""
    if room is None or sum(layer_bytes) <= room:
        return set()
    total, keep = 0, 0
    for b in layer_bytes:
        if total + b > room:
            break
        total += b
        keep += 1
    return set(range(keep, len(layer_bytes)))


def _hand_big_blocks_back() -> None:
    """Streaming allocates and frees every layer's tensors on every pass. After such frees
    glibc raises its mmap threshold and keeps later blocks in the heap, which holds peak
    RSS ~25 MB higher on SmolLM2. Pin the threshold at 1 MiB so blocks that large are
    mmapped and returned to the OS when freed. A no-op where libc is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class Streamer:
    def __init__(self, model: torch.nn.Module, layers_path: str, checkpoint: Checkpoint, dtype, device):
        _hand_big_blocks_back()
        self.model = model
        self.ckpt = checkpoint
        self.dtype = dtype
        self.device = torch.device(device)
        self.prefix = layers_path + "."
        self.edits: dict[str, dict[tuple, list[float]]] = {}  # name -> index -> stack of values
        self._last: tuple[str, torch.Tensor] | None = None  # (name, stored tensor) of the last ``read``
        self.handles = []
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="superweight-readahead")
        self.progress = None  # called with (layer, num_layers) as each layer is read
        layers = model.get_submodule(layers_path)
        self.num_layers = len(layers)
        self.spans: list[list] = []  # per layer: byte spans of its tensors in the checkpoint
        for i, layer in enumerate(layers):
            # (owning module, attribute, full checkpoint name, meta placeholder) per parameter
            slots = []
            for n, p in layer.named_parameters(recurse=True):
                owner, _, leaf = n.rpartition(".")
                slots.append((layer.get_submodule(owner) if owner else layer, leaf, f"{layers_path}.{i}.{n}", p))
            self.spans.append(list(dict.fromkeys(sp for _, _, full, _ in slots for sp in checkpoint.spans(full))))
            self.handles.append(layer.register_forward_pre_hook(self._materialize(i, slots)))
            self.handles.append(layer.register_forward_hook(self._release(i, slots)))
        # Room for cached layers: what is available now, less this process's working set
        # (the largest layer at the compute dtype, twice, and 1 GiB for activations).
        on_disk = [sum(n for _, _, n in sp) for sp in self.spans]
        width = max(torch.finfo(dtype).bits // 8, 1) if dtype.is_floating_point else 4
        largest = max((sum(p.numel() for p in layer.parameters()) for layer in layers), default=0) * width
        avail = available_memory()
        self.drop = cache_plan(on_disk, None if avail is None else int(CACHE_SHARE * (avail - 2 * largest - (1 << 30))))

    def _convert(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dtype.is_floating_point and t.dtype != self.dtype:
            t = t.to(self.dtype)
        edits = self.edits.get(name)
        if edits:
            t = t.clone()
            for idx, stack in edits.items():
                t[idx] = stack[-1]
        return t

    # The hot path sets parameters directly (accelerate's set_module_tensor_to_device does the
    # same with checks that cost ~80 us a call, times every parameter of every layer per pass).
    def _materialize(self, index, slots):
        where = {full: (owner, leaf, meta) for owner, leaf, full, meta in slots}

        def hook(module, args):
            if self.progress is not None:
                self.progress(index + 1, self.num_layers)
            if index == 0:
                _advise(self.spans[0], WILLNEED)
            if index + 1 < self.num_layers:
                # read ahead while this layer runs; the kernel submits the reads inside the call,
                # which blocks for a large layer, so it is made from a helper thread
                self._ahead.submit(_advise, self.spans[index + 1], WILLNEED)
            # one tensor at a time: a converted copy never sits beside the whole raw layer
            for full, raw in self.ckpt.read_iter(list(where), view=True):
                owner, leaf, meta = where[full]
                if raw.shape != meta.shape:
                    raise ModelLoadError(f"checkpoint tensor {full} has shape {tuple(raw.shape)}, "
                                         f"the config implies {tuple(meta.shape)}")
                t = self._convert(full, raw).to(self.device)
                del raw
                owner._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
        return hook

    def _release(self, index, slots):
        def hook(module, args, output):
            for owner, leaf, _, meta in slots:
                owner._parameters[leaf] = meta
            self.ckpt.release(self.spans[index])
            if index in self.drop:
                _advise(self.spans[index], DONTNEED)
        return hook

    def read(self, name: str) -> torch.Tensor:
        """A parameter's current value (stored value plus active edits), in the model's dtype,
        on CPU: what the layer would see if it ran now. The last tensor read is kept:
        detection asks for one down projection several times in a row (its control, the
        values it zeroes), and each ask would otherwise be a read from disk."""
        if self._last is None or self._last[0] != name:
            self._last = (name, self.ckpt.read_many([name])[name])
        return self._convert(name, self._last[1])

    def edit(self, name: str, idx: tuple, value: float) -> None:
        self.edits.setdefault(name, {}).setdefault(idx, []).append(value)

    def unedit(self, name: str, idx: tuple) -> None:
        d = self.edits[name]
        d[idx].pop()
        if not d[idx]:
            del d[idx]
        if not d:
            del self.edits[name]


def build_streamed(config, directory: Path, layers_path: str, dtype, device, trust_remote_code=False):
    """A model with resident non-layer weights and streamed decoder layers, or a string
    naming a parameter the checkpoint lacks even after transformers' load-time renames and
    fusions (``Mapped``), which ``load`` refuses. ``directory``: a safetensors
    checkpoint directory, or a ``.gguf`` file (read and dequantized layer by layer)."""
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval().requires_grad_(False)
    directory = Path(directory)
    ckpt = GGUFCheckpoint(directory, model, config) if directory.is_file() else Mapped(Checkpoint(directory), model)
    model.tie_weights()  # transformers ties the head to the embedding only when loading
    # Tied parameters (input embedding = output head) are one tensor under several names,
    # and a checkpoint stores it under one of them.
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    resident: dict[str, list[str]] = {}  # stored name -> every model name it fills
    for aliases in groups.values():
        stored = next((n for n in aliases if n in ckpt.where), None)
        if stored is None:
            return aliases[0]
        if not stored.startswith(layers_path + "."):
            resident[stored] = aliases
    tensors = ckpt.read_many(list(resident))
    params = dict(model.named_parameters(remove_duplicate=False))
    for stored, aliases in resident.items():
        t = tensors[stored]
        if t.shape != params[aliases[0]].shape:
            raise ModelLoadError(f"checkpoint tensor {stored} has shape {tuple(t.shape)}, "
                                 f"the config implies {tuple(params[aliases[0]].shape)}")
        t = t.to(dtype) if t.dtype.is_floating_point else t
        for n in aliases:
            set_module_tensor_to_device(model, n, device, value=t)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    streamer = Streamer(model, layers_path, ckpt, dtype, device)
    return model, streamer
