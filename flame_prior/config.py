"""The one config of ``flame-prior fit`` — shared by the CLI and the nerfstudio processor.

Building a config has no side effects; :func:`flame_prior.pipeline.run` does the work. Model
paths fall back to environment variables, then to the defaults that ship with the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from flame_prior.detectors import DetectConfig
from flame_prior.export_config import ExportConfig
from flame_prior.fit.config import FitterConfig
from flame_prior.intrinsics import IntrinsicsConfig
from flame_prior.tracker_config import TrackerConfig
from flame_prior.video import VideoConfig

#: Environment variables that stand in for the model-file flags.
ENV_FLAME_MODEL = "FLAME_PRIOR_MODEL"
ENV_EMBEDDING = "FLAME_PRIOR_EMBEDDING"
ENV_TEXTURE = "FLAME_PRIOR_TEXTURE"
ENV_UV_LAYOUT = "FLAME_PRIOR_UV_LAYOUT"


@dataclass
class FitConfig:
    """Recover camera poses (and a FLAME head) from photographs of one head."""

    data: Path
    """A folder of images of one head, a single image, a clip (.mp4, .mov, ...), a folder of clips, or a
    folder per camera (synchronised cameras of a dynamic sequence)."""
    output_dir: Path
    """Where the dataset is written (transforms.json, images, masks, FLAME parameters, report)."""
    flame_model: Path | None = None
    """FLAME model: generic_model.pkl, flame2023.pkl, flame2023_Open.pkl or an .npz with FLAME's keys
    (env FLAME_PRIOR_MODEL). Default: the bundled FLAME 2023 Open subset (CC BY 4.0; 60 identity
    components, no expressions)."""
    landmark_embedding: Path | None = None
    """Landmark embedding: FLAME's mediapipe_landmark_embedding.npz, DECA's landmark_embedding.npy, or
    an npz of the same keys (env FLAME_PRIOR_EMBEDDING). Default: flame-prior's own 468-point
    MediaPipe embedding."""
    texture_space: Path | None = None
    """FLAME_texture.npz or FLAME_albedo_from_BFM.npz (env FLAME_PRIOR_TEXTURE). Default: a free UV
    texture map."""
    uv_layout: Path | None = None
    """An OBJ with FLAME's UVs (e.g. FLAME's head_template_mesh.obj) for the free texture map
    (env FLAME_PRIOR_UV_LAYOUT). Default: the texture space's UVs, else a cylindrical unwrap."""
    overwrite: bool = False
    """Replace an existing output directory (only once the new one is complete)."""
    avatar_format: bool = False
    """Also write the FLAME-avatar dataset (GaussianAvatars / VHAP format) under <output-dir>/avatar."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """The report's pictures: which views at full size."""
    video: VideoConfig = field(default_factory=VideoConfig)
    """Clips: frames kept, blur and duplicate tests, static or dynamic sequence."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    """Dynamic sequences: keyframes, tracking steps, temporal smoothness."""
    verbose: bool = False
    """Show third-party libraries' start-up messages (TensorFlow Lite, glog), silenced by default."""
    detect: DetectConfig = field(default_factory=DetectConfig)
    """Face detection, landmarks and head masks."""
    intrinsics: IntrinsicsConfig = field(default_factory=IntrinsicsConfig)
    """Focal length: COLMAP, EXIF, optimised or prior."""
    fitter: FitterConfig = field(default_factory=FitterConfig)
    """Fitting schedule, priors and weights."""

    def check(self) -> None:
        """Refuse impossible option values before any work: one line naming the option, exit 2."""
        self.detect.check()
        self.intrinsics.check()
        self.fitter.check()
        self.export.check()

    def resolved_paths(self) -> dict[str, Path | None]:
        """Model paths after the environment-variable fallbacks (None: use the default)."""
        env = lambda k: Path(os.environ[k]) if os.environ.get(k) else None  # noqa: E731
        return {
            "flame_model": self.flame_model or env(ENV_FLAME_MODEL),
            "landmark_embedding": self.landmark_embedding or env(ENV_EMBEDDING),
            "texture_space": self.texture_space or env(ENV_TEXTURE),
            "uv_layout": self.uv_layout or env(ENV_UV_LAYOUT),
        }
