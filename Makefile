# JitPay: the two commands are `make run` (the demo) and `make test` (all tests).
# Everything else here is set-up they do for you on a fresh machine.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.jitpay-installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

ACME := tests/plugins/acme-elements
# Every distribution under plugins/ ships beside the core and is installed editable.
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
# pip re-runs when any distribution's metadata changes; the acme test plugin is installed as a
# real (non-editable) distribution, so its sources count too.
INSTALL_INPUTS := pyproject.toml $(wildcard plugins/*/pyproject.toml) \
	$(shell find $(ACME) -type f -not -path '*/build/*' -not -path '*.egg-info*' \
	        -not -path '*/__pycache__/*' 2>/dev/null)

# System packages the tests need, each only if missing.
SYSDEPS := $(if $(wildcard /usr/bin/chromium),,chromium) \
           $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help venv sysdeps test run bench

help:
	@echo "make run    - set up and serve the demo app on http://$(HOST):$(PORT)/"
	@echo "make test   - set up (system packages, virtualenv) and run all tests"
	@echo "make bench  - run the benchmarks"
	@echo "make venv / make sysdeps - the set-up steps on their own"

venv: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VPY) $(INSTALL_INPUTS)
	$(VPY) -m pip install -e '.[test]' $(addprefix -e ,$(PLUGINS))
	rm -rf $(ACME)/build
	$(VPY) -m pip install $(ACME)
	touch $@

sysdeps:
	@if [ -z "$(strip $(SYSDEPS))" ]; then \
	    echo "sysdeps: chromium and the PostgreSQL server are present"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	    echo "sysdeps: apt-get is not available; install these yourself: $(strip $(SYSDEPS))" \
	         "(Chromium at /usr/bin/chromium, PostgreSQL server binaries under /usr/lib/postgresql/*/bin)" >&2; \
	else \
	    echo "sysdeps: installing $(strip $(SYSDEPS))"; \
	    $(SUDO) apt-get update && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(strip $(SYSDEPS)); \
	fi

test: sysdeps venv
	$(VPY) -m pytest $(PYTEST_ARGS)

# app.example.yaml takes its API key from $JITPAY_API_KEY; the demo runs with a local-only default.
run: venv
	$(VENV)/bin/jit-sandbox init .sandbox
	JITPAY_API_KEY="$${JITPAY_API_KEY:-jitpay-demo-key-local-only}" \
	    $(VENV)/bin/jit serve app.example.yaml --host $(HOST) --port $(PORT)

bench: venv
	$(VPY) benchmarks/run.py
