"""The dynamic-sequence tracker's options (:class:`TrackerConfig`, ``--tracker.*``), used by :mod:`flame_prior.track`.

A module of its own, importing nothing heavy, so that building ``fit``'s config (and ``--help``)
does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrackerConfig:
    """Dynamic sequences: keyframes, tracking steps, temporal smoothness."""

    keyframes: int = 8
    """Timesteps (covering the poses) that the static fit uses for identity, intrinsics and cameras (single camera)."""
    steps: int = 3
    """Levenberg-Marquardt steps per timestep (each started from the previous timestep's result)."""
    refresh_jacobian: bool = False
    """Re-linearise at every step (slower); by default a timestep's steps share the Jacobian of its start."""
    refine_identity: bool = True
    """Adjust the shape together with the parameters of spread timesteps (a bundle), then track again."""
    identity_timesteps: int = 24
    """Timesteps (evenly spread, keyframes included) in the identity bundle."""
    smooth_rotation: float = 0.05
    """Weight of |rotation_t - rotation_{t-1}|^2 (radians) — the head's rigid motion."""
    smooth_translation: float = 5.0
    """Weight of |translation_t - translation_{t-1}|^2 (metres)."""
    smooth_pose: float = 0.05
    """Weight of the jaw/neck/eye rotations' change between timesteps (radians)."""
    smooth_expression: float = 1e-4
    """Weight of the expression coefficients' change between timesteps."""
