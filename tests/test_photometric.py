"""The photometric and occlusion stages on the synthetic demo scene (the bundled FLAME 2023 Open
head, a generated texture space, 8 views): the closed-form appearance, occluder flags, frozen cameras."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flame_prior import demo
from flame_prior.fit import FitterConfig, fit_flame
from flame_prior.fit.photometric import Appearance, initial_albedo_color, make_crops, solve_appearance
from flame_prior.fit.state import FitState, landmark_targets
from flame_prior.geometry import rotation_matrix_to_axis_angle
from flame_prior.intrinsics import Intrinsics

VIEWS, SIZE = 8, 256


@pytest.fixture(scope="module")
def scene():
    torch.manual_seed(0)
    _, model, emb, ts = demo.demo_assets(0, torch.device("cpu"))
    sc = demo.render_scene(model, emb, ts, demo.DemoConfig(views=VIEWS, image_size=SIZE, noise_px=0.5, seed=0),
                           np.random.default_rng(0))
    f = sc.cameras.fx.numpy()
    c = np.full(VIEWS, SIZE / 2)
    return model, emb, ts, sc, Intrinsics(f.copy(), f.copy(), c, c.copy(), "given", False)


@pytest.fixture(scope="module")
def landmark_fit(scene):
    model, emb, ts, sc, intr = scene
    return fit_flame(model, emb, sc.views, intr, FitterConfig(photometric_steps=0), texture_space=ts)


def _state(scene, result):
    model, emb, _, sc, intr = scene
    tg = landmark_targets(sc.views, emb, "cpu", torch.float32)
    st = FitState.initial(model, emb, intr, [(v.image.width, v.image.height) for v in sc.views], "cpu", torch.float32)
    flame = lambda k: torch.as_tensor(result.flame[k], dtype=torch.float32)[None]  # noqa: E731
    st = st.replace(cam_rot=rotation_matrix_to_axis_angle(result.cameras.R).float(), cam_t=result.cameras.t.float(),
                    shape=flame("shape"), expression=flame("expression"), jaw=flame("jaw_pose"))
    return st, tg


def test_closed_form_appearance_explains_the_photos(scene, landmark_fit):
    """On the landmark stage's geometry, one solve (no optimiser) brings the mean L1 colour
    residual inside the head well below that of the flat start: measured 0.019 vs 0.39 (sum of
    three channels), bounds 0.06 and a third of the flat one."""
    model, emb, ts, sc, _ = scene
    st, tg = _state(scene, landmark_fit)
    cfg = FitterConfig()
    crops = make_crops(sc.views, tg, cfg.render_size, "cpu", torch.float32)
    app = Appearance(VIEWS, cfg, ts, None, initial_albedo_color(sc.views, tg), "cpu", torch.float32)
    before = _mean_l1_flat(st, crops, app)
    fit = solve_appearance(st, crops, app, cfg)
    after = float(fit.residual.sum() / fit.inside.sum())
    assert after < 0.06 and after < before / 3, (after, before)


def _mean_l1_flat(st, crops, app):
    """Mean L1 of the initial appearance (flat albedo, unit ambient light) over the same pixels."""
    from flame_prior.render_head import render_head

    with torch.no_grad():
        verts = st.model(st.flame_params()).vertices
        idx = torch.arange(crops.image.shape[0])
        col, rast, _ = render_head(verts, st.model.faces, crops.cameras(st.cameras(), idx), app.uvs, app.uv_faces,
                                   app.albedo(), app.sh(), size=(crops.size, crops.size))
        inside = (rast[..., 3] > 0).float() * (crops.head > 0.5).float() * crops.valid
        return float(((col - crops.image).abs().sum(-1) * inside).sum() / inside.sum())


def test_occluder_in_one_view_is_flagged(scene):
    """A dark disc painted over the mouth of one view (and that view's mouth landmarks dragged onto
    its lower edge, as a fooled detector would) is unexplained by the one albedo all views share:
    that view's mouth landmarks are flagged occluded (in ViewFit and the notes), no other view's are.
    (Acting on the flags is FitterConfig.occlusion_refit, off by default: its docstring has why.)"""
    model, emb, ts, sc, intr = scene
    views = list(sc.views)
    v = views[3]
    lm = v.detection.landmarks.copy()
    mouth = np.asarray(demo_mouth_indices(emb))
    centre = lm[mouth].mean(0)
    radius = 0.9 * np.linalg.norm(lm[mouth].max(0) - lm[mouth].min(0))
    img = v.image.pixels.copy()
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    img[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < radius ** 2] = (40, 40, 45)
    lm[mouth, 1] += 0.35 * radius  # the detector's mouth follows the occluder
    views[3] = replace(v, image=replace(v.image, pixels=img), detection=replace(v.detection, landmarks=lm))
    result = fit_flame(model, emb, views, intr, FitterConfig(), texture_space=ts)
    rows = _embedding_rows(emb, mouth)
    flagged = [np.asarray(vf.landmark_occluded) for vf in result.views]
    assert flagged[3][rows].mean() > 0.5, flagged[3][rows]
    assert all(not f.any() for i, f in enumerate(flagged) if i != 3), [int(f.sum()) for f in flagged]
    assert "occlusion:" in " ".join(result.notes)


def demo_mouth_indices(emb) -> list[int]:
    """Detector indices of the MediaPipe lip contours (outer and inner) that the embedding uses."""
    lips = {61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
            78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415}
    return [int(i) for i in emb.detector_index if int(i) in lips]


def _embedding_rows(emb, detector_idx) -> np.ndarray:
    idx = [int(i) for i in emb.detector_index]
    return np.array([idx.index(int(i)) for i in detector_idx])


def test_frozen_cameras_stay(scene, landmark_fit):
    """Cameras marked frozen leave the photometric stage exactly as the landmark stage placed them;
    the others move."""
    model, emb, ts, sc, intr = scene
    frozen = np.array([True, False] * (VIEWS // 2))
    cfg = FitterConfig(photometric_steps=6, render_size=64)
    result = fit_flame(model, emb, sc.views, intr, cfg, texture_space=ts, frozen_cameras=frozen)
    assert torch.equal(result.cameras.R[frozen], landmark_fit.cameras.R[frozen])
    assert torch.equal(result.cameras.t[frozen], landmark_fit.cameras.t[frozen])
    assert not torch.equal(result.cameras.t[~frozen], landmark_fit.cameras.t[~frozen])


def test_every_camera_pinned_runs_the_pinned_schedule(scene, landmark_fit):
    """With every camera frozen the photometric stage runs ``photometric_steps_pinned`` steps (none:
    the stage is skipped and the head stays the landmark stage's); with half of them frozen, a camera
    can move and the stage runs ``photometric_steps``."""
    model, emb, ts, sc, intr = scene
    cfg = FitterConfig(photometric_steps=6, photometric_steps_pinned=3, render_size=64, early_stop=0.0)
    stage = lambda r: next(s for s in r.stages if s.name == "photometric")  # noqa: E731
    every = np.ones(VIEWS, dtype=bool)
    pinned = fit_flame(model, emb, sc.views, intr, cfg, texture_space=ts, frozen_cameras=every)
    assert stage(pinned).iterations == 3
    assert stage(pinned).details == {"pinned_cameras": True, "views_per_step": cfg.photometric_views_pinned}
    assert not np.array_equal(pinned.flame["shape"], landmark_fit.flame["shape"])  # the head moved
    half = fit_flame(model, emb, sc.views, intr, cfg, texture_space=ts,
                     frozen_cameras=np.array([True, False] * (VIEWS // 2)))
    assert stage(half).iterations == 6
    assert stage(half).details == {"pinned_cameras": False, "views_per_step": cfg.photometric_views}
    skipped = fit_flame(model, emb, sc.views, intr, replace(cfg, photometric_steps_pinned=0), texture_space=ts,
                        frozen_cameras=every)
    assert stage(skipped).iterations == 0 and "every camera is pinned" in " ".join(skipped.notes)
    assert np.array_equal(skipped.flame["shape"], landmark_fit.flame["shape"])
    assert torch.equal(skipped.cameras.R, landmark_fit.cameras.R)


def test_report_overlay_draws_occluded_landmarks_as_grey_rings(scene, landmark_fit):
    """The report's overlay shows the landmarks judged occluded as hollow grey rings (and no grey
    anywhere when none is)."""
    from flame_prior.export.report import GREY, draw_landmark_overlay

    _, emb, _, sc, _ = scene
    vf = landmark_fit.views[0]
    rows = _embedding_rows(emb, demo_mouth_indices(emb))
    grey = lambda im: (np.asarray(im)[..., :3] == GREY).all(-1)  # noqa: E731
    clean = draw_landmark_overlay(sc.views[0], replace(vf, landmark_occluded=np.zeros(len(vf.landmark_weight), bool)),
                                  s=1.0)
    assert not grey(clean).any()
    occluded = np.zeros(len(vf.landmark_weight), bool)
    occluded[rows] = True
    marked = grey(draw_landmark_overlay(sc.views[0], replace(vf, landmark_occluded=occluded), s=1.0))
    ys, xs = np.nonzero(marked)
    mouth = vf.landmarks_detected[rows]
    assert len(xs) > 0
    # every grey pixel lies on a ring around one of the flagged points
    d = np.linalg.norm(np.stack([xs, ys], 1)[:, None] - mouth[None], axis=-1).min(1)
    assert d.max() < 6.0, d.max()


def test_crop_cameras_are_the_cropped_and_scaled_cameras(scene, landmark_fit):
    """``FaceCrops.cameras`` (built without reading sizes back from the device) is ``subset``, ``cropped`` and
    ``scaled`` of the views' cameras, bit for bit, with the crop's size as the image size."""
    model, emb, ts, sc, intr = scene
    st, tg = _state(scene, landmark_fit)
    crops = make_crops(sc.views, tg, 64, "cpu", torch.float32)
    cams = st.cameras()
    idx = torch.tensor([0, 2, 3])
    box = crops.box[idx]
    ref = cams.subset(idx).cropped(torch.cat([box[:, :2], box[:, 2:3], box[:, 2:3]], 1)).scaled(64 / box[:, 2])
    got = crops.cameras(cams, idx)
    for k in ("R", "t", "fx", "fy", "cx", "cy"):
        assert torch.equal(getattr(got, k), getattr(ref, k)), k
    assert got.width == got.height == [64] * 3
    assert all(abs(w - 64) <= 1 for w in ref.width)  # the composition rounds the crop's side twice


def test_adam_is_torchs_update():
    """The stage's own Adam (it avoids torch.optim's import of torch._dynamo) takes torch.optim.Adam's
    steps, per-tensor rates included; a factor on the rates (the warm-up) scales each step."""
    from flame_prior.fit.photometric import Adam

    g = torch.Generator().manual_seed(0)
    start = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    target = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in start]
    ours = [x.clone().requires_grad_(True) for x in start]
    theirs = [x.clone().requires_grad_(True) for x in start]
    opt = Adam([(ours[0], 0.05), (ours[1], 0.01)])
    ref = torch.optim.Adam([{"params": [theirs[0]], "lr": 0.05}, {"params": [theirs[1]], "lr": 0.01}])
    for _ in range(25):
        for ps, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            sum(((p - t) ** 4).sum() for p, t in zip(ps, target)).backward()
            o.step()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(ours[0], start[0], atol=1e-3)  # it did move
    # A factor of 0.5 on the first step (bias-corrected: the step is the rate times sign) halves it.
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    half = Adam([(p, 0.1)])
    (p * torch.tensor([3.0, -7.0], dtype=torch.float64)).sum().backward()
    half.step(0.5)
    assert torch.allclose(p.detach(), torch.tensor([-0.05, 0.05], dtype=torch.float64), atol=1e-6)


def test_learning_rate_schedule():
    """Warm-up rises linearly to 1; the cosine fall reaches the final fraction at the last step."""
    from flame_prior.fit.photometric import photometric_lr_factor

    cfg = FitterConfig(photometric_steps=40, photometric_warmup=4, photometric_lr_final=0.1)
    f = [photometric_lr_factor(i, cfg) for i in range(1, 41)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[3:], f[4:]))
    flat = FitterConfig(photometric_steps=40, photometric_warmup=0, photometric_lr_final=1.0)
    assert all(photometric_lr_factor(i, flat) == 1.0 for i in range(1, 41))


def test_texture_adjoint_and_window_means_match_their_definitions():
    """The closed-form solve's two shortcuts give what they replace: the texture adjoint is
    autograd's gradient of render.texture (bit for bit, texels at the border included), and the
    occlusion window means are avg_pool2d's (count_include_pad=False) on 0/1 masks."""
    from flame_prior import render
    from flame_prior.fit.photometric import _box_mean

    gen = torch.Generator().manual_seed(3)
    uv = torch.rand(1, 1, 5000, 2, generator=gen) * 1.2 - 0.1  # some outside [0, 1]: border clamping
    g = torch.randn(1, 1, 5000, 3, generator=gen)
    tex = torch.zeros(16, 24, 3, requires_grad=True)
    (expected,) = torch.autograd.grad((render.texture(tex, uv) * g).sum(), tex)
    got = render.texture_adjoint((16, 24, 3), uv, g)
    assert got.abs().max() > 0 and torch.equal(got, expected)
    mask = (torch.rand(4, 40, 33, generator=gen) > 0.6).float()
    for k in (3, 9, 41):  # 41: wider than the image
        pooled = torch.nn.functional.avg_pool2d(mask[:, None], k, stride=1, padding=k // 2, count_include_pad=False)
        assert torch.equal(_box_mean(mask, k), pooled)
