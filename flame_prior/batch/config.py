"""The one config of ``flame-prior batch``: every option of ``fit`` plus how the batch runs.

:class:`BatchConfig` extends :class:`~flame_prior.config.FitConfig`, so a batch takes the same
flags as ``fit`` (model files, ``--detect.*``, ``--intrinsics.*``, ``--fitter.*``) and every scene
is fitted with the same settings a ``fit`` of that scene would use. Building a config has no side
effects; :func:`flame_prior.batch.run_batch` does the work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flame_prior.config import FitConfig

#: The fast single-image schedule (``--preset fast``): the landmark stages only, few steps. Measured
#: on the five shared FFHQ images against the full schedule: see the README ("Batch runs").
FAST_SCHEDULE = {"photometric_steps": 0, "rigid_steps": 3, "landmark_steps": 3}


@dataclass
class BatchConfig(FitConfig):
    """Fit many scenes: a folder per subject, or (``--single-images``) every image its own scene."""

    data: Path
    """The root: one sub-folder of images per scene, or with --single-images a folder of images (searched
    recursively), each image its own scene."""
    output_dir: Path
    """Where the run is written: scenes/<scene>/ (the files of `fit`), records/, thumbs/, index.json, index.csv,
    index.html (and eg3d/ with --single-images). Rerunning into the same folder resumes."""
    single_images: bool = False
    """Every image under the root is its own scene (datasets of single face photos); also writes EG3D camera
    labels (eg3d/dataset.json)."""
    overwrite: bool = False
    """Process every scene again, even the ones a previous run finished."""
    retry_failed: bool = False
    """Retry the scenes a previous run recorded as failed (by default they are skipped and listed as failed)."""
    preset: Literal["full", "fast"] = "full"
    """Fitting schedule: "full" is fit's schedule (--fitter.* as given); "fast" is the landmark-only schedule for
    datasets (photometric stage off, 3 rigid and 3 landmark steps; these three --fitter values are replaced)."""
    scene_outputs: Literal["full", "record"] = "full"
    """Per scene: "full" writes the complete output of `fit` under scenes/<scene>/; "record" writes only the
    scene's record (camera, intrinsics, FLAME shape and pose, errors) under records/ (datasets: much faster)."""
    workers: int = 0
    """Worker processes (scenes in parallel); 0 = one per CPU core available to this process (with --ray-address:
    as many as the cluster's CPUs hold)."""
    threads_per_worker: int = 0
    """Torch/OpenMP threads of each worker; 0 = the cores divided by the workers (at least 1; 1 with --ray-address)."""
    ray: bool = False
    """Schedule the scenes with Ray instead of the local process pool (needs the [ray] extra): long-lived Ray
    actors, one per worker. Without --ray-address a local Ray instance is started with --workers x
    --threads-per-worker CPUs."""
    ray_address: str | None = None
    """Address of a running Ray cluster (e.g. ray://head:10001 or "auto"); implies --ray. --output-dir and --data
    must then be paths every node sees (a shared filesystem)."""
    eg3d_crops: int = 0
    """With --single-images: also write square crops of this side in pixels, centred on the projected head, with
    their own labels (eg3d/crops/ + eg3d/crops/dataset.json); 0 = no crops."""
    eg3d_scale: float = 2.7
    """EG3D world units per metre of FLAME's frame (2.7: a camera 1 m from the head lands on EG3D's FFHQ radius)."""

    def scene_config(self, data: Path, output_dir: Path) -> FitConfig:
        """The ``fit`` config of one scene: this config's fit options (with the preset applied)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(FitConfig)}
        values.update(data=Path(data), output_dir=Path(output_dir), overwrite=True)
        config = FitConfig(**values)
        if self.preset == "fast":
            config = dataclasses.replace(config, fitter=dataclasses.replace(self.fitter, **FAST_SCHEDULE))
        return config

    @property
    def uses_ray(self) -> bool:
        return self.ray or self.ray_address is not None
