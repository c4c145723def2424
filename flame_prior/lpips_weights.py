"""``flame-prior nerfstudio-weights``: install the AlexNet weights nerfstudio's LPIPS metric needs, offline.

Every nerfstudio method builds an LPIPS metric (torchmetrics, ``net_type="alex"``) whose AlexNet
backbone torchvision loads from ``<torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth``
(``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``) and downloads when the file is missing — so an
offline ``ns-train`` dies at start-up with a urllib traceback. This command puts the file there:

* from ``--source`` (the file, or a folder holding it), or else from the first place it is found
  among the usual caches (:func:`candidate_paths`); the file's sha256 must start with the 8 hex
  digits of its name (torchvision's own check), so a wrong or truncated file is refused;
* with ``--untrained``, a randomly initialised AlexNet under that name: training works, but
  LPIPS values are meaningless (this is what the test suite does);
* where neither applies, one line says the two choices; nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from flame_prior.errors import InputError, ModelFileError
from flame_prior.files import file_sha256


@dataclass(frozen=True)
class WeightsFile:
    """A torch hub checkpoint: its file name (ending in ``-<sha256 prefix>.pth``) and download address."""

    name: str
    url: str

    @property
    def sha256_prefix(self) -> str:
        return self.name.rsplit("-", 1)[-1].split(".", 1)[0]


ALEXNET = WeightsFile("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")


@dataclass
class WeightsConfig:
    """Install the AlexNet weights of nerfstudio's LPIPS metric into torch hub's cache (no download)."""

    source: Path | None = None
    """The weights file (alexnet-owt-7be5be79.pth) or a folder holding it. Default: look in the usual caches."""
    untrained: bool = False
    """Install a randomly initialised AlexNet instead: training works offline, LPIPS values are meaningless."""


def hub_checkpoint_dir() -> Path:
    """Where torchvision looks: ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub``, ``$XDG_CACHE_HOME/torch/hub``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def candidate_paths(weights: WeightsFile = ALEXNET) -> list[Path]:
    """Places a copy of the file is commonly found: torch hub caches of this user (default and
    ``$XDG_CACHE_HOME``), the older ``~/.cache/torch/checkpoints``, and the working directory."""
    home = Path.home()
    roots = [Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"] if os.environ.get("TORCH_HOME") else []
    if os.environ.get("XDG_CACHE_HOME"):
        roots.append(Path(os.environ["XDG_CACHE_HOME"]) / "torch" / "hub" / "checkpoints")
    roots += [home / ".cache" / "torch" / "hub" / "checkpoints", home / ".cache" / "torch" / "checkpoints",
              home / ".torch" / "models", Path.cwd()]
    seen, out = set(), []
    for r in roots:
        p = (r / weights.name).resolve()
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def is_valid(path: Path, weights: WeightsFile = ALEXNET) -> bool:
    return path.is_file() and file_sha256(path).startswith(weights.sha256_prefix)


def install_weights(config: WeightsConfig, weights: WeightsFile = ALEXNET, target_dir: Path | None = None) -> str:
    """Put ``weights`` into ``target_dir`` (torch hub's checkpoints); returns one line saying what was done.

    Raises:
        InputError: ``--source`` does not exist or holds no such file.
        ModelFileError: the file found is not the expected one (sha256), or none was found.
    """
    target_dir = Path(target_dir) if target_dir is not None else hub_checkpoint_dir()
    target = target_dir / weights.name
    if config.untrained:
        return _install_untrained(target)
    if config.source is not None:
        src = Path(config.source).expanduser()
        if src.is_dir():
            src = src / weights.name
        if not src.exists():
            raise InputError(f"no {weights.name} here.", src, hint="Pass the weights file or the folder that holds it.")
        if not is_valid(src, weights):
            raise ModelFileError(f"not the expected weights: its sha256 does not start with {weights.sha256_prefix}.",
                                 src, hint=f"Download it again from {weights.url}.")
        return _copy_into(src, target)
    if target.exists() and is_valid(target, weights):
        return f"already installed: {target}"
    for candidate in candidate_paths(weights):
        if candidate != target.resolve() and is_valid(candidate, weights):
            return _copy_into(candidate, target)
    raise ModelFileError(
        f"{weights.name} (LPIPS's AlexNet, needed by every nerfstudio method) is not in {target_dir} nor in the usual "
        f"caches, and nothing is downloaded: either fetch {weights.url} on a machine with a network and run "
        f"`flame-prior nerfstudio-weights --source <file>`, or run `flame-prior nerfstudio-weights --untrained` "
        f"to train without it (LPIPS values are then meaningless).")


def _copy_into(src: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return f"installed {target} (from {src})"


def _install_untrained(target: Path) -> str:
    try:
        import torchvision
    except ImportError:
        raise InputError("torchvision is not installed here: this is for the environment of the [nerfstudio] extra.",
                         hint="Run the command with that environment's flame-prior (pip install '.[nerfstudio]').") \
            from None
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return (f"installed an untrained AlexNet as {target}: nerfstudio trains offline, but its LPIPS values are "
            "meaningless; replace it with the real file (`--source`) when you have it")
