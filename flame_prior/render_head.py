"""The textured, SH-lit head seen by pinhole cameras: :mod:`flame_prior.render`'s primitives
chained once, for the photometric fit, the report's previews and the demo's synthetic photos.

Conventions are :mod:`flame_prior.render`'s and :mod:`flame_prior.geometry`'s (OpenCV camera
axes, world-to-camera, corner-origin pixels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flame_prior import render
from flame_prior.flame.appearance import shade_sh
from flame_prior.geometry import PinholeCameras

__all__ = ["render_head", "head_surface", "head_clip", "surface_at", "normals_at"]


def render_head(verts: Tensor, faces: Tensor, cameras: PinholeCameras, uvs: Tensor, uv_faces: Tensor,
                albedo_map: Tensor, sh: Tensor, size: tuple[int, int] | None = None,
                vertex_normals: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The textured, SH-lit head seen by B pinhole cameras.

    Args:
        verts: ``(1, V, 3)`` posed vertices, world frame.
        faces: ``(F, 3)`` triangles; ``uvs (T, 2)`` and ``uv_faces (F, 3)`` their texture layout.
        cameras: B cameras (their pixel grids: see :meth:`PinholeCameras.scaled` / ``cropped``).
        albedo_map: ``(Ht, Wt, 3)`` texture; ``sh``: ``(B, 9, 3)`` lighting per view.
        size: ``(H, W)`` of the images; default the cameras' own (which must then all agree).
        vertex_normals: ``(1, V, 3)`` when the caller already has them.

    Returns:
        colour ``(B, H, W, 3)`` (not antialiased, no background), ``rast`` and the clip-space
        positions ``pos`` for :func:`flame_prior.render.coverage` / ``antialias``.
    """
    uv, normals, rast, pos = head_surface(verts, faces, cameras, uvs, uv_faces, size, vertex_normals)
    albedo = render.texture(albedo_map, uv)
    return shade_sh(albedo, normals, sh), rast, pos


def head_surface(verts: Tensor, faces: Tensor, cameras: PinholeCameras, uvs: Tensor, uv_faces: Tensor,
                 size: tuple[int, int] | None = None,
                 vertex_normals: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What :func:`render_head` shades, before texturing and lighting (the photometric stage's
    closed-form appearance solve needs exactly these): texture coordinates ``(B, H, W, 2)``, unit
    world-frame normals ``(B, H, W, 3)``, ``rast`` and ``pos``. Arguments as :func:`render_head`."""
    pos = head_clip(verts, cameras, size)
    rast = render.rasterize(pos, faces, _image_size(cameras, size))
    if vertex_normals is None:
        vertex_normals = render.vertex_normals(verts, faces)
    uv = render.interpolate(uvs, rast, uv_faces)
    normals = torch.nn.functional.normalize(render.interpolate(vertex_normals[0], rast, faces), dim=-1)
    return uv, normals, rast, pos


def _image_size(cameras: PinholeCameras, size: tuple[int, int] | None) -> tuple[int, int]:
    """``size`` or, when None, the one ``(H, W)`` all ``cameras`` share (ValueError when they differ)."""
    if size is not None:
        return int(size[0]), int(size[1])
    sizes = set(zip(cameras.height, cameras.width))
    if len(sizes) != 1:
        raise ValueError(f"render_head: cameras of different image sizes {sorted(sizes)}; pass size")
    H, W = sizes.pop()
    return int(H), int(W)


def head_clip(verts: Tensor, cameras: PinholeCameras, size: tuple[int, int] | None = None) -> Tensor:
    """Clip-space positions ``(B, V, 4)`` of ``verts (1, V, 3)`` (world frame) in B cameras'
    ``size`` images (default the cameras' own), for :func:`flame_prior.render.rasterize`."""
    H, W = _image_size(cameras, size)
    pc = verts.expand(len(cameras), -1, -1) @ cameras.R.transpose(1, 2) + cameras.t[:, None]
    return render.pinhole_to_clip(pc, cameras.fx, cameras.fy, cameras.cx, cameras.cy, W, H)


def surface_at(verts: Tensor, faces: Tensor, rast: Tensor, uvs: Tensor, uv_faces: Tensor, pixels: Tensor,
               vertex_normals: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`head_surface`'s texture coordinates ``(P, 2)`` and unit normals ``(P, 3)`` at the covered
    ``pixels`` ``(P,)`` (flat indices into ``B * H * W`` of ``rast``) only: a loss on part of the
    crops interpolates, normalises and differentiates nothing else."""
    if vertex_normals is None:
        vertex_normals = render.vertex_normals(verts, faces)
    return render.interpolate(uvs, rast, uv_faces, pixels), normals_at(vertex_normals, faces, rast, pixels)


def normals_at(vertex_normals: Tensor, faces: Tensor, rast: Tensor, pixels: Tensor) -> Tensor:
    """Unit normals ``(P, 3)`` at the covered ``pixels`` of ``rast``, interpolated from the world-frame
    vertex normals ``(1, V, 3)`` that every view shares."""
    return torch.nn.functional.normalize(render.interpolate(vertex_normals[0], rast, faces, pixels), dim=-1)
