"""The FLAME head model as a thin ``torch.nn.Module`` over :mod:`flame_prior.flame.lbs`.

:class:`FlameModel` owns the model arrays as buffers (so ``.to(device)`` / ``.double()`` move
them); the parameters live in a :class:`FlameParams` that the fitter owns. Pose convention
(FLAME's): full pose = ``[rotation (root joint), neck_pose, jaw_pose, eye_pose[:3] (left eye,
+X), eye_pose[3:] (right eye, -X)]``, axis-angle in radians, each local to its parent joint.
``translation`` is added after skinning, so with only a global rotation ``R``:
``vertices = R (v - J_0) + J_0 + translation`` (``J_0`` the root joint of the shaped template).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from flame_prior.flame.io import N_JOINTS, FlameModelData
from flame_prior.flame.lbs import lbs
from flame_prior.geometry import axis_angle_to_rotation_matrix, check_shape

__all__ = ["FlameParams", "FlameOutput", "FlameModel"]


@dataclass
class FlameParams:
    """FLAME parameters for a batch of ``B`` heads (tensors on one device, one dtype).

    Attributes:
        shape: ``(B, n_shape)`` identity coefficients.
        expression: ``(B, n_expr)`` expression coefficients (``n_expr`` may be 0).
        rotation: ``(B, 3)`` global rotation about the root joint, axis-angle (radians).
        neck_pose: ``(B, 3)`` neck rotation, axis-angle.
        jaw_pose: ``(B, 3)`` jaw rotation, axis-angle.
        eye_pose: ``(B, 6)`` left eye (+X) then right eye (-X), axis-angle.
        translation: ``(B, 3)`` metres, added after skinning.
    """

    shape: Tensor
    expression: Tensor
    rotation: Tensor
    neck_pose: Tensor
    jaw_pose: Tensor
    eye_pose: Tensor
    translation: Tensor

    @classmethod
    def zeros(cls, batch: int, n_shape: int, n_expr: int, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> "FlameParams":
        """Neutral parameters: mean shape, no expression, rest pose, no translation."""
        z = lambda n: torch.zeros(batch, n, dtype=dtype, device=device)  # noqa: E731
        return cls(z(n_shape), z(n_expr), z(3), z(3), z(3), z(6), z(3))

    @property
    def batch_size(self) -> int:
        return int(self.rotation.shape[0])

    def full_pose(self) -> Tensor:
        """``(B, 5, 3)`` axis-angle per joint in FLAME's order (root, neck, jaw, left eye, right eye)."""
        eyes = self.eye_pose.reshape(-1, 2, 3)
        return torch.cat([self.rotation[:, None], self.neck_pose[:, None], self.jaw_pose[:, None], eyes], dim=1)

    def check(self, n_shape: int, n_expr: int) -> None:
        """Raise ``ValueError`` unless every field has the shape documented above."""
        B = self.batch_size
        want = {"shape": n_shape, "expression": n_expr, "rotation": 3, "neck_pose": 3, "jaw_pose": 3,
                "eye_pose": 6, "translation": 3}
        for f in fields(self):
            check_shape(getattr(self, f.name), [B, want[f.name]], f"FlameParams.{f.name}")


@dataclass
class FlameOutput:
    """Result of :meth:`FlameModel.forward`.

    Attributes:
        vertices: ``(B, V, 3)`` posed vertices (or ``(B, M, 3)`` for a ``vertex_index`` subset), metres.
        joints: ``(B, J, 3)`` posed joints, translation included.
    """

    vertices: Tensor
    joints: Tensor


class FlameModel(torch.nn.Module):
    """FLAME as a module: buffers for the model arrays, parameters passed to :meth:`forward`.

    Buffers: ``v_template (V,3)``, ``shapedirs (V,3,n_shape+n_expr)`` (identity then expression),
    ``posedirs (V,3,36)``, ``J_regressor (J,V)``, ``lbs_weights (V,J)``, ``J_template (J,3)``,
    ``J_shapedirs (J,3,n_shape+n_expr)``, ``parents (J,)`` and ``faces (F,3)`` (long).
    """

    def __init__(self, data: FlameModelData, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.data = data
        self.n_shape = data.n_shape
        self.n_expr = data.n_expr
        self._parents = [int(p) for p in data.parents]
        if len(self._parents) != N_JOINTS:
            raise ValueError(f"FLAME has {N_JOINTS} joints, model data has {len(self._parents)}")
        f64 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
        dirs = torch.cat([f64(data.shapedirs), f64(data.exprdirs)], dim=-1)
        J_reg = f64(data.J_regressor)
        # Joints are linear in the coefficients: precompute them once (in float64) so that a
        # vertex subset needs no full-mesh pass.
        J_template = J_reg @ f64(data.v_template)
        J_shapedirs = torch.einsum("jv,vck->jck", J_reg, dirs)
        for name, value in (("v_template", f64(data.v_template)), ("shapedirs", dirs),
                            ("posedirs", f64(data.posedirs)), ("J_regressor", J_reg),
                            ("lbs_weights", f64(data.weights)), ("J_template", J_template),
                            ("J_shapedirs", J_shapedirs)):
            self.register_buffer(name, value.to(dtype).contiguous())
        self.register_buffer("parents", torch.as_tensor(data.parents, dtype=torch.long))
        self.register_buffer("faces", torch.as_tensor(data.faces, dtype=torch.long))

    def _vertex_subset(self, vertex_index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The rows ``vertex_index`` of ``v_template, shapedirs, posedirs, lbs_weights``, gathered once per
        index tensor: a fit evaluates the same landmark subset hundreds of times, and gathering the
        blend shapes anew (about 0.3 M numbers) was a quarter of a landmark-only evaluation. Recomputed
        when the index tensor, its contents (version counter) or the buffers (``.to()``) change."""
        buffers = (self.v_template, self.shapedirs, self.posedirs, self.lbs_weights)
        cached = self.__dict__.get("_subset_cache")
        if (cached is None or cached[0] is not vertex_index or cached[1] != vertex_index._version
                or any(a is not b for a, b in zip(cached[2], buffers))):
            idx = vertex_index.to(device=self.v_template.device, dtype=torch.long)
            cached = (vertex_index, vertex_index._version, buffers, tuple(buf[idx] for buf in buffers))
            self.__dict__["_subset_cache"] = cached
        return cached[3]

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    def forward(self, params: FlameParams, vertex_index: Tensor | None = None) -> FlameOutput:
        """Posed vertices and joints.

        Args:
            params: batch of ``B`` parameter sets (model's dtype and device).
            vertex_index: optional ``(M,)`` long vertex ids; then only those vertices are computed
                (blend shapes, correctives and skinning restricted to them: O(M) work), equal to
                ``forward(params).vertices[:, vertex_index]``.

        Returns:
            :class:`FlameOutput` with ``vertices (B, V or M, 3)`` and ``joints (B, J, 3)``.
        """
        params.check(self.n_shape, self.n_expr)
        betas = torch.cat([params.shape, params.expression], dim=1)
        rot_mats = axis_angle_to_rotation_matrix(params.full_pose())  # (B, 5, 3, 3)
        v_template, shapedirs, posedirs, weights = self.v_template, self.shapedirs, self.posedirs, self.lbs_weights
        if vertex_index is not None:
            check_shape(vertex_index, ["M"], "vertex_index")
            v_template, shapedirs, posedirs, weights = self._vertex_subset(vertex_index)
        verts, joints = lbs(betas, rot_mats, v_template, shapedirs, posedirs, weights, self._parents,
                            self.J_template, self.J_shapedirs)
        t = params.translation[:, None, :]
        return FlameOutput(vertices=verts + t, joints=joints + t)
