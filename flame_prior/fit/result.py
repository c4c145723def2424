"""What the fit returns (:class:`FitResult`): everything the exports need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flame_prior.fit.state import StageLog
from flame_prior.geometry import PinholeCameras
from flame_prior.images import SkippedInput

__all__ = ["FitResult", "ViewFit", "StageLog"]


@dataclass
class ViewFit:
    """Per-view result in the ORIGINAL image's pixel grid."""

    name: str
    landmarks_detected: np.ndarray  # (L, 2) pixels, the detections the fit used
    landmarks_projected: np.ndarray  # (L, 2) pixels, the fitted model's landmarks projected
    landmark_weight: np.ndarray  # (L,) confidence * embedding weight used in the fit
    landmark_error_px: float  # weighted median over the landmarks used
    eye_distance_px: float  # outer-eye-corner distance of the projected model (normaliser)
    rotation_sigma_deg: float = float("nan")  # camera uncertainty (flame_prior.camera_trust)
    centre_sigma_pct: float = float("nan")  # camera-centre uncertainty, % of its distance to the head
    yaw_deg: float = float("nan")  # the fitted head's yaw in this view (0 = frontal)
    flags: list[str] = field(default_factory=list)  # why this camera is not trusted (empty: trusted)
    landmark_occluded: np.ndarray | None = None  # (L,) bool: the fit judged the point hidden by an occluder
    uncertainty_source: str = "landmarks"  # what the sigmas come from: "landmarks" or "tracks" (camera_trust)

    @property
    def landmark_error_rel_eye(self) -> float:
        """The landmark error as a fraction of the eye-corner distance (NaN when that is not positive)."""
        eye = float(self.eye_distance_px)
        return float(self.landmark_error_px) / eye if eye > 0 else float("nan")


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
        notes: what the stages had to say (a restored state, ...), in order.
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
    intrinsics_source: str
    notes: list[str] = field(default_factory=list)
    left_out: list[SkippedInput] = field(default_factory=list)
    """Views given to the fit that got no camera (e.g. PnP found no pose), with the reason."""
