"""nerfstudio integration: ``ns-process-data flame-face``, the ``flame-face`` dataparser, ``ns-train``.

Runs only where nerfstudio is installed (the ``[nerfstudio]`` extra, ``scripts/ci_nerfstudio.sh``
builds ``.venv-ns``); elsewhere the whole module skips with that message.

The installed-command tests need flame-prior installed as a wheel (``pip install '.[nerfstudio]'``):
an editable install has no ``flame_prior_nerfstudio.pth``, so those tests skip there unless
``FLAME_PRIOR_REQUIRE_NS_HOOK=1`` (set by the CI script) turns the skip into a failure.

Offline LPIPS: every nerfstudio model builds an LPIPS metric whose AlexNet backbone torchvision
downloads on first use (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``). The ns-train tests
point ``TORCH_HOME`` at a temporary folder where ``flame-prior nerfstudio-weights --untrained`` (the
command offline users run) put a randomly initialised AlexNet under that name, so the metric builds
without a network; the LPIPS value ns-eval reports with it is meaningless (the test checks PSNR).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "nerfstudio", reason="nerfstudio is not installed: these tests run in .venv-ns (scripts/ci_nerfstudio.sh)"
)

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from flame_prior.geometry import axis_angle_to_rotation_matrix, opencv_w2c_to_opengl_c2w  # noqa: E402

from conftest import shared_path  # noqa: E402

BIN = Path(sys.executable).parent
PTH_NAME = "flame_prior_nerfstudio.pth"
REQUIRE_HOOK = os.environ.get("FLAME_PRIOR_REQUIRE_NS_HOOK") == "1"


def _cli(name: str, *args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None):
    exe = BIN / name
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def _require_installed_hook() -> None:
    if not any((Path(p) / PTH_NAME).is_file() for p in site.getsitepackages()):
        msg = (f"{PTH_NAME} is not in site-packages (editable install?): install flame-prior as a wheel, "
               "pip install '.[nerfstudio]', to get `ns-process-data flame-face`")
        if REQUIRE_HOOK:
            pytest.fail(msg)
        pytest.skip(msg)


# ----------------------------------------------------------------------------------------------
# A synthetic flame-prior dataset (the layout of flame_prior.export.nerfstudio / flame_params)
# ----------------------------------------------------------------------------------------------

def write_synthetic_dataset(out: Path, n_views: int = 4, width: int = 40, height: int = 32, seed: int = 0) -> dict:
    """Random cameras 0.6-1.2 m from FLAME's origin looking at it; noise images, disc masks."""
    rng = np.random.default_rng(seed)
    names = [f"view{i:02d}" for i in range(n_views)]
    yaw = rng.uniform(-0.7, 0.7, n_views)
    pitch = rng.uniform(-0.3, 0.3, n_views)
    dist = rng.uniform(0.6, 1.2, n_views)
    # OpenCV camera looking down -Z of the world (at the face, which looks along +Z): a 180 deg
    # turn about X, then yaw/pitch of the head relative to the camera.
    R_face = np.diag([1.0, -1.0, -1.0])
    aa = np.stack([pitch, yaw, np.zeros(n_views)], -1)
    R_head = axis_angle_to_rotation_matrix(torch.as_tensor(aa)).numpy()
    R = R_face[None] @ R_head
    t = np.stack([rng.normal(0, 0.01, n_views), rng.normal(0, 0.01, n_views), dist], -1)
    f = np.full(n_views, 1.2 * width)
    cx, cy = np.full(n_views, width / 2), np.full(n_views, height / 2)
    c2w = opencv_w2c_to_opengl_c2w(R, t)

    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    yy, xx = np.mgrid[:height, :width]
    mask = (((xx + 0.5 - width / 2) / (0.35 * width)) ** 2 + ((yy + 0.5 - height / 2) / (0.45 * height)) ** 2) <= 1
    frames = []
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out / "images" / f"{name}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / "masks" / f"{name}.png")
        frames.append({"file_path": f"images/{name}.png", "mask_path": f"masks/{name}.png",
                       "transform_matrix": c2w[i].tolist(), "fl_x": float(f[i]), "fl_y": float(f[i]),
                       "cx": float(cx[i]), "cy": float(cy[i]), "w": width, "h": height})
    meta = {"camera_model": "PINHOLE", "applied_transform": np.eye(4)[:3].tolist(),
            "flame_param_path": "flame_params.npz", "frames": frames}
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    np.savez(out / "flame_params.npz", shape=rng.normal(size=60), expression=np.zeros(0), rotation=np.zeros(3),
             neck_pose=np.zeros(3), jaw_pose=np.zeros(3), eye_pose=np.zeros(6), translation=np.zeros(3),
             R=R, t=t, fx=f, fy=f, cx=cx, cy=cy, width=np.full(n_views, width, dtype=np.int64),
             height=np.full(n_views, height, dtype=np.int64), view_names=np.array(names))
    return {"names": names, "c2w": c2w}


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ns_synth") / "dataset"
    write_synthetic_dataset(out)
    return out


def _transforms_c2w(dataset: Path) -> dict[str, np.ndarray]:
    meta = json.loads((dataset / "transforms.json").read_text())
    return {Path(fr["file_path"]).stem: np.asarray(fr["transform_matrix"], dtype=np.float64) for fr in meta["frames"]}


def _parse(config, split: str = "train"):
    return config.setup().get_dataparser_outputs(split=split)


def check_nerfstudio_data_keeps_frame(dataset: Path) -> None:
    """nerfstudio's own parser, re-orienting/centring/scaling off, gives flame-prior's c2w to 1e-5."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    cfg = NerfstudioDataParserConfig(data=dataset, orientation_method="none", center_method="none",
                                     auto_scale_poses=False, eval_mode="all")
    out = _parse(cfg)
    want = _transforms_c2w(dataset)
    got = out.cameras.camera_to_worlds.numpy()
    assert len(out.image_filenames) == len(want)
    for fname, c2w in zip(out.image_filenames, got):
        np.testing.assert_allclose(c2w, want[Path(fname).stem][:3], atol=1e-5)
    np.testing.assert_allclose(out.dataparser_transform.numpy(), np.eye(4)[:3], atol=1e-7)
    assert out.dataparser_scale == 1.0
    assert out.mask_filenames is not None and len(out.mask_filenames) == len(want)


def check_flame_face_parser(dataset: Path) -> None:
    """The flame-face parser: same cameras, masks, scene box, FLAME parameters in metadata."""
    from nerfstudio_plugin.dataparser import FlameFaceDataParserConfig

    out = _parse(FlameFaceDataParserConfig(data=dataset, eval_mode="all"))
    want = _transforms_c2w(dataset)
    for fname, c2w in zip(out.image_filenames, out.cameras.camera_to_worlds.numpy()):
        np.testing.assert_allclose(c2w, want[Path(fname).stem][:3], atol=1e-5)
    assert out.mask_filenames is not None
    aabb = out.scene_box.aabb.numpy()
    np.testing.assert_allclose(aabb, [[-0.3] * 3, [0.3] * 3])
    params = out.metadata["flame_params"]
    for key in ("shape", "expression", "rotation", "neck_pose", "jaw_pose", "eye_pose", "translation",
                "R", "t", "fx", "fy", "cx", "cy", "width", "height", "view_names"):
        assert key in params, key
    idx = out.metadata["flame_view_index"]
    names = [str(params["view_names"][i]) for i in idx]
    assert names == [Path(f).stem for f in out.image_filenames]
    # The stored OpenCV w2c and the frame's OpenGL c2w agree, row by row.
    c2w = opencv_w2c_to_opengl_c2w(params["R"][idx], params["t"][idx])
    np.testing.assert_allclose(out.cameras.camera_to_worlds.numpy(), c2w[:, :3], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The ns-process-data hook
# ----------------------------------------------------------------------------------------------

def test_hook_is_cheap_and_standard_library_only():
    """Importing the .pth's module must not pull in nerfstudio, torch, flame-prior (or typing).

    The bound on time is loose (a loaded 2-core CI box); the module list is the real check.
    """
    code = ("import sys, time; t = time.perf_counter(); import nerfstudio_plugin.ns_process_data_hook as h; "
            "h.install(); dt = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'nerfstudio', 'flame_prior', 'tyro', 'numpy', 'typing') if m in sys.modules]; "
            "print(dt, heavy)")
    res = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    dt, heavy = res.stdout.split(" ", 1)
    assert heavy.strip() == "[]", heavy
    print(f"hook import + install: {float(dt) * 1e3:.1f} ms")
    assert float(dt) < 0.5, dt


def test_hook_extends_process_data_commands():
    """With the finder installed, importing nerfstudio's script module adds exactly one flame-face."""
    code = ("import typing; import nerfstudio_plugin.ns_process_data_hook as h; h.install(); h.install(); "
            "import nerfstudio.scripts.process_data as m; "
            "from nerfstudio_plugin.process_data import _subcommand_names, FlameFaceProcessor; "
            "names = _subcommand_names(m.Commands); "
            "members = [typing.get_args(a)[0] for a in typing.get_args(m.Commands)]; "
            "print(sorted(names), members.count(FlameFaceProcessor))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "'flame-face'" in res.stdout and "'images'" in res.stdout and res.stdout.strip().endswith(" 1"), res.stdout


def test_processor_reuses_fit_config():
    from flame_prior.config import FitConfig
    from nerfstudio_plugin.process_data import FlameFaceProcessor

    assert issubclass(FlameFaceProcessor, FitConfig)
    cfg = FlameFaceProcessor(data=Path("in"), output_dir=Path("out"))
    assert cfg.data == Path("in") and cfg.output_dir == Path("out") and not cfg.overwrite


def test_installed_ns_process_data_lists_flame_face():
    _require_installed_hook()
    res = _cli("ns-process-data", "--help", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "flame-face" in res.stdout and "unavailable" not in res.stderr, res.stdout + res.stderr
    res = _cli("ns-process-data", "flame-face", "--help", timeout=300)
    assert res.returncode == 0, res.stderr
    for flag in ("--data", "--output-dir", "--flame-model", "--overwrite", "--video.num-frames-target",
                 "--video.sequence", "--tracker.keyframes"):
        assert flag in res.stdout, flag
    res = _cli("ns-process-data", "images", "--help", timeout=300)  # nerfstudio's own, unaffected
    assert res.returncode == 0 and "--data" in res.stdout, res.stderr


def test_installed_pth_line_matches_hook():
    _require_installed_hook()
    from nerfstudio_plugin.ns_process_data_hook import PTH_LINE

    pth = next(Path(p) / PTH_NAME for p in site.getsitepackages() if (Path(p) / PTH_NAME).is_file())
    assert pth.read_text().strip() == PTH_LINE


def test_installed_flame_face_fails_with_nonzero_status(tmp_path):
    _require_installed_hook()
    res = _cli("ns-process-data", "flame-face", "--data", str(tmp_path / "missing"), "--output-dir",
               str(tmp_path / "out"), timeout=300)
    assert res.returncode != 0, res.stdout + res.stderr
    assert not (tmp_path / "out").exists()


def test_installed_flame_face_takes_a_clip(tmp_path):
    """``ns-process-data flame-face --data clip.mp4`` decodes the clip (flame_prior.video) through the same
    FitConfig: a clip without a face fails as a fit failure (exit 4, not a bad-input 2), nothing written."""
    _require_installed_hook()
    from video_fixtures import encode_clip, moving_pattern

    clip = encode_clip(tmp_path / "noface.mp4", moving_pattern(20, 128, 160), fps=10)
    res = _cli("ns-process-data", "flame-face", "--data", str(clip), "--output-dir", str(tmp_path / "out"), timeout=600)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "no view can be fitted" in res.stdout + res.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Dataparsers on a synthetic dataset
# ----------------------------------------------------------------------------------------------

def test_flame_face_dataparser_is_registered():
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    parsers, descriptions = discover_dataparsers()
    from nerfstudio_plugin.dataparser import FlameFaceDataParserConfig

    assert isinstance(parsers.get("flame-face"), FlameFaceDataParserConfig)
    cfg = parsers["flame-face"]
    assert (cfg.orientation_method, cfg.center_method, cfg.auto_scale_poses, cfg.scale_factor) == ("none", "none", False, 1.0)


def test_nerfstudio_data_keeps_flame_frame_synthetic(synthetic_dataset):
    check_nerfstudio_data_keeps_frame(synthetic_dataset)


def test_flame_face_parser_synthetic(synthetic_dataset):
    check_flame_face_parser(synthetic_dataset)


def test_flame_face_parser_rejects_plain_dataset(tmp_path):
    from nerfstudio_plugin.dataparser import FlameFaceDataParserConfig

    write_synthetic_dataset(tmp_path / "d", n_views=2)
    meta = json.loads((tmp_path / "d" / "transforms.json").read_text())
    del meta["flame_param_path"]
    (tmp_path / "d" / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="flame_param_path"):
        _parse(FlameFaceDataParserConfig(data=tmp_path / "d", eval_mode="all"))


# ----------------------------------------------------------------------------------------------
# ns-train nerfacto, CPU, offline
# ----------------------------------------------------------------------------------------------

def _offline_torch_home(root: Path) -> Path:
    """A TORCH_HOME whose hub cache holds a *random* AlexNet under torchvision's file name (see module doc),
    put there by the command users run offline: ``flame-prior nerfstudio-weights --untrained``."""
    import torchvision

    res = _cli("flame-prior", "nerfstudio-weights", "--untrained", timeout=300, env={"TORCH_HOME": str(root)})
    assert res.returncode == 0, res.stdout + res.stderr
    name = Path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name
    assert (root / "hub" / "checkpoints" / name).is_file() and "untrained" in res.stdout + res.stderr
    return root


TINY_NERFACTO = [
    "--machine.device-type", "cpu", "--vis", "tensorboard", "--max-num-iterations", "4",
    "--steps-per-save", "3", "--steps-per-eval-batch", "1000", "--steps-per-eval-image", "1000",
    "--steps-per-eval-all-images", "1000", "--logging.local-writer.enable", "False",
    "--pipeline.datamanager.train-num-rays-per-batch", "256", "--pipeline.datamanager.eval-num-rays-per-batch", "256",
    "--pipeline.model.eval-num-rays-per-chunk", "256", "--pipeline.model.num-levels", "4",
    "--pipeline.model.log2-hashmap-size", "12", "--pipeline.model.max-res", "128",
    "--pipeline.model.num-nerf-samples-per-ray", "16", "--pipeline.model.num-proposal-samples-per-ray", "16", "16",
    "--pipeline.model.camera-optimizer.mode", "off",
]


def _ns_env(workdir: Path) -> dict:
    home = workdir / "torch_home"
    return {"TORCH_HOME": str(home if home.is_dir() else _offline_torch_home(home)), "WANDB_MODE": "disabled",
            "CUDA_VISIBLE_DEVICES": ""}


def run_ns_train(dataset: Path, workdir: Path, dataparser_args: list[str]) -> Path:
    env = _ns_env(workdir)
    t0 = time.perf_counter()
    res = _cli("ns-train", "nerfacto", "--data", str(dataset), "--output-dir", str(workdir / "outputs"),
               "--experiment-name", "flame", "--timestamp", "t", *TINY_NERFACTO, *dataparser_args,
               timeout=900, env=env, cwd=workdir)
    print(f"ns-train: {time.perf_counter() - t0:.1f}s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ckpts = list((workdir / "outputs").rglob("*.ckpt"))
    assert ckpts, res.stdout[-3000:]
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    assert state["step"] >= 3
    tf = json.loads(next((workdir / "outputs").rglob("dataparser_transforms.json")).read_text())
    np.testing.assert_allclose(tf["transform"], np.eye(4)[:3], atol=1e-7)
    assert tf["scale"] == 1.0
    return ckpts[0]


def test_ns_train_nerfacto_flame_face_synthetic(synthetic_dataset, tmp_path):
    run_ns_train(synthetic_dataset, tmp_path, ["flame-face", "--eval-mode", "all"])


def test_checkpoint_render_eval_and_resume(tmp_path):
    """nerfstudio opens the checkpoint it wrote, under torch's weights-only default (the extra's torch
    2.14.1): ns-render (with --downscale-factor 4: images_4/ and masks_4/ are written), ns-eval, and
    resuming training. torch.load itself stays strict outside nerfstudio's loaders."""
    dataset = tmp_path / "dataset"
    write_synthetic_dataset(dataset)
    ckpt = run_ns_train(dataset, tmp_path, ["flame-face", "--eval-mode", "all"])
    with pytest.raises(Exception, match="Weights only load failed"):  # the problem nerfstudio runs into
        torch.load(ckpt, map_location="cpu")
    config = next((tmp_path / "outputs").rglob("config.yml"))
    env = _ns_env(tmp_path)

    t0 = time.perf_counter()
    res = _cli("ns-render", "dataset", "--load-config", str(config), "--output-path", str(tmp_path / "renders"),
               "--split", "train", "--rendered-output-names", "rgb", "--downscale-factor", "4",
               timeout=900, env=env, cwd=tmp_path)
    print(f"ns-render: {time.perf_counter() - t0:.1f}s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    renders = sorted((tmp_path / "renders").rglob("*.jpg"))
    assert len(renders) == 4, res.stdout[-2000:]
    assert all(Image.open(p).size == (10, 8) for p in renders)  # 40 x 32 / 4
    assert len(list((dataset / "images_4").iterdir())) == 4 and len(list((dataset / "masks_4").iterdir())) == 4
    assert set(np.unique(np.asarray(Image.open(next((dataset / "masks_4").iterdir()))))) <= {0, 255}

    t0 = time.perf_counter()
    res = _cli("ns-eval", "--load-config", str(config), "--output-path", str(tmp_path / "eval.json"),
               timeout=900, env=env, cwd=tmp_path)
    print(f"ns-eval: {time.perf_counter() - t0:.1f}s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "psnr" in json.loads((tmp_path / "eval.json").read_text())["results"]

    t0 = time.perf_counter()
    res = _cli("ns-train", "nerfacto", "--data", str(dataset), "--output-dir", str(tmp_path / "outputs"),
               "--experiment-name", "flame", "--timestamp", "resumed", *TINY_NERFACTO, "--max-num-iterations", "7",
               "--load-dir", str(ckpt.parent), "flame-face", "--eval-mode", "all", timeout=900, env=env, cwd=tmp_path)
    print(f"ns-train resumed: {time.perf_counter() - t0:.1f}s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    resumed = sorted((tmp_path / "outputs" / "flame" / "nerfacto" / "resumed").rglob("*.ckpt"))
    assert resumed and torch.load(resumed[-1], map_location="cpu", weights_only=False)["step"] >= 6


# ----------------------------------------------------------------------------------------------
# End to end on real photographs: ns-process-data flame-face -> parsers -> ns-train
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory) -> Path:
    src = shared_path("data/multiview/2-346/images")
    _require_installed_hook()
    root = tmp_path_factory.mktemp("ns_real")
    (root / "photos").mkdir()
    for name in ("1.jpg", "15.jpg", "30.jpg"):
        shutil.copy(src / name, root / "photos" / name)
    t0 = time.perf_counter()
    res = _cli("ns-process-data", "flame-face", "--data", str(root / "photos"), "--output-dir",
               str(root / "dataset"), timeout=1500)
    print(f"ns-process-data flame-face (3 photos): {time.perf_counter() - t0:.1f}s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root / "dataset"


@pytest.mark.slow
def test_real_ns_process_data_output(real_dataset):
    for rel in ("transforms.json", "flame_params.npz"):
        assert (real_dataset / rel).is_file(), rel
    meta = json.loads((real_dataset / "transforms.json").read_text())
    assert len(meta["frames"]) == 3
    for fr in meta["frames"]:
        mask = np.asarray(Image.open(real_dataset / fr["mask_path"]))
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}


@pytest.mark.slow
def test_real_nerfstudio_data_keeps_flame_frame(real_dataset):
    check_nerfstudio_data_keeps_frame(real_dataset)


@pytest.mark.slow
def test_real_flame_face_parser(real_dataset):
    check_flame_face_parser(real_dataset)


@pytest.mark.slow
def test_real_ns_train_nerfacto(real_dataset, tmp_path):
    run_ns_train(real_dataset, tmp_path, ["flame-face", "--eval-mode", "all"])


def test_per_frame_intrinsics_and_lens_reach_nerfstudio(tmp_path):
    """transforms.json of views with different sizes, focal lengths and lenses: nerfstudio's own
    dataparser gives every frame its fx, cx, size and (k1, k2, k3, k4, p1, p2), OpenCV-type cameras."""
    import dataclasses

    from nerfstudio.cameras.cameras import CameraType
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from export_fixtures import make_fit
    from flame_prior.export.nerfstudio import write_transforms

    views, result, _, _ = make_fit()
    n = len(result.cameras)
    lens = np.zeros((n, 5))
    lens[:, 0] = np.linspace(-0.25, -0.05, n)  # k1
    lens[:, 1] = 0.02  # k2
    lens[:, 2:4] = [0.001, -0.002]  # p1, p2
    lens[-1, 4] = 0.01  # k3
    result.cameras = dataclasses.replace(result.cameras, distortion=torch.as_tensor(lens))
    write_transforms(tmp_path, views, result)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and "k1" not in meta and "fl_x" not in meta

    out = _parse(NerfstudioDataParserConfig(data=tmp_path, orientation_method="none", center_method="none",
                                            auto_scale_poses=False, eval_mode="all"))
    cam = result.cameras.to_numpy()
    row = {vf.name: i for i, vf in enumerate(result.views)}
    assert out.cameras.camera_type.unique().tolist() == [CameraType.PERSPECTIVE.value]
    for j, fname in enumerate(out.image_filenames):
        i = row[Path(fname).stem]
        c = out.cameras[j]
        assert (int(c.width), int(c.height)) == (cam["width"][i], cam["height"][i])
        np.testing.assert_allclose([float(c.fx), float(c.fy), float(c.cx), float(c.cy)],
                                   [cam["fx"][i], cam["fy"][i], cam["cx"][i], cam["cy"][i]], rtol=1e-6)
        k1, k2, p1, p2, k3 = lens[i]
        np.testing.assert_allclose(c.distortion_params.numpy(), [k1, k2, k3, 0.0, p1, p2], atol=1e-7)
