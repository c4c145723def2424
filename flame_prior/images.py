"""Stage 1 — image intake: find, validate and decode the photographs.

Public entry: :func:`load_images`. (Interface fixed here; body by the intake work.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class InputImage:
    """One decoded photograph, upright.

    Attributes:
        path: the original file.
        name: unique, filesystem-safe stem used for every output of this view.
        pixels: ``(H, W, 3)`` uint8 RGB, EXIF orientation applied (the camera of this view is for
            this upright image; every output refers to its pixel grid).
        sha256: hex digest of the file's bytes (detection cache key).
        exif_focal_px: focal length in pixels of the upright image from EXIF
            (FocalLengthIn35mmFilm, or FocalLength with the sensor size), or None.
    """

    path: Path
    name: str
    pixels: np.ndarray
    sha256: str
    exif_focal_px: float | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass
class SkippedInput:
    """A file or view left out, and why (shown in the summary and the report)."""

    path: Path
    reason: str
