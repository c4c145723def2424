"""Progress off a terminal: plain lines per stage start/end with times, and a line every interval while a
stage runs (also inside one long blocking call, like COLMAP's matching)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

from rich.console import Console
from rich.progress import Progress

from flame_prior.progress import LineProgress, make_console, make_progress, stage

LINE = re.compile(r"^\[\s*\d+\.\d s\] ")


def _console(buf: io.StringIO) -> Console:
    return Console(file=buf, force_terminal=False, soft_wrap=True, width=200)


def test_not_a_terminal_gives_line_progress_and_a_terminal_gives_bars():
    assert isinstance(make_progress(_console(io.StringIO())), LineProgress)
    assert isinstance(make_progress(Console(file=io.StringIO(), force_terminal=True)), Progress)


def test_start_end_and_heartbeat_lines():
    buf = io.StringIO()
    with LineProgress(_console(buf), interval=0.3) as progress:
        task = progress.add_task("Detecting faces", total=4)
        progress.advance(task)
        time.sleep(1.0)  # a stage stuck in one blocking call: the heartbeat still reports
        for _ in range(3):
            progress.advance(task)
        progress.advance(task)  # after the end: no second "done"
        with stage(progress, "writing the outputs"):
            pass
    lines = buf.getvalue().splitlines()
    assert lines and all(LINE.match(line) for line in lines), lines
    assert "Detecting faces: started (4 to do)" in lines[0]
    beats = [line for line in lines if re.search(r"Detecting faces: 1/4, \d+\.\d s$", line)]
    assert len(beats) >= 2, lines  # ~1 s of waiting at a 0.3 s interval
    done = [line for line in lines if "Detecting faces: done" in line]
    assert len(done) == 1 and re.search(r"done 4/4 in (\d+\.\d) s$", done[0])
    assert float(re.search(r"in (\d+\.\d) s$", done[0]).group(1)) >= 1.0
    assert any("writing the outputs: started" in line for line in lines)
    assert any(re.search(r"writing the outputs: done in \d+\.\d s$", line) for line in lines)
    assert "━" not in buf.getvalue()  # no bar


def test_phase_descriptions_are_printed_once_and_removed_tasks_end():
    buf = io.StringIO()
    with LineProgress(_console(buf), interval=60) as progress:
        task = progress.add_task("COLMAP", total=5)
        progress.update(task, description="COLMAP: matching all pairs", advance=1)
        progress.update(task, description="COLMAP: registering views", advance=1)
        progress.update(task, description="COLMAP: registering views", advance=1)
        progress.remove_task(task)
        unfinished = progress.add_task("fit: photometric", total=10)
        progress.advance(unfinished, 3)
    text = buf.getvalue()
    assert text.count("COLMAP: registering views:") == 2  # the phase line and the end line
    assert "COLMAP: matching all pairs: 1/5" in text
    assert re.search(r"COLMAP: registering views: done 3/5 in \d+\.\d s", text)
    assert re.search(r"fit: photometric: stopped at 3/10, \d+\.\d s", text)


def test_console_off_a_terminal_does_not_wrap_at_80_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()  # stderr is pytest's capture: not a terminal
    assert not console.is_terminal
    buf = io.StringIO()
    console.file = buf
    console.print("x" * 150 + " 1.234")
    assert len(buf.getvalue().splitlines()) == 1


def test_demo_into_a_log_file_prints_stage_lines(tmp_path):
    log = tmp_path / "demo.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "flame_prior.cli", "demo", "--output-dir", str(tmp_path / "out"),
                               "--views", "3", "--image-size", "96", "--fitter.photometric-steps", "4",
                               "--fitter.render-size", "64"], stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text
    for stage_name in ("rendering the synthetic views", "fit", "fit: rigid", "fit: landmarks", "fit: photometric",
                       "writing the outputs"):
        assert re.search(rf"\] {re.escape(stage_name)}: started", text), (stage_name, text)
        assert re.search(rf"\] {re.escape(stage_name)}: done.* in \d+\.\d s", text), (stage_name, text)
    assert not re.search(r"━+ +\d+/\d+", text) and "⠋" not in text  # no bars or spinners dumped into the log
    time_line = next(line for line in text.splitlines() if line.startswith("time: "))
    assert re.search(r"fit \d+\.\d s \(rigid \d+\.\d s, landmarks \d+\.\d s, occlusion \d+\.\d s, photometric \d+\.\d s, set-up \d+\.\d s\)", time_line)
    assert "focal error" not in text  # focal given: no always-0 column
