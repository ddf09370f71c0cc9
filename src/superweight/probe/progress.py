"""Where the passes say how far they are: ``reporting(fn)`` around a command's work, and every
``passes.run`` inside it calls ``fn(groups done, groups in all)`` after each batched pass.
No torch here: the command line sets it up before it knows whether it will load a model."""
from __future__ import annotations

import contextvars
from contextlib import contextmanager

_PROGRESS: contextvars.ContextVar = contextvars.ContextVar("superweight_progress", default=None)


@contextmanager
def reporting(fn):
    token = _PROGRESS.set(fn)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_of():
    """The reporter in effect, or one that does nothing."""
    return _PROGRESS.get() or (lambda done, total: None)
