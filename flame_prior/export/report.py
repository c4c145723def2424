"""HTML report: ``report.html`` plus its pictures in ``report/`` beside it (relative links, no scripts).

Contents, top to bottom:

* summary: views fitted and left out (with the reason for each), where the intrinsics came from (and
  COLMAP's figures when it ran), the FLAME model used and what it lacks, time per stage;
* a contact sheet: every fitted view as a thumbnail (long side ``THUMB_SIDE``) of its alignment check,
  captioned with its landmark error and status; flagged cameras outlined in red;
* loss curves per fitting stage (:mod:`flame_prior.export.loss_plot`, log scale);
* a per-view table: size, focal length, median landmark error in pixels and as a fraction of the
  outer-eye-corner distance of the projected model, with a status colour;
* the views shown at full size (:func:`full_size_views`: by default the flagged cameras and the few
  worst by landmark error; ``--export.report-full-views all`` for every view), three pictures each:
  (1) the photo with the head-mask outline (yellow), the detected landmarks (green), the fitted model's
  projected landmarks (red) and a thin line joining each pair;
  (2) the model over the photo: the fitted, textured, lit head rendered by the fit's own renderer
  (:func:`render_previews`; or the caller's ``renders``);
  (3) the alignment check (:mod:`flame_prior.export.alignment`): untextured model, silhouette and
  feature lines, which show a wrong camera where a texture fitted to the photo would hide it.

Why not every view at full size: three 640 px pictures and a textured render cost ~0.4 s of CPU per
view; the thumbnails (rasterized at thumbnail size, all views of one size in one batch) cost a tenth
of that and still show a misplaced silhouette or feature line.

Full-size pictures are drawn with their long side between ``MIN_SIDE`` and ``MAX_SIDE`` pixels
(coordinates scale exactly, since pixel coordinates have their origin at the image corner). File
names: ``report/<view>_thumb.jpg`` (every view), ``report/<view>_landmarks.jpg``,
``report/<view>_model.jpg``, ``report/<view>_alignment.jpg`` (views at full size),
``report/loss_curves.png``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from flame_prior.export._common import flame_prior_version, ideal_views
from flame_prior.export.alignment import alignment_overlay, feature_lines
from flame_prior.export.loss_plot import write_loss_plot
from flame_prior.export.texture_bake import MAX_VIEWS, spread_views
from flame_prior.export.view_render import SMALL_SIDE, SmallSurfaces, ViewMesh, ViewSurface, small_size, view_surface
from flame_prior.export_config import ReportFullViews
from flame_prior.fit import FitResult
from flame_prior.flame.assets import ModelInfo
from flame_prior.images import SkippedInput
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation
from flame_prior import render
from flame_prior.flame import shade_sh
from flame_prior.threads import parallel_map

__all__ = ["write_report", "render_preview", "render_previews", "draw_landmark_overlay", "draw_model_overlay",
           "full_size_views", "MAX_SIDE", "THUMB_SIDE"]

#: Long side of the pictures at most: the page shows them at most 620 px wide, and a picture drawn at
#: the render size needs no upsampling of the render (a 1024 px long side cost 2.5x the pixels).
MAX_SIDE = 640
#: JPEG quality of the report's pictures (previews: q 90 is visually lossless at a quarter of PNG's size).
JPEG_QUALITY = 90
#: Long side of a contact-sheet thumbnail, pixels (the page shows them ~210-320 px wide): the views' small
#: rasterization (:class:`~.view_render.SmallSurfaces`, shared with the texture bake) drawn as it is.
THUMB_SIDE = SMALL_SIDE
THUMB_QUALITY = 85
MIN_SIDE = 512
GREEN = (40, 220, 80)
RED = (240, 50, 50)
YELLOW = (255, 220, 0)
GREY = (170, 170, 170)  # landmarks judged occluded (hollow rings)
MESH_OPACITY = 0.55
ALIGNMENT_CAPTION = ("alignment check: untextured model at 50 %, its silhouette (white) and feature lines "
                     "(magenta: eyes, lips, nose, jaw); they should sit on the photo's")
#: Landmark error / eye-corner distance: below GOOD is green, below FAIR amber, else red.
GOOD, FAIR = 0.03, 0.06


def _scale_for(w: int, h: int) -> float:
    """Display scale: long side at most MAX_SIDE, small photos enlarged to MIN_SIDE (crisp marks)."""
    return min(MAX_SIDE / max(w, h), max(1.0, MIN_SIDE / max(w, h)))


def _resized(pixels: np.ndarray, s: float) -> Image.Image:
    """``pixels`` at scale ``s``: area averaging when shrinking (a tenth of Lanczos' time, no ringing;
    an integer factor first, then the rest), Lanczos when enlarging a small photo."""
    a = np.asarray(pixels, dtype=np.uint8)
    if s == 1.0:
        return Image.fromarray(a)
    size = (max(1, round(a.shape[1] * s)), max(1, round(a.shape[0] * s)))
    if s < 1.0:
        k = int(1.0 / s)  # an integer shrink first: OpenCV's fast area path (a third of the time for 1/4)
        if k >= 2:
            a = cv2.resize(a, (max(size[0], a.shape[1] // k), max(size[1], a.shape[0] // k)), interpolation=cv2.INTER_AREA)
        return Image.fromarray(cv2.resize(a, size, interpolation=cv2.INTER_AREA))
    return Image.fromarray(a).resize(size, Image.LANCZOS)


def _mask_outline(head: np.ndarray, size: tuple[int, int], thickness: int) -> np.ndarray:
    """Boolean ``(h, w)`` outline of the boolean head mask ``head`` at display size ``(w, h)``."""
    m = Image.fromarray(np.asarray(head, bool).view(np.uint8) * np.uint8(255)).resize(size, Image.NEAREST)
    b = np.asarray(m) > 127
    inner = b.copy()
    inner[1:] &= b[:-1]; inner[:-1] &= b[1:]; inner[:, 1:] &= b[:, :-1]; inner[:, :-1] &= b[:, 1:]  # noqa: E702
    edge = b & ~inner
    for _ in range(max(0, thickness - 1)):
        grown = edge.copy()
        grown[1:] |= edge[:-1]; grown[:-1] |= edge[1:]; grown[:, 1:] |= edge[:, :-1]; grown[:, :-1] |= edge[:, 1:]  # noqa: E702
        edge = grown
    return edge


def draw_landmark_overlay(obs: ViewObservation, view, s: float | None = None,
                          photo: Image.Image | None = None) -> Image.Image:
    """The photo with the mask outline (yellow), detected (green) and projected (red) landmarks;
    detections the fit judged occluded (``view.landmark_occluded``) as hollow grey rings.

    ``photo``: the photo already at display scale ``s`` (RGB), when the caller has it."""
    s = _scale_for(obs.image.width, obs.image.height) if s is None else s
    im = photo.copy() if photo is not None else _resized(obs.image.pixels, s).convert("RGB")
    r = max(2.0, max(im.size) / 300)
    edge = _mask_outline(obs.detection.head_mask, im.size, max(1, round(r / 2)))
    arr = np.asarray(im).copy()
    arr[edge] = YELLOW
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    det = np.asarray(view.landmarks_detected, dtype=np.float64) * s
    prj = np.asarray(view.landmarks_projected, dtype=np.float64) * s
    wgt = np.asarray(view.landmark_weight, dtype=np.float64).reshape(-1)
    occluded = getattr(view, "landmark_occluded", None)
    occluded = np.zeros(len(det), bool) if occluded is None else np.asarray(occluded, bool).reshape(-1)
    finite = np.isfinite(det).all(1) & np.isfinite(prj).all(1)
    for x, y in det[finite & occluded]:
        d.ellipse([x - r, y - r, x + r, y + r], outline=GREY, width=max(1, round(r / 2)))
    use = finite & (wgt > 0) & ~occluded
    for a, b in zip(det[use], prj[use]):
        d.line([tuple(a), tuple(b)], fill=(255, 255, 255), width=1)
    for x, y in det[use]:
        d.ellipse([x - r, y - r, x + r, y + r], fill=GREEN, outline=(0, 0, 0))
    for x, y in prj[use]:
        d.ellipse([x - r, y - r, x + r, y + r], fill=RED, outline=(0, 0, 0))
    return im


@torch.no_grad()
def render_preview(result: FitResult, i: int, size: tuple[int, int], max_side: int = 640,
                   mesh: ViewMesh | None = None, surface: ViewSurface | None = None) -> np.ndarray:
    """The fitted, textured, lit head over view ``i``: ``(h, w, 4)`` uint8 RGBA for ``size = (w, h)``
    (any scale of the view's pixel grid), rendered at most ``max_side`` pixels and resized up.
    ``mesh``: :meth:`~.view_render.ViewMesh.of` ``result``, when the caller renders several views;
    ``surface``: the view already rasterized at the render size with texture coordinates
    (:func:`~.view_render.view_surface`; the report's alignment picture of the view uses the same one)."""
    tex = torch.as_tensor(result.texture, dtype=torch.float32)
    W, H = size
    s = min(1.0, max_side / max(W, H))
    w, h = max(1, round(W * s)), max(1, round(H * s))
    sh = torch.as_tensor(result.lighting[min(i, len(result.lighting) - 1)], dtype=torch.float32)[None]
    if surface is None or surface.size != (w, h) or surface.uv is None:
        surface = view_surface(mesh or ViewMesh.of(result, feature_lines(result.vertices, result.faces)), i, (w, h))
    # Texture and light at the covered pixels only (render_head's shading; the background is transparent).
    n = len(surface.pixels)
    rgba = torch.zeros(h * w, 4)
    if n:
        albedo = render.texture(tex, surface.uv.reshape(1, 1, n, 2))
        rgba[surface.pixels] = torch.cat([shade_sh(albedo, surface.normals.reshape(1, 1, n, 3), sh)[0, 0].clamp(0, 1),
                                          torch.ones(n, 1)], -1)
    rgba = (rgba.reshape(h, w, 4).numpy() * 255).round().astype(np.uint8)
    return cv2.resize(rgba, (W, H), interpolation=cv2.INTER_LINEAR) if s < 1 else rgba


def render_previews(result: FitResult, max_side: int = 640) -> list[np.ndarray]:
    """:func:`render_preview` of every view in its original pixel grid: ``(H, W, 4)`` uint8 RGBA."""
    return [render_preview(result, i, (int(result.cameras.width[i]), int(result.cameras.height[i])), max_side)
            for i in range(len(result.cameras))]


def draw_model_overlay(obs: ViewObservation, render: np.ndarray, s: float | None = None,
                       photo: Image.Image | None = None) -> Image.Image:
    """The model over the photo: ``render`` ((H, W, 3) or (H, W, 4) uint8, in the original grid or
    already at display scale ``s``); ``photo``: the photo at display scale (RGB), when the caller has it."""
    s = _scale_for(obs.image.width, obs.image.height) if s is None else s
    photo = photo if photo is not None else _resized(obs.image.pixels, s).convert("RGB")
    base = np.asarray(photo, dtype=np.float32)
    r = np.asarray(render)
    display = (photo.height, photo.width)
    if r.shape[:2] not in ((obs.image.height, obs.image.width), display) or r.ndim != 3 or r.shape[2] not in (3, 4):
        raise ValueError(f"report: render of {obs.image.name} is {r.shape}, expected "
                         f"({obs.image.height}, {obs.image.width}, 3 or 4)")
    rs = np.asarray(r if r.shape[:2] == display else _resized(r.astype(np.uint8), s), dtype=np.float32)
    colour = rs[..., :3]
    alpha = (rs[..., 3] / 255.0 if r.shape[2] == 4 else np.ones(base.shape[:2], np.float32)) * MESH_OPACITY
    out = base * (1 - alpha[..., None]) + colour * alpha[..., None]
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


def full_size_views(result: FitResult, full_views: ReportFullViews = "flagged", worst_views: int = 4) -> list[int]:
    """Indices (ascending) of the views the report draws at full size: ``all``, ``none``, or
    ``flagged``: the cameras the trust rule flags and the ``worst_views`` largest landmark errors
    relative to the eye-corner distance (a view without a value counts as worst)."""
    n = len(result.views)
    if full_views == "all":
        return list(range(n))
    if full_views == "none":
        return []
    flagged = {i for i, vf in enumerate(result.views) if getattr(vf, "flags", None)}
    rel = np.array([float(vf.landmark_error_rel_eye) for vf in result.views], dtype=np.float64)
    rel = np.where(np.isfinite(rel), rel, np.inf)
    worst = np.argsort(-rel, kind="stable")[:max(0, int(worst_views))]
    return sorted(flagged | {int(i) for i in worst})


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt_s(sec: float) -> str:
    return f"{sec:.1f} s" if sec < 120 else f"{sec / 60:.1f} min"


def _status(rel: float) -> tuple[str, str]:
    if not np.isfinite(rel):
        return "bad", "no value"
    if rel < GOOD:
        return "good", "good"
    if rel < FAIR:
        return "fair", "fair"
    return "bad", "poor"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1f2328}
main{max-width:1320px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:0 0 8px}
.sub{color:#57606a;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(290px,1fr));gap:12px;margin-top:14px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 14px;font-size:13px}
.card dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 10px;margin:0}
.card dt{color:#57606a} .card dd{margin:0;word-break:break-all}
.big{font-size:26px;font-weight:600}
table{border-collapse:collapse;background:#fff;font-size:13px;width:100%}
th,td{border:1px solid #d0d7de;padding:5px 8px;text-align:left} th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#1a7f37;font-weight:600} .fair{color:#9a6700;font-weight:600} .bad{color:#cf222e;font-weight:600}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;margin:6px 0;font-size:13px}
.view{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px;margin:14px 0}
.pair{display:flex;flex-wrap:wrap;gap:10px} .pair a{flex:0 1 auto}
.pair img{display:block;max-width:min(100%,620px);max-height:540px;width:auto;height:auto;border-radius:4px}
.pair figcaption{font-size:12px;color:#57606a;margin-top:2px}
.legend span{display:inline-block;margin-right:14px;font-size:13px}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px;vertical-align:middle}
img.plot{max-width:100%;border:1px solid #d0d7de;border-radius:6px;background:#fff}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:8px}
.sheet figure{margin:0;background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:4px}
.sheet figure.flagged{border:2px solid #cf222e}
.sheet img{display:block;width:100%;height:auto;border-radius:3px}
.sheet figcaption{font-size:12px;color:#57606a;margin-top:2px}
ul{margin:4px 0 0 18px;padding:0}
"""


def write_report(out_dir: str | Path, views: list[ViewObservation], result: FitResult, intrinsics: Intrinsics,
                 skipped: list[SkippedInput], timings: dict, renders: list[np.ndarray] | None = None, *,
                 model: ModelInfo | None = None, full_views: ReportFullViews = "flagged", worst_views: int = 4,
                 texture: Callable[[], np.ndarray] | None = None, surfaces: SmallSurfaces | None = None) -> Path:
    """Write ``report.html`` and ``report/`` into ``out_dir`` (contents: module docstring).

    Args:
        out_dir: the output folder.
        views: observations of (at least) the fitted views.
        result: the fit.
        intrinsics: the initial intrinsics (source, COLMAP figures, notes).
        skipped: inputs left out, with reasons.
        timings: seconds per pipeline stage, e.g. ``{"images": 0.4, "observe": 3.1, ...}``.
        renders: one per fitted view in ``result.views`` order: ``(H, W, 3)`` or ``(H, W, 4)``
            uint8 in the original pixel grid; when None, :func:`render_previews` of ``result``.
        model: the model files the fit used (the Model card), when known.
        full_views, worst_views: the views drawn at full size (:func:`full_size_views`); every view
            gets a contact-sheet thumbnail.
        texture: returns the texture of the textured renders (in place of ``result.texture``) when it is
            still being computed beside the report (:func:`flame_prior.export.write_outputs` bakes it
            meanwhile); called, and waited for, once every picture that needs no texture is written,
            and only when a view is drawn at full size.
        surfaces: the views' small rasterizations (the thumbnails' size), when the caller shares them
            with other writers (:class:`~.view_render.SmallSurfaces` of ``result``'s mesh and feature lines).

    Returns:
        the path of ``report.html``.
    """
    out_dir = Path(out_dir)
    rep = out_dir / "report"
    rep.mkdir(parents=True, exist_ok=True)
    obs = ideal_views(views, result)  # the pixel grid the cameras and landmarks refer to
    if renders is not None and len(renders) != len(obs):
        raise ValueError(f"report: {len(renders)} renders for {len(obs)} fitted views")

    full = full_size_views(result, full_views, worst_views)
    full_set = set(full)
    thumb_size = {i: small_size(o.image.width, o.image.height) for i, o in enumerate(obs)}
    surfaces = surfaces or SmallSurfaces(ViewMesh.of(result, feature_lines(result.vertices, result.faces)))
    mesh = surfaces.mesh
    drawn: dict[int, tuple[Image.Image, ViewSurface]] = {}  # full views: the photo at display size, the rasterization

    def full_pictures(i: int) -> None:
        """View ``i``'s landmark and alignment pictures and its thumbnail, written; the photo at display
        size and the rasterization (at that size, with texture coordinates) are kept for its textured
        picture (:func:`model_picture`). Runs on a pool of threads."""
        o, vf = obs[i], result.views[i]
        s = _scale_for(o.image.width, o.image.height)
        photo = _resized(o.image.pixels, s).convert("RGB")
        draw_landmark_overlay(o, vf, s, photo=photo).save(rep / f"{vf.name}_landmarks.jpg", quality=JPEG_QUALITY)
        surface = view_surface(mesh, i, photo.size)  # the display size is at most alignment's RENDER_SIDE
        aim = alignment_overlay(o.image.pixels, result, i, s, base=photo, surface=surface, mesh=mesh)
        aim.save(rep / f"{vf.name}_alignment.jpg", quality=JPEG_QUALITY)
        _resized(np.asarray(aim), thumb_size[i][0] / aim.width).save(rep / f"{vf.name}_thumb.jpg", quality=THUMB_QUALITY)
        drawn[i] = photo, surface

    def thumbnail(i: int) -> None:
        """View ``i``'s contact-sheet thumbnail: its alignment check drawn on its small rasterization."""
        o, vf = obs[i], result.views[i]
        s = SMALL_SIDE / max(o.image.width, o.image.height)  # small_size's scale: the same (w, h)
        aim = alignment_overlay(o.image.pixels, result, i, s, base=_resized(o.image.pixels, s).convert("RGB"),
                                surface=surfaces(i), mesh=mesh)
        aim.save(rep / f"{vf.name}_thumb.jpg", quality=THUMB_QUALITY)

    # Everything that needs no texture first (the full views, the largest pieces, at the head of the queue;
    # the views the bake reads last, their small rasterization likely done by then), then the textured
    # pictures: the texture may still be being baked beside the report (``texture``).
    baked = set(spread_views(result, MAX_VIEWS))
    thumbs = [i for i in range(len(obs)) if i not in full_set]
    parallel_map(lambda i: full_pictures(i) if i in full_set else thumbnail(i),
                 full + [i for i in thumbs if i not in baked] + [i for i in thumbs if i in baked])
    textured = result if texture is None or renders is not None or not full else \
        dataclasses.replace(result, texture=texture())

    def model_picture(i: int) -> None:
        """View ``i``'s textured model over the photo, written."""
        o, vf = obs[i], result.views[i]
        photo, surface = drawn[i]
        render = renders[i] if renders is not None else render_preview(textured, i, photo.size, mesh=mesh, surface=surface)
        draw_model_overlay(o, render, _scale_for(o.image.width, o.image.height), photo=photo).save(
            rep / f"{vf.name}_model.jpg", quality=JPEG_QUALITY)

    parallel_map(model_picture, full)
    plot = write_loss_plot(result.stages, rep / "loss_curves.png")

    rows, blocks, cells = [], [], []
    model_caption = "rendered model over the photo"
    for i, (o, vf) in enumerate(zip(obs, result.views)):
        lm_name, md_name, al_name = f"{vf.name}_landmarks.jpg", f"{vf.name}_model.jpg", f"{vf.name}_alignment.jpg"
        eye = float(vf.eye_distance_px)
        rel = vf.landmark_error_rel_eye
        cls, word = _status(rel)
        flags = list(getattr(vf, "flags", []))
        if flags:  # the trust rule (flame_prior.camera_trust) overrides the landmark-error rating
            cls, word = "bad", "flagged: " + "; ".join(flags)
        sigma = float(getattr(vf, "rotation_sigma_deg", float("nan")))
        sigma_source = getattr(vf, "uncertainty_source", "landmarks")
        fx = float(result.cameras.fx[i])
        fy = float(result.cameras.fy[i])
        n_used = int((np.asarray(vf.landmark_weight) > 0).sum())
        anchor = f"view-{vf.name}" if i in full_set else f"thumb-{vf.name}"
        rows.append(
            f"<tr><td class='num'>{i + 1}</td><td><a href='#{_esc(anchor)}'>{_esc(vf.name)}</a></td>"
            f"<td class='num'>{o.image.width}&times;{o.image.height}</td>"
            f"<td class='num'>{fx:.1f}" + (f" / {fy:.1f}" if abs(fx - fy) > 1e-6 * fx else "") + "</td>"
            f"<td class='num'>{n_used}</td>"
            f"<td class='num'>{vf.landmark_error_px:.2f}</td><td class='num'>{eye:.1f}</td>"
            f"<td class='num'>{100 * rel:.2f}%</td><td class='num'>{sigma:.2f}&deg; ({_esc(sigma_source)})</td>"
            f"<td class='{cls}'>{_esc(word)}</td></tr>")
        thumb = f"report/{vf.name}_thumb.jpg"
        cells.append(
            f"<figure id='thumb-{_esc(vf.name)}' class='{'flagged' if flags else ''}'>"
            f"<a href='{_esc('#view-' + vf.name if i in full_set else thumb)}'><img src='{_esc(thumb)}' "
            f"alt='alignment {_esc(vf.name)}' loading='lazy'></a><figcaption>{i + 1}. {_esc(vf.name)} &middot; "
            f"<span class='{cls}'>{100 * rel:.1f}%</span>{' &middot; flagged' if flags else ''}"
            + (f" &middot; <a href='#view-{_esc(vf.name)}'>full size</a>" if i in full_set else "") +
            f"</figcaption></figure>")
        if i not in full_set:
            continue
        notes = "".join(f"<div class='warn'>{_esc(n)}</div>" for n in o.notes)
        blocks.append(
            f"<div class='view' id='view-{_esc(vf.name)}'><h3>{i + 1}. {_esc(vf.name)} "
            f"<span class='sub'>&mdash; landmark error {vf.landmark_error_px:.2f} px "
            f"(<span class='{cls}'>{100 * rel:.2f}%</span> of the eye-corner distance), "
            f"{_esc(o.image.path)}</span></h3>{notes}"
            f"<div class='pair'><figure style='margin:0'><a href='report/{_esc(lm_name)}'><img src='report/{_esc(lm_name)}' "
            f"alt='landmarks {_esc(vf.name)}'></a><figcaption>landmarks and head mask</figcaption></figure>"
            f"<figure style='margin:0'><a href='report/{_esc(md_name)}'><img src='report/{_esc(md_name)}' "
            f"alt='model {_esc(vf.name)}'></a><figcaption>{model_caption}</figcaption></figure>"
            f"<figure style='margin:0'><a href='report/{_esc(al_name)}'><img src='report/{_esc(al_name)}' "
            f"alt='alignment {_esc(vf.name)}'></a><figcaption>{ALIGNMENT_CAPTION}</figcaption></figure></div></div>")

    if full_views == "all":
        which = "every view"
    elif full_views == "none":
        which = "none (<code>--export.report-full-views none</code>)"
    else:
        which = (f"the flagged cameras and the {int(worst_views)} worst by landmark error: {len(full)} of {len(obs)} "
                 "(<code>--export.report-full-views all</code> draws every view)")
    full_note = f"<p class='sub'>Views at full size: {which}.</p>"

    # ---- summary cards
    n_fit = len(result.views)
    errs = np.array([vf.landmark_error_px for vf in result.views], dtype=np.float64)
    rels = np.array([vf.landmark_error_rel_eye for vf in result.views])
    skipped_html = ("<ul>" + "".join(f"<li><b>{_esc(Path(sk.path).name)}</b>: {_esc(sk.reason)}</li>" for sk in skipped)
                    + "</ul>") if skipped else "<span class='sub'>none</span>"
    views_card = (f"<div class='card'><h3>Views</h3><div class='big'>{n_fit} fitted</div>"
                  f"<div class='sub'>{len(skipped)} left out</div>"
                  + (f"<dl><dt>median error</dt><dd>{np.nanmedian(errs):.2f} px "
                     f"({100 * np.nanmedian(rels):.2f}% of eye distance)</dd>"
                     f"<dt>worst view</dt><dd>{_esc(result.views[int(np.nanargmax(rels))].name)} "
                     f"({100 * np.nanmax(rels):.2f}%)</dd></dl>" if n_fit and np.isfinite(rels).any() else "")
                  + f"<div style='margin-top:6px'><b>Left out</b>{skipped_html}</div></div>")

    col = intrinsics.colmap or {}
    colmap_rows = "".join(f"<dt>COLMAP {_esc(k.replace('_', ' '))}</dt><dd>{_esc(_short(v))}</dd>" for k, v in col.items()
                          if not isinstance(v, dict))  # nested figures (the estimated lens) are among the notes
    intr_notes = "".join(f"<li>{_esc(n)}</li>" for n in intrinsics.notes)
    fxs = result.cameras.fx.detach().cpu().double().numpy()
    intr_card = (f"<div class='card'><h3>Intrinsics</h3><dl><dt>initial estimate</dt>"
                 f"<dd><b>{_esc(intrinsics.source)}</b></dd>"
                 f"<dt>in the fit</dt><dd>{_esc(result.intrinsics_source)}"
                 f"{' (focal refined)' if intrinsics.optimise_focal else ' (focal held fixed)'}</dd>"
                 f"<dt>initial focal</dt><dd>{_range(np.asarray(intrinsics.fx, dtype=float))} px</dd>"
                 f"<dt>fitted focal</dt><dd>{_range(fxs)} px</dd>"
                 + (f"<dt>lens (undone for the fit)</dt><dd>k1 {_lens_range(result.cameras.distortion)}</dd>"
                    if result.cameras.distortion is not None else "")
                 + (colmap_rows or "<dt>COLMAP</dt><dd>not used / did not register</dd>")
                 + "</dl>" + (f"<ul>{intr_notes}</ul>" if intr_notes else "") + "</div>")

    mi = model.as_dict() if model is not None else {}
    lacks = mi.get("notes") or []
    lacks = [lacks] if isinstance(lacks, str) else list(lacks)
    model_card = ("<div class='card'><h3>Model</h3><dl>"
                  f"<dt>file</dt><dd>{_esc(mi.get('path', 'unknown'))}</dd>"
                  f"<dt>sha256</dt><dd>{_esc(str(mi.get('sha256', 'unknown'))[:16])}&hellip;</dd>"
                  f"<dt>shape / expr</dt><dd>{_esc(mi.get('n_shape', len(np.ravel(result.flame.get('shape', [])))))} / "
                  f"{_esc(mi.get('n_expr', len(np.ravel(result.flame.get('expression', [])))))} components</dd>"
                  f"<dt>texture</dt><dd>{'texture space' if result.texture_coeffs is not None else 'per-texel albedo / none'}</dd>"
                  "</dl>" + ("<div style='margin-top:6px'><b>Lacks / notes</b><ul>"
                             + "".join(f"<li>{_esc(n)}</li>" for n in lacks) + "</ul></div>" if lacks else "")
                  + "</div>")

    # The pipeline's steps; a step's parts ("fit.rigid", ...) are listed from the stage logs below
    # and "total" is the run's own clock, so neither is added in again.
    steps = {k: float(v) for k, v in timings.items() if "." not in k and k != "total"}
    t_rows = "".join(f"<tr><td>{_esc(k)}</td><td class='num'>{_fmt_s(v)}</td></tr>" for k, v in steps.items())
    total = float(timings["total"]) if "total" in timings else sum(steps.values())
    st_rows = "".join(
        f"<tr><td>fit: {_esc(s.name)}</td><td class='num'>{_fmt_s(float(s.seconds))} "
        f"<span class='sub'>({s.iterations} it)</span></td></tr>" for s in result.stages)
    time_card = ("<div class='card'><h3>Time</h3><table>" + t_rows
                 + (f"<tr><th>total</th><th class='num'>{_fmt_s(total)}</th></tr>" if timings else "")
                 + st_rows + "</table></div>")

    notes_html = "".join(f"<div class='warn'>{_esc(n)}</div>" for n in result.notes)
    legend = ("<div class='legend'><span><i class='dot' style='background:rgb(40,220,80)'></i>detected landmarks</span>"
              "<span><i class='dot' style='background:rgb(240,50,50)'></i>model landmarks (projected)</span>"
              "<span><i class='dot' style='border:2px solid rgb(170,170,170)'></i>detected, judged occluded (not fitted)</span>"
              "<span><i class='dot' style='background:rgb(255,220,0)'></i>head mask outline</span>"
              "<span><i class='dot' style='background:rgb(150,185,255)'></i>"
              "rendered model</span></div>")
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flame-prior report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><main>
<h1>flame-prior report</h1>
<div class="sub">flame-prior {_esc(flame_prior_version())} &middot; {now} &middot; cameras in FLAME's frame (metres, +Y up)</div>
{notes_html}
<div class="cards">{views_card}{intr_card}{model_card}{time_card}</div>
<h2>Contact sheet</h2>
<p class="sub">Every view, {ALIGNMENT_CAPTION}. Caption: landmark error / eye-corner distance;
flagged cameras outlined in red.</p>
{"<div class='sheet'>" + "".join(cells) + "</div>" if cells else "<p class='sub'>no views</p>"}
<h2>Loss per stage</h2>
{"<img class='plot' src='report/loss_curves.png' alt='loss curves'>" if plot else "<p class='sub'>no loss history</p>"}
<h2>Per view</h2>
<p class="sub">Landmark error: median over the landmarks used, in pixels and as a fraction of the fitted model's
outer-eye-corner distance in that view (<span class="good">good</span> &lt; {100 * GOOD:.0f}%,
<span class="fair">fair</span> &lt; {100 * FAIR:.0f}%, else <span class="bad">poor</span>). Rotation &plusmn;: the
camera's rotation uncertainty (one standard deviation from the landmark residuals). A camera is
<span class="bad">flagged</span>, whatever its landmark error, when that uncertainty exceeds 0.45&deg;, the head is
turned more than 60&deg; (landmarks biased), the face spans under 25 px between the eye corners, or the error
exceeds 6% (rule: flame_prior/camera_trust.py).</p>
<table id="per-view"><thead><tr><th>#</th><th>view</th><th>size</th><th>focal px</th><th>landmarks</th>
<th>error px</th><th>eye dist px</th><th>error / eye dist</th><th>rotation &plusmn;</th><th>status</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<h2>Views at full size</h2>
{full_note}
{legend if blocks else ""}
{''.join(blocks)}
</main></body></html>
"""
    path = out_dir / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, np.ndarray)) and len(v) > 6:
        return f"[{len(v)} values]"
    return str(v)


def _lens_range(distortion) -> str:
    """The k1 values of the cameras' lenses ``(N, 5)``, e.g. ``-0.25`` or ``-0.3 to -0.1``."""
    k1 = np.asarray(distortion[:, 0].detach().cpu().double().numpy())
    return f"{k1.min():.3g}" if np.ptp(k1) < 1e-9 else f"{k1.min():.3g} to {k1.max():.3g}"


def _range(a: np.ndarray) -> str:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return "&ndash;"
    lo, hi = a.min(), a.max()
    return f"{lo:.1f}" if hi - lo < 0.05 else f"{lo:.1f}&ndash;{hi:.1f}"
