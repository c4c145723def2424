"""The ``flame-face`` dataparser: nerfstudio's ``nerfstudio-data`` reader, kept in FLAME's frame.

Registered through the entry-point group ``nerfstudio.dataparser_configs`` as ``flame-face``
(``flame_face_dataparser``, a ``DataParserSpecification``)::

    ns-train nerfacto --data <output-dir> flame-face

It reads the folder ``ns-process-data flame-face`` (or ``flame-prior fit``) writes, format in
:mod:`flame_prior.export.nerfstudio`, by subclassing nerfstudio's ``Nerfstudio`` parser:

* **Frame kept.** Defaults ``orientation_method="none"``, ``center_method="none"``,
  ``auto_scale_poses=False``, ``scale_factor=1``: the cameras nerfstudio trains with are the
  ``transform_matrix`` values of ``transforms.json`` as they are (OpenGL camera axes, world = FLAME's
  frame, metres, +Y up), and ``dataparser_transforms.json`` is the identity. The same flags on plain
  ``nerfstudio-data`` (``--orientation-method none --center-method none --auto-scale-poses False``)
  load the same cameras.
* **Scene box.** ``scene_scale`` (default 0.3) is the half-size in metres of the axis-aligned box
  centred at FLAME's origin: the head is about 0.25 m across around the origin, so a +/-0.3 m box holds
  head, hair and neck. The cameras (0.5-3 m away) lie outside it; nerfacto contracts space outside the
  box and its near/far collider starts rays at the camera, so nothing is clipped.
* **Masks.** Each frame's ``mask_path`` (head = 255) is used: nerfstudio samples rays and computes
  losses only inside the head mask.
* **Downscaled images.** ``--downscale-factor N`` (also ``ns-render dataset --downscale-factor N``)
  reads ``images_N/`` and ``masks_N/``, which the parser writes from the full-size files on first use.
* **FLAME parameters** go into ``DataparserOutputs.metadata``: ``flame_params`` (every array of
  ``flame_params.npz``, loaded without pickles), ``flame_param_path`` and ``flame_view_index``
  (``(n_split_images,)`` int64: for each image of this split, its row in the per-view arrays
  ``R, t, fx, ..., view_names``; nerfstudio sorts frames by file name and splits them, so the order
  differs from the file's).

Viewer: nerfstudio's viewer orbits about +Z, FLAME's up is +Y. The data stays in FLAME's frame (no
``applied_transform``); to orbit upright, turn the view until the head is upright and click
**Reset Up Direction** in the viewer's control panel (it makes the camera's current up the orbit axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Type

import numpy as np
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.io import load_from_json

__all__ = ["FlameFaceDataParserConfig", "FlameFace", "flame_face_dataparser", "load_flame_params", "write_downscaled"]


def load_flame_params(path: Path) -> dict[str, np.ndarray]:
    """Every array of a ``flame_params.npz`` (keys in :mod:`flame_prior.export.flame_params`), no pickles."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@dataclass
class FlameFaceDataParserConfig(NerfstudioDataParserConfig):
    """A flame-prior dataset (transforms.json + flame_params.npz), cameras kept in FLAME's frame."""

    _target: Type = field(default_factory=lambda: FlameFace)
    """target class to instantiate"""
    scene_scale: float = 0.3
    """Half-size in metres of the scene box around FLAME's origin (the head is about 0.25 m across)."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "none"
    """Re-orientation of the poses; "none" keeps FLAME's frame (+Y up)."""
    center_method: Literal["poses", "focus", "none"] = "none"
    """Re-centring of the poses; "none" keeps FLAME's origin (the head) at the origin."""
    auto_scale_poses: bool = False
    """Rescale poses into a +/-1 box; False keeps metres."""


@dataclass
class FlameFace(Nerfstudio):
    """nerfstudio's ``Nerfstudio`` reader plus the FLAME fit in ``metadata``."""

    config: FlameFaceDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train") -> DataparserOutputs:
        outputs = super()._generate_dataparser_outputs(split)
        transforms = self.config.data if self.config.data.suffix == ".json" else self.config.data / "transforms.json"
        meta = load_from_json(transforms)
        rel = meta.get("flame_param_path")
        if not rel:
            raise ValueError(f"{transforms}: no 'flame_param_path' key; not a flame-prior dataset "
                             "(read it with the nerfstudio-data dataparser instead).")
        path = transforms.parent / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; transforms.json names it as flame_param_path.")
        params = load_flame_params(path)
        rows = {str(name): i for i, name in enumerate(params.get("view_names", []))}
        try:
            view_index = np.array([rows[Path(f).stem] for f in outputs.image_filenames], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"{path}: view {e.args[0]!r} of transforms.json is not in view_names") from None
        outputs.metadata.update({"flame_params": params, "flame_param_path": path, "flame_view_index": view_index})
        return outputs

    def _get_fname(self, filepath: Path, data_dir: Path, downsample_folder_prefix: str = "images_") -> Path:
        """nerfstudio's ``images_<N>/`` (and ``masks_<N>/``) for ``--downscale-factor N``, written on first use.

        ``ns-render dataset --downscale-factor 4`` passes a float, and nerfstudio would look for
        ``images_4.0/``; an integral factor is used as an int (``images_4/``, nerfstudio's own name).
        A missing downscaled file is made from the full-size one (images: Lanczos; masks: nearest, so
        they stay binary) at nerfstudio's size (``floor(W / N) x floor(H / N)``, as its cameras are
        rescaled), written to a temporary name and renamed."""
        factor = self.config.downscale_factor
        if self.downscale_factor is None and factor is not None and float(factor).is_integer():
            self.config.downscale_factor = int(factor)
        path = super()._get_fname(filepath, data_dir, downsample_folder_prefix)
        if self.downscale_factor is not None and self.downscale_factor > 1 and not path.exists():
            write_downscaled(data_dir / filepath, path, self.downscale_factor,
                             is_mask=downsample_folder_prefix.startswith("mask"))
        return path


def write_downscaled(src: Path, dst: Path, factor: float, is_mask: bool) -> None:
    """``src`` shrunk by ``factor`` (floor of the size, as nerfstudio's cameras) into ``dst`` (atomic rename)."""
    import os

    from PIL import Image

    with Image.open(src) as im:
        size = (max(1, int(im.width / factor)), max(1, int(im.height / factor)))
        small = im.resize(size, Image.NEAREST if is_mask else Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.partial-{os.getpid()}{dst.suffix}")
    try:
        small.save(tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


flame_face_dataparser = DataParserSpecification(
    config=FlameFaceDataParserConfig(),
    description="flame-prior dataset (ns-process-data flame-face): FLAME's frame kept, head masks, FLAME params",
)
