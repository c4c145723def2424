"""Errors with exit codes: user mistakes (bad input, bad model file) vs internal failures.

Every message says which file, what is wrong, and what to do. The CLI maps the class to an
exit code (also listed in the README):

====  =====================================================================
0     success
1     internal failure (a bug: please report it with the traceback)
2     bad input: images, folders, options (:class:`InputError`)
3     bad or missing model file: FLAME, embedding, texture (:class:`ModelFileError`)
4     the fit failed on valid input, e.g. no view with a face (:class:`FitError`)
130   interrupted (Ctrl-C / SIGTERM); the previous output is left untouched
====  =====================================================================
"""

from __future__ import annotations

from pathlib import Path


class FlamePriorError(Exception):
    """Base class of the errors the user can act on."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.path = Path(path) if path is not None else None
        self.hint = hint
        parts = [f"{self.path}: {message}" if self.path is not None else message]
        if hint:
            parts.append(hint)
        super().__init__(" ".join(parts))


class InputError(FlamePriorError):
    """Bad user input: an image, a folder, an option."""

    exit_code = 2


class ModelFileError(FlamePriorError):
    """A model file (FLAME, landmark embedding, texture space, cache) is missing, unsafe or malformed."""

    exit_code = 3


class UnsafePickleError(ModelFileError):
    """A pickle asked for a class or function outside the allow-list; nothing was executed."""


class FitError(FlamePriorError):
    """The fit cannot produce a trustworthy result on this (valid) input."""

    exit_code = 4
