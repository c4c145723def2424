"""Albedo texture spaces on FLAME's UV layout, and second-order spherical-harmonics shading.

Texture convention (one for the whole project): a :class:`TextureSpace` holds **RGB** images in
**[0, 1]**, **top row first**, so that pixel row 0 is ``v = 1`` of the OBJ's ``vt`` (whose origin
is the bottom-left corner). Sample with ``grid_sample(..., align_corners=False)`` at
``x = 2u - 1``, ``y = 1 - 2v``.

File formats read (both as FLAME/DECA store them, checked against TF_FLAME's
``sample_texture.py``, BFM_to_FLAME's ``col_to_tex.py`` and DECA's ``FLAMETex``):

* ``FLAME_texture.npz``: ``mean (512, 512, 3)`` and ``tex_dir (512, 512, 3, 200)`` in 0..255,
  **BGR** channel order (written with OpenCV), rows top-down; ``vt (T, 2)``, ``ft (F, 3)``.
* ``FLAME_albedo_from_BFM.npz``: ``MU (512*512*3,)``, ``PC (512*512*3, 199)`` in 0..1, BGR, rows
  top-down (``y = h - h v``); usually without ``vt``/``ft`` (take them from ``head_template_mesh.obj``).
  Extra keys (``specMU``, ``specPC``) are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flame_prior.errors import ModelFileError
from flame_prior.flame.io import read_model_dict
from flame_prior.geometry import check_shape

__all__ = ["TextureSpace", "read_obj", "read_obj_uv_layout", "load_flame_texture_space", "load_bfm_albedo",
           "sh_basis", "shade_sh", "SH_CONSTANTS"]

TEXTURE_HINT = ("FLAME's texture space (FLAME_texture.npz) is obtained from https://flame.is.tue.mpg.de; "
                "FLAME_albedo_from_BFM.npz is built with https://github.com/TimoBolkart/BFM_to_FLAME.")


@dataclass
class TextureSpace:
    """A linear albedo model in UV space (convention in the module docstring).

    Attributes:
        mean: ``(H, W, 3)`` float32 RGB in [0, 1], top row first.
        basis: ``(H, W, 3, K)`` float32 offsets per unit coefficient.
        uvs: ``(T, 2)`` texture coordinates (OBJ ``vt``, origin bottom-left).
        uv_faces: ``(F, 3)`` int64 ``vt`` index per triangle corner (same triangles as the mesh faces).
        name: where it came from.
    """

    mean: np.ndarray
    basis: np.ndarray
    uvs: np.ndarray
    uv_faces: np.ndarray
    name: str = ""
    _torch_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_tex(self) -> int:
        return int(self.basis.shape[-1])

    def texture_from_coeffs(self, coeffs: Tensor) -> Tensor:
        """Albedo images ``(B, H, W, 3)`` = mean + basis . coeffs for ``coeffs (B, K)`` (not clamped)."""
        check_shape(coeffs, ["B", self.n_tex], "coeffs")
        key = (str(coeffs.device), coeffs.dtype)
        if key not in self._torch_cache:
            self._torch_cache[key] = (torch.as_tensor(self.mean, dtype=coeffs.dtype, device=coeffs.device),
                                      torch.as_tensor(self.basis, dtype=coeffs.dtype, device=coeffs.device))
        mean, basis = self._torch_cache[key]
        H, W = mean.shape[:2]
        tex = (basis.reshape(-1, self.n_tex) @ coeffs.T).T.reshape(-1, H, W, 3)
        return mean + tex


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, triangles and UV layout of a Wavefront OBJ.

    Returns:
        ``verts (V, 3)``, ``faces (F, 3)`` int64, ``uvs (T, 2)``, ``uv_faces (F, 3)`` int64 (``(0, 3)``
        when the faces have no ``vt`` index). Polygons are fan-triangulated; indices become 0-based.
    """
    verts, uvs, faces, uv_faces = [], [], [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "v":
                    verts.append([float(x) for x in parts[1:4]])
                elif parts[0] == "vt":
                    uvs.append([float(x) for x in parts[1:3]])
                elif parts[0] == "f":
                    corners = [c.split("/") for c in parts[1:]]
                    vi = [int(c[0]) for c in corners]
                    ti = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners]
                    for k in range(1, len(corners) - 1):
                        faces.append([vi[0], vi[k], vi[k + 1]])
                        uv_faces.append([ti[0], ti[k], ti[k + 1]])
    except (OSError, ValueError, IndexError) as exc:
        raise ModelFileError(f"cannot read OBJ ({exc})", path) from exc
    v = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    t = np.asarray(uvs, dtype=np.float64).reshape(-1, 2)

    def zero_based(idx, n):  # OBJ indices are 1-based; negative ones count from the end
        a = np.asarray(idx, dtype=np.int64).reshape(-1, 3)
        return np.where(a < 0, a + n, a - 1)

    fv, ft = zero_based(faces, len(v)), zero_based(uv_faces, len(t))
    if len(fv) == 0 or fv.min() < 0 or fv.max() >= len(v):
        raise ModelFileError("OBJ has no triangles or a face index out of range", path)
    if len(t) == 0 or (ft.min() < 0 or ft.max() >= len(t)):
        ft = np.zeros((0, 3), dtype=np.int64)
    return v, fv, t, ft


def read_obj_uv_layout(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``uvs (T, 2)`` and ``uv_faces (F, 3)`` of an OBJ with ``vt`` and ``f v/vt`` (e.g. FLAME's
    ``head_template_mesh.obj``); raises :class:`ModelFileError` when it has no UV layout."""
    _, _, uvs, uv_faces = read_obj(path)
    if len(uv_faces) == 0:
        raise ModelFileError("OBJ has no UV layout ('vt' lines and 'f v/vt' faces)", path)
    return uvs, uv_faces


def _uv_layout(d: dict, path, uvs, uv_faces) -> tuple[np.ndarray, np.ndarray]:
    if uvs is None and "vt" in d and "ft" in d:
        uvs, uv_faces = d["vt"], d["ft"]
    if uvs is None or uv_faces is None:
        raise ModelFileError("texture space has no 'vt'/'ft' UV layout", path,
                             "Pass uvs, uv_faces = read_obj_uv_layout('head_template_mesh.obj').")
    uvs, uv_faces = np.asarray(uvs, dtype=np.float64), np.asarray(uv_faces).astype(np.int64)
    if uvs.ndim != 2 or uvs.shape[1] != 2 or uv_faces.ndim != 2 or uv_faces.shape[1] != 3:
        raise ModelFileError(f"'vt' must be (T, 2) and 'ft' (F, 3), got {uvs.shape} and {uv_faces.shape}", path)
    if uv_faces.min() < 0 or uv_faces.max() >= len(uvs):
        raise ModelFileError(f"'ft' indexes past the {len(uvs)} 'vt' entries", path)
    return uvs, uv_faces


def _check_image_space(mean: np.ndarray, basis: np.ndarray, path, keys: tuple[str, str]) -> None:
    if mean.ndim != 3 or mean.shape[2] != 3 or mean.shape[0] != mean.shape[1] or mean.shape[0] < 2:
        raise ModelFileError(f"'{keys[0]}' must be a square (H, H, 3) image, got {mean.shape}", path, TEXTURE_HINT)
    if basis.shape[:3] != mean.shape or basis.ndim != 4:
        raise ModelFileError(f"'{keys[1]}' must be (H, W, 3, K) matching '{keys[0]}' {mean.shape}, got "
                             f"{basis.shape}", path, TEXTURE_HINT)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(basis))):
        raise ModelFileError("texture space contains NaN or infinite values", path, TEXTURE_HINT)


def load_flame_texture_space(path: str | Path, n_tex: int | None = None, uvs: np.ndarray | None = None,
                             uv_faces: np.ndarray | None = None) -> TextureSpace:
    """``FLAME_texture.npz`` (BGR, 0..255) as an RGB [0, 1] :class:`TextureSpace` of ``n_tex`` components."""
    d = read_model_dict(path, hint=TEXTURE_HINT, keys=("mean", "tex_dir", "vt", "ft"))
    for k in ("mean", "tex_dir"):
        if k not in d:
            raise ModelFileError(f"texture space: missing '{k}' (keys present: {sorted(d)})", path, TEXTURE_HINT)
    mean, basis = np.asarray(d["mean"]), np.asarray(d["tex_dir"])
    _check_image_space(mean, basis, path, ("mean", "tex_dir"))
    k = basis.shape[3] if n_tex is None else n_tex
    if not 0 <= k <= basis.shape[3]:
        raise ModelFileError(f"{k} texture components requested, the file has {basis.shape[3]}", path, TEXTURE_HINT)
    # BGR -> RGB, 0..255 -> 0..1; rows are already top-down.
    mean = (mean[:, :, ::-1] / 255.0).astype(np.float32)
    basis = (basis[:, :, ::-1, :k] / 255.0).astype(np.float32)
    t, ft = _uv_layout(d, path, uvs, uv_faces)
    return TextureSpace(mean, np.ascontiguousarray(basis), t, ft, name=Path(path).stem)


def load_bfm_albedo(path: str | Path, n_tex: int | None = None, uvs: np.ndarray | None = None,
                    uv_faces: np.ndarray | None = None) -> TextureSpace:
    """``FLAME_albedo_from_BFM.npz`` (flat BGR ``MU``/``PC`` in 0..1) as an RGB :class:`TextureSpace`."""
    d = read_model_dict(path, hint=TEXTURE_HINT, keys=("MU", "PC", "vt", "ft"))
    for k in ("MU", "PC"):
        if k not in d:
            raise ModelFileError(f"albedo space: missing '{k}' (keys present: {sorted(d)})", path, TEXTURE_HINT)
    mu, pc = np.asarray(d["MU"]).reshape(-1), np.asarray(d["PC"])
    side = int(round(math.sqrt(mu.size / 3)))
    if side * side * 3 != mu.size or pc.ndim != 2 or pc.shape[0] != mu.size:
        raise ModelFileError(f"'MU' must hold a square H*H*3 image and 'PC' (H*H*3, K); got {mu.shape} and "
                             f"{pc.shape}", path, TEXTURE_HINT)
    k = pc.shape[1] if n_tex is None else n_tex
    if not 0 <= k <= pc.shape[1]:
        raise ModelFileError(f"{k} albedo components requested, the file has {pc.shape[1]}", path, TEXTURE_HINT)
    mean = mu.reshape(side, side, 3)[:, :, ::-1].astype(np.float32)
    basis = pc[:, :k].reshape(side, side, 3, k)[:, :, ::-1].astype(np.float32)
    _check_image_space(mean, basis, path, ("MU", "PC"))
    t, ft = _uv_layout(d, path, uvs, uv_faces)
    return TextureSpace(np.ascontiguousarray(mean), np.ascontiguousarray(basis), t, ft, name=Path(path).stem)


_PI = math.pi
# Irradiance SH as in DECA / photometric_optimization: real SH normalisation times the Lambertian
# kernel per band (A0 = pi, A1 = 2 pi / 3, A2 = pi / 4), basis order
# [1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1].
SH_CONSTANTS = (
    1.0 / math.sqrt(4 * _PI),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 1.5 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 0.5 * math.sqrt(5 / (4 * _PI)),
)


def sh_basis(normals: Tensor) -> Tensor:
    """Second-order SH irradiance basis (constants :data:`SH_CONSTANTS`).

    Args:
        normals: ``(..., 3)`` unit normals in the frame the SH coefficients are expressed in.

    Returns:
        ``(..., 9)``: ``c_k * [1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1]_k``.
    """
    check_shape(normals, ["*", 3], "normals")
    x, y, z = normals.unbind(-1)
    b = torch.stack([torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], dim=-1)
    return b * torch.tensor(SH_CONSTANTS, dtype=normals.dtype, device=normals.device)


def shade_sh(albedo: Tensor, normals: Tensor, sh: Tensor) -> Tensor:
    """Lambertian shading: ``albedo * (sh_basis(normals) . sh)`` per colour channel.

    Args:
        albedo: ``(B, ..., 3)`` RGB.
        normals: ``(B, ..., 3)`` unit normals (same leading shape as ``albedo``).
        sh: ``(B, 9, 3)`` SH coefficients per batch row and channel.

    Returns:
        ``(B, ..., 3)`` shaded colour (not clamped).
    """
    B = albedo.shape[0]
    check_shape(sh, [B, 9, 3], "sh")
    if normals.shape != albedo.shape:
        raise ValueError(f"normals: expected shape {tuple(albedo.shape)}, got {tuple(normals.shape)}")
    basis = sh_basis(normals).reshape(B, -1, 9)
    shading = (basis @ sh).reshape(albedo.shape)
    return albedo * shading
