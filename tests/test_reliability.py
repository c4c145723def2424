"""Reliability corpus: bad inputs, hostile model files, crashes mid-run, degenerate geometry.

Every case is generated here (nothing downloaded) and run through the real CLI
(:func:`flame_prior.cli.main`: tyro parsing, the pipeline, the exit-code mapping), and asserts
the exit code, what the message says (which file, what is wrong, what to do) and that a failed
run leaves no output and no ``.<name>.partial-*`` directory. The default runs the CLI in this
process (fast); ``FLAME_PRIOR_TEST_SUBPROCESS=1`` runs every case as a ``flame-prior``
subprocess instead. Signal handling always uses a subprocess.

Fits are kept short (no COLMAP, no photometric stage, few steps, small images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from flame_prior.cli import main
from flame_prior.errors import FitError
from flame_prior.flame.synthetic import (
    build_test_model,
    build_test_texture_space,
    build_test_uv_layout,
    write_flame_pkl,
    write_flame_texture_npz,
)

from conftest import shared_path

SUBPROCESS = os.environ.get("FLAME_PRIOR_TEST_SUBPROCESS") == "1"
MULTIVIEW = "data/multiview/2-346/images"
FFHQ = "data/singleview/ffhq"
FAST = ["--intrinsics.no-use-colmap", "--fitter.photometric-steps", "0", "--fitter.rigid-steps", "3",
        "--fitter.landmark-steps", "4"]
EXE = Path(sys.executable).parent / "flame-prior"


# --------------------------------------------------------------------------------------------
# Running the CLI


@dataclass
class Run:
    code: int
    err: str  # everything the run printed (stderr, and stdout in front of it)

    @property
    def error(self) -> str:
        """The one ``error:`` line (asserting there is exactly one)."""
        lines = [ln for ln in self.err.splitlines() if ln.startswith(("error:", "internal error:"))]
        assert len(lines) == 1, f"expected one error line, got {lines!r} in:\n{self.err}"
        return lines[0]


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    """``cli(*args) -> Run``: ``flame-prior`` with ``args`` (a per-test detection cache added)."""
    monkeypatch.setenv("COLUMNS", "400")  # rich: no wrapping of the summary table

    def run(*args, subprocess_: bool = SUBPROCESS, env: dict | None = None) -> Run:
        args = [str(a) for a in args]
        if args and args[0] == "fit" and "--detect.cache-dir" not in args:
            args += ["--detect.cache-dir", str(tmp_path / "cache")]
        if subprocess_:
            p = subprocess.run([str(EXE), *args], capture_output=True, text=True, env={**_env(), **(env or {})},
                               timeout=300)
            return Run(p.returncode, p.stdout + p.stderr)
        capsys.readouterr()
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        try:
            code = main(args)
        except SystemExit as e:  # tyro's own argument errors and --help
            code = e.code if isinstance(e.code, int) else 1
        finally:
            for k in env or {}:
                monkeypatch.delenv(k)
        cap = capsys.readouterr()
        return Run(code, cap.out + cap.err)

    return run


def assert_no_output(out: Path) -> None:
    """A failed run wrote nothing: no output directory, no partial or set-aside directory beside it."""
    assert not out.exists(), f"{out} was written"
    if out.parent.exists():
        left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not left, f"left behind: {left}"


def assert_no_partials(out: Path) -> None:
    """No temporary (.<name>.partial-*) or set-aside (.<name>.old-*) directory beside ``out``."""
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not left, f"left behind: {left}"


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (byte-identical comparisons)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def transforms(out: Path) -> dict:
    return json.loads((out / "transforms.json").read_text())


# --------------------------------------------------------------------------------------------
# Generated inputs


def face_png(dst: Path, k: str = "00000") -> Path:
    """A real single-view face (FFHQ, 256x256 PNG)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_path(f"{FFHQ}/{k}.png"), dst)
    return dst


def view(k: int | str) -> Image.Image:
    """One of the multi-view photographs of one person (1040x1392), RGB."""
    with Image.open(shared_path(f"{MULTIVIEW}/{k}.jpg")) as im:
        return im.convert("RGB")


def no_face(dst: Path, size=(240, 180)) -> Path:
    """A smooth gradient: an image without a face."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    g = np.tile(np.linspace(0, 255, w, dtype=np.float32)[None, :, None], (h, 1, 3)).astype(np.uint8)
    Image.fromarray(g).save(dst)
    return dst


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def huge_header_png(dst: Path, w: int = 20000, h: int = 20000) -> Path:
    """A valid PNG signature and IHDR declaring ``w x h`` RGB, with a few bytes of pixel data."""
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(b"\0" * 4096)
    dst.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                    + _png_chunk(b"IEND", b""))
    return dst


class Evil:
    """Unpickling this would create ``marker`` (through ``builtins.open``)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class EvilSystem:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def test_model():
    """The synthetic FLAME-format model (procedural topology, 2224 triangles, not FLAME's 9976)."""
    return build_test_model(n_shape=8, n_expr=4)


@pytest.fixture(scope="module")
def mediapipe478(tmp_path_factory):
    """Real MediaPipe landmarks (478, 2) of FFHQ 00000, and its head mask: for the files backend."""
    from flame_prior.images import load_images
    from flame_prior.detectors import DetectConfig
    from flame_prior.observe import observe

    d = tmp_path_factory.mktemp("lmk")
    images, _ = load_images(face_png(d / "00000.png"))
    (obs,), _ = observe(images, DetectConfig(cache_dir=d / "cache"), progress=False)
    return obs.detection.landmarks.astype(np.float64), obs.detection.mask


def write_landmarks(lmk_dir: Path, stem: str, points: np.ndarray, mask: np.ndarray) -> None:
    lmk_dir.mkdir(parents=True, exist_ok=True)
    np.save(lmk_dir / f"{stem}.npy", points)
    Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8)).save(lmk_dir / f"{stem}_mask.png")


# ============================================================================================
# 1. Inputs


def test_empty_folder(cli, tmp_path):
    (tmp_path / "in").mkdir()
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", tmp_path / "out", *FAST)
    assert r.code == 2
    assert str(tmp_path / "in") in r.error and "holds no files" in r.error and "Put the JPEG/PNG" in r.error
    assert_no_output(tmp_path / "out")


def test_missing_data_path(cli, tmp_path):
    r = cli("fit", "--data", tmp_path / "nope", "--output-dir", tmp_path / "out", *FAST)
    assert r.code == 2 and str(tmp_path / "nope") in r.error and "no such file or folder" in r.error
    assert_no_output(tmp_path / "out")


def test_folder_of_non_images(cli, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    (d / "fake.jpg").write_text("not really a jpeg")
    np.save(d / "array.npy", np.zeros(3))
    (d / "sub").mkdir()  # ignored: not recursive
    r = cli("fit", "--data", d, "--output-dir", tmp_path / "out", *FAST)
    assert r.code == 2
    assert "no usable image" in r.error and "Use JPEG or PNG" in r.error
    for name in ("notes.txt", "fake.jpg", "array.npy"):
        assert f"{name}: not an image" in r.error
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("kind", ["truncated_jpeg", "truncated_png", "corrupt_png", "zero_bytes"])
def test_broken_file_alone(cli, tmp_path, kind):
    d = tmp_path / "in"
    d.mkdir()
    im = view(10).resize((260, 348))
    if kind == "truncated_jpeg":
        im.save(d / "x.jpg", quality=90)
        raw = (d / "x.jpg").read_bytes()
        (d / "x.jpg").write_bytes(raw[: len(raw) // 2])
        want = "truncated or corrupt JPEG"
    elif kind == "truncated_png":
        im.save(d / "x.png")
        raw = (d / "x.png").read_bytes()
        (d / "x.png").write_bytes(raw[: len(raw) // 3])
        want = "truncated or corrupt PNG"
    elif kind == "corrupt_png":
        im.save(d / "x.png")
        raw = bytearray((d / "x.png").read_bytes())
        raw[200:4000] = np.random.default_rng(0).bytes(3800)  # garbage inside the compressed data
        (d / "x.png").write_bytes(bytes(raw))
        want = "corrupt PNG"
    else:
        (d / "x.jpg").write_bytes(b"")
        want = "empty file (0 bytes)"
    r = cli("fit", "--data", d, "--output-dir", tmp_path / "out", *FAST)
    assert r.code == 2, r.err
    assert want in r.error and str(d) in r.error and "Use JPEG or PNG" in r.error
    assert_no_output(tmp_path / "out")


def test_one_pixel_image_has_no_face(cli, tmp_path):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    r = cli("fit", "--data", tmp_path / "dot.png", "--output-dir", tmp_path / "out", *FAST)
    assert r.code == 4
    assert "dot.png: no face found" in r.error and "Use photos or clips that show one face" in r.error
    assert_no_output(tmp_path / "out")


def test_huge_header_refused_without_allocating(tmp_path):
    """A PNG declaring 20000x20000 (1.2 GB of RGB) is refused from its header: peak memory stays low."""
    d = tmp_path / "in"
    d.mkdir()
    huge_header_png(d / "huge.png")
    out = tmp_path / "out"
    # Measure the CLI's peak RSS in a child of a fresh interpreter (RUSAGE_CHILDREN of that one only).
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(p.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.stderr.write(p.stderr)")
    p = subprocess.run([sys.executable, "-c", probe, str(EXE), "fit", "--data", str(d), "--output-dir", str(out),
                        *FAST, "--detect.cache-dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, env=_env(), timeout=300)
    code, maxrss_kb = (int(x) for x in p.stdout.split())
    assert code == 2, p.stderr
    assert "huge.png: too large: the header declares 20000x20000" in p.stderr and "downscale it" in p.stderr
    assert maxrss_kb < 1_000_000, f"peak RSS {maxrss_kb / 1e6:.2f} GB: the pixels were allocated"
    assert_no_output(out)


def test_mixed_modes_resolutions_and_aspect_ratios_all_fit(cli, tmp_path):
    """One person, five files: 16-bit RGB, grey, palette, RGBA and 16-bit grey PNGs, each of another
    size and aspect ratio. All are fitted; every view gets a camera with its own w, h."""
    d = tmp_path / "in"
    d.mkdir()
    a = np.asarray(view(10).resize((520, 696)))
    cv2.imwrite(str(d / "a_rgb16.png"), (a[..., ::-1].astype(np.uint16) * 257))
    view(20).crop((120, 300, 920, 900)).convert("L").save(d / "b_grey.png")  # 800x600 landscape
    view(1).resize((260, 348)).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(d / "c_palette.png")
    rgba = view(30).crop((120, 250, 920, 1050)).resize((400, 400)).convert("RGBA")
    alpha = np.zeros((400, 400), np.uint8)
    alpha[10:-10, 10:-10] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(d / "d_rgba.png")
    grey16 = (np.asarray(view(25).resize((347, 464)).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(grey16).save(d / "e_grey16.png")
    modes = {p.name: Image.open(p).mode for p in d.iterdir()}
    assert modes.pop("e_grey16.png") in ("I;16", "I", "I;16B")
    assert modes == {"a_rgb16.png": "RGB", "b_grey.png": "L", "c_palette.png": "P", "d_rgba.png": "RGBA"}
    assert cv2.imread(str(d / "a_rgb16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    out = tmp_path / "out"
    r = cli("fit", "--data", d, "--output-dir", out, *FAST)
    assert r.code == 0, r.err
    assert "5 views fitted, 0 left out" in r.err
    sizes = {"a_rgb16": (520, 696), "b_grey": (800, 600), "c_palette": (260, 348), "d_rgba": (400, 400),
             "e_grey16": (347, 464)}
    frames = {Path(f["file_path"]).stem: f for f in transforms(out)["frames"]}
    assert set(frames) == set(sizes)
    for name, (w, h) in sizes.items():
        f = frames[name]
        assert (f["w"], f["h"]) == (w, h), name
        assert 0 < f["cx"] < w and 0 < f["cy"] < h and f["fl_x"] > 0, name
        assert np.isfinite(np.asarray(f["transform_matrix"])).all(), name
        with Image.open(out / f["file_path"]) as im:
            assert im.size == (w, h) and im.mode == "RGB", name
    cams = {c["name"]: c for c in json.loads((out / "fit_summary.json").read_text())["cameras"]}
    for name, (w, h) in sizes.items():
        assert (cams[name]["width"], cams[name]["height"]) == (w, h)
        assert cams[name]["landmark_error_rel_eye"] < 0.2, (name, cams[name]["landmark_error_rel_eye"])
    # The transparent border was composited over black.
    with Image.open(out / frames["d_rgba"]["file_path"]) as im:
        assert np.asarray(im)[:10].max() == 0
    assert_no_partials(out)


def test_exif_rotated_jpeg_cameras_are_for_the_upright_image(cli, tmp_path):
    """Orientation 6 (stored on its side): w, h and the written image are the upright ones."""
    upright = view(10).resize((390, 522))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 522x390 on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    d = tmp_path / "in"
    d.mkdir()
    stored.save(d / "rotated.jpg", quality=95, exif=exif)
    with Image.open(d / "rotated.jpg") as im:
        assert im.size == (522, 390) and im.getexif()[0x0112] == 6

    out = tmp_path / "out"
    r = cli("fit", "--data", d, "--output-dir", out, *FAST)
    assert r.code == 0, r.err
    (f,) = transforms(out)["frames"]
    assert (f["w"], f["h"]) == (390, 522)
    assert abs(f["cx"] - 195) < 1 and abs(f["cy"] - 261) < 1
    with Image.open(out / f["file_path"]) as im:
        written = np.asarray(im.convert("RGB"), np.float32)
    assert written.shape == (522, 390, 3)
    diff = np.abs(written - np.asarray(upright, np.float32)).mean()
    assert diff < 6, f"the written image is not the upright photo (mean abs diff {diff:.1f})"
    (cam,) = json.loads((out / "fit_summary.json").read_text())["cameras"]
    assert (cam["width"], cam["height"]) == (390, 522)
    cameras_txt = (out / "colmap_text" / "cameras.txt").read_text()
    assert " 390 522 " in cameras_txt
    assert cam["landmark_error_rel_eye"] < 0.2, "the landmarks fit the upright image"


def test_folder_with_one_usable_view_among_bad_files(cli, tmp_path):
    """No face, truncated, empty and non-image files beside one good face: the face is fitted (a single
    usable view in a multi-view run), each other file is listed as left out with its reason."""
    d = tmp_path / "in"
    face_png(d / "face.png")
    no_face(d / "wall.png")
    view(10).resize((260, 348)).save(d / "cut.jpg")
    (d / "cut.jpg").write_bytes((d / "cut.jpg").read_bytes()[:3000])
    (d / "empty.png").write_bytes(b"")
    (d / "readme.txt").write_text("x")
    out = tmp_path / "out"
    r = cli("fit", "--data", d, "--output-dir", out, *FAST)
    assert r.code == 0, r.err
    assert "1 views fitted, 4 left out" in r.err
    table = {ln.split("│")[1].strip(): ln for ln in r.err.splitlines() if ln.count("│") >= 3}
    assert "no face found" in table["wall.png"]
    assert "truncated or corrupt JPEG" in table["cut.jpg"]
    assert "empty file (0 bytes)" in table["empty.png"]
    assert "not an image" in table["readme.txt"]
    assert [Path(f["file_path"]).stem for f in transforms(out)["frames"]] == ["face"]
    report = (out / "report.html").read_text()
    for name in ("wall.png", "cut.jpg", "empty.png", "readme.txt"):
        assert name in report
    left_out = {Path(x["file"]).name: x["reason"] for x in json.loads((out / "fit_summary.json").read_text())["left_out"]}
    assert set(left_out) == {"wall.png", "cut.jpg", "empty.png", "readme.txt"}
    assert "no face found" in left_out["wall.png"]


def test_summary_shows_names_literally_and_per_view_notes(cli, tmp_path):
    d = tmp_path / "in"
    face = face_png(d / "face.png")
    no_face(d / "x[i]y.png")
    cache = tmp_path / "cache"
    cache.mkdir()
    from flame_prior.cache import DetectionCache
    from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

    bad = DetectionCache(cache).path(hashlib.sha256(face.read_bytes()).hexdigest(), MediaPipeDetector.name,
                                     MediaPipeDetector.version)
    bad.write_bytes(b"not a zip")
    r = cli("fit", "--data", d, "--output-dir", tmp_path / "out", *FAST)
    assert r.code == 0, r.err
    assert "x[i]y.png" in r.err
    assert "unreadable" in r.err, "the per-view note is in the printed summary"


def test_image_without_face_alone_fails_with_exit_4(cli, tmp_path):
    no_face(tmp_path / "in" / "wall.png")
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", tmp_path / "out", *FAST)
    assert r.code == 4
    assert "no view can be fitted" in r.error and "wall.png: no face found" in r.error
    assert "Use photos or clips that show one face" in r.error
    assert_no_output(tmp_path / "out")


def test_two_faces_largest_taken_and_noted(cli, tmp_path):
    a = np.asarray(view(10))
    b = np.asarray(view(25))
    canvas = np.full((1000, 1400, 3), 20, np.uint8)
    canvas[:, :800] = a[150:1150, 120:920]
    canvas[200:800, 880:1360] = cv2.resize(b[150:1150, 120:920], (480, 600), interpolation=cv2.INTER_AREA)
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(canvas).resize((700, 500)).save(d / "two.png")
    out = tmp_path / "out"
    r = cli("fit", "--data", d, "--output-dir", out, *FAST)
    assert r.code == 0, r.err
    assert "2 faces, took the largest" in (out / "report.html").read_text()
    (cam,) = json.loads((out / "fit_summary.json").read_text())["cameras"]
    assert cam["landmark_error_rel_eye"] < 0.2
    # The camera looks at the large face on the left: FLAME's origin projects into the left part.
    t = np.asarray(cam["t"])
    x = cam["fx"] * t[0] / t[2] + cam["cx"]
    assert x < 400, f"FLAME's origin projects at x={x:.0f}: the small face on the right was fitted"


def test_names_differing_in_case_non_ascii_and_spaces(cli, tmp_path):
    d = tmp_path / "entrée des données ü"
    d.mkdir()
    view(10).resize((390, 522)).save(d / "View.jpg", quality=92)
    view(20).resize((390, 522)).save(d / "view.jpg", quality=92)
    view(30).resize((390, 522)).save(d / "photo ñ 2.jpg", quality=92)
    if not (d / "View.jpg").exists() or not (d / "view.jpg").exists() or len(list(d.iterdir())) < 3:
        pytest.skip("case-insensitive file system: View.jpg and view.jpg cannot coexist")
    out = tmp_path / "sortie été" / "mon résultat"
    r = cli("fit", "--data", d, "--output-dir", out, *FAST)
    assert r.code == 0, r.err
    frames = transforms(out)["frames"]
    paths = [f["file_path"] for f in frames]
    assert len(paths) == 3 and len({p.casefold() for p in paths}) == 3, paths
    for p in paths:
        assert p.isascii() and " " not in p, p
        assert (out / p).is_file()
    for f in frames:
        if f.get("mask_path"):
            assert (out / f["mask_path"]).is_file()
    assert sorted(Path(p).stem for p in paths) == sorted(["View", "view-1", "photo_n_2"])
    assert_no_partials(out)


# --------------------------------------------------------------------------------------------
# The output directory


def test_existing_output_refused_then_overwritten(cli, tmp_path):
    face_png(tmp_path / "in" / "face.png")
    out = tmp_path / "out"
    assert cli("fit", "--data", tmp_path / "in", "--output-dir", out, *FAST).code == 0
    before = tree_digest(out)
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", out, *FAST)
    assert r.code == 2
    assert str(out) in r.error and "already exists" in r.error and "--overwrite" in r.error
    assert tree_digest(out) == before
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", out, "--overwrite", *FAST)
    assert r.code == 0, r.err
    assert set(tree_digest(out)) == set(before)
    assert_no_partials(out)


def test_output_inside_input_folder_refused(cli, tmp_path):
    face_png(tmp_path / "in" / "face.png")
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", tmp_path / "in" / "out", *FAST)
    assert r.code == 2 and "lies inside the input folder" in r.error and "outside the folder" in r.error
    assert_no_output(tmp_path / "in" / "out")
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", tmp_path / "in", "--overwrite", *FAST)
    assert r.code == 2 and "lies inside the input folder" in r.error
    assert (tmp_path / "in" / "face.png").is_file()


def test_input_inside_output_refused_even_with_overwrite(cli, tmp_path):
    """``--overwrite`` must never delete the photos: the input may not lie in the output."""
    face_png(tmp_path / "proj" / "in" / "face.png")
    (tmp_path / "proj" / "fit_summary.json").write_text("{}")
    r = cli("fit", "--data", tmp_path / "proj" / "in", "--output-dir", tmp_path / "proj", "--overwrite", *FAST)
    assert r.code == 2 and "lies inside the output directory" in r.error and "delete the input" in r.error
    assert (tmp_path / "proj" / "in" / "face.png").is_file()


def test_overwrite_refuses_a_folder_that_is_not_an_output(cli, tmp_path):
    face_png(tmp_path / "in" / "face.png")
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", precious, "--overwrite", *FAST)
    assert r.code == 2 and "does not look like a flame-prior output" in r.error and str(precious) in r.error
    assert (precious / "chapter1.tex").read_text() == "..."


def test_output_path_is_a_file_or_under_a_file(cli, tmp_path):
    face_png(tmp_path / "in" / "face.png")
    (tmp_path / "file").write_text("x")
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", tmp_path / "file", *FAST)
    assert r.code == 2 and "exists and is not a directory" in r.error
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", tmp_path / "file" / "out", *FAST)
    assert r.code == 2 and "is a file, not a folder" in r.error
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_output_location_refused_before_any_work(cli, tmp_path):
    """/sys refuses new directories even to root (os.access says yes there): the real probe catches it."""
    face_png(tmp_path / "in" / "face.png")
    target = Path("/sys/flame-prior-test/out")
    try:
        Path("/sys/flame-prior-test").mkdir()
    except OSError:
        pass
    else:
        Path("/sys/flame-prior-test").rmdir()
        pytest.skip("/sys accepts new directories here")
    t0 = time.perf_counter()
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", target, *FAST)
    assert r.code == 2
    assert "/sys: cannot create the output directory here" in r.error and "writable --output-dir" in r.error
    assert time.perf_counter() - t0 < 5 or SUBPROCESS, "refused only after the fit"
    assert not (tmp_path / "cache").exists(), "detection ran before the output was checked"


def test_unwritable_parent_chmod(cli, tmp_path):
    """An output directory under a parent without write permission (chmod 555) is refused with exit 2.

    Root ignores permission bits through its capabilities (DAC override); as root the run is a
    ``flame-prior`` subprocess under util-linux's ``setpriv`` with those two capabilities dropped,
    so the kernel refuses the ``mkdir`` exactly as it would for any other user.
    """
    face_png(tmp_path / "in" / "face.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.geteuid() == 0:
            caps = "-dac_override,-dac_read_search"
            p = subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", str(EXE), "fit",
                                "--data", str(tmp_path / "in"), "--output-dir", str(locked / "out"), *FAST,
                                "--detect.cache-dir", str(tmp_path / "cache")],
                               capture_output=True, text=True, env=_env(), timeout=300)
            r = Run(p.returncode, p.stdout + p.stderr)
        else:
            r = cli("fit", "--data", tmp_path / "in", "--output-dir", locked / "out", *FAST)
        assert r.code == 2 and "cannot create the output directory here" in r.error
        assert not (locked / "out").exists()
    finally:
        locked.chmod(0o755)


# ============================================================================================
# 2. Model files


def _run_model(cli, tmp_path, *flags) -> Run:
    face_png(tmp_path / "in" / "face.png")
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", tmp_path / "out", *FAST, *flags)
    assert_no_output(tmp_path / "out")
    return r


def test_png_passed_as_flame_model(cli, tmp_path):
    bad = face_png(tmp_path / "model.pkl")
    r = _run_model(cli, tmp_path, "--flame-model", bad)
    assert r.code == 3
    assert str(bad) in r.error and "not a pickle, .npz or .npy file" in r.error and "--flame-model" in r.error


def test_missing_flame_model(cli, tmp_path):
    r = _run_model(cli, tmp_path, "--flame-model", tmp_path / "generic_model.pkl")
    assert r.code == 3 and "generic_model.pkl" in r.error and "not found" in r.error
    assert "flame.is.tue.mpg.de" in r.error


def test_truncated_flame_pickle(cli, tmp_path, test_model):
    p = tmp_path / "flame.pkl"
    write_flame_pkl(test_model, p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    r = _run_model(cli, tmp_path, "--flame-model", p)
    assert r.code == 3
    assert str(p) in r.error and "not a readable pickle" in r.error and "truncated" in r.error
    assert "re-download" in r.error


def test_flame_file_missing_key(cli, tmp_path, test_model):
    p = tmp_path / "flame.npz"
    m = test_model
    np.savez(p, v_template=m.v_template, f=m.faces, shapedirs=m.shapedirs, J_regressor=m.J_regressor,
             weights=m.weights, kintree_table=np.stack([m.parents, np.arange(5)]))  # no posedirs
    r = _run_model(cli, tmp_path, "--flame-model", p)
    assert r.code == 3 and str(p) in r.error and "missing array 'posedirs'" in r.error and "--flame-model" in r.error


@pytest.mark.parametrize("field,change,message", [
    ("posedirs", lambda a: a[..., :20], "'posedirs' must have shape (V, 3, 36), got (V, 3, 20)"),
    ("weights", lambda a: a[:, :3] / a[:, :3].sum(1, keepdims=True).clip(1e-9), "kinematic tree"),
    ("faces", lambda a: a + 10**6, "'f' (faces) indices must lie in"),
    ("v_template", lambda a: np.where(np.arange(len(a))[:, None] == 5, np.nan, a), "'v_template' contains NaN"),
])
def test_flame_pickle_with_wrong_arrays(cli, tmp_path, test_model, field, change, message):
    bad = dataclasses.replace(test_model, **{field: change(getattr(test_model, field))})
    if field == "weights":
        bad = dataclasses.replace(bad, parents=bad.parents[:3])
    p = tmp_path / "flame.pkl"
    write_flame_pkl(bad, p)
    r = _run_model(cli, tmp_path, "--flame-model", p)
    assert r.code == 3, r.err
    assert str(p) in r.error and message.replace("V", str(test_model.n_vertices)) in r.error
    assert "--flame-model" in r.error


def test_embedding_that_does_not_match_the_mesh(cli, tmp_path, test_model):
    # A valid FLAME-format model of another topology with the default (FLAME-topology) embedding ...
    p = tmp_path / "flame.pkl"
    write_flame_pkl(test_model, p)
    r = _run_model(cli, tmp_path, "--flame-model", p)
    assert r.code == 3 and "mediapipe468_embedding.npz" in r.error
    assert f"face_idx must lie in [0, {len(test_model.faces)})" in r.error and "--landmark-embedding" in r.error
    # ... and an embedding file whose triangle ids run past FLAME's 9976 triangles.
    e = tmp_path / "emb.npz"
    np.savez(e, lmk_face_idx=np.array([0, 5, 20000]), lmk_b_coords=np.full((3, 3), 1 / 3),
             landmark_indices=np.array([1, 2, 3]))
    r = _run_model(cli, tmp_path, "--landmark-embedding", e)
    assert r.code == 3 and str(e) in r.error and "face_idx must lie in [0, 9976), found [0, 20000]" in r.error


def test_texture_space_of_the_wrong_size(cli, tmp_path, test_model):
    uvs, uv_faces = build_test_uv_layout(test_model)
    p = tmp_path / "FLAME_texture.npz"
    write_flame_texture_npz(build_test_texture_space(uvs, uv_faces, n_tex=3, size=32), p)
    r = _run_model(cli, tmp_path, "--texture-space", p)
    assert r.code == 3 and str(p) in r.error
    assert f"the texture space has {len(uv_faces)} UV faces, the FLAME model 9976" in r.error
    assert "texture space that belongs to this FLAME topology" in r.error
    # Arrays of the wrong shape inside the file.
    q = tmp_path / "bad_texture.npz"
    np.savez(q, mean=np.zeros((32, 16, 3)), tex_dir=np.zeros((32, 32, 3, 2)), vt=uvs, ft=uv_faces)
    r = _run_model(cli, tmp_path, "--texture-space", q)
    assert r.code == 3 and str(q) in r.error and "'mean' must be a square (H, H, 3) image" in r.error


@pytest.mark.parametrize("flag,kind", [
    ("--flame-model", "pkl"),
    ("--flame-model", "npz"),
    ("--landmark-embedding", "npy"),
    ("--landmark-embedding", "pkl"),
    ("--texture-space", "npz"),
])
def test_code_executing_pickles_are_refused(cli, tmp_path, flag, kind):
    marker = tmp_path / "PWNED"
    payload = {"v_template": Evil(marker), "f": EvilSystem(marker)}
    p = tmp_path / f"evil.{kind}"
    if kind == "pkl":
        p.write_bytes(pickle.dumps(payload, protocol=2))
    elif kind == "npy":
        np.save(p, np.array([Evil(marker)], dtype=object), allow_pickle=True)
    else:
        np.savez(p, mean=np.array([Evil(marker)], dtype=object), tex_dir=np.array([EvilSystem(marker)], dtype=object),
                 v_template=np.array([Evil(marker)], dtype=object))
    r = _run_model(cli, tmp_path, flag, p)
    assert not marker.exists(), "pickled code ran"
    assert r.code == 3, r.err
    assert str(p) in r.error and "refused to load global" in r.error and "nothing was executed" in r.error
    assert any(f"global {g} " in r.error for g in ("io.open", "builtins.open", "posix.system", "os.system"))


def test_planted_cache_pickle_is_ignored_and_recomputed(cli, tmp_path):
    """An .npz with an object array under the exact cache file name the next run reads: ignored
    (np.load(allow_pickle=False)), nothing executed, detected again, cache rewritten, exit 0."""
    from flame_prior.cache import DetectionCache
    from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

    face = face_png(tmp_path / "in" / "face.png")
    cache = DetectionCache(tmp_path / "cache")
    path = cache.path(hashlib.sha256(face.read_bytes()).hexdigest(), MediaPipeDetector.name, MediaPipeDetector.version)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    np.savez(path, version=np.array([Evil(marker)], dtype=object), found=np.array([EvilSystem(marker)], dtype=object),
             landmarks=np.array([Evil(marker)], dtype=object))
    out = tmp_path / "out"
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", out, *FAST)
    assert not marker.exists(), "pickled code ran"
    assert r.code == 0, r.err
    assert f"cache file {path.name} was unreadable" in (out / "report.html").read_text()
    with np.load(path, allow_pickle=False) as z:  # rewritten with plain arrays
        assert bool(z["found"]) and z["landmarks"].shape == (478, 2)


# ============================================================================================
# 3. Crash safety


def test_exception_inside_exports_leaves_previous_output(cli, tmp_path, monkeypatch):
    import flame_prior.export as export

    face_png(tmp_path / "in" / "face.png")
    out = tmp_path / "out"
    assert cli("fit", "--data", tmp_path / "in", "--output-dir", out, *FAST, subprocess_=False).code == 0
    before = tree_digest(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(export, "write_report", boom)
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", out, "--overwrite", *FAST, subprocess_=False)
    assert r.code == 1
    assert r.error.startswith("internal error: RuntimeError: disk on fire (")
    assert "FLAME_PRIOR_DEBUG=1" in r.error and "Traceback" not in r.err and "second line" not in r.err
    assert tree_digest(out) == before
    assert_no_partials(out)

    r = cli("fit", "--data", tmp_path / "in", "--output-dir", out, "--overwrite", *FAST, subprocess_=False,
            env={"FLAME_PRIOR_DEBUG": "1"})
    assert r.code == 1 and "Traceback" in r.err and "boom" in r.err and "the traceback is above" in r.error

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "report.html"))

    monkeypatch.setattr(export, "write_report", disk_full)
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", out, "--overwrite", *FAST, subprocess_=False)
    assert r.code == 2
    assert "cannot write the output (No space left on device" in r.error and "Free disk space" in r.error
    assert tree_digest(out) == before
    assert_no_partials(out)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_report", ctrl_c)
    r = cli("fit", "--data", tmp_path / "in", "--output-dir", out, "--overwrite", *FAST, subprocess_=False)
    assert r.code == 130 and "interrupted" in r.err and "no output was written" in r.err
    assert tree_digest(out) == before
    assert_no_partials(out)


def test_exception_in_pipeline_run_without_cli(tmp_path, monkeypatch):
    """``pipeline.run`` itself (as the nerfstudio processor calls it): the error propagates, no partial dir."""
    import flame_prior.export as export
    from flame_prior.config import FitConfig
    from flame_prior.fit import FitterConfig
    from flame_prior.intrinsics import IntrinsicsConfig
    from flame_prior.detectors import DetectConfig
    from flame_prior.pipeline import run

    face_png(tmp_path / "in" / "face.png")
    monkeypatch.setattr(export, "write_colmap_text", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad camera")))
    cfg = FitConfig(data=tmp_path / "in", output_dir=tmp_path / "out", detect=DetectConfig(cache_dir=tmp_path / "c"),
                    intrinsics=IntrinsicsConfig(use_colmap=False),
                    fitter=FitterConfig(photometric_steps=0, rigid_steps=3, landmark_steps=3))
    with pytest.raises(ValueError, match="bad camera"):
        run(cfg)
    assert_no_output(tmp_path / "out")


def _wait_for(pred, timeout: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_sigint_and_sigterm_mid_fit_and_mid_export(tmp_path):
    """A real ``flame-prior`` process interrupted mid-fit (SIGINT, SIGTERM) and while it writes its
    temporary output (SIGTERM): exit 130 within seconds with one line, the previous output
    byte-identical, no partial directory."""
    d = tmp_path / "in"
    d.mkdir()
    for k in (10, 20):
        view(k).resize((390, 522)).save(d / f"{k}.jpg", quality=92)
    out = tmp_path / "out"
    base = [str(EXE), "fit", "--data", str(d), "--output-dir", str(out), "--intrinsics.no-use-colmap"]
    p = subprocess.run(base + FAST + ["--detect.cache-dir", str(tmp_path / "cache0")], capture_output=True,
                       text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    before = tree_digest(out)
    partial = lambda: any(out.parent.glob(".out.partial-*"))  # noqa: E731
    for sig, when in ((signal.SIGINT, "fit"), (signal.SIGTERM, "fit"), (signal.SIGTERM, "export")):
        cache = tmp_path / f"cache-{sig.name}-{when}"
        steps = ["--fitter.photometric-steps", "400"] if when == "fit" else FAST
        proc = subprocess.Popen(base + ["--overwrite", *steps, "--detect.cache-dir", str(cache)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        try:
            if when == "fit":
                # Detection writes one cache file per image; the fit starts right after the last.
                assert _wait_for(lambda: len(list(cache.glob("*.npz"))) == 2, 120), "detection never finished"
                time.sleep(1.5)
            else:
                assert _wait_for(lambda: partial() or proc.poll() is not None, 120)
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the signal ({when}): rc {proc.returncode}")
            proc.send_signal(sig)
            t0 = time.time()
            stdout, stderr = proc.communicate(timeout=30)
            took = time.time() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
        print(f"{sig.name} during {when}: exit {proc.returncode} after {took:.2f} s")
        assert proc.returncode == 130, (sig, when, proc.returncode, stderr)
        assert took < 5, f"{sig.name}: took {took:.1f} s to stop"
        lines = [ln for ln in stderr.splitlines() if "interrupted" in ln]
        assert len(lines) == 1 and "no output was written" in lines[0], stderr
        assert "Traceback" not in stderr
        assert tree_digest(out) == before, f"{sig.name} during {when} changed the previous output"
        assert_no_partials(out)


def test_cached_detections_reused_and_invalidated(cli, tmp_path, monkeypatch):
    from conftest import detector_call_spy

    calls = detector_call_spy(monkeypatch)
    d = tmp_path / "in"
    face_png(d / "a.png", "00000")
    face_png(d / "b.png", "00002")
    out = tmp_path / "out"
    args = ("fit", "--data", d, "--output-dir", out, *FAST)
    assert cli(*args, subprocess_=False).code == 0
    assert sorted(calls) == ["a", "b"]
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")}
    assert len(files) == 2
    first = transforms(out)

    calls.clear()
    assert cli(*args, "--overwrite", subprocess_=False).code == 0
    assert calls == [], "the second run detected again"
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")} == files
    assert transforms(out) == first, "same input, same cache: the same cameras"

    px = np.asarray(Image.open(d / "a.png")).copy()
    px[:6] = 0
    Image.fromarray(px).save(d / "a.png")
    calls.clear()
    assert cli(*args, "--overwrite", subprocess_=False).code == 0
    assert calls == ["a"], "the changed image is detected again, the other one is not"
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


# ============================================================================================
# 4. Numerical safety


def test_collinear_landmarks_are_refused(cli, tmp_path, mediapipe478):
    pts, mask = mediapipe478
    d, lmk = tmp_path / "in", tmp_path / "lmk"
    face_png(d / "line.png")
    line = np.stack([np.linspace(40, 220, len(pts)), np.linspace(60, 200, len(pts))], -1)
    write_landmarks(lmk, "line", line, mask)
    out = tmp_path / "out"
    r = cli("fit", "--data", d, "--output-dir", out, *FAST, "--detect.backend", "files", "--detect.landmark-dir", lmk)
    assert r.code == 4
    assert "line.png: landmarks are (nearly) collinear: not a face" in r.error
    assert_no_output(out)


def test_degenerate_views_left_out_beside_a_good_one(cli, tmp_path, mediapipe478):
    """With the 'files' backend: collinear landmarks and a 10 px face are left out with their reasons,
    the good view is fitted with a sane camera."""
    pts, mask = mediapipe478
    d, lmk = tmp_path / "in", tmp_path / "lmk"
    for stem in ("good", "line", "tiny"):
        face_png(d / f"{stem}.png")
    write_landmarks(lmk, "good", pts, mask)
    line = np.stack([np.linspace(40, 220, len(pts)), 0.5 * np.linspace(40, 220, len(pts)) + 30], -1)
    write_landmarks(lmk, "line", line, mask)
    c = pts.mean(0)
    tiny = c + (pts - c) * (10.0 / np.ptp(pts[:, 0]))
    write_landmarks(lmk, "tiny", tiny, mask)
    out = tmp_path / "out"
    r = cli("fit", "--data", d, "--output-dir", out, *FAST, "--detect.backend", "files", "--detect.landmark-dir", lmk)
    assert r.code == 0, r.err
    assert "1 views fitted, 2 left out" in r.err
    table = {ln.split("│")[1].strip(): ln for ln in r.err.splitlines() if ln.count("│") >= 3}
    assert "collinear" in table["line.png"]
    assert "face too small" in table["tiny.png"]
    (cam,) = json.loads((out / "fit_summary.json").read_text())["cameras"]
    assert cam["name"] == "good" and cam["landmark_error_rel_eye"] < 0.1
    assert 0.2 < np.linalg.norm(cam["t"]) < 5, "camera distance in metres"


def test_tiny_face_alone_fails_with_exit_4(cli, tmp_path, mediapipe478):
    pts, mask = mediapipe478
    d, lmk = tmp_path / "in", tmp_path / "lmk"
    face_png(d / "tiny.png")
    c = pts.mean(0)
    write_landmarks(lmk, "tiny", c + (pts - c) * (10.0 / np.ptp(pts[:, 0])), mask)
    r = cli("fit", "--data", d, "--output-dir", tmp_path / "out", *FAST, "--detect.backend", "files",
            "--detect.landmark-dir", lmk)
    assert r.code == 4 and "tiny.png: face too small" in r.error and "at least ~100 px" in r.error
    assert_no_output(tmp_path / "out")


@pytest.fixture(scope="module")
def fit_inputs(tmp_path_factory):
    """The bundled model and one real view (FFHQ 00000) ready for ``fit_flame``."""
    from flame_prior.config import FitConfig
    from flame_prior.images import load_images
    from flame_prior.intrinsics import IntrinsicsConfig, estimate_intrinsics
    from flame_prior.detectors import DetectConfig
    from flame_prior.observe import observe
    from flame_prior.flame.assets import load_assets

    d = tmp_path_factory.mktemp("fit")
    images, _ = load_images(face_png(d / "face.png"))
    cfg = FitConfig(data=d, output_dir=d / "out")
    assets = load_assets(**cfg.resolved_paths(), device=torch.device("cpu"))
    views, _ = observe(images, DetectConfig(cache_dir=d / "cache"), progress=False)
    intr = estimate_intrinsics(views, IntrinsicsConfig(use_colmap=False))
    return assets, views, intr


def _nan_view(assets, v):
    lm = v.detection.landmarks.copy()
    lm[int(assets.embedding.detector_index[0])] = np.nan
    return _with_landmarks(v, lm)


def _with_landmarks(v, landmarks):
    return dataclasses.replace(v, detection=dataclasses.replace(v.detection, landmarks=landmarks))


def test_nan_landmark_caught_up_front(fit_inputs):
    from flame_prior.fit import check_observation

    assets, (v,), intr = fit_inputs
    assert check_observation(v, assets.embedding) is None
    assert check_observation(_nan_view(assets, v), assets.embedding) == "landmarks contain NaN/Inf"
    inf = v.detection.landmarks.copy()
    inf[int(assets.embedding.detector_index[3]), 1] = np.inf
    assert check_observation(_with_landmarks(v, inf), assets.embedding) == "landmarks contain NaN/Inf"


def test_fit_flame_refuses_an_unchecked_nan_view(fit_inputs):
    """``fit_flame`` is public: given a view that was not checked, it must say why, not crash in OpenCV."""
    from flame_prior.fit import FitterConfig, fit_flame

    assets, (v,), intr = fit_inputs
    with pytest.raises(FitError, match="NaN"):
        fit_flame(assets.model, assets.embedding, [_nan_view(assets, v)], intr,
                  FitterConfig(photometric_steps=0, rigid_steps=2, landmark_steps=2), uv_layout=assets.uv_layout)


def test_non_finite_loss_mid_stage_restores_the_last_good_state(fit_inputs, monkeypatch):
    import flame_prior.fit as fit
    import flame_prior.fit.landmarks as fit_landmarks
    import flame_prior.fit.photometric as fit_photometric

    assets, views, intr = fit_inputs
    cfg = fit.FitterConfig(photometric_steps=15, photometric_steps_one_view=15,  # one view: its steps too
                           rigid_steps=3, landmark_steps=4, render_size=64, texture_size=64)
    calls = {"n": 0}
    real_energy = fit_photometric.landmark_energy

    def energy(*args, **kwargs):  # the photometric loss turns NaN at its 12th iteration
        calls["n"] += 1
        e = real_energy(*args, **kwargs)
        return e * float("nan") if calls["n"] == 12 else e

    monkeypatch.setattr(fit_photometric, "landmark_energy", energy)
    real_lm = fit_landmarks.fit_landmarks_lm

    def lm_then_nan(st, tg, names, *args, **kwargs):  # the landmark stage ends with NaN shape coefficients
        st, it, history = real_lm(st, tg, names, *args, **kwargs)
        if "shape" in names:
            st = st.replace(shape=st.shape * float("nan"))
        return st, it, history

    monkeypatch.setattr(fit_landmarks, "fit_landmarks_lm", lm_then_nan)
    res = fit.fit_flame(assets.model, assets.embedding, views, intr, cfg, uv_layout=assets.uv_layout)
    assert "landmark stage: a step produced NaN/Inf; restored the last good state" in res.notes
    assert "photometric stage: non-finite loss at iteration 12; restored the last good state" in res.notes
    for arr in (res.cameras.R, res.cameras.t, res.cameras.fx, torch.as_tensor(res.vertices)):
        assert torch.isfinite(torch.as_tensor(arr)).all()
    assert np.isfinite(np.asarray(res.flame["shape"])).all()
    assert res.views[0].landmark_error_px < 20
