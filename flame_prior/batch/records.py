"""The record of one scene: ``<output-dir>/records/<scene>.json`` (and ``batch_record.json`` in its output).

One JSON object per scene, written atomically (temporary file + rename), so a reader sees the
whole record or none. Keys:

==============================  ===============================================================
``scene``, ``data``             the scene's name and its path relative to the batch root
``key``                         inputs + settings hash (:mod:`flame_prior.batch.scenes`)
``status``                      ``"done"`` or ``"failed"``
``error``, ``error_kind``       the failure (``"input"``: a user-facing error; ``"internal"``: a bug,
                                with ``traceback``); absent when done
``run_id``, ``host``, ``pid``   which run, machine and process produced it
``started``, ``finished``       wall-clock times (seconds since the epoch)
``worker``                      the worker's torch threads, ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY``
``seconds``                     intake, detection, intrinsics, fit (and per stage), export, total
                                (wall clock) and cpu (CPU time of the worker process for the scene)
``views_fitted``, ``left_out``  counts and the inputs left out with their reason
``landmark_error_px_median``    median over the views of each view's landmark error (pixels), and
``landmark_error_over_eye_median``  the same over the projected outer-eye-corner distance
``focal_px_median``, ``intrinsics_source``
``views``                       per fitted view: ``name``, ``file`` (relative to the batch root),
                                ``width``, ``height``, ``R`` (3x3) and ``t`` (3): OpenCV
                                world-to-camera in FLAME's frame (metres), ``fx fy cx cy`` (pixels,
                                corner origin), ``landmark_error_px``, ``eye_distance_px``
``flame``                       FLAME parameters (``shape``, ``expression``, ``jaw_pose``, ...)
``output``, ``thumbnail``       the scene's output folder and thumbnail, relative to the run's folder
==============================  ===============================================================
"""

from __future__ import annotations

import json
from pathlib import Path

from flame_prior.files import write_bytes_atomic

#: Name of the record inside a scene's full output.
RECORD_IN_SCENE = "batch_record.json"
RECORD_FORMAT = "flame-prior batch record"


def record_json(record: dict) -> str:
    """The record as the JSON text of its file (strict JSON: non-finite numbers become null)."""
    from flame_prior.export._common import jsonable

    return json.dumps(jsonable({"format": RECORD_FORMAT, **record}), indent=2, allow_nan=False) + "\n"


def write_record(path: Path, record: dict) -> Path:
    return write_bytes_atomic(path, record_json(record).encode())


def read_record(path: Path) -> dict | None:
    """The record at ``path``, or None when there is none or it cannot be read."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == RECORD_FORMAT else None


def scene_record(base: dict, fit, full_output: bool, thumbnail: str | None, single_file: bool) -> dict:
    """A ``done`` record of a fitted scene (:class:`flame_prior.pipeline.SceneFit`); ``single_file``: the
    scene is one image (``base["data"]`` names it), else a folder."""
    import numpy as np

    result = fit.result
    cams = result.cameras
    files = {v.image.name: v.image.path for v in fit.views}
    views = []
    for i, vf in enumerate(result.views):
        rel = base["data"] if single_file else f"{base['data']}/{files[vf.name].name}"
        views.append({
            "name": vf.name, "file": rel, "width": int(cams.width[i]), "height": int(cams.height[i]),
            "R": cams.R[i].numpy(), "t": cams.t[i].numpy(),
            "fx": float(cams.fx[i]), "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
            "landmark_error_px": vf.landmark_error_px, "eye_distance_px": vf.eye_distance_px,
        })
    err = np.array([v.landmark_error_px for v in result.views])
    eye = np.array([v.eye_distance_px for v in result.views])
    return {
        **base, "status": "done",
        "seconds": dict(fit.timings),
        "views_fitted": len(result.views), "views_left_out": len(fit.skipped),
        "left_out": [{"file": s.path.name, "reason": s.reason} for s in fit.skipped],
        "landmark_error_px_median": float(np.median(err)),
        "landmark_error_over_eye_median": float(np.median(err / np.maximum(eye, 1e-9))),
        "focal_px_median": float(np.median(cams.fx.numpy())),
        "intrinsics_source": fit.intrinsics.source,
        "views": views,
        "flame": {k: np.asarray(v) for k, v in result.flame.items()},
        "output": f"scenes/{base['scene']}" if full_output else None,
        "thumbnail": f"thumbs/{thumbnail}" if thumbnail else None,
    }
