"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""
from __future__ import annotations


def flag(name: str) -> str:
    """The command-line flag of a config field (``max_windows`` -> ``--max-windows``): the
    configs' errors name it, so the command line passes them on as they are, and a Python
    caller reads the field's name in it."""
    return "--" + name.replace("_", "-")


class SuperweightError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class UsageError(SuperweightError):
    """Bad arguments: coordinates out of range, empty prompt, unknown option values."""


class ModelLoadError(SuperweightError):
    """The model could not be found, read or built."""


class UnsupportedModelError(SuperweightError):
    """Not a causal LM, or an architecture no adapter knows."""


def first_line(e: BaseException) -> str:
    """A library's exception as one line a user can act on: a bare KeyError or TypeError
    says what was missing or wrong, a message cut at a colon keeps what follows, and
    torch's advice to set ``weights_only=False`` (which would run the file's code) is
    never passed on."""
    text = str(e).strip()
    if "weights_only" in text or "WeightsUnpickler" in text:
        return ("the .bin file holds Python objects besides tensors; superweight reads .bin files with "
                "weights_only=True and never runs their code (convert the checkpoint to safetensors)")
    if isinstance(e, KeyError):
        return f"a required entry is missing: {text}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    line = lines[0]
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {'; '.join(lines[1:4])}"
    if isinstance(e, (TypeError, AttributeError, IndexError, ValueError)) and not isinstance(e, UnicodeError):
        line = f"{type(e).__name__}: {line}"
    return line[:300]
