"""Where each model family keeps its decoder layers and MLP down projections.

This is the only module that knows architecture differences. Everything else asks it
for *sites*: one site per down projection (one per layer for dense models, one per
routed expert plus any shared expert for mixture-of-experts layers), each able to give
its weight as a 2-D ``[out, in]`` view whatever the storage layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from superweight.coords import Coord
from superweight.errors import UnsupportedModelError, UsageError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layers: str  # dotted path from the model root to the ModuleList of decoder layers
    down_proj: tuple[str, ...]  # paths inside a layer; every one present is a site
    experts: str | None = None  # path inside a layer to a fused-experts module, down_proj [E, out, in]
    # the fused-experts module's parameters (transformers' convention): the down projections
    # [E, out, in], and those whose rows are the experts' inputs (their token order is read there)
    expert_down: str = "down_proj"
    expert_inputs: tuple[str, ...] = ("gate_up_proj", "up_proj", "gate_proj")
    transposed: bool = False  # weight stored [in, out] (GPT-2 Conv1D)


FAMILIES: tuple[Family, ...] = (
    Family(
        "llama-style",
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2",
         "olmo3", "granite", "smollm3", "cohere", "starcoder2_llama", "internlm2", "stablelm"),
        "model.layers",
        ("mlp.down_proj",),
    ),
    Family("gpt2", ("gpt2",), "transformer.h", ("mlp.c_proj",), transposed=True),
    Family("gpt-neox", ("gpt_neox",), "gpt_neox.layers", ("mlp.dense_4h_to_h",)),
    Family("opt", ("opt",), "model.decoder.layers", ("fc2",)),
    Family("falcon", ("falcon",), "transformer.h", ("mlp.dense_4h_to_h",)),
    Family("gpt-j", ("gptj",), "transformer.h", ("mlp.fc_out",)),
    Family("mixtral", ("mixtral",), "model.layers", ("mlp.down_proj",), experts="mlp.experts"),
    Family(
        "qwen2-moe",
        ("qwen2_moe", "qwen3_moe"),
        "model.layers",
        ("mlp.down_proj", "mlp.shared_expert.down_proj"),
        experts="mlp.experts",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_for(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UnsupportedModelError(
        f"unsupported architecture {model_type!r}; supported model types: {', '.join(supported_model_types())}"
    )


@dataclass
class Site:
    """One down projection: the module that computes Y = X @ W.T (+ b) for a layer (and expert)."""

    layer: int
    path: str  # dotted module path from the model root, e.g. "model.layers.11.mlp.down_proj"
    module: nn.Module
    expert: int | None = None
    transposed: bool = False
    expert_down: str = "down_proj"  # the fused-experts parameter (Family.expert_down)

    def param(self) -> torch.Tensor:
        """The stored parameter this site's weight lives in."""
        return getattr(self.module, self.expert_down) if self.expert is not None else self.module.weight

    def weight(self, param: torch.Tensor | None = None) -> torch.Tensor:
        """The weight as a 2-D ``[out, in]`` view (no copy) of ``param`` (default: the live one)."""
        p = self.param() if param is None else param
        if self.expert is not None:
            return p[self.expert]
        return p.t() if self.transposed else p

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight().shape)  # (out, in)

    def stored_index(self, coord: Coord) -> tuple[int, ...]:
        """Index of ``coord`` into the stored parameter (what a user would slice)."""
        if self.expert is not None:
            return (self.expert, coord.row, coord.col)
        return (coord.col, coord.row) if self.transposed else (coord.row, coord.col)

    @property
    def param_name(self) -> str:
        return f"{self.path}.{self.expert_down}" if self.expert is not None else f"{self.path}.weight"


@dataclass(frozen=True)
class Storage:
    """How a stored linear weight maps to the 2-D matrix of output rows by input columns that
    the quantizer works on: ``linear`` ``[out, in]``; ``conv1d`` ``[in, out]`` (GPT-2,
    transposed); ``experts`` ``[E, out, in]`` (fused, experts' rows stacked)."""

    kind: str = "linear"

    def matrix(self, w: torch.Tensor) -> torch.Tensor:
        """[rows, in] view of the stored ``w`` (no copy)."""
        if self.kind == "conv1d":
            return w.t()
        return w.reshape(-1, w.shape[-1]) if self.kind == "experts" else w

    def index(self, idx: tuple[int, ...], shape) -> tuple[int, int]:
        """A stored index, in ``matrix`` terms."""
        if self.kind == "conv1d":
            return (idx[1], idx[0])
        if self.kind == "experts":
            e, r, c = idx
            return (e * shape[1] + r, c)
        return tuple(idx)

    def stored(self, m: torch.Tensor, shape) -> torch.Tensor:
        """``matrix``'s inverse: the stored tensor of ``shape`` from a [rows, in] matrix."""
        return m.t() if self.kind == "conv1d" else m.reshape(shape)

    def in_features(self, shape) -> int:
        return shape[0] if self.kind == "conv1d" else shape[-1]


def _get(root: nn.Module, path: str) -> nn.Module | None:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod


class Adapter:
    """Binds a family to a loaded model."""

    def __init__(self, model: nn.Module):
        self.model = model
        model_type = getattr(model.config, "model_type", None)
        self.family = family_for(model_type)
        self.model_type = model_type
        layers = _get(model, self.family.layers)
        if layers is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} has no {self.family.layers!r}: not the {self.family.name} layout this tool knows"
            )
        self.layers: nn.ModuleList = layers
        self.sites: list[Site] = list(self._sites())
        if not self.sites:
            raise UnsupportedModelError(f"no MLP down projection found in {type(model).__name__}")
        self._by_key = {(s.layer, s.expert): s for s in self.sites}
        self.streamer = None  # set when decoder layers are streamed from disk (streaming.py)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _sites(self) -> Iterator[Site]:
        fam = self.family
        for i, layer in enumerate(self.layers):
            for rel in fam.down_proj:
                mod = _get(layer, rel)
                if mod is not None and getattr(mod, "weight", None) is not None:
                    yield Site(i, f"{fam.layers}.{i}.{rel}", mod, None, fam.transposed)
            if fam.experts:
                mod = _get(layer, fam.experts)
                down = getattr(mod, fam.expert_down, None) if mod is not None else None
                if isinstance(down, torch.Tensor):
                    for e in range(down.shape[0]):
                        yield Site(i, f"{fam.layers}.{i}.{fam.experts}", mod, e, False, fam.expert_down)

    @property
    def layers_prefix(self) -> str:
        """The module-name prefix of the decoder layers (``model.layers.``)."""
        return self.family.layers + "."

    def linears(self) -> dict[str, tuple[int, int]]:
        """The decoder layers' linear modules: name -> ``(out, in)`` (meta weights included)."""
        return {name: (m.out_features, m.in_features) for name, m in self.model.named_modules()
                if isinstance(m, nn.Linear) and name.startswith(self.layers_prefix)}

    @property
    def has_experts(self) -> bool:
        return any(s.expert is not None for s in self.sites)

    def site(self, coord: Coord) -> Site:
        """The site a coordinate lives in, with range checks (a clear error, never an IndexError)."""
        if not 0 <= coord.layer < self.num_layers:
            raise UsageError(f"coordinate {coord}: layer {coord.layer} out of range (model has {self.num_layers} layers)")
        site = self._by_key.get((coord.layer, coord.expert))
        if site is None:
            what = "no routed experts" if coord.expert is not None else "no dense down projection (give an expert)"
            raise UsageError(f"coordinate {coord}: layer {coord.layer} has {what}")
        out, inp = site.shape
        if not (0 <= coord.row < out and 0 <= coord.col < inp):
            raise UsageError(
                f"coordinate {coord}: out of range for {site.path} (rows 0..{out - 1}, cols 0..{inp - 1})"
            )
        return site

    def weight(self, site: Site) -> torch.Tensor:
        """A site's current ``[out, in]`` weight (edits included), read from the checkpoint if
        its layer is streamed."""
        return site.weight(self.read(site.param_name)).detach()

    def post_mlp_gain(self, layer: int) -> torch.Tensor | None:
        """The per-channel gain [H] of the norm some families (Gemma 2/3, OLMo 2/3) apply to
        the MLP's output before the residual add (Gemma's norms scale by 1 + weight); None
        where the MLP output goes to the residual stream as it is."""
        norm = getattr(self.layers[layer], "post_feedforward_layernorm", None)
        if getattr(norm, "weight", None) is None:
            return None
        w = self.read(f"{self.family.layers}.{layer}.post_feedforward_layernorm.weight").detach().float()
        return 1 + w if type(norm).__name__.startswith("Gemma") else w

    def value(self, coord: Coord) -> float:
        return float(self.weight(self.site(coord))[coord.row, coord.col])

    def expert_params(self, module: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A fused-experts module's down projections [E, out, in] and the parameters that
        take the experts' inputs (``Family.expert_down``, ``Family.expert_inputs``)."""
        ins = [getattr(module, n) for n in self.family.expert_inputs if isinstance(getattr(module, n, None), torch.Tensor)]
        return getattr(module, self.family.expert_down), ins

    def linear_weights(self) -> list[tuple[str, nn.Parameter]]:
        """Every linear weight inside the decoder layers (attention and MLP projections, fused
        experts), by full name; not norms, embeddings or the output head, which live outside
        the layers or are 1-D."""
        out = []
        for i, layer in enumerate(self.layers):
            prefix = f"{self.family.layers}.{i}."
            for name, p in layer.named_parameters():
                if p.dim() >= 2 and not name.endswith("bias"):
                    out.append((prefix + name, p))
        return out

    def storage(self, param: torch.Tensor) -> Storage:
        """How a decoder linear weight is stored (see ``Storage``)."""
        if self.family.transposed:
            return Storage("conv1d")
        return Storage("experts" if param.dim() == 3 else "linear")

    def read(self, name: str) -> torch.Tensor:
        """A parameter's current value by full name, read from the checkpoint when its layer is
        streamed (the model then holds it on the meta device)."""
        p = self.model.get_parameter(name)
        if p.is_meta and self.streamer is not None:
            return self.streamer.read(name)
        return p
