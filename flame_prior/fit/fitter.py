"""The fit (pipeline step 4): one FLAME head and one camera per view, all in FLAME's frame.

Public entry: :func:`fit_flame`. The head stays at FLAME's origin (global rotation and translation
zero) and every view gets its own camera, so the cameras come out directly in FLAME's frame
(metres, +Y up; see ``docs/conventions.md``). Four stages, each handing its state to the next:

1. **rigid** — cameras (and one shared focal scale when the focal is unknown) on the landmarks of
   the mean head: a closed-form start per view (PnP, over a grid of focal lengths when unknown),
   then a few Levenberg-Marquardt steps with robust (Geman-McClure, IRLS) weights. The jaw-contour
   landmarks of a dynamic embedding are re-selected from each view's yaw between rounds.
2. **landmarks** — shape, expression, jaw/neck/eye pose, cameras and focal together on the
   landmarks, with Gaussian priors, by Levenberg-Marquardt (a handful of steps). Only the vertices
   the landmarks sit on are evaluated (:class:`FlameModel` ``vertex_index``), so this costs O(L).
2b. **multiview** — when COLMAP registered views (``Intrinsics.poses``): their cameras follow
   COLMAP's relative poses, brought into FLAME's frame by one similarity refined with FLAME on the
   landmarks (:mod:`flame_prior.fit.multiview`); the later stages leave those cameras fixed.
3. **occlusion** — albedo and per-view SH lighting solved in closed form (linear least squares,
   alternating) on the landmark stage's geometry; landmarks amid crop pixels the solved appearance
   cannot explain are flagged occluded (``ViewFit.landmark_occluded``); with ``occlusion_refit``
   those pixels also leave the photometric loss and the landmarks are refitted without them.
4. **photometric** — the renderer (``flame_prior.render``) on a square crop around each face, the
   appearance refined with the geometry from the closed-form solve: geometry and cameras by Adam
   (warm-up, cosine fall of the rates) on a photometric L1 term
   inside the head mask, a two-sided mask term (model outside the head mask; face region left
   uncovered) and the landmark term; early stopping. A scene of one view runs
   ``photometric_steps_one_view`` steps (none by default: :class:`FitterConfig` says why), after
   the occlusion stage all the same. Cameras fixed by the multiview stage
   (``FitState.camera_fixed``) or marked in ``frozen_cameras`` stay where they are; when that is
   every camera, only the head and the appearance can move and the stage runs the pinned schedule
   (``FitterConfig.pinned``: fewer steps of fewer views at higher rates; the config says why).

Stages 1-2 live in :mod:`flame_prior.fit.landmarks`, 2b in :mod:`flame_prior.fit.multiview`, stages 3-4 in
:mod:`flame_prior.fit.photometric`;
each is a function from a :class:`~flame_prior.fit.state.FitState` to a new state and its
:class:`~flame_prior.fit.state.StageLog`. Every stage rejects non-finite steps and restores the
last good state (and says so in ``FitResult.notes``).
"""

from __future__ import annotations


import dataclasses
import time

import numpy as np
import torch
from torch import Tensor

from flame_prior.camera_trust import (pose_covariance, pose_uncertainty, similarity_covariance, track_uncertainty,
                                       trust_flags)
from flame_prior.distortion import has_distortion, ideal_pinhole_view
from flame_prior.errors import FitError
from flame_prior.fit.config import FitterConfig
from flame_prior.fit.landmarks import ViewsNotInitialised, landmark_stage, rigid_stage
from flame_prior.fit.multiview import lbfgs_evaluations, multiview_stage
from flame_prior.fit.photometric import Appearance, initial_albedo_color, make_crops, occlusion_stage, photometric_stage
from flame_prior.fit.result import FitResult, ViewFit
from flame_prior.fit.state import FitState, LandmarkTargets, StageLog, landmark_targets, per_view_error_px, stage_log
from flame_prior.flame import FlameModel, LandmarkEmbedding, TextureSpace
from flame_prior.images import SkippedInput
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation
from flame_prior.threads import compute_threads, stage_threads

__all__ = ["fit_flame", "check_observation"]


# --------------------------------------------------------------------------------------------
# Observations -> tensors


def check_observation(view: ViewObservation, embedding: LandmarkEmbedding, min_face_px: float = 20.0) -> str | None:
    """Why this view cannot be fitted (degenerate landmarks), or None when it can."""
    det = view.detection
    if det.landmark_format != embedding.detector:
        return f"landmarks are {det.landmark_format}, the embedding expects {embedding.detector}"
    idx = embedding.detector_index.astype(np.int64)
    if idx.max() >= len(det.landmarks):
        return f"the embedding needs detector point {idx.max()}, the detection has {len(det.landmarks)}"
    pts = det.landmarks[idx]
    conf = det.confidence[idx] * embedding.weight
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
    progress=None,
    frozen_cameras: np.ndarray | None = None,
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
        progress: a ``rich.progress.Progress`` to report on, or None.
        frozen_cameras: ``(N,)`` bool, views whose camera the photometric stage must keep (e.g.
            cameras pinned to a reconstruction by an earlier stage); None: all cameras move.

    Returns:
        The :class:`FitResult`, cameras in each view's original pixel grid. With lens distortion
        (``intrinsics.distortion``) the fit runs on each view's ideal pinhole view
        (:mod:`flame_prior.distortion`) and the cameras carry the distortion for the writers.
    """
    if not views:
        raise FitError("no view to fit: no image had a usable face.")
    if has_distortion(intrinsics.distortion):
        return _fit_through_lens(model, embedding, views, intrinsics, config, texture_space=texture_space,
                                 uv_layout=uv_layout, progress=progress)
    for v in views:  # fit_flame is public: a view nobody checked must not reach PnP with NaN or 3 points
        reason = check_observation(v, embedding, min_face_px=0.0)
        if reason is not None:
            raise FitError(f"view {v.image.name} cannot be fitted: {reason}.", v.image.path,
                           hint="Leave out the views that check_observation rejects.")
    uv_layout = uv_layout if texture_space is None else None
    if texture_space is None and uv_layout is None:
        raise FitError("no UV layout: pass a texture space or a UV layout for the free texture map.")
    if frozen_cameras is not None:
        frozen_cameras = torch.as_tensor(np.asarray(frozen_cameras, dtype=bool))
    device = model.faces.device
    requested, config = config, config.for_device(device, len(views))  # CUDA: fewer photometric steps, all views each
    dtype = next((b.dtype for b in model.buffers() if b.is_floating_point()), torch.float32)
    n = len(views)
    tg = landmark_targets(views, embedding, device, dtype)
    st = FitState.initial(model, embedding, intrinsics, [(v.image.width, v.image.height) for v in views],
                          device, dtype)
    optimise_focal = bool(intrinsics.optimise_focal) and n > 1
    appearance = Appearance(n, config, texture_space, uv_layout, initial_albedo_color(views, tg), device, dtype)
    stages = [
        ("rigid", 2 * config.rigid_steps, lambda st, tick: rigid_stage(st, tg, optimise_focal, config, tick)),
        ("landmarks", config.landmark_steps, lambda st, tick: landmark_stage(st, tg, optimise_focal, config, tick)),
    ]
    if config.multiview and intrinsics.poses is not None:
        names = [v.image.name for v in views]
        stages.append(("multiview", 2 * lbfgs_evaluations(config.multiview_steps),  # ticks: evaluations, 2 rounds
                       lambda st, tick: multiview_stage(st, tg, intrinsics.poses, names, config, tick)))
    occluded = torch.zeros(tg.weight.shape, dtype=torch.bool, device=device)
    schedule = config.for_views(n)  # one view: photometric_steps_one_view Adam steps (FitterConfig)
    if config.photometric_steps > 0:
        crops = make_crops(views, tg, config.render_size, device, dtype)

        def occlusion(st, tick):
            nonlocal tg, occluded
            pinned = [m for m in (frozen_cameras, st.camera_fixed) if m is not None]
            refit = not any(bool(m.any()) for m in pinned)  # the landmark stage would move pinned cameras
            st, tg, log, occluded = occlusion_stage(st, tg, crops, optimise_focal, config, appearance, tick,
                                                    refit=refit)
            return st, log

        stages.append(("occlusion", config.landmark_steps, occlusion))
    if schedule.photometric_steps > 0:
        def photometric(st, tick):
            pinned = _all_pinned(st, frozen_cameras)  # no camera can move: the pinned schedule (FitterConfig)
            steps = schedule.pinned() if pinned else schedule
            if steps.photometric_steps == 0:
                log = stage_log("photometric", st, tg, time.perf_counter(), 0, [],
                                ["photometric stage skipped: every camera is pinned "
                                 "(--fitter.photometric-steps-pinned 0)"])
            else:
                st, log = photometric_stage(st, tg, views, optimise_focal, steps, appearance, tick,
                                            frozen_cameras=frozen_cameras, crops=crops, appearance_ready=True)
            log.details.update(pinned_cameras=pinned, views_per_step=min(n, steps.photometric_views))
            return st, log

        stages.append(("photometric", schedule.photometric_steps, photometric))
    logs: list[StageLog] = []
    parallel = compute_threads(torch.get_num_threads())  # measured once: every stage of the fit uses it
    for name, total, stage in stages:
        task = progress.add_task(f"fit: {name}", total=total) if progress is not None else None
        try:
            with stage_threads(name, parallel):  # the thread policy: flame_prior.threads
                st, log = stage(st, (lambda: progress.advance(task)) if task is not None else (lambda: None))
        except ViewsNotInitialised as e:  # a per-view failure leaves that view out, never the run
            keep = [i for i in range(n) if i not in e.failed]
            if not keep:
                raise FitError(f"no view got a camera ({e}).",
                               hint="Check that the images show one face each and that the focal length is plausible.")
            result = fit_flame(model, embedding, [views[i] for i in keep], _subset_intrinsics(intrinsics, keep), requested,
                               texture_space=texture_space, uv_layout=uv_layout, progress=progress,
                               frozen_cameras=None if frozen_cameras is None else frozen_cameras.numpy()[keep])
            result.left_out = [SkippedInput(views[i].image.path, r) for i, r in e.failed.items()] + result.left_out
            return result
        logs.append(log)
        if task is not None:
            progress.update(task, completed=total)
    return _result(st, tg, views, appearance, logs, intrinsics.source, occluded, intrinsics.poses)


def _all_pinned(st: FitState, frozen_cameras: Tensor | None) -> bool:
    """No view's camera can move: each is pinned by the multi-view stage (``st.camera_fixed``) or frozen
    by the caller."""
    pinned = torch.zeros(st.cam_t.shape[0], dtype=torch.bool)
    for m in (frozen_cameras, st.camera_fixed):
        if m is not None:
            pinned |= m.detach().to("cpu", torch.bool)
    return bool(pinned.all())


def _subset_intrinsics(intr: Intrinsics, keep: list[int]) -> Intrinsics:
    return dataclasses.replace(intr, fx=np.asarray(intr.fx)[keep], fy=np.asarray(intr.fy)[keep],
                               cx=np.asarray(intr.cx)[keep], cy=np.asarray(intr.cy)[keep],
                               distortion=None if intr.distortion is None else np.asarray(intr.distortion)[keep],
                               poses=None if intr.poses is None else intr.poses.subset(keep))


def _fit_through_lens(model, embedding, views: list[ViewObservation], intrinsics: Intrinsics, config: FitterConfig,
                      **options) -> FitResult:
    """:func:`fit_flame` on the ideal pinhole views (the lens undone: landmarks exactly, photo and
    mask resampled), then the distortion attached to the fitted cameras."""
    dist = np.asarray(intrinsics.distortion, dtype=np.float64)
    ideal = [ideal_pinhole_view(v, intrinsics.fx[i], intrinsics.fy[i], intrinsics.cx[i], intrinsics.cy[i], dist[i])
             for i, v in enumerate(views)]
    result = fit_flame(model, embedding, ideal, dataclasses.replace(intrinsics, distortion=None), config, **options)
    index = {v.image.name: i for i, v in enumerate(views)}
    cams = result.cameras
    lens = torch.as_tensor(dist[[index[vf.name] for vf in result.views]], dtype=cams.R.dtype, device=cams.R.device)
    result.cameras = dataclasses.replace(cams, distortion=lens)
    result.notes.append("lens distortion undone before the fit: landmarks, photos and masks in each view's ideal "
                        "pinhole image (same fx, fy, cx, cy)")
    return result


def _result(st: FitState, tg: LandmarkTargets, views: list[ViewObservation], appearance: Appearance,
            stages: list[StageLog], source: str, occluded: Tensor, poses=None) -> FitResult:
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
    scene_flags = [flag for s in stages for flag in s.details.get("scene_flags", [])]  # e.g. multiview's
    tracks = _track_uncertainties(st, tg, lm3, c, stages, poses)  # also into the faceless cameras' entries
    view_fits = []
    for i, v in enumerate(views):
        if i in tracks:  # the camera follows COLMAP: its tracks and the similarity say how well it is known
            rot_sigma, centre_sigma = tracks[i]
            flags = trust_flags(rot_sigma, eye_distance_px=float(eye[i]), landmark_error_px=float(errs[i]),
                                source="tracks")
        else:
            rot_sigma, centre_sigma = pose_uncertainty(np_(lm3[i]), np_(tg.points[i]), np_(tg.weight[i]), c["R"][i],
                                                       c["t"][i], c["fx"][i], c["fy"][i], c["cx"][i], c["cy"][i])
            flags = trust_flags(rot_sigma, float(yaw[i]), float(eye[i]), float(errs[i]))
        view_fits.append(ViewFit(v.image.name, np_(tg.points[i]), np_(pred[i]), np_(tg.weight[i]), float(errs[i]),
                                 float(eye[i]), rot_sigma, centre_sigma, float(yaw[i]), flags + scene_flags,
                                 landmark_occluded=occluded[i].cpu().numpy(),
                                 uncertainty_source="tracks" if i in tracks else "landmarks"))
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
        intrinsics_source=source,
        notes=[note for s in stages for note in s.notes],
    )


def _track_uncertainties(st: FitState, tg: LandmarkTargets, lm3: Tensor, c: dict, stages: list[StageLog],
                         poses) -> dict[int, tuple[float, float]]:
    """``{view: (rotation_sigma_deg, centre_sigma_pct)}`` of the cameras that follow COLMAP
    (``st.camera_fixed`` and a track covariance): :func:`flame_prior.camera_trust.track_uncertainty`
    with the similarity's covariance from those views' landmarks. The multi-view stage's entries of
    cameras without a face (``details["faceless_cameras"]``) get theirs as ``"uncertainty"`` too
    (they stay flagged: no landmark checks them)."""
    log = next((s for s in stages if "similarity" in s.details), None)
    if st.camera_fixed is None or poses is None or poses.pose_cov is None or log is None:
        return {}
    fixed = st.camera_fixed.cpu().numpy().astype(bool)
    own = [i for i in np.flatnonzero(fixed) if np.isfinite(poses.pose_cov[i]).all()]
    if not fixed.any():
        return {}
    np_ = lambda x: x.detach().cpu().double().numpy()  # noqa: E731
    landmark = [pose_covariance(np_(lm3[i]), np_(tg.points[i]), np_(tg.weight[i]), c["R"][i], c["t"][i], c["fx"][i],
                                c["fy"][i], c["cx"][i], c["cy"][i]) for i in np.flatnonzero(fixed)]
    sim = similarity_covariance(landmark, c["R"][fixed], c["t"][fixed])
    metres = 1.0 / float(log.details["similarity"]["scale_colmap_per_metre"])
    faceless = poses.faceless
    for k, entry in enumerate(log.details.get("faceless_cameras", [])):
        if faceless is not None and faceless.pose_cov is not None and np.isfinite(faceless.pose_cov[k]).all():
            rot, centre = track_uncertainty(faceless.pose_cov[k], faceless.w2c[k], metres, sim, np.asarray(entry["R"]),
                                            np.asarray(entry["t"]))
            entry["uncertainty"] = {"rotation_deg": rot, "centre_pct": centre, "source": "tracks"}
    return {int(i): track_uncertainty(poses.pose_cov[i], poses.w2c[i], metres, sim, c["R"][i], c["t"][i]) for i in own}


def _outer_eye_distance(pred: Tensor, emb: LandmarkEmbedding) -> np.ndarray:
    """Per view distance of the outer eye corners (iBUG 36/45, MediaPipe 33/263), pixels."""
    corners = {"ibug68": (36, 45), "mediapipe478": (33, 263)}.get(emb.detector)
    idx = emb.detector_index.astype(np.int64)
    if corners is None or corners[0] not in idx or corners[1] not in idx:
        return np.full(pred.shape[0], float("nan"))
    a, b = int(np.flatnonzero(idx == corners[0])[0]), int(np.flatnonzero(idx == corners[1])[0])
    return (pred[:, a] - pred[:, b]).norm(dim=-1).detach().cpu().numpy()
