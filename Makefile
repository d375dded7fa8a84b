# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The add-on is tested inside the real bpy wheels of every Blender it claims, each in its own cached
# virtual environment (only bpy, numpy<2 and the test runner; the backend service those tests start runs
# on the main .venv's Python, named by HEADSYNC_BACKEND_PYTHON). The bpy 4.2 wheels are built without
# Audaspace, so 4.2 runs the tests that make no sound strips; 4.3.0 runs the same 4.2-era code paths
# (`sequences`, `action.fcurves`) with sound. The slow end-to-end run (a real training) runs once, in the
# newest version.
BPY_VERSIONS := 4.3.0 4.5.15
BPY_NEWEST := 5.0.1
BPY_NOSOUND_VERSIONS := 4.2.23
BPY_VENVS := $(foreach v,$(BPY_VERSIONS) $(BPY_NEWEST) $(BPY_NOSOUND_VERSIONS),.venv-bpy-$(v)/.installed)
BPY_TEST_PINS := "numpy<2" "pytest==9.2.0"
BPY_TESTS := tests/test_addon_blender.py tests/test_addon_e2e.py
BACKEND_PY = $(abspath $(PY))

.PHONY: demo test test-fast test-blender bpy-venvs venv bench addon clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: here it takes the CPU build on disk; a GPU user installs the CUDA build first.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/headsync demo

test: venv bpy-venvs
	$(PY) -m pytest -q -m "not blender"
	$(MAKE) --no-print-directory test-blender

bpy-venvs: $(BPY_VENVS)

.venv-bpy-%/.installed:
	$(PYTHON) -m venv .venv-bpy-$*
	.venv-bpy-$*/bin/python -m pip install -q "bpy==$*" $(BPY_TEST_PINS)
	touch $@

# The blender-marked tests once per Blender version (no rebuild of .venv: it only has to exist).
test-blender: bpy-venvs
	@test -x $(PY) || { echo "run 'make venv' first: the backend service runs on $(PY)"; exit 1; }
	@set -e; for v in $(BPY_VERSIONS); do echo "== bpy $$v"; \
	  HEADSYNC_BACKEND_PYTHON=$(BACKEND_PY) .venv-bpy-$$v/bin/python -m pytest -q -p no:cacheprovider -m "blender and not slow" $(BPY_TESTS); done
	@echo "== bpy $(BPY_NEWEST)"; \
	  HEADSYNC_BACKEND_PYTHON=$(BACKEND_PY) .venv-bpy-$(BPY_NEWEST)/bin/python -m pytest -q -p no:cacheprovider -m blender $(BPY_TESTS)
	@set -e; for v in $(BPY_NOSOUND_VERSIONS); do echo "== bpy $$v (no sound)"; \
	  HEADSYNC_BACKEND_PYTHON=$(BACKEND_PY) .venv-bpy-$$v/bin/python -m pytest -q -p no:cacheprovider -m "blender and not sound and not slow" $(BPY_TESTS); done

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not blender"

bench: venv
	$(PY) benchmarks/bench_prepare.py

addon:
	$(PYTHON) build_addon.py

clean:
	rm -rf $(VENV) .venv-bpy-* dist build
