"""Fit stage 2b — multi-view geometry: COLMAP's registered cameras brought into FLAME's frame.

Public entry: :func:`multiview_stage`, run by :func:`flame_prior.fit.fitter.fit_flame` after the
landmark stage when the intrinsics step handed over COLMAP's poses (:class:`ColmapPoses`).

COLMAP's relative poses are precise (sub-pixel feature tracks) but live in an arbitrary frame and
scale; the landmark cameras are in FLAME's frame and metric but carry the detector's bias (a few
degrees, growing with yaw). A similarity ``x_colmap = s A x_flame + b`` joins the two. For a view
with COLMAP pose ``(R_c, t_c)`` the camera in FLAME's frame is then

    R = R_c A,    t = R_c d + k t_c,    with  d = b / s,  k = 1 / s.

1. **Start** (closed form, robust): ``A`` by RANSAC over the views (each view's ``R_c^T R`` is a
   hypothesis; inliers within :attr:`FitterConfig.multiview_max_rotation_deg`) then the chordal L2
   mean of the inliers; ``s, b`` by iteratively reweighted (Cauchy) least squares on the camera
   centres ``C_colmap = s A C_flame + b``. A view whose COLMAP camera disagrees with its landmark
   camera beyond the threshold keeps its landmark camera and is reported.
2. **Joint refinement**: the 7 similarity parameters, the FLAME parameters and the cameras of the
   views without a COLMAP pose together on the robust landmark energy (L-BFGS), so that the tracks
   give the relative geometry and FLAME gives the frame, the scale and the head. Each of its two
   rounds starts with the similarity alone solved for the head as it is
   (:func:`similarity_gauss_newton`: Levenberg-Marquardt on 7 parameters in float64, milliseconds):
   the closed-form start has the landmark cameras' weak depth, 10-35x the refined energy on the scan
   rigs and the shared scene, which first-order steps on everything took ~50 evaluations of FLAME and
   the camera chain to remove, and did not always (a per-view COLMAP model of the small-faces rig
   stopped at 5x its optimum). Then a view whose
   landmarks the COLMAP camera cannot explain (landmark error far above the others') is released
   to its landmark camera and the refinement repeats.

The cameras that follow COLMAP are marked in :attr:`FitState.camera_fixed`: the photometric stage
leaves them where they are.

3. **Views without a face** that COLMAP registered (``poses.faceless``: a back view of a ring of
   cameras) get COLMAP's camera through the final similarity, unchecked by any landmark: they are
   listed in the stage's ``details["faceless_cameras"]`` (FLAME frame, OpenCV world-to-camera,
   intrinsics, a flag saying so), not among the fitted views.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from flame_prior.camera_trust import cross_matrix, pinhole_jacobian
from flame_prior.fit.config import FitterConfig
from flame_prior.fit.state import (FitState, LandmarkTargets, StageLog, free_parameters, landmark_energy,
                                   per_view_error_px, prior_energy, stage_log)
from flame_prior.flame import head_yaw_deg
from flame_prior.geometry import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle
from flame_prior.intrinsics import ColmapPoses, FacelessCameras

__all__ = ["multiview_stage", "lbfgs_evaluations", "similarity_from_cameras", "similarity_gauss_newton", "faceless_cameras", "FACELESS_FLAG"]

_FLAME_NAMES = ("shape", "expression", "jaw", "eyes", "neck")


def _project_rotation(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt


def _angles_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    cos = (np.einsum("nij,nij->n", Ra, Rb) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def similarity_from_cameras(R: np.ndarray, t: np.ndarray, colmap_w2c: np.ndarray, max_rotation_deg: float,
                            ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """Robust similarity from COLMAP's frame to the frame of the cameras ``R, t``.

    Args:
        R, t: ``(N, 3, 3)``, ``(N, 3)`` world-to-camera poses in the target frame (FLAME's).
        colmap_w2c: ``(N, 4, 4)`` COLMAP's world-to-camera poses; rows with NaN are not used.
        max_rotation_deg: a view whose COLMAP rotation, after the alignment, is further than this
            from ``R`` is an outlier.

    Returns:
        ``A (3, 3)``, ``d (3,)``, ``k``: the cameras ``R_c A`` and ``R_c d + k t_c`` (module
        docstring); ``inlier (N,)`` bool; ``rotation_error_deg (N,)`` (NaN where no COLMAP pose).
    """
    n = len(R)
    ok = np.isfinite(colmap_w2c).all(axis=(1, 2))
    Rc, tc = colmap_w2c[:, :3, :3], colmap_w2c[:, :3, 3]
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        raise ValueError("similarity_from_cameras: no COLMAP pose")
    # RANSAC: every view proposes A = Rc^T R; keep the one most views agree with.
    best, best_key = None, None
    for j in idx:
        A = Rc[j].T @ R[j]
        err = _angles_deg(Rc[idx] @ A, R[idx])
        key = (int((err < max_rotation_deg).sum()), -float(np.minimum(err, max_rotation_deg).sum()))
        if best_key is None or key > best_key:
            best, best_key = A, key
    A = best
    for _ in range(5):  # chordal L2 mean of the inliers, inliers re-chosen
        err = np.full(n, np.nan)
        err[idx] = _angles_deg(Rc[idx] @ A, R[idx])
        inlier = ok & (np.nan_to_num(err, nan=np.inf) < max_rotation_deg)
        A = _project_rotation(np.einsum("nji,njk->ik", Rc[inlier], R[inlier]))
    err = np.full(n, np.nan)
    err[idx] = _angles_deg(Rc[idx] @ A, R[idx])
    inlier = ok & (np.nan_to_num(err, nan=np.inf) < max_rotation_deg)

    # Centres: C_colmap = s A C + b, by Cauchy IRLS (the landmark cameras' depth is their weak axis).
    C = -np.einsum("nji,nj->ni", R, t)
    Cc = -np.einsum("nji,nj->ni", Rc, tc)
    P, Q = C[inlier] @ A.T, Cc[inlier]
    w = np.ones(len(P))
    for _ in range(10):
        pm, qm = (w[:, None] * P).sum(0) / w.sum(), (w[:, None] * Q).sum(0) / w.sum()
        s = float((w * ((P - pm) * (Q - qm)).sum(1)).sum() / max((w * ((P - pm) ** 2).sum(1)).sum(), 1e-30))
        if len(P) < 2 or not s > 0:  # one view, or degenerate centres: the scale of that view's distance
            s = float(np.linalg.norm(Q[0]) / max(np.linalg.norm(P[0]), 1e-30)) if not s > 0 else s
        b = qm - s * pm
        r = np.linalg.norm(s * P + b - Q, axis=1)
        scale = max(float(np.median(r)), 1e-12)
        w = 1.0 / (1.0 + (r / (2.0 * scale)) ** 2)
    return A, b / s, 1.0 / s, inlier, err


def similarity_gauss_newton(X: np.ndarray, Rc: np.ndarray, tc: np.ndarray, f: np.ndarray, c: np.ndarray,
                            targets: np.ndarray, weight: np.ndarray, scale: np.ndarray, robust_scale: float,
                            A: np.ndarray, d: np.ndarray, log_k: float, iterations: int = 15,
                            ) -> tuple[np.ndarray, np.ndarray, float, list[float]]:
    """The similarity ``(A, d, log_k)`` (module docstring) that minimises the robust landmark energy of
    :func:`flame_prior.fit.state.landmark_energy` with the head held: Levenberg-Marquardt on its 7
    parameters, the robust kernel by reweighting (IRLS), in float64 with the analytic Jacobian.

    Why: the closed-form start puts the cameras' depth and scale where the landmark cameras had them (their
    weak axis), ~30x the refined energy on the shared scene; first-order steps on the joint problem spent
    ~50 evaluations of FLAME and the camera chain to remove that, this costs a few milliseconds. The joint
    refinement that follows starts at the similarity's optimum for the current head.

    Args:
        X: ``(V, L, 3)`` world landmarks (FLAME frame) of the V views that follow COLMAP.
        Rc, tc: ``(V, 3, 3)``, ``(V, 3)`` their COLMAP world-to-camera poses.
        f, c: ``(V, 2)`` focal lengths and principal points, pixels.
        targets: ``(V, L, 2)`` detected landmarks, pixels; ``weight`` ``(V, L)`` their weights
            (``LandmarkTargets.view_weight``); ``scale`` ``(V,)`` face sizes, pixels.
        robust_scale: ``c`` of the Geman-McClure kernel, in face sizes.
        A, d, log_k: the start.

    Returns:
        ``A``, ``d``, ``log_k`` and the energy before and after each accepted step.
    """
    c2 = robust_scale ** 2

    def residuals(A, d, log_k):
        Y = X @ A.T  # (V, L, 3)
        P = (Y + d) @ Rc.transpose(0, 2, 1) + np.exp(log_k) * tc[:, None, :]
        P[..., 2] = np.where(np.abs(P[..., 2]) < 1e-9, 1e-9, P[..., 2])  # as project_points
        uv = f[:, None, :] * P[..., :2] / P[..., 2:] + c[:, None, :]
        e = (uv - targets) / scale[:, None, None]
        return Y, P, e

    def energy(e):
        q = (e ** 2).sum(-1)
        return float((weight * q / (q + c2)).sum())

    Y, P, e = residuals(A, d, log_k)
    history = [energy(e)]
    lam = 1e-3
    for _ in range(iterations):
        q = (e ** 2).sum(-1)
        w = weight * c2 / (q + c2) ** 2  # rho'(q): the IRLS weight of the kernel
        # dP / d(omega, d, log_k), omega a left increment of A: d(exp([omega]x) Y) / d omega = -[Y]x at 0.
        dP = np.concatenate([-(Rc[:, None] @ cross_matrix(Y)),
                             np.broadcast_to(Rc[:, None], Y.shape + (3,)),
                             np.broadcast_to((np.exp(log_k) * tc)[:, None, :, None], Y.shape + (1,))], -1)
        J_proj = pinhole_jacobian(P, f[:, None, 0], f[:, None, 1])  # d uv / dP
        J = (J_proj @ dP / scale[:, None, None, None]).reshape(-1, 7)  # (V L 2, 7), over the face size
        wJ = J * np.repeat(w.reshape(-1), 2)[:, None]
        H, g = wJ.T @ J, wJ.T @ e.reshape(-1)
        improved = False
        for _ in range(8):
            try:
                step = -np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), g)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            turn = axis_angle_to_rotation_matrix(torch.from_numpy(step[:3])).numpy()
            A_new, d_new, lk_new = turn @ A, d + step[3:6], log_k + float(step[6])
            Y_new, P_new, e_new = residuals(A_new, d_new, lk_new)
            E_new = energy(e_new)
            if np.isfinite(E_new) and E_new < history[-1]:
                A, d, log_k, Y, P, e = A_new, d_new, lk_new, Y_new, P_new, e_new
                lam = max(lam / 3.0, 1e-9)
                improved = history[-1] - E_new > 1e-10 * history[-1]
                history.append(E_new)
                break
            lam *= 4.0
        if not improved:
            break
    return A, d, log_k, history


def _colmap_cameras(Rc: Tensor, tc: Tensor, omega: Tensor, A0: Tensor, d: Tensor, log_k: Tensor):
    """``(M, 3, 3)``, ``(M, 3)`` FLAME-frame cameras of COLMAP poses ``Rc, tc`` under the similarity
    ``A = exp([omega]x) A0``, ``d``, ``k = exp(log_k)``."""
    A = axis_angle_to_rotation_matrix(omega) @ A0
    return Rc @ A, (Rc @ d[:, None])[..., 0] + torch.exp(log_k) * tc


def _refine(st: FitState, tg: LandmarkTargets, cfg: FitterConfig, names: list[str], use: np.ndarray,
            Rc: Tensor, tc: Tensor, A0: Tensor, d0: Tensor, log_k0: Tensor, steps: int, tick):
    """L-BFGS on the similarity, the FLAME parameters ``names`` and the cameras of views not in ``use``.

    Each of the two rounds (the jaw contour re-chosen by each view's yaw) first solves the similarity alone
    with the head held (:func:`similarity_gauss_newton`), then L-BFGS refines everything together.

    Returns the state with every camera written (``use`` views from the similarity), the refined
    ``(A, d, log_k)``, the L-BFGS energy history and each round's similarity pre-solve (landmark energy
    before and after, steps)."""
    dtype, device = st.cam_t.dtype, st.cam_t.device
    use_t = torch.as_tensor(use, device=device)
    free_views = torch.as_tensor(~use, device=device)
    omega = torch.zeros(3, dtype=dtype, device=device, requires_grad=True)
    d = d0.clone().requires_grad_(True)
    log_k = log_k0.clone().requires_grad_(True)
    flame = {k: getattr(st, k).detach().clone().requires_grad_(True) for k in names}
    cam_rot = st.cam_rot.detach().clone().requires_grad_(True)
    cam_t = st.cam_t.detach().clone().requires_grad_(True)
    params = [omega, d, log_k, *flame.values()] + ([cam_rot, cam_t] if bool(free_views.any()) else [])

    all_used = bool(use.all())

    def assemble(omega, d, log_k, cam_rot, cam_t) -> FitState:
        R_use, t_use = _colmap_cameras(Rc[use_t], tc[use_t], omega, A0, d, log_k)
        if all_used:  # every camera from the similarity: the same values without scattering into a copy
            return st.replace(cam_rot=rotation_matrix_to_axis_angle(R_use), cam_t=t_use, **flame), R_use
        R = axis_angle_to_rotation_matrix(cam_rot).clone()
        t = cam_t.clone()
        R[use_t], t[use_t] = R_use, t_use
        return st.replace(cam_rot=rotation_matrix_to_axis_angle(R), cam_t=t, **flame), R

    history: list[float] = []
    presolves: list[dict] = []
    for _ in range(2):  # the jaw-contour landmarks follow each view's yaw: re-chosen once
        with torch.no_grad():
            _, R = assemble(omega, d, log_k, cam_rot, cam_t)
            yaw = head_yaw_deg(R)
            # The similarity to its optimum for this head first (Levenberg-Marquardt, milliseconds): the
            # L-BFGS below then starts at the scale and offset the tracks and the head agree on.
            A_cur = axis_angle_to_rotation_matrix(omega) @ A0
            X = st.replace(**flame).landmarks3d(yaw)[use_t]
            cams = st.cameras()
            f, c = torch.stack([cams.fx, cams.fy], -1), torch.stack([cams.cx, cams.cy], -1)
            A_np, d_np, lk, h = similarity_gauss_newton(
                *(a.double().cpu().numpy() for a in (X, Rc[use_t], tc[use_t], f[use_t], c[use_t], tg.points[use_t],
                                                     tg.view_weight[use_t], tg.scale[use_t])),
                cfg.robust_scale, A_cur.double().cpu().numpy(), d.double().cpu().numpy(), float(log_k))
            presolves.append({"energy_before": h[0], "energy_after": h[-1], "steps": len(h) - 1})
            A0 = torch.as_tensor(A_np, dtype=dtype, device=device)
            omega.zero_()
            d.copy_(torch.as_tensor(d_np, dtype=dtype, device=device))
            log_k.fill_(lk)

        def energy(s: FitState) -> Tensor:
            return landmark_energy(s.project(s.landmarks3d(yaw)), tg, cfg.robust_scale) + prior_energy(s, cfg)

        history += minimise_lbfgs(lambda: energy(assemble(omega, d, log_k, cam_rot, cam_t)[0]), params, steps, tick)
    with torch.no_grad():
        new, _ = assemble(omega, d, log_k, cam_rot, cam_t)
        A = axis_angle_to_rotation_matrix(omega) @ A0
    new = new.replace(**{k: getattr(new, k).detach() for k in ("cam_rot", "cam_t", *names)})
    return new, (A.detach(), d.detach(), log_k.detach()), history, presolves


def lbfgs_evaluations(steps: int) -> int:
    """The most energy evaluations :func:`minimise_lbfgs` makes in ``steps`` iterations (torch's LBFGS default)."""
    return int(steps * 1.25)


def minimise_lbfgs(energy: Callable[[], Tensor], params: list[Tensor], steps: int, tick: Callable[[], None]) -> list[float]:
    """Minimise ``energy()`` over the tensors ``params`` in place by SciPy's L-BFGS-B (no bounds), at most
    ``steps`` iterations and ``1.25 steps`` evaluations (torch's LBFGS defaults); the energy per evaluation.

    Not ``torch.optim.LBFGS``: building any ``torch.optim`` optimiser imports ``torch._dynamo``, about 3 s
    of CPU once per process, more than this whole stage (``scipy.optimize``: 0.5 s). Evaluated in float64.
    """
    from scipy.optimize import minimize

    sizes = [p.numel() for p in params]
    history: list[float] = []

    def load(x: np.ndarray) -> None:
        with torch.no_grad():
            for p, chunk in zip(params, np.split(x, np.cumsum(sizes)[:-1])):
                p.copy_(torch.as_tensor(chunk, dtype=p.dtype, device=p.device).reshape(p.shape))

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        load(x)
        loss = energy()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        history.append(float(loss.detach()))
        tick()
        return history[-1], torch.cat([g.reshape(-1) for g in flat]).detach().cpu().double().numpy()

    x0 = torch.cat([p.detach().reshape(-1) for p in params]).cpu().double().numpy()
    res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": steps, "maxfun": lbfgs_evaluations(steps), "maxcor": 20, "ftol": 1e-12,
                            "gtol": 1e-10})
    load(res.x)
    return history


#: COLMAP's model is rejected as a whole when the median landmark error of the views that follow it
#: exceeds this many times ``FitterConfig.multiview_max_landmark_error`` (a good scene: a few %).
INCONSISTENT_FACTOR = 3.0

#: The flag every camera of such a scene gets (``StageLog.details["scene_flags"]``, read by the fitter).
INCONSISTENT_FLAG = "intrinsics not trusted: COLMAP's model does not explain the faces (multi-view stage)"


#: The flag of a camera that only COLMAP gave (no face detected in its image).
FACELESS_FLAG = "no face detected: COLMAP's camera through the similarity, no landmark check"


def faceless_cameras(cams: FacelessCameras, A: Tensor, d: Tensor, log_k: Tensor) -> list[dict]:
    """COLMAP's cameras of images without a face in FLAME's frame (``R_c A``, ``R_c d + k t_c``), as
    ``fit_summary.json`` camera entries (name, R, t, fx, fy, cx, cy, width, height, distortion, flags)."""
    A_np, d_np, k = A.double().cpu().numpy(), d.double().cpu().numpy(), float(torch.exp(log_k).item())
    out = []
    for i, name in enumerate(cams.names):
        Rc, tc = cams.w2c[i, :3, :3], cams.w2c[i, :3, 3]
        entry = {"name": name, "R": (Rc @ A_np).tolist(), "t": (Rc @ d_np + k * tc).tolist(),
                 "fx": float(cams.fx[i]), "fy": float(cams.fy[i]), "cx": float(cams.cx[i]), "cy": float(cams.cy[i]),
                 "width": int(cams.width[i]), "height": int(cams.height[i]), "source": "colmap", "trusted": False,
                 "flags": [FACELESS_FLAG]}
        if cams.distortion is not None:
            entry["distortion"] = dict(zip(("k1", "k2", "p1", "p2", "k3"), map(float, cams.distortion[i])))
        out.append(entry)
    return out


def multiview_stage(st: FitState, tg: LandmarkTargets, poses: ColmapPoses, names: list[str], cfg: FitterConfig,
                    tick: Callable[[], None]) -> tuple[FitState, StageLog]:
    """COLMAP's cameras in FLAME's frame, refined with FLAME on the landmarks (module docstring).

    Args:
        st: the landmark stage's state.
        tg: the landmark targets.
        poses: COLMAP's poses, indexed like the views.
        names: the views' names, for the notes.
        cfg: :attr:`FitterConfig.multiview_max_rotation_deg`, ``multiview_steps``, priors.
        tick: progress callback (one per energy evaluation).

    Returns:
        The new state (``camera_fixed`` marks the cameras that follow COLMAP) and the stage's log,
        whose ``details`` hold the similarity, the views used and the views rejected with the reason.
    """
    started = time.perf_counter()
    n = len(names)
    notes: list[str] = []
    with torch.no_grad():
        R0 = axis_angle_to_rotation_matrix(st.cam_rot).double().cpu().numpy()
        t0 = st.cam_t.double().cpu().numpy()
    w2c = np.asarray(poses.w2c, dtype=np.float64)
    registered = np.asarray(poses.registered, dtype=bool) & np.isfinite(w2c).all(axis=(1, 2))
    details: dict = {"scene_kind": poses.scene_kind, "registered": int(registered.sum()), "views": n}
    if registered.sum() < 2:
        notes.append(f"multi-view: COLMAP posed {int(registered.sum())} of {n} views; landmark cameras kept")
        return st, stage_log("multiview", st, tg, started, 0, [], notes)

    A, d, k, inlier, rot_err = similarity_from_cameras(R0, t0, w2c, cfg.multiview_max_rotation_deg)
    rejected: dict[int, str] = {int(i): f"COLMAP rotation {rot_err[i]:.1f} deg from the landmark camera "
                                f"(limit {cfg.multiview_max_rotation_deg:g})" for i in np.flatnonzero(registered & ~inlier)}
    dtype, device = st.cam_t.dtype, st.cam_t.device
    T = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)  # noqa: E731
    Rc, tc = T(np.nan_to_num(w2c[:, :3, :3])), T(np.nan_to_num(w2c[:, :3, 3]))
    flame_names = [k for k in free_parameters(cfg, st.model, False) if k in _FLAME_NAMES]
    history: list[float] = []
    presolves: list[dict] = []
    sim = (T(A), T(d), T([np.log(k)]))
    new = st
    for attempt in range(3):
        use = inlier.copy()
        if use.sum() < 1:
            notes.append("multi-view: no COLMAP camera agrees with the landmark cameras; landmark cameras kept")
            return st, stage_log("multiview", st, tg, started, 0, [], notes)
        new, sim, h, pre = _refine(st, tg, cfg, flame_names, use, Rc, tc, *sim, steps=cfg.multiview_steps, tick=tick)
        history += h
        presolves += pre
        # A COLMAP camera the landmarks cannot follow at all is a wrong registration: release it.
        with torch.no_grad():
            err = per_view_error_px(new.project(new.landmarks3d(new.yaw())), tg) / tg.scale.cpu().numpy()
        typical = float(np.median(err[use]))
        bad = use & (err > max(4.0 * typical, cfg.multiview_max_landmark_error))
        if not bad.any() or attempt == 2:
            break
        for i in np.flatnonzero(bad):
            rejected[int(i)] = (f"landmark error {100 * err[i]:.1f} % of the face size with the COLMAP camera "
                                f"(others {100 * typical:.1f} %)")
        inlier &= ~bad
    if not new.finite():
        notes.append("multi-view: the refinement produced NaN/Inf; landmark cameras kept")
        return st, stage_log("multiview", st, tg, started, 0, history, notes)
    if typical > INCONSISTENT_FACTOR * cfg.multiview_max_landmark_error:
        # Not one bad registration but COLMAP's whole model: its cameras cannot explain the faces, so its
        # intrinsics (the focal the landmark cameras used too) are not this capture's. Its relative
        # rotations were still the best cameras on the scan rigs that showed it (ten cameras of
        # different focal lengths given one COLMAP camera: "focals" 0.97 deg median against 8.3 deg for
        # the landmark cameras, "small_faces" 0.69 against 2.6), so they are kept, and every camera is
        # flagged: before this rule a landmark camera 10 deg off went unflagged there.
        details["scene_flags"] = [INCONSISTENT_FLAG]
        notes.append(f"multi-view: COLMAP's cameras do not explain the faces (median landmark error "
                     f"{100 * typical:.0f} % of the face size with them, limit "
                     f"{100 * INCONSISTENT_FACTOR * cfg.multiview_max_landmark_error:.0f} %): its model, focal "
                     f"length included, is not this capture's (cameras of different focal lengths or lenses?); "
                     f"every camera is flagged. Pass the calibration (--intrinsics.file)")
    new = dataclasses.replace(new, camera_fixed=torch.as_tensor(use, device=device))
    A_t, d_t, log_k = sim
    if poses.faceless is not None:
        details["faceless_cameras"] = faceless_cameras(poses.faceless, A_t, d_t, log_k)
        notes.append(f"multi-view: {len(poses.faceless.names)} views without a detected face get COLMAP's camera "
                     f"through the similarity, unchecked by landmarks (flagged): {', '.join(poses.faceless.names)}")
    with torch.no_grad():
        moved = _angles_deg(axis_angle_to_rotation_matrix(new.cam_rot).double().cpu().numpy(), R0)
    details.update({
        "used": int(use.sum()),
        "rejected": [{"name": names[i], "reason": r} for i, r in sorted(rejected.items())],
        "similarity": {"A": A_t.double().cpu().numpy().tolist(), "d": d_t.double().cpu().numpy().tolist(),
                       "scale_colmap_per_metre": float(torch.exp(-log_k).item())},
        "rotation_change_deg": {"median": float(np.median(moved)), "max": float(np.max(moved))},
        "similarity_presolve": presolves,  # per refinement round: landmark energy before / after, LM steps
        "median_landmark_error_rel": typical,  # of the views that follow COLMAP, in face sizes (the rule above)
    })
    notes.append(f"multi-view: {int(use.sum())} of {n} cameras follow COLMAP's relative poses ({poses.scene_kind}), "
                 f"moved from the landmark cameras by {np.median(moved):.2f} deg median, {np.max(moved):.2f} max"
                 + (f"; {len(rejected)} COLMAP poses rejected: "
                    + "; ".join(f"{names[i]}: {r}" for i, r in sorted(rejected.items())) if rejected else ""))
    log = stage_log("multiview", new, tg, started, len(history), history, notes)
    log.details = details
    return new, log
