"""The report's alignment check shows a wrong camera: on a synthetic FLAME head (the demo's scene), the
drawn silhouette lies on the photo's head outline for the true camera and off it for a camera turned by 3°;
feature lines (eyes, lips, nose, jaw) exist for FLAME's topology."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from flame_prior.demo import DemoConfig, demo_assets, render_scene
from flame_prior.export.alignment import SILHOUETTE, alignment_overlay, feature_lines
from flame_prior.fit import FitResult
from flame_prior.geometry import axis_angle_to_rotation_matrix


def _scene():
    cfg = DemoConfig(views=3, image_size=160, noise_px=0.0)
    data, model, embedding, texture_space = demo_assets(0, torch.device("cpu"))
    scene = render_scene(model, embedding, texture_space, cfg, np.random.default_rng(0))
    from flame_prior.flame import FlameParams

    p = FlameParams.zeros(1, model.n_shape, model.n_expr)
    p.shape = torch.as_tensor(scene.params["shape"])[None]
    p.expression = torch.as_tensor(scene.params["expression"])[None]
    p.jaw_pose = torch.as_tensor(scene.params["jaw_pose"])[None]
    verts = model(p).vertices[0].double().numpy()
    return scene, verts, data.faces


def _result(cams, verts, faces) -> FitResult:
    return FitResult(cameras=cams, flame={}, vertices=verts, faces=np.asarray(faces, np.int64), uvs=np.zeros((1, 2)),
                     uv_faces=np.zeros((len(faces), 3), np.int64), texture=np.zeros((1, 1, 3)), texture_coeffs=None,
                     lighting=np.zeros((len(cams), 9, 3)), views=[], stages=[], intrinsics_source="given")


def _outline(mask: np.ndarray) -> np.ndarray:
    b = mask >= 0.5
    inner = b.copy()
    inner[1:] &= b[:-1]; inner[:-1] &= b[1:]; inner[:, 1:] &= b[:, :-1]; inner[:, :-1] &= b[:, 1:]  # noqa: E702
    return b & ~inner


def _silhouette_distance(overlay: Image.Image, mask: np.ndarray) -> float:
    """90th percentile of the distance (pixels) from the drawn silhouette to the photo's head outline (a shifted
    outline stays close where it runs along the shift, so the median says little)."""
    import cv2

    drawn = np.all(np.asarray(overlay) == SILHOUETTE, axis=-1)
    edge = _outline(np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize(overlay.size)) / 255.0)
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    return float(np.percentile(dist[drawn], 90))


def test_silhouette_reveals_a_turned_camera():
    scene, verts, faces = _scene()
    cams = scene.cameras
    turn = axis_angle_to_rotation_matrix(torch.tensor([[0.0, np.deg2rad(3.0), 0.0]], dtype=torch.float64))
    # The camera turned about its own centre: x_cam' = turn (R x + t).
    wrong = dataclasses.replace(cams, R=turn @ cams.R, t=(turn @ cams.t[..., None])[..., 0])
    for i in range(len(cams)):
        view = scene.views[i]
        s = 2.0
        good = alignment_overlay(view.image.pixels, _result(cams, verts, faces), i, s)
        bad = alignment_overlay(view.image.pixels, _result(wrong, verts, faces), i, s)
        assert good.size == (2 * view.image.width, 2 * view.image.height)
        d_good, d_bad = _silhouette_distance(good, view.detection.mask), _silhouette_distance(bad, view.detection.mask)
        assert d_good <= 2.0, (i, d_good)
        assert d_bad > 4 * max(d_good, 2.0), (i, d_good, d_bad)


def test_feature_lines_on_flame_topology_only():
    scene, verts, faces = _scene()
    pts, segs = feature_lines(verts, faces)
    assert len(segs) > 100 and pts.shape[1] == 3 and segs.max() < len(pts)
    # On the face: every point lies within the head's bounding box.
    assert (pts.min(0) >= verts.min(0) - 1e-6).all() and (pts.max(0) <= verts.max(0) + 1e-6).all()
    _, none = feature_lines(verts[:10], np.array([[0, 1, 2]]))
    assert len(none) == 0
