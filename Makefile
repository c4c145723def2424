# Two commands do all the set-up on a fresh machine (Python 3.11 + pip):
#   make demo   installs flame-prior in .venv and runs the synthetic round trip
#   make test   installs flame-prior (+ test and ray extras) in .venv and runs the test suite, then builds
#               .venv-ns with the [nerfstudio] extra and runs the nerfstudio tests (scripts/ci_nerfstudio.sh)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test test-core test-nerfstudio benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The CPU wheel of torch first (small); the project's range then accepts it.
install: $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test,ray]"

demo: install
	$(BIN)/flame-prior demo --output-dir outputs/demo

test-core: install
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

test-nerfstudio:
	bash scripts/ci_nerfstudio.sh

# FREE_DISK=1 (set by .ci/run) removes .venv and this user's pytest temporary folders between the two
# halves: the core environment (~2 GB) and the nerfstudio one (~8 GB, CUDA torch) need not both fit on disk.
test:
	$(MAKE) test-core
ifdef FREE_DISK
	@echo "[make test] disk before freeing: $$(df -h . | tail -1)"
	rm -rf "$$($(BIN)/python -c 'import getpass, os, tempfile; print(os.path.join(tempfile.gettempdir(), "pytest-of-" + getpass.getuser()))')"
	rm -rf $(VENV)
	@echo "[make test] disk after freeing: $$(df -h . | tail -1)"
endif
	$(MAKE) test-nerfstudio

benchmark: install
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf $(VENV) .venv-ns outputs build *.egg-info
