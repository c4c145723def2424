"""Stage 2 — face observations with the real MediaPipe models (no mocks) on the shared photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from flame_prior.detectors.mediapipe_backend import mesh_triangles
from flame_prior.errors import InputError
from flame_prior.images import InputImage, load_images
from flame_prior.detectors import DetectConfig
from flame_prior.observe import observe

from conftest import shared_path  # tests/ is on sys.path (pytest rootdir conftest)

MULTIVIEW = "data/multiview/2-346/images"
SAMPLE = ["1", "10", "20", "30"]  # turned right, frontal, turned left, frontal-ish


@pytest.fixture(scope="module")
def multiview_obs():
    images, _ = load_images(shared_path(MULTIVIEW))
    images = [im for im in images if im.name in SAMPLE]
    obs, skipped = observe(images, DetectConfig(use_cache=False), progress=False)
    return images, obs, skipped


def _hull(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    hull = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(points.astype(np.float32)).astype(np.int32).reshape(-1, 2), 1)
    return hull.astype(bool)


def _spy(monkeypatch) -> list[str]:
    from conftest import detector_call_spy

    return detector_call_spy(monkeypatch)


def test_multiview_faces_landmarks_and_masks(multiview_obs):
    images, obs, skipped = multiview_obs
    assert not skipped
    assert [o.image.name for o in obs] == [im.name for im in images]
    for o in obs:
        H, W = o.image.height, o.image.width
        assert o.detection.landmark_format == "mediapipe478"
        assert o.detection.landmarks.shape == (478, 2) and o.detection.landmarks.dtype == np.float32
        assert o.detection.confidence.shape == (478,) and o.detection.confidence.min() >= 0 and o.detection.confidence.max() <= 1
        x, y = o.detection.landmarks[:, 0], o.detection.landmarks[:, 1]
        assert (x > 0).all() and (x < W).all() and (y > 0).all() and (y < H).all()
        x0, y0, x1, y1 = o.detection.face_box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H and x1 - x0 > 300

        m = o.detection.mask
        assert m.shape == (H, W) and m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
        hull = _hull(o.detection.landmarks[:468], (H, W))
        assert (m[hull] > 0.5).mean() > 0.99, "the mask covers the face"
        assert m[int(0.8 * H):].max() < 0.01, "torso/shirt (bottom rows) excluded"
        chin_y = o.detection.landmarks[152, 1]
        assert m[int(chin_y + 0.15 * (y1 - y0)):].max() < 0.01, "neck below the chin excluded"
        for corner in (m[:40, :40], m[:40, -40:]):
            assert corner.max() < 0.01, "background excluded"
        hair = m[: int(y0), int(x0):int(x1)]
        assert (hair > 0.5).sum() > 0.2 * hair.size, "hair above the face is in the mask"


def test_confidence_low_on_the_far_side(multiview_obs):
    _, obs, _ = multiview_obs
    by = {o.image.name: o for o in obs}
    turned = by["1"]
    low = turned.detection.confidence[:468] < 0.2
    assert low.sum() >= 10
    centre_x = turned.detection.landmarks[:468, 0].mean()
    nose_side = np.sign(turned.detection.landmarks[1, 0] - centre_x)  # the nose points to the far side
    assert np.sign(np.median(turned.detection.landmarks[:468][low, 0]) - centre_x) == nose_side
    assert turned.detection.confidence[1] == 1.0
    frontal = by["10"]
    assert frontal.detection.confidence.mean() > 0.85
    assert turned.detection.confidence.mean() < frontal.detection.confidence.mean()


def test_mesh_triangles_match_the_canonical_mesh_closely(shared):
    obj = shared("mediapipe/canonical_face_model.obj")
    faces = {
        tuple(sorted(int(t.split("/")[0]) - 1 for t in line.split()[1:]))
        for line in obj.read_text().splitlines()
        if line.startswith("f ")
    }
    tris = mesh_triangles()
    assert tris.shape[1] == 3 and tris.max() == 467
    # The tessellation's 3-cliques: a triangulation of the same surface (some quads split the other way).
    assert 0.9 * len(faces) < len(tris) < 1.1 * len(faces)
    assert len(set(map(tuple, tris.tolist())) & faces) > 0.45 * len(faces)


def test_ffhq_landmarks_against_fan_reference(shared):
    img = shared("data/singleview/ffhq/00000.png")
    ref = np.load(shared("data/singleview/ffhq/00000_lmk68.npy"))
    skin = np.load(shared("data/singleview/ffhq/00000_skinmask.npy"))
    skin = skin / skin.max()  # stored as 0..15, not the [0, 1] the shared README states
    (image,), _ = load_images(img)
    (o,), skipped = observe([image], DetectConfig(use_cache=False), progress=False)
    assert not skipped
    # MediaPipe ↔ iBUG 68: eye outer corners 33/263 ↔ 36/45, mouth corners 61/291 ↔ 48/54.
    # Measured on 00000: 1.0, 0.6, 1.7, 0.7 px (inter-ocular distance 91 px).
    for mp_i, ib_i in [(33, 36), (263, 45), (61, 48), (291, 54)]:
        assert np.linalg.norm(o.detection.landmarks[mp_i] - ref[ib_i]) < 3.0, (mp_i, ib_i)
    # Nose tip: MediaPipe 4 matches iBUG 30 (3.9 px); MediaPipe 1 (pronasale) sits ~9 px lower.
    assert np.linalg.norm(o.detection.landmarks[4] - ref[30]) < 6.0
    # A skin mask is not a head mask (IoU meaningless); the skin must lie inside the head.
    inside = (skin * (o.detection.mask > 0.5)).sum() / skin.sum()
    assert inside > 0.98  # measured 0.999


def test_no_face_and_too_small_are_skipped_with_reasons(tmp_path):
    grad = np.tile(np.linspace(0, 255, 320, dtype=np.float32)[None, :, None], (240, 1, 3)).astype(np.uint8)
    Image.fromarray(grad).save(tmp_path / "gradient.png")
    face = shared_path("data/singleview/ffhq/00001.png")
    (tmp_path / "face.png").write_bytes(face.read_bytes())
    images, _ = load_images(tmp_path)
    obs, skipped = observe(images, DetectConfig(use_cache=False, min_face_px=10_000), progress=False)
    assert obs == []
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons["gradient.png"] == "no face found"
    assert reasons["face.png"].startswith("face too small (") and "min_face_px" in reasons["face.png"]


def test_two_faces_take_the_largest(tmp_path):
    a = np.asarray(Image.open(shared_path(f"{MULTIVIEW}/10.jpg")).convert("RGB"))
    b = np.asarray(Image.open(shared_path(f"{MULTIVIEW}/25.jpg")).convert("RGB"))
    canvas = np.full((1000, 1400, 3), 20, np.uint8)
    canvas[:, :800] = a[150:1150, 120:920]
    canvas[200:800, 880:1360] = cv2.resize(b[150:1150, 120:920], (480, 600), interpolation=cv2.INTER_AREA)
    Image.fromarray(canvas).save(tmp_path / "two.png")
    images, _ = load_images(tmp_path)
    (o,), skipped = observe(images, DetectConfig(use_cache=False), progress=False)
    assert not skipped
    assert "2 faces, took the largest" in o.notes
    assert o.detection.face_box[2] < 800, "the large face on the left"
    assert o.detection.mask[:, 850:].max() < 0.01, "the other person is not in the head mask"


def test_cache_skips_detection_and_follows_content(tmp_path, monkeypatch):
    src = shared_path("data/singleview/ffhq")
    for k in ("00000", "00002"):
        (tmp_path / "in" / f"{k}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"{k}.png").write_bytes((src / f"{k}.png").read_bytes())
    images, _ = load_images(tmp_path / "in")
    config = DetectConfig(cache_dir=tmp_path / "cache")
    calls = _spy(monkeypatch)

    first, _ = observe(images, config, progress=False)
    assert calls == ["00000", "00002"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert not list((tmp_path / "cache").glob("*.tmp"))

    calls.clear()
    from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

    opened = []
    with monkeypatch.context() as m:
        m.setattr(MediaPipeDetector, "__init__", lambda self, *a, **k: opened.append(1))
        second, _ = observe(images, config, progress=False)
    assert calls == [], "second run reads the cache"
    assert opened == [], "every detection cached: the backend (MediaPipe's graphs) is never opened"
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.detection.landmarks, b.detection.landmarks)
        np.testing.assert_array_equal(a.detection.confidence, b.detection.confidence)
        np.testing.assert_array_equal(a.detection.mask, b.detection.mask)
        assert a.detection.face_box == b.detection.face_box and a.detection.landmark_format == b.detection.landmark_format

    # Changed content (new bytes → new sha256) is detected again.
    changed = images[0].pixels.copy()
    changed[:8] = 0
    Image.fromarray(changed).save(tmp_path / "in" / "00000.png")
    images2, _ = load_images(tmp_path / "in")
    assert images2[0].sha256 != images[0].sha256
    calls.clear()
    observe(images2, config, progress=False)
    assert calls == ["00000"]

    # A corrupt cache file is ignored, recomputed (with a note) and rewritten.
    for f in (tmp_path / "cache").glob(f"{images[1].sha256}-*.npz"):
        f.write_bytes(b"not a zip")
    calls.clear()
    third, _ = observe(images, config, progress=False)
    assert calls == ["00002"]
    assert any("unreadable" in n for n in third[1].notes)
    np.testing.assert_array_equal(third[1].detection.landmarks, first[1].detection.landmarks)
    calls.clear()
    observe(images, config, progress=False)
    assert calls == []

    # use_cache=False always detects.
    calls.clear()
    observe(images[:1], DetectConfig(cache_dir=tmp_path / "cache", use_cache=False), progress=False)
    assert calls == ["00000"]


def test_no_face_is_cached_too(tmp_path, monkeypatch):
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "flat.png")
    images, _ = load_images(tmp_path / "flat.png")
    calls = _spy(monkeypatch)
    config = DetectConfig(cache_dir=tmp_path / "cache")
    for _ in range(2):
        obs, skipped = observe(images, config)  # default: its own rich progress bar on stderr
        assert obs == [] and skipped[0].reason == "no face found"
    assert calls == ["flat"]


def test_files_backend(tmp_path):
    src = shared_path("data/singleview/ffhq")
    (tmp_path / "img").mkdir()
    (tmp_path / "lmk").mkdir()
    for k in ("00000", "00001"):
        (tmp_path / "img" / f"{k}.png").write_bytes((src / f"{k}.png").read_bytes())
    ref0 = np.load(src / "00000_lmk68.npy")
    np.save(tmp_path / "lmk" / "00000.npy", ref0)
    skin = np.load(src / "00000_skinmask.npy")
    skin = skin / skin.max()  # stored as 0..15, not the [0, 1] the shared README states
    skin8 = np.round(skin * 255).astype(np.uint8)
    Image.fromarray(skin8).save(tmp_path / "lmk" / "00000_mask.png")
    ref1 = np.load(src / "00001_lmk68.npy")
    np.savetxt(tmp_path / "lmk" / "00001.txt", ref1, delimiter=",")
    images, _ = load_images(tmp_path / "img")
    config = DetectConfig(backend="files", landmark_dir=tmp_path / "lmk")

    obs, skipped = observe(images, config, progress=False)
    assert not skipped and [o.detection.landmark_format for o in obs] == ["ibug68", "ibug68"]
    np.testing.assert_allclose(obs[0].detection.landmarks, ref0, atol=1e-4)
    np.testing.assert_allclose(obs[1].detection.landmarks, ref1, atol=1e-4)
    np.testing.assert_array_equal(obs[0].detection.mask, skin8.astype(np.float32) / np.float32(255))
    assert "no mask file" in " ".join(obs[1].notes)
    hull = _hull(ref1, obs[1].detection.mask.shape)
    assert (obs[1].detection.mask[hull] > 0.5).mean() > 0.99 and obs[1].detection.mask[:20, :20].max() < 0.5

    (tmp_path / "lmk" / "00001.txt").unlink()
    with pytest.raises(InputError, match="00001"):
        observe(images, config, progress=False)
    np.save(tmp_path / "lmk" / "00001.npy", np.zeros((5, 2)))
    with pytest.raises(InputError, match=r"\(5, 2\)"):
        observe(images, config, progress=False)
    with pytest.raises(InputError, match="landmark_dir"):
        observe(images, DetectConfig(backend="files"), progress=False)


@pytest.mark.skipif(importlib.util.find_spec("face_alignment") is not None, reason="face_alignment is installed")
def test_fan_backend_without_package_says_how_to_get_it():
    image = InputImage(Path("x.png"), "x", np.zeros((8, 8, 3), np.uint8), "0" * 64)
    with pytest.raises(InputError, match="face_alignment") as err:
        observe([image], DetectConfig(backend="fan", use_cache=False), progress=False)
    assert "pip install face-alignment" in str(err.value) and "mediapipe" in str(err.value)


def test_detect_config_is_tyro_friendly(tmp_path):
    tyro = pytest.importorskip("tyro")
    cfg = tyro.cli(DetectConfig, args=["--backend", "files", "--landmark-dir", str(tmp_path), "--min-face-px", "64"])
    assert cfg.backend == "files" and cfg.landmark_dir == tmp_path and cfg.min_face_px == 64 and cfg.use_cache
    with pytest.raises(SystemExit):
        tyro.cli(DetectConfig, args=["--backend", "dlib"])
