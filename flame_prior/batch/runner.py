"""``flame-prior batch``: many scenes, resumable, on local worker processes or Ray.

Public entry: :func:`run_batch`. Layout of ``<output-dir>/``:

==========================  ==================================================================
``scenes/<scene>/``         the complete output of ``fit`` for the scene (``--scene-outputs full``),
                            plus ``batch_record.json``; renamed into place only when complete
``records/<scene>.json``    the scene's record (:mod:`flame_prior.batch.records`): done or failed
``thumbs/<scene>.jpg``      a thumbnail: the image with the fitted landmarks projected
``index.json``, ``index.csv``, ``index.html``  the run's index (:mod:`flame_prior.batch.index`)
``eg3d/``                   EG3D camera labels, with ``--single-images`` (:mod:`flame_prior.export.eg3d`)
``batch.json``              marks the folder as a batch output (a batch never writes into another folder)
==========================  ==================================================================

A rerun into the same folder skips every scene whose finished output carries the scene's current
key (inputs + settings, :mod:`flame_prior.batch.scenes`), skips the scenes recorded as failed
unless ``--retry-failed``, and runs the rest. Ctrl-C (or SIGTERM) stops the workers; scenes already
finished are complete on disk, the others have no output; the index is written either way. Run one
batch per output folder at a time.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flame_prior.batch.config import BatchConfig
from flame_prior.batch.index import write_index
from flame_prior.batch.records import read_record
from flame_prior.batch.scenes import Scene, discover_scenes, model_fingerprints, scene_key, settings_fingerprint
from flame_prior.batch.worker import SceneJob, finished_record
from flame_prior.errors import FitError, InputError, Interrupted
from flame_prior.progress import LineProgress, make_console

MARKER = "batch.json"


@dataclass
class BatchOutcome:
    """What a batch run did: the scenes by what became of them in this run."""

    output_dir: Path
    run_id: str
    done: list[str] = field(default_factory=list)  # fitted in this run
    skipped_done: list[str] = field(default_factory=list)  # finished by an earlier run
    failed: list[str] = field(default_factory=list)  # failed in this run
    skipped_failed: list[str] = field(default_factory=list)  # failed earlier, not retried
    not_run: list[str] = field(default_factory=list)  # interrupted before they finished
    seconds: float = 0.0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_counts(config: BatchConfig, n_jobs: int) -> tuple[int, int]:
    """``(workers, threads per worker)``: --workers (0: the cores) and --threads-per-worker (0: cores / workers).

    On a Ray cluster (--ray-address) the local cores say nothing: --workers 0 stays 0 (as many workers
    as the cluster's CPUs hold, counted once connected) and --threads-per-worker 0 is 1."""
    if config.ray_address is not None:
        return max(0, config.workers), max(1, config.threads_per_worker)
    cores = available_cores()
    workers = config.workers if config.workers > 0 else cores
    workers = max(1, min(workers, max(n_jobs, 1)))
    threads = config.threads_per_worker if config.threads_per_worker > 0 else max(1, cores // workers)
    return workers, threads


def check_batch_output(out: Path, root: Path) -> Path:
    """Refuse an output folder inside the root (or containing it), or one that is neither empty, nor
    missing, nor an earlier batch's (``batch.json``)."""
    out, root = Path(out).expanduser().resolve(), Path(root).expanduser().resolve()
    if out == root or out.is_relative_to(root):
        raise InputError("the output directory lies inside the batch root.", out,
                         hint="Choose an --output-dir outside the folder of scenes.")
    if root.is_relative_to(out):
        raise InputError(f"the batch root {root} lies inside the output directory.", out,
                         hint="Choose an --output-dir that does not contain the scenes.")
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a directory.", out, hint="Choose another --output-dir.")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError("the output directory is not empty and holds no batch.json: it is not a flame-prior batch "
                         "output, so the batch will not write into it.", out, hint="Choose a new --output-dir.")
    return out


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files and folders of an earlier run that was killed (one batch per folder at a time)."""
    for sub in ("records", "thumbs", "eg3d", "eg3d/crops"):
        for tmp in (out / sub).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    for partial in (out / "scenes").glob(".*.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)


def run_batch(config: BatchConfig, console: Console | None = None) -> BatchOutcome:
    """Run the batch ``config`` describes; return what became of each scene.

    Raises:
        InputError: bad root or output folder, Ray asked for but missing.
        FitError: one or more scenes failed (after every other scene ran; the index lists them).
        Interrupted: Ctrl-C / SIGTERM (a KeyboardInterrupt), after the workers stopped and the index was written.
    """
    from flame_prior.export._common import flame_prior_version

    console = console or make_console()
    t_start = time.perf_counter()
    root = Path(config.data).expanduser().resolve()
    if not root.is_dir():
        raise InputError("the batch root is not a folder.", config.data,
                         hint="Pass --data <folder of scenes> (or of images, with --single-images).")
    out = check_batch_output(config.output_dir, root)
    scenes = discover_scenes(root, config.single_images)
    out.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    _write_marker(out, root, config, run_id)
    _remove_stale_temporaries(out)

    settings = settings_fingerprint(config.scene_config(root, out), {
        "preset": config.preset, "scene_outputs": config.scene_outputs, "version": flame_prior_version(),
        "models": model_fingerprints(config.resolved_paths())})
    outcome = BatchOutcome(out, run_id)
    records: dict[str, dict] = {}
    jobs: list[SceneJob] = []
    with console.status(f"Checking {len(scenes)} scenes against earlier runs"):
        for scene in scenes:
            job = _job(config, scene, scene_key(scene, settings), run_id, out)
            scene_dir = Path(job.scene_dir) if job.scene_dir else None
            done = None if config.overwrite else finished_record(Path(job.record_path), scene_dir, job.key)
            if done is not None:
                records[scene.name] = done
                outcome.skipped_done.append(scene.name)
                continue
            earlier = read_record(Path(job.record_path))
            if (earlier is not None and earlier.get("status") == "failed" and earlier.get("key") == job.key
                    and not config.retry_failed and not config.overwrite):
                records[scene.name] = earlier
                outcome.skipped_failed.append(scene.name)
                continue
            jobs.append(job)
    workers, threads = worker_counts(config, len(jobs))
    for job in jobs:
        job.threads = threads
    how = (f"Ray workers ({config.ray_address or 'local'})" if config.uses_ray else "local worker processes")
    console.print(f"batch: {len(scenes)} scenes — {len(outcome.skipped_done)} finished earlier, "
                  f"{len(outcome.skipped_failed)} failed earlier"
                  + ("" if config.retry_failed else " (not retried: --retry-failed)" if outcome.skipped_failed else "")
                  + f", {len(jobs)} to run on {workers or 'as many'} {how} x {threads} threads", highlight=False)
    pending = {job.name for job in jobs}
    progress = (Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), TextColumn("ETA"),
                         TimeRemainingColumn(), console=console)
                if console.is_terminal else LineProgress(console))  # plain lines in a log
    task = progress.add_task("Fitting scenes", total=len(jobs), failed="")

    def on_record(record: dict) -> None:
        name = record["scene"]
        records[name] = record
        pending.discard(name)
        if record.get("status") == "done":
            outcome.done.append(name)
        else:
            outcome.failed.append(name)
            progress.console.print(f"[red]failed[/red] {escape(name)}: {escape(str(record.get('error')))}",
                                   highlight=False, soft_wrap=True)
        progress.update(task, advance=1, failed=f"[red]{len(outcome.failed)} failed[/red]" if outcome.failed else "")

    interrupted = False
    try:
        with progress:
            if jobs and config.uses_ray:
                from flame_prior.batch.schedulers import run_ray

                run_ray(jobs, workers, threads, on_record, address=config.ray_address)
            elif jobs:
                from flame_prior.batch.schedulers import run_local_pool

                run_local_pool(jobs, workers, threads, on_record)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _remove_stale_temporaries(out)  # of scenes cut off by Ctrl-C (their workers are stopped by now)
        outcome.not_run = sorted(pending)
        outcome.seconds = time.perf_counter() - t_start
        write_index(out, scenes, records, outcome, config)
        if config.single_images:
            from flame_prior.export.eg3d import write_eg3d_dataset

            write_eg3d_dataset(out / "eg3d", root, [records[s.name] for s in scenes if s.name in records
                                                    and records[s.name].get("status") == "done"],
                               scale=config.eg3d_scale, crop_size=config.eg3d_crops)
    n_ok = len(outcome.done) + len(outcome.skipped_done)
    if interrupted:
        raise Interrupted(f"interrupted: {n_ok} of {len(scenes)} scenes are complete in {out}, {len(outcome.not_run)} "
                          "did not finish and have no output (index.html lists them); run the same command again to "
                          "resume")
    console.print(f"batch: {n_ok}/{len(scenes)} scenes done ({len(outcome.done)} in this run, "
                  f"{len(outcome.skipped_done)} earlier), {len(outcome.failed) + len(outcome.skipped_failed)} failed; "
                  f"{outcome.seconds:.1f} s; index: [bold]{escape(str(out / 'index.html'))}[/bold]", highlight=False)
    if outcome.failed or outcome.skipped_failed:
        raise FitError(f"{len(outcome.failed) + len(outcome.skipped_failed)} of {len(scenes)} scenes failed "
                       "(the others are complete).", out / "index.html",
                       hint="The index lists each error; fix the input and rerun with --retry-failed.")
    return outcome


def _job(config: BatchConfig, scene: Scene, key: str, run_id: str, out: Path) -> SceneJob:
    scene_dir = out / "scenes" / scene.name if config.scene_outputs == "full" else None
    return SceneJob(name=scene.name, relative=scene.relative, config=config.scene_config(scene.data, scene_dir or out),
                    key=key, run_id=run_id, scene_dir=str(scene_dir) if scene_dir else None,
                    record_path=str(out / "records" / f"{scene.name}.json"),
                    thumb_path=str(out / "thumbs" / f"{scene.name}.jpg"))


def _write_marker(out: Path, root: Path, config: BatchConfig, run_id: str) -> None:
    import json

    from flame_prior.batch.records import write_bytes_atomic

    info = {"format": "flame-prior batch", "root": str(root), "single_images": config.single_images,
            "preset": config.preset, "scene_outputs": config.scene_outputs, "last_run": run_id,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_bytes_atomic(out / MARKER, (json.dumps(info, indent=2) + "\n").encode())
