"""Stage 3 — intrinsics: COLMAP (pycolmap) when the views register, else EXIF, else fitted focal.

Public entry: :func:`estimate_intrinsics`. (Interface fixed here; body by the intrinsics work.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

IntrinsicsSource = Literal["colmap", "exif", "optimised", "prior", "given"]


@dataclass
class Intrinsics:
    """Initial intrinsics per view, in each view's ORIGINAL (upright) pixel grid.

    Attributes:
        fx, fy, cx, cy: ``(N,)`` float64 pixels (corner-origin convention).
        source: where the focal length came from.
        optimise_focal: whether the fitter should refine one shared focal scale.
        colmap: COLMAP figures (registered views, mean reprojection error, points) or None.
        colmap_w2c: ``(N, 4, 4)`` COLMAP world-to-camera poses (OpenCV axes, COLMAP's arbitrary
            frame and scale), NaN for views COLMAP did not register; for initialisation checks and
            the rotation-agreement test only — never the answer.
        notes: human-readable remarks for the summary.
    """

    fx: np.ndarray
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    source: IntrinsicsSource
    optimise_focal: bool
    colmap: dict | None = None
    colmap_w2c: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
