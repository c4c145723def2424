"""Video intake: decoding with PyAV, rotation, frame picking, bad clips (clips are made in the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flame_prior.detectors import Detection
from flame_prior.errors import InputError
from flame_prior.video import VideoConfig, classify_motion, decode_clip, load_inputs, select_by_pose
from video_fixtures import encode_clip, moving_pattern


def _marked(frames):
    """A red block in the top-left corner of each upright frame: where it lands shows the orientation."""
    for f in frames:
        f[:24, :40] = (255, 0, 0)
    return frames


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_display_rotation_is_applied(tmp_path, rotation):
    upright = _marked(moving_pattern(12, 96, 128))
    stored = [np.ascontiguousarray(np.rot90(f, -rotation // 90)) for f in upright]  # as the sensor recorded it
    clip = encode_clip(tmp_path / "phone.mp4", stored, rotation=rotation)
    images, records, info, _ = decode_clip(clip, VideoConfig(num_frames_target=4, blur_threshold=0))
    assert info.rotation == rotation
    assert (info.width, info.height) == (128, 96)
    for im in images:
        assert im.pixels.shape == (96, 128, 3)
        corner = im.pixels[:20, :36].astype(float).mean((0, 1))
        assert corner[0] > 200 and corner[1] < 60 and corner[2] < 60, corner


def test_blurred_frames_are_left_out_with_the_reason(tmp_path):
    blurred = set(range(8, 24))
    clip = encode_clip(tmp_path / "c.mp4", moving_pattern(40, 96, 128, blur=blurred), fps=20)
    images, records, info, _ = decode_clip(clip, VideoConfig(num_frames_target=8, candidate_factor=1.0))
    kept = [r for r in records if r.kept]
    assert len(images) == len(kept) and kept
    assert not {r.index for r in kept} & blurred
    reasons = {r.index: r.reason for r in records if not r.kept}
    assert any("blurred" in reasons.get(i, "") for i in blurred)  # whole slots of blur are named as such
    assert all(r.name == im.name for r, im in zip(kept, images))
    assert info.frames == 40 and abs(info.fps - 20) < 0.1 and abs(info.duration - 2.0) < 1e-6


def test_near_duplicate_frames_are_left_out(tmp_path):
    still = moving_pattern(1, 96, 128)[0]
    clip = encode_clip(tmp_path / "still.mp4", [still] * 20 + moving_pattern(20, 96, 128, seed=1), fps=20)
    images, records, *_ = decode_clip(clip, VideoConfig(num_frames_target=10, candidate_factor=1.0))
    dup = [r for r in records if "near-duplicate" in r.reason]
    assert dup and all(r.index < 20 for r in dup)
    assert sum(r.kept and r.index < 20 for r in records) == 1  # one view of the still part


def test_variable_frame_rate_keeps_true_times(tmp_path):
    times = np.cumsum([0] + [1 / 30 if i % 3 else 1 / 10 for i in range(29)])
    clip = encode_clip(tmp_path / "vfr.mp4", moving_pattern(30, 96, 128), times=list(times))
    images, records, info, notes = decode_clip(clip, VideoConfig(num_frames_target=30, candidate_factor=1.0,
                                                                 blur_threshold=0, duplicate_threshold=0))
    assert info.variable_frame_rate and any("variable frame rate" in n for n in notes)
    got = {r.index: r.time for r in records}
    np.testing.assert_allclose([got[i] for i in range(30)], times - times[0], atol=1e-3)


def test_corrupt_frame_in_the_middle_is_skipped_and_named(tmp_path):
    clip = encode_clip(tmp_path / "bad.mp4", moving_pattern(30, 96, 128), gop=10, corrupt_frame=15)
    images, records, info, notes = decode_clip(clip, VideoConfig(num_frames_target=30, candidate_factor=1.0,
                                                                 blur_threshold=0, duplicate_threshold=0))
    assert info.decode_errors == [15] and any("could not be decoded" in n for n in notes)
    by_index = {r.index: r for r in records}
    assert not by_index[15].kept
    assert all(not by_index[i].kept and "corrupt" in by_index[i].reason for i in range(16, 20))  # predicted from it
    assert all(by_index[i].kept for i in list(range(15)) + list(range(20, 30)))  # next keyframe: clean again
    assert len(images) == 25
    # through load_inputs: the damaged frames are listed as left out (summary, report), good ones are not
    cfg = VideoConfig(num_frames_target=10, candidate_factor=1.0, blur_threshold=0, duplicate_threshold=0)
    intake = load_inputs(clip, cfg)
    assert {s.reason.split(":")[0] for s in intake.skipped} == {f"frame {i}" for i in range(15, 20)}


def test_not_a_video_and_zero_length_clip_are_clear_errors(tmp_path):
    fake = tmp_path / "clip.mp4"
    fake.write_text("this is not a video")
    with pytest.raises(InputError, match="not a video"):
        load_inputs(fake, VideoConfig())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="not a video|no video"):
        load_inputs(empty, VideoConfig())
    import av

    out = av.open(str(tmp_path / "zero.mp4"), "w")
    s = out.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    out.start_encoding()  # header written, no frame
    for packet in s.encode(None):
        out.mux(packet)
    out.close()
    assert (tmp_path / "zero.mp4").stat().st_size > 0
    with pytest.raises(InputError, match="zero length|no video|not a video"):
        load_inputs(tmp_path / "zero.mp4", VideoConfig())


def test_folder_layouts(tmp_path):
    a = tmp_path / "clips"
    a.mkdir()
    encode_clip(a / "1.mp4", moving_pattern(10, 64, 96), fps=10)
    encode_clip(a / "2.mp4", moving_pattern(10, 64, 96, seed=3), fps=10)
    cfg = VideoConfig(num_frames_target=5, candidate_factor=1.0, blur_threshold=0)
    intake = load_inputs(a, cfg)
    assert intake.source == "video" and len(intake.images) == 10 and set(intake.camera) == {0}
    dyn = load_inputs(a, VideoConfig(num_frames_target=5, candidate_factor=1.0, blur_threshold=0, sequence="dynamic"))
    assert set(dyn.camera) == {0, 1} and dyn.camera_names == ["1", "2"]
    assert sorted(dyn.timestep) == sorted(list(range(5)) * 2)
    # a folder per camera, frames in natural order
    from PIL import Image

    cams = tmp_path / "cams"
    for c in ("left", "right"):
        (cams / c).mkdir(parents=True)
        for i, f in enumerate(moving_pattern(4, 64, 96, seed=len(c))):
            Image.fromarray(f).save(cams / c / f"{i + 1}.png")
    (cams / "right" / "10.png").write_bytes((cams / "right" / "1.png").read_bytes())  # natural order: 10 is last
    intake = load_inputs(cams, VideoConfig())
    assert intake.source == "cameras" and intake.camera_names == ["left", "right"]
    assert [im.name for im, c in zip(intake.images, intake.camera) if c == 1] == ["right_1", "right_2", "right_3",
                                                                                     "right_4"]
    mixed = tmp_path / "mixed"
    (mixed / "cam").mkdir(parents=True)
    (mixed / "x.png").write_bytes((cams / "left" / "1.png").read_bytes())
    flat = load_inputs(mixed, VideoConfig())  # files beside a sub-folder: a flat folder, the sub-folder ignored
    assert flat.source == "images" and [im.name for im in flat.images] == ["x"]


def test_pose_selection_covers_the_range_and_drops_duplicates():
    yaws = np.array([0, 0.3, 10, 10.2, 20, 30, 30.1, -30, -15, 5])
    poses = np.stack([yaws, np.zeros_like(yaws), np.zeros_like(yaws)], 1)
    chosen, reasons = select_by_pose(poses, np.ones(len(yaws)), target=5, min_step_deg=1.5)
    got = sorted(yaws[chosen])
    assert got[0] == -30 and got[-1] >= 30 and len(chosen) == 5
    dup, _ = select_by_pose(poses, np.ones(len(yaws)), target=100, min_step_deg=1.5)
    assert len(dup) == 7 and all("near-duplicate" in reasons[i] or i in chosen or "target" in reasons[i]
                                 for i in range(len(yaws)))


class _View:
    """What the mouth analysis reads of a view: its detection's landmarks and their format."""

    def __init__(self, pts):
        self.detection = Detection(pts, np.ones(len(pts), np.float32), "mediapipe478", np.zeros((1, 1), np.float32),
                                   (0.0, 0.0, 1.0, 1.0))


def test_motion_classification_from_the_mouth():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (478, 2)).astype(np.float32)
    base[61], base[291], base[13], base[14] = (30, 70), (70, 70), (50, 68), (50, 72)

    def with_mouth(gap, scale=1.0, shift=0.0):
        p = base.copy()
        p[14] = (50, 68 + gap)
        return _View(p * scale + shift)

    still = [with_mouth(4, s, 10 * s) for s in np.linspace(0.8, 1.2, 10)]  # camera moves, mouth still
    talking = [with_mouth(g) for g in np.linspace(2, 20, 10)]
    assert classify_motion(still, 0.08)[0] == "static"
    assert classify_motion(talking, 0.08)[0] == "dynamic"


def test_clip_without_a_face_fails_cleanly(tmp_path):
    from flame_prior.cli import execute
    from flame_prior.config import FitConfig

    clip = encode_clip(tmp_path / "noface.mp4", moving_pattern(20, 128, 160), fps=10)
    out = tmp_path / "out"
    code = execute(FitConfig(data=clip, output_dir=out))
    assert code == 4
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_clip_in_a_folder_that_is_not_a_video_is_left_out(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    encode_clip(d / "good.mp4", moving_pattern(10, 64, 96), fps=10)
    (d / "broken.mov").write_bytes(b"\x00" * 100)
    intake = load_inputs(d, VideoConfig(num_frames_target=3, candidate_factor=1.0, blur_threshold=0))
    assert any(s.path.name == "broken.mov" and "not a video" in s.reason for s in intake.skipped)
    assert intake.images and all(Path(im.path).name == "good.mp4" for im in intake.images)
