"""The model files a fit needs — FLAME, landmark embedding, texture space, UV layout — found
(bundled defaults, paths), loaded, checked against each other, and described once
(:class:`ModelInfo`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from flame_prior.errors import ModelFileError
from flame_prior.flame.appearance import (TextureSpace, load_bfm_albedo, load_flame_texture_space,
                                          read_obj_uv_layout)
from flame_prior.flame.io import MODEL_HINT, FlameModelData, load_flame_model
from flame_prior.flame.landmarks import LandmarkEmbedding, check_embedding, load_landmark_embedding
from flame_prior.flame.model import FlameModel
from flame_prior.flame.uv_unwrap import cylindrical_uv_layout

__all__ = ["ModelInfo", "Assets", "load_assets", "load_texture_space", "with_iris_landmarks", "default_model_path",
           "default_embedding_path", "model_notes"]



def default_model_path() -> Path:
    """The bundled FLAME 2023 Open subset (CC BY 4.0)."""
    return Path(str(resources.files("flame_prior") / "data" / "flame2023_open_subset.npz"))


def default_embedding_path() -> Path:
    """flame-prior's own 468-point MediaPipe embedding (derived from Apache-2.0 data)."""
    return Path(str(resources.files("flame_prior") / "data" / "mediapipe468_embedding.npz"))


@dataclass
class ModelInfo:
    """Which model files a fit used: written to ``fit_summary.json`` (``model``), the avatar data
    set's metadata and the report, and printed in the summary."""

    path: str
    """The FLAME file, as the user gave it."""
    sha256: str
    """That file's SHA-256 (hex)."""
    name: str = ""
    n_shape: int = 0
    n_expr: int = 0
    default: bool = False
    """True for the bundled FLAME 2023 Open subset."""
    notes: list[str] = field(default_factory=list)
    """What the user should know about the model (no expression space, ...)."""
    loading_notes: list[str] = field(default_factory=list)
    """The loader's technical decisions (``fit_summary.json`` only)."""
    embedding: str = ""
    embedding_points: int = 0
    texture_space: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Assets:
    """Model files, loaded and checked against each other."""

    model: FlameModel
    embedding: LandmarkEmbedding
    texture_space: TextureSpace | None
    uv_layout: tuple[np.ndarray, np.ndarray] | None
    info: ModelInfo


def load_assets(flame_model: Path | None, landmark_embedding: Path | None, texture_space: Path | None,
                uv_layout: Path | None, device: torch.device, dtype: torch.dtype = torch.float32) -> Assets:
    """Load the FLAME model, landmark embedding, texture space and UV layout (None: the default;
    ``FitConfig.resolved_paths()`` gives these four after the environment variables)."""
    paths = {"flame_model": flame_model, "landmark_embedding": landmark_embedding, "texture_space": texture_space,
             "uv_layout": uv_layout}
    model_path = paths["flame_model"] or default_model_path()
    if not Path(model_path).exists():
        raise ModelFileError("FLAME model file not found.", model_path, hint=MODEL_HINT)
    data: FlameModelData = load_flame_model(model_path)
    emb_path = paths["landmark_embedding"] or default_embedding_path()
    if not Path(emb_path).exists():
        raise ModelFileError("landmark embedding not found.", emb_path,
                             hint="Pass --landmark-embedding or set FLAME_PRIOR_EMBEDDING.")
    embedding = load_landmark_embedding(emb_path)
    check_embedding(embedding, len(data.faces), emb_path)
    embedding = with_iris_landmarks(embedding, data.faces, emb_path)
    texture_space = None  # the loaded space from here on (the path stays in paths)
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
    info = ModelInfo(
        path=str(model_path), sha256=data.sha256, name=data.name, n_shape=int(data.n_shape), n_expr=int(data.n_expr),
        default=is_default, notes=model_notes(is_default, data.n_expr), loading_notes=list(data.notes), embedding=str(emb_path), embedding_points=int(len(embedding.face_idx)),
        texture_space=None if texture_space is None else str(paths["texture_space"]))
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
