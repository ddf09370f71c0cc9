"""One self-contained HTML page per model (``superweight report``), and the same tables in
Jupyter (a ``DetectResult`` in an IPython kernel: the view ``superweight.__init__`` registers).

Self-contained: the figures are inline SVG, the style and the few lines of script (the copy
buttons) are in the page, and nothing is fetched, so the page works offline and can be
attached to an issue or a paper. Wide tables scroll inside their own box; the page itself
never grows wider than the window.
"""
from __future__ import annotations

import html

from superweight.output import plot
from superweight.numbers import fmt_g as g, fmt_interval
from superweight.output.console import AUDIT_HEAD, audit_legend, audit_ppl_rows, audit_rows, fmt_spread, text_header

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 40px;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
.sub{color:#555;margin:0 0 1em}.box{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.86em;margin:.4em 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;
white-space:nowrap}th{background:#f4f4f6;white-space:normal;vertical-align:bottom}td.l,th.l{text-align:left}
td.w{white-space:normal;min-width:8em;max-width:24em}p.cap{font-size:.85em;color:#555;margin:.1em 0 1em}
dl.read dt{font-weight:600;margin-top:.5em}dl.read dd{margin:0 0 0 1.2em}
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


def table(head: list[str], rows: list[list[str]], left: set[int] = frozenset(), raw: bool = False,
          wrap: set[int] = frozenset(), caption: str = "") -> str:
    """A table in its own box, with a caption under it; cells are escaped unless ``raw``.
    Columns of prose (``wrap``) and every header wrap, so the table fits the page's column
    (``tools/check_page.py`` fails a table wider than its box); a box scrolls only as a last
    resort, at widths under the page's."""
    th = "".join(f'<th class="l">{e(h)}</th>' if i in left else f"<th>{e(h)}</th>" for i, h in enumerate(head))
    body = []
    for r in rows:
        cells = "".join(f'<td class="{"l" if i in left else ""}{" w" if i in wrap else ""}">{c if raw else e(c)}</td>'
                        for i, c in enumerate(r)).replace(' class=""', "")
        body.append(f"<tr>{cells}</tr>")
    cap = f'<p class="cap">{e(caption)}</p>' if caption else ""
    return f'<div class="box"><table><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{cap}'


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
        grade = (f'<span class="{e(f.grade)}">{e(f.grade)}</span>'
                 + (f", jointly with {e(', '.join(map(str, f.jointly_with)))}" if f.jointly_with else ""))
        module = f.param.split(f".{f.coord.layer}.", 1)[-1].removesuffix(".weight")
        rows.append([grade, coord_cell(f.coord), e(module), g(f.value), g(f.output_activation), str(f.token),
                     _effect(f, "bos"), _effect(f, "mid"), e(", ".join(f.effect.matters_in) if f.effect else "-")])
    head = ["grade", "L:R:C", "module", "value", "output act.", "token", "bos (from the start token)", "mid (mid-text)",
            "matters in"]
    return table(head, rows, left={0, 1, 2, 6, 7, 8}, raw=True, wrap={0, 6, 7, 8},
                 caption="Each graded weight: its value, the output activation it makes, the token it fires on, and "
                         "what zeroing it alone does on real text in each condition (perplexity ratio and KL with "
                         "their 95% intervals over windows, the strongest control's KL and the finding's margin over "
                         "it). The grade is decided in the condition named under 'matters in'."
                         + (" A weight graded jointly was zeroed with the partners named: its effect is the group's."
                            if any(f.jointly_with for f in graded) else ""))


def detect_fragment(result, agreement=None) -> str:
    """The findings table and the detection figure: what Jupyter shows for a ``DetectResult``."""
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
            + table(["layer", "max |X|", "in channel", "max |Y|", "out channel", "token"], rows,
                    caption="The largest input |X| and output |Y| of each layer's down projection on the prompt, "
                            "their channels, and the token position of the output spike.") + "</details>")


def _rejected(result) -> str:
    if not result.rejected:
        return ""
    rows = [[coord_cell(f.coord), g(f.value), g(f.output_activation), e(f.reason or "")] for f in result.rejected]
    return (f"<details><summary>examined and rejected ({len(result.rejected)})</summary>"
            + table(["L:R:C", "value", "output act.", "reason"], rows, left={0, 3}, raw=True, wrap={3},
                    caption="Spikes examined and not graded, with the reason: most are ordinary large weights "
                            "whose removal moves real text no more than their controls.") + "</details>")


def _massive(result) -> str:
    if not result.massive:
        return ""
    rows = [[m["where"], str(m["channel"]), str(m["token"]), str(m["begins"]), g(m["peak"]), str(m["peak_layer"]),
             m["explanation"]] for m in result.massive]
    return table(["where", "channel", "token", "from layer", "peak", "peak after layer", "made by"], rows, left={0, 6},
                 wrap={6}, caption="Massive activations in the residual stream: the channel, the token, the layer "
                                   "they begin at and peak after, and what makes them.")


def _ppl(value, interval) -> str:
    """A perplexity with its interval over windows, when it has one of more than a point."""
    if interval and interval[0] != interval[1]:
        return fmt_interval(value, *interval)
    return g(value)


def _ablation(rep) -> str:
    a = rep.ablation
    if a is None:
        return '<p class="note">No weights to ablate.</p>' if not rep.coords else '<p class="note">Skipped (--no-ablate).</p>'
    texts = list(a.conditions[0].perplexity) if a.conditions else []
    orig = next((c for c in a.conditions if c.name == "original"), None)

    def vs(c, t):
        if orig is None or c is orig:
            return "-"
        return "x" + fmt_interval(*c.ppl(t).ratio(orig.ppl(t)))

    rows = [[c.name] + [x for t in texts for x in (_ppl(c.perplexity[t], c.perplexity_interval.get(t)), vs(c, t))]
            + [g(max(c.activation) if c.activation else None)] for c in a.conditions]
    out = [f'<p class="note">The paper\'s Table 1 without the zero-shot tasks: perplexity over {rep.config.max_windows} '
           f"window(s) of {rep.config.seqlen} tokens (cut from running text, no start token) with its 95% bootstrap interval over "
           f"them, and the peak of "
           f"residual channel {a.channel}.</p>",
           table(["condition"] + [x for t in texts for x in (f"perplexity, {t}", "vs original")]
                 + [f"channel {a.channel} peak"], rows, left={0},
                 caption="Perplexity with the weights removed (prune SW), with the super activation put back "
                         "(restore SA), and with the largest other weights removed instead (prune non-SW), against "
                         "the original (the ratio's interval paired window by window); and the super activation's "
                         "peak in each."),
           figure(plot.svg(plot.fig_activations(a)), "the super activation's channel after each layer, per condition")]
    if a.stopwords:
        out.append(figure(plot.svg(plot.fig_stopwords(a)),
                          "next-token probabilities that moved most when the weights were removed"))
    return "".join(out)


def _quant(rep) -> str:
    from superweight.overview import holdout_notes

    if not rep.quant:
        return '<p class="note">Skipped (--no-quant).</p>'
    held = ", ".join(str(c) for c in rep.coords) or "none"
    ref = rep.quant_ref_ppl
    rows = [[q.layout, str(q.bits), q.hold, f"{q.bits_per_weight:.3f}", _ppl(q.perplexity, q.interval),
             "x" + fmt_interval(*q.ppl.ratio(ref))] for q in rep.quant]  # paired window by window
    points = [(q.layout, q.bits, q.hold, q.perplexity, q.interval) for q in rep.quant]
    notes = holdout_notes(rep.quant, held)
    return (f'<p class="note">Asymmetric round-to-nearest of every decoder linear weight, holding out nothing, the '
            f'weights acted on ({e(held)}), or those and the weight columns of input channels whose peak is 10x the '
            f"median channel's or more (superweight's own hold-out). Perplexity on {e(rep.config.text)}, "
            f"{rep.config.max_windows} window(s) of {rep.config.seqlen} tokens, with its 95% bootstrap interval over "
            f"them; unquantized {e(_ppl(rep.quant_ref, rep.quant_ref_interval))}.</p>"
            + table(["layout", "bits", "held out", "bits/weight", "perplexity", "vs unquantized"], rows, left={0, 2},
                    caption="Perplexity after round-to-nearest quantization at each layout and width, with and "
                            "without the hold-out, and its ratio to the unquantized model's (its interval paired "
                            "window by window).")
            + "".join(f'<p class="note">{e(n[:1].upper() + n[1:])}.</p>' for n in notes)
            + figure(plot.svg(plot.fig_quant(points, rep.quant_ref, rep.config.text)),
                     "RTN perplexity with and without the hold-out (bars: the interval over windows)"))


def audit_section(a) -> str:
    rows = [[coord_cell(r[0]), *(e(x) for x in r[1:])] for r in audit_rows(a)]
    legend = audit_legend()
    words = "".join(f"<li>{e(line)}</li>" for line in a.conclusion())
    return (f"<p>{e(a.quantized)} against {e(a.original)}.</p><ul>{words}</ul>"
            + table(AUDIT_HEAD, rows, left={0, 1, 5, 12}, raw=True, caption=legend[0].removeprefix("legend: "))
            + f'<p class="note">{"<br>".join(e(x) for x in legend[2:])}</p>'
            + f'<p class="note">Perplexity on {e(a.text["source"])}, {a.text["windows"]["bos"]} window(s) of '
              f'{a.text["window"]} tokens per condition (bos: from the start token; mid: mid-text).</p>'
            + table(["condition", "original", "quantized", "quantized, findings restored", "loss recovered"],
                    audit_ppl_rows(a), left={0}, caption=legend[1]))


HOW_TO_READ = [
    ("What a super weight is",
     "A super weight is one scalar in an MLP down projection whose removal wrecks the model: zeroing it alone can "
     "multiply perplexity many times over while zeroing thousands of the next-largest weights costs almost nothing. "
     "It works through a super activation, a huge value it writes into one residual channel on the first token, "
     "which then rides through the rest of the network (Yu et al. 2024, "
     '<a href="https://arxiv.org/abs/2411.07191">The Super Weight in Large Language Models</a>).'),
    ("Coordinates",
     "L:R:C is layer L's down projection, row R (the output channel, the residual channel it writes) and column C "
     "(the input channel), in the stored weight's terms."),
    ("Grades",
     "super: zeroing the weight alone multiplies real-text perplexity at least 3x and moves the next-token "
     "distribution far more than its controls; strong: it moves real text clearly (KL at least the strong "
     "threshold) and well beyond its controls, but not 3x; uncertain: the ends of its interval fall on two sides "
     "of a threshold even after the most windows; rejected: examined and not graded (the reason says why). "
     "jointly: the weight matters together with the weights named, not alone."),
    ("Controls and KL",
     "Each finding is zeroed on real text next to controls: ordinary weights of the same matrix (its row, its "
     "column, and weights of similar size) zeroed the same way. KL is the mean KL divergence, in nats, from the "
     "intact model's next-token distribution to the edited one's; 'control 0.005, 300x' means the strongest control "
     "moved it 0.005 and the finding 300 times as much. x7.6 is the perplexity ratio, edited over intact."),
    ("bos and mid",
     "bos windows start with the model's start token (or document separator), mid windows start in the middle of "
     "running text. A weight can matter in one and not the other: a super activation is built on the first token, "
     "so its weight usually matters most from the start token."),
    ("Intervals",
     "[lo-hi] is the 95% bootstrap interval of the mean over the windows read (the count is in parentheses): "
     "the proof reads more windows only where an interval still straddles a threshold."),
    ("The ablation's conditions",
     "original: the model as it is; prune SW: the super weights zeroed; prune SW, restore SA: zeroed, with the "
     "super activation put back where it is made; prune non-SW: the paper's control, the largest weights of every "
     "matrix zeroed (its top fraction by magnitude), the super weights kept."),
    ("Why the baseline perplexities differ",
     "Each section measures on its own windows: the findings on the proof's 128-token windows (bos and mid, "
     "drawn from the whole text), the short ablation and the RTN sweep on the first windows of their text, cut "
     "one after another with no start token (mid-text), and the probe perplexity on six short sentences. Compare "
     "numbers within a table, not across tables; a ratio to the table's own reference is paired window by window, "
     "so its interval is narrower than the perplexities'."),
]


def how_to_read() -> str:
    """What the page's words and numbers mean, for a reader who has not read the paper."""
    items = "".join(f"<dt>{e(t)}</dt><dd>{d}</dd>" for t, d in HOW_TO_READ)
    return f'<details open><summary>How to read this page</summary><dl class="read">{items}</dl></details>'


def shareable(command: str) -> str:
    """The command line as a reader can use it: paths on this machine (the model's folder, the
    page, a JSON or audit file) become their last component."""
    import os
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:
        return ""
    return " ".join(shlex.quote(os.path.basename(w.rstrip("/")) + ("/" if w.endswith("/") else "")
                                if ("/" in w and not w.startswith("-") and os.sep in w) else w) for w in words)


def render_report(rep) -> str:
    """The whole page for a ``Report`` (overview.py)."""
    from superweight.version import VERSION as __version__

    r = rep.result
    tx = r.text
    summary = (f"{len(r.super_weights)} super and {len(r.strong)} strong weight(s); probe perplexity {g(r.probe_ppl)}"
               + (f"; real text: {tx['source']}, bos perplexity {g(tx['ppl_intact']['bos'])}, "
                  f"mid {g(tx['ppl_intact']['mid'])}" if tx else ""))
    sections = [
        ("Findings", (f'<p class="note">{e(text_header(tx, r))}.</p>' if tx else "") + findings_table(r) + _rejected(r)
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
    sections.insert(0, ("How to read this page", how_to_read()))
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
            + (f"; <code>{e(shareable(rep.command))}</code>" if rep.command else "")
            + (f"; {e(rep.provenance.describe())}" if getattr(rep, "provenance", None) else "") + "</p>"
            f"<script>{SCRIPT}</script></body></html>\n")
