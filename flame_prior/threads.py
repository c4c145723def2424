"""Thread policy: OpenMP's wait policy, and torch's thread count per fitting stage.

Why a policy at all: torch's CPU kernels run on an OpenMP thread pool (libgomp), whose idle
threads by default *spin* for a while before they sleep. On a machine where another process keeps
a core busy (a laptop, ``ns-train`` beside us, other workers) a spinning thread steals that core's
time slices, and every parallel region waits for the thread that was descheduled: measured on 2
cores with one busy neighbour, the 8-view photometric stage took 370 s with 2 spinning threads
against 32 s with one thread (issue 16).

The policy, in one place:

1. **Wait policy.** :func:`set_wait_policy` puts ``OMP_WAIT_POLICY=PASSIVE`` in the environment
   unless the user set it. libgomp reads it once, when it loads, i.e. when torch is first
   imported — so every entry calls it first: the CLI (:func:`flame_prior.cli.entrypoint`), the
   nerfstudio processor (``nerfstudio_plugin``) and the batch workers (:func:`thread_environment`
   given at process creation).
2. **Threads per stage** (:func:`stage_threads`). The rigid stage (a few parameters per view, small
   matrices) runs on one thread: its parallel regions are too small to pay for waking threads.
   The landmark and photometric stages (rendering, texture sampling, their backward, the
   Jacobian products of all views) use :func:`compute_threads`: the cores this process may run on
   less the cores other processes keep busy, measured from ``/proc/stat`` over 0.1 s once when the
   fit starts (at least 1; the stages of one fit share it: measuring at each stage cost 0.3-0.5 s
   of waiting per fit). So a quiet machine gets every core, and a busy one never has more
   threads than free cores, which is what makes a neighbour cost only its own share.
3. **The user decides** when they say so: ``FLAME_PRIOR_THREADS=N`` (a batch worker gets its
   ``--threads-per-worker`` this way) fixes the count of the parallel stages and turns the
   measurement off; ``OMP_NUM_THREADS`` or a caller's ``torch.set_num_threads`` caps it (so
   ``OMP_NUM_THREADS=1`` still gives the bit-for-bit repeatable one-thread fit).

4. **Memory.** :func:`set_wait_policy` also caps glibc's malloc arenas at :data:`MALLOC_ARENAS`
   (:func:`limit_malloc_arenas`): threads otherwise each keep an arena of freed memory.
5. **Exports** (:func:`parallel_map`): images, masks and report pictures are encoded on a pool of
   Python threads, one per core, with torch at one thread inside (PIL, cv2 and torch release
   the GIL while they work).

This module imports nothing heavy (torch is imported inside :func:`torch_threads` only).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["ENV_THREADS", "set_wait_policy", "limit_malloc_arenas", "thread_environment", "available_cores", "busy_cores_of_others",
           "compute_threads", "torch_threads", "stage_threads", "parallel_map", "parallel_imap", "SINGLE_THREAD_STAGES"]

T = TypeVar("T")
R = TypeVar("R")

#: Fixes the thread count of the parallel stages (no measuring of other processes' load).
ENV_THREADS = "FLAME_PRIOR_THREADS"

#: Variables that cap the thread pools of OpenMP and BLAS libraries.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")

#: Stages whose work is too small to share between threads.
SINGLE_THREAD_STAGES = frozenset({"rigid"})


def set_wait_policy(environ: MutableMapping[str, str] | None = None) -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` unless already set; True when it can still take effect.

    It takes effect only if torch (hence libgomp) is not loaded yet in this process; the return value
    says so, for the caller's tests and logs. A user's own ``OMP_WAIT_POLICY`` is left alone."""
    import sys

    env = os.environ if environ is None else environ
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning on a shared core
    if environ is None:
        limit_malloc_arenas()  # before torch starts its threads (each would get an arena)
    return "torch" not in sys.modules


#: glibc malloc arenas per process (``M_ARENA_MAX``); glibc's default is 8 per core.
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (unless ``MALLOC_ARENA_MAX`` is set); True when applied.

    Every thread that allocates (OpenMP's, the export's pool) otherwise gets an arena of its own, and
    memory freed in one is kept there: measured on the 30-view export, 2 arenas kept the peak
    resident memory 170 MB lower at the same speed. A no-op off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):
        return False


def thread_environment(threads: int) -> dict[str, str]:
    """The environment of a child process (a batch worker) that runs ``threads`` threads: thread
    caps for OpenMP/BLAS and the passive wait (given at process creation, before any import)."""
    env = {k: str(threads) for k in THREAD_VARS}
    env[ENV_THREADS] = str(threads)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)
    return env


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; cgroup quotas are not read)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_times(cpus: set[int] | None) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over ``cpus`` (all when None), from ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [float(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        total += sum(values)
        busy += sum(values) - idle
    return busy, total


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def busy_cores_of_others(window_s: float = 0.1) -> float | None:
    """How many of this process's cores other processes kept busy over ``window_s`` (None: unknown).

    Machine-wide busy time on the cores of our affinity, minus our own CPU time in the window."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    before, own0 = _cpu_times(cpus), _own_cpu_seconds()
    if before is None:
        return None
    time.sleep(window_s)
    after, own1 = _cpu_times(cpus), _own_cpu_seconds()
    if after is None or after[1] <= before[1]:
        return None
    busy_s = (after[0] - before[0]) / tick
    elapsed_s = (after[1] - before[1]) / tick / max(1, len(cpus or ()) or available_cores())
    others_s = max(0.0, busy_s - (own1 - own0))
    return others_s / max(elapsed_s, 1e-6)


def _user_threads() -> int | None:
    value = os.environ.get(ENV_THREADS, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def compute_threads(cap: int | None = None) -> int:
    """Threads of a parallel stage: ``FLAME_PRIOR_THREADS`` when set, else the available cores less
    those other processes keep busy (rounded to the nearest core), at most ``cap``, at least 1."""
    fixed = _user_threads()
    if fixed is not None:
        return fixed
    cores = min(available_cores(), cap or available_cores())
    others = busy_cores_of_others()
    if others is None:
        return cores
    return max(1, min(cores, round(available_cores() - others)))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """torch's intra-op thread count set to ``threads`` inside the block (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def stage_threads(stage: str, parallel: int | None = None) -> Iterator[int]:
    """torch's intra-op thread count for one fitting stage (restored afterwards); yields the count.

    ``rigid`` (:data:`SINGLE_THREAD_STAGES`) runs on 1 thread, the other stages on ``parallel``
    (:func:`compute_threads`, measured once by the caller for all the stages of a fit; None: measured
    now), capped by torch's count on entry (``OMP_NUM_THREADS``, or the caller's
    ``torch.set_num_threads``: a caller that asked for 1 thread, for repeatable runs, keeps 1)."""
    import torch

    cap = torch.get_num_threads()
    if stage in SINGLE_THREAD_STAGES:
        n = 1
    else:
        n = compute_threads(cap) if parallel is None else max(1, min(parallel, cap))
    with torch_threads(n) as n:
        yield n


def parallel_imap(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``fn(x)`` for each item on a pool of Python threads, yielded in the items' order as they
    finish (a result is held only until the caller takes it; the first error is raised).

    For work that releases the GIL: image encoding (PIL, cv2), file writes, torch ops. ``workers``:
    default one per available core (these threads block, they never spin, so a busy core only
    time-slices them). Each torch op inside runs on one thread (:func:`torch_threads`), so the pool
    is the only parallelism; without torch loaded (image decoding at intake) torch is left unloaded."""
    items = list(items)
    workers = min(len(items), workers or available_cores())
    if workers <= 1:
        yield from (fn(x) for x in items)
        return
    one_torch_thread = torch_threads(1) if "torch" in sys.modules else contextlib.nullcontext()
    with one_torch_thread, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flame-prior") as pool:
        yield from pool.map(fn, items)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on a pool of threads: :func:`parallel_imap`, collected."""
    return list(parallel_imap(fn, items, workers))
