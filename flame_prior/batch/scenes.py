"""Scenes of a batch root, and the key that says whether a scene's output is still current.

A scene is a folder of images of one head (``root/<scene>/``), or with ``--single-images`` one
image (any image under the root, searched recursively). Its **key** is the sha256 of

* every input file of the scene: its path relative to the scene and the sha256 of its bytes;
* the scene's fit settings (the ``fit`` config without the paths of the data, the output and the
  caches), the batch options that change a scene's output, the model files' sha256 and
  flame-prior's version.

A scene whose finished output carries the same key is skipped on a rerun; change an image or an
option and it is fitted again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from flame_prior.errors import InputError
from flame_prior.images import natural_sort_key
from flame_prior.files import file_sha256

#: File suffixes taken as images in --single-images mode (the folder may hold other files).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Scene:
    """One unit of work.

    Attributes:
        name: unique, filesystem-safe name (output folder, record and thumbnail names).
        data: the scene's folder, or its one image.
        relative: ``data`` relative to the batch root, with ``/`` separators (EG3D's file names).
    """

    name: str
    data: Path
    relative: str

    def input_files(self) -> list[Path]:
        if self.data.is_file():
            return [self.data]
        return sorted((p for p in self.data.iterdir() if p.is_file() and not p.name.startswith(".")),
                      key=lambda p: natural_sort_key(p.name))


def discover_scenes(root: Path, single_images: bool) -> list[Scene]:
    """The scenes under ``root``, in natural order of their relative paths.

    Raises:
        InputError: ``root`` is not a folder, or holds no scene (the message says what was looked for).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("the batch root is not a folder.", root,
                         hint="Pass --data <folder with one sub-folder per subject, or images with --single-images>.")
    if single_images:
        files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)]
        items = sorted(files, key=lambda p: natural_sort_key(p.relative_to(root).as_posix()))
        if not items:
            raise InputError("no image under the batch root (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ").",
                             root, hint="Point --data at the folder of images.")
    else:
        items = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and any(c.is_file() and not c.name.startswith(".") for c in p.iterdir())),
                       key=lambda p: natural_sort_key(p.name))
        if not items:
            hint = ("The images lie directly in this folder: pass --single-images to fit each image as its own scene."
                    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir())
                    else "Put the images of each subject in a sub-folder of its own.")
            raise InputError("the batch root holds no sub-folder with files (one per scene).", root, hint=hint)
    rel = [p.relative_to(root).as_posix() for p in items]
    return [Scene(n, p, r) for n, p, r in zip(scene_names(rel, single_images), items, rel)]


def scene_names(relative: list[str], single_images: bool) -> list[str]:
    """Unique, filesystem-safe names: the relative path (without the image suffix) with every character
    outside ``[A-Za-z0-9._-]`` replaced by ``_``; a clash gets the suffix (``a_jpg``), then a counter."""
    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", s).strip(".") or "scene"

    names: list[str] = []
    taken: set[str] = set()
    for r in relative:
        base = clean(r.rsplit(".", 1)[0] if single_images and "." in r.rsplit("/", 1)[-1] else r)
        name = base
        if name in taken and single_images:
            name = clean(r)
        k = 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


#: Fit-config fields that do not change a scene's output (paths of the run, caches).
_NOT_IN_KEY = {"data", "output_dir", "overwrite", "cache_dir", "use_cache"}


def settings_fingerprint(config, extra: dict) -> str:
    """sha256 of a fit config's settings (without data/output/cache paths) and ``extra`` (JSON-able)."""
    def strip(obj):
        if dataclasses.is_dataclass(obj):
            return {f.name: strip(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in _NOT_IN_KEY}
        if isinstance(obj, Path):
            return str(obj)
        return obj

    text = json.dumps({"settings": strip(config), "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def scene_key(scene: Scene, settings: str) -> str:
    """The scene's key: its input files (relative name + content sha256) and the settings fingerprint."""
    h = hashlib.sha256(settings.encode())
    for p in scene.input_files():
        rel = p.name if scene.data.is_dir() else scene.relative
        h.update(f"\n{rel}\0{file_sha256(p)}".encode())
    return h.hexdigest()


def model_fingerprints(paths: dict[str, Path | None]) -> dict[str, str | None]:
    """sha256 of each model file a config names (None: the bundled default, identified by the version)."""
    return {k: (file_sha256(Path(p)) if p is not None and Path(p).is_file() else (str(p) if p else None))
            for k, p in paths.items()}
