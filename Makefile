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

.PHONY: demo test test-fast test-blender test-ray bpy-venvs venv bench addon clean

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
	$(PY) -m pytest -q -m "not blender" --ignore=$(RAY_TESTS)
	$(MAKE) --no-print-directory test-blender
	$(MAKE) --no-print-directory test-ray

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

# The Ray executor's cluster tests. Ray (the optional extra `ray`, pinned in pyproject.toml) is not in .venv:
# `pip --target` puts it and its dependencies into .venv-ray/, layered on .venv through PYTHONPATH, so the
# cluster runs on .venv's own Python, torch and numpy. The tests run in a private network
# namespace (`unshare -rn`: a loopback interface and nothing else), since Ray registers its nodes on the
# machine's network address whatever --node-ip-address says. Where unshare is refused they run without
# it and skip: the test starts no cluster while an interface other than loopback is up.
RAY_SITE := .venv-ray
RAY_TESTS := tests/test_ray_executor.py
RAY_PIN = $(shell $(PY) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['ray'])")

$(RAY_SITE)/.installed: pyproject.toml constraints.txt $(wildcard $(VENV)/pyvenv.cfg)
	@test -x $(PY) || { echo "run 'make venv' first: Ray is layered on $(PY)"; exit 1; }
	rm -rf $(RAY_SITE) && mkdir $(RAY_SITE)
	# what .venv has, pinned as it is there: a package in both is the same version on either path
	$(PY) -m pip freeze -q --exclude-editable > $(RAY_SITE)/venv-pins.txt
	$(PY) -m pip install -q --target $(RAY_SITE) -c constraints.txt -c $(RAY_SITE)/venv-pins.txt $(RAY_PIN)
	touch $@

test-ray: $(RAY_SITE)/.installed
	@if unshare -rn true 2>/dev/null; then ns="unshare -rn"; \
	  else ns=""; echo "unshare -rn is refused here: the Ray cluster tests will skip"; fi; \
	  PYTHONPATH=$(abspath $(RAY_SITE))$${PYTHONPATH:+:$$PYTHONPATH} $$ns sh -c \
	    'ip link set lo up 2>/dev/null; exec $(PY) -m pytest -q -p no:cacheprovider $(RAY_TESTS)'

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not blender"

bench: venv
	$(PY) benchmarks/bench_prepare.py

addon:
	$(PYTHON) build_addon.py

clean:
	rm -rf $(VENV) .venv-bpy-* $(RAY_SITE) dist build
