"""The exported texture: the photos projected onto the fitted mesh, at a resolution that follows them.

The photometric stage fits an albedo map for the fit's sake (a small map, texels updated only where
a mini-batch saw them; Adam's per-texel steps leave coloured noise where few pixels land, e.g.
under the jaw). For ``texture.png`` and the report's textured render this module instead, for each
texel of the UV layout:

1. finds its point and normal on the fitted mesh (the mesh rasterized in UV space);
2. in every view that sees it (in front of the camera, nearest surface, inside the head mask,
   facing the camera), reads the photo's colour and divides by that view's fitted SH shading;
   with many views, only :data:`MAX_VIEWS` of them, spread around the head (:func:`spread_views`);
3. averages the views, weighted by the squared cosine between normal and view ray (grazing looks
   count little), and fills texels no view sees from their neighbours (pull-push), which also
   pads the UV charts so that filtering across a chart's border (the scalp seam) finds colours
   of the same surface.

Side of the texture: :func:`texture_side` (about one texel per photo pixel on the face).
"""

from __future__ import annotations

import hashlib
import math

import cv2
import numpy as np
import torch

from flame_prior import render
from flame_prior.cache import cache_root
from flame_prior.export.view_render import SmallSurfaces, ViewMesh
from flame_prior.files import write_atomic
from flame_prior.flame import sh_basis
from flame_prior.threads import parallel_imap

__all__ = ["bake_texture", "texture_side", "spread_views", "MAX_VIEWS"]

MIN_SIDE, MAX_SIDE = 256, 1024
#: A texel counts as seen when no rendered surface is nearer than it by more than this (metres).
DEPTH_TOLERANCE = 0.004
#: Views read at most. Each costs a projection of the texels facing it and a depth render (about 0.1 s
#: of CPU on the shared 30-view scene). Eight spread around the head already see each texel from several
#: directions; more only average more of the same surface. Measured on the shared 30-view scene against
#: the texture baked from all 30 views: mean absolute difference 0.0093 with 12 views, 0.0109 with 8
#: (under 3/255; the face looks the same side by side), 0.0305 with 6 (parts of the head go unseen).
MAX_VIEWS = 8


def texture_side(result, views) -> int:
    """A power of two near 2x the largest head width in pixels (a cylindrical layout wraps the
    whole head: the half a photo sees spans about π/2 head widths), within [256, 1024]."""
    cams = result.cameras.to(dtype=torch.float64)
    v = torch.as_tensor(np.asarray(result.vertices), dtype=torch.float64)
    pc = v[None] @ cams.R.transpose(1, 2) + cams.t[:, None]
    u = cams.fx[:, None] * pc[..., 0] / pc[..., 2]
    width = float((u.max(1).values - u.min(1).values).max())
    side = 2 ** math.ceil(math.log2(max(1.0, 2.0 * width)))
    return int(min(MAX_SIDE, max(MIN_SIDE, side)))


def spread_views(result, count: int) -> list[int]:
    """Indices of ``count`` views (all when there are no more) whose cameras are spread around the
    head, in increasing order: the view nearest the mean viewing direction first, then repeatedly the
    view farthest (in angle) from those chosen (farthest-point sampling on the viewing directions)."""
    n = len(result.cameras)
    if n <= count:
        return list(range(n))
    R, t = result.cameras.R.double().numpy(), result.cameras.t.double().numpy()
    centres = -np.einsum("nji,nj->ni", R, t)
    d = centres - np.asarray(result.vertices, np.float64).mean(0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    chosen = [int(np.argmax(d @ d.mean(0)))]
    nearest = d @ d[chosen[0]]  # cosine to the nearest chosen view
    for _ in range(count - 1):
        k = int(np.argmin(nearest))
        chosen.append(k)
        nearest = np.maximum(nearest, d @ d[k])
    return sorted(chosen)


#: Bumped when the cached UV rasterization's content or format changes.
_TEXELS_CACHE_VERSION = 1


@torch.no_grad()
def uv_rasterization(uvs: torch.Tensor, uv_faces: torch.Tensor, side: int) -> torch.Tensor:
    """The UV layout rasterized in texture space: ``rast (1, side, side, 4)`` as
    :func:`flame_prior.render.rasterize` gives it (z/w is 0), texel (row j, column i) at
    ``u = (i + 0.5) / side``, ``v = 1 - (j + 0.5) / side``.

    It depends on the layout and the side only (FLAME's layout is the same for every fit), so it is
    kept in the cache (``<cache root>/texels/``, :mod:`flame_prior.cache`): the covered texels' flat
    indices, face ids and the first two barycentrics, read with ``allow_pickle=False``. Measured at
    1024x1024 on the shared scene: 0.22 s of CPU to rasterize, about 0.02 s to read back. A file that
    cannot be read or written only costs the rasterization."""
    key = hashlib.sha256(np.ascontiguousarray(uvs.numpy(), np.float32).tobytes()
                         + np.ascontiguousarray(uv_faces.numpy(), np.int64).tobytes()
                         + f"{int(side)}:{_TEXELS_CACHE_VERSION}".encode()).hexdigest()
    path = cache_root() / "texels" / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            pixels, face, bary = (torch.as_tensor(z[k]) for k in ("pixels", "face", "bary"))
        if not (pixels.dim() == face.dim() == 1 and bary.shape == (len(pixels), 2) == (len(face), 2)
                and (len(face) == 0 or (0 <= int(face.min()) and int(face.max()) < len(uv_faces)
                                        and 0 <= int(pixels.min()) and int(pixels.max()) < side * side))):
            raise ValueError(f"arrays of the wrong shape or range in {path.name}")
        rast = torch.zeros(side * side, 4).index_copy_(
            0, pixels.long(), torch.cat([bary.float(), torch.zeros(len(face), 1), face[:, None].float() + 1], 1))
        return rast.reshape(1, side, side, 4)
    except Exception:  # noqa: BLE001 - no file yet, or an unusable one: rasterize (and write it again)
        pass
    pos_uv = torch.stack([2 * uvs[:, 0] - 1, 1 - 2 * uvs[:, 1], torch.zeros_like(uvs[:, 0]),
                          torch.ones_like(uvs[:, 0])], -1)[None]
    rast = render.rasterize(pos_uv, uv_faces, (side, side))
    rast[..., 2] = 0.0  # the layout is flat: z/w says nothing, and the cached copy has none
    flat = rast.reshape(-1, 4)
    pixels = (flat[:, 3] > 0).nonzero().squeeze(1)
    try:
        write_atomic(path, lambda f: np.savez(f, pixels=pixels.numpy().astype(np.int32),
                                              face=(flat[pixels, 3] - 1).numpy().astype(np.int32),
                                              bary=flat[pixels, :2].numpy()))
    except OSError:
        pass
    return rast


@torch.no_grad()
def bake_texture(result, views, side: int | None = None, max_views: int = MAX_VIEWS,
                 surfaces: SmallSurfaces | None = None) -> np.ndarray:
    """``(side, side, 3)`` float32 albedo in [0, 1], rows top-down (row 0 is v = 1), for ``result``'s
    UV layout; ``views`` are the observations of ``result.views`` in that order; at most ``max_views``
    of them are read (:func:`spread_views`). ``surfaces``: the views' small rasterizations when the
    caller shares them with other writers (:class:`~.view_render.SmallSurfaces` of ``result``'s mesh)."""
    side = side or texture_side(result, views)
    surfaces = surfaces or SmallSurfaces(ViewMesh.of(result, (np.zeros((0, 3)), np.zeros((0, 2), np.int64))))
    verts = torch.as_tensor(np.asarray(result.vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(result.faces, dtype=np.int64))
    uvs = torch.as_tensor(np.asarray(result.uvs), dtype=torch.float32)
    uv_faces = torch.as_tensor(np.asarray(result.uv_faces, dtype=np.int64))

    # 1. The mesh in UV space (which face and where in it each texel lies: a property of the layout, cached).
    rast = uv_rasterization(uvs, uv_faces, side)
    texels = (rast[0, ..., 3].reshape(-1) > 0).nonzero().squeeze(1)  # covered texels, flat row-major indices
    per_uv = lambda attr: torch.zeros(len(uvs), attr.shape[-1]).index_copy_(  # noqa: E731
        0, uv_faces.reshape(-1), attr[faces.reshape(-1)])
    normals_v = render.vertex_normals(verts[None], faces)[0]
    # Position and normal at the covered texels only (row-major, as covered's True entries), one pass.
    at_texels = render.interpolate(per_uv(torch.cat([verts, normals_v], -1))[None], rast, uv_faces, texels)
    texel_n = torch.nn.functional.normalize(at_texels[:, 3:], dim=-1)

    cams = result.cameras.to(dtype=torch.float64)
    lighting = np.asarray(result.lighting, dtype=np.float32)
    # Per texel, computed once for all views: position and normal (float32 numpy: the per-view work is
    # a few passes over these arrays) and the SH basis of the normal (the shading of view i is then
    # basis @ sh_i, 9 multiply-adds a texel).
    pos_t = at_texels[:, :3].numpy()  # (T, 3)
    nrm_t = texel_n.numpy()
    basis_t = sh_basis(texel_n).numpy()
    R, t = cams.R.numpy(), cams.t.numpy()
    chosen = spread_views(result, max_views)
    centres = -np.einsum("nji,nj->ni", R, t)[chosen].astype(np.float32)  # camera centres: C = -R^T t
    # Facing every chosen camera, for all views at once (three small matrix products instead of passes
    # over (T, 3) arrays per view): cos = -n . (P - C) / |P - C| = (n . C - n . P) / |P - C|, the cosine
    # between the normal and the reversed view ray, with |P - C|^2 = |P|^2 - 2 P . C + |C|^2.
    dist = np.sqrt(np.maximum(np.einsum("tk,tk->t", pos_t, pos_t)[:, None] - 2.0 * (pos_t @ centres.T)
                              + np.einsum("vk,vk->v", centres, centres)[None], 1e-24))
    cos_all = np.ascontiguousarray(((nrm_t @ centres.T - np.einsum("tk,tk->t", nrm_t, pos_t)[:, None]) / dist).T)
    del dist  # cos_all: (views, T), a view's row contiguous
    # Homogeneous positions: a view's pixels come from one (4, 3) product, K [R | t] transposed, applied to
    # the facing texels gathered with np.take (measured 5 ms a view against 14 ms for fancy indexing, a
    # product and two more passes).
    pos_h = np.concatenate([pos_t, np.ones((len(pos_t), 1), np.float32)], 1)
    K = np.zeros((len(cams), 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = (cams.fx.numpy(), cams.fy.numpy(), cams.cx.numpy(),
                                                                  cams.cy.numpy(), 1.0)
    to_pixels = np.einsum("nij,njk->nki", K, np.concatenate([R, t[:, :, None]], 2)).astype(np.float32)  # (N, 4, 3)

    def contribution(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Chosen view ``k``'s texels seen (indices), their weighted de-shaded colours and weights."""
        i = chosen[k]
        obs = views[i]
        W, H = int(cams.width[i]), int(cams.height[i])
        idx = np.flatnonzero(cos_all[k] > 0.05)  # facing the camera: drops about half the texels
        p = np.take(pos_h, idx, axis=0) @ to_pixels[i]  # (x z, y z, z): pixels times depth
        z = p[:, 2]
        front = z > 0
        zs = np.where(front, z, 1.0)
        x, y = p[:, 0] / zs, p[:, 1] / zs
        inside = front & (x >= 0) & (x < W) & (y >= 0) & (y < H)
        idx, x, y, zi = idx[inside], x[inside], y[inside], z[inside]
        if not len(idx):
            return None
        # Visibility: the nearest surface along the texel's pixel, from the view's small rasterization
        # (long side SMALL_SIDE; the report's thumbnail of the view draws the same one).
        surface = surfaces(i)
        dw, dh = surface.size
        depth = np.zeros(dw * dh, np.float32)
        hit = np.zeros(dw * dh, bool)
        pixels = surface.pixels.numpy()
        depth[pixels] = render.interpolate(surface.clip[..., 3:4], surface.rast, surfaces.mesh.faces,
                                           surface.pixels)[:, 0].numpy()  # clip w: the camera-frame depth
        hit[pixels] = True
        at = (np.clip((y * (dh / H)).astype(np.int64), 0, dh - 1) * dw
              + np.clip((x * (dw / W)).astype(np.int64), 0, dw - 1))  # the depth pixel of each texel
        ok = ~hit[at] | (zi <= depth[at] + DEPTH_TOLERANCE)
        ok &= _sample(obs.detection.mask_u8, x, y) >= 128  # mask >= 0.5, read off the stored uint8 mask
        if not ok.any():
            return None
        idx, x, y = idx[ok], x[ok], y[ok]
        colour = _sample(obs.image.pixels, x, y).astype(np.float32) * np.float32(1.0 / 255.0)
        shading = np.take(basis_t, idx, axis=0) @ lighting[min(i, len(lighting) - 1)]
        w = np.take(cos_all[k], idx) ** 2
        return idx, w[:, None] * colour / np.maximum(shading, 0.05), w

    # Views on a pool of threads (torch, cv2 and numpy release the GIL); summed in view order, so the
    # texture does not depend on which thread finished first.
    acc = np.zeros((len(pos_t), 3), np.float32)
    wsum = np.zeros(len(pos_t), np.float32)
    for part in parallel_imap(contribution, range(len(chosen))):
        if part is not None:
            idx, colour_w, w = part
            acc[idx] += colour_w
            wsum[idx] += w

    seen_texels = wsum > 1e-6
    if not seen_texels.any():  # no view saw anything: keep the fitted albedo
        return np.asarray(result.texture, np.float32)
    where = texels.numpy()[seen_texels]
    image = np.zeros((side * side, 3), np.float32)
    image[where] = acc[seen_texels] / wsum[seen_texels][:, None]
    seen = np.zeros(side * side, bool)
    seen[where] = True
    return np.clip(_pull_push(image.reshape(side, side, 3), seen.reshape(side, side)), 0.0, 1.0)


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at continuous pixel coordinates (corner origin), ``(P,)`` or ``(P, C)``.

    cv2.remap takes pixel-centre coordinates (x - 0.5) and maps under 32767 rows: points go in rows of 1024."""
    n = len(x)
    rows = -(-n // 1024)
    grid = np.zeros((2, rows * 1024), np.float32)
    grid[0, :n], grid[1, :n] = x - 0.5, y - 0.5
    out = cv2.remap(image, grid[0].reshape(rows, 1024), grid[1].reshape(rows, 1024), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * 1024, *image.shape[2:])[:n]


def _pull_push(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the texels where ``known`` is False from the known ones: average down a pyramid (pull),
    then fill each level's holes from the coarser level (push).

    A coarse texel is the mean of the known texels of its 2x2 block: OpenCV's area resize of the masked
    image over that of the mask (the two means' ratio; a quarter of numpy's block sums' time)."""
    if known.all() or min(known.shape) <= 1:
        return image if known.all() else np.broadcast_to(image[known].mean(0), image.shape).copy()
    h, w = known.shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    k = known.astype(np.float32)
    im = (image * k[..., None]).astype(np.float32, copy=False)
    if (h, w) != (2 * h2, 2 * w2):  # odd sides: a row or column of unknown texels
        k = cv2.copyMakeBorder(k, 0, 2 * h2 - h, 0, 2 * w2 - w, cv2.BORDER_CONSTANT, value=0)
        im = cv2.copyMakeBorder(im, 0, 2 * h2 - h, 0, 2 * w2 - w, cv2.BORDER_CONSTANT, value=0)
    ks = cv2.resize(k, (w2, h2), interpolation=cv2.INTER_AREA)
    ims = cv2.resize(im, (w2, h2), interpolation=cv2.INTER_AREA)
    coarse_known = ks > 0
    coarse = np.zeros_like(ims)
    coarse[coarse_known] = ims[coarse_known] / ks[coarse_known][:, None]
    coarse = _pull_push(coarse, coarse_known)
    up = cv2.resize(coarse, (2 * w2, 2 * h2), interpolation=cv2.INTER_LINEAR)[:h, :w]
    return np.where(known[..., None], image, up)
