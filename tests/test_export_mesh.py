"""Textured OBJ: trimesh reads the same triangles, UVs per corner, and the texture."""

from __future__ import annotations

import dataclasses

import numpy as np
import trimesh
from PIL import Image

from export_fixtures import make_fit
from flame_prior.export._common import texture_to_u8
from flame_prior.export.mesh import write_textured_mesh


def _check(obj, result):
    mesh = trimesh.load(obj, process=False, force="mesh")
    V, F = np.asarray(result.vertices), np.asarray(result.faces)
    # trimesh splits vertices on UV seams, so compare triangle corners, not vertex lists.
    np.testing.assert_allclose(mesh.vertices[mesh.faces], V[F], atol=1e-8)
    uv = np.asarray(mesh.visual.uv)
    np.testing.assert_allclose(uv[mesh.faces], np.asarray(result.uvs)[np.asarray(result.uv_faces)], atol=1e-8)
    img = mesh.visual.material.image
    assert img is not None
    np.testing.assert_array_equal(np.asarray(img.convert("RGB")), texture_to_u8(result.texture))
    return mesh


def test_mesh_roundtrip_trimesh(tmp_path):
    _, result, _, _ = make_fit()
    obj = write_textured_mesh(tmp_path, result)
    assert obj == tmp_path / "mesh.obj"
    assert {p.name for p in tmp_path.iterdir()} == {"mesh.obj", "mesh.mtl", "texture.png"}
    _check(obj, result)
    text = obj.read_text().splitlines()
    assert sum(1 for line in text if line.startswith("v ")) == len(result.vertices)  # order kept in the file
    assert sum(1 for line in text if line.startswith("vt ")) == len(result.uvs)


def test_convention_texture_rows_top_down(tmp_path):
    """Row 0 of texture.png is v = 1: a texel sampled at (u, v) comes from row (1 - v) * H."""
    _, result, _, _ = make_fit()
    tex = np.zeros((8, 8, 3), np.float32)
    tex[:4] = [1.0, 0.0, 0.0]  # top half red -> v in (0.5, 1]
    tex[4:] = [0.0, 0.0, 1.0]  # bottom half blue -> v in [0, 0.5)
    result = dataclasses.replace(result, texture=tex)
    mesh = trimesh.load(write_textured_mesh(tmp_path, result), process=False, force="mesh")
    colours = mesh.visual.material.to_color(np.array([[0.5, 0.9], [0.5, 0.1]]))
    assert tuple(colours[0][:3]) == (255, 0, 0) and tuple(colours[1][:3]) == (0, 0, 255)
    assert np.asarray(Image.open(tmp_path / "texture.png"))[0, 0].tolist() == [255, 0, 0]


def test_mesh_flame_topology(tmp_path, shared):
    """The real FLAME topology and UV layout (5023 vertices, 5118 texture coordinates)."""
    tmpl = trimesh.load(shared("flame-assets/head_template_mesh.obj"), process=False, force="mesh",
                        maintain_order=True)
    lines = shared("flame-assets/head_template_mesh.obj").read_text().splitlines()
    V = np.array([[float(x) for x in line.split()[1:4]] for line in lines if line.startswith("v ")])
    VT = np.array([[float(x) for x in line.split()[1:3]] for line in lines if line.startswith("vt ")])
    F, FT = [], []
    for line in lines:
        if line.startswith("f "):
            c = [tok.split("/") for tok in line.split()[1:]]
            F.append([int(a[0]) - 1 for a in c])
            FT.append([int(a[1]) - 1 for a in c])
    assert V.shape == (5023, 3) and VT.shape == (5118, 2) and tmpl is not None
    _, result, _, _ = make_fit()
    result = dataclasses.replace(result, vertices=V - V.mean(0), faces=np.array(F), uvs=VT, uv_faces=np.array(FT))
    _check(write_textured_mesh(tmp_path, result), result)
