"""What the fit's stages hand each other: the landmark targets, the state being fitted
(:class:`FitState`, built complete, never changed in place: a stage returns a new one) and a stage's
log (:class:`StageLog`).

Landmark residuals are measured in pixels of the ORIGINAL image and normalised by each view's face
size, so weights do not depend on resolution.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from flame_prior.fit.config import FitterConfig
from flame_prior.flame import FlameModel, FlameParams, LandmarkEmbedding, head_yaw_deg, landmarks_from_vertices
from flame_prior.geometry import PinholeCameras, axis_angle_to_rotation_matrix, project_points
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation

__all__ = ["LandmarkTargets", "landmark_targets", "landmark_vertex_subset", "FitState", "PARAMETER_NAMES", "StageLog", "stage_log",
           "landmark_energy", "prior_energy", "per_view_error_px", "free_parameters"]


@dataclass
class LandmarkTargets:
    """Landmark targets of N views as tensors."""

    points: Tensor  # (N, L, 2) pixels
    weight: Tensor  # (N, L) confidence x embedding weight
    view_weight: Tensor  # (N, L) the same, normalised to sum 1 per view: each view counts once
    scale: Tensor  # (N,) face size in pixels (landmark bounding-box diagonal)


def landmark_targets(views: list[ViewObservation], emb: LandmarkEmbedding, device, dtype) -> LandmarkTargets:
    idx = emb.detector_index.astype(np.int64)
    pts = np.stack([v.detection.landmarks[idx] for v in views]).astype(np.float64)
    w = np.stack([v.detection.confidence[idx] for v in views]) * emb.weight[None]
    scale = np.array([np.linalg.norm(p[wi > 0.05].max(0) - p[wi > 0.05].min(0)) for p, wi in zip(pts, w)])
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return LandmarkTargets(t(pts), t(w), t(w / np.maximum(w.sum(1, keepdims=True), 1e-9)), t(scale))


def landmark_vertex_subset(model: FlameModel, emb: LandmarkEmbedding) -> tuple[Tensor, Tensor]:
    """For landmark-only FLAME evaluation: ``(M,)`` the vertices the embedding's triangles use
    (static and contour), and ``(F, 3)`` the triangle table remapped to that subset (triangles the
    embedding never uses map to vertex 0), on the model's device."""
    faces = model.faces.detach().cpu().numpy()
    used = [emb.face_idx.reshape(-1)]
    if emb.contour_face_idx is not None:
        used.append(emb.contour_face_idx.reshape(-1))
    used_faces = np.unique(np.concatenate(used))
    vidx = np.unique(faces[used_faces].reshape(-1))
    remap = np.zeros(faces.max() + 1, dtype=np.int64)
    remap[vidx] = np.arange(len(vidx))
    device = model.faces.device
    return torch.as_tensor(vidx, device=device), torch.as_tensor(remap[faces], device=device)


#: The fitted tensors of a :class:`FitState` (the rest is fixed for the whole fit).
PARAMETER_NAMES = ("cam_rot", "cam_t", "log_focal", "shape", "expression", "jaw", "eyes", "neck")


@dataclass(frozen=True, eq=False)
class FitState:
    """FLAME parameters (one head) and N cameras, as tensors that the stages optimise.

    Built complete by :meth:`initial`; a stage returns a new state (:meth:`replace`), so a state
    a caller holds never changes under it.

    Attributes:
        model, emb: the FLAME model and the landmark embedding.
        fx0, fy0, cx, cy: ``(N,)`` the initial intrinsics, pixels of each original image.
        widths, heights: each view's image size in pixels.
        vertex_index, faces_local: the vertices the embedding's triangles use, and the triangle
            table remapped to that subset (triangles the embedding never uses map to vertex 0), for
            landmark-only FLAME evaluation.
        cam_rot, cam_t: ``(N, 3)`` axis-angle and translation of each world-to-camera pose.
        log_focal: ``(1,)`` log of the one focal scale shared by all views.
        shape, expression: ``(1, n_shape)``, ``(1, n_expr)``; jaw, eyes, neck: ``(1, 3)``, ``(1, 6)``,
            ``(1, 3)`` axis-angle.
        camera_fixed: ``(N,)`` bool, cameras later stages must not move (set by the multi-view
            stage: they follow COLMAP's relative geometry), or None.
    """

    model: FlameModel
    emb: LandmarkEmbedding
    fx0: Tensor
    fy0: Tensor
    cx: Tensor
    cy: Tensor
    widths: tuple[int, ...]
    heights: tuple[int, ...]
    vertex_index: Tensor
    faces_local: Tensor
    cam_rot: Tensor
    cam_t: Tensor
    log_focal: Tensor
    shape: Tensor
    expression: Tensor
    jaw: Tensor
    eyes: Tensor
    neck: Tensor
    camera_fixed: Tensor | None = None

    @classmethod
    def initial(cls, model: FlameModel, emb: LandmarkEmbedding, intr: Intrinsics, sizes: list[tuple[int, int]],
                device, dtype) -> "FitState":
        """The mean head (all parameters zero) and N identity cameras; ``sizes`` are ``(width, height)``."""
        n = len(sizes)
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)  # noqa: E731
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        vertex_index, faces_local = landmark_vertex_subset(model, emb)
        return cls(model=model, emb=emb, fx0=t(intr.fx), fy0=t(intr.fy), cx=t(intr.cx), cy=t(intr.cy),
                   widths=tuple(int(w) for w, _ in sizes), heights=tuple(int(h) for _, h in sizes),
                   vertex_index=vertex_index.to(device), faces_local=faces_local.to(device),
                   cam_rot=z(n, 3), cam_t=z(n, 3), log_focal=z(1), shape=z(1, model.n_shape),
                   expression=z(1, model.n_expr), jaw=z(1, 3), eyes=z(1, 6), neck=z(1, 3))

    def replace(self, **parameters: Tensor) -> "FitState":
        """A new state with some of :data:`PARAMETER_NAMES` replaced."""
        unknown = set(parameters) - set(PARAMETER_NAMES)
        if unknown:
            raise TypeError(f"FitState.replace: not fitted parameters: {sorted(unknown)}")
        return dataclasses.replace(self, **parameters)

    def snapshot(self) -> dict[str, Tensor]:
        """Detached copies of the fitted parameters (``state.replace(**snapshot)`` restores them)."""
        return {k: getattr(self, k).detach().clone() for k in PARAMETER_NAMES}

    def finite(self) -> bool:
        return all(bool(torch.isfinite(getattr(self, k)).all()) for k in PARAMETER_NAMES)

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


@dataclass
class StageLog:
    """What one fitting stage did: for the summary, the report and the benchmark."""

    name: str
    iterations: int
    seconds: float
    loss_history: list[float]
    landmark_px: np.ndarray  # (N,) median landmark error per view after the stage, pixels
    notes: list[str] = field(default_factory=list)  # e.g. "a step produced NaN/Inf; restored ..."
    details: dict = field(default_factory=dict)  # stage-specific figures for fit_summary.json (JSON types)
    steps_by_size: dict[int, int] = field(default_factory=dict)  # photometric: iterations per render size


def stage_log(name: str, st: FitState, tg: LandmarkTargets, started: float, iterations: int,
              history: list[float], notes: list[str] | None = None) -> StageLog:
    """The log of a stage that began at ``time.perf_counter() == started`` and ended in ``st``."""
    if st.cam_t.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        pred = st.project(st.landmarks3d(st.yaw()))
    return StageLog(name, iterations, seconds, history, per_view_error_px(pred, tg), list(notes or []))


def landmark_energy(pred: Tensor, tg: LandmarkTargets, c: float) -> Tensor:
    """Robust landmark energy: Geman-McClure ``rho(e^2) = e^2 / (e^2 + c^2)`` of the residuals as a
    fraction of the face size (``~ e^2 / c^2`` for inliers, saturating at 1 for outliers), averaged
    over each view's landmarks and summed over views (more views weigh more against the priors)."""
    e2 = ((pred - tg.points) ** 2).sum(-1) / tg.scale[:, None] ** 2
    return (tg.view_weight * e2 / (e2 + c * c)).sum()


def prior_energy(st: FitState, cfg: FitterConfig) -> Tensor:
    return (cfg.shape_prior * (st.shape ** 2).sum() + cfg.expression_prior * (st.expression ** 2).sum()
            + cfg.pose_prior * ((st.jaw ** 2).sum() + (st.eyes ** 2).sum() + (st.neck ** 2).sum()))


def per_view_error_px(pred: Tensor, tg: LandmarkTargets) -> np.ndarray:
    err = (pred - tg.points).norm(dim=-1).detach().cpu().numpy()
    w = tg.weight.detach().cpu().numpy()
    return np.array([float(np.median(e[wi > 0.05])) if (wi > 0.05).any() else float("nan") for e, wi in zip(err, w)])


def free_parameters(cfg: FitterConfig, model: FlameModel, optimise_focal: bool) -> list[str]:
    """The parameters the landmark and photometric stages fit (:data:`PARAMETER_NAMES`), by the
    config's switches and what the model has."""
    names = ["cam_rot", "cam_t"]
    if optimise_focal:
        names.append("log_focal")
    if cfg.fit_shape and model.n_shape:
        names.append("shape")
    if cfg.fit_expression and model.n_expr:
        names.append("expression")
    if cfg.fit_jaw:
        names.append("jaw")
    if cfg.fit_eyes:
        names.append("eyes")
    if cfg.fit_neck:
        names.append("neck")
    return names
