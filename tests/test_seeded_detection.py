"""The seeded second detection pass (flame_prior.detectors.seeded, run by observe()): the Face Mesh
mirror table, landmarks of the mirror image mapped back, a rendered -60° side view the detector
misses and the seeded pass finds, and a photo without a face that stays without one. Real
MediaPipe throughout (its landmark model run on regions by flame_prior.detectors.roi_landmarker)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from flame_prior.detectors import DetectConfig
from flame_prior.detectors.seeded import build_face_mesh_mirror, face_mesh_mirror, mirror_points
from flame_prior.images import load_images
from flame_prior.observe import NO_FACE, observe


def test_mirror_table_is_the_canonical_models_symmetry():
    """The shipped table is what the canonical face model's x -> -x symmetry gives (a real pairing:
    an involution with the eye corners 33 <-> 263 and the nose tip 1 on the midline)."""
    from flame_prior.embedding_builder import load_canonical_face_model

    vertices, _ = load_canonical_face_model(shared_path("mediapipe/canonical_face_model.obj"))
    m = face_mesh_mirror()
    np.testing.assert_array_equal(m, build_face_mesh_mirror(vertices))
    np.testing.assert_array_equal(m[m], np.arange(478))
    assert m[33] == 263 and m[234] == 454 and m[1] == 1 and m[468] == 473
    with pytest.raises(ValueError, match="canonical"):
        build_face_mesh_mirror(vertices + np.array([0.5, 0.0, 0.0]))  # off-centre: no longer pairs up


def test_landmarks_of_the_mirror_image_map_back():
    """Face Mesh on an FFHQ photo and on its mirror image: the mirror image's landmarks, mirrored back
    (x -> W - x, renumbered), are the photo's own (measured median 0.9 px at 92 px between the eye
    corners, 1 %; bound 3 %). Without the renumbering they are far off (the property can fail)."""
    from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

    img = np.asarray(Image.open(shared_path("data/singleview/ffhq/00000.png")).convert("RGB"))
    with MediaPipeDetector() as det:
        a = det.detect_pixels(img).landmarks
        b = det.detect_pixels(np.ascontiguousarray(img[:, ::-1])).landmarks
    eye = np.linalg.norm(a[33] - a[263])
    back = mirror_points(b, img.shape[1])
    assert np.median(np.linalg.norm(back - a, axis=1)) < 0.03 * eye
    assert np.linalg.norm(back[468:] - a[468:], axis=1).max() < 0.05 * eye  # the irises too
    unnumbered = b.astype(np.float64) * [-1, 1] + [img.shape[1], 0]
    assert np.median(np.linalg.norm(unnumbered - a, axis=1)) > 0.2 * eye


def test_no_face_gets_no_seeded_face(tmp_path):
    """A photo without a face beside one with a face (same size, so the face seeds a search there):
    the seeded pass finds nothing and it stays 'no face found'; the face itself is the detector's."""
    face = shared_path("data/singleview/ffhq/00000.png")
    (tmp_path / "a_face.png").write_bytes(face.read_bytes())
    rng = np.random.default_rng(0)
    noise = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).resize((256, 256), Image.BICUBIC).save(tmp_path / "b_noise.png")
    images, _ = load_images(tmp_path)
    obs, skipped = observe(images, DetectConfig(cache_dir=tmp_path / "cache"), progress=False)
    assert [o.image.name for o in obs] == ["a_face"] and obs[0].detection.provenance == "detector"
    assert [(s.path.name, s.reason) for s in skipped] == [("b_noise.png", NO_FACE)]
    assert list((tmp_path / "cache").glob("*-mediapipe-seeded-*.npz")), "the seeded search was run (and cached)"


@pytest.mark.slow
def test_seeded_pass_finds_the_side_view_the_detector_misses(tmp_path):
    """Issue 12's turning-head rig: its -60° view (73 px between the eye corners, the rig's render)
    has no face for the detector (its region makes the landmark model reject the face); with the
    -49° view beside it the seeded pass finds it, marked as seeded, cached, and it is this face: the
    scan's eye corners, projected by the rig's camera, inside the face's landmark box, and their
    midpoint within half an eye distance of the detected one (measured 22 px at 73 px; the detected
    corners are 102 px apart: the landmarks' yaw bias at 60°, which the multi-view stage absorbs: the
    benchmark's camera for this view is 0.23° off). Two renders, ~40 s."""
    from flame_prior import scan_rigs as S

    scan = S.load_scan(shared_path(S.SCAN_RELATIVE_PATH))
    rig = S.make_rig("turning_head")
    side, seed = rig.views[0], rig.views[1]
    facts = S._view_facts(scan, side)
    assert abs(facts["yaw_deg"] + 60) < 1
    Image.fromarray(S.render_view(scan, rig, side)).save(tmp_path / "turn_00.png")
    Image.fromarray(S.render_view(scan, rig, seed, supersample=1)).save(tmp_path / "turn_01.png")
    images, _ = load_images(tmp_path)
    cache = tmp_path / "cache"

    obs, skipped = observe(images, DetectConfig(cache_dir=cache, seeded=False), progress=False)
    assert [(s.path.name, s.reason) for s in skipped] == [("turn_00.png", NO_FACE)]

    obs, skipped = observe(images, DetectConfig(cache_dir=cache), progress=False)
    assert not skipped and [o.image.name for o in obs] == ["turn_00", "turn_01"]
    found = obs[0]
    assert found.detection.provenance == "seeded" and obs[1].detection.provenance == "detector"
    assert any(n.startswith("seeded detection") and "turn_01" in n for n in found.notes), found.notes
    R, t = np.asarray(side.R), np.asarray(side.t)
    pc = scan.eye_corners @ R.T + t
    truth = np.stack([pc[:, 0] / pc[:, 2] * side.fx + side.cx, pc[:, 1] / pc[:, 2] * side.fy + side.cy], -1)
    got = found.detection.landmarks[[33, 263]]
    eye = facts["eye_distance_px"]
    x0, y0, x1, y1 = found.detection.face_box
    assert ((truth >= [x0, y0]) & (truth <= [x1, y1])).all(), (truth, found.detection.face_box)
    assert np.linalg.norm(got.mean(0) - truth.mean(0)) < 0.5 * eye, (got, truth)

    again, _ = observe(images, DetectConfig(cache_dir=cache), progress=False)  # from the cache
    assert again[0].detection.provenance == "seeded"
    np.testing.assert_array_equal(again[0].detection.landmarks, found.detection.landmarks)


def test_seeded_views_are_named_in_the_summary_and_report(tmp_path):
    """fit_summary.json's ``seeded_detections`` and the report's section list the seeded views (and
    only those) with their note; the cache keeps the provenance, and a file written before it existed
    reads as the detector's."""
    from flame_prior.cache import DetectionCache
    from flame_prior.detectors import Detection
    from flame_prior.images import InputImage
    from flame_prior.observe import ViewObservation
    from flame_prior.pipeline import seeded_detections, seeded_report_html

    def view(name, provenance, notes):
        det = Detection(np.zeros((478, 2), np.float32), np.ones(478, np.float32), "mediapipe478",
                        np.zeros((4, 4), np.uint8), (0.0, 0.0, 1.0, 1.0), notes, provenance)
        return ViewObservation(InputImage(tmp_path / f"{name}.png", name, np.zeros((4, 4, 3), np.uint8), "0" * 64), det)

    note = "seeded detection: no face on the first pass; found by the landmark model in the region of b's face"
    views = [view("a", "seeded", ["2 faces, took the largest", note]), view("b", "detector", [])]
    assert seeded_detections(views) == [{"name": "a", "note": note}]
    html = seeded_report_html(views)
    assert "seeded second pass" in html and "<td>a</td>" in html and "<td>b</td>" not in html
    assert seeded_report_html(views[1:]) == ""

    cache = DetectionCache(tmp_path / "cache")
    path = cache.save("1" * 64, "mediapipe-seeded", "v", (4, 4), views[0].detection)
    assert cache.load("1" * 64, "mediapipe-seeded", "v", (4, 4)).provenance == "seeded"
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k != "provenance"}
    np.savez(path, **old)
    assert cache.load("1" * 64, "mediapipe-seeded", "v", (4, 4)).provenance == "detector"


def test_head_yaw_rule():
    """face_yaw follows a rotation of Face Mesh's 3D points about the vertical axis (a real face's
    points, FFHQ 00000), and the sanity check refuses a seeded face less turned than its seed or far
    from its yaw (the ring rig's back view and ±90° profiles: frontal or -50° next to seeds turned
    27-54°), while a face turned further than its seed passes (the rigs' -60° and ±57° views)."""
    from flame_prior.detectors.roi_landmarker import RoiLandmarker
    from flame_prior.detectors.mediapipe_backend import MediaPipeDetector
    from flame_prior.detectors.seeded import SeededFace, check_seeded, face_yaw, roi_from_landmarks

    img = np.asarray(Image.open(shared_path("data/singleview/ffhq/00000.png")).convert("RGB"))
    with MediaPipeDetector() as det:
        lm2d = det.detect_pixels(img).landmarks
    roi_landmarker = RoiLandmarker()
    try:
        presence, points = roi_landmarker(img, roi_from_landmarks(lm2d))
    finally:
        roi_landmarker.close()
    assert presence > 0.9 and np.median(np.linalg.norm(points[:, :2] - lm2d, axis=1)) < 3.0
    base = face_yaw(points)
    assert abs(base) < 20  # a near-frontal photo

    def turned(deg):
        a = np.radians(deg)
        R = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])  # x towards -z: nose turns to +x
        c = points.mean(axis=0)
        return (points - c) @ R.T + c

    for deg in (-40, -15, 15, 40):
        assert face_yaw(turned(deg)) == pytest.approx(base + deg, abs=1.0)

    size = float(np.ptp(points[:468, :2], axis=0).max())

    def check(yaw, seed_yaw):
        return check_seeded(SeededFace(turned(yaw - base), 0.99, False, True, "seed", size, seed_yaw))

    assert check(60, 52) is None and check(-56, -41) is None and check(49.5, 48.3) is None
    assert check(10, 5) is None  # a frontal seed fixes no side
    assert "apart" in check(12, -54)  # the mirrored -90° profile next to a +60° seed
    assert "less turned" in check(6, 27)  # the back view next to a -30° seed
    assert "less turned" in check(-5, 22)  # the other side of frontal
    assert "less turned" in check(-50, -54)  # the 90° profile next to a 60° seed


def test_the_seeded_cache_key_carries_the_seeded_version():
    """The backend observe() gets (opened on its first detect) offers the seeded pass and its cache
    version, so a changed seeded search is not answered from old cache files."""
    from flame_prior.detectors import make_detector
    from flame_prior.detectors.seeded import VERSION

    detector = make_detector(DetectConfig())
    try:
        assert hasattr(detector, "detect_seeded") and detector.seeded_version == VERSION
    finally:
        detector.close()


def test_small_faces_do_not_seed():
    """A face with fewer than MIN_SEED_EYE_PX between the outer eye corners seeds no search (the
    small-faces rig's seeded reading was 60° off); the same real landmarks at full size do. The
    property can fail both ways: the FFHQ face (about 92 px) is kept, halved (about 46 px) dropped."""
    from flame_prior.detectors.mediapipe_backend import MediaPipeDetector
    from flame_prior.detectors.seeded import MIN_SEED_EYE_PX, seeds_a_search

    img = np.asarray(Image.open(shared_path("data/singleview/ffhq/00000.png")).convert("RGB"))
    with MediaPipeDetector() as det:
        points = det.detect_pixels(img).landmarks
    eye = float(np.linalg.norm(points[33] - points[263]))
    assert eye > MIN_SEED_EYE_PX > eye / 2
    assert seeds_a_search(points) and not seeds_a_search(points * 0.5)
