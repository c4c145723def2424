"""Stage 2 — face observations: landmarks, confidences and a head mask per view, offline.

Public entry: :func:`observe`. (Interface fixed here; body by the detection work.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flame_prior.images import InputImage


@dataclass
class ViewObservation:
    """What the detector saw in one upright image.

    Attributes:
        image: the decoded input.
        landmarks: ``(K, 2)`` float32 pixel coordinates in the upright ORIGINAL image (corner origin,
            pixel centres at +0.5; see docs/conventions.md), in the detector's own order
            (``landmark_format``).
        confidence: ``(K,)`` float32 in [0, 1]; 0 for points the detector marks as hidden.
        landmark_format: ``"mediapipe478"`` (Face Mesh with iris) or ``"ibug68"`` (FAN / iBUG 68).
        mask: ``(H, W)`` float32 in [0, 1], the head (face, hair, ears; no torso, no background).
        face_box: ``(x0, y0, x1, y1)`` pixels, the detected face.
        notes: remarks for the summary (e.g. "2 faces, took the largest").
    """

    image: InputImage
    landmarks: np.ndarray
    confidence: np.ndarray
    landmark_format: str
    mask: np.ndarray
    face_box: tuple[float, float, float, float]
    notes: list[str] = field(default_factory=list)
