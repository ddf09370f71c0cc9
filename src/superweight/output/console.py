"""What each command prints: rich tables and plain lines. JSON comes from the result objects themselves."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

from rich.markup import escape
from rich.table import Table

from superweight.numbers import fmt_g, fmt_pct  # noqa: F401 - the output's number formats, named here too


def _add(t: Table, *cells) -> None:
    t.add_row(*(escape(str(c)) for c in cells))


def _short(param: str, coord) -> str:
    """``model.layers.11.mlp.down_proj.weight`` -> ``mlp.down_proj`` (the layer has its own column)."""
    tail = param.split(f".{coord.layer}.", 1)[-1].removesuffix(".weight")
    return tail if coord.expert is None else f"{tail}[{coord.expert}]"


def fmt_spread(e, cond: str) -> str:
    """A real-text effect with its interval over windows: ``x1.78 [1.2-2.5], KL 0.46 [0.2-0.71] (8 windows)``."""
    iv = e.text.interval(cond)
    (plo, phi), (klo, khi) = iv["ppl_ratio"], iv["kl"]
    return (f"x{e.text.ppl_ratio[cond]:.3g} [{plo:.2g}-{phi:.2g}], KL {e.text.kl[cond]:.3g} [{klo:.2g}-{khi:.2g}]"
            f" ({iv['windows']} window{'s' if iv['windows'] != 1 else ''})")


def _text(e, cond: str) -> str:
    """Real-text effect in one condition: perplexity ratio and KL with their intervals over
    windows, and the control margin."""
    if e is None or e.text is None or cond not in e.text.kls:
        return "-"
    ctl = e.control_kl_text(cond)
    margin = e.margin.get(cond) if e.margin else None
    return (fmt_spread(e, cond)
            + (f" (ctl {ctl:.2g}, {margin:.0f}x)" if ctl is not None and margin is not None else ""))


def print_detect(console, result, agreement, index_id, verbose: bool = False) -> None:
    console.print(f"[bold]{result.model}[/bold]  ({result.architecture}, {result.num_layers} layers, "
                  f"{result.rounds} round(s), probe perplexity {result.probe_ppl:.4g})")
    if result.text:
        tx = result.text
        console.print(escape(
            f"real text: {tx['source']}" + (f" (seed {tx['seed']})" if tx.get("seed") else "")
            + f", windows of {tx['window']} tokens, {tx.get('first', tx['windows']['bos'])} per condition first, "
            f"{tx['windows']['bos']} used of {tx.get('budget', tx['windows']['bos'])} at most; "
            f"bos = starting with {tx['start_token']} (perplexity {tx['ppl_intact']['bos']:.4g}), "
            f"mid = starting mid-text ({tx['ppl_intact']['mid']:.4g}); [lo-hi]: 95% bootstrap interval over windows"))
    graded = result.super_weights + result.strong + result.uncertain
    if graded:
        t = Table(title="graded weights (row = output channel, col = input channel; zeroed alone on real text, "
                        "next to the strongest control)", title_justify="left")
        for col in ("grade", "layer", "module", "row", "col", "value", "output act", "token", "bos", "mid", "matters in"):
            t.add_column(col, justify="left" if col in ("grade", "module", "bos", "mid", "matters in") else "right")
        for f in graded:
            e = f.effect
            _add(t, f.grade + (" (jointly)" if f.jointly_with else ""), str(f.coord.layer), _short(f.param, f.coord),
                 str(f.coord.row), str(f.coord.col), fmt_g(f.value), fmt_g(f.output_activation), str(f.token),
                 _text(e, "bos"), _text(e, "mid"), ", ".join(e.matters_in) if e else "-")
        console.print(t)
    for f in graded:
        if f.reason:  # uncertain, or super not shown at both ends of an interval
            console.print(escape(f"{f.grade} {f.coord}: {f.reason}"))
    if not result.super_weights:
        console.print("no super weight found: no single weight's removal wrecks the model on real text"
                      + (f" ({len(result.strong)} strong weight(s) above)" if result.strong else ""))
    if result.super_activation:
        sa = result.super_activation
        what = "super activation" if result.super_weights else "largest massive activation (no super weight makes it)"
        console.print(f"{what}: residual channel {sa['channel']}, max |h| {max(sa['max_per_layer']):.4g}")
    for m in result.massive:
        console.print(escape(f"massive activation ({m['where']}) channel {m['channel']}, token {m['token']}: from layer "
                             f"{m['begins']}, peak {m['peak']:.4g} after layer {m['peak_layer']}: {m['explanation']}"))
    if result.rejected:
        t = Table(title="examined and rejected", title_justify="left")
        for col in ("layer", "row", "col", "value", "output act", "reason"):
            t.add_column(col, justify="left" if col == "reason" else "right")
        for f in result.rejected:
            _add(t, str(f.coord.layer) + ("" if f.coord.expert is None else f" e{f.coord.expert}"), str(f.coord.row),
                      str(f.coord.col), fmt_g(f.value), fmt_g(f.output_activation), f.reason or "")
        console.print(t)
    if agreement:
        console.print(f"index ({agreement['source']}, {agreement['model']}): {agreement['status']}"
                      + (f"; only detected: {', '.join(agreement['only_detected'])}" if agreement["only_detected"] else "")
                      + (f"; only in index: {', '.join(agreement['only_in_index'])}" if agreement["only_in_index"] else ""))
    elif index_id:
        console.print(f"index: no entry for {index_id}")
    if verbose:
        t = Table(title="per-layer spikes (round 1)", title_justify="left")
        for col in ("layer", "max |X|", "in channel", "max |Y|", "out channel", "token"):
            t.add_column(col, justify="right")
        for r in result.layers:
            _add(t, str(r.layer) + ("" if r.expert is None else f" e{r.expert}"), fmt_g(r.max_input),
                      str(r.input_channel), fmt_g(r.max_output), str(r.output_channel), str(r.output_token))
        console.print(t)


def print_verify(console, name, verdicts, together=None) -> None:
    t = Table(title=f"verify: {name}", title_justify="left")
    for col in ("coordinate", "value", "grade", "probe KL", "bos", "mid", "spike", "why not super"):
        t.add_column(col, justify="left" if col in ("why not super", "bos", "mid") else "right")
    for v in verdicts:
        _add(t, str(v.coord), fmt_g(v.value), v.grade, fmt_g(v.effect.kl, 3), _text(v.effect, "bos"), _text(v.effect, "mid"),
             "yes" if v.spike else "no", v.reason or "")
    console.print(t)
    if together:
        e = together["effect"]
        console.print(escape(
            f"all {len(together['coords'])} zeroed together: probe KL {e['kl']:.3g}"
            + "".join(f", {c}: ppl x{v['ppl_ratio']:.3g} KL {v['kl']:.3g}" for c, v in e.get("text", {}).items())
            + f" -> {'a super-weight set' if together['is_super_weight_set'] else 'not a super-weight set'}"
            + (f" ({together['reason']})" if together.get("reason") else "")))


def print_index(console, entries) -> None:
    t = Table(title="known super weights (layer, row=output channel, col=input channel)", title_justify="left")
    for col in ("model", "super weights", "source", "note"):
        t.add_column(col)
    for e in entries:
        _add(t, e.model, "; ".join(f"{c.layer} [{c.row}, {c.col}]" for c in e.super_weights), e.source, e.note or "")
    console.print(t)


def print_edit(console, report, out: str) -> None:
    t = Table(title=f"edited: {report.source} ({report.format})", title_justify="left")
    for col in ("coordinate", "op", "tensor", "index", "before", "after", "how"):
        t.add_column(col, justify="right" if col in ("index", "before", "after") else "left")
    for c in report.changes:
        _add(t, str(c.coord), c.op, c.tensor, str(c.index), fmt_g(c.before, 6), fmt_g(c.after, 6), c.how)
    console.print(t)
    if report.not_copied:
        console.print(escape(f"not copied (weights in other formats, or not listed by the checkpoint's index; "
                             f"the manifest lists them): {', '.join(report.not_copied)}"))
    console.print(escape(f"verified: every other weight is the source's, byte for byte or value for value; "
                         f"written to {_slash(out)} (manifest: {_slash(out)}superweight-edit.json)"))
    from superweight.quant.engines import DENSE, GGUF

    console.print(escape(f"served by: {', '.join(GGUF if report.format == 'gguf' else DENSE)}"))


AUDIT_LEGEND = (
    "legend: original / quantized: the weight's value in each copy; rel. error: |quantized - original| / |original|; "
    "block: the quantization block that holds it; rest of block / median block: relative RMS error of the other "
    "weights of its block, and of the matrix's median block; super act.: max |h| of its row's channel after its "
    "layer on the prompt, in the original, the quantized copy, and the quantized copy with the findings restored",
    "perplexity: bos = windows from the start token, mid = mid-text; loss recovered: the share of the quantization's "
    "log-perplexity loss that restoring the findings' original values removes ('-': no loss to recover)",
    "verdict: kept = value within 1% and super activation within 10%; lost = value off by more than half or super "
    "activation down more than half; damaged = in between",
)


def print_audit(console, result) -> None:
    t = Table(title=f"audit: {result.quantized}\n  against {result.original}", title_justify="left")
    for col in ("weight", "grade", "original", "quantized", "rel. error", "block", "rest of block", "median block",
                "super act. orig", "quant", "restored"):
        t.add_column(col, justify="left" if col in ("weight", "grade", "block") else "right")
    for f in result.findings:
        _add(t, str(f.coord), f.grade, fmt_g(f.original), fmt_g(f.quantized), fmt_pct(f.rel_error), f.block.kind,
             fmt_pct(f.block_error), fmt_pct(f.typical_block_error), fmt_g(f.peak.get("original")), fmt_g(f.peak.get("quantized")),
             fmt_g(f.peak.get("restored")))
    console.print(t)
    tx = result.text
    p = Table(title=f"perplexity on {tx['source']} ({tx['windows']['bos']} window(s) of {tx['window']} tokens "
                    f"per condition; bos = from the start token, mid = mid-text)", title_justify="left")
    for col in ("condition", "original", "quantized", "quantized + findings restored", "loss recovered"):
        p.add_column(col, justify="left" if col == "condition" else "right")
    for c in ("bos", "mid"):
        r = result.recovered(c)
        _add(p, c, fmt_g(result.ppl["original"][c]), fmt_g(result.ppl["quantized"][c]), fmt_g(result.ppl["restored"][c]),
             fmt_pct(r))
    console.print(p)
    print_lines(console, *AUDIT_LEGEND, "", *result.conclusion())



def print_lines(console, *lines: str) -> None:
    """Plain lines, printed as they are (no rich markup read into them, no line breaks added:
    a terminal wraps them, a log keeps each whole)."""
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)


def _slash(out) -> str:
    """A folder as printed: its path with one trailing slash (``q3/`` given as ``q3/`` too)."""
    return f"{str(out).rstrip('/') or '/'}/".replace("//", "/")


def print_recipe(console, r, out: str | None) -> None:
    """A recipe: what it protects and how, its cost in bits, what it cannot do, then the
    recipe itself (or where it was written)."""
    b = r.bits
    held = "; ".join(f"{m.module} ({', '.join(m.coords) or 'its MLP'}){f' = GGUF {m.gguf}' if m.gguf else ''}"
                     for m in r.protected) or "nothing (no super or strong weight found; give --coords)"
    print_lines(console, f"recipe for {r.engine}: {r.model}",
                f"protects: {held}, {r.protects}" if r.protected else f"protects: {held}",
                f"bits per weight over {b['over']}: {b['without']:.3f} without the protection, {b['with']:.3f} with it "
                f"(+{b['extra']:.3f})",
                *(f"cannot protect: {c}" for c in r.cannot))
    if out:
        print_lines(console, f"written to {out}; apply: {r.apply.replace(r.filename, out)}")
    else:
        print_lines(console, f"apply (saved as {r.filename}): {r.apply}", "", r.text.rstrip("\n"))


def print_quantize(console, report, out: str, fmt, held: str, manifest: str) -> None:
    """``fmt``: the output's ``formats.Format`` (its lines, and its loading line if it needs one)."""
    from superweight.quant.engines import describe

    cfg = report.config
    where = _slash(out)
    print_lines(console, cfg.describe(),
                f"quantized {len(report.tensors)} tensors ({report.numel:,} weights) in {report.seconds:.1f} s: "
                f"{report.bits_per_weight:.3f} effective bits per weight, {report.held:,} held out exactly",
                f"super weights held out: {held}")
    print_lines(console, *fmt.written(where, manifest, cfg, report))
    if report.engines:
        print_lines(console, *describe(report.engines))
    loading = fmt.loading(out, cfg)
    if loading:
        console.print(f"load it with: {loading}", markup=False, soft_wrap=True)


def print_ablate(console, result, out: str) -> None:
    console.print(f"super weights: {', '.join(str(c) for c in result.super_weights)}; written to {_slash(out)}")
    print_lines(console, result.markdown())
    for sft in result.stopwords[:8]:
        print_lines(console, f"  {sft.token!r}: {sft.before:.4f} -> {sft.after:.4f} (x{sft.ratio:.2f})")


def print_scale(console, result, out: str) -> None:
    for f, r in zip(result.factors, result.results):
        acc = f"mean acc {100 * r.mean_accuracy:.2f}; " if r.mean_accuracy is not None else ""
        print_lines(console, f"x{f:g}: {acc}" + ", ".join(f"ppl {t} {v:.2f}" for t, v in r.perplexity.items()))
    console.print(f"written to {_slash(out)}")


def print_compare(console, result, out: str) -> None:
    print_lines(console, result.markdown(), f"written to {_slash(out)}")


class Progress:
    """How far a command is: ``log(msg)`` starts a step, ``step(done, total)`` (batched passes)
    or ``layer(i, n)`` (a streamed model's layers) says how far the step is. ``show(text)``
    draws it: on a terminal, a live status line with a bar, the percent and the time left in
    the step; off a terminal (logs, CI, nohup), ``Lines`` prints a line per step that lasts,
    and at most one progress line every ``every`` seconds."""

    def __init__(self):
        self.t0 = self.since = time.monotonic()
        self.msg, self.frac, self.by_step, self.runs = "", None, False, [0, 0, 0, 0]

    def __call__(self, msg: str) -> None:
        self.msg, self.frac, self.by_step, self.since = msg, None, False, time.monotonic()
        self.runs = [0, 0, 0, 0]  # groups done and in all of the step's finished runs; the current run's
        self.show(msg)

    def step(self, done: int, total: int) -> None:
        """A run of passes reports its groups: a step may hold several runs, counted together."""
        self.by_step = True
        base_done, base_total, last_done, last_total = self.runs
        if done <= last_done or total != last_total:  # another run in the same step
            base_done, base_total = base_done + last_total, base_total + last_total
        self.runs = [base_done, base_total, done, total]
        self._at((base_done + done) / max(base_total + total, 1))

    def layer(self, i: int, n: int) -> None:
        if not self.by_step:  # the step's own count, when it has one, says more than one pass's layers
            self._at(i / max(n, 1))

    def _at(self, frac: float) -> None:
        self.frac = frac
        self.show(f"{self.msg}  {self.where()}")

    def where(self) -> str:
        """``[######..............] 30%, about 12 s left``: the step's share done, and the time
        it will take at its pace so far."""
        done = round(20 * self.frac)
        spent = time.monotonic() - self.since
        left = spent * (1 - self.frac) / self.frac if self.frac > 0 else None
        eta = "" if left is None or self.frac >= 1 else f", about {_duration(left)} left"
        return f"[{'#' * done}{'.' * (20 - done)}] {100 * self.frac:.0f}%{eta}"

    def show(self, text: str) -> None:  # pragma: no cover - replaced below
        pass


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


class _Live(Progress):
    """On a terminal: rich's status line."""

    def __init__(self, status):
        super().__init__()
        self.status = status

    def show(self, text: str) -> None:
        self.status.update(text)


class Lines(Progress):
    """Off a terminal: ``superweight: [  41 s] zeroing 14 candidate(s) on real text  [####.....] 40%,
    about 12 s left`` on ``stream``, a line when a step has lasted ``first`` seconds (a quick
    step, or an error in the first seconds, prints nothing) and then at most every ``every``."""

    def __init__(self, stream, first: float = 2.0, every: float = 5.0):
        super().__init__()
        self.stream, self.first, self.every = stream, first, every
        self.last = -1e9
        self.pending: str | None = None

    def __call__(self, msg: str) -> None:
        self._flush()  # the step that ends, if it lasted and was not said yet
        super().__call__(msg)

    def show(self, text: str) -> None:
        now = time.monotonic()
        self.pending = text
        if now - self.since >= self.first and now - self.last >= self.every:
            self._flush()

    def _flush(self) -> None:
        now = time.monotonic()
        if self.pending is not None and now - self.since >= self.first:
            print(f"superweight: [{now - self.t0:5.0f} s] {self.pending}", file=self.stream, flush=True)
            self.last = now
        self.pending = None


@contextmanager
def status_line(console, enabled: bool, stream=None):
    """The command's ``log`` (a ``Progress``), whose batched passes report into it too: a
    live line on a terminal (``enabled``), else progress lines on ``stream`` (stderr):
    ``SUPERWEIGHT_PROGRESS=off`` prints none, ``all`` every update unthrottled."""
    import os
    import sys

    from superweight.probe.progress import reporting

    if not enabled:
        mode = os.environ.get("SUPERWEIGHT_PROGRESS", "").lower()
        log = Lines(stream or sys.stderr, *((1e18, 1e18) if mode in ("off", "0", "no") else
                                            (0.0, 0.0) if mode == "all" else ()))
        with reporting(log.step):
            yield log
        return
    with console.status("starting") as st:
        log = _Live(st)
        with reporting(log.step):
            yield log
