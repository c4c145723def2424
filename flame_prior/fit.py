"""Stage 4 — the fit: one FLAME head and one camera per view, all in FLAME's frame.

Public entry: :func:`fit_flame`. (Result types fixed here first; the fitter follows.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flame_prior.geometry import PinholeCameras


@dataclass
class StageLog:
    """What one fitting stage did: for the summary, the report and the benchmark."""

    name: str
    iterations: int
    seconds: float
    loss_history: list[float]
    landmark_px: np.ndarray  # (N,) median landmark error per view after the stage, pixels


@dataclass
class ViewFit:
    """Per-view result in the ORIGINAL image's pixel grid."""

    name: str
    landmarks_detected: np.ndarray  # (L, 2) pixels, the detections the fit used
    landmarks_projected: np.ndarray  # (L, 2) pixels, the fitted model's landmarks projected
    landmark_weight: np.ndarray  # (L,) confidence * embedding weight used in the fit
    landmark_error_px: float  # median over visible landmarks
    eye_distance_px: float  # outer-eye-corner distance of the projected model (normaliser)


@dataclass
class FitResult:
    """Everything the exports need.

    Attributes:
        cameras: one per fitted view, float64, OpenCV world-to-camera in FLAME's frame (metres).
        flame: FLAME parameters, FLAME's meaning and key names of the reference implementation:
            ``shape (n_shape,)``, ``expression (n_expr,)``, ``rotation (3,)`` (global, axis-angle
            about the root joint), ``neck_pose (3,)``, ``jaw_pose (3,)``, ``eye_pose (6,)`` (left
            then right eye), ``translation (3,)`` (added after skinning).
        vertices: ``(V, 3)`` the posed, fitted mesh in the world frame.
        faces: ``(F, 3)`` int64.
        uvs, uv_faces: ``(T, 2)`` texture coordinates (origin bottom-left, OBJ convention) and
            ``(F, 3)`` their per-face indices.
        texture: ``(Ht, Wt, 3)`` float32 albedo in [0, 1], image rows top-down (row 0 is v = 1).
        texture_coeffs: texture-space coefficients when a texture space was used, else None.
        lighting: ``(N, 9, 3)`` second-order SH coefficients per view (per colour channel).
        views: per-view fit details.
        stages: one log per stage, in order.
        model_info: which FLAME file (path, sha256, n_shape, n_expr, notes on what it lacks).
        intrinsics_source: "colmap" | "exif" | "optimised" | "prior" | "given".
    """

    cameras: PinholeCameras
    flame: dict[str, np.ndarray]
    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    uv_faces: np.ndarray
    texture: np.ndarray
    texture_coeffs: np.ndarray | None
    lighting: np.ndarray
    views: list[ViewFit]
    stages: list[StageLog]
    model_info: dict
    intrinsics_source: str
    notes: list[str] = field(default_factory=list)
