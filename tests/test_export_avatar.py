"""FLAME-avatar data set read back the way GaussianAvatars' and VHAP's readers read it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from export_fixtures import VIEW_SPECS, make_fit
from flame_prior.errors import InputError
from flame_prior.export.avatar import centred_window, shift_image, write_avatar_dataset
from flame_prior.geometry import project_points


def _fov2focal(fov, pixels):
    return pixels / (2 * math.tan(fov / 2))


def _focal2fov(focal, pixels):
    return 2 * math.atan(pixels / (2 * focal))


def gaussian_avatars_project(frame: dict, points: np.ndarray) -> np.ndarray:
    """Project world points as GaussianAvatars does for a ``transforms_*.json`` frame.

    Camera from ``camera_angle_x`` alone (square pixels, principal point at the image centre, FoVy
    from the focal and ``h``); c2w OpenGL -> w2c by flipping the y and z camera axes; the 3DGS
    projection matrix (symmetric frustum) and its NDC-to-pixel map, returned with the corner origin.
    """
    c2w = np.array(frame["transform_matrix"], dtype=np.float64)
    c2w[:3, 1:3] *= -1
    w2c = np.linalg.inv(c2w)
    R = w2c[:3, :3].T  # stored transposed, as the reader does
    T = w2c[:3, 3]
    W, H = frame["w"], frame["h"]
    fovx = frame["camera_angle_x"]
    fovy = _focal2fov(_fov2focal(fovx, W), H)
    pc = points @ R + T  # getWorld2View2: x_cam = R^T x + T
    ndc_x = pc[:, 0] / (pc[:, 2] * math.tan(fovx / 2))
    ndc_y = pc[:, 1] / (pc[:, 2] * math.tan(fovy / 2))
    # 3DGS ndc2Pix gives pixel-centre-at-integer coordinates ((ndc + 1) * S - 1) / 2; +0.5 -> corner origin.
    return np.stack([((ndc_x + 1) * W - 1) / 2 + 0.5, ((ndc_y + 1) * H - 1) / 2 + 0.5], -1)


def test_avatar_layout_and_gaussian_avatars_projection(tmp_path):
    views, result, _, _ = make_fit()
    write_avatar_dataset(tmp_path, views, result)
    for name in ("transforms.json", "transforms_train.json", "transforms_val.json", "transforms_test.json",
                 "canonical_flame_param.npz", "flame_param/00000.npz"):
        assert (tmp_path / name).exists(), name

    full = json.loads((tmp_path / "transforms.json").read_text())
    frames = full["frames"]
    assert len(frames) == len(views)
    assert full["timestep_indices"] == [0] and full["camera_indices"] == list(range(len(views)))
    offsets = full["flame_prior"]["crop_offsets"]["per_camera_index"]

    uv, _ = project_points(torch.as_tensor(result.vertices), result.cameras)
    for i, fr in enumerate(frames):
        assert fr["timestep_index"] == 0 and fr["camera_index"] == i and fr["camera_id"] == views[i].image.name
        # The user's names survive: images/00000_<view name>.png.
        assert fr["file_path"] == f"images/00000_{views[i].image.name}.png"
        assert fr["fg_mask_path"] == f"fg_masks/00000_{views[i].image.name}.png"
        assert fr["cx"] == fr["w"] / 2 and fr["cy"] == fr["h"] / 2 and fr["fl_x"] == fr["fl_y"]
        got = gaussian_avatars_project(fr, np.asarray(result.vertices))
        want = uv[i].numpy() - np.asarray(offsets[i])
        assert np.abs(got - want).max() < 0.1, f"view {i}: {np.abs(got - want).max()} px"
        # landmarks too
        lm = np.asarray(result.views[i].landmarks_projected) - np.asarray(offsets[i])
        assert np.all(np.isfinite(lm))
        img = Image.open(tmp_path / fr["file_path"])
        mask = Image.open(tmp_path / fr["fg_mask_path"])
        assert img.size == (fr["w"], fr["h"]) == mask.size and img.mode == "RGB" and mask.mode == "L"

    # View 0 is centred already: the exported picture is the photo composited on white.
    ox, oy = offsets[0]
    assert (ox, oy) == (0, 0) and (frames[0]["w"], frames[0]["h"]) == (320, 240)
    # View 2 has cx = 140.5 in a 256-wide image: w = max(2 cx, 2 (W - cx)) = 281, padded on the
    # right, offset 0, nothing cut off.
    assert (frames[2]["w"], offsets[2][0]) == (281, 0.0)
    alpha = views[2].detection.mask[..., None].astype(np.float64)
    comp = np.round(views[2].image.pixels * alpha + 255 * (1 - alpha)).astype(np.uint8)
    ex = np.asarray(Image.open(tmp_path / frames[2]["file_path"]))
    oy2 = int(offsets[2][1])
    np.testing.assert_array_equal(ex[max(0, -oy2):, :256][:256 - max(0, oy2)], comp[max(0, oy2):][:ex.shape[0] - max(0, -oy2)])
    assert np.all(ex[:, 256:] == 255)  # padding = background colour
    assert np.all(np.asarray(Image.open(tmp_path / frames[2]["fg_mask_path"]))[:, 256:] == 0)


def test_avatar_splits_like_vhap(tmp_path):
    views, result, _, _ = make_fit()
    write_avatar_dataset(tmp_path, views, result)
    tr, va, te = (json.loads((tmp_path / f"transforms_{d}.json").read_text()) for d in ("train", "val", "test"))
    assert [f["camera_index"] for f in tr["frames"]] == [0, 1, 2] and [f["camera_index"] for f in va["frames"]] == [3]
    assert te["frames"] == [] and te["timestep_indices"] == []
    # GaussianAvatars loads meshes from train and test only: val timesteps must be among them, 0 included.
    mesh_timesteps = {f["timestep_index"] for f in tr["frames"] + te["frames"]}
    assert 0 in mesh_timesteps and {f["timestep_index"] for f in va["frames"]} <= mesh_timesteps
    for d in (tr, va):
        assert len(d["timestep_indices"]) == max(d["timestep_indices"]) + 1  # VHAP's NeRFDataset assertion

    one_views, one_result, _, _ = make_fit(VIEW_SPECS[:1])
    write_avatar_dataset(tmp_path / "one", one_views, one_result)
    tr1 = json.loads((tmp_path / "one" / "transforms_train.json").read_text())
    va1 = json.loads((tmp_path / "one" / "transforms_val.json").read_text())
    assert len(tr1["frames"]) == 1 and va1["frames"] == []
    assert tr1["fl_x"] == 500.0 and tr1["camera_angle_x"] == tr1["frames"][0]["camera_angle_x"]  # shared when one


def test_avatar_flame_param_files(tmp_path):
    views, result, _, _ = make_fit()
    write_avatar_dataset(tmp_path, views, result)
    p = np.load(tmp_path / "flame_param" / "00000.npz", allow_pickle=False)
    shapes = {k: p[k].shape for k in p.files}
    assert shapes == {"translation": (1, 3), "rotation": (1, 3), "neck_pose": (1, 3), "jaw_pose": (1, 3),
                      "eyes_pose": (1, 6), "shape": (300,), "expr": (1, 100), "static_offset": (1, 5143, 3)}
    np.testing.assert_allclose(p["shape"][:60], result.flame["shape"], rtol=1e-6)
    assert np.all(p["shape"][60:] == 0) and np.all(p["expr"] == 0) and np.all(p["static_offset"] == 0)
    np.testing.assert_allclose(p["rotation"][0], result.flame["rotation"], rtol=1e-6)
    np.testing.assert_allclose(p["translation"][0], result.flame["translation"], rtol=1e-6)
    np.testing.assert_allclose(p["jaw_pose"][0], result.flame["jaw_pose"], rtol=1e-6)
    c = np.load(tmp_path / "canonical_flame_param.npz", allow_pickle=False)
    assert {k: c[k].shape for k in c.files} == shapes
    np.testing.assert_array_equal(c["shape"], p["shape"])
    for k in ("translation", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "expr"):
        assert np.all(c[k] == 0), k
    # GaussianAvatars indexes expr as 2-D: expr.shape[1] is n_expr.
    assert p["expr"].shape[1] == 100


def test_avatar_refuses_non_square_pixels(tmp_path):
    specs = [VIEW_SPECS[0], (300, 400, 620.0, 621.0, 150.0, 200.0, 35.0, 5.0)]
    views, result, _, _ = make_fit(specs)
    with pytest.raises(InputError, match="fx .* fy"):
        write_avatar_dataset(tmp_path, views, result)


def test_avatar_refuses_cutting_shape(tmp_path):
    views, result, _, _ = make_fit()
    with pytest.raises(InputError, match="60 shape coefficients"):
        write_avatar_dataset(tmp_path, views, result, n_shape_out=50)


def test_centred_window():
    assert centred_window(160.0, 320) == (320, 0.0)
    assert centred_window(140.5, 256) == (281, 0.0)
    assert centred_window(200.0, 256) == (400, 0.0)
    assert centred_window(50.0, 256) == (412, -156.0)
    w, off = centred_window(150.3, 288)
    assert w == 301 and abs((150.3 - off) - w / 2) < 1e-12
    w, off = centred_window(159.99999995, 320)  # float noise snaps to the whole-pixel case
    assert (w, off) == (320, 0.0)


def test_shift_image_subpixel_is_linear_interpolation():
    ramp = np.tile(np.arange(20, dtype=np.float64), (5, 1)) * 10.0
    out = shift_image(ramp, 0.25, 0.0, 18, 5, fill=-1.0)
    np.testing.assert_allclose(out[:, 1:17], ramp[:, 1:17] + 2.5)
    ints = shift_image(ramp.astype(np.uint8), -2, 1, 24, 5, fill=7)
    assert np.all(ints[:, :2] == 7) and np.all(ints[-1] == 7)
    np.testing.assert_array_equal(ints[:4, 2:22], ramp.astype(np.uint8)[1:5])
