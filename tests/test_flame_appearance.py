"""UV layouts, texture-space files (FLAME_texture.npz / FLAME_albedo_from_BFM.npz), SH shading."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch

from flame_prior.errors import ModelFileError, UnsafePickleError
from flame_prior.flame import (build_test_texture_space, load_bfm_albedo, load_flame_texture_space,
                               read_obj_uv_layout, sh_basis, shade_sh, write_flame_texture_npz)


@pytest.fixture(scope="module")
def layout():
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    return uvs, np.array([[0, 1, 2]])


def test_read_obj_uv_layout_real_template(shared):
    uvs, uv_faces = read_obj_uv_layout(shared("flame-assets/head_template_mesh.obj"))
    assert uvs.shape == (5118, 2) and uv_faces.shape == (9976, 3)
    assert uv_faces.min() == 0 and uv_faces.max() == 5117 and 0 <= uvs.min() and uvs.max() <= 1


def test_flame_texture_npz_round_trip_and_channel_order(layout, tmp_path):
    ts = build_test_texture_space(*layout, n_tex=4, size=32, seed=1)
    path = tmp_path / "FLAME_texture.npz"
    write_flame_texture_npz(ts, path)
    raw = np.load(path)
    assert raw["mean"].shape == (32, 32, 3) and raw["tex_dir"].shape == (32, 32, 3, 4)
    np.testing.assert_allclose(raw["mean"][..., 2], ts.mean[..., 0] * 255, rtol=1e-6)  # stored BGR, 0..255
    back = load_flame_texture_space(path)
    np.testing.assert_allclose(back.mean, ts.mean, atol=1e-6)
    np.testing.assert_allclose(back.basis, ts.basis, atol=1e-6)
    assert load_flame_texture_space(path, n_tex=2).n_tex == 2
    coeffs = torch.tensor([[0.0, 0, 0, 0], [1.0, -2.0, 0, 0.5]])
    tex = back.texture_from_coeffs(coeffs)
    assert tex.shape == (2, 32, 32, 3)
    torch.testing.assert_close(tex[0], torch.as_tensor(back.mean))
    expect = back.mean + back.basis[..., 0] - 2 * back.basis[..., 1] + 0.5 * back.basis[..., 3]
    torch.testing.assert_close(tex[1], torch.as_tensor(expect), atol=1e-6, rtol=1e-5)


def test_bfm_albedo_flat_bgr(layout, tmp_path):
    h, k = 8, 3
    rgb = np.random.default_rng(0).uniform(0, 1, (h, h, 3))
    pc = np.random.default_rng(1).normal(0, 0.1, (h, h, 3, k))
    path = tmp_path / "FLAME_albedo_from_BFM.npz"
    np.savez(path, MU=rgb[:, :, ::-1].reshape(-1), PC=pc[:, :, ::-1].reshape(-1, k), specMU=np.zeros(3))
    ts = load_bfm_albedo(path, uvs=layout[0], uv_faces=layout[1])
    np.testing.assert_allclose(ts.mean, rgb, atol=1e-6)
    np.testing.assert_allclose(ts.basis, pc, atol=1e-6)
    with pytest.raises(ModelFileError, match="vt"):
        load_bfm_albedo(path)


def test_wrong_size_and_malicious_texture(layout, tmp_path):
    bad = tmp_path / "FLAME_texture.npz"
    np.savez(bad, mean=np.zeros((16, 8, 3)), tex_dir=np.zeros((16, 8, 3, 2)), vt=layout[0], ft=layout[1])
    with pytest.raises(ModelFileError, match="square") as err:
        load_flame_texture_space(bad)
    assert str(bad) in str(err.value)
    bfm = tmp_path / "bfm.npz"
    np.savez(bfm, MU=np.zeros(50), PC=np.zeros((50, 2)))
    with pytest.raises(ModelFileError, match="square H\\*H\\*3") as err:
        load_bfm_albedo(bfm, *layout)
    assert str(bfm) in str(err.value)
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {target}",)

    evil = tmp_path / "evil_texture.npz"
    evil.write_bytes(pickle.dumps({"mean": Evil()}, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        load_flame_texture_space(evil)
    assert not target.exists()


def test_sh_basis_constants_and_shading():
    n = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    b = sh_basis(n)
    assert b.shape == (2, 9)
    c0 = 1 / math.sqrt(4 * math.pi)
    c1 = (2 * math.pi / 3) * math.sqrt(3 / (4 * math.pi))
    c8 = (math.pi / 4) * 0.5 * math.sqrt(5 / (4 * math.pi))
    assert b[0, 0] == pytest.approx(c0) and b[0, 3] == pytest.approx(c1) and b[0, 8] == pytest.approx(2 * c8)
    assert b[1, 1] == pytest.approx(c1) and b[1, 8] == pytest.approx(-c8)
    albedo = torch.full((2, 4, 5, 3), 0.5, dtype=torch.float64)
    normals = torch.nn.functional.normalize(torch.randn(2, 4, 5, 3, dtype=torch.float64), dim=-1)
    sh = torch.zeros(2, 9, 3, dtype=torch.float64)
    sh[0, 0] = torch.tensor([1.0, 2.0, 3.0])  # ambient only in batch row 0
    out = shade_sh(albedo, normals, sh)
    torch.testing.assert_close(out[0], 0.5 * c0 * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).expand(4, 5, 3))
    assert out[1].abs().max() == 0
