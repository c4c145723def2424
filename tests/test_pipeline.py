"""The default assets (package data, no download, no flag) and how model paths are resolved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flame_prior.config import ENV_EMBEDDING, ENV_FLAME_MODEL, FitConfig
from flame_prior.errors import ModelFileError
from flame_prior.flame.assets import default_embedding_path, default_model_path, load_assets


def _load(**kw):
    """The assets a ``fit`` with these options loads (flags, then environment, then defaults)."""
    return load_assets(**FitConfig(data=Path("in"), output_dir=Path("out"), **kw).resolved_paths(),
                       device=torch.device("cpu"))


def test_default_model_and_embedding_ship_with_the_package(monkeypatch):
    monkeypatch.delenv(ENV_FLAME_MODEL, raising=False)
    monkeypatch.delenv(ENV_EMBEDDING, raising=False)
    assert default_model_path().is_file() and default_embedding_path().is_file()
    data_dir = default_model_path().parent
    assert (data_dir / "NOTICE-FLAME2023-Open.md").read_text().count("CC BY 4.0") >= 1
    assert "Apache" in (data_dir / "NOTICE-mediapipe-embedding.md").read_text()
    assets = _load()
    info = assets.info
    assert info.default and info.n_shape == 60 and info.n_expr == 0
    assert any("no expression space" in n for n in info.notes)  # says what it lacks
    assert assets.model.n_shape == 60 and assets.model.n_expr == 0
    emb = assets.embedding
    assert emb.detector == "mediapipe478"
    # 468 Face Mesh points + the two iris centres (MediaPipe 473 = subject's left, 468 = right).
    assert len(emb.face_idx) == 470
    assert list(emb.detector_index[-2:]) == [473, 468]


def test_iris_landmarks_sit_on_the_pupils():
    """The appended iris landmarks are the most forward vertex of each eyeball: the left one at +X."""
    assets = _load()
    with np.load(default_embedding_path()) as z:
        pupils = z["pupil_vertex_index"]
    faces = assets.model.faces.numpy()
    emb = assets.embedding
    for k, v in enumerate(pupils):
        f, b = emb.face_idx[-2 + k], emb.bary[-2 + k]
        assert faces[f][np.argmax(b)] == v and b.max() == 1.0
    with np.load(default_model_path()) as z:
        vt = z["v_template"]
    assert vt[pupils[0], 0] > 0 > vt[pupils[1], 0]


def test_environment_variable_names_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_FLAME_MODEL, str(tmp_path / "missing.pkl"))
    with pytest.raises(ModelFileError) as e:
        _load()
    assert "missing.pkl" in str(e.value) and "flame.is.tue.mpg.de" in str(e.value)
    # A flag wins over the environment.
    assets = _load(flame_model=default_model_path())
    assert not assets.info.default


def test_flame_embedding_file_works_as_an_alternative(shared):
    """FLAME's own 105-point MediaPipe embedding (the user's file) loads in place of ours."""
    path = shared("flame-assets/mediapipe_landmark_embedding.npz")
    assets = _load(landmark_embedding=path)
    assert len(assets.embedding.face_idx) == 105


def test_bfm_albedo_without_uvs_needs_the_template_obj(tmp_path):
    """DECA's FLAME_albedo_from_BFM.npz carries no vt/ft: the UV layout comes from --uv-layout."""
    from flame_prior.flame.assets import load_texture_space

    side = 8
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "bfm.npz", MU=rng.random(side * side * 3), PC=rng.random((side * side * 3, 4)))
    with pytest.raises(ModelFileError) as e:
        load_texture_space(tmp_path / "bfm.npz")
    assert "--uv-layout" in str(e.value) and "bfm.npz" in str(e.value)
    obj = tmp_path / "template.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n")
    ts = load_texture_space(tmp_path / "bfm.npz", obj)
    assert ts.mean.shape == (side, side, 3) and ts.basis.shape == (side, side, 3, 4)
    assert ts.uv_faces.shape == (1, 3)


def test_fit_with_a_flame_pkl_that_has_expressions(shared, tmp_path):
    """The real-file path end to end: a FLAME-format .pkl (chumpy-style arrays, sparse J_regressor,
    100 expression components, generated here on FLAME's topology) fits a real photo and its
    expression coefficients are exported."""
    import json
    import shutil

    from flame_prior.fit import FitterConfig
    from flame_prior.flame import build_test_model, load_flame_model, write_flame_pkl
    from flame_prior.pipeline import run

    image = shared("data/singleview/ffhq/00000.png")
    model = build_test_model(n_shape=60, n_expr=100, seed=1, template=load_flame_model(default_model_path()))
    write_flame_pkl(model, tmp_path / "generic_model.pkl")
    (tmp_path / "in").mkdir()
    shutil.copy(image, tmp_path / "in" / image.name)
    out = run(_config_for(tmp_path, FitterConfig(photometric_steps=5)), console=None)
    summary = json.loads((out / "fit_summary.json").read_text())
    assert summary["model"]["n_expr"] == 100 and summary["model"]["path"].endswith("generic_model.pkl")
    with np.load(out / "flame_params.npz", allow_pickle=False) as z:
        assert z["expression"].shape == (100,) and np.isfinite(z["expression"]).all()
        assert np.abs(z["expression"]).sum() > 0  # the expression space was fitted


def _config_for(tmp_path: Path, fitter) -> FitConfig:
    return FitConfig(data=tmp_path / "in", output_dir=tmp_path / "out", flame_model=tmp_path / "generic_model.pkl",
                     fitter=fitter)


def test_faceless_photos_go_to_colmap_and_their_reason_says_what_they_got(tmp_path):
    """The photos where no face was found are handed to COLMAP (a back view can still get its camera);
    a clip's frames are not; a photo that got COLMAP's camera says so among the inputs left out."""
    import dataclasses

    from PIL import Image

    from types import SimpleNamespace

    from flame_prior.fit.state import StageLog
    from flame_prior.images import SkippedInput
    from flame_prior.pipeline import PreparedViews, SceneFit, faceless_images
    from flame_prior.video import VideoConfig, load_inputs

    for name in ("back", "side", "front"):
        Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(tmp_path / f"{name}.png")
    intake = load_inputs(tmp_path, VideoConfig())
    missed = [SkippedInput(im.path, "no face found") for im in intake.images if im.name in ("back", "side")]
    prepared = PreparedViews([], missed, {}, intake, "static", "")
    assert sorted(im.name for im in faceless_images(prepared)) == ["back", "side"]
    assert faceless_images(dataclasses.replace(prepared, intake=dataclasses.replace(intake, source="video"))) == []

    log = StageLog("multiview", 0, 0.0, [], np.zeros(0),
                   details={"faceless_cameras": [{"name": "back", "fx": 100.0, "flags": ["no face detected"]}]})
    result = SimpleNamespace(stages=[log], left_out=[])  # the two fields SceneFit.skipped reads of a FitResult
    reasons = {s.path.stem: s.reason for s in SceneFit(prepared, None, result).skipped}
    assert "COLMAP's camera" in reasons["back"] and reasons["side"] == "no face found"
