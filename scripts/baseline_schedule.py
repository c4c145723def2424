"""The original tool's schedule (photometric_optimization), re-implemented on flame-prior's primitives.

Used by ``scripts/benchmark.py`` as the BASELINE that flame-prior's time and landmark error are
reported against. Same renderer (:mod:`flame_prior.render`), same FLAME model, same crops
(``flame_prior.fit.photometric.make_crops``) and the same landmark detections as flame-prior; only the schedule differs:

1. **rigid**: Adam (lr 0.005), ``rigid_iters`` (3000) iterations on the 51 "static" landmarks of the
   mean head; parameters: one scale ``s``, per-view axis-angle ``r_i`` and 2D translation ``t_i``;
   start ``s = 0.09``, ``r_i = (0.1, 0, 0)``, ``t_i = 0``.
2. **joint**: Adam (lr 0.005), ``joint_iters`` (2000) iterations of ``landmark + 8 * photometric +
   1e-4 * (|shape|^2 + |expression|^2 + |jaw|^2) / 2`` on shape, expression, jaw, the cameras,
   albedo (texture-space coefficients, or a free 256 px UV map when there is no texture space)
   and per-view SH lighting; every view is rendered at 224 px in every iteration (as the original).

Camera (weak perspective / orthographic, as the original's ``batch_orth_proj``): with
``R_i = diag(1, -1, -1) @ exp(r_i)`` (FLAME's +Y-up frame to OpenCV axes, looking at the face),
``ndc_xy = 100 * s * (R_i X)_xy + t_i`` (X in metres: ``s`` is NDC units per centimetre, so
``s = 0.09`` spans an 18 cm face over ~80 % of the crop); clip coordinates are built directly:
``pos = (ndc_x, ndc_y, 2 * (R_i X)_z, 1)``. NDC are those of the 224 px face crop, so landmark
targets are mapped original pixels -> crop pixels -> NDC and back for the error in pixels.
Losses as the original: landmark = mean Euclidean distance in NDC over the visible static points;
photometric = ``mean(head_mask * |render - image|)`` with the render black outside the mesh; no
antialiasing (the original's rasterizer had no silhouette gradients either).

The 51 static landmarks = iBUG-68 points 17..67 (brows, nose, eyes, mouth), taken from the
MediaPipe-468 detections through :data:`MP_TO_IBUG68`, a fixed, commonly used MediaPipe Face Mesh
-> iBUG-68 correspondence (index k of the table = iBUG point k). It is approximate: MediaPipe's
brow points sit on the brow's middle line, iBUG's on its upper edge, and the jaw (0..16) is only a
nearby point of the face oval (unused here: the static set excludes it).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from flame_prior import render
from flame_prior.fit.state import landmark_targets
from flame_prior.fit.photometric import initial_albedo_color, make_crops
from flame_prior.flame import FlameParams, sh_basis, shade_sh
from flame_prior.geometry import axis_angle_to_rotation_matrix

#: MediaPipe Face Mesh index of each iBUG-68 point (entry k = iBUG point k, 0-based).
MP_TO_IBUG68 = np.array([
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,  # 0-16 jaw (approx.)
    70, 63, 105, 66, 107,  # 17-21 right brow (subject's right, image left)
    336, 296, 334, 293, 300,  # 22-26 left brow
    168, 197, 5, 4,  # 27-30 nose bridge
    75, 97, 2, 326, 305,  # 31-35 nose base
    33, 160, 158, 133, 153, 144,  # 36-41 right eye
    362, 385, 387, 263, 373, 380,  # 42-47 left eye
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # 48-59 outer lip
    78, 82, 13, 312, 308, 317, 14, 87,  # 60-67 inner lip
], dtype=np.int64)
STATIC = np.arange(17, 68)


def embedding_rows(embedding, ibug: np.ndarray = STATIC) -> np.ndarray:
    """Rows of the embedding (and of ``FitResult.views[i].landmarks_*``) of the given iBUG points."""
    idx = embedding.detector_index.astype(np.int64)
    if embedding.detector == "ibug68":
        want = ibug
    else:
        want = MP_TO_IBUG68[ibug]
    rows = []
    for d in want:
        hit = np.flatnonzero(idx == d)
        if len(hit) == 0:
            raise ValueError(f"the embedding has no landmark for detector point {d}")
        rows.append(int(hit[0]))
    return np.array(rows, dtype=np.int64)


def static_error_px(detected: np.ndarray, projected: np.ndarray, weight: np.ndarray) -> float:
    """Median pixel distance over the points with weight > 0.05 (one view)."""
    keep = weight > 0.05
    if not keep.any():
        return float("nan")
    return float(np.median(np.linalg.norm(detected[keep] - projected[keep], axis=-1)))


def run_baseline(model, embedding, views, *, texture_space=None, uv_layout=None, rigid_iters: int = 3000,
                 joint_iters: int = 2000, size: int = 224, lr: float = 5e-3, w_pho: float = 8.0,
                 reg: float = 1e-4, max_seconds: float | None = None, seed: int = 0) -> dict:
    """Run (or start, within ``max_seconds``) the original schedule; return timings and errors.

    When fewer iterations than asked ran (``rigid_iters``/``joint_iters`` are the schedule; a time
    budget stops the joint stage early), ``*_ran`` says how many and ``extrapolated_seconds`` is
    the measured median seconds per iteration of each stage times the full schedule.
    """
    torch.manual_seed(seed)
    device = model.faces.device
    dtype = torch.float32
    n = len(views)
    tg = landmark_targets(views, embedding, device, dtype)
    rows = embedding_rows(embedding)
    rows_t = torch.as_tensor(rows, device=device)
    crops = make_crops(views, tg, size, device, dtype)
    box = crops.box  # (N, 3) x0, y0, side (original pixels)
    pts = tg.points[:, rows_t]  # (N, 51, 2) original pixels
    vis = (tg.weight[:, rows_t] > 0.05).to(dtype)
    target_ndc = (pts - box[:, None, :2]) / box[:, None, 2:3] * 2.0 - 1.0
    faces = model.faces
    face_idx = torch.as_tensor(embedding.face_idx[rows], device=device)
    bary = torch.as_tensor(embedding.bary[rows], dtype=dtype, device=device)
    lmk_tri = faces[face_idx]  # (51, 3)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=device))

    scale = torch.full((1,), 0.09, dtype=dtype, device=device, requires_grad=True)
    rot = torch.tensor([[0.1, 0.0, 0.0]], dtype=dtype, device=device).repeat(n, 1).requires_grad_(True)
    trans = torch.zeros(n, 2, dtype=dtype, device=device, requires_grad=True)
    shape = torch.zeros(1, model.n_shape, dtype=dtype, device=device, requires_grad=True)
    expr = torch.zeros(1, model.n_expr, dtype=dtype, device=device, requires_grad=True)
    jaw = torch.zeros(1, 3, dtype=dtype, device=device, requires_grad=True)
    if texture_space is not None:
        uvs = torch.as_tensor(texture_space.uvs, dtype=dtype, device=device)
        uv_faces = torch.as_tensor(texture_space.uv_faces, device=device)
        t_mean = torch.as_tensor(texture_space.mean, dtype=dtype, device=device)
        t_basis = torch.as_tensor(texture_space.basis, dtype=dtype, device=device)
        tex = torch.zeros(1, t_basis.shape[-1], dtype=dtype, device=device, requires_grad=True)
        albedo_fn = lambda: (t_mean + (t_basis * tex[0]).sum(-1)).clamp(0.0, 1.0)  # noqa: E731
    else:
        uvs = torch.as_tensor(uv_layout[0], dtype=dtype, device=device)
        uv_faces = torch.as_tensor(uv_layout[1], device=device)
        init = np.clip(initial_albedo_color(views, tg), 0.02, 0.98)
        tex = torch.as_tensor(np.broadcast_to(init, (256, 256, 3)).copy(), dtype=dtype, device=device).requires_grad_(True)
        albedo_fn = lambda: tex  # noqa: E731
    y0 = float(sh_basis(torch.tensor([[0.0, 0.0, 1.0]]))[0, 0])
    sh = torch.zeros(n, 9, 3, dtype=dtype, device=device)
    sh[:, 0, :] = 1.0 / y0
    sh.requires_grad_(True)

    def params() -> FlameParams:
        z3 = torch.zeros(1, 3, dtype=dtype, device=device)
        return FlameParams(shape=shape, expression=expr, rotation=z3, neck_pose=z3, jaw_pose=jaw,
                           eye_pose=torch.zeros(1, 6, dtype=dtype, device=device), translation=z3)

    def cam_points(verts: Tensor) -> Tensor:  # (1, V, 3) -> (N, V, 3) rotated (OpenCV axes)
        R = flip @ axis_angle_to_rotation_matrix(rot)
        return verts.expand(n, -1, -1) @ R.transpose(1, 2)

    def to_ndc(pc: Tensor) -> Tensor:
        return 100.0 * scale * pc[..., :2] + trans[:, None]

    def landmarks_ndc(verts: Tensor) -> Tensor:
        lm = (verts[0][lmk_tri] * bary[..., None]).sum(1)  # (51, 3)
        return to_ndc(cam_points(lm[None]))

    def lmk_loss(pred: Tensor) -> Tensor:
        d = (pred - target_ndc).norm(dim=-1)
        return ((d * vis).sum(1) / vis.sum(1).clamp_min(1.0)).mean()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    out: dict = {"schedule": {"rigid_iters": rigid_iters, "joint_iters": joint_iters, "render_size": size, "lr": lr,
                              "w_photometric": w_pho, "regulariser": reg, "landmarks": "51 static (iBUG 17..67 via MP_TO_IBUG68)"}}
    # ---- rigid
    with torch.no_grad():
        mean_verts = model(params()).vertices.detach()
    opt = torch.optim.Adam([scale, rot, trans], lr=lr)
    per_it: list[float] = []
    sync()
    t0 = time.perf_counter()
    for _ in range(rigid_iters):
        ti = time.perf_counter()
        opt.zero_grad()
        loss = lmk_loss(landmarks_ndc(mean_verts))
        loss.backward()
        opt.step()
        sync()
        per_it.append(time.perf_counter() - ti)
    t_rigid = time.perf_counter() - t0
    out["rigid"] = {"iterations_ran": rigid_iters, "seconds": t_rigid,
                    "median_iteration_s": float(np.median(per_it)) if per_it else float("nan"),
                    "final_loss": float(loss.detach()) if rigid_iters else float("nan")}

    # ---- joint
    opt = torch.optim.Adam([scale, rot, trans, shape, expr, jaw, tex, sh], lr=lr)
    topo_free_faces = faces
    per_it = []
    ran = 0
    t0 = time.perf_counter()
    history = []
    for it in range(joint_iters):
        ti = time.perf_counter()
        opt.zero_grad()
        verts = model(params()).vertices  # (1, V, 3)
        pc = cam_points(verts)
        xy = to_ndc(pc)
        pos = torch.cat([xy, 2.0 * pc[..., 2:3], torch.ones_like(pc[..., :1])], -1)
        rast = render.rasterize(pos, topo_free_faces, (size, size))
        albedo = render.texture(albedo_fn(), render.interpolate(uvs, rast, uv_faces))
        normals = torch.nn.functional.normalize(
            render.interpolate(render.vertex_normals(verts, faces).expand(n, -1, -1), rast, faces), dim=-1)
        img = shade_sh(albedo, normals, sh) * (rast[..., 3:] > 0).to(dtype)
        pho = ((crops.head * crops.valid)[..., None] * (img - crops.image).abs()).mean()
        lm = lmk_loss(landmarks_ndc(verts))
        regl = reg * ((shape ** 2).sum() / 2 + (expr ** 2).sum() / 2 + (jaw ** 2).sum() / 2)
        loss = lm + w_pho * pho + regl
        loss.backward()
        opt.step()
        if texture_space is None:
            with torch.no_grad():
                tex.clamp_(0.0, 1.0)
        sync()
        per_it.append(time.perf_counter() - ti)
        history.append(float(loss.detach()))
        ran = it + 1
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds and ran >= 3:
            break
    t_joint = time.perf_counter() - t0
    med_joint = float(np.median(per_it[1:] if len(per_it) > 1 else per_it)) if per_it else float("nan")
    out["joint"] = {"iterations_ran": ran, "seconds": t_joint, "median_iteration_s": med_joint,
                    "final_loss": history[-1] if history else float("nan")}
    out["measured_seconds"] = t_rigid + t_joint
    out["full_schedule_seconds"] = t_rigid + t_joint if ran == joint_iters else (
        t_rigid + med_joint * joint_iters)
    out["truncated"] = ran < joint_iters

    # ---- landmark error in original pixels, on the 51 static points
    with torch.no_grad():
        verts = model(params()).vertices
        pred = landmarks_ndc(verts)  # (N, 51, 2)
        pred_px = box[:, None, :2] + (pred + 1.0) / 2.0 * box[:, None, 2:3]
        R = (flip @ axis_angle_to_rotation_matrix(rot)).double().cpu()
    pred_np, pts_np, vis_np = pred_px.cpu().double().numpy(), pts.cpu().double().numpy(), vis.cpu().numpy()
    errs = [static_error_px(pts_np[i], pred_np[i], vis_np[i]) for i in range(n)]
    i36, i45 = 36 - 17, 45 - 17
    eye = np.linalg.norm(pred_np[:, i36] - pred_np[:, i45], axis=-1)
    out["static51_error_px"] = errs
    out["static51_error_px_median"] = float(np.nanmedian(errs))
    out["static51_error_over_eye_median"] = float(np.nanmedian(np.array(errs) / eye))
    out["rotation_w2c"] = R.numpy().tolist()
    out["scale_final"] = float(scale.detach())
    if not math.isfinite(out["static51_error_px_median"]):
        out["note"] = "non-finite landmark error"
    return out
