"""Stage 3 of the fit — photometric: the renderer on a square crop around each face, albedo (a
texture space or a free UV map), per-view SH lighting, geometry and cameras, with a photometric L1
term inside the head mask, a two-sided mask term and the landmark term; Adam on mini-batches of
views. :func:`flame_prior.fit.fit_flame` runs it after the stages of :mod:`flame_prior.fit.landmarks`.

The loss of one step is :func:`photometric_loss`; the benchmark measures its floor through the same
function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
from torch import Tensor

from flame_prior import render
from flame_prior.fit.config import FitterConfig
from flame_prior.fit.state import (FitState, LandmarkTargets, StageLog, free_parameters, landmark_energy,
                                   prior_energy, stage_log)
from flame_prior.flame import TextureSpace, sh_basis
from flame_prior.geometry import PinholeCameras
from flame_prior.observe import ViewObservation
from flame_prior.render_head import render_head

__all__ = ["FaceCrops", "make_crops", "Appearance", "initial_albedo_color", "photometric_loss", "photometric_stage"]


@dataclass
class FaceCrops:
    """Square face crops resampled to ``size``; crop-camera intrinsics follow from ``box``."""

    image: Tensor  # (N, S, S, 3) in [0, 1]
    head: Tensor  # (N, S, S) head mask in [0, 1]
    face: Tensor  # (N, S, S) filled hull of the detected face landmarks
    valid: Tensor  # (N, S, S) 1 where the crop lies inside the photo
    box: Tensor  # (N, 3) x0, y0, side in original pixels
    size: int

    def cameras(self, cameras: PinholeCameras, idx: Tensor) -> PinholeCameras:
        """Views ``idx`` of ``cameras`` (original pixel grids) as they see the ``size``-pixel crops."""
        box = self.box[idx]
        rect = torch.cat([box[:, :2], box[:, 2:3], box[:, 2:3]], 1)
        return cameras.subset(idx).cropped(rect).scaled(self.size / box[:, 2])


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
        heads.append(warp(v.detection.mask.astype(np.float32), cv2.INTER_LINEAR))
        valids.append(warp(np.ones(v.detection.mask.shape, np.float32), cv2.INTER_NEAREST))
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
    color, rast, pos = render_head(verts, faces, crops.cameras(cams, idx), appearance.uvs, appearance.uv_faces,
                                   appearance.albedo(), appearance.sh()[idx], size=(crops.size, crops.size))
    # Silhouette gradients come from the coverage (mask term) only: an antialiased colour would blend
    # edge pixels towards the renderer's black background, not the photo's, and bias the outline.
    cov = render.coverage(rast, pos, faces, topology)[..., 0]
    head, valid, face = crops.head[idx], crops.valid[idx], crops.face[idx]
    # Photometric pixels: inside both the rendered head and the head mask, 1 px away from either
    # outline, where photo pixels mix head and background and would bias the fit.
    inside = _erode((rast[..., 3] > 0).to(dtype) * (head > 0.5).to(dtype) * valid)
    photo = ((color - crops.image[idx]).abs().sum(-1) * inside).sum() / inside.sum().clamp_min(1.0)
    mask = ((cov * (1 - head) * valid).mean() + ((1 - cov) * face).mean())
    # Landmarks on the vertices just rendered (no second FLAME evaluation).
    pred = st.project(st.landmarks_on(verts, faces, yaw), cams)
    lmk = landmark_energy(pred, tg, cfg.robust_scale)
    return cfg.w_photometric * photo + cfg.w_mask * mask + cfg.w_landmark * lmk + prior_energy(st, cfg)


def photometric_stage(st: FitState, tg: LandmarkTargets, views: list[ViewObservation], optimise_focal: bool,
                      cfg: FitterConfig, appearance: "Appearance",
                      tick: Callable[[], None]) -> tuple[FitState, StageLog]:
    """Adam on geometry, cameras and ``appearance`` (updated in place: the optimiser owns it)."""
    started = time.perf_counter()
    device = tg.points.device
    crops = make_crops(views, tg, cfg.render_size, device, tg.points.dtype)
    names = free_parameters(cfg, st.model, optimise_focal)
    geo = [getattr(st, k).detach().requires_grad_(True) for k in names]
    if st.camera_fixed is not None:  # cameras the multi-view stage tied to COLMAP: zero gradient, so Adam never moves them
        free = (~st.camera_fixed).to(geo[0].dtype)[:, None]
        for k, p in zip(names, geo):
            if k in ("cam_rot", "cam_t"):
                p.register_hook(lambda g, free=free: g * free)
    st = st.replace(**dict(zip(names, geo)))
    app_params = appearance.parameters()
    lrs = {"cam_rot": 2e-3, "cam_t": 1e-3, "log_focal": 2e-3, "shape": 2e-2, "expression": 2e-2, "jaw": 5e-3,
           "eyes": 5e-3, "neck": 2e-3}
    lrs = {k: v * cfg.geometry_lr_scale for k, v in lrs.items()}
    geo_groups = [{"params": [p], "lr": lrs[k]} for k, p in zip(names, geo)]
    opt = torch.optim.Adam(geo_groups + [{"params": [p], "lr": lr} for p, lr in app_params])
    # Appearance first: albedo and light start flat, and geometry moved to explain their errors
    # would drift; so the first steps fit appearance only, then everything together.
    warmup = int(cfg.photometric_steps * cfg.appearance_warmup)
    for g in geo_groups:
        g["initial_lr"], g["lr"] = g["lr"], 0.0
    history: list[float] = []
    notes: list[str] = []
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
        loss = photometric_loss(st, tg, crops, idx, appearance, cfg, yaw, topology)
        if not torch.isfinite(loss):
            st = st.replace(**good)
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
            # Early stop only once geometry has moved for a while (the warm-up plateaus by design).
            if it > warmup + 20 and history[-11] - history[-1] < cfg.early_stop * abs(history[-11]):
                break
    st = st.replace(**{k: getattr(st, k).detach() for k in names})
    return st, stage_log("photometric", st, tg, started, it, history, notes)


def _erode(mask: Tensor) -> Tensor:
    """``(B, H, W)`` binary mask eroded by one pixel (3x3)."""
    return 1.0 - torch.nn.functional.max_pool2d((1.0 - mask)[:, None], 3, stride=1, padding=1)[:, 0]


class Appearance:
    """Albedo (texture space coefficients, or a free UV map) and SH lighting being fitted."""

    def __init__(self, n_views: int, cfg: FitterConfig, texture_space: TextureSpace | None,
                 uv_layout: tuple[np.ndarray, np.ndarray], init_color: np.ndarray, device, dtype):
        self.space = texture_space
        self.lr_scale = cfg.appearance_lr_scale
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
            return [(self.map, 6e-2 * self.lr_scale), (self.sh_coeffs, 3e-2 * self.lr_scale)]
        self.coeffs.requires_grad_(True)
        return [(self.coeffs, 0.15 * self.lr_scale), (self.sh_coeffs, 3e-2 * self.lr_scale)]

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


def initial_albedo_color(views: list[ViewObservation], tg: LandmarkTargets) -> np.ndarray:
    """Median colour inside the detected face landmarks' hull, over all views."""
    samples = []
    for v, pts, w in zip(views, tg.points.cpu().numpy(), tg.weight.cpu().numpy()):
        hull = cv2.convexHull(pts[w > 0.05].astype(np.float32))
        m = np.zeros(v.image.pixels.shape[:2], np.uint8)
        cv2.fillConvexPoly(m, np.round(hull[:, 0]).astype(np.int32), 1)
        samples.append(v.image.pixels[m > 0][::7])
    return np.median(np.concatenate(samples), 0).astype(np.float32) / 255.0
