"""A distorted synthetic capture through the whole path: calibration file -> intrinsics -> fit ->
exports (transforms.json, COLMAP model, avatar data set), with a known k1.

The demo scene (FLAME head, known cameras) is rendered as ideal pinhole views; each is then
"photographed" through an OpenCV lens (k1 = -0.2, k2 = 0.02) on a larger sensor whose principal
point is far from the face (each camera turned so that its face lands 250-290 px off it, in
different directions), so the lens moves and bends each view's landmarks differently. The lens model itself is
checked against cv2.projectPoints in test_distortion.py.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from flame_prior import demo
from flame_prior.camera_file import read_camera_file
from flame_prior.distortion import distort_pixels, undistort_image, undistort_pixels
from flame_prior.export import write_outputs
from flame_prior.fit import FitterConfig, fit_flame
from flame_prior.flame.assets import ModelInfo
from flame_prior.intrinsics import IntrinsicsConfig, estimate_intrinsics

VIEWS, SIZE = 5, 256
PHOTO_W, PHOTO_H = 768, 512
CX, CY = 380.0, 260.0  # principal point, off the sensor's centre
LENS = np.array([-0.2, 0.02, 0.0, 0.0, 0.0])
#: Where each view's face lands, relative to the principal point (pixels): the camera is turned by the
#: rotation that moves the face there, so the lens bends each view's landmarks differently.
FACE_OFFSETS = [(260.0, 120.0), (-250.0, 110.0), (240.0, -120.0), (-250.0, -115.0), (200.0, 150.0)]


def _turn(offset, f: float) -> np.ndarray:
    """The rotation taking the optical axis (0, 0, 1) to the ray through ``offset`` px off the principal point."""
    r = np.array([offset[0] / f, offset[1] / f, 1.0])
    r /= np.linalg.norm(r)
    axis = np.cross([0.0, 0.0, 1.0], r)
    rvec = axis / np.linalg.norm(axis) * np.arccos(r[2])
    return cv2.Rodrigues(rvec)[0]


def _photograph(view, f: float, R_turn: np.ndarray):
    """The 256 px pinhole render, the camera turned by ``R_turn`` about its centre (a homography,
    exact for a pinhole), seen through LENS on the PHOTO_W x PHOTO_H sensor."""
    K_render = np.array([[f, 0, SIZE / 2], [0, f, SIZE / 2], [0, 0, 1.0]])
    K_photo = np.array([[f, 0, CX], [0, f, CY], [0, 0, 1.0]])
    H = K_photo @ R_turn @ np.linalg.inv(K_render)  # render pixel -> ideal photo pixel
    jj, ii = np.meshgrid(np.arange(PHOTO_W) + 0.5, np.arange(PHOTO_H) + 0.5)
    ideal = undistort_pixels(np.stack([jj, ii], -1).reshape(-1, 2), f, f, CX, CY, LENS)
    src = np.column_stack([ideal, np.ones(len(ideal))]) @ np.linalg.inv(H).T
    src = (src[:, :2] / src[:, 2:] - 0.5).reshape(PHOTO_H, PHOTO_W, 2).astype(np.float32)
    remap = lambda a: cv2.remap(a, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,  # noqa: E731
                                borderValue=0)
    det = view.detection
    p = np.column_stack([det.landmarks.astype(np.float64), np.ones(len(det.landmarks))]) @ H.T
    lm = distort_pixels(p[:, :2] / p[:, 2:], f, f, CX, CY, LENS).astype(np.float32)
    image = dataclasses.replace(view.image, pixels=remap(view.image.pixels))
    return dataclasses.replace(view, image=image, detection=dataclasses.replace(
        det, landmarks=lm, mask=remap(det.mask), face_box=(*lm.min(0), *lm.max(0))))


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    torch.manual_seed(0)
    _, model, emb, ts = demo.demo_assets(0, torch.device("cpu"))
    sc = demo.render_scene(model, emb, ts, demo.DemoConfig(views=VIEWS, image_size=SIZE, noise_px=0.3, seed=0),
                           np.random.default_rng(0))
    f = float(sc.cameras.fx[0])
    turns = [_turn(o, f) for o in FACE_OFFSETS]
    photos = [_photograph(v, f, R) for v, R in zip(sc.views, turns)]
    R_true = torch.as_tensor(np.stack(turns)) @ sc.cameras.R
    t_true = (torch.as_tensor(np.stack(turns)) @ sc.cameras.t[..., None])[..., 0]
    full = lambda v: torch.full((VIEWS,), float(v), dtype=torch.float64)  # noqa: E731
    sc.cameras = dataclasses.replace(sc.cameras, R=R_true, t=t_true, cx=full(CX), cy=full(CY),
                                     width=[PHOTO_W] * VIEWS, height=[PHOTO_H] * VIEWS)
    # The calibration, as COLMAP writes it: one OPENCV camera, every image.
    folder = tmp_path_factory.mktemp("calib")
    (folder / "cameras.txt").write_text(f"# calibrated\n1 OPENCV {PHOTO_W} {PHOTO_H} {f} {f} {CX} {CY} "
                                        f"{LENS[0]} {LENS[1]} 0 0\n")
    (folder / "images.txt").write_text("".join(f"{i + 1} 1 0 0 0 0 0 0 1 {v.image.path.name}\n\n"
                                               for i, v in enumerate(photos)))
    return model, emb, ts, sc, photos, folder, f


def _rotation_errors(result, sc):
    return np.asarray(demo.camera_errors(result.cameras, sc.cameras, sc.target)["rotation_deg"])


def test_file_fit_exports(capture, tmp_path):
    model, emb, ts, sc, photos, folder, f = capture
    # The lens through the landmark cameras alone: COLMAP's poses (which a calibration file now also
    # brings, test_scan_rigs) would hide what the lens does to them.
    intr = estimate_intrinsics(photos, IntrinsicsConfig(file=folder, use_colmap=False))
    assert intr.source == "file" and intr.poses is None
    np.testing.assert_allclose(intr.distortion, np.tile(LENS, (VIEWS, 1)))
    # The default photometric budget: a few steps of Adam at the stage's rates are a transient (the
    # landmark error goes 0.4 -> 1.9 px after 8 steps and back to 0.4 px by 60), not a fit.
    cfg = FitterConfig()
    result = fit_flame(model, emb, photos, intr, cfg, texture_space=ts)
    rot = _rotation_errors(result, sc)
    # The same photos fitted as if the lens were a pinhole: the lens is what makes the difference.
    naive = fit_flame(model, emb, photos, dataclasses.replace(intr, distortion=None), cfg, texture_space=ts)
    rot_naive = _rotation_errors(naive, sc)
    # Measured: 0.10-0.71 deg with the lens undone, the same (to 0.1 deg) as on pinhole photos of this
    # scene (5 views, 0.3 px noise); 2.2-14.4 deg when the lens is ignored.
    assert rot.max() < 1.0 and np.median(rot) < 0.6, rot
    assert np.median(rot_naive) > 5 * np.median(rot) and rot_naive.max() > 5.0, (rot, rot_naive)
    assert np.median([v.landmark_error_px for v in result.views]) < 1.0  # ideal-view pixels (measured 0.43-0.54)
    np.testing.assert_allclose(result.cameras.distortion.numpy(), np.tile(LENS, (VIEWS, 1)))
    np.testing.assert_allclose(result.cameras.cx.numpy(), CX)

    out = tmp_path / "out"
    write_outputs(out, photos, intr, result, [], {}, model=ModelInfo("m.npz", "0" * 64, model.n_shape, model.n_expr),
                  avatar_format=True)

    # transforms.json: OPENCV, the lens per frame (shared here: also at the top level), the photos as taken.
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["k1"] == pytest.approx(LENS[0])
    for fr in meta["frames"]:
        assert (fr["k1"], fr["k2"], fr["k3"], fr["p1"], fr["p2"]) == pytest.approx((LENS[0], LENS[1], 0, 0, 0))
        assert (fr["w"], fr["h"], fr["cx"]) == (PHOTO_W, PHOTO_H, pytest.approx(CX))
    written = cv2.imread(str(out / meta["frames"][0]["file_path"]))[..., ::-1]
    np.testing.assert_array_equal(written, photos[0].image.pixels)

    assert "lens (undone for the fit)</dt><dd>k1 -0.2<" in (out / "report.html").read_text()

    # The COLMAP export reads back through --intrinsics.file as the calibration it came from.
    back = read_camera_file(out / "colmap_text")
    assert {c.model for c in back.cameras} == {"OPENCV"}
    assert back.cameras[0].distortion == pytest.approx(tuple(LENS)) and back.cameras[0].cx == pytest.approx(CX)

    # The avatar data set is undistorted and centred: a pinhole with cx = w/2, and its pixels are the
    # ideal view's, shifted by the recorded offset.
    av = json.loads((out / "avatar" / "transforms.json").read_text())
    fr = av["frames"][0]
    assert fr["cx"] == fr["w"] / 2 and fr["cy"] == fr["h"] / 2 and "k1" not in fr and "k1" not in av
    ox, oy = (int(v) for v in av["flame_prior"]["crop_offsets"]["per_camera_index"][0])
    mask = cv2.imread(str(out / "avatar" / fr["fg_mask_path"]), cv2.IMREAD_GRAYSCALE)
    ideal_mask = undistort_image(photos[0].detection.mask, f, f, CX, CY, LENS)
    region = mask[max(0, -oy):max(0, -oy) + PHOTO_H, max(0, -ox):max(0, -ox) + PHOTO_W]
    assert np.abs(region.astype(float) - np.round(ideal_mask * 255)[:region.shape[0], :region.shape[1]]).max() <= 1
