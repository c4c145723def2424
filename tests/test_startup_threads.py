"""Start-up and the thread policy (issue 16): the CLI and the configs import nothing heavy; the
OpenMP wait policy is set before torch loads; the thread count follows the free cores.

Each import check runs in a fresh interpreter (``sys.modules`` of this test process already holds
torch). Start-up *time* is measured in the benchmark (scripts/benchmark.py, ``startup``), not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "cv2", "mediapipe", "pycolmap", "trimesh", "ray", "scipy")


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


LOADED = "import sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(%r))))" % (HEAVY,)


@pytest.mark.parametrize("module", ["flame_prior.cli", "flame_prior.config", "flame_prior.batch.config",
                                    "flame_prior.demo_config", "nerfstudio_plugin.process_data"])
def test_cli_and_configs_import_nothing_heavy(module):
    """Building any command's config (what ``--help`` needs) loads none of the heavy libraries."""
    p = _python(f"import {module}; " + LOADED)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [], f"{module} imports {p.stdout.strip()}"


def test_the_check_sees_a_heavy_import():
    """The check above can fail: a module that does import torch is reported."""
    p = _python("import flame_prior.fit.fitter; " + LOADED)
    assert p.returncode == 0, p.stderr
    assert "torch" in json.loads(p.stdout.strip().splitlines()[-1])


def test_reading_images_does_not_import_torch(tmp_path):
    """The intake decodes on the shared thread pool (threads.parallel_map), which leaves torch unloaded
    when nobody loaded it: reading a folder of photos costs no torch import."""
    import numpy as np
    from PIL import Image

    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, dtype=np.uint8)).save(tmp_path / f"{k}.png")
    code = ("import sys\nfrom pathlib import Path\nfrom flame_prior.images import load_images\n"
            "images, _ = load_images(Path(sys.argv[1]))\nassert len(images) == 3, images\n" + LOADED)
    p = _python(code, str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "torch" not in json.loads(p.stdout.strip().splitlines()[-1]), p.stdout


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["batch", "--help"]])
def test_help_does_not_import_torch(argv):
    """``flame-prior --help`` (parsing included, not only the import) runs without torch, and is complete."""
    code = ("import sys\nfrom flame_prior.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\n" + LOADED.replace("print(", "print('LOADED', "))
    p = _python(code, *argv, env={"COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("LOADED") and json.loads(last.split(" ", 1)[1]) == [], last
    assert "--data" in p.stdout or argv == ["--help"], p.stdout[-2000:]
    if argv == ["fit", "--help"]:  # nested configs still reach the help text
        assert "--fitter.photometric-steps" in p.stdout and "--tracker.keyframes" in p.stdout


def test_top_level_help_loads_no_config():
    """``flame-prior --help`` lists every command without importing any command's config (nor numpy or
    tyro, which the configs need): the subcommand is chosen before anything heavier is imported."""
    code = ("import sys\nfrom flame_prior.cli import main, COMMANDS\ntry:\n    main(['--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'tyro')\n"
            "      or m in {c.config.split(':')[0] for c in COMMANDS}))")
    p = _python(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "LOADED []", p.stdout
    for name in ("fit", "batch", "demo", "nerfstudio-weights"):
        assert f"  {name} " in p.stdout, p.stdout


def test_entrypoint_sets_passive_wait_before_torch():
    """``flame-prior`` sets OMP_WAIT_POLICY=PASSIVE before torch loads (libgomp reads it once, at load)."""
    code = ("import os, sys\nfrom flame_prior.threads import set_wait_policy\nok = set_wait_policy()\n"
            "import torch\nprint(os.environ['OMP_WAIT_POLICY'], ok)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["PASSIVE", "True"]


def test_entrypoint_policy_is_in_place_when_a_command_runs():
    """Through the real console entry: the environment a command sees has the passive wait, and a
    user's own setting is kept."""
    code = ("import os, sys\nimport flame_prior.cli as cli\n"
            "cli.main = lambda *a, **k: print('POLICY', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules) or 0\n"
            "cli.entrypoint()")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert "POLICY PASSIVE False" in p.stdout, (p.stdout, p.stderr)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "ACTIVE"})
    assert "POLICY ACTIVE False" in p.stdout, (p.stdout, p.stderr)


@pytest.mark.parametrize("worker", [False, True])
def test_exit_now_runs_exit_handlers_and_keeps_the_code(worker, tmp_path):
    """cli.exit_now (the console script's exit, skipping torch's slow interpreter teardown): the exit
    code is kept, atexit handlers run, buffered output reaches the pipe; with a non-daemon thread still
    working it waits for it (falls back to sys.exit) instead of cutting it short."""
    marker, done = tmp_path / "atexit.txt", tmp_path / "thread.txt"
    code = ("import atexit, sys, threading, time\nimport torch\nfrom flame_prior.cli import exit_now\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
            f"def work():\n    time.sleep(0.5)\n    open({str(done)!r}, 'w').write('done')\n"
            f"if {worker}:\n    threading.Thread(target=work).start()\n"
            "sys.stdout.write('buffered, no newline')\nexit_now(3)\n")
    p = _python(code)
    assert p.returncode == 3, p.stderr
    assert p.stdout.endswith("buffered, no newline"), p.stdout
    assert marker.read_text() == "ran"
    assert done.exists() == worker


def test_set_wait_policy_keeps_the_users_choice():
    from flame_prior.threads import set_wait_policy

    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_wait_policy(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {}
    set_wait_policy(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_threads_follow_the_free_cores(monkeypatch):
    """A busy neighbour process takes a core out of the count (measured, not assumed)."""
    from flame_prior import threads

    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    cores = threads.available_cores()
    if cores < 2:
        pytest.fail("this check needs at least 2 cores")  # never a silent skip
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        others = threads.busy_cores_of_others(window_s=0.3)
        assert others is not None and others >= 0.7, others  # the spinner's core (at least)
        assert threads.compute_threads() <= cores - 1
    finally:
        spinner.kill()
        spinner.wait()


def test_user_thread_count_wins(monkeypatch):
    from flame_prior import threads

    monkeypatch.setenv(threads.ENV_THREADS, "3")
    assert threads.compute_threads() == 3
    import torch

    before = torch.get_num_threads()
    with threads.stage_threads("rigid") as n:
        assert n == 1 and torch.get_num_threads() == 1
    with threads.stage_threads("photometric") as n:
        assert n == 3 and torch.get_num_threads() == 3
    assert torch.get_num_threads() == before


def test_a_callers_one_thread_is_kept(monkeypatch):
    """torch.set_num_threads(1) before a fit (the repeatable setting) caps every stage at 1."""
    from flame_prior import threads
    import torch

    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threads.stage_threads("photometric") as n:
            assert n == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_batch_workers_use_the_same_policy():
    from flame_prior.batch.worker import worker_environment

    env = worker_environment(2)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "2"


def test_malloc_arenas_are_capped_unless_the_user_chose():
    """The entry caps glibc's arenas (a user's MALLOC_ARENA_MAX is left to glibc)."""
    code = "from flame_prior.threads import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert p.stdout.strip() == "True", (p.stdout, p.stderr)  # glibc (this project's Linux) accepts it
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "4"})
    assert p.stdout.strip() == "False", (p.stdout, p.stderr)


def test_a_fit_measures_the_load_once(monkeypatch):
    """Every stage of a fit shares one measurement (given to stage_threads), capped like a measured one."""
    from flame_prior import threads
    import torch

    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    calls = []
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda window_s=0.1: calls.append(1) or 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.stage_threads("landmarks", 1) as n:
            assert n == 1 and torch.get_num_threads() == 1
        with threads.stage_threads("photometric", 4) as n:
            assert n == 2  # capped by torch's count on entry
        with threads.stage_threads("rigid", 2) as n:
            assert n == 1
        assert calls == []  # given a count, no stage measures
        with threads.stage_threads("photometric") as n:
            assert calls == [1]  # without one it measures, as before
    finally:
        torch.set_num_threads(before)


def test_a_fit_does_not_import_torch_dynamo():
    """``torch._dynamo`` (which torch's forward-mode AD and ``torch.optim`` import on first use) costs
    about 3 s of CPU per process, sympy (which ``torch.autograd.grad`` with an explicit
    ``grad_outputs`` tensor imports) 0.7 s: a fit without COLMAP poses, photometric stage and free
    texture map included, imports neither (the check can fail: ``torch.optim.Adam([...])`` alone
    imports torch._dynamo)."""
    code = ("import sys, numpy as np, torch\nfrom flame_prior import demo\nfrom flame_prior.demo_config import DemoConfig\n"
            "from flame_prior.fit import FitterConfig, fit_flame\nfrom flame_prior.intrinsics import Intrinsics\n"
            "_, model, emb, ts = demo.demo_assets(0, torch.device('cpu'))\n"
            "sc = demo.render_scene(model, emb, ts, DemoConfig(views=2, image_size=128, seed=0), np.random.default_rng(0))\n"
            "f = sc.cameras.fx.numpy(); c = np.full(2, 64.0)\n"
            "r = fit_flame(model, emb, sc.views, Intrinsics(f, f.copy(), c, c.copy(), 'given', False),\n"
            "              FitterConfig(photometric_steps=3, landmark_steps=3, render_size=64), uv_layout=(ts.uvs, ts.uv_faces))\n"
            "print('STAGES', [s.name for s in r.stages])\nprint('DYNAMO', 'torch._dynamo' in sys.modules)\n"
            "print('SYMPY', 'sympy' in sys.modules)\n"
            "torch.optim.Adam([torch.zeros(1, requires_grad=True)])\nprint('AFTER_OPTIM', 'torch._dynamo' in sys.modules)\n")
    p = _python(code, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in p.stdout.splitlines() if line.split(" ", 1)[0] in
                 ("STAGES", "DYNAMO", "SYMPY", "AFTER_OPTIM"))
    assert "photometric" in lines["STAGES"], lines
    assert lines["DYNAMO"] == "False" and lines["SYMPY"] == "False" and lines["AFTER_OPTIM"] == "True", lines
