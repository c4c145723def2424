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
from flame_prior.flame.synthetic import (build_test_landmark_embedding, build_test_model, build_test_texture_space,
                                         build_test_uv_layout, write_flame_pkl, write_flame_texture_npz)

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
