"""The residual stream around the super weights: the super activation, and each massive
activation with the layer, weight or norm that makes it (docs/detection.md, step 8)."""
from __future__ import annotations

import torch

from superweight.models.load import LoadedModel
from superweight.results import GRADES, Finding


def super_activation(residual: list, found: list[Finding]) -> dict | None:
    """The residual-stream channel the super weights write to, and its max |h| after each layer."""
    if not found or not residual:
        return None
    channel = max(found, key=lambda f: abs(f.output_activation)).coord.row
    return {
        "channel": channel,
        "max_per_layer": [float(mx[channel]) for mx, _ in residual],
        "token_per_layer": [int(tok[channel]) for _, tok in residual],
    }


MASSIVE_RATIO = 100.0  # |h| >= this x the layer's median channel peak: massive


MASSIVE_TOKENS = 4  # per channel, the tokens with the largest peaks


def massive_channels(lm: LoadedModel, hidden: list, findings: list[Finding], where: str = "prompt") -> list[dict]:
    """The residual stream's massive activations and what makes each one, on the first
    prompt (``where="prompt"``) or a real-text window (``"bos"``, ``"mid"``).

    ``hidden``: the embeddings, then each layer's output, [T, H]. An activation (channel,
    token) is massive after a layer where its |h| is at least ``MASSIVE_RATIO`` times the
    median over channels of that layer's per-channel peak. One channel can carry several
    (Qwen2.5-Coder's channel 62: the first token, and delimiter tokens), so each token is
    its own entry (at most ``MASSIVE_TOKENS`` per channel): the layer where it begins, its
    peak, and each layer's contribution (h after the layer minus h before). Layers that add
    at least 10% of the peak are its sources, with the findings there on that channel
    (graded, or examined and rejected). Where the family normalizes the MLP output before
    the residual add, the norm's gain on the channel is reported, and named as the cause
    when it stands 10x above the median gain and no weight there was graded. When no layer
    adds half of the peak, it is said to build over layers."""
    if not hidden or len(hidden) < 2:
        return []
    stack = torch.stack(hidden[1:]).abs()  # [L, T, H]
    median = stack.amax(1).median(dim=1).values.clamp_min(1e-12)  # [L]
    big = stack >= MASSIVE_RATIO * median[:, None, None]  # [L, T, H]
    out = []
    for ch in big.any(0).any(0).nonzero().flatten().tolist():
        toks = big[:, :, ch].any(0).nonzero().flatten().tolist()
        toks = sorted(toks, key=lambda t: -float(stack[:, t, ch].max()))[:MASSIVE_TOKENS]
        for t in toks:
            out.append(_massive(lm.adapter.post_mlp_gain, hidden, big, stack, ch, t, findings, where))
    return sorted(out, key=lambda m: -abs(m["peak"]))


def _massive(post_mlp_gain, hidden, big, stack, ch: int, t: int, findings: list[Finding], where: str) -> dict:
    """One massive activation's story; ``post_mlp_gain(layer)``: the family's post-MLP norm gain, or None."""
    layers = big[:, t, ch].nonzero().flatten().tolist()
    peak_layer = int(stack[:, t, ch].argmax())
    series = [float(h[t, ch]) for h in hidden]
    peak = series[peak_layer + 1]
    sign = 1.0 if peak >= 0 else -1.0
    delta = [series[i + 1] - series[i] for i in range(len(series) - 1)]
    share = [d / peak if peak else 0.0 for d in delta]
    sources = sorted((i for i in range(len(delta)) if share[i] >= 0.1), key=lambda i: -share[i])
    src = sources[0] if sources else max(range(len(delta)), key=lambda i: sign * delta[i])
    top = sorted(range(len(delta)), key=lambda i: -abs(delta[i]))[:5]
    entry = {"where": where, "channel": ch, "token": t, "begins": layers[0], "massive_layers": len(layers), "peak_layer": peak_layer,
             "peak": peak, "source_layer": src, "source_share": share[src],
             "contributions": {str(i): delta[i] for i in sorted(top)}}

    def at(layer):
        """The finding on this channel at this layer: graded first, then probed, then the largest
        spike; on the prompt only at this token (a window's tokens are not the prompt's)."""
        here = [f for f in findings if f.coord.row == ch and f.coord.layer == layer
                and (where != "prompt" or f.token == t)]
        key = lambda f: (GRADES.index(f.grade), f.effect is None, -abs(f.output_activation))  # noqa: E731
        return min(here, key=key) if here else None

    def says(layer):
        f = at(layer)
        if f is None:
            return f"layer {layer} adds {share[layer]:.0%}"
        joint = f", jointly with {', '.join(map(str, f.jointly_with))}" if f.jointly_with else ""
        return f"layer {layer} adds {share[layer]:.0%} (its spike's weight {f.coord}: {f.grade}{joint})"

    gain = post_mlp_gain(src)
    if gain is not None:
        entry["post_mlp_norm_gain"] = float(gain[ch])
        entry["post_mlp_norm_gain_median"] = float(gain.abs().median())
    f = at(src)
    if share[src] < 0.5:
        entry["made_by"] = "layers"
        entry["explanation"] = ("no single layer makes it; it builds over layers: "
                                + ", ".join(f"{i} ({delta[i]:+.4g})" for i in sorted(top)))
    elif f is not None and f.grade != "rejected":
        entry["made_by"] = "weight"
        entry["weight"], entry["grade"] = str(f.coord), f.grade
        entry["explanation"] = "; ".join(says(i) for i in sources)
    elif gain is not None and abs(float(gain[ch])) >= 10 * float(gain.abs().median()):
        entry["made_by"] = "norm"
        entry["explanation"] = (
            f"layer {src} adds {share[src]:.0%} through its post-MLP norm, whose gain on channel {ch} is "
            f"{float(gain[ch]):.4g} ({abs(float(gain[ch])) / float(gain.abs().median()):.0f}x the median): the norm "
            f"weight, not one down-projection weight, makes it massive")
    else:
        entry["made_by"] = "layer"
        if f is not None:
            entry["weight"], entry["grade"] = str(f.coord), f.grade
        entry["explanation"] = "; ".join(says(i) for i in sources) + (
            "; no weight there is graded (each one's reason is in the rejected list)")
    return entry
