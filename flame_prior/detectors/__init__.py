"""Face detection backends for stage 2 (:mod:`flame_prior.observe`).

A backend is an object with ``name``, ``version`` (cache key: bump it when the output changes),
``cacheable``, ``detect(image: InputImage) -> Detection | None`` (None: no face) and ``close()``.

* ``mediapipe`` (:mod:`.mediapipe_backend`): Face Mesh 478 points + selfie-segmentation head mask.
* ``fan`` (:mod:`.fan_backend`): the optional ``face_alignment`` package, 68 iBUG points.
* ``files`` (:mod:`.files_backend`): landmarks (and masks) supplied by the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from flame_prior.images import InputImage
    from flame_prior.observe import DetectConfig

__all__ = ["Detection", "Detector", "make_detector"]


@dataclass
class Detection:
    """One face found by a backend, in the ORIGINAL upright image's pixel grid.

    Attributes:
        landmarks: ``(K, 2)`` float32 pixels (corner origin, pixel centres at +0.5).
        confidence: ``(K,)`` float32 in [0, 1].
        landmark_format: ``"mediapipe478"`` or ``"ibug68"``.
        mask: ``(H, W)`` float32 head mask in [0, 1].
        face_box: ``(x0, y0, x1, y1)`` the landmarks' bounding box, pixels.
        notes: remarks (e.g. "2 faces, took the largest").
    """

    landmarks: np.ndarray
    confidence: np.ndarray
    landmark_format: str
    mask: np.ndarray
    face_box: tuple[float, float, float, float]
    notes: list[str] = field(default_factory=list)

    @property
    def face_size(self) -> float:
        """Longer side of the face box, pixels (what ``min_face_px`` compares with)."""
        x0, y0, x1, y1 = self.face_box
        return float(max(x1 - x0, y1 - y0))


class Detector(Protocol):
    name: str
    version: str
    cacheable: bool

    def detect(self, image: InputImage) -> Detection | None: ...

    def close(self) -> None: ...


def landmark_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of the finite landmarks."""
    p = np.asarray(landmarks, dtype=np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


def make_detector(config: DetectConfig) -> Detector:
    """The backend ``config.backend`` asks for; raises ``InputError`` when it cannot run here."""
    if config.backend == "mediapipe":
        from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

        return MediaPipeDetector()
    if config.backend == "fan":
        from flame_prior.detectors.fan_backend import FanDetector

        return FanDetector()
    if config.backend == "files":
        from flame_prior.detectors.files_backend import FilesDetector

        return FilesDetector(config.landmark_dir)
    from flame_prior.errors import InputError

    raise InputError(f"unknown detection backend {config.backend!r}", hint="Choose mediapipe, fan or files.")
