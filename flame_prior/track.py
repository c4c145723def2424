"""Dynamic sequences: one FLAME per timestep, one shared identity, cameras fixed.

Public entries: :func:`track_sequence` (the tracker) and :func:`run_dynamic` (what
:func:`flame_prior.pipeline.run` hands a dynamic sequence to), configured by :class:`TrackerConfig`.

The face moves in front of one camera, or of several synchronised cameras (a folder per camera). The
world is FLAME's frame at rest; the cameras hold still in it and the head moves: every timestep has
its own global ``rotation`` and ``translation`` (the head's rigid motion), ``neck_pose``, ``jaw_pose``,
``eye_pose`` and ``expression``; ``shape`` is shared (GaussianAvatars' and VHAP's convention).

1. **Keyframes** — up to ``keyframes`` timesteps that cover the head's poses (single camera) or the
   first timestep that every camera sees (several cameras) go through the static fit
   (:func:`flame_prior.fit.fit_flame`: rigid, landmarks, and the photometric stage only there). It
   gives the identity, the intrinsics and the cameras. With one camera, the camera of the first
   keyframe is *the* camera; the other keyframes' cameras become head poses.
2. **Tracking** — timesteps in order, each started from the previous one, a few Levenberg-Marquardt
   steps on the same robust landmark energy as the landmark stage
   (:func:`flame_prior.fit.state.landmark_targets`, Geman-McClure IRLS weights, one view counts
   once), plus the zero-mean priors of the fitter and **temporal smoothness**: a quadratic pull
   ``w_smooth |theta_t - theta_{t-1}|^2`` per parameter group. Only the vertices the landmarks sit on
   are evaluated, with the identity folded into the template (:func:`landmark_vertex_model`); the
   Jacobian comes from forward differences in one pass batched over the per-timestep parameters.
3. **Identity refinement** — the shape and the parameters of ``identity_timesteps`` timesteps spread
   over the sequence are adjusted together (:func:`refine_identity`, started from the tracking), then
   every timestep is tracked again with the refined shape.

A model without an expression space (the bundled FLAME 2023 Open subset) tracks jaw, eyes, neck and
the rigid motion only, and says so up front.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from flame_prior.errors import FitError
from flame_prior.fit.landmarks import marquardt_step
from flame_prior.flame import FlameModel, FlameParams, LandmarkEmbedding, head_yaw_deg
from flame_prior.geometry import PinholeCameras, axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle
from flame_prior.tracker_config import TrackerConfig

__all__ = ["TrackerConfig", "SequenceFit", "track_sequence", "run_dynamic", "NO_EXPRESSION_NOTE"]

NO_EXPRESSION_NOTE = ("this FLAME model has no expression space: the dynamic fit tracks jaw, eyes, neck and the head's "
                      "rigid motion only (pass a full FLAME model with --flame-model for expressions)")

#: Per-timestep parameter groups in the order of the tracked vector, with their sizes (E: n_expr).
GROUPS = ("rotation", "translation", "neck_pose", "jaw_pose", "eye_pose", "expression")


@dataclass
class SequenceFit:
    """A tracked sequence: shared identity, fixed cameras, per-timestep FLAME.

    Attributes:
        shape: ``(n_shape,)``.
        params: per-timestep ``(T, k)`` arrays, keys of :data:`GROUPS` (``eye_pose (T, 6)``,
            ``expression (T, n_expr)``), FLAME's meaning (rotation about the root joint, translation
            added after skinning; metres, radians).
        cameras: ``C`` fixed cameras, OpenCV world-to-camera in FLAME's rest frame, float64.
        timesteps: ``(T,)`` the intake's timestep numbers (gaps where no camera saw a face).
        times: ``(T,)`` seconds.
        view_index: ``(T, C)`` index into the views list of the observation of (timestep, camera), -1 if none.
        landmark_px: ``(T, C)`` median landmark error in pixels (NaN where no view).
        seconds: tracking and identity refinement, keyframe fit excluded.
        track_seconds: the tracking passes alone (what ``timesteps_per_second`` divides).
        notes: remarks for the summary.
    """

    shape: np.ndarray
    params: dict[str, np.ndarray]
    cameras: PinholeCameras
    timesteps: np.ndarray
    times: np.ndarray
    view_index: np.ndarray
    landmark_px: np.ndarray
    seconds: float
    track_seconds: float = float("nan")
    keyframe_timesteps: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    passes: int = 1

    @property
    def timesteps_per_second(self) -> float:
        """Tracking speed: timesteps tracked (every pass) per second of tracking."""
        return self.passes * len(self.timesteps) / max(self.track_seconds, 1e-9)


# --------------------------------------------------------------------------------------------
# Levenberg-Marquardt on landmark residuals, Jacobians by batched forward differences


def _lm(theta: Tensor, residual, weights, c: float, prior_w: Tensor, prior_mean: Tensor, smooth_w: Tensor,
        smooth_mean: Tensor, steps: int, refresh_jacobian: bool = True) -> tuple[Tensor, float]:
    """Minimise ``sum w rho(|e|^2) + sum prior_w (theta - prior_mean)^2 + sum smooth_w (theta - smooth_mean)^2``.

    ``residual(theta (B, P)) -> (B, R, 2)`` normalised landmark residuals, rows of the batch being
    independent parameter sets; ``weights (R,)`` each landmark's weight (one view sums to 1).
    Geman-McClure IRLS with Marquardt damping, as :func:`flame_prior.fit.landmarks.fit_landmarks_lm`.
    The Jacobian is taken by forward differences in float64 in ONE batched pass (the current point
    plus one step per parameter): with a few dozen parameters and a few hundred vertices this is
    several times faster on the CPU than forward-mode AD, whose decompositions run in Python. Without
    ``refresh_jacobian`` the Jacobian of the starting point serves every step (a chord method: the
    residuals and robust weights are new at each step, the linearisation is not), which is enough when
    the start is the previous timestep's result and halves the cost of a timestep.
    """
    P = theta.numel()
    h = 1e-6  # float64 forward differences: ~1e-8 relative accuracy, one batched primal pass
    steps_h = torch.eye(P, dtype=theta.dtype, device=theta.device) * h
    w_diag = prior_w + smooth_w

    def cost(th: Tensor, e: Tensor | None = None) -> tuple[float, Tensor]:
        if e is None:
            with torch.no_grad():
                e = residual(th[None])[0]
        e2 = (e ** 2).sum(-1)
        reg = (prior_w * (th - prior_mean) ** 2).sum() + (smooth_w * (th - smooth_mean) ** 2).sum()
        return float((weights * e2 / (e2 + c * c)).sum() + reg), e

    lam, current, J = 1e-3, None, None
    for _ in range(steps):
        if J is None or refresh_jacobian:
            with torch.no_grad():
                out = residual(torch.cat([theta[None], theta[None] + steps_h]))  # (1 + P, R, 2)
            if current is None:  # the first pass also gives the starting cost
                current, e = cost(theta, out[0])
            J = ((out[1:] - out[:1]) / h).reshape(P, -1).T  # (2R, P)
        e2 = (e ** 2).sum(-1)
        a = (weights * c * c / (e2 + c * c) ** 2)[:, None].expand_as(e).reshape(-1)
        A = J.T @ (J * a[:, None]) + torch.diag(w_diag)
        g = J.T @ (a * e.reshape(-1)) + prior_w * (theta - prior_mean) + smooth_w * (theta - smooth_mean)

        def try_step(step, theta=theta):
            cand = theta + step
            new, e_new = cost(cand)
            return new, (cand, e_new)

        accepted, new, lam, _ = marquardt_step(A, g, lam, current, try_step, tries=6)
        if accepted is None:
            break
        gain, current = current - new, new
        theta, e = accepted
        if gain < 1e-6 * max(current, 1e-12):
            break
    return theta, current if current is not None else float("nan")


# --------------------------------------------------------------------------------------------
# The tracker


def landmark_vertex_model(data, vertex_index: Tensor, shape: Tensor | None = None) -> FlameModel:
    """FLAME in float64 restricted to the vertices ``vertex_index`` (the landmarks' triangles), its
    buffers sliced once instead of on every call; with ``shape`` the identity is folded into the
    template and the joints, leaving only the expression blend shapes (``n_shape`` becomes 0). Its
    output equals ``FlameModel(data)(params).vertices[:, vertex_index]``."""
    m = FlameModel(data, dtype=torch.float64).to(vertex_index.device)
    idx = vertex_index.long()
    n_shape = m.n_shape
    v, dirs = m.v_template[idx], m.shapedirs[idx]
    J, J_dirs = m.J_template, m.J_shapedirs
    if shape is not None:
        s = shape.to(v).reshape(-1)
        v = v + dirs[..., :n_shape] @ s
        J = J + J_dirs[..., :n_shape] @ s
        dirs, J_dirs = dirs[..., n_shape:], J_dirs[..., n_shape:]
        m.n_shape = 0
    for name, value in (("v_template", v), ("shapedirs", dirs), ("posedirs", m.posedirs[idx]),
                        ("lbs_weights", m.lbs_weights[idx]), ("J_template", J), ("J_shapedirs", J_dirs)):
        setattr(m, name, value.contiguous())
    return m


class _Problem:
    """Tensors shared by every timestep: model subset, fixed cameras, identity."""

    def __init__(self, model: FlameModel, emb: LandmarkEmbedding, cameras: PinholeCameras, shape: Tensor,
                 fit_shape: bool = False):
        from flame_prior.fit.state import landmark_vertex_subset

        dev = model.faces.device
        dtype = torch.float64  # forward differences need the digits
        self.dtype, self.device, self.emb = dtype, dev, emb
        cams = cameras.to(device=dev, dtype=dtype)
        self.R, self.t = cams.R, cams.t  # (C, 3, 3), (C, 3)
        self.fx, self.fy, self.cx, self.cy = cams.fx, cams.fy, cams.cx, cams.cy
        vertex_index, self.faces_local = landmark_vertex_subset(model, emb)  # the landmark stage's subset
        self.shape = shape.to(device=dev, dtype=dtype).reshape(1, -1)
        self.model = landmark_vertex_model(model.data, vertex_index, None if fit_shape else self.shape[0])
        self.n_expr = model.n_expr
        self.fit_shape = fit_shape
        self.sizes = {"rotation": 3, "translation": 3, "neck_pose": 3, "jaw_pose": 3, "eye_pose": 6,
                      "expression": model.n_expr}

    def unpack(self, theta: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for k in GROUPS:
            out[k] = theta[:, i: i + self.sizes[k]]
            i += self.sizes[k]
        return out

    def pack(self, d: dict[str, Tensor]) -> Tensor:
        return torch.cat([d[k].reshape(-1) for k in GROUPS])

    def params(self, theta: Tensor, shape: Tensor | None = None) -> FlameParams:
        p = self.unpack(theta)
        b = theta.shape[0]
        s = (self.shape if shape is None else shape).expand(b, -1) if self.fit_shape else theta.new_zeros(b, 0)
        return FlameParams(shape=s, expression=p["expression"], rotation=p["rotation"], neck_pose=p["neck_pose"],
                           jaw_pose=p["jaw_pose"], eye_pose=p["eye_pose"], translation=p["translation"])

    def project(self, verts: Tensor, cams: list[int], yaw: Tensor) -> Tensor:
        """``(B, M, 3)`` subset vertices -> ``(B, n_cams, L, 2)`` pixels through the fixed cameras."""
        from flame_prior.flame import landmarks_from_vertices

        b = verts.shape[0]
        static = None if self.emb.has_contour else landmarks_from_vertices(verts, self.faces_local, self.emb)
        out = []
        for j, c in enumerate(cams):
            lm = static if static is not None else landmarks_from_vertices(verts, self.faces_local, self.emb,
                                                                           yaw[j].expand(b))
            X = lm @ self.R[c].T + self.t[c]
            Z = X[..., 2].clamp_min(1e-6)
            out.append(torch.stack([self.fx[c] * X[..., 0] / Z + self.cx[c], self.fy[c] * X[..., 1] / Z + self.cy[c]],
                                   -1))
        return torch.stack(out, 1)

    def head_yaw(self, theta: Tensor, cams: list[int]) -> Tensor:
        """Per camera, the head's yaw in that camera (contour rows of a dynamic embedding)."""
        with torch.no_grad():
            Rh = axis_angle_to_rotation_matrix(self.unpack(theta[None])["rotation"])[0]
            return head_yaw_deg(self.R[cams] @ Rh)


def _targets(views, emb, device, dtype):
    from flame_prior.fit.state import landmark_targets

    return landmark_targets(views, emb, device, dtype)


def _group_vector(prob: _Problem, values: dict[str, float]) -> Tensor:
    return torch.cat([torch.full((prob.sizes[k],), float(values.get(k, 0.0)), dtype=prob.dtype, device=prob.device)
                      for k in GROUPS])


def _fit_groups(fitter_cfg, model) -> set[str]:
    """The per-timestep groups that move: the rigid motion, and the pose and expression parameters
    the fitter's config fits (:func:`flame_prior.fit.state.free_parameters`; the shape is one for all)."""
    from flame_prior.fit.state import free_parameters

    group = {"expression": "expression", "jaw": "jaw_pose", "eyes": "eye_pose", "neck": "neck_pose"}
    return {"rotation", "translation"} | {group[k] for k in free_parameters(fitter_cfg, model, False) if k in group}


def track_sequence(model: FlameModel, emb: LandmarkEmbedding, views, timestep: list[int], camera: list[int],
                   cameras: PinholeCameras, shape: Tensor, init: dict[str, np.ndarray], fitter_cfg, cfg: TrackerConfig,
                   progress=None, fit_groups: set[str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Track every timestep in order, each started from the previous one.

    Args:
        views: observations; ``views[i]`` is timestep ``timestep[i]`` seen by camera ``camera[i]``.
        cameras: the ``C`` fixed cameras (OpenCV world-to-camera, FLAME's rest frame).
        shape: ``(n_shape,)`` the identity, held.
        init: per-group start of the first timestep (``(k,)`` arrays, keys of :data:`GROUPS`).
        fitter_cfg: :class:`flame_prior.fit.FitterConfig` (priors, robust scale, what to fit).
        fit_groups: groups that move (default: rigid motion + what ``fitter_cfg`` fits).

    Returns:
        ``(params, landmark_px, ts_order)``: per-timestep arrays ``(T, k)``, ``(T, C)`` median landmark
        error in pixels, and the sorted timestep numbers.
    """
    prob = _Problem(model, emb, cameras, shape)
    ts_order = np.array(sorted(set(timestep)))
    C = len(cameras)
    if fit_groups is None:
        fit_groups = _fit_groups(fitter_cfg, model)
    by_t: dict[int, list[int]] = {}
    for i, t in enumerate(timestep):
        by_t.setdefault(t, []).append(i)
    free = torch.cat([torch.full((prob.sizes[k],), k in fit_groups, dtype=torch.bool) for k in GROUPS])
    free_idx = torch.nonzero(free).reshape(-1).to(prob.device)
    prior_w_all = _group_vector(prob, {"expression": fitter_cfg.expression_prior, "jaw_pose": fitter_cfg.pose_prior,
                                       "eye_pose": fitter_cfg.pose_prior, "neck_pose": fitter_cfg.pose_prior})
    smooth_w_all = _group_vector(prob, {"rotation": cfg.smooth_rotation, "translation": cfg.smooth_translation,
                                        "neck_pose": cfg.smooth_pose, "jaw_pose": cfg.smooth_pose,
                                        "eye_pose": cfg.smooth_pose, "expression": cfg.smooth_expression})
    full = prob.pack({k: torch.as_tensor(np.asarray(init.get(k, np.zeros(prob.sizes[k])), dtype=np.float64),
                                         dtype=prob.dtype, device=prob.device) for k in GROUPS})
    out = {k: np.zeros((len(ts_order), prob.sizes[k])) for k in GROUPS}
    err = np.full((len(ts_order), C), np.nan)
    task = progress.add_task("track: timesteps", total=len(ts_order)) if progress else None
    previous = None
    for k, t in enumerate(ts_order):
        idx = by_t[int(t)]
        cams = [camera[i] for i in idx]
        tg = _targets([views[i] for i in idx], emb, prob.device, prob.dtype)
        scale = tg.scale[:, None, None]
        wts = tg.view_weight.reshape(-1)
        yaw = prob.head_yaw(full, cams)
        base = full.clone()

        def residual(theta_free: Tensor, base=base, cams=cams, tg=tg, scale=scale, yaw=yaw) -> Tensor:
            b = theta_free.shape[0]
            th = base[None].expand(b, -1).index_copy(1, free_idx, theta_free)
            verts = prob.model(prob.params(th)).vertices
            pred = prob.project(verts, cams, yaw)  # (b, n, L, 2)
            return ((pred - tg.points[None]) / scale[None]).reshape(b, -1, 2)

        smooth_mean = (previous if previous is not None else full)[free_idx]
        smooth_w = smooth_w_all[free_idx] if previous is not None else torch.zeros_like(smooth_w_all[free_idx])
        theta, _ = _lm(full[free_idx], residual, wts, fitter_cfg.robust_scale, prior_w_all[free_idx],
                       torch.zeros_like(smooth_mean), smooth_w, smooth_mean, cfg.steps,
                       refresh_jacobian=cfg.refresh_jacobian or k == 0)
        full = full.index_copy(0, free_idx, theta)
        previous = full.clone()
        with torch.no_grad():
            pred = residual(theta[None])[0].reshape(len(idx), -1, 2) * scale
            e = pred.norm(dim=-1)  # pixels
            for j, c in enumerate(cams):
                wj = tg.weight[j] > 0.05
                err[k, c] = float(e[j][wj].median()) if bool(wj.any()) else float("nan")
        for g, v in prob.unpack(full[None]).items():
            out[g][k] = v[0].detach().cpu().double().numpy()
        if task is not None:
            progress.advance(task)
    return out, err, ts_order


def refine_identity(model: FlameModel, emb: LandmarkEmbedding, views, keyframe_views: list[list[int]],
                    keyframe_params: list[dict[str, np.ndarray]], camera: list[int], cameras: PinholeCameras,
                    shape: Tensor, fitter_cfg, fit_groups: set[str], steps: int = 6
                    ) -> tuple[Tensor, list[dict[str, np.ndarray]]]:
    """Bundle adjustment of the identity: the shape and the per-timestep parameters of K timesteps
    (``keyframe_views``: per timestep, indices into ``views``; started from ``keyframe_params``)
    together, by Levenberg-Marquardt on the landmark energy with the fitter's priors.

    Alternating (hold the expressions, fit the shape, track again) converges slowly because shape and
    expression move the same landmarks; solving them together separates them through the timesteps
    that share the shape. The Jacobian is block-sparse (timestep k depends on the shape and its own
    parameters only); forward differences of all blocks come from one batched pass.

    Returns:
        ``(shape, params)``: the refined shape and each timestep's refined parameters.
    """
    prob = _Problem(model, emb, cameras, shape, fit_shape=True)
    K = len(keyframe_views)
    free = torch.cat([torch.full((prob.sizes[k],), k in fit_groups, dtype=torch.bool) for k in GROUPS])
    fidx = torch.nonzero(free).reshape(-1)
    F = int(fidx.numel())
    thetas = torch.stack([prob.pack({k: torch.as_tensor(p[k], dtype=prob.dtype) for k in GROUPS})
                          for p in keyframe_params])  # (K, P)
    blocks = [(_targets([views[i] for i in idx], emb, prob.device, prob.dtype), [camera[i] for i in idx])
              for idx in keyframe_views]
    S = prob.shape.shape[1]
    c = fitter_cfg.robust_scale
    prior_theta = _group_vector(prob, {"expression": fitter_cfg.expression_prior, "jaw_pose": fitter_cfg.pose_prior,
                                       "eye_pose": fitter_cfg.pose_prior, "neck_pose": fitter_cfg.pose_prior})[fidx]
    prior_s = torch.full((S,), fitter_cfg.shape_prior, dtype=prob.dtype)
    h = 1e-6

    def residuals(shape_rows: Tensor, theta_rows: Tensor, k: int) -> Tensor:
        """``(B, S)``, ``(B, P)`` -> ``(B, R_k, 2)`` residuals of timestep ``k``."""
        tg, cams = blocks[k]
        yaw = prob.head_yaw(theta_rows[0], cams)
        verts = prob.model(prob.params(theta_rows, shape=shape_rows)).vertices
        pred = prob.project(verts, cams, yaw)
        return ((pred - tg.points[None]) / tg.scale[None, :, None, None]).reshape(theta_rows.shape[0], -1, 2)

    def cost(shape_v: Tensor, th: Tensor) -> tuple[float, list[Tensor]]:
        es, total = [], 0.0
        with torch.no_grad():
            for k in range(K):
                e = residuals(shape_v[None], th[k:k + 1], k)[0]
                e2 = (e ** 2).sum(-1)
                total += float((blocks[k][0].view_weight.reshape(-1) * e2 / (e2 + c * c)).sum())
                es.append(e)
        total += float((prior_s * shape_v ** 2).sum() + (prior_theta * th[:, fidx] ** 2).sum())
        return total, es

    shape_v = prob.shape[0].clone()
    current, es = cost(shape_v, thetas)
    lam = 1e-3
    n = S + K * F
    for _ in range(steps):
        A = torch.zeros(n, n, dtype=prob.dtype)
        g = torch.zeros(n, dtype=prob.dtype)
        for k in range(K):
            base_s = shape_v[None].expand(1 + S + F, -1).clone()
            base_t = thetas[k][None].expand(1 + S + F, -1).clone()
            base_s[1:1 + S] += torch.eye(S, dtype=prob.dtype) * h
            base_t[1 + S:, fidx] += torch.eye(F, dtype=prob.dtype) * h
            with torch.no_grad():
                out = residuals(base_s, base_t, k)
            e = out[0]
            J = ((out[1:] - out[:1]) / h).reshape(S + F, -1).T  # (2R, S + F)
            e2 = (e ** 2).sum(-1)
            a = (blocks[k][0].view_weight.reshape(-1) * c * c / (e2 + c * c) ** 2)[:, None].expand_as(e).reshape(-1)
            JtW = J.T * a
            H = JtW @ J
            gk = JtW @ e.reshape(-1)
            cols = torch.cat([torch.arange(S), S + k * F + torch.arange(F)])
            A[cols[:, None], cols[None]] += H
            g[cols] += gk
        A[:S, :S] += torch.diag(prior_s)
        g[:S] += prior_s * shape_v
        for k in range(K):
            sl = slice(S + k * F, S + (k + 1) * F)
            A[sl, sl] += torch.diag(prior_theta)
            g[sl] += prior_theta * thetas[k, fidx]
        def try_step(step, shape_v=shape_v, thetas=thetas):
            t_c = thetas.clone()
            t_c[:, fidx] += step[S:].reshape(K, F)
            s_c = shape_v + step[:S]
            return cost(s_c, t_c)[0], (s_c, t_c)

        accepted, new, lam, _ = marquardt_step(A, g, lam, current, try_step, tries=6)
        if accepted is None:
            break
        gain, current = current - new, new
        shape_v, thetas = accepted
        if gain < 1e-6 * max(current, 1e-12):
            break
    params = [{g_: v[0].numpy() for g_, v in prob.unpack(thetas[k:k + 1]).items()} for k in range(K)]
    return shape_v, params


# --------------------------------------------------------------------------------------------
# Head poses from the static fit's cameras (single camera)


def head_pose_from_camera(R_ref: np.ndarray, t_ref: np.ndarray, R_j: np.ndarray, t_j: np.ndarray,
                          root_joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLAME ``rotation`` (axis-angle) and ``translation`` that move the head so that the fixed camera
    ``(R_ref, t_ref)`` sees it as camera ``(R_j, t_j)`` saw the head at rest.

    ``R_ref (Rh x + th) + t_ref = R_j x + t_j`` gives ``Rh = R_refᵀ R_j``, ``th = R_refᵀ (t_j - t_ref)``;
    FLAME rotates about the root joint ``J`` and then translates: ``translation = th + Rh J - J``.
    """
    Rh = R_ref.T @ R_j
    th = R_ref.T @ (t_j - t_ref)
    trans = th + Rh @ root_joint - root_joint
    rot = rotation_matrix_to_axis_angle(torch.as_tensor(Rh[None], dtype=torch.float64))[0].numpy()
    return rot, trans


def root_joint(model: FlameModel, shape: Tensor) -> np.ndarray:
    with torch.no_grad():
        dtype = model.v_template.dtype
        p = FlameParams.zeros(1, model.n_shape, model.n_expr, dtype=dtype, device=model.v_template.device)
        p.shape = shape.reshape(1, -1).to(p.shape)
        return model(p, vertex_index=torch.zeros(1, dtype=torch.long, device=p.shape.device)).joints[0, 0].double().cpu().numpy()


# --------------------------------------------------------------------------------------------
# The dynamic run


def _keyframes(prepared, n_key: int, model, emb) -> list[int]:
    """Single camera: indices (into views) of up to ``n_key`` timesteps covering the head's poses."""
    from flame_prior.video import head_poses_deg, select_by_pose
    from flame_prior.flame import landmarks_from_vertices

    views = prepared.views
    with torch.no_grad():
        dtype = model.v_template.dtype
        p = FlameParams.zeros(1, model.n_shape, model.n_expr, dtype=dtype, device=model.v_template.device)
        verts = model(p).vertices
        lm3 = landmarks_from_vertices(verts, model.faces, emb, torch.zeros(1, dtype=dtype))[0].double().cpu().numpy()
    poses = head_poses_deg(views, lm3, emb.detector_index.astype(np.int64))
    chosen, _ = select_by_pose(poses, np.zeros(len(views)), n_key, 0.5)
    return chosen


def fit_dynamic(assets, prepared, config, progress=None):
    """Keyframe fit, tracking, identity refinement, tracking again. Returns ``(static FitResult of the
    keyframes, SequenceFit, keyframe view indices, intrinsics)``."""
    from flame_prior.fit import fit_flame
    from flame_prior.intrinsics import estimate_intrinsics

    views = prepared.views
    intake = prepared.intake
    pos = {im.name: j for j, im in enumerate(intake.images)}
    timestep = [intake.timestep[pos[v.image.name]] for v in views]
    camera = [intake.camera[pos[v.image.name]] for v in views]
    times = {intake.timestep[pos[v.image.name]]: intake.time[pos[v.image.name]] for v in views}
    n_cams = max(camera) + 1
    notes: list[str] = []
    if assets.model.n_expr == 0:
        notes.append(NO_EXPRESSION_NOTE)
    # 1. keyframes
    if n_cams == 1:
        key = _keyframes(prepared, config.tracker.keyframes, assets.model, assets.embedding)
    else:
        counts: dict[int, list[int]] = {}
        for i, t in enumerate(timestep):
            counts.setdefault(t, []).append(i)
        full_t = [t for t in sorted(counts) if len({camera[i] for i in counts[t]}) == n_cams]
        if not full_t:
            raise FitError("no timestep has a face in every camera: the cameras cannot be placed together.",
                           config.data, hint="Check that the camera folders show the same moments.")
        key = sorted(counts[full_t[0]], key=lambda i: camera[i])
    key_views = [views[i] for i in key]
    # COLMAP sees still keyframes only; it estimates no lens (the tracking below has no lens to use it).
    intr = estimate_intrinsics(key_views, replace(config.intrinsics, colmap_lens="none"),
                               progress=progress)
    if intr.distortion is not None:  # tracking projects raw landmarks through pinholes: refuse, never mis-track
        from flame_prior.errors import InputError

        raise InputError("lens distortion is not supported for dynamic sequences yet.", config.intrinsics.file,
                         hint="Undistort the frames first (e.g. colmap image_undistorter), or fit them as a static "
                              "set of photos.")
    result = fit_flame(assets.model, assets.embedding, key_views, intr, config.fitter,
                       texture_space=assets.texture_space, uv_layout=assets.uv_layout,
                       progress=progress)
    cams = result.cameras
    shape = torch.as_tensor(result.flame["shape"], dtype=torch.float64)
    J = root_joint(assets.model, shape)
    base = {"neck_pose": result.flame["neck_pose"], "jaw_pose": result.flame["jaw_pose"],
            "eye_pose": result.flame["eye_pose"], "expression": result.flame["expression"]}
    if n_cams == 1:
        order = sorted(range(len(key)), key=lambda j: timestep[key[j]])
        ref = order[0]
        fixed = cams.subset([ref])
        R = cams.R.numpy()
        t = cams.t.numpy()
        key_init = {}
        for j in range(len(key)):
            rot, trans = head_pose_from_camera(R[ref], t[ref], R[j], t[j], J)
            key_init[key[j]] = {**base, "rotation": rot, "translation": trans}
    else:
        fixed = cams
        key_init = {i: {**base, "rotation": np.zeros(3), "translation": np.zeros(3)} for i in key}
    first_t = min(timestep)
    # start from the keyframe nearest in time to the first timestep
    start = min(key_init, key=lambda i: abs(timestep[i] - first_t))
    t0 = time.perf_counter()
    track_seconds, passes = 0.0, 1
    params, err, ts = track_sequence(assets.model, assets.embedding, views, timestep, camera, fixed,
                                     shape.to(assets.model.v_template.dtype), key_init[start], config.fitter,
                                     config.tracker, progress)
    track_seconds += time.perf_counter() - t0
    if config.tracker.refine_identity and config.fitter.fit_shape and assets.model.n_shape:
        spread = ts[np.unique(np.linspace(0, len(ts) - 1, config.tracker.identity_timesteps).round().astype(int))]
        kts = sorted({timestep[i] for i in key} | {int(t) for t in spread})
        pos_t = {int(v): k for k, v in enumerate(ts)}
        key_groups = [[i for i in range(len(views)) if timestep[i] == t] for t in kts]
        key_params = [{g: params[g][pos_t[t]] for g in GROUPS} for t in kts]
        shape, _ = refine_identity(assets.model, assets.embedding, views, key_groups, key_params, camera, fixed,
                                   shape.double(), config.fitter, _fit_groups(config.fitter, assets.model))
        shape = shape.double().cpu()
        t1 = time.perf_counter()
        params, err, ts = track_sequence(assets.model, assets.embedding, views, timestep, camera, fixed,
                                         shape.to(assets.model.v_template.dtype),
                                         {g: params[g][0] for g in GROUPS}, config.fitter, config.tracker, progress)
        track_seconds += time.perf_counter() - t1
        passes = 2
        notes.append(f"identity refined on {len(kts)} timesteps with their tracked expressions and poses, then tracked again")
    seconds = time.perf_counter() - t0
    view_index = np.full((len(ts), n_cams), -1, dtype=np.int64)
    pos_t = {int(v): k for k, v in enumerate(ts)}
    for i, (tt, c) in enumerate(zip(timestep, camera)):
        view_index[pos_t[tt], c] = i
    seq = SequenceFit(shape=shape.numpy(), params=params, cameras=fixed.detach().to(dtype=torch.float64),
                      timesteps=ts, times=np.array([times[int(t)] for t in ts]), view_index=view_index,
                      landmark_px=err, seconds=seconds, track_seconds=track_seconds, passes=passes, keyframe_timesteps=sorted({timestep[i] for i in key}),
                      notes=notes)
    return result, seq, key, intr


def run_dynamic(config, assets, prepared, out, progress, console, t_start: float):
    """Fit and write a dynamic sequence (called by :func:`flame_prior.pipeline.run`)."""
    from rich.markup import escape

    from flame_prior.export.sequence import write_sequence_outputs
    from flame_prior.export.output_dir import atomic_output_dir

    if assets.model.n_expr == 0:
        console.print(f"note: {escape(NO_EXPRESSION_NOTE)}", highlight=False)
    timings = dict(prepared.timings)
    t0 = time.perf_counter()
    result, seq, _key, _intr = fit_dynamic(assets, prepared, config, progress)
    timings["fit"] = time.perf_counter() - t0
    timings["tracking"] = seq.seconds
    t0 = time.perf_counter()
    with atomic_output_dir(out, config.overwrite) as tmp:
        write_sequence_outputs(tmp, prepared, result, seq, timings, model_info=assets.info,
                               avatar_format=config.avatar_format, model=assets.model)
    timings["export"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    console.print(f"flame-prior: dynamic sequence, {len(seq.timesteps)} timesteps x {len(seq.cameras)} camera(s); "
                  f"tracking {seq.timesteps_per_second:.1f} timesteps/s; median landmark error "
                  f"{np.nanmedian(seq.landmark_px):.2f} px")
    for n in [n for n in seq.notes if n != NO_EXPRESSION_NOTE] + result.notes + prepared.intake.notes:  # said up front
        console.print(f"note: {escape(n)}", highlight=False)
    console.print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    console.print(f"output: [bold]{escape(str(out))}[/bold] (report: {escape(str(out / 'report.html'))})")
    return out
