"""Issue 12 item 3: a radial lens estimated by COLMAP where the tracks allow (a rigid scene), handed to
the fit like a calibration's lens, and the guard that drops an implausible or useless one.

The scene is synthetic but not FLAME's: the inside of a box room with multi-scale noise on its walls,
ray-cast through a lens with a known ``k1`` (every pixel's ray from :func:`undistort_normalised`), seen
by six cameras moving in front of the far wall. Real pycolmap throughout. From ``Intrinsics.distortion``
on, the lens takes the calibration file's path (fit in the ideal pinhole view, transforms.json OPENCV):
that path is tested in test_lens_round_trip.py.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from flame_prior.detectors import Detection
from flame_prior.distortion import undistort_normalised
from flame_prior.images import InputImage
from flame_prior.intrinsics import IntrinsicsConfig, _radial_lens_problem, estimate_intrinsics
from flame_prior.observe import ViewObservation

W, H, F = 320, 240, 240.0  # the room's cameras: principal point at the centre
HALF = np.array([2.0, 1.5, 2.0])  # the room: |x| <= 2, |y| <= 1.5, |z| <= 2 (metres)


def _wall_textures(seed: int = 0, size: int = 512) -> list[np.ndarray]:
    """Six ``(size, size)`` float32 grey textures: noise summed over octaves (SIFT finds corners at every scale)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(6):
        tex = sum(cv2.resize(rng.random((s, s)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
                  / s ** 0.5 for s in (4, 8, 16, 32, 64, 128))
        out.append((255 * (tex - tex.min()) / (tex.max() - tex.min())).astype(np.float32))
    return out


def _render_room(textures, R: np.ndarray, C: np.ndarray, rays: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 view of the room from centre ``C`` with world-to-camera rotation ``R``;
    ``rays``: ``(H, W, 3)`` camera-frame ray of every pixel centre (the lens already undone)."""
    d = rays @ R  # world directions, R^T d
    t_best = np.full((H, W), np.inf)
    grey = np.zeros((H, W), np.float32)
    for axis in range(3):
        a, b = [k for k in range(3) if k != axis]
        for side, wall in ((1.0, 2 * axis), (-1.0, 2 * axis + 1)):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (side * HALF[axis] - C[axis]) / d[..., axis]
            t = np.where(t > 0, t, np.inf)
            p = C + np.where(np.isfinite(t), t, 0.0)[..., None] * d
            u = ((p[..., a] / HALF[a] + 1) / 2 * 511).astype(np.float32)
            v = ((p[..., b] / HALF[b] + 1) / 2 * 511).astype(np.float32)
            sample = cv2.remap(textures[wall], u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            nearer = t < t_best
            grey, t_best = np.where(nearer, sample, grey), np.where(nearer, t, t_best)
    return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, -1)


def _room_views(k1: float, n: int = 6) -> list[ViewObservation]:
    """``n`` views of the room through a lens ``(k1, 0, 0, 0, 0)``; an all-image dummy head mask (a rigid
    scene's COLMAP ignores it)."""
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    xy, ok = undistort_normalised(np.stack([(jj - W / 2) / F, (ii - H / 2) / F], -1), np.array([k1, 0, 0, 0, 0]))
    assert ok.all()  # the lens is invertible over the whole frame
    rays = np.concatenate([xy, np.ones_like(xy[..., :1])], -1)
    textures = _wall_textures()
    views = []
    for i, angle in enumerate(np.linspace(-0.5, 0.5, n)):
        C = np.array([np.sin(angle), 0.1 * i - 0.25, -1.9 + 0.3 * np.cos(angle)])
        z = np.array([0.0, 0.0, 1.0]) - C
        z /= np.linalg.norm(z)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])
        image = InputImage(path=Path(f"room{i}.png"), name=f"room{i}", pixels=_render_room(textures, R, C, rays),
                           sha256=f"room-k1={k1}-{i}")
        views.append(ViewObservation(image, Detection(np.zeros((0, 2), np.float32), np.zeros(0, np.float32),
                                                      "mediapipe478", np.ones((H, W), np.float32),
                                                      (0.0, 0.0, float(W), float(H)))))
    return views


def test_rigid_scene_lens_reaches_the_intrinsics(tmp_path):
    """k1 = -0.12: COLMAP's RADIAL camera recovers it (and the focal within 2 %); it becomes
    ``Intrinsics.distortion`` of every view, survives the cache, and a note says so. Without the lens
    (``colmap_lens="none"``, SIMPLE_PINHOLE) the focal absorbs it and is more than 5 % off."""
    views = _room_views(-0.12)
    config = IntrinsicsConfig(scene_kind="rigid-scene", cache_dir=tmp_path / "colmap")
    intr = estimate_intrinsics(views, config)
    assert intr.source == "colmap" and intr.colmap["registered"] == len(views), intr.notes
    assert intr.distortion is not None and intr.distortion.shape == (len(views), 5), intr.notes
    np.testing.assert_allclose(intr.distortion[:, 0], -0.12, atol=0.02)
    assert np.all(intr.distortion[:, 2:] == 0.0)  # RADIAL: no tangential terms, no k3
    assert np.all(np.abs(intr.fx / F - 1.0) < 0.02), intr.fx
    assert any("estimated a radial lens" in n for n in intr.notes), intr.notes
    assert intr.colmap["lens"]["kept"] and intr.colmap["lens"]["error_lens_px"] < intr.colmap["lens"][
        "error_pinhole_px"]

    again = estimate_intrinsics(views, config)  # from the cache: the lens is part of the cached result
    assert any("reused from the cache" in n for n in again.notes), again.notes
    np.testing.assert_array_equal(again.distortion, intr.distortion)

    pinhole = estimate_intrinsics(views, IntrinsicsConfig(scene_kind="rigid-scene", colmap_lens="none",
                                                          cache_dir=tmp_path / "colmap"))
    assert pinhole.distortion is None and pinhole.source == "colmap", pinhole.notes
    assert np.all(np.abs(pinhole.fx / F - 1.0) > 0.05), pinhole.fx


def test_turning_head_keeps_the_pinhole():
    """colmap_lens="auto" estimates no lens for a turning head (its tracks lie on the head alone)."""
    from flame_prior.intrinsics import _estimates_lens

    config = IntrinsicsConfig()
    assert config.colmap_lens == "auto"
    assert not _estimates_lens(config, "turning-head", None)
    assert _estimates_lens(config, "rigid-scene", None)
    assert _estimates_lens(IntrinsicsConfig(colmap_lens="radial"), "turning-head", None)
    assert not _estimates_lens(IntrinsicsConfig(colmap_lens="none"), "rigid-scene", None)


@pytest.mark.parametrize("k1, k2, plausible", [(-0.25, 0.0, True), (0.1, 0.02, True), (-0.9, 0.0, False),
                                               (0.0, 2.0, False), (-0.5, 0.0, False)])
def test_implausible_lens_is_refused(k1, k2, plausible):
    """A lens beyond the bounds, or one that folds the image back before its corners (-0.5 at a corner
    radius of 0.83: the radius stops growing at 0.82), is not a plausible estimate."""
    import pycolmap

    camera = pycolmap.Camera(model="RADIAL", width=W, height=H, params=[F, W / 2, H / 2, k1, k2])
    assert (_radial_lens_problem(camera) is None) == plausible


def test_no_lens_is_dropped(tmp_path):
    """A pinhole room: COLMAP's RADIAL camera finds a tiny k1 that explains nothing; the guard drops it with a
    note, the views stay pinhole (no distortion reaches the fit) and the focal is right."""
    intr = estimate_intrinsics(_room_views(0.0), IntrinsicsConfig(scene_kind="rigid-scene",
                                                                  cache_dir=tmp_path / "colmap"))
    assert intr.source == "colmap" and intr.distortion is None, intr.notes
    assert not intr.colmap["lens"]["kept"]
    assert any("radial lens" in n and "dropped" in n for n in intr.notes), intr.notes
    assert np.all(np.abs(intr.fx / F - 1.0) < 0.02), intr.fx
