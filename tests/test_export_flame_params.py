"""flame_params.npz (no pickles) and fit_summary.json hold the fit exactly."""

from __future__ import annotations

import json

import numpy as np

from dataclasses import replace

from export_fixtures import MODEL, make_fit
from flame_prior.export.flame_params import write_flame_params


def test_flame_params_roundtrip(tmp_path):
    _, result, _, _ = make_fit()
    npz_path, json_path = write_flame_params(tmp_path, result, replace(MODEL, path="/models/flame.npz", sha256="cd" * 32))
    d = np.load(npz_path, allow_pickle=False)
    for k in ("shape", "expression", "rotation", "neck_pose", "jaw_pose", "eye_pose", "translation"):
        np.testing.assert_array_equal(d[k], np.asarray(result.flame[k], dtype=np.float64).reshape(-1))
    assert "texture_coeffs" not in d.files
    assert d["lighting"].shape == (4, 9, 3)
    cam = result.cameras.to_numpy()
    for k in ("R", "t", "fx", "fy", "cx", "cy", "width", "height"):
        np.testing.assert_array_equal(d[k], cam[k])
    assert d["view_names"].dtype.kind == "U"
    assert d["view_names"].tolist() == [vf.name for vf in result.views]

    s = json.loads(json_path.read_text())
    assert s["model"]["path"] == "/models/flame.npz" and s["model"]["sha256"] == "cd" * 32
    assert s["model"]["n_shape"] == 60 and s["model"]["n_expr"] == 0
    assert "no expression space" in s["model"]["notes"]
    assert s["intrinsics_source"] == "exif"
    assert set(s["convention"]) >= {"world", "pixels", "camera_inside_flame_prior"}
    np.testing.assert_allclose(s["flame"]["shape"], result.flame["shape"])
    np.testing.assert_allclose(s["lighting"], result.lighting)
    for c, vf, i in zip(s["cameras"], result.views, range(4)):
        assert c["name"] == vf.name
        np.testing.assert_allclose(c["R"], cam["R"][i])
        np.testing.assert_allclose(c["t"], cam["t"][i])
        assert c["landmark_error_px"] == vf.landmark_error_px
        assert abs(c["landmark_error_rel_eye"] - vf.landmark_error_px / vf.eye_distance_px) < 1e-12
    assert [st["name"] for st in s["stages"]] == ["rigid", "shape"]
    assert len(s["stages"][1]["loss_history"]) == 120


def test_flame_params_texture_coeffs_and_nan(tmp_path):
    _, result, _, _ = make_fit()
    result.texture_coeffs = np.arange(5.0)
    result.views[0].eye_distance_px = 0.0  # degenerate normaliser -> null in JSON, not NaN
    npz_path, json_path = write_flame_params(tmp_path, result, replace(MODEL, path="m", sha256="0" * 64))
    np.testing.assert_array_equal(np.load(npz_path, allow_pickle=False)["texture_coeffs"], np.arange(5.0))
    text = json_path.read_text()
    assert "NaN" not in text
    s = json.loads(text)
    assert s["texture_coeffs"] == [0, 1, 2, 3, 4] and s["cameras"][0]["landmark_error_rel_eye"] is None
