"""``fan`` backend: the optional ``face_alignment`` package (FAN, 68 iBUG points), offline only.

``face_alignment`` downloads its weights on first use, which cannot happen here (no network at
run time). So the backend checks, before building anything, that the package is installed and
that its weight files are already in torch's hub cache (``$TORCH_HOME/hub/checkpoints``); if not,
it raises ``InputError`` saying what to do. The head mask comes from :mod:`.headmask`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from flame_prior.detectors.base import Detection, landmark_box
from flame_prior.errors import InputError
from flame_prior.images import InputImage

__all__ = ["FanDetector", "fan_weight_files"]

_HINT = (
    "On a machine with network: pip install face-alignment, then run "
    "`python -c \"import face_alignment as fa; fa.FaceAlignment(fa.LandmarksType.TWO_D, device='cpu')\"` once "
    "so it stores its weights in {hub}; copy that folder here. Or use --backend mediapipe (offline, bundled)."
)


def fan_weight_files() -> list[Path]:
    """Where face_alignment keeps the weights it needs (2D FAN, S3FD face detector), as glob patterns."""
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / "2DFAN4*", hub / "s3fd*"]


class FanDetector:
    """2D FAN landmarks via ``face_alignment``; refuses to start unless its weights are local."""

    name = "fan"
    cacheable = True

    def __init__(self) -> None:
        import torch

        hub = Path(torch.hub.get_dir()) / "checkpoints"
        if importlib.util.find_spec("face_alignment") is None:
            raise InputError("the 'fan' backend needs the face_alignment package, which is not installed", hint=_HINT.format(hub=hub))
        missing = [p for p in fan_weight_files() if not any(p.parent.glob(p.name))]
        if missing:
            raise InputError(
                "face_alignment's weights are not on this machine (it would download them, and there is no network)",
                path=missing[0],
                hint=_HINT.format(hub=hub),
            )
        import face_alignment

        self.version = f"face_alignment-{getattr(face_alignment, '__version__', '?')}/1"
        lt = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        self._fa = face_alignment.FaceAlignment(lt, device="cpu", face_detector="sfd")
        self._masker = None

    def close(self) -> None:
        if self._masker is not None:
            self._masker.close()

    def detect(self, image: InputImage) -> Detection | None:
        found = self._fa.get_landmarks_from_image(image.pixels)
        if not found:
            return None
        # Taken as face_alignment returns them; its pixel-centre convention is not verified here
        # (the package is not installed in development), so a half-pixel offset is possible.
        faces = [np.asarray(f, dtype=np.float64)[:, :2] for f in found]
        faces.sort(key=lambda f: -np.prod(np.ptp(f, axis=0)))
        notes = [f"{len(faces)} faces, took the largest"] if len(faces) > 1 else []
        pts = faces[0].astype(np.float32)
        if self._masker is None:
            from flame_prior.detectors.headmask import HeadMasker

            self._masker = HeadMasker()
        mask = self._masker(image.pixels, pts, "ibug68")
        return Detection(pts, np.ones(len(pts), np.float32), "ibug68", mask, landmark_box(pts), notes)
