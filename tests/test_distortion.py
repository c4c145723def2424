"""Lens distortion (flame_prior.distortion) against OpenCV's own functions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from flame_prior.detectors import Detection
from flame_prior.distortion import (
    distort_pixels,
    has_distortion,
    ideal_pinhole_view,
    undistort_image,
    undistort_pixels,
)
from flame_prior.errors import InputError
from flame_prior.images import InputImage
from flame_prior.observe import ViewObservation

K = (900.0, 880.0, 610.0, 330.0)  # fx, fy, cx, cy of a 1280x720 photo, principal point off centre
LENSES = [(-0.25, 0.08, 0.0, 0.0, 0.0), (-0.1, 0.02, 0.001, -0.002, 0.005), (0.05, 0.0, 0.0, 0.0, 0.0)]


def _points(rng, n=200) -> np.ndarray:
    return np.column_stack([rng.uniform(-0.5, 0.5, n), rng.uniform(-0.3, 0.3, n), rng.uniform(1.0, 2.0, n)])


@pytest.mark.parametrize("dist", LENSES)
def test_convention_distortion_is_opencvs(dist):
    """distort_pixels of the pinhole projection == cv2.projectPoints with the same (k1, k2, p1, p2, k3)."""
    fx, fy, cx, cy = K
    X = _points(np.random.default_rng(0))
    cam = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    cv, _ = cv2.projectPoints(X, np.zeros(3), np.zeros(3), cam, np.asarray(dist))
    pin = np.column_stack([fx * X[:, 0] / X[:, 2] + cx, fy * X[:, 1] / X[:, 2] + cy])
    np.testing.assert_allclose(distort_pixels(pin, *K, np.asarray(dist)), cv[:, 0], atol=1e-9)


@pytest.mark.parametrize("dist", LENSES)
def test_undistort_pixels_inverts(dist):
    fx, fy, cx, cy = K
    rng = np.random.default_rng(1)
    uv = np.column_stack([rng.uniform(0, 1280, 300), rng.uniform(0, 720, 300)])
    back = distort_pixels(undistort_pixels(uv, *K, np.asarray(dist)), *K, np.asarray(dist))
    np.testing.assert_allclose(back, uv, atol=1e-6)
    # OpenCV's iterative inverse agrees (to its own tolerance).
    cam = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    ocv = cv2.undistortPointsIter(uv[:, None], cam, np.asarray(dist), None, cam, crit)[:, 0]
    np.testing.assert_allclose(undistort_pixels(uv, *K, np.asarray(dist)), ocv, atol=1e-3)


def test_a_lens_that_folds_back_is_refused():
    with pytest.raises(ValueError, match="cannot be inverted"):
        undistort_pixels(np.array([[1280.0, 720.0]]), *K, np.array([-0.6, 0.0, 0.0, 0.0, 0.0]))


def test_undistort_image_matches_the_ideal_view():
    """A smooth pattern known in ideal coordinates, photographed through the lens, comes back."""
    fx, fy, cx, cy = K
    dist = np.asarray(LENSES[0])
    h, w = 720, 1280
    pattern = lambda uv: 127.5 + 120 * np.sin(uv[..., 0] / 23.0) * np.cos(uv[..., 1] / 17.0)  # noqa: E731
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    photo_px = np.stack([jj, ii], -1)
    photo = pattern(undistort_pixels(photo_px.reshape(-1, 2), *K, dist).reshape(h, w, 2)).astype(np.float32)
    ideal = undistort_image(photo, fx, fy, cx, cy, dist)
    truth = pattern(photo_px)
    inner = (slice(40, h - 40), slice(60, w - 60))  # the corners of the ideal view see past the photo's edge
    err = np.abs(ideal[inner] - truth[inner])
    assert np.median(err) < 1.0 and err.max() < 12.0, (np.median(err), err.max())
    # Without undoing the lens the same comparison is far off: the test can fail.
    assert np.median(np.abs(photo[inner] - truth[inner])) > 20.0


def test_ideal_pinhole_view():
    fx, fy, cx, cy = K
    dist = np.asarray(LENSES[0])
    lm = np.array([[200.0, 100.0], [1100.0, 600.0], [640.0, 360.0]], np.float32)
    mask = np.zeros((720, 1280), np.float32)
    mask[80:120, 180:220] = 1.0
    img = InputImage(Path("a.png"), "a", np.zeros((720, 1280, 3), np.uint8), "0")
    view = ViewObservation(img, Detection(lm, np.ones(3, np.float32), "ibug68", mask, (200.0, 100.0, 1100.0, 600.0)))
    ideal = ideal_pinhole_view(view, fx, fy, cx, cy, dist)
    np.testing.assert_allclose(ideal.detection.landmarks, undistort_pixels(lm, *K, dist), atol=1e-3)
    assert ideal.image.pixels.shape == (720, 1280, 3) and ideal.detection.mask.dtype == np.float32
    # The mask's blob moves with the landmark it surrounds (barrel lens: outwards in the ideal view).
    ys, xs = np.nonzero(ideal.detection.mask > 0.5)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    assert np.linalg.norm(centre - undistort_pixels(np.array([[200.0, 100.0]]), *K, dist)[0]) < 2.0
    assert ideal_pinhole_view(view, fx, fy, cx, cy, np.zeros(5)) is view and not has_distortion(np.zeros((3, 5)))
    with pytest.raises(InputError, match="cannot be undone"):
        ideal_pinhole_view(view, fx, fy, cx, cy, np.array([-0.9, 0.0, 0.0, 0.0, 0.0]))


def test_second_detection_pass_maps_back_to_the_photo(tmp_path):
    """observe_through_lens (real MediaPipe): a real face seen through a strong lens, detected on the
    ideal image, lands on the photo where the lens puts the face the first pass finds on the ideal photo."""
    from conftest import shared_path
    from PIL import Image

    from flame_prior.detectors import DetectConfig
    from flame_prior.lens_detection import ideal_to_photo_image, observe_through_lens
    from flame_prior.observe import observe

    ideal = np.asarray(Image.open(shared_path("data/multiview/2-346/images/1.jpg")).convert("RGB"))
    h, w = ideal.shape[:2]
    f, cx, cy = 0.9 * w, w / 2 + 0.25 * w, h / 2 - 0.2 * h  # principal point far from the face
    dist = np.array([-0.25, 0.08, 0.0, 0.0, 0.0])
    photo = ideal_to_photo_image(ideal, f, f, cx, cy, dist)
    cfg = DetectConfig(cache_dir=tmp_path / "det")
    im = lambda px, name: InputImage(Path(f"{name}.png"), name, px, name)  # noqa: E731
    (on_ideal,), _ = observe([im(ideal, "ideal")], cfg, progress=False)
    (second,) = observe_through_lens([im(photo, "photo")], np.array([f]), np.array([f]), np.array([cx]),
                                     np.array([cy]), dist[None], cfg)
    assert second.image.pixels is photo and second.detection.mask.shape == (h, w)
    expected = distort_pixels(on_ideal.detection.landmarks, f, f, cx, cy, dist)
    err = np.linalg.norm(second.detection.landmarks - expected, axis=1)
    assert np.median(err) < 2.0, np.median(err)
    assert "second detection pass" in second.notes[-1]
    # The mask came back to the photo's grid: it covers the photo's landmarks.
    lm = np.round(second.detection.landmarks - 0.5).astype(int)
    inside = (lm[:, 0] >= 0) & (lm[:, 0] < w) & (lm[:, 1] >= 0) & (lm[:, 1] < h)
    assert second.detection.mask[lm[inside, 1], lm[inside, 0]].mean() > 0.9
