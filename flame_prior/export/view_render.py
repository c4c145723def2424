"""The report's rasterization of one view, shared by its pictures (the textured model, the alignment check).

A view is rasterized once, at the size its picture is shown, front faces only (a back face never shows
on a closed head seen from outside, and culling them halves the rasterizer's work), and the surface
is interpolated at the covered pixels only (a list, not whole images: the head covers about half of
a portrait's grid). Conventions are :mod:`flame_prior.render`'s (OpenCV camera axes, corner-origin pixels).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import torch

from flame_prior import render
from flame_prior.geometry import PinholeCameras
from flame_prior.render_head import head_clip, normals_at, surface_at

__all__ = ["ViewMesh", "ViewSurface", "view_surface", "SmallSurfaces", "small_size", "SMALL_SIDE"]

#: Long side, in pixels, of the small rasterization every view gets once (:class:`SmallSurfaces`): the
#: report's contact-sheet thumbnail draws it and the texture bake tests visibility against its depth.
SMALL_SIDE = 320


@dataclasses.dataclass(frozen=True)
class ViewMesh:
    """The fitted mesh as the report's pictures render it, built once per report: ``verts (1, V, 3)``
    float32 (world frame), ``faces (F, 3)`` int64, unit vertex normals ``(1, V, 3)``, ``uvs (T, 2)``,
    ``uv_faces (F, 3)``, the float32 cameras, and ``features``: the feature lines of
    :func:`flame_prior.export.alignment.feature_lines` (points ``(P, 3)``, segments ``(S, 2)``)."""

    verts: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor
    uvs: torch.Tensor
    uv_faces: torch.Tensor
    cameras: PinholeCameras
    features: tuple[np.ndarray, np.ndarray]

    @staticmethod
    def of(result, features: tuple[np.ndarray, np.ndarray]) -> "ViewMesh":
        """The mesh of a :class:`~flame_prior.fit.FitResult` and its feature lines."""
        verts = torch.as_tensor(np.asarray(result.vertices), dtype=torch.float32)[None]
        faces = torch.as_tensor(np.asarray(result.faces, dtype=np.int64))
        return ViewMesh(verts, faces, render.vertex_normals(verts, faces),
                        torch.as_tensor(np.asarray(result.uvs), dtype=torch.float32),
                        torch.as_tensor(np.asarray(result.uv_faces, dtype=np.int64)),
                        result.cameras.to(dtype=torch.float32), features)


@dataclasses.dataclass(frozen=True)
class ViewSurface:
    """One view rasterized at ``size = (w, h)``: ``camera`` (that view's, scaled to the size), ``clip``
    ``(1, V, 4)`` positions, ``rast (1, h, w, 4)``, the covered ``pixels (P,)`` (flat indices, row-major)
    and, at them, unit world-frame ``normals (P, 3)`` and texture coordinates ``uv (P, 2)`` (None when
    not asked for: the untextured pictures need none)."""

    size: tuple[int, int]
    camera: PinholeCameras
    clip: torch.Tensor
    rast: torch.Tensor
    pixels: torch.Tensor
    uv: torch.Tensor | None
    normals: torch.Tensor


@torch.no_grad()
def view_surface(mesh: ViewMesh, i: int, size: tuple[int, int], texture_coords: bool = True) -> ViewSurface:
    """View ``i`` of ``mesh.cameras`` rasterized at ``size = (w, h)`` (any scale of its pixel grid), with
    the texture coordinates of the covered pixels when ``texture_coords``."""
    w, h = int(size[0]), int(size[1])
    cams = mesh.cameras
    cam = cams.subset([i]).scaled(w / float(cams.width[i]), h / float(cams.height[i]))
    clip = head_clip(mesh.verts, cam, (h, w))
    rast = render.rasterize(clip, mesh.faces, (h, w), cull_backfaces=True)
    pixels = (rast[..., 3].reshape(-1) > 0).nonzero().squeeze(1)
    if texture_coords:
        uv, normals = surface_at(mesh.verts, mesh.faces, rast, mesh.uvs, mesh.uv_faces, pixels, mesh.normals)
    else:
        uv = None
        normals = normals_at(mesh.normals, mesh.faces, rast, pixels)
    return ViewSurface((w, h), cam, clip, rast, pixels, uv, normals)


def small_size(width: int, height: int) -> tuple[int, int]:
    """``(w, h)`` of a ``width x height`` view scaled to a long side of :data:`SMALL_SIDE` pixels."""
    scale = SMALL_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class SmallSurfaces:
    """Each view of ``mesh`` rasterized once at :func:`small_size` (normals, no texture coordinates),
    for every writer that needs it: the texture bake (visibility) and the report (thumbnails), on
    threads of one pool. ``surfaces(i)`` computes view ``i`` on first use; two threads asking at once
    may both compute it, and the first one stored is kept (no thread ever waits for another)."""

    def __init__(self, mesh: ViewMesh) -> None:
        self.mesh = mesh
        self._done: dict[int, ViewSurface] = {}
        self._lock = threading.Lock()

    def __call__(self, i: int) -> ViewSurface:
        with self._lock:
            surface = self._done.get(i)
        if surface is None:
            cams = self.mesh.cameras
            surface = view_surface(self.mesh, i, small_size(int(cams.width[i]), int(cams.height[i])),
                                   texture_coords=False)
            with self._lock:
                surface = self._done.setdefault(i, surface)
        return surface
