# dropr — make demo | make test | make check | make bench | make torture
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all demo test check lint types docs completions bench clean sysdeps torture

all: test

# System packages the tests need (iproute2 for network namespaces, nftables for packet
# loss and reordering in them, faketime (libfaketime) for a sender's clock steps, e2fsprogs
# for a loop-mounted small filesystem, openssl for a test CA, slowhttptest for slow clients, nginx
# for the proxy example, strace for the crash states of the real binaries, prometheus for
# promtool, the judge of the metrics and alerting rules: 14 s to install here; fish and zsh for
# their completion scripts: 5 s). Best effort: skipped when not root.
sysdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for c in ip:iproute2 nft:nftables faketime:faketime mkfs.ext4:e2fsprogs openssl:openssl curl:curl mandoc:mandoc slowhttptest:slowhttptest nginx:nginx-light strace:strace promtool:prometheus fish:fish zsh:zsh; do \
	    command -v $${c%%:*} >/dev/null || missing="$$missing $${c#*:}"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" ./examples/demo.sh

test: $(STAMP) sysdeps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -x --durations=10 tests

# The long runs, not in CI: every crash state a power loss can leave (at least
# TORTURE_STATES of them, seeded by TORTURE_SEED), recovered and checked.
# Then FUZZ_INPUTS requests to a real dropr-serve (tests/fuzz/wire.py) and FUZZ_PARSER_INPUTS
# inputs to each of the header, name and config parsers (tests/fuzz/parsers.py); their counts
# also go to TORTURE_OUT/fuzz-*.json.
TORTURE_STATES ?= 30000
TORTURE_SEED ?= 0
FUZZ_INPUTS ?= 100000
FUZZ_PARSER_INPUTS ?= 20000
# Then TORTURE_MINUTES of three hosts in network namespaces under kills, link faults, full disks
# and clock steps (python -m tests.torture, its counts in TORTURE_OUT/three-hosts.json), and
# README.md's Reliability section rewritten from TORTURE_OUT (tests/torture/readme.py).
TORTURE_OUT ?= .torture
TORTURE_MINUTES ?= 30
torture: $(STAMP) sysdeps
	mkdir -p $(TORTURE_OUT)
	set -o pipefail; PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tests/crash_explorer.py --states $(TORTURE_STATES) --seed $(TORTURE_SEED) | tee $(TORTURE_OUT)/crash-states.txt
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tests/crash_strace_send.py --states 10000 --seed $(TORTURE_SEED) --json $(TORTURE_OUT)/crash-send.json
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tests/fuzz/wire.py --inputs $(FUZZ_INPUTS) --seed $(TORTURE_SEED) --json $(TORTURE_OUT)/fuzz-wire.json
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHONPATH=tests $(BIN)/python tests/fuzz/parsers.py --inputs $(FUZZ_PARSER_INPUTS) --seed $(TORTURE_SEED) --json $(TORTURE_OUT)/fuzz-parsers.json
	PATH="$(CURDIR)/$(BIN):$$PATH" DROPR_TORTURE=1 $(BIN)/python -m pytest -q tests/e2e/test_slow_clients.py
	-PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m tests.torture --minutes $(TORTURE_MINUTES) --seed $(TORTURE_SEED) --json $(TORTURE_OUT)/three-hosts.json
	$(BIN)/python tests/torture/readme.py --out $(TORTURE_OUT) --readme README.md
	$(BIN)/python -c 'import json, sys; sys.exit(not json.load(open("$(TORTURE_OUT)/three-hosts.json"))["ok"])'

lint: $(STAMP)
	$(BIN)/ruff check lib cli tests bench
	$(BIN)/ruff format --check lib cli tests bench

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

completions: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python completions/generate.py

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info lib/*.egg-info cli/*.egg-info .pytest_cache .mypy_cache .ruff_cache
