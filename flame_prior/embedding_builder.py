"""Build flame-prior's own MediaPipe Face Mesh → FLAME landmark embedding (468 points + iris).

Public entry: :func:`build_mediapipe_embedding`; :func:`save_embedding` writes the package file
``flame_prior/data/mediapipe468_embedding.npz`` (``scripts/build_mediapipe_embedding.py`` is the
command that regenerates it).

Inputs (both read, neither shipped):

* MediaPipe's canonical face model (``canonical_face_model.obj``, Apache 2.0): 468 vertices in
  Face Mesh landmark order, centimetres, +Y up, +Z towards the viewer, +X to the subject's left
  (right-handed; checked from the data: nose tip has the largest Z, landmark 10 (forehead) the
  largest Y, 263 (subject's left outer eye corner) positive X).
* FLAME's template (``v_template`` (5023, 3) metres and ``f`` (9976, 3) from a FLAME-format
  ``.npz``), same axes as the canonical model (see ``docs/conventions.md``).

FLAME's own 105-point MediaPipe embedding is *not* an input; the tests only compare against it.

Algorithm
---------
1. **Regions of FLAME, from connectivity.** The template has three connected components: the
   head (vertices 0..3930) and two eyeballs. Candidate triangles for landmarks are the head
   component's only. The eyeball whose centroid has +X is the subject's left eye.
2. **Similarity initialisation from geometric anatomy.** Nose tip = the most +Z vertex (on both
   meshes); eye centres = the front-most (pupil) vertex of each FLAME eyeball and, on the
   canonical model, the midpoint of each eye's corners (33/133 right, 263/362 left).
   Rotation starts at identity (the axes agree), scale = ratio of inter-eye distances,
   translation matches the centroids of the three points.
3. **Similarity ICP** (scale, rotation, translation): canonical vertices → closest points on
   the FLAME head surface, weighted (see weights below), pairs farther than 3x the median
   distance dropped, weighted Umeyama solve; repeated until the update is negligible.
4. **Non-rigid ICP**: per-vertex displacements ``D`` of the aligned canonical vertices ``X``,
   minimising ``sum_i w_i |X_i + D_i - c_i|^2 + mu sum_q |B_q (X + D) - q|^2 + lam |L D|^2``:
   ``c_i`` is the closest point of FLAME's head surface, ``q`` runs over FLAME face vertices
   with ``B_q (X + D)`` their closest point on the deformed canonical surface (two-way
   closest points keep the canonical face from sliding: they pulled the mouth corners onto
   FLAME's), and ``L`` is the uniform graph Laplacian of the canonical triangulation, so the
   displacement field stays smooth; ``lam`` is annealed along :data:`STIFFNESS_SCHEDULE`.
5. **Embedding**: each deformed vertex → exact closest point on the FLAME head surface →
   triangle index (into FLAME's full ``f``) + barycentric coordinates.

Weights (``weights (468,)`` in (0, 1], for the fitter)
--------------------------------------------------------
* 0.3 for the face-oval contour: the boundary loop of the canonical model's triangulation
  (which is MediaPipe's ``FACEMESH_FACE_OVAL``, 36 points). The detector puts them on the
  silhouette, which slides over the skin as the head turns.
* 0.7 for the eyelid contours (``FACEMESH_LEFT_EYE`` / ``FACEMESH_RIGHT_EYE``) and the inner lip
  contour (inner half of ``FACEMESH_LIPS``): they move with blinks and mouth opening, which the
  neutral template does not model.
* 1.0 for every other point.

Iris
----
Face Mesh with refined landmarks returns 478 points; 468..472 are the subject's RIGHT iris
(centre first: MediaPipe's ``FACEMESH_RIGHT_IRIS`` = 469..472, drawn with ``FACEMESH_RIGHT_EYE``,
whose corners 33/133 lie at -X in the canonical model) and 473..477 the subject's LEFT iris.
They are not in the canonical model. The fitter drives the eye pose from the two iris centres:
``iris_center_detector_index = [473, 468]`` (subject's left, right) pairs with
``pupil_vertex_index`` = the most +Z vertex of the left / right FLAME eyeball in the rest pose,
a mesh vertex that follows the eye joint under skinning.

File format: see :func:`save_embedding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

from flame_prior.flame.appearance import read_obj

__all__ = [
    "FORMAT_VERSION",
    "FACE_OVAL",
    "RIGHT_EYE_CONTOUR",
    "LEFT_EYE_CONTOUR",
    "INNER_LIP_CONTOUR",
    "IRIS_CENTER_DETECTOR_INDEX",
    "MediaPipeEmbedding",
    "load_canonical_face_model",
    "load_flame_template",
    "boundary_loops",
    "closest_points_on_triangles",
    "build_mediapipe_embedding",
    "save_embedding",
    "load_embedding",
    "embedding_points",
]

FORMAT_VERSION = 1

# MediaPipe Face Mesh index sets (from mediapipe/python/solutions/face_mesh_connections.py,
# Apache 2.0). FACE_OVAL is also recomputed from the canonical mesh boundary (they agree).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
RIGHT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
INNER_LIP_CONTOUR = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82,
                     81, 80, 191)
# Subject's (left, right) iris centres among Face Mesh's 478 refined landmarks.
IRIS_CENTER_DETECTOR_INDEX = (473, 468)
# Eye corners used only to initialise the similarity (subject's right eye, left eye).
_RIGHT_EYE_CORNERS = (33, 133)
_LEFT_EYE_CORNERS = (263, 362)

OVAL_WEIGHT = 0.3
CONTOUR_WEIGHT = 0.7
# Laplacian stiffness schedule of the non-rigid ICP (dimensionless: the uniform Laplacian of
# the canonical mesh against unit data weights), stiff to soft.
STIFFNESS_SCHEDULE = (100.0, 10.0, 1.0)
_ITERATIONS_PER_STIFFNESS = 6
_SIMILARITY_ITERATIONS = 50
_CANDIDATE_TRIANGLES = 48  # nearest triangle centroids searched per point during ICP
# Weight of the FLAME→canonical closest-point term relative to the canonical→FLAME one (both
# normalised by their number of pairs), and its pair-rejection distance in metres.
REVERSE_WEIGHT = 0.3
REVERSE_MAX_DIST = 0.003


@dataclass
class MediaPipeEmbedding:
    """A barycentric landmark embedding of Face Mesh points on FLAME, plus the eye info.

    Attributes:
        lmk_face_idx: ``(L,)`` int64, triangle index into FLAME's ``f`` (9976, 3).
        lmk_b_coords: ``(L, 3)`` float64, barycentric coordinates in that triangle (sum 1).
        landmark_indices: ``(L,)`` int64, the Face Mesh landmark (of 478) each row embeds.
        weights: ``(L,)`` float32 in (0, 1], per-landmark weight for the fitter.
        iris_center_detector_index: ``(2,)`` int64, Face Mesh indices of the subject's
            (left, right) iris centres.
        pupil_vertex_index: ``(2,)`` int64, FLAME vertex at the front of the subject's
            (left, right) eyeball in the rest pose.
    """

    lmk_face_idx: np.ndarray
    lmk_b_coords: np.ndarray
    landmark_indices: np.ndarray
    weights: np.ndarray
    iris_center_detector_index: np.ndarray
    pupil_vertex_index: np.ndarray


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def load_canonical_face_model(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read MediaPipe's canonical face model OBJ: ``(vertices (468, 3) cm, faces (F, 3) int64)``.

    Vertex order is Face Mesh's landmark order (the OBJ's ``v`` order; UVs are ignored).
    """
    v, f, _, _ = read_obj(path)
    if v.shape != (468, 3):
        raise ValueError(f"{path}: expected 468 vertices, got {v.shape[0]}")
    return v, f


def load_flame_template(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(v_template (V, 3) float64 metres, f (F, 3) int64)`` from a FLAME-format ``.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return data["v_template"].astype(np.float64), data["f"].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Mesh helpers
# ---------------------------------------------------------------------------------------------

def _adjacency(faces: np.ndarray, n: int) -> sp.csr_matrix:
    i = faces.ravel()
    j = np.roll(faces, 1, axis=1).ravel()
    a = sp.coo_matrix((np.ones(2 * i.size), (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
    a.data[:] = 1.0
    return a


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Boundary loops of a triangle mesh (edges used by one triangle), each as ordered vertices."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    border = edges[counts[inverse.ravel()] == 1]
    nxt = dict(zip(border[:, 0].tolist(), border[:, 1].tolist()))
    loops, seen = [], set()
    for start in border[:, 0].tolist():
        if start in seen:
            continue
        loop, cur = [], start
        while cur not in seen:
            seen.add(cur)
            loop.append(cur)
            cur = nxt[cur]
        loops.append(np.asarray(loop, dtype=np.int64))
    return loops


def _flame_regions(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head-surface triangle indices and the (left, right) pupil vertices, from connectivity.

    The largest connected component is the head; the two others are the eyeballs. The eyeball
    with +X centroid is the subject's left eye; its pupil is its most +Z vertex.
    """
    n_comp, label = connected_components(_adjacency(f, len(v)), directed=False)
    sizes = np.bincount(label, minlength=n_comp)
    head = int(np.argmax(sizes))
    eyes = [c for c in range(n_comp) if c != head]
    if len(eyes) != 2:
        raise ValueError(f"FLAME template: expected a head and two eyeballs, got {n_comp} components")
    eyes.sort(key=lambda c: -v[label == c, 0].mean())  # subject's left (+X) first
    is_head = label[f[:, 0]] == head
    pupils = []
    for c in eyes:
        idx = np.flatnonzero(label == c)
        pupils.append(int(idx[np.argmax(v[idx, 2])]))
    return np.flatnonzero(is_head), np.asarray(pupils, dtype=np.int64)


def closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact closest point of each point ``p (*, 3)`` on triangle ``(a, b, c)`` (each ``(*, 3)``).

    Ericson, *Real-Time Collision Detection*, 5.1.5, vectorised. Returns
    ``(points (*, 3), barycentric (*, 3))`` with ``points = bary[..., :1] * a + ... ``.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1 = (ab * ap).sum(-1)
    d2 = (ac * ap).sum(-1)
    bp = p - b
    d3 = (ab * bp).sum(-1)
    d4 = (ac * bp).sum(-1)
    cp = p - c
    d5 = (ab * cp).sum(-1)
    d6 = (ac * cp).sum(-1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v_in = vb / denom
        w_in = vc / denom
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    # Default: interior.
    u = 1.0 - v_in - w_in
    v = v_in
    w = w_in
    # Cases in reverse priority so that the first matching case of Ericson's wins.
    cases = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), (1 - t_bc) * 0, 1 - t_bc, t_bc),  # edge BC
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - t_ac, 0 * t_ac, t_ac),  # edge AC
        ((d6 >= 0) & (d5 <= d6), 0.0, 0.0, 1.0),  # vertex C
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - t_ab, t_ab, 0 * t_ab),  # edge AB
        ((d3 >= 0) & (d4 <= d3), 0.0, 1.0, 0.0),  # vertex B
        ((d1 <= 0) & (d2 <= 0), 1.0, 0.0, 0.0),  # vertex A
    ]
    for mask, cu, cv, cw in cases:
        u = np.where(mask, cu, u)
        v = np.where(mask, cv, v)
        w = np.where(mask, cw, w)
    bary = np.stack([u, v, w], axis=-1)
    return bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c, bary


class _SurfaceProjector:
    """Closest points on a subset of a mesh's triangles (the FLAME head surface)."""

    def __init__(self, v: np.ndarray, f: np.ndarray, face_ids: np.ndarray):
        self.face_ids = face_ids
        self.tri = v[f[face_ids]]  # (T, 3, 3)
        self.tree = cKDTree(self.tri.mean(axis=1))

    def project(self, points: np.ndarray, exact: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(closest (N, 3), face index into f (N,), barycentric (N, 3))``.

        ``exact=False`` searches the triangles with the nearest centroids (fast, for ICP);
        ``exact=True`` searches all of them.
        """
        if exact:
            cand = np.broadcast_to(np.arange(len(self.tri)), (len(points), len(self.tri)))
        else:
            k = min(_CANDIDATE_TRIANGLES, len(self.tri))
            _, cand = self.tree.query(points, k=k)
        best_pt = np.empty_like(points)
        best_face = np.empty(len(points), dtype=np.int64)
        best_bary = np.empty((len(points), 3))
        for start in range(0, len(points), 32):
            sl = slice(start, start + 32)
            t = self.tri[cand[sl]]  # (n, K, 3, 3)
            pt, bary = closest_points_on_triangles(points[sl, None, :], t[..., 0, :], t[..., 1, :], t[..., 2, :])
            d2 = ((pt - points[sl, None, :]) ** 2).sum(-1)
            j = np.argmin(d2, axis=1)
            rows = np.arange(len(j))
            best_pt[sl] = pt[rows, j]
            best_bary[sl] = bary[rows, j]
            best_face[sl] = self.face_ids[cand[sl][rows, j]]
        return best_pt, best_face, best_bary


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------

def _weighted_similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: ``(s, R, t)`` minimising ``sum w |s R src + t - dst|^2``."""
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag(d) @ vt
    var_s = w @ (xs ** 2).sum(1)
    s = float((sig * d).sum() / var_s)
    return s, r, mu_d - s * r @ mu_s


def _face_oval(canon_faces: np.ndarray) -> np.ndarray:
    """The canonical model's outer boundary loop (MediaPipe's face oval)."""
    return max(boundary_loops(canon_faces), key=len)


def _landmark_weights(oval: np.ndarray) -> np.ndarray:
    w = np.ones(468, dtype=np.float32)
    w[list(RIGHT_EYE_CONTOUR + LEFT_EYE_CONTOUR + INNER_LIP_CONTOUR)] = CONTOUR_WEIGHT
    w[oval] = OVAL_WEIGHT
    return w


def _reverse_pairs(x: np.ndarray, canon_faces: np.ndarray, oval: np.ndarray, targets: np.ndarray
                   ) -> tuple[sp.csr_matrix, np.ndarray]:
    """FLAME→canonical closest points: ``(B (Q, 468) barycentric rows, FLAME points (Q, 3))``.

    Each FLAME face vertex is projected onto the deformed canonical surface ``x``; pairs farther
    than :data:`REVERSE_MAX_DIST` or landing on a triangle of the face oval (FLAME's head goes on
    beyond the canonical face) are dropped. ``B @ x`` are the matched canonical points.
    """
    proj = _SurfaceProjector(x, canon_faces, np.arange(len(canon_faces)))
    pts, tri, bary = proj.project(targets)
    ok = (np.linalg.norm(pts - targets, axis=1) < REVERSE_MAX_DIST) & ~np.isin(canon_faces[tri], oval).any(1)
    n = int(ok.sum())
    rows = np.repeat(np.arange(n), 3)
    b = sp.csr_matrix((bary[ok].ravel(), (rows, canon_faces[tri[ok]].ravel())), shape=(n, len(x)))
    return b, targets[ok]


def _initial_similarity(canon: np.ndarray, v: np.ndarray, head_faces: np.ndarray, f: np.ndarray,
                        pupils: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    head_verts = np.unique(f[head_faces])
    nose_flame = v[head_verts[np.argmax(v[head_verts, 2])]]
    nose_canon = canon[np.argmax(canon[:, 2])]
    eyes_canon = np.stack([canon[list(_LEFT_EYE_CORNERS)].mean(0), canon[list(_RIGHT_EYE_CORNERS)].mean(0)])
    eyes_flame = v[pupils]  # (left, right)
    s = np.linalg.norm(eyes_flame[0] - eyes_flame[1]) / np.linalg.norm(eyes_canon[0] - eyes_canon[1])
    src = np.vstack([nose_canon, eyes_canon])
    dst = np.vstack([nose_flame, eyes_flame])
    r = np.eye(3)
    return float(s), r, dst.mean(0) - s * src.mean(0)


def _uniform_laplacian(faces: np.ndarray, n: int) -> sp.csr_matrix:
    a = _adjacency(faces, n)
    deg = np.asarray(a.sum(1)).ravel()
    return (sp.identity(n, format="csr") - sp.diags(1.0 / deg) @ a).tocsr()


def build_mediapipe_embedding(canonical_obj: str | Path, flame_npz: str | Path) -> MediaPipeEmbedding:
    """Register MediaPipe's canonical face model to FLAME's template and embed its 468 vertices.

    Args:
        canonical_obj: MediaPipe's ``canonical_face_model.obj``.
        flame_npz: a FLAME-format ``.npz`` with ``v_template`` and ``f``.

    Returns:
        The embedding (see :class:`MediaPipeEmbedding` and the module docstring). Deterministic.
    """
    canon, canon_faces = load_canonical_face_model(canonical_obj)
    v, f = load_flame_template(flame_npz)
    head_faces, pupils = _flame_regions(v, f)
    projector = _SurfaceProjector(v, f, head_faces)
    oval = _face_oval(canon_faces)
    weights = _landmark_weights(oval)
    w = weights.astype(np.float64)

    # Similarity ICP from the anatomical initialisation.
    s, r, t = _initial_similarity(canon, v, head_faces, f, pupils)
    for _ in range(_SIMILARITY_ITERATIONS):
        x = s * canon @ r.T + t
        c, _, _ = projector.project(x)
        dist = np.linalg.norm(c - x, axis=1)
        keep = dist <= 3.0 * np.median(dist)
        s, r, t = _weighted_similarity(canon[keep], c[keep], w[keep])
        if np.abs(s * canon @ r.T + t - x).max() < 1e-7:
            break
    x0 = s * canon @ r.T + t

    # Non-rigid ICP: smooth displacement field, annealed stiffness, two-way closest points.
    lap = _uniform_laplacian(canon_faces, len(canon))
    ltl = lap.T @ lap
    flame_verts = v[np.unique(f[head_faces])]
    near, _ = cKDTree(x0).query(flame_verts, distance_upper_bound=0.02)
    flame_face_verts = flame_verts[np.isfinite(near)]  # FLAME vertices within 2 cm of the face
    disp = np.zeros_like(x0)
    for lam in STIFFNESS_SCHEDULE:
        for _ in range(_ITERATIONS_PER_STIFFNESS):
            x = x0 + disp
            c, _, _ = projector.project(x)
            b, q = _reverse_pairs(x, canon_faces, oval, flame_face_verts)
            mu = REVERSE_WEIGHT * w.sum() / max(b.shape[0], 1)
            lhs = sp.diags(w) + lam * ltl + mu * (b.T @ b)
            rhs = w[:, None] * (c - x0) + mu * (b.T @ (q - b @ x0))
            disp = splu(lhs.tocsc()).solve(rhs)

    _, face_idx, bary = projector.project(x0 + disp, exact=True)
    return MediaPipeEmbedding(
        lmk_face_idx=face_idx.astype(np.int64),
        lmk_b_coords=bary.astype(np.float64),
        landmark_indices=np.arange(468, dtype=np.int64),
        weights=weights,
        iris_center_detector_index=np.asarray(IRIS_CENTER_DETECTOR_INDEX, dtype=np.int64),
        pupil_vertex_index=pupils,
    )


# ---------------------------------------------------------------------------------------------
# File format
# ---------------------------------------------------------------------------------------------

_DESCRIPTION = (
    "flame-prior MediaPipe Face Mesh -> FLAME landmark embedding, format_version 1. "
    "Derived from MediaPipe's canonical face model (Apache 2.0, see NOTICE-mediapipe-embedding.md) "
    "registered to the FLAME template. lmk_face_idx (468,) int64 triangles of FLAME's f; "
    "lmk_b_coords (468,3) float64 barycentric; landmark_indices (468,) int64 Face Mesh indices; "
    "weights (468,) float32 (face oval 0.3, eyelid and inner-lip contours 0.7, others 1); "
    "iris_center_detector_index (2,) Face Mesh indices of the subject's (left, right) iris centres; "
    "pupil_vertex_index (2,) FLAME vertices at the front of the subject's (left, right) eyeball."
)


def save_embedding(emb: MediaPipeEmbedding, path: str | Path) -> None:
    """Write the embedding as an ``.npz`` readable with ``np.load(allow_pickle=False)``.

    Keys (FLAME's embedding key names where they overlap, so a generic loader reads it):
    ``lmk_face_idx (L,) int64``, ``lmk_b_coords (L, 3) float64``, ``landmark_indices (L,) int64``,
    ``weights (L,) float32``, ``iris_center_detector_index (2,) int64``,
    ``pupil_vertex_index (2,) int64``, ``format_version () int64``, ``description () str``.
    """
    np.savez_compressed(
        path,
        lmk_face_idx=emb.lmk_face_idx,
        lmk_b_coords=emb.lmk_b_coords,
        landmark_indices=emb.landmark_indices,
        weights=emb.weights,
        iris_center_detector_index=emb.iris_center_detector_index,
        pupil_vertex_index=emb.pupil_vertex_index,
        format_version=np.int64(FORMAT_VERSION),
        description=np.str_(_DESCRIPTION),
    )


def load_embedding(path: str | Path) -> MediaPipeEmbedding:
    """Read a file written by :func:`save_embedding` (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        if int(data["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {int(data['format_version'])}, expected {FORMAT_VERSION}")
        return MediaPipeEmbedding(**{k: data[k] for k in MediaPipeEmbedding.__dataclass_fields__})


def embedding_points(vertices: np.ndarray, faces: np.ndarray, face_idx: np.ndarray,
                     bary: np.ndarray) -> np.ndarray:
    """Points ``(L, 3)`` of a barycentric embedding on a mesh ``vertices (V, 3)``, ``faces (F, 3)``."""
    tri = vertices[faces[face_idx]]  # (L, 3, 3)
    return np.einsum("lk,lkd->ld", bary, tri)
