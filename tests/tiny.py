"""Tiny random models of every supported family, with a super weight planted in them."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

import superweight as sw

HIDDEN, INTER, LAYERS, HEADS = 64, 128, 4, 4
INIT = 1.0

# model_type -> config overrides beyond the shared small sizes
FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16},
    "phi3": {},
    "olmo": {},
    "olmo2": {},
    "gpt2": {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": INTER, "n_positions": 128},
    "gpt_neox": {"rotary_pct": 0.25},
    "opt": {"ffn_dim": INTER, "word_embed_proj_dim": HIDDEN, "max_position_embeddings": 128},
    "falcon": {"new_decoder_architecture": False, "multi_query": True, "alibi": False},
    "gptj": {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": INTER, "rotary_dim": 8, "n_positions": 128},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": INTER,
                  "shared_expert_intermediate_size": INTER, "decoder_sparse_step": 1},
}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with 256 tokens plus <s> and </s>: no download needed."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<s>"], vocab["</s>"] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def tiny_config(model_type: str):
    common = dict(
        vocab_size=258, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=128,
        initializer_range=INIT, bos_token_id=256, eos_token_id=257, pad_token_id=257, tie_word_embeddings=False,
    )
    common.update(FAMILIES[model_type])
    return AutoConfig.for_model(model_type, **common)


def tiny_model(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    return sw.LoadedModel.wrap(model.eval(), byte_tokenizer(), name=f"tiny-{model_type}")


def saved(lm: sw.LoadedModel, d, **kw):
    """The model and its tokenizer written to the folder ``d`` (``save_pretrained``'s ``kw``); ``d``."""
    lm.model.save_pretrained(d, **kw)
    lm.tokenizer.save_pretrained(d)
    return d


def graded(result) -> list[sw.Coord]:
    """Coordinates graded super or strong."""
    return result.coords + result.strong_coords


def plant(lm: sw.LoadedModel, coord: sw.Coord, factor: float = 400.0, base: float | None = None) -> float:
    """Make ``coord`` a super weight: set it to ``factor`` times ``base`` (default: the
    matrix's max |w| before planting). Returns the base, to plant several alike."""
    site = lm.adapter.site(coord)
    with torch.no_grad():
        w = site.weight()
        base = float(w.abs().max()) if base is None else base
        w[coord.row, coord.col] = factor * base
    # Gemma 2 and OLMo 2 normalize the MLP output before the residual add; real models carry
    # the super activation through a large learned gain on that channel. Give it one.
    layer = lm.adapter.layers[coord.layer]
    norm = getattr(layer, "post_feedforward_layernorm", None)
    if norm is not None:
        with torch.no_grad():
            norm.weight[coord.row] = 50.0
    return base


def planted_llama(coord: sw.Coord = sw.Coord(1, 5, 7), factor: float = 400.0) -> sw.LoadedModel:
    """A tiny llama with one planted super weight (default 1:5:7, 400x its matrix's max)."""
    lm = tiny_model("llama")
    plant(lm, coord, factor)
    return lm


def tiny_moe_gguf(path, coord: sw.Coord, factor: float = 400.0, drop: str | None = None, blocks: int = 3) -> None:
    """Write a tiny Qwen3-MoE GGUF file (float32 tensors, experts stacked per layer as
    llama.cpp stores them: ``blk.N.ffn_{gate,up,down}_exps``) with a super weight planted
    at ``coord`` and a byte-level BPE tokenizer with one merge. Tensor names come from
    transformers' own GGUF name map. Sizes that transformers' GGUF reader does not take
    from the file (the experts' width) are left at the config class's defaults. ``drop``:
    leave out the tensors whose GGUF name contains it (a checkpoint that lacks a weight);
    ``blocks``: the block count its metadata claims (the tensors hold 3)."""
    from accelerate import init_empty_weights
    from gguf import GGUFWriter
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        get_gguf_hf_weights_map,
    )

    tokens = list(bytes_to_unicode().values()) + ["Ġt", "<|endoftext|>", "<|im_end|>"]
    vocab = len(tokens)
    cfg = AutoConfig.for_model(
        "qwen3_moe", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, head_dim=8, num_experts=4,
        num_experts_per_tok=4,  # every token visits every expert: the planted one sees the probe

        max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False,
        norm_topk_prob=True, initializer_range=INIT,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    lm = sw.LoadedModel.wrap(model, byte_tokenizer(), name="tiny-qwen3-moe-gguf")
    plant(lm, coord, factor)
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(cfg)
    names = {hf: g for g, hf in get_gguf_hf_weights_map(meta, TENSOR_PROCESSORS["qwen3moe"](config=cfg.to_dict())).items()}
    w = GGUFWriter(str(path), "qwen3moe")
    for key, value in [("context_length", 128), ("block_count", blocks), ("feed_forward_length", 64),
                       ("embedding_length", 32), ("attention.head_count", 4), ("attention.head_count_kv", 4),
                       ("attention.key_length", 8), ("expert_count", 4), ("expert_used_count", 4)]:
        w.add_uint32(f"qwen3moe.{key}", value)
    w.add_float32("qwen3moe.rope.freq_base", 1e6)
    w.add_float32("qwen3moe.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * 257 + [3, 3])
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)
    for hf, p in model.state_dict().items():
        t = p.detach().numpy()
        if hf.endswith("experts.gate_up_proj"):  # [E, 2I, H]: gate rows, then up rows
            half = t.shape[1] // 2
            w.add_tensor(names[hf].replace("up", "gate") + ".weight", t[:, :half].copy())
            w.add_tensor(names[hf].replace("gate", "up") + ".weight", t[:, half:].copy())
        elif hf in names and not (drop and drop in names[hf]):
            g = names[hf]
            w.add_tensor(g if g.endswith((".weight", ".bias")) else g + ".weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def weaken(lm: sw.LoadedModel, coord: sw.Coord, target_kl: float = 0.5) -> float:
    """Scale the output head so that zeroing ``coord`` moves the probe sentences' next-token
    distributions by about ``target_kl`` nats (a weak but specific weight, as on real
    models that are not wrecked by one scalar): logits scale with the head, and KL with
    them. Bisection on the scale; returns the KL reached."""
    from superweight.proof import Judge
    from superweight.results import DetectConfig

    head = lm.model.get_output_embeddings().weight
    orig = head.detach().clone()
    lo, hi, kl = 0.0, 1.0, 0.0
    for _ in range(30):
        mid = (lo + hi) / 2
        with torch.no_grad():
            head.copy_(orig * mid)
        kl = Judge(lm, DetectConfig()).screen([(coord,)])[0][0].kl  # a new intact pass: the head changed
        if abs(kl - target_kl) < 0.05:
            break
        lo, hi = (mid, hi) if kl < target_kl else (lo, mid)
    return kl
