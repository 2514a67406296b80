# xaibench: every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# glibc returns big tensors to the OS after every pass unless told not to (docs/perf-notes).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 68719476736

.PHONY: install demo test lint bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xaibench run configs/demo.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check xaibench tests scripts
	$(BIN)/ruff format --check xaibench tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

# The GPU acceptance run (scripts/gpu_acceptance.py); SMOKE=1 runs its checks on the CPU.
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_acceptance.py $(if $(SMOKE),--smoke --out gpu_acceptance.smoke.json)

clean:
	rm -rf $(VENV) demo-runs .pytest_cache
