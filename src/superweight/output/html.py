"""One self-contained HTML page per model (``superweight report``), and the same tables in
Jupyter (``DetectResult._repr_html_``).

Self-contained: the figures are inline SVG, the style and the few lines of script (the copy
buttons) are in the page, and nothing is fetched, so the page works offline and can be
attached to an issue or a paper. Wide tables scroll inside their own box; the page itself
never grows wider than the window.
"""
from __future__ import annotations

import html

from superweight.output import plot
from superweight.output.console import AUDIT_LEGEND, fmt_g as g, fmt_pct, fmt_spread

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 40px;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
.sub{color:#555;margin:0 0 1em}.box{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.86em;margin:.4em 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;
white-space:nowrap}th{background:#f4f4f6}td.l,th.l{text-align:left}
code{font-family:ui-monospace,Menlo,monospace;background:#f4f4f6;padding:1px 4px;border-radius:3px}
code.coord{user-select:all}button.copy{font-size:.75em;margin-left:4px;cursor:pointer}
.super{color:#b00020;font-weight:600}.strong{color:#b35900;font-weight:600}.rejected{color:#777}.uncertain{color:#5a4fcf;font-weight:600}
svg{max-width:100%;height:auto}figure{margin:.6em 0}figcaption{font-size:.85em;color:#555}
.note{font-size:.88em;color:#444}details{margin:.5em 0}
"""
SCRIPT = """
document.querySelectorAll('button.copy').forEach(function(b){b.addEventListener('click',function(){
  var t=b.getAttribute('data-copy');
  try{navigator.clipboard.writeText(t).then(function(){b.textContent='copied';},function(){});}catch(e){}
});});
"""


def e(x) -> str:
    return html.escape(str(x), quote=True)


def coord_cell(c) -> str:
    return f'<code class="coord">{e(c)}</code><button class="copy" data-copy="{e(c)}" title="copy">copy</button>'


def table(head: list[str], rows: list[list[str]], left: set[int] = frozenset(), raw: bool = False) -> str:
    """A table in a horizontally scrolling box; cells are escaped unless ``raw``."""
    th = "".join(f'<th class="l">{e(h)}</th>' if i in left else f"<th>{e(h)}</th>" for i, h in enumerate(head))
    body = []
    for r in rows:
        cells = "".join(f'<td class="l">{c if raw else e(c)}</td>' if i in left else f"<td>{c if raw else e(c)}</td>"
                        for i, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="box"><table><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{e(caption)}</figcaption></figure>"


def _effect(f, cond: str) -> str:
    eff = f.effect
    if eff is None or eff.text is None or cond not in eff.text.kls:
        return "-"
    ctl = eff.control_kl_text(cond)
    margin = eff.margin.get(cond) if eff.margin else None
    s = "ppl " + fmt_spread(eff, cond)
    if ctl is not None and margin is not None:
        s += f" (control {ctl:.2g}, {margin:.0f}x)"
    return e(s)


def findings_table(result) -> str:
    graded = result.super_weights + result.strong + result.uncertain
    if not graded:
        return '<p class="note">No super or strong weight: no single weight\'s removal moves real text more than its controls.</p>'
    rows = []
    for f in graded:
        grade = f'<span class="{e(f.grade)}">{e(f.grade)}</span>' + (" (jointly)" if f.jointly_with else "")
        module = f.param.split(f".{f.coord.layer}.", 1)[-1].removesuffix(".weight")
        rows.append([grade, coord_cell(f.coord), e(module), g(f.value), g(f.output_activation), str(f.token),
                     _effect(f, "bos"), _effect(f, "mid"), e(", ".join(f.effect.matters_in) if f.effect else "-")])
    head = ["grade", "L:R:C", "module", "value", "output act.", "token", "bos (from the start token)", "mid (mid-text)",
            "matters in"]
    return table(head, rows, left={0, 1, 2, 6, 7, 8}, raw=True)


def detect_fragment(result, agreement=None) -> str:
    """The findings table and the detection figure: ``DetectResult._repr_html_``."""
    coords = " ".join(str(c) for c in result.coords)
    parts = [f"<p><b>{e(result.model)}</b> ({e(result.architecture)}, {result.num_layers} layers): "
             f"{len(result.super_weights)} super, {len(result.strong)} strong weight(s), "
             f"{len(result.rejected)} examined and rejected."
             + (f' <code class="coord">--coords {e(coords)}</code>' if coords else "") + "</p>",
             findings_table(result)]
    if agreement:
        parts.append(f'<p class="note">{e(_agreement(agreement))}</p>')
    parts.append(figure(plot.svg(plot.fig_detect(result)), "per-layer spikes of the down projections and the super "
                                                            "activation's channel through the residual stream"))
    return "<div>" + "".join(parts) + "</div>"


def _agreement(a: dict) -> str:
    s = f"index ({a['source']}, {a['model']}): {a['status']}"
    if a.get("only_detected"):
        s += f"; only detected: {', '.join(a['only_detected'])}"
    if a.get("only_in_index"):
        s += f"; only in the index: {', '.join(a['only_in_index'])}"
    return s


def _spikes(result) -> str:
    rows = [[str(r.layer) + ("" if r.expert is None else f" e{r.expert}"), g(r.max_input), str(r.input_channel),
             g(r.max_output), str(r.output_channel), str(r.output_token)] for r in result.layers]
    return ("<details><summary>per-layer spikes (round 1)</summary>"
            + table(["layer", "max |X|", "in channel", "max |Y|", "out channel", "token"], rows) + "</details>")


def _rejected(result) -> str:
    if not result.rejected:
        return ""
    rows = [[coord_cell(f.coord), g(f.value), g(f.output_activation), e(f.reason or "")] for f in result.rejected]
    return (f"<details><summary>examined and rejected ({len(result.rejected)})</summary>"
            + table(["L:R:C", "value", "output act.", "reason"], rows, left={0, 3}, raw=True) + "</details>")


def _massive(result) -> str:
    if not result.massive:
        return ""
    rows = [[m["where"], str(m["channel"]), str(m["token"]), str(m["begins"]), g(m["peak"]), str(m["peak_layer"]),
             m["explanation"]] for m in result.massive]
    return table(["where", "channel", "token", "from layer", "peak", "peak after layer", "made by"], rows, left={0, 6})


def _ablation(rep) -> str:
    a = rep.ablation
    if a is None:
        return '<p class="note">No weights to ablate.</p>' if not rep.coords else '<p class="note">Skipped (--no-ablate).</p>'
    texts = list(a.conditions[0].perplexity) if a.conditions else []
    rows = [[c.name] + [g(c.perplexity[t]) for t in texts] + [g(max(c.activation) if c.activation else None)]
            for c in a.conditions]
    out = [f'<p class="note">The paper\'s Table 1 without the zero-shot tasks: perplexity over {rep.config.max_windows} '
           f"window(s) of {rep.config.seqlen} tokens, and the peak of residual channel {a.channel}.</p>",
           table(["condition"] + [f"perplexity, {t}" for t in texts] + [f"channel {a.channel} peak"], rows, left={0}),
           figure(plot.svg(plot.fig_activations(a)), "the super activation's channel after each layer, per condition")]
    if a.stopwords:
        out.append(figure(plot.svg(plot.fig_stopwords(a)),
                          "next-token probabilities that moved most when the weights were removed"))
    return "".join(out)


def _quant(rep) -> str:
    if not rep.quant:
        return '<p class="note">Skipped (--no-quant).</p>'
    held = ", ".join(str(c) for c in rep.coords) or "none"
    rows = [[q.layout, str(q.bits), q.hold, f"{q.bits_per_weight:.3f}", g(q.perplexity),
             f"x{q.perplexity / rep.quant_ref:.3g}"] for q in rep.quant]
    points = [(q.layout, q.bits, q.hold, q.perplexity) for q in rep.quant]
    return (f'<p class="note">Asymmetric round-to-nearest of every decoder linear weight, holding out nothing, the '
            f'weights acted on ({e(held)}), or those and the weight columns of input channels whose peak is 10x the '
            f"median channel's or more (superweight's own hold-out). Perplexity on {e(rep.config.text)}, {rep.config.max_windows} window(s) of {rep.config.seqlen} tokens; "
            f"unquantized {g(rep.quant_ref)}.</p>"
            + table(["layout", "bits", "held out", "bits/weight", "perplexity", "vs unquantized"], rows, left={0, 2})
            + figure(plot.svg(plot.fig_quant(points, rep.quant_ref, rep.config.text)),
                     "RTN perplexity with and without the hold-out"))


def audit_section(a) -> str:
    rows = [[coord_cell(f.coord), e(f.grade), g(f.original), g(f.quantized), fmt_pct(f.rel_error), e(f.block.kind),
             fmt_pct(f.block_error), fmt_pct(f.typical_block_error), g(f.peak.get("original")), g(f.peak.get("quantized")),
             g(f.peak.get("restored"))] for f in a.findings]
    head = ["L:R:C", "grade", "original", "quantized", "rel. error", "block", "rest of block", "median block",
            "super act., original", "super act., quantized", "super act., restored"]
    prow = []
    for c in ("bos", "mid"):
        r = a.recovered(c)
        prow.append([c, g(a.ppl["original"][c]), g(a.ppl["quantized"][c]), g(a.ppl["restored"][c]), fmt_pct(r)])
    words = "".join(f"<li>{e(line)}</li>" for line in a.conclusion())
    return (f"<p>{e(a.quantized)} against {e(a.original)}.</p><ul>{words}</ul>"
            + table(head, rows, left={0, 1, 5}, raw=True)
            + f'<p class="note">{"<br>".join(e(x) for x in AUDIT_LEGEND)}</p>'
            + f'<p class="note">Perplexity on {e(a.text["source"])}, {a.text["windows"]["bos"]} window(s) of '
              f'{a.text["window"]} tokens per condition (bos: from the start token; mid: mid-text).</p>'
            + table(["condition", "original", "quantized", "quantized, findings restored", "loss recovered"], prow,
                    left={0}))


def render_report(rep) -> str:
    """The whole page for a ``Report`` (overview.py)."""
    from superweight.version import VERSION as __version__

    r = rep.result
    tx = r.text
    summary = (f"{len(r.super_weights)} super and {len(r.strong)} strong weight(s); probe perplexity {g(r.probe_ppl)}"
               + (f"; real text: {tx['source']}, bos perplexity {g(tx['ppl_intact']['bos'])}, "
                  f"mid {g(tx['ppl_intact']['mid'])}" if tx else ""))
    sections = [
        ("Findings", findings_table(r) + _rejected(r)
         + (f'<p class="note">{e(_agreement(rep.agreement))}</p>' if rep.agreement else
            '<p class="note">index: no entry for this model</p>')),
        ("The super activation through the network",
         figure(plot.svg(plot.fig_detect(r)), "max |input| and |output| of each layer's down projection, and the super "
                                              "activation's channel after each layer (log scale)")
         + _massive(r) + _spikes(r)),
    ]
    if r.super_weights or r.strong:
        sections.append(("Zeroing each finding on real text, against its controls", figure(
            plot.svg(plot.fig_effects(r)), "mean KL of the next-token distribution with the weight zeroed alone, "
                                           "next to ordinary weights of the same matrix zeroed (log scale)")))
    acted = ", ".join(str(c) for c in rep.coords) or "none"
    sections.append((f"Short ablation ({acted}, from {rep.coords_from})", _ablation(rep)))
    sections.append(("3- and 4-bit RTN, with and without the hold-out", _quant(rep)))
    if rep.audit is not None:
        sections.append(("Audit of a quantized copy", audit_section(rep.audit)))
    body = "".join(f"<h2>{e(t)}</h2>{s}" for t, s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>superweight report: {e(rep.model)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{e(rep.model)}</h1>"
            f'<p class="sub">{e(r.architecture)}, {r.num_layers} layers. {e(summary)}.</p>'
            + (f'<p>Coordinates (layer:row:col; row = output channel, col = input channel): '
               f'<code class="coord">{e(" ".join(str(c) for c in rep.coords))}</code></p>' if rep.coords else "")
            + body
            + f'<p class="note">superweight {e(__version__)}, {e(rep.created)}'
            + (f"; <code>{e(rep.command)}</code>" if rep.command else "")
            + (f"; {e(rep.provenance.describe())}" if getattr(rep, "provenance", None) else "") + "</p>"
            f"<script>{SCRIPT}</script></body></html>\n")
