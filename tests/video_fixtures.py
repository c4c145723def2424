"""Clips made in the tests (no media is committed): encode frames with PyAV, optionally with a
display-matrix rotation (as phones write it), variable frame times, or a corrupted packet."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def encode_clip(path: Path, frames, fps: float = 30.0, rotation: int = 0, codec: str = "libx264",
                times: list[float] | None = None, corrupt_frame: int | None = None, crf: int = 18,
                gop: int = 30) -> Path:
    """Write ``frames`` (iterable of ``(H, W, 3)`` uint8 RGB, even sizes) as a clip.

    Args:
        rotation: display rotation in degrees counter-clockwise (FFmpeg's ``-display_rotation``):
            a player turns the stored frames by this to show them upright.
        times: per-frame presentation times in seconds (a variable frame rate); default ``i / fps``.
        corrupt_frame: overwrite the payload of this frame's packet with noise (a corrupt frame in the
            middle), keeping its size and timestamps.
    """
    import av

    path = Path(path)
    tb = Fraction(1, 90000)
    out = av.open(str(path), "w")
    stream = None
    packets = []
    frames = list(frames)
    for i, rgb in enumerate(frames):
        if stream is None:
            stream = out.add_stream(codec, rate=Fraction(round(fps * 1000), 1000))
            stream.width, stream.height = rgb.shape[1], rgb.shape[0]
            stream.pix_fmt = "yuv420p"
            stream.time_base = tb
            stream.codec_context.time_base = tb
            if codec == "libx264":
                stream.options = {"crf": str(crf), "g": str(gop), "bf": "0", "preset": "ultrafast"}
            if rotation:
                stream.set_display_rotation(rotation)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        t = times[i] if times is not None else i / fps
        frame.pts = int(round(t / tb))
        frame.time_base = tb
        packets += list(stream.encode(frame))
    packets += list(stream.encode(None))
    for k, packet in enumerate(sorted(packets, key=lambda p: p.dts)):
        if corrupt_frame is not None and k == corrupt_frame:
            data = bytearray(bytes(packet))
            rng = np.random.default_rng(0)
            start = min(8, len(data) // 4)
            data[start:] = rng.integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
            bad = av.Packet(bytes(data))
            bad.pts, bad.dts, bad.time_base, bad.stream = packet.pts, packet.dts, packet.time_base, stream
            packet = bad
        out.mux(packet)
    out.close()
    return path


def moving_pattern(n: int, h: int, w: int, seed: int = 0, blur: set[int] | None = None) -> list[np.ndarray]:
    """``n`` frames of a textured pattern sliding sideways (so consecutive frames differ), some blurred."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (h // 8, (w + 8 * n) // 8, 3), dtype=np.uint8),
                      ((w + 8 * n), h), interpolation=cv2.INTER_NEAREST)
    out = []
    for i in range(n):
        f = np.ascontiguousarray(base[:, 8 * i: 8 * i + w])
        if blur and i in blur:
            f = cv2.GaussianBlur(f, (0, 0), 6)
        out.append(f)
    return out
