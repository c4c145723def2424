"""Stages 1 and 2 of the fit — rigid and landmarks: Levenberg-Marquardt on robust landmark
residuals (:func:`fit_landmarks_lm`). Each stage is a function from a :class:`FitState` to a new
state and its :class:`StageLog`; :func:`flame_prior.fit.fit_flame` runs them.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import cv2
import numpy as np
import torch
from torch import Tensor

from flame_prior.errors import FitError
from flame_prior.fit.config import FitterConfig
from flame_prior.fit.state import FitState, LandmarkTargets, StageLog, free_parameters, stage_log
from flame_prior.flame import FlameParams, head_yaw_deg, landmarks_from_vertices
from flame_prior.geometry import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle

__all__ = ["LandmarkProblem", "marquardt_step", "fit_landmarks_lm", "ViewsNotInitialised", "rigid_stage", "landmark_stage"]


# --------------------------------------------------------------------------------------------
# Levenberg-Marquardt on robust landmark residuals (stages 1 and 2)

_FLAME_NAMES = ("shape", "expression", "jaw", "eyes", "neck")


def _skew(q: Tensor) -> Tensor:
    """``(*, 3)`` -> ``(*, 3, 3)`` cross-product matrices, ``[q]x v = q x v``."""
    x, y, z = q.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*q.shape, 3)


class LandmarkProblem:
    """The robust landmark least squares of one Levenberg-Marquardt run: its residuals, their
    Jacobian (assembled from its structure) and its cost.

    Unknowns, in the Jacobian's column order: per view a left rotation perturbation ``d`` (3,
    ``R <- exp([d]x) R``) and a translation (3), then the log focal scale (when fitted), then the
    fitted FLAME parameters ``theta_f`` (``names`` in :data:`_FLAME_NAMES` order of appearance,
    flattened). With ``fixed_points`` (N, L, 3) the head is held fixed (the rigid stage).
    """

    def __init__(self, st: FitState, tg: LandmarkTargets, names: list[str], cfg: FitterConfig,
                 fixed_points: Tensor | None = None):
        self.st, self.tg, self.fixed_points = st, tg, fixed_points
        self.c = cfg.robust_scale
        self.n, self.L = tg.points.shape[:2]
        self.flame_names = [k for k in names if k in _FLAME_NAMES] if fixed_points is None else []
        priors = {"shape": cfg.shape_prior, "expression": cfg.expression_prior,
                  "jaw": cfg.pose_prior, "eyes": cfg.pose_prior, "neck": cfg.pose_prior}
        self.prior_weights = [priors[k] for k in self.flame_names]
        self.fit_focal = "log_focal" in names
        self.sizes = [getattr(st, k).numel() for k in self.flame_names]
        self.n_f = sum(self.sizes)
        self.n_cam = 6 * self.n + (1 if self.fit_focal else 0)

    def initial(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(R, t, log_focal, theta_f)`` of the state the problem starts from."""
        st = self.st
        theta_f = (torch.cat([getattr(st, k).reshape(-1) for k in self.flame_names]) if self.flame_names
                   else st.cam_t.new_zeros(0))
        return axis_angle_to_rotation_matrix(st.cam_rot), st.cam_t.clone(), st.log_focal.clone(), theta_f

    def fitted(self, R: Tensor, t: Tensor, logf: Tensor, theta_f: Tensor) -> dict[str, Tensor]:
        """The state's parameters for a solution (``FitState.replace(**fitted)``)."""
        out = {"cam_rot": rotation_matrix_to_axis_angle(R).detach().clone(), "cam_t": t.detach().clone(),
               "log_focal": logf.detach().clone()}
        i = 0
        for k, m in zip(self.flame_names, self.sizes):
            out[k] = theta_f[i: i + m].reshape(getattr(self.st, k).shape).detach().clone()
            i += m
        return out

    def _flame_batch(self, theta_f: Tensor) -> FlameParams:
        """FLAME parameters of a batch whose rows share everything but the fitted slices of ``theta_f (B, n_f)``."""
        st = self.st
        b = theta_f.shape[0]
        fields = {"shape": st.shape, "expression": st.expression, "jaw": st.jaw, "eyes": st.eyes, "neck": st.neck}
        i = 0
        for k, m in zip(self.flame_names, self.sizes):
            fields[k] = theta_f[:, i: i + m]
            i += m
        fields = {k: v.expand(b, -1) for k, v in fields.items()}
        z3 = theta_f.new_zeros(b, 3)
        return FlameParams(shape=fields["shape"], expression=fields["expression"], rotation=z3,
                           neck_pose=fields["neck"], jaw_pose=fields["jaw"], eye_pose=fields["eyes"], translation=z3)

    def _landmarks(self, verts: Tensor, yaw: Tensor) -> Tensor:
        """``(B, M, 3)`` subset vertices (or their tangents: the map is linear) -> ``(1 or N, B, L, 3)``."""
        st = self.st
        if not st.emb.has_contour:  # the same points in every view
            return landmarks_from_vertices(verts, st.faces_local, st.emb)[None]
        b = verts.shape[0]
        return torch.stack([landmarks_from_vertices(verts, st.faces_local, st.emb, y.expand(b)) for y in yaw])

    def _points(self, theta_f: Tensor, yaw: Tensor) -> Tensor:
        verts = self.st.model(self._flame_batch(theta_f[None]), vertex_index=self.st.vertex_index).vertices
        return self._landmarks(verts, yaw)[:, 0]  # (1 or N, L, 3)

    def _points_jacobian(self, theta_f: Tensor, yaw: Tensor) -> Tensor:
        """``(1 or N, L, 3, n_f)``: the tangent of the points along each parameter, from one batched
        FLAME pass and two backward passes (forward mode by reverse mode twice).

        Row k of a batch of ``n_f`` copies of ``theta_f`` carries the vertices' dependence on
        parameter k alone. For a cotangent ``u (n_f, M, 3)``, ``g = d(verts . u) / d theta`` holds
        ``g[k] = J^T u_k``, so ``d/du sum_k g[k, k] = J e_k`` for every k at once. (torch's forward-mode
        AD does it in one pass, but its first use in a process imports ``torch._dynamo``: ~3 s of CPU
        per fit, more than the whole landmark stage.)
        """
        with torch.enable_grad():
            theta = theta_f.detach()[None].expand(self.n_f, -1).clone().requires_grad_(True)
            verts = self.st.model(self._flame_batch(theta), vertex_index=self.st.vertex_index).vertices  # (n_f, M, 3)
            u = torch.zeros_like(verts, requires_grad=True)
            # Scalar outputs only: an explicit grad_outputs tensor makes torch import sympy (~0.7 s of CPU).
            (g,) = torch.autograd.grad((verts * u).sum(), theta, create_graph=True)  # (n_f, n_f)
            (tangent,) = torch.autograd.grad(g.diagonal().sum(), u)  # (n_f, M, 3)
        return self._landmarks(tangent, yaw).permute(0, 2, 3, 1)

    def residuals(self, R: Tensor, t: Tensor, logf: Tensor, theta_f: Tensor, yaw: Tensor):
        """``e (N, L, 2)`` landmark residuals as a fraction of the face size, ``p`` the prior
        residuals, and what :meth:`jacobian` needs."""
        st, tg, n = self.st, self.tg, self.n
        pts = self.fixed_points if self.fixed_points is not None else self._points(theta_f, yaw).expand(n, -1, -1)
        q = pts @ R.transpose(1, 2)  # R p
        X = q + t[:, None]
        Z = X[..., 2].clamp_min(1e-6)
        f = torch.exp(logf)
        fx, fy = st.fx0 * f, st.fy0 * f
        u = fx[:, None] * X[..., 0] / Z
        v = fy[:, None] * X[..., 1] / Z
        pred = torch.stack([u + st.cx[:, None], v + st.cy[:, None]], -1)
        e = (pred - tg.points) / tg.scale[:, None, None]
        sizes = self.sizes
        pri = [math.sqrt(wk) * theta_f[sum(sizes[:j]): sum(sizes[:j + 1])] for j, wk in enumerate(self.prior_weights)]
        p = torch.cat(pri) if pri else e.new_zeros(0)
        return e, p, (q, X, Z, fx, fy, u, v)

    def jacobian(self, R: Tensor, theta_f: Tensor, yaw: Tensor, aux) -> Tensor:
        """``(N * L * 2, n_cam + n_f)``: d ``e`` / d unknowns (column order: class docstring)."""
        tg, n, L, n_cam = self.tg, self.n, self.L, self.n_cam
        q, X, Z, fx, fy, u, v = aux
        # d pred / d X  (N, L, 2, 3), divided by the face size.
        z = torch.zeros_like(Z)
        dP = torch.stack([torch.stack([fx[:, None] / Z, z, -u / Z], -1),
                          torch.stack([z, fy[:, None] / Z, -v / Z], -1)], -2) / tg.scale[:, None, None, None]
        J = q.new_zeros(n, L, 2, n_cam + self.n_f)
        J_rot = dP @ -_skew(q)  # left perturbation: d(Rp)/dd = -[Rp]x
        J_t = dP
        for i in range(n):  # each view's own 6 columns
            J[i, :, :, 6 * i: 6 * i + 3] = J_rot[i]
            J[i, :, :, 6 * i + 3: 6 * i + 6] = J_t[i]
        if self.fit_focal:
            J[..., 6 * n] = torch.stack([u, v], -1) / tg.scale[:, None, None]
        if self.n_f:
            Jp3 = self._points_jacobian(theta_f, yaw)  # (1 or N, L, 3, n_f)
            J[..., n_cam:] = torch.einsum("nlij,njk,nlkf->nlif", dP, R, Jp3.expand(n, -1, -1, -1))
        return J.reshape(n * L * 2, -1)

    def prior_jacobian(self, like: Tensor) -> Tensor:
        """``(n_f, n_cam + n_f)``: d ``p`` / d unknowns (a constant diagonal on the FLAME columns)."""
        P = like.new_zeros(self.n_f, self.n_cam + self.n_f)
        P[:, self.n_cam:] = torch.diag(torch.cat([like.new_full((m,), math.sqrt(wk))
                                                  for wk, m in zip(self.prior_weights, self.sizes)]))
        return P

    def cost(self, e: Tensor, p: Tensor) -> float:
        e2 = (e ** 2).sum(-1)
        return float((self.tg.view_weight * e2 / (e2 + self.c * self.c)).sum() + (p ** 2).sum())


def marquardt_step(A: Tensor, g: Tensor, lam: float, current: float, try_step, tries: int = 8):
    """One damped Gauss-Newton step: solve ``(A + lam diag(A)) s = -g`` and call ``try_step(s) ->
    (cost, candidate)``; accept when the cost is finite and not higher, else raise the damping
    (x8) and solve again, at most ``tries`` times.

    The normal equations are at most a few hundred square: they are solved on the CPU in float64
    (on CUDA, the solver's first call alone costs seconds, and float32 normal equations lose digits).

    Returns:
        ``(candidate, cost, lam, accepted)``: the accepted candidate and its cost with the damping
        lowered (/5), or ``(None, current, lam, False)`` when no try lowered the cost.
    """
    diag = torch.diagonal(A).clamp_min(1e-12)
    for _try in range(tries):
        step = torch.linalg.solve((A + lam * torch.diag(diag)).cpu().double(), -g.cpu().double()).to(A)
        new, candidate = try_step(step)
        if math.isfinite(new) and new <= current:
            return candidate, new, max(lam / 5, 1e-9), True
        lam *= 8
    return None, current, lam, False


def fit_landmarks_lm(st: FitState, tg: LandmarkTargets, names: list[str], cfg: FitterConfig, steps: int, tick,
                     fixed_points: Tensor | None = None, tol: float = 1e-5) -> tuple[FitState, int, list[float]]:
    """Minimise ``sum w rho(|e|^2) + |p|^2`` by IRLS Gauss-Newton with Marquardt damping.

    ``e`` are the landmark residuals as a fraction of the face size, ``w`` the per-view normalised
    weights (as in :func:`landmark_energy`), ``p`` the prior residuals of the FLAME parameters
    being fitted. The Geman-McClure IRLS weight of a landmark is ``d rho/d e^2 = c^2/(e^2+c^2)^2``.

    The Jacobian (:class:`LandmarkProblem`) is assembled from its structure instead of
    differentiating everything at once: the 3D landmarks depend on the FLAME parameters only
    (tangents per parameter from one batched FLAME pass and two backward passes, on the few hundred
    vertices the landmarks use, once for all views when no landmark depends on the view), and the
    projection derivatives are analytic, with camera rotations updated by a left perturbation
    ``R <- exp([d]x) R``. So the cost grows linearly with the number of views. With
    ``fixed_points`` (N, L, 3) the head is held fixed (the rigid stage).

    Returns:
        The new state (``names`` updated), the number of iterations and the cost before each.
    """
    prob = LandmarkProblem(st, tg, names, cfg, fixed_points)
    c, w, n, n_cam = prob.c, tg.view_weight, prob.n, prob.n_cam
    R, t, logf, theta_f = prob.initial()
    history: list[float] = []
    lam, it = 1e-3, 0
    for it in range(1, steps + 1):
        yaw = head_yaw_deg(R)
        with torch.no_grad():
            e, p, aux = prob.residuals(R, t, logf, theta_f, yaw)
        current = prob.cost(e, p)
        history.append(current)
        J = prob.jacobian(R, theta_f, yaw, aux)
        e2 = (e ** 2).sum(-1)
        a = (w * c * c / (e2 + c * c) ** 2)[..., None].expand_as(e).reshape(-1)
        A = J.T @ (J * a[:, None])
        g = J.T @ (a * e.reshape(-1))
        if prob.n_f:
            P = prob.prior_jacobian(e)
            A = A + P.T @ P
            g = g + P.T @ p

        def try_step(step: Tensor):
            s_cam = step[: 6 * n].reshape(n, 6)
            R_c = axis_angle_to_rotation_matrix(s_cam[:, :3]) @ R
            t_c = t + s_cam[:, 3:]
            logf_c = logf + step[6 * n: 6 * n + 1] if prob.fit_focal else logf
            theta_c = theta_f + step[n_cam:]
            with torch.no_grad():
                return prob.cost(*prob.residuals(R_c, t_c, logf_c, theta_c, yaw)[:2]), (R_c, t_c, logf_c, theta_c)

        candidate, new, lam, accepted = marquardt_step(A, g, lam, current, try_step)
        if accepted:
            R, t, logf, theta_f = candidate
        tick()
        if not accepted or current - new < tol * max(current, 1e-12):
            break
    return st.replace(**prob.fitted(R, t, logf, theta_f)), it, history


# --------------------------------------------------------------------------------------------
# Stage 1: rigid


def _pnp_init(X: np.ndarray, x: np.ndarray, w: np.ndarray, fx: float, fy: float, cx: float, cy: float):
    """Closed-form start of one camera: SQPnP on the reliable landmarks. Returns (rvec, t, rms px) or None.

    SQPnP refuses (raises) when the normalised image points barely vary (a small face seen with a
    long focal length: ``point_coordinate_variance >= POINT_VARIANCE_THRESHOLD``); EPnP, then the
    iterative solver, take over there. Any solver error means "no solution here", never a crash."""
    keep = w > 0.3
    if keep.sum() < 6:
        keep = w > 0.0
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    Xk, xk = X[keep].astype(np.float64), x[keep].astype(np.float64)
    for flag in (cv2.SOLVEPNP_SQPNP, cv2.SOLVEPNP_EPNP, cv2.SOLVEPNP_ITERATIVE):
        try:
            ok, rvec, tvec = cv2.solvePnP(Xk, xk, K, None, flags=flag)
        except cv2.error:
            continue
        if ok and np.isfinite(rvec).all() and np.isfinite(tvec).all() and tvec[2, 0] > 0:
            break
    else:
        return None
    proj, _ = cv2.projectPoints(Xk, rvec, tvec, K, None)
    rms = float(np.sqrt(((proj[:, 0] - xk) ** 2).sum(-1).mean()))
    return rvec[:, 0], tvec[:, 0], rms


class ViewsNotInitialised(Exception):
    """Some views got no camera from their landmarks: ``failed`` maps view index -> reason."""

    def __init__(self, failed: dict[int, str]):
        super().__init__("; ".join(f"view {i}: {r}" for i, r in failed.items()))
        self.failed = failed


def rigid_stage(st: FitState, tg: LandmarkTargets, optimise_focal: bool, cfg: FitterConfig,
                tick: Callable[[], None]) -> tuple[FitState, StageLog]:
    """PnP per view (over a grid of focal lengths when unknown), then LM on all cameras together."""
    started = time.perf_counter()
    n = tg.points.shape[0]
    dtype, device = tg.points.dtype, tg.points.device
    # The mean head, contour rows of a frontal view until the cameras exist.
    with torch.no_grad():
        X = st.landmarks3d(torch.zeros(n, dtype=dtype, device=device))
    Xn, xn, wn = X.cpu().double().numpy(), tg.points.cpu().double().numpy(), tg.weight.cpu().double().numpy()
    fx0, fy0 = st.fx0.cpu().double().numpy(), st.fy0.cpu().double().numpy()
    cx, cy = st.cx.cpu().double().numpy(), st.cy.cpu().double().numpy()
    scales = np.exp(np.linspace(np.log(0.25), np.log(4.0), 15)) if optimise_focal else np.array([1.0])
    sols = [[_pnp_init(Xn[i], xn[i], wn[i], fx0[i] * s, fy0[i] * s, cx[i], cy[i]) for i in range(n)] for s in scales]
    # The focal scale whose solved views reproject best, among those that solve at least half of them.
    best = None
    for k, row in enumerate(sols):
        solved = [r for r in row if r is not None]
        if 2 * len(solved) < n:
            continue
        score = float(np.median([r[2] for r in solved]))
        if best is None or score < best[0] - 1e-9:
            best = (score, k)
    if best is None:
        raise FitError("no camera could be initialised from the landmarks (PnP failed in every view).",
                       hint="Check that every image shows one face and that the landmark embedding matches the detector.")
    k = best[1]
    s = float(scales[k])
    chosen, failed = [], {}
    for i in range(n):
        if sols[k][i] is not None:
            chosen.append(sols[k][i])
            continue
        # The nearest focal scale where this view solved; distance grows with the focal (same image).
        near = sorted((abs(j - k), j) for j in range(len(scales)) if sols[j][i] is not None)
        if not near:
            failed[i] = "no camera from the landmarks: PnP found no pose at any focal length tried"
            continue
        j = near[0][1]
        r, tv, rms = sols[j][i]
        chosen.append((r, tv * (s / scales[j]), rms))
    if failed:
        raise ViewsNotInitialised(failed)
    sols = chosen
    st = st.replace(log_focal=torch.tensor([math.log(s)], dtype=dtype, device=device),
                    cam_rot=torch.as_tensor(np.stack([r[0] for r in sols]), dtype=dtype, device=device),
                    cam_t=torch.as_tensor(np.stack([r[1] for r in sols]), dtype=dtype, device=device))
    names = ["cam_rot", "cam_t"] + (["log_focal"] if optimise_focal else [])
    iterations, history = 0, []
    for _round in range(2):  # the second round sees the jaw contour re-selected from each view's yaw
        with torch.no_grad():
            X = st.landmarks3d(st.yaw())
        st, it, hist = fit_landmarks_lm(st, tg, names, cfg, cfg.rigid_steps, tick, fixed_points=X)
        iterations += it
        history += hist
    return st, stage_log("rigid", st, tg, started, iterations, history)


# --------------------------------------------------------------------------------------------
# Stage 2: landmarks with shape, expression and pose


def landmark_stage(st: FitState, tg: LandmarkTargets, optimise_focal: bool, cfg: FitterConfig,
                   tick: Callable[[], None]) -> tuple[FitState, StageLog]:
    """Shape, expression, jaw/neck/eye pose, cameras and focal together on the landmarks, by LM."""
    started = time.perf_counter()
    new, iters, history = fit_landmarks_lm(st, tg, free_parameters(cfg, st.model, optimise_focal), cfg,
                                           cfg.landmark_steps, tick)
    notes = []
    if not new.finite():
        new = st  # the last good state: the one the stage started from
        notes.append("landmark stage: a step produced NaN/Inf; restored the last good state")
    return new, stage_log("landmarks", new, tg, started, iters, history, notes)
