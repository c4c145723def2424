"""Known intrinsics from a calibration file (``--intrinsics.file``): a COLMAP model or a nerfstudio
``transforms.json``.

Public entries: :func:`read_camera_file` (parse and check a file; ``IntrinsicsConfig.check`` calls it
before any work) and :func:`intrinsics_for_views` (each input image's ``fx, fy, cx, cy`` and lens).
Both formats share flame-prior's pixel convention (corner origin, pixel centres at +0.5), so
``cx, cy`` are used unchanged. Distortion becomes OpenCV's ``(k1, k2, p1, p2, k3)``
(:mod:`flame_prior.distortion`).

**COLMAP model** (``PATH`` = the model folder holding ``cameras.txt`` and ``images.txt``, or either
of those files, or a folder with ``cameras.bin`` and ``images.bin``, read by pycolmap):

* ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`` per line (``#`` comments), with MODEL
  and PARAMS one of

  =================  ===============================================  ==============================
  ``SIMPLE_PINHOLE`` ``f, cx, cy``                                    ``fx = fy = f``
  ``PINHOLE``        ``fx, fy, cx, cy``
  ``SIMPLE_RADIAL``  ``f, cx, cy, k``                                 ``k1 = k``
  ``RADIAL``         ``f, cx, cy, k1, k2``
  ``OPENCV``         ``fx, fy, cx, cy, k1, k2, p1, p2``
  ``FULL_OPENCV``    ``fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6``  only with ``k4 = k5 = k6 = 0``
  =================  ===============================================  ==============================

  Other models (fisheye, thin prism, ...) are refused.
* ``images.txt``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then the
  points2D line. Only ``CAMERA_ID`` and ``NAME`` are used here (the poses are not).

**nerfstudio transforms.json** (what ``ns-process-data`` writes; nerfstudio's
``docs/quickstart/data_conventions.md``): top-level ``camera_model`` (``OPENCV``, ``PINHOLE``,
``SIMPLE_PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL``; default ``OPENCV``; fisheye and equirectangular are
refused), ``fl_x``, ``fl_y`` (default ``fl_x``), ``cx``, ``cy``, ``w``, ``h``, ``k1, k2, k3, k4, p1, p2``
(default 0; ``k4`` must be 0), and ``frames`` with ``file_path`` and any of the same intrinsic keys
(or ``distortion_params = [k1, k2, k3, k4, p1, p2]``). As in nerfstudio's dataparser, a top-level
value holds for every frame; a frame that gives the same key with another value is refused (it
would be ignored there). ``w, h`` may be left out; then the image size is not checked.

**Matching**: an input image matches the entry whose ``NAME`` (COLMAP) or ``file_path`` (nerfstudio)
has the same file name (``cam3/0001.png`` matches ``0001.png``), else the same name without the
extension, ignoring case, when exactly one entry has it. Each input image needs an entry; entries
without an input image are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

import numpy as np

from flame_prior.errors import InputError

if TYPE_CHECKING:
    from flame_prior.images import InputImage

__all__ = ["KnownCamera", "CameraFile", "KnownIntrinsics", "COLMAP_MODELS", "read_camera_file",
           "intrinsics_for_views"]

#: COLMAP camera models read here: parameter names in COLMAP's order.
COLMAP_MODELS = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}
_NERFSTUDIO_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
_NERFSTUDIO_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2", "distortion_params")
_HINT = "See the formats --intrinsics.file reads in the README (Known intrinsics)."


@dataclass(frozen=True)
class KnownCamera:
    """One image's calibration, as the file gives it.

    Attributes:
        name: the image name in the file (COLMAP ``NAME``, nerfstudio ``file_path``).
        width, height: image size in pixels, or None when the file does not say.
        fx, fy, cx, cy: pixels, corner origin.
        distortion: OpenCV ``(k1, k2, p1, p2, k3)``.
        model: the camera model the file names.
    """

    name: str
    width: int | None
    height: int | None
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, float, float, float, float]
    model: str


@dataclass
class CameraFile:
    """A parsed calibration file: ``format`` is ``"colmap"`` or ``"nerfstudio"``."""

    path: Path
    format: Literal["colmap", "nerfstudio"]
    cameras: list[KnownCamera]


@dataclass
class KnownIntrinsics:
    """The intrinsics of N input images from a :class:`CameraFile`: ``(N,)`` float64 ``fx, fy, cx,
    cy``, ``(N, 5)`` ``distortion``, and notes for the summary."""

    fx: np.ndarray
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    distortion: np.ndarray
    notes: list[str] = field(default_factory=list)


def _bad(path: Path, message: str, hint: str = _HINT) -> InputError:
    return InputError(message, path=path, hint=hint)


def _camera_from_params(path: Path, where: str, name: str, model: str, width, height, params: list[float]) -> KnownCamera:
    """A :class:`KnownCamera` from COLMAP-style ``model`` and ``params``."""
    names = COLMAP_MODELS.get(model)
    if names is None:
        raise _bad(path, f"{where}: camera model {model!r} is not supported (supported: {', '.join(COLMAP_MODELS)}).",
                   "Undistort the images to a pinhole model first (colmap image_undistorter) or recalibrate with "
                   "OPENCV.")
    if len(params) != len(names):
        raise _bad(path, f"{where}: a {model} camera has {len(names)} parameters ({', '.join(names)}), "
                         f"got {len(params)}.")
    p = dict(zip(names, (float(x) for x in params)))
    if not all(math.isfinite(v) for v in p.values()):
        raise _bad(path, f"{where}: non-finite camera parameters {params}.")
    if any(p.get(k, 0.0) != 0.0 for k in ("k4", "k5", "k6")):
        raise _bad(path, f"{where}: {model} with k4, k5, k6 (the rational terms) is not supported; only k1, k2, p1, "
                         "p2, k3 are.", "Recalibrate with the OPENCV model.")
    fx = p.get("fx", p.get("f"))
    fy = p.get("fy", p.get("f"))
    if not (fx > 0 and fy > 0):
        raise _bad(path, f"{where}: focal lengths must be positive, got fx={fx}, fy={fy}.")
    w = None if width is None else int(width)
    h = None if height is None else int(height)
    if (w is not None and w <= 0) or (h is not None and h <= 0):
        raise _bad(path, f"{where}: image size {width}x{height} is not positive.")
    dist = tuple(p.get(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3"))
    return KnownCamera(name, w, h, fx, fy, p["cx"], p["cy"], dist, model)


# --------------------------------------------------------------------------------------------
# COLMAP


def _colmap_folder(path: Path) -> Path:
    if path.is_file() and path.name in ("cameras.txt", "images.txt", "cameras.bin", "images.bin"):
        return path.parent
    return path


def _read_colmap_text(folder: Path) -> list[KnownCamera]:
    cam_file, img_file = folder / "cameras.txt", folder / "images.txt"
    for f in (cam_file, img_file):
        if not f.is_file():
            raise _bad(folder, f"a COLMAP text model needs cameras.txt and images.txt; {f.name} is missing.")
    cams: dict[int, tuple[str, int, int, list[float], int]] = {}
    for no, line in enumerate(cam_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            cams[int(parts[0])] = (parts[1], int(parts[2]), int(parts[3]), [float(x) for x in parts[4:]], no)
        except (ValueError, IndexError):
            raise _bad(cam_file, f"line {no}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {line!r}.") from None
    lines = [ln for ln in img_file.read_text(encoding="utf-8").splitlines() if not ln.lstrip().startswith("#")]
    out = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # a stray empty line between images
            i += 1
            continue
        parts = lines[i].split(maxsplit=9)
        if len(parts) < 10:
            raise _bad(img_file, f"expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {lines[i]!r}.")
        try:
            cam_id = int(parts[8])
        except ValueError:
            raise _bad(img_file, f"CAMERA_ID {parts[8]!r} is not an integer in {lines[i]!r}.") from None
        name = parts[9].strip()
        if cam_id not in cams:
            raise _bad(img_file, f"image {name!r} uses camera {cam_id}, which cameras.txt does not define.")
        model, w, h, params, no = cams[cam_id]
        out.append(_camera_from_params(cam_file, f"camera {cam_id} (line {no})", name, model, w, h, params))
        i += 2  # the points2D line follows (possibly empty)
    return out


def _read_colmap_binary(folder: Path) -> list[KnownCamera]:
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(folder))
    except Exception as exc:  # pycolmap raises its own types for missing or damaged files
        raise _bad(folder, f"pycolmap could not read this COLMAP model ({type(exc).__name__}: {exc}).") from None
    out = []
    for image in rec.images.values():
        cam = rec.cameras[image.camera_id]
        out.append(_camera_from_params(folder, f"camera {image.camera_id}", image.name, cam.model.name, cam.width,
                                       cam.height, list(cam.params)))
    return out


# --------------------------------------------------------------------------------------------
# nerfstudio


def _read_transforms(path: Path) -> list[KnownCamera]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"not a readable JSON file ({exc}).") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise _bad(path, "a nerfstudio transforms.json needs a 'frames' list.")
    model = meta.get("camera_model", "OPENCV")
    if model not in _NERFSTUDIO_MODELS:
        raise _bad(path, f"camera_model {model!r} is not supported (supported: {', '.join(_NERFSTUDIO_MODELS)}).",
                   "Undistort fisheye or panoramic images to a pinhole model first.")
    out = []
    for k, frame in enumerate(meta["frames"]):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise _bad(path, f"frame {k} has no 'file_path'.")
        where = f"frame {k} ({frame['file_path']})"
        for key in _NERFSTUDIO_KEYS:
            if key in meta and key in frame and frame[key] != meta[key]:
                raise _bad(path, f"{where} gives {key} = {frame[key]!r} but the top level gives {meta[key]!r}; "
                                 "nerfstudio's dataparser would use the top-level value for every frame.",
                           f"Keep {key} either at the top level (shared) or in every frame, not both.")
        get = lambda key, default=None: meta.get(key, frame.get(key, default))  # noqa: E731
        if get("fl_x") is None or get("cx") is None or get("cy") is None:
            raise _bad(path, f"{where}: fl_x, cx and cy are needed (in the frame or at the top level).")
        dist = {key: get(key, 0.0) for key in ("k1", "k2", "k3", "k4", "p1", "p2")}
        if get("distortion_params") is not None:  # nerfstudio's own vector: k1, k2, k3, k4, p1, p2
            dp = get("distortion_params")
            if not isinstance(dp, list) or len(dp) != 6:
                raise _bad(path, f"{where}: distortion_params must be [k1, k2, k3, k4, p1, p2].")
            dist = dict(zip(("k1", "k2", "k3", "k4", "p1", "p2"), dp))
        try:
            vals = {key: float(v) for key, v in dist.items()}
            fx = float(get("fl_x"))
            fy = float(get("fl_y", fx))
            params = [fx, fy, float(get("cx")), float(get("cy")), vals["k1"], vals["k2"], vals["p1"], vals["p2"],
                      vals["k3"], vals["k4"], 0.0, 0.0]
        except (TypeError, ValueError):
            raise _bad(path, f"{where}: intrinsics must be numbers.") from None
        if vals["k4"] != 0.0:
            raise _bad(path, f"{where}: k4 = {vals['k4']} (nerfstudio's r^8 term) is not supported; only k1, k2, k3, "
                             "p1, p2 are.", "Recalibrate with the OPENCV model.")
        w, h = get("w"), get("h")
        cam = _camera_from_params(path, where, frame["file_path"], "FULL_OPENCV", w, h, params)
        out.append(KnownCamera(cam.name, cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, cam.distortion,
                               model))
    return out


# --------------------------------------------------------------------------------------------
# Entry points


def read_camera_file(path: str | Path) -> CameraFile:
    """Parse a COLMAP model or a nerfstudio ``transforms.json`` (formats: module docstring).

    Raises:
        InputError: the file is missing, malformed, or uses a camera model not supported here.
    """
    path = Path(path)
    if not path.exists():
        raise _bad(path, "no such calibration file or folder (--intrinsics.file).",
                   "Pass a COLMAP model folder (cameras.txt + images.txt) or a nerfstudio transforms.json.")
    if path.is_file() and path.suffix.lower() == ".json":
        cams, fmt = _read_transforms(path), "nerfstudio"
    else:
        folder = _colmap_folder(path)
        if (folder / "cameras.txt").exists() or (folder / "images.txt").exists():
            cams = _read_colmap_text(folder)
        elif (folder / "cameras.bin").exists():
            cams = _read_colmap_binary(folder)
        else:
            raise _bad(path, "neither a COLMAP model (cameras.txt + images.txt, or .bin) nor a .json file.",
                       "Pass a COLMAP model folder or a nerfstudio transforms.json.")
        fmt = "colmap"
    if not cams:
        raise _bad(path, "the calibration lists no image.")
    return CameraFile(path, fmt, cams)


def _match(cal: CameraFile, image: InputImage, by_name: dict, by_stem: dict) -> KnownCamera:
    name = image.path.name
    hits = by_name.get(name, [])
    if not hits:
        hits = by_stem.get(Path(name).stem.lower(), [])
    if len(hits) == 1:
        return hits[0]
    listed = sorted({PurePosixPath(c.name).name for c in cal.cameras})
    if not hits:
        shown = ", ".join(listed[:6]) + (f", ... ({len(listed)} in all)" if len(listed) > 6 else "")
        raise InputError(f"no camera for image {name!r} (the {cal.format} calibration lists {shown}).",
                         path=cal.path, hint="Add this image to the calibration, or leave it out of --data.")
    raise InputError(f"image {name!r} matches {len(hits)} entries ({', '.join(c.name for c in hits[:4])}).",
                     path=cal.path, hint="Give every image a unique file name.")


def intrinsics_for_views(path: str | Path, images: list[InputImage]) -> KnownIntrinsics:
    """The calibration's intrinsics for each of ``images`` (matched by file name: module docstring).

    Raises:
        InputError: an image has no entry (or several), or its size is not the calibrated one.
    """
    cal = read_camera_file(path)
    by_name: dict[str, list[KnownCamera]] = {}
    by_stem: dict[str, list[KnownCamera]] = {}
    for c in cal.cameras:
        base = PurePosixPath(c.name.replace("\\", "/")).name
        by_name.setdefault(base, []).append(c)
        by_stem.setdefault(PurePosixPath(base).stem.lower(), []).append(c)
    rows = []
    for image in images:
        c = _match(cal, image, by_name, by_stem)
        if c.width is not None and (c.width, c.height) != (image.width, image.height):
            rotated = (c.width, c.height) == (image.height, image.width)
            raise InputError(
                f"image {image.path.name!r} is {image.width}x{image.height} px but its camera in the calibration "
                f"({c.name}) is {c.width}x{c.height} px" + (" (the photo was turned upright by its EXIF orientation)"
                                                            if rotated else "") + ".",
                path=cal.path, hint="Pass the images the calibration was made for (not resized, cropped or "
                                    "rotated), or a calibration of these images.")
        rows.append(c)
    dist = np.array([c.distortion for c in rows], dtype=np.float64).reshape(len(rows), 5)
    models = sorted({c.model for c in rows})
    notes = [f"intrinsics of {len(rows)} views from {cal.path.name} ({cal.format}, {', '.join(models)})"
             + (f"; lens distortion undone before the fit (k1 {dist[:, 0].min():.3g} to {dist[:, 0].max():.3g})"
                if dist.any() else "")]
    a = lambda key: np.array([getattr(c, key) for c in rows], dtype=np.float64)  # noqa: E731
    return KnownIntrinsics(a("fx"), a("fy"), a("cx"), a("cy"), dist, notes)
