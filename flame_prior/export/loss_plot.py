"""The report's loss curves: one panel per fitting stage, drawn with PIL.

Each panel: the stage's loss per iteration (blue line; gaps where a value is not finite), on a log
scale when every value is positive, with grid lines at the ticks, the title ``name (iterations, seconds)``,
``iteration`` under the x axis and ``loss`` beside the first panel's y axis.

Why not a plotting library: matplotlib drew these panels in 1.4-2.4 s of CPU on the shared 30-view
scene (0.8 s to import it, most of the rest laying out mathtext tick labels of the log scale), a
third of the whole export; these few lines and labels cost about 20 ms.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["write_loss_plot", "nice_ticks"]

#: Panel size in pixels (4 stages side by side make a 1760 x 330 picture; the page scales it down).
PANEL_W, PANEL_H = 440, 330
MAX_WIDTH = 1760
LINE = (37, 99, 235)
GRID = (225, 228, 232)
FRAME = (90, 90, 90)
TEXT = (30, 30, 30)
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 16, 30, 48


def nice_ticks(lo: float, hi: float, count: int = 5) -> np.ndarray:
    """Ticks at multiples of 1, 2 or 5 x 10^k inside ``[lo, hi]``, about ``count`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.array([lo]) if math.isfinite(lo) else np.zeros(0)
    raw = (hi - lo) / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9) * step
    return np.round(np.arange(first, hi + step * 1e-6, step) / step) * step


def _y_axis(values: np.ndarray, log: bool) -> tuple[float, float, np.ndarray, list[str]]:
    """Plotted range ``(lo, hi)`` (log10 units when ``log``), tick positions in those units and labels."""
    v = np.log10(values) if log else values
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if log and hi - lo >= 1.0:  # decades
        exps = np.arange(math.ceil(lo), math.floor(hi) + 1)
        return lo, hi, exps.astype(float), [f"{10.0 ** e:g}" for e in exps]
    ticks = nice_ticks(10.0 ** lo, 10.0 ** hi) if log else nice_ticks(lo, hi)
    ticks = ticks[ticks > 0] if log else ticks
    return lo, hi, (np.log10(ticks) if log else ticks), [f"{t:.4g}" for t in ticks]


def write_loss_plot(stages, path: str | Path) -> Path | None:
    """Draw the loss curves of ``stages`` (each with ``name``, ``iterations``, ``seconds`` and
    ``loss_history``; stages without history are left out) into the PNG ``path``; None when none has
    a history (nothing written)."""
    stages = [s for s in stages if len(s.loss_history) > 0]
    if not stages:
        return None
    n = len(stages)
    panel_w = min(PANEL_W, MAX_WIDTH // n)
    im = Image.new("RGB", (panel_w * n, PANEL_H), "white")
    d = ImageDraw.Draw(im)
    title_font, label_font, tick_font = (ImageFont.load_default(size=s) for s in (14, 13, 11))
    for k, st in enumerate(stages):
        left, right = k * panel_w + MARGIN_L, (k + 1) * panel_w - MARGIN_R
        top, bottom = MARGIN_T, PANEL_H - MARGIN_B
        y = np.asarray(st.loss_history, dtype=np.float64).reshape(-1)
        finite = np.isfinite(y)
        log = bool(finite.any() and np.all(y[finite] > 0))
        x_lo, x_hi = (0.5, 1.5) if len(y) == 1 else (1.0, float(len(y)))
        px = lambda it: left + (it - x_lo) / (x_hi - x_lo) * (right - left)  # noqa: E731
        if finite.any():
            lo, hi, y_ticks, y_labels = _y_axis(y[finite], log)
        else:
            lo, hi, y_ticks, y_labels = 0.0, 1.0, np.zeros(0), []
        py = lambda v: bottom - (v - lo) / (hi - lo) * (bottom - top)  # noqa: E731
        x_ticks = nice_ticks(x_lo, x_hi, 6)
        x_ticks = x_ticks[x_ticks == np.round(x_ticks)] if len(y) < 12 else x_ticks  # whole iterations
        for t in x_ticks:
            d.line([(px(t), top), (px(t), bottom)], fill=GRID)
            d.text((px(t), bottom + 4), f"{t:g}", fill=TEXT, font=tick_font, anchor="mt")
        for t, label in zip(y_ticks, y_labels):
            d.line([(left, py(t)), (right, py(t))], fill=GRID)
            d.text((left - 5, py(t)), label, fill=TEXT, font=tick_font, anchor="rm")
        d.rectangle([left, top, right, bottom], outline=FRAME)
        yv = np.log10(np.where(finite & (y > 0), y, 1.0)) if log else np.where(finite, y, 0.0)
        run: list[tuple[float, float]] = []
        for i in range(len(y) + 1):  # one polyline per run of finite values
            if i < len(y) and finite[i]:
                run.append((px(i + 1.0), py(yv[i])))
                continue
            if len(run) > 1:
                d.line(run, fill=LINE, width=2, joint="curve")
            elif len(run) == 1:
                d.ellipse([run[0][0] - 2, run[0][1] - 2, run[0][0] + 2, run[0][1] + 2], fill=LINE)
            run = []
        d.text(((left + right) / 2, top - 8), f"{st.name}  ({st.iterations} it, {float(st.seconds):.1f} s)",
               fill=TEXT, font=title_font, anchor="ms")
        d.text(((left + right) / 2, PANEL_H - 8), "iteration", fill=TEXT, font=label_font, anchor="ms")
        if k == 0:
            label = Image.new("RGB", (60, 18), "white")
            ImageDraw.Draw(label).text((30, 9), "loss", fill=TEXT, font=label_font, anchor="mm")
            im.paste(label.rotate(90, expand=True), (2, (top + bottom) // 2 - 30))
    path = Path(path)
    im.save(path, format="PNG", compress_level=1)
    return path
