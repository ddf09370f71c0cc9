"""The detection algorithm's parts (find.py), on fabricated records: which spikes are
examined. Its proof (controls, grades) is tests/test_proof.py; the whole algorithm on every
family is tests/test_detect_families.py; on real weights, tests/test_real_model.py and
tests/test_real_qwen.py."""
from __future__ import annotations

from superweight.find import per_layer, spikes
from superweight.probe.records import SiteRecord


def record(layer, max_output, expert=None):
    return SiteRecord(layer=layer, expert=expert, path=f"layers.{layer}", max_input=1.0, input_token=0,
                      input_channel=0, max_output=max_output, output_token=0, output_channel=layer, output_value=max_output,
                      col=0, weight=1.0, x_col=1.0, share=1.0)


def test_spikes_are_sites_far_above_the_median_layer_largest_first():
    records = {(i, None): record(i, v) for i, v in enumerate([1.0, 2.0, 50.0, 1.5, 300.0])}
    assert [r.layer for r in spikes(records, 10.0)] == [4, 2]  # median 2: >= 20
    assert [r.layer for r in spikes(records, 200.0)] == []
    experts = {(1, 0): record(1, 5.0, 0), (1, 1): record(1, 9.0, 1), (0, None): record(0, 1.0)}
    assert [(r.layer, r.expert) for r in per_layer(experts)] == [(0, None), (1, 1)]  # the strongest site per layer
