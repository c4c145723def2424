"""The report's alignment check: the fitted model drawn over the photo so that a wrong camera shows.

A textured render cannot show a misalignment: its texture was fitted to that very photo, so it looks
like the photo wherever the camera points. This picture uses nothing fitted to the pixels:

* the model shaded without texture (grey, lit from the camera), blended at 50 %;
* its silhouette (white) — compare with the head's outline in the photo;
* feature lines (magenta): eye openings, lips, nose and nostrils, jaw and face outline, where they
  lie on the fitted mesh, hidden where the mesh covers them — compare with the photo's features.

Feature lines come from MediaPipe's face-mesh contours placed on the mesh by flame-prior's bundled
embedding (FLAME topology; any FLAME version). For another topology only the shading and the
silhouette are drawn. Rendering uses :mod:`flame_prior.render` at most ``RENDER_SIDE`` pixels on
the long side; lines are drawn at display size.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from flame_prior import render
from flame_prior.export.view_render import ViewMesh, ViewSurface, view_surface
from flame_prior.fit import FitResult

__all__ = ["alignment_overlay", "feature_lines"]

RENDER_SIDE = 640
MODEL_GREY = np.array([200.0, 200.0, 205.0])
SILHOUETTE = (255, 255, 255)
FEATURE = (255, 0, 200)
BLEND = 0.5
#: MediaPipe face-mesh contour groups drawn as feature lines.
CONTOURS = ("FACEMESH_LIPS", "FACEMESH_LEFT_EYE", "FACEMESH_RIGHT_EYE", "FACEMESH_NOSE", "FACEMESH_FACE_OVAL")


@functools.lru_cache(maxsize=1)
def _contour_edges() -> tuple[tuple[int, int], ...]:
    """MediaPipe detector-index pairs of the contours (from mediapipe's own tables); empty if unavailable.

    The tables are a plain-data module of mediapipe's, executed on its own: importing it through the
    package would run ``mediapipe/__init__``, which loads the whole framework (4 s measured) when the
    detections came from the cache and mediapipe was never started."""
    try:
        spec = importlib.util.find_spec("mediapipe")
        folder = next(iter(spec.submodule_search_locations or ())) if spec else None
        path = Path(folder, "python", "solutions", "face_mesh_connections.py") if folder else None
        if path is None or not path.is_file():
            return ()
        fmc = importlib.util.module_from_spec(importlib.util.spec_from_file_location("_mediapipe_face_mesh_connections", path))
        fmc.__spec__.loader.exec_module(fmc)
    except Exception:  # noqa: BLE001 - the picture still has shading and silhouette
        return ()
    edges = set()
    for name in CONTOURS:
        edges |= {tuple(e) for e in getattr(fmc, name, ())}
    return tuple(sorted(edges))


@functools.lru_cache(maxsize=1)
def _bundled_embedding():
    from flame_prior.flame import load_landmark_embedding
    from flame_prior.flame.assets import default_embedding_path

    return load_landmark_embedding(default_embedding_path())


def feature_lines(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3D feature-line segments on a FLAME-topology mesh: points ``(P, 3)`` and segments ``(S, 2)``
    (indices into the points). Empty for another topology."""
    emb = _bundled_embedding()
    edges = _contour_edges()
    if not edges or int(emb.face_idx.max()) >= len(faces):
        return np.zeros((0, 3)), np.zeros((0, 2), np.int64)
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)[emb.face_idx]]  # (L, 3, 3)
    points = (tri * emb.bary[..., None]).sum(1)
    slot = {int(d): k for k, d in enumerate(emb.detector_index)}
    segments = [(slot[a], slot[b]) for a, b in edges if a in slot and b in slot]
    return points, np.asarray(segments, np.int64).reshape(-1, 2)


@torch.no_grad()
def alignment_overlay(photo: np.ndarray, result: FitResult, i: int, s: float,
                      base: Image.Image | None = None, surface: ViewSurface | None = None,
                      mesh: ViewMesh | None = None) -> Image.Image:
    """View ``i``'s photo (``(H, W, 3)`` uint8, original grid) at display scale ``s`` with the
    shaded model at 50 %, its silhouette and feature lines (see the module docstring). ``base``:
    the photo already resized to display scale, when the caller has it (resized here otherwise);
    ``surface``: this view rasterized at the render size used here (:func:`~.view_render.view_surface`),
    when the caller has it (the report's textured render of the view uses the same one); ``mesh``:
    :meth:`~.view_render.ViewMesh.of` ``result``, when the caller draws several views."""
    H, W = photo.shape[:2]
    w, h = max(1, round(W * s)), max(1, round(H * s))
    r = min(1.0, RENDER_SIDE / max(w, h))  # render scale relative to the display
    rw, rh = max(1, round(w * r)), max(1, round(h * r))
    if surface is None or surface.size != (rw, rh):
        mesh = mesh or ViewMesh.of(result, feature_lines(result.vertices, result.faces))
        surface = view_surface(mesh, i, (rw, rh))
    cam = surface.camera
    fx, fy, cx, cy = (float(v[0]) for v in (cam.fx, cam.fy, cam.cx, cam.cy))
    pix = surface.pixels
    # Lit from the camera: brightness is |cos| between the surface normal and the ray of the pixel
    # (the ray through the pixel centre meets the surface the pixel shows; camera frame, OpenCV).
    n_cam = surface.normals @ cam.R[0].T
    ray_x = ((pix % rw).float() + 0.5 - cx) / fx
    ray_y = (torch.div(pix, rw, rounding_mode="floor").float() + 0.5 - cy) / fy
    cos = (n_cam[:, 0] * ray_x + n_cam[:, 1] * ray_y + n_cam[:, 2]) / torch.sqrt(ray_x ** 2 + ray_y ** 2 + 1.0)
    shade = (0.25 + 0.75 * cos.abs()).numpy()
    pix_np = pix.numpy()
    covered = np.zeros(rh * rw, np.float32)
    covered[pix_np] = 1.0

    if base is None or base.size != (w, h):
        base = Image.fromarray(np.asarray(photo, np.uint8)).resize((w, h), Image.LANCZOS)
    base = np.asarray(base.convert("RGB"))
    grey = MODEL_GREY.astype(np.float32)
    if (rw, rh) == (w, h):  # rendered at display size: the model covers whole pixels, blended where it is
        out = base.reshape(-1, 3).copy()
        out[pix_np] = np.clip(np.round(base.reshape(-1, 3)[pix_np] * (1 - BLEND) + grey * (BLEND * shade[:, None])),
                              0, 255).astype(np.uint8)
        out = out.reshape(h, w, 3)
        inside = covered.reshape(h, w) >= 0.5
    else:
        lum = np.zeros(rh * rw, np.float32)
        lum[pix_np] = shade
        up = lambda a: np.asarray(Image.fromarray(a.reshape(rh, rw), mode="F").resize((w, h), Image.BILINEAR))  # noqa: E731
        cover, lum = up(covered), up(lum)
        alpha = BLEND * np.clip(cover, 0, 1)[..., None]
        out = np.clip(base * (1 - alpha) + grey * (lum / np.maximum(cover, 1e-6))[..., None] * alpha, 0, 255)
        out = np.round(out).astype(np.uint8)
        inside = cover >= 0.5
    inner = inside.copy()
    inner[1:] &= inside[:-1]; inner[:-1] &= inside[1:]; inner[:, 1:] &= inside[:, :-1]; inner[:, :-1] &= inside[:, 1:]  # noqa: E702
    edge = inside & ~inner
    thick = max(1, round(max(w, h) / 500))
    for _ in range(thick - 1):
        edge[1:] |= edge[:-1].copy(); edge[:, 1:] |= edge[:, :-1].copy()  # noqa: E702
    out[edge] = SILHOUETTE
    im = Image.fromarray(out)

    pts3, segs = mesh.features if mesh is not None else feature_lines(result.vertices, result.faces)
    if len(segs):
        R, t = cam.R[0].double(), cam.t[0].double()
        p = torch.as_tensor(pts3, dtype=torch.float64) @ R.T + t
        z = p[:, 2].numpy()
        u = (fx * p[:, 0] / p[:, 2] + cx).numpy()  # render pixels
        v = (fy * p[:, 1] / p[:, 2] + cy).numpy()
        kx, ky = s * W / rw, s * H / rh  # render pixels to display pixels
        # Hidden where the rendered surface is nearer than the point (by more than 3 mm): the surface's
        # depth (clip w) at the points' pixels only.
        at = np.clip(v.astype(int), 0, rh - 1) * rw + np.clip(u.astype(int), 0, rw - 1)
        hit = covered[at] > 0
        front = np.full(len(at), np.inf)
        if hit.any():
            front[hit] = render.interpolate(surface.clip[..., 3:4], surface.rast, mesh.faces if mesh is not None else
                                            torch.as_tensor(np.asarray(result.faces, dtype=np.int64)),
                                            torch.as_tensor(at[hit]))[:, 0].numpy()
        visible = (z > 0) & (~hit | (z <= front + 0.003))
        d = ImageDraw.Draw(im)
        for a, b in segs:
            if visible[a] and visible[b]:
                d.line([(u[a] * kx, v[a] * ky), (u[b] * kx, v[b] * ky)], fill=FEATURE, width=thick)
    return im
