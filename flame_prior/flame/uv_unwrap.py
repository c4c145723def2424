"""A UV layout for models that ship none (the default FLAME 2023 Open subset has no ``vt``).

FLAME's own UV layout lives in its (license-gated) template OBJ and texture files; users who have
them pass them and get FLAME's layout. Otherwise this builds a cylindrical unwrap around FLAME's
vertical (+Y) axis with the seam at the back of the head (hidden under hair in photos), so a free
texture map can still be fitted and exported with the mesh.
"""

from __future__ import annotations

import numpy as np


def cylindrical_uv_layout(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cylindrical UVs around +Y, seam at the back (-Z), one ``vt`` per face corner.

    Args:
        vertices: ``(V, 3)`` template vertices, FLAME frame (+Y up, +Z out of the face).
        faces: ``(F, 3)`` triangle vertex indices.

    Returns:
        ``uvs (3F, 2)`` in [0, 1] (OBJ convention: v = 0 at the bottom) and ``uv_faces (F, 3)``.
        Faces that straddle the seam get their corners unwrapped on one side, so no triangle
        spans the whole texture.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    centre = v.mean(0)
    d = v - centre
    # Angle measured from the back (-Z) so the front of the face sits at u = 0.5, far from the seam.
    u = (np.arctan2(d[:, 0], -d[:, 2]) / (2 * np.pi)) % 1.0
    y = v[:, 1]
    vv = (y - y.min()) / max(float(np.ptp(y)), 1e-9)
    cu = u[f]  # (F, 3) per-corner u
    straddle = cu.max(1) - cu.min(1) > 0.5
    cu = np.where(straddle[:, None] & (cu < 0.5), cu + 1.0, cu)
    cu = cu / cu.max()
    uvs = np.stack([cu.reshape(-1), vv[f].reshape(-1)], -1)
    uv_faces = np.arange(3 * len(f), dtype=np.int64).reshape(-1, 3)
    return uvs.astype(np.float32), uv_faces
