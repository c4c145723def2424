"""Head mask from a photo and its face landmarks, offline (MediaPipe selfie segmentation).

The mask is meant for structure-from-motion and silhouettes of the HEAD: face, hair and ears,
no neck, torso or background. With a fixed camera and a turning head (the shared multi-view
scene) the static shirt and background would otherwise dominate the matches.

Rule, in the upright image's pixel grid (``u`` = the face's up direction chin → forehead in the
image, ``r`` ⟂ ``u``; ``h`` = the landmarks' extent along ``u``):

1. **Person mask**: selfie segmentation (general model, 256x256) on a square, axis-aligned crop
   around the face: the bounding box of a ``2.6 h`` square aligned with the face that reaches
   ``1 h`` above the topmost landmark (hair); zero outside the crop.
2. **Cut below the jaw**: the jaw landmarks (chin to both jaw angles) give, along ``r``, the
   height ``t_jaw(s)`` of the jaw line (held constant beyond the jaw angles, which removes the
   nape behind the ear). Person pixels more than ``0.04 h`` below that line are removed, with a
   soft edge ``0.02 h`` wide. The line follows the head's roll and the jaw's shape under yaw.
3. **Union** with the filled convex hull of the face landmarks (the face is always in).
4. Only connected regions that touch the face hull are kept (another person, stray blobs out);
   holes are not filled (hair gaps stay as segmented).
5. A Gaussian blur, sigma ``0.006 h`` (at least 1 px), then ``float32`` in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

__all__ = ["HeadMasker", "JAW_INDICES", "face_frame"]

LandmarkFormat = Literal["mediapipe478", "ibug68"]

JAW_INDICES: dict[str, list[int]] = {
    # Face Mesh face oval, lower part: right jaw angle (subject's right, image left in a frontal
    # view) through the chin (152) to the left jaw angle.
    "mediapipe478": [132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361],
    # iBUG 68 jaw contour without the two points at ear height.
    "ibug68": list(range(2, 15)),
}
"""Jaw-line landmark indices per landmark format (ordered along the jaw)."""

_CHIN = {"mediapipe478": 152, "ibug68": 8}
_N_FACE = {"mediapipe478": 468, "ibug68": 68}  # points that span the face hull (iris excluded)


def face_frame(landmarks: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The face's 2D frame in the image: ``(chin, u, r, h)``.

    ``chin`` ``(2,)`` pixels; ``u`` ``(2,)`` unit vector chin → forehead (image "up" of the face);
    ``r`` ``(2,)`` = ``u`` turned 90°; ``h`` the landmarks' extent along ``u`` in pixels.
    """
    pts = np.asarray(landmarks, dtype=np.float64)[: _N_FACE[fmt]]
    chin = pts[_CHIN[fmt]]
    if fmt == "mediapipe478":
        top = pts[10]
    else:  # brows' middle
        top = 0.5 * (pts[19] + pts[24])
    u = top - chin
    n = np.linalg.norm(u)
    u = u / n if n > 1e-6 else np.array([0.0, -1.0])
    r = np.array([-u[1], u[0]])
    t = (pts - chin) @ u
    h = float(max(t.max() - t.min(), 1.0))
    return chin, u, r, h


class HeadMasker:
    """Callable head-mask builder; holds one selfie-segmentation graph (``close()`` frees it)."""

    crop_side_h = 2.6
    """Segmentation crop side, in face heights ``h``."""
    crop_above_h = 1.0
    """How far the crop reaches above the topmost landmark, in ``h``."""
    cut_margin_h = 0.04
    """How far below the jaw line the person mask is cut, in ``h``."""

    def __init__(self) -> None:
        from mediapipe.python.solutions.selfie_segmentation import SelfieSegmentation

        self._seg = SelfieSegmentation(model_selection=0)

    def close(self) -> None:
        self._seg.close()

    def person(self, pixels: np.ndarray, landmarks: np.ndarray, fmt: str) -> np.ndarray:
        """``(H, W)`` float32 person probability from a crop around the face (0 outside it)."""
        H, W = pixels.shape[:2]
        chin, u, r, h = face_frame(landmarks, fmt)
        pts = np.asarray(landmarks, dtype=np.float64)[: _N_FACE[fmt]]
        rel = pts - chin
        s_mid = 0.5 * float((rel @ r).min() + (rel @ r).max())
        half = 0.5 * self.crop_side_h * h
        t_hi = float((rel @ u).max()) + self.crop_above_h * h
        t_lo = t_hi - 2 * half
        corners = np.array([chin + r * sv + u * tv for sv in (s_mid - half, s_mid + half) for tv in (t_lo, t_hi)])
        x0, y0 = np.floor(np.maximum(corners.min(axis=0), 0)).astype(int)
        x1, y1 = np.ceil(np.minimum(corners.max(axis=0), [W, H])).astype(int)
        out = np.zeros((H, W), np.float32)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return out
        crop = np.ascontiguousarray(pixels[y0:y1, x0:x1])
        res = self._seg.process(crop)
        if res.segmentation_mask is not None:
            out[y0:y1, x0:x1] = np.clip(res.segmentation_mask, 0.0, 1.0)
        return out

    def __call__(self, pixels: np.ndarray, landmarks: np.ndarray, fmt: str) -> np.ndarray:
        """``(H, W)`` float32 head mask in [0, 1] for ``pixels`` ``(H, W, 3)`` uint8 and ``landmarks`` ``(K, 2)``."""
        return head_mask(self.person(pixels, landmarks, fmt), landmarks, fmt, cut_margin_h=self.cut_margin_h)


def head_mask(person: np.ndarray, landmarks: np.ndarray, fmt: str, cut_margin_h: float = 0.04) -> np.ndarray:
    """Steps 2–5 of the module rule: jaw cut, union with the face hull, keep the face's region, blur.

    ``person`` ``(H, W)`` float32 in [0, 1]; returns ``(H, W)`` float32 in [0, 1]. The work is done
    in the window that holds the person mask and the face hull (plus the blur's reach).
    """
    H, W = person.shape
    pts = np.asarray(landmarks, dtype=np.float64)[: _N_FACE[fmt]]
    chin, u, r, h = face_frame(landmarks, fmt)
    sigma = max(0.006 * h, 1.0)

    hull_full = np.zeros((H, W), np.uint8)
    cv2.fillConvexPoly(hull_full, _hull_int(pts), 1, lineType=cv2.LINE_8, shift=4)
    ys_nz, xs_nz = np.nonzero((person > 0) | (hull_full > 0))
    out = np.zeros((H, W), np.float32)
    if len(xs_nz) == 0:
        return out
    pad = int(np.ceil(4 * sigma)) + 3
    x0, x1 = max(int(xs_nz.min()) - pad, 0), min(int(xs_nz.max()) + 1 + pad, W)
    y0, y1 = max(int(ys_nz.min()) - pad, 0), min(int(ys_nz.max()) + 1 + pad, H)
    hull = hull_full[y0:y1, x0:x1]

    # Soft jaw cut: t (height along u) must exceed the jaw line at the pixel's s (position along r).
    jaw = np.asarray(landmarks, dtype=np.float64)[JAW_INDICES[fmt]] - chin
    js, jt = jaw @ r, jaw @ u
    order = np.argsort(js)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - np.float32(chin[0]), ys + 0.5 - np.float32(chin[1])
    s = dx * np.float32(r[0]) + dy * np.float32(r[1])
    t = dx * np.float32(u[0]) + dy * np.float32(u[1])
    t_cut = np.interp(s.ravel(), js[order], jt[order]).reshape(s.shape).astype(np.float32) - np.float32(cut_margin_h * h)
    soft = np.float32(max(0.02 * h, 1.0))
    keep = np.clip((t - t_cut) / soft + 0.5, 0.0, 1.0)
    mask = np.maximum(person[y0:y1, x0:x1] * keep, hull.astype(np.float32))

    # Keep the connected regions that touch the face.
    n, labels = cv2.connectedComponents((mask >= 0.5).astype(np.uint8), connectivity=8)
    if n > 2:
        touching = np.unique(labels[(hull > 0) & (labels > 0)])
        region = np.isin(labels, touching).astype(np.uint8)
        region = cv2.dilate(region, np.ones((5, 5), np.uint8))  # keep the soft rim beside kept regions
        mask = mask * region

    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    out[y0:y1, x0:x1] = np.clip(mask, 0.0, 1.0)
    return out


def _hull_int(pts: np.ndarray) -> np.ndarray:
    """Convex hull as int32 points in cv2's fixed-point (shift=4) of pixel-centre coordinates."""
    hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)
    # Continuous coordinates (centres at +0.5) → cv2 draws on integer pixel centres.
    return np.round((hull - 0.5) * 16).astype(np.int32)
