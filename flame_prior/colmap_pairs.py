"""Which pairs of views COLMAP matches: those whose head poses, read off the landmarks, are close.

Matching every pair costs ``N (N - 1) / 2`` brute-force SIFT matchings, and on a head most of the
far pairs give nothing: skin and hair seen 60 degrees apart share no descriptor. The detected
landmarks already tell roughly how each view sees the head, so only pairs whose relative head
rotation is small are matched (:func:`pairs_by_head_pose`), with a floor of nearest neighbours per
view so that the pair graph stays connected.

The head pose of a view (:func:`landmark_head_rotations`) is a scaled-orthographic fit of the
MediaPipe landmarks to the same points on FLAME's mean head (the bundled FLAME 2023 Open template
and flame-prior's MediaPipe embedding): a few degrees off (expression, the detector's yaw bias, the
orthographic approximation), which is plenty to tell a 10 degree pair from a 60 degree one.

Numpy only (no torch): this runs inside the intrinsics step.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from flame_prior.shapes import check_shape

if TYPE_CHECKING:
    from flame_prior.observe import ViewObservation

__all__ = ["landmark_head_rotations", "relative_angles_deg", "pairs_by_head_pose"]

#: Fewest finite landmarks a view needs for a head pose.
_MIN_LANDMARKS = 50


def _mean_head_landmarks() -> tuple[np.ndarray, np.ndarray]:
    """``(468, 3)`` MediaPipe landmarks on FLAME's template (metres, FLAME axes) and their ``(468,)``
    indices into MediaPipe's 478 points."""
    data = resources.files("flame_prior") / "data"
    with np.load(str(data / "flame2023_open_subset.npz"), allow_pickle=False) as model:
        vertices, faces = model["v_template"].astype(np.float64), model["f"]
    with np.load(str(data / "mediapipe468_embedding.npz"), allow_pickle=False) as emb:
        face_idx, bary, index = emb["lmk_face_idx"], emb["lmk_b_coords"], emb["landmark_indices"]
    points = np.einsum("lk,lkc->lc", bary, vertices[faces[face_idx]])
    return points, index


def landmark_head_rotations(views: list[ViewObservation]) -> np.ndarray | None:
    """Each view's head rotation (FLAME head to camera, OpenCV axes) from its landmarks, roughly.

    A scaled orthographic camera ``x = s R[:2] X + t`` fitted by least squares (an affine fit, its
    two rows then made the nearest pair of orthonormal rows of one scale); the third row is their
    cross product. Image ``y`` points down and FLAME's ``y`` up, as in OpenCV's camera axes.

    Args:
        views: views whose ``detection`` holds MediaPipe's ``(478, 2)`` landmarks.

    Returns:
        ``(N, 3, 3)`` float64 rotations, or None when a view has other landmarks, or too few finite
        ones (no pose is guessed).
    """
    marks = [np.asarray(v.detection.landmarks, dtype=np.float64) for v in views]
    if any(v.detection.landmark_format != "mediapipe478" or m.shape != (478, 2) for v, m in zip(views, marks)):
        return None
    X, index = _mean_head_landmarks()
    X = X - X.mean(axis=0)
    out = np.empty((len(views), 3, 3))
    for i, x in enumerate(marks):
        x = x[index]
        ok = np.isfinite(x).all(axis=1)
        if ok.sum() < _MIN_LANDMARKS:
            return None
        A = np.linalg.lstsq(X[ok], x[ok] - x[ok].mean(axis=0), rcond=None)[0].T  # (2, 3): x ~ A X
        U, _, Vt = np.linalg.svd(A, full_matrices=False)
        rows = U @ Vt  # the nearest 2x3 with orthonormal rows
        out[i] = np.stack([rows[0], rows[1], np.cross(rows[0], rows[1])])
    return out


def relative_angles_deg(R: np.ndarray) -> np.ndarray:
    """``(N, N)`` angle in degrees of ``R_i R_j^T`` for ``(N, 3, 3)`` rotations ``R``."""
    check_shape(R, ["N", 3, 3], "R")
    cos = (np.einsum("nab,mab->nm", R, R) - 1.0) / 2.0  # trace(R_i R_j^T) = sum of elementwise products
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def pairs_by_head_pose(R: np.ndarray, max_angle_deg: float, min_neighbours: int) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, whose head rotations differ by at most ``max_angle_deg``, plus each
    view's ``min_neighbours`` nearest views whatever their angle (the pair graph stays connected
    where the poses are sparse).

    Args:
        R: ``(N, 3, 3)`` head rotations (:func:`landmark_head_rotations`).
        max_angle_deg: pairs closer than this are matched.
        min_neighbours: each view's nearest views that are matched in any case.

    Returns:
        Sorted pairs of view indices.
    """
    angles = relative_angles_deg(R)
    n = len(angles)
    keep = angles <= max_angle_deg
    order = np.argsort(angles + np.diag(np.full(n, np.inf)), axis=1)
    for i in range(n):
        keep[i, order[i, : min(min_neighbours, n - 1)]] = True
    keep |= keep.T
    return [(i, j) for i in range(n) for j in range(i + 1, n) if keep[i, j]]
