"""No crash, no silently wrong camera (issue 12, item 4): the PnP start survives SQPnP's refusal on
small faces seen with long lenses, the per-camera uncertainty matches the scatter it predicts, the
trust rule flags what it documents, and the whole tool on small-face renders with a huge given focal
length finishes with every view either fitted or left out with a reason."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from flame_prior.camera_trust import (ROTATION_SIGMA_MAX_DEG, pose_covariance, pose_uncertainty, similarity_covariance,
                                      track_pose_covariance, track_uncertainty, trust_flags)
from flame_prior.fit.landmarks import _pnp_init


def _face_points(rng, n=120):
    """Face-like 3D points (metres): 16 cm wide, 20 cm tall, 6 cm deep, in front of FLAME's origin."""
    return np.stack([rng.uniform(-0.08, 0.08, n), rng.uniform(-0.1, 0.1, n), rng.uniform(0.04, 0.1, n)], 1)


def _camera(yaw_deg, dist):
    """A camera ``dist`` in front of the face (on +Z), turned by ``yaw_deg`` about the vertical axis."""
    a = math.radians(yaw_deg)
    R = np.diag([1.0, -1.0, -1.0]) @ cv2.Rodrigues(np.array([0.0, -a, 0.0]))[0]
    return R, np.array([0.0, 0.0, dist])


def _project(X, R, t, f, c):
    pc = X @ R.T + t
    return pc[:, :2] / pc[:, 2:] * f + c


def test_pnp_start_survives_sqpnp_refusal():
    """A 30 px face (eye distance) at f = 20000 px: SQPnP itself raises; the start falls back and
    still finds the pose (rotation within 2 degrees, noise-free points)."""
    rng = np.random.default_rng(0)
    X = _face_points(rng)
    f, c = 20000.0, np.array([960.0, 540.0])
    R, t = _camera(20.0, f * 0.095 / 30)
    x = _project(X, R, t, f, c)
    K = np.array([[f, 0, c[0]], [0, f, c[1]], [0, 0, 1]])
    with pytest.raises(cv2.error, match="POINT_VARIANCE_THRESHOLD"):
        cv2.solvePnP(X, x, K, None, flags=cv2.SOLVEPNP_SQPNP)
    sol = _pnp_init(X, x, np.ones(len(X)), f, f, *c)
    assert sol is not None
    R_est = cv2.Rodrigues(sol[0])[0]
    angle = math.degrees(math.acos(np.clip((np.trace(R_est.T @ R) - 1) / 2, -1, 1)))
    assert angle < 2.0 and sol[2] < 0.5


def test_uncertainty_predicts_the_scatter():
    """The rotation sigma from one noisy view matches the spread of the rotations re-estimated over
    many noise draws (within a factor 1.6), and grows as the face shrinks."""
    rng = np.random.default_rng(1)
    X = _face_points(rng, 60)
    f, c, noise = 1500.0, np.array([640.0, 480.0]), 1.5
    R, t = _camera(30.0, 1.2)
    K = np.array([[f, 0, c[0]], [0, f, c[1]], [0, 0, 1]])
    x0 = _project(X, R, t, f, c)
    errs, sigmas = [], []
    for _ in range(150):
        x = x0 + rng.normal(0, noise, x0.shape)
        ok, rv, tv = cv2.solvePnP(X, x, K, None, flags=cv2.SOLVEPNP_ITERATIVE)
        Re = cv2.Rodrigues(rv)[0]
        errs.append(cv2.Rodrigues(Re @ R.T)[0][:, 0])
        sigmas.append(pose_uncertainty(X, x, np.ones(len(X)), Re, tv[:, 0], f, f, *c)[0])
    spread = math.degrees(math.sqrt(np.linalg.eigvalsh(np.cov(np.array(errs).T)).max()))
    assert 1 / 1.6 < np.median(sigmas) / spread < 1.6, (np.median(sigmas), spread)
    far = pose_uncertainty(X, x, np.ones(len(X)), R, t * np.array([1, 1, 4]), f, f, *c)[0]
    assert far > 2 * np.median(sigmas)


def _track_sigma_deg(rng, n, noise, f=1200.0):
    """Rotation sigma (degrees) of a camera seeing ``n`` scene points (a room 2-6 m away) with pixel noise."""
    X = np.stack([rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(2, 6, n)], 1)
    R, t = np.eye(3), np.zeros(3)
    res = rng.normal(0, noise, (n, 2))  # observed minus projected at the adjusted pose
    cov = track_pose_covariance(X, res, R, t, f, f)
    return math.degrees(math.sqrt(np.linalg.eigvalsh(cov[:3, :3]).max()))


def test_track_covariance_grows_with_fewer_and_noisier_observations():
    """A bundle-adjusted camera's pose covariance from its tracks: fewer observations or larger
    residuals give a larger rotation sigma, close to the sqrt(n) and linear laws of least squares."""
    rng = np.random.default_rng(3)
    many = np.median([_track_sigma_deg(rng, 800, 0.5) for _ in range(5)])
    few = np.median([_track_sigma_deg(rng, 50, 0.5) for _ in range(5)])
    noisy = np.median([_track_sigma_deg(rng, 800, 2.0) for _ in range(5)])
    assert 2.5 < few / many < 6.0, (few, many)  # sqrt(800 / 50) = 4
    assert 3.0 < noisy / many < 5.0, (noisy, many)  # 2.0 / 0.5 = 4
    assert track_pose_covariance(np.ones((3, 3)) + 2, np.zeros((3, 2)), np.eye(3), np.zeros(3), 1e3, 1e3) is None


def test_track_uncertainty_adds_the_similarity():
    """A camera that follows COLMAP: its sigma is its tracks' plus the similarity's, and the
    similarity is pinned better by more views (information sum of their landmark covariances)."""
    rng = np.random.default_rng(4)
    X = _face_points(rng, 60)
    f, c = 1500.0, np.array([640.0, 480.0])
    cams = [_camera(yaw, 1.2) for yaw in (-40, -20, 0, 20, 40)]
    covs = [pose_covariance(X, _project(X, R, t, f, c) + rng.normal(0, 1.5, (60, 2)), np.ones(60), R, t, f, f, *c)
            for R, t in cams]
    R, t = np.stack([a for a, _ in cams]), np.stack([b for _, b in cams])
    one = similarity_covariance(covs[:1], R[:1], t[:1])
    five = similarity_covariance(covs, R, t)
    assert np.linalg.eigvalsh(five[0]).max() < 0.6 * np.linalg.eigvalsh(one[0]).max()
    track = np.diag([1e-8] * 3 + [1e-8] * 3)
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R[2], t[2]
    alone = track_uncertainty(track, w2c, 1.0, None, R[2], t[2])
    joint = track_uncertainty(track, w2c, 1.0, five, R[2], t[2])
    assert alone[0] == pytest.approx(math.degrees(1e-4), rel=1e-6)
    assert joint[0] > 10 * alone[0] and joint[1] > alone[1]
    # scale: the same track covariance in a reconstruction 10x larger is 10x smaller in metres
    assert track_uncertainty(track, w2c, 0.1, None, R[2], t[2])[1] == pytest.approx(0.1 * alone[1], rel=1e-6)


def test_trust_rule():
    tracks = trust_flags(0.1, source="tracks")
    assert tracks == [] and trust_flags(0.6, source="tracks")[0].startswith("rotation uncertainty (tracks)")
    # A track camera ignores the landmark biases (yaw, small face, a few % of error) but not a gross miss.
    assert trust_flags(0.1, -58.0, 20.0, 3.0, source="tracks") == []
    assert any("misses this view's landmarks by 32%" in f for f in trust_flags(0.1, 16.0, 50.0, 16.0, source="tracks"))
    assert trust_flags(0.2, 10.0, 120.0, 2.0) == []
    assert any("turned 74" in f for f in trust_flags(0.2, -74.0, 120.0, 2.0))
    assert any("small" in f for f in trust_flags(0.2, 0.0, 20.0, 0.5))
    assert any("uncertainty" in f for f in trust_flags(ROTATION_SIGMA_MAX_DEG * 1.5, 0.0, 120.0, 2.0))
    assert any("landmark error" in f for f in trust_flags(0.2, 0.0, 100.0, 8.0))
    assert trust_flags(float("nan"), 0.0, 100.0, 1.0)  # no uncertainty = not trusted


@pytest.mark.slow
def test_small_faces_with_a_huge_focal_do_not_crash(tmp_path):
    """The studio failure of issue 12: small faces, a focal length far too long given by the user.
    The run finishes; each view is fitted (with an uncertainty and its trust in fit_summary.json) or
    left out with a reason."""
    from conftest import shared_path

    from flame_prior import scan_rigs as S

    scan = S.load_scan(shared_path(S.SCAN_RELATIVE_PATH))
    views = [S._view(f"v{i}", yaw, 5.0, 0.9 * 1500 / 1100, 1500.0, (800, 600)) for i, yaw in enumerate((-20, 0, 25))]
    rig = S.Rig("tiny", "small faces", views, "environment", "world")
    sc = S.evaluate_rig(scan, rig, tmp_path, intrinsics={"focal_px": 40000.0, "use_colmap": False},
                        fitter={"photometric_steps": 0})
    summary = json.loads((tmp_path / "out" / "fit_summary.json").read_text())
    names = {c["name"] for c in summary["cameras"]} | {x["file"] for x in sc["left_out"]}
    assert len(names) == 3
    for cam in summary["cameras"]:
        assert "rotation_deg" in cam["uncertainty"] and isinstance(cam["trusted"], bool)
        assert cam["trusted"] == (not cam["flags"])
    for x in sc["left_out"]:
        assert x["reason"]


def test_cameras_that_follow_colmap_get_the_tracks_uncertainty():
    """The fit on a synthetic head whose true cameras come as COLMAP's poses (another frame, scale 2.5)
    with a track covariance: those cameras' uncertainty says "tracks" and includes the similarity's
    (larger than the tracks' part alone); without a track covariance (an older cache) they keep the
    landmark uncertainty."""
    import torch
    from scipy.spatial.transform import Rotation

    from flame_prior import demo
    from flame_prior.demo_config import DemoConfig
    from flame_prior.fit import FitterConfig, fit_flame
    from flame_prior.intrinsics import ColmapPoses, Intrinsics

    _, model, emb, ts = demo.demo_assets(0, torch.device("cpu"))
    sc = demo.render_scene(model, emb, ts, DemoConfig(views=4, image_size=160, seed=0), np.random.default_rng(0))
    R, t = sc.cameras.R.numpy().astype(np.float64), sc.cameras.t.numpy().astype(np.float64)
    A, s, b = Rotation.from_euler("xyz", [20, -30, 10], degrees=True).as_matrix(), 2.5, np.array([0.3, -0.2, 1.0])
    w2c = np.tile(np.eye(4), (4, 1, 1))
    w2c[:, :3, :3] = R @ A.T
    w2c[:, :3, 3] = s * t - np.einsum("nij,j->ni", w2c[:, :3, :3], b)
    f, c = sc.cameras.fx.numpy(), np.full(4, 80.0)
    track_deg = 0.01
    pose_cov = np.tile(np.diag([math.radians(track_deg) ** 2] * 3 + [1e-8] * 3), (4, 1, 1))

    def fit(cov):
        intr = Intrinsics(f, f.copy(), c, c.copy(), "colmap", False,
                          poses=ColmapPoses(w2c, np.ones(4, bool), "rigid-scene", pose_cov=cov))
        return fit_flame(model, emb, sc.views, intr, FitterConfig(photometric_steps=0, landmark_steps=10),
                         uv_layout=(ts.uvs, ts.uv_faces))

    tracked, untracked = fit(pose_cov), fit(None)  # the same fit (the covariance does not steer it)
    assert next(s for s in tracked.stages if s.name == "multiview").details["used"] == 4
    assert [v.uncertainty_source for v in tracked.views] == ["tracks"] * 4
    assert [v.uncertainty_source for v in untracked.views] == ["landmarks"] * 4
    for v, alone in zip(tracked.views, untracked.views):
        # tracks + the similarity, which 4 views' landmarks pin better than this view's landmarks alone
        assert track_deg < v.rotation_sigma_deg <= math.hypot(track_deg, alone.rotation_sigma_deg) * 1.001
        assert all("landmark error" not in flag and "turned" not in flag for flag in v.flags)

