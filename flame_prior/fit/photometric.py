"""Stages 3 and 4 of the fit — occlusion and photometric: the renderer on a square crop around
each face. The appearance (albedo: texture-space coefficients or a free UV map; per-view SH
lighting) is solved in closed form (:func:`solve_appearance`, alternating linear least squares);
:func:`occlusion_stage` marks what it cannot explain; :func:`photometric_stage` then moves geometry
and cameras by Adam, the appearance refined with them from the solve (``appearance_steps``; or held
and solved again half way), with a warm-up and a cosine fall of the rates, on a
photometric L1 term in the eroded head region, a two-sided mask term and the landmark term.
:func:`flame_prior.fit.fit_flame` runs them after the stages of :mod:`flame_prior.fit.landmarks`.

The loss of one step is :func:`photometric_loss`; the benchmark measures its floor through the same
function (and :func:`solve_appearance`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
from torch import Tensor

from flame_prior import render
from flame_prior.fit.config import FitterConfig
from flame_prior.fit.landmarks import fit_landmarks_lm
from flame_prior.fit.state import (FitState, LandmarkTargets, StageLog, free_parameters, landmark_energy,
                                   prior_energy, stage_log)
from flame_prior.flame import TextureSpace, sh_basis
from flame_prior.geometry import PinholeCameras
from flame_prior.observe import ViewObservation
from flame_prior.render_head import head_clip, surface_at

__all__ = ["FaceCrops", "make_crops", "Adam", "Appearance", "AppearanceFit", "initial_albedo_color", "solve_appearance",
           "occlusion_weights", "occluded_pixels", "occlusion_stage", "photometric_loss", "photometric_stage"]


@dataclass
class FaceCrops:
    """Square face crops resampled to ``size``; crop-camera intrinsics follow from ``box``."""

    image: Tensor  # (N, S, S, 3) in [0, 1]
    head: Tensor  # (N, S, S) head mask in [0, 1]
    face: Tensor  # (N, S, S) filled hull of the detected face landmarks
    valid: Tensor  # (N, S, S) 1 where the crop lies inside the photo
    box: Tensor  # (N, 3) x0, y0, side in original pixels
    size: int
    occluded: Tensor | None = None  # (N, S, S) 1 where an occluder hides the head (occlusion_stage), else None

    def halved(self) -> "FaceCrops":
        """The same crops at half the size (2x2 pixel means; an occluded pixel stays occluded)."""
        half = lambda a: torch.nn.functional.avg_pool2d(a[:, None], 2)[:, 0]  # noqa: E731
        image = torch.nn.functional.avg_pool2d(self.image.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        occluded = None if self.occluded is None else torch.nn.functional.max_pool2d(self.occluded[:, None], 2)[:, 0]
        return FaceCrops(image, half(self.head), half(self.face), (half(self.valid) > 0.99).to(self.valid.dtype),
                         self.box, self.size // 2, occluded)

    def cameras(self, cameras: PinholeCameras, idx: Tensor) -> PinholeCameras:
        """Views ``idx`` of ``cameras`` (original pixel grids) as they see the ``size``-pixel crops.

        ``cameras.subset(idx).cropped(box).scaled(size / side)``, the same arithmetic, without their
        host reads (a crop is ``size`` pixels square by construction): those read each view's image size
        from the device, 4 waits per view and step on a GPU."""
        box = self.box[idx]
        s = self.size / box[:, 2]
        n = int(idx.shape[0])
        return PinholeCameras(cameras.R[idx], cameras.t[idx], cameras.fx[idx] * s, cameras.fy[idx] * s,
                              (cameras.cx[idx] - box[:, 0]) * s, (cameras.cy[idx] - box[:, 1]) * s,
                              [self.size] * n, [self.size] * n,
                              None if cameras.distortion is None else cameras.distortion[idx])


def make_crops(views: list[ViewObservation], tg: LandmarkTargets, size: int, device, dtype) -> FaceCrops:
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
        heads.append(warp(v.detection.mask, cv2.INTER_LINEAR))  # reading mask makes a float32 copy
        valids.append(warp(np.ones(v.detection.mask_u8.shape, np.float32), cv2.INTER_NEAREST))
        hull = cv2.convexHull(((p - [x0, y0]) * s).astype(np.float32))
        fm = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(fm, np.round(hull[:, 0]).astype(np.int32), 1)
        faces.append(fm.astype(np.float32))
        boxes.append([x0, y0, side])
    t = lambda a: torch.as_tensor(np.stack(a), dtype=dtype, device=device)  # noqa: E731
    return FaceCrops(t(imgs), t(heads), t(faces), t(valids), t(boxes), size)


def photometric_loss(st: FitState, tg: LandmarkTargets, crops: FaceCrops, idx: Tensor, appearance: "Appearance",
                     cfg: FitterConfig, yaw: Tensor, topology: Tensor) -> Tensor:
    """The photometric stage's loss on views ``idx`` (B,): photometric L1, mask, landmark and prior terms."""
    dtype = tg.points.dtype
    cams = st.cameras()
    verts = st.model(st.flame_params()).vertices  # (1, V, 3)
    faces = st.model.faces
    S = crops.size
    pos = head_clip(verts, crops.cameras(cams, idx), (S, S))
    rast = render.rasterize(pos, faces, (S, S))
    # Silhouette gradients come from the coverage (mask term) only: an antialiased colour would blend
    # edge pixels towards the renderer's black background, not the photo's, and bias the outline.
    cov = render.coverage(rast, pos, faces, topology)[..., 0]
    head, valid, face = crops.head[idx], crops.valid[idx], crops.face[idx]
    # Photometric pixels: inside both the rendered head and the head mask, 1 px away from either
    # outline, where photo pixels mix head and background and would bias the fit.
    inside = _erode((rast[..., 3] > 0).to(dtype) * (head > 0.5).to(dtype) * valid)
    if crops.occluded is not None:  # a hand or a microphone is not skin to fit
        inside = inside * (1 - crops.occluded[idx])
    # The head's colour (render_head's: albedo(uv) * SH shading) at those pixels only, in view order
    # (about a third of the crop: texturing and shading the rest was half of a step's work).
    keep, counts = inside_pixels(inside)
    uv, normals = surface_at(verts, faces, rast, appearance.uvs, appearance.uv_faces, keep)  # (P, 2), (P, 3)
    albedo = render.texture(appearance.albedo(), uv[None, None])[0, 0]  # (P, 3)
    shading = torch.cat([y @ sh for y, sh in zip(sh_basis(normals).split(counts), appearance.sh()[idx])])
    photo = (albedo * shading - crops.image[idx].reshape(-1, 3).index_select(0, keep)).abs().sum() \
        / inside.sum().clamp_min(1.0)
    mask = ((cov * (1 - head) * valid).mean() + ((1 - cov) * face).mean())
    # Landmarks on the vertices just rendered (no second FLAME evaluation).
    pred = st.project(st.landmarks_on(verts, faces, yaw), cams)
    lmk = landmark_energy(pred, tg, cfg.robust_scale)
    return cfg.w_photometric * photo + cfg.w_mask * mask + cfg.w_landmark * lmk + prior_energy(st, cfg)


def occlusion_stage(st: FitState, tg: LandmarkTargets, crops: FaceCrops, optimise_focal: bool, cfg: FitterConfig,
                    appearance: "Appearance", tick: Callable[[], None],
                    refit: bool = True) -> tuple[FitState, LandmarkTargets, StageLog, Tensor]:
    """Find occluders and flag the landmarks they hide (the returned ``(N, L)`` bool).

    The appearance is solved in closed form on the landmark stage's geometry
    (:func:`solve_appearance`); landmarks amid pixels it cannot explain are flagged
    (:func:`occlusion_weights`). With ``cfg.occlusion_refit`` the stage also acts: the pixels leave
    the photometric loss (``crops.occluded``), and the landmark stage runs again on the reweighted
    targets, which this returns (the photometric stage and the result use them). The appearance is
    left solved for the returned geometry (``photometric_stage(appearance_ready=True)``).
    ``refit=False`` (cameras another stage pinned; the landmark stage would move them) only reweights.
    """
    started = time.perf_counter()
    fit = solve_appearance(st, crops, appearance, cfg)
    occ_w = occlusion_weights(crops, tg, fit, cfg)
    occluded = (occ_w < 0.5) & (tg.weight > 0.05)
    lost = int(occluded.sum())
    notes, iterations, history = [], 0, []
    if lost and not cfg.occlusion_refit:
        notes.append(f"occlusion: {lost} landmark(s) lie over pixels the fitted appearance cannot explain (flagged)")
    elif lost:
        crops.occluded = occluded_pixels(fit, cfg)
        # A view must keep enough points to hold its camera: never reweight below 6 usable landmarks.
        weight = tg.weight * occ_w
        usable = (weight > 0.05).sum(1)
        weight = torch.where((usable >= 6)[:, None], weight, tg.weight)
        tg = LandmarkTargets(tg.points, weight, weight / weight.sum(1, keepdim=True).clamp_min(1e-9), tg.scale)
        if refit:
            names = free_parameters(cfg, st.model, optimise_focal)
            st, iterations, history = fit_landmarks_lm(st, tg, names, cfg, cfg.landmark_steps, tick)
            solve_appearance(st, crops, appearance, cfg, rounds=1)  # the geometry moved
        notes.append(f"occlusion: {lost} landmark(s) over pixels the fitted appearance cannot explain were "
                     "down-weighted")
    return st, tg, stage_log("occlusion", st, tg, started, iterations, history, notes), occluded


def occluded_pixels(fit: AppearanceFit, cfg: FitterConfig) -> Tensor:
    """``(N, S, S)`` 1 where the solved appearance disagrees with the photo (:func:`occlusion_weights`)."""
    med = torch.stack([r[m > 0].median() if bool((m > 0).any()) else r.new_tensor(0.0)
                       for r, m in zip(fit.residual, fit.inside)])
    thresh = torch.maximum(cfg.occlusion_residual * med, med.new_tensor(0.15))[:, None, None]
    return ((fit.residual > thresh) & (fit.inside > 0)).to(fit.residual.dtype)


def photometric_stage(st: FitState, tg: LandmarkTargets, views: list[ViewObservation], optimise_focal: bool,
                      cfg: FitterConfig, appearance: "Appearance", tick: Callable[[], None],
                      frozen_cameras: Tensor | None = None, crops: FaceCrops | None = None,
                      appearance_ready: bool = False) -> tuple[FitState, StageLog]:
    """Closed-form appearance (:func:`solve_appearance`), then Adam on geometry and cameras, the
    appearance refined with them (``cfg.appearance_steps``; else held and solved again half way);
    rates by :func:`photometric_lr_factor`. ``appearance`` is updated in place.

    ``frozen_cameras`` ``(N,)`` bool: views whose camera stays as it is, as do those of
    ``st.camera_fixed`` (the multi-view stage's); their rotation and translation get no updates. ``crops``: those of ``make_crops`` when the
    caller already made them.
    """
    started = time.perf_counter()
    device = tg.points.device
    if crops is None:
        crops = make_crops(views, tg, cfg.render_size, device, tg.points.dtype)
    topology = render.edge_topology(st.model.faces)
    # Coarse to fine: the first steps see the crops at half size (a quarter of the pixels), the last
    # steps full size, where the outline and small features decide.
    n_coarse = int(cfg.photometric_steps * cfg.photometric_coarse) if crops.size >= 32 else 0
    coarse = crops.halved()
    if not appearance_ready:
        solve_appearance(st, crops, appearance, cfg)
    names = free_parameters(cfg, st.model, optimise_focal)
    geo = [getattr(st, k).detach().requires_grad_(True) for k in names]
    # Cameras another stage pinned (the multi-view stage ties some to COLMAP) or the caller froze get a
    # zero gradient from the first step, so Adam never moves them.
    fixed = st.camera_fixed if st.camera_fixed is not None else None
    if frozen_cameras is not None:
        frozen_cameras = frozen_cameras.to(device=device, dtype=torch.bool)
        fixed = frozen_cameras if fixed is None else (fixed.to(torch.bool) | frozen_cameras)
    if fixed is not None and bool(fixed.any()):
        free = (~fixed.to(torch.bool)).to(geo[0].dtype)[:, None]
        for k, p in zip(names, geo):
            if k in ("cam_rot", "cam_t"):
                p.register_hook(lambda g, free=free: g * free)
    st = st.replace(**dict(zip(names, geo)))
    # Twice the rates of the former schedule (which spent half its steps on appearance): with the
    # appearance solved, 60 steps at these rates do what its 100 did (README, Photometric stage and occlusion).
    lrs = {"cam_rot": 4e-3, "cam_t": 2e-3, "log_focal": 4e-3, "shape": 4e-2, "expression": 4e-2, "jaw": 1e-2,
           "eyes": 1e-2, "neck": 4e-3}
    groups = [(p, lrs[k] * cfg.geometry_lr_scale) for k, p in zip(names, geo)]
    if cfg.appearance_steps:  # the solved appearance as the start of a joint refinement
        groups += appearance.parameters()
    opt = Adam(groups)
    history: list[float] = []
    notes: list[str] = []
    yaw = st.yaw()
    good = st.snapshot()
    n = tg.points.shape[0]
    b = min(n, cfg.photometric_views)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    resolve_at = cfg.photometric_steps // 2
    it = 0
    for it in range(1, cfg.photometric_steps + 1):
        # A mini-batch of views per step keeps the cost per step independent of the number of views.
        if len(order) < b:
            order += torch.randperm(n, generator=gen).tolist()
        idx = torch.as_tensor(sorted(order[:b]), device=device)
        del order[:b]
        if it == resolve_at + 1 and resolve_at >= 5 and not cfg.appearance_steps:  # the appearance follows, in closed form
            solve_appearance(st, crops, appearance, cfg, rounds=1)
        opt.zero_grad()
        loss = photometric_loss(st, tg, coarse if it <= n_coarse else crops, idx, appearance, cfg, yaw, topology)
        if not torch.isfinite(loss):
            st = st.replace(**good)
            notes.append(f"photometric stage: non-finite loss at iteration {it}; restored the last good state")
            break
        loss.backward()
        opt.step(photometric_lr_factor(it, cfg))
        appearance.clamp_()
        history.append(float(loss.detach()))
        tick()
        if it % 10 == 0:
            good = st.snapshot()
            if it > n_coarse + 20 and history[-11] - history[-1] < cfg.early_stop * abs(history[-11]):
                break
    st = st.replace(**{k: getattr(st, k).detach() for k in names})
    appearance.detach_()
    log = stage_log("photometric", st, tg, started, it, history, notes)
    log.steps_by_size = {coarse.size: min(it, n_coarse), crops.size: max(0, it - n_coarse)}
    return st, log


def inside_pixels(inside: Tensor) -> tuple[Tensor, list[int]]:
    """The pixels where ``inside (V, S, S) > 0`` as flat indices into ``V * S * S`` (view-major), and
    how many of them each view has: the photometric terms work on these lists, not on whole crops."""
    flags = (inside > 0).reshape(inside.shape[0], -1)
    return flags.reshape(-1).nonzero().squeeze(1), flags.sum(1).tolist()


def photometric_lr_factor(it: int, cfg: FitterConfig) -> float:
    """The factor on the photometric stage's learning rates at step ``it`` (1-based): a linear rise over
    ``cfg.photometric_warmup`` steps, then a cosine fall to ``cfg.photometric_lr_final`` at the last
    step (settling where the constant rate would keep stepping around the minimum)."""
    rise = min(1.0, it / cfg.photometric_warmup) if cfg.photometric_warmup > 0 else 1.0
    span = max(cfg.photometric_steps - cfg.photometric_warmup, 1)
    done = min(max(it - cfg.photometric_warmup, 0) / span, 1.0)
    return rise * (cfg.photometric_lr_final + (1 - cfg.photometric_lr_final) * 0.5 * (1 + math.cos(math.pi * done)))


class Adam:
    """Adam (Kingma and Ba; torch.optim.Adam's update, no weight decay) on a few tensors, each with its
    learning rate; :meth:`step` takes a factor on all of them (the stage's warm-up).

    Not ``torch.optim.Adam``: the first optimiser a process builds imports ``torch._dynamo``
    (~3 s of CPU), longer than a whole single-image fit should take."""

    def __init__(self, params: list[tuple[Tensor, float]], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = params
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = [torch.zeros_like(p) for p, _ in params]
        self.v = [torch.zeros_like(p) for p, _ in params]

    def zero_grad(self) -> None:
        for p, _ in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """One update of every tensor that has a gradient, at ``lr_factor`` times its learning rate."""
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t  # bias corrections of the running means
        for (p, lr), m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / c2 ** 0.5).add_(self.eps), value=-lr * lr_factor / c1)


@dataclass
class AppearanceFit:
    """What :func:`solve_appearance` leaves behind: per crop pixel, how far the solved appearance is
    from the photo (the evidence of occluders) and where it was measured."""

    residual: Tensor  # (N, S, S) L1 colour residual of the solved appearance (0 outside ``inside``)
    inside: Tensor  # (N, S, S) the pixels the solve used (rendered head, head mask, crop, eroded 1 px)


@torch.no_grad()
def solve_appearance(st: FitState, crops: FaceCrops, appearance: "Appearance", cfg: FitterConfig,
                     rounds: int | None = None) -> AppearanceFit:
    """Albedo and per-view SH lighting for the current geometry, by linear least squares.

    The rendered colour is ``albedo(uv) * (sh_basis(n) . sh)``: linear in the albedo for fixed
    lighting and linear in the lighting for fixed albedo. Each round solves the lighting of every
    view (a 9x9 normal system per view and channel), then the albedo: texture-space coefficients by
    their normal equations, or a free UV map by majorise-minimise updates ``m += A^T r / A^T (w s^2)``
    (``A``: bilinear sampling, applied through its adjoint, so a texel's update is the weighted mean
    of the photo over the pixels that see it). Residuals are reweighted towards L1 (IRLS) after each
    round, so hair strands, specular spots or an occluder weigh like the stage's L1 loss makes them.
    ``appearance`` is updated in place.
    """
    rounds = cfg.appearance_rounds if rounds is None else rounds
    dtype, device = crops.image.dtype, crops.image.device
    verts = st.model(st.flame_params()).vertices
    faces = st.model.faces
    vn = render.vertex_normals(verts, faces)
    cams = st.cameras()
    n, S = crops.image.shape[0], crops.size
    uvs, basis, inside, keeps, counts = [], [], [], [], []
    for lo in range(0, n, max(cfg.photometric_views, 1)):
        idx = torch.arange(lo, min(n, lo + cfg.photometric_views), device=device)
        pos = head_clip(verts, crops.cameras(cams, idx), (S, S))
        rast = render.rasterize(pos, faces, (S, S))
        inside.append(_erode((rast[..., 3] > 0).to(dtype) * (crops.head[idx] > 0.5).to(dtype) * crops.valid[idx]))
        keep, count = inside_pixels(inside[-1])
        uv, nrm = surface_at(verts, faces, rast, appearance.uvs, appearance.uv_faces, keep, vn)
        uvs.append(uv)
        basis.append(sh_basis(nrm))
        keeps.append(keep + lo * S * S)
        counts += count
    inside = torch.cat(inside)  # (N, S, S)
    # Only the pixels inside take part (about a third of a crop): each becomes one entry of a
    # (1, 1, P) "image", in view order, so the texture sampling and its adjoint see no empty pixels.
    keep = torch.cat(keeps)
    uv, Y = torch.cat(uvs)[None, None], torch.cat(basis)[None, None]  # (1, 1, P, 2), (1, 1, P, 9)
    image = crops.image.reshape(n * S * S, 3).index_select(0, keep)[None, None]
    w = torch.ones(1, 1, keep.numel(), dtype=dtype, device=device)
    for _ in range(max(rounds, 1)):
        albedo = render.texture(appearance.albedo(), uv)  # (1, 1, P, 3)
        appearance.set_sh(_solve_sh(albedo[0, 0], Y[0, 0], image[0, 0], w[0, 0], counts, appearance.sh_coeffs,
                                    appearance.shared_sh))
        sh = appearance.sh().repeat_interleave(torch.as_tensor(counts, device=device), dim=0)  # (P, 9, 3)
        shading = (Y[0, 0, :, None, :] @ sh)[None, None, :, 0]  # (1, 1, P, 3)
        appearance.solve_albedo(uv, shading, image, w)
        residual = (render.texture(appearance.albedo(), uv) * shading - image).abs().sum(-1)  # (1, 1, P)
        # IRLS towards the stage's L1 loss: weight 1/|r| (floored so that well-explained pixels do not dominate).
        w = 1.0 / residual.clamp_min(0.05)
    full = torch.zeros(n * S * S, dtype=dtype, device=device).index_copy(0, keep, residual.reshape(-1))
    return AppearanceFit(full.reshape(n, S, S), inside)


def _solve_sh(albedo: Tensor, Y: Tensor, image: Tensor, w: Tensor, counts: list[int], current: Tensor,
              shared: bool) -> Tensor:
    """Least-squares SH coefficients ``(N or 1, 9, 3)`` of ``image ~ albedo * (Y . sh)`` with pixel
    weights ``w``, a little ridge towards ``current`` (views that see few pixels keep their light).

    The pixels are lists in view order (``albedo``, ``image (P, 3)``, ``Y (P, 9)``, ``w (P,)``),
    ``counts[i]`` of them in view i."""
    sw = w.sqrt()[:, None]
    M, r = [], []
    for c in range(3):  # per channel: X = sqrt(w) albedo_c Y, M = X^T X per view (no (P, 9, 9) intermediate)
        X = Y * (albedo[:, c:c + 1] * sw)
        b = image[:, c:c + 1] * sw
        M.append(torch.stack([x.T @ x for x in X.split(counts)]))
        r.append(torch.stack([(x.T @ y)[:, 0] for x, y in zip(X.split(counts), b.split(counts))]))
    M, r = torch.stack(M, 1), torch.stack(r, 1)  # (N, 3, 9, 9), (N, 3, 9)
    if shared:
        M, r = M.sum(0, keepdim=True), r.sum(0, keepdim=True)
    # The second band (quadratic in the normal) is pulled harder: one view sees few normal directions,
    # and an unconstrained quadratic turns negative on the ones it does not see (dark creases, nostrils).
    band = torch.tensor([1e-3] * 4 + [3e-2] * 5, dtype=M.dtype, device=M.device)
    ridge = torch.diag_embed(M.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-6)[..., None] * band)  # (N, 3, 9, 9)
    rhs = r + (ridge @ current.transpose(1, 2)[..., None])[..., 0]
    sol = torch.linalg.solve(M + ridge, rhs[..., None])[..., 0]  # (N, 3, 9)
    return sol.transpose(1, 2).contiguous()


def _push_pull(tex: Tensor, conf: Tensor, levels: int = 5) -> Tensor:
    """``(H, W, 3)`` texture whose texels with little ``conf`` (few or no pixels saw them) take the
    confidence-weighted mean of their neighbourhood from coarser levels: a map solved from small
    crops has gaps between the texels it saw, which full-size renders would sample."""
    to = lambda x: x.permute(2, 0, 1)[None]  # noqa: E731
    ms, cs = [to(tex)], [to(conf)]
    for _ in range(levels):
        if min(ms[-1].shape[-2:]) < 4:
            break
        c = torch.nn.functional.avg_pool2d(cs[-1], 2)
        ms.append(torch.nn.functional.avg_pool2d(ms[-1] * cs[-1], 2) / c.clamp_min(1e-12))
        cs.append(c)
    out = ms[-1]
    for m, c in zip(reversed(ms[:-1]), reversed(cs[:-1])):
        up = torch.nn.functional.interpolate(out, size=m.shape[-2:], mode="bilinear", align_corners=False)
        seen = c[c > 0]
        tau = 0.25 * seen.median() if seen.numel() else c.new_tensor(1.0)
        a = (c / tau).clamp(0, 1)
        out = a * m + (1 - a) * up
    return out[0].permute(1, 2, 0).contiguous()


def occlusion_weights(crops: FaceCrops, tg: LandmarkTargets, fit: AppearanceFit, cfg: FitterConfig) -> Tensor:
    """``(N, L)`` weights in [0, 1] of the landmarks by the photo evidence of an occluder over them.

    A pixel of the rendered head disagrees when its residual after :func:`solve_appearance` exceeds
    ``cfg.occlusion_residual`` times the view's median residual (and 0.15 in L1 colour). With
    several views one albedo has to explain them all, so a hand or a microphone in one view stays
    unexplained; from a single view the free albedo map explains nearly anything, and little is
    flagged (README, Occlusion). A landmark's weight falls from 1 to 0 as the fraction of disagreeing
    pixels around it (a window of 12% of the crop: an occluder, not a highlight on the nose tip) goes
    from 0.35 to 0.6; points outside the rendered head keep weight 1.
    """
    S = crops.size
    bad = occluded_pixels(fit, cfg)
    k = max(3, int(0.12 * S) | 1)
    seen = _box_mean(fit.inside, k)
    frac = _box_mean(bad, k) / seen.clamp_min(1e-6)
    box = crops.box.to(tg.points.dtype)
    crop_px = (tg.points - box[:, None, :2]) * (S / box[:, None, 2:3])  # (N, L, 2) crop pixels
    grid = (2 * crop_px / S - 1)[:, :, None]  # (N, L, 1, 2) for grid_sample, align_corners=False
    f = torch.nn.functional.grid_sample(frac, grid.to(frac.dtype), align_corners=False)[:, 0, :, 0]
    cover = torch.nn.functional.grid_sample(seen, grid.to(frac.dtype), align_corners=False)[:, 0, :, 0]
    weight = 1 - ((f - 0.35) / 0.25).clamp(0, 1)
    return torch.where(cover > 0.25, weight, torch.ones_like(weight))


def _box_mean(x: Tensor, k: int) -> Tensor:
    """``(N, 1, H, W)`` mean of ``x (N, H, W)`` over the ``k x k`` window around each pixel (odd ``k``),
    the part of the window inside the image only (``avg_pool2d(count_include_pad=False)``).

    By a summed-area table (float64: exact for the 0/1 masks this is used on, so the means are
    ``avg_pool2d``'s bit for bit), four look-ups per pixel instead of ``k^2`` additions: the 19x19
    window on 160-pixel crops was most of the occlusion stage."""
    n, h, w = x.shape
    r = k // 2
    table = torch.nn.functional.pad(x.double(), (1, 0, 1, 0)).cumsum(1).cumsum(2)  # (N, H+1, W+1)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    r0, r1 = (rows - r).clamp(0, h), (rows + r + 1).clamp(0, h)
    c0, c1 = (cols - r).clamp(0, w), (cols + r + 1).clamp(0, w)
    lo, hi = table[:, r0], table[:, r1]  # (N, H, W+1)
    total = (hi[:, :, c1] - hi[:, :, c0] - lo[:, :, c1] + lo[:, :, c0]).to(x.dtype)
    count = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).to(x.dtype)
    return (total / count)[:, None]


def _erode(mask: Tensor) -> Tensor:
    """``(B, H, W)`` binary mask eroded by one pixel (3x3)."""
    return 1.0 - torch.nn.functional.max_pool2d((1.0 - mask)[:, None], 3, stride=1, padding=1)[:, 0]


class Appearance:
    """Albedo (texture space coefficients, or a free UV map) and SH lighting, solved in closed form
    by :func:`solve_appearance` (no gradients: the photometric stage's optimiser moves geometry only)."""

    def __init__(self, n_views: int, cfg: FitterConfig, texture_space: TextureSpace | None,
                 uv_layout: tuple[np.ndarray, np.ndarray], init_color: np.ndarray, device, dtype):
        self.space = texture_space
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        self.init_color = t(np.clip(init_color, 0.02, 0.98))
        if texture_space is not None:
            self.uvs, self.uv_faces = t(texture_space.uvs), torch.as_tensor(texture_space.uv_faces, device=device)
            self.mean, self.basis = t(texture_space.mean), t(texture_space.basis)
            self.coeffs = torch.zeros(1, self.basis.shape[-1], dtype=dtype, device=device)
            self.map = None
        else:
            self.uvs, self.uv_faces = t(uv_layout[0]), torch.as_tensor(uv_layout[1], device=device)
            size = cfg.texture_size
            self.map = self.init_color.expand(size, size, 3).clone()
            self.coeffs = None
        self._space_map = None
        y0 = float(sh_basis(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))[0, 0])
        n_sh = n_views if cfg.per_view_lighting else 1
        self.shared_sh = not cfg.per_view_lighting
        self.n_views = n_views
        self.sh_coeffs = torch.zeros(n_sh, 9, 3, dtype=dtype, device=device)
        self.sh_coeffs[:, 0, :] = 1.0 / y0  # unit ambient light

    def albedo(self) -> Tensor:
        if self.map is not None:
            return self.map
        if self.coeffs.requires_grad:  # refined jointly: a new map every step
            return self._map_of_coeffs()
        if self._space_map is None:  # computed once per solve: every geometry step samples it
            self._space_map = self._map_of_coeffs()
        return self._space_map

    def _map_of_coeffs(self) -> Tensor:
        """The texture space's map ``mean + basis . coeffs``, clamped to [0, 1] (one matrix-vector
        product: 3x faster than a broadcast product and sum, forward and backward)."""
        K = self.basis.shape[-1]
        return (self.mean + (self.basis.reshape(-1, K) @ self.coeffs[0]).reshape(self.mean.shape)).clamp(0.0, 1.0)

    def sh(self) -> Tensor:
        return self.sh_coeffs.expand(self.n_views, -1, -1) if self.shared_sh else self.sh_coeffs

    def set_sh(self, sh: Tensor) -> None:
        self.sh_coeffs = sh.to(self.sh_coeffs.dtype)

    @torch.no_grad()
    def solve_albedo(self, uv: Tensor, shading: Tensor, image: Tensor, w: Tensor, iterations: int = 3) -> None:
        """Least-squares albedo of ``image ~ albedo(uv) * shading`` with pixel weights ``w``
        (all ``(N, S, S, ...)``), a weak pull towards the initial colour (texels few pixels see)."""
        ws = w[..., None] * shading
        if self.map is not None:
            den = render.texture_adjoint(self.map.shape, uv, ws * shading)
            lam = 1e-3 * float(den.max().clamp_min(1e-6))
            m = self.map
            for _ in range(iterations):  # majorise-minimise: monotone, converging to the least squares
                r = render.texture_adjoint(self.map.shape, uv, ws * (image - render.texture(m, uv) * shading))
                m = (m + (r + lam * (self.init_color - m)) / (den + lam)).clamp(0.0, 1.0)
            self.map = _push_pull(m, den)
            return
        keep = w > 0
        p_uv, p_s = uv[keep], shading[keep]  # (P, 2), (P, 3)
        grid = (torch.stack([2 * p_uv[:, 0] - 1, 1 - 2 * p_uv[:, 1]], -1))[None, None]  # (1, 1, P, 2)
        H, W, _, K = self.basis.shape
        samp = lambda t: torch.nn.functional.grid_sample(  # noqa: E731
            t.reshape(H, W, -1).permute(2, 0, 1)[None], grid.to(t.dtype), align_corners=False)[0, :, 0].T
        B = samp(self.basis).reshape(-1, 3, K) * p_s[..., None]  # (P, 3, K)
        target = image[keep] - samp(self.mean) * p_s  # (P, 3)
        Bw = B * w[keep][:, None, None]
        M = torch.einsum("pck,pcl->kl", Bw, B)
        r = torch.einsum("pck,pc->k", Bw, target)
        ridge = 1e-3 * M.diagonal().mean().clamp_min(1e-6)
        self.coeffs = torch.linalg.solve(M + ridge * torch.eye(K, dtype=M.dtype, device=M.device), r)[None]
        self._space_map = None

    def parameters(self) -> list[tuple[Tensor, float]]:
        """The appearance tensors as Adam parameters with their learning rates (joint refinement)."""
        self.detach_()
        self._space_map = None
        self.sh_coeffs.requires_grad_(True)
        if self.map is not None:
            self.map.requires_grad_(True)
            return [(self.map, 6e-2), (self.sh_coeffs, 3e-2)]
        self.coeffs.requires_grad_(True)
        return [(self.coeffs, 0.15), (self.sh_coeffs, 3e-2)]

    def detach_(self) -> None:
        """Leave gradient tracking (after a joint refinement)."""
        for name in ("map", "coeffs", "sh_coeffs"):
            x = getattr(self, name)
            if x is not None:
                setattr(self, name, x.detach())
        self._space_map = None

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.map is not None:
            self.map.clamp_(0.0, 1.0)
        self._space_map = None

    def snapshot(self) -> list[Tensor]:
        return [x.detach().clone() for x in (self.map, self.coeffs, self.sh_coeffs) if x is not None]

    @torch.no_grad()
    def restore(self, snap: list[Tensor]) -> None:
        live = [x for x in (self.map, self.coeffs, self.sh_coeffs) if x is not None]
        for x, s in zip(live, snap):
            x.copy_(s)
        self._space_map = None


def initial_albedo_color(views: list[ViewObservation], tg: LandmarkTargets) -> np.ndarray:
    """Median colour inside the detected face landmarks' hull, over all views."""
    samples = []
    for v, pts, w in zip(views, tg.points.cpu().numpy(), tg.weight.cpu().numpy()):
        hull = np.round(cv2.convexHull(pts[w > 0.05].astype(np.float32))[:, 0]).astype(np.int32)
        # Every 7th pixel of the hull, gathered by index in the hull's bounding box (boolean indexing
        # of the full photo cost ~30 ms a view).
        h, w_ = v.image.pixels.shape[:2]
        x0, y0 = np.clip(hull.min(0), 0, [w_, h])
        x1, y1 = np.clip(hull.max(0) + 1, 0, [w_, h])
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(m, hull - [x0, y0], 1)
        r, c = np.divmod(np.flatnonzero(m)[::7], x1 - x0)
        samples.append(v.image.pixels[y0 + r, x0 + c])
    return np.median(np.concatenate(samples), 0).astype(np.float32) / 255.0
