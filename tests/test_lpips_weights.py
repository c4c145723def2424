"""``flame-prior nerfstudio-weights``: offline installation of LPIPS's AlexNet into torch hub's cache.

The real file (233 MB, sha256 7be5be79…) cannot be here; the tests use a small file under a name whose
8-hex-digit suffix is that file's own sha256 prefix, exactly the rule torchvision applies to the real one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flame_prior.errors import InputError, ModelFileError
from flame_prior.lpips_weights import ALEXNET, WeightsConfig, WeightsFile, hub_checkpoint_dir, install_weights


def _fake_weights(folder: Path) -> tuple[WeightsFile, Path]:
    payload = b"not really alexnet" * 100
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    spec = WeightsFile(f"alexnet-test-{prefix}.pth", "https://example.invalid/alexnet.pth")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / spec.name).write_bytes(payload)
    return spec, folder / spec.name


def test_install_from_a_file_and_from_its_folder(tmp_path):
    spec, src = _fake_weights(tmp_path / "download")
    target = tmp_path / "hub" / "checkpoints"
    msg = install_weights(WeightsConfig(source=src), spec, target_dir=target)
    assert (target / spec.name).read_bytes() == src.read_bytes() and "installed" in msg
    (target / spec.name).unlink()
    install_weights(WeightsConfig(source=src.parent), spec, target_dir=target)
    assert (target / spec.name).is_file()
    assert "already installed" in install_weights(WeightsConfig(), spec, target_dir=target)


def test_found_in_a_cache_is_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    spec, src = _fake_weights(tmp_path / "home" / ".cache" / "torch" / "checkpoints")  # torch's older cache
    target = tmp_path / "torch_home" / "hub" / "checkpoints"
    msg = install_weights(WeightsConfig(), spec, target_dir=target)
    assert (target / spec.name).read_bytes() == src.read_bytes() and str(src) in msg


def test_wrong_file_is_refused(tmp_path):
    spec, src = _fake_weights(tmp_path / "d")
    src.write_bytes(b"truncated")
    with pytest.raises(ModelFileError, match="sha256"):
        install_weights(WeightsConfig(source=src), spec, target_dir=tmp_path / "hub")
    assert not (tmp_path / "hub" / spec.name).exists()
    with pytest.raises(InputError, match="no alexnet"):
        install_weights(WeightsConfig(source=tmp_path / "empty_dir_missing"), spec, target_dir=tmp_path / "hub")


def test_hub_dir_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert hub_checkpoint_dir() == tmp_path / "th" / "hub" / "checkpoints"


def test_command_not_found_is_one_line_with_the_choice(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TORCH_HOME": str(tmp_path / "th"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg"), "COLUMNS": "300"}
    res = subprocess.run([sys.executable, "-m", "flame_prior.cli", "nerfstudio-weights"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 3, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "--source" in lines[0] and "--untrained" in lines[0] and ALEXNET.url in lines[0]
    assert not (tmp_path / "th" / "hub" / "checkpoints" / ALEXNET.name).exists()
