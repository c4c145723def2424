"""COLMAP text model: ``cameras.txt``, ``images.txt``, ``points3D.txt`` (in ``<out>/colmap_text/``).

The folder is deliberately neither ``<out>/sparse/`` (GaussianAvatars and 3DGS switch to their COLMAP
loader when ``sparse/`` exists) nor ``<out>/colmap/sparse/0`` (nerfstudio's older layout). Point a
COLMAP-based tool at it explicitly, with the images from ``<out>/images/``.

* ``cameras.txt``: ``CAMERA_ID PINHOLE WIDTH HEIGHT fx fy cx cy`` for a view without lens distortion,
  ``CAMERA_ID OPENCV WIDTH HEIGHT fx fy cx cy k1 k2 p1 p2`` for one with (``FULL_OPENCV`` with
  ``k3`` and ``k4 = k5 = k6 = 0`` when ``k3`` is not 0); the images are then the photos as taken.
  One camera shared by all views when every view has identical intrinsics, lens and size, else one
  per view (ids from 1). Pixel coordinates
  follow COLMAP's (and flame-prior's) convention: origin at the top-left corner of the image, pixel
  centres at +0.5, so ``cx, cy`` are written unchanged.
* ``images.txt``: two lines per view: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then an empty
  points2D line. ``(q, t)`` is the world-to-camera pose, Hamilton unit quaternion with ``qw >= 0``,
  camera axes OpenCV = COLMAP (+X right, +Y down, +Z forward), ``x_cam = R(q) x_world + t``. The world
  is FLAME's model frame (metres, +Y up, +Z out of the face), so the model has metric scale.
  ``NAME`` is the image file name relative to the image folder (``<name>.png`` by default; the
  full export passes the names it wrote into ``images/``: ``<name>.jpg`` for a copied JPEG).
* ``points3D.txt``: the fitted FLAME mesh vertices as points (``POINT3D_ID X Y Z R G B ERROR`` with
  error 0 and an **empty track**: they were not triangulated from features; colour from the texture),
  a seed point cloud for Gaussian splatting. ``points=False`` writes the header only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flame_prior.export._common import camera_arrays, vertex_colours
from flame_prior.fit import FitResult
from flame_prior.geometry import rotation_matrix_to_quaternion

__all__ = ["write_colmap_text"]


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest round-trip representation: no precision lost


def _camera_line(p: tuple) -> str:
    """``MODEL WIDTH HEIGHT PARAMS`` of one camera: the simplest of PINHOLE, OPENCV, FULL_OPENCV that holds its lens."""
    w, h, fx, fy, cx, cy, k1, k2, p1, p2, k3 = p
    params = [fx, fy, cx, cy]
    model = "PINHOLE"
    if any((k1, k2, p1, p2, k3)):
        model, params = ("FULL_OPENCV", params + [k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]) if k3 else \
            ("OPENCV", params + [k1, k2, p1, p2])
    return f"{model} {w} {h} " + " ".join(_fmt(x) for x in params)


def write_colmap_text(model_dir: str | Path, result: FitResult, image_names: list[str] | None = None,
                      *, points: bool = True) -> Path:
    """Write the COLMAP text model of the fitted cameras into ``model_dir`` (format: module docstring).

    Args:
        model_dir: the model folder, normally ``<out>/colmap_text``; created if missing.
        result: the fit.
        image_names: file name per fitted view (``result.views`` order), relative to the image folder;
            default ``<view name>.png`` (the PNGs under ``<out>/images/``).
        points: write the fitted mesh vertices as track-less points (else an empty ``points3D.txt``).

    Returns:
        ``model_dir``.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    n = len(result.cameras)
    if image_names is None:
        image_names = [f"{vf.name}.png" for vf in result.views]
    if len(image_names) != n:
        raise ValueError(f"write_colmap_text: {len(image_names)} image names for {n} cameras")
    for name in image_names:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"write_colmap_text: image name {name!r} is empty or holds white space, "
                             "which COLMAP's text format cannot store")
    cam = camera_arrays(result)
    intr = [(int(cam["width"][i]), int(cam["height"][i]), float(cam["fx"][i]), float(cam["fy"][i]),
             float(cam["cx"][i]), float(cam["cy"][i]), *(float(d) for d in cam["distortion"][i])) for i in range(n)]
    shared = n > 0 and all(p == intr[0] for p in intr)
    camera_ids = [1] * n if shared else list(range(1, n + 1))

    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[fx, fy, cx, cy(, k1, k2, p1, p2(, k3, k4, k5, k6))]",
             "# flame-prior: pinhole or OpenCV lens, pixel origin at the top-left image corner (COLMAP convention)",
             f"# Number of cameras: {1 if shared else n}"]
    for cid, p in (zip([1], intr[:1]) if shared else zip(camera_ids, intr)):
        lines.append(f"{cid} {_camera_line(p)}")
    (model_dir / "cameras.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    q = rotation_matrix_to_quaternion(torch.as_tensor(cam["R"], dtype=torch.float64)).numpy() if n else np.zeros((0, 4))
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             "# flame-prior: world-to-camera, OpenCV/COLMAP camera axes, world = FLAME frame in metres",
             f"# Number of images: {n}, mean observations per image: 0"]
    for i in range(n):
        vals = " ".join(_fmt(x) for x in (*q[i], *cam["t"][i]))
        lines.append(f"{i + 1} {vals} {camera_ids[i]} {image_names[i]}")
        lines.append("")
    (model_dir / "images.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             "# flame-prior: fitted FLAME mesh vertices (not triangulated: empty tracks)"]
    if points:
        verts = np.asarray(result.vertices, dtype=np.float64)
        col = vertex_colours(result)
        lines.append(f"# Number of points: {verts.shape[0]}, mean track length: 0")
        for j, (p, c) in enumerate(zip(verts, col)):
            lines.append(f"{j + 1} {_fmt(p[0])} {_fmt(p[1])} {_fmt(p[2])} {int(c[0])} {int(c[1])} {int(c[2])} 0")
    else:
        lines.append("# Number of points: 0, mean track length: 0")
    (model_dir / "points3D.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return model_dir
