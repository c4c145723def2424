"""A small differentiable triangle rasterizer in pure torch (CPU and CUDA), nvdiffrast-style.

A few composable primitives; the caller chains them (camera math and shading stay with the caller)::

    pos = pinhole_to_clip(points_cam, fx, fy, cx, cy, W, H)      # (B, V, 4)
    rast = rasterize(pos, tri, (H, W))                            # (B, H, W, 4)
    uv = interpolate(uvs, rast, uv_faces)                         # (B, H, W, 2)
    mask = rast[..., 3:] > 0
    color = torch.where(mask, texture(tex, uv), background)       # (B, H, W, C)
    topo = edge_topology(tri)                                     # once per topology (FLAME: fixed)
    color = antialias(color, rast, pos, tri, topo)                # silhouette gradients
    cov = coverage(rast, pos, tri, topo)                          # (B, H, W, 1) antialiased mask

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
  whole (no clipping). Pixel centres on an edge (within 1e-4 px) count as inside; the nearest
  z/w wins, ties go to the lower face id.
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
    "texture_adjoint",
    "vertex_normals",
    "edge_topology",
    "antialias",
    "coverage",
]

_SENTINEL = torch.iinfo(torch.int64).max
_DEPTH_LEVELS = 2**31 - 2  # quantised depth occupies the upper 31 bits of the visibility key
_DEPTH_TOP = 2**31 - 256  # the clamp's top level: float32 holds it exactly (2**31 - 2 rounds up to 2**31 there,
#                           which overflows into the key's sign bit and beats every nearer face)
_CHUNK = 1 << 22  # rows or (face, pixel) pairs per rasterizer batch: bounds memory
_TOL = 1e-4  # pixel centres this close (in x, pixels) outside an edge count as inside: no cracks


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


def _gather_faces(x: Tensor, tri: Tensor) -> Tensor:
    """Per-face vertex data ``(B, F, 3, C)`` from per-vertex ``x (B, V, C)`` and ``tri (F, 3)`` int64."""
    return x.index_select(1, tri.reshape(-1)).reshape(x.shape[0], tri.shape[0], 3, x.shape[-1])


def _check_inputs(pos: Tensor, tri: Tensor) -> None:
    check_shape(pos, ["B", "V", 4], "pos")
    check_shape(tri, ["F", 3], "tri")
    if tri.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"tri: expected int32 or int64, got {tri.dtype}")
    if pos.device != tri.device:
        raise ValueError(f"pos and tri on different devices: {pos.device}, {tri.device}")


def _face_table(v: Tensor) -> Tensor:
    """Per-face linear forms ``(..., 12)`` (differentiable) of the faces' clip vertices ``v (..., 3, 4)``
    (rows of faces that fail :func:`_clip_ok` are finite but meaningless).

    With ``c_j = (x_j, y_j, w_j)`` the homogeneous 2D clip vertices and ``p = (xn, yn, 1)`` an NDC
    point, ``bh = M^-1 p`` (``M = [c_0 c_1 c_2]``, rows ``(c_{k+1} x c_{k+2}) / det``) are the
    perspective-correct barycentrics divided by the point's ``w``; they are linear in ``p``, so
    ``bh_k = a_k dx + c_k dy + [k == 0] / w_0`` with ``(dx, dy) = p - ndc(v_0)`` (no cancellation
    at the reference vertex), ``u, v = bh_0 / sum(bh), bh_1 / sum(bh)``; ``z/w = sum_k z_k bh_k``.
    Columns: ``xn0, yn0, a0, a1, a2, c0, c1, c2, 1/w0, zw0, d(z/w)/dxn, d(z/w)/dyn``.
    """
    x, y, z, w = v.unbind(-1)
    ok = _clip_ok(v.detach())
    x1, y1, w1, x2, y2, w2 = x.roll(-1, -1), y.roll(-1, -1), w.roll(-1, -1), x.roll(-2, -1), y.roll(-2, -1), w.roll(-2, -1)
    Px = y1 * w2 - w1 * y2  # rows of adj(M): c_{k+1} x c_{k+2}
    Py = w1 * x2 - x1 * w2
    Pw = x1 * y2 - y1 * x2
    det = x[..., 0] * Px[..., 0] + y[..., 0] * Py[..., 0] + w[..., 0] * Pw[..., 0]
    det = torch.where(ok, det, torch.ones_like(det))[..., None]
    w0 = torch.where(ok, w[..., 0], torch.ones_like(det[..., 0]))[..., None]
    a, c = Px / det, Py / det
    table = torch.cat([x[..., :1] / w0, y[..., :1] / w0, a, c, 1.0 / w0, z[..., :1] / w0,
                       (z * a).sum(-1, keepdim=True), (z * c).sum(-1, keepdim=True)], -1)
    return table


@torch.no_grad()
def _clip_ok(v: Tensor) -> Tensor:
    """Which faces ``(...)`` of clip vertices ``v (..., 3, 4)`` can be rasterized: every vertex inside the
    near/far range and a nonzero clip-space determinant (:func:`_face_table`'s ``det``)."""
    x, y, z, w = v.unbind(-1)
    return _in_depth_range(z, w).all(-1) & (_clip_det(x, y, w) != 0)


def _in_depth_range(z: Tensor, w: Tensor) -> Tensor:
    """Clip vertices inside the near/far range (in front of the camera): ``w > 0`` and ``-w <= z <= w``."""
    return (w > 0) & (z >= -w) & (z <= w)


def _clip_det(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """The clip-space determinant ``det [c_0 c_1 c_2]`` of faces whose corners' ``x, y, w`` are ``(..., 3)``
    (``c_k = (x_k, y_k, w_k)``); 0 for a face seen edge-on or degenerate."""
    x1, y1, w1, x2, y2, w2 = x[..., 1], y[..., 1], w[..., 1], x[..., 2], y[..., 2], w[..., 2]
    return x[..., 0] * (y1 * w2 - w1 * y2) + y[..., 0] * (w1 * x2 - x1 * w2) + w[..., 0] * (x1 * y2 - y1 * x2)


@torch.no_grad()
def _visibility(pos: Tensor, tri: Tensor, H: int, W: int, cull_backfaces: bool) -> Tensor:
    """Per-pixel visibility keys ``(B*H*W,)`` int64 of clip vertices ``pos (B, V, 4)`` and ``tri (F, 3)``
    int64: face id in the low 32 bits, ``_SENTINEL`` on background. No gradient.

    Scanline enumeration: every valid triangle is split into the pixel rows its bounding box
    spans; in each row the span of pixel centres inside the three edges is solved exactly (each
    edge is a line ``x = alpha + beta y`` bounding from the left or the right). Every covered
    (face, pixel) pair then gets a packed int64 key, quantised z/w in the upper bits and the face id
    in the lower 32, and ``scatter_reduce(amin)`` keeps the nearest (ties: lowest face id). Rows and
    pixels are enumerated flat (a prefix sum of the per-face row counts, then of the per-row pixel
    counts), so the work is the number of rows plus the number of covered pairs, with no padding.
    """
    B, V, Fn, device = pos.shape[0], pos.shape[1], tri.shape[0], pos.device
    n_pix = B * H * W
    buf = torch.full((n_pix,), _SENTINEL, dtype=torch.long, device=device)
    x, y, z, w = pos.unbind(-1)  # (B, V)
    # Screen coordinates per vertex (those of a face's corners are the same numbers). A vertex outside
    # the near/far range gets y = NaN, so every face using it spans no row below and is dropped whole.
    sx = (x / w + 1.0) * (0.5 * W)
    sy = (y / w + 1.0) * (0.5 * H)
    sy_in = torch.where(_in_depth_range(z, w), sy, torch.full_like(sy, float("nan")))
    cy = sy_in.index_select(1, tri.reshape(-1)).reshape(B, Fn, 3)
    y0 = torch.ceil(cy.amin(-1) - 0.5).clamp(min=0)
    y1 = torch.floor(cy.amax(-1) - 0.5).clamp(max=H - 1)
    sel = (y1 >= y0).reshape(-1).nonzero().squeeze(1)  # flat b * F + f
    if sel.numel() == 0:
        return buf
    b_s = torch.div(sel, Fn, rounding_mode="floor")
    face_s = sel - b_s * Fn
    corner = (tri.index_select(0, face_s) + (b_s * V)[:, None]).reshape(-1)
    vt = torch.stack([sx, sy, z / w, x, y, w], -1).reshape(-1, 6).index_select(0, corner).reshape(-1, 3, 6)
    sx, sy, zw, cx, cy, cw = vt.unbind(-1)  # (S, 3) each
    y0, y1 = y0.reshape(-1).index_select(0, sel), y1.reshape(-1).index_select(0, sel)
    # The rest of the validity test (:func:`_clip_ok`'s determinant, a nonzero screen area, facing,
    # inside the image's columns): a face that fails it gets no rows.
    det = _clip_det(cx, cy, cw)
    D = (sx[:, 1] - sx[:, 0]) * (sy[:, 2] - sy[:, 0]) - (sx[:, 2] - sx[:, 0]) * (sy[:, 1] - sy[:, 0])
    ok = (det != 0) & (D != 0) & (sx.amax(-1) >= 0.5 - _TOL) & (sx.amin(-1) <= W - 0.5 + _TOL)
    if cull_backfaces:
        ok &= D < 0  # counter-clockwise as displayed (y down) = front-facing
    nrow = torch.where(ok, y1 - y0 + 1, torch.zeros_like(y0)).long()
    # Edge k (opposite vertex k) as x = alpha + beta * (y - y_ref), y_ref = the first row's centre;
    # it bounds from the left when vertex k lies to its right. Horizontal edges bound nothing the
    # row range does not already bound.
    y_ref = y0 + 0.5
    xa, ya, xb, yb = sx.roll(-1, -1), sy.roll(-1, -1), sx.roll(-2, -1), sy.roll(-2, -1)
    dy = yb - ya
    flat_edge = dy == 0
    beta = (xb - xa) / torch.where(flat_edge, torch.ones_like(dy), dy)
    alpha = xa + beta * (y_ref[:, None] - ya)
    left = (sx - xa) > beta * (sy - ya)
    lo, hi = left & ~flat_edge, ~left & ~flat_edge
    inf = torch.full_like(alpha, float("inf"))
    # z/w as a plane over the screen: value at (x = sx0, y = y_ref) and slopes.
    e1x, e1y, e2x, e2y = sx[:, 1] - sx[:, 0], sy[:, 1] - sy[:, 0], sx[:, 2] - sx[:, 0], sy[:, 2] - sy[:, 0]
    gzx = ((zw[:, 1] - zw[:, 0]) * e2y - (zw[:, 2] - zw[:, 0]) * e1y) / D
    gzy = ((zw[:, 2] - zw[:, 0]) * e1x - (zw[:, 1] - zw[:, 0]) * e2x) / D
    z_ref = zw[:, 0] + gzy * (y_ref - sy[:, 0])
    tab = torch.cat([torch.where(lo, alpha, -inf), torch.where(hi, alpha, inf), torch.where(lo, beta, 0.0),
                     torch.where(hi, beta, 0.0), torch.stack([sx[:, 0], z_ref, gzx, gzy], -1)], -1)  # (S, 16)
    first_pix = (b_s * H + y0.long()) * W  # flat index of the first row's pixel 0
    for f0, f1 in _chunks(nrow):
        # Rows: the span of pixel centres x = i + 0.5 inside the triangle in each row of each face.
        rf, ro = _expand(nrow[f0:f1])
        r = tab[f0:f1].index_select(0, rf)  # (R, 16)
        rof = ro.to(r.dtype)
        L = torch.maximum(torch.maximum(r[:, 0] + r[:, 6] * rof, r[:, 1] + r[:, 7] * rof), r[:, 2] + r[:, 8] * rof)
        U = torch.minimum(torch.minimum(r[:, 3] + r[:, 9] * rof, r[:, 4] + r[:, 10] * rof), r[:, 5] + r[:, 11] * rof)
        i0 = torch.ceil(L - 0.5 - _TOL).clamp(min=0)
        i1 = torch.floor(U - 0.5 + _TOL).clamp(max=W - 1)
        count = (i1 - i0 + 1).clamp(min=0).long()
        d0 = r[:, 13] + r[:, 14] * (i0 + 0.5 - r[:, 12]) + r[:, 15] * rof
        base = first_pix[f0:f1].index_select(0, rf) + ro * W + i0.long()
        fid = face_s[f0:f1].index_select(0, rf)
        gz = r[:, 14]
        # Pixels: packed keys, nearest wins.
        for r0, r1 in _chunks(count):
            pr, off = _expand(count[r0:r1])
            depth = d0[r0:r1].index_select(0, pr) + gz[r0:r1].index_select(0, pr) * off.to(d0.dtype)
            q = ((depth + 1.0) * (0.5 * _DEPTH_LEVELS)).clamp(0, _DEPTH_TOP).long()
            key = (q << 32) | fid[r0:r1].index_select(0, pr)
            buf.scatter_reduce_(0, base[r0:r1].index_select(0, pr) + off, key, reduce="amin")
    return buf


def _expand(count: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and offset ``(N,)`` int64 of each of the ``N = count.sum()`` items of entries with ``count (E,)``
    items each (``repeat_interleave(count)`` and a within-entry ``arange``), by one prefix sum."""
    end = count.cumsum(0)
    start = end - count
    n = int(end[-1]) if count.numel() else 0
    marks = torch.zeros(n + 1, dtype=torch.long, device=count.device).index_add_(0, start, torch.ones_like(count))
    entry = marks[:n].cumsum(0) - 1
    return entry, torch.arange(n, device=count.device) - start.index_select(0, entry)


def _chunks(count: Tensor):
    """Yield ``(start, end)``: consecutive slices of ``count (E,)`` with at most ``_CHUNK`` items in all
    (or one entry): bounds the memory of the flat row and pixel arrays."""
    end = count.cumsum(0)
    total, E = int(end[-1]) if count.numel() else 0, count.numel()
    if total <= _CHUNK:
        if total:
            yield 0, E
        return
    s = 0
    while s < E:
        done = int(end[s - 1]) if s else 0
        e = max(int(torch.searchsorted(end, done + _CHUNK, right=True)), s + 1)
        yield s, e
        s = e


class _RastEval(torch.autograd.Function):
    """Covered pixels' ``(u, v, z/w, id + 1)`` from the face table, written into ``(B*H*W, 4)``.

    Hand-written backward: one ``(M, 12)`` gradient per pixel, scattered once into the table.
    """

    @staticmethod
    def forward(ctx, table, g, pix, xn, yn, ids, n_pix):  # noqa: D102
        T = table.index_select(0, g)
        dx, dy = xn - T[:, 0], yn - T[:, 1]
        b0 = T[:, 2] * dx + T[:, 5] * dy + T[:, 8]
        b1 = T[:, 3] * dx + T[:, 6] * dy
        b2 = T[:, 4] * dx + T[:, 7] * dy
        r = 1.0 / (b0 + b1 + b2)
        u, v = b0 * r, b1 * r
        out = torch.zeros(n_pix, 4, dtype=table.dtype, device=table.device)
        out.index_copy_(0, pix, torch.stack([u, v, T[:, 9] + T[:, 10] * dx + T[:, 11] * dy, ids], -1))
        ctx.save_for_backward(T, g, pix, dx, dy, u, v, r)
        ctx.n_face = table.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        T, g, pix, dx, dy, u, v, r = ctx.saved_tensors
        go = grad_out.index_select(0, pix)
        gu, gv, gz = go[:, 0], go[:, 1], go[:, 2]
        q = -(gu * u + gv * v) * r  # d/d bh_k of (u, v) contracted with (gu, gv): gu r + q, gv r + q, q
        g0, g1 = gu * r + q, gv * r + q
        gdx = g0 * T[:, 2] + g1 * T[:, 3] + q * T[:, 4] + gz * T[:, 10]
        gdy = g0 * T[:, 5] + g1 * T[:, 6] + q * T[:, 7] + gz * T[:, 11]
        gT = torch.stack([-gdx, -gdy, g0 * dx, g1 * dx, q * dx, g0 * dy, g1 * dy, q * dy, g0, gz, gz * dx, gz * dy], -1)
        grad_table = torch.zeros(ctx.n_face, 12, dtype=T.dtype, device=T.device).index_add_(0, g, gT)
        return grad_table, None, None, None, None, None, None


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
    B = pos.shape[0]
    Fn = tri.shape[0]
    tri = tri.long()
    key = _visibility(pos.detach(), tri, H, W, cull_backfaces)
    pix = (key != _SENTINEL).nonzero().squeeze(1)
    f = key.index_select(0, pix) & 0xFFFFFFFF
    b = torch.div(pix, H * W, rounding_mode="floor")
    rem = pix - b * (H * W)
    row = torch.div(rem, W, rounding_mode="floor")
    xn = ((2.0 * (rem - row * W) + 1.0) / W - 1.0).to(pos.dtype)
    yn = ((2.0 * row + 1.0) / H - 1.0).to(pos.dtype)
    # The differentiable face table only for the faces some pixel shows (in a face crop, under half of
    # FLAME's: the back of the head, the inner mouth and the eyeballs' hidden sides cost nothing).
    shown = torch.zeros(B * Fn, dtype=torch.bool, device=pos.device)
    shown[b * Fn + f] = True
    faces = shown.nonzero().squeeze(1)
    compact = torch.cumsum(shown, 0) - 1
    fb = torch.div(faces, Fn, rounding_mode="floor")
    corners = (fb[:, None] * pos.shape[1] + tri.index_select(0, faces - fb * Fn)).reshape(-1)
    table = _face_table(pos.reshape(-1, 4).index_select(0, corners).reshape(-1, 3, 4))
    out = _RastEval.apply(table, compact.index_select(0, b * Fn + f), pix, xn, yn, (f + 1).to(pos.dtype), B * H * W)
    return out.reshape(B, H, W, 4)


def _covered(rast: Tensor, pixels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Flat indices of the covered pixels (or of ``pixels``), their batch index and face id (int64;
    -1 where a given pixel is background)."""
    B, H, W, _ = rast.shape
    ids = rast[..., 3].detach().reshape(-1)
    pix = (ids > 0).nonzero().squeeze(1) if pixels is None else pixels.long()
    return pix, torch.div(pix, H * W, rounding_mode="floor"), ids.index_select(0, pix).long() - 1


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor, pixels: Tensor | None = None) -> Tensor:
    """Interpolate per-vertex attributes over the image with the barycentrics in ``rast``.

    Args:
        attr: ``(B, V, C)`` or ``(V, C)`` (shared by all views) attributes.
        rast: ``(B, H, W, 4)`` from :func:`rasterize`.
        tri: ``(F, 3)`` int indices into ``attr``; may differ from the rasterized ``tri`` as long
            as it has the same F (e.g. FLAME's ``uv_faces`` with ``attr`` = the UV table).
        pixels: ``(P,)`` int64 flat indices into ``B * H * W`` of covered pixels: the attribute at
            those pixels only, ``(P, C)`` (a loss on part of the image skips the dense image and its
            adjoint; same values as the dense result there).

    Returns:
        ``(B, H, W, C)``, 0 on background; or ``(P, C)`` with ``pixels``. Gradients flow to ``attr``
        and to ``rast[..., :2]`` (hence to the clip positions).
    """
    check_shape(rast, ["B", "H", "W", 4], "rast")
    check_shape(tri, ["F", 3], "tri")
    B, H, W, _ = rast.shape
    shared = attr.dim() == 2
    if not shared:
        check_shape(attr, [B, "V", "C"], "attr")
    V, C = attr.shape[-2:]
    pix, b, f = _covered(rast, pixels)
    if pixels is not None and pix.numel() and bool((f < 0).any()):
        raise ValueError("interpolate: pixels must be covered (rast[..., 3] > 0)")
    corners = tri.long().index_select(0, f)  # (P, 3) rows of attr (of the flattened (B * V, C) attr)
    if not shared:
        corners = corners + (b * V)[:, None]
    uv = rast.reshape(-1, 4).index_select(0, pix)[:, :2]
    vals = _Interpolate.apply(attr.reshape(-1, C), corners, uv)
    dtype = torch.promote_types(attr.dtype, rast.dtype)
    if pixels is not None:
        return vals.to(dtype)
    out = torch.zeros(B * H * W, C, dtype=dtype, device=rast.device).index_copy(0, pix, vals.to(dtype))
    return out.reshape(B, H, W, C)


class _Interpolate(torch.autograd.Function):
    """``a2 + u (a0 - a2) + v (a1 - a2)`` at P pixels from ``attr (N, C)``, ``corners (P, 3)`` rows of it
    and ``uv (P, 2)``. Hand-written backward: one ``(3P, C)`` scatter into the attribute table, no
    per-face tables."""

    @staticmethod
    def forward(ctx, attr, corners, uv):  # noqa: D102
        a = attr.index_select(0, corners.reshape(-1)).reshape(-1, 3, attr.shape[1])
        d0, d1 = a[:, 0] - a[:, 2], a[:, 1] - a[:, 2]
        ctx.save_for_backward(corners, uv, d0, d1)
        ctx.n_attr = attr.shape[0]
        return a[:, 2] + uv[:, 0:1] * d0 + uv[:, 1:2] * d1

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        corners, uv, d0, d1 = ctx.saved_tensors
        grad_attr = grad_uv = None
        if ctx.needs_input_grad[0]:
            gu, gv = uv[:, 0:1] * grad, uv[:, 1:2] * grad
            per_corner = torch.stack([gu, gv, grad - gu - gv], 1).to(d0.dtype).reshape(-1, grad.shape[1])
            grad_attr = torch.zeros(ctx.n_attr, grad.shape[1], dtype=d0.dtype, device=grad.device)
            grad_attr.index_add_(0, corners.reshape(-1), per_corner)
        if ctx.needs_input_grad[2]:
            grad_uv = torch.stack([(grad * d0).sum(1), (grad * d1).sum(1)], -1).to(uv.dtype)
        return grad_attr, None, grad_uv


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
    out = F_.grid_sample(tex.permute(0, 3, 1, 2), _texture_grid(uv, tex.dtype), mode=filter_mode,
                         padding_mode=boundary_mode, align_corners=False)
    return out.permute(0, 2, 3, 1)


def texture_adjoint(shape: tuple[int, int, int], uv: Tensor, g: Tensor) -> Tensor:
    """The adjoint of :func:`texture` (bilinear, border) in the texture: ``A^T g`` ``(Ht, Wt, C)`` for ``A``
    the sampling of a ``shape = (Ht, Wt, C)`` texture at ``uv (1, H, W, 2)``, ``g (1, H, W, C)``; i.e. the
    texture's gradient of ``sum(texture(tex, uv) * g)`` (``texture`` is linear in the texture), bit for bit.

    Straight from grid_sample's backward kernel: autograd would first sample a zero texture forward
    (a third of the cost in the closed-form appearance solve that uses this)."""
    tex = torch.zeros((1, shape[2], shape[0], shape[1]), dtype=g.dtype, device=g.device)
    bilinear, border = 0, 1  # GridSamplerInterpolation::Bilinear, GridSamplerPadding::Border
    grad, _ = torch.ops.aten.grid_sampler_2d_backward(g.permute(0, 3, 1, 2), tex, _texture_grid(uv, g.dtype),
                                                      bilinear, border, False, [True, False])
    return grad[0].permute(1, 2, 0)


def _texture_grid(uv: Tensor, dtype: torch.dtype) -> Tensor:
    """grid_sample's grid (x right, y down in [-1, 1], align_corners False) of texture coordinates ``uv``
    (module docstring: ``(0, 0)`` the bottom-left corner, texel centres at ``(i + .5) / W``)."""
    return torch.stack([2.0 * uv[..., 0] - 1.0, 1.0 - 2.0 * uv[..., 1]], -1).to(dtype)


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
    V, Fn = pos.shape[1], tri.shape[0]
    check_shape(rast, [B, H, W, 4], "rast")
    tri = tri.long()
    nb = edge_topology(tri) if topology is None else topology.long()
    with torch.no_grad():
        p = pos.detach()
        w = torch.where(p[..., 3] > 0, p[..., 3], torch.ones_like(p[..., 3]))
        scr = torch.stack([(p[..., 0] / w + 1.0) * (0.5 * W), (p[..., 1] / w + 1.0) * (0.5 * H)], -1)
        sx, sy = _gather_faces(scr, tri).reshape(B * Fn, 3, 2).unbind(-1)  # (B*F, 3) screen vertices
        D = (sx[:, 1] - sx[:, 0]) * (sy[:, 2] - sy[:, 0]) - (sx[:, 2] - sx[:, 0]) * (sy[:, 1] - sy[:, 0])
        front = (D < 0).reshape(B, Fn)
        sil = (nb < 0) | (front.index_select(1, nb.clamp(min=0).reshape(-1)).reshape(B, Fn, 3) != front[..., None])
        front, sil = front.reshape(-1), sil.reshape(-1, 3)
        has_sil = sil.any(-1)  # (B*F,): only such faces can own a blended pair
        ids = rast[..., 3].detach().long()
        ids_flat, zw = ids.reshape(-1), rast[..., 2].detach().reshape(-1)
    flat = color.reshape(-1, C)
    pos_flat = pos.reshape(-1, 4)
    targets, deltas = [], []
    for horizontal in (True, False):
        with torch.no_grad():
            if horizontal:
                q = (ids[:, :, :-1] != ids[:, :, 1:]).reshape(-1).nonzero().squeeze(1)
                pa = q + torch.div(q, W - 1, rounding_mode="floor")
                pb = pa + 1
            else:
                q = (ids[:, :-1] != ids[:, 1:]).reshape(-1).nonzero().squeeze(1)
                pa = q + torch.div(q, (H - 1) * W, rounding_mode="floor") * W
                pb = pa + W
            # Pairs where neither face has a silhouette edge cannot blend: dropped before anything else.
            ia, ib = ids_flat.index_select(0, pa), ids_flat.index_select(0, pb)
            row0 = torch.div(pa, H * W, rounding_mode="floor") * Fn - 1
            keep = ((ia > 0) & has_sil.index_select(0, (row0 + ia).clamp(min=0))) \
                | ((ib > 0) & has_sil.index_select(0, (row0 + ib).clamp(min=0)))
            keep = keep.nonzero().squeeze(1)
            pa, pb, ia, ib = pa[keep], pb[keep], ia[keep], ib[keep]
            occ_b = (ia == 0) | ((ib != 0) & (zw.index_select(0, pb) < zw.index_select(0, pa)))
            po, pn = torch.where(occ_b, pb, pa), torch.where(occ_b, pa, pb)
            bi = torch.div(po, H * W, rounding_mode="floor")
            g = bi * Fn + torch.where(occ_b, ib, ia) - 1
            keep = has_sil.index_select(0, g).nonzero().squeeze(1)
            po, pn, g, bi = po[keep], pn[keep], g[keep], bi[keep]
            # The occluders' edges: k runs from vertex k+1 to k+2; steep ones are crossed by horizontal pairs.
            sxg, syg = sx.index_select(0, g), sy.index_select(0, g)
            xa, ya = sxg.roll(-1, -1), syg.roll(-1, -1)
            exg, eyg = sxg.roll(-2, -1) - xa, syg.roll(-2, -1) - ya
            steep = eyg.abs() >= exg.abs()
            sil_axis = sil.index_select(0, g) & (steep if horizontal else ~steep)
            # Edge functions E_k (>= 0 inside) at the occluder's pixel centre, and their change over
            # the one-pixel step towards pn.
            rem = po - bi * (H * W)
            py = torch.div(rem, W, rounding_mode="floor")
            px = (rem - py * W).to(p.dtype)[:, None] + 0.5
            py = py.to(p.dtype)[:, None] + 0.5
            s = torch.where(front.index_select(0, g), -1.0, 1.0).to(p.dtype)[:, None]  # E_k * s >= 0 inside
            e_o = s * (exg * (py - ya) - eyg * (px - xa))
            step = torch.where(pn > po, 1.0, -1.0).to(p.dtype)
            de = s * step[:, None] * (-eyg if horizontal else exg)
            crossed = sil_axis & (e_o >= 0) & (e_o + de < 0)
            t, k = torch.where(crossed, e_o / -de, torch.full_like(e_o, float("inf"))).min(-1)
            keep = torch.isfinite(t).nonzero().squeeze(1)
            po, pn, g, bi, k, step = po[keep], pn[keep], g[keep], bi[keep], k[keep], step[keep]
            px, py = px[keep, 0], py[keep, 0]
            tri_g = tri.index_select(0, g - bi * Fn) + (bi * V)[:, None]
            va = tri_g.gather(1, ((k + 1) % 3)[:, None])[:, 0]
            vb = tri_g.gather(1, ((k + 2) % 3)[:, None])[:, 0]
        # Differentiable crossing: the edge line (a, b) meets po's row (column) at c; t = (c - po) * step.
        ax, ay = _screen(pos_flat.index_select(0, va), H, W)
        bx, by = _screen(pos_flat.index_select(0, vb), H, W)
        if horizontal:
            t = (ax + (bx - ax) * (py - ay) / (by - ay) - px) * step
        else:
            t = (ay + (by - ay) * (px - ax) / (bx - ax) - py) * step
        far = (t >= 0.5).detach()
        c_o, c_n = flat.index_select(0, po), flat.index_select(0, pn)
        weight = torch.where(far, t - 0.5, 0.5 - t)[:, None].to(flat.dtype)
        deltas.append(weight * torch.where(far[:, None], c_o - c_n, c_n - c_o))
        targets.append(torch.where(far, pn, po))
    out = flat.index_add(0, torch.cat(targets), torch.cat(deltas))
    return out.reshape(B, H, W, C)


def coverage(rast: Tensor, pos: Tensor, tri: Tensor, topology: Tensor | None = None) -> Tensor:
    """Antialiased foreground mask ``(B, H, W, 1)`` in [0, 1] whose gradient moves the outline.

    ``antialias`` of the binary mask ``rast[..., 3] > 0``: gradients flow only to the vertices of
    silhouette edges (see :func:`antialias` for arguments), so a mask loss can grow, shrink and
    shift the rendered outline. To antialias a colour image too at the cost of one call, pass
    ``torch.cat([color, mask], -1)`` to :func:`antialias` and split the channels.
    """
    mask = (rast[..., 3:4] > 0).to(pos.dtype)
    return antialias(mask, rast, pos, tri, topology)
