"""Two ways to run :func:`~flame_prior.batch.worker.process_scene` over many scenes; only scheduling differs.

* :func:`run_local_pool` — worker processes on this machine (``spawn``), each started with the
  thread environment of :func:`~flame_prior.batch.worker.worker_environment`.
* :func:`run_ray` — Ray tasks, on a local Ray instance or a cluster (``--ray-address``); the same
  environment reaches Ray's worker processes through ``runtime_env``. A task whose worker dies is
  retried (``max_retries``), on any node; its scene's output is only ever renamed into place
  complete, so a dead worker leaves no half-written scene.

Both call ``on_record(record)`` in the parent as each scene finishes, and on KeyboardInterrupt
stop the workers at once (scenes in flight are dropped: only their temporary folders remain, which
the next write of that scene removes) and re-raise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from flame_prior.batch.records import write_record
from flame_prior.batch.worker import SceneJob, init_worker, process_scene, worker_environment

#: Attempts per scene when the worker process running it dies (killed, out of memory).
MAX_ATTEMPTS = 3


def _worker_died(job: SceneJob, why: str) -> dict:
    from pathlib import Path

    record = {"scene": job.name, "data": job.relative, "key": job.key, "run_id": job.run_id, "status": "failed",
              "error": f"the worker process running this scene died ({why}), {MAX_ATTEMPTS} times",
              "error_kind": "worker", "seconds": {}}
    write_record(Path(job.record_path), record)
    return record


def run_local_pool(jobs: Sequence[SceneJob], workers: int, threads: int, on_record: Callable[[dict], None]) -> None:
    """Run ``jobs`` on ``workers`` local processes with ``threads`` threads each."""
    env = worker_environment(threads)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the spawned workers before they import anything
    attempts = {job.name: 0 for job in jobs}
    queue = list(jobs)
    try:
        while queue:
            executor = ProcessPoolExecutor(max_workers=max(1, min(workers, len(queue))), mp_context=get_context("spawn"),
                                           initializer=init_worker, initargs=(threads,))
            try:
                futures = {executor.submit(process_scene, job): job for job in queue}
                queue = []
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        job = futures[f]
                        try:
                            on_record(f.result())
                        except BrokenProcessPool as err:  # a worker died: its scenes go round again
                            attempts[job.name] += 1
                            if attempts[job.name] >= MAX_ATTEMPTS:
                                on_record(_worker_died(job, str(err) or "process pool broken"))
                            else:
                                queue.append(job)
            except BaseException:
                _terminate(executor)
                raise
            executor.shutdown(wait=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stop the pool's processes now (ProcessPoolExecutor of Python 3.11 has no public way)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=10)


def run_ray(jobs: Sequence[SceneJob], workers: int, threads: int, on_record: Callable[[dict], None],
            address: str | None = None) -> None:
    """Run ``jobs`` as Ray tasks (``threads`` CPUs each). Without ``address`` a local Ray instance with
    ``workers * threads`` CPUs is started and stopped; with one, the cluster is joined."""
    try:
        import ray
    except ImportError:
        from flame_prior.errors import InputError

        raise InputError("--ray needs Ray, which is not installed.",
                         hint="Install the extra: pip install 'flame-prior[ray]'.") from None
    env = worker_environment(threads)
    kwargs = dict(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    if address is None:
        ray.init(num_cpus=workers * threads, **kwargs)
    else:
        ray.init(address=address, **kwargs)
    try:
        remote = ray.remote(num_cpus=threads, max_retries=MAX_ATTEMPTS - 1)(process_scene)
        refs = {remote.remote(job): job for job in jobs}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        on_record(ray.get(ref))
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.RayTaskError) as err:
                        on_record(_worker_died(refs[ref], type(err).__name__))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        ray.shutdown()
