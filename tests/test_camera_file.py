"""--intrinsics.file: COLMAP models (written by pycolmap itself, text and binary, and by hand) and
nerfstudio transforms.json, matched to the input images; the errors name the file, the image and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from flame_prior.camera_file import intrinsics_for_views, read_camera_file
from flame_prior.errors import InputError
from flame_prior.images import InputImage
from flame_prior.intrinsics import IntrinsicsConfig, estimate_intrinsics
from flame_prior.observe import ViewObservation

#: name, COLMAP model, params, expected (fx, fy, cx, cy, k1, k2, p1, p2, k3)
CAMERAS = [
    ("a.png", "SIMPLE_PINHOLE", [500.0, 320.0, 240.0], [500, 500, 320, 240, 0, 0, 0, 0, 0]),
    ("b.png", "PINHOLE", [510.0, 505.0, 318.5, 241.25], [510, 505, 318.5, 241.25, 0, 0, 0, 0, 0]),
    ("c.png", "SIMPLE_RADIAL", [520.0, 321.0, 239.0, -0.05], [520, 520, 321, 239, -0.05, 0, 0, 0, 0]),
    ("d.png", "RADIAL", [530.0, 322.0, 238.0, -0.2, 0.07], [530, 530, 322, 238, -0.2, 0.07, 0, 0, 0]),
    ("e.png", "OPENCV", [540.0, 545.0, 300.0, 250.0, -0.25, 0.08, 0.001, -0.002],
     [540, 545, 300, 250, -0.25, 0.08, 0.001, -0.002, 0]),
]


def _images(names, size=(640, 480)) -> list[InputImage]:
    w, h = size
    return [InputImage(Path("/photos") / n, Path(n).stem, np.zeros((h, w, 3), np.uint8), str(i))
            for i, n in enumerate(names)]


def _pycolmap_model(folder: Path, binary: bool, prefix: str = "cam1/") -> Path:
    rec = pycolmap.Reconstruction()
    for cid, (name, model, params, _) in enumerate(CAMERAS, 1):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=640, height=480, params=params,
                                                        camera_id=cid))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=prefix + name, camera_id=cid, image_id=cid),
                                         pycolmap.Rigid3d())
    folder.mkdir(parents=True)
    (rec.write_binary if binary else rec.write_text)(str(folder))
    return folder


def _check(known, order):
    expected = np.array([CAMERAS[i][3] for i in order], dtype=np.float64)
    np.testing.assert_allclose(np.column_stack([known.fx, known.fy, known.cx, known.cy]), expected[:, :4])
    np.testing.assert_allclose(known.distortion, expected[:, [4, 5, 6, 7, 8]])


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_colmap_models_written_by_pycolmap(tmp_path, binary):
    folder = _pycolmap_model(tmp_path / "sparse", binary)
    order = [4, 0, 3, 1, 2]  # the input order is not the file's
    known = intrinsics_for_views(folder, _images([CAMERAS[i][0] for i in order]))
    _check(known, order)
    assert "colmap" in known.notes[0] and "distortion undone" in known.notes[0]
    if not binary:  # a path to cameras.txt names the same model
        _check(intrinsics_for_views(folder / "cameras.txt", _images([CAMERAS[i][0] for i in order])), order)


def test_matching_by_stem_and_missing_view(tmp_path):
    folder = _pycolmap_model(tmp_path / "sparse", False)
    known = intrinsics_for_views(folder, _images(["A.jpg", "e.jpeg"]))  # converted copies of a.png, e.png
    _check(known, [0, 4])
    with pytest.raises(InputError) as e:
        intrinsics_for_views(folder, _images(["a.png", "zz.png"]))
    msg = str(e.value)
    assert str(folder) in msg and "'zz.png'" in msg and "a.png" in msg and "leave it out of --data" in msg


def test_size_mismatch_names_file_image_and_fix(tmp_path):
    folder = _pycolmap_model(tmp_path / "sparse", False)
    with pytest.raises(InputError) as e:
        intrinsics_for_views(folder, _images(["b.png"], size=(320, 240)))
    msg = str(e.value)
    assert "'b.png' is 320x240" in msg and "640x480" in msg and "not resized" in msg and str(folder) in msg
    with pytest.raises(InputError, match="EXIF orientation"):
        intrinsics_for_views(folder, _images(["b.png"], size=(480, 640)))


def test_unknown_model_and_bad_lines(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "cameras.txt").write_text("# c\n1 OPENCV_FISHEYE 640 480 500 500 320 240 0.1 0 0 0\n")
    (d / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    with pytest.raises(InputError, match="OPENCV_FISHEYE.*not supported"):
        read_camera_file(d)
    (d / "cameras.txt").write_text("1 FULL_OPENCV 640 480 500 500 320 240 0.1 0 0 0 0.01 0.2 0 0\n")
    with pytest.raises(InputError, match="k4, k5, k6"):
        read_camera_file(d)
    (d / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320\n")
    with pytest.raises(InputError, match="4 parameters"):
        read_camera_file(d)
    (d / "cameras.txt").write_text("1 PINHOLE 640 480 500 500 320 240\n")
    (d / "images.txt").write_text("1 1 0 0 0 0 0 0 7 a.png\n\n")
    with pytest.raises(InputError, match="camera 7"):
        read_camera_file(d)
    (d / "images.txt").unlink()
    with pytest.raises(InputError, match="images.txt is missing"):
        read_camera_file(d)
    with pytest.raises(InputError, match="no such calibration"):
        read_camera_file(tmp_path / "nowhere")


def test_nerfstudio_transforms(tmp_path):
    """Top-level intrinsics hold for every frame; each frame adds its own where the top level has none."""
    path = tmp_path / "transforms.json"
    meta = {"camera_model": "OPENCV", "w": 640, "h": 480, "k2": 0.01, "frames": [
        {"file_path": "images/frame_00001.png", "fl_x": 600.0, "fl_y": 602.0, "cx": 321.0, "cy": 238.0,
         "k1": -0.1, "p1": 0.001, "p2": 0.002, "transform_matrix": np.eye(4).tolist()},
        {"file_path": "images/frame_00002.png", "fl_x": 700.0, "cx": 300.0, "cy": 250.0,
         "distortion_params": [-0.2, 0.03, 0.004, 0.0, 0.0, 0.0]},
    ]}
    del meta["k2"]  # distortion_params in one frame and k2 at the top would conflict in nerfstudio too
    path.write_text(json.dumps(meta))
    known = intrinsics_for_views(path, _images(["frame_00002.png", "frame_00001.png"]))
    np.testing.assert_allclose(known.fx, [700, 600])
    np.testing.assert_allclose(known.fy, [700, 602])
    np.testing.assert_allclose(known.cx, [300, 321])
    np.testing.assert_allclose(known.distortion, [[-0.2, 0.03, 0.0, 0.0, 0.004], [-0.1, 0.0, 0.001, 0.002, 0.0]])

    meta["fl_x"] = 650.0  # at the top level AND (differently) in the frames: refused
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="fl_x.*top level"):
        read_camera_file(path)
    del meta["fl_x"]
    meta["camera_model"] = "OPENCV_FISHEYE"
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="OPENCV_FISHEYE"):
        read_camera_file(path)
    meta["camera_model"] = "OPENCV"
    meta["frames"][0]["k4"] = 0.01
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="k4"):
        read_camera_file(path)


def test_estimate_intrinsics_from_a_file(tmp_path):
    folder = _pycolmap_model(tmp_path / "sparse", False, prefix="")
    images = _images(["d.png", "a.png"])
    views = [ViewObservation(im, None) for im in images]  # the file's intrinsics need no detection
    # (COLMAP's poses with a calibration need the head masks: test_scan_rigs runs that case.)
    intr = estimate_intrinsics(views, IntrinsicsConfig(file=folder, use_colmap=False))
    assert intr.source == "file" and not intr.optimise_focal
    np.testing.assert_allclose(intr.fx, [530, 500])
    np.testing.assert_allclose(intr.distortion[:, 0], [-0.2, 0.0])
    with pytest.raises(InputError, match="--intrinsics.file"):
        IntrinsicsConfig(file=tmp_path / "missing.json").check()
    with pytest.raises(InputError, match="focal-px"):
        IntrinsicsConfig(file=folder, focal_px=500.0).check()


def test_scan_rig_calibration_reads_back(tmp_path):
    """The benchmark's calibrated-capture file (scan_rigs.write_calibration) is the rig's own intrinsics."""
    from flame_prior.scan_rigs import make_rig, write_calibration

    rig = make_rig("small_faces", small=True)
    folder = write_calibration(rig, tmp_path / "calib")
    images = [InputImage(Path(f"/renders/{v.name}.png"), v.name, np.zeros((v.height, v.width, 3), np.uint8), "0")
              for v in rig.views]
    known = intrinsics_for_views(folder, images)
    for i, v in enumerate(rig.views):
        assert (known.fx[i], known.fy[i], known.cx[i], known.cy[i]) == (v.fx, v.fy, v.cx, v.cy)
        np.testing.assert_array_equal(known.distortion[i], [*v.distortion, 0.0])
    assert len(set(known.fx)) == len(rig.views)  # a focal per camera
