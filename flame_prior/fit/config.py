"""The fitter's options (:class:`FitterConfig`, ``--fitter.*``) and the device they name."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from flame_prior.errors import InputError, check_option

if TYPE_CHECKING:
    import torch

__all__ = ["FitterConfig", "resolve_device"]


@dataclass
class FitterConfig:
    """Fitting schedule, priors and loss weights."""

    rigid_steps: int = 10
    """Levenberg-Marquardt steps of the rigid stage (per yaw round)."""
    landmark_steps: int = 30
    """Levenberg-Marquardt steps of the landmark stage."""
    photometric_steps: int = 60
    """Adam iterations (geometry and cameras) of the photometric stage (0 skips it and the occlusion stage).
    A CUDA device runs its own schedule: ``photometric_steps_cuda``."""
    photometric_steps_cuda: int = 20
    """Fewest Adam iterations of the photometric stage on a CUDA device. There a step costs about the same for 1
    or 8 views (launch-bound: 38-40 ms on an H200; 48 ms for 8 views at 512 px, README *Measured*), so each step
    renders every view (up to ``photometric_views_cuda``) and the stage takes as many steps as render the CPU
    schedule's ``photometric_steps x photometric_views`` views, but at least this many (8 views: 60 steps, as on
    the CPU; 16: 30; 30: 20). Synthetic demo scenes, rotation error median / max in degrees, mean of 3 seeds
    (CPU runs: the schedule, not the device, decides these;
    docs/measurements/schedule_sweep_cpu_2026-11-28.json, ``scripts/schedule_sweep.py``): 30 views, 60 steps of
    8 (the CPU's) 0.224 / 0.421; 20 of all 0.196 / 0.349; 30 of all 0.168 / 0.271; 40 of all 0.151 / 0.262. 16
    views, 60 of 8 0.193 / 0.378; 30 of all 0.176 / 0.362. 8 views, 60 steps 0.205 / 0.291, 30 steps 0.276 /
    0.518: fewer steps of the same views lose, hence the rule. Its GPU time is not measured yet (no device lent
    since it was written)."""
    photometric_views_cuda: int = 30
    """Views rendered per photometric step on a CUDA device (``photometric_views`` on the CPU)."""
    photometric_steps_one_view: int = 0
    """Adam iterations of the photometric stage when the scene has ONE view (``photometric_steps`` is
    for two or more; with ``photometric_steps`` 0 neither stage runs). The occlusion stage (the
    closed-form appearance and lighting, the occlusion flags) runs either way. Why 0: one view has no
    second image to settle what its own shading leaves free, and on the 5 shared FFHQ images the 60
    steps moved the landmarks no closer to the annotations (NME51 median 0.0347, max 0.0496; without
    them 0.0339, 0.0483) for 5 of the single-image fit's 6 s (README, Speed)."""
    photometric_steps_pinned: int = 15
    """Adam iterations of the photometric stage when no view's camera can move: the multi-view stage pinned
    every camera to COLMAP's (``FitState.camera_fixed``) or the caller froze them all, so the steps move
    only the head (shape, expression, jaw, eyes) and the appearance (0 skips the stage; the occlusion stage
    still solves the appearance). The steps do buy head accuracy: the face region's median distance to the
    scan (``scan_rigs.score_mesh``) without them / with the former 60 steps of 8 views at the camera-stage
    rates / with 15 steps of 4 views at 4x the rates (this default, with ``photometric_views_pinned`` and
    ``photometric_lr_scale_pinned``): moving_camera rig 1.66 / 1.25 / 1.21 mm, ring 2.31 / 2.06 / 1.99,
    turning_head 2.59 / 2.05 / 2.09. The shared 30-view fit costs 5.4 / 24.2 / 8.1 s of CPU (1 thread, one
    loaded window). Landmark medians stay within 1 % (shared scene 5.26 -> 5.28 px, moving_camera 6.47 ->
    6.52, ring 6.32 -> 6.27, turning_head 5.93 -> 5.91); the cameras are pinned, so they do not change.
    Rejected: 10 steps (moving_camera 1.38 mm, ring 2.08), 20 steps (the same heads within 0.1 mm, but
    the shared scene's landmark median 5.38 px). README, Photometric stage: pinned cameras."""
    photometric_views_pinned: int = 4
    """Views rendered per photometric step when every camera is pinned (``photometric_views`` otherwise).
    With no camera to move, a step's views only sample the head's surface: 20 steps of 4 views gave the
    head of 8 views (moving_camera rig 1.48 vs 1.49 mm) for 0.17 instead of 0.27 s CPU a step; 2 views
    (20 steps, 4x the rates) gave 1.28 mm against 1.21 for 4."""
    photometric_lr_scale_pinned: float = 4.0
    """Scale of the geometry learning rates when every camera is pinned (``geometry_lr_scale`` otherwise).
    The rates were set for a head that moves with its cameras; alone, it converges in fewer steps at
    higher rates (moving_camera rig, 20 steps of 4 views, head median at 1x: 1.48 mm, 3x: 1.24, 4x: 1.21,
    6x: 1.18), but above 4x the head leaves the landmarks: with 15 steps, the shared scene's landmark
    median is 5.28 px at 4x, 5.34 at 5x, 5.46 at 6x (5.26 with the former schedule)."""
    photometric_warmup: int = 5
    """Steps over which the photometric stage's learning rates rise linearly to their full value
    (0: full from the first step). Adam's first steps move every parameter by about its full rate
    whatever the gradient: on the demo, 8 steps without it left the landmarks at 0.93 px, with it 0.66 px."""
    photometric_lr_final: float = 0.1
    """The photometric stage's learning rates at its last step, as a fraction of their full value
    (a cosine fall after the warm-up; 1: constant)."""
    render_size: int = 160
    """Side in pixels of the square face crop rendered in the photometric stage. 112 was measured and
    rejected: the head came out 0.06-0.08 mm further from the scan (moving_camera rig 1.57 vs 1.49 mm,
    ring 2.30 vs 2.24, 20 pinned steps)."""
    photometric_coarse: float = 0.0
    """Fraction of the photometric steps that render the crops at half ``render_size`` (coarse to fine;
    0.6 saved 8% of the stage on the shared 30-view scene but moved its rotations 0.08 deg further
    from COLMAP's, so off by default)."""
    photometric_views: int = 8
    """Views rendered per photometric step (a random mini-batch; all views when fewer). Where cameras move,
    a step's views tie them to one head: on the demo (8 views, cameras free) 4 per step left rotation
    errors of 0.15 deg median / 0.36 max instead of 0.11 / 0.20 (30 steps of 4 at twice the rates:
    0.39 / 0.64). Pinned cameras: ``photometric_views_pinned``."""
    geometry_lr_scale: float = 1.0
    """Scale of the photometric stage's learning rates for cameras, shape, expression and pose."""
    appearance_steps: bool = True
    """Refine the solved appearance jointly with the geometry in the photometric stage's Adam steps
    (off: it is held, and solved again in closed form half way). On, with the warm-up and the fall of
    the rates, the demo's worst rotation error went from 0.256 to 0.192 deg (held: 0.256); held was
    chosen before the multiview stage pinned the shared scene's cameras to COLMAP's."""
    appearance_rounds: int = 2
    """Alternations of the photometric stage's closed-form appearance solve (lighting given albedo,
    then albedo given lighting), before the geometry steps. 1 was measured and rejected: 1.2 s less CPU
    in the shared 30-view fit (7.4 -> 6.2 s, same landmarks), but the occlusion flags depend on the second
    round: the test's dark disc over one demo view's mouth went unflagged (0 of its mouth landmarks
    flagged instead of 90 %)."""
    occlusion_refit: bool = False
    """Act on the occlusion stage's findings: refit the landmarks without those judged occluded (weight 0)
    and leave the occluded pixels out of the photometric loss. Off (default): they are only flagged in
    the outputs. Measured, acting cost accuracy: on the demo scene with a painted occluder the occluded
    view's camera came out 0.51 deg off instead of 0.33 (the robust landmark term already resists a
    displaced mouth, and the dropped points held its roll), and on the shared 30-view scene leaving
    the pixels out moved rotations 0.1-0.2 deg further from COLMAP's (the pixels the solved appearance
    explains worst are where misregistration shows). README, Photometric stage and occlusion."""
    occlusion_residual: float = 3.0
    """A rendered head pixel counts as occluded when its colour residual after the closed-form
    appearance solve exceeds this many times the view's median residual; landmarks amid such pixels
    are down-weighted and the photometric loss leaves the pixels out."""
    texture_size: int = 256
    """Side of the free UV texture map (when no texture space is given)."""
    fit_shape: bool = True
    """Fit the identity (shape) coefficients."""
    fit_expression: bool = True
    """Fit expression coefficients (when the model has an expression space)."""
    fit_jaw: bool = True
    """Fit the jaw rotation."""
    fit_eyes: bool = True
    """Fit both eye rotations (needs iris landmarks or the photometric stage)."""
    fit_neck: bool = False
    """Fit the neck rotation (it trades off with the cameras; off by default)."""
    per_view_lighting: bool = True
    """One SH lighting per view (the head may turn under fixed lights) instead of one for all."""
    shape_prior: float = 1e-4
    """Weight of the squared norm of the shape coefficients."""
    expression_prior: float = 1e-4
    """Weight of the squared norm of the expression coefficients."""
    pose_prior: float = 1e-2
    """Weight of the squared norm of the jaw/neck/eye rotations (radians)."""
    robust_scale: float = 0.05
    """Geman-McClure scale of landmark residuals, as a fraction of the face size."""
    w_landmark: float = 0.05
    """Landmark term weight in the photometric stage: low, so that the image, not the detector's
    yaw-dependent landmark bias, decides the final cameras (the landmark stage already placed them)."""
    w_photometric: float = 1.0
    """Photometric L1 term weight."""
    w_mask: float = 0.5
    """Mask term weight."""
    early_stop: float = 1e-4
    """Stop a stage when its loss improved by less than this fraction over 10 iterations."""
    seed: int = 0
    """Seed for every random choice (the fit repeats exactly for a given seed and device with one CPU thread;
    several threads add run-to-run differences in the last digits: README, Determinism)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to fit: auto uses CUDA when present."""
    multiview: bool = True
    """Cameras of the views COLMAP registered follow COLMAP's relative poses, brought into FLAME's frame by
    one similarity fitted with FLAME on the landmarks (flame_prior.fit.multiview); off: landmark cameras only."""
    multiview_max_rotation_deg: float = 30.0
    """A COLMAP camera further than this from its landmark camera (after the alignment) is rejected: the landmark
    cameras are a few degrees off at most up to 60 deg of yaw, a wrong registration is off by far more."""
    multiview_max_landmark_error: float = 0.05
    """A COLMAP camera whose landmark error exceeds this fraction of the face size (and 4x the median view's) is
    rejected after the joint refinement."""
    multiview_steps: int = 10
    """L-BFGS iterations of the multi-view refinement per yaw round, after each round's similarity pre-solve
    (flame_prior.fit.multiview). 10 since the pre-solve (the shared 30-view fit's multi-view stage 1.0-1.2 s,
    1.5-1.8 s at 40 without it): on the six scan rigs and the shared scene the same cameras as 20 and 40 (rotation medians
    within 0.02 deg, centres within 0.01 %, the same views used and released) and the joint energy within
    0.3 % of 40's. Without the pre-solve 20 and 30 released a camera of the moving_camera rig and 10 left the
    ring rig 124 px off its landmarks: the L-BFGS had the similarity's scale and offset still to find."""

    def check(self, prefix: str = "fitter.") -> None:
        """Refuse impossible values before any work (:func:`flame_prior.errors.check_option`)."""
        for name in ("rigid_steps", "landmark_steps", "photometric_steps", "photometric_steps_cuda",
                     "photometric_steps_one_view", "photometric_steps_pinned", "photometric_warmup"):
            check_option(getattr(self, name) >= 0, prefix + name, getattr(self, name), "0 or more")
        check_option(self.render_size >= 16, prefix + "render_size", self.render_size, "at least 16 pixels")
        check_option(self.texture_size >= 2, prefix + "texture_size", self.texture_size, "at least 2 pixels")
        for name in ("photometric_views", "photometric_views_cuda", "photometric_views_pinned"):
            check_option(getattr(self, name) >= 1, prefix + name, getattr(self, name), "at least 1")
        check_option(0 <= self.photometric_lr_final <= 1, prefix + "photometric_lr_final", self.photometric_lr_final,
                     "a fraction in [0, 1]")
        check_option(0 <= self.photometric_coarse <= 1, prefix + "photometric_coarse", self.photometric_coarse,
                     "a fraction in [0, 1]")
        check_option(0 < self.multiview_max_rotation_deg <= 180, prefix + "multiview_max_rotation_deg",
                     self.multiview_max_rotation_deg, "in (0, 180] degrees")
        check_option(self.multiview_max_landmark_error > 0, prefix + "multiview_max_landmark_error",
                     self.multiview_max_landmark_error, "positive")
        check_option(self.multiview_steps >= 1, prefix + "multiview_steps", self.multiview_steps, "at least 1")
        check_option(self.appearance_rounds >= 1, prefix + "appearance_rounds", self.appearance_rounds, "at least 1")
        check_option(self.robust_scale > 0, prefix + "robust_scale", self.robust_scale, "positive")
        for name in ("geometry_lr_scale", "photometric_lr_scale_pinned", "occlusion_residual", "shape_prior", "expression_prior", "pose_prior",
                     "w_landmark", "w_photometric", "w_mask", "early_stop"):
            value = getattr(self, name)
            check_option(math.isfinite(value) and value >= 0, prefix + name, value, "0 or more")

    def pinned(self) -> FitterConfig:
        """This schedule for a photometric stage in which no camera can move: the ``*_pinned`` options
        in place of ``photometric_steps``, ``photometric_views`` and ``geometry_lr_scale``."""
        return dataclasses.replace(self, photometric_steps=self.photometric_steps_pinned,
                                   photometric_views=self.photometric_views_pinned,
                                   geometry_lr_scale=self.photometric_lr_scale_pinned)

    def for_device(self, device: torch.device | str, n_views: int) -> FitterConfig:
        """This schedule for ``n_views`` views on ``device``: on CUDA every step renders all views (at most
        ``photometric_views_cuda``) and the stage takes ``photometric_steps_cuda`` steps or more
        (that option says why and how many); on the CPU, or with the stage skipped
        (``photometric_steps`` 0), itself."""
        if str(device).split(":")[0] != "cuda" or self.photometric_steps == 0:
            return self
        per_step = max(1, min(n_views, self.photometric_views_cuda))
        cpu_views = self.photometric_steps * min(n_views, self.photometric_views)  # views the CPU's schedule renders
        steps = max(self.photometric_steps_cuda, math.ceil(cpu_views / per_step))
        return dataclasses.replace(self, photometric_steps=steps, photometric_views=per_step)

    def for_views(self, n_views: int) -> FitterConfig:
        """This schedule for a scene of ``n_views`` views: the one-view rule
        (``photometric_steps_one_view``) applied, so every stage reads ``photometric_steps``."""
        if n_views == 1 and self.photometric_steps > 0:
            return dataclasses.replace(self, photometric_steps=self.photometric_steps_one_view)
        return self


def resolve_device(name: str) -> torch.device:
    import torch  # here, not at the top: the CLI builds this config without loading torch (start-up time)

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--fitter.device cuda was asked for, but torch sees no CUDA device.",
                         hint="Use --fitter.device cpu or auto, or install a CUDA build of torch.")
    return torch.device(name)
