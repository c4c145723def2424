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

__all__ = ["DetectConfig", "Detection", "Detector", "landmark_box", "make_detector", "OpenedOnFirstDetect"]


class OpenedOnFirstDetect:
    """A backend whose name and version are known without opening it (class attributes), opened at
    its first :meth:`detect`: a run whose detections all come from the cache never loads MediaPipe
    (its import and graphs, with matplotlib, cost more CPU than a single-image fit)."""

    def __init__(self, backend: type) -> None:
        self.backend = backend
        self.name, self.version, self.cacheable = backend.name, backend.version, backend.cacheable
        self._open: Detector | None = None
        if hasattr(backend, "detect_seeded"):  # the optional seeded pass (observe looks for it), opened likewise
            self.detect_seeded = lambda image, seeds: self.opened().detect_seeded(image, seeds)
            self.seeded_version = backend.seeded_version  # part of the seeded pass's cache key

    def opened(self) -> Detector:
        """The backend itself, opened now if it was not yet."""
        if self._open is None:
            self._open = self.backend()
        return self._open

    def detect(self, image):
        return self.opened().detect(image)

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


def make_detector(config: DetectConfig) -> Detector:
    """The backend ``config.backend`` asks for; raises ``InputError`` when it cannot run here."""
    if config.backend == "mediapipe":
        from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

        return OpenedOnFirstDetect(MediaPipeDetector)
    if config.backend == "fan":
        from flame_prior.detectors.fan_backend import FanDetector

        return FanDetector()
    if config.backend == "files":
        from flame_prior.detectors.files_backend import FilesDetector

        return FilesDetector(config.landmark_dir)
    raise InputError(f"unknown detection backend {config.backend!r}", hint="Choose mediapipe, fan or files.")
