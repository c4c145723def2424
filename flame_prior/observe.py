"""Pipeline step 2 — face observations: landmarks, confidences and a head mask per view, offline.

Public entry: :func:`observe`, configured by :class:`~flame_prior.detectors.DetectConfig`.

Per image, the chosen backend (:mod:`flame_prior.detectors`) finds the largest face. Photos where it
found none get a seeded second look when others have a face (``detect.seeded``, MediaPipe: the
landmark model on the region of the nearest view's face and on the mirror image, checked against
it; :mod:`flame_prior.detectors.seeded`); a face found so has ``Detection.provenance == "seeded"``
and says so in its notes. Views without a face, or with a face smaller than ``min_face_px``, are
returned as :class:`~flame_prior.images.SkippedInput` with the reason, never fitted silently.
Detections are cached by image content (seeded ones by content and seeds; see
:mod:`flame_prior.cache`), so re-runs skip detection.

Coordinates follow docs/conventions.md: pixels of the upright ORIGINAL image, corner origin,
pixel centres at +0.5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from flame_prior.cache import CacheMiss, DetectionCache, default_cache_dir, quantise_mask_u8
from flame_prior.detectors import DetectConfig, Detection, make_detector
from flame_prior.images import InputImage, SkippedInput

__all__ = ["NO_FACE", "ViewObservation", "observe"]


@dataclass
class ViewObservation:
    """One upright image and the face the detector found in it.

    Attributes:
        image: the decoded input.
        detection: the face: landmarks (pixels of the upright ORIGINAL image, corner origin, pixel
            centres at +0.5; see docs/conventions.md), confidences, head mask (quantised to steps of
            1/255, so cached and fresh detections are identical) and face box.
        notes: remarks on this view for the summary (the detector's, e.g. "2 faces, took the
            largest", and the cache's).
    """

    image: InputImage
    detection: Detection
    notes: list[str] = field(default_factory=list)


#: The reason a photo is left out when the detector finds no face in it (read by the pipeline: such
#: photos get a second look through a known lens, and COLMAP may pose them in a rigid scene).
NO_FACE = "no face found"


def observe(
    images: list[InputImage], config: DetectConfig, progress=None, detector=None
) -> tuple[list[ViewObservation], list[SkippedInput]]:
    """Detect the face in every image: landmarks, per-landmark confidence and a head mask.

    Args:
        images: decoded photographs (:func:`flame_prior.images.load_images`).
        config: backend and options.
        progress: a running ``rich.progress.Progress`` to add a task to; None shows a progress bar
            of its own on stderr; False shows none.
        detector: an open backend (:func:`flame_prior.detectors.make_detector` of the same
            config) to reuse across calls; the caller closes it. None: one is opened and closed here.

    Returns:
        ``(observations, skipped)``: one observation per view with a usable face, in input order,
        and the views left out with the reason ("no face found", "face too small (N px) ...").

    Raises:
        InputError: the backend cannot run here (FAN not installed / no weights; "files" without
            its folder or a file for an image).
    """
    owned = detector is None
    if owned:
        detector = make_detector(config)
    cache = None
    if config.use_cache and detector.cacheable:
        cache = DetectionCache(config.cache_dir if config.cache_dir is not None else default_cache_dir())

    found: list[tuple[Detection | None, list[str]]] = []  # per image, in input order
    try:
        with _progress_context(progress) as bar:
            task = bar.add_task(f"Detecting faces ({detector.name})", total=len(images)) if bar else None
            for image in images:
                found.append(_detect_cached(detector, cache, image))
                if bar:
                    bar.advance(task)
            if config.seeded and hasattr(detector, "detect_seeded"):
                _seeded_pass(detector, cache, images, found, bar)
    finally:
        if owned:
            detector.close()

    observations: list[ViewObservation] = []
    skipped: list[SkippedInput] = []
    for image, (det, notes) in zip(images, found):
        if det is None:
            skipped.append(SkippedInput(image.path, NO_FACE))
            continue
        if det.face_size < config.min_face_px:
            skipped.append(
                SkippedInput(
                    image.path,
                    f"face too small ({det.face_size:.0f} px, below min_face_px={config.min_face_px:g}): too small to fit",
                )
            )
            continue
        det = dataclasses.replace(
            det, landmarks=np.asarray(det.landmarks, np.float32), confidence=np.asarray(det.confidence, np.float32),
            mask=quantise_mask_u8(det.mask),  # held as uint8 (Detection.mask_u8)
            face_box=tuple(float(v) for v in det.face_box))
        observations.append(ViewObservation(image, det, notes + list(det.notes)))
    return observations, skipped


def _detect_cached(detector, cache: DetectionCache | None, image: InputImage,
                   key: str | None = None, seeds=None) -> tuple[Detection | None, list[str]]:
    """The backend's detection of ``image`` (its seeded pass with ``seeds``), from the cache when there;
    ``key``: the cache key in place of the image's content hash. Returns ``(detection, notes)``."""
    notes: list[str] = []
    shape = (image.height, image.width)
    name = detector.name if seeds is None else f"{detector.name}-seeded"
    det = CacheMiss()
    if cache is not None:
        det = cache.load(key or image.sha256, name, detector.version, shape)
        if isinstance(det, CacheMiss) and det.note:
            notes.append(det.note)
    if isinstance(det, CacheMiss):
        det = detector.detect(image) if seeds is None else detector.detect_seeded(image, seeds)
        if cache is not None:
            try:
                cache.save(key or image.sha256, name, detector.version, shape, det)
            except OSError as err:
                notes.append(f"detection not cached ({err})")
    return det, notes


def _seeded_pass(detector, cache: DetectionCache | None, images: list[InputImage],
                 found: list[tuple[Detection | None, list[str]]], bar) -> None:
    """The seeded second pass (:mod:`flame_prior.detectors.seeded`), in place on ``found``: each image
    without a face is looked at again with the faces of the nearest images with one before and after
    it in input order (same image size) as seeds. Faces of the first pass only seed: a seeded face
    never seeds another."""
    with_face = [i for i, (det, _) in enumerate(found) if det is not None]
    missed = [i for i, (det, _) in enumerate(found) if det is None]
    if not with_face or not missed:
        return
    task = bar.add_task("Seeded second look at the photos without a face", total=len(missed)) if bar else None
    for i in missed:
        image = images[i]
        same = [j for j in with_face if (images[j].height, images[j].width) == (image.height, image.width)]
        before = [j for j in same if j < i][-1:]
        after = [j for j in same if j > i][:1]
        seeds = [(images[j], found[j][0]) for j in before + after]
        if seeds:
            # Cached under the image AND its seeds: another neighbour is another search.
            key = hashlib.sha256("".join([image.sha256, ":", getattr(detector, "seeded_version", "seeded")] + [
                f":{im.sha256}:" + ",".join(f"{v:.1f}" for v in d.face_box) for im, d in seeds]).encode()).hexdigest()
            det, notes = _detect_cached(detector, cache, image, key=key, seeds=seeds)
            if det is not None:
                found[i] = (det, found[i][1] + notes)
        if bar:
            bar.advance(task)


def _progress_context(progress):
    """Yield a Progress to report to (the caller's, a new one on stderr, or None when ``progress`` is False)."""
    if progress is False:
        return nullcontext(None)
    if progress is not None:
        return nullcontext(progress)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(file=sys.stderr), transient=True,
    )
