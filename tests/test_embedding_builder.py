"""flame-prior's MediaPipe 468-point → FLAME embedding: shipped file, agreement, reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flame_prior.embedding_builder import (
    FACE_OVAL,
    FORMAT_VERSION,
    boundary_loops,
    build_mediapipe_embedding,
    closest_points_on_triangles,
    embedding_points,
    load_canonical_face_model,
    load_embedding,
    load_flame_template,
)

SHIPPED = Path(__file__).resolve().parents[1] / "flame_prior" / "data" / "mediapipe468_embedding.npz"
CANONICAL = "mediapipe/canonical_face_model.obj"
FLAME = "flame-assets/flame2023_open_subset.npz"
FLAME_MP = "flame-assets/mediapipe_landmark_embedding.npz"

# Measured against FLAME's 105-point embedding on the FLAME 2023 Open template (distance
# between the two embedded points, mm): median 2.55, 90th percentile 4.26, max 9.18.
MEDIAN_BOUND_MM = 3.0
P90_BOUND_MM = 5.0
# Key features, measured: 4 (nose tip) 3.1, 33 1.7, 263 1.5, 61 2.6, 291 2.7 mm.
KEY_FEATURE_BOUND_MM = 4.0


@pytest.fixture(scope="module")
def shipped():
    with np.load(SHIPPED, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_shipped_file_keys_shapes_dtypes(shipped):
    assert shipped["lmk_face_idx"].shape == (468,) and shipped["lmk_face_idx"].dtype == np.int64
    assert shipped["lmk_b_coords"].shape == (468, 3) and shipped["lmk_b_coords"].dtype == np.float64
    assert np.array_equal(shipped["landmark_indices"], np.arange(468))
    assert shipped["weights"].shape == (468,) and shipped["weights"].dtype == np.float32
    assert int(shipped["format_version"]) == FORMAT_VERSION
    assert str(shipped["description"]).startswith("flame-prior MediaPipe")
    assert (shipped["lmk_face_idx"] >= 0).all() and (shipped["lmk_face_idx"] < 9976).all()
    b = shipped["lmk_b_coords"]
    assert np.allclose(b.sum(1), 1.0) and (b >= -1e-9).all()
    w = shipped["weights"]
    assert (w > 0).all() and (w <= 1).all()
    assert np.allclose(w[list(FACE_OVAL)], 0.3)
    assert w[1] == 1.0 and w[4] == 1.0
    # Subject's (left, right): Face Mesh 473 / 468 iris centres, FLAME left (+X) / right eyeball.
    assert shipped["iris_center_detector_index"].tolist() == [473, 468]
    assert shipped["pupil_vertex_index"].shape == (2,)
    emb = load_embedding(SHIPPED)
    assert np.array_equal(emb.lmk_face_idx, shipped["lmk_face_idx"])


def test_convention_canonical_model_axes_and_oval(shared):
    """Canonical model: +X subject's left (263), +Y up (10 = forehead), +Z forward (nose tip)."""
    v, f = load_canonical_face_model(shared(CANONICAL))
    assert v[263, 0] > 0 > v[33, 0]
    assert np.argmax(v[:, 1]) == 10 and np.argmin(v[:, 1]) == 152
    assert np.argmax(v[:, 2]) in (1, 4)
    loops = boundary_loops(f)
    assert len(loops) == 1 and set(loops[0].tolist()) == set(FACE_OVAL)


def test_closest_points_on_triangles_regions():
    a, b, c = np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    pts = np.array([[0.2, 0.2, 1.0], [-1, -1, 0], [2, -0.5, 0], [0.5, -1, 0], [1, 1, 0], [-1, 0.5, 0.3]])
    want = np.array([[0.2, 0.2, 0], [0, 0, 0], [1, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0]])
    got, bary = closest_points_on_triangles(pts, *(np.broadcast_to(x, pts.shape) for x in (a, b, c)))
    assert np.allclose(got, want)
    assert np.allclose(bary @ np.stack([a, b, c]), want)


def _agreement_mm(shared, face_idx, b_coords):
    v, f = load_flame_template(shared(FLAME))
    with np.load(shared(FLAME_MP), allow_pickle=False) as ref:
        ref_idx = ref["landmark_indices"].astype(np.int64)
        ref_pts = embedding_points(v, f, ref["lmk_face_idx"].astype(np.int64), ref["lmk_b_coords"])
    ours = embedding_points(v, f, face_idx, b_coords)
    return ref_idx, np.linalg.norm(ours[ref_idx] - ref_pts, axis=1) * 1000.0, ours, v


def test_agreement_with_flame_105_point_embedding(shared, shipped):
    ref_idx, d_mm, _, _ = _agreement_mm(shared, shipped["lmk_face_idx"], shipped["lmk_b_coords"])
    assert len(ref_idx) == 105
    assert np.median(d_mm) < MEDIAN_BOUND_MM, np.median(d_mm)
    assert np.percentile(d_mm, 90) < P90_BOUND_MM, np.percentile(d_mm, 90)
    for k in (4, 33, 263, 61, 291):
        assert d_mm[list(ref_idx).index(k)] < KEY_FEATURE_BOUND_MM, (k, d_mm[list(ref_idx).index(k)])


def test_key_features_geometric_sense(shared, shipped):
    """Points FLAME's embedding lacks (1 nose tip, 152 chin) and left/right on FLAME's template."""
    _, _, ours, v = _agreement_mm(shared, shipped["lmk_face_idx"], shipped["lmk_b_coords"])
    assert ours[263, 0] > 0.02 and ours[33, 0] < -0.02  # outer eye corners, subject's left/right
    assert ours[291, 0] > 0.015 and ours[61, 0] < -0.015  # mouth corners
    face_front = v[:3931, 2].max()
    assert face_front - ours[1, 2] < 0.004  # nose tip within 4 mm of the most forward point
    assert np.argmax(ours[:, 2]) in (1, 4)
    assert np.argmin(ours[:, 1]) == 152 and abs(ours[152, 0]) < 0.003  # chin: lowest, midline
    left, right = v[shipped["pupil_vertex_index"]]
    assert left[0] > 0.02 and right[0] < -0.02
    assert abs(left[2] - right[2]) < 0.003 and left[2] > ours[263, 2]


def test_builder_reproduces_shipped_file(shared, shipped):
    emb = build_mediapipe_embedding(shared(CANONICAL), shared(FLAME))
    v, f = load_flame_template(shared(FLAME))
    ours = embedding_points(v, f, emb.lmk_face_idx, emb.lmk_b_coords)
    theirs = embedding_points(v, f, shipped["lmk_face_idx"], shipped["lmk_b_coords"])
    assert np.abs(ours - theirs).max() < 1e-6  # metres
    assert np.array_equal(emb.weights, shipped["weights"])
    assert np.array_equal(emb.pupil_vertex_index, shipped["pupil_vertex_index"])
    assert np.array_equal(emb.iris_center_detector_index, shipped["iris_center_detector_index"])
