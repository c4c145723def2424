"""FLAME-avatar data set: the layout VHAP's ``export_as_nerf_dataset.py`` writes and GaussianAvatars reads.

One timestep (index 0) seen by N cameras, one camera per fitted view. Files, relative to ``out_dir``:

* ``transforms.json`` (all frames; VHAP's ``NeRFDataset`` reads it), ``transforms_train.json``,
  ``transforms_val.json``, ``transforms_test.json`` (GaussianAvatars reads these three). Each holds
  ``frames``, ``timestep_indices`` and ``camera_indices`` (VHAP asserts on these), and the shared
  ``fl_x, fl_y, cx, cy, w, h, camera_angle_x, camera_angle_y`` only when all frames agree. Split, as
  VHAP's ``split_json`` does for a single timestep: with several cameras the last camera is the
  validation view (``val``) and the others train; with one camera ``val`` is empty. ``test`` (held-out
  *timesteps*) is always empty here: it has no frames and ``timestep_indices == []``. Without ``--eval``
  GaussianAvatars merges val and test back into training.
* every frame: ``timestep_index`` (0), ``timestep_index_original`` (0), ``timestep_id`` (``"00000"``),
  ``camera_index`` (0..N-1), ``camera_id`` (the view name), ``fl_x, fl_y, cx, cy, w, h`` (pixels, of the
  resampled image: ``cx = w/2``, ``cy = h/2``, ``fl_x = fl_y``), ``camera_angle_x = 2 atan(w / 2 fl_x)``,
  ``camera_angle_y = 2 atan(h / 2 fl_y)`` (radians), ``transform_matrix`` (4x4 camera-to-world, OpenGL
  camera axes +X right, +Y up, +Z back; world = FLAME's frame in metres, *not* re-centred: VHAP moves
  the mean FLAME translation to the origin, flame-prior keeps FLAME's frame, and the FLAME
  ``translation`` parameter places the head in it), ``file_path`` (``images/00000_<view>.png``, the
  timestep, then the view's own name, e.g. ``00000_IMG_0012.png``), ``fg_mask_path``
  (``fg_masks/00000_<view>.png``), ``flame_param_path`` (``flame_param/00000.npz``).
* ``images/00000_<view>.png``: RGB, the photo composited over ``background`` with the head mask as alpha
  (VHAP exports white-background images; train GaussianAvatars with ``--white_background``), after
  the crop/pad below. ``fg_masks/00000_<view>.png``: 8-bit grey, the head mask (255 = head).
* ``flame_param/00000.npz`` (float32): ``translation (1,3)``, ``rotation (1,3)``, ``neck_pose (1,3)``,
  ``jaw_pose (1,3)``, ``eyes_pose (1,6)``, ``shape (n_shape_out,)`` and ``expr (1, n_expr_out)``
  zero-padded, ``static_offset (1, 5143, 3)`` zeros (FLAME's 5023 vertices + GaussianAvatars' 120 teeth).
* ``canonical_flame_param.npz``: the same keys, pose/expression/translation zero, the fitted shape
  (GaussianAvatars only checks that it exists, to pick its FLAME data-set reader).

Lens distortion: GaussianAvatars and VHAP know only pinhole cameras, so a view whose camera has
lens distortion (``PinholeCameras.distortion``) is first UNDISTORTED (photo and mask resampled to
the ideal pinhole view with the same ``fx, fy, cx, cy`` and size, :mod:`flame_prior.distortion`), then
centred as below; the written intrinsics are that pinhole's.

Why the images are cropped/padded: GaussianAvatars builds each camera from ``camera_angle_x`` and the
image size alone (focal ``w / (2 tan(fovx/2))``, square pixels, principal point at the image centre).
So each view is translated by whole pixels (pad with ``background``/mask 0, or crop; never scaled) until
its principal point is exactly the centre: ``cx' = cx - ox = w'/2`` with ``w' = max(2 cx, 2 (W - cx))``
(nothing of the photo is cut off). When ``2 cx`` is not an integer (off by more than 1e-3 px) the residual
sub-pixel shift is done by bilinear interpolation. ``fx`` must equal ``fy`` (1e-6 relative), else
:class:`~flame_prior.errors.InputError`. ``flame_prior.crop_offsets`` in ``transforms.json`` records
``(ox, oy)`` per frame: original pixel coordinates = exported ones + offset.

The parameters only reproduce the fitted mesh when GaussianAvatars/VHAP load the same FLAME model file
the fit used (``flame_prior.model``): FLAME 2020 and 2023 differ in template and bases.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from flame_prior.errors import InputError
from flame_prior.export._common import (
    CONVENTION,
    CONVENTION_SHORT,
    camera_arrays,
    flame_prior_version,
    ideal_views,
    save_png,
    write_json,
)
from flame_prior.fit import FitResult
from flame_prior.flame.assets import ModelInfo
from flame_prior.geometry import opencv_w2c_to_opengl_c2w
from flame_prior.observe import ViewObservation

__all__ = ["write_avatar_dataset", "centred_window", "shift_image", "N_VERTICES_WITH_TEETH", "CANONICAL_JAW_POSE"]

N_VERTICES_WITH_TEETH = 5023 + 120
#: Jaw pose of ``canonical_flame_param.npz``. VHAP writes (0.3, 0, 0) (mouth open); flame-prior's is the rest pose.
CANONICAL_JAW_POSE = (0.0, 0.0, 0.0)
_SUBPIXEL_TOL = 1e-3
_FOCAL_RTOL = 1e-6


def centred_window(c: float, size: int) -> tuple[int, float]:
    """New size and offset that put the principal point ``c`` at the centre of a window of ``size`` px.

    Returns ``(new_size, offset)``: exported coordinate = original coordinate - ``offset`` and
    ``c - offset == new_size / 2``. The window covers the whole original extent. ``offset`` is an
    integer whenever ``2 c`` is one (within 1e-3 px, then snapped).
    """
    two_c = 2.0 * float(c)
    if abs(two_c - round(two_c)) <= 2 * _SUBPIXEL_TOL:
        two_c = float(round(two_c))
        new = int(max(two_c, 2 * size - two_c))
    else:
        new = int(math.ceil(max(two_c, 2 * size - two_c)))
    if new < 1:
        raise InputError(f"principal point {c} gives an empty image after centring (size {size})")
    offset = two_c / 2.0 - new / 2.0
    if abs(offset - round(offset)) <= _SUBPIXEL_TOL:
        offset = float(round(offset))
    return new, offset


def shift_image(img: np.ndarray, ox: float, oy: float, w: int, h: int, fill: np.ndarray | float) -> np.ndarray:
    """Translate ``img`` (``(H, W)`` or ``(H, W, C)``, any dtype) into a ``(h, w[, C])`` canvas.

    Exported pixel (column j, row k) takes the original pixel at (j + ox, k + oy), filled with ``fill``
    outside the original. Integer offsets copy pixels exactly; fractional ones interpolate bilinearly.
    """
    src = np.asarray(img)
    squeeze = src.ndim == 2
    if squeeze:
        src = src[..., None]
    H, W, C = src.shape
    fill_v = np.broadcast_to(np.asarray(fill, dtype=np.float64), (C,))
    if float(ox).is_integer() and float(oy).is_integer():
        ox_i, oy_i = int(ox), int(oy)
        out = np.empty((h, w, C), dtype=src.dtype)
        out[:] = fill_v.astype(src.dtype)
        x0, x1 = max(0, -ox_i), min(w, W - ox_i)
        y0, y1 = max(0, -oy_i), min(h, H - oy_i)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = src[y0 + oy_i:y1 + oy_i, x0 + ox_i:x1 + ox_i]
    else:
        # Pad by one pixel of fill so that samples straddling the border blend into the fill.
        pad = np.empty((H + 2, W + 2, C), dtype=np.float64)
        pad[:] = fill_v
        pad[1:-1, 1:-1] = src
        xs = np.arange(w) + ox + 1.0
        ys = np.arange(h) + oy + 1.0
        x0 = np.floor(xs).astype(np.int64)
        y0 = np.floor(ys).astype(np.int64)
        fx, fy = xs - x0, ys - y0
        xa, xb = np.clip(x0, 0, W + 1), np.clip(x0 + 1, 0, W + 1)
        ya, yb = np.clip(y0, 0, H + 1), np.clip(y0 + 1, 0, H + 1)
        top = pad[ya][:, xa] * (1 - fx)[None, :, None] + pad[ya][:, xb] * fx[None, :, None]
        bot = pad[yb][:, xa] * (1 - fx)[None, :, None] + pad[yb][:, xb] * fx[None, :, None]
        val = top * (1 - fy)[:, None, None] + bot * fy[:, None, None]
        outside_x = (xs < 0) | (xs > W + 1)
        outside_y = (ys < 0) | (ys > H + 1)
        val[:, outside_x] = fill_v
        val[outside_y] = fill_v
        if np.issubdtype(src.dtype, np.integer):
            info = np.iinfo(src.dtype)
            out = np.clip(np.round(val), info.min, info.max).astype(src.dtype)
        else:
            out = val.astype(src.dtype)
    return out[..., 0] if squeeze else out


def _padded(name: str, a: np.ndarray, n_out: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.shape[0] > n_out:
        if np.any(a[n_out:] != 0):
            raise InputError(f"the fit has {a.shape[0]} {name} coefficients but the avatar format is asked for "
                             f"{n_out}; cutting non-zero coefficients would change the head",
                             hint=f"raise n_{name}_out to {a.shape[0]} (and GaussianAvatars' --n_{name} to match)")
        a = a[:n_out]
    out = np.zeros(n_out)
    out[:a.shape[0]] = a
    return out


def _flame_param_file(shape: np.ndarray, expr: np.ndarray, rotation, neck, jaw, eyes, translation) -> dict:
    f32 = lambda x, s: np.asarray(x, dtype=np.float32).reshape(s)  # noqa: E731
    return {
        "translation": f32(translation, (1, 3)),
        "rotation": f32(rotation, (1, 3)),
        "neck_pose": f32(neck, (1, 3)),
        "jaw_pose": f32(jaw, (1, 3)),
        "eyes_pose": f32(eyes, (1, 6)),
        "shape": f32(shape, (-1,)),
        "expr": f32(expr, (1, -1)),
        "static_offset": np.zeros((1, N_VERTICES_WITH_TEETH, 3), dtype=np.float32),
    }


def _split(frames: list[dict], n_cams: int) -> dict[str, tuple[list[dict], list[int], list[int]]]:
    """VHAP's split for one timestep: (frames, timestep_indices, camera_indices) per division."""
    cams = list(range(n_cams))
    val_cams = cams[-1:] if n_cams > 1 else []
    train_cams = [c for c in cams if c not in val_cams]
    return {
        "train": ([f for f in frames if f["camera_index"] in train_cams], [0], train_cams),
        "val": ([f for f in frames if f["camera_index"] in val_cams], [0], val_cams),
        "test": ([], [], cams),
    }


def write_avatar_dataset(out_dir: str | Path, views: list[ViewObservation], result: FitResult,
                         n_shape_out: int = 300, n_expr_out: int = 100, *,
                         background: tuple[int, int, int] = (255, 255, 255), model: ModelInfo | None = None) -> Path:
    """Write the FLAME-avatar data set (format: module docstring) into ``out_dir``.

    Args:
        out_dir: the data-set folder (GaussianAvatars' ``--source_path``); keep it apart from the
            nerfstudio export, whose ``transforms.json`` and ``images/`` would collide.
        views: observations (images and masks) of at least the fitted views.
        result: the fit.
        n_shape_out, n_expr_out: coefficient counts of the reader's FLAME (GaussianAvatars: 300, 100).
        background: RGB the photo is composited over (outside the head mask and in padding).
        model: the model files the fit used, named in the metadata when given.

    Returns:
        the path of ``transforms.json``.

    Raises:
        InputError: a view has ``fx != fy``, or the fit has more non-zero coefficients than asked for.
    """
    out_dir = Path(out_dir)
    obs = ideal_views(views, result)  # lens distortion undone: these readers know only pinholes
    cam = camera_arrays(result)
    n = len(obs)
    bg = np.asarray(background, dtype=np.float64).reshape(3)
    c2w = opencv_w2c_to_opengl_c2w(cam["R"], cam["t"])

    frames, offsets = [], []
    for i, o in enumerate(obs):
        fx, fy = float(cam["fx"][i]), float(cam["fy"][i])
        if abs(fx - fy) > _FOCAL_RTOL * max(abs(fx), abs(fy)):
            raise InputError(f"view {o.image.name}: fx = {fx:.6f} and fy = {fy:.6f} differ; the FLAME-avatar "
                             "format (GaussianAvatars) assumes square pixels and cannot store this camera",
                             path=o.image.path,
                             hint="fit with one shared focal length (fx = fy) or export without the avatar format")
        f = 0.5 * (fx + fy)
        W, H = int(cam["width"][i]), int(cam["height"][i])
        w, ox = centred_window(cam["cx"][i], W)
        h, oy = centred_window(cam["cy"][i], H)
        alpha = np.clip(np.asarray(o.detection.mask, dtype=np.float64), 0.0, 1.0)
        rgb = np.asarray(o.image.pixels, dtype=np.float64)
        comp = rgb * alpha[..., None] + bg * (1.0 - alpha[..., None])
        img = shift_image(np.clip(np.round(comp), 0, 255).astype(np.uint8), ox, oy, w, h, bg)
        mask = shift_image(np.round(alpha * 255).astype(np.uint8), ox, oy, w, h, 0.0)
        stem = f"00000_{o.image.name}"  # timestep 00000, then the user's own name of the view
        save_png(out_dir / "images" / f"{stem}.png", img)
        save_png(out_dir / "fg_masks" / f"{stem}.png", mask)
        frames.append({
            "timestep_index": 0,
            "timestep_index_original": 0,
            "timestep_id": "00000",
            "camera_index": i,
            "camera_id": o.image.name,
            "fl_x": f, "fl_y": f, "cx": w / 2.0, "cy": h / 2.0, "w": w, "h": h,
            "camera_angle_x": 2.0 * math.atan(w / (2.0 * f)),
            "camera_angle_y": 2.0 * math.atan(h / (2.0 * f)),
            "transform_matrix": c2w[i].tolist(),
            "file_path": f"images/{stem}.png",
            "fg_mask_path": f"fg_masks/{stem}.png",
            "flame_param_path": "flame_param/00000.npz",
        })
        offsets.append([ox, oy])

    fl = result.flame
    shape = _padded("shape", fl["shape"], n_shape_out)
    expr = _padded("expr", fl.get("expression", np.zeros(0)), n_expr_out)
    params = _flame_param_file(shape, expr, fl["rotation"], fl["neck_pose"], fl["jaw_pose"], fl["eye_pose"],
                               fl["translation"])
    (out_dir / "flame_param").mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "flame_param" / "00000.npz", **params)
    canonical = _flame_param_file(shape, np.zeros(n_expr_out), np.zeros(3), np.zeros(3), CANONICAL_JAW_POSE,
                                  np.zeros(6), np.zeros(3))
    np.savez(out_dir / "canonical_flame_param.npz", **canonical)

    meta = {
        "flame_prior": {
            "version": flame_prior_version(),
            "convention": CONVENTION_SHORT,
            "frame": CONVENTION,
            "format": "FLAME-avatar data set (VHAP export / GaussianAvatars reader), one timestep",
            "crop_offsets": {"note": "original pixel coordinate = exported pixel coordinate + offset",
                             "per_camera_index": offsets},
            "model": {k: v for k, v in (model.as_dict() if model is not None else {}).items()
                      if k in ("path", "sha256", "n_shape", "n_expr", "notes")},
            "n_shape_out": n_shape_out, "n_expr_out": n_expr_out,
        }
    }

    out = write_json(out_dir / "transforms.json", transforms_file(meta, frames, [0], list(range(n))))
    for division, (fr, ts, cs) in _split(frames, n).items():
        write_json(out_dir / f"transforms_{division}.json", transforms_file(meta, fr, ts, cs))
    return out


#: Per-frame keys written once at the top of a transforms file when every frame has the same value.
SHARED_FRAME_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")


def transforms_file(meta: dict, frames: list[dict], timesteps: list[int], cameras: list[int]) -> dict:
    """One ``transforms*.json`` of the FLAME-avatar data set: ``meta``, the intrinsics the frames
    share (as VHAP writes them), the frames and the division's timestep and camera indices."""
    d = dict(meta)
    if frames and all(all(fr[k] == frames[0][k] for k in SHARED_FRAME_KEYS) for fr in frames):
        d.update({k: frames[0][k] for k in SHARED_FRAME_KEYS})
    d.update({"frames": frames, "timestep_indices": timesteps, "camera_indices": cameras})
    return d
