"""Smoke test of scripts/benchmark.py: a tiny --quick run writes a JSON with the expected keys and
finite numbers (no wall-clock assertions: timings on a shared machine are noise)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _run_folders() -> set[str]:
    """The benchmark's per-run folders in its scratch folder (``scripts/benchmark.py``: ``_run_dir``)."""
    scratch = Path(tempfile.gettempdir()) / "bench"
    prefixes = ("detcache-", "dyn-", "startup-")
    return {p.name for p in scratch.iterdir() if p.name.startswith(prefixes)} if scratch.is_dir() else set()


@pytest.mark.slow
def test_benchmark_quick_smoke(tmp_path):
    out = tmp_path / "b.json"
    before = _run_folders()
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--quick", "--skip-real", "--device", "cpu",
           "--repeats", "1", "--photometric-steps", "2", "--sweep-views", "1", "--sweep-sizes", "128",
           "--sweep-steps", "1", "--baseline-iters", "10", "2", "--no-profile", "--video-seconds", "2",
           "--track-timesteps", "6", "--speed-steps", "1", "--skip-scan", "--output", str(out)]
    # --skip-scan: the scan rigs render and run the whole tool six times (minutes, ~0.5 GB of renders);
    # tests/test_scan_rigs.py runs their code. The limit only catches a hang.
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _run_folders() <= before, f"the run left folders in the scratch folder: {_run_folders() - before}"
    rep = json.loads(out.read_text())
    assert {"meta", "cases", "scaling", "baseline", "targets"} <= set(rep)
    meta = rep["meta"]
    assert meta["device"] == "cpu" and meta["quick"] is True and meta["cpu_count"] >= 1
    assert (tmp_path / "benchmark_scaling.png").exists()
    speed = rep["speed"]  # issue 16: start-up without torch, the fit beside a busy neighbour
    assert speed["startup"]["cli_import_loads"] == "[]", speed["startup"]
    assert _finite(speed["startup"]["help_s_median"])
    assert _finite(speed["busy"]["slowdown_photometric"]) and speed["busy"]["slowdown_photometric"] > 0, speed["busy"]
    for name in ("synthetic_8", "synthetic_30", "synthetic_8_unknown_focal"):
        case = rep["cases"][name]
        assert "error" not in case, case.get("error")
        for k in ("rigid", "landmarks", "photometric", "fit", "total", "intake"):
            assert _finite(case["seconds"][k]) and case["seconds"][k] >= 0, (name, k)
        for k in ("rotation_deg_median", "translation_pct_median", "focal_pct_median", "landmark_error_px_median",
                  "landmark_error_over_eye_median", "static51_error_px_median"):
            assert _finite(case["accuracy"][k]), (name, k)
        assert _finite(case["memory"]["peak_rss_mb"]) and case["memory"]["peak_rss_mb"] > 0
        assert case["stages"]["photometric"]["iterations"] >= 1
    floor = rep["cases"]["synthetic_8"]["floor"]
    assert _finite(floor["photometric_step_s"]) and _finite(floor["landmark_eval_s"])
    assert _finite(floor["appearance_solve_s"]) and _finite(floor["photometric_step_coarse_s"])
    assert set(floor["stages"]) == {"rigid", "landmarks", "occlusion", "photometric"}
    for key in ("views", "render_size"):
        (pt,) = rep["scaling"][key]
        assert "error" not in pt, pt.get("error")
        assert _finite(pt["fit_s"]) and _finite(pt["photometric_s"])
    base = rep["baseline"]["synthetic_8"]
    assert "error" not in base, base.get("error")
    assert base["rigid"]["iterations_ran"] == 10 and base["joint"]["iterations_ran"] == 2
    for k in ("full_schedule_seconds", "static51_error_px_median", "rotation_deg_median"):
        assert _finite(base[k]), k
    ratios = base["ratios"]
    assert ratios["baseline_extrapolated"] is True
    assert _finite(ratios["speedup_fit_vs_full_schedule"])
    assert _finite(ratios["static51_error_ratio_flame_prior_over_baseline"])
    assert rep["targets"] and all(_finite(t["measured"]) for t in rep["targets"])
    video, track = rep["cases_video"]["video_intake"], rep["cases_video"]["tracking"]
    assert "error" not in video and "error" not in track, (video.get("error"), track.get("error"))
    assert video["frames"] == 60 and video["size"] == [1920, 1080] and 0 < video["kept"] <= 60
    assert _finite(video["seconds"]["decode_and_select"]) and _finite(track["timesteps_per_second"])
    assert track["timesteps"] == 6 and _finite(track["accuracy"]["jaw_open_error_deg_max"])
    assert {t["target"] for t in rep["targets"]} >= {"decode + frame selection, 60 s 1080p clip",
                                                      "dynamic tracking after detection"}


def test_schedule_sweep_smoke(tmp_path):
    """``scripts/schedule_sweep.py`` fits each named schedule on each scene and writes rows and per-config means
    whose step counts are the schedules asked for."""
    out = tmp_path / "sweep.json"
    cmd = [sys.executable, "scripts/schedule_sweep.py", "--device", "cpu", "--views", "3", "--seeds", "0", "1",
           "--config", 'two={"photometric_steps": 2, "early_stop": -1e9}',
           "--config", 'three={"photometric_steps": 3, "early_stop": -1e9}', "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["config"], r["seed"], r["photometric_steps"]) for r in report["rows"]] == \
        [("two", 0, 2), ("two", 1, 2), ("three", 0, 3), ("three", 1, 3)]
    assert [(m["config"], m["seeds"]) for m in report["means"]] == [("two", 2), ("three", 2)]
    for m in report["means"]:
        assert 0 < m["rotation_deg_median"] <= m["rotation_deg_max"] < 5 and m["fit_s"] > m["photometric_s"] > 0
    assert "MEAN views=3 'three'" in proc.stdout
