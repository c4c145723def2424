"""The cameras COLMAP's tracks cannot tell apart when every view has its own focal length and principal point.

A rig of different cameras (a focal length and a principal point per view, none known) all aimed at one
head is a critical configuration for self-calibration: the feature tracks fix the cameras only up to a
few degrees of freedom shared by all views. Measured on the ``focals`` scan rig (10 views, 1200-2300 px
focal lengths, principal points 20-35 px off centre; README, *Scan rigs*): with every focal length and
principal point free, COLMAP's bundle adjustment reaches the reprojection error of the true cameras
(0.10 px) with principal points up to 50 px off and rotations 0.5-1 deg off; holding ONE camera's
``f, cx, cy`` at the truth puts every other camera right (0.02 deg, focal 0.02 %). Holding the principal
points at the image centre (COLMAP's default) is 0.67 px and 1.3 deg off.

So the tracks leave three numbers open: the intrinsics of one reference camera. :func:`camera_family`
computes the solution at a start value of them (the base: COLMAP's focal, the image centre) and how every
camera moves when each of the three moves (the tangents, by finite differences; linear to 0.05 deg and
0.05 % of the focal over 3 % of the focal and 30 px, measured). :func:`principal_points_near_centre`
then picks the three numbers that put the principal points, all views together, as near their image
centres as the tracks allow (least squares), and bundle-adjusts once more there: on the rig 0.06 deg
median, 0.16 max, focal lengths 0.3 % / 0.6 %, where the principal points held at the centres gave
1.3 / 1.9 deg and 2 / 3 %. Every other number stays the tracks' own.

FLAME's landmarks were tried as the judge of the three numbers (the fit's multi-view energy with the
family's coordinates free): its minimum wandered over +-9 % of the focal within 3 % of the energy, the
detector's bias larger than what the family changes in the landmarks. The image centre is the prior
COLMAP itself uses; here it is one prior over all views instead of a constraint on each.

pycolmap only (no torch): this runs inside the intrinsics step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CameraFamily", "bundle_adjust", "camera_family", "principal_points_near_centre", "TANGENT_STEP"]

#: The finite-difference steps of the reference camera's ``f, cx, cy``: 1 % of its focal length, 1 % of
#: the image width, 1 % of the image height. One unit of :attr:`CameraFamily` coordinates is one step.
TANGENT_STEP = (0.01, 0.01, 0.01)

#: Most bundle adjustments of :func:`principal_points_near_centre` after the family's (Gauss-Newton steps; it
#: stops when a step moves ``u`` by less than 0.05).
_ITERATIONS = 4


@dataclass
class CameraFamily:
    """The cameras of one COLMAP reconstruction as a function of three numbers ``u`` (module docstring).

    With ``u = 0`` the cameras are the reconstruction's (:attr:`ColmapResult.w2c`, ``view_focal_px``, ...);
    for ``u`` the camera of view ``i`` is, to first order,

        R_i(u) = exp([sum_k u_k rotation[k, i]]x) R_i,   C_i(u) = C_i + sum_k u_k centre[k, i],
        (f, cx, cy)_i(u) = (f, cx, cy)_i + sum_k u_k intrinsics[k, i],

    with ``R_i`` world-to-camera and ``C_i`` the camera centre, in COLMAP's frame.

    Attributes:
        rotation: ``(3, N, 3)`` axis-angle change (radians) of each view's rotation per unit of ``u_k``.
        centre: ``(3, N, 3)`` change of each view's camera centre (COLMAP's units).
        intrinsics: ``(3, N, 3)`` change of each view's ``f, cx, cy`` (COLMAP's pixels).
        reference: the view whose intrinsics ``u`` moves (its camera has the most track observations).
    """

    rotation: np.ndarray
    centre: np.ndarray
    intrinsics: np.ndarray
    reference: int


def bundle_adjust(rec, refine_focal: bool, refine_principal_point: bool, refine_extra: bool,
                  held_camera: int | None = None, tight: bool = False) -> None:
    """Bundle-adjust ``rec`` in place over its registered images: poses, points and the cameras'
    intrinsics the flags free (``held_camera``: one camera whose intrinsics stay); gauge fixed by three
    points. ``tight``: converged to 1e-12 in 200 iterations (a solution read off small differences).
    The adjuster itself, not ``pycolmap.bundle_adjustment``, which logs past glog's level."""
    import pycolmap

    options = pycolmap.BundleAdjustmentOptions()
    options.refine_focal_length = refine_focal
    options.refine_principal_point = refine_principal_point
    options.refine_extra_params = refine_extra
    options.print_summary = False
    if tight:
        solver = options.ceres.solver_options
        solver.function_tolerance, solver.gradient_tolerance, solver.parameter_tolerance = 1e-12, 1e-12, 1e-12
        solver.max_num_iterations = 200
    adjust = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        adjust.add_image(image_id)
    if held_camera is not None:
        adjust.set_constant_cam_intrinsics(held_camera)
    adjust.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    pycolmap.create_default_bundle_adjuster(options, adjust, rec).solve()


def _bundle_adjust(rec, reference_camera: int, refine_extra: bool) -> None:
    """:func:`bundle_adjust` of every camera's ``f, cx, cy`` (and lens when ``refine_extra``) except the
    reference camera's, converged tightly: the family is read off small differences."""
    bundle_adjust(rec, True, True, refine_extra, held_camera=reference_camera, tight=True)


def _f_cx_cy_index(model_name: str) -> tuple[int, int, int, int]:
    """Where ``fx, fy, cx, cy`` sit in a COLMAP camera's params (``fx == fy`` for one-focal models)."""
    return (0, 0, 1, 2) if model_name in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") else (0, 1, 2, 3)


def _state(rec, image_ids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(N, 3, 3)`` rotations, ``(N, 3)`` centres and ``(N, 3)`` ``f, cx, cy`` of the images ``image_ids``."""
    R, C, K = [], [], []
    for image_id in image_ids:
        image = rec.images[image_id]
        M = image.cam_from_world().matrix()
        R.append(M[:, :3])
        C.append(-M[:, :3].T @ M[:, 3])
        camera = rec.cameras[image.camera_id]
        p = list(camera.params)
        fx, fy, cx, cy = _f_cx_cy_index(camera.model_name)
        K.append([0.5 * (p[fx] + p[fy]), p[cx], p[cy]])
    return np.array(R), np.array(C), np.array(K)


def _rotation_vectors(R: np.ndarray) -> np.ndarray:
    """``(N, 3)`` axis-angle of rotation matrices ``(N, 3, 3)`` (small angles: no branch at pi)."""
    w = np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], axis=1) / 2.0
    s = np.linalg.norm(w, axis=1, keepdims=True)
    c = (np.trace(R, axis1=1, axis2=2)[:, None] - 1.0) / 2.0
    angle = np.arctan2(s, c)
    return w * np.where(s > 1e-12, angle / np.maximum(s, 1e-30), 1.0)


def camera_family(rec, view_image_ids: list[int | None], refine_extra: bool):
    """The base reconstruction and its :class:`CameraFamily` (module docstring).

    Args:
        rec: a pycolmap ``Reconstruction`` with one camera per image (left unchanged).
        view_image_ids: the image id of each view, None where the view did not register.
        refine_extra: whether the cameras' lens parameters are refined too (a kept estimated lens).

    Returns:
        ``(base, family)``: the reconstruction bundle-adjusted with every camera's focal length and principal
        point free except the reference camera's (held where the mapper left it: COLMAP's focal, the image
        centre), and the family around it, indexed like ``view_image_ids`` (zeros for views not registered),
        in COLMAP's pixels.
    """
    import pycolmap

    registered = [i for i in view_image_ids if i is not None and rec.images[i].has_pose]
    if len(registered) < 3:
        raise ValueError(f"camera_family: {len(registered)} registered views, need 3")
    cameras = [rec.images[i].camera_id for i in registered]
    if len(set(cameras)) != len(cameras):
        raise ValueError("camera_family: the views share cameras (one camera per view needed)")
    counts = {i: rec.images[i].num_points3D for i in registered}
    ref_image = max(registered, key=lambda i: counts[i])
    ref_camera = rec.images[ref_image].camera_id
    base = pycolmap.Reconstruction(rec)
    _bundle_adjust(base, ref_camera, refine_extra)
    R0, C0, K0 = _state(base, registered)
    camera = base.cameras[ref_camera]
    fx, fy, cx, cy = _f_cx_cy_index(camera.model_name)
    steps = (TANGENT_STEP[0] * float(camera.params[fx]), TANGENT_STEP[1] * camera.width,
             TANGENT_STEP[2] * camera.height)
    n = len(view_image_ids)
    rotation, centre, intrinsics = np.zeros((3, n, 3)), np.zeros((3, n, 3)), np.zeros((3, n, 3))
    rows = [j for j, i in enumerate(view_image_ids) if i is not None and rec.images[i].has_pose]
    for k, (slots, step) in enumerate(zip(((fx, fy), (cx,), (cy,)), steps)):
        moved = pycolmap.Reconstruction(base)
        params = list(moved.cameras[ref_camera].params)
        for s in set(slots):  # fx and fy are one parameter in the one-focal models
            params[s] += step
        moved.cameras[ref_camera].params = params
        _bundle_adjust(moved, ref_camera, refine_extra)
        R, C, K = _state(moved, registered)
        rotation[k, rows] = _rotation_vectors(R @ np.transpose(R0, (0, 2, 1)))
        centre[k, rows] = C - C0
        intrinsics[k, rows] = K - K0
    if not (np.isfinite(rotation).all() and np.isfinite(centre).all() and np.isfinite(intrinsics).all()):
        raise RuntimeError("camera_family: a bundle adjustment gave NaN")
    return base, CameraFamily(rotation, centre, intrinsics, view_image_ids.index(ref_image))



def principal_points_near_centre(rec, view_image_ids: list[int | None], centres: np.ndarray, refine_extra: bool):
    """The member of the :class:`CameraFamily` of ``rec`` whose principal points lie nearest their image centres.

    Args:
        rec: a pycolmap ``Reconstruction``, one camera per image (left unchanged).
        view_image_ids: the image id of each view, None where the view did not register.
        centres: ``(N, 2)`` each view's image centre in COLMAP's pixels.
        refine_extra: whether the cameras' lens parameters are refined too.

    Returns:
        ``(reconstruction, figures)``: bundle-adjusted with the reference camera's intrinsics at the least-squares
        choice (every other camera's focal length and principal point free) and ``figures``: ``u`` (the family
        coordinates), ``reference`` (view index), the principal points' RMS offset from the centres before (all
        held at the centres: 0) and after, pixels, and the reprojection error before and after.
    """
    import pycolmap

    rec.update_point_3d_errors()
    error_held = float(rec.compute_mean_reprojection_error())
    base, family = camera_family(rec, view_image_ids, refine_extra)
    rows = [j for j, i in enumerate(view_image_ids) if i is not None and rec.images[i].has_pose]
    _, _, K = _state(base, [view_image_ids[j] for j in rows])
    offset = (K[:, 1:] - np.asarray(centres, dtype=np.float64)[rows]).reshape(-1)  # (2M,)
    J = np.transpose(family.intrinsics[:, rows, 1:], (1, 2, 0)).reshape(-1, 3)  # (2M, 3)
    ref_camera = base.images[view_image_ids[family.reference]].camera_id
    camera = base.cameras[ref_camera]
    fx, fy, cx, cy = _f_cx_cy_index(camera.model_name)
    start = list(camera.params)
    steps = (TANGENT_STEP[0] * start[fx], TANGENT_STEP[1] * camera.width, TANGENT_STEP[2] * camera.height)
    u = np.zeros(3)
    chosen = base
    for _ in range(_ITERATIONS):  # Gauss-Newton with the base's tangents: the family bends away from the base
        du = np.linalg.lstsq(J, -offset, rcond=None)[0]
        u = u + du
        chosen = pycolmap.Reconstruction(base)
        params = list(start)
        for k, slots in enumerate(((fx, fy), (cx,), (cy,))):
            for s in set(slots):
                params[s] += u[k] * steps[k]
        chosen.cameras[ref_camera].params = params
        _bundle_adjust(chosen, ref_camera, refine_extra)
        _, _, K_after = _state(chosen, [view_image_ids[j] for j in rows])
        offset = (K_after[:, 1:] - np.asarray(centres, dtype=np.float64)[rows]).reshape(-1)
        if np.abs(du).max() < 0.05:
            break
    chosen.update_point_3d_errors()
    figures = {"u": u.tolist(), "reference": int(family.reference),
               "principal_point_offset_rms_px": float(np.sqrt(np.mean(offset ** 2))),
               "reprojection_error_held_px": error_held,
               "reprojection_error_px": float(chosen.compute_mean_reprojection_error())}
    return chosen, figures

