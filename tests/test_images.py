"""Stage 1 — image intake on a corpus generated here: bad files, every PNG mode, EXIF, names."""

from __future__ import annotations

import hashlib
import io
import math
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from flame_prior.errors import InputError
from flame_prior.images import load_images, natural_sort_key, safe_stems


def _png_bytes(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` RGB (valid CRC), with a tiny IDAT and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_missing_path_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_images(tmp_path / "nope")


def test_empty_folder_raises_input_error_naming_it(tmp_path):
    with pytest.raises(InputError) as err:
        load_images(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_without_usable_image_lists_why(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError) as err:
        load_images(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "notes.txt" in msg and "empty.jpg" in msg and "0 bytes" in msg


def test_bad_files_are_skipped_with_reasons(tmp_path):
    good = _jpeg_bytes(_rgb(64, 80))
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    png = _png_bytes(_rgb(64, 80))
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (tmp_path / "tiny.png").write_bytes(_png_bytes(np.full((1, 1, 3), 7, np.uint8)))
    (tmp_path / ".hidden.png").write_bytes(b"x")  # ignored, not reported
    (tmp_path / "sub").mkdir()  # not searched

    images, skipped = load_images(tmp_path)
    assert [im.path.name for im in images] == ["good.jpg", "tiny.png"]
    assert images[1].pixels.shape == (1, 1, 3) and images[1].pixels.dtype == np.uint8
    assert np.all(images[1].pixels == 7)
    assert images[0].sha256 == hashlib.sha256(good).hexdigest()
    reasons = {s.path.name: s.reason for s in skipped}
    assert set(reasons) == {"readme.txt", "zero.png", "cut.jpg", "cut.png", "garbage.jpg"}
    assert "0 bytes" in reasons["zero.png"]
    assert "not an image" in reasons["readme.txt"]
    for name in ("cut.jpg", "cut.png", "garbage.jpg"):
        assert "truncated or corrupt" in reasons[name] or "not an image" in reasons[name], reasons[name]


def test_huge_header_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    (tmp_path / "ok.png").write_bytes(_png_bytes(_rgb()))
    tracemalloc.start()
    try:
        images, skipped = load_images(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [im.name for im in images] == ["ok"]
    assert len(skipped) == 1 and skipped[0].path.name == "bomb.png"
    assert "20000x20000" in skipped[0].reason and "before decoding" in skipped[0].reason
    assert peak < 20_000_000, f"peak Python allocation {peak} bytes: the 1.2 GB image must not be allocated"


def test_max_pixels_is_honoured(tmp_path):
    (tmp_path / "a.png").write_bytes(_png_bytes(_rgb(100, 100)))
    with pytest.raises(InputError, match="max_pixels"):
        load_images(tmp_path / "a.png", max_pixels=9_999)


def test_png_modes_decode_to_rgb_uint8(tmp_path):
    grey16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    rgb16 = np.zeros((2, 3, 3), np.uint16)
    rgb16[..., 0] = 65535  # red, 16 bit (written as BGR by cv2)
    rgb16[..., 1] = 32896  # 128 * 257
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1].copy())
    (tmp_path / "grey.png").write_bytes(_png_bytes(np.array([[10, 200]], np.uint8), mode="L"))
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1])
    pal.save(tmp_path / "pal.png")
    rgba = np.array([[[255, 0, 0, 255], [0, 255, 0, 0], [0, 0, 255, 128]]], np.uint8)
    (tmp_path / "rgba.png").write_bytes(_png_bytes(rgba, mode="RGBA"))

    images, skipped = load_images(tmp_path)
    assert not skipped
    by = {im.name: im.pixels for im in images}
    for px in by.values():
        assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
    np.testing.assert_array_equal(by["g16"][0, :, 0], [0, 1, 128, 255])  # scaled, not clipped
    assert np.all(by["g16"][..., 0] == by["g16"][..., 2])
    np.testing.assert_array_equal(by["rgb16"][0, 0], [255, 128, 0])
    np.testing.assert_array_equal(by["grey"][0], [[10, 10, 10], [200, 200, 200]])
    np.testing.assert_array_equal(by["pal"][0], [[255, 0, 0], [0, 0, 255]])
    np.testing.assert_array_equal(by["rgba"][0], [[255, 0, 0], [0, 0, 0], [0, 0, 128]])  # over black


@pytest.mark.parametrize("orientation, red_at", [(6, "top"), (8, "bottom")])
def test_exif_orientation_is_applied(tmp_path, orientation, red_at):
    stored = np.zeros((20, 40, 3), np.uint8)  # W=40, H=20: left half red, right half blue
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0xA405] = 50  # FocalLengthIn35mmFilm
    (tmp_path / "rot.jpg").write_bytes(_jpeg_bytes(stored, exif=exif))
    (im,), _ = load_images(tmp_path / "rot.jpg")
    assert (im.height, im.width) == (40, 20)
    top, bottom = im.pixels[:20].mean(axis=(0, 1)), im.pixels[20:].mean(axis=(0, 1))
    red, other = (top, bottom) if red_at == "top" else (bottom, top)
    assert red[0] > 200 and red[2] < 60 and other[2] > 200 and other[0] < 60
    assert im.exif_focal_px == pytest.approx(50 * math.hypot(40, 20) / math.hypot(36, 24))


def test_exif_focal_from_focal_plane_resolution(tmp_path):
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x920A] = 4.0  # FocalLength, mm
    ifd[0xA20E] = 1000.0  # FocalPlaneXResolution: 1000 px per cm
    ifd[0xA210] = 3  # centimetres
    (tmp_path / "f.jpg").write_bytes(_jpeg_bytes(_rgb(30, 40), exif=exif))
    (tmp_path / "nofocal.jpg").write_bytes(_jpeg_bytes(_rgb(30, 40)))
    images, _ = load_images(tmp_path)
    by = {im.name: im for im in images}
    assert by["f"].exif_focal_px == pytest.approx(400.0)
    assert by["nofocal"].exif_focal_px is None


def test_names_unique_safe_and_natural_order(tmp_path):
    png = _png_bytes(_rgb(8, 8))
    files = ["10.png", "2.png", "1.png", "img_A.png", "img_a.png", "photo été 1.png", "日本.png"]
    for name in files:
        (tmp_path / name).write_bytes(png)
    images, skipped = load_images(tmp_path)
    assert not skipped
    names = [im.name for im in images]
    assert names[:3] == ["1", "2", "10"]
    assert "img_A" in names and "img_a-1" in names
    assert "photo_ete_1" in names
    assert len({n.casefold() for n in names}) == len(names)
    for n in names:
        assert n and all(c.isascii() and (c.isalnum() or c in "._-") for c in n), n


def test_safe_stems_avoid_existing_suffixes():
    stems = safe_stems([Path("a.png"), Path("A.jpg"), Path("a-1.png"), Path("a b.png"), Path("a_b.png")])
    assert stems == ["a", "A-2", "a-1", "a_b", "a_b-1"]
    assert sorted(["x10", "x2", "X1"], key=natural_sort_key) == ["X1", "x2", "x10"]


def test_single_file_and_unusable_single_file(tmp_path):
    (tmp_path / "one.png").write_bytes(_png_bytes(_rgb()))
    (tmp_path / "bad.png").write_bytes(b"nope")
    images, skipped = load_images(tmp_path / "one.png")
    assert len(images) == 1 and not skipped and images[0].pixels.shape == (24, 32, 3)
    with pytest.raises(InputError, match="bad.png"):
        load_images(tmp_path / "bad.png")
