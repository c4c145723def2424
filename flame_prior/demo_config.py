"""The options of ``flame-prior demo`` (:class:`DemoConfig`); :mod:`flame_prior.demo` runs it.

A module of its own, importing nothing heavy, so that the CLI builds it (and ``--help``) without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flame_prior.errors import check_option
from flame_prior.fit.config import FitterConfig


@dataclass
class DemoConfig:
    """Synthetic round trip: render a FLAME head from known cameras, fit it, compare."""

    output_dir: Path = Path("outputs/demo")
    """Where the demo writes the same outputs as a real run, plus camera_errors.json."""
    views: int = 8
    """Number of views around the head (yaw spread over ±60°)."""
    image_size: int = 256
    """Side of the square synthetic images, pixels."""
    noise_px: float = 0.5
    """Standard deviation of the Gaussian noise added to the landmarks, pixels."""
    unknown_focal: bool = False
    """Start from a wrong focal length (20° field of view) and optimise it."""
    seed: int = 0
    """Seed of the scene and of the fit."""
    overwrite: bool = True
    """Replace an existing demo output directory."""
    fitter: FitterConfig = field(default_factory=FitterConfig)
    """Fitting schedule and device (the real fitter's defaults; --fitter.device picks CPU or CUDA)."""

    def check(self) -> None:
        """Refuse impossible values before any work: one line naming the option, exit 2."""
        check_option(self.views >= 1, "views", self.views, "at least 1")
        check_option(self.image_size >= 32, "image_size", self.image_size, "at least 32 pixels")
        check_option(self.noise_px >= 0, "noise_px", self.noise_px, "0 or more pixels")
        self.fitter.check()
