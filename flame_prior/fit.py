"""Stage 4 — the fit: one FLAME head and one camera per view, all in FLAME's frame.

Public entry: :func:`fit_flame`. The head stays at FLAME's origin (global rotation and translation
zero) and every view gets its own camera, so the cameras come out directly in FLAME's frame
(metres, +Y up; see ``docs/conventions.md``). Three stages, each handing its state to the next:

1. **rigid** — cameras (and one shared focal scale when the focal is unknown) on the landmarks of
   the mean head: a closed-form start per view (PnP, over a grid of focal lengths when unknown),
   then a few Levenberg-Marquardt steps with robust (Geman-McClure, IRLS) weights. The jaw-contour
   landmarks of a dynamic embedding are re-selected from each view's yaw between rounds.
2. **landmarks** — shape, expression, jaw/neck/eye pose, cameras and focal together on the
   landmarks, with Gaussian priors, by Levenberg-Marquardt (a handful of steps). Only the vertices
   the landmarks sit on are evaluated (:class:`FlameModel` ``vertex_index``), so this costs O(L).
3. **photometric** — the renderer (``flame_prior.render``) on a square crop around each face:
   albedo (texture space, or a free UV map), per-view SH lighting, geometry and cameras, with a
   photometric L1 term inside the head mask, a two-sided mask term (model outside the head mask;
   face region left uncovered) and the landmark term; Adam with early stopping.

Stages 1-2 live in :mod:`flame_prior.fit_landmarks`, stage 3 in :mod:`flame_prior.fit_photometric`.
Every stage rejects non-finite steps and restores the last good state (and says so in
``FitResult.notes``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from flame_prior.errors import FitError, InputError
from flame_prior.fit_landmarks import (FitState, LandmarkTargets, ViewsNotInitialised, landmark_stage, landmark_targets,
                                       per_view_error_px, prepare_forward_ad, rigid_stage)
from flame_prior.fit_photometric import Appearance, initial_albedo_color, photometric_stage
from flame_prior.flame import FlameModel, LandmarkEmbedding, TextureSpace
from flame_prior.geometry import PinholeCameras, rotation_matrix_to_axis_angle
from flame_prior.images import SkippedInput
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation


@dataclass
class FitterConfig:
    """Fitting schedule, priors and loss weights."""

    rigid_steps: int = 10
    """Levenberg-Marquardt steps of the rigid stage (per yaw round)."""
    landmark_steps: int = 30
    """Levenberg-Marquardt steps of the landmark stage."""
    photometric_steps: int = 100
    """Adam iterations of the photometric stage (0 skips it)."""
    render_size: int = 160
    """Side in pixels of the square face crop rendered in the photometric stage."""
    photometric_views: int = 8
    """Views rendered per photometric step (a random mini-batch; all views when fewer)."""
    geometry_lr_scale: float = 1.0
    """Scale of the photometric stage's learning rates for cameras, shape, expression and pose."""
    appearance_lr_scale: float = 1.0
    """Scale of the photometric stage's learning rates for albedo and lighting."""
    appearance_warmup: float = 0.5
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
    w_landmark: float = 0.05
    """Landmark term weight in the photometric stage: low, so that the image, not the detector's
    yaw-dependent landmark bias, decides the final cameras (the landmark stage already placed them)."""
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
    rotation_sigma_deg: float = float("nan")  # camera uncertainty (flame_prior.camera_trust)
    centre_sigma_pct: float = float("nan")  # camera-centre uncertainty, % of its distance to the head
    yaw_deg: float = float("nan")  # the fitted head's yaw in this view (0 = frontal)
    flags: list[str] = field(default_factory=list)  # why this camera is not trusted (empty: trusted)


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
    left_out: list[SkippedInput] = field(default_factory=list)
    """Views given to the fit that got no camera (e.g. PnP found no pose), with the reason."""


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
    prepare_forward_ad()
    device = model.faces.device
    dtype = next((b.dtype for b in model.buffers() if b.is_floating_point()), torch.float32)
    n = len(views)
    tg = landmark_targets(views, embedding, device, dtype)
    st = FitState(model, embedding, intrinsics, n, device, dtype)
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
            pred = st.project(st.landmarks3d(st.yaw()))
        stages.append(StageLog(name, iters, secs, hist, per_view_error_px(pred, tg)))
        if task is not None:
            progress.update(task, completed=total)

    try:
        run_stage("rigid", 2 * config.rigid_steps, lambda tick: rigid_stage(st, tg, optimise_focal, config, tick))
    except ViewsNotInitialised as e:  # a per-view failure leaves that view out, never the run
        keep = [i for i in range(n) if i not in e.failed]
        if not keep:
            raise FitError(f"no view got a camera ({e}).",
                           hint="Check that the images show one face each and that the focal length is plausible.")
        result = fit_flame(model, embedding, [views[i] for i in keep], _subset_intrinsics(intrinsics, keep), config,
                           texture_space=texture_space, uv_layout=uv_layout, model_info=model_info, progress=progress)
        result.left_out = [SkippedInput(views[i].image.path, r) for i, r in e.failed.items()] + result.left_out
        return result
    run_stage("landmarks", config.landmark_steps,
              lambda tick: landmark_stage(st, tg, optimise_focal, config, tick, notes))
    uv_layout = uv_layout if texture_space is None else None
    if texture_space is None and uv_layout is None:
        raise FitError("no UV layout: pass a texture space or a UV layout for the free texture map.")
    appearance = Appearance(n, config, texture_space, uv_layout, initial_albedo_color(views, tg), device, dtype)
    if config.photometric_steps > 0:
        run_stage("photometric", config.photometric_steps,
                  lambda tick: photometric_stage(st, tg, views, optimise_focal, config, appearance, tick, notes))
    return _result(st, tg, views, appearance, stages, model_info or {}, intrinsics.source, notes)


def _subset_intrinsics(intr: Intrinsics, keep: list[int]) -> Intrinsics:
    from dataclasses import replace

    return replace(intr, fx=np.asarray(intr.fx)[keep], fy=np.asarray(intr.fy)[keep], cx=np.asarray(intr.cx)[keep],
                   cy=np.asarray(intr.cy)[keep],
                   colmap_w2c=None if intr.colmap_w2c is None else np.asarray(intr.colmap_w2c)[keep])


def _result(st: FitState, tg: LandmarkTargets, views, appearance: Appearance, stages, model_info, source, notes) -> FitResult:
    from flame_prior.camera_trust import pose_uncertainty, trust_flags

    with torch.no_grad():
        cams = st.cameras()
        yaw = st.yaw()
        lm3 = st.landmarks3d(yaw)
        pred = st.project(lm3, cams)
        verts = st.model(st.flame_params()).vertices[0]
        albedo = appearance.albedo()
    errs = per_view_error_px(pred, tg)
    eye = _outer_eye_distance(pred, st.emb)
    np_ = lambda x: x.detach().cpu().double().numpy()  # noqa: E731
    c = cams.to_numpy()
    view_fits = []
    for i, v in enumerate(views):
        rot_sigma, centre_sigma = pose_uncertainty(np_(lm3[i]), np_(tg.points[i]), np_(tg.weight[i]), c["R"][i],
                                                   c["t"][i], c["fx"][i], c["fy"][i], c["cx"][i], c["cy"][i])
        view_fits.append(ViewFit(v.image.name, np_(tg.points[i]), np_(pred[i]), np_(tg.weight[i]), float(errs[i]),
                                 float(eye[i]), rot_sigma, centre_sigma, float(yaw[i]),
                                 trust_flags(rot_sigma, float(yaw[i]), float(eye[i]), float(errs[i]))))
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
