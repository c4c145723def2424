"""A second detection pass for a known lens: faces the detector missed on the photo as taken are
looked for again on its ideal pinhole image (:mod:`flame_prior.distortion`).

Why: near the edge of a strongly distorting lens (k1 = -0.25) a turned face is squeezed along the
radius, and MediaPipe misses faces it finds once the lens is undone (the distortion scan rig: the
view at 33° yaw with 96 px between the eyes). A detection found this way is mapped back to the
photo's pixel grid (landmarks distorted exactly, the head mask resampled), so the view joins the
others as an ordinary observation of the photo.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from flame_prior.detectors import DetectConfig
from flame_prior.distortion import undistort_image, undistort_normalised, distort_pixels
from flame_prior.images import InputImage
from flame_prior.observe import ViewObservation, observe

__all__ = ["observe_through_lens", "ideal_to_photo_image"]


def ideal_to_photo_image(ideal: np.ndarray, fx: float, fy: float, cx: float, cy: float, dist: np.ndarray,
                         fill: float = 0.0) -> np.ndarray:
    """The inverse of :func:`~flame_prior.distortion.undistort_image`: an image ``(H, W[, C])`` on the
    ideal pinhole grid resampled onto the photo's grid (same size and intrinsics). Photo pixels where
    the lens cannot be inverted get ``fill``."""
    import cv2

    src = np.asarray(ideal)
    h, w = src.shape[:2]
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64) + 0.5, np.arange(h, dtype=np.float64) + 0.5)
    xy, ok = undistort_normalised(np.stack([(jj - cx) / fx, (ii - cy) / fy], -1), dist)
    map_x = np.where(ok, xy[..., 0] * fx + cx - 0.5, -1e6).astype(np.float32)
    map_y = np.where(ok, xy[..., 1] * fy + cy - 0.5, -1e6).astype(np.float32)
    return cv2.remap(src, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=fill).astype(src.dtype, copy=False)


def observe_through_lens(images: list[InputImage], fx: np.ndarray, fy: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                         distortion: np.ndarray, config: DetectConfig, progress=None) -> list[ViewObservation]:
    """Detect faces on the ideal pinhole images of ``images`` (each with its own ``(N,)`` intrinsics
    and ``(N, 5)`` lens); return the views found, as observations of the PHOTOS as taken.

    Detections are cached like the first pass's, under a key made of the photo's content and the
    lens (so a changed calibration detects again).
    """
    ideal = []
    for i, im in enumerate(images):
        lens = (fx[i], fy[i], cx[i], cy[i], *np.asarray(distortion[i]).tolist())
        key = hashlib.sha256(f"{im.sha256}:ideal-pinhole:{lens}".encode()).hexdigest()
        ideal.append(dataclasses.replace(im, pixels=undistort_image(im.pixels, fx[i], fy[i], cx[i], cy[i],
                                                                    distortion[i]), sha256=key))
    found, _ = observe(ideal, config, progress=progress)
    index = {im.name: i for i, im in enumerate(images)}
    out = []
    for view in found:
        i = index[view.image.name]
        det = view.detection
        lm = distort_pixels(det.landmarks, fx[i], fy[i], cx[i], cy[i], distortion[i]).astype(np.float32)
        mask = ideal_to_photo_image(det.mask, fx[i], fy[i], cx[i], cy[i], distortion[i])
        box = (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))
        out.append(ViewObservation(images[i], dataclasses.replace(det, landmarks=lm, mask=mask, face_box=box),
                                   view.notes + ["face found on the undistorted image (second detection pass)"]))
    return out
