"""Dynamic sequences: tracking accuracy on a synthetic sequence with known per-timestep expression, jaw
and head motion (rendered with flame-prior's renderer), the no-expression model, and the exports over
time read back the way GaussianAvatars, VHAP and nerfstudio read them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from flame_prior.config import FitConfig
from flame_prior.fit import FitterConfig
from flame_prior.geometry import axis_angle_to_rotation_matrix, rotation_angle_deg
from flame_prior.intrinsics import IntrinsicsConfig
from flame_prior.export.output_dir import check_output_dir
from flame_prior.flame.assets import Assets, ModelInfo
from flame_prior.pipeline import PreparedViews
from flame_prior.track import NO_EXPRESSION_NOTE, fit_dynamic, run_dynamic
from flame_prior.video import Intake
from sequence_fixtures import render_sequence

pytestmark = pytest.mark.slow


def _setup(T, C, expressions=True, photometric_steps=0, out=None, **kw):
    data, model, emb, ts, views, timestep, camera, cams, truth, shape = render_sequence(T, C, expressions=expressions)
    intake = Intake([v.image for v in views], [], "video" if C == 1 else "cameras", camera, timestep,
                    [t / 25 for t in timestep], [f"cam{c}" for c in range(C)])
    prepared = PreparedViews(views, [], {}, intake, "dynamic", "synthetic sequence")
    info = ModelInfo(path="synthetic", sha256=data.sha256, n_shape=model.n_shape, n_expr=model.n_expr)
    assets = Assets(model, emb, ts if expressions else None, None if expressions else _uv(data), info)
    cfg = FitConfig(data=Path("synthetic"), output_dir=out or Path("unused"), overwrite=True,
                    intrinsics=IntrinsicsConfig(focal_px=float(cams.fx[0])),
                    fitter=FitterConfig(photometric_steps=photometric_steps), **kw)
    return assets, prepared, cfg, cams, truth, shape


def _uv(data):
    from flame_prior.flame.uv_unwrap import cylindrical_uv_layout

    return cylindrical_uv_layout(data.v_template, data.faces)


def _head_in_camera_error_deg(seq, cams_true, truth) -> np.ndarray:
    """Per timestep and camera, the angle between fitted and true head-in-camera rotations."""
    R_fit = seq.cameras.R[:, None] @ axis_angle_to_rotation_matrix(torch.as_tensor(seq.params["rotation"]))[None]
    R_true = cams_true.R[:, None] @ axis_angle_to_rotation_matrix(torch.as_tensor(truth["rotation"]))[None]
    return rotation_angle_deg(R_fit.reshape(-1, 3, 3), R_true.reshape(-1, 3, 3)).reshape(len(cams_true), -1).numpy()


def _assert_accurate(seq, truth, cams):
    rng = truth["expression"].max(0) - truth["expression"].min(0)
    rms = np.sqrt(((seq.params["expression"] - truth["expression"]) ** 2).mean(0))
    assert (rms / rng).max() <= 0.10, rms / rng  # every coefficient within 10 % of its range (RMS over time)
    jaw = np.degrees(np.abs(seq.params["jaw_pose"][:, 0] - truth["jaw_pose"][:, 0]))  # opening angle
    assert jaw.max() <= 1.0, jaw
    assert _head_in_camera_error_deg(seq, cams, truth).max() <= 1.5
    assert np.nanmedian(seq.landmark_px) < 1.0  # noise is 0.5 px


def test_synthetic_dynamic_sequence_one_camera():
    assets, prepared, cfg, cams, truth, _ = _setup(30, 1)
    _, seq, key, _ = fit_dynamic(assets, prepared, cfg)
    assert len(seq.timesteps) == 30 and seq.view_index.shape == (30, 1)
    _assert_accurate(seq, truth, cams)


def test_synthetic_dynamic_sequence_three_cameras():
    assets, prepared, cfg, cams, truth, _ = _setup(12, 3)
    _, seq, key, _ = fit_dynamic(assets, prepared, cfg)
    assert seq.view_index.shape == (12, 3) and (seq.view_index >= 0).all()
    # several cameras: the rig comes from the first timestep's static fit, in FLAME's rest frame
    _assert_accurate(seq, truth, cams)


def test_model_without_expressions_says_so_and_tracks_jaw_and_motion(tmp_path):
    assets, prepared, cfg, cams, truth, _ = _setup(12, 1, expressions=False, out=tmp_path / "out")
    truth["expression"] = np.zeros((12, 0))
    console = Console(record=True, width=200)
    out = check_output_dir(cfg.output_dir, None, True)
    run_dynamic(cfg, assets, prepared, out, None, console, time.perf_counter())
    lines = [ln for ln in console.export_text().splitlines() if ln.strip()]
    assert lines[0] == f"note: {NO_EXPRESSION_NOTE}"  # up front, one line
    params = np.load(out / "flame_params.npz")
    assert params["expression"].shape == (12, 0)
    jaw = np.degrees(np.abs(params["jaw_pose"][:, 0] - truth["jaw_pose"][:, 0]))
    assert jaw.max() <= 1.0, jaw
    summary = json.loads((out / "fit_summary.json").read_text())
    assert NO_EXPRESSION_NOTE in summary["notes"]


def test_exports_over_time_read_like_gaussian_avatars_vhap_and_nerfstudio(tmp_path):
    T, C = 10, 2
    assets, prepared, cfg, cams, truth, _ = _setup(T, C, out=tmp_path / "out", avatar_format=True, photometric_steps=10)
    out = check_output_dir(cfg.output_dir, None, True)
    run_dynamic(cfg, assets, prepared, out, None, Console(quiet=True), time.perf_counter())
    # nerfstudio: a time per frame, 0 .. 1 over the timesteps; fixed cameras
    tf = json.loads((out / "transforms.json").read_text())
    assert len(tf["frames"]) == T * C
    times = {f["flame_prior"]["timestep"]: f["time"] for f in tf["frames"]}
    assert times[0] == 0.0 and times[T - 1] == 1.0 and all(times[k] < times[k + 1] for k in range(T - 1))
    assert all((out / f["file_path"]).is_file() and (out / f["mask_path"]).is_file() for f in tf["frames"])
    # the avatar data set, read as GaussianAvatars' readDynamicNerfInfo + FlameGaussianModel.load_meshes do
    av = out / "avatar"
    divisions = {d: json.loads((av / f"transforms_{d}.json").read_text()) for d in ("train", "val", "test")}
    meshes = {}
    for d in ("train", "test"):  # GaussianAvatars loads train (val merged without --eval) and test meshes
        for f in divisions[d]["frames"]:
            meshes[f["timestep_index"]] = dict(np.load(av / f["flame_param_path"]))
    for f in divisions["val"]["frames"]:
        assert f["timestep_index"] in meshes  # val timesteps are among the loaded ones
    assert 0 in meshes and max(meshes) + 1 == T and sorted(meshes) == list(range(T))
    for k, m in meshes.items():
        assert m["expr"].shape == (1, 100) and m["shape"].shape == (300,) and m["static_offset"].shape == (1, 5143, 3)
        assert abs(m["jaw_pose"][0, 0] - truth["jaw_pose"][k, 0]) <= np.radians(1.0)  # the jaw's opening
    assert (av / "canonical_flame_param.npz").is_file()
    # VHAP's split_json: first ceil(0.7 T) timesteps train/val (last camera = val), the rest test, all cameras
    n_train = int(np.ceil(0.7 * T))
    assert divisions["train"]["timestep_indices"] == list(range(n_train)) == divisions["val"]["timestep_indices"]
    assert divisions["test"]["timestep_indices"] == list(range(n_train, T))
    assert divisions["val"]["camera_indices"] == [C - 1] and divisions["train"]["camera_indices"] == list(range(C - 1))
    for d, db in divisions.items():  # VHAP's NeRFDataset filters frames by these lists
        assert all(f["timestep_index"] in db["timestep_indices"] and f["camera_index"] in db["camera_indices"]
                   for f in db["frames"])
        for f in db["frames"]:
            assert (av / f["file_path"]).is_file() and (av / f["fg_mask_path"]).is_file()
            assert f["timestep_id"] == f"{f['timestep_index']:05d}" and f["camera_id"] in ("cam0", "cam1")
            assert abs(f["cx"] - f["w"] / 2) < 1e-9 and abs(f["cy"] - f["h"] / 2) < 1e-9
    # summary and report
    summary = json.loads((out / "fit_summary.json").read_text())
    assert summary["sequence"]["kind"] == "dynamic" and summary["sequence"]["timesteps"] == T
    html = (out / "report.html").read_text()
    assert "sequence_strip.jpg" in html and "sequence_curves.png" in html
    assert (out / "report" / "sequence_strip.jpg").is_file() and (out / "report" / "sequence_curves.png").is_file()
