"""The exported texture is the photos projected onto the mesh: on a textured ellipsoid rendered from known
cameras (ambient light), baking the renders gives back the texture where the views see it, fills the rest
smoothly (no holes, no noise), agrees across the UV seam, and sizes itself from the images."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from export_fixtures import make_fit
from flame_prior.export.texture_bake import bake_texture, texture_side
from flame_prior.render_head import render_head
from flame_prior.flame import sh_basis


def _textured_scene(side: int = 128):
    views, result, intr, skipped = make_fit()
    yy, xx = np.mgrid[0:side, 0:side] / side
    tex = np.stack([0.5 + 0.3 * np.cos(2 * np.pi * (xx + 0.5 / side)), 0.8 - 0.6 * yy, 0.3 + 0.4 * np.sin(6 * np.pi * xx) ** 2], -1).astype(np.float32)
    y0 = float(sh_basis(torch.tensor([[0.0, 0.0, 1.0]]))[0, 0])
    sh = torch.zeros(len(views), 9, 3)
    sh[:, 0] = 1.0 / y0  # shading 1 everywhere: the render is the albedo
    cams = result.cameras.to(dtype=torch.float32)
    verts = torch.as_tensor(result.vertices, dtype=torch.float32)[None]
    out_views = []
    for i, v in enumerate(views):
        W, H = cams.width[i], cams.height[i]
        color, rast, _ = render_head(verts, torch.as_tensor(result.faces), cams.subset([i]),
                                     torch.as_tensor(result.uvs, dtype=torch.float32),
                                     torch.as_tensor(result.uv_faces), torch.as_tensor(tex), sh[i:i + 1], (H, W))
        covered = (rast[0, ..., 3] > 0).numpy()
        pixels = np.where(covered[..., None], (color[0].clamp(0, 1).numpy() * 255).round(), 40).astype(np.uint8)
        img = dataclasses.replace(v.image, pixels=pixels)
        det = dataclasses.replace(v.detection, mask=covered.astype(np.float32))
        out_views.append(dataclasses.replace(v, image=img, detection=det))
    result = dataclasses.replace(result, lighting=sh.double().numpy(), texture=np.full_like(tex, 0.5))
    return out_views, result, tex


def test_bake_recovers_the_texture_where_seen_and_fills_the_rest():
    views, result, truth = _textured_scene()
    baked = bake_texture(result, views, side=128)
    assert baked.shape == (128, 128, 3) and np.isfinite(baked).all()
    # The views look at +Z, which the fixture's layout puts at u = 0 = 1 (its seam); away from the poles.
    cols = np.r_[0:20, 108:128]
    err = np.abs(baked[40:100][:, cols] - truth[40:100][:, cols])
    assert np.median(err) < 0.02, np.median(err)
    assert np.percentile(err, 95) < 0.08, np.percentile(err, 95)
    # Unseen texels (back of the head, outside the charts) are filled smoothly from their neighbours.
    assert (baked.reshape(-1, 3).std(0) > 0.05).all()  # not a constant fill
    grad = np.abs(np.diff(baked, axis=1)).mean()
    assert grad < 3 * np.abs(np.diff(truth, axis=1)).mean() + 0.01, grad


def test_bake_agrees_across_the_seam():
    views, result, truth = _textured_scene()
    baked = bake_texture(result, views, side=128)
    # u = 0 and u = 1 are the same surface points (the texture is periodic in u): the columns on both
    # sides of the seam get the same colours, as the photos show them.
    assert np.abs(baked[40:100, 0] - baked[40:100, -1]).mean() < 0.03


def test_texture_side_follows_the_images():
    views, result, _ = _textured_scene()
    small = texture_side(result, views)
    big_cams = dataclasses.replace(result.cameras, fx=result.cameras.fx * 4, fy=result.cameras.fy * 4)
    big = texture_side(dataclasses.replace(result, cameras=big_cams), views)
    assert small >= 256 and big > small and big <= 1024
    assert (big & (big - 1)) == 0 and (small & (small - 1)) == 0


def test_spread_views_cover_the_directions():
    """With more views than the bake reads, the chosen ones spread around the head: every camera's
    viewing direction is within the chosen ones' largest gap, and a crowd of cameras on one side
    gives one pick there, not all of them."""
    from flame_prior.export.texture_bake import spread_views

    specs = [(320, 240, 500.0, 500.0, 160.0, 120.0, yaw, 0.0) for yaw in (-60, -40, -20, 0, 1, 2, 3, 4, 20, 40, 60)]
    _, result, _, _ = make_fit(specs)
    assert spread_views(result, 20) == list(range(len(specs)))
    picked = spread_views(result, 5)
    assert len(picked) == 5 == len(set(picked)) and picked == sorted(picked)
    yaws = [specs[i][6] for i in picked]
    assert -60 in yaws and 60 in yaws  # both ends
    assert sum(0 <= y <= 4 for y in yaws) == 1  # the crowd around 0 degrees counts once


def test_uv_rasterization_is_cached_and_survives_a_bad_file(tmp_path, monkeypatch):
    """The UV layout's rasterization is written to the cache on first use and read back on the next:
    the same faces and barycentrics as the rasterizer's; a damaged file is rasterized and written again."""
    from flame_prior import render
    from flame_prior.export.texture_bake import uv_rasterization

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _, result, _, _ = make_fit()
    uvs = torch.as_tensor(result.uvs, dtype=torch.float32)
    uv_faces = torch.as_tensor(result.uv_faces, dtype=torch.int64)
    pos = torch.stack([2 * uvs[:, 0] - 1, 1 - 2 * uvs[:, 1], torch.zeros(len(uvs)), torch.ones(len(uvs))], -1)[None]
    truth = render.rasterize(pos, uv_faces, (64, 64))[..., [0, 1, 3]]
    assert (truth[..., 2] > 0).sum() > 100  # the layout covers texels

    first = uv_rasterization(uvs, uv_faces, 64)
    files = list((tmp_path / "flame-prior" / "texels").glob("*.npz"))
    assert len(files) == 1
    again = uv_rasterization(uvs, uv_faces, 64)  # read from the file
    for rast in (first, again):
        assert rast.shape == (1, 64, 64, 4) and torch.equal(rast[..., [0, 1, 3]], truth)
    with np.load(files[0], allow_pickle=False) as z:
        assert len(z["pixels"]) == int((truth[..., 2] > 0).sum())

    files[0].write_bytes(b"not an npz")
    assert torch.equal(uv_rasterization(uvs, uv_faces, 64)[..., [0, 1, 3]], truth)
    with np.load(files[0], allow_pickle=False) as z:  # written again
        assert set(z.files) == {"pixels", "face", "bary"}
    assert len(list((tmp_path / "flame-prior" / "texels").glob("*.npz"))) == 1  # one file per layout and side
    uv_rasterization(uvs, uv_faces, 32)
    assert len(list((tmp_path / "flame-prior" / "texels").glob("*.npz"))) == 2
