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

__all__ = ["render_head", "head_surface"]


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
    b = len(cameras)
    if size is None:
        sizes = set(zip(cameras.height, cameras.width))
        if len(sizes) != 1:
            raise ValueError(f"render_head: cameras of different image sizes {sorted(sizes)}; pass size")
        size = sizes.pop()
    H, W = size
    pc = verts.expand(b, -1, -1) @ cameras.R.transpose(1, 2) + cameras.t[:, None]
    pos = render.pinhole_to_clip(pc, cameras.fx, cameras.fy, cameras.cx, cameras.cy, W, H)
    rast = render.rasterize(pos, faces, (H, W))
    uv = render.interpolate(uvs, rast, uv_faces)
    if vertex_normals is None:
        vertex_normals = render.vertex_normals(verts, faces)
    normals = torch.nn.functional.normalize(render.interpolate(vertex_normals.expand(b, -1, -1), rast, faces), dim=-1)
    return uv, normals, rast, pos
