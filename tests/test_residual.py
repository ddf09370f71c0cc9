"""The residual stream around the super weights (residual.py): the super activation's
channel through the layers, and what makes each massive activation (a weight, a layer, a
norm, or many layers), on hidden states made by hand."""
from __future__ import annotations

import torch
from tiny import tiny_model

import superweight as sw
from superweight.residual import MASSIVE_RATIO, massive_channels, super_activation
from superweight.results import Finding


def finding(coord, grade, out=-700.0, token=2) -> Finding:
    return Finding(coord, "p", 1.0, 10.0, out, token, 1.0, 0, grade=grade)


def test_the_super_activation_is_the_channel_of_the_strongest_finding():
    residual = [(torch.tensor([1.0, 5.0, 2.0]), torch.tensor([0, 3, 1])), (torch.tensor([1.0, 900.0, 2.0]), torch.tensor([0, 2, 1]))]
    found = [finding(sw.Coord(0, 2, 4), "super", out=10.0), finding(sw.Coord(1, 1, 4), "super", out=-800.0)]
    assert super_activation(residual, found) == {"channel": 1, "max_per_layer": [5.0, 900.0], "token_per_layer": [3, 2]}
    assert super_activation(residual, []) is None and super_activation([], found) is None


def hidden_with(layer_adds: dict[int, float], layers: int = 4, ch: int = 9, tok: int = 2) -> list[torch.Tensor]:
    """The embeddings and each layer's output [T, H], each layer adding to (tok, ch) what ``layer_adds`` says."""
    h = [torch.ones(6, 64) * 0.5]
    for layer in range(layers):
        nxt = h[-1].clone()
        nxt[tok, ch] += layer_adds.get(layer, 0.0)
        h.append(nxt)
    return h


def test_a_massive_activation_made_by_a_graded_weight_names_it():
    lm = tiny_model("llama")
    hidden = hidden_with({1: 1000.0})
    (m,) = massive_channels(lm, hidden, [finding(sw.Coord(1, 9, 33), "super")])
    assert (m["channel"], m["token"], m["begins"], m["source_layer"]) == (9, 2, 1, 1)
    assert m["made_by"] == "weight" and m["weight"] == "1:9:33" and m["grade"] == "super"
    assert m["peak"] >= MASSIVE_RATIO * 0.5 and "its spike's weight 1:9:33: super" in m["explanation"]


def test_one_made_by_a_layer_whose_weights_were_rejected_says_none_is_graded():
    lm = tiny_model("llama")
    (m,) = massive_channels(lm, hidden_with({2: 1000.0}), [finding(sw.Coord(2, 9, 1), "rejected")])
    assert m["made_by"] == "layer" and m["weight"] == "2:9:1" and "no weight there is graded" in m["explanation"]
    assert massive_channels(lm, hidden_with({}), []) == []  # nothing stands out: no entry
