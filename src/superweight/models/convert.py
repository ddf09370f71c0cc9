"""A GGUF file to a Hugging Face checkpoint directory, one tensor at a time.

transformers' own GGUF loading dequantizes the whole model to float32 in memory and then
copies it again to save it: the first use of a 1.5B GGUF peaked at 8.6 GB. Here the model
is built on the meta device (names and shapes only), each tensor is read through
``streaming.GGUFCheckpoint`` (transformers' own name map and per-architecture fix-ups,
dequantized a slab of rows at a time) and written straight into ``model.safetensors``
behind a header made up front, then freed. Peak memory is the largest tensor in float32
(the embedding) plus the tokenizer, whatever the model's size.

What is written is what an HF checkpoint of the family holds: the weights in float32 under
the model's own parameter names (a tied model's embedding as ``model.embed_tokens.weight``),
a config with ``architectures`` and without the GGUF source's ``quantization_config`` (the
weights are plain floats now), a generation config, and the tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from superweight.errors import ModelLoadError


def _stored_names(model, ckpt) -> list[str] | str:
    """Each parameter once, under the name the file stores it by (tied parameters are one
    tensor under several names), in the model's order; or the name of one the file lacks."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    names = []
    for aliases in groups.values():
        stored = next((n for n in aliases if n in ckpt.where), None)
        if stored is None:
            return aliases[0]
        names.append(stored)
    return names


def write_safetensors(dest: Path, tensors, spec: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> None:
    """A float32 safetensors file whose header (``spec``: name -> shape, in this order) is
    written first and whose tensors come one at a time from the iterable ``tensors`` of
    (name, tensor): each is checked against its shape, written, and let go."""
    header, offset = {"__metadata__": metadata}, 0
    for name, shape in spec.items():
        n = 4
        for d in shape:
            n *= int(d)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(dest, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for (name, t), want in zip(tensors, spec):
            if name != want or tuple(t.shape) != tuple(spec[want]):
                raise ModelLoadError(f"checkpoint tensor {name} has shape {tuple(t.shape)}, "
                                     f"the config implies {tuple(spec[want])}")
            f.write(memoryview(t.to(torch.float32).contiguous().numpy()).cast("B"))
            del t


def convert_gguf(path: Path, dest: Path, check=None) -> str | None:
    """Write the checkpoint directory of GGUF file ``path`` into the empty folder ``dest``;
    ``check(config)`` refuses what is not a supported causal LM. Returns None, or the name of
    a parameter the file lacks (which the caller refuses: transformers would make it up)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from superweight.models.gguf_file import faster_gguf
    from superweight.models.streaming import GGUFCheckpoint

    with faster_gguf():
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if check is not None:
            check(config)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    ckpt = GGUFCheckpoint(path, model, config)
    names = _stored_names(model, ckpt)
    if isinstance(names, str):
        return names
    params = dict(model.named_parameters(remove_duplicate=False))
    spec = {n: tuple(params[n].shape) for n in names}
    from superweight.progress import progress_of

    report = progress_of()

    def tensors():
        for i, name in enumerate(names):
            report(i, len(names))  # the conversion's own percent, by tensors written
            yield next(ckpt.read_iter([name]))
            ckpt.release(ckpt.spans(name))  # the file's pages it was read from leave this process

    write_safetensors(dest / "model.safetensors", tensors(), spec, {"format": "pt", "source": str(path)})
    report(len(names), len(names))
    save_config(config, type(model).__name__, dest, dtype="float32")
    tok.save_pretrained(dest)
    return None


def save_config(config, architecture: str, dest: Path, dtype: str | None = None, generation=None) -> None:
    """``config.json`` and ``generation_config.json`` as an HF checkpoint of the family has
    them: ``architectures`` named, no GGUF ``quantization_config`` (the weights written are
    floats; a compressed-tensors one is written by its format). The config is copied, not
    changed."""
    import copy

    from transformers import GenerationConfig

    config = copy.deepcopy(config)
    qc = getattr(config, "quantization_config", None)
    if qc is not None and (qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)) == "gguf":
        del config.quantization_config  # the GGUF's: these weights are plain floats
    config.architectures = [architecture]
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(dest)
    (generation or GenerationConfig.from_model_config(config)).save_pretrained(dest)
