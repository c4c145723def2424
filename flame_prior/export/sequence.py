"""Exports of sequences: what clips and dynamic fits add to the one-timestep exports.

* :func:`extend_summary`: top-level entries added to ``fit_summary.json``: ``sequence`` (``kind``
  "static" | "dynamic" and the reason) and ``video`` (:meth:`flame_prior.video.Intake.summary`: the
  clips — frames, duration, frame rate, rotation applied, variable frame rate, frames that failed to
  decode — and every frame considered, kept or not, with the reason).
* :func:`frame_selection_html`: the report's section on the sequence kind and the frames chosen.
* :func:`append_report_section`: adds a section to ``report.html`` before ``</main>``.
* :func:`write_sequence_outputs`: everything a dynamic fit writes (every timestep): nerfstudio
  ``transforms.json`` with ``time``, ``flame_params.npz`` over time, ``fit_summary.json``, the
  FLAME-avatar data set over time (:func:`write_avatar_sequence`), the report with a strip over time
  and parameter curves (:func:`write_sequence_report`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from flame_prior.export._common import write_json
from flame_prior.flame.assets import ModelInfo

__all__ = ["extend_summary", "append_report_section", "frame_selection_html", "write_sequence_outputs",
           "write_avatar_sequence", "write_sequence_report"]


def extend_summary(path: Path, extra: dict) -> Path:
    """Add ``extra``'s keys to the JSON object in ``path`` (rewritten in place; caller owns atomicity)."""
    summary = json.loads(Path(path).read_text(encoding="utf-8"))
    summary.update(extra)
    return write_json(Path(path), summary)


def append_report_section(path: Path, section_html: str) -> Path:
    """Insert ``section_html`` into ``report.html`` before ``</main>`` (or at the end)."""
    path = Path(path)
    doc = path.read_text(encoding="utf-8")
    marker = "</main>"
    doc = doc.replace(marker, section_html + "\n" + marker, 1) if marker in doc else doc + section_html
    path.write_text(doc, encoding="utf-8")
    return path


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def frame_selection_html(intake, kind: str, reason: str) -> str:
    """The sequence kind and, for clips, a table of every frame considered (kept ones first)."""
    parts = [f"<h2>Sequence</h2><p><b>{_esc(kind)}</b> &mdash; {_esc(reason)}</p>"]
    for note in intake.notes:
        parts.append(f"<div class='warn'>{_esc(note)}</div>")
    if intake.source == "images":
        return "\n".join(parts)
    for c in intake.clips:
        parts.append(
            f"<p class='sub'>{_esc(Path(c.path).name)}: {c.frames} frames, {c.duration:.2f} s, {c.fps:.2f} fps"
            f"{' (variable)' if c.variable_frame_rate else ''}, {c.width}&times;{c.height} upright, codec {_esc(c.codec)}, "
            f"rotation {c.rotation}&deg; applied"
            + (f", {len(c.decode_errors)} frame(s) could not be decoded" if c.decode_errors else "") + "</p>")
    frames = sorted(intake.frames, key=lambda f: (not f.kept, f.camera, f.time if f.time == f.time else 1e18))
    rows = "".join(
        f"<tr><td>{_esc(f.clip)}</td><td class='num'>{f.index}</td>"
        f"<td class='num'>{'' if f.time != f.time else f'{f.time:.2f}'}</td>"
        f"<td class='num'>{'' if f.sharpness != f.sharpness else f'{f.sharpness:.0f}'}</td>"
        f"<td class='{'good' if f.kept else 'sub'}'>{'kept' if f.kept else 'left out'}</td><td>{_esc(f.reason)}</td></tr>"
        for f in frames[:400])
    more = f"<p class='sub'>{len(frames) - 400} more frames in fit_summary.json (video.frames)</p>" if len(frames) > 400 else ""
    parts.append("<details><summary>Frames considered "
                 f"({sum(f.kept for f in frames)} kept of {len(frames)})</summary>"
                 "<table><thead><tr><th>clip</th><th>frame</th><th>time s</th><th>sharpness</th><th></th>"
                 f"<th>why</th></tr></thead><tbody>{rows}</tbody></table>{more}</details>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Dynamic sequences: every timestep


def write_sequence_outputs(out_dir: Path, prepared, keyframe_fit, seq, timings: dict, *, model_info: ModelInfo,
                           avatar_format: bool, model=None) -> None:
    """Write a dynamic fit into ``out_dir`` (the caller owns atomicity).

    Layout:

    * ``images/<view>.png``, ``masks/<view>.png``: every frame of every camera (as the static export).
    * ``transforms.json`` (nerfstudio): one frame per (timestep, camera), ``transform_matrix`` the
      camera's fixed camera-to-world (OpenGL axes, FLAME's rest frame, metres), the camera's
      intrinsics, and ``time`` in [0, 1] (first to last timestep; the D-NeRF convention nerfstudio's
      dynamic methods read), plus ``flame_prior: {timestep, camera, time_s}``.
    * ``flame_params.npz``: ``shape (n_shape,)``; per timestep ``rotation, translation, neck_pose,
      jaw_pose (T, 3)``, ``eye_pose (T, 6)``, ``expression (T, n_expr)``; ``timesteps (T,)`` (intake
      numbering), ``times (T,)`` seconds; the cameras ``R (C,3,3), t (C,3), fx, fy, cx, cy, width,
      height (C,)``, ``camera_names (C,)``. FLAME's meaning: rotation about the root joint, translation
      added after skinning.
    * ``fit_summary.json``: ``sequence`` (kind, reason, timesteps, cameras, keyframes, tracking
      seconds and timesteps per second, per-timestep landmark error), ``flame`` (the arrays above as
      lists), ``model``, ``video`` (the intake), ``left_out``, ``notes``, ``timings``.
    * ``avatar/`` (``avatar_format``): :func:`write_avatar_sequence`.
    * ``report.html`` + ``report/``: a strip of model overlays over time and curves of the expression
      and pose parameters (:func:`write_sequence_report`).
    """
    from flame_prior.export._common import CONVENTION, flame_prior_version, mask_to_u8, save_png
    from flame_prior.geometry import opencv_w2c_to_opengl_c2w

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = prepared.views
    cam = seq.cameras.to_numpy()
    c2w = opencv_w2c_to_opengl_c2w(cam["R"], cam["t"])
    T, C = seq.view_index.shape
    span = float(seq.times[-1] - seq.times[0]) if T > 1 else 0.0
    cam_names = list(prepared.intake.camera_names)[:C] + [f"camera{c}" for c in range(len(prepared.intake.camera_names), C)]
    frames = []
    for k in range(T):
        for c in range(C):
            i = int(seq.view_index[k, c])
            if i < 0:
                continue
            v = views[i]
            save_png(out / "images" / f"{v.image.name}.png", v.image.pixels)
            save_png(out / "masks" / f"{v.image.name}.png", mask_to_u8(v.detection.mask))
            frames.append({
                "file_path": f"images/{v.image.name}.png", "mask_path": f"masks/{v.image.name}.png",
                "transform_matrix": c2w[c].tolist(),
                "fl_x": float(cam["fx"][c]), "fl_y": float(cam["fy"][c]), "cx": float(cam["cx"][c]),
                "cy": float(cam["cy"][c]), "w": int(cam["width"][c]), "h": int(cam["height"][c]),
                "time": (float(seq.times[k] - seq.times[0]) / span) if span > 0 else 0.0,
                "flame_prior": {"timestep": k, "timestep_original": int(seq.timesteps[k]), "camera": c,
                                "camera_name": cam_names[c], "time_s": float(seq.times[k])},
            })
    transforms = {"camera_model": "PINHOLE", "frames": frames, "applied_transform": np.eye(4)[:3].tolist(),
                  "flame_param_path": "flame_params.npz",
                  "flame_prior": {"version": flame_prior_version(), "frame": CONVENTION, "sequence": "dynamic",
                                  "time": "frame time / sequence length, 0 = first timestep, 1 = last",
                                  "timesteps": T, "cameras": cam_names}}
    keys = ("fl_x", "fl_y", "cx", "cy", "w", "h")
    if all(all(f[k] == frames[0][k] for k in keys) for f in frames):
        transforms.update({k: frames[0][k] for k in keys})
    write_json(out / "transforms.json", transforms)

    arrays = {"shape": np.asarray(seq.shape, np.float64), **{k: np.asarray(v, np.float64) for k, v in seq.params.items()},
              "timesteps": np.asarray(seq.timesteps, np.int64), "times": np.asarray(seq.times, np.float64),
              **cam, "camera_names": np.array(cam_names, dtype=np.str_)}
    np.savez(out / "flame_params.npz", **arrays)
    summary = {
        "format": "flame-prior fit summary (dynamic sequence)", "version": flame_prior_version(),
        "convention": CONVENTION,
        "units": {"translation": "metres", "t": "metres", "rotations": "radians (axis-angle)", "intrinsics": "pixels"},
        "sequence": {"kind": "dynamic", "reason": prepared.sequence_reason, "timesteps": T, "cameras": cam_names,
                     "keyframe_timesteps": [int(t) for t in seq.keyframe_timesteps],
                     "tracking_seconds": float(seq.seconds), "timesteps_per_second": float(seq.timesteps_per_second),
                     "landmark_px": seq.landmark_px, "times": seq.times, "timesteps_original": seq.timesteps},
        "model": model_info.as_dict(),
        "intrinsics_source": keyframe_fit.intrinsics_source,
        "flame": arrays_for_json(arrays),
        "cameras": [{"name": n, "R": cam["R"][c], "t": cam["t"][c], "fx": cam["fx"][c], "fy": cam["fy"][c],
                     "cx": cam["cx"][c], "cy": cam["cy"][c], "width": cam["width"][c], "height": cam["height"][c]}
                    for c, n in enumerate(cam_names)],
        "keyframe_stages": [{"name": s.name, "iterations": int(s.iterations), "seconds": float(s.seconds)}
                            for s in keyframe_fit.stages],
        "notes": list(seq.notes) + list(keyframe_fit.notes) + list(prepared.intake.notes),
        "left_out": [{"file": str(s.path), "reason": s.reason} for s in prepared.skipped],
        "video": prepared.intake.summary(),
        "timings": timings,
        "files": {"params": "flame_params.npz"},
    }
    write_json(out / "fit_summary.json", summary)
    if avatar_format:
        write_avatar_sequence(out / "avatar", views, seq, cam_names)
    write_sequence_report(out, prepared, keyframe_fit, seq, cam_names, timings, model)


def arrays_for_json(arrays: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in arrays.items()
            if k in ("shape", "rotation", "translation", "neck_pose", "jaw_pose", "eye_pose", "expression")}


def write_avatar_sequence(out_dir: Path, views, seq, cam_names: list[str], n_shape_out: int = 300,
                          n_expr_out: int = 100, train_ratio: float = 0.7,
                          background: tuple[int, int, int] = (255, 255, 255)) -> Path:
    """The FLAME-avatar data set of a sequence, as VHAP's ``export_as_nerf_dataset.py`` writes it and
    GaussianAvatars' ``readDynamicNerfInfo`` / ``FlameGaussianModel.load_meshes`` read it.

    Per-frame files and keys are those of :func:`flame_prior.export.avatar.write_avatar_dataset` (one
    timestep), with ``images/TTTTT_CC.png``, ``fg_masks/TTTTT_CC.png`` and ``flame_param/TTTTT.npz`` per
    timestep ``T`` (renumbered ``0..T-1`` without gaps: GaussianAvatars allocates ``max + 1``
    timesteps and reads the shape from timestep 0; ``timestep_index_original`` keeps the intake's
    number) and camera ``C``. Split as VHAP's ``split_json``: the first ``ceil(0.7 T)`` timesteps
    train (all cameras but the last; the last camera is ``val`` over the same timesteps, empty with
    one camera), the remaining timesteps are ``test`` (all cameras), each division listing its
    ``timestep_indices`` and ``camera_indices``. Every timestep of every division has its
    ``flame_param`` file (GaussianAvatars loads the test timesteps' meshes too).
    """
    import math as _math

    from flame_prior.export._common import flame_prior_version, save_png
    from flame_prior.export.avatar import _flame_param_file, _padded, centred_window, shift_image, transforms_file
    from flame_prior.errors import InputError
    from flame_prior.geometry import opencv_w2c_to_opengl_c2w

    out_dir = Path(out_dir)
    cam = seq.cameras.to_numpy()
    c2w = opencv_w2c_to_opengl_c2w(cam["R"], cam["t"])
    T, C = seq.view_index.shape
    bg = np.asarray(background, dtype=np.float64)
    frames = []
    for c in range(C):
        fx, fy = float(cam["fx"][c]), float(cam["fy"][c])
        if abs(fx - fy) > 1e-6 * max(fx, fy):
            raise InputError(f"camera {cam_names[c]}: fx = {fx:.6f} and fy = {fy:.6f} differ; the FLAME-avatar format "
                             "assumes square pixels", hint="fit with one shared focal length or export without --avatar-format")
    for k in range(T):
        for c in range(C):
            i = int(seq.view_index[k, c])
            if i < 0:
                continue
            o = views[i]
            f = float(cam["fx"][c])
            W, H = int(cam["width"][c]), int(cam["height"][c])
            w, ox = centred_window(cam["cx"][c], W)
            h, oy = centred_window(cam["cy"][c], H)
            alpha = np.clip(np.asarray(o.detection.mask, dtype=np.float64), 0.0, 1.0)
            comp = np.asarray(o.image.pixels, dtype=np.float64) * alpha[..., None] + bg * (1 - alpha[..., None])
            stem = f"{k:05d}_{c:02d}"
            save_png(out_dir / "images" / f"{stem}.png",
                     shift_image(np.clip(np.round(comp), 0, 255).astype(np.uint8), ox, oy, w, h, bg))
            save_png(out_dir / "fg_masks" / f"{stem}.png",
                     shift_image(np.round(alpha * 255).astype(np.uint8), ox, oy, w, h, 0.0))
            frames.append({
                "timestep_index": k, "timestep_index_original": int(seq.timesteps[k]), "timestep_id": f"{k:05d}",
                "camera_index": c, "camera_id": cam_names[c],
                "fl_x": f, "fl_y": f, "cx": w / 2.0, "cy": h / 2.0, "w": w, "h": h,
                "camera_angle_x": 2.0 * _math.atan(w / (2.0 * f)), "camera_angle_y": 2.0 * _math.atan(h / (2.0 * f)),
                "transform_matrix": c2w[c].tolist(),
                "file_path": f"images/{stem}.png", "fg_mask_path": f"fg_masks/{stem}.png",
                "flame_param_path": f"flame_param/{k:05d}.npz",
            })
    shape = _padded("shape", seq.shape, n_shape_out)
    (out_dir / "flame_param").mkdir(parents=True, exist_ok=True)
    p = seq.params
    for k in range(T):
        expr = _padded("expr", p["expression"][k], n_expr_out)
        np.savez(out_dir / "flame_param" / f"{k:05d}.npz",
                 **_flame_param_file(shape, expr, p["rotation"][k], p["neck_pose"][k], p["jaw_pose"][k],
                                     p["eye_pose"][k], p["translation"][k]))
    from flame_prior.export.avatar import CANONICAL_JAW_POSE

    np.savez(out_dir / "canonical_flame_param.npz",
             **_flame_param_file(shape, np.zeros(n_expr_out), np.zeros(3), np.zeros(3), CANONICAL_JAW_POSE,
                                 np.zeros(6), np.zeros(3)))
    meta = {"flame_prior": {"version": flame_prior_version(), "format": "FLAME-avatar data set, dynamic sequence",
                            "n_shape_out": n_shape_out, "n_expr_out": n_expr_out,
                            "split": f"VHAP split_json: first ceil({train_ratio} T) timesteps train/val, the rest test"}}
    cams = list(range(C))
    path = write_json(out_dir / "transforms.json", transforms_file(meta, frames, list(range(T)), cams))
    nt_train = int(np.ceil(T * train_ratio))
    train_t, test_t = list(range(nt_train)), list(range(nt_train, T))
    val_cams = cams[-1:] if C > 1 else []
    train_cams = [c for c in cams if c not in val_cams]
    split = {
        "train": ([f for f in frames if f["timestep_index"] < nt_train and f["camera_index"] in train_cams], train_t, train_cams),
        "val": ([f for f in frames if f["timestep_index"] < nt_train and f["camera_index"] in val_cams], train_t, val_cams),
        "test": ([f for f in frames if f["timestep_index"] >= nt_train], test_t, cams),
    }
    for name, (fr, ts, cs) in split.items():
        write_json(out_dir / f"transforms_{name}.json", transforms_file(meta, fr, ts, cs))
    return path


def write_sequence_report(out: Path, prepared, keyframe_fit, seq, cam_names: list[str], timings: dict,
                          model=None, strip: int = 8) -> Path:
    """``report.html`` of a dynamic fit: summary, a strip of the fitted mesh (``model``, the FLAME model
    of the fit) over ``strip`` frames spread over time (camera 0), curves of the parameters over time,
    the frames considered."""
    import datetime as _dt

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from PIL import Image, ImageDraw

    from flame_prior.export._common import flame_prior_version
    from flame_prior.flame import FlameModel, FlameParams
    from flame_prior.geometry import project_points

    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    T, C = seq.view_index.shape
    views = prepared.views
    # strip: mesh edges over the frames
    cells, labels = [], []
    picks = [k for k in np.unique(np.linspace(0, T - 1, min(strip, T)).round().astype(int)) if seq.view_index[k, 0] >= 0]
    faces = np.asarray(keyframe_fit.faces)
    if model is not None and picks:
        p = FlameParams.zeros(len(picks), model.n_shape, model.n_expr, dtype=torch.float64)
        p.shape = torch.as_tensor(np.repeat(seq.shape[None], len(picks), 0))
        for g, field in (("rotation", "rotation"), ("translation", "translation"), ("neck_pose", "neck_pose"),
                         ("jaw_pose", "jaw_pose"), ("eye_pose", "eye_pose"), ("expression", "expression")):
            setattr(p, field, torch.as_tensor(seq.params[g][picks]))
        with torch.no_grad():
            verts = FlameModel(model.data, dtype=torch.float64)(p).vertices
            uv, depth = project_points(verts, seq.cameras.subset([0] * len(picks)).to(dtype=torch.float64))
        for j, k in enumerate(picks):
            v = views[int(seq.view_index[k, 0])]
            s = 320 / max(v.image.width, v.image.height)
            im = Image.fromarray(v.image.pixels).resize((max(1, round(v.image.width * s)), max(1, round(v.image.height * s))))
            draw = ImageDraw.Draw(im, "RGBA")
            pts = uv[j].numpy() * s
            # front-facing triangles only (towards the camera), thin edges
            tri = pts[faces]
            area = (tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1])
            for t in tri[area < 0][::3]:
                draw.line([tuple(t[0]), tuple(t[1]), tuple(t[2]), tuple(t[0])], fill=(120, 170, 255, 90), width=1)
            cells.append(im)
            labels.append(f"t={seq.times[k]:.2f}s")
    strip_name = None
    if cells:
        h = max(c.height for c in cells)
        sheet = Image.new("RGB", (sum(c.width for c in cells), h + 18), (255, 255, 255))
        x = 0
        d = ImageDraw.Draw(sheet)
        for c, lab in zip(cells, labels):
            sheet.paste(c, (x, 18))
            d.text((x + 4, 3), lab, fill=(0, 0, 0))
            x += c.width
        strip_name = "sequence_strip.jpg"
        sheet.save(rep / strip_name, quality=88)
    # curves
    t = seq.times
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    e = seq.params["expression"]
    if e.shape[1]:
        for j in range(min(10, e.shape[1])):
            axes[0].plot(t, e[:, j], lw=1, label=f"expr {j}")
        axes[0].legend(fontsize=6, ncol=5)
    else:
        axes[0].text(0.5, 0.5, "no expression space in this model", ha="center", transform=axes[0].transAxes)
    axes[0].set_ylabel("expression")
    axes[1].plot(t, np.degrees(seq.params["jaw_pose"][:, 0]), label="jaw open")
    axes[1].plot(t, np.degrees(seq.params["eye_pose"][:, 1]), label="left eye yaw")
    axes[1].plot(t, np.degrees(seq.params["eye_pose"][:, 0]), label="left eye pitch")
    axes[1].set_ylabel("degrees")
    axes[1].legend(fontsize=7)
    rot = seq.params["rotation"]
    for j, n in enumerate(("x (pitch)", "y (yaw)", "z (roll)")):
        axes[2].plot(t, np.degrees(rot[:, j]), label=f"head rotation {n}")
    axes[2].set_ylabel("degrees")
    axes[2].legend(fontsize=7)
    for c in range(C):
        axes[3].plot(t, seq.landmark_px[:, c], label=f"landmark error, {cam_names[c]}")
    axes[3].set_ylabel("px")
    axes[3].set_xlabel("time (s)")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(rep / "sequence_curves.png", dpi=90)
    plt.close(fig)

    notes = "".join(f"<div class='warn'>{_esc(n)}</div>" for n in seq.notes + list(keyframe_fit.notes))
    t_rows = "".join(f"<tr><td>{_esc(k)}</td><td class='num'>{float(v):.1f} s</td></tr>" for k, v in timings.items())
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flame-prior report (sequence)</title>
<style>body{{font-family:system-ui,sans-serif;margin:20px;max-width:1200px}} img{{max-width:100%}}
.warn{{background:#fff4d6;padding:4px 8px;margin:4px 0}} .sub{{color:#666}} td.num{{text-align:right}}
.good{{color:#1a7f37}} table{{border-collapse:collapse}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head>
<body><main>
<h1>flame-prior report &mdash; dynamic sequence</h1>
<div class="sub">flame-prior {_esc(flame_prior_version())} &middot; {_dt.datetime.now():%Y-%m-%d %H:%M} &middot;
{T} timesteps &times; {C} camera(s) &middot; cameras fixed in FLAME's rest frame, the head moves</div>
{notes}
<p>Tracking: {seq.timesteps_per_second:.1f} timesteps/s; median landmark error {np.nanmedian(seq.landmark_px):.2f} px
(worst timestep {np.nanmax(seq.landmark_px):.2f} px). Keyframes (identity, intrinsics, cameras):
{", ".join(str(int(k)) for k in seq.keyframe_timesteps)}.</p>
<h2>Over time</h2>
{"<img src='report/" + strip_name + "' alt='fitted mesh over frames'>" if strip_name else "<p class='sub'>no strip</p>"}
<h2>Parameters</h2>
<img src="report/sequence_curves.png" alt="expression and pose curves">
<h2>Time</h2><table>{t_rows}</table>
</main></body></html>
"""
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    append_report_section(path, frame_selection_html(prepared.intake, "dynamic", prepared.sequence_reason))
    return path

