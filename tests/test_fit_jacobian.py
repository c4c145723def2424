"""The Levenberg-Marquardt Jacobian, assembled by hand from its structure (analytic projection
derivatives, left rotation perturbations, FLAME tangents by reverse mode twice), equals autograd's in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame_prior.fit import FitterConfig
from flame_prior.fit.landmarks import LandmarkProblem
from flame_prior.fit.state import FitState, LandmarkTargets
from flame_prior.flame import FlameModel, build_test_model, head_yaw_deg, load_flame_model, load_landmark_embedding
from flame_prior.flame.assets import default_embedding_path, default_model_path
from flame_prior.geometry import axis_angle_to_rotation_matrix
from flame_prior.intrinsics import Intrinsics

N_VIEWS = 3


@pytest.fixture(scope="module")
def problem_inputs():
    """The bundled head with a generated expression space, float64, posed away from zero, and three
    cameras around it; targets are its projected landmarks plus 2 px of noise."""
    data = build_test_model(n_shape=20, n_expr=5, seed=0, template=load_flame_model(default_model_path()))
    model = FlameModel(data, dtype=torch.float64)
    emb = load_landmark_embedding(default_embedding_path())
    f = np.full(N_VIEWS, 600.0)
    intr = Intrinsics(f, f * 1.02, np.full(N_VIEWS, 130.0), np.full(N_VIEWS, 125.0), "given", True)
    st = FitState.initial(model, emb, intr, [(256, 256)] * N_VIEWS, torch.device("cpu"), torch.float64)
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, scale: torch.randn(*s, generator=g, dtype=torch.float64) * scale  # noqa: E731
    yaw = torch.tensor([-0.6, 0.1, 0.7], dtype=torch.float64)  # radians: the jaw contour differs per view
    st = st.replace(cam_rot=torch.stack([torch.tensor([0.0, y, 0.0], dtype=torch.float64) for y in yaw])
                    + rnd(3, 3, scale=0.05),
                    cam_t=torch.tensor([[0.0, 0.0, 0.6]] * N_VIEWS, dtype=torch.float64) + rnd(3, 3, scale=0.01),
                    log_focal=torch.tensor([0.05], dtype=torch.float64), shape=rnd(1, 20, scale=0.5),
                    expression=rnd(1, 5, scale=0.5), jaw=torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64),
                    eyes=rnd(1, 6, scale=0.05), neck=rnd(1, 3, scale=0.05))
    with torch.no_grad():
        pts = st.project(st.landmarks3d(st.yaw()))
    L = pts.shape[1]
    tg = LandmarkTargets(points=pts + rnd(*pts.shape, scale=2.0), weight=torch.ones(N_VIEWS, L, dtype=torch.float64),
                         view_weight=torch.full((N_VIEWS, L), 1.0 / L, dtype=torch.float64),
                         scale=torch.full((N_VIEWS,), 120.0, dtype=torch.float64))
    return st, tg


def _autograd_jacobian(prob: LandmarkProblem, R, t, logf, theta, yaw):
    """d residuals / d unknowns by autograd, at a zero step in the problem's own parametrisation."""
    n = prob.n

    def residuals(x):
        s_cam = x[: 6 * n].reshape(n, 6)
        R_x = axis_angle_to_rotation_matrix(s_cam[:, :3]) @ R
        logf_x = logf + x[6 * n: 6 * n + 1] if prob.fit_focal else logf
        e, p, _ = prob.residuals(R_x, t + s_cam[:, 3:], logf_x, theta + x[prob.n_cam:], yaw)
        return torch.cat([e.reshape(-1), p])

    return torch.autograd.functional.jacobian(residuals, torch.zeros(prob.n_cam + prob.n_f, dtype=torch.float64))


@pytest.mark.parametrize("rigid", [False, True])
def test_lm_jacobian_matches_autograd_in_float64(problem_inputs, rigid):
    st, tg = problem_inputs
    names = ["cam_rot", "cam_t", "log_focal", "shape", "expression", "jaw", "eyes", "neck"]
    fixed = None
    if rigid:
        with torch.no_grad():
            fixed = st.landmarks3d(st.yaw())
    prob = LandmarkProblem(st, tg, names, FitterConfig(shape_prior=0.3, expression_prior=0.2, pose_prior=0.1), fixed)
    R, t, logf, theta = prob.initial()
    yaw = head_yaw_deg(R)
    e, p, aux = prob.residuals(R, t, logf, theta, yaw)
    J = prob.jacobian(R, theta, yaw, aux)
    if prob.n_f:
        J = torch.cat([J, prob.prior_jacobian(e)])
    J_ad = _autograd_jacobian(prob, R, t, logf, theta, yaw)
    assert J.shape == J_ad.shape == (e.numel() + p.numel(), 6 * N_VIEWS + 1 + (0 if rigid else 20 + 5 + 3 + 6 + 3))
    # Every block is exercised (rotation, translation, focal and, unless rigid, FLAME columns).
    assert (J_ad.abs().amax(0) > 1e-6).all()
    torch.testing.assert_close(J, J_ad, rtol=1e-7, atol=1e-10)
