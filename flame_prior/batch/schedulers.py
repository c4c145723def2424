"""Two ways to run :func:`~flame_prior.batch.worker.process_scene` over many scenes; only scheduling differs.

* :func:`run_local_pool` — worker processes on this machine (``spawn``), each started with the
  thread environment of :func:`~flame_prior.batch.worker.worker_environment`.
* :func:`run_ray` — long-lived Ray actors, on a local Ray instance or a cluster (``--ray-address``),
  each a worker process with the same thread environment (inherited from the local raylet, or
  through ``runtime_env`` on a cluster), given one scene at a time by the driver.

Both warm their workers up as they start (:func:`~flame_prior.batch.worker.warm_worker`: models,
detector, torch's one-time set-up) and both retry the scene of a worker that died on another
worker, at most :data:`MAX_ATTEMPTS` times in all (the record's ``attempt`` says which run of it
finished); a scene's output is only ever renamed into place complete, so a dead worker leaves no
half-written scene.

Both call ``on_record(record)`` in the parent as each scene finishes, and on KeyboardInterrupt
stop the workers at once (scenes in flight are dropped: only their temporary folders remain, which
the next write of that scene removes) and re-raise.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from flame_prior.batch.records import write_record
from flame_prior.batch.worker import SceneJob, init_worker, process_scene, worker_environment

#: Attempts per scene when the worker process running it dies (killed, out of memory).
MAX_ATTEMPTS = 3


def _worker_died(job: SceneJob, why: str, error: str | None = None) -> dict:
    """Record ``job`` as failed because its worker died (``why``), or with ``error`` as its error."""
    from pathlib import Path

    record = {"scene": job.name, "data": job.relative, "key": job.key, "run_id": job.run_id, "status": "failed",
              "error": error or f"the worker process running this scene died ({why})", "attempt": job.attempt,
              "error_kind": "internal" if error else "worker", "seconds": {}}
    write_record(Path(job.record_path), record)
    return record


def run_local_pool(jobs: Sequence[SceneJob], workers: int, threads: int, on_record: Callable[[dict], None]) -> None:
    """Run ``jobs`` on ``workers`` local processes with ``threads`` threads each.

    The pool holds one scene more than it has workers (so that no worker waits for its next scene);
    when a worker dies the pool breaks, and only the scenes it held go round again, on a new pool."""
    env = worker_environment(threads)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the spawned workers before they import anything
    queue = list(reversed(jobs))  # pop() from the end: first scene first
    try:
        while queue:
            executor = ProcessPoolExecutor(max_workers=max(1, min(workers, len(queue))), mp_context=get_context("spawn"),
                                           initializer=init_worker, initargs=(threads, queue[-1].config))
            try:
                futures: dict = {}
                broken = False
                while queue or futures:
                    while queue and not broken and len(futures) <= workers:
                        job = queue.pop()
                        futures[executor.submit(process_scene, job)] = job
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in done:
                        job = futures.pop(f)
                        try:
                            on_record(f.result())
                        except BrokenProcessPool as err:  # a worker died: the scenes it held go round again
                            broken = True
                            if job.attempt >= MAX_ATTEMPTS:
                                on_record(_worker_died(job, f"{err or 'process pool broken'}; {MAX_ATTEMPTS} times"))
                            else:
                                queue.append(dataclasses.replace(job, attempt=job.attempt + 1))
                    if broken and not futures:
                        break
            finally:
                # Every scene it was given has finished (or the run stops): its workers hold nothing, so
                # they are stopped rather than left to unload torch and MediaPipe while the run waits.
                _terminate(executor)
    finally:
        _restore_environment(saved)


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
    """Run ``jobs`` on Ray: ``workers`` long-lived actors of ``threads`` CPUs each (``workers`` 0: as many
    as the cluster's CPUs hold), each calling :func:`process_scene` on one scene at a time.

    Without ``address`` a local Ray instance with ``workers * threads`` CPUs is started and stopped;
    with one, the cluster is joined (and left running). An actor whose process dies (killed, out of
    memory, node lost) is replaced by a new one wherever the cluster has room, and the scene it was
    running goes to the next free actor (at most :data:`MAX_ATTEMPTS` times in all)."""
    try:
        import ray
    except ImportError:
        from flame_prior.errors import InputError

        raise InputError("--ray needs Ray, which is not installed.",
                         hint="Install the extra: pip install 'flame-prior[ray]'.") from None
    env = worker_environment(threads)
    if address is None:
        # Local Ray: its raylet, and so every worker process it starts, inherits this environment. Ray
        # starts one worker per CPU while it starts up; actors without a runtime_env of their own take
        # over these very processes instead of starting new ones (seconds each on a busy machine).
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            ray.init(num_cpus=workers * threads, object_store_memory=_RAY_OBJECT_STORE_BYTES, **_RAY_INIT)
        finally:
            _restore_environment(saved)
    else:  # a cluster's nodes have their own environment: the thread caps travel with the job
        ray.init(address=address, runtime_env={"env_vars": env}, **_RAY_INIT)
    try:
        if workers <= 0:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        _RayPool(ray, threads, jobs[0].config).run(list(jobs), workers, on_record)
    finally:
        ray.shutdown()


#: ray.init settings of a batch: no dashboard, worker logs stay in Ray's log folder (a scene's
#: errors are in its record), Ray's own messages only from warnings up.
_RAY_INIT = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="warning")
#: Scenes an actor holds: the one it runs and the next (as the local pool holds one more than its workers).
_RAY_SCENES_PER_ACTOR = 2
#: Records and jobs are a few kB: a small object store (Ray's minimum is 75 MB) keeps local start-up light.
_RAY_OBJECT_STORE_BYTES = 100 * 1024**2


def _restore_environment(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class _SceneActor:
    """A Ray actor: one worker process that keeps its models and detector (:func:`init_worker` with a
    warm-up) and runs :func:`process_scene` on the scenes it is given, one at a time."""

    def __init__(self, threads: int, warm_config) -> None:
        init_worker(threads, warm_config)

    def ready(self) -> bool:
        return True

    def process(self, job: SceneJob) -> dict:
        return process_scene(job)


class _RayPool:
    """The driver's side of :func:`run_ray`: keeps each live actor :data:`_RAY_SCENES_PER_ACTOR` scenes
    ahead (it runs them in order, so it never waits for the driver between two scenes), replaces
    dead actors and gives their scenes to the others."""

    def __init__(self, ray, threads: int, warm_config) -> None:
        self.ray = ray
        self.actor_class = ray.remote(num_cpus=threads, max_restarts=0, max_task_retries=0)(_SceneActor)
        self.threads, self.warm_config = threads, warm_config
        self.calls: dict = {}  # object ref -> (actor, job or None for the actor's ready())

    def _start_actor(self) -> None:
        actor = self.actor_class.remote(self.threads, self.warm_config)
        self.calls[actor.ready.remote()] = (actor, None)

    def run(self, queue: list[SceneJob], workers: int, on_record: Callable[[dict], None]) -> None:
        ray = self.ray
        queue.reverse()  # pop() from the end: first scene first
        # Actors that die before they run a scene (at start-up) are replaced too, but not for ever.
        deaths_left = MAX_ATTEMPTS * workers
        last_death = ""
        dead: list = []  # handles of the actors found dead (kept: identity, not id(), which may be reused)

        def give(actor) -> None:
            held = sum(1 for a, j in self.calls.values() if a is actor and j is not None)
            for _ in range(min(len(queue), _RAY_SCENES_PER_ACTOR - held)):
                job = queue.pop()
                self.calls[actor.process.remote(job)] = (actor, job)

        try:
            for _ in range(workers):
                self._start_actor()
            while self.calls and (queue or any(job is not None for _, job in self.calls.values())):
                done, _ = ray.wait(list(self.calls), num_returns=1)
                actor, job = self.calls.pop(done[0])
                try:
                    record = ray.get(done[0])
                except ray.exceptions.RayActorError as err:  # the actor's process or node died
                    if job is not None and job.attempt >= MAX_ATTEMPTS:
                        on_record(_worker_died(job, f"{type(err).__name__}, {MAX_ATTEMPTS} times"))
                    elif job is not None:
                        queue.append(dataclasses.replace(job, attempt=job.attempt + 1))
                    if not any(actor is d for d in dead):  # its other calls fail too: one replacement per actor
                        dead.append(actor)
                        ray.kill(actor, no_restart=True)
                        if job is None:
                            deaths_left -= 1
                            last_death = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
                        if deaths_left > 0:
                            self._start_actor()
                    continue
                except ray.exceptions.RayTaskError as err:  # raised past process_scene (which records errors)
                    if job is None:
                        raise
                    cause = getattr(err, "cause", None) or err
                    record = _worker_died(job, "", error=f"{type(cause).__name__}: {str(cause)[:300]}")
                if job is not None:
                    on_record(record)
                give(actor)
            for job in reversed(queue):  # no actor could be kept alive
                on_record(_worker_died(job, f"no Ray worker stayed alive: {MAX_ATTEMPTS * workers} died at start-up; "
                                            f"the last: {last_death}"))
        finally:  # also on Ctrl-C: scenes in flight are dropped (only their temporary folders remain)
            for actor, _ in list(self.calls.values()):
                ray.kill(actor, no_restart=True)
