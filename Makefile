# jetfleet — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# JetPack 6 ships Python 3.10: the device side is tested on it too.
PY310 ?= $(shell ls -d $$(pyenv root 2>/dev/null)/versions/3.10.*/bin/python 2>/dev/null | tail -1)
VENV310 ?= .venv310
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install venv310 system-deps test test-fast test-agent310 test-postgres lint demo bench bench-compress clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Torch first: 2.13.0 is the CPU wheel on these machines, so the builder extra's
# looser `torch>=` is already met and pip never pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The agent side alone, on JetPack 6's Python: only the [agent] extra (no torch).
$(VENV310)/.installed: pyproject.toml
	@if [ -z "$(PY310)" ]; then echo "no Python 3.10 found (pyenv); set PY310=" >&2; exit 1; fi
	$(PY310) -m venv $(VENV310)
	$(VENV310)/bin/pip install -q -e ".[agent,test]"
	@if $(VENV310)/bin/python -c "import torch" 2>/dev/null; then echo "agent venv pulled torch" >&2; exit 1; fi
	touch $@

venv310: $(VENV310)/.installed

system-deps:
	@missing=""; \
	[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || missing="$$missing mosquitto"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

test-agent310: venv310
	$(VENV310)/bin/python -m pytest -q -p no:cacheprovider tests/jetfleet tests/agent tests/jetson

# The server and end-to-end suites run twice: SQLite (in the full run) and PostgreSQL
# (a throwaway cluster on a free port). The demo is SQLite by design.
test-postgres: install system-deps
	JETFLEET_TEST_DATABASE=postgres $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/server tests/e2e --deselect tests/e2e/test_demo.py

test: install system-deps venv310 lint
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-postgres
	$(MAKE) --no-print-directory test-agent310

demo: install
	$(BIN)/jetfleet demo

bench-compress: install
	$(BIN)/python bench/compress.py
	$(BIN)/python bench/report.py

# Benchmarks, not tests: each writes bench/results/*.json; BENCHMARKS.md is rendered from them.
bench: install system-deps
	$(BIN)/python bench/compress.py
	$(BIN)/python bench/selfheal.py
	$(BIN)/python bench/agent.py --seconds 5
	$(BIN)/python bench/ota.py
	$(BIN)/python bench/fleet.py --devices 1000,2000,5000 --duration 30
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) $(VENV310) .demo var .pytest_cache .mypy_cache .ruff_cache
