"""What each command prints: rich tables and plain lines. JSON comes from the result objects themselves."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

START = time.monotonic()  # when the command line began (cli.py imports this module first)

from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from superweight.numbers import fmt_g, fmt_interval, fmt_pct, fmt_signed_pct  # noqa: E402


def _add(t: Table, *cells) -> None:
    t.add_row(*(escape(str(c)) for c in cells))


def _short(param: str, coord) -> str:
    """``model.layers.11.mlp.down_proj.weight`` -> ``mlp.down_proj`` (the layer has its own column)."""
    tail = param.split(f".{coord.layer}.", 1)[-1].removesuffix(".weight")
    return tail if coord.expert is None else f"{tail}[{coord.expert}]"


def fmt_spread(e, cond: str) -> str:
    """A real-text effect with its interval over windows: ``x1.19 [1.17-1.21], KL 0.123 [0.118-0.130] (4 windows)``."""
    iv = e.text.interval(cond)
    return (f"x{fmt_interval(e.text.ppl_ratio[cond], *iv['ppl_ratio'])}, KL {fmt_interval(e.text.kl[cond], *iv['kl'])}"
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


def grade_label(f) -> str:
    """``super``, or ``strong, jointly with 9:507:868, 9:260:200`` for a weight graded with partners."""
    return f.grade + (f", jointly with {', '.join(map(str, f.jointly_with))}" if f.jointly_with else "")


def windows_used(result) -> dict[str, str]:
    """Per condition, the windows the graded weights' numbers rest on (``4``, or ``4-8`` when
    some were read further), as each one's interval in the JSON counts them."""
    graded = [f for f in result.super_weights + result.strong + result.uncertain if f.effect and f.effect.text]
    out = {}
    for c in ("bos", "mid"):
        ns = sorted({f.effect.text.interval(c)["windows"] for f in graded if c in f.effect.text.kls})
        if ns:
            out[c] = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return out


def text_header(tx: dict, result) -> str:
    """What the proof read: its text, window, first look and most windows, the windows the
    graded weights used per condition, and the intact perplexity over the windows read."""
    used = windows_used(result)
    read = tx["windows"]["bos"]
    return (f"real text: {tx['source']}" + (f" (seed {tx['seed']})" if tx.get("seed") else "")
            + f", windows of {tx['window']} tokens, {tx.get('first', read)} per condition first, doubled while a "
            f"grade is open, {tx.get('budget', read)} at most"
            + (f"; the graded weights used {', '.join(f'{c} {n}' for c, n in used.items())}" if used else "")
            + f"; bos = starting with {tx['start_token']} (intact perplexity {tx['ppl_intact']['bos']:.4g} over the "
            f"{read} read), mid = starting mid-text ({tx['ppl_intact']['mid']:.4g}); [lo-hi]: 95% bootstrap "
            "interval over windows")


def print_detect(console, result, agreement, index_id, verbose: bool = False) -> None:
    console.print(f"[bold]{escape(result.model)}[/bold]  ({result.architecture}, {result.num_layers} layers, "
                  f"{result.rounds} round(s), probe perplexity {result.probe_ppl:.4g})")
    if result.text:
        console.print(escape(text_header(result.text, result)))
    graded = result.super_weights + result.strong + result.uncertain
    if graded:
        joint = any(f.jointly_with for f in graded)
        t = Table(title="graded weights (row = output channel, col = input channel; zeroed alone on real text"
                        + (", or with its partners where jointly: the effect is the group's" if joint else "")
                        + ", next to the strongest control)", title_justify="left")
        for col in ("grade", "layer", "module", "row", "col", "value", "output act", "token", "bos", "mid", "matters in"):
            t.add_column(col, justify="left" if col in ("grade", "module", "bos", "mid", "matters in") else "right")
        for f in graded:
            e = f.effect
            _add(t, grade_label(f), str(f.coord.layer), _short(f.param, f.coord),
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


def audit_legend() -> tuple[str, ...]:
    """The audit's legend: its columns, its perplexity table, its verdict rule (audit.VERDICT_RULE)."""
    from superweight.audit import VERDICT_RULE

    return (
        "legend: original / quantized: the weight's value in each copy; change: (quantized - original) / |original|; "
        "block: the quantization block that holds it; rest of block / median block: relative RMS error of the other "
        "weights of its block, and of the matrix's median block; super act.: max |h| of its row's channel after its "
        "layer on the prompt, in the original, the quantized copy, and the quantized copy with the findings restored, "
        "and its change in the quantized copy",
        "perplexity: bos = windows from the start token, mid = mid-text, each with its 95% bootstrap interval over "
        "windows; loss recovered: the share of the quantization's log-perplexity loss that restoring the findings' "
        "original values removes ('-': no loss to recover)",
        f"verdict: {VERDICT_RULE}",
    )


def audit_rows(result) -> list[list[str]]:
    """One row per finding: its values and their change, its block and its errors, its super
    activation in the three models and its change, the verdict."""
    return [[str(f.coord), f.grade, fmt_g(f.original), fmt_g(f.quantized), fmt_signed_pct(f.value_change),
             f.block.kind, fmt_pct(f.block_error), fmt_pct(f.typical_block_error), fmt_g(f.peak.get("original")),
             fmt_g(f.peak.get("quantized")), fmt_signed_pct(f.activation_change), fmt_g(f.peak.get("restored")),
             f.verdict()] for f in result.findings]


AUDIT_HEAD = ["weight", "grade", "original", "quantized", "change", "block", "rest of block", "median block",
              "super act. orig", "quant", "change", "restored", "verdict"]


def audit_ppl_rows(result) -> list[list[str]]:
    """Per condition: each model's perplexity with its interval over windows, and the loss recovered."""
    out = []
    for c in ("bos", "mid"):
        cells = []
        for k in ("original", "quantized", "restored"):
            iv = result.ppl_interval.get(k, {}).get(c)
            cells.append(fmt_interval(result.ppl[k][c], *iv) if iv else fmt_g(result.ppl[k][c]))
        out.append([c, *cells, fmt_pct(result.recovered(c))])
    return out


def print_audit(console, result) -> None:
    t = Table(title=f"audit: {result.quantized}\n  against {result.original}", title_justify="left")
    for col in AUDIT_HEAD:
        t.add_column(col, justify="left" if col in ("weight", "grade", "block", "verdict") else "right")
    for row in audit_rows(result):
        _add(t, *row)
    console.print(t)
    tx = result.text
    p = Table(title=f"perplexity on {tx['source']} ({tx['windows']['bos']} window(s) of {tx['window']} tokens "
                    f"per condition; bos = from the start token, mid = mid-text)", title_justify="left")
    for col in ("condition", "original", "quantized", "quantized + findings restored", "loss recovered"):
        p.add_column(col, justify="left" if col == "condition" else "right")
    for row in audit_ppl_rows(result):
        _add(p, *row)
    console.print(p)
    print_lines(console, *audit_legend(), "", *result.conclusion())


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
    """``fmt``: the output's ``format.Format`` (its lines, and its loading line if it needs one)."""
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
    """How far a command is: ``log(msg)`` starts a step, ``step(done, total)`` (batched passes,
    a conversion's tensors) or ``layer(i, n)`` (a streamed model's layers) says how far it is,
    ``expect(total)`` declares a step's groups when they come in several runs. ``show(text)``
    draws it: on a terminal a live status line, off a terminal (``Lines``) a line per step and
    then one at least every ``every`` seconds (``tick``, called by a heartbeat thread), each
    with the step, its percent and the time left, or the time it has run when no count is known.

    A step's percent never goes down (issue 40): runs counted against a declared total add up;
    an undeclared second run is a new part of the step (``(part 2)``), with its own percent.
    ``clock``: the time source (a fake one in the tests)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.t0 = self.since = clock()
        self.msg, self.label, self.frac, self.by_step = "", "", None, False
        self.total, self.before, self.last, self.part = None, 0, (0, 0), 1

    def __call__(self, msg: str) -> None:
        self.msg = self.label = msg
        self.frac, self.by_step, self.since = None, False, self.clock()
        self.total, self.before, self.last, self.part = None, 0, (0, 0), 1
        self.show(msg)

    def expect(self, total: int) -> None:
        """The step's groups in all, over however many runs report them."""
        self.total, self.before, self.last = max(int(total), 1), 0, (0, 0)

    def step(self, done: int, total: int) -> None:
        """A run of passes reports its groups done of its own ``total``."""
        self.by_step = True
        last_done, last_total = self.last
        if last_total and (done < last_done or total != last_total or last_done == last_total):  # a new run
            self.before += last_total
            if self.total is None:  # undeclared: a new part of the step, with its own percent
                self.part += 1
                self.label, self.since, self.frac = f"{self.msg} (part {self.part})", self.clock(), None
        self.last = (done, total)
        if self.total is not None:
            self._at(min(1.0, (self.before + done) / self.total))
        else:
            self._at(done / max(total, 1))

    def layer(self, i: int, n: int) -> None:
        if not self.by_step:  # the step's own count, when it has one, says more than one pass's layers
            self._at(i / max(n, 1))

    def _at(self, frac: float) -> None:
        self.frac = frac if self.frac is None else max(self.frac, frac)
        self.show(self.text())

    def text(self) -> str:
        """The step as it stands now: its label and where it is."""
        return f"{self.label}  {self.where()}"

    def where(self) -> str:
        """``[######..............] 30%, about 12 s left``: the step's share done, and the time
        it will take at its pace so far; ``(running 12 s)`` while no count is known."""
        spent = self.clock() - self.since
        if self.frac is None:
            return f"(running {_duration(spent)})"
        done = round(20 * self.frac)
        left = spent * (1 - self.frac) / self.frac if self.frac > 0 else None
        eta = "" if left is None or self.frac >= 1 else f", about {_duration(left)} left"
        return f"[{'#' * done}{'.' * (20 - done)}] {100 * self.frac:.0f}%{eta}"

    def tick(self) -> None:
        """Called by the heartbeat (``_heartbeat``, four times a second): redraw the step as it stands now."""

    def close(self) -> None:
        """The work is over: nothing more is drawn."""
        self.msg = ""

    def show(self, text: str) -> None:  # pragma: no cover - replaced below
        pass


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


class _Live(Progress):
    """On a terminal: rich's status line, redrawn by the heartbeat (the time left moves)."""

    def __init__(self, status, clock=time.monotonic):
        super().__init__(clock)
        self.status = status

    def show(self, text: str) -> None:
        self.status.update(escape(text))

    def tick(self) -> None:
        if self.msg:
            self.status.update(escape(self.text()))


class Lines(Progress):
    """Off a terminal: ``superweight: [  41 s] zeroing 14 candidate(s) on real text  [####.....] 40%,
    about 12 s left`` on ``stream``: nothing in the run's first ``first`` seconds (a quick command,
    or an error in its first second, prints only its own lines), then each step's first line
    at once, and a line at most every ``every`` seconds as it moves and at least every
    ``every`` seconds while it runs (``tick``). ``t0``: when the run started (the process's
    start, ``START``), on ``clock``."""

    def __init__(self, stream, every: float = 5.0, clock=time.monotonic, quiet: bool = False,
                 first: float = 1.0, t0: float | None = None):
        super().__init__(clock)
        self.stream, self.every, self.quiet, self.first = stream, every, quiet, first
        if t0 is not None:
            self.t0 = t0
        self.printed = -1e18
        self.said = False  # the current step's first line is out

    def __call__(self, msg: str) -> None:
        super().__call__(msg)
        self.said = False
        self.tick()  # a new step is said at once, past the run's first second

    def show(self, text: str) -> None:
        if self.msg and self.said and self.clock() - self.printed >= self.every:
            self._print(text)

    def tick(self) -> None:
        now = self.clock()
        if self.msg and now - self.t0 >= self.first and (not self.said or now - self.printed >= self.every):
            self._print(self.text() if self.said or self.frac is not None or now - self.since >= 1 else self.label)

    def _print(self, text: str) -> None:
        now = self.clock()
        self.printed, self.said = now, True
        if not self.quiet:
            print(f"superweight: [{now - self.t0:5.0f} s] {text}", file=self.stream, flush=True)


@contextmanager
def _heartbeat(log: Progress, period: float = 0.25):
    """A daemon thread that calls ``log.tick()`` every ``period`` seconds while the block runs."""
    import threading

    stop = threading.Event()

    def beat():
        while not stop.wait(period):
            try:
                log.tick()
            except Exception:  # noqa: BLE001 - a closed stream at exit must not kill the run
                return

    t = threading.Thread(target=beat, name="superweight-progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=2 * period)


QUIET = ("off", "0", "no", "false", "none")


@contextmanager
def status_line(console, enabled: bool, stream=None, start: str = "starting"):
    """The command's ``log`` (a ``Progress``), whose batched passes report into it too: a
    live line on a terminal (``enabled``), else progress lines on ``stream`` (stderr), the
    first (``start``) at once: ``SUPERWEIGHT_PROGRESS=off`` (or 0, no, false, none) prints
    none, ``all`` every update unthrottled."""
    import os
    import sys

    from superweight.progress import reporting

    if not enabled:
        mode = os.environ.get("SUPERWEIGHT_PROGRESS", "").strip().lower()
        log = Lines(stream or sys.stderr, every=0.0 if mode == "all" else 5.0, quiet=mode in QUIET,
                    first=0.0 if mode == "all" else 1.0, t0=START)
        log(start)
        with reporting(log), _heartbeat(log):
            yield log
        return
    with console.status(escape(start)) as st:
        log = _Live(st)
        log(start)
        with reporting(log), _heartbeat(log):
            yield log
