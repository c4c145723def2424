"""write_outputs: every writer into one folder, the avatar data set only when asked."""

from __future__ import annotations

import json

import numpy as np

from dataclasses import replace

from export_fixtures import MODEL, make_fit
from flame_prior.export import AVATAR_SUBDIR, COLMAP_SUBDIR, write_outputs


def test_write_outputs_layout(tmp_path):
    views, result, intr, skipped = make_fit()
    out = tmp_path / "out"
    write_outputs(out, views, intr, result, skipped, {"fit": 1.0},
                  model=replace(MODEL, path="/m/flame.npz", sha256="ef" * 32), avatar_format=True)
    for rel in ("transforms.json", "flame_params.npz", "fit_summary.json", "flame_points.ply", "mesh.obj",
                "mesh.mtl", "texture.png", "report.html", f"{COLMAP_SUBDIR}/cameras.txt",
                f"{COLMAP_SUBDIR}/images.txt", f"{COLMAP_SUBDIR}/points3D.txt",
                f"{AVATAR_SUBDIR}/transforms_train.json", f"{AVATAR_SUBDIR}/canonical_flame_param.npz"):
        assert (out / rel).exists(), rel
    assert not (out / "sparse").exists()  # would make GaussianAvatars/3DGS pick their COLMAP loader
    meta = json.loads((out / "transforms.json").read_text())
    for f in meta["frames"]:
        assert (out / f["file_path"]).exists() and (out / f["mask_path"]).exists()
    images_txt = (out / COLMAP_SUBDIR / "images.txt").read_text()
    for vf in result.views:  # COLMAP names resolve inside <out>/images/
        assert f" {vf.name}.png" in images_txt and (out / "images" / f"{vf.name}.png").exists()
    assert json.loads((out / "fit_summary.json").read_text())["model"]["sha256"] == "ef" * 32
    np.load(out / "flame_params.npz", allow_pickle=False)


def test_write_outputs_without_avatar(tmp_path):
    views, result, intr, skipped = make_fit()
    write_outputs(tmp_path, views, intr, result, skipped, {}, model=replace(MODEL, path="m", sha256="0" * 64),
                  avatar_format=False)
    assert not (tmp_path / AVATAR_SUBDIR).exists() and (tmp_path / "report.html").exists()
