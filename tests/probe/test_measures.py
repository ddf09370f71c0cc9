"""probe/measures.py: the probe's KL and perplexity, and GPTQ-style perplexity."""
from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_model

from superweight.proof import Judge
from superweight.results import DetectConfig
from superweight.probe.measures import perplexity
from superweight.probe.passes import real_log_probs, stack


def test_kl_is_zero_for_the_intact_model_and_grows_with_a_change():
    lm = tiny_model("llama")
    probe, _ = Judge(lm, DetectConfig()).intact()
    with torch.no_grad():
        lp = real_log_probs(lm.model(input_ids=probe.input_ids, attention_mask=probe.mask.long()).logits, probe.mask)
    assert probe.kl(lp) == pytest.approx(0.0, abs=1e-5)
    assert probe.ppl(lp) == pytest.approx(probe.ppl(), rel=1e-5)
    flat = torch.full_like(lp, -math.log(lp.shape[-1]))  # the uniform distribution
    assert probe.kl(flat) > 0.01
    assert probe.ppl(flat) == pytest.approx(lp.shape[-1], rel=1e-4)  # uniform: perplexity = vocabulary


def test_stack_right_pads_and_masks():
    ids, mask = stack([torch.tensor([[1, 2, 3]]), torch.tensor([4])])
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_perplexity_is_the_exponent_of_the_mean_next_token_loss():
    lm = tiny_model("llama")
    text = "The quick brown fox jumps over the lazy dog. " * 8
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss
    assert perplexity(lm.model, lm.tokenizer, text, seqlen=64, max_windows=1) == pytest.approx(math.exp(loss), rel=1e-4)
