"""``flame-prior demo``: a synthetic round trip that needs no license-gated file.

Builds a FLAME-format head (the bundled FLAME 2023 Open geometry and identity space plus a
generated expression space and texture space), renders K views with known cameras around it
(yaw up to ±60°, some pitch and roll), adds landmark noise, fits from scratch through the same
fitter and exporters as a real run, and reports the camera errors against the truth
(``camera_errors.json`` in the output directory, and a table).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from flame_prior import render
from flame_prior.detectors import Detection
from flame_prior.demo_config import DemoConfig
from flame_prior.export.output_dir import check_output_dir
from flame_prior.fit import FitResult, fit_flame, resolve_device
from flame_prior.flame.assets import ModelInfo, default_embedding_path, default_model_path
from flame_prior.geometry import PinholeCameras, look_at_w2c, rotation_angle_deg
from flame_prior.images import InputImage
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation
from flame_prior.progress import make_console, make_progress, stage
from flame_prior.render_head import render_head


@dataclass
class SyntheticScene:
    """Known truth and the observations rendered from it."""

    views: list[ViewObservation]
    cameras: PinholeCameras  # truth, float64
    params: dict[str, np.ndarray]
    target: np.ndarray  # (3,) the point the cameras look at


def synthetic_cameras(n: int, size: int, rng: np.random.Generator, target: np.ndarray) -> PinholeCameras:
    """N cameras around the head: yaw over ±60°, pitch ±15°, roll ±5°, 0.55-0.7 m away, ~30° FOV."""
    yaws = np.linspace(-60, 60, n) if n > 1 else np.zeros(1)
    Rs, ts = [], []
    for yaw in yaws:
        pitch, roll = rng.uniform(-15, 15), rng.uniform(-5, 5)
        d = rng.uniform(0.55, 0.7)
        a, b = math.radians(yaw), math.radians(pitch)
        pos = target + d * np.array([math.sin(a) * math.cos(b), math.sin(b), math.cos(a) * math.cos(b)])
        R, t = look_at_w2c(pos, target, roll)
        Rs.append(R)
        ts.append(t)
    f = 0.55 * size * 0.62 / 0.18  # the face (~0.18 m) spans ~55% of the image at 0.62 m
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return PinholeCameras(torch.as_tensor(np.stack(Rs)), torch.as_tensor(np.stack(ts)), full(f), full(f),
                          full(size / 2), full(size / 2), [size] * n, [size] * n)


def demo_assets(seed: int, device: torch.device):
    """The demo's head model (FLAME 2023 Open + generated expressions), embedding, texture space."""
    from flame_prior.flame import FlameModel, build_test_model, build_test_texture_space, load_flame_model, \
        load_landmark_embedding
    from flame_prior.flame.uv_unwrap import cylindrical_uv_layout

    data = load_flame_model(default_model_path())
    data = build_test_model(n_shape=data.n_shape, n_expr=10, seed=seed, template=data)
    uvs, uv_faces = cylindrical_uv_layout(data.v_template, data.faces)
    texture_space = build_test_texture_space(uvs, uv_faces, n_tex=10, size=256, seed=seed)
    embedding = load_landmark_embedding(default_embedding_path())
    model = FlameModel(data).to(device)
    return data, model, embedding, texture_space


@torch.no_grad()
def render_scene(model, embedding, texture_space, cfg: DemoConfig, rng: np.random.Generator) -> SyntheticScene:
    """Render the truth: images, head masks (coverage) and noisy landmarks with visibility."""
    from flame_prior.flame import FlameParams, head_yaw_deg, landmarks_from_vertices, sh_basis

    device = model.faces.device
    n, S = cfg.views, cfg.image_size
    p = FlameParams.zeros(1, model.n_shape, model.n_expr, device=device)
    p.shape = torch.as_tensor(rng.normal(0, 0.8, (1, model.n_shape)), dtype=torch.float32, device=device)
    p.expression = torch.as_tensor(rng.normal(0, 0.5, (1, model.n_expr)), dtype=torch.float32, device=device)
    p.jaw_pose = torch.tensor([[0.05, 0.0, 0.0]], device=device)
    verts = model(p).vertices  # (1, V, 3)
    target = verts[0].mean(0).cpu().double().numpy()
    cams = synthetic_cameras(n, S, rng, target)
    c = cams.to(device=device, dtype=torch.float32)
    faces = model.faces
    coeffs = torch.as_tensor(rng.normal(0, 1.0, (1, texture_space.basis.shape[-1])), dtype=torch.float32, device=device)
    albedo_map = texture_space.texture_from_coeffs(coeffs)[0].to(device)
    y0 = float(sh_basis(torch.tensor([[0.0, 0.0, 1.0]]))[0, 0])
    sh = torch.zeros(n, 9, 3, device=device)
    sh[:, 0] = 0.8 / y0
    sh[:, 1:4] = torch.as_tensor(rng.normal(0, 0.25, (n, 3, 1)), dtype=torch.float32, device=device)
    color, rast, pos = render_head(verts, faces, c, torch.as_tensor(texture_space.uvs, device=device),
                                   torch.as_tensor(texture_space.uv_faces, device=device), albedo_map, sh)
    color = color.clamp(0, 1)
    cov = render.coverage(rast, pos, faces)[..., 0]
    background = torch.as_tensor(rng.uniform(0.1, 0.4, (n, 1, 1, 3)), dtype=torch.float32, device=device)
    image = color * cov[..., None] + background * (1 - cov[..., None])
    lm3 = landmarks_from_vertices(verts.expand(n, -1, -1), faces, embedding, head_yaw_deg(c.R))
    from flame_prior.geometry import project_points

    uv_l, depth = project_points(lm3.double().cpu(), cams)
    # Visibility: a landmark is seen when no surface nearer than it (by > 5 mm) covers its pixel.
    depth_map = render.interpolate(pos[..., 3:4], rast, faces)[..., 0].cpu()  # clip w is the camera depth
    covered = (rast[..., 3] > 0).cpu()
    views = []
    n_det = int(embedding.detector_index.max()) + 1
    n_det = 478 if embedding.detector == "mediapipe478" else max(n_det, 68)
    for i in range(n):
        pts = uv_l[i].numpy()
        px = np.clip(np.floor(pts).astype(int), 0, S - 1)
        z_here = depth_map[i, px[:, 1], px[:, 0]].numpy()
        seen = ~covered[i, px[:, 1], px[:, 0]].numpy() | (depth[i].numpy() <= z_here + 0.005)
        visible = seen & (pts >= 0).all(1) & (pts < S).all(1)
        noisy = pts + rng.normal(0, cfg.noise_px, pts.shape)
        lm = np.zeros((n_det, 2), np.float32)
        conf = np.zeros(n_det, np.float32)
        lm[embedding.detector_index] = noisy
        conf[embedding.detector_index] = np.where(visible, 1.0, 0.0)
        pixels = (image[i].cpu().numpy() * 255).round().astype(np.uint8)
        img = InputImage(path=Path(f"synthetic/view_{i:02d}.png"), name=f"view_{i:02d}", pixels=pixels,
                         sha256=f"synthetic-{cfg.seed}-{i}")
        box = (*pts.min(0), *pts.max(0))
        det = Detection(lm, conf, embedding.detector, cov[i].cpu().numpy().astype(np.float32),
                        tuple(float(b) for b in box))
        views.append(ViewObservation(img, det))
    params = {"shape": p.shape[0].cpu().numpy(), "expression": p.expression[0].cpu().numpy(),
              "jaw_pose": p.jaw_pose[0].cpu().numpy()}
    return SyntheticScene(views, cams, params, target)


def camera_errors(fit: PinholeCameras, truth: PinholeCameras, target: np.ndarray) -> dict[str, list[float]]:
    """Rotation (degrees), camera-centre error (% of the camera's distance to the head), focal (%).

    ``translation_pct`` compares the camera centres as they are; ``translation_scaled_pct`` after
    the one global scale (about FLAME's origin) that images cannot observe: a head 2% larger and
    2% farther away gives the same photographs, so the fit's metric scale comes from the shape
    prior alone.
    """
    rot = rotation_angle_deg(fit.R.double(), truth.R.double()).numpy()
    cf, ct = fit.camera_centers().double().numpy(), truth.camera_centers().double().numpy()
    dist = np.linalg.norm(ct - target, axis=1)
    trans = np.linalg.norm(cf - ct, axis=1) / dist * 100
    scale = float((cf * ct).sum() / (cf * cf).sum())
    trans_scaled = np.linalg.norm(scale * cf - ct, axis=1) / dist * 100
    focal = (np.abs(fit.fx.double().numpy() - truth.fx.double().numpy()) / truth.fx.double().numpy()) * 100
    return {"rotation_deg": rot.tolist(), "translation_pct": trans.tolist(),
            "translation_scaled_pct": trans_scaled.tolist(), "focal_pct": focal.tolist(),
            "global_scale": [scale]}


def error_table(errors: dict[str, list[float]], cfg: DemoConfig) -> Table:
    """The camera errors per view; the focal column only when the focal was fitted (given, it is exact)."""
    table = Table(title=f"demo: camera errors against the truth ({cfg.views} views, {cfg.image_size} px, "
                        f"landmark noise {cfg.noise_px} px)",
                  caption="camera centre error: distance between the fitted and the true camera centre, in % of "
                          "the true camera's distance to the head; after scale: once the one global scale that "
                          "photographs cannot observe is removed")
    columns = {"rotation error °": "rotation_deg", "camera centre error %": "translation_pct",
               "camera centre error after scale %": "translation_scaled_pct"}
    if cfg.unknown_focal:
        columns["focal error %"] = "focal_pct"
    table.add_column("view", justify="right")
    for title in columns:
        table.add_column(title, justify="right")
    for i in range(cfg.views):
        table.add_row(str(i), *(f"{errors[key][i]:.3f}" for key in columns.values()))
    return table


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict:
    """Render, fit, export, compare; returns the camera errors (also written to camera_errors.json)."""
    from flame_prior.summary import print_summary

    console = console or make_console()
    cfg.check()
    out = check_output_dir(cfg.output_dir, None, cfg.overwrite)
    t0 = time.perf_counter()
    with make_progress(console) as progress:
        scene, intr, result, info, errors, summary, timings = _render_fit_write(cfg, out, progress)
    timings["total"] = time.perf_counter() - t0
    console.print(error_table(errors, cfg))
    print_summary(console, out, scene.views, [], intr, result, info, timings)
    summary["total_seconds"] = timings["total"]
    return summary


def _render_fit_write(cfg: DemoConfig, out: Path, progress):
    from flame_prior.pipeline import write_all

    device = resolve_device(cfg.fitter.device)
    rng = np.random.default_rng(cfg.seed)
    with stage(progress, "rendering the synthetic views"):
        data, model, embedding, texture_space = demo_assets(cfg.seed, device)
        scene = render_scene(model, embedding, texture_space, cfg, rng)
    n, S = cfg.views, cfg.image_size
    f_true = scene.cameras.fx.numpy()
    if cfg.unknown_focal:
        f0 = np.full(n, S / 2 / math.tan(math.radians(10.0)))
        intr = Intrinsics(f0, f0.copy(), np.full(n, S / 2), np.full(n, S / 2), "optimised", True,
                          notes=["demo: focal unknown, started from a 20° field of view"])
    else:
        intr = Intrinsics(f_true.copy(), f_true.copy(), np.full(n, S / 2), np.full(n, S / 2), "given", False)
    info = ModelInfo(path="synthetic (bundled FLAME 2023 Open + generated expression/texture spaces)",
                     sha256=data.sha256, name="demo", n_shape=data.n_shape, n_expr=data.n_expr)
    t_fit = time.perf_counter()
    with stage(progress, "fit"):
        result: FitResult = fit_flame(model, embedding, scene.views, intr, cfg.fitter, texture_space=texture_space,
                                      progress=progress)
    t_fit = time.perf_counter() - t_fit
    errors = camera_errors(result.cameras, scene.cameras, scene.target)
    summary = {k: {"median": float(np.median(v)), "max": float(np.max(v)), "per_view": v} for k, v in errors.items()}
    summary.update(fit_seconds=t_fit, views=n, image_size=S, noise_px=cfg.noise_px, unknown_focal=cfg.unknown_focal,
                   torch_threads=torch.get_num_threads())  # results repeat for the same seed, device and threads
    timings = {"fit": t_fit, **{f"fit.{s.name}": s.seconds for s in result.stages}}
    t_export = time.perf_counter()
    with stage(progress, "writing the outputs"):
        write_all(out, scene.views, intr, result, [], timings, model=info, overwrite=cfg.overwrite,
                  avatar_format=False, extra_files={"camera_errors.json": json.dumps(summary, indent=2)})
    timings["export"] = time.perf_counter() - t_export
    return scene, intr, result, info, errors, summary, timings
