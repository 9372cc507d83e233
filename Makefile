# query-relay: every target installs what it needs from scratch (a .venv, the npm checker).
SHELL := /bin/bash
export SAM_CLI_TELEMETRY := 0
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
# Python packages come from uv.lock (the app: runtime, `local` and `dev` extras) and tools/uv.lock
# (SAM CLI, in an environment of its own); uv itself, pinned, is bootstrapped with pip.
UV_VERSION := 0.13.9
UV := .uv/bin/uv
TOOLS := .tools/bin
TOOLS_STAMP := .tools/.installed
export UV_PYTHON_DOWNLOADS := never
# Compiled at install, as pip does: uv leaves it to the first import, which never writes it where
# PYTHONDONTWRITEBYTECODE is set, so every process would compile botocore again (+0.8 s a cold start).
export UV_COMPILE_BYTECODE := 1

# Lambda runs python3.13; `sam build` needs that interpreter on PATH. Find one that really runs
# (a pyenv shim for an inactive version does not), else stop with a clear message.
PYTHON313 := $(shell for candidate in python3.13 $$(pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13 \
	/usr/local/bin/python3.13 /usr/bin/python3.13 $$HOME/.local/bin/python3.13; do \
	  [ -x "$$(command -v $$candidate 2>/dev/null)" ] || continue; \
	  "$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null || continue; \
	  "$$candidate" -c 'import sys; print(sys.executable)'; break; done)

.PHONY: help python313 venv tools lock demo test lint typecheck unit integration contract fuzz validate asl build local-invoke bench clean

help:
	@echo "make demo      install everything and run a sample query through the local stack"
	@echo "make test      install everything and run every test and check"
	@echo "make lint | typecheck | fuzz | validate | asl | build | bench | lock | clean"

python313:
	@if [ -z "$(PYTHON313)" ]; then \
	  echo "error: no working python3.13 found (Lambda's runtime; sam build and the .venv need it)." >&2; \
	  echo "       install it, e.g. 'pyenv install 3.13' or your distribution's python3.13 package." >&2; \
	  exit 1; fi

$(UV): | python313
	$(PYTHON313) -m venv .uv
	.uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Exactly what uv.lock says (the project itself editable), nothing else: a package left from an
# older lock is removed.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --python $(PYTHON313)
	@touch $@

venv: $(STAMP)

$(TOOLS_STAMP): tools/pyproject.toml tools/uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/.tools $(UV) sync --frozen --project tools --python $(PYTHON313)
	@touch $@

tools: $(TOOLS_STAMP)

# After changing a requirement in pyproject.toml or tools/pyproject.toml: resolve both locks again
# and write the layer's requirements from uv.lock (the runtime only; tests/template keeps them in step).
lock: $(UV)
	$(UV) lock --python $(PYTHON313)
	$(UV) lock --project tools --python $(PYTHON313)
	{ echo "# The layer's requirements: uv.lock's runtime, written by \`make lock\` (uv export). Do not edit."; \
	  $(UV) export --frozen --no-dev --no-emit-project --no-hashes --no-annotate --no-header --python $(PYTHON313); \
	} > layers/core/requirements.txt

$(NPM_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

demo: $(STAMP)
	$(BIN)/query-relay demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/template -q

contract: $(STAMP)
	$(BIN)/pytest tests/contract -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q

# Property-based fuzzing of the HTTP API from its OpenAPI document (schemathesis): no 5xx. `test`
# runs it too, inside its one pytest run.
fuzz: $(STAMP)
	$(BIN)/pytest tests/integration/test_api_fuzz.py -q

# sam (and the cfn-lint it lints with) come from .tools; PATH holds python3.13 for sam's workflow checks.
validate: $(TOOLS_STAMP)
	PATH="$(dir $(PYTHON313)):$$PATH" $(TOOLS)/sam validate --lint --region us-east-1

asl: $(NPM_STAMP)
	npx --no-install asl-validator --json-path statemachine/query.asl.json

build: $(TOOLS_STAMP)
	PATH="$(dir $(PYTHON313)):$$PATH" $(TOOLS)/sam build --parallel

test: lint typecheck asl validate
	$(BIN)/pytest -n 2 --dist loadgroup -q
	$(MAKE) build

# Needs Docker (not available on the project's own machines): e.g. make local-invoke FUNCTION=PollFunction EVENT=events/poll.json
FUNCTION ?= SubmitFunction
EVENT ?= events/submit.json
local-invoke: build
	$(TOOLS)/sam local invoke $(FUNCTION) --event $(EVENT)

# Prints figures (no pass/fail thresholds in `make test`); see README "Performance". Every bench
# runs even when one misses its goals (bench.fetch exits 1 then) or fails; the status says so at the end.
BENCHES := cold_start poll_cost codec fetch parallel_fetch cost
bench: $(STAMP)
	@[ -d .aws-sam/build/CoreLayer ] || $(MAKE) build
	@status=0; missed=""; \
	for bench in $(BENCHES); do \
	  started=$$(date +%s); echo "== bench.$$bench"; \
	  $(BIN)/python -m bench.$$bench || { status=1; missed="$$missed bench.$$bench"; }; \
	  echo "== bench.$$bench: $$(( $$(date +%s) - started )) s"; \
	done; \
	if [ $$status -ne 0 ]; then echo "exit status 1 from:$$missed (goals missed or failed; see above)"; fi; \
	exit $$status

clean:
	rm -rf $(VENV) .uv .tools node_modules .aws-sam .mypy_cache .pytest_cache .ruff_cache
