"""Rotations, pinhole cameras and frame conversions: plain, batched, typed tensor functions.

Conventions (the single page is ``docs/conventions.md``; every function here follows it):

* **World frame** = FLAME's own model frame, metres: +X to the subject's left, +Y up,
  +Z out of the face (towards a camera that sees the face frontally).
* **Camera frame inside flame-prior** = OpenCV: +X right, +Y down, +Z forward (viewing direction).
  A camera is stored world-to-camera, ``x_cam = R @ x_world + t``.
* **Pixels**: continuous image coordinates with the origin at the top-left *corner* of the
  top-left pixel, x to the right, y down; the centre of pixel (column i, row j) is at
  (i + 0.5, j + 0.5). This is COLMAP's and nerfstudio's convention, so ``cx, cy`` export unchanged
  (``cx = W / 2`` for a centred principal point).
* **Exports** use OpenGL camera axes (+X right, +Y up, +Z backwards) for camera-to-world
  matrices (nerfstudio, GaussianAvatars/VHAP): see :func:`opencv_w2c_to_opengl_c2w`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from flame_prior.shapes import check_shape

__all__ = [
    "check_shape",
    "axis_angle_to_rotation_matrix",
    "rotation_matrix_to_axis_angle",
    "rotation_matrix_to_quaternion",
    "PinholeCameras",
    "project_points",
    "opencv_w2c_to_opengl_c2w",
    "opengl_c2w_to_opencv_w2c",
    "rotation_angle_deg",
    "look_at_w2c",
]


def axis_angle_to_rotation_matrix(axis_angle: Tensor, eps: float = 1e-8) -> Tensor:
    """Rodrigues' formula: axis-angle vectors (radians) to rotation matrices.

    Args:
        axis_angle: ``(*, 3)``, direction = axis, norm = angle in radians (right-handed).
        eps: below this angle the first-order expansion ``I + [w]x`` is used, which keeps the
            gradient exact at zero (the closed form is 0/0 there).

    Returns:
        ``(*, 3, 3)`` rotation matrices, same dtype and device.
    """
    check_shape(axis_angle, ["*", 3], "axis_angle")
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)  # (*, 1)
    small = theta2 < eps
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(theta2_safe)
    # sin(t)/t and (1-cos(t))/t^2 with Taylor series near zero.
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def rotation_matrix_to_quaternion(R: Tensor) -> Tensor:
    """Rotation matrices ``(*, 3, 3)`` to unit quaternions ``(*, 4)`` ``(w, x, y, z)`` (Hamilton), ``w >= 0``.

    Shepperd's method: the largest of the four candidates ``4 q_k^2`` is the divisor, which keeps
    it stable at 0 and near pi.
    """
    check_shape(R, ["*", 3, 3], "R")
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        [1 + tr, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
         1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]],
        dim=-1,
    )
    idx = cands.argmax(-1)
    s = torch.sqrt(cands.gather(-1, idx[..., None]).clamp_min(1e-12))[..., 0] * 2  # 4 * |q_k|
    qw = torch.stack([s / 4, (m[..., 2, 1] - m[..., 1, 2]) / s, (m[..., 0, 2] - m[..., 2, 0]) / s,
                      (m[..., 1, 0] - m[..., 0, 1]) / s], -1)
    qx = torch.stack([(m[..., 2, 1] - m[..., 1, 2]) / s, s / 4, (m[..., 0, 1] + m[..., 1, 0]) / s,
                      (m[..., 0, 2] + m[..., 2, 0]) / s], -1)
    qy = torch.stack([(m[..., 0, 2] - m[..., 2, 0]) / s, (m[..., 0, 1] + m[..., 1, 0]) / s, s / 4,
                      (m[..., 1, 2] + m[..., 2, 1]) / s], -1)
    qz = torch.stack([(m[..., 1, 0] - m[..., 0, 1]) / s, (m[..., 0, 2] + m[..., 2, 0]) / s,
                      (m[..., 1, 2] + m[..., 2, 1]) / s, s / 4], -1)
    q = torch.stack([qw, qx, qy, qz], -2).gather(-2, idx[..., None, None].expand(*idx.shape, 1, 4))[..., 0, :]
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)  # w >= 0 -> angle in [0, pi]
    return q / q.norm(dim=-1, keepdim=True)


def rotation_matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Rotation matrices ``(*, 3, 3)`` to axis-angle ``(*, 3)`` (radians, angle in [0, pi]).

    Goes through unit quaternions (:func:`rotation_matrix_to_quaternion`), stable at 0 and near pi.
    """
    q = rotation_matrix_to_quaternion(R)
    vec = q[..., 1:]
    sin_half = vec.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    scale = torch.where(sin_half > 1e-8, angle / sin_half.clamp_min(1e-12), 2.0 / q[..., :1].clamp_min(1e-12))
    return vec * scale


def rotation_angle_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Geodesic angle in degrees between rotations ``(*, 3, 3)`` and ``(*, 3, 3)``."""
    rel = R_a.transpose(-1, -2) @ R_b
    cos = ((rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2] - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


@dataclass
class PinholeCameras:
    """N pinhole cameras, OpenCV axes, world-to-camera (see module docstring).

    Attributes:
        R: ``(N, 3, 3)`` world-to-camera rotation.
        t: ``(N, 3)`` world-to-camera translation, metres (``x_cam = R x + t``).
        fx, fy: ``(N,)`` focal lengths in pixels.
        cx, cy: ``(N,)`` principal point, continuous pixel coordinates (corner origin).
        width, height: per-view image size in pixels (views may differ in size).
        distortion: ``(N, 5)`` the lens of each view's photo, OpenCV ``k1, k2, p1, p2, k3``
            (:mod:`flame_prior.distortion`), or None (no distortion). Projection here is pinhole:
            the fit and the renderer see each view's ideal pinhole image; the lens is carried for
            the writers (transforms.json, COLMAP) that pair the cameras with the photos as taken.
    """

    R: Tensor
    t: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: list[int] = field(default_factory=list)
    height: list[int] = field(default_factory=list)
    distortion: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.R.shape[0]
        check_shape(self.R, [n, 3, 3], "PinholeCameras.R")
        check_shape(self.t, [n, 3], "PinholeCameras.t")
        for name in ("fx", "fy", "cx", "cy"):
            check_shape(getattr(self, name), [n], f"PinholeCameras.{name}")
        if self.distortion is not None:
            check_shape(self.distortion, [n, 5], "PinholeCameras.distortion")
        if len(self.width) != n or len(self.height) != n:
            raise ValueError(f"PinholeCameras: need {n} widths and heights, got {len(self.width)}, {len(self.height)}")

    def __len__(self) -> int:
        return int(self.R.shape[0])

    @property
    def K(self) -> Tensor:
        """``(N, 3, 3)`` intrinsic matrices."""
        n = len(self)
        K = torch.zeros(n, 3, 3, dtype=self.R.dtype, device=self.R.device)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = self.fx, self.fy, self.cx, self.cy, 1.0
        return K

    def world_to_camera(self) -> Tensor:
        """``(N, 4, 4)`` world-to-camera matrices (OpenCV axes)."""
        n = len(self)
        M = torch.zeros(n, 4, 4, dtype=self.R.dtype, device=self.R.device)
        M[:, :3, :3], M[:, :3, 3], M[:, 3, 3] = self.R, self.t, 1.0
        return M

    def camera_centers(self) -> Tensor:
        """``(N, 3)`` camera centres in the world frame, ``-R^T t``."""
        return -(self.R.transpose(1, 2) @ self.t[..., None])[..., 0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PinholeCameras":
        conv = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
        return PinholeCameras(conv(self.R), conv(self.t), conv(self.fx), conv(self.fy), conv(self.cx), conv(self.cy),
                              list(self.width), list(self.height),
                              None if self.distortion is None else conv(self.distortion))

    def detach(self) -> "PinholeCameras":
        return PinholeCameras(self.R.detach(), self.t.detach(), self.fx.detach(), self.fy.detach(),
                              self.cx.detach(), self.cy.detach(), list(self.width), list(self.height),
                              None if self.distortion is None else self.distortion.detach())

    def subset(self, index: list[int] | Tensor) -> "PinholeCameras":
        """The cameras at ``index``, in that order (gradients flow through the indexing)."""
        index = [int(i) for i in index]
        idx = torch.as_tensor(index, dtype=torch.long, device=self.R.device)
        return PinholeCameras(self.R[idx], self.t[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx],
                              [self.width[i] for i in index], [self.height[i] for i in index],
                              None if self.distortion is None else self.distortion[idx])

    def scaled(self, sx: float | Tensor, sy: float | Tensor | None = None) -> "PinholeCameras":
        """The same cameras seeing their images resized by ``sx`` horizontally and ``sy`` (default
        ``sx``) vertically: floats, or ``(N,)`` per view.

        With corner-origin pixels a resize scales coordinates exactly, so ``fx, cx`` scale by
        ``sx`` and ``fy, cy`` by ``sy``; the pose is unchanged; sizes round to whole pixels. The
        distortion acts on normalised coordinates, so it is unchanged too.
        """
        sy = sx if sy is None else sy
        per_view = lambda s: [float(v) for v in s.reshape(-1)] if isinstance(s, Tensor) else [float(s)] * len(self)  # noqa: E731
        ws = [max(1, round(w * s)) for w, s in zip(self.width, per_view(sx))]
        hs = [max(1, round(h * s)) for h, s in zip(self.height, per_view(sy))]
        return PinholeCameras(self.R, self.t, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, ws, hs,
                              self.distortion)

    def cropped(self, box: Tensor) -> "PinholeCameras":
        """The same cameras seeing a crop of their images.

        Args:
            box: ``(N, 4)`` per view ``x0, y0, width, height`` of the crop in pixels (corner
                origin; may reach outside the image).

        Returns:
            Cameras whose pixel grid is the crop's: the principal point moves by ``-(x0, y0)``,
            focal lengths and pose are unchanged; sizes round to whole pixels.
        """
        check_shape(box, [len(self), 4], "box")
        ws = [max(1, round(float(w))) for w in box[:, 2]]
        hs = [max(1, round(float(h))) for h in box[:, 3]]
        return PinholeCameras(self.R, self.t, self.fx, self.fy, self.cx - box[:, 0], self.cy - box[:, 1], ws, hs,
                              self.distortion)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Plain arrays (float64) for writers: R, t, fx, fy, cx, cy, width, height, distortion
        (``(N, 5)``, zeros when None)."""
        out = {k: getattr(self, k).detach().cpu().double().numpy() for k in ("R", "t", "fx", "fy", "cx", "cy")}
        out["width"] = np.asarray(self.width, dtype=np.int64)
        out["height"] = np.asarray(self.height, dtype=np.int64)
        out["distortion"] = (np.zeros((len(self), 5)) if self.distortion is None
                             else self.distortion.detach().cpu().double().numpy())
        return out

    @staticmethod
    def from_numpy(d: dict[str, np.ndarray], dtype: torch.dtype = torch.float32) -> "PinholeCameras":
        t = lambda k: torch.as_tensor(np.asarray(d[k]), dtype=dtype)  # noqa: E731
        dist = d.get("distortion")
        return PinholeCameras(t("R"), t("t"), t("fx"), t("fy"), t("cx"), t("cy"),
                              [int(w) for w in d["width"]], [int(h) for h in d["height"]],
                              None if dist is None or not np.any(np.asarray(dist)) else t("distortion"))


def look_at_w2c(position: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world-to-camera ``(R (3, 3), t (3,))`` of a camera at ``position`` looking at
    ``target`` with the world's +Y up (FLAME's) in the image, then rolled by ``roll_deg`` about its
    viewing axis."""
    z = np.asarray(target, dtype=np.float64) - np.asarray(position, dtype=np.float64)
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ R
    return R, -R @ np.asarray(position, dtype=np.float64)


def world_to_camera_points(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """World points into camera frames.

    Args:
        points: ``(N, P, 3)`` or ``(P, 3)`` (shared by all views), world frame.
        R: ``(N, 3, 3)``; t: ``(N, 3)``.

    Returns:
        ``(N, P, 3)`` camera-frame points (OpenCV axes).
    """
    if points.dim() == 2:
        points = points[None].expand(R.shape[0], -1, -1)
    return points @ R.transpose(1, 2) + t[:, None, :]


def project_points(points: Tensor, cameras: PinholeCameras) -> tuple[Tensor, Tensor]:
    """Perspective projection of world points to pixels.

    Args:
        points: ``(N, P, 3)`` or ``(P, 3)`` world points.
        cameras: N cameras.

    Returns:
        ``uv`` ``(N, P, 2)`` continuous pixel coordinates (corner origin, y down) and
        ``depth`` ``(N, P)`` camera-frame z in metres (positive in front of the camera).
    """
    pc = world_to_camera_points(points, cameras.R, cameras.t)
    z = pc[..., 2]
    z_safe = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
    u = cameras.fx[:, None] * pc[..., 0] / z_safe + cameras.cx[:, None]
    v = cameras.fy[:, None] * pc[..., 1] / z_safe + cameras.cy[:, None]
    return torch.stack([u, v], -1), z


# OpenCV camera axes (x right, y down, z forward) -> OpenGL camera axes (x right, y up, z back).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def opencv_w2c_to_opengl_c2w(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera ``(N,3,3), (N,3)`` to OpenGL camera-to-world ``(N,4,4)``.

    The world frame is unchanged (FLAME's); only the camera's own axes flip y and z:
    ``c2w_gl = [[R^T diag(1,-1,-1), -R^T t], [0, 1]]``.
    """
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    n = R.shape[0]
    c2w = np.zeros((n, 4, 4))
    Rt = np.transpose(R, (0, 2, 1))
    c2w[:, :3, :3] = Rt @ _CV_TO_GL
    c2w[:, :3, 3] = -(Rt @ t[..., None])[..., 0]
    c2w[:, 3, 3] = 1.0
    return c2w


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`opencv_w2c_to_opengl_c2w`: ``(N,4,4)`` (or ``(N,3,4)``) to ``R, t``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    Rc = c2w[:, :3, :3] @ _CV_TO_GL  # camera-to-world rotation with OpenCV camera axes
    R = np.transpose(Rc, (0, 2, 1))
    t = -(R @ c2w[:, :3, 3][..., None])[..., 0]
    return R, t
