"""Progress of long stages: rich bars on a terminal, plain lines in a log file or a pipe.

:func:`make_progress` returns a ``rich.progress.Progress`` when the console is a terminal and a
:class:`LineProgress` otherwise. Both take the same calls (``add_task``, ``advance``, ``update``,
``remove_task``, used as a context manager), so the stages report the same way to either. Rich
bars redraw in place, which a log file cannot show (they would be dumped once, at the end);
:class:`LineProgress` prints one line when a stage starts, one when it ends (with the elapsed
time), and, while a stage runs, one line every ``interval`` seconds with the count done — from a
background thread, so that a stage stuck inside one long call (COLMAP's matching) still shows it
is alive.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def make_console() -> Console:
    """flame-prior's console, on stderr. Off a terminal, lines are not hard-wrapped at 80 columns
    (a log file has no width: a wrapped line would break a figure in two)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, soft_wrap=True, width=200)
    return console


def make_progress(console: Console) -> Progress | LineProgress:
    """Bars on a terminal, :class:`LineProgress` otherwise."""
    if console.is_terminal:
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    return LineProgress(console)


@contextlib.contextmanager
def stage(progress, description: str) -> Iterator[None]:
    """Report a stage that has no count of its own (a start line and an end line with its time)."""
    if progress is None:
        yield
        return
    task = progress.add_task(description, total=None)
    yield
    progress.update(task, total=1, completed=1)


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    started: float
    last_line: float
    finished: bool = False


class LineProgress:
    """Plain-line progress for a console that is not a terminal (see the module docstring).

    Lines look like ``[  12.3 s] fit: photometric: 40/100, 5.1 s`` — the time since the run's
    progress began, the stage, the count done and the stage's own elapsed time.
    """

    def __init__(self, console: Console, interval: float = 10.0):
        self.console = console
        self.interval = interval
        self._tasks: dict[int, _Task] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()

    # --- rich.progress.Progress's calls -------------------------------------------------------

    def __enter__(self) -> LineProgress:
        self._t0 = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="flame-prior-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for task in self._tasks.values():
                if not task.finished:
                    self._finish(task, "stopped at")

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_) -> int:
        with self._lock:
            now = time.perf_counter()
            task_id = len(self._tasks)
            task = _Task(description, total, completed, now, now)
            self._tasks[task_id] = task
            self._line(f"{description}: started" + (f" ({_count(total)} to do)" if total and total > 1 else ""))
            self._check_done(task)
            return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, description: str | None = None, advance: float | None = None,
               completed: float | None = None, total: float | None = None, **_) -> None:
        with self._lock:
            task = self._tasks[task_id]
            if task.finished:
                return
            if total is not None:
                task.total = total
            if completed is not None:
                task.completed = completed
            if advance:
                task.completed += advance
            if description is not None and description != task.description:
                task.description = description
                self._line(f"{description}: {self._status(task)}")
                task.last_line = time.perf_counter()
            self._check_done(task)

    def remove_task(self, task_id: int) -> None:
        with self._lock:
            task = self._tasks[task_id]
            if not task.finished:
                self._finish(task, "done")

    # --- internals ----------------------------------------------------------------------------

    def _status(self, task: _Task) -> str:
        elapsed = f"{time.perf_counter() - task.started:.1f} s"
        if task.total is None:
            return f"{_count(task.completed)} done, {elapsed}" if task.completed else f"running, {elapsed}"
        return f"{_count(task.completed)}/{_count(task.total)}, {elapsed}"

    def _check_done(self, task: _Task) -> None:
        if task.total is not None and task.completed >= task.total:
            self._finish(task, "done")

    def _finish(self, task: _Task, word: str) -> None:
        task.finished = True
        elapsed = time.perf_counter() - task.started
        if word == "done":
            count = f" {_count(task.completed)}/{_count(task.total)}" if task.total and task.total > 1 else ""
            count = f" ({_count(task.completed)} done)" if task.total is None and task.completed else count
            self._line(f"{task.description}: done{count} in {elapsed:.1f} s")
        elif task.total is None:
            self._line(f"{task.description}: stopped after {elapsed:.1f} s")
        else:
            self._line(f"{task.description}: {word} {self._status(task)}")

    def _line(self, text: str) -> None:
        self.console.print(f"[{time.perf_counter() - self._t0:7.1f} s] {text}", markup=False, highlight=False,
                           soft_wrap=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 4)):
            with self._lock:
                now = time.perf_counter()
                running = [t for t in self._tasks.values() if not t.finished]
                # Only the innermost stage (started last) reports: "fit" is quiet while "fit: landmarks" runs.
                if running and now - max(t.last_line for t in running) >= self.interval:
                    task = running[-1]
                    self._line(f"{task.description}: {self._status(task)}")
                    for t in running:
                        t.last_line = now


def _count(x: float | None) -> str:
    return "?" if x is None else f"{x:g}"
