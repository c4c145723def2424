"""Third-party start-up chatter (TensorFlow Lite's XNNPACK INFO line, from C++) is dropped unless verbose;
Python's own stderr and native lines that are not chatter still come through."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
import numpy as np
from flame_prior.quiet import native_chatter_filtered
from mediapipe.python.solutions.face_mesh import FaceMesh
libc = ctypes.CDLL(None)
with native_chatter_filtered({enabled}):
    print("python line inside", file=sys.stderr, flush=True)
    FaceMesh(static_image_mode=True, max_num_faces=1).process(np.zeros((64, 64, 3), np.uint8))
    libc.dprintf(2, b"E0000 00:00:1.0 native error kept\\n")
print("python line after", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_tflite_info_line_filtered(enabled):
    res = subprocess.run([sys.executable, "-c", PROBE.format(enabled=enabled)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert ("XNNPACK" in res.stderr) != enabled, res.stderr
    for line in ("python line inside", "native error kept", "python line after"):
        assert line in res.stderr, res.stderr
