"""Shared fixtures: the ``../shared`` test data, devices, dtypes.

Missing shared data skips a test, naming the path — except in CI (``CI`` set to anything but
``0``/``false``, or ``FLAME_PRIOR_REQUIRE_SHARED=1``, which ``.ci/run`` exports), where it FAILS the
test: a CI run without the real photos must not go green by skipping them.
"""

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


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def shared_data_required() -> bool:
    """True in CI: missing shared data is then a failure, not a skip."""
    return _flag("CI") or _flag("FLAME_PRIOR_REQUIRE_SHARED")


def shared_path(relative: str) -> Path:
    """Path of a file under the shared data; when absent, skips the calling test naming it (fails in CI)."""
    path = shared_root() / relative
    if not path.exists():
        message = f"shared test data missing: {path} (set FLAME_PRIOR_SHARED or provide ../shared)"
        if shared_data_required():
            pytest.fail(message + "; CI requires it (CI / FLAME_PRIOR_REQUIRE_SHARED is set)", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def shared():
    """``shared("flame-assets/head_template_mesh.obj") -> Path``, skipping (in CI: failing) when absent."""
    return shared_path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test (and every CLI it starts) caches detections and COLMAP results in a folder of its
    own session, never the user's ``~/.cache/flame-prior``: a stale cached detection must not hide a
    detector regression."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


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
