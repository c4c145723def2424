"""What face detection is configured by (:class:`DetectConfig`), what a backend returns
(:class:`Detection`) and what a backend is (:class:`Detector`). The backends import this module, and
:mod:`flame_prior.detectors` picks one (:func:`~flame_prior.detectors.make_detector`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from flame_prior.errors import check_option

if TYPE_CHECKING:
    from flame_prior.images import InputImage

__all__ = ["DetectConfig", "Detection", "Detector", "landmark_box"]


@dataclass
class DetectConfig:
    """How faces are found in each photo (pipeline step 2)."""

    backend: Literal["mediapipe", "fan", "files"] = "mediapipe"
    """Landmark detector: MediaPipe Face Mesh (478 points, bundled, offline), FAN (68 points, needs face_alignment and its weights) or user files."""
    landmark_dir: Path | None = None
    """For backend "files": folder with <stem>.npy or <stem>.txt (K, 2) pixel landmarks (K = 68 or 478) and optional <stem>_mask.png per image."""
    min_face_px: float = 40
    """Faces whose box is smaller than this many pixels (longer side) are left out as too small to fit."""
    cache_dir: Path | None = None
    """Detection cache folder; default $XDG_CACHE_HOME/flame-prior/detections (else ~/.cache/flame-prior/detections)."""
    use_cache: bool = True
    """Read and write cached detections (keyed by image content, backend and its version)."""
    seeded: bool = True
    """Second pass for photos without a face when others have one: the landmark model on the region of the nearest view's face, and on its mirror image (mediapipe only; flame_prior.detectors.seeded)."""

    def check(self, prefix: str = "detect.") -> None:
        """Refuse impossible values before any work (:func:`flame_prior.errors.check_option`)."""
        check_option(self.min_face_px >= 0, prefix + "min_face_px", self.min_face_px, "0 or more pixels")


@dataclass
class Detection:
    """One face found by a backend, in the ORIGINAL upright image's pixel grid.

    Attributes:
        landmarks: ``(K, 2)`` float32 pixels (corner origin, pixel centres at +0.5).
        confidence: ``(K,)`` float32 in [0, 1].
        landmark_format: ``"mediapipe478"`` or ``"ibug68"``.
        mask: ``(H, W)`` float32 head mask in [0, 1] (the head: face, hair, ears; no torso, no
            background). Held as uint8 in steps of 1/255 (:attr:`mask_u8`, the detection cache's
            precision): a quarter of float32's memory, 130 MB less for 30 photos of 1392x1040.
            Reading ``mask`` gives a fresh float32 array (``mask_u8 / 255``); assigning a float
            mask quantises it, a uint8 one is taken as 0..255.
        face_box: ``(x0, y0, x1, y1)`` the landmarks' bounding box, pixels.
        notes: remarks (e.g. "2 faces, took the largest").
        provenance: what found it: ``"detector"`` (the backend's own pass) or ``"seeded"`` (the
            seeded second pass, :mod:`flame_prior.detectors.seeded`, on a photo where the backend
            found no face).
    """

    landmarks: np.ndarray
    confidence: np.ndarray
    landmark_format: str
    mask: np.ndarray
    face_box: tuple[float, float, float, float]
    notes: list[str] = field(default_factory=list)
    provenance: str = "detector"

    @property
    def face_size(self) -> float:
        """Longer side of the face box, pixels (what ``min_face_px`` compares with)."""
        x0, y0, x1, y1 = self.face_box
        return float(max(x1 - x0, y1 - y0))

    @property
    def mask_u8(self) -> np.ndarray:
        """``(H, W)`` uint8 head mask, 255 = 1.0 (the stored array itself: do not modify it)."""
        return self._mask_u8

    @property
    def head_mask(self) -> np.ndarray:
        """``(H, W)`` bool: the head, ``mask >= 0.5`` (read off :attr:`mask_u8`: 128/255 is the first step
        at or above 0.5), without the float32 copy that reading :attr:`mask` makes."""
        return self._mask_u8 >= 128


def _get_mask(self: Detection) -> np.ndarray:
    return self._mask_u8.astype(np.float32) / np.float32(255)


def _set_mask(self: Detection, mask: np.ndarray) -> None:
    m = np.asarray(mask)
    if m.dtype == np.uint8:
        self._mask_u8 = m
    else:  # rounded to 1/255 steps, as flame_prior.cache.quantise_mask_u8 (no import: the cache imports us)
        self._mask_u8 = np.round(np.clip(m.astype(np.float32, copy=False), 0.0, 1.0) * 255).astype(np.uint8)


# After the dataclass is made (a property in the class body would become the field's default): the
# generated __init__, repr, eq and dataclasses.replace go through the property.
Detection.mask = property(_get_mask, _set_mask, doc="(H, W) float32 head mask in [0, 1] (see the class docstring).")


class Detector(Protocol):
    name: str
    version: str
    cacheable: bool

    def detect(self, image: InputImage) -> Detection | None: ...

    # Optional: ``detect_seeded(image, seeds) -> Detection | None``, the seeded second pass
    # (flame_prior.detectors.seeded), with ``seeded_version`` its cache version; backends without
    # it get none.

    def close(self) -> None: ...


def landmark_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of the finite landmarks."""
    p = np.asarray(landmarks, dtype=np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())
