"""EG3D camera labels: ``dataset.json`` as EG3D's ``dataset_tool.py`` reads it (and aligned square crops).

Format (EG3D, ``dataset_preprocessing/ffhq/preprocess_cameras.py`` writes it, ``dataset_tool.py``
reads it from the source folder)::

    {"labels": [["<file name relative to the folder>", [25 floats]], ...]}

The 25 floats are the 4x4 camera-to-world matrix, flattened row by row (16), then the 3x3
normalised intrinsics, flattened row by row (9). EG3D's ``docs/camera_conventions.md``: "Camera
poses are in OpenCV Cam2World format. Intrinsics are normalized."

**Conversion from flame-prior's camera** (``x_cam = R x_world + t``, OpenCV axes, world = FLAME's
frame in metres, pixels with the corner origin):

* Axes: EG3D's world is +Y up with the face looking along +Z (its frontal camera sits on +Z,
  ``camera_utils.create_cam2world_matrix`` gives it camera axes x = +X, y = -Y, z = -Z: OpenCV);
  FLAME's frame is the same (+Y up, +Z out of the face, +X to the subject's left), so no axis
  changes: the rotation of the label is ``Rᵀ``.
* Origin: the head at the origin of FLAME's frame (the fitted head has zero global rotation and
  translation; FLAME 2023's template spans about x ±0.11, y −0.19..0.13, z −0.15..0.08 m).
* Units: EG3D's FFHQ labels put the camera 2.7 units from the head; they come from a
  reconstruction in decimetres with the camera 10 dm (1 m) away, scaled by 0.27
  (``3dface2idr_mat.py``). So 1 m = ``scale`` = 2.7 EG3D units by default: the camera centre of
  the label is ``scale * (−Rᵀ t)``. Scaling the world and the camera centre together changes no
  projection, so the labels reproduce the fitted projection exactly; the radius is 2.7 × the fitted
  distance in metres (single photos: set by the focal length, which is a prior unless known).
* Intrinsics: ``[[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]`` (principal point with the corner
  origin, as EG3D's 0.5 for the centre).

**Crops** (``crop_size > 0``): a square window centred on the projection of FLAME's origin, as wide
as :data:`CROP_EXTENT_M` metres at the origin's depth (head top to chin with a margin), resampled to
``crop_size`` pixels (outside the photo the image is mirrored at its border). Its label has
the same pose and the intrinsics of the window: ``fx' = fx / side``, ``cx' = (cx − x0) / side``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Width of the square crop, in metres at the depth of FLAME's origin (the head is ~0.32 m with the neck).
CROP_EXTENT_M = 0.30


def eg3d_label(R: np.ndarray, t: np.ndarray, fx: float, fy: float, cx: float, cy: float, width: int, height: int,
               scale: float = 2.7) -> list[float]:
    """The 25 floats of one EG3D label: flattened OpenCV camera-to-world (camera centre scaled by
    ``scale`` EG3D units per metre) and flattened normalised intrinsics. See the module docstring."""
    R, t = np.asarray(R, np.float64).reshape(3, 3), np.asarray(t, np.float64).reshape(3)
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -scale * (R.T @ t)
    K = np.array([[fx / width, 0.0, cx / width], [0.0, fy / height, cy / height], [0.0, 0.0, 1.0]])
    return [float(v) for v in np.concatenate([c2w.reshape(-1), K.reshape(-1)])]


def crop_window(R: np.ndarray, t: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> tuple[float, float, float]:
    """``(x0, y0, side)`` in pixels: the square centred on FLAME's origin, :data:`CROP_EXTENT_M` wide at its depth."""
    t = np.asarray(t, np.float64).reshape(3)
    depth = float(t[2])  # the origin in camera coordinates is t
    if depth <= 0:
        raise ValueError("the head is behind the camera")
    u, v = fx * t[0] / depth + cx, fy * t[1] / depth + cy
    side = 0.5 * (fx + fy) * CROP_EXTENT_M / depth
    return u - side / 2, v - side / 2, side


def write_eg3d_dataset(out_dir: Path, root: Path, records: list[dict], *, scale: float = 2.7,
                       crop_size: int = 0) -> Path | None:
    """Write ``out_dir/dataset.json`` (labels of the original images, named relative to ``root``) and,
    with ``crop_size``, ``out_dir/crops/<same names, .png>`` with ``out_dir/crops/dataset.json``.

    ``records``: batch records (:mod:`flame_prior.batch.records`) of finished single-image scenes.
    Every file is written through a temporary name and a rename. Returns the labels file, or None
    when there is no record.
    """
    from flame_prior.files import write_bytes_atomic

    if not records:
        return None
    out_dir = Path(out_dir)
    labels, crop_labels = [], []
    for rec in records:
        for v in rec["views"]:
            labels.append([v["file"], eg3d_label(v["R"], v["t"], v["fx"], v["fy"], v["cx"], v["cy"], v["width"],
                                                 v["height"], scale)])
            if crop_size > 0:
                name = str(Path(v["file"]).with_suffix(".png").as_posix())
                target = out_dir / "crops" / name
                x0, y0, side = crop_window(v["R"], v["t"], v["fx"], v["fy"], v["cx"], v["cy"])
                _write_crop(Path(root) / v["file"], target, x0, y0, side, crop_size)
                s = 1.0 / side
                K = [v["fx"] * s, 0.0, (v["cx"] - x0) * s, 0.0, v["fy"] * s, (v["cy"] - y0) * s, 0.0, 0.0, 1.0]
                pose = eg3d_label(v["R"], v["t"], v["fx"], v["fy"], v["cx"], v["cy"], v["width"], v["height"], scale)[:16]
                crop_labels.append([name, pose + K])
    path = write_bytes_atomic(out_dir / "dataset.json", json.dumps({"labels": labels}).encode())
    if crop_size > 0:
        write_bytes_atomic(out_dir / "crops" / "dataset.json", json.dumps({"labels": crop_labels}).encode())
    return path


def _write_crop(src: Path, target: Path, x0: float, y0: float, side: float, size: int) -> None:
    import cv2

    from flame_prior.files import write_bytes_atomic
    from flame_prior.images import load_images

    images, _ = load_images(src)
    pixels = images[0].pixels  # upright, as the camera refers to
    s = size / side
    # pixel-centre convention: continuous x maps to (x - x0) * s, and cv2 samples at integer centres
    M = np.array([[s, 0.0, -x0 * s - 0.5 + 0.5 * s], [0.0, s, -y0 * s - 0.5 + 0.5 * s]])
    crop = cv2.warpAffine(pixels, M, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(crop[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode the crop of {src}")
    write_bytes_atomic(target, data.tobytes())
