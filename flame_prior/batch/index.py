"""The index of a batch run: ``index.json``, ``index.csv`` and ``index.html`` (thumbnails), rebuilt at the end.

One row per scene of the root, in order:

``scene``, ``status`` (``done``, ``done earlier``, ``failed``, ``failed earlier``, ``not run``),
``error``, ``seconds`` (total, detection, fit, export of the run that produced it),
``views_fitted``, ``views_left_out``, ``landmark_error_px_median``, ``landmark_error_over_eye_median``,
``focal_px_median``, ``intrinsics_source``, ``output`` (the scene's folder), ``thumbnail``,
``run_id`` (the run that produced the record).

``index.json`` also holds the run: its id, the counts of each status and the wall time. Every file
is written through a temporary file and a rename.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from flame_prior.batch.records import write_bytes_atomic

COLUMNS = ("scene", "status", "error", "seconds_total", "seconds_detection", "seconds_fit", "seconds_export",
           "views_fitted", "views_left_out", "landmark_error_px_median", "landmark_error_over_eye_median",
           "focal_px_median", "intrinsics_source", "output", "thumbnail", "run_id")


def _status(name: str, outcome) -> str:
    for label, names in (("done", outcome.done), ("done earlier", outcome.skipped_done), ("failed", outcome.failed),
                         ("failed earlier", outcome.skipped_failed)):
        if name in names:
            return label
    return "not run"


def index_rows(scenes, records: dict[str, dict], outcome) -> list[dict]:
    rows = []
    for scene in scenes:
        rec = records.get(scene.name) or {}
        status = _status(scene.name, outcome)
        sec = rec.get("seconds") or {}
        rows.append({
            "scene": scene.name, "status": status, "error": rec.get("error") if "failed" in status else None,
            "seconds_total": sec.get("total"), "seconds_detection": sec.get("detection"), "seconds_fit": sec.get("fit"),
            "seconds_export": sec.get("export"),
            **{k: rec.get(k) if "done" in status else None for k in (
                "views_fitted", "views_left_out", "landmark_error_px_median", "landmark_error_over_eye_median",
                "focal_px_median", "intrinsics_source", "output", "thumbnail")},
            "run_id": rec.get("run_id") if status != "not run" else None,
        })
    return rows


def write_index(out: Path, scenes, records: dict[str, dict], outcome, config) -> None:
    """Write ``index.json``, ``index.csv`` and ``index.html`` into ``out``."""
    from flame_prior.export._common import jsonable

    rows = index_rows(scenes, records, outcome)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    run = {"run_id": outcome.run_id, "root": str(config.data), "single_images": config.single_images,
           "preset": config.preset, "scene_outputs": config.scene_outputs, "scenes": len(rows), "counts": counts,
           "seconds": outcome.seconds}
    write_bytes_atomic(out / "index.json", (json.dumps(jsonable({"format": "flame-prior batch index", "run": run,
                                                                  "scenes": rows}), indent=2) + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    write_bytes_atomic(out / "index.csv", buf.getvalue().encode())
    write_bytes_atomic(out / "index.html", _html(rows, run).encode())


_COLOURS = {"done": "#1b7f3b", "done earlier": "#4f7f5f", "failed": "#b00020", "failed earlier": "#b05060",
            "not run": "#777"}


def _fmt(v, digits=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _html(rows: list[dict], run: dict) -> str:
    cards = []
    for r in rows:
        thumb = (f"<img src='{html.escape(r['thumbnail'])}' alt='{html.escape(r['scene'])}'>" if r["thumbnail"]
                 else "<div class='none'>no thumbnail</div>")
        link = f"{r['output']}/report.html" if r["output"] else None
        name = (f"<a href='{html.escape(link)}'>{html.escape(r['scene'])}</a>" if link else html.escape(r["scene"]))
        figures = (f"{_fmt(r['views_fitted'], 0)} view{'' if r['views_fitted'] == 1 else 's'} · {_fmt(r['landmark_error_px_median'])} px "
                   f"({_fmt(r['landmark_error_over_eye_median'], 3)} of eye dist.) · f {_fmt(r['focal_px_median'], 0)} px"
                   if "done" in r["status"] else html.escape(r["error"] or ""))
        cards.append(f"<div class='card'>{thumb}<div class='name'>{name}</div>"
                     f"<div class='status' style='color:{_COLOURS[r['status']]}'>{html.escape(r['status'])} · "
                     f"{_fmt(r['seconds_total'], 1)} s</div><div class='fig'>{figures}</div></div>")
    counts = ", ".join(f"{v} {html.escape(k)}" for k, v in run["counts"].items())
    return f"""<!doctype html>
<html><head><meta charset='utf-8'><title>flame-prior batch {html.escape(run['run_id'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ width: 200px; border: 1px solid #ddd; border-radius: 6px; padding: 4px; font-size: 12px; }}
.card img {{ width: 192px; display: block; margin: auto; }}
.none {{ width: 192px; height: 120px; background: #f3f3f3; color: #999; text-align: center; line-height: 120px; }}
.name {{ font-weight: 600; margin-top: 4px; word-break: break-all; }}
.fig {{ color: #555; word-break: break-word; }}
</style></head><body>
<h1>flame-prior batch</h1>
<p>run {html.escape(run['run_id'])} · root <code>{html.escape(run['root'])}</code> · {run['scenes']} scenes: {counts}
· {run['seconds']:.1f} s · preset {html.escape(run['preset'])} · outputs {html.escape(run['scene_outputs'])}.
Table: <a href='index.csv'>index.csv</a>, <a href='index.json'>index.json</a>. Thumbnails: the image with the fitted
model's landmarks projected (green).</p>
<div class='grid'>
{chr(10).join(cards)}
</div></body></html>
"""
