"""The one path through flame-prior: images → observations → intrinsics → fit → exports.

:func:`run` is what ``flame-prior fit`` and ``ns-process-data flame-face`` call. The output is
written to a temporary directory beside the target and renamed only when complete, so an
interrupted or failed run leaves the previous output intact and no partial directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flame_prior import render
from flame_prior.config import FitConfig
from flame_prior.errors import FitError, InputError, ModelFileError, deferred_interrupts
from flame_prior.fit import FitResult, check_observation, fit_flame, resolve_device
from flame_prior.fit_photometric import render_head
from flame_prior.flame import (
    FlameModel,
    FlameModelData,
    LandmarkEmbedding,
    TextureSpace,
    check_embedding,
    load_bfm_albedo,
    load_flame_model,
    load_flame_texture_space,
    load_landmark_embedding,
    read_obj_uv_layout,
)
from flame_prior.flame.uv_unwrap import cylindrical_uv_layout
from flame_prior.images import SkippedInput
from flame_prior.intrinsics import Intrinsics, estimate_intrinsics
from flame_prior.observe import ViewObservation, observe
from flame_prior.progress import make_console, make_progress, stage
from flame_prior.video import Intake, is_video, load_inputs

FLAME_DOWNLOAD_HINT = (
    "FLAME is obtained (after registration) from https://flame.is.tue.mpg.de; pass the file with "
    "--flame-model or set FLAME_PRIOR_MODEL."
)


def default_model_path() -> Path:
    """The bundled FLAME 2023 Open subset (CC BY 4.0)."""
    return Path(str(resources.files("flame_prior") / "data" / "flame2023_open_subset.npz"))


def default_embedding_path() -> Path:
    """flame-prior's own 468-point MediaPipe embedding (derived from Apache-2.0 data)."""
    return Path(str(resources.files("flame_prior") / "data" / "mediapipe468_embedding.npz"))


@dataclass
class Assets:
    """Model files, loaded and checked against each other."""

    model: FlameModel
    embedding: LandmarkEmbedding
    texture_space: TextureSpace | None
    uv_layout: tuple[np.ndarray, np.ndarray] | None
    model_info: dict


def load_assets(config: FitConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> Assets:
    """Load the FLAME model, landmark embedding, texture space and UV layout the config names."""
    paths = config.resolved_paths()
    model_path = paths["flame_model"] or default_model_path()
    if not Path(model_path).exists():
        raise ModelFileError("FLAME model file not found.", model_path, hint=FLAME_DOWNLOAD_HINT)
    data: FlameModelData = load_flame_model(model_path)
    emb_path = paths["landmark_embedding"] or default_embedding_path()
    if not Path(emb_path).exists():
        raise ModelFileError("landmark embedding not found.", emb_path,
                             hint="Pass --landmark-embedding or set FLAME_PRIOR_EMBEDDING.")
    embedding = load_landmark_embedding(emb_path)
    check_embedding(embedding, len(data.faces), emb_path)
    embedding = with_iris_landmarks(embedding, data.faces, emb_path)
    texture_space = None
    if paths["texture_space"] is not None:
        texture_space = load_texture_space(paths["texture_space"], paths["uv_layout"])
        if len(texture_space.uv_faces) != len(data.faces):
            raise ModelFileError(f"the texture space has {len(texture_space.uv_faces)} UV faces, the FLAME model "
                                 f"{len(data.faces)}.", paths["texture_space"],
                                 hint="Use the texture space that belongs to this FLAME topology.")
    if paths["uv_layout"] is not None:
        uv_layout = read_obj_uv_layout(paths["uv_layout"])
        if len(uv_layout[1]) != len(data.faces):
            raise ModelFileError(f"the OBJ has {len(uv_layout[1])} faces, the FLAME model {len(data.faces)}.",
                                 paths["uv_layout"], hint="Use the template OBJ that belongs to this FLAME model.")
    else:
        uv_layout = cylindrical_uv_layout(data.v_template, data.faces)
    is_default = paths["flame_model"] is None
    info = {
        "path": str(model_path), "sha256": data.sha256, "name": data.name,
        "n_shape": int(data.n_shape), "n_expr": int(data.n_expr), "default": is_default,
        "notes": model_notes(is_default, data.n_expr), "loading_notes": list(data.notes),
        "embedding": str(emb_path), "embedding_points": int(len(embedding.face_idx)),
        "texture_space": None if texture_space is None else str(paths["texture_space"]),
    }
    model = FlameModel(data, dtype=dtype).to(device)
    return Assets(model, embedding, texture_space, uv_layout, info)


def model_notes(is_default: bool, n_expr: int) -> list[str]:
    """What the user should know about the head model, in one plain sentence (the loader's
    technical decisions go to ``fit_summary.json`` as ``loading_notes``)."""
    if n_expr > 0:
        return []
    which = "The bundled head model (FLAME 2023 Open, CC BY 4.0)" if is_default else "This FLAME file"
    return [f"{which} has no expression space: it fits the shape of the head but not facial expressions; "
            "to fit those, pass a full FLAME model with --flame-model."]


def load_texture_space(path: Path, uv_layout_obj: Path | None = None) -> TextureSpace:
    """FLAME_texture.npz (keys mean/tex_dir) or DECA's FLAME_albedo_from_BFM.npz (keys MU/PC).

    The BFM albedo is an image in FLAME's UV layout but usually carries no ``vt``/``ft``: the layout
    then comes from ``uv_layout_obj`` (FLAME's template OBJ, ``--uv-layout``)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError("texture space not found.", path, hint="Pass --texture-space or set FLAME_PRIOR_TEXTURE.")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
    except Exception as e:  # not an npz at all
        raise ModelFileError(f"not a readable .npz texture space ({type(e).__name__}: {e}).", path,
                             hint="Pass FLAME_texture.npz or FLAME_albedo_from_BFM.npz.") from None
    if {"mean", "tex_dir"} <= keys:
        return load_flame_texture_space(path)
    if {"MU", "PC"} <= keys:
        if {"vt", "ft"} <= keys:
            return load_bfm_albedo(path)
        if uv_layout_obj is None:
            raise ModelFileError("this albedo space has no UV layout (no vt/ft arrays).", path,
                                 hint="Pass FLAME's template OBJ with --uv-layout (or FLAME_PRIOR_UV_LAYOUT).")
        uvs, uv_faces = read_obj_uv_layout(uv_layout_obj)
        return load_bfm_albedo(path, uvs=uvs, uv_faces=uv_faces)
    raise ModelFileError(f"unknown texture space (keys {sorted(keys)}).", path,
                         hint="Expected FLAME_texture.npz (mean, tex_dir, vt, ft) or FLAME_albedo_from_BFM.npz (MU, PC).")


def with_iris_landmarks(emb: LandmarkEmbedding, faces: np.ndarray, path: Path) -> LandmarkEmbedding:
    """Append the two iris centres (MediaPipe 468/473) as landmarks on the pupil vertices, when the
    embedding file names them (flame-prior's own embedding does: ``iris_center_detector_index``,
    ``pupil_vertex_index``). Pupils are mesh vertices that follow the eye joints, so the iris
    detections drive the eye pose."""
    if emb.detector != "mediapipe478" or Path(path).suffix != ".npz":
        return emb
    with np.load(path, allow_pickle=False) as z:
        if "pupil_vertex_index" not in z.files or "iris_center_detector_index" not in z.files:
            return emb
        pupils, iris = z["pupil_vertex_index"].astype(np.int64), z["iris_center_detector_index"].astype(np.int64)
    face_idx, bary = [], []
    for v in pupils:
        f, k = np.argwhere(faces == v)[0]
        face_idx.append(f)
        bary.append(np.eye(3)[k])
    return dataclasses.replace(
        emb, face_idx=np.concatenate([emb.face_idx, face_idx]), bary=np.concatenate([emb.bary, bary]),
        detector_index=np.concatenate([emb.detector_index, iris]),
        weight=np.concatenate([emb.weight, np.ones(len(iris), dtype=emb.weight.dtype)]))


# --------------------------------------------------------------------------------------------
# Output directory: temporary, renamed when complete


def check_output_dir(output_dir: Path, data: Path | None, overwrite: bool) -> Path:
    """Refuse, before any work, an output directory the run could not or must not replace.

    Refused (:class:`InputError`, exit 2): it lies inside the input folder, or the input lies
    inside it (``--overwrite`` would delete the photos); it exists without ``--overwrite``; it
    exists and is neither empty nor a flame-prior output (no ``fit_summary.json``), so a typo
    cannot replace an unrelated folder; a directory cannot be created beside it (probed for real:
    ``os.access`` says yes to root, on read-only mounts and in ``/proc``).
    """
    out = Path(output_dir).expanduser().resolve()
    src = Path(data).expanduser().resolve() if data is not None else None
    if src is not None and src.is_dir() and (out == src or out.is_relative_to(src)):
        raise InputError("the output directory lies inside the input folder.", out,
                         hint="Choose an --output-dir outside the folder of images.")
    if src is not None and src.is_relative_to(out):
        raise InputError(f"the input {src} lies inside the output directory (replacing it would delete the input).",
                         out, hint="Choose an --output-dir that does not contain the images.")
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a directory.", out, hint="Choose another --output-dir.")
    if out.exists() and not overwrite:
        raise InputError("the output directory already exists.", out,
                         hint="Pass --overwrite to replace it, or choose another --output-dir.")
    if out.exists() and any(out.iterdir()) and not (out / "fit_summary.json").is_file():
        raise InputError("the output directory is not empty and holds no fit_summary.json: it does not look like a "
                         "flame-prior output, so --overwrite will not replace it.", out,
                         hint="Choose a new --output-dir (or empty this one yourself).")
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError("cannot create the output directory here: this path is a file, not a folder.", probe,
                         hint="Choose an --output-dir under a folder.")
    try:  # a real probe: os.access is not enough
        Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=probe)).rmdir()
    except OSError as err:
        raise InputError(f"cannot create the output directory here ({err.strerror or err}).", probe,
                         hint="Choose a writable --output-dir.") from None
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool):
    """Yield a temporary directory beside ``out``; rename it to ``out`` only if the block completes.

    The temporary directory, ``.<name>.partial-<pid>-*``, is removed when the block raises
    (including Ctrl-C / SIGTERM); one left by a killed run (its process gone) is removed by the
    next run into the same place. The final swap (previous output aside, new one in, old one
    deleted) runs with SIGINT/SIGTERM held back, so it is never cut in half. OS errors while
    writing (disk full, read-only) become :class:`InputError` naming the path.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f".{out.name}.partial-*-*"):
            pid = stale.name[len(f".{out.name}.partial-"):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = _mkdir_unique(out.parent, f".{out.name}.partial-{os.getpid()}-")
    except OSError as err:
        raise InputError(f"cannot create the output directory ({err.strerror or err}).", out.parent,
                         hint="Choose a writable --output-dir.") from None
    try:
        yield tmp
    except BaseException as exc:
        with deferred_interrupts(f"interrupted; the unfinished output was removed, {out} is as it was"):
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise InputError(f"cannot write the output ({exc.strerror}: {exc.filename}); nothing was written.",
                             out, hint="Free disk space or choose a writable --output-dir.") from exc
        raise
    with deferred_interrupts(f"interrupted after the output was complete: {out} is the new output"):
        if out.exists():
            if not overwrite:
                shutil.rmtree(tmp, ignore_errors=True)
                raise InputError("the output directory appeared while the fit ran.", out, hint="Pass --overwrite.")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            old.rmdir()
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _mkdir_unique(parent: Path, prefix: str) -> Path:
    """A new directory ``<parent>/<prefix><random>`` with the umask's mode.

    Not :func:`tempfile.mkdtemp`: its mode 0700 would survive the rename and hide the output from
    other users and services."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / prefix))


# --------------------------------------------------------------------------------------------
# Preview renders for the report


@torch.no_grad()
def render_previews(result: FitResult, max_side: int = 640) -> list[np.ndarray]:
    """The fitted, textured, lit head over each view: ``(H, W, 4)`` uint8 RGBA in the original grid."""
    import cv2

    verts = torch.as_tensor(result.vertices, dtype=torch.float32)[None]
    faces = torch.as_tensor(result.faces)
    uvs, uv_faces = torch.as_tensor(result.uvs), torch.as_tensor(result.uv_faces)
    tex = torch.as_tensor(result.texture, dtype=torch.float32)
    normals_v = render.vertex_normals(verts, faces)
    cams = result.cameras.to(dtype=torch.float32)
    out = []
    for i in range(len(cams)):
        W, H = cams.width[i], cams.height[i]
        s = min(1.0, max_side / max(W, H))
        w, h = max(1, round(W * s)), max(1, round(H * s))
        sx, sy = w / W, h / H
        sh = torch.as_tensor(result.lighting[min(i, len(result.lighting) - 1)], dtype=torch.float32)[None]
        color, rast, _ = render_head(verts, faces, cams.R[i:i + 1], cams.t[i:i + 1], cams.fx[i:i + 1] * sx,
                                     cams.fy[i:i + 1] * sy, cams.cx[i:i + 1] * sx, cams.cy[i:i + 1] * sy, (h, w),
                                     uvs, uv_faces, tex, sh, vertex_normals=normals_v)
        alpha = (rast[..., 3:] > 0).float()
        rgba = (torch.cat([color.clamp(0, 1), alpha], -1)[0].numpy() * 255).round().astype(np.uint8)
        out.append(cv2.resize(rgba, (W, H), interpolation=cv2.INTER_LINEAR) if s < 1 else rgba)
    return out


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
    from flame_prior import video

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with stage(progress or None, "reading images" if not Path(config.data).is_file() or not is_video(config.data)
               else "decoding the clip"):
        intake = load_inputs(config.data, config.video, static_pool=config.video.sequence != "dynamic")
    skipped = list(intake.skipped)
    timings["intake"] = time.perf_counter() - t0
    t0 = time.perf_counter()
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
    usable, skipped, sequence, why = video.choose_views(usable, skipped, intake, config.video, embedding, model)
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
        """Inputs left out before the fit, then views the fit could not give a camera."""
        return self.prepared.skipped + self.result.left_out

    @property
    def timings(self) -> dict[str, float]:
        return self.prepared.timings


def fit_static(config: FitConfig, assets: Assets, prepared: PreparedViews, progress) -> SceneFit:
    """Intrinsics and the fit of a static scene's views (``prepared.sequence == "static"``); their
    seconds are added to ``prepared.timings``."""
    timings = prepared.timings
    t0 = time.perf_counter()
    with stage(progress, "focal length"):
        intrinsics = estimate_intrinsics(prepared.views, config.intrinsics, progress=progress)
    timings["intrinsics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with stage(progress, "fit"):
        result = fit_flame(assets.model, assets.embedding, prepared.views, intrinsics, config.fitter,
                           texture_space=assets.texture_space, uv_layout=assets.uv_layout,
                           model_info=assets.model_info, progress=progress)
    timings["fit"] = time.perf_counter() - t0
    for s in result.stages:
        timings[f"fit.{s.name}"] = s.seconds
    return SceneFit(prepared, intrinsics, result)


def write_scene(out: Path, config: FitConfig, assets: Assets, fit: SceneFit,
                extra_files: dict[str, str] | None = None) -> None:
    """Every output of a static scene, written atomically into ``out`` (see :func:`write_all`)."""
    write_all(out, fit.views, fit.intrinsics, fit.result, fit.skipped, fit.timings, model_info=assets.model_info,
              overwrite=config.overwrite, avatar_format=config.avatar_format, extra_files=extra_files,
              summary_extra={"sequence": {"kind": "static", "reason": fit.prepared.sequence_reason},
                             "video": fit.prepared.intake.summary()},
              report_html=sequence_report_html(fit.prepared))


def run(config: FitConfig, console: Console | None = None) -> Path:
    """Do the whole job for ``config``; return the output directory."""
    console = console or make_console()
    if not Path(config.data).exists():
        raise InputError("no such file or folder.", config.data, hint="Pass --data <folder of images or one image>.")
    out = check_output_dir(config.output_dir, config.data, config.overwrite)  # before any work
    device = resolve_device(config.fitter.device)
    t_start = time.perf_counter()
    with make_progress(console) as progress:
        with stage(progress, "loading the model files"):
            assets = load_assets(config, device)
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
    print_summary(console, out, fit.views, fit.skipped, fit.intrinsics, fit.result, fit.timings)
    return out


def write_all(out: Path, views, intrinsics, result: FitResult, skipped, timings, *, model_info: dict,
              overwrite: bool, avatar_format: bool, extra_files: dict[str, str] | None = None,
              summary_extra: dict | None = None, report_html: str = "") -> None:
    """All exports, into a temporary directory renamed to ``out`` when complete.

    ``summary_extra`` adds top-level entries to ``fit_summary.json`` (the sequence kind, the frames
    chosen from clips); ``report_html`` is a section appended to the report."""
    from flame_prior.export import write_outputs
    from flame_prior.export.sequence import append_report_section, extend_summary

    with atomic_output_dir(out, overwrite) as tmp:
        write_outputs(tmp, views, intrinsics, result, skipped, timings,
                      model_path=model_info["path"], model_sha256=model_info["sha256"],
                      avatar_format=avatar_format, renders=render_previews(result))
        if summary_extra:
            extend_summary(tmp / "fit_summary.json", summary_extra)
        if report_html:
            append_report_section(tmp / "report.html", report_html)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)


def sequence_report_html(prepared: PreparedViews) -> str:
    """The report's section on the sequence kind and the frames chosen from clips (empty for photos)."""
    from flame_prior.export.sequence import frame_selection_html

    return frame_selection_html(prepared.intake, prepared.sequence, prepared.sequence_reason)


def print_summary(console: Console, out: Path, views, skipped, intrinsics, result: FitResult, timings) -> None:
    """The one-screen summary at the end of a run."""
    table = Table(title=f"flame-prior: {len(views)} views fitted, {len(skipped)} left out")
    for col in ("view", "landmark error px", "/ eye distance", "rotation ± °", "trust"):
        table.add_column(col, justify="right" if col not in ("view", "trust") else "left")
    for v in result.views:
        rel = v.landmark_error_px / v.eye_distance_px if v.eye_distance_px > 0 else float("nan")
        trust = "[green]ok[/green]" if not v.flags else "[red]flagged: " + escape("; ".join(v.flags)) + "[/red]"
        name = v.name if not v.flags else f"[red]{escape(v.name)}[/red]"
        table.add_row(name, f"{v.landmark_error_px:.2f}", f"{rel:.3f}", f"{v.rotation_sigma_deg:.2f}", trust)
    for s in skipped:
        table.add_row(f"[red]{escape(s.path.name)}[/red]", "left out", escape(s.reason))
    console.print(table)
    f = result.cameras.fx.numpy()
    console.print(f"intrinsics: [bold]{intrinsics.source}[/bold] (focal {np.median(f):.1f} px)"
                  + (f"; COLMAP registered {intrinsics.colmap.get('registered')}/{intrinsics.colmap.get('total')}"
                     if intrinsics.colmap else ""))
    for v in views:  # per-view remarks: "2 faces, took the largest", a cache file re-detected, ...
        for note in v.notes:
            console.print(f"note: {escape(v.image.path.name)}: {escape(note)}", highlight=False)
    for note in intrinsics.notes + result.notes + list(result.model_info.get("notes", [])):
        console.print(f"note: {escape(note)}", highlight=False)
    console.print("time: " + format_timings(timings), highlight=False)
    console.print(f"output: [bold]{escape(str(out))}[/bold] (report: {escape(str(out / 'report.html'))})")


def format_timings(timings: dict[str, float]) -> str:
    """``intake 0.1 s, …, fit 11.6 s (rigid 0.2 s, landmarks 0.3 s, photometric 9.7 s, set-up 1.4 s),
    export 2.1 s, total 24.1 s``: the parts of the fit (keys ``fit.<stage>``) in brackets after it."""
    parts = {k.split(".", 1)[1]: v for k, v in timings.items() if k.startswith("fit.")}
    items = []
    for k, v in timings.items():
        if k.startswith("fit."):
            continue
        text = f"{k} {v:.1f} s"
        if k == "fit" and parts:
            rest = v - sum(parts.values())  # set-up: forward-mode AD, targets, crops
            text += " (" + ", ".join(f"{p} {t:.1f} s" for p, t in parts.items()) + f", set-up {rest:.1f} s)"
        items.append(text)
    return ", ".join(items)
