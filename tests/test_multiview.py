"""The multi-view stage's geometry (flame_prior.fit.multiview) and the scene-kind evidence
(flame_prior.intrinsics.detect_scene_kind), on cases whose answer is known by construction.
The shared scene and the scan rigs, end to end, are in test_real_photos.py and test_scan_rigs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flame_prior.detectors import Detection
from flame_prior.fit.multiview import FACELESS_FLAG, faceless_cameras, similarity_from_cameras
from flame_prior.images import InputImage
from flame_prior.intrinsics import FacelessCameras, IntrinsicsConfig, detect_scene_kind
from flame_prior.observe import ViewObservation


def _ring(n: int, seed: int = 0):
    """``n`` cameras 1 m from the origin looking at it, yaw -60..60 deg and some pitch (FLAME-like frame)."""
    rng = np.random.default_rng(seed)
    R = np.empty((n, 3, 3))
    t = np.empty((n, 3))
    for i, yaw in enumerate(np.linspace(-60, 60, n)):
        head = Rotation.from_euler("yx", [yaw, rng.uniform(-15, 15)], degrees=True).as_matrix()
        R[i] = np.diag([1.0, -1.0, -1.0]) @ head  # OpenCV camera facing the head's front (+Z)
        t[i] = [0.0, 0.0, 1.0]
    return R, t


def _to_colmap(R, t, A, s, b):
    """COLMAP's poses of the same cameras in a frame with ``x_colmap = s A x + b``."""
    w2c = np.tile(np.eye(4), (len(R), 1, 1))
    w2c[:, :3, :3] = R @ A.T
    w2c[:, :3, 3] = s * t - np.einsum("nij,j->ni", w2c[:, :3, :3], b)
    return w2c


class TestSimilarity:
    A = Rotation.from_rotvec([0.3, -1.2, 2.0]).as_matrix()
    s, b = 7.5, np.array([0.4, -2.0, 3.0])

    def test_exact_cameras_give_the_similarity(self):
        R, t = _ring(12)
        w2c = _to_colmap(R, t, self.A, self.s, self.b)
        A, d, k, inlier, err = similarity_from_cameras(R, t, w2c, 30.0)
        assert inlier.all() and np.nanmax(err) < 1e-4  # degrees (arccos near 1)
        # The cameras of the module docstring's formula are the originals.
        np.testing.assert_allclose(w2c[:, :3, :3] @ A, R, atol=1e-9)
        np.testing.assert_allclose(np.einsum("nij,j->ni", w2c[:, :3, :3], d) + k * w2c[:, :3, 3], t, atol=1e-9)
        assert k == pytest.approx(1 / self.s)

    def test_a_view_without_a_face_gets_its_camera_through_the_similarity(self):
        """A back view (no landmarks) that COLMAP registered: the similarity solved on the face views
        carries its COLMAP pose to its true camera in FLAME's frame, flagged as unchecked."""
        import torch

        R, t = _ring(6)
        back = Rotation.from_euler("y", 180, degrees=True).as_matrix()
        R_back, t_back = np.diag([1.0, -1.0, -1.0]) @ back, np.array([0.0, 0.0, 1.0])
        w2c = _to_colmap(np.concatenate([R, R_back[None]]), np.concatenate([t, t_back[None]]), self.A, self.s, self.b)
        A, d, k, inlier, _ = similarity_from_cameras(R, t, w2c[:6], 30.0)
        cams = FacelessCameras(["back"], w2c[6:], np.array([900.0]), np.array([901.0]), np.array([320.0]),
                               np.array([240.0]), np.array([640]), np.array([480]))
        T = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        (entry,) = faceless_cameras(cams, T(A), T(d), T([np.log(k)]))
        np.testing.assert_allclose(entry["R"], R_back, atol=1e-9)
        np.testing.assert_allclose(entry["t"], t_back, atol=1e-9)
        assert entry["flags"] == [FACELESS_FLAG] and entry["trusted"] is False and entry["fy"] == 901.0

    def test_noisy_prior_and_a_wrong_registration(self):
        """Landmark cameras 2 deg and 3 cm off at random, one COLMAP pose turned by 70 deg: the
        wrong pose is the only outlier and the others come back within a fraction of the noise."""
        rng = np.random.default_rng(1)
        R, t = _ring(15)
        w2c = _to_colmap(R, t, self.A, self.s, self.b)
        w2c[4, :3, :3] = Rotation.from_rotvec([0.0, np.radians(70), 0.0]).as_matrix() @ w2c[4, :3, :3]
        w2c[9] = np.nan  # not registered
        noisy = np.stack([Rotation.from_rotvec(rng.normal(0, np.radians(2.0) / np.sqrt(3), 3)).as_matrix() @ r
                          for r in R])
        t_noisy = t + rng.normal(0, 0.03 / np.sqrt(3), t.shape)
        A, d, k, inlier, err = similarity_from_cameras(noisy, t_noisy, w2c, 30.0)
        assert not inlier[4] and not inlier[9] and inlier.sum() == 13
        assert err[4] > 50 and np.isnan(err[9])
        good = inlier
        angles = np.degrees(Rotation.from_matrix(np.transpose(w2c[good, :3, :3] @ A, (0, 2, 1)) @ R[good]).magnitude())
        assert np.median(angles) < 1.0, angles  # each noisy view alone is ~2 deg off; the average is better
        assert abs(k * self.s - 1) < 0.05


def _view(i: int, pixels: np.ndarray, mask: np.ndarray) -> ViewObservation:
    h, w = mask.shape
    image = InputImage(path=Path(f"v{i}.png"), name=f"v{i}", pixels=pixels, sha256=f"{i}")
    return ViewObservation(image=image, detection=Detection(
        landmarks=np.zeros((0, 2), np.float32), confidence=np.zeros(0, np.float32), landmark_format="mediapipe478",
        mask=mask.astype(np.float32), face_box=(0.0, 0.0, float(w), float(h))))


def _scene(moving_camera: bool, n: int = 6, textured: bool = True) -> list[ViewObservation]:
    """A textured wall and a grey 'head' disk that moves; the wall stays put (fixed camera) or slides
    by 15-40 px between views (moving camera)."""
    rng = np.random.default_rng(0)
    wall = rng.integers(0, 256, size=(420, 560, 3), dtype=np.uint8)
    if not textured:
        wall[:] = 90
    wall = np.repeat(np.repeat(wall[::4, ::4], 4, 0), 4, 1)  # blobs of 4 px: texture that survives downscaling
    views = []
    yy, xx = np.mgrid[:300, :400]
    for i in range(n):
        shift = 8 * i if moving_camera else 0
        pixels = wall[40:340, 40 + shift: 440 + shift].copy()
        mask = (xx - 200 - 4 * i) ** 2 + (yy - 150) ** 2 < 70 ** 2
        pixels[mask] = 128
        views.append(_view(i, pixels, mask))
    return views


class TestSceneKind:
    def test_fixed_camera_is_a_turning_head(self):
        notes: list[str] = []
        assert detect_scene_kind(_scene(moving_camera=False), notes) == "turning-head"
        assert "unchanged" in notes[0]

    def test_moving_camera_is_a_rigid_scene(self):
        notes: list[str] = []
        assert detect_scene_kind(_scene(moving_camera=True), notes) == "rigid-scene"
        assert "moves" in notes[0]

    def test_flat_background_tells_nothing(self):
        notes: list[str] = []
        assert detect_scene_kind(_scene(moving_camera=True, textured=False), notes) == "turning-head"
        assert "too little" in notes[0]

    def test_config_validates_scene_kind(self):
        from flame_prior.errors import InputError

        IntrinsicsConfig(scene_kind="rigid-scene").check()
        with pytest.raises(InputError, match="--intrinsics.scene-kind"):
            IntrinsicsConfig(scene_kind="tripod").check()


def test_lbfgs_minimises_in_place_without_torch_dynamo():
    """The refinement's L-BFGS reaches Rosenbrock's minimum (a curved valley: a wrong gradient or a lost
    parameter update stalls it) and, in a fresh interpreter, imports no ``torch._dynamo`` (3 s of CPU
    that ``torch.optim.LBFGS`` costs)."""
    import subprocess
    import sys

    code = ("import sys, torch\nfrom flame_prior.fit.multiview import minimise_lbfgs\n"
            "x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)\n"
            "h = minimise_lbfgs(lambda: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2, [x], 200, lambda: None)\n"
            "print(x[0].item(), x[1].item(), len(h), h[0], h[-1], 'torch._dynamo' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert p.returncode == 0, p.stderr[-2000:]
    x0, x1, n, first, last, dynamo = p.stdout.split()
    assert abs(float(x0) - 1) < 1e-6 and abs(float(x1) - 1) < 1e-6, p.stdout
    assert float(first) > 1 and float(last) < 1e-10 and int(n) <= 250
    assert dynamo == "False"


def _fit_with_colmap_poses(distance_factors):
    """The demo's synthetic head (4 views), its true cameras handed over as COLMAP's poses in another
    frame, each camera's centre moved along its ray by ``distance_factors``; landmark fit + multi-view."""
    import torch

    from flame_prior import demo
    from flame_prior.demo_config import DemoConfig
    from flame_prior.fit import FitterConfig, fit_flame
    from flame_prior.intrinsics import ColmapPoses, Intrinsics

    _, model, emb, ts = demo.demo_assets(0, torch.device("cpu"))
    sc = demo.render_scene(model, emb, ts, DemoConfig(views=4, image_size=160, seed=0), np.random.default_rng(0))
    R = sc.cameras.R.numpy()
    t = sc.cameras.t.numpy() * np.asarray(distance_factors, dtype=np.float64)[:, None]
    w2c = _to_colmap(R, t, Rotation.from_euler("xyz", [20, -30, 10], degrees=True).as_matrix(), 2.5,
                     np.array([0.3, -0.2, 1.0]))
    f = sc.cameras.fx.numpy()
    c = np.full(4, 80.0)
    intr = Intrinsics(f, f.copy(), c, c.copy(), "colmap", False, poses=ColmapPoses(w2c, np.ones(4, bool), "rigid-scene"))
    return fit_flame(model, emb, sc.views, intr, FitterConfig(photometric_steps=0, landmark_steps=10),
                     uv_layout=(ts.uvs, ts.uv_faces))


def test_colmap_model_that_explains_no_face_is_dropped_and_flags_every_camera():
    """COLMAP's whole model wrong (camera distances 0.5-2.5x: what one camera for lenses of different
    focal lengths gives): every camera carries the scene's flag and the note says why; the same scene
    with COLMAP's cameras right follows them, unflagged by that rule."""
    from flame_prior.fit.multiview import INCONSISTENT_FLAG

    good = _fit_with_colmap_poses([1.0, 1.0, 1.0, 1.0])
    log = next(s for s in good.stages if s.name == "multiview")
    assert log.details["used"] == 4 and "scene_flags" not in log.details
    assert all(INCONSISTENT_FLAG not in v.flags for v in good.views)
    bad = _fit_with_colmap_poses([0.5, 2.5, 0.6, 2.0])
    log = next(s for s in bad.stages if s.name == "multiview")
    assert log.details["scene_flags"] == [INCONSISTENT_FLAG], log.details
    assert all(INCONSISTENT_FLAG in v.flags for v in bad.views)
    assert any("do not explain the faces" in n for n in bad.notes)
    # What the pipeline's per-view retry reads (test_the_per_view_retry_decision): the rule and its error.
    from flame_prior.fit import FitterConfig
    from flame_prior.fit.multiview import INCONSISTENT_FACTOR
    from flame_prior.pipeline import _colmap_inconsistent

    assert _colmap_inconsistent(good) is None
    assert _colmap_inconsistent(bad) > INCONSISTENT_FACTOR * FitterConfig().multiview_max_landmark_error


def test_the_per_view_retry_decision():
    """The pipeline runs COLMAP again with a camera per view when the multi-view rule flagged the scene (read
    off the fit's stage log by _colmap_inconsistent: the test above; the per-view fit is kept only when that
    reads None for it), only when COLMAP estimated the focal with shared cameras and the retry is on."""
    from dataclasses import replace

    from flame_prior.config import FitConfig
    from flame_prior.intrinsics import Intrinsics
    from flame_prior.pipeline import _per_view_retry_applies

    one = np.ones(3)
    cfg = FitConfig(data=Path("."), output_dir=Path("out"))
    colmap = Intrinsics(one, one, one, one, "colmap", False)
    assert _per_view_retry_applies(cfg, colmap)
    assert not _per_view_retry_applies(cfg, replace(colmap, source="given"))
    assert not _per_view_retry_applies(cfg, replace(colmap, source="file"))
    for off in ({"colmap_cameras": "per_view"}, {"colmap_per_view_retry": False}):
        assert not _per_view_retry_applies(replace(cfg, intrinsics=replace(cfg.intrinsics, **off)), colmap)


def test_the_per_view_fit_is_kept_only_when_it_explains_the_faces_with_as_many_views():
    """The retry's choice between the shared camera's fit (flagged) and the per-view one: the per-view fit must
    explain the faces (the multi-view rule does not flag it) and keep at least as many views on COLMAP's
    cameras; a fit that explains the faces by releasing views to their landmark cameras is not kept."""
    from types import SimpleNamespace

    from flame_prior.fit.multiview import INCONSISTENT_FLAG
    from flame_prior.fit.state import StageLog
    from flame_prior.pipeline import _per_view_fit_is_kept

    def fit(used: int, flagged: bool, error: float = 0.05):
        details = {"used": used, "median_landmark_error_rel": error}
        if flagged:
            details["scene_flags"] = [INCONSISTENT_FLAG]
        return SimpleNamespace(stages=[StageLog("multiview", 1, 0.0, [], np.zeros(1), details=details)])

    first = fit(9, True, 1.05)
    assert _per_view_fit_is_kept(first, fit(9, False))[0]
    assert _per_view_fit_is_kept(first, fit(10, False))[0]
    kept, why = _per_view_fit_is_kept(first, fit(6, False))
    assert not kept and "6" in why and "9" in why
    kept, why = _per_view_fit_is_kept(first, fit(9, True, 0.64))
    assert not kept and "64 %" in why



def _similarity_problem(seed: int = 0, n: int = 6, landmarks: int = 30):
    """Head points, their views' true cameras in FLAME's frame and COLMAP's poses of them (``_to_colmap``), the
    detections (0.3 px noise, two of them 60 px off in each view) and a start 4 deg, 2 cm and 20 % off."""
    rng = np.random.default_rng(seed)
    R, t = _ring(n, seed)
    t = t * 0.6
    X = rng.normal(0.0, 0.05, (landmarks, 3)) * np.array([1.0, 1.2, 0.6])
    A, s, b = Rotation.from_rotvec([0.4, 1.0, -0.3]).as_matrix(), 3.0, np.array([0.5, -1.0, 2.0])
    w2c = _to_colmap(R, t, A, s, b)
    f, c = np.full((n, 2), 1200.0), np.tile([320.0, 240.0], (n, 1))
    pc = np.einsum("nij,lj->nli", R, X) + t[:, None]
    uv = f[:, None] * pc[..., :2] / pc[..., 2:] + c[:, None] + rng.normal(0, 0.3, (n, landmarks, 2))
    uv[:, :2] += 60.0
    truth = (A, b / s, -np.log(s))  # the module docstring's A, d = b / s, log k = -log s
    start = (Rotation.from_rotvec(np.radians(4.0) * np.array([0.6, 0.0, 0.8])).as_matrix() @ A, b / s + 0.02,
             -np.log(s) + 0.2)
    weight = np.full((n, landmarks), 1.0 / landmarks)
    scale = np.ptp(uv, axis=1).max(-1)
    return dict(X=np.broadcast_to(X, (n, landmarks, 3)).copy(), Rc=w2c[:, :3, :3], tc=w2c[:, :3, 3], f=f, c=c,
                targets=uv, weight=weight, scale=scale), truth, start


def test_similarity_presolve_recovers_the_similarity_through_outliers():
    """Levenberg-Marquardt on the 7 similarity parameters, from a start 4 deg, 2 cm and 20 % in scale off, finds
    the similarity the cameras were made with to a fraction of the 0.3 px noise, two gross outliers per view
    held by the robust kernel; the energy only goes down."""
    from flame_prior.fit.multiview import similarity_gauss_newton

    problem, (A, d, log_k), start = _similarity_problem()
    A_fit, d_fit, lk_fit, history = similarity_gauss_newton(**problem, robust_scale=0.05, A=start[0], d=start[1],
                                                            log_k=start[2])
    angle = np.degrees(Rotation.from_matrix(A_fit @ A.T).magnitude())
    assert angle < 0.05, angle
    assert np.linalg.norm(d_fit - d) < 5e-4 and abs(lk_fit - log_k) < 2e-3, (d_fit - d, lk_fit - log_k)
    at_truth = similarity_gauss_newton(**problem, robust_scale=0.05, A=A, d=d, log_k=log_k, iterations=0)[3][0]
    assert np.all(np.diff(history) < 0) and history[-1] <= at_truth * (1 + 1e-6), (history, at_truth)
    assert history[0] > 10 * at_truth, (history[0], at_truth)  # a start far from it: the test has work to see


def test_similarity_presolve_minimises_the_stage_energy():
    """The pre-solve's energy is the refinement's (landmark_energy of the cameras _colmap_cameras builds,
    projected by project_points) at any similarity: a different kernel, weighting or camera formula would
    make the pre-solve move the cameras away from the refinement's optimum."""
    import torch

    from flame_prior.fit.multiview import _colmap_cameras, similarity_gauss_newton
    from flame_prior.fit.state import LandmarkTargets, landmark_energy
    from flame_prior.geometry import project_points
    from flame_prior.render_head import PinholeCameras

    problem, _, start = _similarity_problem(seed=3)
    T = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    tg = LandmarkTargets(T(problem["targets"]), T(problem["weight"]), T(problem["weight"]), T(problem["scale"]))
    for A, d, lk in [start, (start[0], start[1] - 0.05, start[2] - 0.3)]:
        _, _, _, history = similarity_gauss_newton(**problem, robust_scale=0.05, A=A, d=d, log_k=lk, iterations=0)
        R, t = _colmap_cameras(T(problem["Rc"]), T(problem["tc"]), torch.zeros(3, dtype=torch.float64), T(A), T(d),
                               T([lk]))
        cams = PinholeCameras(R, t, T(problem["f"][:, 0]), T(problem["f"][:, 1]), T(problem["c"][:, 0]),
                              T(problem["c"][:, 1]), [640] * len(R), [480] * len(R))
        stage = landmark_energy(project_points(T(problem["X"]), cams)[0], tg, 0.05)
        assert history == [pytest.approx(float(stage), rel=1e-9)]
