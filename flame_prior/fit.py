"""Stage 4 — the fit: one FLAME head and one camera per view, all in FLAME's frame.

Public entry: :func:`fit_flame`. The head stays at FLAME's origin (global rotation and translation
zero) and every view gets its own camera, so the cameras come out directly in FLAME's frame
(metres, +Y up; see ``docs/conventions.md``). Three stages, each handing its state to the next:

1. **rigid** — cameras (and one shared focal scale when the focal is unknown) on the landmarks of
   the mean head: a closed-form start per view (PnP, over a grid of focal lengths when unknown),
   then a few Levenberg-Marquardt steps with robust (Geman-McClure, IRLS) weights. The jaw-contour
   landmarks of a dynamic embedding are re-selected from each view's yaw between rounds.
2. **landmarks** — shape, expression, jaw/neck/eye pose, cameras and focal together on the
   landmarks, with Gaussian priors, by L-BFGS (smooth, few dozen iterations). Only the vertices
   the landmarks sit on are evaluated (:class:`FlameModel` ``vertex_index``), so this costs O(L).
3. **photometric** — the renderer (``flame_prior.render``) on a square crop around each face:
   albedo (texture space, or a free UV map), per-view SH lighting, geometry and cameras, with a
   photometric L1 term inside the head mask, a two-sided mask term (model outside the head mask;
   face region left uncovered) and the landmark term; Adam with early stopping.

Landmark residuals are measured in pixels of the ORIGINAL image and normalised by each view's
face size, so weights do not depend on resolution. Every stage rejects non-finite steps and
restores the last good state (and says so in ``FitResult.notes``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal

import cv2
import numpy as np
import torch
from torch.autograd import forward_ad
from torch import Tensor

from flame_prior import render
from flame_prior.errors import FitError, InputError
from flame_prior.flame import (
    FlameModel,
    FlameParams,
    LandmarkEmbedding,
    TextureSpace,
    head_yaw_deg,
    landmarks_from_vertices,
    sh_basis,
    shade_sh,
)
from flame_prior.geometry import PinholeCameras, axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation


@dataclass
class FitterConfig:
    """Fitting schedule, priors and loss weights."""

    rigid_steps: int = 10
    """Levenberg-Marquardt steps of the rigid stage (per yaw round)."""
    landmark_steps: int = 30
    """Levenberg-Marquardt steps of the landmark stage."""
    photometric_steps: int = 60
    """Adam iterations of the photometric stage (0 skips it)."""
    render_size: int = 160
    """Side in pixels of the square face crop rendered in the photometric stage."""
    photometric_views: int = 8
    """Views rendered per photometric step (a random mini-batch; all views when fewer)."""
    appearance_warmup: float = 0.3
    """Fraction of the photometric steps that fit albedo and lighting only, geometry held."""
    texture_size: int = 256
    """Side of the free UV texture map (when no texture space is given)."""
    fit_shape: bool = True
    """Fit the identity (shape) coefficients."""
    fit_expression: bool = True
    """Fit expression coefficients (when the model has an expression space)."""
    fit_jaw: bool = True
    """Fit the jaw rotation."""
    fit_eyes: bool = True
    """Fit both eye rotations (needs iris landmarks or the photometric stage)."""
    fit_neck: bool = False
    """Fit the neck rotation (it trades off with the cameras; off by default)."""
    per_view_lighting: bool = True
    """One SH lighting per view (the head may turn under fixed lights) instead of one for all."""
    shape_prior: float = 1e-4
    """Weight of the squared norm of the shape coefficients."""
    expression_prior: float = 1e-4
    """Weight of the squared norm of the expression coefficients."""
    pose_prior: float = 1e-2
    """Weight of the squared norm of the jaw/neck/eye rotations (radians)."""
    robust_scale: float = 0.05
    """Geman-McClure scale of landmark residuals, as a fraction of the face size."""
    w_landmark: float = 1.0
    """Landmark term weight in the photometric stage."""
    w_photometric: float = 1.0
    """Photometric L1 term weight."""
    w_mask: float = 0.5
    """Mask term weight."""
    early_stop: float = 1e-4
    """Stop a stage when its loss improved by less than this fraction over 10 iterations."""
    seed: int = 0
    """Seed for every random choice (the fit is deterministic for a given seed and device)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to fit: auto uses CUDA when present."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--fitter.device cuda was asked for, but torch sees no CUDA device.",
                         hint="Use --fitter.device cpu or auto, or install a CUDA build of torch.")
    return torch.device(name)


@dataclass
class StageLog:
    """What one fitting stage did: for the summary, the report and the benchmark."""

    name: str
    iterations: int
    seconds: float
    loss_history: list[float]
    landmark_px: np.ndarray  # (N,) median landmark error per view after the stage, pixels


@dataclass
class ViewFit:
    """Per-view result in the ORIGINAL image's pixel grid."""

    name: str
    landmarks_detected: np.ndarray  # (L, 2) pixels, the detections the fit used
    landmarks_projected: np.ndarray  # (L, 2) pixels, the fitted model's landmarks projected
    landmark_weight: np.ndarray  # (L,) confidence * embedding weight used in the fit
    landmark_error_px: float  # weighted median over the landmarks used
    eye_distance_px: float  # outer-eye-corner distance of the projected model (normaliser)


@dataclass
class FitResult:
    """Everything the exports need.

    Attributes:
        cameras: one per fitted view, float64, OpenCV world-to-camera in FLAME's frame (metres).
        flame: FLAME parameters, FLAME's meaning and key names of the reference implementation:
            ``shape (n_shape,)``, ``expression (n_expr,)``, ``rotation (3,)`` (global, axis-angle
            about the root joint), ``neck_pose (3,)``, ``jaw_pose (3,)``, ``eye_pose (6,)`` (left
            then right eye), ``translation (3,)`` (added after skinning).
        vertices: ``(V, 3)`` the posed, fitted mesh in the world frame.
        faces: ``(F, 3)`` int64.
        uvs, uv_faces: ``(T, 2)`` texture coordinates (origin bottom-left, OBJ convention) and
            ``(F, 3)`` their per-face indices.
        texture: ``(Ht, Wt, 3)`` float32 albedo in [0, 1], image rows top-down (row 0 is v = 1).
        texture_coeffs: texture-space coefficients when a texture space was used, else None.
        lighting: ``(N, 9, 3)`` second-order SH coefficients per view (per colour channel).
        views: per-view fit details.
        stages: one log per stage, in order.
        model_info: which FLAME file (path, sha256, n_shape, n_expr, notes on what it lacks).
        intrinsics_source: "colmap" | "exif" | "optimised" | "prior" | "given".
    """

    cameras: PinholeCameras
    flame: dict[str, np.ndarray]
    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    uv_faces: np.ndarray
    texture: np.ndarray
    texture_coeffs: np.ndarray | None
    lighting: np.ndarray
    views: list[ViewFit]
    stages: list[StageLog]
    model_info: dict
    intrinsics_source: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Observations -> tensors


def check_observation(view: ViewObservation, embedding: LandmarkEmbedding, min_face_px: float = 20.0) -> str | None:
    """Why this view cannot be fitted (degenerate landmarks), or None when it can."""
    if view.landmark_format != embedding.detector:
        return f"landmarks are {view.landmark_format}, the embedding expects {embedding.detector}"
    idx = embedding.detector_index.astype(np.int64)
    if idx.max() >= len(view.landmarks):
        return f"the embedding needs detector point {idx.max()}, the detection has {len(view.landmarks)}"
    pts = view.landmarks[idx]
    conf = view.confidence[idx] * embedding.weight
    pts = pts[conf > 0.05]
    if len(pts) < 6:
        return f"only {len(pts)} usable landmarks (need 6)"
    if not np.isfinite(pts).all():
        return "landmarks contain NaN/Inf"
    size = float(np.linalg.norm(pts.max(0) - pts.min(0)))
    if size < min_face_px:
        return f"face too small to fit ({size:.0f} px across, need {min_face_px:.0f})"
    sv = np.linalg.svd(pts - pts.mean(0), compute_uv=False)
    if sv[1] < 0.05 * sv[0]:
        return "landmarks are (nearly) collinear: not a face"
    return None


@dataclass
class _Targets:
    """Landmark targets of N views as tensors."""

    points: Tensor  # (N, L, 2) pixels
    weight: Tensor  # (N, L) confidence x embedding weight
    view_weight: Tensor  # (N, L) the same, normalised to sum 1 per view: each view counts once
    scale: Tensor  # (N,) face size in pixels (landmark bounding-box diagonal)


def _landmark_targets(views: list[ViewObservation], emb: LandmarkEmbedding, device, dtype) -> _Targets:
    idx = emb.detector_index.astype(np.int64)
    pts = np.stack([v.landmarks[idx] for v in views]).astype(np.float64)
    w = np.stack([v.confidence[idx] for v in views]) * emb.weight[None]
    scale = np.array([np.linalg.norm(p[wi > 0.05].max(0) - p[wi > 0.05].min(0)) for p, wi in zip(pts, w)])
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return _Targets(t(pts), t(w), t(w / np.maximum(w.sum(1, keepdims=True), 1e-9)), t(scale))


# --------------------------------------------------------------------------------------------
# The state being fitted


class _State:
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
        n = yaw.shape[0]
        if not self.emb.has_contour:  # the same points in every view: compute once
            return landmarks_from_vertices(verts, self.faces_local, self.emb).expand(n, -1, -1)
        return landmarks_from_vertices(verts.expand(n, -1, -1), self.faces_local, self.emb, yaw)


def _project(points: Tensor, rot: Tensor, t: Tensor, fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """``(N, L, 3)`` world points to ``(N, L, 2)`` pixels with axis-angle cameras."""
    R = axis_angle_to_rotation_matrix(rot)
    pc = points @ R.transpose(1, 2) + t[:, None]
    z = pc[..., 2].clamp_min(1e-6)
    return torch.stack([fx[:, None] * pc[..., 0] / z + cx[:, None], fy[:, None] * pc[..., 1] / z + cy[:, None]], -1)


def _landmark_energy(pred: Tensor, tg: _Targets, c: float) -> Tensor:
    """Robust landmark energy: Geman-McClure ``rho(e^2) = e^2 / (e^2 + c^2)`` of the residuals as a
    fraction of the face size (``~ e^2 / c^2`` for inliers, saturating at 1 for outliers), averaged
    over each view's landmarks and summed over views (more views weigh more against the priors)."""
    e2 = ((pred - tg.points) ** 2).sum(-1) / tg.scale[:, None] ** 2
    return (tg.view_weight * e2 / (e2 + c * c)).sum()


def _per_view_error_px(pred: Tensor, tg: _Targets) -> np.ndarray:
    err = (pred - tg.points).norm(dim=-1).detach().cpu().numpy()
    w = tg.weight.detach().cpu().numpy()
    return np.array([float(np.median(e[wi > 0.05])) if (wi > 0.05).any() else float("nan") for e, wi in zip(err, w)])


# --------------------------------------------------------------------------------------------
# Levenberg-Marquardt on robust landmark residuals (stages 1 and 2)

_FLAME_NAMES = ("shape", "expression", "jaw", "eyes", "neck")


_FORWARD_AD_READY = False


def _prepare_forward_ad() -> None:
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


def _fit_landmarks_lm(st: _State, tg: _Targets, names: list[str], cfg: FitterConfig, steps: int, tick,
                      fixed_points: Tensor | None = None, tol: float = 1e-5):
    """Minimise ``sum w rho(|e|^2) + |p|^2`` by IRLS Gauss-Newton with Marquardt damping.

    ``e`` are the landmark residuals as a fraction of the face size, ``w`` the per-view normalised
    weights (as in :func:`_landmark_energy`), ``p`` the prior residuals of the FLAME parameters
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
    """Closed-form start of one camera: SQPnP on the reliable landmarks. Returns (rvec, t, rms px) or None."""
    keep = w > 0.3
    if keep.sum() < 6:
        keep = w > 0.0
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    ok, rvec, tvec = cv2.solvePnP(X[keep].astype(np.float64), x[keep].astype(np.float64), K, None,
                                  flags=cv2.SOLVEPNP_SQPNP)
    if not ok or tvec[2, 0] <= 0:
        return None
    proj, _ = cv2.projectPoints(X[keep], rvec, tvec, K, None)
    rms = float(np.sqrt(((proj[:, 0] - x[keep]) ** 2).sum(-1).mean()))
    return rvec[:, 0], tvec[:, 0], rms


def _rigid_stage(st: _State, tg: _Targets, optimise_focal: bool, cfg: FitterConfig, tick: Callable[[], None]):
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
    best = None
    for s in scales:
        sols = [_pnp_init(Xn[i], xn[i], wn[i], fx0[i] * s, fy0[i] * s, cx[i], cy[i]) for i in range(n)]
        if any(r is None for r in sols):
            continue
        score = float(np.median([r[2] for r in sols]))
        if best is None or score < best[0] - 1e-9:
            best = (score, s, sols)
    if best is None:
        raise FitError("no camera could be initialised from the landmarks (PnP failed in every view).",
                       hint="Check that every image shows one face and that the landmark embedding matches the detector.")
    _, s, sols = best
    st.log_focal = torch.tensor([math.log(s)], dtype=dtype, device=device)
    st.cam_rot = torch.as_tensor(np.stack([r[0] for r in sols]), dtype=dtype, device=device)
    st.cam_t = torch.as_tensor(np.stack([r[1] for r in sols]), dtype=dtype, device=device)
    names = ["cam_rot", "cam_t"] + (["log_focal"] if optimise_focal else [])
    iterations, history = 0, []
    for _round in range(2):  # the second round sees the jaw contour re-selected from each view's yaw
        with torch.no_grad():
            X = st.landmarks3d(st.yaw())
        it, hist = _fit_landmarks_lm(st, tg, names, cfg, cfg.rigid_steps, tick, fixed_points=X)
        iterations += it
        history += hist
    return iterations, history


# --------------------------------------------------------------------------------------------
# Stage 2: landmarks with shape, expression and pose


def _prior(st: _State, cfg: FitterConfig) -> Tensor:
    return (cfg.shape_prior * (st.shape ** 2).sum() + cfg.expression_prior * (st.expression ** 2).sum()
            + cfg.pose_prior * ((st.jaw ** 2).sum() + (st.eyes ** 2).sum() + (st.neck ** 2).sum()))


def _free_names(cfg: FitterConfig, st: _State, optimise_focal: bool) -> list[str]:
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


def _landmark_stage(st: _State, tg: _Targets, optimise_focal: bool, cfg: FitterConfig, tick, notes: list[str]):
    good = st.snapshot()
    iters, history = _fit_landmarks_lm(st, tg, _free_names(cfg, st, optimise_focal), cfg, cfg.landmark_steps, tick)
    if not st.finite():
        st.restore(good)
        notes.append("landmark stage: a step produced NaN/Inf; restored the last good state")
    return iters, history


# --------------------------------------------------------------------------------------------
# Stage 3: photometric


@dataclass
class _Crops:
    """Square face crops resampled to ``size``; crop-camera intrinsics follow from ``box``."""

    image: Tensor  # (N, S, S, 3) in [0, 1]
    head: Tensor  # (N, S, S) head mask in [0, 1]
    face: Tensor  # (N, S, S) filled hull of the detected face landmarks
    valid: Tensor  # (N, S, S) 1 where the crop lies inside the photo
    box: Tensor  # (N, 3) x0, y0, side in original pixels
    size: int


def _make_crops(views: list[ViewObservation], tg: _Targets, size: int, device, dtype) -> _Crops:
    imgs, heads, faces, valids, boxes = [], [], [], [], []
    pts_all, w_all = tg.points.cpu().numpy(), tg.weight.cpu().numpy()
    for v, pts, w in zip(views, pts_all, w_all):
        p = pts[w > 0.05]
        lo, hi = p.min(0), p.max(0)
        centre = (lo + hi) / 2 - np.array([0.0, 0.12 * (hi - lo)[1]])  # a bit up: forehead and hair
        side = 1.7 * float((hi - lo).max())
        x0, y0 = centre - side / 2
        s = size / side
        # Affine map original pixel coords (corner origin) -> crop coords; OpenCV's warpAffine uses
        # pixel-centre coordinates, which the +0.5/-0.5 terms account for.
        M = np.array([[s, 0, -x0 * s + 0.5 * s - 0.5], [0, s, -y0 * s + 0.5 * s - 0.5]])
        warp = lambda a, interp: cv2.warpAffine(a, M, (size, size), flags=interp, borderValue=0)  # noqa: E731
        imgs.append(warp(v.image.pixels, cv2.INTER_AREA).astype(np.float32) / 255.0)
        heads.append(warp(v.mask.astype(np.float32), cv2.INTER_LINEAR))
        valids.append(warp(np.ones(v.mask.shape, np.float32), cv2.INTER_NEAREST))
        hull = cv2.convexHull(((p - [x0, y0]) * s).astype(np.float32))
        fm = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(fm, np.round(hull[:, 0]).astype(np.int32), 1)
        faces.append(fm.astype(np.float32))
        boxes.append([x0, y0, side])
    t = lambda a: torch.as_tensor(np.stack(a), dtype=dtype, device=device)  # noqa: E731
    return _Crops(t(imgs), t(heads), t(faces), t(valids), t(boxes), size)


def _render(st: _State, idx: Tensor, faces: Tensor, uvs: Tensor, uv_faces: Tensor, albedo_map: Tensor, sh: Tensor,
            fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor, size: int,
            topology: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Render views ``idx`` (B,) of the current head.

    Returns colour (B,S,S,3), coverage (B,S,S), rast, and the posed vertices (1,V,3)."""
    verts = st.model(st.flame_params()).vertices  # (1, V, 3)
    n = idx.shape[0]
    R = axis_angle_to_rotation_matrix(st.cam_rot[idx])
    pc = verts.expand(n, -1, -1) @ R.transpose(1, 2) + st.cam_t[idx][:, None]
    pos = render.pinhole_to_clip(pc, fx, fy, cx, cy, size, size)
    rast = render.rasterize(pos, faces, (size, size))
    uv = render.interpolate(uvs, rast, uv_faces)
    albedo = render.texture(albedo_map, uv)
    normals = render.interpolate(render.vertex_normals(verts, faces).expand(n, -1, -1), rast, faces)
    normals = torch.nn.functional.normalize(normals, dim=-1)
    color = shade_sh(albedo, normals, sh)
    # Silhouette gradients come from the coverage (mask term) only: an antialiased colour would blend
    # edge pixels towards the renderer's black background, not the photo's, and bias the outline.
    cov = render.coverage(rast, pos, faces, topology)[..., 0]
    return color, cov, rast, verts


def _photometric_stage(st: _State, tg: _Targets, views, optimise_focal: bool, cfg: FitterConfig,
                       appearance: "_Appearance", tick, notes: list[str]):
    device, dtype = tg.points.device, tg.points.dtype
    crops = _make_crops(views, tg, cfg.render_size, device, dtype)
    ratio = crops.size / crops.box[:, 2]
    names = _free_names(cfg, st, optimise_focal)
    geo = [getattr(st, k).detach().requires_grad_(True) for k in names]
    for k, p in zip(names, geo):
        setattr(st, k, p)
    app_params = appearance.parameters()
    lrs = {"cam_rot": 2e-3, "cam_t": 1e-3, "log_focal": 2e-3, "shape": 2e-2, "expression": 2e-2, "jaw": 5e-3,
           "eyes": 5e-3, "neck": 2e-3}
    geo_groups = [{"params": [p], "lr": lrs[k]} for k, p in zip(names, geo)]
    opt = torch.optim.Adam(geo_groups + [{"params": [p], "lr": lr} for p, lr in app_params])
    # Appearance first: albedo and light start flat, and geometry moved to explain their errors
    # would drift; so the first steps fit appearance only, then everything together.
    warmup = int(cfg.photometric_steps * cfg.appearance_warmup)
    for g in geo_groups:
        g["initial_lr"], g["lr"] = g["lr"], 0.0
    history: list[float] = []
    yaw = st.yaw()
    good, good_app = st.snapshot(), appearance.snapshot()
    topology = render.edge_topology(st.model.faces)
    n = tg.points.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    it = 0
    for it in range(1, cfg.photometric_steps + 1):
        # A mini-batch of views per step keeps the cost per step independent of the number of views.
        if len(order) < min(n, cfg.photometric_views):
            order += torch.randperm(n, generator=gen).tolist()
        idx = torch.as_tensor(sorted(order[: min(n, cfg.photometric_views)]), device=device)
        del order[: min(n, cfg.photometric_views)]
        if it == warmup + 1:
            for g in geo_groups:
                g["lr"] = g["initial_lr"]
        opt.zero_grad()
        cams = st.cameras()
        r = ratio[idx]
        fx, fy = cams.fx[idx] * r, cams.fy[idx] * r
        cx, cy = (st.cx[idx] - crops.box[idx, 0]) * r, (st.cy[idx] - crops.box[idx, 1]) * r
        color, cov, rast, verts = _render(st, idx, st.model.faces, appearance.uvs, appearance.uv_faces,
                                          appearance.albedo(), appearance.sh()[idx], fx, fy, cx, cy, crops.size, topology)
        head, valid, face = crops.head[idx], crops.valid[idx], crops.face[idx]
        inside = (rast[..., 3] > 0).to(dtype) * head * valid
        photo = ((color - crops.image[idx]).abs().sum(-1) * inside).sum() / inside.sum().clamp_min(1.0)
        mask = ((cov * (1 - head) * valid).mean() + ((1 - cov) * face).mean())
        # Landmarks on the vertices just rendered (no second FLAME evaluation).
        lm3 = (landmarks_from_vertices(verts, st.model.faces, st.emb).expand(n, -1, -1) if not st.emb.has_contour
               else landmarks_from_vertices(verts.expand(n, -1, -1), st.model.faces, st.emb, yaw))
        pred = _project(lm3, st.cam_rot, st.cam_t, cams.fx, cams.fy, st.cx, st.cy)
        lmk = _landmark_energy(pred, tg, cfg.robust_scale)
        loss = cfg.w_photometric * photo + cfg.w_mask * mask + cfg.w_landmark * lmk + _prior(st, cfg)
        if not torch.isfinite(loss):
            st.restore(good)
            appearance.restore(good_app)
            notes.append(f"photometric stage: non-finite loss at iteration {it}; restored the last good state")
            break
        loss.backward()
        opt.step()
        appearance.clamp_()
        history.append(float(loss.detach()))
        tick()
        if it % 10 == 0:
            good, good_app = st.snapshot(), appearance.snapshot()
            if len(history) > 20 and history[-11] - history[-1] < cfg.early_stop * abs(history[-11]):
                break
    for k, p in zip(names, geo):
        setattr(st, k, p.detach())
    return it, history


class _Appearance:
    """Albedo (texture space coefficients, or a free UV map) and SH lighting being fitted."""

    def __init__(self, n_views: int, cfg: FitterConfig, texture_space: TextureSpace | None,
                 uv_layout: tuple[np.ndarray, np.ndarray], init_color: np.ndarray, device, dtype):
        self.space = texture_space
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        if texture_space is not None:
            self.uvs, self.uv_faces = t(texture_space.uvs), torch.as_tensor(texture_space.uv_faces, device=device)
            self.mean, self.basis = t(texture_space.mean), t(texture_space.basis)
            self.coeffs = torch.zeros(1, self.basis.shape[-1], dtype=dtype, device=device)
            self.map = None
        else:
            self.uvs, self.uv_faces = t(uv_layout[0]), torch.as_tensor(uv_layout[1], device=device)
            size = cfg.texture_size
            self.map = t(np.broadcast_to(np.clip(init_color, 0.02, 0.98), (size, size, 3)).copy())
            self.coeffs = None
        y0 = float(sh_basis(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))[0, 0])
        n_sh = n_views if cfg.per_view_lighting else 1
        self.shared_sh = not cfg.per_view_lighting
        self.n_views = n_views
        self.sh_coeffs = torch.zeros(n_sh, 9, 3, dtype=dtype, device=device)
        self.sh_coeffs[:, 0, :] = 1.0 / y0  # unit ambient light

    def parameters(self) -> list[tuple[Tensor, float]]:
        self.sh_coeffs.requires_grad_(True)
        if self.map is not None:
            self.map.requires_grad_(True)
            return [(self.map, 2e-2), (self.sh_coeffs, 1e-2)]
        self.coeffs.requires_grad_(True)
        return [(self.coeffs, 5e-2), (self.sh_coeffs, 1e-2)]

    def albedo(self) -> Tensor:
        if self.map is not None:
            return self.map
        return (self.mean + (self.basis * self.coeffs[0]).sum(-1)).clamp(0.0, 1.0)

    def sh(self) -> Tensor:
        return self.sh_coeffs.expand(self.n_views, -1, -1) if self.shared_sh else self.sh_coeffs

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.map is not None:
            self.map.clamp_(0.0, 1.0)

    def snapshot(self) -> list[Tensor]:
        return [x.detach().clone() for x in (self.map, self.coeffs, self.sh_coeffs) if x is not None]

    @torch.no_grad()
    def restore(self, snap: list[Tensor]) -> None:
        live = [x for x in (self.map, self.coeffs, self.sh_coeffs) if x is not None]
        for x, s in zip(live, snap):
            x.copy_(s)


def _init_color(views: list[ViewObservation], tg: _Targets) -> np.ndarray:
    """Median colour inside the detected face landmarks' hull, over all views."""
    samples = []
    for v, pts, w in zip(views, tg.points.cpu().numpy(), tg.weight.cpu().numpy()):
        hull = cv2.convexHull(pts[w > 0.05].astype(np.float32))
        m = np.zeros(v.image.pixels.shape[:2], np.uint8)
        cv2.fillConvexPoly(m, np.round(hull[:, 0]).astype(np.int32), 1)
        samples.append(v.image.pixels[m > 0][::7])
    return np.median(np.concatenate(samples), 0).astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Entry point


def fit_flame(
    model: FlameModel,
    embedding: LandmarkEmbedding,
    views: list[ViewObservation],
    intrinsics: Intrinsics,
    config: FitterConfig,
    *,
    texture_space: TextureSpace | None = None,
    uv_layout: tuple[np.ndarray, np.ndarray] | None = None,
    model_info: dict | None = None,
    progress=None,
) -> FitResult:
    """Fit one FLAME head and one camera per view to the observations.

    Args:
        model: the FLAME model (its device and dtype are used).
        embedding: maps the detector's landmarks onto the mesh.
        views: N observations (already checked with :func:`check_observation`).
        intrinsics: initial intrinsics of the N views (original pixel grids).
        config: schedule, priors and weights.
        texture_space: fit albedo coefficients of this space; else a free UV map on ``uv_layout``.
        uv_layout: ``(uvs (T,2), uv_faces (F,3))``, needed when no texture space is given.
        model_info: copied into the result (which FLAME file).
        progress: a ``rich.progress.Progress`` to report on, or None.

    Returns:
        The :class:`FitResult`, cameras in each view's original pixel grid.
    """
    if not views:
        raise FitError("no view to fit: no image had a usable face.")
    for v in views:  # fit_flame is public: a view nobody checked must not reach PnP with NaN or 3 points
        reason = check_observation(v, embedding, min_face_px=0.0)
        if reason is not None:
            raise FitError(f"view {v.image.name} cannot be fitted: {reason}.", v.image.path,
                           hint="Leave out the views that check_observation rejects.")
    torch.manual_seed(config.seed)
    _prepare_forward_ad()
    device = model.faces.device
    dtype = next((b.dtype for b in model.buffers() if b.is_floating_point()), torch.float32)
    n = len(views)
    tg = _landmark_targets(views, embedding, device, dtype)
    st = _State(model, embedding, intrinsics, n, device, dtype)
    st.widths = [v.image.width for v in views]
    st.heights = [v.image.height for v in views]
    optimise_focal = bool(intrinsics.optimise_focal) and n > 1
    notes: list[str] = []
    stages: list[StageLog] = []

    def run_stage(name: str, total: int, fn):
        task = progress.add_task(f"fit: {name}", total=total) if progress is not None else None
        tick = (lambda: progress.advance(task)) if task is not None else (lambda: None)
        t0 = time.perf_counter()
        iters, hist = fn(tick)
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        with torch.no_grad():
            cams = st.cameras()
            pred = _project(st.landmarks3d(st.yaw()), st.cam_rot, st.cam_t, cams.fx, cams.fy, st.cx, st.cy)
        stages.append(StageLog(name, iters, secs, hist, _per_view_error_px(pred, tg)))
        if task is not None:
            progress.update(task, completed=total)

    run_stage("rigid", 2 * config.rigid_steps, lambda tick: _rigid_stage(st, tg, optimise_focal, config, tick))
    run_stage("landmarks", config.landmark_steps,
              lambda tick: _landmark_stage(st, tg, optimise_focal, config, tick, notes))
    uv_layout = uv_layout if texture_space is None else None
    if texture_space is None and uv_layout is None:
        raise FitError("no UV layout: pass a texture space or a UV layout for the free texture map.")
    appearance = _Appearance(n, config, texture_space, uv_layout, _init_color(views, tg), device, dtype)
    if config.photometric_steps > 0:
        run_stage("photometric", config.photometric_steps,
                  lambda tick: _photometric_stage(st, tg, views, optimise_focal, config, appearance, tick, notes))
    return _result(st, tg, views, appearance, stages, model_info or {}, intrinsics.source, notes)


def _result(st: _State, tg: _Targets, views, appearance: _Appearance, stages, model_info, source, notes) -> FitResult:
    with torch.no_grad():
        cams = st.cameras()
        pred = _project(st.landmarks3d(st.yaw()), st.cam_rot, st.cam_t, cams.fx, cams.fy, st.cx, st.cy)
        verts = st.model(st.flame_params()).vertices[0]
        albedo = appearance.albedo()
    errs = _per_view_error_px(pred, tg)
    eye = _outer_eye_distance(pred, st.emb)
    np_ = lambda x: x.detach().cpu().double().numpy()  # noqa: E731
    view_fits = [
        ViewFit(v.image.name, np_(tg.points[i]), np_(pred[i]), np_(tg.weight[i]), float(errs[i]), float(eye[i]))
        for i, v in enumerate(views)
    ]
    flame = {
        "shape": np_(st.shape[0]), "expression": np_(st.expression[0]), "rotation": np.zeros(3),
        "neck_pose": np_(st.neck[0]), "jaw_pose": np_(st.jaw[0]), "eye_pose": np_(st.eyes[0]),
        "translation": np.zeros(3),
    }
    return FitResult(
        cameras=cams.detach().to(device="cpu", dtype=torch.float64),
        flame=flame,
        vertices=np_(verts),
        faces=st.model.faces.cpu().numpy().astype(np.int64),
        uvs=appearance.uvs.detach().cpu().numpy().astype(np.float32),
        uv_faces=appearance.uv_faces.cpu().numpy().astype(np.int64),
        texture=albedo.detach().cpu().float().numpy(),
        texture_coeffs=None if appearance.coeffs is None else np_(appearance.coeffs[0]),
        lighting=np_(appearance.sh()),
        views=view_fits,
        stages=stages,
        model_info=model_info,
        intrinsics_source=source,
        notes=notes,
    )


def _outer_eye_distance(pred: Tensor, emb: LandmarkEmbedding) -> np.ndarray:
    """Per view distance of the outer eye corners (iBUG 36/45, MediaPipe 33/263), pixels."""
    corners = {"ibug68": (36, 45), "mediapipe478": (33, 263)}.get(emb.detector)
    idx = emb.detector_index.astype(np.int64)
    if corners is None or corners[0] not in idx or corners[1] not in idx:
        return np.full(pred.shape[0], float("nan"))
    a, b = int(np.flatnonzero(idx == corners[0])[0]), int(np.flatnonzero(idx == corners[1])[0])
    return (pred[:, a] - pred[:, b]).norm(dim=-1).detach().cpu().numpy()


def rotation_vectors(cameras: PinholeCameras) -> Tensor:
    """Axis-angle of each camera's world-to-camera rotation (handy for reports)."""
    return rotation_matrix_to_axis_angle(cameras.R)
