"""A synthetic dynamic sequence with known per-timestep expression, jaw and head motion.

The head is the demo's (bundled FLAME 2023 Open geometry and identity + a generated expression space,
:func:`flame_prior.demo.demo_assets`), rendered with flame-prior's renderer through fixed cameras;
landmarks are the model's, projected, with Gaussian noise and visibility (as the demo does: the
detector cannot be run on renders of a generated model)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from flame_prior import render
from flame_prior.demo import demo_assets
from flame_prior.geometry import look_at_w2c
from flame_prior.render_head import render_head
from flame_prior.flame import FlameParams, head_yaw_deg, landmarks_from_vertices, sh_basis
from flame_prior.geometry import PinholeCameras, project_points
from flame_prior.images import InputImage
from flame_prior.detectors import Detection
from flame_prior.observe import ViewObservation


def sequence_truth(T: int, n_expr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Smooth per-timestep parameters: expressions and jaw as sums of sines, a turning, nodding head."""
    t = np.arange(T)[:, None]
    freq = rng.uniform(0.03, 0.12, (1, n_expr))
    phase = rng.uniform(0, 2 * np.pi, (1, n_expr))
    expr = 1.2 * np.sin(2 * np.pi * freq * t + phase)
    jaw = np.zeros((T, 3))
    jaw[:, 0] = 0.12 * (0.5 - 0.5 * np.cos(2 * np.pi * t[:, 0] / 17.0))  # 0..0.12 rad (0..7°)
    rot = np.zeros((T, 3))
    rot[:, 1] = np.radians(25) * np.sin(2 * np.pi * t[:, 0] / T)  # yaw ±25°
    rot[:, 0] = np.radians(8) * np.sin(2 * np.pi * t[:, 0] / (0.7 * T))  # pitch ±8°
    trans = np.zeros((T, 3))
    trans[:, 0] = 0.01 * np.sin(2 * np.pi * t[:, 0] / T)
    eyes = np.zeros((T, 6))
    return {"expression": expr, "jaw_pose": jaw, "rotation": rot, "translation": trans, "eye_pose": eyes,
            "neck_pose": np.zeros((T, 3))}


@torch.no_grad()
def render_sequence(T: int = 30, n_cams: int = 1, size: int = 256, noise_px: float = 0.5, seed: int = 0,
                    expressions: bool = True):
    """Returns ``(data, model, embedding, texture_space, views, timestep, camera, cameras, truth, shape)``.

    ``expressions=False``: the bundled FLAME 2023 Open subset as it is (no expression space)."""
    rng = np.random.default_rng(seed)
    data, model, emb, ts = demo_assets(seed, torch.device("cpu"))
    if not expressions:
        from flame_prior.flame import FlameModel, load_flame_model
        from flame_prior.flame.assets import default_model_path

        data = load_flame_model(default_model_path())
        model = FlameModel(data)
    truth = sequence_truth(T, model.n_expr, rng)
    shape = rng.normal(0, 0.8, model.n_shape)
    p = FlameParams.zeros(T, model.n_shape, model.n_expr)
    p.shape = torch.as_tensor(np.repeat(shape[None], T, 0), dtype=torch.float32)
    for k, field in (("expression", "expression"), ("jaw_pose", "jaw_pose"), ("rotation", "rotation"),
                     ("translation", "translation"), ("eye_pose", "eye_pose"), ("neck_pose", "neck_pose")):
        setattr(p, field, torch.as_tensor(truth[k], dtype=torch.float32))
    verts = model(p).vertices  # (T, V, 3)
    target = verts[0].mean(0).double().numpy()
    Rs, tvs = [], []
    for c in range(n_cams):
        yaw = 0.0 if n_cams == 1 else -40 + 80 * c / (n_cams - 1)
        a = math.radians(yaw)
        pos = target + 0.6 * np.array([math.sin(a), 0.05, math.cos(a)])
        R, t = look_at_w2c(pos, target)
        Rs.append(R)
        tvs.append(t)
    f = 0.55 * size * 0.62 / 0.18
    full = lambda v: torch.full((n_cams,), float(v), dtype=torch.float64)  # noqa: E731
    cams = PinholeCameras(torch.as_tensor(np.stack(Rs)), torch.as_tensor(np.stack(tvs)), full(f), full(f),
                          full(size / 2), full(size / 2), [size] * n_cams, [size] * n_cams)
    coeffs = torch.as_tensor(rng.normal(0, 1.0, (1, ts.basis.shape[-1])), dtype=torch.float32)
    albedo = ts.texture_from_coeffs(coeffs)[0]
    y0 = float(sh_basis(torch.tensor([[0.0, 0.0, 1.0]]))[0, 0])
    sh = torch.zeros(1, 9, 3)
    sh[:, 0] = 0.8 / y0
    sh[:, 1:4] = 0.2
    views, timestep, camera = [], [], []
    n_det = 478
    cf = cams.to(dtype=torch.float32)
    for ti in range(T):
        for c in range(n_cams):
            v = verts[ti:ti + 1]
            color, rast, pos = render_head(v, model.faces, cf.subset([c]), torch.as_tensor(ts.uvs),
                                           torch.as_tensor(ts.uv_faces), albedo, sh)
            cov = render.coverage(rast, pos, model.faces)[0, ..., 0]
            img = color[0].clamp(0, 1) * cov[..., None] + 0.25 * (1 - cov[..., None])
            R_head_cam = cams.R[c:c + 1].float() @ torch.as_tensor(
                __import__("flame_prior.geometry", fromlist=["x"]).axis_angle_to_rotation_matrix(
                    torch.as_tensor(truth["rotation"][ti:ti + 1], dtype=torch.float32)))
            lm3 = landmarks_from_vertices(v, model.faces, emb, head_yaw_deg(R_head_cam))
            uv, depth = project_points(lm3.double(), cams.subset([c]))
            pts = uv[0].numpy()
            depth_map = render.interpolate(pos[..., 3:4], rast, model.faces)[0, ..., 0]
            px = np.clip(np.floor(pts).astype(int), 0, size - 1)
            z_here = depth_map[px[:, 1], px[:, 0]].numpy()
            covered = (rast[0, ..., 3] > 0).numpy()[px[:, 1], px[:, 0]]
            visible = (~covered | (depth[0].numpy() <= z_here + 0.005)) & (pts >= 0).all(1) & (pts < size).all(1)
            lm = np.zeros((n_det, 2), np.float32)
            conf = np.zeros(n_det, np.float32)
            lm[emb.detector_index] = pts + rng.normal(0, noise_px, pts.shape)
            conf[emb.detector_index] = np.where(visible, 1.0, 0.0)
            pixels = (img.numpy() * 255).round().astype(np.uint8)
            name = f"cam{c}_{ti:05d}"
            im = InputImage(path=Path(f"synthetic/{name}.png"), name=name, pixels=pixels, sha256=f"seq-{seed}-{name}")
            det = Detection(lm, conf, emb.detector, cov.numpy().astype(np.float32), (*pts.min(0), *pts.max(0)))
            views.append(ViewObservation(im, det))
            timestep.append(ti)
            camera.append(c)
    return data, model, emb, ts, views, timestep, camera, cams, truth, shape
