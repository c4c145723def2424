"""Pipeline step 3 — intrinsics: COLMAP (pycolmap) when the views register, else EXIF, else fitted focal.

Public entry: :func:`estimate_intrinsics`. Sources are tried in this order; the first that
applies wins, and every source that is skipped leaves a note saying why:

1. ``"file"``: :attr:`IntrinsicsConfig.file`, a calibration with every view's own ``fx, fy, cx, cy``
   and lens distortion: a COLMAP model or a nerfstudio ``transforms.json``
   (:mod:`flame_prior.camera_file` documents both), matched to the views by image file name.
   COLMAP still runs for its poses, with the calibration held: one camera per view, PINHOLE or
   OPENCV (FULL_OPENCV for a ``k3``) with the file's values brought to COLMAP's crop and scale,
   and focal, principal point and lens left out of its bundle adjustment.
   ``"given"``: :attr:`IntrinsicsConfig.focal_px`, in every view's own pixel grid. COLMAP still
   runs (focal held) for its poses.
2. ``"colmap"``: structure from motion (:func:`run_colmap`) on what is rigid with the head. The
   scene kind (:attr:`IntrinsicsConfig.scene_kind`, or :func:`detect_scene_kind` from the
   background): a fixed camera and a turning head ("turning-head": torso and background are static
   and contradict the head's motion, so SIFT features outside ``view.detection.mask`` are discarded
   and COLMAP sees only the box the head masks cover) or a camera moving around a still head / a
   synchronised rig ("rigid-scene": the whole image, background included). Images downscaled to
   ``colmap_max_image_side``; one SIMPLE_PINHOLE camera per image size (views of 998 and 1000 px
   width each get their own; or one per view, ``colmap_cameras="per_view"``: a rig of different
   cameras), principal point held at the image centre, a low SIFT peak threshold
   (skin has weak texture); for a turning head no upsampled octave and matching only pairs of views
   whose head poses (read off the landmarks, :mod:`flame_prior.colmap_pairs`) are close; incremental
   mapping with few bundle adjustments (:func:`_mapper_for_few_views`); the largest reconstruction is taken when it
   registers at least half of the views. Its poses go to the fit
   (:attr:`Intrinsics.poses`, :mod:`flame_prior.fit.multiview`), not only its focal. In a rigid scene
   (:attr:`IntrinsicsConfig.colmap_lens`) the camera is RADIAL instead: its ``k1, k2`` are refined in
   bundle adjustment, checked (plausible, and lowering the reprojection error against the same tracks
   re-adjusted as a pinhole) and handed to the fit as :attr:`Intrinsics.distortion`, the path a
   calibration's lens takes. When fewer than :attr:`IntrinsicsConfig.colmap_retry_below` of the images
   register, COLMAP runs again with more features on larger images and the run that registers more is kept
   (:func:`_try_colmap`). (A shared camera whose model explains no face is retried with one camera per view
   by the pipeline, after the fit has judged it: :func:`flame_prior.pipeline.fit_static`.) With one camera
   per view and the focal estimated, each camera also gets its own principal point: the one member of the
   family of cameras the tracks cannot tell apart whose principal points lie nearest the image centres
   (:mod:`flame_prior.colmap_family`); the lens check then frees them on both sides.
3. ``"exif"``: :attr:`flame_prior.images.InputImage.exif_focal_px`, when every view has one.
4. ``"optimised"`` (two views or more): the focal starts at :attr:`IntrinsicsConfig.prior_fov_deg`
   and the fitter refines one shared focal scale (``Intrinsics.optimise_focal``).
5. ``"prior"`` (one view): focal and distance trade off in a single view, so the focal is the
   documented prior FOV, fixed.

Conventions (docs/conventions.md): pixels have a corner origin with pixel centres at +0.5, as in
COLMAP, so COLMAP's ``cx, cy`` are used unchanged (``W / 2, H / 2`` for a centred principal point).
FOVs are VERTICAL, in degrees: ``focal = (H / 2) / tan(fov / 2)``. COLMAP poses are
world-to-camera with OpenCV axes, in COLMAP's arbitrary frame and scale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

import numpy as np

from flame_prior.cache import colmap_cache_dir, save_npz_atomic
from flame_prior.camera_trust import track_pose_covariance
from flame_prior.colmap_family import bundle_adjust, principal_points_near_centre
from flame_prior.errors import InputError, check_option
from flame_prior.threads import compute_threads
from flame_prior.shapes import check_shape  # not geometry: this module must not load torch (CLI start-up)

if TYPE_CHECKING:
    from rich.progress import Progress

    from flame_prior.camera_file import KnownIntrinsics
    from flame_prior.images import InputImage
    from flame_prior.observe import ViewObservation

__all__ = [
    "Intrinsics",
    "IntrinsicsConfig",
    "ColmapResult",
    "ColmapPoses",
    "estimate_intrinsics",
    "run_colmap",
    "detect_scene_kind",
    "focal_from_fov",
    "fov_from_focal",
    "rotation_residuals_deg",
]

IntrinsicsSource = Literal["colmap", "exif", "optimised", "prior", "given", "file"]
SceneKind = Literal["turning-head", "rigid-scene"]
_COLMAP_CACHE_VERSION = 6  # 2: per-view cameras (one per image size); 3: downscaled head crops, scene kind;
# 4: no SIFT upsampling, pairs by head pose, fewer bundle adjustments (issue 16's cold-run budget)
# 5: a radial lens estimated in a rigid scene (view_distortion); 6: each pose's covariance from its tracks


@dataclass
class Intrinsics:
    """Initial intrinsics per view, in each view's ORIGINAL (upright) pixel grid.

    Attributes:
        fx, fy, cx, cy: ``(N,)`` float64 pixels (corner-origin convention).
        source: where the focal length came from.
        distortion: ``(N, 5)`` float64 OpenCV ``k1, k2, p1, p2, k3`` of each view's lens
            (:mod:`flame_prior.distortion`), or None (none known: pinhole).
        optimise_focal: whether the fitter should refine one shared focal scale.
        colmap: COLMAP figures (registered views, mean reprojection error, points) or None.
        notes: human-readable remarks for the summary.
    """

    fx: np.ndarray
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    source: IntrinsicsSource
    optimise_focal: bool
    colmap: dict | None = None
    notes: list[str] = field(default_factory=list)
    distortion: np.ndarray | None = None
    poses: ColmapPoses | None = None
    """COLMAP's registered cameras, for the fit's multi-view stage (:mod:`flame_prior.fit.multiview`)."""


@dataclass
class ColmapPoses:
    """COLMAP's cameras of the views it registered, handed to the fit, indexed like the views.

    Attributes:
        w2c: ``(N, 4, 4)`` world-to-camera, OpenCV axes, in COLMAP's arbitrary frame and scale;
            NaN where ``registered`` is False.
        registered: ``(N,)`` bool.
        scene_kind: ``"turning-head"`` (only the head is rigid: features on the head mask) or
            ``"rigid-scene"`` (camera moving around a still head, or a synchronised rig: the whole
            image is rigid).
    """

    w2c: np.ndarray
    registered: np.ndarray
    scene_kind: SceneKind = "turning-head"
    faceless: "FacelessCameras | None" = None
    """Images where no face was found but COLMAP registered them (rigid scene only)."""
    pose_cov: np.ndarray | None = None
    """``(N, 6, 6)`` each registered pose's covariance from its feature tracks
    (:func:`flame_prior.camera_trust.track_pose_covariance`, COLMAP's units), NaN where unknown; None:
    not computed (an older cache)."""

    def subset(self, keep: list[int]) -> "ColmapPoses":
        return ColmapPoses(self.w2c[keep], self.registered[keep], self.scene_kind, self.faceless,
                           None if self.pose_cov is None else self.pose_cov[keep])


@dataclass
class FacelessCameras:
    """COLMAP's cameras of images with no detected face (a back view of a ring of cameras): no landmarks
    check them, the fit only carries them into FLAME's frame by its similarity.

    Attributes:
        names: ``M`` view names (:attr:`InputImage.name`).
        w2c: ``(M, 4, 4)`` world-to-camera in COLMAP's frame (the registered ones only).
        fx, fy, cx, cy: ``(M,)`` intrinsics in each image's own pixel grid.
        width, height: ``(M,)`` image sizes.
        distortion: ``(M, 5)`` OpenCV lens of a calibration, or None.
        pose_cov: ``(M, 6, 6)`` each pose's covariance from its tracks (:attr:`ColmapPoses.pose_cov`), or None.
    """

    names: list[str]
    w2c: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    width: np.ndarray
    height: np.ndarray
    distortion: np.ndarray | None = None
    pose_cov: np.ndarray | None = None


@dataclass
class IntrinsicsConfig:
    """Where the focal length comes from (pipeline step 3)."""

    file: Path | None = None
    """Known intrinsics and lens distortion per view: a COLMAP model (folder with cameras.txt + images.txt, or
    .bin) or a nerfstudio transforms.json, matched to the images by file name; skips every estimate."""
    focal_px: float | None = None
    """Focal length in pixels, the same for every view in its own pixel grid; skips every estimate (source "given")."""
    optimise_focal: Literal["auto", "yes", "no"] = "auto"
    """Let the fitter refine one shared focal scale: auto = only when no focal was measured and there are 2+ views."""
    use_colmap: bool = True
    """Try COLMAP structure from motion on the head masks (needs 2+ views that register; one camera per image size)."""
    colmap_cameras: Literal["per_size", "per_view"] = "per_size"
    """COLMAP's cameras: one per image size (views of one camera body share it), or one per view (a rig of
    different cameras or zooms: a focal and principal point each)."""
    colmap_per_view_retry: bool = True
    """When the fit finds that COLMAP's cameras (one per image size) explain no face (the multi-view stage's
    whole-capture rule: a rig of different focal lengths given one camera), run COLMAP again with one camera
    per view and fit again; the fit whose cameras explain the faces is kept."""
    colmap_min_views: int = 3
    """Fewest views for which COLMAP is tried; fewer views go straight to EXIF or the prior."""
    colmap_min_registered: float = 0.5
    """Fraction of the views COLMAP's largest reconstruction must register for its focal to be used."""
    colmap_peak_threshold: float = 0.002
    """SIFT peak threshold (COLMAP's default is 0.0067): low, because skin has weak texture."""
    colmap_max_features: int = 2048
    """Most SIFT features per image (for a turning head: in the head box, before the head mask discards the rest);
    matching costs grow with its square."""
    colmap_pair_max_angle_deg: float = 45.0
    """For a turning head, COLMAP matches two views only when their head poses, read off the landmarks, differ by at
    most this many degrees (each view is matched with its 5 nearest in any case); beyond ~45 degrees skin and hair
    share no SIFT descriptor. 180 matches every pair (as a rigid scene always does)."""
    colmap_mask_erode_px: int = 4
    """Shrink the head mask by this many pixels so that keypoints on the silhouette edge are dropped."""
    colmap_retry_below: float = 0.6
    """When COLMAP registers fewer than this fraction of the images it was given (the views, and in a rigid scene
    the images without a face), it runs again with colmap-retry-max-features at colmap-retry-max-image-side and
    the result that registers more images is kept (a tie: the lower reprojection error). 0 = never."""
    colmap_retry_max_features: int = 8192
    """Most SIFT features per image in the retry (colmap-retry-below)."""
    colmap_retry_max_image_side: int = 1280
    """Long image side in the retry (colmap-retry-below); images are never upscaled."""
    colmap_seed: int = 0
    """Random seed of COLMAP's RANSAC and mapper, for repeatable runs."""
    colmap_max_image_side: int = 1024
    """COLMAP sees every image downscaled so that its long side is at most this many pixels (and, for a turning
    head, cropped to the box the head masks cover): the cold run's cost falls with the area."""
    colmap_lens: Literal["auto", "none", "radial"] = "auto"
    """Radial lens distortion estimated by COLMAP (its RADIAL camera, ``k1, k2`` refined in bundle adjustment) and
    handed to the fit like a calibration's lens: radial = always; none = never (SIMPLE_PINHOLE); auto = in a
    rigid scene only (tracks over the whole frame constrain the lens; a turning head's tracks on the head alone
    do not). An implausible lens, or one that does not lower the reprojection error by 1 %, is dropped with a note."""
    scene_kind: Literal["auto", "turning-head", "rigid-scene"] = "auto"
    """turning-head: a fixed camera and a turning head, only head pixels are rigid with the head (COLMAP on the
    head masks); rigid-scene: a camera moving around a still head or a synchronised rig, the whole image is rigid
    (COLMAP on the whole image, background included); auto: rigid-scene when the background changes between
    views (a moving camera), else turning-head."""
    use_exif: bool = True
    """Use the EXIF focal length when every view has one."""
    cache_dir: Path | None = None
    """Where COLMAP results are cached by image content (default: ~/.cache/flame-prior/colmap)."""
    use_cache: bool = True
    """Reuse a cached COLMAP result for the same images, masks and settings."""
    prior_fov_deg: float = 20.0
    """Vertical FOV (degrees) assumed without a measured focal: the start of a multi-view focal fit, or the
    fixed single-view focal. Portrait lenses (85 mm full frame) give 16-24 degrees and face crops of wider
    shots are narrower still; 20 sits in the middle of the 14-30 degree range of head photographs."""

    def check(self, prefix: str = "intrinsics.") -> None:
        """Refuse impossible values before any work (:func:`flame_prior.errors.check_option`)."""
        f = self.focal_px
        if self.file is not None:
            from flame_prior.camera_file import read_camera_file

            check_option(f is None, prefix + "focal_px", f, f"left unset when --{prefix}file gives the intrinsics")
            read_camera_file(self.file)  # refuses a missing, malformed or unsupported file before any work
        check_option(f is None or (math.isfinite(f) and f > 0), prefix + "focal_px", f, "a positive number of pixels")
        check_option(self.colmap_min_views >= 2, prefix + "colmap_min_views", self.colmap_min_views, "at least 2")
        check_option(0 < self.colmap_min_registered <= 1, prefix + "colmap_min_registered",
                     self.colmap_min_registered, "a fraction in (0, 1]")
        check_option(self.colmap_peak_threshold > 0, prefix + "colmap_peak_threshold", self.colmap_peak_threshold,
                     "positive")
        check_option(self.colmap_max_features >= 1, prefix + "colmap_max_features", self.colmap_max_features,
                     "at least 1")
        check_option(0 < self.colmap_pair_max_angle_deg <= 180, prefix + "colmap_pair_max_angle_deg",
                     self.colmap_pair_max_angle_deg, "in (0, 180] degrees")
        check_option(0 <= self.colmap_retry_below <= 1, prefix + "colmap_retry_below", self.colmap_retry_below,
                     "a fraction in [0, 1]")
        check_option(self.colmap_retry_max_features >= 1, prefix + "colmap_retry_max_features",
                     self.colmap_retry_max_features, "at least 1")
        check_option(self.colmap_retry_max_image_side >= 64, prefix + "colmap_retry_max_image_side",
                     self.colmap_retry_max_image_side, "at least 64 pixels")
        check_option(self.colmap_mask_erode_px >= 0, prefix + "colmap_mask_erode_px", self.colmap_mask_erode_px,
                     "0 or more")
        check_option(self.colmap_max_image_side >= 64, prefix + "colmap_max_image_side", self.colmap_max_image_side,
                     "at least 64 pixels")
        check_option(self.colmap_lens in ("auto", "none", "radial"), prefix + "colmap_lens", self.colmap_lens,
                     "auto, none or radial")
        check_option(self.scene_kind in ("auto", "turning-head", "rigid-scene"), prefix + "scene_kind",
                     self.scene_kind, "auto, turning-head or rigid-scene")
        check_option(0 < self.prior_fov_deg < 180, prefix + "prior_fov_deg", self.prior_fov_deg,
                     "between 0 and 180 degrees")


@dataclass
class ColmapResult:
    """COLMAP's reconstruction of the head, indexed like the input views.

    Attributes:
        w2c: ``(N, 4, 4)`` world-to-camera (OpenCV axes, COLMAP's frame and scale); NaN rows for
            views that did not register.
        registered: ``(N,)`` bool.
        focal_px: the SIMPLE_PINHOLE focal length of the camera with the most registered views, pixels.
        cx, cy: that camera's principal point, pixels (corner origin).
        view_focal_px, view_cx, view_cy: ``(N,)`` each view's own camera (one COLMAP camera per
            image size); a view whose size got no registered image takes the main camera's field
            of view in its own pixel grid, centred.
        view_distortion: ``(N, 5)`` OpenCV ``k1, k2, p1, p2, k3`` COLMAP estimated (a RADIAL camera:
            ``k1, k2``; :attr:`IntrinsicsConfig.colmap_lens`), or None (pinhole, or a held calibration).
        pose_cov: ``(N, 6, 6)`` :attr:`ColmapPoses.pose_cov`, or None.
        figures: ``registered``, ``total``, ``mean_reprojection_error_px`` (COLMAP's own),
            ``reprojection_check_px`` (recomputed here from ``w2c`` and the intrinsics: the same
            number when the conventions agree), ``points3d``, ``focal_px``, ``vertical_fov_deg``,
            ``seconds`` (wall, in all) and ``seconds_extract``, ``seconds_match``, ``seconds_map``, the same
            in CPU seconds (``cpu_seconds``, ``cpu_seconds_extract``, ...), ``threads``, ``pairs`` (matched,
            or None for every pair).
            With an estimated lens ``lens`` (``k1``, ``k2`` of the main camera, ``kept``, ``shift_px``, the
            reprojection error with and without it, ``note``).
    """

    w2c: np.ndarray
    registered: np.ndarray
    focal_px: float
    cx: float
    cy: float
    figures: dict
    view_focal_px: np.ndarray
    view_cx: np.ndarray
    view_cy: np.ndarray
    faceless: FacelessCameras | None = None
    view_distortion: np.ndarray | None = None
    pose_cov: np.ndarray | None = None

    @property
    def poses(self) -> ColmapPoses:
        """The poses the fit takes (:attr:`Intrinsics.poses`)."""
        return ColmapPoses(self.w2c, self.registered, self.figures["scene_kind"], self.faceless, self.pose_cov)


def focal_from_fov(fov_deg: float, height: float) -> float:
    """Focal length in pixels of a pinhole camera with vertical FOV ``fov_deg`` (degrees) and image ``height``."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    return 0.5 * float(height) / math.tan(math.radians(fov_deg) / 2.0)


def fov_from_focal(focal_px: float, height: float) -> float:
    """Vertical FOV in degrees of a pinhole camera with focal ``focal_px`` and image ``height`` (pixels)."""
    if focal_px <= 0:
        raise ValueError(f"focal_px must be positive, got {focal_px}")
    return math.degrees(2.0 * math.atan(0.5 * float(height) / focal_px))


def estimate_intrinsics(
    views: list[ViewObservation],
    config: IntrinsicsConfig,
    workdir: Path | None = None,
    progress: Progress | None = None,
    faceless: Sequence[InputImage] = (),
) -> Intrinsics:
    """Initial intrinsics for every view, from the first source that applies (see module docstring).

    Args:
        views: the observed views (``view.image.pixels`` upright, ``view.detection.mask`` the head).
        config: sources and COLMAP settings.
        workdir: where COLMAP writes its database, images and masks (kept); a temporary folder
            (deleted) when None.
        progress: a running ``rich`` progress to add COLMAP's tasks to; a status spinner when None.
        faceless: images of the same capture where no face was found. In a rigid scene COLMAP runs
            on them too (whole image) and the ones it registers come back in ``poses.faceless``.

    Returns:
        :class:`Intrinsics` with ``(N,)`` float64 ``fx, fy, cx, cy`` in each view's own pixel grid.
        Failures of COLMAP never raise: they become a note and the next source is used.
    """
    if not views:
        raise ValueError("estimate_intrinsics: no views")
    config.check()
    heights = np.array([v.image.height for v in views], dtype=np.float64)
    widths = np.array([v.image.width for v in views], dtype=np.float64)
    n = len(views)
    notes: list[str] = []

    def result(focal, source: IntrinsicsSource, cx=None, cy=None, **colmap) -> Intrinsics:
        measured = source not in ("optimised", "prior")
        optimise = (not measured and n > 1) if config.optimise_focal == "auto" else config.optimise_focal == "yes"
        if not measured:
            source = "optimised" if optimise else "prior"
            notes.append(f"no measured focal: the fit optimises it, starting from a {config.prior_fov_deg:g} deg "
                         "vertical FOV" if optimise else
                         f"no measured focal: prior vertical FOV {config.prior_fov_deg:g} deg, fixed")
        focal = np.asarray(focal, dtype=np.float64)
        return Intrinsics(fx=focal.copy(), fy=focal.copy(),
                          cx=np.asarray(widths / 2.0 if cx is None else cx, dtype=np.float64),
                          cy=np.asarray(heights / 2.0 if cy is None else cy, dtype=np.float64),
                          source=source, optimise_focal=optimise, notes=notes, **colmap)

    if config.file is not None:
        from flame_prior.camera_file import intrinsics_for_views

        known = intrinsics_for_views(config.file, [v.image for v in views])
        notes.extend(known.notes)
        in_file = []  # a faceless image joins COLMAP only with its calibration
        for im in faceless:
            try:
                in_file.append((im, intrinsics_for_views(config.file, [im])))
            except InputError:
                pass
        # COLMAP with the calibration held: its poses only (the intrinsics are the file's).
        colmap = _try_colmap(views, config, workdir, progress, notes, known=known,
                             faceless=[im for im, _ in in_file], faceless_known=[k for _, k in in_file])
        return dataclasses.replace(result(known.fx, "file", cx=known.cx, cy=known.cy), fy=known.fy,
                                   distortion=known.distortion if known.distortion.any() else None,
                                   poses=None if colmap is None else colmap.poses)

    if config.focal_px is not None:
        notes.append(f"focal {config.focal_px:.1f} px given by the user")
        colmap = _try_colmap(views, config, workdir, progress, notes, faceless=faceless)
        return result(np.full(n, float(config.focal_px)), "given", distortion=_estimated_lens(colmap),
                      poses=None if colmap is None else colmap.poses)

    colmap = _try_colmap(views, config, workdir, progress, notes, faceless=faceless)
    if colmap is not None:
        return result(colmap.view_focal_px, "colmap", cx=colmap.view_cx, cy=colmap.view_cy,
                      colmap=colmap.figures, distortion=_estimated_lens(colmap),
                      poses=colmap.poses)

    if config.use_exif:
        exif = [v.image.exif_focal_px for v in views]
        missing = [v.image.name for v, f in zip(views, exif) if f is None or not f > 0]
        if not missing:
            fovs = [fov_from_focal(f, h) for f, h in zip(exif, heights)]
            notes.append(f"focal from EXIF (vertical FOV {min(fovs):.1f}-{max(fovs):.1f} deg)")
            return result(np.array(exif, dtype=np.float64), "exif")
        if len(missing) < n:
            notes.append(f"EXIF focal not used: {len(missing)} of {n} views lack it ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''})")

    # "optimised" or "prior", decided by optimise_focal and the number of views.
    return result([focal_from_fov(config.prior_fov_deg, h) for h in heights], "prior")


def _estimated_lens(colmap: ColmapResult | None) -> np.ndarray | None:
    """The ``(N, 5)`` lens COLMAP estimated, for the fit (the path a calibration's lens takes), or None."""
    if colmap is None or colmap.view_distortion is None or not np.any(colmap.view_distortion != 0.0):
        return None
    return colmap.view_distortion.copy()


def _estimates_lens(config: IntrinsicsConfig, scene_kind: SceneKind, known: KnownIntrinsics | None) -> bool:
    """Whether COLMAP estimates a radial lens (:attr:`IntrinsicsConfig.colmap_lens`); never over a held calibration."""
    if known is not None or config.colmap_lens == "none":
        return False
    return config.colmap_lens == "radial" or scene_kind == "rigid-scene"


def _try_colmap(views, config: IntrinsicsConfig, workdir, progress, notes: list[str],
                known: KnownIntrinsics | None = None, faceless: Sequence[InputImage] = (),
                faceless_known: Sequence[KnownIntrinsics] = ()) -> ColmapResult | None:
    """:func:`run_colmap` when the config and the views allow it and it registers enough views, else None (+ a note).
    ``known``: the calibration's intrinsics, held by COLMAP (one camera per view). ``faceless``: images
    without a face (with ``faceless_known``, their calibration, when ``known`` is given), run with the
    views when the whole image is rigid; their registered cameras go to ``poses.faceless``."""
    n = len(views)
    if not config.use_colmap:
        return None
    if n < max(2, config.colmap_min_views):
        if n > 1:
            notes.append(f"COLMAP skipped: {n} views, fewer than colmap_min_views={config.colmap_min_views}")
        return None
    sizes = {(v.image.width, v.image.height) for v in views}
    if known is not None:
        notes.append("COLMAP: one camera per view, the calibration's intrinsics and lens held")
    elif config.colmap_cameras == "per_view":
        notes.append("COLMAP: one camera per view")
    elif len(sizes) > 1:
        notes.append(f"COLMAP: one camera per image size ({len(sizes)} sizes)")
    kind = config.scene_kind if config.scene_kind != "auto" else detect_scene_kind(views, notes)
    images = n + (len(faceless) if kind == "rigid-scene" else 0)  # a turning head's COLMAP sees no faceless image
    rec = _colmap_with_fallbacks(views, config, workdir, progress, notes, kind, known, faceless, faceless_known)
    retry = _retry_config(config, max(max(v.image.width, v.image.height) for v in views))
    if retry is None or _registered_images(rec) >= config.colmap_retry_below * images:
        return rec
    # Too few images registered: more and finer features (issue 12's ring of cameras: 4 of 12 at 2048 features
    # and 1024 px, 12 of 12 at 8192 and 1280). Costs nothing where the first run registered enough.
    first = _registered_images(rec)
    notes.append(f"COLMAP registered {first} of {images} images (fewer than "
                 f"{100 * config.colmap_retry_below:.0f} %): again with {retry.colmap_max_features} features at "
                 f"{retry.colmap_max_image_side} px")
    again = _colmap_with_fallbacks(views, retry, workdir, progress, notes, kind, known, faceless, faceless_known)
    better = _registered_images(again) > first or (
        again is not None and rec is not None and _registered_images(again) == first
        and again.figures["mean_reprojection_error_px"] < rec.figures["mean_reprojection_error_px"])
    notes.append(f"COLMAP retry registered {_registered_images(again)} of {images} images: "
                 + ("its result is used" if better else "the first result is kept"))
    chosen = again if better else rec
    if chosen is not None:
        chosen.figures["retry"] = {"first_registered": first, "retry_registered": _registered_images(again),
                                   "images": images, "used": bool(better),
                                   "max_features": retry.colmap_max_features,
                                   "max_image_side": retry.colmap_max_image_side}
    return chosen


def _colmap_with_fallbacks(views, config: IntrinsicsConfig, workdir, progress, notes: list[str], kind: SceneKind,
                           known: KnownIntrinsics | None, faceless: Sequence[InputImage],
                           faceless_known: Sequence[KnownIntrinsics]) -> ColmapResult | None:
    """One COLMAP run for the scene kind (with the faceless images in a rigid scene), and on the head
    masks alone when the whole images gave no usable model and the kind was detected, not forced."""
    if kind == "rigid-scene" and faceless:
        rec = _colmap_with_faceless(views, config, workdir, progress, notes, known, list(faceless),
                                    list(faceless_known))
    else:
        rec = _colmap_attempt(views, config, workdir, progress, notes, kind, known)
    if rec is None and config.scene_kind == "auto" and kind == "rigid-scene":
        # The head is rigid in both kinds of scene: when the whole image gave no usable model, the head alone may.
        notes.append("COLMAP on the whole image gave no usable model; trying the head masks alone")
        rec = _colmap_attempt(views, config, workdir, progress, notes, "turning-head", known)
    return rec


def _registered_images(rec: ColmapResult | None) -> int:
    """How many images a COLMAP result gives a camera: the views and the images without a face."""
    if rec is None:
        return 0
    return int(rec.registered.sum()) + (0 if rec.faceless is None else len(rec.faceless.names))


def _retry_config(config: IntrinsicsConfig, longest_side: int) -> IntrinsicsConfig | None:
    """The settings of the retry when too few images register (:attr:`IntrinsicsConfig.colmap_retry_below`):
    ``colmap_retry_max_features`` and ``colmap_retry_max_image_side`` where they exceed the first run's; None
    when the retry is off or would change nothing (``longest_side``: the views' longest image side, pixels:
    a larger side than that changes nothing, images are not upscaled)."""
    if config.colmap_retry_below <= 0:
        return None
    retry = dataclasses.replace(config, colmap_max_features=max(config.colmap_max_features,
                                                                config.colmap_retry_max_features),
                                colmap_max_image_side=max(config.colmap_max_image_side,
                                                          config.colmap_retry_max_image_side))
    side = lambda c: min(c.colmap_max_image_side, longest_side)  # noqa: E731
    same = retry.colmap_max_features == config.colmap_max_features and side(retry) == side(config)
    return None if same else retry


def _faceless_observation(image: InputImage) -> ViewObservation:
    """A stand-in observation of an image with no face, for COLMAP on the whole image (no landmarks,
    an empty head mask: only its size and the cache key read it)."""
    from flame_prior.detectors.base import Detection
    from flame_prior.observe import ViewObservation

    return ViewObservation(image, Detection(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), "none",
                                            np.zeros((image.height, image.width), np.float32), (0.0, 0.0, 0.0, 0.0)))


def _colmap_with_faceless(views, config: IntrinsicsConfig, workdir, progress, notes: list[str],
                          known: KnownIntrinsics | None, faceless: list[InputImage],
                          faceless_known: list[KnownIntrinsics]) -> ColmapResult | None:
    """COLMAP on the whole images of ``views`` and ``faceless`` together (a rigid scene: a back view
    shares the room with its neighbours); the result indexed like ``views``, the faceless images'
    registered cameras in ``poses.faceless``."""
    from flame_prior.camera_file import KnownIntrinsics

    n = len(views)
    images = [*views, *map(_faceless_observation, faceless)]
    # COLMAP sees the images in the order of their paths, whichever of them the detector found a face in:
    # its incremental mapper depends on the order it is given, and a face found or missed should not
    # reorder the reconstruction. (On the small-faces scan rig this order and views-first gave the same
    # cameras: 0.69 deg / 1.22 deg either way.)
    order = sorted(range(len(images)), key=lambda i: str(images[i].image.path))
    if known is not None:
        cat = lambda key: np.concatenate([getattr(k, key) for k in [known, *faceless_known]])[order]  # noqa: E731
        known = KnownIntrinsics(cat("fx"), cat("fy"), cat("cx"), cat("cy"), cat("distortion"))
    rec = _colmap_attempt([images[i] for i in order], config, workdir, progress, notes, "rigid-scene", known,
                          faces=[i < n for i in order])
    if rec is None:
        return None
    rec = _reordered(rec, np.argsort(order))  # back to views first, then the faceless images
    got = np.flatnonzero(rec.registered[n:])
    if len(got):
        j = n + got
        dist = (None if rec.view_distortion is None else rec.view_distortion[j]) if known is None else \
            known.distortion[j]
        cams = FacelessCameras([faceless[i].name for i in got], rec.w2c[j], rec.view_focal_px[j].copy(),
                               rec.view_focal_px[j].copy(), rec.view_cx[j], rec.view_cy[j],
                               np.array([faceless[i].width for i in got]), np.array([faceless[i].height for i in got]),
                               dist)
        if known is not None:
            cams.fx, cams.fy, cams.cx, cams.cy = known.fx[j], known.fy[j], known.cx[j], known.cy[j]
        cams.pose_cov = None if rec.pose_cov is None else rec.pose_cov[j]
        notes.append(f"COLMAP registered {len(got)} of {len(faceless)} images without a detected face "
                     f"({', '.join(cams.names)}): they get COLMAP's camera")
    else:
        cams = None
        notes.append(f"COLMAP registered none of the {len(faceless)} images without a detected face")
    out = ColmapResult(rec.w2c[:n], rec.registered[:n], rec.focal_px, rec.cx, rec.cy, rec.figures,
                       rec.view_focal_px[:n], rec.view_cx[:n], rec.view_cy[:n],
                       view_distortion=None if rec.view_distortion is None else rec.view_distortion[:n],
                       pose_cov=None if rec.pose_cov is None else rec.pose_cov[:n])
    out.faceless = cams
    return out


def _reordered(rec: ColmapResult, index: np.ndarray) -> ColmapResult:
    """``rec`` with its per-view arrays taken at ``index`` (view ``i`` of the result is ``rec``'s ``index[i]``)."""
    pick = lambda a: None if a is None else a[index]  # noqa: E731
    return dataclasses.replace(rec, w2c=rec.w2c[index], registered=rec.registered[index],
                               view_focal_px=rec.view_focal_px[index], view_cx=rec.view_cx[index],
                               view_cy=rec.view_cy[index], view_distortion=pick(rec.view_distortion),
                               pose_cov=pick(rec.pose_cov))


def _colmap_attempt(views, config: IntrinsicsConfig, workdir, progress, notes: list[str],
                    kind: SceneKind, known: KnownIntrinsics | None = None, faces: list[bool] | None = None,
                    ) -> ColmapResult | None:
    """One COLMAP run, or None with a note. ``faces``: which of ``views`` show a face (None: all); the
    others are faceless stand-ins that do not count towards the registered views needed."""
    has_face = np.ones(len(views), dtype=bool) if faces is None else np.asarray(faces, dtype=bool)
    n = int(has_face.sum())
    try:
        rec = cached_run_colmap(views, config, workdir=workdir, progress=progress, notes=notes, scene_kind=kind,
                                known=known)
    except Exception as exc:  # any pycolmap failure: fall back to the next source, never crash the run
        notes.append(f"COLMAP ({kind}) not used ({type(exc).__name__}: {exc})")
        return None
    if known is None:
        _drop_implausible_cameras(rec, views, notes)
    fig = rec.figures
    if "lens" in fig:
        notes.append(fig["lens"]["note"])
    if "principal_points" in fig:
        notes.append(fig["principal_points"]["note"])
    summary = (f"COLMAP ({kind}) registered {fig['registered']}/{fig['total']} views, {fig['points3d']} points, "
               f"mean reprojection error {fig['mean_reprojection_error_px']:.2f} px, focal {fig['focal_px']:.1f} px "
               f"({fig['vertical_fov_deg']:.1f} deg vertical FOV)")
    face_registered = int(rec.registered[has_face].sum())
    if face_registered < config.colmap_min_registered * n or face_registered < 2:
        notes.append(f"{summary}: too few registered, not used")
        return None
    notes.append(summary)
    return rec


#: A camera COLMAP estimated is believed only with a vertical field of view in this range (degrees)
#: and a focal within this factor of the registered views' median (in units of image height).
_PLAUSIBLE_FOV_DEG = (2.0, 150.0)
_PLAUSIBLE_FOCAL_FACTOR = 2.0


def _drop_implausible_cameras(rec: ColmapResult, views, notes: list[str]) -> None:
    """Unregister views whose own estimated camera is not a camera (in place).

    With a camera per view, a view held by few tracks can come out of COLMAP's bundle adjustment with a
    negative or absurd focal (seen: -2554 px and 3e7 px among 5000-6300 px ones, in one of several
    runs of the same 8 photos). Its pose is then as wrong as its focal: it leaves the poses, and its
    intrinsics become the median field of view, centred. Said in ``notes``."""
    heights = np.array([v.image.height for v in views], dtype=np.float64)
    rel = rec.view_focal_px / heights  # focal in image heights: comparable across sizes
    ok = np.isfinite(rel) & (rel > 0)
    fov = np.full(len(views), np.nan)
    fov[ok] = np.degrees(2.0 * np.arctan(0.5 / rel[ok]))
    ok &= (fov >= _PLAUSIBLE_FOV_DEG[0]) & (fov <= _PLAUSIBLE_FOV_DEG[1])
    if (ok & rec.registered).any():
        med = float(np.median(rel[ok & rec.registered]))
        ok &= (rel <= _PLAUSIBLE_FOCAL_FACTOR * med) & (rel >= med / _PLAUSIBLE_FOCAL_FACTOR)
    bad = np.flatnonzero(~ok)
    if len(bad) == 0:
        return
    if not ok.any():
        raise RuntimeError("every camera COLMAP estimated has an implausible focal length")
    med = float(np.median(rel[ok & rec.registered] if (ok & rec.registered).any() else rel[ok]))
    names = ", ".join(f"{views[i].image.path.name} ({rec.view_focal_px[i]:.4g} px)" for i in bad[:4])
    notes.append(f"COLMAP: {len(bad)} view(s) with an implausible focal length left out of its poses: {names}"
                 + (" ..." if len(bad) > 4 else ""))
    main_bad = bool(np.any(rec.view_focal_px[bad] == rec.focal_px))  # the figure-giving camera was one of them
    rec.registered[bad] = False
    rec.w2c[bad] = np.nan
    if rec.pose_cov is not None:
        rec.pose_cov[bad] = np.nan
    _take_main_fov(rec, bad, views, med)
    if rec.view_distortion is not None:  # their lens: the median of the believed cameras'
        rec.view_distortion[bad] = np.median(rec.view_distortion[ok & rec.registered if (ok & rec.registered).any()
                                                                 else ok], axis=0)
    if main_bad:
        main = int(np.flatnonzero(rec.registered)[0]) if rec.registered.any() else int(np.flatnonzero(ok)[0])
        rec.focal_px, rec.cx, rec.cy = (float(rec.view_focal_px[main]), float(rec.view_cx[main]),
                                        float(rec.view_cy[main]))
        rec.figures["focal_px"] = rec.focal_px
        rec.figures["vertical_fov_deg"] = fov_from_focal(rec.focal_px, heights[main])
    rec.figures["registered"] = int(rec.registered.sum())


def detect_scene_kind(views: list[ViewObservation], notes: list[str] | None = None) -> SceneKind:
    """A fixed camera (a turning head) or a rigid scene (moving camera, synchronised rig), from the background.

    A fixed camera sees the background where it was in every view; a moving camera (or the other
    cameras of a rig) sees it move. So, on pairs of views of one image size (the first against up to
    8 others spread over the capture, downscaled to 256 px), the textured background pixels (outside
    both head masks, dilated) are compared: when most of them are unchanged the camera is fixed
    ("turning-head"). Too little textured background decides "turning-head" too: then the background
    would give COLMAP no features anyway, and the head alone is rigid in both kinds of scene.

    Returns:
        ``"turning-head"`` or ``"rigid-scene"``; a note says what was seen.
    """
    import cv2

    notes = notes if notes is not None else []
    sizes = [(v.image.width, v.image.height) for v in views]
    main = max(set(sizes), key=sizes.count)
    group = [v for v, size in zip(views, sizes) if size == main]
    if len(group) < 2:
        notes.append("scene kind: turning-head (one view per image size, nothing to compare)")
        return "turning-head"
    W, H = main
    scale = 256.0 / max(W, H)
    size = (max(8, round(W * scale)), max(8, round(H * scale)))
    k = 2 * max(1, round(0.06 * max(size))) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))

    def small(v):
        gray = cv2.resize(cv2.cvtColor(v.image.pixels, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
        head = cv2.dilate(cv2.resize(v.detection.head_mask.astype(np.uint8), size,
                                     interpolation=cv2.INTER_NEAREST), kernel)
        return gray.astype(np.float32), head > 0

    first, first_head = small(group[0])
    gx, gy = cv2.Sobel(first, cv2.CV_32F, 1, 0) / 8, cv2.Sobel(first, cv2.CV_32F, 0, 1) / 8
    textured = np.hypot(gx, gy) > 4.0  # grey levels per pixel: an edge or texture, not a flat wall
    unchanged = []
    for j in np.unique(np.linspace(1, len(group) - 1, min(8, len(group) - 1)).round().astype(int)):
        other, other_head = small(group[j])
        region = textured & ~first_head & ~other_head
        if region.sum() < 0.01 * region.size:
            continue
        unchanged.append(float((np.abs(other - first)[region] < 12.0).mean()))
    if not unchanged:
        notes.append("scene kind: turning-head (too little textured background to tell; COLMAP on the head)")
        return "turning-head"
    fraction = float(np.median(unchanged))
    kind: SceneKind = "turning-head" if fraction >= 0.5 else "rigid-scene"
    notes.append(f"scene kind: {kind} ({100 * fraction:.0f} % of the textured background unchanged between views: "
                 + ("a fixed camera, COLMAP on the head only)" if kind == "turning-head" else
                    "the camera moves, COLMAP on the whole image)"))
    return kind


def _colmap_cache_file(views: list[ViewObservation], config: IntrinsicsConfig, scene_kind: str,
                       known: KnownIntrinsics | None = None) -> Path:
    """Cache file named by the images' content, their head masks, the COLMAP settings, the known
    intrinsics held (if any) and the version."""
    h = hashlib.sha256()
    for v in views:
        h.update(v.image.sha256.encode())
        h.update(hashlib.sha256(np.ascontiguousarray(v.detection.head_mask.astype(np.uint8))).digest())
    settings = {k: getattr(config, k) for k in ("colmap_peak_threshold", "colmap_max_features",
                                                "colmap_mask_erode_px", "colmap_seed", "colmap_max_image_side",
                                                "colmap_pair_max_angle_deg",
                                                "focal_px")}
    settings["scene_kind"] = scene_kind
    settings["colmap_lens"] = _estimates_lens(config, scene_kind, known)  # what the run does, not the option
    if config.colmap_cameras != "per_size":
        settings["colmap_cameras"] = config.colmap_cameras
    if _estimates_principal_points(config, known):
        settings["principal_points"] = 2  # colmap_family (2: an implausible lens judged with them held); new keys
    if known is not None:
        settings["known_intrinsics"] = [np.round(np.asarray(getattr(known, k), dtype=np.float64), 9).tolist()
                                        for k in ("fx", "fy", "cx", "cy", "distortion")]
    import pycolmap

    h.update(json.dumps([settings, pycolmap.__version__, _COLMAP_CACHE_VERSION], sort_keys=True).encode())
    root = config.cache_dir or colmap_cache_dir()
    return Path(root) / f"{h.hexdigest()}.npz"


def cached_run_colmap(views, config: IntrinsicsConfig, workdir=None, progress=None,
                      notes: list[str] | None = None, scene_kind: SceneKind = "turning-head",
                      known: KnownIntrinsics | None = None) -> ColmapResult:
    """:func:`run_colmap`, reusing an earlier result for the same images, masks and settings.

    The cache is an ``.npz`` read with ``allow_pickle=False`` (written atomically); a damaged
    file is ignored and COLMAP runs again.
    """
    path = _colmap_cache_file(views, config, scene_kind, known)
    if config.use_cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                rec = ColmapResult(z["w2c"], z["registered"].astype(bool), float(z["focal_px"]), float(z["cx"]),
                                   float(z["cy"]), json.loads(str(z["figures"])), z["view_focal_px"], z["view_cx"],
                                   z["view_cy"], view_distortion=z["view_distortion"] if "view_distortion" in z
                                   else None, pose_cov=z["pose_cov"] if "pose_cov" in z else None)
            if len(rec.w2c) == len(views):
                if notes is not None:
                    notes.append(f"COLMAP result reused from the cache ({path.name})")
                return rec
        except Exception as exc:  # damaged cache: recompute
            if notes is not None:
                notes.append(f"ignored a damaged COLMAP cache file {path} ({type(exc).__name__})")
    rec = run_colmap(views, config, workdir=workdir, progress=progress, scene_kind=scene_kind, known=known)
    if config.use_cache:
        save_npz_atomic(path, w2c=rec.w2c, registered=rec.registered, focal_px=np.float64(rec.focal_px),
                        cx=np.float64(rec.cx), cy=np.float64(rec.cy), figures=np.str_(json.dumps(rec.figures)),
                        view_focal_px=rec.view_focal_px, view_cx=rec.view_cx, view_cy=rec.view_cy,
                        **({} if rec.view_distortion is None else {"view_distortion": rec.view_distortion}),
                        **({} if rec.pose_cov is None else {"pose_cov": rec.pose_cov}))
    return rec


@contextlib.contextmanager
def _quiet_colmap() -> Iterator[None]:
    """Silence COLMAP's glog INFO and WARNING chatter on stderr for the duration (errors stay)."""
    import pycolmap

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


@contextlib.contextmanager
def _phases(progress: Progress | None, total: int) -> Iterator:
    """Yield ``step(description, advance=0)``: a task on ``progress``, or a status spinner when None."""
    if progress is not None:
        task = progress.add_task("COLMAP", total=total)
        try:
            yield lambda desc, advance=0: progress.update(task, description=f"COLMAP: {desc}", advance=advance)
        finally:
            progress.remove_task(task)
        return
    from rich.console import Console

    with Console(stderr=True).status("COLMAP") as status:
        yield lambda desc, advance=0: status.update(f"COLMAP: {desc}")


@dataclass
class _Window:
    """The part of a view COLMAP sees: the crop ``[x0, x0 + w) x [y0, y0 + h)`` of the upright image,
    resized to ``out_w x out_h``; COLMAP pixel ``u = (x - x0) * sx`` (corner origin)."""

    group: int  # one COLMAP camera per group (views of one image size)
    x0: int
    y0: int
    w: int
    h: int
    out_w: int
    out_h: int

    @property
    def sx(self) -> float:
        return self.out_w / self.w

    @property
    def sy(self) -> float:
        return self.out_h / self.h


def _colmap_windows(views: list[ViewObservation], config: IntrinsicsConfig, scene_kind: SceneKind) -> list[_Window]:
    """Per view, what COLMAP sees: the whole image (rigid scene) or the box every head mask of that
    image size falls in, with a margin (turning head: nothing outside the head gives features), downscaled
    so that the FULL image's long side would be ``colmap_max_image_side``; one window per image size."""
    sizes = [(v.image.width, v.image.height) for v in views]
    groups = {size: g for g, size in enumerate(dict.fromkeys(sizes))}
    windows = {}
    for (W, H), g in groups.items():
        x0, y0, x1, y1 = 0, 0, W, H
        if scene_kind == "turning-head":
            boxes = []
            for v, size in zip(views, sizes):
                if size == (W, H):
                    ys, xs = np.nonzero(v.detection.head_mask)
                    if len(xs):
                        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            if boxes:
                bx = np.array(boxes)
                x0, y0, x1, y1 = bx[:, 0].min(), bx[:, 1].min(), bx[:, 2].max(), bx[:, 3].max()
                margin = int(0.05 * max(x1 - x0, y1 - y0)) + 8
                x0, y0, x1, y1 = max(0, x0 - margin), max(0, y0 - margin), min(W, x1 + margin), min(H, y1 + margin)
        scale = min(1.0, config.colmap_max_image_side / max(W, H))
        w, h = int(x1 - x0), int(y1 - y0)
        windows[(W, H)] = _Window(g, int(x0), int(y0), w, h, max(8, round(w * scale)), max(8, round(h * scale)))
    return [windows[size] for size in sizes]


def run_colmap(
    views: list[ViewObservation],
    config: IntrinsicsConfig | None = None,
    workdir: Path | None = None,
    progress: Progress | None = None,
    scene_kind: SceneKind = "turning-head",
    known: KnownIntrinsics | None = None,
) -> ColmapResult:
    """Structure from motion, one SIMPLE_PINHOLE camera per image size, principal point at the image
    centre (held), focal estimated (or held at ``config.focal_px``); a RADIAL camera (``k1, k2`` refined,
    then checked by :func:`_check_radial_lens`) where :attr:`IntrinsicsConfig.colmap_lens` asks for one.
    With ``known`` intrinsics (a calibration file): one camera per view, PINHOLE (or OPENCV when a lens is given) with the file's
    ``fx, fy, cx, cy`` and lens brought to COLMAP's crop and scale, all held by the mapper.

    ``scene_kind="turning-head"``: SIFT inside ``view.detection.mask`` only (a mask PNG per image,
    ``<name>.png``, 0 = ignore, the head mask eroded by ``colmap_mask_erode_px``), since torso and
    background, static while the head turns, contradict the head's motion; COLMAP sees only the box the
    head masks cover. ``"rigid-scene"``: the whole image. Either way the images are downscaled
    (``colmap_max_image_side``) and the results are given back in the original pixel grids. Matching:
    for a turning head the pairs whose head poses are close (:func:`_matching_pairs`); in a rigid scene,
    without MediaPipe landmarks, or with ``colmap_pair_max_angle_deg`` 180, every pair up to 40 views
    (sequential beyond). Incremental mapping
    (:func:`_mapper_for_few_views`) on :func:`flame_prior.threads.compute_threads` threads; the
    reconstruction with the most registered views is returned.

    Args:
        views: ``N >= 2`` views.
        config: COLMAP settings (defaults when None).
        workdir: kept working folder; a temporary one when None.
        progress: see :func:`estimate_intrinsics`.
        scene_kind: see :attr:`IntrinsicsConfig.scene_kind` (not "auto").
        known: the calibration's intrinsics, indexed like ``views``, or None.

    Returns:
        :class:`ColmapResult`, indexed like ``views``, in the original pixel grids.

    Raises:
        ValueError: fewer than 2 views.
        RuntimeError: COLMAP produced no reconstruction (or pycolmap's own errors).
    """
    import cv2
    import pycolmap

    config = config or IntrinsicsConfig()
    n = len(views)
    if n < 2:
        raise ValueError(f"run_colmap: need at least 2 views, got {n}")
    windows = _colmap_windows(views, config, scene_kind)
    threads = compute_threads()  # the free cores (FLAME_PRIOR_THREADS when a batch worker sets it)
    clock = _Clock()

    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        image_dir, mask_dir, out_dir = root / "images", root / "masks", root / "sparse"
        for d in (image_dir, mask_dir, out_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        database = root / "database.db"
        database.unlink(missing_ok=True)
        step = stack.enter_context(_phases(progress, total=n + 3))
        stack.enter_context(_quiet_colmap())

        # Image names by index, one folder per camera (image size): view names may hold anything.
        names = [f"size{win.group}/{i:05d}.png" for i, win in enumerate(windows)]
        kernel = None
        if config.colmap_mask_erode_px > 0:
            k = 2 * config.colmap_mask_erode_px + 1
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        step("writing images" + (" and head masks" if scene_kind == "turning-head" else ""))
        for name, view, win in zip(names, views, windows):
            check_shape(view.detection.mask_u8, [view.image.height, view.image.width], f"{view.image.name}: mask")
            crop = (slice(win.y0, win.y0 + win.h), slice(win.x0, win.x0 + win.w))
            pixels = cv2.resize(view.image.pixels[crop], (win.out_w, win.out_h), interpolation=cv2.INTER_AREA)
            (image_dir / name).parent.mkdir(exist_ok=True)
            cv2.imwrite(str(image_dir / name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if scene_kind == "turning-head":
                mask = view.detection.head_mask.astype(np.uint8) * 255
                if kernel is not None:
                    mask = cv2.erode(mask, kernel)
                mask = cv2.resize(mask[crop], (win.out_w, win.out_h), interpolation=cv2.INTER_NEAREST)
                (mask_dir / name).parent.mkdir(exist_ok=True)
                cv2.imwrite(str(mask_dir / f"{name}.png"), mask)
        step("extracting SIFT features", advance=1)

        reader = pycolmap.ImageReaderOptions()
        lens = _estimates_lens(config, scene_kind, known)
        reader.camera_model = ("RADIAL" if lens else "SIMPLE_PINHOLE") if known is None else \
            "OPENCV" if known.distortion.any() else "PINHOLE"
        if scene_kind == "turning-head":
            reader.mask_path = str(mask_dir)
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.sift.peak_threshold = config.colmap_peak_threshold
        extraction.sift.max_num_features = config.colmap_max_features
        if scene_kind == "turning-head":
            # COLMAP's default first octave (-1) doubles the image before the scale space: 4x the pixels, 3x
            # the extraction time. The head crop shows the head near its own resolution (the shared scene at
            # 0.74), and without that octave COLMAP agreed better with a full-resolution run (README, *Cold
            # runs*). A rigid scene's whole images, where the head is small, keep COLMAP's default.
            extraction.sift.first_octave = 0
        extraction.num_threads = threads
        extraction.use_gpu = False
        pycolmap.set_random_seed(config.colmap_seed)
        # One camera per folder (image size), or per image on request.
        per_view = config.colmap_cameras == "per_view" or known is not None
        mode = pycolmap.CameraMode.PER_IMAGE if per_view else pycolmap.CameraMode.PER_FOLDER
        pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=mode,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        if known is None:
            _set_principal_points(database, names, views, windows, config.focal_px)
        else:
            _set_known_cameras(database, names, windows, known)
        clock.lap("extract")
        step("matching", advance=1)

        matching = pycolmap.FeatureMatchingOptions()
        matching.use_gpu = False
        matching.num_threads = threads
        verification = pycolmap.TwoViewGeometryOptions()
        verification.ransac.random_seed = config.colmap_seed
        pairs = _matching_pairs(views, config, scene_kind)
        if pairs is not None:  # views whose head poses are close (each with its nearest)
            pair_file = root / "pairs.txt"
            pair_file.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
            pairing = pycolmap.ImportedPairingOptions()
            pairing.match_list_path = str(pair_file)
            pycolmap.match_image_pairs(database, matching_options=matching, pairing_options=pairing,
                                       verification_options=verification, device=pycolmap.Device.cpu)
        elif n <= 40:
            pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification,
                                      device=pycolmap.Device.cpu)
        else:  # views in capture order: each with its 15 neighbours
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = 15
            pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                                      verification_options=verification, device=pycolmap.Device.cpu)
        clock.lap("match")
        step("registering views", advance=1)

        mapping = pycolmap.IncrementalPipelineOptions()
        mapping.random_seed = config.colmap_seed
        mapping.extract_colors = False
        mapping.num_threads = threads
        _mapper_for_few_views(mapping, scene_kind)
        if config.focal_px is not None or known is not None:
            mapping.ba_refine_focal_length = False
        if known is not None:  # the calibration is better than anything the tracks could refine
            mapping.ba_refine_principal_point = False
            mapping.ba_refine_extra_params = False
        reconstructions = pycolmap.incremental_mapping(
            database, image_dir, out_dir, options=mapping,
            next_image_callback=lambda: step("registering views", advance=1))
        if not reconstructions:
            raise RuntimeError("COLMAP reconstructed nothing (too few matches)")
        rec = max(reconstructions.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
        lens_figures = centring = None
        free_centres = _estimates_principal_points(config, known)
        if lens:
            step("checking the lens", advance=0)
            mapped = rec
            rec, lens_figures = _check_radial_lens(pycolmap.Reconstruction(mapped) if free_centres else mapped,
                                                   refine_focal=config.focal_px is None,
                                                   refine_principal_point=free_centres)
            if free_centres and lens_figures["implausible"]:
                # A camera's lens ran off once the principal points were free (a weakly tracked camera of the
                # small_faces rig: k1 0.82 beside six of -0.25): judged as before, principal points held, and
                # held for good when the lens is kept (a real lens matters more than the principal points there).
                rec, lens_figures = _check_radial_lens(mapped, refine_focal=config.focal_px is None)
                free_centres = not lens_figures["kept"]
        if free_centres and rec.num_reg_images() >= 3:
            step("principal points", advance=0)
            rec, centring = _principal_points(rec, names, windows, views, lens_figures)
        result = _read_reconstruction(rec, names, [(w.out_w, w.out_h) for w in windows])
        if lens_figures is not None:
            result.figures["lens"] = lens_figures
        if centring is not None:
            result.figures["principal_points"] = centring
    _to_original_pixels(result, views, windows)
    clock.lap("map")
    result.figures.update(clock.figures(), threads=threads, pairs=len(pairs) if pairs is not None else None,
                          scene_kind=scene_kind, image_scale=round(float(np.mean([w.sx for w in windows])), 4))
    return result


def _estimates_principal_points(config: IntrinsicsConfig, known: KnownIntrinsics | None) -> bool:
    """Whether COLMAP's cameras get their own principal points (:mod:`flame_prior.colmap_family`): one camera
    per view with the focal estimated (a rig of different cameras); never over a calibration or a given focal."""
    return known is None and config.focal_px is None and config.colmap_cameras == "per_view"


def _principal_points(rec, names: list[str], windows: list[_Window], views, lens_figures: dict | None):
    """:func:`flame_prior.colmap_family.principal_points_near_centre` on a per-view reconstruction:
    ``(reconstruction, figures)``; ``rec`` itself with ``figures["note"]`` saying why when it fails."""
    by_name = {image.name: image_id for image_id, image in rec.images.items() if image.has_pose}
    ids = [by_name.get(name) for name in names]
    centres = np.array([((v.image.width / 2 - w.x0) * w.sx, (v.image.height / 2 - w.y0) * w.sy)
                        for v, w in zip(views, windows)])
    lens = lens_figures is not None and lens_figures["kept"]
    try:
        chosen, figures = principal_points_near_centre(rec, ids, centres, refine_extra=lens)
    except (ValueError, RuntimeError) as exc:
        return rec, {"note": f"principal points held at the image centres ({exc})"}
    if not figures["reprojection_error_px"] <= 1.05 * figures["reprojection_error_held_px"]:  # only a failed solve
        return rec, {**figures, "note": "principal points held at the image centres (the family's solve raised "
                                        "the reprojection error)"}
    figures["note"] = (f"COLMAP: a principal point per view, as near the image centres as the tracks allow "
                       f"({figures['principal_point_offset_rms_px']:.1f} px RMS off them, in COLMAP's pixels); "
                       f"reprojection error {figures['reprojection_error_held_px']:.2f} px before, "
                       f"{figures['reprojection_error_px']:.2f} px after")
    return chosen, figures


class _Clock:
    """Wall and CPU seconds (this process: COLMAP's threads included) of each phase, for the figures."""

    def __init__(self) -> None:
        self.start = self.last = (time.perf_counter(), time.process_time())
        self.laps: dict[str, tuple[float, float]] = {}

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.laps[name] = (now[0] - self.last[0], now[1] - self.last[1])
        self.last = now

    def figures(self) -> dict:
        out = {"seconds": round(self.last[0] - self.start[0], 1), "cpu_seconds": round(self.last[1] - self.start[1], 1)}
        for name, (wall, cpu) in self.laps.items():
            out[f"seconds_{name}"], out[f"cpu_seconds_{name}"] = round(wall, 1), round(cpu, 1)
        return out


def _mapper_for_few_views(mapping, scene_kind: SceneKind) -> None:
    """COLMAP's mapper set for a few dozen views of one head (issue 16: the cold run's budget).

    Its defaults suit thousands of images: a global bundle adjustment whenever the model has grown
    by 10 %, up to 5 rounds of it and 2 of each local one. With 30 views that is a global adjustment
    after nearly every view. Here: global adjustment at 50 % growth (and always at the end), 2 rounds,
    1 round of local adjustment, and the points that add no coverage left out of the global one.

    The initial pair, for a turning head: COLMAP wants 100 inliers seen 16 degrees apart, which a head
    turning before a long lens rarely gives (on the shared scene pairs 10-20 degrees apart have ~140
    matches, 20-30 degrees ~40); its search failed twice, relaxing each time, before it started (5 of
    the mapper's 12 CPU seconds). Asking for 50 inliers 8 degrees apart finds the same pair at once.
    Measured on the shared 30-view scene (README, *Cold runs*): the mapper's CPU time from 18 s to 7 s,
    the same rotations (0.07 deg median, 0.35 deg max from a full-resolution, 8192-feature run)."""
    mapping.ba_global_frames_ratio = 1.5
    mapping.ba_global_points_ratio = 1.5
    mapping.ba_global_max_refinements = 2
    mapping.ba_local_max_refinements = 1
    mapping.mapper.ba_global_ignore_redundant_points3D = True
    if scene_kind == "turning-head":
        mapping.mapper.init_min_tri_angle = 8.0
        mapping.mapper.init_min_num_inliers = 50


def _matching_pairs(views, config: IntrinsicsConfig, scene_kind: SceneKind) -> list[tuple[int, int]] | None:
    """The pairs COLMAP matches (:mod:`flame_prior.colmap_pairs`), or None for its own pairing: every pair
    (``colmap_pair_max_angle_deg`` 180), views without MediaPipe landmarks (no head pose to read; faceless
    images in a rigid scene), or a rigid scene (its background may match where the head does not: not
    measured, so every pair)."""
    from flame_prior.colmap_pairs import landmark_head_rotations, pairs_by_head_pose

    if config.colmap_pair_max_angle_deg >= 180 or scene_kind != "turning-head":
        return None
    R = landmark_head_rotations(views)
    return None if R is None else pairs_by_head_pose(R, config.colmap_pair_max_angle_deg, _PAIR_MIN_NEIGHBOURS)


#: Each view is matched with at least this many views nearest in head pose, whatever the angle.
_PAIR_MIN_NEIGHBOURS = 5


def _set_principal_points(database: Path, names: list[str], views, windows: list[_Window],
                          focal_px: float | None) -> None:
    """Each COLMAP camera's principal point at its views' image centre (a crop moves it; COLMAP holds
    it), its focal at ``focal_px`` (held by the mapper) or COLMAP's default guess for the full image."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        by_name = {image.name: image for image in db.read_all_images()}
        done = set()
        for name, view, win in zip(names, views, windows):
            camera_id = by_name[name].camera_id
            if camera_id in done:
                continue
            done.add(camera_id)
            camera = db.read_camera(camera_id)
            W, H = view.image.width, view.image.height
            scale = 0.5 * (win.sx + win.sy)
            f = focal_px * scale if focal_px is not None else 1.2 * max(W, H) * scale  # COLMAP's default factor
            lens = [0.0] * (len(camera.params) - 3)  # a RADIAL camera's k1, k2 start at zero
            camera.params = [f, (W / 2 - win.x0) * win.sx, (H / 2 - win.y0) * win.sy, *lens]
            camera.has_prior_focal_length = focal_px is not None
            db.update_camera(camera)
    finally:
        db.close()


def _set_known_cameras(database: Path, names: list[str], windows: list[_Window], known: KnownIntrinsics) -> None:
    """Each view's COLMAP camera (one per view) set to the calibration's: ``fx, fy`` scaled with the
    resize, ``cx, cy`` shifted by the crop then scaled (corner origin both sides), the lens unchanged
    (it acts on normalised coordinates). COLMAP's OPENCV has no ``k3``: a lens with one becomes its
    FULL_OPENCV (``k1, k2, p1, p2, k3, k4, k5, k6``, the rational terms zero)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        by_name = {image.name: image for image in db.read_all_images()}
        for i, (name, win) in enumerate(zip(names, windows)):
            camera = db.read_camera(by_name[name].camera_id)
            params = [known.fx[i] * win.sx, known.fy[i] * win.sy,
                      (known.cx[i] - win.x0) * win.sx, (known.cy[i] - win.y0) * win.sy]
            if camera.model_name == "OPENCV":
                k1, k2, p1, p2, k3 = (float(d) for d in known.distortion[i])
                if k3 != 0.0:
                    camera = pycolmap.Camera(camera_id=camera.camera_id, model="FULL_OPENCV", width=camera.width,
                                             height=camera.height, params=params + [k1, k2, p1, p2, k3, 0, 0, 0])
                else:
                    camera.params = params + [k1, k2, p1, p2]
            else:
                camera.params = params
            camera.has_prior_focal_length = True
            db.update_camera(camera)
    finally:
        db.close()


def _take_main_fov(rec: "ColmapResult", rows, views, focal_per_height: float) -> None:
    """Views ``rows`` of ``rec`` (in place) get one field of view in their own pixel grid (``focal_per_height``:
    the focal in units of image height: the main camera's, or the believed cameras' median) and a centred
    principal point: what a view gets whose own camera is missing (an image size with no registered view)
    or not believed (:func:`_drop_implausible_cameras`)."""
    for i in rows:
        W, H = views[i].image.width, views[i].image.height
        rec.view_focal_px[i] = focal_per_height * H
        rec.view_cx[i], rec.view_cy[i] = W / 2, H / 2


def _to_original_pixels(result: "ColmapResult", views, windows: list[_Window]) -> None:
    """Map a :class:`ColmapResult` read in COLMAP's (cropped, downscaled) pixels back to each view's own grid."""
    main = int(result.figures.pop("main_view"))
    missing = ~np.asarray(result.figures.pop("camera_found"), dtype=bool)
    for i, win in enumerate(windows):
        result.view_focal_px[i] /= 0.5 * (win.sx + win.sy)
        result.view_cx[i] = result.view_cx[i] / win.sx + win.x0
        result.view_cy[i] = result.view_cy[i] / win.sy + win.y0
    H_main = views[main].image.height
    result.focal_px, result.cx, result.cy = (float(result.view_focal_px[main]), float(result.view_cx[main]),
                                             float(result.view_cy[main]))
    _take_main_fov(result, np.flatnonzero(missing), views, result.focal_px / H_main)  # a size without a camera
    to_px = 1.0 / (0.5 * (windows[main].sx + windows[main].sy))
    fig = result.figures
    fig["mean_reprojection_error_px"] *= to_px
    fig["reprojection_check_px"] *= to_px
    fig["focal_px"] = result.focal_px
    fig["vertical_fov_deg"] = fov_from_focal(result.focal_px, H_main)


#: COLMAP camera models read back: estimated (SIMPLE_PINHOLE, RADIAL) or held from a calibration file.
_READ_MODELS = ("SIMPLE_PINHOLE", "RADIAL", "PINHOLE", "OPENCV", "FULL_OPENCV")

#: An estimated radial lens is believed only with ``|k1|`` and ``|k2|`` within these bounds, a radius that
#: grows monotonically out to the image corners, and a reprojection error at most this fraction of the
#: pinhole camera's (the same tracks re-adjusted without the lens). The ratio is close to 1 because a
#: pinhole's poses, focal and points absorb most of a lens: on a synthetic room seen through k1 = -0.12,
#: 0.08 px with the lens against 0.09 px without, yet the pinhole's focal was 12 % off. A lens that moves
#: no image corner by this many of COLMAP's pixels changes nothing and is dropped too.
_PLAUSIBLE_K1, _PLAUSIBLE_K2 = 0.6, 1.0
_LENS_ERROR_RATIO = 0.99
_NEGLIGIBLE_LENS_PX = 1.0


def _focal_cx_cy(camera) -> tuple[float, float, float]:
    """A COLMAP camera's focal (the mean of ``fx, fy`` for a held calibration), ``cx, cy``, pixels."""
    p = [float(v) for v in camera.params]
    return (p[0], p[1], p[2]) if camera.model_name in ("SIMPLE_PINHOLE", "RADIAL") else \
        (0.5 * (p[0] + p[1]), p[2], p[3])


def _radial_lens_problem(camera) -> str | None:
    """Why a RADIAL camera's ``k1, k2`` are not a plausible lens, or None."""
    f, cx, cy, k1, k2 = (float(v) for v in camera.params)
    if not (f > 0 and abs(k1) <= _PLAUSIBLE_K1 and abs(k2) <= _PLAUSIBLE_K2):
        return f"k1 {k1:.3f}, k2 {k2:.3f} beyond |k1| <= {_PLAUSIBLE_K1}, |k2| <= {_PLAUSIBLE_K2}"
    r_max = math.hypot(max(cx, camera.width - cx), max(cy, camera.height - cy)) / f  # the farthest corner
    r2 = np.linspace(0.0, r_max, 64) ** 2
    if np.any(1.0 + 3.0 * k1 * r2 + 5.0 * k2 * r2 * r2 <= 0.0):  # d/dr of r (1 + k1 r^2 + k2 r^4)
        return f"k1 {k1:.3f}, k2 {k2:.3f} fold the image back before its corners"
    return None


def _lens_shift_px(camera) -> float:
    """The largest shift (pixels) a RADIAL camera's lens gives any point out to the image corners."""
    f, cx, cy, k1, k2 = (float(v) for v in camera.params)
    r = np.linspace(0.0, math.hypot(max(cx, camera.width - cx), max(cy, camera.height - cy)) / f, 64)
    return float(np.max(np.abs(f * r * r * r * (k1 + k2 * r * r))))


def _check_radial_lens(rec, refine_focal: bool, refine_principal_point: bool = False):
    """The guard on COLMAP's estimated radial lens: ``(reconstruction, figures)``.

    The same tracks are bundle-adjusted again with every lens set to zero and held (a pinhole camera).
    The lens is kept (``rec`` returned) when every camera's is plausible (:func:`_radial_lens_problem`),
    it moves some point by ``_NEGLIGIBLE_LENS_PX`` or more, and it lowers the mean reprojection error to at
    most ``_LENS_ERROR_RATIO`` of the pinhole's; else the pinhole reconstruction is returned (its poses and
    focal re-adjusted without the lens). ``figures["note"]`` says which and why."""
    import pycolmap

    if refine_principal_point:
        # Principal points about to be freed (a camera per view, colmap_family): the lens is judged with them free
        # on both sides, else it is kept for absorbing the principal points' offsets (the focals rig: k1 0.10,
        # k2 -0.26 in a pinhole rig, "lowering" 0.65 px to 0.62 while free principal points give 0.10).
        bundle_adjust(rec, refine_focal, refine_principal_point, True)
    rec.update_point_3d_errors()  # the stored per-point errors are not refreshed by a bundle adjustment
    error_lens = float(rec.compute_mean_reprojection_error())
    pinhole = pycolmap.Reconstruction(rec)
    for camera in pinhole.cameras.values():
        camera.params = [*list(camera.params)[:3], 0.0, 0.0]
    bundle_adjust(pinhole, refine_focal, refine_principal_point, False)
    pinhole.update_point_3d_errors()
    error_pinhole = float(pinhole.compute_mean_reprojection_error())
    ids = [im.camera_id for im in rec.images.values() if im.has_pose]
    main = rec.cameras[max(set(ids), key=ids.count)]
    k1, k2 = (float(v) for v in list(main.params)[3:5])
    problems = [f"camera {cid}: {why}" for cid, cam in rec.cameras.items()
                if (why := _radial_lens_problem(cam)) is not None]
    errors = f"reprojection error {error_lens:.3f} px with it, {error_pinhole:.3f} px without"
    shift = max(_lens_shift_px(cam) for cam in rec.cameras.values())
    if problems:
        kept, note = False, f"COLMAP's radial lens dropped (implausible: {'; '.join(problems[:3])}; {errors})"
    elif shift < _NEGLIGIBLE_LENS_PX:
        kept, note = False, (f"COLMAP's radial lens (k1 {k1:.3f}, k2 {k2:.3f}) dropped: negligible (it moves no "
                             f"point by {_NEGLIGIBLE_LENS_PX:g} px; {errors})")
    elif not error_lens <= _LENS_ERROR_RATIO * error_pinhole:
        kept, note = False, (f"COLMAP's radial lens (k1 {k1:.3f}, k2 {k2:.3f}) dropped: it does not lower the "
                             f"{errors} by {100 * (1 - _LENS_ERROR_RATIO):.0f} %")
    else:
        kept, note = True, (f"COLMAP estimated a radial lens, k1 {k1:.3f}, k2 {k2:.3f} ({errors}): the fit works "
                            "in the ideal pinhole images, the exports write the lens")
    figures = {"k1": k1, "k2": k2, "kept": kept, "shift_px": shift, "error_lens_px": error_lens,
               "error_pinhole_px": error_pinhole, "note": note, "implausible": bool(problems)}
    return (rec if kept else pinhole), figures


def _read_reconstruction(rec, names: list[str], sizes: list[tuple[int, int]]) -> ColmapResult:
    """Poses, cameras and figures of a pycolmap ``Reconstruction`` whose images are ``names`` (by
    index) of ``sizes`` ``(width, height)``, in COLMAP's pixels. A view whose image size got no camera
    has NaN intrinsics here: :func:`_to_original_pixels` gives it the main camera's field of view."""
    n = len(names)
    index = {name: i for i, name in enumerate(names)}
    w2c = np.full((n, 4, 4), np.nan)
    registered = np.zeros(n, dtype=bool)
    params = np.full((n, 3), np.nan)  # f, cx, cy of each view's camera
    lens = np.zeros((n, 5))  # k1, k2, p1, p2, k3 of each view's estimated (RADIAL) camera
    camera_of: dict[int, int] = {}  # view -> its COLMAP camera id
    for image in rec.images.values():
        i = index[image.name]
        camera_of[i] = image.camera_id
        camera = rec.cameras[image.camera_id]
        if camera.model_name not in _READ_MODELS or (camera.width, camera.height) != sizes[i]:
            raise RuntimeError(f"COLMAP camera is {camera.model_name} {camera.width}x{camera.height}, "
                               f"expected one of {', '.join(_READ_MODELS)} {sizes[i][0]}x{sizes[i][1]}")
        params[i] = _focal_cx_cy(camera)
        if camera.model_name == "RADIAL":  # k1, k2 act on normalised coordinates: unchanged by crop and scale
            lens[i, :2] = [float(v) for v in list(camera.params)[3:5]]
        if image.has_pose:
            registered[i] = True
            w2c[i] = np.eye(4)
            w2c[i, :3, :] = image.cam_from_world().matrix()
    # The main camera: the one with the most registered views.
    ids = [rec.images[k].camera_id for k in rec.images if rec.images[k].has_pose]
    main = max(set(ids), key=ids.count)
    f, cx, cy = _focal_cx_cy(rec.cameras[main])
    height = rec.cameras[main].height
    camera_found = np.isfinite(params[:, 0])
    main_view = int(next(i for i in range(n) if registered[i] and camera_of[i] == main))
    lens[~camera_found] = lens[main_view]  # a size without a camera: the main one's lens (and FOV, later)

    # Reproject every 3D point into its track with our own pinhole maths, averaged like COLMAP
    # (per point over its track, then over points): it matches COLMAP's figure only when
    # COLMAP's conventions (world-to-camera, OpenCV axes, pixel centres at +0.5) are ours.
    image_index = {image_id: index[image.name] for image_id, image in rec.images.items()}
    point_errors = []
    observed: dict[int, list] = {i: [] for i in range(n)}  # per view: (3D point, residual) of its tracks
    for point in rec.points3D.values():
        errs = []
        for el in point.track.elements:
            i = image_index[el.image_id]
            uv = rec.images[el.image_id].points2D[el.point2D_idx].xy
            pc = w2c[i, :3, :3] @ point.xyz + w2c[i, :3, 3]
            camera = rec.cameras[rec.images[el.image_id].camera_id]
            if camera.model_name == "SIMPLE_PINHOLE":
                fi, cxi, cyi = params[i]
                res = uv - np.array([fi * pc[0] / pc[2] + cxi, fi * pc[1] / pc[2] + cyi])
            else:  # a held calibration or an estimated lens: COLMAP's own projection
                res = uv - camera.img_from_cam(pc[None]).reshape(2)
            errs.append(np.hypot(*res))
            observed[i].append((point.xyz, res))
        point_errors.append(np.mean(errs))
    pose_cov = np.full((n, 6, 6), np.nan)
    for i in np.flatnonzero(registered):
        camera = rec.cameras[camera_of[i]]
        cov = track_pose_covariance(np.array([o[0] for o in observed[i]]).reshape(-1, 3),
                                    np.array([o[1] for o in observed[i]]).reshape(-1, 2), w2c[i, :3, :3],
                                    w2c[i, :3, 3], float(camera.focal_length_x), float(camera.focal_length_y))
        if cov is not None:
            pose_cov[i] = cov
    rec.update_point_3d_errors()
    figures = {
        "registered": int(registered.sum()),
        "total": n,
        "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error()),
        "reprojection_check_px": float(np.mean(point_errors)) if point_errors else float("nan"),
        "points3d": int(rec.num_points3D()),
        "focal_px": f,
        "vertical_fov_deg": fov_from_focal(f, height),
        "cameras": len(rec.cameras),
        "main_view": main_view,
        "camera_found": camera_found.tolist(),
    }
    return ColmapResult(w2c=w2c, registered=registered, focal_px=f, cx=cx, cy=cy, figures=figures,
                        view_focal_px=params[:, 0].copy(), view_cx=params[:, 1].copy(), view_cy=params[:, 2].copy(),
                        view_distortion=lens if lens.any() else None, pose_cov=pose_cov)


def rotation_residuals_deg(colmap_w2c: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Per-view angle (degrees) between COLMAP's rotations and ``R`` after the best common change of world frame.

    COLMAP's world frame is arbitrary; a similarity ``x_colmap = s A x + b`` between the two worlds
    changes every world-to-camera rotation to ``R_colmap A``, whatever ``s`` and ``b``. ``A`` is the
    chordal L2 mean ``argmin sum_i |R_colmap_i A - R_i|^2`` over the views COLMAP registered.

    Args:
        colmap_w2c: ``(N, 4, 4)`` :attr:`ColmapResult.w2c` (NaN rows: not registered).
        R: ``(N, 3, 3)`` world-to-camera rotations to compare (e.g. the fitted cameras in FLAME's frame).

    Returns:
        ``(N,)`` angles in degrees, NaN where COLMAP did not register the view.
    """
    import torch

    from flame_prior.geometry import rotation_angle_deg

    colmap_w2c = np.asarray(colmap_w2c, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    n = colmap_w2c.shape[0]
    check_shape(colmap_w2c, [n, 4, 4], "colmap_w2c")
    check_shape(R, [n, 3, 3], "R")
    ok = np.isfinite(colmap_w2c).all(axis=(1, 2))
    out = np.full(n, np.nan)
    if not ok.any():
        return out
    Rc = colmap_w2c[ok, :3, :3]
    U, _, Vt = np.linalg.svd(np.einsum("nji,njk->ik", Rc, R[ok]))  # sum_i Rc_i^T R_i
    A = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    out[ok] = rotation_angle_deg(torch.from_numpy(Rc @ A), torch.from_numpy(R[ok])).numpy()
    return out
