"""transforms.json read back the way nerfstudio's dataparser and ray generator read it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from export_fixtures import make_fit
from flame_prior.export.nerfstudio import write_transforms
from flame_prior.geometry import opengl_c2w_to_opencv_w2c, project_points


def read_like_nerfstudio(path: Path) -> list[dict]:
    """Minimal re-implementation of nerfstudio's ``Nerfstudio`` dataparser for this file.

    Per-frame intrinsics unless the key is at the top level (then the top-level value wins);
    ``transform_matrix`` is camera-to-world with OpenGL axes; orientation_method="none",
    center_method="none", auto_scale_poses=False, so poses are used unchanged.
    """
    meta = json.loads(path.read_text())
    out = []
    for frame in meta["frames"]:
        cam = {k: float(meta[k]) if k in meta else float(frame[k]) for k in ("fl_x", "fl_y", "cx", "cy")}
        cam.update({k: int(meta[k]) if k in meta else int(frame[k]) for k in ("w", "h")})
        cam["c2w"] = np.asarray(frame["transform_matrix"], dtype=np.float64)[:3, :4]
        cam["image"] = path.parent / frame["file_path"]
        cam["mask"] = path.parent / frame["mask_path"]
        out.append(cam)
    return out


def ray_through_pixel(cam: dict, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
    """nerfstudio's Cameras ray for continuous image coordinates (x, y) (pixel centres at +0.5)."""
    d_cam = np.array([(x - cam["cx"]) / cam["fl_x"], -(y - cam["cy"]) / cam["fl_y"], -1.0])
    d = cam["c2w"][:, :3] @ d_cam
    return cam["c2w"][:, 3], d / np.linalg.norm(d)


def test_transforms_roundtrip(tmp_path):
    views, result, _, _ = make_fit()
    path = write_transforms(tmp_path, views, result)
    meta = json.loads(path.read_text())
    assert meta["camera_model"] == "PINHOLE"
    assert meta["applied_transform"] == np.eye(4)[:3].tolist()
    assert meta["flame_param_path"] == "flame_params.npz"
    assert meta["flame_prior"]["convention"] and meta["flame_prior"]["version"]
    assert "fl_x" not in meta  # the views differ: no shared intrinsics
    cams = read_like_nerfstudio(path)
    assert len(cams) == len(views)

    # Poses: the OpenGL c2w converts back to the fitted OpenCV w2c.
    R, t = opengl_c2w_to_opencv_w2c(np.stack([c["c2w"] for c in cams]))
    np.testing.assert_allclose(R, result.cameras.R.numpy(), atol=1e-12)
    np.testing.assert_allclose(t, result.cameras.t.numpy(), atol=1e-12)

    # Rays: nerfstudio's ray through the pixel where flame-prior projects a vertex passes through it.
    uv, _ = project_points(torch.as_tensor(result.vertices), result.cameras)
    for i, cam in enumerate(cams):
        assert (cam["w"], cam["h"]) == (views[i].image.width, views[i].image.height)
        for k in (0, 17, 101):
            o, d = ray_through_pixel(cam, *uv[i, k].tolist())
            p = result.vertices[k] - o
            assert np.linalg.norm(p - (p @ d) * d) < 1e-9

        img = Image.open(cam["image"])
        assert img.format == "PNG" and img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), views[i].image.pixels)
        m = Image.open(cam["mask"])
        assert m.mode == "L"
        np.testing.assert_array_equal(np.asarray(m), np.where(views[i].detection.mask >= 0.5, 255, 0))

    ply = trimesh.load(tmp_path / meta["ply_file_path"])
    np.testing.assert_allclose(ply.vertices, result.vertices, atol=1e-6)


def test_transforms_shared_intrinsics_written_once(tmp_path):
    specs = [(320, 240, 500.0, 500.0, 160.0, 120.0, yaw, 0.0) for yaw in (-20.0, 0.0, 25.0)]
    views, result, _, _ = make_fit(specs)
    meta = json.loads(write_transforms(tmp_path, views, result).read_text())
    assert (meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], meta["w"], meta["h"]) == (500.0, 500.0, 160.0, 120.0, 320, 240)
    for f in meta["frames"]:  # per-frame values agree with the top level
        assert all(f[k] == meta[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"))


def test_transforms_matches_fitted_views_by_name(tmp_path):
    """Extra observations (views the fit left out) are ignored; order follows the fit."""
    views, result, _, _ = make_fit()
    extra, _, _, _ = make_fit(seed=3)
    extra[0].image.name = "left_out"
    meta = json.loads(write_transforms(tmp_path, list(reversed(views)) + extra[:1], result).read_text())
    assert [f["file_path"] for f in meta["frames"]] == [f"images/{vf.name}.png" for vf in result.views]
    assert not (tmp_path / "images" / "left_out.png").exists()


def _as_input_file(view, path: Path, **save_args):
    """``view`` with its photo read back from a file written at ``path`` (``load_images``' own decode),
    the way intake hands real files to the export."""
    from flame_prior.images import load_images

    [image], _ = load_images(path)
    assert (image.width, image.height) == (view.image.width, view.image.height)
    view.image = dataclasses.replace(image, name=view.image.name)
    return view


def test_unchanged_photo_files_are_copied_and_others_re_encoded(tmp_path):
    """A JPEG and an 8-bit RGB PNG that decode to the upright pixels are exported byte for byte (under
    their own suffix); a JPEG turned upright by its EXIF orientation, and a photo whose file changed
    since it was read, are re-encoded as PNG of the upright pixels. Every image reads back (as
    nerfstudio's ``InputDataset.get_numpy_image`` reads: PIL, ``np.array``) to exactly the pixels the
    camera refers to."""
    views, result, _, _ = make_fit([(320, 240, 500.0, 500.0, 160.0, 120.0, yaw, 0.0) for yaw in (-20, -5, 10, 25)])
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(views[0].image.pixels).save(src / "a.jpg", quality=92)
    Image.fromarray(views[1].image.pixels).save(src / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter; upright = rotated 90 degrees clockwise
    Image.fromarray(views[2].image.pixels).transpose(Image.Transpose.ROTATE_90).save(src / "c.jpg", exif=exif, quality=92)
    Image.fromarray(views[3].image.pixels).save(src / "d.jpg", quality=92)
    for view, name in zip(views, ("a.jpg", "b.png", "c.jpg", "d.jpg")):
        _as_input_file(view, src / name)
    (src / "d.jpg").write_bytes((src / "a.jpg").read_bytes())  # changed after intake read it

    out = tmp_path / "out"
    meta = json.loads(write_transforms(out, views, result).read_text())
    files = {f["flame_prior_view"]: out / f["file_path"] for f in meta["frames"]}
    by_name = {v.image.name: v for v in views}
    assert files[views[0].image.name].suffix == ".jpg" and files[views[1].image.name].suffix == ".png"
    assert files[views[0].image.name].read_bytes() == (src / "a.jpg").read_bytes()
    assert files[views[1].image.name].read_bytes() == (src / "b.png").read_bytes()
    for v in views[2:]:
        assert files[v.image.name].suffix == ".png" and Image.open(files[v.image.name]).format == "PNG"
    assert files[views[2].image.name].read_bytes()[:4] == b"\x89PNG"
    for name, path in files.items():
        np.testing.assert_array_equal(np.array(Image.open(path), dtype="uint8"), by_name[name].image.pixels)
    rotated = Image.open(src / "c.jpg")
    assert rotated.size == (views[2].image.height, views[2].image.width)  # the file itself is not upright


def test_grey_png_reads_back_in_pil_and_opencv():
    """The masks' PNG writer (filter none, run-length deflate) gives files that PIL and OpenCV decode to
    the same pixels: a binary mask, any grey image, one row or one column."""
    import io

    import cv2

    from flame_prior.export._common import grey_png

    rng = np.random.default_rng(0)
    mask = np.where(rng.random((60, 45)) > 0.5, 255, 0).astype(np.uint8)
    for a in (mask, rng.integers(0, 256, (33, 70), dtype=np.uint8), np.full((1, 9), 7, np.uint8),
              np.arange(5, dtype=np.uint8)[:, None]):
        data = grey_png(a)
        im = Image.open(io.BytesIO(data))
        assert (im.format, im.mode, im.size) == ("PNG", "L", (a.shape[1], a.shape[0]))
        np.testing.assert_array_equal(np.asarray(im), a)
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), a)
