"""Lens distortion (OpenCV's model) and the ideal pinhole views the fit works in.

**Model** (OpenCV, COLMAP's ``OPENCV`` camera, nerfstudio's ``OPENCV``): a distortion vector
``dist = (k1, k2, p1, p2, k3)`` in OpenCV's order acts on normalised image coordinates
``x = X / Z, y = Y / Z`` of a camera-frame point::

    r2 = x^2 + y^2
    x_d = x (1 + k1 r2 + k2 r2^2 + k3 r2^3) + 2 p1 x y + p2 (r2 + 2 x^2)
    y_d = y (1 + k1 r2 + k2 r2^2 + k3 r2^3) + p1 (r2 + 2 y^2) + 2 p2 x y
    u = fx x_d + cx,  v = fy y_d + cy          (pixels: corner origin, centres at +0.5)

**What the fit does with it.** The renderer and the landmark projection are pinhole, so a view
seen through a distorting lens is first turned into its IDEAL PINHOLE view (:func:`ideal_pinhole_view`):
the same size and the same ``fx, fy, cx, cy``, no distortion. Its landmarks are undistorted point by
point (:func:`undistort_pixels`, exact to 1e-6 px, not re-detected) and its photo and head mask are
resampled (:func:`undistort_image`: each ideal pixel centre is distorted and the photo is read
there, bilinearly). Everything the fit and the pixel-reading exports (texture, report, avatar data
set) see is the ideal view; the exports that can describe a lens (transforms.json, the COLMAP model)
write the ORIGINAL photos with ``k1, k2, p1, p2, k3``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from flame_prior.errors import InputError

if TYPE_CHECKING:
    from flame_prior.observe import ViewObservation

__all__ = ["N_DISTORTION", "DISTORTION_KEYS", "has_distortion", "distort_normalised", "undistort_normalised",
           "undistort_pixels", "distort_pixels", "undistort_image", "ideal_pinhole_view"]

#: Length of a distortion vector, and its names in OpenCV's order.
N_DISTORTION = 5
DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")


def has_distortion(dist: np.ndarray | None) -> bool:
    """Whether ``dist`` (``(5,)`` or ``(N, 5)``, or None) bends any ray."""
    return dist is not None and bool(np.any(np.asarray(dist, dtype=np.float64) != 0.0))


def distort_normalised(xy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Ideal normalised coordinates ``(..., 2)`` to distorted ones (the model above).

    ``dist``: ``(5,)``, or ``(..., 5)`` broadcasting against ``xy``'s leading dimensions.
    """
    xy = np.asarray(xy, dtype=np.float64)
    k1, k2, p1, p2, k3 = np.moveaxis(np.asarray(dist, dtype=np.float64), -1, 0)[..., None]
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    return np.stack([x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                     y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y], -1)


def undistort_normalised(xy_d: np.ndarray, dist: np.ndarray, iters: int = 20,
                         tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`distort_normalised` by Newton's method (forward-difference Jacobian).

    Returns ``(xy, ok)``: ``(..., 2)`` ideal coordinates and ``(...,)`` whether the inverse was
    found (re-distorting lands within ``1e-7`` of ``xy_d``; False where the lens folds back).
    """
    xy_d = np.asarray(xy_d, dtype=np.float64)
    xy = xy_d.copy()
    h = 1e-7
    for _ in range(iters):
        res = distort_normalised(xy, dist) - xy_d
        if np.all(np.abs(res) < tol):
            break
        jx = (distort_normalised(xy + [h, 0.0], dist) - xy_d - res) / h  # d(x_d, y_d)/dx
        jy = (distort_normalised(xy + [0.0, h], dist) - xy_d - res) / h
        det = jx[..., 0] * jy[..., 1] - jy[..., 0] * jx[..., 1]
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        dx = (jy[..., 1] * res[..., 0] - jy[..., 0] * res[..., 1]) / det
        dy = (-jx[..., 1] * res[..., 0] + jx[..., 0] * res[..., 1]) / det
        xy = xy - np.stack([dx, dy], -1)
    ok = np.all(np.abs(distort_normalised(xy, dist) - xy_d) < 1e-7, axis=-1) & np.all(np.isfinite(xy), axis=-1)
    return xy, ok


def undistort_pixels(uv: np.ndarray, fx: float, fy: float, cx: float, cy: float, dist: np.ndarray) -> np.ndarray:
    """Pixels ``(P, 2)`` of the photo to pixels of its ideal pinhole view (same ``fx, fy, cx, cy``).

    Raises:
        ValueError: a point lies where the lens folds back (no inverse).
    """
    uv = np.asarray(uv, dtype=np.float64)
    xy, ok = undistort_normalised(np.stack([(uv[..., 0] - cx) / fx, (uv[..., 1] - cy) / fy], -1), dist)
    if not np.all(ok):
        raise ValueError(f"distortion {list(np.asarray(dist))} cannot be inverted at pixels {uv[~ok][:3].tolist()}")
    return np.stack([xy[..., 0] * fx + cx, xy[..., 1] * fy + cy], -1)


def distort_pixels(uv: np.ndarray, fx: float, fy: float, cx: float, cy: float, dist: np.ndarray) -> np.ndarray:
    """Pixels ``(..., 2)`` of the ideal pinhole view to pixels of the photo (the lens applied)."""
    uv = np.asarray(uv, dtype=np.float64)
    xy = distort_normalised(np.stack([(uv[..., 0] - cx) / fx, (uv[..., 1] - cy) / fy], -1), dist)
    return np.stack([xy[..., 0] * fx + cx, xy[..., 1] * fy + cy], -1)


def undistort_image(image: np.ndarray, fx: float, fy: float, cx: float, cy: float, dist: np.ndarray,
                    size: tuple[int, int] | None = None, fill: float = 0.0) -> np.ndarray:
    """The photo ``(H, W[, C])`` resampled to its ideal pinhole view (bilinear; same dtype).

    Args:
        image: the photo as taken (any dtype OpenCV's ``remap`` takes).
        fx, fy, cx, cy: the intrinsics of both the photo and the ideal view (pixels, corner origin).
        dist: ``(5,)`` the photo's lens.
        size: ``(H, W)`` of the ideal view; default the photo's. The ideal view's pixel grid has the
            same origin, so ``cx, cy`` keep their meaning.
        fill: value where the ideal view sees outside the photo.

    Returns:
        ``(H', W'[, C])``: ideal pixel ``(j, i)`` (centre ``(j + 0.5, i + 0.5)``) holds the photo at
        :func:`distort_pixels` of that centre.
    """
    import cv2

    src = np.asarray(image)
    h, w = size if size is not None else src.shape[:2]
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64) + 0.5, np.arange(h, dtype=np.float64) + 0.5)
    uv = distort_pixels(np.stack([jj, ii], -1), fx, fy, cx, cy, dist)
    # cv2.remap addresses pixel centres by integer indices: continuous coordinate - 0.5.
    map_x, map_y = (uv[..., 0] - 0.5).astype(np.float32), (uv[..., 1] - 0.5).astype(np.float32)
    work = src.astype(np.float32) if src.dtype in (np.bool_, np.float16) else src
    out = cv2.remap(work, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                    borderValue=fill)
    return out.astype(src.dtype, copy=False)


def ideal_pinhole_view(view: ViewObservation, fx: float, fy: float, cx: float, cy: float,
                       dist: np.ndarray) -> ViewObservation:
    """``view`` as an ideal pinhole camera with the same size and ``fx, fy, cx, cy`` would see it.

    The landmarks are undistorted exactly, the photo and the head mask resampled
    (:func:`undistort_image`); the face box is the undistorted landmarks' box. A view without
    distortion is returned as it is.

    Raises:
        InputError: a landmark lies where the lens folds back (the distortion is implausible for
            this image).
    """
    if not has_distortion(dist):
        return view
    det = view.detection
    try:
        lm = undistort_pixels(det.landmarks, fx, fy, cx, cy, dist).astype(det.landmarks.dtype)
    except ValueError as exc:
        raise InputError(f"the lens distortion {[float(d) for d in dist]} cannot be undone at this view's face "
                         f"({exc})", path=view.image.path,
                         hint="Check the distortion coefficients given for this view (--intrinsics.file).") from None
    pixels = undistort_image(view.image.pixels, fx, fy, cx, cy, dist)
    mask = undistort_image(np.asarray(det.mask, dtype=np.float32), fx, fy, cx, cy, dist)
    box = (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))
    return dataclasses.replace(view, image=dataclasses.replace(view.image, pixels=pixels),
                               detection=dataclasses.replace(det, landmarks=lm, mask=mask, face_box=box))
