"""The picture of a detection: per-layer spikes and the super activation through the network."""
from __future__ import annotations

from pathlib import Path

from .atomic import atomic_path


def plot_detect(result, path: str | Path) -> Path:
    """Write a PNG (atomically): max |X| and max |Y| of each layer's down projection, the
    super-activation channel's max |h| after each layer, and the confirmed super weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    layers = [r.layer for r in result.layers]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.plot(layers, [r.max_input for r in result.layers], "o-", ms=3, label="down_proj max |input|")
    ax.plot(layers, [r.max_output for r in result.layers], "s-", ms=3, label="down_proj max |output|")
    sa = result.super_activation
    if sa:
        ax.plot(range(len(sa["max_per_layer"])), sa["max_per_layer"], "-", lw=2, alpha=0.6,
                label=f"residual channel {sa['channel']} max |h| (super activation)")
    for f in result.super_weights:
        ax.axvline(f.coord.layer, color="red", ls=":", lw=1)
        ax.annotate(f"SW {f.coord.layer}:[{f.coord.row},{f.coord.col}]", (f.coord.layer, abs(f.output_activation)),
                    textcoords="offset points", xytext=(6, 6), color="red", fontsize=8)
    for f in result.rejected:
        ax.plot([f.coord.layer], [abs(f.output_activation)], "x", color="gray", ms=7)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("magnitude (log)")
    ax.set_title(f"{result.model}: {len(result.super_weights)} super weight(s); x = examined and rejected", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
