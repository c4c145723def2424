"""Errors with exit codes: user mistakes (bad input, bad model file) vs internal failures.

Every message says which file, what is wrong, and what to do. The CLI maps the class to an
exit code (also listed in the README):

====  =====================================================================
0     success
1     internal failure (a bug: please report it with the traceback)
2     bad input: images, folders, options (:class:`InputError`)
3     bad or missing model file: FLAME, embedding, texture (:class:`ModelFileError`)
4     the fit failed on valid input, e.g. no view with a face (:class:`FitError`)
130   interrupted (Ctrl-C / SIGTERM, :class:`Interrupted`); the previous output is left untouched
====  =====================================================================
"""

from __future__ import annotations

import contextlib
import signal
import threading
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


def check_option(ok: bool, option: str, value, must: str) -> None:
    """Refuse an option value before any work: :class:`InputError` (exit 2), one line naming the
    option as the command line spells it, e.g. ``--intrinsics.focal-px must be positive (got -3.0).``"""
    if not ok:
        raise InputError(f"--{option.replace('_', '-')} must be {must} (got {value!r}).")


class ModelFileError(FlamePriorError):
    """A model file (FLAME, landmark embedding, texture space, cache) is missing, unsafe or malformed."""

    exit_code = 3


class UnsafePickleError(ModelFileError):
    """A pickle asked for a class or function outside the allow-list; nothing was executed."""


class FitError(FlamePriorError):
    """The fit cannot produce a trustworthy result on this (valid) input."""

    exit_code = 4


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (exit code 130). The message says what became of the output."""

    exit_code = 130

    def __init__(self, message: str = "interrupted: no output was written (a previous output is left as it was)"):
        super().__init__(message)


def signal_handler(signum, frame) -> None:
    """Installed for SIGINT and SIGTERM by :func:`install_signal_handlers`: both unwind the run like
    Ctrl-C (exit 130)."""
    raise Interrupted()


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM both unwind like Ctrl-C, so the temporary output is removed (exit 130).
    Called by every front end (the CLI, the nerfstudio processor) before the run."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal_handler)


@contextlib.contextmanager
def deferred_interrupts(message: str = "interrupted after the step that writes the output had finished"):
    """Hold SIGINT and SIGTERM back while the block runs (renaming a finished output into place).

    A signal that arrives meanwhile is only recorded; when the block ends it raises
    :class:`Interrupted` with ``message`` (which says what the block completed), so a rename is
    never cut in half. Python runs signal handlers in the main thread only, whichever thread the
    signal hit, so swapping the handlers is enough; outside the main thread this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    if caught:
        raise Interrupted(message)
