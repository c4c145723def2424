"""Real photographs end to end, with the default model and embedding (no flag beyond --data):
the shared 30-view scene (real MediaPipe, real pycolmap) and one FFHQ image; every output file is
read back by its real reader. Thresholds are measured values with a margin, stated per test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flame_prior import render
from flame_prior.config import FitConfig
from flame_prior.flame import head_yaw_deg, landmarks_from_vertices, load_deca_embedding
from flame_prior.geometry import PinholeCameras, project_points
from flame_prior.flame.assets import default_model_path
from flame_prior.pipeline import run

pytestmark = pytest.mark.slow


def _read_cameras(out: Path) -> PinholeCameras:
    with np.load(out / "flame_params.npz", allow_pickle=False) as z:
        return PinholeCameras.from_numpy({k: z[k] for k in ("R", "t", "fx", "fy", "cx", "cy", "width", "height")},
                                         dtype=torch.float64)


def _read_mesh(out: Path) -> np.ndarray:
    """The OBJ's own vertex list (trimesh re-indexes vertices that carry several UVs)."""
    import trimesh

    mesh = trimesh.load(out / "mesh.obj", process=False, force="mesh")
    v = np.array([[float(x) for x in line.split()[1:4]] for line in (out / "mesh.obj").read_text().splitlines()
                  if line.startswith("v ")])
    assert len(mesh.faces) == 9976 and np.allclose(mesh.bounds, [v.min(0), v.max(0)], atol=1e-6)
    return v


@pytest.fixture(scope="module")
def multiview(tmp_path_factory):
    from conftest import shared_path

    images = shared_path("data/multiview/2-346/images")
    out = tmp_path_factory.mktemp("mv") / "out"
    run(FitConfig(data=images, output_dir=out))
    return images, out


def test_multiview_every_view_gets_a_camera(multiview):
    images, out = multiview
    tf = json.loads((out / "transforms.json").read_text())
    assert len(tf["frames"]) == 30 == len(list(images.glob("*.jpg")))
    for fr in tf["frames"]:
        assert (out / fr["file_path"]).exists() and (out / fr["mask_path"]).exists()
        c2w = np.asarray(fr["transform_matrix"])
        assert np.isfinite(c2w).all() and abs(np.linalg.det(c2w[:3, :3]) - 1) < 1e-6


def test_multiview_landmark_error(multiview):
    """Median projected-landmark error over views; measured 5.0 px = 1.4% of the outer-eye-corner
    distance (~340 px) on these 1040x1392 photos (the photometric stage trusts the image over the
    detector's yaw-dependent bias: 4.0 px without it, but cameras further from COLMAP's); bounds
    6.5 px and 2%."""
    _, out = multiview
    summary = json.loads((out / "fit_summary.json").read_text())
    px = np.array([v["landmark_error_px"] for v in summary["cameras"]])
    rel = np.array([v["landmark_error_px"] / v["eye_distance_px"] for v in summary["cameras"]])
    assert len(px) == 30
    assert np.median(px) < 6.5, px
    assert np.median(rel) < 0.02, rel
    assert rel.max() < 0.04, rel


def test_multiview_rotations_agree_with_colmap(multiview):
    """Issue 12: the cameras COLMAP registered follow its relative poses, brought into FLAME's frame
    (flame_prior.fit.multiview), and the photometric stage leaves them there. Fitted rotations vs
    COLMAP's own after one change of world frame (scale and translation don't affect rotations).
    Measured: median 0.005 deg, max 0.03 (float32); the landmark cameras alone (--fitter.no-multiview)
    were 1.1 deg median and 4.3 max, the largest at the most turned views, where MediaPipe's landmarks
    are least reliable. Bounds 0.2 (issue 12's target) and 0.5: the prior-only path fails both."""
    from flame_prior.intrinsics import IntrinsicsConfig, rotation_residuals_deg
    from flame_prior.intrinsics import cached_run_colmap
    from flame_prior.images import load_images
    from flame_prior.detectors import DetectConfig
    from flame_prior.observe import observe

    images, out = multiview
    summary = json.loads((out / "fit_summary.json").read_text())
    stage = next(s for s in summary["stages"] if s["name"] == "multiview")
    assert stage["scene_kind"] == "turning-head"  # a fixed camera: told from the static background
    assert stage["used"] == stage["registered"] == 30 and not stage["rejected"], stage
    views, _ = observe(load_images(images)[0], DetectConfig(), progress=False)
    colmap = cached_run_colmap(views, IntrinsicsConfig(), scene_kind="turning-head")  # the run's own, cached
    assert colmap.registered.all()
    cams = _read_cameras(out)
    res = rotation_residuals_deg(colmap.w2c, cams.R.numpy())
    assert np.median(res) < 0.2, res
    assert res.max() < 0.5, res
    # What the joint solution changed: the landmark cameras were degrees away.
    assert stage["rotation_change_deg"]["median"] > 0.5, stage
    assert summary["intrinsics_source"] == "colmap"
    assert abs(float(cams.fx[0]) - colmap.focal_px) / colmap.focal_px < 1e-6  # COLMAP's focal is used as is


def test_multiview_outputs_read_back(multiview):
    import pycolmap

    _, out = multiview
    rec = pycolmap.Reconstruction(str(out / "colmap_text"))
    assert rec.num_reg_images() == 30
    cams = _read_cameras(out)
    for image in rec.images.values():
        i = int(np.flatnonzero(np.asarray([Path(n).stem for n in _view_names(out)]) == Path(image.name).stem)[0])
        R = np.asarray(image.cam_from_world().rotation.matrix())
        assert np.allclose(R, cams.R[i].numpy(), atol=1e-6)
    verts = _read_mesh(out)
    assert verts.shape == (5023, 3)
    html = (out / "report.html").read_text()
    assert html.count("<tr") >= 30


def _view_names(out: Path) -> list[str]:
    with np.load(out / "flame_params.npz", allow_pickle=False) as z:
        return [str(n) for n in z["view_names"]]


# ------------------------------------------------------------------------------------------
# Single view: one FFHQ image


FFHQ_IMAGES = ("00000", "00001", "00002", "00003", "00004")


@pytest.fixture(scope="module")
def ffhq_runs(tmp_path_factory):
    """Each of the five shared FFHQ photos fitted on its own (one head per photo)."""
    from conftest import shared_path

    deca = shared_path("flame-assets/landmark_embedding.npy")
    runs = {}
    for stem in FFHQ_IMAGES:
        src = shared_path(f"data/singleview/ffhq/{stem}.png")
        folder = tmp_path_factory.mktemp(f"ffhq{stem}")
        shutil.copy(src, folder / src.name)
        out = folder / "out"
        run(FitConfig(data=folder / src.name, output_dir=out))
        runs[stem] = (src, out)
    return deca, runs


@pytest.fixture(scope="module")
def ffhq(ffhq_runs):
    deca, runs = ffhq_runs
    src, out = runs["00000"]
    return src, deca, out


def _fitted_68(out: Path, deca_path: Path) -> np.ndarray:
    """The fitted mesh's 68 DECA landmarks projected into the photo, ``(68, 2)`` pixels."""
    cams = _read_cameras(out)
    verts = torch.as_tensor(_read_mesh(out))[None]
    faces = torch.as_tensor(np.load(default_model_path())["f"].astype(np.int64))
    deca = load_deca_embedding(deca_path)
    lm3 = landmarks_from_vertices(verts, faces, deca, head_yaw_deg(cams.R))
    uv, _ = project_points(lm3, cams)
    return uv[0].numpy()


def _detected_68(src: Path) -> np.ndarray:
    """MediaPipe's own detections on the photo, as iBUG-68 points (the benchmark's fixed table)."""
    import sys

    from flame_prior.detectors import DetectConfig
    from flame_prior.images import load_images
    from flame_prior.observe import observe

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from baseline_schedule import MP_TO_IBUG68

    (view,), _ = observe(load_images(src)[0], DetectConfig(), progress=False)
    return view.detection.landmarks[MP_TO_IBUG68].astype(np.float64)


def _nme(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-point error over the reference's outer-eye-corner distance."""
    return np.linalg.norm(pred - ref, axis=1) / np.linalg.norm(ref[36] - ref[45])


def test_ffhq_projected_68_landmarks_nme(ffhq_runs):
    """NME of the fitted mesh's 68 DECA landmarks, projected, against the FAN reference, normalised
    by the reference's outer-eye-corner distance, on all five shared FFHQ photos: the median over
    the photos is below the median of MediaPipe's own detections scored the same way (on 00000:
    fit 0.039, detections 0.049), and the 51 inner points stay below 0.06 on every photo."""
    deca, runs = ffhq_runs
    fit, det, inner = [], [], []
    for stem, (src, out) in runs.items():
        ref = np.load(src.with_name(src.stem + "_lmk68.npy"))
        err = _nme(_fitted_68(out, deca), ref)
        fit.append(err.mean())
        inner.append(err[17:].mean())
        det.append(_nme(_detected_68(src), ref).mean())
    report = {"fit": np.round(fit, 4).tolist(), "detector": np.round(det, 4).tolist(), "inner": np.round(inner, 4).tolist()}
    assert len(fit) == 5
    assert np.median(fit) < np.median(det), report
    assert max(inner) < 0.06, report


def test_ffhq_face_region_iou(ffhq):
    """IoU of the rendered face region (FLAME triangles inside the face oval of the embedding, in
    front of the ears) with the face-parsing skin mask. Measured 0.90; bound 0.8."""
    src, _, out = ffhq
    skin = np.load(src.with_name(src.stem + "_skinmask.npy"))
    skin = skin / max(float(skin.max()), 1e-9) > 0.5  # the shared masks hold 0..15
    cams = _read_cameras(out).to(dtype=torch.float32)
    verts = torch.as_tensor(_read_mesh(out), dtype=torch.float32)[None]
    with np.load(default_model_path()) as z:
        faces_np, template = z["f"].astype(np.int64), z["v_template"]
    region = _face_region_faces(template, faces_np)
    faces = torch.as_tensor(faces_np)
    W, H = cams.width[0], cams.height[0]
    pc = verts @ cams.R[0].T + cams.t[0]
    pos = render.pinhole_to_clip(pc, cams.fx, cams.fy, cams.cx, cams.cy, W, H)
    rast = render.rasterize(pos, faces, (H, W))
    tri = rast[0, ..., 3].long() - 1
    rendered = (tri >= 0) & torch.as_tensor(region)[tri.clamp_min(0)]
    rendered = rendered.numpy()
    iou = (rendered & skin).sum() / (rendered | skin).sum()
    assert iou > 0.8, iou


def _face_region_faces(template: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Triangles of the face: inside the face oval of flame-prior's embedding seen from the front,
    and in front of the oval's deepest point (so no ears, scalp or neck)."""
    from matplotlib.path import Path as Polygon

    from flame_prior.flame.assets import default_embedding_path

    with np.load(default_embedding_path()) as z:
        fidx, bary, w = z["lmk_face_idx"], z["lmk_b_coords"], z["weights"]
    pts = (template[faces[fidx]] * bary[..., None]).sum(1)
    oval = pts[w < 0.5]
    centre = oval[:, :2].mean(0)
    order = np.argsort(np.arctan2(oval[:, 1] - centre[1], oval[:, 0] - centre[0]))
    poly = Polygon(oval[order, :2])
    c = template[faces].mean(1)
    return poly.contains_points(c[:, :2]) & (c[:, 2] > oval[:, 2].min())
