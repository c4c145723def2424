"""Per-view principal points where the tracks leave them open (flame_prior.colmap_family), on a synthetic rig.

A ring of pinhole cameras of different focal lengths and off-centre principal points, all aimed at a
head-sized cluster of points inside a room-sized shell of points: the critical configuration of the
``focals`` scan rig, small enough for a test (8 views, ~400 points, exact tracks plus 0.3 px noise).
Real pycolmap bundle adjustment throughout; the truth is the rig's own cameras, not a fit.
"""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from flame_prior.colmap_family import camera_family, principal_points_near_centre

W, H, N = 800, 600, 8


def _look_at(centre: np.ndarray) -> np.ndarray:
    """World-to-camera rotation (OpenCV axes) of a camera at ``centre`` looking at the origin, y down."""
    z = -centre / np.linalg.norm(centre)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def _rig(seed: int = 0):
    """The reconstruction bundle-adjusted with every principal point held at the image centre (COLMAP's
    default for estimated cameras), and the true ``(R, f)`` of each view."""
    rng = np.random.default_rng(seed)
    head = rng.normal(size=(300, 3))
    head = 0.1 * head / np.linalg.norm(head, axis=1, keepdims=True) * rng.uniform(0.8, 1.0, (300, 1))
    shell = rng.normal(size=(600, 3))
    shell = 2.5 * shell / np.linalg.norm(shell, axis=1, keepdims=True)
    X = np.vstack([head, shell])
    rec = pycolmap.Reconstruction()
    truth, visible = [], []
    for i, yaw in enumerate(np.radians(np.linspace(-60, 60, N))):
        f = rng.uniform(600, 1150)
        pp = np.array([W / 2, H / 2]) + rng.uniform(10, 18, 2) * rng.choice([-1, 1], 2)
        el, d = np.radians(rng.uniform(-10, 15)), rng.uniform(0.9, 1.2)
        C = d * np.array([np.sin(yaw) * np.cos(el), np.sin(el), np.cos(yaw) * np.cos(el)])
        R = _look_at(C)
        t = -R @ C
        truth.append((R, f))
        rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=i + 1, model="SIMPLE_PINHOLE", width=W, height=H,
                                                        params=[f, W / 2, H / 2]))
        pc = X @ R.T + t
        uv = f * pc[:, :2] / pc[:, 2:] + pp + rng.normal(0.0, 0.3, (len(X), 2))
        visible.append((pc[:, 2] > 0) & (uv >= 0).all(1) & (uv[:, 0] < W) & (uv[:, 1] < H))
        image = pycolmap.Image(name=f"{i}.png", camera_id=i + 1, image_id=i + 1,
                               points2D=[pycolmap.Point2D(xy=p) for p in uv])
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
    for j in range(len(X)):
        seen = [i for i in range(N) if visible[i][j]]
        if len(seen) >= 2:
            track = pycolmap.Track()
            for i in seen:
                track.add_element(i + 1, j)
            rec.add_point3D(X[j], track)
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = False
    options.refine_extra_params = False
    options.print_summary = False
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    pycolmap.create_default_bundle_adjuster(options, config, rec).solve()
    return rec, truth


def _errors(rec, truth) -> tuple[float, float]:
    """Median rotation error (degrees, after the best common rotation) and median focal error (%)."""
    Rf = np.array([rec.images[i + 1].cam_from_world().matrix()[:, :3] for i in range(N)])
    Rt = np.array([R for R, _ in truth])
    U, _, Vt = np.linalg.svd(np.einsum("nji,njk->ik", Rf, Rt))
    A = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    rel = np.einsum("nij,jk,nlk->nil", Rf, A, Rt)  # R_fit A R_true^T
    angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    focal = [abs(rec.cameras[i + 1].params[0] / f - 1) * 100 for i, (_, f) in enumerate(truth)]
    return float(np.median(angle)), float(np.median(focal))


def test_principal_points_near_centre_beat_held_centres():
    rec, truth = _rig()
    rec.update_point_3d_errors()
    held_error = rec.compute_mean_reprojection_error()
    held_rot, held_focal = _errors(rec, truth)
    centres = np.tile([W / 2, H / 2], (N, 1))
    out, figures = principal_points_near_centre(rec, [i + 1 for i in range(N)], centres, refine_extra=False)
    rot, focal = _errors(out, truth)
    assert held_rot > 1.0  # the rig shows the problem: the off-centre principal points cost a degree
    assert rot < 0.6 * held_rot and focal < 0.7 * held_focal
    assert figures["reprojection_error_px"] < 0.8 * held_error  # the tracks agree better with free principal points
    assert figures["principal_point_offset_rms_px"] > 5.0  # the principal points did leave the centres
    assert _errors(rec, truth) == (held_rot, held_focal)  # the input reconstruction is left unchanged


def test_camera_family_is_linear_and_holds_its_reference():
    rec, _ = _rig(seed=1)
    ids = [i + 1 for i in range(N)]
    base, family = camera_family(rec, ids, refine_extra=False)
    ref = family.reference
    # The reference camera is the one held: a unit of u_k moves its own intrinsics by exactly one step.
    f_ref = base.cameras[ids[ref]].params[0]
    np.testing.assert_allclose(family.intrinsics[:, ref], np.diag([0.01 * f_ref, 0.01 * W, 0.01 * H]), atol=1e-6)
    # The other cameras move, and every camera's principal point with them (the directions the tracks leave open).
    others = [i for i in range(N) if i != ref]
    assert np.abs(family.intrinsics[:, others, 1:]).max() > 0.5
    assert np.abs(family.rotation[:, others]).max() > 1e-4
    with pytest.raises(ValueError, match="need 3"):
        camera_family(rec, [1, 2, None, None, None, None, None, None], refine_extra=False)
