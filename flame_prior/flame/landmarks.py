"""Landmark embeddings: detector landmarks as barycentric points on FLAME's mesh.

Each landmark is a triangle id plus barycentric weights. For iBUG-68 the 17 jaw-contour points
are not fixed on the mesh: the outline a detector sees slides over the cheek as the head turns,
so DECA/RingNet/smplx pick the contour from a table indexed by head yaw.

Dynamic contour table and yaw convention (checked against DECA's ``landmark_embedding.npy``):

* Yaw is the head's rotation about the camera's vertical axis, measured in a camera frame whose
  axes equal FLAME's for a frontal view (x right, y up, z towards the viewer; OpenGL-like):
  ``yaw = atan2(-R[2, 0], sqrt(R[0, 0]^2 + R[1, 0]^2))`` (smplx/DECA ``rot_mat_to_euler``), see
  :func:`head_yaw_deg`. For ``R = Ry(theta)``, yaw = theta.
* Positive yaw turns the face towards the subject's own left (+X of FLAME), i.e. the nose moves to
  the image's right in a camera facing the subject. The subject's left cheek (+X) then turns away
  and its contour points move forward onto the cheek; the right side's stay near the jaw edge.
* DECA's 79 rows are ordered ``0, 1, ..., 39, -1, -2, ..., -39`` degrees (its code indexes
  ``yaw`` for yaw >= 0 and ``39 - yaw`` for yaw < 0); :attr:`LandmarkEmbedding.contour_yaw_deg` stores
  each row's yaw explicitly and rows are chosen by nearest yaw (so clamped at +-39).
* The choice is discrete: landmark positions have no gradient with respect to yaw.

Without a yaw (``yaw_deg=None``) the static entries are used: for iBUG-68 they hold a frontal contour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from flame_prior.errors import ModelFileError
from flame_prior.flame.io import read_model_dict
from flame_prior.geometry import check_shape

__all__ = ["LandmarkEmbedding", "landmarks_from_vertices", "head_yaw_deg", "check_embedding",
           "load_deca_embedding", "load_ringnet_embedding", "load_mediapipe_embedding", "load_landmark_embedding",
           "DECA_CONTOUR_YAW_DEG"]

EMBEDDING_HINT = ("Landmark embeddings come with FLAME-based code: DECA's landmark_embedding.npy, RingNet's "
                  "flame_static_embedding.pkl + flame_dynamic_embedding.npy, FLAME's mediapipe_landmark_embedding.npz; "
                  "use the one that belongs to your FLAME model's topology and pass it with --landmark-embedding "
                  "(or FLAME_PRIOR_EMBEDDING).")

DECA_CONTOUR_YAW_DEG = np.concatenate([np.arange(0, 40), -np.arange(1, 40)]).astype(np.float64)
"""Yaw (degrees) of each of the 79 rows of DECA's/RingNet's dynamic contour table."""

_CV_TO_GL = torch.tensor([1.0, -1.0, -1.0])


@dataclass
class LandmarkEmbedding:
    """``L`` landmarks on the FLAME mesh, in the order of the output of :func:`landmarks_from_vertices`.

    Attributes:
        face_idx: ``(L,)`` int64 triangle of each landmark (static/frontal choice).
        bary: ``(L, 3)`` barycentric weights (>= 0, sum 1) on that triangle's vertices.
        detector_index: ``(L,)`` int64 index of each landmark in the detector's output array.
        weight: ``(L,)`` reliability weights (default 1).
        detector: ``"ibug68"`` or ``"mediapipe478"``.
        name: where the embedding came from (e.g. ``"deca"``).
        contour_face_idx: ``(Y, C)`` int64 contour triangles per yaw row, or None.
        contour_bary: ``(Y, C, 3)`` their barycentric weights, or None.
        contour_detector_index: ``(C,)`` detector index of each contour point
            (``== detector_index[contour_slot]``), or None.
        contour_yaw_deg: ``(Y,)`` yaw in degrees of each row (convention in the module docstring), or None.
        contour_slot: ``(C,)`` positions in ``0..L-1`` that the contour points replace when a yaw is given.
        source: file(s) read, "" when built in memory.
    """

    face_idx: np.ndarray
    bary: np.ndarray
    detector_index: np.ndarray
    weight: np.ndarray
    detector: Literal["ibug68", "mediapipe478"]
    name: str
    contour_face_idx: np.ndarray | None = None
    contour_bary: np.ndarray | None = None
    contour_detector_index: np.ndarray | None = None
    contour_yaw_deg: np.ndarray | None = None
    contour_slot: np.ndarray | None = None
    source: str = ""
    _torch_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.face_idx.shape[0])

    @property
    def has_contour(self) -> bool:
        return self.contour_face_idx is not None

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        key = (str(device), dtype)
        if key not in self._torch_cache:
            t = {"face_idx": torch.as_tensor(self.face_idx, dtype=torch.long, device=device),
                 "bary": torch.as_tensor(self.bary, dtype=dtype, device=device)}
            if self.has_contour:
                t.update(cface=torch.as_tensor(self.contour_face_idx, dtype=torch.long, device=device),
                         cbary=torch.as_tensor(self.contour_bary, dtype=dtype, device=device),
                         cyaw=torch.as_tensor(self.contour_yaw_deg, dtype=torch.float64, device=device),
                         slot=torch.as_tensor(self.contour_slot, dtype=torch.long, device=device))
            self._torch_cache[key] = t
        return self._torch_cache[key]


def head_yaw_deg(R_head_in_camera: Tensor, axes: Literal["opencv", "opengl"] = "opencv") -> Tensor:
    """Head yaw in degrees as used to index the dynamic contour table.

    Args:
        R_head_in_camera: ``(B, 3, 3)`` rotation from the head's frame (FLAME's frame after the
            root and neck rotations) into the camera frame: for flame-prior's OpenCV cameras
            ``R_w2c @ R(rotation) @ R(neck_pose)``.
        axes: camera axes of ``R_head_in_camera``: ``"opencv"`` (x right, y down, z forward; the
            project's convention) or ``"opengl"`` (x right, y up, z back, DECA's frame).

    Returns:
        ``(B,)`` yaw in degrees; positive turns the face towards the subject's left (+X).
    """
    check_shape(R_head_in_camera, ["B", 3, 3], "R_head_in_camera")
    R = R_head_in_camera
    if axes == "opencv":
        R = _CV_TO_GL.to(R)[:, None] * R  # diag(1, -1, -1) @ R
    elif axes != "opengl":
        raise ValueError(f"axes must be 'opencv' or 'opengl', got {axes!r}")
    sy = torch.sqrt(R[:, 0, 0] ** 2 + R[:, 1, 0] ** 2)
    return torch.rad2deg(torch.atan2(-R[:, 2, 0], sy))


def landmarks_from_vertices(vertices: Tensor, faces: Tensor, emb: LandmarkEmbedding,
                            yaw_deg: Tensor | None = None) -> Tensor:
    """Landmark positions as barycentric points on the posed mesh.

    Args:
        vertices: ``(B, V, 3)`` posed vertices.
        faces: ``(F, 3)`` long triangles (the model's ``faces`` buffer).
        emb: the embedding (``L`` landmarks).
        yaw_deg: ``(B,)`` head yaw in degrees (:func:`head_yaw_deg`) choosing each row's jaw contour
            (nearest table row); ``None`` keeps the static entries. Ignored without a contour table.

    Returns:
        ``(B, L, 3)`` landmarks in the order of ``emb`` (``emb.detector_index`` maps them to the detector).
    """
    B = vertices.shape[0]
    check_shape(vertices, [B, "V", 3], "vertices")
    check_shape(faces, ["F", 3], "faces")
    t = emb._tensors(vertices.device, vertices.dtype)
    L = t["face_idx"].shape[0]
    fidx = t["face_idx"].expand(B, L)
    bary = t["bary"].expand(B, L, 3)
    if yaw_deg is not None and emb.has_contour:
        check_shape(yaw_deg, [B], "yaw_deg")
        row = (yaw_deg.detach().to(torch.float64)[:, None] - t["cyaw"][None]).abs().argmin(1)  # (B,)
        fidx, bary = fidx.clone(), bary.clone()
        fidx[:, t["slot"]] = t["cface"][row]
        bary[:, t["slot"]] = t["cbary"][row]
    tri = faces[fidx]  # (B, L, 3)
    corners = torch.gather(vertices, 1, tri.reshape(B, 3 * L, 1).expand(B, 3 * L, 3)).reshape(B, L, 3, 3)
    return (corners * bary[..., None]).sum(2)


def check_embedding(emb: LandmarkEmbedding, n_faces: int | None, path: str | Path | None = None) -> LandmarkEmbedding:
    """Validate shapes, triangle ids (< ``n_faces`` when given) and barycentric weights.

    Raises:
        ModelFileError: naming ``path`` and the offending array.
    """
    src = path if path is not None else (emb.source or None)

    def fail(msg: str) -> None:
        raise ModelFileError(f"landmark embedding: {msg}", src, EMBEDDING_HINT)

    L = emb.face_idx.shape[0] if emb.face_idx.ndim == 1 else fail(f"face_idx must be (L,), got {emb.face_idx.shape}")
    for name, arr, shape in (("bary", emb.bary, (L, 3)), ("detector_index", emb.detector_index, (L,)),
                             ("weight", emb.weight, (L,))):
        if arr.shape != shape:
            fail(f"{name} must have shape {shape}, got {arr.shape}")
    groups = [("", emb.face_idx, emb.bary)]
    if emb.has_contour:
        Y, C = emb.contour_face_idx.shape if emb.contour_face_idx.ndim == 2 else (0, 0)
        for name, arr, shape in (("contour_face_idx", emb.contour_face_idx, (Y, C)),
                                 ("contour_bary", emb.contour_bary, (Y, C, 3)),
                                 ("contour_yaw_deg", emb.contour_yaw_deg, (Y,)),
                                 ("contour_slot", emb.contour_slot, (C,)),
                                 ("contour_detector_index", emb.contour_detector_index, (C,))):
            if arr is None or arr.shape != shape or Y == 0:
                fail(f"{name} must have shape {shape}, got {None if arr is None else arr.shape}")
        if emb.contour_slot.min() < 0 or emb.contour_slot.max() >= L:
            fail(f"contour_slot must index 0..{L - 1}")
        groups.append(("contour_", emb.contour_face_idx, emb.contour_bary))
    for prefix, fi, b in groups:
        if fi.size and fi.min() < 0 or (n_faces is not None and fi.size and fi.max() >= n_faces):
            fail(f"{prefix}face_idx must lie in [0, {n_faces}), found [{fi.min()}, {fi.max()}]")
        if not np.all(np.isfinite(b)) or b.min() < -1e-4 or np.abs(b.sum(-1) - 1).max() > 1e-3:
            fail(f"{prefix}bary must be >= 0 and sum to 1 per landmark")
    if not np.all(emb.weight >= 0):
        fail("weight must be non-negative")
    return emb


def _get(d: dict, key: str, path, ndim: int) -> np.ndarray:
    if key not in d:
        raise ModelFileError(f"landmark embedding: missing '{key}' (keys present: {sorted(map(str, d))})", path,
                             EMBEDDING_HINT)
    a = np.asarray(d[key])
    while a.ndim > ndim and a.shape[0] == 1:  # DECA stores full_* with a leading batch axis of 1
        a = a[0]
    if a.ndim != ndim or a.dtype.kind not in "fiu":
        raise ModelFileError(f"landmark embedding: '{key}' must be a {ndim}-d numeric array, got {a.dtype} {a.shape}",
                             path, EMBEDDING_HINT)
    return a


def _ibug68(static_face, static_bary, frontal_face, frontal_bary, dyn_face, dyn_bary, name, source,
            n_faces) -> LandmarkEmbedding:
    # iBUG-68 order: 17 jaw-contour points (0-16) then 51 inner points (17-67).
    for what, f, b, n in (("static", static_face, static_bary, (51,)), ("frontal contour", frontal_face,
                          frontal_bary, (17,)), ("contour table", dyn_face, dyn_bary, (79, 17))):
        if f.shape != n or b.shape != (*n, 3):
            raise ModelFileError(f"landmark embedding: {what} must have {n} triangles and {(*n, 3)} weights, "
                                 f"got {f.shape} and {b.shape}", source, EMBEDDING_HINT)
    face = np.concatenate([frontal_face, static_face]).astype(np.int64)
    bary = np.concatenate([frontal_bary, static_bary]).astype(np.float64)
    emb = LandmarkEmbedding(
        face_idx=face, bary=bary, detector_index=np.arange(68, dtype=np.int64), weight=np.ones(68),
        detector="ibug68", name=name, contour_face_idx=dyn_face.astype(np.int64),
        contour_bary=dyn_bary.astype(np.float64), contour_detector_index=np.arange(17, dtype=np.int64),
        contour_yaw_deg=DECA_CONTOUR_YAW_DEG.copy(), contour_slot=np.arange(17, dtype=np.int64), source=source)
    return check_embedding(emb, n_faces, source)


def load_deca_embedding(path: str | Path, n_faces: int | None = None) -> LandmarkEmbedding:
    """DECA's / photometric_optimization's ``landmark_embedding.npy`` as an iBUG-68 embedding.

    The file is an ``np.save``-d dict of torch tensors and arrays (read without running pickled
    code): ``static_lmk_*`` (51 inner points), ``dynamic_lmk_*`` (79 x 17 contour table),
    ``full_lmk_*`` (68, frontal). Output: iBUG-68 order, static entries = ``full_lmk_*`` (frontal
    contour then the 51 static points), contour table from ``dynamic_lmk_*``.
    """
    d = read_model_dict(path, hint=EMBEDDING_HINT)
    sf, sb = _get(d, "static_lmk_faces_idx", path, 1), _get(d, "static_lmk_bary_coords", path, 2)
    df, db = _get(d, "dynamic_lmk_faces_idx", path, 2), _get(d, "dynamic_lmk_bary_coords", path, 3)
    if "full_lmk_faces_idx" in d:
        ff, fb = _get(d, "full_lmk_faces_idx", path, 1)[:17], _get(d, "full_lmk_bary_coords", path, 2)[:17]
    else:
        ff, fb = df[0], db[0]
    return _ibug68(sf, sb, ff, fb, df, db, "deca", str(path), n_faces)


def load_ringnet_embedding(static_pkl: str | Path, dynamic_npy: str | Path,
                           n_faces: int | None = None) -> LandmarkEmbedding:
    """RingNet's ``flame_static_embedding.pkl`` + ``flame_dynamic_embedding.npy`` as iBUG-68.

    Both hold ``lmk_face_idx`` and ``lmk_b_coords``: ``(51,)``/``(51, 3)`` static and
    ``(79, 17)``/``(79, 17, 3)`` dynamic (same row order as DECA's). The frontal contour is the
    yaw-0 row.
    """
    s = read_model_dict(static_pkl, hint=EMBEDDING_HINT)
    dy = read_model_dict(dynamic_npy, hint=EMBEDDING_HINT)
    sf, sb = _get(s, "lmk_face_idx", static_pkl, 1), _get(s, "lmk_b_coords", static_pkl, 2)
    df, db = _get(dy, "lmk_face_idx", dynamic_npy, 2), _get(dy, "lmk_b_coords", dynamic_npy, 3)
    return _ibug68(sf, sb, df[0], db[0], df, db, "ringnet", f"{static_pkl}+{dynamic_npy}", n_faces)


def load_mediapipe_embedding(path: str | Path, n_faces: int | None = None) -> LandmarkEmbedding:
    """FLAME's ``mediapipe_landmark_embedding.npz``: ``lmk_face_idx (N,)``, ``lmk_b_coords (N, 3)``,
    ``landmark_indices (N,)`` into MediaPipe Face Mesh's 478 points; optional ``weights (N,)``."""
    d = read_model_dict(path, hint=EMBEDDING_HINT)
    fi = _get(d, "lmk_face_idx", path, 1).astype(np.int64)
    b = _get(d, "lmk_b_coords", path, 2).astype(np.float64)
    idx = _get(d, "landmark_indices", path, 1).astype(np.int64)
    w = _get(d, "weights", path, 1).astype(np.float64) if "weights" in d else np.ones(fi.shape[0])
    if idx.size and (idx.min() < 0 or idx.max() >= 478):
        raise ModelFileError("landmark embedding: 'landmark_indices' must lie in [0, 478)", path, EMBEDDING_HINT)
    emb = LandmarkEmbedding(face_idx=fi, bary=b, detector_index=idx, weight=w, detector="mediapipe478",
                            name="mediapipe", source=str(path))
    return check_embedding(emb, n_faces, path)


def load_landmark_embedding(path: str | Path, n_faces: int | None = None) -> LandmarkEmbedding:
    """Load any single-file embedding, dispatching on its keys (DECA ``.npy`` or MediaPipe ``.npz``)."""
    d = read_model_dict(path, hint=EMBEDDING_HINT)
    if "dynamic_lmk_faces_idx" in d:
        return load_deca_embedding(path, n_faces)
    if "landmark_indices" in d:
        return load_mediapipe_embedding(path, n_faces)
    if "lmk_face_idx" in d:
        raise ModelFileError("landmark embedding: this looks like one half of RingNet's embedding; load the static "
                             ".pkl and the dynamic .npy together with load_ringnet_embedding()", path, EMBEDDING_HINT)
    raise ModelFileError(f"landmark embedding: unknown format (keys {sorted(map(str, d))})", path, EMBEDDING_HINT)
