"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class SuperweightError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class UsageError(SuperweightError):
    """Bad arguments: coordinates out of range, empty prompt, unknown option values."""


class ModelLoadError(SuperweightError):
    """The model could not be found, read or built."""


class UnsupportedModelError(SuperweightError):
    """Not a causal LM, or an architecture no adapter knows."""
