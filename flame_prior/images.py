"""Stage 1 — image intake: find, validate and decode the photographs.

Public entry: :func:`load_images`.

What it accepts and how it decodes (every output refers to the decoded, upright pixel grid):

* ``data`` is one image file or a folder of them (not recursive; hidden files and sub-folders
  are ignored). Files are taken in natural order (``1, 2, ..., 10``, not ``1, 10, 2``).
* JPEG and PNG only. The size in the header is checked **before** any pixel is decoded, so a
  file that declares 20000x20000 is refused without allocating it (``max_pixels``).
* EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`): the image is upright.
* Every mode ends as ``(H, W, 3)`` uint8 RGB: grey and palette are expanded; 16-bit samples are
  scaled by 255/65535 (rounded), not clipped; alpha is composited over black (transparent
  pixels become black, whatever colour they stored).
* Files that cannot be used (not an image, empty, truncated or corrupt, too large, unsupported
  format) are returned as :class:`SkippedInput` with the reason; they never stop the run unless
  nothing usable is left, which raises :class:`~flame_prior.errors.InputError`.
* ``name`` is a unique, readable, filesystem-safe stem for each view's outputs: ASCII letters,
  digits, ``.``, ``_`` and ``-`` only (accents are stripped, other characters and spaces become
  ``_``), unique without regard to case (``img_A``, ``img_a`` → ``img_A``, ``img_a-1``).
* ``exif_focal_px``: ``FocalLengthIn35mmFilm`` with the diagonal rule
  ``f_px = f35 * sqrt(W² + H²) / sqrt(36² + 24²)``; else ``FocalLength`` (mm) times
  ``FocalPlaneXResolution`` (pixels per unit, converted to mm), rescaled by
  ``width / PixelXDimension`` when the file was resized after capture; else None.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import unicodedata
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from flame_prior.errors import InputError
from flame_prior.threads import parallel_map

__all__ = ["InputImage", "SkippedInput", "load_images", "natural_sort_key", "safe_stems", "exif_focal_px"]

SUPPORTED_FORMATS = ("JPEG", "PNG", "MPO")  # MPO: multi-picture JPEG written by some cameras
"""PIL format names accepted; the first frame of an MPO is its ordinary JPEG image."""

_EXIF_IFD = 0x8769
_TAG_FOCAL_35MM = 0xA405
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_PLANE_X_RES = 0xA20E
_TAG_FOCAL_PLANE_UNIT = 0xA210
_TAG_PIXEL_X_DIMENSION = 0xA002
_MM_PER_UNIT = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}  # EXIF FocalPlaneResolutionUnit: inch, cm, mm, µm
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


@dataclass
class InputImage:
    """One decoded photograph, upright.

    Attributes:
        path: the original file.
        name: unique, filesystem-safe stem used for every output of this view.
        pixels: ``(H, W, 3)`` uint8 RGB, EXIF orientation applied (the camera of this view is for
            this upright image; every output refers to its pixel grid).
        sha256: hex digest of the file's bytes (detection cache key).
        exif_focal_px: focal length in pixels of the upright image from EXIF
            (FocalLengthIn35mmFilm, or FocalLength with the sensor size), or None.
    """

    path: Path
    name: str
    pixels: np.ndarray
    sha256: str
    exif_focal_px: float | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass
class SkippedInput:
    """A file or view left out, and why (shown in the summary and the report)."""

    path: Path
    reason: str


def load_images(data: Path, max_pixels: int = 100_000_000) -> tuple[list[InputImage], list[SkippedInput]]:
    """Decode one image file or every image of a folder (natural order), upright RGB uint8.

    Args:
        data: an image file, or a folder of images (not searched recursively).
        max_pixels: refuse (skip) images whose header declares more pixels than this; checked
            before decoding. Pillow's own bomb limit (``2 * Image.MAX_IMAGE_PIXELS``) also applies.

    Returns:
        ``(images, skipped)``: the usable images in natural file-name order, and the files left
        out with the reason.

    Raises:
        InputError: ``data`` does not exist, a folder holds no usable image (the message lists
            why each file was skipped), or the single file given cannot be used.
    """
    data = Path(data)
    if not data.exists():
        raise InputError("no such file or folder", path=data, hint="Pass a folder of JPEG/PNG photos or one image file.")
    if data.is_dir():
        files = sorted(
            (p for p in data.iterdir() if p.is_file() and not p.name.startswith(".")),
            key=lambda p: natural_sort_key(p.name),
        )
        if not files:
            raise InputError("the folder holds no files", path=data, hint="Put the JPEG/PNG photos of the head in it.")
    else:
        files = [data]

    def attempt(path: Path) -> tuple[np.ndarray, str, float | None] | str:
        try:
            return _load_one(path, max_pixels)
        except _Unusable as err:
            return str(err)

    # JPEG/PNG decoding and hashing release the GIL: one thread per core halves the intake's wall
    # time on 2 cores (the CPU time is the same). Results in file order whatever finishes first.
    results = parallel_map(attempt, files)
    decoded: list[tuple[Path, np.ndarray, str, float | None]] = []
    skipped: list[SkippedInput] = []
    for path, result in zip(files, results):
        if isinstance(result, str):
            skipped.append(SkippedInput(path, result))
        else:
            decoded.append((path, *result))

    if not decoded:
        listing = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped)
        what = "the folder holds no usable image" if data.is_dir() else "the file is not a usable image"
        raise InputError(f"{what} ({listing})", path=data, hint="Use JPEG or PNG photographs.")

    names = safe_stems([p for p, *_ in decoded])
    images = [
        InputImage(path=p, name=n, pixels=px, sha256=d, exif_focal_px=f) for (p, px, d, f), n in zip(decoded, names)
    ]
    return images, skipped


class _Unusable(Exception):
    """A file that is skipped; the message is the reason shown to the user."""


def _load_one(path: Path, max_pixels: int) -> tuple[np.ndarray, str, float | None]:
    """Read, check and decode one file; raise :class:`_Unusable` with the reason."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise _Unusable(f"cannot read the file ({err.strerror or err})") from None
    if not raw:
        raise _Unusable("empty file (0 bytes)")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw))  # lazy: parses the header, decodes nothing yet
    except Image.DecompressionBombError as err:
        size = _header_size(raw)
        if size is None:
            raise _Unusable(f"refused before decoding: {err}") from None
        w, h = size
        raise _Unusable(_too_large(w, h, max_pixels, "Pillow's limit")) from None
    except (OSError, SyntaxError, ValueError):
        raise _Unusable("not an image Pillow can read (expected JPEG or PNG)") from None
    if im.format not in SUPPORTED_FORMATS:
        raise _Unusable(f"unsupported format {im.format}: convert it to JPEG or PNG")
    w, h = im.size
    if w < 1 or h < 1:
        raise _Unusable(f"the header declares an empty image ({w}x{h})")
    if w * h > max_pixels:
        raise _Unusable(_too_large(w, h, max_pixels, f"max_pixels={max_pixels:,}"))
    if im.format == "PNG" and (bad := _png_crc_error(raw)):
        raise _Unusable(f"truncated or corrupt PNG data ({bad})")
    try:
        focal = exif_focal_px(im)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # in place: an upright photo is not copied
        pixels = _to_rgb8(im)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise _Unusable(f"truncated or corrupt {im.format} data ({err})") from None
    return pixels, digest, focal


def _png_crc_error(raw: bytes) -> str | None:
    """Why the PNG's chunk checksums fail, or None. Pillow does not check IDAT CRCs, and corrupt
    compressed data can still inflate, into garbage pixels; a truncated file is left to the decoder."""
    i = 8
    while i + 12 <= len(raw):
        n = int.from_bytes(raw[i:i + 4], "big")
        kind = raw[i + 4:i + 8]
        end = i + 8 + n
        if end + 4 > len(raw):
            return None
        if zlib.crc32(raw[i + 4:end]) != int.from_bytes(raw[end:end + 4], "big"):
            return f"chunk {kind.decode('latin1')!r} at byte {i} fails its CRC check"
        if kind == b"IEND":
            return None
        i = end + 4
    return None


def _too_large(w: int, h: int, max_pixels: int, limit: str) -> str:
    return (
        f"too large: the header declares {w}x{h} = {w * h:,} pixels, above {limit}"
        " (refused before decoding); downscale it" + (" or raise max_pixels" if "max_pixels" in limit else "")
    )


def _header_size(raw: bytes) -> tuple[int, int] | None:
    """The size a JPEG/PNG header declares, read by Pillow's format plugin without its bomb check."""
    Image.init()
    for fmt in SUPPORTED_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None or (accept is not None and not accept(raw[:16])):
            continue
        try:
            return factory(io.BytesIO(raw)).size  # parses the header only
        except Exception:  # noqa: BLE001 — not this format
            continue
    return None


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to ``(H, W, 3)`` uint8 RGB; 16-bit scaled, alpha composited over black."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey PNGs decode to I;16 or I (values 0..65535): scale, don't clip.
        v = np.asarray(im).astype(np.int64)
        v = (np.clip(v, 0, 65535) * 255 + 32767) // 65535
        return np.repeat(v.astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "F":
        v = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if v.max(initial=0.0) > 255.0 else 255.0
        v = np.clip(np.rint(v * (255.0 / hi)), 0, 255).astype(np.uint8)
        return np.repeat(v[..., None], 3, axis=2)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if im.mode in ("L", "P", "1") and not has_alpha or im.mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV"):
        # convert() of an RGB image is a copy, and np.asarray copies again: one copy is enough.
        return np.ascontiguousarray(np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8))
    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
    rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255  # over black
    return np.ascontiguousarray(rgb.astype(np.uint8))


def exif_focal_px(im: Image.Image) -> float | None:
    """Focal length in pixels of the upright image from EXIF, or None (see the module docstring).

    ``im`` is the opened (not transposed) image; the diagonal rule and square sensor pixels make
    the result the same for the upright image.
    """
    try:
        exif = im.getexif()
        ifd = exif.get_ifd(_EXIF_IFD)
    except Exception:  # malformed EXIF must not cost the image; it only loses the focal  # noqa: BLE001
        return None
    tags = {**dict(exif), **dict(ifd)}
    w, h = im.size

    f35 = _positive(tags.get(_TAG_FOCAL_35MM))
    if f35 is not None:
        return f35 * math.hypot(w, h) / math.hypot(36.0, 24.0)

    f_mm = _positive(tags.get(_TAG_FOCAL_LENGTH))
    res = _positive(tags.get(_TAG_FOCAL_PLANE_X_RES))
    unit = tags.get(_TAG_FOCAL_PLANE_UNIT, 2)
    if f_mm is not None and res is not None and unit in _MM_PER_UNIT:
        px_per_mm = res / _MM_PER_UNIT[unit]
        f_px = f_mm * px_per_mm
        full_w = _positive(tags.get(_TAG_PIXEL_X_DIMENSION))
        if full_w is not None and int(full_w) in (w, h):
            pass  # not resized (or resized consistently): the resolution refers to this grid
        elif full_w is not None:
            f_px *= w / full_w
        return f_px if math.isfinite(f_px) else None
    return None


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def natural_sort_key(name: str) -> tuple:
    """Sort key: digit runs compare as numbers, the rest without regard to case (``2 < 10``)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.casefold(), p) for p in parts if p != "") + (name,)


def _safe_stem(stem: str) -> str:
    """Readable ASCII stem: accents stripped, anything outside ``[A-Za-z0-9._-]`` becomes ``_``."""
    ascii_ = "".join(
        c if c.isascii() else (unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode("ascii") or "_")
        for c in stem
    )
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_)
    s = re.sub(r"_+", "_", s).strip("._ ")
    s = s[:100] or "image"
    if s.casefold() in _WINDOWS_RESERVED:
        s = f"{s}_"
    return s


def safe_stems(paths: list[Path]) -> list[str]:
    """Unique, filesystem-safe, readable stems for ``paths`` (in their order).

    Unique without regard to case, so outputs also coexist on case-insensitive file systems: the
    first file keeps its stem, later clashes get ``-1``, ``-2``, ... (avoiding every stem in use).
    """
    bases = [_safe_stem(p.stem) for p in paths]
    taken = {b.casefold() for b in bases}
    used: set[str] = set()
    out = []
    for base in bases:
        name = base
        if name.casefold() in used:
            k = 1
            while f"{base}-{k}".casefold() in taken or f"{base}-{k}".casefold() in used:
                k += 1
            name = f"{base}-{k}"
        used.add(name.casefold())
        out.append(name)
    return out
