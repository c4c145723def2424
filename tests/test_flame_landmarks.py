"""Landmark embeddings: real DECA/MediaPipe files on the real FLAME subset, RingNet format, yaw contour."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from flame_prior.errors import ModelFileError, UnsafePickleError
from flame_prior.flame import (FlameModel, FlameParams, LandmarkEmbedding, check_embedding, head_yaw_deg,
                               landmarks_from_vertices, load_deca_embedding, load_flame_model,
                               load_landmark_embedding, load_mediapipe_embedding, load_ringnet_embedding)


@pytest.fixture(scope="module")
def real():
    from tests.conftest import shared_path

    d = load_flame_model(shared_path("flame-assets/flame2023_open_subset.npz"))
    emb = load_deca_embedding(shared_path("flame-assets/landmark_embedding.npy"), n_faces=len(d.faces))
    return d, emb


def _ry(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_deca_landmarks_land_on_facial_features(real):
    d, emb = real
    assert (len(emb), emb.detector, emb.contour_face_idx.shape) == (68, "ibug68", (79, 17))
    np.testing.assert_array_equal(emb.detector_index, np.arange(68))
    model = FlameModel(d)
    verts = model(FlameParams.zeros(1, model.n_shape, model.n_expr)).vertices
    lmk = landmarks_from_vertices(verts, model.faces, emb)[0]
    right_outer, left_outer, nose_tip, mouth = lmk[36], lmk[45], lmk[30], lmk[62]
    assert left_outer[0] > 0.03 and right_outer[0] < -0.03  # subject's left is +X
    assert nose_tip[2] > left_outer[2] + 0.02 and nose_tip[2] > right_outer[2] + 0.02
    assert mouth[1] < nose_tip[1] - 0.02
    assert lmk[8][1] < mouth[1]  # chin below the mouth
    assert lmk[0][0] < 0 < lmk[16][0]  # contour runs from the subject's right to left


def test_convention_yaw_selects_silhouette_contour(real):
    """DECA's table: at yaw +30 deg (face turned to its left, +X) the chosen contour lies on the
    silhouette (normals nearly perpendicular to the view axis, none facing away); the mirrored row doesn't."""
    d, emb = real
    v, f = d.v_template, d.faces
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    for yaw in (30.0, -30.0):
        R = _ry(yaw)  # head in an OpenGL-like camera frame (camera on +Z)
        got = float(head_yaw_deg(torch.tensor(R)[None], axes="opengl"))
        assert got == pytest.approx(yaw)
        cv = torch.tensor(np.diag([1.0, -1, -1]) @ R)[None]  # the same view with OpenCV camera axes
        assert float(head_yaw_deg(cv)) == pytest.approx(yaw)
        nz = {}
        for row_yaw in (yaw, -yaw):
            row = int(np.argmin(np.abs(emb.contour_yaw_deg - row_yaw)))
            nz[row_yaw] = (n[emb.contour_face_idx[row]] @ R.T)[:, 2]
        assert nz[yaw].min() > -0.05 and np.abs(nz[yaw]).mean() < 0.7 * np.abs(nz[-yaw]).mean()
        assert nz[-yaw].min() < -0.3  # the wrong row puts contour points on the hidden side


def test_contour_chosen_per_batch_row(real):
    d, emb = real
    model = FlameModel(d)
    verts = model(FlameParams.zeros(3, model.n_shape, model.n_expr)).vertices
    lmk = landmarks_from_vertices(verts, model.faces, emb, yaw_deg=torch.tensor([0.0, 30.0, -80.0]))
    static = landmarks_from_vertices(verts[:1], model.faces, emb)[0]
    torch.testing.assert_close(lmk[:, 17:], static[17:].expand(3, -1, -1))
    row = lambda y: int(np.argmin(np.abs(emb.contour_yaw_deg - y)))  # noqa: E731
    f = model.faces[torch.as_tensor(emb.contour_face_idx[row(30)])]
    expect = (verts[1][f] * torch.as_tensor(emb.contour_bary[row(30)], dtype=torch.float32)[..., None]).sum(1)
    torch.testing.assert_close(lmk[1, :17], expect)
    assert row(-80) == row(-39)  # clamped at the table's end
    assert not torch.allclose(lmk[0, :17], lmk[1, :17])


def test_mediapipe_embedding_real_file(shared):
    path = shared("flame-assets/mediapipe_landmark_embedding.npz")
    emb = load_landmark_embedding(path, n_faces=9976)
    assert (len(emb), emb.detector, emb.has_contour) == (105, "mediapipe478", False)
    assert emb.detector_index.max() < 478 and np.all(emb.weight == 1)


def test_mediapipe_weights_key_and_validation(tmp_path):
    path = tmp_path / "mp.npz"
    np.savez(path, lmk_face_idx=np.array([0, 1], np.uint32), lmk_b_coords=np.full((2, 3), 1 / 3),
             landmark_indices=np.array([1, 4]), weights=np.array([1.0, 0.5]))
    emb = load_mediapipe_embedding(path, n_faces=2)
    np.testing.assert_allclose(emb.weight, [1.0, 0.5])
    with pytest.raises(ModelFileError, match="face_idx must lie in") as err:
        check_embedding(emb, n_faces=1, path=path)
    assert str(path) in str(err.value)
    bad = tmp_path / "bad.npz"
    np.savez(bad, lmk_face_idx=np.array([0]), lmk_b_coords=np.array([[0.5, 0.4, 0.4]]), landmark_indices=[1])
    with pytest.raises(ModelFileError, match="bary must be >= 0 and sum to 1") as err:
        load_mediapipe_embedding(bad)
    assert str(bad) in str(err.value)


def _ringnet_files(tmp_path, payload=None):
    rng = np.random.default_rng(0)
    b = rng.uniform(0.1, 1, (79 * 17 + 51, 3))
    b /= b.sum(1, keepdims=True)
    static = {"lmk_face_idx": np.arange(51, dtype=np.uint32), "lmk_b_coords": b[:51]}
    if payload is not None:
        static["lmk_face_idx"] = payload
    sp, dp = tmp_path / "flame_static_embedding.pkl", tmp_path / "flame_dynamic_embedding.npy"
    sp.write_bytes(pickle.dumps(static, protocol=2))
    np.save(dp, {"lmk_face_idx": 100 + np.arange(79 * 17).reshape(79, 17), "lmk_b_coords": b[51:].reshape(79, 17, 3)},
            allow_pickle=True)
    return sp, dp


def test_ringnet_format(tmp_path):
    sp, dp = _ringnet_files(tmp_path)
    emb = load_ringnet_embedding(sp, dp, n_faces=2000)
    assert (len(emb), emb.contour_face_idx.shape) == (68, (79, 17))
    np.testing.assert_array_equal(emb.face_idx[17:], np.arange(51))
    np.testing.assert_array_equal(emb.face_idx[:17], 100 + np.arange(17))  # frontal = yaw-0 row
    assert emb.contour_yaw_deg[40] == -1.0
    with pytest.raises(ModelFileError, match="load_ringnet_embedding"):
        load_landmark_embedding(sp)


class _System:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_malicious_embeddings_refused(tmp_path):
    target = tmp_path / "pwned"
    sp, dp = _ringnet_files(tmp_path, payload=_System(target))
    with pytest.raises(UnsafePickleError, match="system"):
        load_ringnet_embedding(sp, dp)
    deca = tmp_path / "landmark_embedding.npy"
    np.save(deca, {"static_lmk_faces_idx": _System(target)}, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="system") as err:
        load_deca_embedding(deca)
    assert str(deca) in str(err.value)
    mp = tmp_path / "mp.npz"
    np.savez(mp, lmk_face_idx=np.array([_System(target)], dtype=object))
    with pytest.raises(UnsafePickleError):
        load_mediapipe_embedding(mp)
    assert not target.exists()


def test_missing_key_named(tmp_path):
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, {"static_lmk_faces_idx": np.arange(51), "dynamic_lmk_faces_idx": np.zeros((79, 17), int)},
            allow_pickle=True)
    with pytest.raises(ModelFileError, match="missing 'static_lmk_bary_coords'"):
        load_landmark_embedding(path)


def test_embedding_dataclass_static_only():
    emb = LandmarkEmbedding(face_idx=np.array([0]), bary=np.array([[1.0, 0, 0]]), detector_index=np.array([3]),
                            weight=np.ones(1), detector="ibug68", name="x")
    verts = torch.arange(9.0).reshape(1, 3, 3)
    out = landmarks_from_vertices(verts, torch.tensor([[2, 1, 0]]), emb, yaw_deg=torch.zeros(1))
    torch.testing.assert_close(out, verts[:, 2:3])
