"""Where the passes say how far they are: ``reporting(log)`` around a command's work (``log``
a ``console.Progress``, or any ``fn(done, total)``), and every ``passes.run`` inside it calls
``progress_of()(groups done, groups in all)`` after each batched pass; code that runs several
passes as one step declares their groups first with ``expect(total)``, so the step's percent
adds up instead of starting again. No torch here: the command line sets it up before it knows
whether it will load a model."""
from __future__ import annotations

import contextvars
from contextlib import contextmanager

_PROGRESS: contextvars.ContextVar = contextvars.ContextVar("superweight_progress", default=None)


@contextmanager
def reporting(log):
    token = _PROGRESS.set(log)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_of():
    """The reporter in effect, ``fn(done, total)``, or one that does nothing."""
    log = _PROGRESS.get()
    if log is None:
        return lambda done, total: None
    return getattr(log, "step", log)


def expect(total: int) -> None:
    """Declare the current step's groups in all (a no-op without a reporter that counts)."""
    log = _PROGRESS.get()
    if log is not None and hasattr(log, "expect"):
        log.expect(total)
