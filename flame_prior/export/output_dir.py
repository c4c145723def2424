"""The output directory: checked before any work, written as a temporary directory beside it and
renamed into place only when complete, so an interrupted or failed run leaves the previous output
intact and no partial directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from flame_prior.errors import InputError, deferred_interrupts

__all__ = ["check_output_dir", "atomic_output_dir"]


def check_output_dir(output_dir: Path, data: Path | None, overwrite: bool) -> Path:
    """Refuse, before any work, an output directory the run could not or must not replace.

    Refused (:class:`InputError`, exit 2): it lies inside the input folder, or the input lies
    inside it (``--overwrite`` would delete the photos); it exists without ``--overwrite``; it
    exists and is neither empty nor a flame-prior output (no ``fit_summary.json``), so a typo
    cannot replace an unrelated folder; a directory cannot be created beside it (probed for real:
    ``os.access`` says yes to root, on read-only mounts and in ``/proc``).
    """
    out = Path(output_dir).expanduser().resolve()
    src = Path(data).expanduser().resolve() if data is not None else None
    if src is not None and src.is_dir() and (out == src or out.is_relative_to(src)):
        raise InputError("the output directory lies inside the input folder.", out,
                         hint="Choose an --output-dir outside the folder of images.")
    if src is not None and src.is_relative_to(out):
        raise InputError(f"the input {src} lies inside the output directory (replacing it would delete the input).",
                         out, hint="Choose an --output-dir that does not contain the images.")
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a directory.", out, hint="Choose another --output-dir.")
    if out.exists() and not overwrite:
        raise InputError("the output directory already exists.", out,
                         hint="Pass --overwrite to replace it, or choose another --output-dir.")
    if out.exists() and any(out.iterdir()) and not (out / "fit_summary.json").is_file():
        raise InputError("the output directory is not empty and holds no fit_summary.json: it does not look like a "
                         "flame-prior output, so --overwrite will not replace it.", out,
                         hint="Choose a new --output-dir (or empty this one yourself).")
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError("cannot create the output directory here: this path is a file, not a folder.", probe,
                         hint="Choose an --output-dir under a folder.")
    try:  # a real probe: os.access is not enough
        Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=probe)).rmdir()
    except OSError as err:
        raise InputError(f"cannot create the output directory here ({err.strerror or err}).", probe,
                         hint="Choose a writable --output-dir.") from None
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool):
    """Yield a temporary directory beside ``out``; rename it to ``out`` only if the block completes.

    The temporary directory, ``.<name>.partial-<pid>-*``, is removed when the block raises
    (including Ctrl-C / SIGTERM); one left by a killed run (its process gone) is removed by the
    next run into the same place. The final swap (previous output aside, new one in, old one
    deleted) runs with SIGINT/SIGTERM held back, so it is never cut in half. OS errors while
    writing (disk full, read-only) become :class:`InputError` naming the path.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f".{out.name}.partial-*-*"):
            pid = stale.name[len(f".{out.name}.partial-"):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = _mkdir_unique(out.parent, f".{out.name}.partial-{os.getpid()}-")
    except OSError as err:
        raise InputError(f"cannot create the output directory ({err.strerror or err}).", out.parent,
                         hint="Choose a writable --output-dir.") from None
    try:
        yield tmp
    except BaseException as exc:
        with deferred_interrupts(f"interrupted; the unfinished output was removed, {out} is as it was"):
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise InputError(f"cannot write the output ({exc.strerror}: {exc.filename}); nothing was written.",
                             out, hint="Free disk space or choose a writable --output-dir.") from exc
        raise
    with deferred_interrupts(f"interrupted after the output was complete: {out} is the new output"):
        if out.exists():
            if not overwrite:
                shutil.rmtree(tmp, ignore_errors=True)
                raise InputError("the output directory appeared while the fit ran.", out, hint="Pass --overwrite.")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            old.rmdir()
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _mkdir_unique(parent: Path, prefix: str) -> Path:
    """A new directory ``<parent>/<prefix><random>`` with the umask's mode.

    Not :func:`tempfile.mkdtemp`: its mode 0700 would survive the rename and hide the output from
    other users and services."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / prefix))
