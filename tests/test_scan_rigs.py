"""The scan-rig ground truth (flame_prior.scan_rigs): its geometry and scoring, its renders checked
by the real MediaPipe detector, and a small rig run through the whole tool (real MediaPipe, COLMAP,
fit) with the cameras scored against the rig. The scan is Lee Perry-Smith's head (CC BY 3.0, read
from ../shared; see scan_rigs.ATTRIBUTION). The accuracy figures per full rig live in
scripts/benchmark.py (--only-scan)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flame_prior import scan_rigs as S


def _rotation(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


@pytest.fixture(scope="module")
def scan():
    from conftest import shared_path

    return S.load_scan(shared_path(S.SCAN_RELATIVE_PATH))


def test_scan_frame(scan):
    """Metres, eye corners 9.5 cm apart along +X around the origin, face towards +Z, +Y up."""
    assert np.linalg.norm(scan.eye_corners[1] - scan.eye_corners[0]) == pytest.approx(0.095)
    assert np.allclose(scan.eye_corners.mean(0), 0, atol=1e-9)
    assert scan.eye_corners[1, 0] - scan.eye_corners[0, 0] > 0.09  # subject's left = +X
    nose = scan.vertices[np.argmax(scan.vertices[:, 2])]
    assert 0.01 < nose[2] < 0.05 and -0.08 < nose[1] < 0  # the nose tip: in front, below the eyes
    top = scan.vertices[:, 1].max()
    assert 0.1 < top < 0.2  # crown of the head above the eyes


def test_distortion_inverse():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.7, 0.7, (2, 1000))
    dist = (-0.25, 0.08, 0.001, -0.002)
    xd, yd = S.distort_normalised(x, y, dist)
    xu, yu = S._undistort_normalised(xd, yd, np.array(dist))
    assert np.abs(xu - x).max() < 1e-9 and np.abs(yu - y).max() < 1e-9


def _truth(n=6, seed=0):
    rng = np.random.default_rng(seed)
    views = []
    for i in range(n):
        v = S._view(f"v{i}", rng.uniform(-60, 60), rng.uniform(-10, 10), rng.uniform(0.6, 1.0), 1000.0, (640, 480))
        views.append({**v.__dict__, "yaw_deg": 0.0, "eye_distance_px": 100.0})
    return {"views": views, "head_centre": S.HEAD_CENTRE.tolist()}


def test_score_is_invariant_to_the_similarity():
    """Cameras moved to another frame by a similarity (the fit's FLAME frame) score zero error; one
    view turned by 3 degrees scores 3 degrees there and leaves the others near zero."""
    truth = _truth()
    Q, s, T = _rotation([0.3, 1, 0.2], 25), 1.07, np.array([0.01, -0.03, 0.02])
    fit = []
    for v in truth["views"]:
        R, t = np.asarray(v["R"]), np.asarray(v["t"])
        C = -R.T @ t
        Rf = R @ Q.T  # x_cam = R x_scan = R Q^T x_flame
        Cf = s * Q @ C + T
        fit.append({"name": v["name"], "R": Rf.tolist(), "t": (-Rf @ Cf).tolist(), "fx": v["fx"]})
    sc = S.score_cameras(fit, truth)
    assert sc["fitted"] == 6 and sc["rotation_deg_max"] < 1e-5 and sc["centre_pct_max"] < 1e-6
    assert sc["scale"] == pytest.approx(s)
    fit[2]["R"] = (_rotation([0, 1, 0], 3.0) @ np.asarray(fit[2]["R"])).tolist()
    fit[4]["fx"] = 1020.0
    sc = S.score_cameras(fit[:5], truth)
    assert sc["missing"] == ["v5"]
    assert sc["rotation_deg"]["v2"] == pytest.approx(3.0, abs=0.05)
    assert max(e for k, e in sc["rotation_deg"].items() if k != "v2") < 0.05  # robust alignment: no spill-over
    assert sc["focal_pct"]["v4"] == pytest.approx(2.0)


def test_one_far_off_camera_does_not_move_the_others_centres():
    """The small_faces case: one of five cameras (a face found in the room's texture) sits 33 degrees
    and metres off. Its own errors stay large, the other views' centres score as they are (a
    least-squares scale made them 22-46 % off while they were 0.03 % off)."""
    truth = _truth(n=5, seed=3)
    Q, s, T = _rotation([0.1, 1, -0.2], 160), 0.9, np.array([0.2, 0.1, -1.0])
    fit = []
    for i, v in enumerate(truth["views"]):
        R, t = np.asarray(v["R"]), np.asarray(v["t"])
        C = -R.T @ t
        Rf, Cf = R @ Q.T, s * Q @ C + T
        if i == 1:  # the false detection: turned 33 degrees, at a fifth of the distance
            Rf = _rotation([0, 1, 0], 33.0) @ Rf
            Cf = T + 0.2 * (Cf - T)
        fit.append({"name": v["name"], "R": Rf.tolist(), "t": (-Rf @ Cf).tolist(), "fx": v["fx"]})
    sc = S.score_cameras(fit, truth)
    assert sc["rotation_deg"]["v1"] == pytest.approx(33.0, abs=0.5) and sc["centre_pct"]["v1"] > 30
    assert max(e for k, e in sc["centre_pct"].items() if k != "v1") < 1e-3
    assert sc["scale"] == pytest.approx(s, rel=1e-4)


def test_head_score_measures_the_surface_in_the_cameras_frame(scan):
    """score_mesh: the scan itself, carried into another frame by the similarity the cameras were,
    scores 0 mm; pushed 2 mm out along its normals, about 2 mm; the right shape at a wrong size for
    its cameras (5 % too large, about the eye midpoint) scores millimetres too."""
    truth = _truth()
    Q, s, T = _rotation([0.2, 1, -0.1], 40), 0.93, np.array([0.02, 0.01, -0.05])
    fit = []
    for v in truth["views"]:
        R, C = np.asarray(v["R"]), -np.asarray(v["R"]).T @ np.asarray(v["t"])
        Rf, Cf = R @ Q.T, s * Q @ C + T
        fit.append({"name": v["name"], "R": Rf.tolist(), "t": (-Rf @ Cf).tolist(), "fx": v["fx"]})
    to_fit = lambda x: s * x @ Q.T + T  # noqa: E731
    exact = S.score_mesh(to_fit(scan.vertices), scan.faces, scan, fit, truth)
    assert exact["vertices"] > 500 and exact["median_mm"] < 1e-3 and exact["p90_mm"] < 1e-3
    v, f = scan.vertices, scan.faces
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    pushed = S.score_mesh(to_fit(v + 0.002 * n), f, scan, fit, truth)
    assert 1.6 < pushed["median_mm"] < 2.05, pushed
    larger = S.score_mesh(to_fit(1.05 * v), f, scan, fit, truth)
    assert larger["median_mm"] > 1.0, larger


def _detected_and_true_eye_corners(scan, view, img):
    """MediaPipe's outer eye corners (Face Mesh 33, 263) on ``img`` and the pinhole projection of
    the scan's, both ``(2, 2)`` pixels."""
    from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

    with MediaPipeDetector() as det:
        found = det.detect_pixels(img)
    assert found is not None
    R, t = np.asarray(view.R), np.asarray(view.t)
    pc = scan.eye_corners @ R.T + t
    expected = np.stack([pc[:, 0] / pc[:, 2] * view.fx + view.cx, pc[:, 1] / pc[:, 2] * view.fy + view.cy], -1)
    return found.landmarks[[33, 263]], expected


def _off_centre_view(distortion=(0.0, 0.0, 0.0, 0.0)) -> S.RigView:
    return S._view("v", 0.0, 5.0, 0.9, 950.0, (960, 720), distortion=distortion, aim=(0.3, 0.12))


def test_render_agrees_with_mediapipe(scan):
    """MediaPipe's outer eye corners on a render land where the rig's camera projects the scan's eye
    corners: the renderer, the camera convention and the scan's eye-corner points agree. Frontal
    view, ~113 px eye distance, face off centre. Measured 2.4 px (MediaPipe's own offset on this
    closed-eye scan); bound 4 px."""
    view = _off_centre_view()
    img = S.render_view(scan, S.Rig("t", "test", [view], "environment", "world"), view)
    assert img.shape == (720, 960, 3)
    got, expected = _detected_and_true_eye_corners(scan, view, img)
    err = np.linalg.norm(got - expected, axis=1)
    assert err.max() < 4.0, (got, expected)


def test_distorted_render_matches_opencv(scan):
    """The lens: a distorted render equals OpenCV's own resampling of the pinhole render (each
    distorted pixel centre undistorted by cv2.undistortPoints, sampled by cv2.remap), within JPEG-like
    noise; and the lens visibly changed the image (k1 = -0.25 with the face off centre)."""
    import cv2

    dist = (-0.25, 0.08, 0.0, 0.0)
    pin, lens = _off_centre_view(), _off_centre_view(dist)
    rig = S.Rig("t", "test", [pin], "environment", "world")
    a = S.render_view(scan, rig, pin).astype(np.float32)
    b = S.render_view(scan, rig, lens).astype(np.float32)
    H, W = 720, 960
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    K = np.array([[pin.fx, 0, pin.cx - 0.5], [0, pin.fy, pin.cy - 0.5], [0, 0, 1]])  # OpenCV: centres at integers
    pts = np.stack([u - 0.5, v - 0.5], -1).reshape(-1, 1, 2)
    und = cv2.undistortPointsIter(pts, K, np.array(dist), None, K,
                                  (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-9)).reshape(H, W, 2)
    ref = cv2.remap(a, und[..., 0].astype(np.float32), und[..., 1].astype(np.float32), cv2.INTER_LINEAR)
    inside = (und[..., 0] > 2) & (und[..., 0] < W - 3) & (und[..., 1] > 2) & (und[..., 1] < H - 3)
    assert inside.mean() > 0.8
    diff = np.abs(ref - b).mean(-1)[inside]
    assert np.median(diff) < 2.0 and diff.mean() < 4.0, (np.median(diff), diff.mean())
    assert np.abs(a - b).mean(-1)[inside].mean() > 3 * diff.mean()


@pytest.mark.slow
def test_renders_are_reused_only_from_the_same_renderer(scan, tmp_path, monkeypatch):
    """write_rig reuses a folder holding this rig from this renderer, and renders again when
    RENDER_VERSION differs (stale images of an older renderer once scored 78 deg where fresh ones score 1)."""
    full = S.make_rig("turning_head", small=True)
    rig = S.Rig("one_view", full.description, full.views[:1], full.background, full.light, 1)
    image = S.write_rig(scan, rig, tmp_path) / f"{rig.views[0].name}.png"
    image.write_bytes(b"stale")  # stands for an older renderer's picture
    S.write_rig(scan, rig, tmp_path)
    assert image.read_bytes() == b"stale"  # same truth.json: reused as it is
    monkeypatch.setattr(S, "RENDER_VERSION", S.RENDER_VERSION + 1)
    S.write_rig(scan, rig, tmp_path)
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # another renderer: rendered again
    assert json.loads((tmp_path / "truth.json").read_text())["render_version"] == S.RENDER_VERSION


def test_small_turning_head_rig_end_to_end(scan, tmp_path):
    """The whole tool on 6 renders of the scan (the turning-head rig's views within ±27° of yaw: fixed
    camera, static textured background, 768x1024, 138-164 px between the eye corners): COLMAP
    registers the head, the fit brings its relative poses into FLAME's frame (fit/multiview.py), and
    the cameras match the rig after one similarity. Landmark cameras alone were 2.9-10.2 deg off on
    the 4-view version of this rig (issue 12's baseline); the full 12-view rig now measures 0.08 deg
    median, 0.38 max (README). Bounds: issue 12's targets for faces >= 60 px within ±60°, median
    0.3 deg and max 1 deg; ~5 min on 2 contended cores."""
    full = S.make_rig("turning_head")
    rig = S.Rig("turning_head_small", full.description, full.views[3:9], full.background, full.light, 1)
    sc = S.evaluate_rig(scan, rig, tmp_path, fitter={"photometric_steps": 20})
    truth = json.loads((tmp_path / "rig" / "truth.json").read_text())
    assert truth["attribution"] == S.ATTRIBUTION and (tmp_path / "rig" / "ATTRIBUTION.txt").exists()
    assert sc["fitted"] == 6, sc["left_out"]
    summary = json.loads((tmp_path / "out" / "fit_summary.json").read_text())
    stage = next(s for s in summary["stages"] if s["name"] == "multiview")
    assert stage["scene_kind"] == "turning-head" and stage["used"] == 6, stage
    assert sc["rotation_deg_median"] < 0.3, sc["rotation_deg"]
    assert sc["rotation_deg_max"] < 1.0, sc["rotation_deg"]


@pytest.mark.slow
def test_detector_finds_a_face_turned_45_degrees(scan):
    """Detection recall (issue 12, item 5): the moving-camera rig's view at -45° yaw (105 px between
    the eye corners, 1280x960) was "no face found" with a single Face Mesh pass; the recall passes
    find it. Its eye corners: distance within 10% of the truth (measured 3%), but shifted by ~20% of
    it (measured 19-23 px at 105 px): the yaw bias of Face Mesh's landmarks that issue 12 names; the
    bound (30%) only says it is this face."""
    rig = S.make_rig("moving_camera")
    view = rig.views[2]
    facts = S._view_facts(scan, view)
    assert abs(facts["yaw_deg"] + 45) < 1 and 90 < facts["eye_distance_px"] < 120
    img = S.render_view(scan, rig, view)
    got, expected = _detected_and_true_eye_corners(scan, view, img)
    assert abs(np.linalg.norm(got[1] - got[0]) / facts["eye_distance_px"] - 1) < 0.1, (got, expected)
    assert np.linalg.norm(got - expected, axis=1).max() < 0.3 * facts["eye_distance_px"], (got, expected)


def test_lens_that_folds_back_is_refused(scan):
    """k1 = -0.25 alone at f = 1393 px on full HD: r (1 + k1 r^2) peaks inside the image, so some
    pixels have no undistorted source; rendering says so instead of growing a huge canvas."""
    view = S._view("v", 0.0, 0.0, 3.0, 1393.0, (1920, 1080), pp=(35.0, 35.0), distortion=(-0.25, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="cannot be inverted"):
        S.render_view(scan, S.Rig("t", "test", [view], "environment", "world"), view)


@pytest.mark.slow
def test_small_distortion_rig_with_its_calibration(scan, tmp_path):
    """The calibrated capture end to end (pipeline.run with --intrinsics.file): 4 renders through a
    k1 = -0.25, k2 = 0.08 lens, faces off centre, the rig's COLMAP calibration given. The focal is the
    calibrated one exactly, the lens reaches transforms.json and the COLMAP export, COLMAP runs with
    the calibration held (one OPENCV camera per view) and its poses enter the fit, and the wrong
    cameras are flagged."""
    rig = S.make_rig("distortion", small=True)
    sc = S.evaluate_rig(scan, rig, tmp_path, known_intrinsics=True, fitter={"photometric_steps": 20})
    assert sc["intrinsics_source"] == "file"
    assert sc["fitted"] >= 3, sc["left_out"]
    assert sc["focal_pct_max"] < 1e-3, sc["focal_pct"]
    meta = json.loads((tmp_path / "out_calibrated" / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["k1"] == pytest.approx(-0.25) and meta["k2"] == pytest.approx(0.08)
    assert "OPENCV" in (tmp_path / "out_calibrated" / "colmap_text" / "cameras.txt").read_text()
    # COLMAP with the lens held registers the ±20° views and the +60° one (measured: 3 of 4, rigid
    # scene); the multi-view stage puts them on COLMAP's relative poses.
    summary = json.loads((tmp_path / "out_calibrated" / "fit_summary.json").read_text())
    stage = next(s for s in summary["stages"] if s["name"] == "multiview")
    assert stage["used"] >= 2, stage
    # Measured (2 contended cores, ~125 s): the ±20° views 0.03° (landmark cameras alone, before COLMAP
    # ran with a calibration: 4.4° and 1.3°); the -60° view (~50 px between the eyes, unregistered)
    # 72°, which the trust rule must flag (issue 12: no silently wrong camera).
    rot = sc["rotation_deg"]
    assert rot["dist_01"] < 0.3 and rot["dist_02"] < 0.3, rot
    assert all(sc["flags"][v] for v, e in rot.items() if e > 5.0), (rot, sc["flags"])
