# JitPay: the two commands are `make run` (the demo) and `make test` (all tests).
# Everything else here is set-up they do for you on a fresh machine.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

# Every install takes its versions from the lock, constraints.txt (make lock writes it), so that a run is
# reproducible; the pyproject files keep ranges.
LOCK := constraints.txt
PIP  := $(VPY) -m pip install --disable-pip-version-check -c $(LOCK)
UV_VERSION ?= 0.13.9

# Every distribution under plugins/ ships beside the core and is installed editable.
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
# Third-party plugins the tests install as real (non-editable) distributions, as a user would (acme-elements, ...).
TEST_PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard tests/plugins/*/pyproject.toml))
# pip re-runs when any distribution's metadata or the lock changes; the test plugins are not editable, so their
# sources count too (not their own tests).
DIST_INPUTS := pyproject.toml $(wildcard plugins/*/pyproject.toml) $(LOCK)
TEST_PLUGIN_INPUTS := $(shell find $(TEST_PLUGINS) -type f -not -path '*/build/*' -not -path '*.egg-info*' \
	        -not -path '*/__pycache__/*' -not -path '*/tests/*' 2>/dev/null)
# What the demo needs (JitPay and the plugins: the sandbox), and what the tests need on top (the test and postgres
# extras, the test plugins): separate stamps, so that `make run` installs no test tooling.
DEMO_STAMP := $(VENV)/.jitpay-demo
TEST_STAMP := $(VENV)/.jitpay-test

# System packages the tests need, each only if missing.
SYSDEPS := $(if $(wildcard /usr/bin/chromium),,chromium) \
           $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help venv demo-venv sysdeps test run run-check bench lock

help:
	@echo "make run    - set up and serve the demo app on http://$(HOST):$(PORT)/"
	@echo "make test   - set up (system packages, virtualenv) and run all tests"
	@echo "make bench  - run the benchmarks"
	@echo "make lock   - regenerate constraints.txt (the pinned versions every install uses) from the pyproject ranges"
	@echo "make venv / make demo-venv / make sysdeps - the set-up steps on their own"

venv: $(TEST_STAMP)

demo-venv: $(DEMO_STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEMO_STAMP): $(VPY) $(DIST_INPUTS)
	$(PIP) -e . $(addprefix -e ,$(PLUGINS))
	touch $@

$(TEST_STAMP): $(VPY) $(DIST_INPUTS) $(TEST_PLUGIN_INPUTS)
	$(PIP) -e '.[test,postgres]' $(addprefix -e ,$(PLUGINS))
	rm -rf $(addsuffix /build,$(TEST_PLUGINS))
	$(PIP) $(TEST_PLUGINS)
	touch $@

# The newest versions the pyproject ranges allow, for every Python >= 3.11 and platform, written to constraints.txt
# (without JitPay's own distributions: pip cannot constrain an editable install). uv comes from PyPI into the venv.
lock: $(VPY)
	$(VPY) -m pip install --disable-pip-version-check 'uv==$(UV_VERSION)'
	printf '%s\n' '-e .[test,postgres]' $(addprefix -e ./,$(PLUGINS)) $(addprefix ./,$(TEST_PLUGINS)) | \
	    $(VENV)/bin/uv pip compile - --universal --python-version 3.11 --custom-compile-command 'make lock' \
	        --no-emit-package jitpay $(addprefix --no-emit-package ,$(notdir $(PLUGINS) $(TEST_PLUGINS))) \
	        -o $(LOCK)

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

# app.example.yaml takes its API key from $JITPAY_API_KEY; the demo runs with a well-known local-only default,
# which is refused (here, and by jit serve itself) on a host that other machines reach.
run: run-check demo-venv
	$(VENV)/bin/jit-sandbox init .sandbox
	JITPAY_API_KEY="$${JITPAY_API_KEY:-jitpay-demo-key-local-only}" \
	    $(VENV)/bin/jit serve app.example.yaml --host $(HOST) --port $(PORT)

run-check:
	@case '$(HOST)' in \
	    127.*|localhost|::1|'[::1]') ;; \
	    *) if [ -z "$$JITPAY_API_KEY" ]; then \
	           echo "make run: HOST=$(HOST) is reachable from other machines, and without JITPAY_API_KEY the demo" \
	                "would use its well-known key (jitpay-demo-key-local-only, written in this Makefile). Set a secret" \
	                "of your own: export JITPAY_API_KEY=\"\$$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\"" >&2; \
	           exit 1; \
	       fi ;; \
	esac

# run.py: per-operation costs; bars.py: issue 14's bars against floors measured in the same run (BENCH_ARGS, e.g.
# --skip-postgres --skip-scale; see benchmarks/bars.py --help).
BENCH_ARGS ?=
bench: venv
	$(VPY) benchmarks/run.py
	$(VPY) benchmarks/bars.py $(BENCH_ARGS)
