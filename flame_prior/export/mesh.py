"""Textured mesh: ``mesh.obj`` + ``mesh.mtl`` + ``texture.png``.

* ``mesh.obj``: ``mtllib mesh.mtl``, one ``v x y z`` per fitted vertex (the posed mesh in FLAME's world
  frame, metres, +Y up, +Z out of the face; the same frame as every exported camera), one ``vt u v`` per
  texture coordinate (``FitResult.uvs``; origin bottom-left, v up, as OBJ expects), then
  ``usemtl flame_albedo`` and one triangle per face as ``f v/vt v/vt v/vt`` (1-based; vertex indices from
  ``FitResult.faces``, texture indices from ``FitResult.uv_faces``). Vertex order equals FLAME's, so
  per-vertex data (masks, landmark embeddings) still applies. No normals are written.
* ``mesh.mtl``: material ``flame_albedo`` with ``map_Kd texture.png`` (white diffuse factor).
* ``texture.png``: the fitted albedo, 8-bit RGB, rows top-down as images are stored: row 0 is v = 1.
  The albedo is unlit (the per-view SH lighting is in ``flame_params.npz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_prior.export._common import save_png, texture_to_u8

__all__ = ["write_textured_mesh"]

MATERIAL = "flame_albedo"


def write_textured_mesh(out_dir: str | Path, result) -> Path:
    """Write ``mesh.obj``, ``mesh.mtl`` and ``texture.png`` into ``out_dir``; returns the OBJ path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    v = np.asarray(result.vertices, dtype=np.float64)
    f = np.asarray(result.faces, dtype=np.int64)
    vt = np.asarray(result.uvs, dtype=np.float64)
    ft = np.asarray(result.uv_faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"write_textured_mesh: vertices {v.shape}, faces {f.shape}: expected (V,3), (F,3)")
    if ft.shape != f.shape or vt.ndim != 2 or vt.shape[1] != 2:
        raise ValueError(f"write_textured_mesh: uvs {vt.shape}, uv_faces {ft.shape} for faces {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v) or ft.min() < 0 or ft.max() >= len(vt)):
        raise ValueError("write_textured_mesh: a face index is out of range")

    save_png(out_dir / "texture.png", texture_to_u8(result.texture))
    (out_dir / "mesh.mtl").write_text(
        "# flame-prior: fitted FLAME albedo (unlit)\n"
        f"newmtl {MATERIAL}\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\n"
        "d 1.0\nillum 1\nmap_Kd texture.png\n", encoding="utf-8")

    parts = ["# flame-prior fitted FLAME mesh: world = FLAME frame, metres, +Y up, +Z out of the face\n",
             "mtllib mesh.mtl\n"]
    # One %-format per block, the same bytes as a formatted string per line: the whole writer measured
    # 0.04 s of CPU against 0.2-0.3 s on the shared 30-view scene.
    parts.append(("v %.9g %.9g %.9g\n" * len(v)) % tuple(v.ravel().tolist()))
    parts.append(("vt %.9g %.9g\n" * len(vt)) % tuple(vt.ravel().tolist()))
    parts.append(f"usemtl {MATERIAL}\n")
    pairs = np.stack([f + 1, ft + 1], -1)  # (F, 3, 2): v/vt per corner
    parts.append(("f %d/%d %d/%d %d/%d\n" * len(f)) % tuple(pairs.ravel().tolist()))
    obj = out_dir / "mesh.obj"
    obj.write_text("".join(parts), encoding="utf-8")
    return obj
