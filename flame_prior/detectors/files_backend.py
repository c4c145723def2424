"""``files`` backend: landmarks (and optionally masks) the user supplies, one set per image.

In ``landmark_dir``, for an image ``photo.jpg`` (stem ``photo``; the output name is tried too):

* ``photo.npy`` or ``photo.txt``: ``(K, 2)`` pixel coordinates ``x, y`` in the upright image (corner
  origin, pixel centres at +0.5). ``K = 68`` is read as iBUG 68 (``"ibug68"``), ``K = 478`` as Face
  Mesh with iris (``"mediapipe478"``). ``.txt`` is whitespace- or comma-separated, one point per
  line. A row of NaN marks a point that is not visible: it gets confidence 0 (and coordinates 0).
  ``.npy`` files are read with ``allow_pickle=False``.
* ``photo_mask.png`` (optional): the head mask, same size as the image, grey (or any mode; the
  first channel is used), 0..255 or 0..65535 scaled to [0, 1]. Without it the head mask is built
  from the landmarks and selfie segmentation (:mod:`.headmask`), with a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from flame_prior.detectors.base import Detection, landmark_box
from flame_prior.errors import InputError
from flame_prior.images import InputImage

__all__ = ["FilesDetector", "read_landmarks", "FORMATS_BY_COUNT"]

FORMATS_BY_COUNT = {68: "ibug68", 478: "mediapipe478"}
"""Landmark count → landmark format."""


def read_landmarks(path: Path) -> np.ndarray:
    """``(K, 2)`` float64 landmarks from a ``.npy`` or ``.txt`` file; ``InputError`` if malformed."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            text = path.read_text()
            arr = np.loadtxt(text.replace(",", " ").splitlines(), dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read landmarks ({err})", path=path, hint="Write a (K, 2) array of x, y pixels.") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] not in FORMATS_BY_COUNT:
        raise InputError(
            f"landmarks have shape {arr.shape}, expected (68, 2) (iBUG 68) or (478, 2) (Face Mesh with iris)",
            path=path,
            hint="Write one x, y pixel pair per landmark.",
        )
    return arr


class FilesDetector:
    """Reads ``<stem>.npy|.txt`` and ``<stem>_mask.png`` from ``landmark_dir``."""

    name = "files"
    version = "files/1"
    cacheable = False  # reading the files is the detection

    def __init__(self, landmark_dir: Path | None) -> None:
        if landmark_dir is None:
            raise InputError(
                "the 'files' backend needs landmark_dir", hint="Pass --landmark-dir with <stem>.npy or <stem>.txt per image."
            )
        self.landmark_dir = Path(landmark_dir)
        if not self.landmark_dir.is_dir():
            raise InputError("landmark folder not found", path=self.landmark_dir, hint="Pass an existing folder.")
        self._masker = None

    def close(self) -> None:
        if self._masker is not None:
            self._masker.close()

    def _find(self, image: InputImage, suffixes: tuple[str, ...]) -> Path | None:
        for stem in dict.fromkeys((image.path.stem, image.name)):
            for suffix in suffixes:
                p = self.landmark_dir / f"{stem}{suffix}"
                if p.is_file():
                    return p
        return None

    def detect(self, image: InputImage) -> Detection:
        lm_path = self._find(image, (".npy", ".txt"))
        if lm_path is None:
            want = self.landmark_dir / f"{image.path.stem}.npy"
            raise InputError(
                f"no landmark file for {image.path.name}",
                path=want,
                hint=f"Provide {want.name} or {image.path.stem}.txt with (68, 2) or (478, 2) pixel landmarks.",
            )
        pts = read_landmarks(lm_path)
        fmt = FORMATS_BY_COUNT[pts.shape[0]]
        visible = np.isfinite(pts).all(axis=1)
        if visible.sum() < 3:
            raise InputError("fewer than 3 finite landmarks", path=lm_path, hint="Mark hidden points with NaN, not all of them.")
        confidence = visible.astype(np.float32)
        landmarks = np.where(visible[:, None], pts, 0.0).astype(np.float32)

        notes: list[str] = []
        mask_path = self._find(image, ("_mask.png",))
        if mask_path is not None:
            mask = _read_mask(mask_path, (image.height, image.width))
        else:
            if fmt == "ibug68" and not visible.all() or fmt == "mediapipe478" and not visible[:468].all():
                raise InputError(
                    "landmarks with NaN need a mask file",
                    path=self.landmark_dir / f"{image.path.stem}_mask.png",
                    hint="Provide the head mask, or give every landmark.",
                )
            if self._masker is None:
                from flame_prior.detectors.headmask import HeadMasker

                self._masker = HeadMasker()
            mask = self._masker(image.pixels, landmarks, fmt)
            notes.append("no mask file: head mask from selfie segmentation")
        return Detection(landmarks, confidence, fmt, mask, landmark_box(pts), notes)


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the mask ({err})", path=path, hint="Write an 8-bit grey PNG.") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != shape:
        raise InputError(
            f"mask is {arr.shape[1]}x{arr.shape[0]}, the image is {shape[1]}x{shape[0]}",
            path=path,
            hint="Write the mask at the upright image's size.",
        )
    if arr.dtype == bool:
        return arr.astype(np.float32)
    top = 65535.0 if arr.dtype == np.uint16 or arr.max(initial=0) > 255 else 255.0
    return np.clip(arr.astype(np.float32) / np.float32(top), 0.0, 1.0)
