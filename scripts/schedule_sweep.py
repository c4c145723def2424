"""Photometric schedules side by side: fit time and camera errors on the demo scenes (known cameras).

Usage::

    python scripts/schedule_sweep.py --device cuda                      # the CUDA schedule vs the CPU's, on CUDA
    python scripts/schedule_sweep.py --device cpu --views 30 --seeds 0 1 2 \\
        --config '20 of all={"photometric_steps": 20, "photometric_views": 30}' --output sweep.json

Each ``--config NAME=JSON`` is a set of :class:`~flame_prior.fit.FitterConfig` options (default: the CUDA
schedule against the CPU's on the same device). On CUDA, ``fit_flame`` applies ``FitterConfig.for_device``,
so there the ``*_cuda`` options set the schedule; on the CPU ``photometric_steps`` and ``photometric_views``
do. Which schedule is better does not depend on the device (the same arithmetic in float32): sweep for
accuracy on the CPU, for time on the GPU. Every fit is ``scripts/benchmark.py``'s synthetic case (the demo
scene of ``--views`` views and seed, rendered, then fitted) without export; rows and per-config means are
printed, and written as JSON with ``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CUDA_VS_CPU = {
    "default": {},
    "the CPU's (60 steps of 8)": {"photometric_steps_cuda": 60, "photometric_views_cuda": 8},
    "30 steps of all": {"photometric_steps_cuda": 30},
    "40 steps of all": {"photometric_steps_cuda": 40},
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--views", type=int, nargs="+", default=[8, 30])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--config", action="append", default=[], metavar="NAME=JSON",
                   help="a named set of FitterConfig options (repeatable); default: the CUDA schedule vs the CPU's")
    p.add_argument("--output", type=Path, default=None)
    a = p.parse_args(argv)
    configs = dict(_named(c) for c in a.config) if a.config else CUDA_VS_CPU

    import benchmark

    benchmark.case_synthetic(a.device, None, 8, {"photometric_steps": 2}, export=False, floor=False)  # warm-up
    rows = []
    for views in a.views:
        for name, fitter in configs.items():
            for seed in a.seeds:
                r = benchmark.case_synthetic(a.device, None, views, fitter, export=False, floor=False, seed=seed)
                acc, sec = r["accuracy"], r["seconds"]
                rows.append({"views": views, "config": name, "fitter": fitter, "seed": seed, "fit_s": sec["fit"],
                             "photometric_s": sec["photometric"], "photometric_steps": r["stages"]["photometric"]["iterations"],
                             "rotation_deg_median": acc["rotation_deg_median"], "rotation_deg_max": acc["rotation_deg_max"],
                             "centre_scaled_pct_median": acc["translation_scaled_pct_median"],
                             "landmark_px_median": acc["landmark_error_px_median"]})
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()
                               if k != "fitter"), flush=True)
    means = []
    for views in a.views:
        for name in configs:
            sel = [r for r in rows if r["views"] == views and r["config"] == name]
            m = {k: statistics.mean(r[k] for r in sel) for k in ("fit_s", "photometric_s", "rotation_deg_median",
                                                                 "rotation_deg_max", "landmark_px_median")}
            means.append({"views": views, "config": name, "seeds": len(sel), **m})
            print(f"MEAN views={views} {name!r}: fit {m['fit_s']:.2f} s (photometric {m['photometric_s']:.2f}), "
                  f"rotation {m['rotation_deg_median']:.3f} / {m['rotation_deg_max']:.3f} deg, "
                  f"landmarks {m['landmark_px_median']:.3f} px", flush=True)
    if a.output:
        a.output.write_text(json.dumps({"device": a.device, "rows": rows, "means": means}, indent=1))


def _named(text: str) -> tuple[str, dict]:
    name, _, options = text.partition("=")
    if not options:
        raise SystemExit(f"--config {text!r}: expected NAME=JSON, e.g. '20 of all={{\"photometric_steps\": 20}}'")
    return name, json.loads(options)


if __name__ == "__main__":
    main()
