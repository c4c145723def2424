#!/usr/bin/env bash
# The GPU check of README *Measured* ("On a GPU"), in one go on a CUDA machine with flame-prior installed:
# the CUDA variants of the tests, the 30-view fit three times and one image twice with --fitter.device cuda
# (then once on the CPU for the same machine's comparison), the demo on both, and the benchmark's synthetic
# cases on CUDA (the issue-16 GPU row), then the CUDA photometric schedule against the CPU's on the card
# (scripts/schedule_sweep.py). Prints each run's `time:` line and /usr/bin/time's wall and memory.
#
#   bash scripts/gpu_check.sh SCENE_DIR IMAGE_DIR [OUT_DIR]
#
# SCENE_DIR: a multi-view folder (the shared 30-view scene); IMAGE_DIR: a folder with one photo. Run it twice
# or keep $XDG_CACHE_HOME between runs so that detection and COLMAP come from the cache, as in the table.
# FLAME_PRIOR and PYTHON override the commands (default: flame-prior, python3).
set -uo pipefail
SCENE="${1:?usage: gpu_check.sh SCENE_DIR IMAGE_DIR [OUT_DIR]}"
ONE="${2:?usage: gpu_check.sh SCENE_DIR IMAGE_DIR [OUT_DIR]}"
OUT_DIR="${3:-$(mktemp -d)}"
FP="${FLAME_PRIOR:-flame-prior}"
PY="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
job() {
    local tag=$1; shift
    echo "=== $tag"
    /usr/bin/time -f "WALL %e s  MAXRSS %M KB" $FP "$@" 2>&1 | grep -E "^time:|registered|not used|rror|WALL|Traceback"
}
"$PY" -m pytest -q -p no:cacheprovider tests/test_render.py tests/test_flame_lbs.py tests/test_fit.py --device cuda -k cuda
for i in 1 2 3; do job "30 views, cuda #$i" fit --data "$SCENE" --output-dir "$OUT_DIR/scene_cuda_$i" --fitter.device cuda; done
job "30 views, cpu" fit --data "$SCENE" --output-dir "$OUT_DIR/scene_cpu" --fitter.device cpu
for i in 1 2; do job "one image, cuda #$i" fit --data "$ONE" --output-dir "$OUT_DIR/one_cuda_$i" --fitter.device cuda; done
job "demo, cuda" demo --output-dir "$OUT_DIR/demo_cuda" --fitter.device cuda
job "demo, cpu" demo --output-dir "$OUT_DIR/demo_cpu" --fitter.device cpu
"$PY" scripts/benchmark.py --device cuda --skip-real --skip-scan --skip-batch --skip-speed --repeats 3 \
    --sweep-views 1 8 30 --sweep-sizes 256 512 --baseline-iters 300 100 --baseline-max-seconds 60 --no-profile \
    --video-seconds 2 --track-timesteps 30 --output "$OUT_DIR/benchmark_cuda.json"
# The CUDA photometric schedule (FitterConfig.photometric_steps_cuda) against the CPU's on the same card: time.
"$PY" scripts/schedule_sweep.py --device cuda --views 8 30 --seeds 0 1 --output "$OUT_DIR/schedule_sweep_cuda.json"
echo "outputs in $OUT_DIR"
