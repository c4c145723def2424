"""A small synthetic fit for the export tests: an ellipsoid head with a UV seam, cameras around it.

``make_fit()`` returns ``(views, result, intrinsics)``; everything is known exactly, so every writer's
output can be checked against the cameras that produced it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flame_prior.detectors import Detection
from flame_prior.fit import FitResult, StageLog, ViewFit
from flame_prior.flame.assets import ModelInfo
from flame_prior.geometry import PinholeCameras, axis_angle_to_rotation_matrix, project_points
from flame_prior.images import InputImage, SkippedInput
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation

#: The model record the fixtures' exports name.
MODEL = ModelInfo(path="/models/flame2023_open_subset.npz", sha256="ab" * 32, n_shape=60, n_expr=0,
                  notes=["no expression space", "no texture space"])


def uv_ellipsoid(n_lat: int = 12, n_lon: int = 18, radii=(0.075, 0.1, 0.09), centre=(0.0, 0.02, 0.0)):
    """Closed ellipsoid, outward-facing triangles, with a longitude seam in UV space.

    Returns vertices (V,3), faces (F,3), uvs (T,2), uv_faces (F,3); T > V because the seam column of
    texture coordinates is duplicated (u = 0 and u = 1), so ``uv_faces`` differs from ``faces``.
    """
    rx, ry, rz = radii
    verts = [(0.0, ry, 0.0)]  # north pole
    for i in range(1, n_lat):
        th = np.pi * i / n_lat
        for j in range(n_lon):
            ph = 2 * np.pi * j / n_lon
            verts.append((rx * np.sin(th) * np.sin(ph), ry * np.cos(th), rz * np.sin(th) * np.cos(ph)))
    verts.append((0.0, -ry, 0.0))  # south pole
    V = np.asarray(verts) + np.asarray(centre)
    south = len(verts) - 1
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731

    uvs = [(0.5, 1.0), (0.5, 0.0)]  # poles
    uv_index = {}
    for i in range(1, n_lat):
        for j in range(n_lon + 1):
            uv_index[(i, j)] = len(uvs)
            uvs.append((j / n_lon, 1.0 - i / n_lat))
    faces, uv_faces = [], []
    for j in range(n_lon):
        faces.append((0, ring(1, j), ring(1, j + 1)))
        uv_faces.append((0, uv_index[(1, j)], uv_index[(1, j + 1)]))
        faces.append((south, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)))
        uv_faces.append((1, uv_index[(n_lat - 1, j + 1)], uv_index[(n_lat - 1, j)]))
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            ta, tb, tc, td = uv_index[(i, j)], uv_index[(i, j + 1)], uv_index[(i + 1, j)], uv_index[(i + 1, j + 1)]
            faces += [(a, c, b), (b, c, d)]
            uv_faces += [(ta, tc, tb), (tb, tc, td)]
    F = np.asarray(faces, dtype=np.int64)
    # Make the winding outward (normal . (centroid - centre) > 0).
    tri = V[F]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = (n * (tri.mean(1) - np.asarray(centre))).sum(1) < 0
    UF = np.asarray(uv_faces, dtype=np.int64)
    F[inward] = F[inward][:, [0, 2, 1]]
    UF[inward] = UF[inward][:, [0, 2, 1]]
    return V, F, np.asarray(uvs, dtype=np.float64), UF


def look_at_w2c(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world-to-camera (R, t) of a camera at ``eye`` looking at ``target`` (y down in the image)."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    return R, -R @ eye


# (width, height, fx, fy, cx, cy, yaw deg, pitch deg) per view; view 2 has an off-centre principal
# point (integer 2cx), view 3 a fractional one.
VIEW_SPECS = [
    (320, 240, 500.0, 500.0, 160.0, 120.0, 0.0, 0.0),
    (300, 400, 620.0, 620.0, 150.0, 200.0, 35.0, 5.0),
    (256, 256, 450.0, 450.0, 140.5, 120.0, -30.0, -8.0),
    (288, 224, 480.0, 480.0, 150.3, 105.7, 60.0, 10.0),
]


def make_fit(specs=VIEW_SPECS, n_landmarks: int = 68, seed: int = 0, image_dir: Path | None = None):
    rng = np.random.default_rng(seed)
    V, F, UV, UF = uv_ellipsoid()
    Rs, ts = [], []
    for (_, _, _, _, _, _, yaw, pitch) in specs:
        d = 0.9
        yw, pt = np.deg2rad(yaw), np.deg2rad(pitch)
        eye = np.array([d * np.sin(yw) * np.cos(pt), d * np.sin(pt), d * np.cos(yw) * np.cos(pt)])
        R, t = look_at_w2c(eye, np.array([0.0, 0.02, 0.0]))
        Rs.append(R)
        ts.append(t)
    # A small roll on each camera so no axis is trivially aligned.
    roll = axis_angle_to_rotation_matrix(torch.tensor([[0.0, 0.0, 0.05 * (k + 1)] for k in range(len(specs))],
                                                      dtype=torch.float64)).numpy()
    Rs = [rl @ R for rl, R in zip(roll, Rs)]
    ts = [rl @ t for rl, t in zip(roll, ts)]
    t64 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64)  # noqa: E731
    cams = PinholeCameras(
        R=t64(np.stack(Rs)), t=t64(np.stack(ts)),
        fx=t64([s[2] for s in specs]), fy=t64([s[3] for s in specs]),
        cx=t64([s[4] for s in specs]), cy=t64([s[5] for s in specs]),
        width=[s[0] for s in specs], height=[s[1] for s in specs])

    lmk_idx = rng.choice(len(V), n_landmarks, replace=False)
    uv_all, _ = project_points(t64(V), cams)
    uv_all = uv_all.numpy()
    views, fits = [], []
    for k, (w, h, *_rest) in enumerate(specs):
        name = f"view_{k:02d}"
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w] + 0.5
        c = uv_all[k].mean(0)
        r = 0.5 * np.ptp(uv_all[k], axis=0).max()
        mask = (((xx - c[0]) ** 2 + (yy - c[1]) ** 2) < r ** 2).astype(np.float32)
        path = (image_dir or Path("/nonexistent")) / f"{name}.jpg"
        img = InputImage(path=path, name=name, pixels=pixels, sha256="0" * 64)
        proj = uv_all[k][lmk_idx]
        det = proj + rng.normal(0, 1.0, proj.shape)
        views.append(ViewObservation(image=img, detection=Detection(
            landmarks=det.astype(np.float32), confidence=np.ones(n_landmarks, np.float32), landmark_format="ibug68",
            mask=mask, face_box=(0.0, 0.0, float(w), float(h)))))
        err = float(np.median(np.linalg.norm(det - proj, axis=1)))
        fits.append(ViewFit(name=name, landmarks_detected=det, landmarks_projected=proj,
                            landmark_weight=np.ones(n_landmarks), landmark_error_px=err,
                            eye_distance_px=float(np.linalg.norm(proj[0] - proj[1])) + 40.0))
    tex = np.zeros((64, 96, 3), np.float32)
    tex[..., 0] = np.linspace(0, 1, 96)[None, :]
    tex[..., 1] = np.linspace(1, 0, 64)[:, None]
    tex[..., 2] = 0.5
    n = len(specs)
    stages = [
        StageLog("rigid", 50, 0.8, list(np.geomspace(100, 3, 50)), np.full(n, 4.0)),
        StageLog("shape", 120, 2.5, list(np.geomspace(3, 0.9, 120)), np.full(n, 1.2)),
    ]
    result = FitResult(
        cameras=cams,
        flame={"shape": rng.normal(0, 1, 60), "expression": np.zeros(0), "rotation": np.array([0.05, -0.1, 0.02]),
               "neck_pose": np.zeros(3), "jaw_pose": np.array([0.1, 0, 0]), "eye_pose": np.zeros(6),
               "translation": np.array([0.001, 0.02, -0.01])},
        vertices=V, faces=F, uvs=UV, uv_faces=UF, texture=tex, texture_coeffs=None,
        lighting=rng.normal(0, 0.1, (n, 9, 3)), views=fits, stages=stages,
        intrinsics_source="exif")
    intr = Intrinsics(fx=np.array([s[2] for s in specs]), fy=np.array([s[3] for s in specs]),
                      cx=np.array([s[4] for s in specs]), cy=np.array([s[5] for s in specs]),
                      source="exif", optimise_focal=True,
                      colmap={"registered": 3, "mean_reprojection_error_px": 0.61, "points": 1234},
                      notes=["EXIF focal length on 4 of 4 images"])
    skipped = [SkippedInput(Path("/photos/blurry.jpg"), "no face detected"),
               SkippedInput(Path("/photos/notes.txt"), "not an image")]
    return views, result, intr, skipped
