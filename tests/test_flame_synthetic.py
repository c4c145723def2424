"""The FLAME-format test model: deterministic, valid, head-like, loadable in every supported format."""

from __future__ import annotations

import numpy as np
import pytest

from flame_prior.flame import (FlameModel, FlameParams, build_test_landmark_embedding, build_test_model,
                               build_test_uv_layout, landmarks_from_vertices, load_flame_model)


@pytest.fixture(scope="module")
def model():
    return build_test_model()


def test_deterministic_and_seeded(model):
    again = build_test_model()
    np.testing.assert_array_equal(again.shapedirs, model.shapedirs)
    other = build_test_model(seed=1)
    np.testing.assert_array_equal(other.v_template, model.v_template)
    assert not np.allclose(other.shapedirs, model.shapedirs)


def test_flame_layout_and_closed_head(model):
    V = model.n_vertices
    assert model.shapedirs.shape == (V, 3, 20) and model.exprdirs.shape == (V, 3, 10)
    assert model.posedirs.shape == (V, 3, 36) and model.J_regressor.shape == (5, V) and model.weights.shape == (V, 5)
    assert model.parents.tolist() == [-1, 0, 1, 1, 1] and model.faces.dtype == np.int64
    f = model.faces
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    assert set(np.unique(edges, axis=0, return_counts=True)[1]) == {2}  # closed, manifold
    v = model.v_template
    volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert 0.002 < volume < 0.008  # outward-facing, head-sized (m^3)
    assert 0.25 < np.ptp(v[:, 1]) < 0.4 and 0.001 < np.abs(model.shapedirs).max() < 0.03
    J = model.J_regressor @ v
    assert J[3, 0] > 0.02 and J[4, 0] < -0.02  # left eye on +X


def test_landmarks_on_procedural_face(model):
    emb = build_test_landmark_embedding(model)
    flame = FlameModel(model)
    lmk = landmarks_from_vertices(flame(FlameParams.zeros(1, 20, 10)).vertices, flame.faces, emb)[0]
    assert lmk[45, 0] > 0.03 and lmk[36, 0] < -0.03
    assert lmk[30, 2] > lmk[36, 2] + 0.02 and lmk[62, 1] < lmk[30, 1] - 0.015
    uvs, uv_faces = build_test_uv_layout(model)
    assert uv_faces.shape == model.faces.shape and uvs.min() >= 0 and uvs.max() <= 1


def test_jaw_and_expression_move_the_mouth_not_the_forehead(model):
    flame = FlameModel(model)
    emb = build_test_landmark_embedding(model)
    p = FlameParams.zeros(1, 20, 10)
    rest = landmarks_from_vertices(flame(p).vertices, flame.faces, emb)[0]
    p.jaw_pose[:, 0] = 0.3
    opened = landmarks_from_vertices(flame(p).vertices, flame.faces, emb)[0]
    assert (opened[57] - rest[57]).norm() > 0.005 and (opened[27] - rest[27]).norm() < 1e-4


def test_template_from_real_files(shared):
    real = load_flame_model(shared("flame-assets/flame2023_open_subset.npz"))
    m = build_test_model(n_shape=5, n_expr=3, template=real)
    np.testing.assert_array_equal(m.faces, real.faces)
    np.testing.assert_array_equal(m.weights, real.weights)
    obj = build_test_model(n_shape=5, n_expr=3, template=shared("flame-assets/head_template_mesh.obj"))
    assert obj.n_vertices == 5023
    assert np.abs(obj.v_template - real.v_template).mean() < 0.01  # moved into FLAME's frame
    emb = build_test_landmark_embedding(obj)
    flame = FlameModel(obj)
    lmk = landmarks_from_vertices(flame(FlameParams.zeros(1, 5, 3)).vertices, flame.faces, emb)[0]
    assert lmk[45, 0] > 0 > lmk[36, 0]
    p = FlameParams.zeros(1, 5, 3)
    p.eye_pose[:, 1] = 0.3  # left eye looks to its left: the eyeball moves, the head does not
    moved = (flame(p).vertices - flame(FlameParams.zeros(1, 5, 3)).vertices).norm(dim=-1)[0]
    assert moved.max() > 1e-3 and int((moved > 1e-6).sum()) < 700
