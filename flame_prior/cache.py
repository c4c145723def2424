"""flame-prior's one cache: where it lives, its atomic ``.npz`` writer, and the detection cache.

Root: ``$XDG_CACHE_HOME/flame-prior`` (else ``~/.cache/flame-prior``), with ``detections/``
(:class:`DetectionCache`, below), ``colmap/`` (:func:`flame_prior.intrinsics.cached_run_colmap`) and
``texels/`` (the UV layout rasterized at a texture side: :func:`flame_prior.export.texture_bake.uv_rasterization`).
Every file is an ``.npz`` read with ``allow_pickle=False`` and written atomically (:func:`save_npz_atomic`;
the texels uncompressed).

Detection cache: one ``.npz`` per (image content, backend, backend version). File: ``<cache_dir>/<sha256 of the image file>-<backend>-<first 12 hex of sha256(version)>.npz``.
The seeded second pass (:mod:`flame_prior.detectors.seeded`) caches its result as
``<sha256 of (image sha256, seeded version, each seed photo's sha256 and face box)>-<backend>-seeded-<...>.npz``:
another seed is another search, and a first-pass file is never overwritten by a seeded one.
Keys (all plain arrays, read with ``np.load(allow_pickle=False)``, nothing executed):

=================  ==================  ==============================================
``found``          bool ``()``         False: the backend found no face (cached too)
``landmarks``      float32 ``(K, 2)``  pixels, upright original image
``confidence``     float32 ``(K,)``
``landmark_format``str ``()``
``mask``           uint8 ``(H, W)``    head mask, 0..255 for [0, 1] (steps of 1/255)
``face_box``       float64 ``(4,)``
``notes``          str ``(n,)``
``provenance``     str ``()``          "detector" or "seeded" (``Detection.provenance``; absent
                                       in older files: "detector")
``image_shape``    int64 ``(2,)``      ``(H, W)``, checked on read
``version``        str ``()``          the backend version, checked on read
=================  ==================  ==============================================

Writes go to a temporary file in the same folder and are renamed into place (atomic), so a
crash never leaves a half file under the real name. A file that cannot be read or does not match
is ignored (the caller recomputes and overwrites it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from flame_prior.detectors.base import Detection
from flame_prior.files import write_atomic

__all__ = ["cache_root", "default_cache_dir", "colmap_cache_dir", "save_npz_atomic", "DetectionCache", "CacheMiss",
           "quantise_mask_u8"]


def quantise_mask_u8(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` float mask in [0, 1] → uint8 0..255 (rounded); ``/ 255`` gives the cached value back."""
    return np.round(np.clip(np.asarray(mask, np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/flame-prior``, else ``~/.cache/flame-prior``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flame-prior"


def default_cache_dir() -> Path:
    """The detection cache's default folder, ``<cache root>/detections``."""
    return cache_root() / "detections"


def colmap_cache_dir() -> Path:
    """The COLMAP cache's default folder, ``<cache root>/colmap``."""
    return cache_root() / "colmap"


class CacheMiss:
    """Returned by :meth:`DetectionCache.load` when there is nothing usable; ``note`` says why if a file was bad."""

    def __init__(self, note: str | None = None) -> None:
        self.note = note


class DetectionCache:
    """Read and write cached detections under ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str, backend: str, version: str) -> Path:
        v = hashlib.sha256(version.encode()).hexdigest()[:12]
        return self.root / f"{sha256}-{backend}-{v}.npz"

    def load(self, sha256: str, backend: str, version: str, image_shape: tuple[int, int]) -> Detection | None | CacheMiss:
        """The cached detection (None: cached "no face"), or :class:`CacheMiss`."""
        path = self.path(sha256, backend, version)
        if not path.is_file():
            return CacheMiss()
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["version"]) != version or tuple(int(v) for v in z["image_shape"]) != tuple(image_shape):
                    raise ValueError("written for another backend version or image size")
                if not bool(z["found"]):
                    return None
                lm = np.asarray(z["landmarks"], dtype=np.float32)
                conf = np.asarray(z["confidence"], dtype=np.float32)
                mask = np.asarray(z["mask"], dtype=np.uint8)  # Detection holds it as uint8 (mask_u8)
                box = tuple(float(v) for v in z["face_box"])
                if lm.ndim != 2 or lm.shape[1] != 2 or conf.shape != (len(lm),) or mask.shape != tuple(image_shape) or len(box) != 4:
                    raise ValueError("arrays of the wrong shape")
                provenance = str(z["provenance"]) if "provenance" in z.files else "detector"
                return Detection(lm, conf, str(z["landmark_format"]), mask, box, [str(n) for n in z["notes"]],
                                 provenance)
        except Exception as err:  # noqa: BLE001 — any unreadable cache file is only a miss
            return CacheMiss(f"cache file {path.name} was unreadable ({type(err).__name__}: {err}); detected again")

    def save(self, sha256: str, backend: str, version: str, image_shape: tuple[int, int], det: Detection | None) -> Path:
        """Write atomically (temporary file + rename); returns the path. Raises ``OSError`` if the folder is not writable."""
        path = self.path(sha256, backend, version)
        if det is None:
            arrays = dict(
                found=np.array(False), landmarks=np.zeros((0, 2), np.float32), confidence=np.zeros(0, np.float32),
                landmark_format=np.array(""), mask=np.zeros((0, 0), np.uint8), face_box=np.zeros(4),
                notes=np.array([], dtype=str),
            )
        else:
            arrays = dict(
                found=np.array(True), landmarks=np.asarray(det.landmarks, np.float32),
                confidence=np.asarray(det.confidence, np.float32), landmark_format=np.array(det.landmark_format),
                mask=det.mask_u8, face_box=np.asarray(det.face_box, np.float64),
                notes=np.array(det.notes, dtype=str), provenance=np.array(det.provenance),
            )
        arrays.update(image_shape=np.array(image_shape, np.int64), version=np.array(version))
        return save_npz_atomic(path, **arrays)


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> Path:
    """Write a compressed ``.npz`` atomically (:func:`flame_prior.files.write_atomic`), so a reader
    never sees a half-written cache file."""
    return write_atomic(path, lambda f: np.savez_compressed(f, **arrays))
