"""output/plot.py: each figure is written, whole, as a PNG."""
from __future__ import annotations

from tiny import plant, tiny_model

import superweight as sw
from superweight.output.plot import plot_detect


def test_plot_detect_writes_a_png(tmp_path):
    lm = tiny_model("llama")
    plant(lm, sw.Coord(1, 5, 7), 400.0)
    result = sw.detect(lm, sw.DetectConfig(window=64))
    out = plot_detect(result, tmp_path / "d.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["d.png"]  # no temporary left
