"""The shipped index of published super weights (catalog.py, data/index.json)."""
from __future__ import annotations

import superweight as sw


def test_index_matches_repo_ids_exactly_and_case_insensitively():
    assert sw.known("HUGGYLLAMA/LLaMA-7B").model == "huggyllama/llama-7b"
    assert sw.known("huggyllama/llama-7b-chat") is None
    assert sw.known("llama-7b") is None
    assert sw.known("meta-llama/Llama-2-7b-hf").super_weights == (sw.Coord(1, 2533, 7890),)
    olmo = sw.known("allenai/OLMo-1B-0724-hf")
    assert sw.Coord(2, 1764, 8041) in olmo.super_weights  # the code's layer, not the table's
    assert len(sw.known("microsoft/Phi-3-mini-4k-instruct").super_weights) == 6
    got = sw.compare([sw.Coord(1, 2533, 7890), sw.Coord(3, 1, 1)], sw.known("meta-llama/Llama-2-7b-hf"))
    assert got["status"] == "partly agrees" and got["only_detected"] == ["3:1:1"]



def test_every_entry_is_well_formed_and_unique():
    entries = sw.index()
    assert len(entries) >= 10
    models = [e.model.lower() for e in entries]
    assert len(models) == len(set(models))  # one entry per model
    for e in entries:
        assert e.super_weights and e.source
        assert all(isinstance(c, sw.Coord) and min(c.layer, c.row, c.col) >= 0 for c in e.super_weights)
        d = e.to_dict()
        assert [sw.Coord(**c) for c in d["super_weights"]] == list(e.super_weights)


def test_compare_says_agrees_partly_or_disagrees():
    entry = sw.known("meta-llama/Llama-2-7b-hf")
    claim = list(entry.super_weights)
    assert sw.compare(claim, entry)["status"] == "agrees"
    got = sw.compare([sw.Coord(9, 9, 9)], entry)
    assert got["status"] == "disagrees" and got["only_in_index"] == [str(c) for c in claim]
    assert got["matched"] == [] and got["only_detected"] == ["9:9:9"]
