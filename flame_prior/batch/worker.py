"""The per-scene function of a batch, and the set-up of the processes that run it.

:func:`process_scene` is the one function every scheduler calls (the local process pool and Ray
alike): it fits one scene with the pipeline's own steps (``prepare_inputs`` and ``fit_static`` of
:mod:`flame_prior.pipeline`, as ``fit`` does), writes the scene's output with the pipeline's writer
(``write_scene``: a temporary folder renamed into place), then the scene's record, and returns the record. Any error of the
scene becomes a ``failed`` record: one scene never stops the others.

Threads: N workers on N cores must not fight, and torch's OpenMP threads spin while they wait.
Each worker is started with :func:`worker_environment` in its environment (``OMP_NUM_THREADS``,
``MKL_NUM_THREADS``, ``OMP_WAIT_POLICY=PASSIVE``, ...), which OpenMP reads when torch is first
imported — so the environment is given at process creation, before any import — and
:func:`init_worker` then sets torch's own thread counts and warms the worker up
(:func:`warm_worker`): models (FLAME, embedding, texture) and the detector load once per worker
process, as it starts, and stay for its later scenes; detections and COLMAP results are cached on
disk, shared by all workers.

This module imports neither torch nor the pipeline at import time.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from flame_prior.batch.records import (RECORD_IN_SCENE, read_record, record_json, scene_record, write_bytes_atomic,
                                       write_record)
from flame_prior.threads import thread_environment

def worker_environment(threads: int) -> dict[str, str]:
    """Environment of a worker process with ``threads`` threads: thread caps and a passive OpenMP wait
    (the thread policy: :mod:`flame_prior.threads`)."""
    return thread_environment(threads)


def init_worker(threads: int, warm_config=None) -> None:
    """Run first in each worker process: thread counts, and Ctrl-C left to the parent (which stops the
    run and terminates the workers; a scene cut off leaves only a temporary folder, removed later).
    With ``warm_config`` (a scene's FitConfig) also :func:`warm_worker`."""
    for k, v in worker_environment(threads).items():
        os.environ.setdefault(k, v)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (a reused Ray worker)
        pass
    _THREADS_SET.append(threads)
    if warm_config is not None:
        warm_worker(warm_config)


def warm_worker(config) -> None:
    """Pay a worker's one-time costs before its first scene: the models (FLAME, embedding, texture)
    and the detector (importing MediaPipe, building its graph), which the first fit would otherwise
    pay. Started as soon as the worker is, this runs while the parent is still checking scenes (and the workers warm up in parallel). An error here is left for the scene to
    report: :func:`process_scene` meets it again and records it against the scene."""
    try:
        _assets(config)
        _detector(config)
    except Exception:  # noqa: BLE001 — the first scene records it, with its file and hint
        pass


@dataclass
class SceneJob:
    """Everything a worker needs for one scene (picklable; paths are as the worker sees them)."""

    name: str
    relative: str
    config: object  # flame_prior.config.FitConfig of this scene (preset applied)
    key: str
    run_id: str
    scene_dir: str | None  # the scene's full output; None for --scene-outputs record
    record_path: str
    thumb_path: str
    threads: int = 1
    attempt: int = 1  # 2, 3: the scene is run again because the worker running it died


# Per worker process: loaded assets and open detectors, reused across scenes; the threads set.
_ASSETS: dict = {}
_DETECTORS: dict = {}
_THREADS_SET: list[int] = []


def _assets(config):
    import torch

    from flame_prior.fit import resolve_device
    from flame_prior.flame.assets import load_assets

    device = resolve_device(config.fitter.device)
    key = (tuple(sorted((k, str(v)) for k, v in config.resolved_paths().items())), str(device))
    if key not in _ASSETS:
        _ASSETS[key] = load_assets(**config.resolved_paths(), device=device, dtype=torch.float32)
    return _ASSETS[key]


def _detector(config):
    from flame_prior.detectors import make_detector

    key = (config.detect.backend, str(config.detect.landmark_dir))
    if key not in _DETECTORS:
        _DETECTORS[key] = make_detector(config.detect)
    return _DETECTORS[key]


def process_scene(job: SceneJob) -> dict:
    """Fit one scene and write its output and record; return the record (status "done" or "failed").

    Errors of the scene (bad input, no face, a bug) are caught and recorded; KeyboardInterrupt is not.
    """
    init_threads_once(job.threads)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    import torch

    base = {"scene": job.name, "data": job.relative, "key": job.key, "run_id": job.run_id,
            "host": socket.gethostname(), "pid": os.getpid(), "attempt": job.attempt, "started": time.time(),
            "worker": {"torch_threads": torch.get_num_threads(),
                       **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}}}
    try:
        from rich.progress import Progress

        from flame_prior.errors import InputError
        from flame_prior.pipeline import fit_static, prepare_inputs, write_scene

        assets = _assets(job.config)
        progress = Progress(disable=True)
        prepared = prepare_inputs(job.config, assets.embedding, progress, assets.model, detector=_detector(job.config))
        if prepared.sequence == "dynamic":
            raise InputError(f"a moving face ({prepared.sequence_reason}): batch fits static scenes.", job.config.data,
                             hint="Fit this scene with `flame-prior fit` (it tracks dynamic sequences).")
        fit = fit_static(job.config, assets, prepared, progress)
        thumb = write_thumbnail(Path(job.thumb_path), fit)
        record = scene_record(base, fit, job.scene_dir is not None, thumb, Path(job.config.data).is_file())
        t0 = time.perf_counter()
        if job.scene_dir is not None:
            # The record goes into the scene's output too: the rename that completes the output is the
            # one step that makes the scene finished (a rerun reads the key from there).
            record["seconds"]["total"] = time.perf_counter() - t_start
            write_scene(Path(job.scene_dir), job.config, assets, fit, extra_files={RECORD_IN_SCENE: record_json(record)})
        record["seconds"]["export"] = time.perf_counter() - t0
        record["seconds"]["total"] = time.perf_counter() - t_start
        record["seconds"]["cpu"] = time.process_time() - cpu_start  # all threads of this worker
        record["finished"] = time.time()
    except Exception as err:  # noqa: BLE001 — one scene's failure is recorded, never raised
        from flame_prior.errors import FlamePriorError

        record = {**base, "status": "failed", "error": f"{type(err).__name__}: {err}",
                  "error_kind": "input" if isinstance(err, FlamePriorError) else "internal",
                  "traceback": None if isinstance(err, FlamePriorError) else traceback.format_exc(),
                  "seconds": {"total": time.perf_counter() - t_start}, "finished": time.time()}
    write_record(Path(job.record_path), record)
    return record



def init_threads_once(threads: int) -> None:
    """:func:`init_worker` once per process (Ray starts its workers itself, without an initializer)."""
    if not _THREADS_SET:
        init_worker(threads)


def write_thumbnail(path: Path, fit, side: int = 192) -> str | None:
    """The first fitted view, at most ``side`` px, with the fitted model's landmarks projected (green
    dots); a JPEG written atomically. Returns the file name, or None when there is no view."""
    import cv2
    import numpy as np

    if not fit.result.views:
        return None
    by_name = {v.image.name: v for v in fit.views}
    vf = fit.result.views[0]
    image = by_name[vf.name].image.pixels
    s = min(1.0, side / max(image.shape[:2]))
    small = cv2.resize(image, (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s))),
                       interpolation=cv2.INTER_AREA)
    canvas = np.ascontiguousarray(small[..., ::-1])  # BGR for cv2
    for x, y in np.asarray(vf.landmarks_projected, dtype=np.float64) * s:
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(canvas, (int(round(x - 0.5)), int(round(y - 0.5))), 1, (60, 220, 60), -1, cv2.LINE_AA)
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return None
    write_bytes_atomic(path, data.tobytes())
    return path.name


def finished_record(job_record_path: Path, scene_dir: Path | None, key: str) -> dict | None:
    """The record of a scene finished with ``key`` (None: not finished, or finished with another key).

    With full scene outputs the scene's folder is the truth (its record was renamed into place with
    it); the records/ copy is restored from it when a run was stopped between the two writes."""
    if scene_dir is not None:
        inside = read_record(scene_dir / RECORD_IN_SCENE)
        if inside is None or inside.get("key") != key or inside.get("status") != "done":
            return None
        outside = read_record(job_record_path)
        if outside is None or outside.get("key") != key or outside.get("status") != "done":
            write_record(job_record_path, inside)
            outside = inside
        return outside
    rec = read_record(job_record_path)
    return rec if rec is not None and rec.get("key") == key and rec.get("status") == "done" else None
