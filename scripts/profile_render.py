"""Time the renderer on the FLAME template: rasterize + interpolate + texture + coverage, forward + backward.

Usage: python scripts/profile_render.py [--views 1 8 30] [--res 256] [--threads 2] [--device cpu] [--profile]
Reads the FLAME template from $FLAME_PRIOR_SHARED/flame-assets (default ../shared beside the repository).
Timings are wall-clock means over --iters after one warm-up; on CUDA the loop is synchronised.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from flame_prior import render

SHARED = Path(os.environ.get("FLAME_PRIOR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ASSET = SHARED / "flame-assets" / "flame2023_open_subset.npz"


def setup(n_views: int, res: int, device: str, dtype=torch.float32):
    d = np.load(ASSET)
    verts = torch.as_tensor(d["v_template"], dtype=dtype, device=device)
    faces = torch.as_tensor(d["f"].astype(np.int64), device=device)
    yaw = torch.linspace(-0.8, 0.8, n_views, dtype=dtype) if n_views > 1 else torch.zeros(1, dtype=dtype)
    c, s = torch.cos(yaw), torch.sin(yaw)
    # World-to-camera: rotate the head by yaw about +Y, then the OpenCV flip diag(1,-1,-1), camera 1 m away.
    Ry = torch.zeros(n_views, 3, 3, dtype=dtype)
    Ry[:, 0, 0], Ry[:, 0, 2], Ry[:, 1, 1], Ry[:, 2, 0], Ry[:, 2, 2] = c, s, 1, -s, c
    R = (torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype)) @ Ry).to(device)
    t = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device).expand(n_views, 3)
    f = torch.full((n_views,), 3.2 * res, dtype=dtype, device=device)
    cxy = torch.full((n_views,), res / 2, dtype=dtype, device=device)
    return verts, faces, R, t, f, cxy


def step(verts, faces, R, t, f, cxy, res, uvs, tex, topo, full=True):
    """One forward + backward: rasterize + interpolate (+ texture + coverage when ``full``)."""
    pc = verts[None] @ R.transpose(1, 2) + t[:, None]
    pos = render.pinhole_to_clip(pc, f, f, cxy, cxy, res, res)
    rast = render.rasterize(pos, faces, (res, res))
    uv = render.interpolate(uvs, rast, faces)
    if full:
        col = render.texture(tex, uv)
        cov = render.coverage(rast, pos, faces, topo)
        loss = (col * cov).square().mean() + cov.mean()
    else:
        loss = uv.square().mean()
    loss.backward()
    return rast


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--views", type=int, nargs="+", default=[1, 8, 30])
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for n in a.views:
        verts, faces, R, t, f, cxy = setup(n, a.res, a.device)
        verts.requires_grad_(True)
        uvs = torch.rand(verts.shape[0], 2, device=a.device)  # stand-in UVs (same topology)
        tex = torch.rand(256, 256, 3, device=a.device, requires_grad=True)
        topo = render.edge_topology(faces)
        rast = step(verts, faces, R, t, f, cxy, a.res, uvs, tex, topo)  # warm-up
        sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
        cov = (rast[..., 3] > 0).float().mean().item()
        for full in (False, True):
            step(verts, faces, R, t, f, cxy, a.res, uvs, tex, topo, full)
            sync()
            t0 = time.perf_counter()
            for _ in range(a.iters):
                step(verts, faces, R, t, f, cxy, a.res, uvs, tex, topo, full)
            sync()
            dt = (time.perf_counter() - t0) / a.iters
            what = "rast+interp+tex+cov" if full else "rast+interp        "
            print(f"{a.device} threads={torch.get_num_threads()} views={n:3d} res={a.res} {what} fwd+bwd: "
                  f"{dt * 1000:8.1f} ms/iter ({dt / n * 1000:5.1f} ms/view), covered {cov:.1%}")
        if a.profile:
            with torch.profiler.profile() as prof:
                step(verts, faces, R, t, f, cxy, a.res, uvs, tex, topo)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
