"""Exports of sequences: what clips and dynamic fits add to the one-timestep exports.

* :func:`extend_summary`: top-level entries added to ``fit_summary.json``: ``sequence`` (``kind``
  "static" | "dynamic" and the reason) and ``video`` (:meth:`flame_prior.video.Intake.summary`: the
  clips — frames, duration, frame rate, rotation applied, variable frame rate, frames that failed to
  decode — and every frame considered, kept or not, with the reason).
* :func:`frame_selection_html`: the report's section on the sequence kind and the frames chosen.
* :func:`append_report_section`: adds a section to ``report.html`` before ``</main>``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from flame_prior.export._common import write_json

__all__ = ["extend_summary", "append_report_section", "frame_selection_html"]


def extend_summary(path: Path, extra: dict) -> Path:
    """Add ``extra``'s keys to the JSON object in ``path`` (rewritten in place; caller owns atomicity)."""
    summary = json.loads(Path(path).read_text(encoding="utf-8"))
    summary.update(extra)
    return write_json(Path(path), summary)


def append_report_section(path: Path, section_html: str) -> Path:
    """Insert ``section_html`` into ``report.html`` before ``</main>`` (or at the end)."""
    path = Path(path)
    doc = path.read_text(encoding="utf-8")
    marker = "</main>"
    doc = doc.replace(marker, section_html + "\n" + marker, 1) if marker in doc else doc + section_html
    path.write_text(doc, encoding="utf-8")
    return path


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def frame_selection_html(intake, kind: str, reason: str) -> str:
    """The sequence kind and, for clips, a table of every frame considered (kept ones first)."""
    parts = [f"<h2>Sequence</h2><p><b>{_esc(kind)}</b> &mdash; {_esc(reason)}</p>"]
    for note in intake.notes:
        parts.append(f"<div class='warn'>{_esc(note)}</div>")
    if intake.source == "images":
        return "\n".join(parts)
    for c in intake.clips:
        parts.append(
            f"<p class='sub'>{_esc(Path(c.path).name)}: {c.frames} frames, {c.duration:.2f} s, {c.fps:.2f} fps"
            f"{' (variable)' if c.variable_frame_rate else ''}, {c.width}&times;{c.height} upright, codec {_esc(c.codec)}, "
            f"rotation {c.rotation}&deg; applied"
            + (f", {len(c.decode_errors)} frame(s) could not be decoded" if c.decode_errors else "") + "</p>")
    frames = sorted(intake.frames, key=lambda f: (not f.kept, f.camera, f.time if f.time == f.time else 1e18))
    rows = "".join(
        f"<tr><td>{_esc(f.clip)}</td><td class='num'>{f.index}</td>"
        f"<td class='num'>{'' if f.time != f.time else f'{f.time:.2f}'}</td>"
        f"<td class='num'>{'' if f.sharpness != f.sharpness else f'{f.sharpness:.0f}'}</td>"
        f"<td class='{'good' if f.kept else 'sub'}'>{'kept' if f.kept else 'left out'}</td><td>{_esc(f.reason)}</td></tr>"
        for f in frames[:400])
    more = f"<p class='sub'>{len(frames) - 400} more frames in fit_summary.json (video.frames)</p>" if len(frames) > 400 else ""
    parts.append("<details><summary>Frames considered "
                 f"({sum(f.kept for f in frames)} kept of {len(frames)})</summary>"
                 "<table><thead><tr><th>clip</th><th>frame</th><th>time s</th><th>sharpness</th><th></th>"
                 f"<th>why</th></tr></thead><tbody>{rows}</tbody></table>{more}</details>")
    return "\n".join(parts)
