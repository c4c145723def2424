"""The fit itself: ``flame_params.npz`` (arrays, no pickles) and ``fit_summary.json`` (everything, readable).

``flame_params.npz`` — load with ``np.load(path, allow_pickle=False)``. Keys (float64 unless noted):

=====================  ==============  ==========================================================
key                    shape           meaning
=====================  ==============  ==========================================================
shape                  (n_shape,)      FLAME identity coefficients
expression             (n_expr,)       FLAME expression coefficients (n_expr may be 0)
rotation               (3,)            global rotation, axis-angle (radians) about the root joint
neck_pose, jaw_pose    (3,)            axis-angle, radians
eye_pose               (6,)            left eye then right eye, axis-angle
translation            (3,)            metres, added after skinning
texture_coeffs         (K,)            only when a texture space was fitted
lighting               (N, 9, 3)       2nd-order spherical harmonics per view, per RGB channel
R                      (N, 3, 3)       world-to-camera rotation, OpenCV camera axes
t                      (N, 3)          world-to-camera translation, metres: x_cam = R x_world + t
fx, fy, cx, cy         (N,)            pixels; principal point in corner-origin pixel coordinates
width, height          (N,) int64      image size in pixels (the upright original image)
distortion             (N, 5)          lens, OpenCV (k1, k2, p1, p2, k3); zeros: none (flame_prior.distortion)
view_names             (N,) unicode    view names (the stems used for every output file)
=====================  ==============  ==========================================================

The world is FLAME's model frame in metres (+X to the subject's left, +Y up, +Z out of the face);
pixels have the origin at the top-left corner with pixel centres at +0.5. The FLAME mesh these
parameters produce depends on the model file: ``fit_summary.json`` names it (path and SHA-256).

``fit_summary.json`` holds the same values as JSON lists (``flame``, ``cameras`` per view, ``lighting``,
``texture_coeffs``) plus: ``format``/``version``; ``convention`` (each frame written out); ``model``
(:class:`~flame_prior.flame.assets.ModelInfo`: ``path``, ``sha256``, ``n_shape``, ``n_expr``, ``notes``, ...);
``intrinsics_source``; per-view ``landmark_error_px``, ``eye_distance_px`` and
``landmark_error_rel_eye`` (error / outer-eye-corner distance), ``landmark_weight`` (per landmark
of the embedding, the weight the fit gave it) and ``landmarks_occluded`` (indices of those the
occlusion stage judged hidden); ``stages`` (name, iterations,
seconds, loss_history, per-view median landmark error after the stage); ``notes``; ``left_out``
(the inputs not fitted, with the reason). Non-finite
numbers are written as ``null``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_prior.distortion import DISTORTION_KEYS
from flame_prior.export._common import CONVENTION, camera_arrays, flame_prior_version, write_json
from flame_prior.fit import FitResult
from flame_prior.flame.assets import ModelInfo

__all__ = ["write_flame_params", "FLAME_KEYS"]

#: FitResult.flame keys, in file order, with their expected trailing size (None: any length).
FLAME_KEYS = {"shape": None, "expression": None, "rotation": 3, "neck_pose": 3, "jaw_pose": 3,
              "eye_pose": 6, "translation": 3}


def _flame_arrays(result: FitResult) -> dict[str, np.ndarray]:
    out = {}
    for key, size in FLAME_KEYS.items():
        if key not in result.flame:
            if key == "expression":  # a model without an expression space
                out[key] = np.zeros(0)
                continue
            raise ValueError(f"export: FitResult.flame lacks {key!r}")
        a = np.asarray(result.flame[key], dtype=np.float64).reshape(-1)
        if size is not None and a.shape != (size,):
            raise ValueError(f"export: FitResult.flame[{key!r}] has {a.shape[0]} values, expected {size}")
        out[key] = a
    return out


def write_flame_params(out_dir: str | Path, result: FitResult, model: ModelInfo, skipped=()) -> tuple[Path, Path]:
    """Write ``flame_params.npz`` and ``fit_summary.json`` into ``out_dir`` (format: module docstring).

    Args:
        out_dir: the output folder.
        result: the fit.
        model: the model files the fit used (path as the user gave it, SHA-256, sizes, notes).
        skipped: the inputs left out (``SkippedInput``: path, reason), listed under ``left_out``.

    Returns:
        ``(npz path, json path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flame = _flame_arrays(result)
    cam = camera_arrays(result)
    n = len(result.cameras)
    lighting = np.asarray(result.lighting, dtype=np.float64)
    if lighting.shape != (n, 9, 3):
        raise ValueError(f"export: lighting is {lighting.shape}, expected ({n}, 9, 3)")
    names = np.array([vf.name for vf in result.views], dtype=np.str_)

    arrays = dict(flame)
    if result.texture_coeffs is not None:
        arrays["texture_coeffs"] = np.asarray(result.texture_coeffs, dtype=np.float64).reshape(-1)
    arrays["lighting"] = lighting
    arrays.update(cam)
    arrays["view_names"] = names
    npz_path = out_dir / "flame_params.npz"
    np.savez(npz_path, **arrays)

    cameras = []
    for i, vf in enumerate(result.views):
        eye = float(vf.eye_distance_px)
        cameras.append({
            "name": vf.name,
            "R": cam["R"][i], "t": cam["t"][i],
            "fx": cam["fx"][i], "fy": cam["fy"][i], "cx": cam["cx"][i], "cy": cam["cy"][i],
            "width": cam["width"][i], "height": cam["height"][i],
            **({"distortion": dict(zip(DISTORTION_KEYS, cam["distortion"][i]))} if cam["distortion"][i].any() else {}),
            "landmark_error_px": float(vf.landmark_error_px),
            "eye_distance_px": eye,
            "landmark_error_rel_eye": vf.landmark_error_rel_eye,
            "uncertainty": {"rotation_deg": float(vf.rotation_sigma_deg), "centre_pct": float(vf.centre_sigma_pct),
                            "source": vf.uncertainty_source},
            "yaw_deg": float(vf.yaw_deg),
            "trusted": not vf.flags,
            "flags": list(vf.flags),
            "landmark_weight": np.asarray(vf.landmark_weight, dtype=np.float64).tolist(),
            "landmarks_occluded": ([] if vf.landmark_occluded is None
                                   else np.flatnonzero(np.asarray(vf.landmark_occluded)).tolist()),
        })
    summary = {
        "format": "flame-prior fit summary",
        "version": flame_prior_version(),
        "convention": CONVENTION,
        "units": {"translation": "metres", "t": "metres", "rotations": "radians (axis-angle)",
                  "intrinsics": "pixels"},
        "model": model.as_dict(),
        "intrinsics_source": result.intrinsics_source,
        "flame": flame,
        "texture_coeffs": arrays.get("texture_coeffs"),
        "lighting": lighting,
        "cameras": cameras,
        "stages": [
            {"name": s.name, "iterations": int(s.iterations), "seconds": float(s.seconds),
             "loss_history": [float(x) for x in s.loss_history],
             "landmark_px": np.asarray(s.landmark_px, dtype=np.float64), **s.details}
            for s in result.stages
        ],
        "notes": list(result.notes),
        "left_out": [{"file": str(sk.path), "reason": sk.reason} for sk in skipped],
        "files": {"params": npz_path.name},
    }
    json_path = write_json(out_dir / "fit_summary.json", summary)
    return npz_path, json_path
