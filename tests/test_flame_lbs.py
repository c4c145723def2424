"""Skinning math and the FlameModel module: hand-computed cases, FLAME/smplx reference semantics, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flame_prior.flame import (FlameModel, FlameParams, batch_rigid_transform, build_test_model, lbs,
                               pose_correctives, vertices2joints)
from flame_prior.geometry import axis_angle_to_rotation_matrix


@pytest.fixture(scope="module")
def data():
    return build_test_model(n_shape=8, n_expr=4, seed=3)


def _random_params(B, model, scale=0.3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = FlameParams.zeros(B, model.n_shape, model.n_expr, dtype=dtype)
    for name in ("shape", "expression", "rotation", "neck_pose", "jaw_pose", "eye_pose", "translation"):
        t = getattr(p, name)
        t.copy_(scale * torch.randn(t.shape, generator=g, dtype=dtype))
    return p


def test_two_joint_toy_rotation_about_z():
    # joint 0 at the origin, joint 1 at (1, 0, 0); rotate joint 1 by 90 degrees about +z.
    v = torch.tensor([[0.5, 0, 0], [2.0, 0, 0], [2.0, 0, 0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0], [0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    J_reg = torch.tensor([[1.0, 0, 0], [0, 0, 0]], dtype=torch.float64)  # unused by lbs: joints given directly
    rot = axis_angle_to_rotation_matrix(torch.tensor([[[0, 0, 0], [0, 0, math.pi / 2]]], dtype=torch.float64))
    J_template = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    verts, joints = lbs(torch.zeros(1, 0, dtype=torch.float64), rot, v, torch.zeros(3, 3, 0, dtype=torch.float64),
                        torch.zeros(3, 3, 9, dtype=torch.float64), w, [-1, 0], J_template,
                        torch.zeros(2, 3, 0, dtype=torch.float64))
    expected = torch.tensor([[0.5, 0, 0], [1.0, 1.0, 0], [1.5, 0.5, 0]], dtype=torch.float64)
    torch.testing.assert_close(verts[0], expected)
    torch.testing.assert_close(joints[0], J_template)
    assert vertices2joints(J_reg, v[None]).shape == (1, 2, 3)


def test_rigid_transform_chain_composes_parent_rotation():
    rot = axis_angle_to_rotation_matrix(torch.tensor([[[0, 0, math.pi / 2], [0, 0, 0]]], dtype=torch.float64))
    joints = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]], dtype=torch.float64)
    posed, A = batch_rigid_transform(rot, joints, torch.tensor([-1, 0]))
    torch.testing.assert_close(posed[0, 1], torch.tensor([0.0, 1.0, 0], dtype=torch.float64))
    p = torch.tensor([2.0, 0, 0, 1], dtype=torch.float64)
    torch.testing.assert_close(A[0, 1] @ p, torch.tensor([0.0, 2.0, 0, 1], dtype=torch.float64))


def test_pose_correctives_zero_at_rest_and_feature_order():
    V, J = 4, 5
    eye = torch.eye(3, dtype=torch.float64).expand(2, J, 3, 3)
    posedirs = torch.randn(V, 3, 36, dtype=torch.float64)
    assert pose_correctives(eye, posedirs).abs().max() == 0
    # feature p = 9 (j - 1) + 3 r + c is R_j[r, c] - I[r, c] (FLAME/smplx: posedirs.reshape(-1, 36).T)
    rot = axis_angle_to_rotation_matrix(torch.randn(1, J, 3, dtype=torch.float64))
    j, r, c = 2, 0, 1
    single = torch.zeros(V, 3, 36, dtype=torch.float64)
    single[1, 2, 9 * (j - 1) + 3 * r + c] = 1.0
    out = pose_correctives(rot, single)
    assert out[0, 1, 2] == pytest.approx(float(rot[0, j, r, c]))
    smplx_style = ((rot[:, 1:] - torch.eye(3, dtype=torch.float64)).reshape(1, -1)
                   @ posedirs.reshape(-1, 36).T).reshape(1, V, 3)
    torch.testing.assert_close(pose_correctives(rot, posedirs), smplx_style)


def _reference_forward(d, p):
    """FLAME/smplx equations written out independently (joints regressed from the shaped mesh)."""
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    betas = torch.cat([p.shape, p.expression], 1).double()
    dirs = torch.cat([t(d.shapedirs), t(d.exprdirs)], -1)
    v_shaped = t(d.v_template) + torch.einsum("bl,mkl->bmk", betas, dirs)
    J = torch.einsum("bik,ji->bjk", v_shaped, t(d.J_regressor))
    rot = axis_angle_to_rotation_matrix(p.full_pose().double())
    feat = (rot[:, 1:] - torch.eye(3, dtype=torch.float64)).reshape(len(betas), -1)
    v_posed = v_shaped + (feat @ t(d.posedirs).reshape(-1, 36).T).reshape(len(betas), -1, 3)
    world = []
    for j, parent in enumerate(d.parents):
        local = torch.eye(4, dtype=torch.float64).repeat(len(betas), 1, 1)
        local[:, :3, :3] = rot[:, j]
        local[:, :3, 3] = J[:, j] - (J[:, parent] if parent >= 0 else 0)
        world.append(local if parent < 0 else world[parent] @ local)
    G = torch.stack(world, 1)
    G_rel = G.clone()
    G_rel[..., :3, 3] -= (G[..., :3, :3] @ J[..., None])[..., 0]
    T = torch.einsum("vj,bjmn->bvmn", t(d.weights), G_rel)
    vh = torch.cat([v_posed, torch.ones_like(v_posed[..., :1])], -1)
    return (T @ vh[..., None])[..., :3, 0] + p.translation.double()[:, None]


def test_forward_matches_reference_equations(data):
    model = FlameModel(data, dtype=torch.float64)
    p = _random_params(3, model, dtype=torch.float64)
    torch.testing.assert_close(model(p).vertices, _reference_forward(data, p), rtol=1e-9, atol=1e-12)


def test_convention_global_rotation_about_root_then_translation(data):
    model = FlameModel(data, dtype=torch.float64)
    p = FlameParams.zeros(1, model.n_shape, model.n_expr, dtype=torch.float64)
    p.shape[:] = 0.5
    rest = model(p)
    p.rotation[:] = torch.tensor([0.2, -0.4, 0.1])
    p.translation[:] = torch.tensor([0.01, -0.02, 0.5])
    out = model(p)
    R = axis_angle_to_rotation_matrix(p.rotation)[0]
    J0 = rest.joints[0, 0]
    expected = (rest.vertices[0] - J0) @ R.T + J0 + p.translation[0]
    torch.testing.assert_close(out.vertices[0], expected)
    torch.testing.assert_close(out.joints[0, 0], J0 + p.translation[0])


def test_vertex_index_fast_path_equals_full(data):
    model = FlameModel(data)
    p = _random_params(4, model)
    idx = torch.tensor([0, 5, 17, 400, data.n_vertices - 1, 5])
    full = model(p)
    sub = model(p, vertex_index=idx)
    assert sub.vertices.shape == (4, 6, 3)
    torch.testing.assert_close(sub.vertices, full.vertices[:, idx], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sub.joints, full.joints)


def test_gradcheck_pose_shape_expression_float64(data):
    model = FlameModel(data, dtype=torch.float64)
    idx = torch.tensor([3, 200, 640, 900, data.n_vertices - 1])  # head, jaw region and an eyeball
    base = _random_params(1, model, dtype=torch.float64)

    def f(shape, expression, rotation, neck, jaw, eyes):
        p = FlameParams(shape, expression, rotation, neck, jaw, eyes, base.translation)
        return model(p, vertex_index=idx).vertices

    inputs = tuple(getattr(base, n).clone().requires_grad_(True)
                   for n in ("shape", "expression", "rotation", "neck_pose", "jaw_pose", "eye_pose"))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_params_shapes_are_checked(data):
    model = FlameModel(data)
    p = FlameParams.zeros(2, model.n_shape + 1, model.n_expr)
    with pytest.raises(ValueError, match="FlameParams.shape"):
        model(p)


def test_forward_on_device(data, device):
    model = FlameModel(data).to(device)
    p = _random_params(2, model)
    p_dev = FlameParams(*(getattr(p, n).to(device) for n in p.__dataclass_fields__))
    out = model(p_dev)
    assert out.vertices.device.type == device.type and model.faces.dtype == torch.long
    ref = FlameModel(data)(p)
    torch.testing.assert_close(out.vertices.cpu(), ref.vertices, rtol=1e-4, atol=1e-6)
    sub = model(p_dev, vertex_index=torch.arange(10, device=device))
    torch.testing.assert_close(sub.vertices.cpu(), ref.vertices[:, :10], rtol=1e-4, atol=1e-6)
