"""In CI, missing shared data fails a test instead of skipping it (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

_PROBE = '''
def test_needs_shared(shared):
    shared("no/such/file.npz")
'''


@pytest.mark.parametrize("env, outcome", [({}, "1 skipped"), ({"CI": "true"}, "1 failed"),
                                          ({"FLAME_PRIOR_REQUIRE_SHARED": "1"}, "1 failed")])
def test_missing_shared_data_fails_in_ci(tmp_path, env, outcome):
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_probe.py").write_text(_PROBE)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "FLAME_PRIOR_REQUIRE_SHARED")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, env={**clean, "FLAME_PRIOR_SHARED": str(tmp_path), **env},
                       cwd=tmp_path, timeout=300)
    assert outcome in r.stdout, r.stdout[-2000:]
    if "failed" in outcome:
        assert "shared test data missing" in r.stdout and "CI requires it" in r.stdout
