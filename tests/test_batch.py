"""``flame-prior batch``: scenes and keys, EG3D labels, and real runs (real MediaPipe, real worker
processes, real Ray in local mode) with resume, failures, Ctrl-C and a kill in the middle.

The runs use the fast preset on the shared FFHQ photos (and mirrored copies of them: distinct files),
so that each run takes seconds of fitting; start-up of the worker processes dominates.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flame_prior.batch import BatchConfig, run_batch
from flame_prior.batch.scenes import discover_scenes, scene_key, settings_fingerprint
from flame_prior.errors import FitError, InputError
from flame_prior.export.eg3d import crop_window, eg3d_label, write_eg3d_dataset

REPO = Path(__file__).resolve().parents[1]

# Files every full scene output has (the files of `fit`), and the batch's own record.
SCENE_FILES = ("transforms.json", "fit_summary.json", "flame_params.npz", "flame_points.ply", "mesh.obj",
               "texture.png", "report.html", "colmap_text/cameras.txt", "batch_record.json")


# ------------------------------------------------------------------------------------------
# Scenes and keys (no fitting)


def _png(path: Path, seed: int = 0) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    return path


def test_discover_scene_folders_and_single_images(tmp_path):
    root = tmp_path / "root"
    _png(root / "my subj" / "a.png")
    _png(root / "subj1" / "a.png")
    _png(root / "subj10" / "a.png")
    _png(root / "subj2" / "b.jpg")
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    _png(root / ".hidden" / "x.png")
    scenes = discover_scenes(root, single_images=False)
    assert [s.name for s in scenes] == ["my_subj", "subj1", "subj2", "subj10"]  # natural order, safe names
    assert scenes[0].relative == "my subj"

    flat = tmp_path / "flat"
    _png(flat / "a.png")
    _png(flat / "a.jpg", 1)
    _png(flat / "sub" / "b.png")
    (flat / "notes.npy").write_bytes(b"x")
    singles = discover_scenes(flat, single_images=True)
    assert sorted(s.relative for s in singles) == ["a.jpg", "a.png", "sub/b.png"]
    names = [s.name for s in singles]
    assert len(set(names)) == 3 and "sub_b" in names  # a.png / a.jpg do not clash

    with pytest.raises(InputError, match="--single-images"):
        discover_scenes(flat / "sub", single_images=False)  # images directly in the root: says what to pass
    with pytest.raises(InputError, match="no image"):
        discover_scenes(root / "empty", single_images=True)


def test_scene_key_follows_inputs_and_settings_not_paths(tmp_path):
    root = tmp_path / "root"
    _png(root / "s" / "a.png")
    scene = discover_scenes(root, False)[0]
    cfg = BatchConfig(data=root, output_dir=tmp_path / "out")
    base = settings_fingerprint(cfg.scene_config(scene.data, tmp_path / "o1"), {})
    moved = settings_fingerprint(cfg.scene_config(scene.data, tmp_path / "elsewhere"), {})
    assert base == moved  # output and cache paths are not settings
    cfg.detect.cache_dir = tmp_path / "cache"
    assert settings_fingerprint(cfg.scene_config(scene.data, tmp_path / "o1"), {}) == base
    cfg.fitter.landmark_steps += 1
    assert settings_fingerprint(cfg.scene_config(scene.data, tmp_path / "o1"), {}) != base
    k0 = scene_key(scene, base)
    assert scene_key(scene, base) == k0
    _png(root / "s" / "a.png", seed=1)  # same name, new content
    assert scene_key(scene, base) != k0
    fast = BatchConfig(data=root, output_dir=tmp_path / "out", preset="fast").scene_config(scene.data, tmp_path)
    assert fast.fitter.photometric_steps == 0 and settings_fingerprint(fast, {}) != base


def test_output_folder_is_refused_when_it_is_not_a_batch_output(tmp_path):
    root = tmp_path / "root"
    _png(root / "s" / "a.png")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="batch.json"):
        run_batch(BatchConfig(data=root, output_dir=other))
    with pytest.raises(InputError, match="inside the batch root"):
        run_batch(BatchConfig(data=root, output_dir=root / "out"))
    assert (other / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------
# EG3D labels


def _look_at(eye: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world-to-camera (R, t) of a camera at ``eye`` looking at the origin, +Y up."""
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])  # rows: camera axes in world
    return R, -R @ eye


def test_eg3d_label_layout_axes_and_projection():
    # A frontal camera 1 m in front of the face (FLAME: the face looks along +Z).
    R, t = _look_at(np.array([0.0, 0.0, 1.0]))
    label = eg3d_label(R, t, 800.0, 800.0, 256.0, 256.0, 512, 512)
    assert len(label) == 25
    c2w, K = np.array(label[:16]).reshape(4, 4), np.array(label[16:]).reshape(3, 3)
    # EG3D's frontal camera (camera_utils.create_cam2world_matrix looking at the origin from +Z):
    # camera x = world +X, camera y = world -Y, camera z (forward) = world -Z; radius 2.7 at 1 m.
    assert np.allclose(c2w[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-12)
    assert np.allclose(c2w[:3, 3], [0, 0, 2.7]) and np.allclose(c2w[3], [0, 0, 0, 1])
    assert np.allclose(K, [[800 / 512, 0, 0.5], [0, 800 / 512, 0.5], [0, 0, 1]])

    # Any camera: projecting FLAME points (scaled to EG3D units) with the label gives the same
    # normalised pixel as flame-prior's camera.
    rng = np.random.default_rng(0)
    for _ in range(5):
        eye = rng.normal(size=3)
        eye = 0.6 * eye / np.linalg.norm(eye) + np.array([0.0, 0.0, 0.4])
        R, t = _look_at(eye)
        fx, fy, cx, cy, W, H = 900.0, 910.0, 300.0, 210.0, 640, 400
        lab = eg3d_label(R, t, fx, fy, cx, cy, W, H, scale=2.7)
        c2w, K = np.array(lab[:16]).reshape(4, 4), np.array(lab[16:]).reshape(3, 3)
        X = rng.uniform(-0.1, 0.1, size=(20, 3))
        pc = X @ R.T + t
        ours = np.stack([fx * pc[:, 0] / pc[:, 2] + cx, fy * pc[:, 1] / pc[:, 2] + cy], -1) / [W, H]
        w2c = np.linalg.inv(c2w)
        pe = (2.7 * X) @ w2c[:3, :3].T + w2c[:3, 3]
        theirs = (pe @ K.T)[:, :2] / pe[:, 2:3]
        assert np.allclose(ours, theirs, atol=1e-9)


def test_eg3d_dataset_json_reads_as_eg3d_does(tmp_path):
    import cv2

    root = tmp_path / "root"
    img = np.zeros((200, 300, 3), np.uint8)
    img[:, 150:] = 255  # the right half white: the crop's content shows where the window went
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "sub" / "f.jpg"), img)
    R, t = _look_at(np.array([0.0, 0.0, 1.0]))
    view = {"file": "sub/f.jpg", "R": R.tolist(), "t": t.tolist(), "fx": 400.0, "fy": 400.0, "cx": 150.0,
            "cy": 100.0, "width": 300, "height": 200}
    write_eg3d_dataset(tmp_path / "eg3d", root, [{"views": [view]}], crop_size=64)
    labels = json.loads((tmp_path / "eg3d" / "dataset.json").read_text())["labels"]
    table = {x[0]: x[1] for x in labels}  # what EG3D's dataset_tool does with the file
    assert list(table) == ["sub/f.jpg"] and len(table["sub/f.jpg"]) == 25
    crops = {x[0]: x[1] for x in json.loads((tmp_path / "eg3d" / "crops" / "dataset.json").read_text())["labels"]}
    K = np.array(crops["sub/f.png"][16:]).reshape(3, 3)
    x0, y0, side = crop_window(R, t, 400.0, 400.0, 150.0, 100.0)
    assert side == pytest.approx(400 * 0.30 / 1.0)  # 0.30 m at 1 m
    assert np.allclose(K, [[400 / side, 0, 0.5], [0, 400 / side, 0.5], [0, 0, 1]])  # origin projects to the centre
    crop = cv2.imread(str(tmp_path / "eg3d" / "crops" / "sub" / "f.png"))
    assert crop.shape == (64, 64, 3)
    assert crop[:, :28].max() < 20 and crop[:, 36:].min() > 235  # the image's midline is the crop's midline


# ------------------------------------------------------------------------------------------
# Real runs


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The five shared FFHQ photos and their mirror images: ten distinct single-face files."""
    import cv2

    from conftest import shared_path

    src = shared_path("data/singleview/ffhq")
    d = tmp_path_factory.mktemp("faces")
    paths = []
    for p in sorted(src.glob("0000[0-4].png")):
        shutil.copy(p, d / p.name)
        cv2.imwrite(str(d / f"{p.stem}_mirror.png"), cv2.imread(str(p))[:, ::-1])
        paths += [d / p.name, d / f"{p.stem}_mirror.png"]
    return sorted(paths)


@pytest.fixture(scope="module")
def detections(tmp_path_factory):
    return tmp_path_factory.mktemp("detections")


def _config(data, out, detections, **kw) -> BatchConfig:
    cfg = BatchConfig(data=data, output_dir=out, preset="fast", **kw)
    cfg.detect.cache_dir = detections
    cfg.fitter.device = "cpu"
    return cfg


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


def _no_temporaries(out: Path) -> None:
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or ".partial-" in p.name or p.suffix == ".tmp"]
    assert not leftovers, leftovers


@pytest.mark.slow
def test_batch_folders_full_outputs_failure_and_resume(faces, detections, tmp_path):
    root = tmp_path / "subjects"
    for name, files in (("anna", faces[:2]), ("ben", faces[2:3])):
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / name / f.name)
    (root / "broken").mkdir()
    (root / "broken" / "x.png").write_bytes(b"not an image")
    out = tmp_path / "out"

    with pytest.raises(FitError, match="1 of 3 scenes failed"):
        run_batch(_config(root, out, detections, workers=2))
    recs = _records(out)
    assert recs["anna"]["status"] == "done" and recs["ben"]["status"] == "done"
    assert recs["broken"]["status"] == "failed" and "x.png" in recs["broken"]["error"]
    assert recs["anna"]["views_fitted"] == 2 and len(recs["anna"]["views"]) == 2
    for name in ("anna", "ben"):  # a complete output of `fit` per scene
        for f in SCENE_FILES:
            assert (out / "scenes" / name / f).is_file(), (name, f)
        assert json.loads((out / "scenes" / name / "batch_record.json").read_text())["key"] == recs[name]["key"]
        assert (out / "thumbs" / f"{name}.jpg").is_file()
    assert not (out / "scenes" / "broken").exists()
    index = json.loads((out / "index.json").read_text())
    assert [(r["scene"], r["status"]) for r in index["scenes"]] == [("anna", "done"), ("ben", "done"),
                                                                     ("broken", "failed")]
    html = (out / "index.html").read_text()
    assert "thumbs/anna.jpg" in html and "scenes/anna/report.html" in html and "not an image" in html  # the failed scene says why
    csv_lines = (out / "index.csv").read_text().splitlines()
    assert csv_lines[0].startswith("scene,status,error") and len(csv_lines) == 4
    _no_temporaries(out)
    first_run = recs["anna"]["run_id"]
    mtime = (out / "scenes" / "anna" / "fit_summary.json").stat().st_mtime_ns

    # Rerun: nothing to do; the failed scene is reported, not retried.
    with pytest.raises(FitError):
        outcome = run_batch(_config(root, out, detections, workers=2))
    recs = _records(out)
    assert recs["anna"]["run_id"] == first_run and recs["broken"]["run_id"] == first_run
    assert (out / "scenes" / "anna" / "fit_summary.json").stat().st_mtime_ns == mtime
    statuses = {r["scene"]: r["status"] for r in json.loads((out / "index.json").read_text())["scenes"]}
    assert statuses == {"anna": "done earlier", "ben": "done earlier", "broken": "failed earlier"}

    # Fix the broken scene and change one of ben's images: --retry-failed runs exactly those two.
    shutil.copy(faces[3], root / "broken" / "x.png")
    shutil.copy(faces[4], root / "ben" / faces[2].name)
    outcome = run_batch(_config(root, out, detections, workers=2, retry_failed=True))
    assert sorted(outcome.done) == ["ben", "broken"] and outcome.skipped_done == ["anna"]
    recs = _records(out)
    assert recs["anna"]["run_id"] == first_run and recs["ben"]["run_id"] != first_run
    assert (out / "scenes" / "anna" / "fit_summary.json").stat().st_mtime_ns == mtime
    _no_temporaries(out)


def _camera_centres(out: Path) -> dict[str, np.ndarray]:
    return {k: -np.array(r["views"][0]["R"]).T @ np.array(r["views"][0]["t"]) for k, r in _records(out).items()}


@pytest.mark.slow
def test_single_images_with_ray_match_the_process_pool(faces, detections, tmp_path):
    """Ray (local mode, for real) runs the same per-scene function: the same records and EG3D labels."""
    import ray  # noqa: F401 — the [ray] extra; `make test` installs it (no skip: CI must run this)
    root = tmp_path / "faces"
    root.mkdir()
    for f in faces[:3]:
        shutil.copy(f, root / f.name)
    pool_out, ray_out = tmp_path / "pool", tmp_path / "ray"
    run_batch(_config(root, pool_out, detections, single_images=True, scene_outputs="record", workers=2,
                      eg3d_crops=128))
    outcome = run_batch(_config(root, ray_out, detections, single_images=True, scene_outputs="record", workers=2,
                                ray=True, eg3d_crops=128))
    assert len(outcome.done) == 3
    pool, ray_ = _records(pool_out), _records(ray_out)
    assert set(pool) == set(ray_) == {f.stem for f in faces[:3]}
    for k in pool:
        assert pool[k]["key"] == ray_[k]["key"]
    for recs in (pool, ray_):  # 2 workers on this machine's cores: threads split, idle OpenMP threads sleep
        for r in recs.values():
            threads = max(1, len(os.sched_getaffinity(0)) // 2)
            assert r["worker"] == {"torch_threads": threads, "OMP_NUM_THREADS": str(threads),
                                   "OMP_WAIT_POLICY": "PASSIVE"}, r["worker"]
    centres_pool, centres_ray = _camera_centres(pool_out), _camera_centres(ray_out)
    for k in pool:
        assert np.allclose(centres_pool[k], centres_ray[k], atol=1e-4), k
    for out in (pool_out, ray_out):
        labels = {x[0]: x[1] for x in json.loads((out / "eg3d" / "dataset.json").read_text())["labels"]}
        assert sorted(labels) == sorted(f.name for f in faces[:3])
        crops = json.loads((out / "eg3d" / "crops" / "dataset.json").read_text())["labels"]
        assert len(crops) == 3 and all((out / "eg3d" / "crops" / name).is_file() for name, _ in crops)
        # a front-facing photo: camera in front of the face (+Z), within 45 degrees of FLAME's axis
        for name, lab in labels.items():
            c = np.array(lab[:16]).reshape(4, 4)[:3, 3]
            assert c[2] > 0 and c[2] / np.linalg.norm(c) > np.cos(np.radians(45)), (name, c)
        _no_temporaries(out)


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "flame_prior.cli", "batch", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kw)


def _wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while len(list((out / "records").glob("*.json"))) < n:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() - t0 < timeout, "no progress"
        time.sleep(0.2)


@pytest.mark.slow
def test_interrupt_and_kill_mid_run_then_resume_processes_each_scene_once(faces, detections, tmp_path):
    """Ctrl-C (SIGINT) and then SIGKILL of the whole process group in the middle of runs; the last run
    finishes: every scene done exactly once (its record's run is the run that first finished it), no
    partial output anywhere."""
    root = tmp_path / "faces"
    root.mkdir()
    for f in faces:
        shutil.copy(f, root / f.name)
    out = tmp_path / "out"
    args = ["--data", str(root), "--output-dir", str(out), "--single-images", "--preset", "fast",
            "--workers", "2", "--detect.cache-dir", str(detections), "--fitter.device", "cpu"]

    proc = _cli(args)
    _wait_for_records(out, 2, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the parent stops the workers and writes the index
    text = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, text
    assert "run the same command again to resume" in text
    after_int = {k: r["run_id"] for k, r in _records(out).items() if r["status"] == "done"}
    assert 2 <= len(after_int) < len(faces)
    index = json.loads((out / "index.json").read_text())
    assert index["run"]["counts"].get("not run", 0) == len(faces) - len(after_int)
    _no_temporaries(out)
    for name in after_int:
        for f in SCENE_FILES:
            assert (out / "scenes" / name / f).is_file()

    proc = _cli(args)
    _wait_for_records(out, len(after_int) + 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the machine dies: no handler runs, workers die too
    proc.communicate(timeout=60)
    after_kill = {k: r["run_id"] for k, r in _records(out).items() if r["status"] == "done"}
    assert all(after_kill[k] == v for k, v in after_int.items())  # finished scenes were not redone

    proc = _cli(args)
    text = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, text
    final = _records(out)
    assert sorted(final) == sorted(f.stem for f in faces) and all(r["status"] == "done" for r in final.values())
    assert all(final[k]["run_id"] == v for k, v in after_kill.items())  # exactly once
    runs = {r["run_id"] for r in final.values()}
    assert len(runs) >= 2
    for name in final:  # complete outputs; a killed scene's temporary folder was removed
        for f in SCENE_FILES:
            assert (out / "scenes" / name / f).is_file(), (name, f)
    _no_temporaries(out)
    assert sorted(os.listdir(out / "scenes")) == sorted(final)
    labels = json.loads((out / "eg3d" / "dataset.json").read_text())["labels"]
    assert sorted(x[0] for x in labels) == sorted(f.name for f in faces)


def _kill_first_worker(out: Path, stop: list) -> dict:
    """In a thread: when the first record appears, SIGKILL the worker process that wrote it (it is then
    in the middle of its next scene). Returns {"pid": ...} once done."""
    import threading

    killed: dict = {}

    def watch():
        while not stop:
            recs = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")] if (out / "records").is_dir() else []
            done = [r for r in recs if r.get("status") == "done"]
            if done:
                pid = done[0]["pid"]
                assert pid != os.getpid()
                killed["pid"], killed["time"] = pid, time.time()
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return killed


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["pool", "ray"])
def test_a_killed_worker_s_scene_is_retried_on_another_worker(scheduler, faces, detections, tmp_path):
    """SIGKILL of one worker process in the middle of a run (the process pool and real local Ray): its
    scene runs again on another worker (attempt 2), every scene finishes with a complete output, and
    nothing half-written is left."""
    if scheduler == "ray":
        import ray  # noqa: F401 — the [ray] extra; `make test` installs it (no skip: CI must run this)
    # The first worker to finish a scene is killed: it must still hold one then (the pool holds one scene
    # more than its workers; a Ray actor holds two scenes).
    n = 3 if scheduler == "pool" else 5
    root = tmp_path / "faces"
    root.mkdir()
    for f in faces[:n]:
        shutil.copy(f, root / f.name)
    out, stop = tmp_path / "out", []
    killed = _kill_first_worker(out, stop)
    try:
        outcome = run_batch(_config(root, out, detections, single_images=True, workers=2, ray=scheduler == "ray"))
    finally:
        stop.append(True)
    assert "pid" in killed, "no worker was killed"
    recs = _records(out)
    assert sorted(outcome.done) == sorted(recs) == sorted(f.stem for f in faces[:n])
    assert all(r["status"] == "done" for r in recs.values())
    retried = [r for r in recs.values() if r["attempt"] > 1]
    assert retried, {k: (r["pid"], r["attempt"]) for k, r in recs.items()}
    for r in retried:  # on a live worker, after the kill
        assert r["pid"] != killed["pid"] and r["started"] > killed["time"] - 1.0
    for name in recs:
        for f in SCENE_FILES:
            assert (out / "scenes" / name / f).is_file(), (name, f)
    _no_temporaries(out)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_address_runs_on_a_real_ray_cluster(faces, detections, tmp_path, monkeypatch):
    """--ray-address: a real single-node Ray cluster (`ray start --head`, 1 CPU) started by this test,
    joined by `flame-prior batch --ray-address`; the scenes run in the cluster's worker processes (with
    the thread environment from the job's runtime_env), and the cluster is left running, then torn
    down here."""
    import tempfile

    import ray  # noqa: F401 — the [ray] extra; `make test` installs it (no skip: CI must run this)

    ray_bin = Path(sys.executable).with_name("ray")
    assert ray_bin.is_file(), ray_bin
    temp_dir = tempfile.mkdtemp(prefix="fpray", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    log = tmp_path / "ray_head.log"
    # One authentication mode for the head and the batch's driver (Ray's default depends on ~/.ray/auth_token
    # and on earlier ray.init calls of a process); the cluster listens on 127.0.0.1 only, for this test.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false",
         f"--dashboard-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        address = f"127.0.0.1:{port}"
        t0 = time.monotonic()
        while "Ray runtime started" not in log.read_text(errors="replace"):  # `ray start` says when the head is up
            assert head.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() - t0 < 90, log.read_text(errors="replace")
            time.sleep(0.5)
        root = tmp_path / "faces"
        root.mkdir()
        for f in faces[:2]:
            shutil.copy(f, root / f.name)
        out = tmp_path / "out"
        # the command line, in its own process (as a user runs it; Ray's driver state stays out of this one)
        proc = _cli(["--data", str(root), "--output-dir", str(out), "--single-images", "--preset", "fast",
                     "--scene-outputs", "record", "--ray-address", address, "--detect.cache-dir", str(detections),
                     "--fitter.device", "cpu"])
        text = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, text
        assert f"Ray workers ({address})" in text, text
        recs = _records(out)
        assert len({r["pid"] for r in recs.values()}) == 1  # the cluster's one CPU: one worker
        for r in recs.values():
            assert r["pid"] != os.getpid()
            assert r["worker"] == {"torch_threads": 1, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        assert head.poll() is None  # the cluster outlives the batch (it is the user's)
    finally:
        head.terminate()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the cluster is left: all started by this test
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
