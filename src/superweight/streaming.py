"""Run a model whose decoder layers stay on disk.

The model is built on the meta device from its config (the model's own modules, no
hand-written forward). Embeddings, final norm and head are loaded once; each decoder
layer is read from the safetensors checkpoint by a forward pre-hook just before it runs
and put back on the meta device by a forward hook after. Peak memory is about one layer
plus the resident parts and the activations; each forward pass reads the layers' bytes
once (from the page cache when warm).

Weight edits (``hooks.edited``) on a streamed layer are kept here and applied each time
the layer is materialized; ``read`` gives any parameter's stored value on demand.
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open

from .errors import ModelLoadError


class Checkpoint:
    """Which safetensors file holds each tensor (single file or sharded with an index)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            wm = json.loads(index.read_text())["weight_map"]
            self.where = {k: self.dir / v for k, v in wm.items()}
        else:
            self.where = {}
            for f in sorted(self.dir.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():
                        self.where[k] = f
        missing = {f for f in set(self.where.values()) if not f.is_file()}
        if missing:
            raise ModelLoadError(f"shard listed in the index is missing: {sorted(missing)[0]}")

    def read_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.where[n], []).append(n)
        out = {}
        for f, ns in by_file.items():
            with safe_open(str(f), framework="pt") as h:
                for n in ns:
                    out[n] = h.get_tensor(n)
        return out


class GGUFCheckpoint:
    """A GGUF file read through the ``gguf`` package's memory-mapped reader, under the model's
    parameter names: each tensor is dequantized (to float32) only when read. The name map
    and the per-architecture fix-ups (Llama's q/k row permutation, ...) are transformers'
    own, so this reads exactly what transformers' GGUF loader would."""

    def __init__(self, path: Path, model: torch.nn.Module, config):
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
        )

        self.dir = Path(path)
        try:
            self.reader = GGUFReader(str(path))
        except Exception as e:  # noqa: BLE001 - the reader raises several types on a bad file
            raise ModelLoadError(f"cannot read GGUF file {path}: {e}") from e
        field = self.reader.fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field else ""
        self.cfg = config.to_dict()
        self.processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=self.cfg)
        if type(self.processor).__name__ in ("Qwen2MoeTensorProcessor", "GptOssTensorProcessor", "MiniMaxM2TensorProcessor"):
            raise ModelLoadError(f"{path.name}: per-layer GGUF reading does not handle {arch} experts; "
                                 "load it whole (--no-stream)")
        self.key_map = get_gguf_hf_weights_map(model, self.processor)  # gguf name -> model name
        tensors = {t.name: t for t in self.reader.tensors}
        self.where = {hf: tensors[g] for g, hf in self.key_map.items() if g in tensors}

    def read_many(self, names: list[str]) -> dict[str, torch.Tensor]:
        from gguf import dequantize

        out = {}
        for n in names:
            t = self.where[n]
            w = dequantize(t.data, t.tensor_type)
            w = self.processor.process(weights=w, name=t.name, tensor_key_mapping=self.key_map,
                                       parsed_parameters={"config": self.cfg, "tensors": {}}).weights
            out[n] = torch.from_numpy(w.copy())
        return out


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
        self.handles = []
        self.progress = None  # called with (layer, num_layers) as each layer is read
        layers = model.get_submodule(layers_path)
        self.num_layers = len(layers)
        for i, layer in enumerate(layers):
            # (owning module, attribute, full checkpoint name, meta placeholder) per parameter
            slots = []
            for n, p in layer.named_parameters(recurse=True):
                owner, _, leaf = n.rpartition(".")
                slots.append((layer.get_submodule(owner) if owner else layer, leaf, f"{layers_path}.{i}.{n}", p))
            self.handles.append(layer.register_forward_pre_hook(self._materialize(i, slots)))
            self.handles.append(layer.register_forward_hook(self._release(slots)))

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
        def hook(module, args):
            if self.progress is not None:
                self.progress(index + 1, self.num_layers)
            tensors = self.ckpt.read_many([full for _, _, full, _ in slots])
            for owner, leaf, full, meta in slots:
                if tensors[full].shape != meta.shape:
                    raise ModelLoadError(f"checkpoint tensor {full} has shape {tuple(tensors[full].shape)}, "
                                         f"the config implies {tuple(meta.shape)}")
                t = self._convert(full, tensors[full]).to(self.device)
                owner._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
        return hook

    def _release(self, slots):
        def hook(module, args, output):
            for owner, leaf, _, meta in slots:
                owner._parameters[leaf] = meta
        return hook

    def read(self, name: str) -> torch.Tensor:
        """A parameter's current value (stored value plus active edits), in the model's dtype,
        on CPU: what the layer would see if it ran now."""
        return self._convert(name, self.ckpt.read_many([name])[name])

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
    naming a parameter the checkpoint lacks when its tensor names differ from the model's
    (older layouts that transformers renames or fuses at load time, such as per-expert
    MoE weights): such checkpoints are loaded whole. ``directory``: a safetensors
    checkpoint directory, or a ``.gguf`` file (read and dequantized layer by layer)."""
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval().requires_grad_(False)
    directory = Path(directory)
    ckpt = GGUFCheckpoint(directory, model, config) if directory.is_file() else Checkpoint(directory)
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
