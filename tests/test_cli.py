"""The ``flame-prior`` command line itself: argument errors, the exit-code mapping, one-line
messages, ``FLAME_PRIOR_DEBUG``, signals around the final rename. The pipeline's own failure
cases (bad images, model files, output folders) are in ``test_reliability.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import flame_prior.export.output_dir as output_dir
import flame_prior.pipeline as pipeline
from flame_prior.cli import execute, main
from flame_prior.config import FitConfig
from flame_prior.errors import FitError, InputError, Interrupted, ModelFileError, deferred_interrupts

EXE = Path(sys.executable).parent / "flame-prior"


def _code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv", [
    ["fit", "--data", "x"],                                               # --output-dir missing
    ["fit", "--output-dir", "o"],                                         # --data missing
    ["fit", "--data", "x", "--output-dir", "o", "--no-such-flag"],
    ["fit", "--data", "x", "--output-dir", "o", "--fitter.photometric-steps", "many"],
    ["fit", "--data", "x", "--output-dir", "o", "--detect.backend", "dlib"],
    ["fit", "--data", "x", "--output-dir", "o", "--fitter.device", "tpu"],
    ["fitt", "--data", "x", "--output-dir", "o"],
    [],
])
def test_argument_errors_exit_2(argv, capsys):
    assert _code(argv) == 2
    assert capsys.readouterr().err.strip(), "tyro says what is wrong"


def test_help_exits_0(capsys):
    assert _code(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--output-dir" in out and "--overwrite" in out


def test_argument_error_exit_code_of_the_real_process(tmp_path):
    p = subprocess.run([str(EXE), "fit", "--data", str(tmp_path), "--bogus"], capture_output=True, text=True)
    assert p.returncode == 2 and "--bogus" in p.stderr + p.stdout


@pytest.mark.parametrize("exc,code", [
    (InputError("bad image", "/x/a.png", hint="Use another."), 2),
    (ModelFileError("bad model", "/x/m.pkl", hint="Re-download."), 3),
    (FitError("no face", "/x", hint="Use photos."), 4),
    (KeyboardInterrupt(), 130),
    (Interrupted("interrupted after the output was complete: /x/out is the new output"), 130),
    (RuntimeError("boom"), 1),
    (MemoryError(), 1),
])
def test_exit_code_mapping(exc, code, monkeypatch, capsys, tmp_path):
    def fail(config, console=None):
        raise exc

    monkeypatch.setattr(pipeline, "run", fail)
    monkeypatch.delenv("FLAME_PRIOR_DEBUG", raising=False)
    assert execute(FitConfig(data=tmp_path, output_dir=tmp_path / "out")) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    if code in (2, 3, 4):
        assert err.startswith("error: /x") and str(exc) in err
    if code == 130:
        assert "interrupted" in err
        if isinstance(exc, Interrupted):
            assert "/x/out is the new output" in err
    if code == 1:
        assert err.startswith(f"internal error: {type(exc).__name__}") and "FLAME_PRIOR_DEBUG=1" in err


@pytest.mark.parametrize("exc", [RuntimeError("boom"), InputError("bad image", "/x/a.png")])
def test_debug_env_prints_the_traceback(exc, monkeypatch, capsys, tmp_path):
    def fail(config, console=None):
        raise exc

    monkeypatch.setattr(pipeline, "run", fail)
    monkeypatch.setenv("FLAME_PRIOR_DEBUG", "1")
    execute(FitConfig(data=tmp_path, output_dir=tmp_path / "out"))
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in fail" in err


def test_messages_are_printed_literally_on_one_line(monkeypatch, capsys, tmp_path):
    """Rich markup in a message ([bold], a path with brackets) is printed as is, and never wrapped."""
    monkeypatch.setenv("COLUMNS", "40")
    long = tmp_path / ("[bold]odd" + "x" * 120) / "a.png"

    def fail(config, console=None):
        raise InputError("keys present: ['f', 'v_template'] [/]", long, hint="Do [red]this[/red].")

    monkeypatch.setattr(pipeline, "run", fail)
    assert execute(FitConfig(data=tmp_path, output_dir=tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(long) in err and "['f', 'v_template'] [/]" in err and "Do [red]this[/red]." in err


def test_missing_data_is_reported_before_the_output_dir(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["fit", "--data", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "nope: no such file or folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Signals around the final rename


def test_deferred_interrupts_hold_the_signal_until_the_block_ends():
    done = []
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a job started in the background
    with pytest.raises(Interrupted, match="the block finished"):
        with deferred_interrupts("the block finished"):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            done.append(1)  # still runs: the signals only were recorded
    assert done == [1]
    assert signal.getsignal(signal.SIGINT) is before, "handlers restored"
    with deferred_interrupts():
        pass  # no signal: no exception


def test_signal_during_the_final_swap_completes_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "fit_summary.json").write_text("old")
    real_rmtree = output_dir.shutil.rmtree

    def rmtree_with_ctrl_c(path, *args, **kwargs):  # Ctrl-C while the previous output is deleted
        if ".out.old-" in str(path):
            os.kill(os.getpid(), signal.SIGINT)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(output_dir.shutil, "rmtree", rmtree_with_ctrl_c)
    with pytest.raises(Interrupted, match="output was complete"):
        with output_dir.atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "fit_summary.json").write_text("new")
    assert (out / "fit_summary.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_partial_of_a_dead_run_is_removed(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}-abc"
    live = tmp_path / f".out.partial-{os.getppid()}-def"  # a run in progress: kept
    unrelated = tmp_path / ".other.partial-1-x"
    for p in (stale, live, unrelated):
        p.mkdir()
    with output_dir.atomic_output_dir(out, overwrite=False) as tmp:
        (tmp / "a").write_text("a")
    assert not stale.exists() and live.exists() and unrelated.exists()
    assert (out / "a").read_text() == "a"


@pytest.mark.parametrize("command, option, value", [
    ("fit", "--intrinsics.focal-px", "-3"),
    ("fit", "--intrinsics.prior-fov-deg", "180"),
    ("fit", "--fitter.render-size", "0"),
    ("fit", "--fitter.robust-scale", "0"),
    ("fit", "--detect.min-face-px", "-1"),
    ("demo", "--views", "0"),
    ("demo", "--fitter.photometric-views", "0"),
])
def test_impossible_option_values_exit_2_before_any_work(tmp_path, capsys, monkeypatch, command, option, value):
    """Checked before the output folder, the model files or a detector are touched: exit 2, one
    line naming the option (not "internal error" after detection)."""
    data = tmp_path / "photos"
    data.mkdir()
    out = tmp_path / "out"
    touched = []
    monkeypatch.setattr("flame_prior.pipeline.load_assets", lambda *a, **k: touched.append("assets"))
    monkeypatch.setattr("flame_prior.demo.demo_assets", lambda *a, **k: touched.append("assets"))
    argv = [command, "--output-dir", str(out), option, value] + (["--data", str(data)] if command == "fit" else [])
    assert _code(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    lines = [line for line in err if line.startswith("error:")]
    assert len(lines) == 1 and option in lines[0] and f"(got {value}" in lines[0], err
    assert not out.exists() and not touched


def test_demo_honours_the_fitter_device_option(tmp_path, capsys):
    """One device option for every command: ``demo --fitter.device`` reaches the fitter (asking for
    CUDA where torch has none is refused, exit 2, naming the option); ``demo`` has no own ``--device``."""
    import torch

    assert _code(["demo", "--device", "cpu"]) == 2
    if torch.cuda.is_available():
        pytest.skip("CUDA present: asking for it is not an error here")
    assert _code(["demo", "--output-dir", str(tmp_path / "d"), "--fitter.device", "cuda"]) == 2
    assert "--fitter.device cuda" in capsys.readouterr().err


def test_run_demo_round_trip(tmp_path):
    """``run_demo`` (what ``make demo`` runs), small: the outputs of a real run plus
    camera_errors.json, whose errors are small (4 views, 128 px, 0.5 px landmark noise)."""
    import json

    from flame_prior.demo import DemoConfig, run_demo
    from flame_prior.fit import FitterConfig

    out = tmp_path / "demo"
    cfg = DemoConfig(output_dir=out, views=4, image_size=128,
                     fitter=FitterConfig(photometric_steps=10, render_size=64, texture_size=64, device="cpu"))
    summary = run_demo(cfg)
    for name in ("transforms.json", "flame_params.npz", "fit_summary.json", "report.html", "camera_errors.json"):
        assert (out / name).exists(), name
    errors = json.loads((out / "camera_errors.json").read_text())
    assert errors["views"] == 4 and summary["rotation_deg"]["max"] == errors["rotation_deg"]["max"]
    assert errors["rotation_deg"]["max"] < 2.0, errors["rotation_deg"]
    assert errors["translation_scaled_pct"]["max"] < 3.0, errors["translation_scaled_pct"]
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 4
