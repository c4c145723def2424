"""The one path through flame-prior: images → observations → intrinsics → fit → exports.

:func:`run` is what ``flame-prior fit`` and ``ns-process-data flame-face`` call (a batch worker
calls its parts: :func:`prepare_inputs`, :func:`fit_static`, :func:`write_scene`). Each step lives
in its own module (:mod:`.images` and :mod:`.video`, :mod:`.observe`, :mod:`.intrinsics`,
:mod:`.fit`, :mod:`.export`; dynamic sequences: :mod:`.track`); the model files come from
:mod:`.flame.assets`; the output appears at once, complete (:mod:`.export.output_dir`); the
end-of-run summary is :mod:`.summary`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from flame_prior.config import FitConfig
from flame_prior.errors import FitError, InputError
from flame_prior.export import write_outputs
from flame_prior.export.output_dir import atomic_output_dir, check_output_dir
from flame_prior.export_config import ExportConfig
from flame_prior.export.sequence import append_report_section, extend_summary, frame_selection_html
from flame_prior.fit import FitResult, check_observation, fit_flame, resolve_device
from flame_prior.fit.multiview import INCONSISTENT_FLAG
from flame_prior.flame import FlameModel, LandmarkEmbedding
from flame_prior.flame.assets import Assets, ModelInfo, load_assets
from flame_prior.images import InputImage, SkippedInput
from flame_prior.intrinsics import Intrinsics, estimate_intrinsics
from flame_prior.observe import NO_FACE, ViewObservation, observe
from flame_prior.progress import make_console, make_progress, stage
from flame_prior.quiet import native_chatter_filtered
from flame_prior.summary import print_summary
from flame_prior.video import Intake, choose_views, is_video, load_inputs


# --------------------------------------------------------------------------------------------
# The job


def prepare_views(
    config: FitConfig, embedding: LandmarkEmbedding, progress
) -> tuple[list[ViewObservation], list[SkippedInput], dict[str, float]]:
    """Intake and detection; views the fit cannot use are left out with a reason."""
    prepared = prepare_inputs(config, embedding, progress)
    return prepared.views, prepared.skipped, prepared.timings


@dataclass
class PreparedViews:
    """What intake and detection give the fit: the usable views, what was left out, the intake
    record (clips, cameras, timesteps, frames considered) and the kind of sequence."""

    views: list[ViewObservation]
    skipped: list[SkippedInput]
    timings: dict[str, float]
    intake: Intake
    sequence: str  # "static" | "dynamic"
    sequence_reason: str


def prepare_inputs(config: FitConfig, embedding: LandmarkEmbedding, progress, model: FlameModel | None = None,
                   detector=None) -> PreparedViews:
    """Intake (photos or clips), detection, and for clips the choice of frames (:mod:`flame_prior.video`).

    ``detector``: an open detection backend to reuse (a batch worker keeps one for all its scenes);
    None opens one for this call."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with stage(progress or None, "reading images" if not Path(config.data).is_file() or not is_video(config.data)
               else "decoding the clip"):
        intake = load_inputs(config.data, config.video, static_pool=config.video.sequence != "dynamic")
    skipped = list(intake.skipped)
    timings["intake"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with stage(progress or None, "face detection"), native_chatter_filtered(not config.verbose):
        views, no_face = observe(intake.images, config.detect, progress=progress, detector=detector)
    timings["detection"] = time.perf_counter() - t0
    skipped = skipped + no_face
    usable = []
    for v in views:
        reason = check_observation(v, embedding, min_face_px=config.detect.min_face_px)
        if reason is None:
            usable.append(v)
        else:
            skipped.append(SkippedInput(v.image.path, reason))
    if not usable:
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:12]) or "no images"
        raise FitError(f"no view can be fitted ({reasons}).", config.data,
                       hint="Use photos or clips that show one face, large enough (at least ~100 px across).")
    t0 = time.perf_counter()
    usable, skipped, sequence, why = choose_views(usable, skipped, intake, config.video, embedding, model)
    timings["frame selection"] = time.perf_counter() - t0
    return PreparedViews(usable, skipped, timings, intake, sequence, why)


@dataclass
class SceneFit:
    """A static scene fitted, not yet written: what :func:`write_scene` and the summary need."""

    prepared: PreparedViews
    intrinsics: Intrinsics
    result: FitResult

    @property
    def views(self) -> list[ViewObservation]:
        return self.prepared.views

    @property
    def skipped(self) -> list[SkippedInput]:
        """Inputs left out before the fit, then views the fit could not give a camera. An image without
        a face that got COLMAP's camera says so in its reason."""
        got = {c["name"] for c in self.faceless_cameras}
        return [dataclasses.replace(s, reason=s.reason + "; it has COLMAP's camera (fit_summary.json "
                                    "cameras_without_face, flagged)") if _image_name(self.prepared, s) in got else s
                for s in self.prepared.skipped] + self.result.left_out

    @property
    def faceless_cameras(self) -> list[dict]:
        """Cameras COLMAP gave images without a detected face, in FLAME's frame (:mod:`flame_prior.fit.multiview`)."""
        return [c for s in self.result.stages if s.name == "multiview" for c in s.details.get("faceless_cameras", [])]

    @property
    def timings(self) -> dict[str, float]:
        return self.prepared.timings


def _image_name(prepared: PreparedViews, skipped: SkippedInput) -> str | None:
    return next((im.name for im in prepared.intake.images if im.path == skipped.path), None)


def faceless_images(prepared: PreparedViews) -> list[InputImage]:
    """The input photos where no face was found (COLMAP may still pose them in a rigid scene). Photos
    only: the frames of clips are many, and a frame without a face is no view anyone asked for."""
    if prepared.intake.source != "images":
        return []
    missed = missed_faces(prepared)
    return [im for im in prepared.intake.images if im.path in missed]


def missed_faces(prepared: PreparedViews) -> set[Path]:
    """The paths of the inputs left out because no face was found in them."""
    return {s.path for s in prepared.skipped if s.reason == NO_FACE}


def fit_static(config: FitConfig, assets: Assets, prepared: PreparedViews, progress) -> SceneFit:
    """Intrinsics and the fit of a static scene's views (``prepared.sequence == "static"``); their
    seconds are added to ``prepared.timings``."""
    timings = prepared.timings
    if config.intrinsics.file is not None and missed_faces(prepared):
        # A calibration with a lens: missed faces get a second look on the undistorted image, before
        # COLMAP, so that it runs once, on the views and faceless images as they end up.
        t0 = time.perf_counter()
        with stage(progress, "face detection on the undistorted images"):
            prepared = detect_through_lens(config, assets.embedding, prepared, progress)
        timings["detection through the lens"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with stage(progress, "focal length"):
        intrinsics = estimate_intrinsics(prepared.views, config.intrinsics, progress=progress,
                                         faceless=faceless_images(prepared))
    timings["intrinsics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with stage(progress, "fit"):
        result = fit_flame(assets.model, assets.embedding, prepared.views, intrinsics, config.fitter,
                           texture_space=assets.texture_space, uv_layout=assets.uv_layout, progress=progress)
    timings["fit"] = time.perf_counter() - t0
    if _colmap_inconsistent(result) is not None and _per_view_retry_applies(config, intrinsics):
        t0 = time.perf_counter()
        with stage(progress, "COLMAP again with one camera per view"):
            intrinsics, result = _refit_with_per_view_cameras(config, assets, prepared, progress, intrinsics, result)
        timings["per-view retry"] = time.perf_counter() - t0
    for s in result.stages:
        timings[f"fit.{s.name}"] = s.seconds
    return SceneFit(prepared, intrinsics, result)


def _colmap_inconsistent(result: FitResult) -> float | None:
    """The median landmark error (face sizes) of the views that follow COLMAP when the multi-view stage found
    that COLMAP's cameras explain no face (:data:`flame_prior.fit.multiview.INCONSISTENT_FLAG`), else None."""
    for s in result.stages:
        if s.name == "multiview" and INCONSISTENT_FLAG in s.details.get("scene_flags", []):
            return float(s.details.get("median_landmark_error_rel", float("inf")))
    return None


def _colmap_followers(result: FitResult) -> int:
    """How many views' cameras follow COLMAP's poses after the multi-view stage (0 without one)."""
    return next((int(s.details.get("used", 0)) for s in result.stages if s.name == "multiview"), 0)


def _per_view_fit_is_kept(first: FitResult, again: FitResult) -> tuple[bool, str]:
    """The per-view retry's rule (:func:`_refit_with_per_view_cameras`): keep the fit ``again`` (one COLMAP
    camera per view) over ``first`` (the shared camera, flagged) when its COLMAP cameras explain the faces and
    no fewer views follow them. Returns the decision and its figures for the note."""
    second = _colmap_inconsistent(again)
    if second is not None:
        return False, f"median landmark error {100 * second:.0f} % of the face size, still beyond the rule"
    before, after = _colmap_followers(first), _colmap_followers(again)
    if after < before:
        return False, (f"its cameras explain the faces of the views that follow them, {after}, but {before} followed "
                       f"the shared camera's")
    return True, "its cameras explain the faces"


def _per_view_retry_applies(config: FitConfig, intrinsics: Intrinsics) -> bool:
    """COLMAP estimated the focal with one camera per image size, and the retry is on
    (:attr:`flame_prior.intrinsics.IntrinsicsConfig.colmap_per_view_retry`)."""
    ic = config.intrinsics
    return ic.colmap_per_view_retry and ic.colmap_cameras == "per_size" and intrinsics.source == "colmap"


def _refit_with_per_view_cameras(config: FitConfig, assets: Assets, prepared: PreparedViews, progress,
                                 intrinsics: Intrinsics, result: FitResult) -> tuple[Intrinsics, FitResult]:
    """COLMAP's shared camera explained no face (cameras of different focal lengths given one): COLMAP
    again with a camera per view and the fit again. The per-view fit is kept only when its COLMAP cameras
    explain the faces (the multi-view rule does not flag it) and as many views follow COLMAP's cameras as in
    the first fit: a per-view fit flagged too is not kept even with a lower landmark error (the studio scan
    rig: 211 % -> 91 % of the face size, yet fewer cameras and a 30 deg one), nor one that explains the faces
    by posing fewer views with them (the same rig once the multi-view refinement converged: 6 views followed
    the per-view cameras against 9 the shared one, and the 3 others, on landmark cameras, were 3-24 deg off
    where the shared camera's relative rotations were within 1.4 deg). The
    notes of the intrinsics and the fit say which. Only such scenes pay for it."""
    first = _colmap_inconsistent(result)
    per_view = estimate_intrinsics(prepared.views, dataclasses.replace(config.intrinsics, colmap_cameras="per_view"),
                                   progress=progress, faceless=faceless_images(prepared))
    if per_view.source != "colmap":
        note = ("COLMAP's shared camera explains no face; with one camera per view COLMAP gave no usable model: "
                "the shared camera's fit is kept (flagged)")
        intrinsics.notes.append(note)
        result.notes.append(note)
        return intrinsics, result
    again = fit_flame(assets.model, assets.embedding, prepared.views, per_view, config.fitter,
                      texture_space=assets.texture_space, uv_layout=assets.uv_layout, progress=progress)
    better, figures = _per_view_fit_is_kept(result, again)
    note = (f"COLMAP's shared camera explained no face (median landmark error {100 * first:.0f} % of the face size): "
            f"COLMAP again with one camera per view, {figures}: "
            + ("the per-view cameras are used" if better else "the shared camera's fit is kept (flagged)"))
    chosen_intrinsics, chosen = (per_view, again) if better else (intrinsics, result)
    chosen_intrinsics.notes.append(note)
    chosen.notes.append(note)
    return chosen_intrinsics, chosen


def detect_through_lens(config: FitConfig, embedding: LandmarkEmbedding, prepared: PreparedViews,
                        progress) -> PreparedViews:
    """The photos where no face was found, detected again on their ideal pinhole image when the
    calibration (``--intrinsics.file``) gives them a lens (:mod:`flame_prior.lens_detection`); the
    faces found join the views (input order kept). Returns ``prepared`` itself when none is found."""
    from flame_prior.camera_file import intrinsics_for_views
    from flame_prior.lens_detection import observe_through_lens

    missed = missed_faces(prepared)
    images, known = [], []
    for im in prepared.intake.images:
        if im.path not in missed:
            continue
        try:
            k = intrinsics_for_views(config.intrinsics.file, [im])
        except InputError:  # not in the calibration: it stays left out, for the reason it had
            continue
        if k.distortion.any():
            images.append(im)
            known.append(k)
    if not images:
        return prepared
    cat = lambda key: np.concatenate([getattr(k, key) for k in known])  # noqa: E731
    found = observe_through_lens(images, cat("fx"), cat("fy"), cat("cx"), cat("cy"), cat("distortion"),
                                 config.detect, progress=progress)
    found = [v for v in found if check_observation(v, embedding, min_face_px=config.detect.min_face_px) is None]
    if not found:
        return prepared
    order = {im.name: j for j, im in enumerate(prepared.intake.images)}
    views = sorted(prepared.views + found, key=lambda v: order.get(v.image.name, len(order)))
    paths = {v.image.path for v in found}
    return dataclasses.replace(prepared, views=views, skipped=[s for s in prepared.skipped if s.path not in paths])


def write_scene(out: Path, config: FitConfig, assets: Assets, fit: SceneFit,
                extra_files: dict[str, str] | None = None) -> None:
    """Every output of a static scene, written atomically into ``out`` (see :func:`write_all`)."""
    write_all(out, fit.views, fit.intrinsics, fit.result, fit.skipped, fit.timings, model=assets.info,
              overwrite=config.overwrite, avatar_format=config.avatar_format, export=config.export,
              extra_files=extra_files, summary_extra={"sequence": {"kind": "static", "reason": fit.prepared.sequence_reason},
                             "video": fit.prepared.intake.summary(),
                             "cameras_without_face": fit.faceless_cameras,
                             "seeded_detections": seeded_detections(fit.views),
                             "intrinsics_notes": list(fit.intrinsics.notes)},
              report_html=sequence_report_html(fit.prepared) + faceless_report_html(fit.faceless_cameras)
              + seeded_report_html(fit.views))


def run(config: FitConfig, console: Console | None = None) -> Path:
    """Do the whole job for ``config``; return the output directory."""
    console = console or make_console()
    config.check()
    if not Path(config.data).exists():
        raise InputError("no such file or folder.", config.data, hint="Pass --data <folder of images or one image>.")
    out = check_output_dir(config.output_dir, config.data, config.overwrite)  # before any work
    device = resolve_device(config.fitter.device)
    t_start = time.perf_counter()
    with make_progress(console) as progress:
        with stage(progress, "loading the model files"):
            assets = load_assets(**config.resolved_paths(), device=device)
        prepared = prepare_inputs(config, assets.embedding, progress, assets.model)
        if prepared.sequence == "dynamic":
            from flame_prior.track import run_dynamic

            return run_dynamic(config, assets, prepared, out, progress, console, t_start)
        fit = fit_static(config, assets, prepared, progress)
        t0 = time.perf_counter()
        with stage(progress, "writing the outputs"):
            write_scene(out, config, assets, fit)
        fit.timings["export"] = time.perf_counter() - t0
    fit.timings["total"] = time.perf_counter() - t_start
    print_summary(console, out, fit.views, fit.skipped, fit.intrinsics, fit.result, assets.info, fit.timings)
    return out


def write_all(out: Path, views: list[ViewObservation], intrinsics: Intrinsics, result: FitResult,
              skipped: list[SkippedInput], timings: dict[str, float], *, model: ModelInfo, overwrite: bool,
              avatar_format: bool, export: ExportConfig | None = None, extra_files: dict[str, str] | None = None,
              summary_extra: dict | None = None, report_html: str = "") -> None:
    """All exports, into a temporary directory renamed to ``out`` when complete.

    ``export``: the report's options (default :class:`ExportConfig`'s); ``summary_extra`` adds top-level entries to ``fit_summary.json`` (the sequence kind, the frames
    chosen from clips); ``report_html`` is a section appended to the report."""
    with atomic_output_dir(out, overwrite) as tmp:
        # bake: texture.png and the textured previews are the photos projected onto the mesh (see texture_bake).
        write_outputs(tmp, views, intrinsics, result, skipped, timings, model=model, avatar_format=avatar_format,
                      export=export, bake=True)
        if summary_extra:
            extend_summary(tmp / "fit_summary.json", summary_extra)
        if report_html:
            append_report_section(tmp / "report.html", report_html)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)


def faceless_report_html(cameras: list[dict]) -> str:
    """The report's section on the images without a face that got COLMAP's camera (empty if none)."""
    if not cameras:
        return ""
    from html import escape

    rows = "".join(f"<tr><td>{escape(c['name'])}</td><td>{c['fx']:.1f}</td><td style='color:#c00'>"
                   f"{escape('; '.join(c['flags']))}</td></tr>" for c in cameras)
    return ("<section><h2>Cameras without a detected face</h2><p>COLMAP registered these images, but no face was "
            "found in them: their cameras are COLMAP's, brought into FLAME's frame by the similarity of the "
            "fitted views; no landmark checks them (fit_summary.json <code>cameras_without_face</code>; not in "
            "transforms.json).</p><table><thead><tr><th>view</th><th>fx (px)</th><th>flag</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def seeded_detections(views: list[ViewObservation]) -> list[dict]:
    """The views whose face the seeded second pass found (:mod:`flame_prior.detectors.seeded`), for
    fit_summary.json ``seeded_detections``: ``{"name", "note"}`` each, the note saying from which
    view's face region, whether on the mirror image, and the face presence."""
    return [{"name": v.image.name, "note": next((n for n in v.detection.notes if n.startswith("seeded")), "")}
            for v in views if v.detection.provenance == "seeded"]


def seeded_report_html(views: list[ViewObservation]) -> str:
    """The report's section on the faces found by the seeded second pass (empty if none)."""
    seeded = seeded_detections(views)
    if not seeded:
        return ""
    from html import escape

    rows = "".join(f"<tr><td>{escape(s['name'])}</td><td style='color:#b60'>{escape(s['note'])}</td></tr>"
                   for s in seeded)
    return ("<section><h2>Faces found by the seeded second pass</h2><p>The detector found no face in these "
            "photos; the landmark model alone found one in the region of a neighbouring view's face (or on the "
            "mirror image), accepted by its face-presence score and a size and head-yaw check against that view "
            "(fit_summary.json <code>seeded_detections</code>). Their landmarks are drawn on the views above: "
            "look at them.</p><table><thead><tr><th>view</th><th>how</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def sequence_report_html(prepared: PreparedViews) -> str:
    """The report's section on the sequence kind and the frames chosen from clips (empty for photos)."""
    return frame_selection_html(prepared.intake, prepared.sequence, prepared.sequence_reason)
