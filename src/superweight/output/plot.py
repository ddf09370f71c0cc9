"""The picture of a detection: per-layer spikes and the super activation through the network."""
from __future__ import annotations

from pathlib import Path

from superweight.atomic import atomic_path


def plot_detect(result, path: str | Path) -> Path:
    """Write ``fig_detect`` as a PNG (atomically)."""
    return _save(fig_detect(result), Path(path))


def fig_detect(result):
    """Max |X| and max |Y| of each layer's down projection, the super-activation channel's
    max |h| after each layer, and the graded weights (super in red, strong in orange, with
    the conditions where each matters)."""
    plt = _plt()
    layers = [r.layer for r in result.layers]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.plot(layers, [r.max_input for r in result.layers], "o-", ms=3, label="down projection max |input|")
    ax.plot(layers, [r.max_output for r in result.layers], "s-", ms=3, label="down projection max |output|")
    sa = result.super_activation
    if sa:
        ax.plot(range(len(sa["max_per_layer"])), sa["max_per_layer"], "-", lw=2, alpha=0.6,
                label=f"residual channel {sa['channel']} max |h| "
                      + ("(super activation)" if result.super_weights else "(massive activation)"))
    for f in result.super_weights + result.strong:
        color, tag = ("red", "SW") if f.grade == "super" else ("darkorange", "strong")
        ax.axvline(f.coord.layer, color=color, ls=":", lw=1)
        ax.annotate(f"{tag} {f.coord} ({', '.join(f.effect.matters_in)})",
                    (f.coord.layer, abs(f.output_activation)), textcoords="offset points", xytext=(6, 6),
                    color=color, fontsize=8)
    for f in result.rejected:
        ax.plot([f.coord.layer], [abs(f.output_activation)], "x", color="gray", ms=7)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("magnitude (log)")
    ax.set_title(f"{result.model}: {len(result.super_weights)} super, {len(result.strong)} strong weight(s); "
                 "x = examined and rejected", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def fig_effects(result):
    """What zeroing each graded weight does on real text (mean KL, log scale), next to its
    controls (the largest ordinary weight, random weights, its neighbours), per condition."""
    plt = _plt()
    graded = [f for f in result.super_weights + result.strong if f.effect and f.effect.text]
    conds = ["bos", "mid"]
    fig, axes = plt.subplots(1, len(conds), figsize=(9, 3.2 + 0.35 * len(graded)), dpi=110, squeeze=False)
    kinds = sorted({c.kind for f in graded for c in f.effect.controls if c.text is not None})
    for ax, cond in zip(axes[0], conds):
        labels, bars = [], []
        for f in graded:
            labels.append(str(f.coord))
            bars.append([f.effect.text.kl[cond]] + [next((c.text.kl[cond] for c in f.effect.controls
                                                          if c.kind == k and c.text is not None and cond in c.text.kl),
                                                         float("nan"))
                                                     for k in kinds])
        n = 1 + len(kinds)
        h = 0.8 / n
        for j, name in enumerate(["the weight"] + [f"control: {k}" for k in kinds]):
            ys = [i + (j - (n - 1) / 2) * h for i in range(len(labels))]
            ax.barh(ys, [max(b[j], 1e-6) for b in bars], height=h, color="crimson" if j == 0 else f"C{j - 1}",
                    label=name)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel(f"mean KL on real text, nats ({cond})", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("zeroed alone on real text, next to its controls", fontsize=9)
    fig.tight_layout()
    return fig


def fig_quant(points, ref_ppl: float, text: str):
    """Perplexity after RTN at each bit width and layout, for each hold-out (``points``:
    (layout, bits, what is held out, perplexity[, its interval [lo, hi] or None])), the
    interval over windows as an error bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    labels = sorted({p[0] for p in points}, key=lambda x: [p[0] for p in points].index(x))
    bits = sorted({p[1] for p in points})
    xs = [f"{lab}\n{b}-bit" for b in bits for lab in labels]
    holds = list(dict.fromkeys(p[2] for p in points))
    w = 0.8 / len(holds)
    for k, hold in enumerate(holds):
        got = [next((p for p in points if p[0] == lab and p[1] == b and p[2] == hold), None)
               for b in bits for lab in labels]
        ys = [p[3] if p else float("nan") for p in got]
        ivs = [p[4] if p and len(p) > 4 and p[4] else None for p in got]
        err = [[y - iv[0] if iv else 0 for y, iv in zip(ys, ivs)], [iv[1] - y if iv else 0 for y, iv in zip(ys, ivs)]]
        ax.bar([i + (k - (len(holds) - 1) / 2) * w for i in range(len(xs))], ys, width=w,
               color=("gray", "seagreen", "royalblue")[k % 3], label=f"held out: {hold}",
               yerr=err if any(ivs) else None, error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.axhline(ref_ppl, color="black", ls=":", lw=1, label="unquantized")
    ax.set_xticks(range(len(xs)), xs, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(f"perplexity, {text} (log)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def svg(fig) -> str:
    """A figure as an inline ``<svg>`` element (closed afterwards)."""
    import io

    import matplotlib.pyplot as plt

    import matplotlib

    buf = io.StringIO()
    try:
        # the same figure gives the same bytes: no date, ids from the content (figures that
        # share a definition share its id, which is harmless inline)
        with matplotlib.rc_context({"svg.hashsalt": "superweight"}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
    finally:
        plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_activations(result, path: str | Path) -> Path:
    """Figure 4 as a PNG (see ``fig_activations``)."""
    return _save(fig_activations(result), Path(path))


def fig_activations(result):
    """Figure 4: the super-activation channel's max |h| after each layer, per condition."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    styles = iter([("s", "--"), ("^", ":"), ("v", "-.")])
    for i, c in enumerate(result.conditions):
        if c.name == "original":  # a wide pale band under the others: visible where another line lies on it
            ax.plot(range(len(c.activation)), c.activation, "-", lw=6, alpha=0.35, color="0.25", zorder=1,
                    label=c.name)
        else:
            marker, ls = next(styles, ("o", "-"))
            ax.plot(range(len(c.activation)), c.activation, marker=marker, ls=ls, ms=3.5, lw=1.3, zorder=2 + i,
                    label=c.name)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"max |h| on channel {result.channel}")
    ax.set_title(f"{result.model}\nthe super activation through the network", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_stopwords(result, path: str | Path) -> Path:
    """Figure 5 as a PNG (see ``fig_stopwords``)."""
    return _save(fig_stopwords(result), Path(path))


def fig_stopwords(result):
    """Figure 5: mean next-token probability of the most-moved tokens, intact vs super weights removed."""
    plt = _plt()
    shifts = result.stopwords
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    xs = range(len(shifts))
    ax.bar([x - 0.2 for x in xs], [s.before for s in shifts], width=0.4, label="original")
    ax.bar([x + 0.2 for x in xs], [s.after for s in shifts], width=0.4, label="super weights removed")
    ax.set_xticks(list(xs), [repr(s.token) for s in shifts], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("mean next-token probability")
    n = result.config.stopword_prompts
    ax.set_title(f"{result.model}\ntokens whose mean probability moved most ({n} LAMBADA prompts)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_scale(model: str, factors: list[float], results, path: str | Path) -> Path:
    """Figure 6: mean zero-shot accuracy and perplexity against the super-weight scale factor."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    if results and results[0].accuracy:
        ax.plot(factors, [100 * r.mean_accuracy for r in results], "o-", color="C0", label="mean accuracy (%)")
        ax.set_ylabel("mean zero-shot accuracy (%)")
    ax2 = ax.twinx()
    for i, t in enumerate(results[0].perplexity if results else []):
        ax2.plot(factors, [r.perplexity[t] for r in results], "s--", color=f"C{i + 1}", label=f"perplexity {t}")
    ax2.set_yscale("log")
    ax2.set_ylabel("perplexity (log)")
    ax.set_xlabel("super weight scale factor")
    ax.set_title(f"{model}\nscaling the super weights", fontsize=9)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_quant(ref, points, path: str | Path, title: str = "") -> Path:
    """Perplexity against effective bits per weight, one line per method and bit width,
    one panel per text source; full precision as a dashed line."""
    plt = _plt()
    path = Path(path)
    texts = list(ref.perplexity)
    fig, axes = plt.subplots(1, len(texts), figsize=(6.5 * len(texts), 5), dpi=120, squeeze=False)
    methods = sorted({p.method for p in points})
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    markers = {3: "s", 4: "o", 2: "v"}
    for ax, text in zip(axes[0], texts):
        top = 20 * ref.perplexity[text]
        for m in methods:
            for b in sorted({p.bits for p in points if p.method == m}):
                pts = sorted((p for p in points if p.method == m and p.bits == b), key=lambda p: p.bits_per_weight)
                ax.plot([p.bits_per_weight for p in pts], [min(p.perplexity[text], top) for p in pts],
                        marker=markers.get(b, "o"), ms=4, color=colors[m], label=f"{m} ({b}-bit)",
                        ls="-" if b == 4 else "--")
        ax.axhline(ref.perplexity[text], color="black", ls=":", lw=1, label="full precision")
        ax.set_yscale("log")
        ax.set_ylim(ref.perplexity[text] * 0.9, top * 1.05)
        ax.set_xlabel("effective bits per weight (codes + scales + zero points + held-out weights)")
        ax.set_ylabel(f"perplexity, {text} (log; clipped at {top:.0f})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(title or "weight quantization: perplexity against size")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
