# Two commands do all the set-up on a fresh machine:
#   make serve   create .venv, install, start the server on :8000
#   make test    create .venv, install with the dev extra, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# On a GPU machine PyPI's torch wheel is the CUDA build; on the CPU build machines the same pin takes the
# local CPU wheel. Install torch first so nothing pulls an unpinned one.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: serve test lint format bench-server bench-batching bench-history bench-context bench-load bench-gpu docs clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/visionrag serve

test: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

docs: $(VENV)/.installed
	$(PY) -m visionrag.clients.docs --write

bench-server: $(VENV)/.installed
	$(PY) tests/bench/bench_server.py

bench-batching: $(VENV)/.installed
	$(PY) tests/bench/bench_batching.py

bench-history: $(VENV)/.installed
	$(PY) tests/bench/bench_history.py

bench-context: $(VENV)/.installed
	$(PY) tests/bench/bench_context.py

bench-load: $(VENV)/.installed
	$(PY) tests/bench/bench_load.py

bench-gpu: $(VENV)/.installed
	$(PY) tests/bench/bench_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
