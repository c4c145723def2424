"""Helpers shared by the writers: view matching, PNG and JSON output, the convention text.

Nothing here defines a file format; each writer module documents its own.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flame_prior.distortion import ideal_pinhole_view
from flame_prior.fit import FitResult
from flame_prior.observe import ViewObservation

#: The frame and pixel conventions every export follows, written out (see docs/conventions.md).
CONVENTION = {
    "world": "FLAME model frame, metres: +X towards the subject's left, +Y up, +Z out of the face",
    "camera_inside_flame_prior": "OpenCV axes (+X right, +Y down, +Z forward), world-to-camera x_cam = R x_world + t",
    "camera_in_transform_matrix": "OpenGL axes (+X right, +Y up, +Z backwards), camera-to-world 4x4",
    "pixels": "origin at the top-left corner of the top-left pixel, x right, y down; "
              "pixel (i, j) has its centre at (i + 0.5, j + 0.5); cy is measured from the top row",
    "rotations": "axis-angle vectors in radians (FLAME parameters)",
}
CONVENTION_SHORT = ("world=FLAME frame (metres, +Y up, +Z out of the face); "
                    "transform_matrix=camera-to-world, OpenGL camera axes (+Y up, +Z back); "
                    "pixels: corner origin, centres at +0.5, y down")


def flame_prior_version() -> str:
    try:
        return metadata.version("flame-prior")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def match_views(views: list[ViewObservation], result: FitResult) -> list[ViewObservation]:
    """The observations of the fitted views, in ``result.views`` order (matched by name).

    ``views`` may hold extra observations (views the fit left out); every fitted view must have one.
    """
    by_name = {v.image.name: v for v in views}
    missing = [vf.name for vf in result.views if vf.name not in by_name]
    if missing:
        raise ValueError(f"export: no observation for fitted view(s) {missing}")
    if len(result.views) != len(result.cameras):
        raise ValueError(f"export: {len(result.views)} view fits but {len(result.cameras)} cameras")
    out = [by_name[vf.name] for vf in result.views]
    for obs, w, h in zip(out, result.cameras.width, result.cameras.height):
        if (obs.image.width, obs.image.height) != (int(w), int(h)):
            raise ValueError(f"export: view {obs.image.name} is {obs.image.width}x{obs.image.height} "
                             f"but its camera says {w}x{h}")
    return out


def ideal_views(views: list[ViewObservation], result: FitResult) -> list[ViewObservation]:
    """:func:`match_views`, each seen by its IDEAL PINHOLE camera: the photo, mask and landmarks with
    the camera's lens distortion undone (:func:`flame_prior.distortion.ideal_pinhole_view`), the
    pixel grid that ``result.cameras`` project into. Views without distortion are returned as they are.

    Writers receive the photos as taken; those that read pixels through the pinhole cameras (texture,
    report, avatar data set) call this."""
    obs = match_views(views, result)
    cam = camera_arrays(result)
    return [ideal_pinhole_view(o, cam["fx"][i], cam["fy"][i], cam["cx"][i], cam["cy"][i], cam["distortion"][i])
            for i, o in enumerate(obs)]


def camera_arrays(result: FitResult) -> dict[str, np.ndarray]:
    """float64 R (N,3,3), t (N,3), fx, fy, cx, cy (N,), distortion (N,5) and int64 width, height (N,)."""
    return result.cameras.to_numpy()


def mask_to_u8(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` float mask in [0, 1], or uint8 in 0..255 (:attr:`Detection.mask_u8`), to a binary
    uint8 image: 255 where mask >= 0.5 (uint8: >= 128, the same values), else 0."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask: expected (H, W), got {m.shape}")
    if m.dtype == np.uint8 and m.size:  # OpenCV's threshold (> 127): a quarter of numpy's time on a 1392x1040 mask
        return cv2.threshold(m, 127, 255, cv2.THRESH_BINARY)[1]
    return np.where(m >= (128 if m.dtype == np.uint8 else 0.5), np.uint8(255), np.uint8(0))


def save_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array as PNG (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"{path.name}: expected uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        # Photos: libpng through OpenCV, zlib level 1 with run-length matching: measured on the shared 1392x1040
        # photos 0.12 s and 1.5 MB a file, against PIL's level 1 at 0.16 s and 1.9 MB (and its default, level 6,
        # ~5x slower); datasets are written once and read often.
        ok, data = cv2.imencode(".png", cv2.cvtColor(a, cv2.COLOR_RGB2BGR if a.shape[2] == 3 else cv2.COLOR_RGBA2BGRA),
                                [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
        if not ok:
            raise ValueError(f"{path.name}: OpenCV could not encode a {a.shape} image as PNG")
        path.write_bytes(data.tobytes())
    elif a.ndim == 2:
        path.write_bytes(grey_png(a))
    else:
        raise ValueError(f"{path.name}: expected (H, W), (H, W, 3) or (H, W, 4) pixels, got {a.shape}")
    return path


def grey_png(a: np.ndarray) -> bytes:
    """The PNG file of a uint8 ``(H, W)`` image (8-bit greyscale), written for masks: every row with
    filter type 0 (none) and the pixels deflated with run-length matching (zlib ``Z_RLE``).

    A binary mask is long runs of 0 and 255, which this codes best: on the shared 1392x1040 masks 2.7 ms
    and 4.7 KiB a file, against 10.6 ms and 13 KiB from PIL at level 1 (libpng and PIL try every row
    filter, which only costs time on two-valued rows). Any grey image is still a valid PNG, larger."""
    h, w = a.shape
    rows = np.zeros((h, w + 1), np.uint8)  # a leading 0 per row: the filter type byte
    rows[:, 1:] = a
    deflate = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
    data = deflate.compress(rows) + deflate.flush()  # zlib releases the GIL while it works

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8 bits, greyscale, deflate, filter set 0, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def texture_to_u8(texture: np.ndarray) -> np.ndarray:
    """Float albedo in [0, 1] ``(Ht, Wt, 3)`` to uint8 (rounded, clipped)."""
    t = np.asarray(texture, dtype=np.float64)
    return np.clip(np.round(t * 255.0), 0, 255).astype(np.uint8)


def jsonable(x: Any) -> Any:
    """Numpy / Path values to plain JSON values; non-finite floats become ``None`` (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def vertex_colours(result: FitResult) -> np.ndarray:
    """``(V, 3)`` uint8 colour per vertex, sampled (nearest texel) from the texture at one of its UVs."""
    tex = texture_to_u8(result.texture)
    ht, wt = tex.shape[:2]
    uv_of_vertex = np.zeros((result.vertices.shape[0], 2))
    uv_of_vertex[np.asarray(result.faces).reshape(-1)] = np.asarray(result.uvs)[np.asarray(result.uv_faces).reshape(-1)]
    col = np.clip((uv_of_vertex[:, 0] * wt).astype(np.int64), 0, wt - 1)
    row = np.clip(((1.0 - uv_of_vertex[:, 1]) * ht).astype(np.int64), 0, ht - 1)  # v = 1 is row 0
    return tex[row, col]
