"""The benchmark's ``speed`` section (issue 16): start-up, a fit beside a busy neighbour, export and peak memory.

Run through ``scripts/benchmark.py`` (``--only-speed``, or as part of a full run); the cases:

* ``startup``: wall time of ``flame-prior --help`` and ``flame-prior fit --help`` in fresh
  interpreters (median of ``repeats``), whether the CLI's import loads torch, and the time from
  starting ``flame-prior fit`` on one FFHQ photo to its first progress line (then the run is
  stopped with SIGTERM, which leaves no output).
* ``busy``: the synthetic ``views``-view demo fit (photometric stage, ``steps`` fixed steps) alone and
  beside a CPU-bound neighbour (a Python busy loop pinned to one core), interleaved (alone, beside,
  alone, beside) in one run; the slowdown ratio of the photometric stage and of the whole fit.
  Optionally (``contrast``) the same beside the neighbour with the old settings: 2 spinning threads
  (``OMP_WAIT_POLICY=ACTIVE``, ``FLAME_PRIOR_THREADS=2``).
* ``real_30``: the 30-view scene, detection and COLMAP cached (a first run fills the cache), with the
  default schedule: fit, export (wall and CPU seconds) and the run's peak resident memory
  (``ru_maxrss`` of its process).

Every figure carries the machine's load average when it was taken: on a shared machine the ratios
taken within one run are what count.
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "cv2", "mediapipe", "pycolmap", "trimesh", "ray", "scipy")


def _load() -> float:
    return os.getloadavg()[0]


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "flame-prior"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from flame_prior.cli import entrypoint; entrypoint()"]


def case_startup(shared: Path, scratch: Path, repeats: int = 5) -> dict:
    """``--help`` wall times, the CLI's heavy imports, and the time to a fit's first progress line."""
    out: dict = {"load_1min_before": _load()}
    for name, argv in (("help", ["--help"]), ("fit_help", ["fit", "--help"])):
        times, cpu = [], []
        for _ in range(repeats):
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            p = subprocess.run(_cli() + argv, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
            if p.returncode != 0:
                out[f"{name}_error"] = p.stderr[-500:]
        out[f"{name}_s_median"], out[f"{name}_s_all"] = statistics.median(times), times
        # CPU seconds: about the wall time on an idle machine (a single-threaded start-up)
        out[f"{name}_cpu_s_median"] = statistics.median(cpu)
    code = "import sys, flame_prior.cli; print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))" % (HEAVY,)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    out["cli_import_loads"] = p.stdout.strip()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    out["python_import_torch_s"] = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["python_import_torch_cpu_s"] = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime

    photo = shared / "data" / "singleview" / "ffhq" / "00000.png"
    if photo.exists():
        tmp = tempfile.TemporaryDirectory(prefix="startup-", dir=scratch)  # removed below, whatever the fit wrote
        dest = Path(tmp.name) / "out"
        t0 = time.perf_counter()
        proc = subprocess.Popen(_cli() + ["fit", "--data", str(photo), "--output-dir", str(dest)],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        first = stage = None
        for line in proc.stderr:  # not a terminal: one plain line per stage start (LineProgress)
            if line.strip() and first is None:
                first = (time.perf_counter() - t0, line.strip())
            if line.lstrip().startswith("["):  # the first stage's own line ("[    0.0 s] loading the model files")
                stage = (time.perf_counter() - t0, line.strip())
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        tmp.cleanup()
        if first:
            out["fit_first_progress_s"], out["fit_first_progress_line"] = first
        if stage:
            out["fit_first_stage_s"], out["fit_first_stage_line"] = stage
    out["load_1min_after"] = _load()
    return out


def _neighbour() -> subprocess.Popen:
    """A CPU-bound process on one core (the last one of this process's affinity)."""
    core = max(os.sched_getaffinity(0))
    code = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def busy_section(run_case, case_synthetic, views: int, steps: int, repeats: int, contrast: bool, log) -> dict:
    """The fit alone and beside a busy neighbour, interleaved; slowdown ratios (see the module docstring)."""
    fitter = {"photometric_steps": steps, "early_stop": 0.0}
    common = dict(device="cpu", threads=None, views=views, fitter=fitter, export=False, floor=False)
    runs: dict[str, list] = {"alone": [], "beside_neighbour": []}
    for r in range(repeats):
        for kind in ("alone", "beside_neighbour"):
            log(f"busy machine: {views}-view fit, {steps} photometric steps, {kind} ({r + 1}/{repeats})")
            nb = _neighbour() if kind == "beside_neighbour" else None
            try:
                time.sleep(0.5 if nb else 0)
                load = _load()
                res = run_case(case_synthetic, **common)
            finally:
                if nb:
                    nb.kill()
                    nb.wait()
            runs[kind].append({"photometric_s": res.get("seconds", {}).get("photometric"),
                               "fit_s": res.get("seconds", {}).get("fit"), "load_1min": load,
                               "error": res.get("error")})
    if contrast:
        log("busy machine: beside the neighbour with the old settings (2 spinning threads)")
        env = {"OMP_WAIT_POLICY": "ACTIVE", "FLAME_PRIOR_THREADS": "2"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        nb = _neighbour()
        try:
            res = run_case(case_synthetic, **common)
        finally:
            nb.kill()
            nb.wait()
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        runs["beside_neighbour_old_settings"] = [{"photometric_s": res.get("seconds", {}).get("photometric"),
                                                  "fit_s": res.get("seconds", {}).get("fit"), "load_1min": _load(),
                                                  "error": res.get("error")}]

    def med(kind, key):
        vals = [x[key] for x in runs.get(kind, []) if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    out = {"views": views, "photometric_steps": steps, "cores": len(os.sched_getaffinity(0)), "runs": runs}
    for key in ("photometric_s", "fit_s"):
        alone, beside = med("alone", key), med("beside_neighbour", key)
        out[f"{key}_alone"], out[f"{key}_beside_neighbour"] = alone, beside
        out[f"slowdown_{key.removesuffix('_s')}"] = beside / alone if alone and beside else None
        old = med("beside_neighbour_old_settings", key)
        if old is not None and alone:
            out[f"slowdown_{key.removesuffix('_s')}_old_settings"] = old / alone
    return out


def speed_targets(speed: dict, add) -> None:
    """Rows of the benchmark's target table for the speed section."""
    st, busy, real = speed.get("startup") or {}, speed.get("busy") or {}, speed.get("real_30") or {}
    if st.get("help_s_median") is not None:
        add("flame-prior --help, s (median)", "<= 0.5", st["help_s_median"], st["help_s_median"] <= 0.5,
            f"CPU {st.get('help_cpu_s_median', float('nan')):.2f} s; fit --help {st.get('fit_help_s_median', float('nan')):.2f} s; "
            f"torch import alone {st.get('python_import_torch_s', float('nan')):.1f} s; CLI import loads {st.get('cli_import_loads')}; "
            f"load {st.get('load_1min_before', 0):.1f}")
    if st.get("fit_first_progress_s") is not None:
        add("a fit's first progress line, s", "<= 3", st["fit_first_progress_s"], st["fit_first_progress_s"] <= 3,
            f"'{st.get('fit_first_progress_line', '')[:60]}'; first stage line after "
            f"{st.get('fit_first_stage_s', float('nan')):.1f} s (torch import alone: {st.get('python_import_torch_s', 0):.1f} s)")
    if busy.get("slowdown_photometric") is not None:
        add(f"photometric stage beside a busy neighbour / alone ({busy['views']} views, {busy['cores']} cores)", "<= 2.5x",
            busy["slowdown_photometric"], busy["slowdown_photometric"] <= 2.5,
            f"whole fit {busy.get('slowdown_fit') or float('nan'):.2f}x; old settings (2 spinning threads) "
            f"{busy.get('slowdown_photometric_old_settings') or float('nan'):.2f}x")
    sec = real.get("seconds") or {}
    if sec.get("export") is not None:
        add("30-view export, s", "<= 2", sec["export"], sec["export"] <= 2,
            f"CPU {real.get('export_cpu_s', float('nan')):.1f} s; load {real.get('load_1min', 0):.1f}")
    mem = (real.get("memory") or {}).get("peak_rss_mb")
    if mem is not None:
        add("peak memory, 30 views of 1392x1040, MB", "<= 1536", mem, mem <= 1536, "ru_maxrss of the run's process")
