"""The one-screen summary at the end of a run (views fitted and left out with the reason, landmark
error and trust per view, where the focal length came from, notes, time per step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flame_prior.fit import FitResult
from flame_prior.flame.assets import ModelInfo
from flame_prior.images import SkippedInput
from flame_prior.intrinsics import Intrinsics
from flame_prior.observe import ViewObservation

__all__ = ["print_summary", "format_timings"]


def print_summary(console: Console, out: Path, views: list[ViewObservation], skipped: list[SkippedInput],
                  intrinsics: Intrinsics, result: FitResult, model: ModelInfo, timings: dict[str, float]) -> None:
    """The one-screen summary at the end of a run."""
    table = Table(title=f"flame-prior: {len(views)} views fitted, {len(skipped)} left out")
    for col in ("view", "landmark error px", "/ eye distance", "rotation ± °", "trust"):
        table.add_column(col, justify="right" if col not in ("view", "trust") else "left")
    for v in result.views:
        rel = v.landmark_error_rel_eye
        trust = "[green]ok[/green]" if not v.flags else "[red]flagged: " + escape("; ".join(v.flags)) + "[/red]"
        name = v.name if not v.flags else f"[red]{escape(v.name)}[/red]"
        table.add_row(name, f"{v.landmark_error_px:.2f}", f"{rel:.3f}", f"{v.rotation_sigma_deg:.2f} ({v.uncertainty_source})", trust)
    for s in skipped:
        table.add_row(f"[red]{escape(s.path.name)}[/red]", "left out", escape(s.reason))
    console.print(table)
    f = result.cameras.fx.numpy()
    console.print(f"intrinsics: [bold]{intrinsics.source}[/bold] (focal {np.median(f):.1f} px)"
                  + (f"; COLMAP registered {intrinsics.colmap.get('registered')}/{intrinsics.colmap.get('total')}"
                     if intrinsics.colmap else ""))
    for v in views:  # per-view remarks: "2 faces, took the largest", a cache file re-detected, ...
        for note in v.notes:
            console.print(f"note: {escape(v.image.path.name)}: {escape(note)}", highlight=False)
    for note in intrinsics.notes + result.notes + model.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    console.print("time: " + format_timings(timings), highlight=False)
    console.print(f"output: [bold]{escape(str(out))}[/bold] (report: {escape(str(out / 'report.html'))})")


def format_timings(timings: dict[str, float]) -> str:
    """``intake 0.1 s, …, fit 11.6 s (rigid 0.2 s, landmarks 0.3 s, photometric 9.7 s, set-up 1.4 s),
    export 2.1 s, total 24.1 s``: the parts of the fit (keys ``fit.<stage>``) in brackets after it."""
    parts = {k.split(".", 1)[1]: v for k, v in timings.items() if k.startswith("fit.")}
    items = []
    for k, v in timings.items():
        if k.startswith("fit."):
            continue
        text = f"{k} {v:.1f} s"
        if k == "fit" and parts:
            rest = v - sum(parts.values())  # set-up: targets, crops, the initial colour
            text += " (" + ", ".join(f"{p} {t:.1f} s" for p, t in parts.items()) + f", set-up {rest:.1f} s)"
        items.append(text)
    return ", ".join(items)
