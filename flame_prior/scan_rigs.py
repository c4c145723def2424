"""A ground truth that is not FLAME: a photo-scanned head rendered from known camera rigs.

The scan is Lee Perry-Smith's "Infinite, 3D Head Scan" (CC BY 3.0; see :data:`ATTRIBUTION`), as
shipped in ``../shared/data/scans/lee-perry-smith/LeePerrySmith.glb``. It is another topology and
real geometry, so fitting FLAME to renders of it meets what real photographs meet (model mismatch,
detector bias) while every camera is known exactly.

One path::

    scan = load_scan(path)                          # metres, head frame (see below)
    rig = make_rig("turning_head")                  # known cameras (OpenCV, in the scan's frame)
    write_rig(scan, rig, folder)                    # folder/images/*.png + folder/truth.json
    # ... run the whole tool on folder/images ...
    errors = score_cameras(fit_summary, truth)      # after the one similarity scan -> FLAME

**Scan frame** (what :func:`load_scan` returns): metres, the outer eye corners 9.5 cm apart, origin
at their midpoint; +Y up, +Z out of the face, +X to the subject's left (the glb's own axes, which
already are FLAME's directions; only scale and origin change). Cameras are OpenCV world-to-camera
``x_cam = R x + t`` in this frame; pixels as everywhere in flame-prior (corner origin, centres at
+0.5). Lens distortion is OpenCV's ``(k1, k2, p1, p2)`` on normalised coordinates
``((u - cx) / fx, (v - cy) / fy)``, applied when rendering by resampling a pinhole render.

**Texture**: the glb carries no colour, and SIFT and photometric terms need some. The albedo is a
band-limited solid noise (a sum of random 3D sinusoids, wavelengths 1.5 mm to 4 cm) over a skin
tone, evaluated at each pixel's surface point, so it is the same surface texture in every view and
needs no UV layout; renders are supersampled to avoid aliasing of its finest band.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from flame_prior import render
from flame_prior.geometry import look_at_w2c

__all__ = [
    "ATTRIBUTION", "SCAN_RELATIVE_PATH", "RENDER_VERSION", "RIG_NAMES", "ScanHead", "RigView", "Rig", "load_scan", "make_rig",
    "render_view", "write_rig", "write_calibration", "align_rotations", "align_centres", "camera_similarity",
    "score_cameras", "score_mesh", "read_obj_mesh",
]

SCAN_RELATIVE_PATH = "data/scans/lee-perry-smith/LeePerrySmith.glb"
RENDER_VERSION = 2
"""Written into a rig's truth.json: bump it whenever :func:`render_view`'s pixels change for the same rig, so
that :func:`write_rig` renders again instead of reusing images of an older renderer (a render set whose
truth.json matched while four of its images came from before the room's sphere grew showed the room and no
head, and scored 1.1° / 78° where fresh renders score 0.28° / 1.05°, 0.69° / 1.22° with the tiled detection)."""
ATTRIBUTION = ('"Infinite, 3D Head Scan" by Lee Perry-Smith, licensed under Creative Commons Attribution 3.0 '
               "Unported (https://creativecommons.org/licenses/by/3.0/); based on a work at www.triplegangers.com. "
               "Rendered with a procedural skin texture by flame-prior's scan_rigs module.")

#: Outer eye corners of the glb (vertex indices; found by MediaPipe Face Mesh on a frontal render of
#: the scan, points 33 and 263, snapped to the nearest vertex): the subject's right, then left.
EYE_CORNER_VERTICES = (5112, 412)
EYE_CORNER_DISTANCE_M = 0.095
#: The point the rigs look at, in the scan frame: about the centre of the head behind the eyes.
HEAD_CENTRE = np.array([0.0, -0.01, -0.07])

RIG_NAMES = ("turning_head", "moving_camera", "ring", "distortion", "focals", "small_faces")


@dataclass
class ScanHead:
    """The scan in its head frame (module docstring)."""

    vertices: np.ndarray  # (V, 3) float64, metres
    faces: np.ndarray  # (F, 3) int64
    eye_corners: np.ndarray  # (2, 3) outer eye corners, metres


@dataclass
class RigView:
    """One known camera: OpenCV world-to-camera in the scan frame, intrinsics, distortion."""

    name: str
    R: list  # (3, 3)
    t: list  # (3,)
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # OpenCV k1, k2, p1, p2


@dataclass
class Rig:
    """A set of views and how the scene around the head behaves."""

    name: str
    description: str
    views: list[RigView]
    background: Literal["static", "environment"]
    """static: one textured image behind the head, the same pixels in every view (a fixed camera and a
    turning head); environment: a textured sphere around the head, rigid with it (a moving camera)."""
    light: Literal["camera", "world"]
    """Where the light is fixed: to the camera (turning head) or to the scene (moving camera)."""
    supersample: int = 2
    """Render at this multiple of the resolution and average (anti-aliasing); 1 for full-HD rigs (cost)."""


# --------------------------------------------------------------------------------------------
# The scan


def load_scan(path: Path | str) -> ScanHead:
    """Read the glb (trimesh) and bring it to the scan frame of the module docstring."""
    import trimesh

    mesh = trimesh.load(Path(path), force="mesh", process=False)
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    corners = v[list(EYE_CORNER_VERTICES)]
    scale = EYE_CORNER_DISTANCE_M / np.linalg.norm(corners[1] - corners[0])
    origin = corners.mean(0)
    return ScanHead((v - origin) * scale, f, (corners - origin) * scale)


def _noise_bank(seed: int, n: int, wl_min: float, wl_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random 3D sinusoids: wave vectors ``(n, 3)`` (rad/m, log-uniform wavelengths), phases, amplitudes."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    wl = np.exp(rng.uniform(math.log(wl_min), math.log(wl_max), n))
    return d * (2 * math.pi / wl)[:, None], rng.uniform(0, 2 * math.pi, n), np.sqrt(wl / wl_max)


def solid_noise(points: torch.Tensor, seed: int, n: int = 96, wl_min: float = 1.5e-3, wl_max: float = 0.04,
                max_frequency: float | None = None) -> torch.Tensor:
    """Band-limited solid noise at ``points (..., 3)`` metres: ``(...)`` roughly in [-1, 1].

    ``max_frequency`` (rad/m) drops the sinusoids finer than the image can hold (anti-aliasing)."""
    k, phase, amp = (torch.as_tensor(a, dtype=points.dtype, device=points.device) for a in _noise_bank(seed, n, wl_min, wl_max))
    if max_frequency is not None:
        amp = torch.where(k.norm(dim=1) <= max_frequency, amp, torch.zeros_like(amp))
    out = torch.zeros(points.shape[:-1], dtype=points.dtype, device=points.device)
    flat = points.reshape(-1, 3)
    res = out.reshape(-1)
    for s in range(0, flat.shape[0], 1 << 18):  # bounded memory: (chunk, n)
        res[s:s + (1 << 18)] = (torch.sin(flat[s:s + (1 << 18)] @ k.T + phase) * amp).sum(-1)
    return out / amp.square().sum().sqrt().clamp_min(1e-9)  # standard deviation ~0.7


def skin_albedo(points: torch.Tensor, max_frequency: float | None = None) -> torch.Tensor:
    """Skin-like albedo ``(..., 3)`` in [0, 1] at surface points ``(..., 3)`` (scan frame, metres)."""
    base = torch.tensor([0.72, 0.52, 0.42], dtype=points.dtype, device=points.device)
    blotch = solid_noise(points, 1, n=32, wl_min=0.01, wl_max=0.06, max_frequency=max_frequency)
    fine = solid_noise(points, 2, n=96, wl_min=1.5e-3, wl_max=0.01, max_frequency=max_frequency)
    tint = torch.tensor([0.03, -0.01, -0.01], dtype=points.dtype, device=points.device)
    return (base * (1 + 0.08 * blotch[..., None] + 0.10 * fine[..., None]) + tint * blotch[..., None]).clamp(0, 1)


def noise_image(height: int, width: int, seed: int, wl_min_px: float, wl_max_px: float) -> torch.Tensor:
    """Colourful band-limited noise ``(H, W, 3)`` in [0, 1], periodic in both directions: white noise
    filtered in the Fourier domain to wavelengths ``wl_min_px``..``wl_max_px`` (pink within the band)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None]
    f = np.sqrt(fx * fx + fy * fy)
    band = ((f >= 1 / wl_max_px) & (f <= 1 / wl_min_px)) / np.maximum(f, 1e-9)
    chans = []
    for _ in range(3):
        n = np.fft.irfft2(np.fft.rfft2(rng.normal(size=(height, width))) * band, s=(height, width))
        chans.append(n / max(n.std(), 1e-12))
    return torch.as_tensor(np.clip(0.45 + 0.16 * np.stack(chans, -1), 0, 1), dtype=torch.float32)


@functools.lru_cache(maxsize=1)
def _environment_texture() -> torch.Tensor:
    """The room's texture, on the sphere's longitude x latitude (2048 x 1024): 4.6 mm per texel on the
    3 m sphere, wavelengths 2.5-40 cm."""
    return noise_image(1024, 2048, 10, 5.0, 90.0)


def environment_albedo(points: torch.Tensor) -> torch.Tensor:
    """The textured room ``(P, 3)`` at points ``(P, 3)`` on the environment sphere (scan frame)."""
    d = torch.nn.functional.normalize(points - torch.as_tensor(HEAD_CENTRE, dtype=points.dtype), dim=-1)
    lon = torch.atan2(d[:, 2], d[:, 0]) / (2 * math.pi) % 1.0
    lat = torch.arccos(d[:, 1].clamp(-1, 1)) / math.pi
    uv = torch.stack([lon, 1 - lat], -1)[None, :, None]  # (1, P, 1, 2), texture()'s layout
    return render.texture(_environment_texture(), uv.float(), boundary_mode="reflection")[0, :, 0]


def _environment_radius(rig: "Rig") -> float:
    """The room's radius: 3 m, or twice the farthest camera's distance (small-face rigs stand back
    several metres; a camera outside the sphere would see it from behind). One per rig: rigid."""
    far = max(float(np.linalg.norm(-np.asarray(v.R).T @ np.asarray(v.t) - HEAD_CENTRE)) for v in rig.views)
    return max(3.0, 2.0 * far)


def _sphere(radius: float, centre: np.ndarray, n_lat: int = 24, n_lon: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A UV sphere (vertices ``(V, 3)``, faces ``(F, 3)``), for the environment backdrop."""
    lat = np.linspace(0, math.pi, n_lat + 1)
    lon = np.linspace(0, 2 * math.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    v = np.stack([np.sin(la) * np.cos(lo), np.cos(la), np.sin(la) * np.sin(lo)], -1).reshape(-1, 3) * radius + centre
    f = []
    for i in range(n_lat):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            f += [[a, c, b], [b, c, d]]
    return v, np.asarray(f, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Rendering


def _undistort_normalised(xd: np.ndarray, yd: np.ndarray, dist: np.ndarray, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Invert OpenCV's (k1, k2, p1, p2) model by fixed-point iteration (as cv2.undistortPoints)."""
    k1, k2, p1, p2 = dist
    x, y = xd.copy(), yd.copy()
    for _ in range(iters):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x, y = (xd - dx) / radial, (yd - dy) / radial
    return x, y


def distort_normalised(x: np.ndarray, y: np.ndarray, dist) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's (k1, k2, p1, p2) model: undistorted normalised coordinates to distorted ones."""
    k1, k2, p1, p2 = dist
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


@functools.lru_cache(maxsize=4)
def _static_background(height: int, width: int) -> torch.Tensor:
    """A fixed textured image ``(H, W, 3)``: the scene behind a turning head, identical in every view
    (wavelengths 1/100 to 1/6 of the image height)."""
    return noise_image(height, width, 5, height / 100, height / 6) * 0.8


@torch.no_grad()
def _render_pinhole(scan: ScanHead, rig: Rig, view: RigView, K: np.ndarray, size: tuple[int, int],
                    background: torch.Tensor | None) -> torch.Tensor:
    """Pinhole render ``(H, W, 3)`` float32 of the scan (and the environment) with intrinsics ``K``."""
    H, W = size
    R = torch.as_tensor(np.asarray(view.R), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(view.t), dtype=torch.float64)
    verts, faces = torch.as_tensor(scan.vertices), torch.as_tensor(scan.faces)
    n_head = verts.shape[0]
    if rig.background == "environment":
        sv, sf = _sphere(_environment_radius(rig), HEAD_CENTRE)
        verts = torch.cat([verts, torch.as_tensor(sv)])
        faces = torch.cat([faces, torch.as_tensor(sf) + n_head])
    pc = (verts @ R.T + t)[None]
    one = lambda x: torch.tensor([float(x)], dtype=torch.float64)  # noqa: E731
    pos = render.pinhole_to_clip(pc, one(K[0, 0]), one(K[1, 1]), one(K[0, 2]), one(K[1, 2]), W, H, near=0.05,
                                 far=20.0).float()
    rast = render.rasterize(pos, faces, (H, W))[0]
    # Shade only the covered pixels (the textures are per-pixel sums of sinusoids: the costly part).
    pix = (rast[..., 3] > 0).reshape(-1).nonzero().squeeze(1)
    flat = rast.reshape(-1, 4)[pix][None, :, None]  # (1, P, 1, 4): interpolate's layout on a 1-pixel-high image
    is_head = flat[0, :, 0, 3] <= scan.faces.shape[0]
    world = render.interpolate(verts.float(), flat, faces)[0, :, 0].double()
    normals = render.vertex_normals(verts[None].float(), faces)[0]
    n_px = torch.nn.functional.normalize(render.interpolate(normals, flat, faces)[0, :, 0], dim=-1).double()
    # The finest texture the render can hold: 2 px per wavelength at the head's depth.
    depth = float(np.median(pc[0, :n_head, 2].numpy()))
    max_freq = 2 * math.pi / (2 * depth / float(K[0, 0]))
    albedo = torch.empty(len(pix), 3, dtype=torch.float32)
    albedo[is_head] = skin_albedo(world[is_head].float(), max_freq)
    albedo[~is_head] = environment_albedo(world[~is_head].float())
    # Lambert with ambient: a key light up-left of the camera (or of the scene's front).
    key = np.array([-0.4, -0.5, -1.0]) if rig.light == "camera" else np.array([0.5, 0.6, 1.0])
    key = key / np.linalg.norm(key)
    light_world = R.T @ torch.as_tensor(key) if rig.light == "camera" else torch.as_tensor(key)
    to_cam = -(world - (-(R.T @ t)))  # surface -> camera direction, for two-sided normals
    n_px = torch.where(((n_px * to_cam).sum(-1, keepdim=True) < 0), -n_px, n_px)
    shade = 0.35 + 0.75 * (n_px @ light_world).clamp_min(0)
    shade = torch.where(is_head, shade, torch.ones_like(shade))
    color = (albedo * shade[:, None].float()).clamp(0, 1)
    out = background.clone() if background is not None else torch.full((H, W, 3), 0.25)
    out.reshape(-1, 3)[pix] = color
    return out


def render_view(scan: ScanHead, rig: Rig, view: RigView, supersample: int | None = None) -> np.ndarray:
    """The image ``(H, W, 3)`` uint8 a rig's view sees: supersampled pinhole render, then the lens.

    With distortion, each output (distorted) pixel centre is undistorted to where the pinhole camera
    sees it, on a canvas grown to cover them all, and sampled there (bilinear)."""
    s = supersample or rig.supersample
    H, W = view.height, view.width
    dist = np.asarray(view.distortion, dtype=np.float64)
    K = np.array([[view.fx, 0, view.cx], [0, view.fy, view.cy], [0, 0, 1.0]])
    if not np.any(dist):
        Ks = K.copy()
        Ks[:2] *= s
        bg = None
        if rig.background == "static":
            bg = _static_background(H * s, W * s)
        img = _render_pinhole(scan, rig, view, Ks, (H * s, W * s), bg)
        img = torch.nn.functional.avg_pool2d(img.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
        return (img.numpy() * 255).round().astype(np.uint8)
    # Distorted output pixel centres -> undistorted pinhole pixel coordinates.
    u, v = np.meshgrid(np.arange(W * s) + 0.5, np.arange(H * s) + 0.5)
    u, v = u / s, v / s
    xd, yd = (u - view.cx) / view.fx, (v - view.cy) / view.fy
    x, y = _undistort_normalised(xd, yd, dist)
    back = np.stack(distort_normalised(x, y, dist))
    if not np.isfinite(back).all() or np.abs(back - np.stack([xd, yd])).max() * view.fx > 0.01:
        raise ValueError(f"{view.name}: distortion {list(view.distortion)} cannot be inverted over the image "
                         "(the lens model folds back before the corners)")
    up, vp = x * view.fx + view.cx, y * view.fy + view.cy
    x0, y0 = math.floor(up.min()) - 2, math.floor(vp.min()) - 2
    Wc, Hc = math.ceil(up.max()) + 2 - x0, math.ceil(vp.max()) + 2 - y0
    Kc = K.copy()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    Kc[:2] *= s
    bg = None
    if rig.background == "static":  # the wall is seen through the same lens
        bg = _static_background(Hc * s, Wc * s)
    canvas = _render_pinhole(scan, rig, view, Kc, (Hc * s, Wc * s), bg)
    grid = torch.as_tensor(np.stack([2 * (up - x0) / Wc - 1, 2 * (vp - y0) / Hc - 1], -1), dtype=torch.float32)
    img = torch.nn.functional.grid_sample(canvas.permute(2, 0, 1)[None], grid[None], mode="bilinear",
                                          align_corners=False)
    img = torch.nn.functional.avg_pool2d(img, s)[0].permute(1, 2, 0)
    return (img.numpy() * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Rigs


def _orbit_position(yaw_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    a, b = math.radians(yaw_deg), math.radians(elevation_deg)
    return HEAD_CENTRE + distance * np.array([math.sin(a) * math.cos(b), math.sin(b), math.cos(a) * math.cos(b)])


def _view(name, yaw, elev, dist, f, size, roll=0.0, pp=(0.0, 0.0), distortion=(0, 0, 0, 0), aim=(0.0, 0.0)) -> RigView:
    """A camera orbiting the head; ``aim`` (metres, camera x/y) shifts where it looks, so the face
    lands off the image centre."""
    from flame_prior.demo import look_at_w2c

    pos = _orbit_position(yaw, elev, dist)
    R, _ = look_at_w2c(pos, HEAD_CENTRE, roll)
    target = HEAD_CENTRE + R.T @ np.array([aim[0], aim[1], 0.0])
    R, t = look_at_w2c(pos, target, roll)
    W, H = size
    return RigView(name, R.tolist(), t.tolist(), float(f), float(f), W / 2 + pp[0], H / 2 + pp[1], W, H,
                   [float(d) for d in distortion])


def make_rig(name: str, small: bool = False, seed: int = 0) -> Rig:
    """One of :data:`RIG_NAMES` (``small``: a few views at a low resolution, for tests).

    * ``turning_head``: a fixed camera, the head turns -60..60° yaw with some pitch; the background
      is a fixed textured image and the light stays with the camera. 768x1024, ~150 px eye distance
      (small: 4 views, ±45°, 384x512, ~75 px).
    * ``moving_camera``: a camera moves around a still head (-70..70° yaw, -15..20° elevation) in a
      textured room (the whole scene is rigid); 1280x960, ~150 px.
    * ``ring``: 12 cameras every 30° all around (profiles and back views), textured room; 1280x960.
    * ``distortion``: OPENCV k1 = -0.25, k2 = 0.08, faces placed off-centre; 1920x1080, ~110 px.
    * ``focals``: a focal length per camera (1200-2300 px), principal points 20-35 px off centre;
      1600x1200, ~100-170 px.
    * ``small_faces``: a studio capture: full HD, 25-60 px between the outer eye corners, per-camera
      focal lengths (1393-1862 px), principal points off centre, k1 = -0.25, k2 = 0.08 (k1 alone
      folds back before the image corners at these focal lengths: no lens does that).
    """
    rng = np.random.default_rng(seed)
    views: list[RigView] = []
    if name == "turning_head":
        n, size, f, d = (4, (384, 512), 630, 0.8) if small else (12, (768, 1024), 1260, 0.8)
        for i, yaw in enumerate(np.linspace(-45, 45, n) if small else np.linspace(-60, 60, n)):
            views.append(_view(f"turn_{i:02d}", yaw, rng.uniform(-10, 10), d, f, size, roll=rng.uniform(-4, 4)))
        return Rig(name, "fixed camera, turning head, static textured background", views, "static", "camera")
    if name == "moving_camera":
        n, size, f = (4, (512, 384), 560) if small else (12, (1280, 960), 1100)
        for i, yaw in enumerate(np.linspace(-70, 70, n)):
            views.append(_view(f"move_{i:02d}", yaw, rng.uniform(-15, 20), rng.uniform(0.6, 0.8), f, size,
                               roll=rng.uniform(-5, 5)))
        return Rig(name, "camera moving around a still head, textured room", views, "environment", "world",
                   2 if small else 1)
    if name == "ring":
        n, size, f = (6, (512, 384), 640) if small else (12, (1280, 960), 1600)
        for i, yaw in enumerate(np.arange(n) * 360.0 / n):
            views.append(_view(f"ring_{i:02d}", yaw, 5.0, 1.2, f, size))
        return Rig(name, "ring of cameras all around (profiles, back views)", views, "environment", "world",
                   2 if small else 1)
    if name == "distortion":
        n, size = (4, (960, 540)) if small else (10, (1920, 1080))
        f = size[0] * 0.75
        for i, yaw in enumerate(np.linspace(-60, 60, n)):
            aim = (rng.uniform(-0.25, 0.25), rng.uniform(-0.12, 0.12))
            views.append(_view(f"dist_{i:02d}", yaw, rng.uniform(-10, 15), 1.25 * f / 1440, f, size,
                               distortion=(-0.25, 0.08, 0.0, 0.0), aim=aim))
        return Rig(name, "OPENCV lens distortion k1=-0.25, faces off centre", views, "environment", "world",
                   2 if small else 1)
    if name == "focals":
        n, size = (4, (800, 600)) if small else (10, (1600, 1200))
        scale = size[0] / 1600
        for i, yaw in enumerate(np.linspace(-60, 60, n)):
            f = rng.uniform(1200, 2300) * scale
            pp = rng.uniform(20, 35, 2) * rng.choice([-1, 1], 2) * scale
            views.append(_view(f"focal_{i:02d}", yaw, rng.uniform(-10, 15), rng.uniform(0.9, 1.2), f, size, pp=pp))
        return Rig(name, "a focal length per camera, principal points off centre", views, "environment", "world",
                   2 if small else 1)
    if name == "small_faces":
        n, size = (4, (1920, 1080)) if small else (10, (1920, 1080))
        for i, yaw in enumerate(np.linspace(-60, 60, n)):
            f = rng.uniform(1393, 1862)
            eye = rng.uniform(25, 60)
            pp = rng.uniform(20, 35, 2) * rng.choice([-1, 1], 2)
            aim = (rng.uniform(-0.3, 0.3), rng.uniform(-0.15, 0.15))
            views.append(_view(f"studio_{i:02d}", yaw, rng.uniform(-10, 15), f * EYE_CORNER_DISTANCE_M / eye, f, size,
                               pp=pp, distortion=(-0.25, 0.08, 0.0, 0.0), aim=aim))
        return Rig(name, "studio: full HD, 25-60 px eye distance, per-camera focal, k1=-0.25, k2=0.08", views,
                   "environment", "world", 1)
    raise ValueError(f"unknown rig {name!r}; known: {', '.join(RIG_NAMES)}")


def _view_facts(scan: ScanHead, view: RigView) -> dict:
    """What a view shows: the head's yaw seen from the camera (0 = frontal, 90 = the subject's left
    profile), its elevation, and the outer-eye-corner distance in pixels (distortion included)."""
    R, t = np.asarray(view.R), np.asarray(view.t)
    d = -R.T @ t - HEAD_CENTRE
    yaw = math.degrees(math.atan2(d[0], d[2]))
    elev = math.degrees(math.atan2(d[1], math.hypot(d[0], d[2])))
    pc = scan.eye_corners @ R.T + t
    x, y = distort_normalised(pc[:, 0] / pc[:, 2], pc[:, 1] / pc[:, 2], view.distortion)
    uv = np.stack([x * view.fx + view.cx, y * view.fy + view.cy], -1)
    return {"yaw_deg": yaw, "elevation_deg": elev, "eye_distance_px": float(np.linalg.norm(uv[1] - uv[0]))}


def write_rig(scan: ScanHead, rig: Rig, folder: Path | str, supersample: int | None = None, progress=None) -> Path:
    """Render every view to ``folder/images/<name>.png`` and write ``folder/truth.json`` (cameras,
    rig, attribution, :data:`RENDER_VERSION`) and ``folder/ATTRIBUTION.txt``. Returns the images folder. A
    folder that already holds this very rig from this renderer (same truth.json, every image) is reused as it is."""
    from PIL import Image

    folder = Path(folder)
    images = folder / "images"
    truth = {"rig": rig.name, "render_version": RENDER_VERSION, "description": rig.description,
             "background": rig.background, "light": rig.light, "supersample": supersample or rig.supersample,
             "frame": "scan frame: metres, outer eye corners 9.5 cm apart, origin between them, +Y up, +Z out of "
                      "the face; OpenCV world-to-camera x_cam = R x + t",
             "head_centre": HEAD_CENTRE.tolist(), "attribution": ATTRIBUTION,
             "views": [{**asdict(v), **_view_facts(scan, v)} for v in rig.views]}
    text = json.dumps(truth, indent=1)
    truth_file = folder / "truth.json"
    if truth_file.exists() and truth_file.read_text() == text and all(
            (images / f"{v.name}.png").exists() for v in rig.views):
        return images
    images.mkdir(parents=True, exist_ok=True)
    for view in rig.views:
        Image.fromarray(render_view(scan, rig, view, supersample)).save(images / f"{view.name}.png")
        if progress is not None:
            progress()
    truth_file.write_text(text)
    (folder / "ATTRIBUTION.txt").write_text(ATTRIBUTION + "\n")
    return images


def write_calibration(rig: Rig, folder: Path | str) -> Path:
    """The rig's known intrinsics as a COLMAP text model (``cameras.txt`` one OPENCV camera per view,
    ``images.txt`` naming ``<view>.png``; poses left at the identity: only the intrinsics are read by
    ``--intrinsics.file``). Returns the folder: a calibrated capture's file, for the benchmark."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cams, imgs = ["# flame-prior scan rig calibration (intrinsics only)"], []
    for i, v in enumerate(rig.views, 1):
        params = [float(x) for x in (v.fx, v.fy, v.cx, v.cy, *v.distortion)]  # repr of a float: exact
        cams.append(f"{i} OPENCV {v.width} {v.height} " + " ".join(repr(x) for x in params))
        imgs += [f"{i} 1 0 0 0 0 0 0 {i} {v.name}.png", ""]
    (folder / "cameras.txt").write_text("\n".join(cams) + "\n")
    (folder / "images.txt").write_text("\n".join(imgs) + "\n")
    return folder


# --------------------------------------------------------------------------------------------
# Scoring


def _project_so3(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def align_rotations(R_fit: np.ndarray, R_true: np.ndarray, iters: int = 10) -> np.ndarray:
    """The rotation ``Q`` (scan frame -> FLAME frame) that best maps the true cameras onto the fitted
    ones: ``R_true_i ~= R_fit_i Q`` (since ``x_cam = R_fit (Q x_scan)``). Chordal L1 (Weiszfeld
    iterations on the per-view estimates ``R_fit_i^T R_true_i``), so that one bad view does not
    tilt every other view's error."""
    est = np.transpose(R_fit, (0, 2, 1)) @ R_true
    Q = _project_so3(est.sum(0))
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm((est - Q).reshape(len(est), -1), axis=1), 1e-9)
        Q = _project_so3((est * w[:, None, None]).sum(0))
    return Q


def align_centres(C_fit: np.ndarray, P: np.ndarray, iters: int = 50) -> tuple[float, np.ndarray]:
    """Scale ``s`` and offset ``T`` with ``C_fit_i ~= s P_i + T`` (``P``: the true centres rotated
    into the fit's frame), ``(N, 3)`` each. L1 over the views (Weiszfeld-style reweighting by the
    inverse residual, like :func:`align_rotations`): a least-squares fit lets one view whose camera
    is far off (a wrong detection: metres away) pull the scale, and so every other view's centre
    error, by tens of per cent."""
    w = np.ones(len(P))
    for _ in range(iters):
        pm, fm = (w[:, None] * P).sum(0) / w.sum(), (w[:, None] * C_fit).sum(0) / w.sum()
        Pc, Fc = P - pm, C_fit - fm
        s = float((w[:, None] * Pc * Fc).sum() / max((w[:, None] * Pc * Pc).sum(), 1e-30))
        T = fm - s * pm
        r = np.linalg.norm(s * P + T - C_fit, axis=1)
        w = 1.0 / np.maximum(r, 1e-6 * max(float(np.median(np.linalg.norm(Pc, axis=1))), 1e-12))
    return s, T


def _angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    rel = np.transpose(Ra, (0, 2, 1)) @ Rb
    return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def _camera_pairs(by_name: dict, tv: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True rotations and centres, then the fitted ones, of the truth views ``tv`` that have a camera."""
    centre = lambda c: -np.asarray(c["R"]).T @ np.asarray(c["t"])  # noqa: E731
    return (np.array([v["R"] for v in tv]), np.array([centre(v) for v in tv]),
            np.array([by_name[v["name"]]["R"] for v in tv]), np.array([centre(by_name[v["name"]]) for v in tv]))


def camera_similarity(fit_cameras: list[dict], truth: dict) -> tuple[np.ndarray, float, np.ndarray]:
    """The similarity scan -> FLAME that aligns the rig's true cameras with the fitted ones:
    ``x_flame = s Q x_scan + T``. ``Q`` by :func:`align_rotations` over the rotations, ``s, T`` by
    :func:`align_centres` over the camera centres (both robust, L1). Needs two views with a camera."""
    by_name = {c["name"]: c for c in fit_cameras}
    tv = [v for v in truth["views"] if v["name"] in by_name]
    if len(tv) < 2:
        raise ValueError(f"the similarity needs two views with a camera; {len(tv)} of the rig's have one")
    Rt, Ct, Rf, Cf = _camera_pairs(by_name, tv)
    Q = align_rotations(Rf, Rt)
    s, T = align_centres(Cf, Ct @ Q.T)
    return Q, s, T


#: The face region of the scan frame (module docstring) that :func:`score_mesh` scores: within 6.5 cm
#: of the mid-sagittal plane (the outer eye corners are at 4.75 cm), from 10.5 cm below the eyes (the
#: chin; the neck below it is not the face) to 5 cm above (the forehead under the hair line).
FACE_BOX = (0.065, -0.105, 0.05)
#: FLAME's eyeball vertices (two spheres, 546 vertices each) begin at this index: they sit behind the
#: eyelids and are no face surface.
FLAME_EYEBALLS_START = 3931


def score_mesh(vertices: np.ndarray, faces: np.ndarray, scan: ScanHead, fit_cameras: list[dict], truth: dict) -> dict:
    """The fitted head's surface against the scan: distances in mm, scan frame.

    ``vertices (V, 3)``, ``faces (F, 3)``: the fitted FLAME mesh in FLAME's frame (``FitResult.vertices``
    or ``mesh.obj``). The mesh goes to the scan frame by the inverse of :func:`camera_similarity` (the
    same similarity that scores the cameras, so a head at the wrong size or place for its cameras
    counts); then, for each FLAME vertex in the face region (:data:`FACE_BOX`, facing the camera side:
    vertex normal +Z > 0.3, eyeballs left out), its distance to the nearest point of the scan's
    surface (exact point-to-triangle, over the 16 triangles with the nearest centroids).
    Returns ``median_mm``, ``p90_mm``, ``mean_mm`` and ``vertices`` (how many were scored).
    """
    import trimesh.triangles
    from scipy.spatial import cKDTree

    Q, s, T = camera_similarity(fit_cameras, truth)
    v = ((np.asarray(vertices, np.float64) - T) / s) @ Q  # FLAME -> scan frame (Q^T applied to row vectors)
    f = np.asarray(faces, np.int64)
    normals = np.zeros_like(v)
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    for k in range(3):
        np.add.at(normals, f[:, k], cross)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    half_width, low, high = FACE_BOX
    keep = ((np.abs(v[:, 0]) <= half_width) & (v[:, 1] >= low) & (v[:, 1] <= high) & (normals[:, 2] > 0.3)
            & (np.arange(len(v)) < FLAME_EYEBALLS_START))
    tris = scan.vertices[scan.faces]  # (F, 3, 3)
    tree = cKDTree(tris.mean(1))

    def distances(points: np.ndarray) -> np.ndarray:
        _, near = tree.query(points, k=16)
        cand = trimesh.triangles.closest_point(tris[near.reshape(-1)], np.repeat(points, 16, axis=0))
        return np.linalg.norm(cand - np.repeat(points, 16, axis=0), axis=1).reshape(-1, 16).min(1)

    d = distances(v[keep])
    return {"median_mm": float(np.median(d) * 1e3), "p90_mm": float(np.percentile(d, 90) * 1e3),
            "mean_mm": float(d.mean() * 1e3), "vertices": int(keep.sum())}


def read_obj_mesh(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` and triangles ``(F, 3)`` (0-based vertex indices) of an OBJ as
    :mod:`flame_prior.export.mesh` writes it (``f v/vt ...``)."""
    verts, faces = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            faces.append([int(x.split("/")[0]) - 1 for x in line.split()[1:4]])
    return np.asarray(verts, np.float64), np.asarray(faces, np.int64)


def score_cameras(fit_cameras: list[dict], truth: dict) -> dict:
    """Camera errors of a fit against the rig it was rendered from, after one similarity transform.

    Args:
        fit_cameras: ``fit_summary.json``'s ``cameras`` (name, R, t, fx, ...), FLAME frame.
        truth: ``truth.json`` of :func:`write_rig`.

    The similarity scan -> FLAME is solved once for all views: its rotation ``Q`` by
    :func:`align_rotations` over the rotation set, then its scale ``s`` and offset ``T`` over the
    camera centres (``C_fit ~= s Q C_true + T``, L1: :func:`align_centres`). Per view: rotation error = the
    angle of ``R_fit Q`` against ``R_true``; centre error = distance of the back-mapped fitted centre
    from the true one in % of the true camera-to-head distance; focal error in %. Views of the rig
    that got no camera are listed in ``missing``.
    """
    by_name = {c["name"]: c for c in fit_cameras}
    tv = [v for v in truth["views"] if v["name"] in by_name]
    out: dict = {"views": len(truth["views"]), "fitted": len(tv),
                 "missing": [v["name"] for v in truth["views"] if v["name"] not in by_name]}
    if len(tv) < 2:
        out.update(rotation_deg={}, centre_pct={}, focal_pct={})
        return out
    Rt, Ct, Rf, Cf = _camera_pairs(by_name, tv)
    Q, s, T = camera_similarity(fit_cameras, truth)
    rot = _angle_deg(Rf @ Q, Rt)
    back = ((Cf - T) / s) @ Q  # fitted centres in the scan frame
    dist = np.linalg.norm(Ct - np.asarray(truth["head_centre"]), axis=1)
    centre = np.linalg.norm(back - Ct, axis=1) / dist * 100
    focal = np.array([abs(by_name[v["name"]]["fx"] - v["fx"]) / v["fx"] * 100 for v in tv])
    names = [v["name"] for v in tv]
    out.update(rotation_deg=dict(zip(names, rot.tolist())), centre_pct=dict(zip(names, centre.tolist())),
               focal_pct=dict(zip(names, focal.tolist())), scale=s)
    for key in ("rotation_deg", "centre_pct", "focal_pct"):
        vals = np.array(list(out[key].values()))
        out[f"{key}_median"], out[f"{key}_max"] = float(np.median(vals)), float(vals.max())
    return out


def evaluate_rig(scan: ScanHead, rig: Rig, workdir: Path | str, supersample: int | None = None,
                 known_intrinsics: bool = False, **fit_options) -> dict:
    """Render ``rig``, run the whole tool on the images (:func:`flame_prior.pipeline.run`: real
    detection, COLMAP, fit and exports) and score the cameras it wrote (:func:`score_cameras`) and, in
    ``head_mm``, the mesh it wrote against the scan (:func:`score_mesh`).

    ``fit_options`` override :class:`flame_prior.config.FitConfig` fields; nested configs as
    ``{"fitter": {"photometric_steps": 0}}``. Returns the scores plus ``seconds`` (render, tool),
    ``intrinsics_source`` and ``left_out`` (file name and reason). ``known_intrinsics``: pass the rig's
    calibration (:func:`write_calibration`) as ``--intrinsics.file``, the calibrated-capture case
    (output in ``workdir/out_calibrated``)."""
    import time
    from dataclasses import replace

    from rich.console import Console

    from flame_prior.config import FitConfig
    from flame_prior.pipeline import run

    workdir = Path(workdir)
    t0 = time.perf_counter()
    images = write_rig(scan, rig, workdir / "rig", supersample)
    t_render = time.perf_counter() - t0
    cfg = FitConfig(data=images, output_dir=workdir / ("out_calibrated" if known_intrinsics else "out"),
                    overwrite=True)
    if known_intrinsics:
        cfg.intrinsics = replace(cfg.intrinsics, file=write_calibration(rig, workdir / "calibration"))
    for key, value in fit_options.items():
        sub = getattr(cfg, key)
        setattr(cfg, key, replace(sub, **value) if isinstance(value, dict) else value)
    t0 = time.perf_counter()
    out = run(cfg, Console(stderr=True, quiet=True))
    t_tool = time.perf_counter() - t0
    summary = json.loads((out / "fit_summary.json").read_text())
    truth = json.loads((workdir / "rig" / "truth.json").read_text())
    cameras = summary["cameras"] + summary.get("cameras_without_face", [])  # both kinds are the tool's cameras
    score = score_cameras(cameras, truth)
    if score["fitted"] >= 2 and (out / "mesh.obj").exists():  # the head against the scan, in the cameras' similarity
        score["head_mm"] = score_mesh(*read_obj_mesh(out / "mesh.obj"), scan, cameras, truth)
    score["rig"] = rig.name
    score["seconds"] = {"render": t_render, "tool": t_tool}
    score["intrinsics_source"] = summary.get("intrinsics_source")
    score["left_out"] = [{"file": Path(s["file"]).name, "reason": s["reason"]} for s in summary.get("left_out", [])]
    score["eye_distance_px"] = {c["name"]: c["eye_distance_px"] for c in summary["cameras"]}
    score["flags"] = {c["name"]: c.get("flags", []) for c in cameras}
    score["without_face"] = [c["name"] for c in summary.get("cameras_without_face", [])]
    score["rotation_sigma_deg"] = {c["name"]: c.get("uncertainty", {}).get("rotation_deg") for c in summary["cameras"]}
    return score
