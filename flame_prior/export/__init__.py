"""Pipeline step 5 — exports: every file the fit produces, in one folder.

Public entry: :func:`write_outputs`. Layout of ``out_dir`` (each writer documents its format):

=============================  ===============================================================
``transforms.json``            nerfstudio: cameras (OpenGL c2w, FLAME frame) — :mod:`.nerfstudio`
``images/``, ``masks/``        the upright photos (the input files, or PNG) and binary head masks
``flame_points.ply``           fitted FLAME vertices, the seed point cloud for splatfacto
``flame_params.npz``           FLAME parameters + cameras (no pickles) — :mod:`.flame_params`
``fit_summary.json``           the same plus model identity, conventions, errors, stage logs
``colmap_text/``               COLMAP text model (world-to-camera, OpenCV) — :mod:`.colmap`
``mesh.obj/.mtl``, ``texture.png``  the textured fitted mesh — :mod:`.mesh`
``avatar/``                    FLAME-avatar data set (GaussianAvatars / VHAP), when asked — :mod:`.avatar`
``report.html``, ``report/``   the HTML report — :mod:`.report`
=============================  ===============================================================

:mod:`.output_dir` makes all of it appear at once (a temporary folder renamed when complete).

Conventions throughout: world = FLAME's model frame in metres (+Y up, +Z out of the face), pixel
coordinates with the origin at the image's top-left corner (pixel centres at +0.5); see
``docs/conventions.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from flame_prior.export._common import ideal_views
from flame_prior.export.alignment import feature_lines
from flame_prior.export.avatar import write_avatar_dataset
from flame_prior.export.colmap import write_colmap_text
from flame_prior.export.flame_params import write_flame_params
from flame_prior.export.mesh import write_textured_mesh
from flame_prior.export.nerfstudio import write_images_and_masks, write_transforms
from flame_prior.export.report import write_report
from flame_prior.export.texture_bake import bake_texture
from flame_prior.export.view_render import SmallSurfaces, ViewMesh
from flame_prior.export_config import ExportConfig
from flame_prior.fit import FitResult
from flame_prior.flame.assets import ModelInfo
from flame_prior.images import SkippedInput
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation
from flame_prior.threads import torch_threads

__all__ = [
    "write_outputs",
    "write_transforms",
    "write_images_and_masks",
    "write_flame_params",
    "write_colmap_text",
    "write_textured_mesh",
    "write_avatar_dataset",
    "write_report",
    "AVATAR_SUBDIR",
    "COLMAP_SUBDIR",
]

AVATAR_SUBDIR = "avatar"
COLMAP_SUBDIR = "colmap_text"


@contextlib.contextmanager
def _opencv_threads(threads: int):
    """OpenCV's own thread count inside the block (restored afterwards). The export's pool is the
    parallelism; OpenCV's pthreads pool beside it only adds waiting threads (measured on the shared
    30-view scene, 2 loaded cores: 6.3-7.3 s of CPU with one OpenCV thread, 6.7-8.0 s with its default)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def write_outputs(out_dir: str | Path, views: list[ViewObservation], intrinsics: Intrinsics, result: FitResult,
                  skipped: list[SkippedInput], timings: dict, *, model: ModelInfo, avatar_format: bool,
                  renders: list[np.ndarray] | None = None, export: ExportConfig | None = None,
                  bake: bool = False) -> None:
    """Write every export of ``result`` into ``out_dir`` (created if missing; layout: module docstring).

    The caller owns atomicity (write into a temporary folder, then rename).

    The writers run at the same time on a pool of threads (their work, PNG/JPEG coding, numpy and torch,
    releases the GIL; torch at one thread inside each), each starting as soon as what it needs is there:
    the texture (``bake``) beside the photos, masks, parameters and the report's thumbnails; the mesh,
    point cloud and the report's textured views once the texture is done.

    Args:
        out_dir: the output folder.
        views: observations of (at least) the fitted views; matched to ``result.views`` by name.
        intrinsics: the initial intrinsics, for the report.
        result: the fit.
        skipped: inputs left out, with reasons (report).
        timings: seconds per pipeline stage (report).
        model: the model files the fit used (``fit_summary.json``, the avatar metadata, the report).
        avatar_format: also write the FLAME-avatar data set under ``avatar/``.
        renders: per-view renders for the report (default: :func:`~.report.render_previews`).
        export: the report's options (default: :class:`~flame_prior.export_config.ExportConfig`'s).
        bake: replace ``result.texture`` by the photos projected onto the mesh
            (:func:`~.texture_bake.bake_texture`) in ``texture.png``, the point colours and the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    export = export or ExportConfig()
    with torch_threads(1), _opencv_threads(1), ThreadPoolExecutor(max_workers=8, thread_name_prefix="flame-prior-export") as pool:
        # Each view rasterized once at thumbnail size, for the bake's visibility test and the thumbnails.
        surfaces = SmallSurfaces(ViewMesh.of(result, feature_lines(result.vertices, result.faces)))
        # Waiting jobs hold a thread each but no core: 8 threads for at most 7 jobs, none can starve.
        baked = pool.submit(bake_texture, result, ideal_views(views, result), surfaces=surfaces) if bake else None
        final = (lambda: dataclasses.replace(result, texture=baked.result())) if baked else (lambda: result)  # noqa: E731
        paths = pool.submit(write_images_and_masks, out, views, result)
        jobs = [paths, pool.submit(write_flame_params, out, result, model, skipped),
                pool.submit(lambda: write_colmap_text(out / COLMAP_SUBDIR, result,
                                                      [Path(image).name for image, _ in paths.result()])),
                pool.submit(lambda: write_transforms(out, views, final(), paths.result())),
                pool.submit(lambda: write_textured_mesh(out, final()))]
        if avatar_format:
            jobs.append(pool.submit(write_avatar_dataset, out / AVATAR_SUBDIR, views, result, model=model))
        write_report(out, views, result, intrinsics, skipped, timings, renders=renders, model=model,
                     full_views=export.report_full_views, worst_views=export.report_worst_views,
                     texture=(lambda: baked.result()) if baked else None, surfaces=surfaces)
        for job in jobs:
            job.result()
