"""nerfstudio export: ``transforms.json`` + ``images/`` + ``masks/`` + ``flame_points.ply``.

Format (read by nerfstudio's ``nerfstudio-data`` dataparser, ``nerfstudio_dataparser.py``):

* ``camera_model``: ``"PINHOLE"`` when no view has lens distortion (no distortion keys are written),
  else ``"OPENCV"`` with ``k1, k2, k3, p1, p2`` per frame (nerfstudio's OpenCV model: the same
  polynomial as OpenCV's with ``k4 = 0``; :mod:`flame_prior.distortion`). The images are then the
  photos AS TAKEN, distorted; nerfstudio undoes the lens itself.
* ``frames``: one per fitted view, in the fit's order (nerfstudio re-sorts them by file name), each with

  - ``file_path``: ``images/<name>.jpg`` or ``images/<name>.png``, the exact pixel grid the camera
    refers to: the input file itself, copied byte for byte, when its pixels need no change (a JPEG or
    8-bit PNG, RGB, not rotated by EXIF: :func:`stored_photo`), else a lossless PNG of the upright
    (EXIF-rotated) RGB photo;
  - ``mask_path``: ``masks/<name>.png``, single-channel 8-bit, 255 = head (mask >= 0.5), 0 = not head.
    nerfstudio treats every non-zero pixel as "use", so the mask is written binary;
  - ``transform_matrix``: 4x4 camera-to-world, **OpenGL camera axes** (+X right, +Y up, +Z backwards),
    world = FLAME's model frame in metres (+Y up, +Z out of the face). It is
    :func:`flame_prior.geometry.opencv_w2c_to_opengl_c2w` of the fitted OpenCV world-to-camera pose;
  - ``fl_x, fl_y, cx, cy`` (pixels) and ``w, h`` (image size): this view's pinhole intrinsics, pixel
    coordinates with the origin at the top-left corner, ``cy`` measured from the top row.

  When every frame has the same ``fl_x, fl_y, cx, cy, w, h`` (and ``k1, k2, k3, p1, p2``) they are
  also written at the top level (nerfstudio then uses those; they never disagree with the per-frame
  values). Otherwise each frame carries its own, which nerfstudio's dataparser reads per frame.
* ``applied_transform``: the 3x4 identity. No change of world axes was applied (unlike
  ``ns-process-data``, whose COLMAP conversion swaps axes): the world is FLAME's frame as it is.
* ``ply_file_path``: ``flame_points.ply``, the fitted FLAME mesh's vertices (binary PLY, float32
  x y z in the world frame, uint8 red green blue from the texture), the seed point cloud splatfacto
  reads as ``points3D_xyz``.
* ``flame_param_path``: ``flame_params.npz`` (see :mod:`flame_prior.export.flame_params`).
* ``flame_prior``: ``version``, ``convention`` (one line) and ``frame`` (each axis convention spelt
  out), ``intrinsics_source``, and the dataparser settings that keep FLAME's frame.

Keeping FLAME's frame in nerfstudio: its parser re-orients (``orientation_method="up"``), re-centres
(``center_method="poses"``) and rescales (``auto_scale_poses=True``) by default. Pass
``--pipeline.datamanager.dataparser.orientation-method none --pipeline.datamanager.dataparser.center-method
none --pipeline.datamanager.dataparser.auto-scale-poses False`` to train in FLAME's frame and metres
(the FLAME mesh then lines up with the scene without any transform).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from flame_prior.export._common import (
    CONVENTION,
    CONVENTION_SHORT,
    camera_arrays,
    flame_prior_version,
    mask_to_u8,
    match_views,
    save_png,
    vertex_colours,
    write_json,
)
from flame_prior.fit import FitResult
from flame_prior.geometry import opencv_w2c_to_opengl_c2w
from flame_prior.images import InputImage
from flame_prior.observe import ViewObservation
from flame_prior.threads import parallel_map

__all__ = ["write_transforms", "write_images_and_masks", "write_point_ply", "stored_photo", "INTRINSIC_KEYS"]

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
#: nerfstudio's names of the OpenCV lens terms, and their index in flame-prior's (k1, k2, p1, p2, k3).
DISTORTION_KEYS = {"k1": 0, "k2": 1, "k3": 4, "p1": 2, "p2": 3}
DATAPARSER_SETTINGS_KEEPING_FLAME_FRAME = {
    "orientation_method": "none",
    "center_method": "none",
    "auto_scale_poses": False,
    "scale_factor": 1.0,
}


#: Input formats whose files are exported as they are (when :func:`stored_photo` allows), and their suffix.
COPIED_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}
EXIF_ORIENTATION = 0x0112


def stored_photo(image: InputImage) -> tuple[bytes, str] | None:
    """The input file's bytes and the suffix to export them under, when they decode to exactly
    ``image.pixels`` in any reader; None when the photo must be re-encoded.

    The file is copied only if it is still the file the pixels came from (same SHA-256), is a JPEG or
    an 8-bit PNG, decodes to RGB (not grey, CMYK, palette or alpha, which intake converted) and has
    no EXIF rotation (intake turned the pixels upright; readers such as nerfstudio's do not). Copying
    costs a file write; re-encoding a 1392x1040 photo as PNG costs about 0.2 s of CPU."""
    try:
        raw = Path(image.path).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(raw).hexdigest() != image.sha256:
        return None
    try:
        with Image.open(io.BytesIO(raw)) as im:  # lazy: the header only
            suffix = COPIED_FORMATS.get(im.format or "")
            plain = (im.mode == "RGB" and "transparency" not in im.info and im.size == (image.width, image.height)
                     and im.getexif().get(EXIF_ORIENTATION, 1) == 1)
    except Exception:  # noqa: BLE001 - anything unreadable here is simply re-encoded
        return None
    if suffix is None or not plain or (im.format == "PNG" and raw[24] != 8):  # IHDR bit depth
        return None
    return raw, suffix


def write_images_and_masks(out_dir: str | Path, views: list[ViewObservation], result: FitResult) -> list[tuple[str, str]]:
    """Write ``images/<name>.jpg|.png`` (RGB, the upright photo: the input file itself when
    :func:`stored_photo` allows, else a PNG) and ``masks/<name>.png`` (L, 0/255).

    Returns the relative ``(image_path, mask_path)`` of each fitted view, in ``result.views`` order.
    """
    out_dir = Path(out_dir)

    def write(obs: ViewObservation) -> tuple[str, str]:
        pixels = np.asarray(obs.image.pixels)
        if pixels.shape[:2] != obs.detection.mask_u8.shape:
            raise ValueError(f"export: view {obs.image.name}: mask {obs.detection.mask_u8.shape} "
                             f"does not match image {pixels.shape[:2]}")
        mask_rel = f"masks/{obs.image.name}.png"
        stored = stored_photo(obs.image)
        if stored is not None:
            raw, suffix = stored
            img_rel = f"images/{obs.image.name}{suffix}"
            (out_dir / "images").mkdir(parents=True, exist_ok=True)
            (out_dir / img_rel).write_bytes(raw)
        else:
            img_rel = f"images/{obs.image.name}.png"
            save_png(out_dir / img_rel, pixels.astype(np.uint8, copy=False))
        save_png(out_dir / mask_rel, mask_to_u8(obs.detection.mask_u8))
        return img_rel, mask_rel

    return parallel_map(write, match_views(views, result))  # PNG encoding releases the GIL


def write_point_ply(path: str | Path, points: np.ndarray, colours: np.ndarray) -> Path:
    """Binary little-endian PLY: ``vertex`` with float32 x, y, z and uint8 red, green, blue."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    p = np.asarray(points, dtype=np.float32)
    c = np.asarray(colours, dtype=np.uint8)
    rec = np.empty(p.shape[0], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                      ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = p[:, 0], p[:, 1], p[:, 2]
    rec["red"], rec["green"], rec["blue"] = c[:, 0], c[:, 1], c[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment flame-prior: fitted FLAME vertices, FLAME frame, metres\n"
        f"element vertex {p.shape[0]}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())
    return path


def write_transforms(out_dir: str | Path, views: list[ViewObservation], result: FitResult,
                     paths: list[tuple[str, str]] | None = None) -> Path:
    """Write ``transforms.json`` and its ``images/``, ``masks/`` and ``flame_points.ply`` into ``out_dir``.

    See the module docstring for the format. ``flame_params.npz``, which ``flame_param_path`` names, is
    written by :func:`flame_prior.export.flame_params.write_flame_params`. ``paths``: what
    :func:`write_images_and_masks` returned, when the caller wrote them already (not written again).

    Returns:
        the path of ``transforms.json``.
    """
    out_dir = Path(out_dir)
    paths = write_images_and_masks(out_dir, views, result) if paths is None else paths
    cam = camera_arrays(result)
    c2w = opencv_w2c_to_opengl_c2w(cam["R"], cam["t"])
    distorted = bool(np.any(cam["distortion"] != 0.0))
    shared_keys = INTRINSIC_KEYS + (tuple(DISTORTION_KEYS) if distorted else ())

    frames = []
    for i, (vf, (img_rel, mask_rel)) in enumerate(zip(result.views, paths)):
        frames.append({
            "file_path": img_rel,
            "mask_path": mask_rel,
            "transform_matrix": c2w[i].tolist(),
            "fl_x": float(cam["fx"][i]),
            "fl_y": float(cam["fy"][i]),
            "cx": float(cam["cx"][i]),
            "cy": float(cam["cy"][i]),
            "w": int(cam["width"][i]),
            "h": int(cam["height"][i]),
            **({k: float(cam["distortion"][i][j]) for k, j in DISTORTION_KEYS.items()} if distorted else {}),
            "flame_prior_view": vf.name,
        })

    ply_rel = "flame_points.ply"
    write_point_ply(out_dir / ply_rel, result.vertices, vertex_colours(result))

    meta: dict = {"camera_model": "OPENCV" if distorted else "PINHOLE"}
    if frames and all(all(f[k] == frames[0][k] for k in shared_keys) for f in frames):
        meta.update({k: frames[0][k] for k in shared_keys})
    meta.update({
        "applied_transform": np.eye(4)[:3].tolist(),
        "ply_file_path": ply_rel,
        "flame_param_path": "flame_params.npz",
        "flame_prior": {
            "version": flame_prior_version(),
            "convention": CONVENTION_SHORT,
            "frame": CONVENTION,
            "units": "metres",
            "intrinsics_source": result.intrinsics_source,
            "applied_transform_note": "identity: the world is FLAME's frame, no axes were changed",
            "dataparser_settings_to_keep_flame_frame": DATAPARSER_SETTINGS_KEEPING_FLAME_FRAME,
        },
        "frames": frames,
    })
    return write_json(out_dir / "transforms.json", meta)
