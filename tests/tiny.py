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
