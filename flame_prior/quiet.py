"""Silence third-party start-up chatter written straight to the process's stderr by native code.

MediaPipe's TensorFlow Lite prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` (and
glog lines such as ``W0000 00:00:…``) from C++, below Python's ``sys.stderr``, so Python's logging
cannot filter it. :func:`native_chatter_filtered` points file descriptor 2 at a temporary file for
the duration of a block, while Python's own ``sys.stderr`` (rich's console, the progress lines) keeps
writing to the real stderr through a duplicate of the original descriptor. After the block, the
captured lines that are not known chatter (errors, anything unexpected) are written out.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator

#: Lines dropped: TensorFlow Lite's INFO lines and glog INFO/WARNING lines (``I0000 …``, ``W0000 …``).
CHATTER = re.compile(r"^(INFO: |[IW]\d{4} \d)")


@contextlib.contextmanager
def native_chatter_filtered(enabled: bool = True) -> Iterator[None]:
    """Drop native start-up chatter written to fd 2 inside the block (see the module docstring)."""
    if not enabled:
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a file (captured, a notebook)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    capture = tempfile.TemporaryFile(mode="w+b")
    python_stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), encoding=python_stderr.encoding,
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    os.dup2(capture.fileno(), fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)
        replacement, sys.stderr = sys.stderr, python_stderr
        replacement.close()
        capture.seek(0)
        kept = [line for line in capture.read().decode(errors="replace").splitlines() if not CHATTER.match(line)]
        capture.close()
        if kept:
            print("\n".join(kept), file=sys.stderr, flush=True)
