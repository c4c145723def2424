"""Shared fixtures: the ``../shared`` test data (skip with the missing path), devices, dtypes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """``$FLAME_PRIOR_SHARED`` when set, else ``../shared`` beside the repository."""
    env = os.environ.get("FLAME_PRIOR_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def shared_path(relative: str) -> Path:
    """Path of a file under the shared data; skips the calling test, naming it, when absent."""
    path = shared_root() / relative
    if not path.exists():
        pytest.skip(f"shared test data missing: {path} (set FLAME_PRIOR_SHARED or provide ../shared)")
    return path


@pytest.fixture
def shared():
    """``shared("flame-assets/flame2023_open_subset.npz") -> Path``, skipping when absent."""
    return shared_path


def pytest_addoption(parser):
    parser.addoption("--device", action="store", default="all", help="cpu, cuda or all (default: all; cuda skips when absent)")


def _devices(config) -> list[str]:
    opt = config.getoption("--device")
    return ["cpu", "cuda"] if opt == "all" else [opt]


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _devices(metafunc.config), indirect=True)


@pytest.fixture
def device(request) -> torch.device:
    name = request.param
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA requested but torch.cuda.is_available() is False")
    return torch.device(name)


def detector_call_spy(monkeypatch) -> list[str]:
    """Record the names of the images the real MediaPipe detector is run on (a spy around the real
    method, not a mock): a cached run must not call it."""
    from flame_prior.detectors.mediapipe_backend import MediaPipeDetector

    calls: list[str] = []
    real = MediaPipeDetector.detect

    def spy(self, image):
        calls.append(image.name)
        return real(self, image)

    monkeypatch.setattr(MediaPipeDetector, "detect", spy)
    return calls
