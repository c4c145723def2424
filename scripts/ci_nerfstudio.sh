#!/usr/bin/env bash
# CI for the [nerfstudio] extra: build .venv-ns from scratch, run tests/test_nerfstudio_plugin.py,
# then check that uninstalling flame-prior leaves nerfstudio's ns-process-data working.
#
# flame-prior goes in as a wheel (not editable): that is what users get, and only a wheel installs
# flame_prior_nerfstudio.pth, which adds `ns-process-data flame-face` (see nerfstudio_plugin/).
# Measured on 2 cores (shared, loaded), empty pip cache: venv 8.2 GB, install 477 s (torch 250 s),
# tests ~2 min without shared/ data, ~5 min with the real-photo end-to-end tests; 11-14 min in all.
#
# Env: VENV_NS (default .venv-ns), PYTEST_ARGS (extra pytest arguments, e.g. "-m 'not slow'").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV_NS:-.venv-ns}"
PY="$(command -v python3.11 || command -v python3)"
T0=$SECONDS
stamp() { echo "[ci_nerfstudio] $1: $((SECONDS - T0)) s"; }

# open3d (imported by ns-process-data and the nerfstudio dataparser) links the system library libusb-1.0,
# the one thing the [nerfstudio] extra needs besides Python and pip (README, Quick start).
if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        apt-get update -qq && apt-get install -y -qq libusb-1.0-0
    else
        echo "[ci_nerfstudio] libusb-1.0 is missing: install it (Debian/Ubuntu: sudo apt-get install libusb-1.0-0)" >&2
        exit 1
    fi
fi
stamp "apt"

rm -rf "$VENV"
# The environment takes ~8.2 GB (the CUDA build of torch); say so before pip runs out of room mid-install.
AVAIL_KB=$(df -Pk . | awk 'NR==2 {print $4}')
echo "[ci_nerfstudio] free disk: $((AVAIL_KB / 1024 / 1024)) GB (the environment needs ~9 GB while it installs)"
if [ "$AVAIL_KB" -lt $((9 * 1024 * 1024)) ]; then
    echo "[ci_nerfstudio] warning: less than 9 GB free here; the install may fail with 'No space left on device'" >&2
fi
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first: the CUDA build 2.14.1 and its torchvision, which nerfstudio needs.
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
stamp "torch installed"
"$VENV/bin/pip" install -q '.[nerfstudio,test]'
stamp "flame-prior[nerfstudio,test] installed"
echo "[ci_nerfstudio] venv size: $(du -sh "$VENV" | cut -f1)"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
test -f "$SITE/flame_prior_nerfstudio.pth" || { echo "flame_prior_nerfstudio.pth was not installed"; exit 1; }

# Tests import the installed package (pytest puts tests/, not the repository root, on sys.path).
# shellcheck disable=SC2086
FLAME_PRIOR_REQUIRE_NS_HOOK=1 "$VENV/bin/pytest" -p no:cacheprovider tests/test_nerfstudio_plugin.py \
    -v --durations=0 ${PYTEST_ARGS:-}
stamp "tests"

# Uninstalling flame-prior must leave nerfstudio's command intact.
"$VENV/bin/pip" uninstall -y -q flame-prior
test ! -e "$SITE/flame_prior_nerfstudio.pth" || { echo "the .pth survived pip uninstall"; exit 1; }
"$VENV/bin/ns-process-data" --help > /tmp/ns_help.txt 2>&1 || { cat /tmp/ns_help.txt; exit 1; }
grep -q 'images' /tmp/ns_help.txt && ! grep -q 'flame-face' /tmp/ns_help.txt
"$VENV/bin/ns-process-data" images --help > /dev/null
echo "[ci_nerfstudio] after pip uninstall flame-prior: ns-process-data --help and images --help work"
"$VENV/bin/pip" install -q --no-deps .   # leave the environment as built
stamp "total"
