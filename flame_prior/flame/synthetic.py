"""A FLAME-format test model built in code: deterministic (seeded), no downloads, no license.

Tests and the synthetic demo need expressions, the ``.pkl`` format and a texture space, which the
shared real files lack (see ``../shared/README.md``). :func:`build_test_model` makes a
:class:`~flame_prior.flame.io.FlameModelData` in exactly FLAME's layout (5 joints: root, neck, jaw,
left eye (+X), right eye (-X); FLAME's frame: metres, +Y up, +Z out of the face):

* no template: a procedural head (deformed UV sphere, ~0.2 m tall, neck, nose, eye sockets, lips,
  chin) plus two eyeball spheres;
* a :class:`FlameModelData`: its template, faces, joint regressor, weights and tree are kept;
* an OBJ path (e.g. ``head_template_mesh.obj``): its topology, geometry moved into FLAME's frame
  (bounding-box centre to FLAME 2023's, ``(-0.001, -0.028, -0.039)`` m; scaled to metres if it is
  not), with a procedural rig (eyeballs found as separate connected components).

Identity/expression/pose bases are random smooth fields (cubic polynomials of position), a few mm
per unit coefficient like FLAME's; eyeballs move rigidly with identity and get no expression or
pose correctives. :func:`write_flame_pkl` writes FLAME's own ``.pkl`` structure (chumpy ``Ch``
objects without chumpy, a scipy csc joint regressor).
"""

from __future__ import annotations

import copyreg
import pickle
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.optimize import nnls
from scipy.sparse.csgraph import connected_components

from flame_prior.flame.appearance import TextureSpace, read_obj
from flame_prior.flame.io import FlameModelData
from flame_prior.flame.landmarks import LandmarkEmbedding

__all__ = ["build_test_model", "build_test_landmark_embedding", "build_test_uv_layout", "build_test_texture_space",
           "write_flame_texture_npz", "write_flame_pkl"]

_FLAME_BBOX_CENTRE = np.array([-0.00101, -0.02756, -0.03907])
# FLAME 2023 rest joints (m): root, neck, jaw; eyes come from the eyeball vertices.
_FLAME_JOINTS = np.array([[0.0, -0.146, -0.082], [0.0, -0.009, -0.054], [0.0, -0.015, -0.058]])
_PROC_JOINTS = np.array([[0.0, -0.165, -0.045], [0.0, -0.02, -0.045], [0.0, -0.025, -0.035]])
_HEAD_GRID = (28, 36)  # latitude rings, longitude segments of the procedural head
_EYE_GRID = (8, 10)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _sphere_grid(n_lat: int, n_lon: int, uv_box: tuple[float, float, float, float]):
    """Closed UV sphere: unit directions ``(N, 3)`` (+Y = pole), faces, uvs and uv_faces."""
    i, j = np.meshgrid(np.arange(n_lat + 1), np.arange(n_lon + 1), indexing="ij")
    vid = np.where(i == 0, 0, np.where(i == n_lat, 1 + (n_lat - 1) * n_lon, 1 + (i - 1) * n_lon + j % n_lon))
    theta = np.pi * np.arange(1, n_lat) / n_lat
    phi = 2 * np.pi * np.arange(n_lon) / n_lon
    ring = np.stack([np.outer(np.sin(theta), np.sin(phi)), np.repeat(np.cos(theta)[:, None], n_lon, 1),
                     np.outer(np.sin(theta), np.cos(phi))], -1).reshape(-1, 3)
    dirs = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]])
    u0, v0, u1, v1 = uv_box
    uvs = np.stack([u0 + (u1 - u0) * j / n_lon, v1 - (v1 - v0) * i / n_lat], -1).reshape(-1, 2)
    gid = i * (n_lon + 1) + j
    faces, uv_faces = [], []
    for a, b, c in ((gid[:-1, :-1], gid[1:, :-1], gid[1:, 1:]), (gid[:-1, :-1], gid[1:, 1:], gid[:-1, 1:])):
        tri = np.stack([a.ravel(), b.ravel(), c.ravel()], -1)
        fv = vid.ravel()[tri]
        keep = (fv[:, 0] != fv[:, 1]) & (fv[:, 1] != fv[:, 2]) & (fv[:, 0] != fv[:, 2])
        faces.append(fv[keep]), uv_faces.append(tri[keep])
    faces, uv_faces = np.concatenate(faces), np.concatenate(uv_faces)
    # Counter-clockwise seen from outside: normals point along the direction from the centre.
    n = np.cross(dirs[faces[:, 1]] - dirs[faces[:, 0]], dirs[faces[:, 2]] - dirs[faces[:, 0]])
    if (n * dirs[faces].mean(1)).sum() < 0:
        faces, uv_faces = faces[:, ::-1], uv_faces[:, ::-1]
    return dirs, faces.astype(np.int64), uvs, uv_faces.astype(np.int64)


def _head_surface(d: np.ndarray) -> np.ndarray:
    """Map unit directions to a head-like surface (m, FLAME's frame)."""
    x, y, z = d.T
    p = np.stack([0.077 * x, 0.012 + 0.112 * y, -0.035 + 0.095 * z], -1)
    # Neck: the lower cap narrows into a cylinder ending at y = -0.19 (the front keeps a chin).
    s = _smoothstep((-y - 0.55 - 0.2 * np.clip(z, 0, 1)) / 0.3)
    h = np.sqrt(x * x + z * z) + 1e-12
    neck = np.stack([0.05 * x / h * np.minimum(1, h * 3), -0.07 - 0.12 * _smoothstep((-y - 0.5) / 0.5),
                     -0.045 + 0.048 * z / h * np.minimum(1, h * 3)], -1)
    p = (1 - s)[:, None] * p + s[:, None] * neck
    # Facial relief along +Z, faded out towards the sides.
    px, py = p[:, 0], p[:, 1]
    relief = (0.017 * _gauss(px, py, 0, -0.016, 0.010, 0.011) + 0.008 * _gauss(px, py, 0, 0.01, 0.007, 0.018)
              - 0.009 * _gauss(np.abs(px), py, 0.032, 0.023, 0.013, 0.009)
              + 0.004 * _gauss(np.abs(px), py, 0.03, 0.043, 0.018, 0.006)
              + 0.006 * _gauss(px, py, 0, -0.046, 0.02, 0.009) - 0.002 * _gauss(px, py, 0, -0.046, 0.022, 0.002)
              + 0.006 * _gauss(px, py, 0, -0.088, 0.018, 0.012))
    p[:, 2] += relief * _smoothstep(z / 0.6) * (1 - s)
    return p


def _procedural_mesh():
    """Head + two eyeballs: vertices, faces, uvs, uv_faces, eye vertex masks (left +X, right -X)."""
    dirs, f, uv, uf = _sphere_grid(*_HEAD_GRID, (0.0, 0.15, 1.0, 1.0))
    verts, faces, uvs, uv_faces = [_head_surface(dirs)], [f], [uv], [uf]
    n_v, n_t = len(dirs), len(uv)
    masks = []
    for side, box in ((1, (0.55, 0.0, 1.0, 0.12)), (-1, (0.0, 0.0, 0.45, 0.12))):
        ed, ef, eu, euf = _sphere_grid(*_EYE_GRID, box)
        # Eyeball centre a little behind the socket surface so that its front shows through.
        socket = _head_surface(np.array([[0.4 * side, 0.1, 0.91]]))[0]
        centre = np.array([0.031 * side, 0.024, socket[2] - 0.008])
        verts.append(centre + 0.0125 * ed[:, [0, 2, 1]])  # pole along +Z (the pupil)
        faces.append(ef[:, ::-1] + n_v), uvs.append(eu), uv_faces.append(euf + n_t)  # axes swap flips winding
        masks.append(np.arange(n_v, n_v + len(ed)))
        n_v, n_t = n_v + len(ed), n_t + len(eu)
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(uvs), np.concatenate(uv_faces), masks


def _eye_components(verts: np.ndarray, faces: np.ndarray) -> list[np.ndarray]:
    """Vertex ids of the left (+X) and right (-X) eyeballs: the 2nd/3rd largest connected components."""
    n = len(verts)
    adj = sp.coo_matrix((np.ones(faces.size), (faces.ravel(), np.roll(faces, 1, 1).ravel())), shape=(n, n))
    _, label = connected_components(adj, directed=False)
    sizes = np.bincount(label)
    order = np.argsort(-sizes)
    if len(order) < 3:
        return [np.zeros(0, np.int64), np.zeros(0, np.int64)]
    eyes = [np.where(label == c)[0] for c in order[1:3]]
    eyes.sort(key=lambda ids: -verts[ids, 0].mean())  # left eye (+X) first
    return eyes


def _regressor_row(verts: np.ndarray, target: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Non-negative vertex weights summing to 1 whose weighted mean is ``target`` (a ring around it)."""
    cand = head[np.abs(verts[head, 1] - target[1]) < 0.012]
    A = np.vstack([verts[cand].T, 10.0 * np.ones(len(cand))])  # heavier row: sum to 1 first
    w, _ = nnls(A, np.append(target, 10.0))
    row = np.zeros(len(verts))
    row[cand] = w / w.sum()
    return row


def _rig(verts: np.ndarray, eyes: list[np.ndarray], joints3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint regressor ``(5, V)`` and skinning weights ``(V, 5)`` for a head in FLAME's frame."""
    V = len(verts)
    head = np.setdiff1d(np.arange(V), np.concatenate(eyes))
    J_reg = np.stack([_regressor_row(verts, joints3[j], head) for j in range(3)]
                     + [np.bincount(e, minlength=V) / max(len(e), 1) for e in eyes])
    x, y, z = verts.T
    root = _smoothstep((joints3[0, 1] + 0.075 - y) / 0.06)
    jaw = _smoothstep((-0.032 - y) / 0.02) * _smoothstep((z - joints3[2, 2] - 0.01) / 0.03) * (1 - root)
    W = np.stack([root, 1 - root - jaw, jaw, np.zeros(V), np.zeros(V)], -1)
    for j, e in enumerate(eyes):
        W[e] = 0.0
        W[e, 3 + j] = 1.0
    return J_reg, W


def _smooth_fields(verts: np.ndarray, n: int, rms: float, decay: float, rng, mask=None) -> np.ndarray:
    """``(V, 3, n)`` random displacement fields, cubic in position, RMS ``rms * decay**k``."""
    q = (verts - verts.mean(0)) / 0.1
    feats = [np.ones(len(q))] + [q[:, a] for a in range(3)]
    feats += [q[:, a] * q[:, b] for a in range(3) for b in range(a, 3)]
    feats += [q[:, a] * q[:, b] * q[:, c] for a in range(3) for b in range(a, 3) for c in range(b, 3)]
    phi = np.stack(feats, -1)  # (V, 20)
    coef = rng.standard_normal((phi.shape[1], 3 * n))
    out = (phi @ coef).reshape(len(q), 3, n)
    if mask is not None:
        out *= mask[:, None, None]
    out = _without_rigid_motion(verts, out, mask)
    scale = rms * decay ** np.arange(n) / np.sqrt((out ** 2).sum(1).mean(0) + 1e-30)
    return out * scale


def _without_rigid_motion(verts: np.ndarray, fields: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Remove from each field the rigid motion (3 translations, 3 small rotations) that best fits it
    where it acts (weighted by ``mask``), tapered by the same mask.

    Real FLAME bases were learnt from rigidly aligned scans, so no component moves the face rigidly;
    random fields would, and a fit could then trade camera pose for shape or expression.
    """
    w = np.ones(len(verts)) if mask is None else mask
    q = verts - (w[:, None] * verts).sum(0) / w.sum()
    rigid = [np.tile(np.eye(3)[a], (len(q), 1)) for a in range(3)]
    rigid += [np.cross(np.eye(3)[a], q) for a in range(3)]  # omega x v
    B = np.stack([r.reshape(-1) for r in rigid], -1)  # (3V, 6)
    sw = np.sqrt(np.repeat(w, 3))[:, None]
    flat = fields.reshape(-1, fields.shape[-1])  # (3V, n)
    coef, *_ = np.linalg.lstsq(B * sw, flat * sw, rcond=None)
    return (flat - np.repeat(w, 3)[:, None] * (B @ coef)).reshape(fields.shape)


def _bases(verts, weights, eyes, n_shape, n_expr, rng):
    shapedirs = _smooth_fields(verts, n_shape, 0.004, 0.92, rng)
    front = _smoothstep((verts[:, 2] + 0.01) / 0.05) * _smoothstep((verts[:, 1] + 0.12) / 0.04)
    exprdirs = _smooth_fields(verts, n_expr, 0.002, 0.92, rng, mask=front)
    posedirs = _smooth_fields(verts, 36, 0.0006, 0.97, rng, mask=1 - weights[:, 1])
    posedirs[..., 18:] = 0.0  # features 18..35 are the eye joints: rotating an eye deforms nothing else
    for e in eyes:  # eyeballs: rigid with identity, untouched by expression and correctives
        if len(e):
            shapedirs[e] = shapedirs[e].mean(0, keepdims=True)
            exprdirs[e], posedirs[e] = 0.0, 0.0
    return shapedirs, exprdirs, posedirs


def build_test_model(n_shape: int = 20, n_expr: int = 10, seed: int = 0,
                     template: FlameModelData | str | Path | None = None) -> FlameModelData:
    """A deterministic FLAME-format model (see the module docstring for the three template kinds)."""
    rng = np.random.default_rng(seed)
    notes = [f"synthetic test model (seed {seed})"]
    if isinstance(template, FlameModelData):
        verts, faces = template.v_template.copy(), template.faces.copy()
        J_reg, W, parents = template.J_regressor.copy(), template.weights.copy(), template.parents.copy()
        eyes = [np.where(W[:, 3] > 0.5)[0], np.where(W[:, 4] > 0.5)[0]]
        name, notes = f"test-{template.name}", notes + [f"topology and rig from {template.source or template.name}"]
    else:
        if template is None:
            verts, faces, _, _, eyes = _procedural_mesh()
            joints3, name = _PROC_JOINTS, "test-procedural"
        else:
            verts, faces, _, _ = read_obj(template)
            extent = np.ptp(verts, 0).max()
            if not 0.15 < extent < 0.6:  # not metres: assume millimetres/centimetres, rescale to ~0.32 m
                verts = verts * (0.32 / extent)
            verts = verts - (verts.min(0) + verts.max(0)) / 2 + _FLAME_BBOX_CENTRE
            eyes, joints3, name = _eye_components(verts, faces), _FLAME_JOINTS, f"test-{Path(template).stem}"
            notes.append(f"topology from {template}, recentred to FLAME's bounding-box centre")
        J_reg, W = _rig(verts, eyes, joints3)
        parents = np.array([-1, 0, 1, 1, 1], dtype=np.int64)
    shapedirs, exprdirs, posedirs = _bases(verts, W, eyes, n_shape, n_expr, rng)
    if isinstance(template, FlameModelData) and template.n_shape:
        # A real identity space is kept (only the expression space is generated).
        shapedirs = template.shapedirs[..., :n_shape].copy()
    return FlameModelData(v_template=verts.astype(np.float64), faces=faces.astype(np.int64), shapedirs=shapedirs,
                          exprdirs=exprdirs, posedirs=posedirs, J_regressor=J_reg, weights=W,
                          parents=parents.astype(np.int64), name=name, notes=notes).validate()


def build_test_uv_layout(model: FlameModelData) -> tuple[np.ndarray, np.ndarray]:
    """``uvs (T, 2)``, ``uv_faces (F, 3)`` of the procedural mesh (``model`` must use its topology)."""
    verts, faces, uvs, uv_faces, _ = _procedural_mesh()
    if model.faces.shape != faces.shape or not np.array_equal(model.faces, faces):
        raise ValueError("build_test_uv_layout: the model does not use the procedural topology; take the UV "
                         "layout from its OBJ (read_obj_uv_layout)")
    return uvs, uv_faces


# iBUG-68 targets (x, y) in metres on the face, seen from the front (subject's left = +X).
def _ibug68_xy() -> np.ndarray:
    t = np.linspace(0, np.pi, 17)
    jaw = np.stack([-0.068 * np.cos(t), 0.0 - 0.092 * np.sin(t) ** 0.9], -1)
    brow_r = np.stack([np.linspace(-0.055, -0.012, 5), 0.040 + 0.006 * np.sin(np.linspace(0.3, 2.8, 5))], -1)
    brow_l = brow_r[::-1] * [-1, 1]
    nose = [[0, 0.022], [0, 0.008], [0, -0.005], [0, -0.017]]
    nostril = [[-0.013, -0.027], [-0.007, -0.029], [0, -0.030], [0.007, -0.029], [0.013, -0.027]]
    eye_r = [[-0.045, 0.022], [-0.037, 0.027], [-0.025, 0.027], [-0.017, 0.021], [-0.025, 0.017], [-0.037, 0.017]]
    eye_l = [[0.017, 0.021], [0.025, 0.027], [0.037, 0.027], [0.045, 0.022], [0.037, 0.017], [0.025, 0.017]]
    lip_o = [[-0.024, -0.047], [-0.015, -0.041], [-0.006, -0.038], [0, -0.039], [0.006, -0.038], [0.015, -0.041],
             [0.024, -0.047], [0.015, -0.054], [0.006, -0.057], [0, -0.058], [-0.006, -0.057], [-0.015, -0.054]]
    lip_i = [[-0.020, -0.047], [-0.008, -0.045], [0, -0.045], [0.008, -0.045], [0.020, -0.047], [0.008, -0.049],
             [0, -0.049], [-0.008, -0.049]]
    return np.concatenate([jaw, brow_r, brow_l, nose, nostril, eye_r, eye_l, lip_o, lip_i]).astype(np.float64)


def build_test_landmark_embedding(model: FlameModelData) -> LandmarkEmbedding:
    """68 iBUG-ordered landmarks (static, no contour table) on the front of ``model``'s face.

    Each target ``(x, y)`` is projected along -Z onto the frontmost head triangle (eyeballs excluded).
    """
    v, f = model.v_template, model.faces
    head_f = f[(model.weights[f, 3:].max(-1) < 0.5).all(1)]
    head_ids = np.where((model.weights[f, 3:].max(-1) < 0.5).all(1))[0]
    a, b, c = v[head_f[:, 0]], v[head_f[:, 1]], v[head_f[:, 2]]
    xy = _ibug68_xy()
    face_idx, bary = np.zeros(68, np.int64), np.zeros((68, 3))
    # 2D barycentrics in the xy plane for every (target, triangle) pair.
    e1, e2 = (b - a)[:, :2], (c - a)[:, :2]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    det = np.where(np.abs(det) < 1e-14, 1e-14, det)
    r = xy[:, None, :] - a[None, :, :2]
    l1 = (r[..., 0] * e2[:, 1] - r[..., 1] * e2[:, 0]) / det
    l2 = (e1[:, 0] * r[..., 1] - e1[:, 1] * r[..., 0]) / det
    l0 = 1 - l1 - l2
    inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
    depth = l0 * a[:, 2] + l1 * b[:, 2] + l2 * c[:, 2]
    depth = np.where(inside, depth, -np.inf)
    best = depth.argmax(1)
    if not np.isfinite(depth[np.arange(68), best]).all():
        raise ValueError("build_test_landmark_embedding: a landmark target misses the face")
    for i, k in enumerate(best):
        face_idx[i] = head_ids[k]
        bary[i] = np.clip([l0[i, k], l1[i, k], l2[i, k]], 0, None)
        bary[i] /= bary[i].sum()
    return LandmarkEmbedding(face_idx=face_idx, bary=bary, detector_index=np.arange(68, dtype=np.int64),
                             weight=np.ones(68), detector="ibug68", name=f"{model.name}-ibug68")


def build_test_texture_space(uvs: np.ndarray, uv_faces: np.ndarray, n_tex: int = 10, size: int = 256,
                             seed: int = 0) -> TextureSpace:
    """A smooth skin-toned random albedo space (RGB [0, 1], top row = v 1) on the given UV layout."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size, indexing="ij")
    mean = np.stack([0.78 + 0.05 * np.sin(6 * xx), 0.58 + 0.04 * np.cos(5 * yy), 0.48 + 0.03 * np.sin(4 * xx * yy)],
                    -1)
    basis = np.zeros((size, size, 3, n_tex))
    for k in range(n_tex):
        fx, fy, ph = rng.uniform(1, 4 + k, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
        pattern = np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        basis[..., k] = 0.03 * pattern[..., None] * rng.uniform(0.5, 1.0, 3)
    return TextureSpace(mean.astype(np.float32), basis.astype(np.float32), np.asarray(uvs, np.float64),
                        np.asarray(uv_faces, np.int64), name="test-texture")


def write_flame_texture_npz(ts: TextureSpace, path: str | Path) -> None:
    """Write ``ts`` in ``FLAME_texture.npz``'s layout: ``mean``/``tex_dir`` BGR 0..255, ``vt``, ``ft``."""
    np.savez(path, mean=(ts.mean[:, :, ::-1] * 255.0).astype(np.float64),
             tex_dir=(ts.basis[:, :, ::-1] * 255.0).astype(np.float64), vt=ts.uvs, ft=ts.uv_faces.astype(np.uint32))


class _Ch:
    """Pickles like chumpy's constant ``Ch``: NEWOBJ of ``chumpy.ch.Ch`` + its ``__dict__`` state.

    The class itself is written as the global ``chumpy.ch.Ch`` by ``_FlamePickler``.
    """

    def __init__(self, x: np.ndarray):
        self.x = np.asarray(x, dtype=np.float64)

    def __reduce_ex__(self, protocol):
        state = {"x": self.x, "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}, "_make_dense": False,
                 "_make_sparse": False}
        return copyreg.__newobj__, (_Ch,), state


class _FlamePickler(pickle._Pickler):  # the pure-Python pickler lets us name a global chumpy lacks here
    def save_global(self, obj, name=None):
        if obj is _Ch:
            self.write(pickle.GLOBAL + b"chumpy.ch\nCh\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def write_flame_pkl(data: FlameModelData, path: str | Path) -> None:
    """Write ``data`` in FLAME's ``.pkl`` structure (protocol 2, like FLAME's Python-2 files).

    Keys: ``v_template``, ``shapedirs`` (identity then expression on the last axis), ``posedirs``,
    ``weights`` as ``chumpy.ch.Ch`` objects; ``J_regressor`` a ``scipy.sparse.csc_matrix``;
    ``f`` uint32; ``kintree_table`` (2, J) uint32 with the root's parent ``2**32 - 1``; ``J`` rest
    joints; ``bs_style`` ``'lbs'``; ``bs_type`` ``'lrotmin'``. When the split is not FLAME's 300 + 100
    an extra ``n_shape`` key records it (read by :func:`~flame_prior.flame.io.load_flame_model`).
    """
    kintree = np.stack([np.where(data.parents < 0, 2**32 - 1, data.parents), np.arange(data.n_joints)])
    d = {
        "v_template": _Ch(data.v_template),
        "f": data.faces.astype(np.uint32),
        "shapedirs": _Ch(np.concatenate([data.shapedirs, data.exprdirs], axis=-1)),
        "posedirs": _Ch(data.posedirs),
        "J_regressor": sp.csc_matrix(data.J_regressor),
        "weights": _Ch(data.weights),
        "kintree_table": kintree.astype(np.uint32),
        "J": data.J_regressor @ data.v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    if (data.n_shape, data.n_expr) != (300, 100) and not (data.n_shape == 300 and data.n_expr == 0):
        d["n_shape"] = data.n_shape
    with open(path, "wb") as f:
        _FlamePickler(f, protocol=2).dump(d)
