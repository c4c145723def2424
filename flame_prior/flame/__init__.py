"""The FLAME head model: safe file loading, linear blend skinning, landmarks, appearance, test models.

Stages: :mod:`.io` (model files, no pickled code runs) -> :mod:`.lbs` (pure skinning math) ->
:mod:`.model` (``FlameModel`` module) -> :mod:`.landmarks` (barycentric embeddings, yaw contour) and
:mod:`.appearance` (UV texture spaces, SH shading); :mod:`.synthetic` builds FLAME-format test data.
"""

from flame_prior.flame.appearance import (TextureSpace, load_bfm_albedo, load_flame_texture_space, read_obj,
                                          read_obj_uv_layout, sh_basis, shade_sh)
from flame_prior.flame.io import FlameModelData, load_flame_model, safe_unpickle
from flame_prior.flame.landmarks import (LandmarkEmbedding, check_embedding, head_yaw_deg, landmarks_from_vertices,
                                         load_deca_embedding, load_landmark_embedding, load_mediapipe_embedding,
                                         load_ringnet_embedding)
from flame_prior.flame.lbs import batch_rigid_transform, blend_shapes, lbs, pose_correctives, vertices2joints
from flame_prior.flame.model import FlameModel, FlameOutput, FlameParams

__all__ = [
    "FlameModelData", "load_flame_model", "safe_unpickle",
    "blend_shapes", "vertices2joints", "batch_rigid_transform", "pose_correctives", "lbs",
    "FlameParams", "FlameOutput", "FlameModel",
    "LandmarkEmbedding", "landmarks_from_vertices", "head_yaw_deg", "check_embedding", "load_deca_embedding",
    "load_ringnet_embedding", "load_mediapipe_embedding", "load_landmark_embedding",
    "TextureSpace", "read_obj", "read_obj_uv_layout", "load_flame_texture_space", "load_bfm_albedo", "sh_basis",
    "shade_sh",
    "build_test_model", "build_test_landmark_embedding", "build_test_uv_layout", "build_test_texture_space",
    "write_flame_texture_npz", "write_flame_pkl",
]

#: The names :mod:`.synthetic` provides, imported on first use (PEP 562): it needs scipy.optimize, which a
#: fit of real files never uses (a third of a second of a single-image run's start-up).
_SYNTHETIC = frozenset({"build_test_model", "build_test_landmark_embedding", "build_test_uv_layout",
                        "build_test_texture_space", "write_flame_texture_npz", "write_flame_pkl"})


def __getattr__(name: str):
    if name in _SYNTHETIC:
        from flame_prior.flame import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
