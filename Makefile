# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv bench addon clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: here it takes the CPU build on disk; a GPU user installs the CUDA build first.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test,ray]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/headsync demo

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not blender"

bench: venv
	$(PY) benchmarks/bench_prepare.py

addon:
	$(PYTHON) build_addon.py

clean:
	rm -rf $(VENV) dist build
