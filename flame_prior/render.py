"""A small differentiable triangle rasterizer in pure torch (CPU and CUDA), nvdiffrast-style.

Five composable primitives; the caller chains them (camera math and shading stay with the caller)::

    pos = pinhole_to_clip(points_cam, fx, fy, cx, cy, W, H)      # (B, V, 4)
    rast = rasterize(pos, tri, (H, W))                            # (B, H, W, 4)
    uv, _ = interpolate(uvs, rast, uv_faces)                      # (B, H, W, 2)
    color = texture(tex, uv) * mask                               # (B, H, W, C)
    color = antialias(color, rast, pos, tri, topo)                # silhouette gradients
    cov = coverage(rast, pos, tri, topo)                          # (B, H, W, 1) soft head mask

Conventions (one set, used by every function; see also ``docs/conventions.md`` and
:mod:`flame_prior.geometry`):

* **Camera frame**: OpenCV (+X right, +Y down, +Z forward), metres.
* **Pixels**: continuous coordinates ``(x, y)`` with the origin at the top-left *corner* of the
  image, y down; pixel (column i, row j) is sampled at its centre ``(i + 0.5, j + 0.5)``.
  Images are channel-last ``(B, H, W, C)`` and row 0 is the TOP row (no flips anywhere).
* **Clip space** (``pos``, ``(B, V, 4)`` = ``(x, y, z, w)``), made by :func:`pinhole_to_clip`:
  ``w = Z`` (camera depth) and NDC ``x/w = 2u/W - 1``, ``y/w = 2v/H - 1`` where ``(u, v)`` are
  the continuous pixel coordinates above, so NDC -1 is the left / TOP image border and +1 the
  right / bottom border. ``z/w`` is OpenGL-like depth: -1 at ``near``, +1 at ``far``, growing
  with distance (smaller = nearer). A vertex is inside the view volume when ``w > 0`` and
  ``-w <= z <= w``.
* **Triangles** ``tri`` ``(F, 3)`` int32/int64. A triangle is *front-facing* when its vertices
  appear counter-clockwise in the image as displayed (rows top-down), which for a camera in front
  of it means its right-hand normal ``(v1 - v0) x (v2 - v0)`` points towards the camera (FLAME's
  outward orientation). Both sides render by default (nearest wins); ``cull_backfaces=True``
  drops the back-facing ones. Triangles with any vertex outside the near/far range (``w <= 0``
  or ``z`` outside ``[-w, w]``, i.e. behind the camera or nearer than ``near``) are dropped
  whole (no clipping). Pixel centres exactly on an edge count as inside.
* **rast channels** (as nvdiffrast): ``(u, v, z/w, triangle_id + 1)``; the attribute at a pixel
  is ``u * a[v0] + v * a[v1] + (1 - u - v) * a[v2]`` with perspective-correct ``(u, v)``;
  ``triangle_id + 1`` is stored as a float (exact up to 2**24 faces), ``0`` = background, where
  all four channels are 0.
* **Texture coordinates**: ``uv`` in ``[0, 1]``, ``(0, 0)`` at the BOTTOM-left of the texture
  image (OBJ convention) while texture images themselves have rows top-down.

Where gradients flow (as in nvdiffrast):

* Visibility (which triangle wins a pixel, its id, the coverage test) has NO gradient.
* ``rast[..., :3]`` (u, v, z/w) are recomputed from ``pos`` for each covered pixel, so gradients
  flow from ``rast`` to ``pos`` (and from there to the camera and the vertices).
  ``interpolate`` passes gradients to ``attr`` and, through ``(u, v)``, to ``pos``; ``texture``
  to the texture and to ``uv``. None of these can move a silhouette: the set of covered pixels
  is piecewise constant.
* Silhouette / occlusion gradients come only from :func:`antialias` (and :func:`coverage`, which
  is ``antialias`` of the binary mask): for each pair of adjacent pixels whose triangles differ
  and where a *silhouette edge* of the nearer triangle crosses the segment between the two pixel
  centres, the pixel partly covered by that triangle gets blended by the covered fraction, which
  is a differentiable function of the edge's two vertices. A silhouette edge is a mesh boundary
  edge or an edge whose two faces face opposite ways in the view (:func:`edge_topology`
  precomputes the neighbours once for a fixed topology such as FLAME's). Each edge is handled by
  horizontal pixel pairs when it is steeper than 45 degrees, else by vertical pairs.
* When triangles shrink below a pixel, the triangle sampled next to a silhouette is often not the
  one owning the silhouette edge, and edge gradients get sparse: render at 2x and average-pool.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F_
from torch import Tensor

from flame_prior.geometry import check_shape

__all__ = [
    "pinhole_to_clip",
    "rasterize",
    "interpolate",
    "texture",
    "vertex_normals",
    "edge_topology",
    "antialias",
    "coverage",
]

_SENTINEL = torch.iinfo(torch.int64).max
_DEPTH_LEVELS = 2**31 - 2  # quantised depth occupies the upper 31 bits of the visibility key
_CHUNK = 1 << 22  # candidate (triangle, pixel) pairs per rasterizer chunk: bounds memory


def pinhole_to_clip(points_cam: Tensor, fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor, width: int, height: int,
                    near: float = 0.01, far: float = 10.0) -> Tensor:
    """OpenCV camera-frame points to the clip space of the module docstring.

    Args:
        points_cam: ``(B, V, 3)`` points in each view's camera frame (OpenCV axes), metres.
        fx, fy, cx, cy: ``(B,)`` intrinsics in pixels (principal point in corner-origin pixels).
        width, height: image size in pixels (the size later given to :func:`rasterize`).
        near, far: depth range in metres mapped to ``z/w`` = -1 and +1.

    Returns:
        ``(B, V, 4)`` ``pos``: ``x = (2 fx / W) X + (2 cx / W - 1) Z``,
        ``y = (2 fy / H) Y + (2 cy / H - 1) Z``, ``z = ((far + near) Z - 2 far near) / (far - near)``,
        ``w = Z``. Differentiable w.r.t. every tensor input.
    """
    check_shape(points_cam, ["B", "V", 3], "points_cam")
    X, Y, Z = points_cam.unbind(-1)
    fx, fy, cx, cy = (t.reshape(-1, 1) for t in (fx, fy, cx, cy))
    x = (2.0 * fx / width) * X + (2.0 * cx / width - 1.0) * Z
    y = (2.0 * fy / height) * Y + (2.0 * cy / height - 1.0) * Z
    z = ((far + near) * Z - 2.0 * far * near) / (far - near)
    return torch.stack([x, y, z, Z], dim=-1)


def _screen(pos: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Continuous pixel coordinates ``(x, y)`` of clip-space points (w must be nonzero)."""
    return (pos[..., 0] / pos[..., 3] + 1.0) * (0.5 * W), (pos[..., 1] / pos[..., 3] + 1.0) * (0.5 * H)


def _check_inputs(pos: Tensor, tri: Tensor) -> None:
    check_shape(pos, ["B", "V", 4], "pos")
    check_shape(tri, ["F", 3], "tri")
    if tri.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"tri: expected int32 or int64, got {tri.dtype}")
    if pos.device != tri.device:
        raise ValueError(f"pos and tri on different devices: {pos.device}, {tri.device}")


@torch.no_grad()
def _visibility(pos: Tensor, tri: Tensor, H: int, W: int, cull_backfaces: bool) -> Tensor:
    """Winning face per pixel, ``(B*H*W,)`` int64, -1 = background. No gradient.

    Per-triangle pixel-centre bounding boxes; every (triangle, candidate pixel) pair is enumerated
    in chunks, tested against the three edge functions, and the nearest (quantised z/w, then lowest
    face id) wins through ``scatter_reduce(amin)`` on packed int64 keys.
    """
    B, Fn = pos.shape[0], tri.shape[0]
    v = pos[:, tri]  # (B, F, 3, 4)
    w, z = v[..., 3], v[..., 2]
    ok = ((w > 0) & (z >= -w) & (z <= w)).all(-1)
    w = torch.where(ok[..., None], w, torch.ones_like(w))
    sx, sy = _screen(torch.cat([v[..., :3], w[..., None]], -1), H, W)  # (B, F, 3)
    zn = z / w
    # Pixel-centre bounding box: columns i with xmin <= i + 0.5 <= xmax.
    x0 = torch.ceil(sx.amin(-1) - 0.5).clamp(min=0)
    x1 = torch.floor(sx.amax(-1) - 0.5).clamp(max=W - 1)
    y0 = torch.ceil(sy.amin(-1) - 0.5).clamp(min=0)
    y1 = torch.floor(sy.amax(-1) - 0.5).clamp(max=H - 1)
    ok &= (x1 >= x0) & (y1 >= y0)
    # Edge k is opposite vertex k: E_k(p) = (xb - xa)(py - ya) - (yb - ya)(px - xa), a = k+1, b = k+2.
    xa, ya, xb, yb = sx.roll(-1, -1), sy.roll(-1, -1), sx.roll(-2, -1), sy.roll(-2, -1)
    A, Bc = -(yb - ya), xb - xa
    D = (A * sx + Bc * sy - A * xa - Bc * ya)[..., 0]  # E_0(v0): twice the signed area, y down
    ok &= D != 0
    if cull_backfaces:
        ok &= D < 0  # counter-clockwise as displayed = front-facing
    sel = ok.reshape(-1).nonzero().squeeze(1)  # flat (b * F + f)
    if sel.numel() == 0:
        return torch.full((B * H * W,), -1, dtype=torch.long, device=pos.device)
    pick = lambda t: t.reshape(B * Fn, *t.shape[2:])[sel]  # noqa: E731
    x0, y0, D = pick(x0), pick(y0), pick(D)
    bw = (pick(x1) - x0 + 1).long()
    bh = (pick(y1) - y0 + 1).long()
    A, Bc, xa, ya, zn = pick(A) / D[:, None], pick(Bc) / D[:, None], pick(xa), pick(ya), pick(zn)
    # Barycentric k at the bbox origin pixel centre (x0 + .5, y0 + .5), then steps per dx, dy.
    E0 = A * (x0[:, None] + 0.5 - xa) + Bc * (y0[:, None] + 0.5 - ya)
    coef = torch.cat([A, Bc, E0, (A * zn).sum(-1, keepdim=True), (Bc * zn).sum(-1, keepdim=True),
                      (E0 * zn).sum(-1, keepdim=True)], -1)  # (S, 12): bary steps/origin, depth steps/origin
    b_idx = sel // Fn
    base = b_idx * (H * W) + y0.long() * W + x0.long()
    face = sel - b_idx * Fn
    count = bw * bh
    # Big triangles first would not help; split the face list so each chunk has <= _CHUNK candidates.
    cum = count.cumsum(0)
    buf = torch.full((B * H * W,), _SENTINEL, dtype=torch.long, device=pos.device)
    start = 0
    total = int(cum[-1])
    while start < count.numel():
        done = int(cum[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(cum, done + _CHUNK, right=True))
        stop = max(stop, start + 1)
        _raster_chunk(buf, coef[start:stop], bw[start:stop], count[start:stop], base[start:stop],
                      face[start:stop], W)
        start = stop
    del total
    return torch.where(buf == _SENTINEL, -1, buf & 0xFFFFFFFF)


def _raster_chunk(buf: Tensor, coef: Tensor, bw: Tensor, count: Tensor, base: Tensor, face: Tensor, W: int) -> None:
    n = int(count.sum())
    t = torch.repeat_interleave(torch.arange(count.numel(), device=buf.device), count, output_size=n)
    first = count.cumsum(0) - count
    off = torch.arange(n, device=buf.device) - first[t]
    bwt = bw[t]
    dy = torch.div(off, bwt, rounding_mode="floor")
    dx = off - dy * bwt
    c = coef[t]
    fx, fy = dx.to(c.dtype), dy.to(c.dtype)
    bary = c[:, 0:3] * fx[:, None] + c[:, 3:6] * fy[:, None] + c[:, 6:9]
    inside = (bary >= 0).all(-1)
    idx = inside.nonzero().squeeze(1)
    depth = (c[idx, 9] * fx[idx] + c[idx, 10] * fy[idx] + c[idx, 11])
    q = ((depth + 1.0) * (0.5 * _DEPTH_LEVELS)).clamp(0, _DEPTH_LEVELS).long()
    key = (q << 32) | face[t[idx]]
    pix = base[t[idx]] + dy[idx] * W + dx[idx]
    buf.scatter_reduce_(0, pix, key, reduce="amin")


def _perspective_bary(vert: Tensor, xn: Tensor, yn: Tensor) -> Tensor:
    """Perspective-correct barycentrics ``(M, 3)`` of NDC points ``(xn, yn)`` in clip triangles ``(M, 3, 4)``.

    The 3D point ``sum_k b_k V_k`` projects to ``(xn, yn)`` iff ``b`` is orthogonal to
    ``d_x = x_k - xn w_k`` and ``d_y = y_k - yn w_k``, so ``b ~ d_x (cross) d_y``, normalised to sum 1.
    """
    w = vert[..., 3]
    dx = vert[..., 0] - xn[:, None] * w
    dy = vert[..., 1] - yn[:, None] * w
    b = torch.cross(dx, dy, dim=-1)
    return b / b.sum(-1, keepdim=True)


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int], cull_backfaces: bool = False) -> Tensor:
    """Rasterize triangles: per-pixel triangle id and differentiable perspective-correct barycentrics.

    Args:
        pos: ``(B, V, 4)`` clip-space vertices (one batch entry per view), float32/float64.
        tri: ``(F, 3)`` int32/int64 vertex indices, same device.
        resolution: ``(H, W)`` in pixels.
        cull_backfaces: drop back-facing triangles (see module docstring); default renders both sides.

    Returns:
        ``rast`` ``(B, H, W, 4)``, dtype of ``pos``: ``(u, v, z/w, triangle_id + 1)``, all 0 on
        background. ``u, v, z/w`` are differentiable w.r.t. ``pos``; the id is not.
    """
    _check_inputs(pos, tri)
    H, W = int(resolution[0]), int(resolution[1])
    B, V = pos.shape[:2]
    tri = tri.long()
    fid = _visibility(pos.detach(), tri, H, W, cull_backfaces)
    pix = (fid >= 0).nonzero().squeeze(1)
    f = fid[pix]
    b = torch.div(pix, H * W, rounding_mode="floor")
    rem = pix - b * (H * W)
    row = torch.div(rem, W, rounding_mode="floor")
    col = rem - row * W
    vert = pos.reshape(B * V, 4)[(tri[f] + (b * V)[:, None]).reshape(-1)].reshape(-1, 3, 4)
    xn = (2.0 * col.to(pos.dtype) + 1.0) / W - 1.0
    yn = (2.0 * row.to(pos.dtype) + 1.0) / H - 1.0
    bary = _perspective_bary(vert, xn, yn)
    zw = (bary * vert[..., 2]).sum(-1) / (bary * vert[..., 3]).sum(-1)
    vals = torch.stack([bary[:, 0], bary[:, 1], zw, (f + 1).to(pos.dtype)], -1)
    out = torch.zeros(B * H * W, 4, dtype=pos.dtype, device=pos.device).index_copy(0, pix, vals)
    return out.reshape(B, H, W, 4)


def _covered(rast: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flat indices of covered pixels, their batch index and face id (int64)."""
    B, H, W, _ = rast.shape
    ids = rast[..., 3].detach().reshape(-1)
    pix = (ids > 0).nonzero().squeeze(1)
    return pix, torch.div(pix, H * W, rounding_mode="floor"), ids[pix].long() - 1


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
    """Interpolate per-vertex attributes over the image with the barycentrics in ``rast``.

    Args:
        attr: ``(B, V, C)`` or ``(V, C)`` (shared by all views) attributes.
        rast: ``(B, H, W, 4)`` from :func:`rasterize`.
        tri: ``(F, 3)`` int indices into ``attr``; may differ from the rasterized ``tri`` as long
            as it has the same F (e.g. FLAME's ``uv_faces`` with ``attr`` = the UV table).

    Returns:
        ``(B, H, W, C)``, 0 on background. Gradients flow to ``attr`` and to ``rast[..., :2]``
        (hence to the clip positions).
    """
    check_shape(rast, ["B", "H", "W", 4], "rast")
    check_shape(tri, ["F", 3], "tri")
    B, H, W, _ = rast.shape
    shared = attr.dim() == 2
    if not shared:
        check_shape(attr, [B, "V", "C"], "attr")
    V, C = attr.shape[-2:]
    pix, b, f = _covered(rast)
    vi = tri.long()[f]  # (M, 3)
    if not shared:
        vi = vi + (b * V)[:, None]
    a = attr.reshape(-1, C)[vi.reshape(-1)].reshape(-1, 3, C)
    uv = rast.reshape(-1, 4)[pix, :2]
    u, v = uv[:, 0:1], uv[:, 1:2]
    vals = a[:, 2] + u * (a[:, 0] - a[:, 2]) + v * (a[:, 1] - a[:, 2])
    dtype = torch.promote_types(attr.dtype, rast.dtype)
    out = torch.zeros(B * H * W, C, dtype=dtype, device=rast.device).index_copy(0, pix, vals.to(dtype))
    return out.reshape(B, H, W, C)


def texture(tex: Tensor, uv: Tensor, filter_mode: Literal["bilinear", "nearest"] = "bilinear",
            boundary_mode: Literal["border", "zeros", "reflection"] = "border") -> Tensor:
    """Sample a texture at per-pixel texture coordinates (``torch.nn.functional.grid_sample``).

    Args:
        tex: ``(B, Ht, Wt, C)`` or ``(Ht, Wt, C)`` (shared), rows top-down.
        uv: ``(B, H, W, 2)`` texture coordinates, ``(0, 0)`` = bottom-left corner of the texture
            image, ``(1, 1)`` = top-right corner (OBJ); texel centres at ``(i + .5) / Wt``.
        filter_mode: ``"bilinear"`` (default) or ``"nearest"``.
        boundary_mode: outside ``[0, 1]``: ``"border"`` clamps (default), ``"zeros"``, ``"reflection"``.

    Returns:
        ``(B, H, W, C)``. Gradients flow to ``tex`` and (bilinear) to ``uv``. Background pixels
        (uv = 0) sample the bottom-left texel: mask them with ``rast[..., 3:] > 0``.
    """
    check_shape(uv, ["B", "H", "W", 2], "uv")
    B = uv.shape[0]
    if tex.dim() == 3:
        tex = tex[None].expand(B, -1, -1, -1)
    check_shape(tex, [B, "Ht", "Wt", "C"], "tex")
    grid = torch.stack([2.0 * uv[..., 0] - 1.0, 1.0 - 2.0 * uv[..., 1]], -1).to(tex.dtype)
    out = F_.grid_sample(tex.permute(0, 3, 1, 2), grid, mode=filter_mode, padding_mode=boundary_mode,
                         align_corners=False)
    return out.permute(0, 2, 3, 1)


def vertex_normals(vertices: Tensor, faces: Tensor, eps: float = 1e-12) -> Tensor:
    """Area-weighted unit vertex normals ``(B, V, 3)`` of ``vertices (B, V, 3)``, ``faces (F, 3)``.

    Each face adds its right-hand normal ``(v1 - v0) x (v2 - v0)`` (length = twice its area) to its
    three vertices; sums are normalised (vertices without faces get 0). Differentiable.
    """
    check_shape(vertices, ["B", "V", 3], "vertices")
    B, V, _ = vertices.shape
    faces = faces.long()
    v = vertices[:, faces]  # (B, F, 3, 3)
    n = torch.cross(v[:, :, 1] - v[:, :, 0], v[:, :, 2] - v[:, :, 0], dim=-1)
    acc = torch.zeros_like(vertices).index_add(1, faces.reshape(-1), n.repeat_interleave(3, dim=1))
    return acc / acc.norm(dim=-1, keepdim=True).clamp_min(eps)


def edge_topology(tri: Tensor) -> Tensor:
    """Neighbour face across each edge, ``(F, 3)`` int64; -1 for boundary or non-manifold edges.

    Edge k of face f is the one opposite vertex k: ``(tri[f, k+1], tri[f, k+2])``. Depends only on
    the topology: compute once (e.g. for FLAME's faces) and pass to :func:`antialias`.
    """
    check_shape(tri, ["F", 3], "tri")
    tri = tri.long()
    Fn = tri.shape[0]
    a, b = tri.roll(-1, 1).reshape(-1), tri.roll(-2, 1).reshape(-1)
    n = int(tri.max()) + 1 if Fn else 1
    key = torch.minimum(a, b) * n + torch.maximum(a, b)
    _, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    first = counts.cumsum(0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=tri.device) - first[inv[order]]
    partner = order[(first[inv] + 1 - rank).clamp(0, order.numel() - 1)]
    nb = torch.where(counts[inv] == 2, torch.div(partner, 3, rounding_mode="floor"), -1)
    return nb.reshape(Fn, 3)


def antialias(color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, topology: Tensor | None = None) -> Tensor:
    """Analytic antialiasing of silhouette and occlusion edges; the source of silhouette gradients.

    For every pair of horizontally (vertically) adjacent pixels with different triangle ids, the
    nearer one's triangle (the foreground one against background) is the occluder. If one of its
    silhouette edges (module docstring) steeper (flatter) than 45 degrees crosses the segment
    between the two pixel centres at fraction ``t`` (from the occluder's pixel), the pixel the edge
    lies in is blended: ``t >= 1/2``: the far pixel gets ``(t - 1/2)`` of the occluder's colour;
    ``t < 1/2``: the occluder's pixel gets ``(1/2 - t)`` of the far pixel's colour.

    Args:
        color: ``(B, H, W, C)`` shaded image (background already composited).
        rast: ``(B, H, W, 4)`` from ``rasterize(pos, tri, (H, W))``.
        pos: ``(B, V, 4)`` the same clip-space positions.
        tri: ``(F, 3)`` the same triangles.
        topology: ``edge_topology(tri)``, computed here when None.

    Returns:
        ``(B, H, W, C)``. Gradients flow to ``color`` and, through the crossing positions ``t``,
        to the positions of the silhouette edges' vertices in ``pos``. ``rast`` gets none.
    """
    check_shape(color, ["B", "H", "W", "C"], "color")
    _check_inputs(pos, tri)
    B, H, W, C = color.shape
    check_shape(rast, [B, H, W, 4], "rast")
    tri = tri.long()
    nb = edge_topology(tri) if topology is None else topology.long()
    with torch.no_grad():
        v = pos.detach()[:, tri]  # (B, F, 3, 4)
        w = torch.where(v[..., 3] > 0, v[..., 3], torch.ones_like(v[..., 3]))
        sx, sy = _screen(torch.cat([v[..., :3], w[..., None]], -1), H, W)
        ex, ey = sx.roll(-2, -1) - sx.roll(-1, -1), sy.roll(-2, -1) - sy.roll(-1, -1)  # edge k direction
        D = (ex[..., 0] * (sy[..., 0] - sy[..., 1]) - ey[..., 0] * (sx[..., 0] - sx[..., 1]))
        front = D < 0
        sil = (nb < 0) | (front[:, nb.clamp(min=0)] != front[..., None])  # (B, F, 3)
        steep = ey.abs() >= ex.abs()
        ids = rast[..., 3].detach().long().reshape(-1)
        zw = rast[..., 2].detach().reshape(-1)
        sign = torch.where(front, -1.0, 1.0).to(pos.dtype)  # makes E_k >= 0 inside
    flat = color.reshape(-1, C)
    pos_flat = pos.reshape(-1, 4)
    V = pos.shape[1]
    targets, deltas = [], []
    for horizontal in (True, False):
        with torch.no_grad():
            grid = torch.arange(B * H * W, device=pos.device).reshape(B, H, W)
            pa = (grid[:, :, :-1] if horizontal else grid[:, :-1, :]).reshape(-1)
            pb = (grid[:, :, 1:] if horizontal else grid[:, 1:, :]).reshape(-1)
            ia, ib = ids[pa], ids[pb]
            keep = ia != ib
            pa, pb, ia, ib = pa[keep], pb[keep], ia[keep], ib[keep]
            occ_b = (ia == 0) | ((ib != 0) & (zw[pb] < zw[pa]))
            po, pn = torch.where(occ_b, pb, pa), torch.where(occ_b, pa, pb)
            f = torch.where(occ_b, ib, ia) - 1
            bi = torch.div(po, H * W, rounding_mode="floor")
            flags = (sil & (steep if horizontal else ~steep))[bi, f]  # (P, 3)
            keep = flags.any(-1)
            po, pn, f, bi, flags = po[keep], pn[keep], f[keep], bi[keep], flags[keep]
            # Edge function of edge k at the occluder's pixel centre, sign-normalised (>= 0 inside),
            # and its change over one step towards pn (+-1 pixel along the axis).
            rem = po - bi * (H * W)
            px = (rem % W).to(pos.dtype) + 0.5
            py = torch.div(rem, W, rounding_mode="floor").to(pos.dtype) + 0.5
            s = sign[bi, f][:, None]
            xa, ya = sx.roll(-1, -1)[bi, f], sy.roll(-1, -1)[bi, f]
            exf, eyf = ex[bi, f], ey[bi, f]
            e_o = s * (exf * (py[:, None] - ya) - eyf * (px[:, None] - xa))
            step = torch.where(pn > po, 1.0, -1.0).to(pos.dtype)[:, None]
            de = s * step * (-eyf if horizontal else exf)
            t = e_o / -de
            t = torch.where(flags & (e_o >= 0) & (e_o + de < 0), t, torch.full_like(t, float("inf")))
            t, k = t.min(-1)
            keep = torch.isfinite(t)
            po, pn, f, bi, k, step = po[keep], pn[keep], f[keep], bi[keep], k[keep], step[keep, 0]
            rem = po - bi * (H * W)
            px = (rem % W).to(pos.dtype) + 0.5
            py = torch.div(rem, W, rounding_mode="floor").to(pos.dtype) + 0.5
            tri_f = tri[f]
            va = tri_f.gather(1, ((k + 1) % 3)[:, None])[:, 0] + bi * V
            vb = tri_f.gather(1, ((k + 2) % 3)[:, None])[:, 0] + bi * V
        # Differentiable crossing: the edge line (a, b) meets the pixel row/column of po at coordinate c;
        # t = (c - p_o) / step along the axis.
        ax, ay = _screen(pos_flat[va], H, W)
        bx, by = _screen(pos_flat[vb], H, W)
        if horizontal:
            c = ax + (bx - ax) * (py - ay) / (by - ay)
            t = (c - px) * step
        else:
            c = ay + (by - ay) * (px - ax) / (bx - ax)
            t = (c - py) * step
        far = (t >= 0.5).detach()
        weight = torch.where(far, t - 0.5, 0.5 - t)[:, None]
        c_o, c_n = flat[po], flat[pn]
        deltas.append(weight * torch.where(far[:, None], c_o - c_n, c_n - c_o))
        targets.append(torch.where(far, pn, po))
    out = flat.index_add(0, torch.cat(targets), torch.cat(deltas).to(flat.dtype))
    return out.reshape(B, H, W, C)


def coverage(rast: Tensor, pos: Tensor, tri: Tensor, topology: Tensor | None = None) -> Tensor:
    """Antialiased foreground mask ``(B, H, W, 1)`` in [0, 1] whose gradient moves the outline.

    ``antialias`` of the binary mask ``rast[..., 3] > 0``: gradients flow only to the vertices of
    silhouette edges (see :func:`antialias` for arguments), so a mask loss can grow, shrink and
    shift the rendered outline.
    """
    mask = (rast[..., 3:4] > 0).to(pos.dtype)
    return antialias(mask, rast, pos, tri, topology)
