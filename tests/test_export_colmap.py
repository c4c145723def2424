"""COLMAP text model: pycolmap reads it back; poses, intrinsics and points match to 1e-6."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest
import torch

from export_fixtures import make_fit
from flame_prior.export.colmap import write_colmap_text
from flame_prior.geometry import axis_angle_to_rotation_matrix, rotation_matrix_to_quaternion


def _read(model_dir):
    rec = pycolmap.Reconstruction(str(model_dir))
    images = {im.name: im for im in rec.images.values()}
    return rec, images


def test_colmap_roundtrip_pycolmap(tmp_path):
    _, result, _, _ = make_fit()
    names = [f"{vf.name}.png" for vf in result.views]
    write_colmap_text(tmp_path / "colmap_text", result, names)
    rec, images = _read(tmp_path / "colmap_text")
    cam = result.cameras.to_numpy()
    assert len(images) == len(names)
    assert len(rec.cameras) == len(names)  # the views differ in size: one camera each
    for i, name in enumerate(names):
        im = images[name]
        pose = im.cam_from_world()
        M = np.asarray(pose.matrix())
        np.testing.assert_allclose(M[:, :3], cam["R"][i], atol=1e-6)
        np.testing.assert_allclose(M[:, 3], cam["t"][i], atol=1e-6)
        c = rec.cameras[im.camera_id]
        assert c.model.name == "PINHOLE"
        assert (c.width, c.height) == (cam["width"][i], cam["height"][i])
        np.testing.assert_allclose(c.params, [cam["fx"][i], cam["fy"][i], cam["cx"][i], cam["cy"][i]], atol=1e-6)
        # COLMAP's projection of a mesh vertex equals flame-prior's (same pixel convention).
        v = result.vertices[7]
        x = c.img_from_cam(M[:, :3] @ v + M[:, 3])
        xc = cam["R"][i] @ v + cam["t"][i]
        want = [cam["fx"][i] * xc[0] / xc[2] + cam["cx"][i], cam["fy"][i] * xc[1] / xc[2] + cam["cy"][i]]
        np.testing.assert_allclose(np.ravel(x), want, atol=1e-6)
    pts = np.array([p.xyz for _, p in sorted(rec.points3D.items())])
    np.testing.assert_allclose(pts, result.vertices, atol=1e-9)
    assert all(p.track.length() == 0 for p in rec.points3D.values())


def test_colmap_shared_camera_and_empty_points(tmp_path):
    specs = [(320, 240, 500.0, 500.0, 160.0, 120.0, yaw, 0.0) for yaw in (-20.0, 0.0, 25.0)]
    _, result, _, _ = make_fit(specs)
    write_colmap_text(tmp_path, result, points=False)
    rec, images = _read(tmp_path)
    assert len(rec.cameras) == 1 and len(images) == 3 and len(rec.points3D) == 0
    assert {im.camera_id for im in images.values()} == {1}
    assert sorted(images) == [f"{vf.name}.png" for vf in result.views]


def test_colmap_rejects_names_with_spaces(tmp_path):
    _, result, _, _ = make_fit()
    with pytest.raises(ValueError, match="white space"):
        write_colmap_text(tmp_path, result, ["a b.png"] + [f"{vf.name}.png" for vf in result.views[1:]])


def test_convention_quaternion_wxyz_hamilton():
    aa = torch.tensor([[0.3, -1.2, 2.9], [0.0, 0.0, 0.0], [3.1, 0.1, 0.0], [0.0, 0.0, -3.14159]], dtype=torch.float64)
    R = axis_angle_to_rotation_matrix(aa).numpy()
    q = rotation_matrix_to_quaternion(torch.as_tensor(R)).numpy()
    assert np.all(q[:, 0] >= 0)
    for Ri, qi in zip(R, q):
        np.testing.assert_allclose(pycolmap.Rotation3d(np.r_[qi[1:], qi[0]]).matrix(), Ri, atol=1e-12)
