"""Stages 1 and 2 of the fit — rigid and landmarks: the state being fitted (:class:`FitState`) and
Levenberg-Marquardt on robust landmark residuals. :func:`flame_prior.fit.fit_flame` runs them.

Landmark residuals are measured in pixels of the ORIGINAL image and normalised by each view's face
size, so weights do not depend on resolution.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.autograd import forward_ad

from flame_prior.errors import FitError
from flame_prior.flame import FlameModel, FlameParams, LandmarkEmbedding, head_yaw_deg, landmarks_from_vertices
from flame_prior.geometry import (PinholeCameras, axis_angle_to_rotation_matrix, project_points,
                                  rotation_matrix_to_axis_angle)
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation

if TYPE_CHECKING:
    from flame_prior.fit import FitterConfig


@dataclass
class LandmarkTargets:
    """Landmark targets of N views as tensors."""

    points: Tensor  # (N, L, 2) pixels
    weight: Tensor  # (N, L) confidence x embedding weight
    view_weight: Tensor  # (N, L) the same, normalised to sum 1 per view: each view counts once
    scale: Tensor  # (N,) face size in pixels (landmark bounding-box diagonal)


def landmark_targets(views: list[ViewObservation], emb: LandmarkEmbedding, device, dtype) -> LandmarkTargets:
    idx = emb.detector_index.astype(np.int64)
    pts = np.stack([v.landmarks[idx] for v in views]).astype(np.float64)
    w = np.stack([v.confidence[idx] for v in views]) * emb.weight[None]
    scale = np.array([np.linalg.norm(p[wi > 0.05].max(0) - p[wi > 0.05].min(0)) for p, wi in zip(pts, w)])
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return LandmarkTargets(t(pts), t(w), t(w / np.maximum(w.sum(1, keepdims=True), 1e-9)), t(scale))


# --------------------------------------------------------------------------------------------
# The state being fitted


class FitState:
    """FLAME parameters (one head) and N cameras, as tensors that the stages optimise."""

    def __init__(self, model: FlameModel, emb: LandmarkEmbedding, intr: Intrinsics, n_views: int, device, dtype):
        self.model, self.emb = model, emb
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)  # noqa: E731
        self.fx0, self.fy0, self.cx, self.cy = t(intr.fx), t(intr.fy), t(intr.cx), t(intr.cy)
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        self.cam_rot, self.cam_t, self.log_focal = z(n_views, 3), z(n_views, 3), z(1)
        self.shape, self.expression = z(1, model.n_shape), z(1, model.n_expr)
        self.jaw, self.eyes, self.neck = z(1, 3), z(1, 6), z(1, 3)
        self.widths: list[int] = []
        self.heights: list[int] = []
        # Landmark-only evaluation: the vertices the embedding's triangles use, and the triangle
        # table remapped to that subset (triangles the embedding never uses map to vertex 0).
        faces = model.faces.detach().cpu().numpy()
        used = [emb.face_idx.reshape(-1)]
        if emb.contour_face_idx is not None:
            used.append(emb.contour_face_idx.reshape(-1))
        used_faces = np.unique(np.concatenate(used))
        vidx = np.unique(faces[used_faces].reshape(-1))
        remap = np.zeros(faces.max() + 1, dtype=np.int64)
        remap[vidx] = np.arange(len(vidx))
        self.vertex_index = torch.as_tensor(vidx, device=device)
        self.faces_local = torch.as_tensor(remap[faces], device=device)

    names = ("cam_rot", "cam_t", "log_focal", "shape", "expression", "jaw", "eyes", "neck")

    def snapshot(self) -> dict[str, Tensor]:
        return {k: getattr(self, k).detach().clone() for k in self.names}

    def restore(self, snap: dict[str, Tensor]) -> None:
        for k, v in snap.items():
            setattr(self, k, v.clone())

    def finite(self) -> bool:
        return all(bool(torch.isfinite(getattr(self, k)).all()) for k in self.names)

    def flame_params(self) -> FlameParams:
        z3 = torch.zeros_like(self.jaw)
        return FlameParams(shape=self.shape, expression=self.expression, rotation=z3, neck_pose=self.neck,
                           jaw_pose=self.jaw, eye_pose=self.eyes, translation=z3)

    def cameras(self) -> PinholeCameras:
        f = torch.exp(self.log_focal)
        return PinholeCameras(axis_angle_to_rotation_matrix(self.cam_rot), self.cam_t, self.fx0 * f, self.fy0 * f,
                              self.cx, self.cy, list(self.widths), list(self.heights))

    def yaw(self) -> Tensor:
        with torch.no_grad():
            return head_yaw_deg(axis_angle_to_rotation_matrix(self.cam_rot))

    def landmarks3d(self, yaw: Tensor) -> Tensor:
        """``(N, L, 3)`` world landmarks; contour rows picked by each view's yaw."""
        verts = self.model(self.flame_params(), vertex_index=self.vertex_index).vertices  # (1, M, 3)
        return self.landmarks_on(verts, self.faces_local, yaw)

    def landmarks_on(self, verts: Tensor, faces: Tensor, yaw: Tensor) -> Tensor:
        """``(N, L, 3)`` landmarks on posed vertices ``(1, V, 3)`` with triangles ``faces``, for the
        N views of ``yaw (N,)``: contour rows by each view's yaw, computed once when there are none."""
        n = yaw.shape[0]
        if not self.emb.has_contour:  # the same points in every view
            return landmarks_from_vertices(verts, faces, self.emb).expand(n, -1, -1)
        return landmarks_from_vertices(verts.expand(n, -1, -1), faces, self.emb, yaw)

    def project(self, points: Tensor, cameras: PinholeCameras | None = None) -> Tensor:
        """``(N, L, 3)`` world points to ``(N, L, 2)`` pixels through the current cameras (or
        ``cameras``, when the caller already built them from this state)."""
        return project_points(points, cameras if cameras is not None else self.cameras())[0]


def landmark_energy(pred: Tensor, tg: LandmarkTargets, c: float) -> Tensor:
    """Robust landmark energy: Geman-McClure ``rho(e^2) = e^2 / (e^2 + c^2)`` of the residuals as a
    fraction of the face size (``~ e^2 / c^2`` for inliers, saturating at 1 for outliers), averaged
    over each view's landmarks and summed over views (more views weigh more against the priors)."""
    e2 = ((pred - tg.points) ** 2).sum(-1) / tg.scale[:, None] ** 2
    return (tg.view_weight * e2 / (e2 + c * c)).sum()


def per_view_error_px(pred: Tensor, tg: LandmarkTargets) -> np.ndarray:
    err = (pred - tg.points).norm(dim=-1).detach().cpu().numpy()
    w = tg.weight.detach().cpu().numpy()
    return np.array([float(np.median(e[wi > 0.05])) if (wi > 0.05).any() else float("nan") for e, wi in zip(err, w)])


# --------------------------------------------------------------------------------------------
# Levenberg-Marquardt on robust landmark residuals (stages 1 and 2)

_FLAME_NAMES = ("shape", "expression", "jaw", "eyes", "neck")


_FORWARD_AD_READY = False


def prepare_forward_ad() -> None:
    """Pay torch's one-time set-up of forward-mode AD (~1 s: it scripts helper functions on first
    use) before the stages start, so stage timings show the stages' own work."""
    global _FORWARD_AD_READY
    if not _FORWARD_AD_READY:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script inside torch itself
            with forward_ad.dual_level():
                x = forward_ad.make_dual(torch.zeros(1), torch.ones(1))
                forward_ad.unpack_dual(x * 2)
        _FORWARD_AD_READY = True


def _skew(q: Tensor) -> Tensor:
    """``(*, 3)`` -> ``(*, 3, 3)`` cross-product matrices, ``[q]x v = q x v``."""
    x, y, z = q.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*q.shape, 3)


def fit_landmarks_lm(st: FitState, tg: LandmarkTargets, names: list[str], cfg: FitterConfig, steps: int, tick,
                      fixed_points: Tensor | None = None, tol: float = 1e-5):
    """Minimise ``sum w rho(|e|^2) + |p|^2`` by IRLS Gauss-Newton with Marquardt damping.

    ``e`` are the landmark residuals as a fraction of the face size, ``w`` the per-view normalised
    weights (as in :func:`landmark_energy`), ``p`` the prior residuals of the FLAME parameters
    being fitted. The Geman-McClure IRLS weight of a landmark is ``d rho/d e^2 = c^2/(e^2+c^2)^2``.

    The Jacobian is assembled from its structure instead of differentiating everything at once:
    the 3D landmarks depend on the FLAME parameters only (forward-mode autodiff: one FLAME pass
    batched over a tangent per parameter, on the few hundred vertices the landmarks use, once for
    all views when no landmark depends on the view), and the projection derivatives are analytic, with camera
    rotations updated by a left perturbation ``R <- exp([d]x) R``. So the cost grows linearly with
    the number of views. With ``fixed_points`` (N, L, 3) the head is held fixed (the rigid stage).
    """
    c = cfg.robust_scale
    w = tg.view_weight
    n, L = tg.points.shape[:2]
    flame_names = [k for k in names if k in _FLAME_NAMES] if fixed_points is None else []
    priors = {"shape": cfg.shape_prior, "expression": cfg.expression_prior,
              "jaw": cfg.pose_prior, "eyes": cfg.pose_prior, "neck": cfg.pose_prior}
    fit_focal = "log_focal" in names
    sizes = [getattr(st, k).numel() for k in flame_names]
    n_f = sum(sizes)
    n_cam = 6 * n + (1 if fit_focal else 0)

    def flame_batch(theta_f: Tensor) -> FlameParams:
        """FLAME parameters of a batch whose rows share everything but the fitted slices of ``theta_f (B, n_f)``."""
        b = theta_f.shape[0]
        fields = {"shape": st.shape, "expression": st.expression, "jaw": st.jaw, "eyes": st.eyes, "neck": st.neck}
        i = 0
        for k, m in zip(flame_names, sizes):
            fields[k] = theta_f[:, i: i + m]
            i += m
        fields = {k: v.expand(b, -1) for k, v in fields.items()}
        z3 = theta_f.new_zeros(b, 3)
        return FlameParams(shape=fields["shape"], expression=fields["expression"], rotation=z3,
                           neck_pose=fields["neck"], jaw_pose=fields["jaw"], eye_pose=fields["eyes"], translation=z3)

    def landmarks(verts: Tensor, yaw: Tensor) -> Tensor:
        """``(B, M, 3)`` subset vertices (or their tangents: the map is linear) -> ``(1 or N, B, L, 3)``."""
        if not st.emb.has_contour:  # the same points in every view
            return landmarks_from_vertices(verts, st.faces_local, st.emb)[None]
        b = verts.shape[0]
        return torch.stack([landmarks_from_vertices(verts, st.faces_local, st.emb, y.expand(b)) for y in yaw])

    def points_fn(theta_f: Tensor, yaw: Tensor) -> Tensor:
        verts = st.model(flame_batch(theta_f[None]), vertex_index=st.vertex_index).vertices  # (1, M, 3)
        return landmarks(verts, yaw)[:, 0]  # (1 or N, L, 3)

    def points_jacobian(theta_f: Tensor, yaw: Tensor) -> Tensor:
        """``(1 or N, L, 3, n_f)`` by forward-mode AD: one batched FLAME pass, a tangent per parameter."""
        eye = torch.eye(n_f, dtype=theta_f.dtype, device=theta_f.device)
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(theta_f[None].expand(n_f, -1).contiguous(), eye)
            verts = st.model(flame_batch(dual), vertex_index=st.vertex_index).vertices
            tangent = forward_ad.unpack_dual(verts).tangent  # (n_f, M, 3)
        return landmarks(tangent, yaw).permute(0, 2, 3, 1)

    def evaluate(R: Tensor, t: Tensor, logf: Tensor, theta_f: Tensor, yaw: Tensor):
        """Residuals, priors, and what the Jacobian needs."""
        pts = fixed_points if fixed_points is not None else points_fn(theta_f, yaw).expand(n, -1, -1)
        q = pts @ R.transpose(1, 2)  # R p
        X = q + t[:, None]
        Z = X[..., 2].clamp_min(1e-6)
        f = torch.exp(logf)
        fx, fy = st.fx0 * f, st.fy0 * f
        u = fx[:, None] * X[..., 0] / Z
        v = fy[:, None] * X[..., 1] / Z
        pred = torch.stack([u + st.cx[:, None], v + st.cy[:, None]], -1)
        e = (pred - tg.points) / tg.scale[:, None, None]
        pri = [math.sqrt(priors[k]) * theta_f[sum(sizes[:j]): sum(sizes[:j + 1])]
               for j, k in enumerate(flame_names)]
        p = torch.cat(pri) if pri else e.new_zeros(0)
        return e, p, (q, X, Z, fx, fy, u, v)

    def cost(e: Tensor, p: Tensor) -> float:
        e2 = (e ** 2).sum(-1)
        return float((w * e2 / (e2 + c * c)).sum() + (p ** 2).sum())

    R = axis_angle_to_rotation_matrix(st.cam_rot)
    t, logf = st.cam_t.clone(), st.log_focal.clone()
    theta_f = torch.cat([getattr(st, k).reshape(-1) for k in flame_names]) if flame_names else st.cam_t.new_zeros(0)
    history: list[float] = []
    lam, it = 1e-3, 0
    for it in range(1, steps + 1):
        yaw = head_yaw_deg(R)
        with torch.no_grad():
            e, p, (q, X, Z, fx, fy, u, v) = evaluate(R, t, logf, theta_f, yaw)
        current = cost(e, p)
        history.append(current)
        # d pred / d X  (N, L, 2, 3), divided by the face size.
        z = torch.zeros_like(Z)
        dP = torch.stack([torch.stack([fx[:, None] / Z, z, -u / Z], -1),
                          torch.stack([z, fy[:, None] / Z, -v / Z], -1)], -2) / tg.scale[:, None, None, None]
        J = e.new_zeros(n, L, 2, n_cam + n_f)
        J_rot = dP @ -_skew(q)  # left perturbation: d(Rp)/dd = -[Rp]x
        J_t = dP
        for i in range(n):  # each view's own 6 columns
            J[i, :, :, 6 * i: 6 * i + 3] = J_rot[i]
            J[i, :, :, 6 * i + 3: 6 * i + 6] = J_t[i]
        if fit_focal:
            J[..., 6 * n] = torch.stack([u, v], -1) / tg.scale[:, None, None]
        if n_f:
            Jp3 = points_jacobian(theta_f, yaw)  # (1 or N, L, 3, n_f)
            J[..., n_cam:] = torch.einsum("nlij,njk,nlkf->nlif", dP, R, Jp3.expand(n, -1, -1, -1))
        J = J.reshape(n * L * 2, -1)
        e2 = (e ** 2).sum(-1)
        a = (w * c * c / (e2 + c * c) ** 2)[..., None].expand_as(e).reshape(-1)
        A = J.T @ (J * a[:, None])
        g = J.T @ (a * e.reshape(-1))
        if n_f:
            P = torch.zeros(p.numel(), n_cam + n_f, dtype=e.dtype, device=e.device)
            P[:, n_cam:] = torch.diag(torch.cat([torch.full((m,), math.sqrt(priors[k]), dtype=e.dtype, device=e.device)
                                                 for k, m in zip(flame_names, sizes)]))
            A = A + P.T @ P
            g = g + P.T @ p
        diag = torch.diagonal(A).clamp_min(1e-12)
        accepted = False
        for _try in range(8):
            # A is at most a few hundred square: solved on the CPU in float64 (on CUDA, the solver's
            # first call alone costs seconds, and float32 normal equations lose digits).
            step = torch.linalg.solve((A + lam * torch.diag(diag)).cpu().double(), -g.cpu().double()).to(A)
            s_cam = step[: 6 * n].reshape(n, 6)
            R_c = axis_angle_to_rotation_matrix(s_cam[:, :3]) @ R
            t_c = t + s_cam[:, 3:]
            logf_c = logf + step[6 * n: 6 * n + 1] if fit_focal else logf
            theta_c = theta_f + step[n_cam:]
            with torch.no_grad():
                new = cost(*evaluate(R_c, t_c, logf_c, theta_c, yaw)[:2])
            if math.isfinite(new) and new <= current:
                R, t, logf, theta_f, lam, accepted = R_c, t_c, logf_c, theta_c, max(lam / 5, 1e-9), True
                break
            lam *= 8
        tick()
        if not accepted or current - new < tol * max(current, 1e-12):
            break
    st.cam_rot = rotation_matrix_to_axis_angle(R).detach().clone()
    st.cam_t, st.log_focal = t.detach().clone(), logf.detach().clone()
    i = 0
    for k, m in zip(flame_names, sizes):
        setattr(st, k, theta_f[i: i + m].reshape(getattr(st, k).shape).detach().clone())
        i += m
    return it, history


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


def rigid_stage(st: FitState, tg: LandmarkTargets, optimise_focal: bool, cfg: FitterConfig, tick: Callable[[], None]):
    """PnP per view (over a grid of focal lengths when unknown), then LM on all cameras together."""
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
    st.log_focal = torch.tensor([math.log(s)], dtype=dtype, device=device)
    st.cam_rot = torch.as_tensor(np.stack([r[0] for r in sols]), dtype=dtype, device=device)
    st.cam_t = torch.as_tensor(np.stack([r[1] for r in sols]), dtype=dtype, device=device)
    names = ["cam_rot", "cam_t"] + (["log_focal"] if optimise_focal else [])
    iterations, history = 0, []
    for _round in range(2):  # the second round sees the jaw contour re-selected from each view's yaw
        with torch.no_grad():
            X = st.landmarks3d(st.yaw())
        it, hist = fit_landmarks_lm(st, tg, names, cfg, cfg.rigid_steps, tick, fixed_points=X)
        iterations += it
        history += hist
    return iterations, history


# --------------------------------------------------------------------------------------------
# Stage 2: landmarks with shape, expression and pose


def prior_energy(st: FitState, cfg: FitterConfig) -> Tensor:
    return (cfg.shape_prior * (st.shape ** 2).sum() + cfg.expression_prior * (st.expression ** 2).sum()
            + cfg.pose_prior * ((st.jaw ** 2).sum() + (st.eyes ** 2).sum() + (st.neck ** 2).sum()))


def free_parameters(cfg: FitterConfig, st: FitState, optimise_focal: bool) -> list[str]:
    names = ["cam_rot", "cam_t"]
    if optimise_focal:
        names.append("log_focal")
    if cfg.fit_shape and st.model.n_shape:
        names.append("shape")
    if cfg.fit_expression and st.model.n_expr:
        names.append("expression")
    if cfg.fit_jaw:
        names.append("jaw")
    if cfg.fit_eyes:
        names.append("eyes")
    if cfg.fit_neck:
        names.append("neck")
    return names


def landmark_stage(st: FitState, tg: LandmarkTargets, optimise_focal: bool, cfg: FitterConfig, tick, notes: list[str]):
    good = st.snapshot()
    iters, history = fit_landmarks_lm(st, tg, free_parameters(cfg, st, optimise_focal), cfg, cfg.landmark_steps, tick)
    if not st.finite():
        st.restore(good)
        notes.append("landmark stage: a step produced NaN/Inf; restored the last good state")
    return iters, history
