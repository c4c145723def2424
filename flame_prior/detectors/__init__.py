"""Face detection (pipeline step 2, run by :mod:`flame_prior.observe`): its options
(:class:`DetectConfig`, ``--detect.*``), what a backend finds (:class:`Detection`) and the backends.

A backend is an object with ``name``, ``version`` (cache key: bump it when the output changes),
``cacheable``, ``detect(image: InputImage) -> Detection | None`` (None: no face) and ``close()``.

* ``mediapipe`` (:mod:`.mediapipe_backend`): Face Mesh 478 points + selfie-segmentation head mask.
* ``fan`` (:mod:`.fan_backend`): the optional ``face_alignment`` package, 68 iBUG points.
* ``files`` (:mod:`.files_backend`): landmarks (and masks) supplied by the user.
"""

from __future__ import annotations

from flame_prior.detectors.base import DetectConfig, Detection, Detector, landmark_box
from flame_prior.errors import InputError

__all__ = ["DetectConfig", "Detection", "Detector", "landmark_box", "make_detector"]


def make_detector(config: DetectConfig) -> Detector:
    """The backend ``config.backend`` asks for; raises ``InputError`` when it cannot run here."""
    if config.backend == "mediapipe":
        from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

        return MediaPipeDetector()
    if config.backend == "fan":
        from flame_prior.detectors.fan_backend import FanDetector

        return FanDetector()
    if config.backend == "files":
        from flame_prior.detectors.files_backend import FilesDetector

        return FilesDetector(config.landmark_dir)
    raise InputError(f"unknown detection backend {config.backend!r}", hint="Choose mediapipe, fan or files.")
