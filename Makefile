# ruv-assets: `make run` builds the whole graph, `make test` runs the tests, `make ui` opens Dagster.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
CLUSTER_STAMP := $(VENV)/.installed-cluster-stamp
CAPTURE_STAMP := $(VENV)/.installed-capture-stamp

export DAGSTER_HOME := $(CURDIR)/dagster_home
export RUV_HOME ?= $(CURDIR)/.ruv
# Numba compiles once and reuses the machine code in every Dagster step process.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export PYTHONUNBUFFERED := 1

.PHONY: install run test test-fast ui bench clean cluster cluster-run cluster-down demo demo-adapt serve serve-down serve-status

install: $(STAMP)

# `make run` installs the runtime only; the tests and benchmarks add their extras (PyTorch, PEFT).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,reference,capture,cluster]'
	touch $(TEST_STAMP) $(CLUSTER_STAMP) $(CAPTURE_STAMP)

# each target installs the extra it needs: dagster-postgres and dagster-celery for the cluster,
# torch, transformers and PEFT for the real model
$(CLUSTER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[cluster]'
	touch $(CLUSTER_STAMP)

$(CAPTURE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[capture]'
	touch $(CAPTURE_STAMP)

run: $(STAMP)
	$(VENV)/bin/ruv run-all

test: $(TEST_STAMP)
	bash scripts/test-deps.sh
	$(PY) -m pytest -q

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow and not e2e"

# The five presets as roles on SmolLM2-135M-Instruct: captured, trained, merged, promoted (.demo/).
demo: $(CAPTURE_STAMP)
	bash scripts/model-deps.sh
	$(VENV)/bin/ruv demo

# Learning from use on the built demo: code review traffic into the reviewer's log, updates behind the guard.
demo-adapt: $(CAPTURE_STAMP)
	$(VENV)/bin/ruv demo adapt

# The slots on vLLM (its own venv, .venv-serve): after `make demo` its slots (.demo/), else $(RUV_HOME)'s;
# a RUV_HOME of your own wins. The API's base URL is the last line. `make serve-down` stops it.
SERVE_PORT ?= 8000
ifeq ($(origin RUV_HOME),file)
ifneq ($(wildcard .demo/ruv/slots),)
SERVE_ENV := RUV_HOME=$(CURDIR)/.demo/ruv DAGSTER_HOME=$(CURDIR)/.demo/dagster_home RUV_CATALOGUE=$(CURDIR)/.demo/catalogue.yaml
endif
endif
serve: $(CAPTURE_STAMP)
	bash scripts/model-deps.sh
	bash scripts/serve-deps.sh
	$(SERVE_ENV) $(VENV)/bin/ruv serve up --port $(SERVE_PORT)

serve-down:
	$(SERVE_ENV) $(VENV)/bin/ruv serve down

serve-status:
	$(SERVE_ENV) $(VENV)/bin/ruv serve status

UI_PORT ?= 3000
ui: $(STAMP)
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

bench: $(TEST_STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The multi-machine deployment on this machine (deploy/dagster.yaml): PostgreSQL, Redis, daemon,
# webserver on 127.0.0.1:53000 and $(WORKERS) Celery workers; state under .cluster/.
WORKERS ?= 2
export WORKERS

cluster: $(CLUSTER_STAMP)
	bash scripts/cluster.sh up

cluster-run: $(CLUSTER_STAMP)
	bash scripts/cluster.sh run

cluster-down:
	bash scripts/cluster.sh down

clean:
	bash scripts/cluster.sh forget  # a Postgres data directory kept outside the clone (see the script)
	find kernels resources ruv_assets \( -name '*.nbi' -o -name '*.nbc' \) -delete  # Numba's default cache, beside the sources
	-test -x $(VENV)/bin/ruv && $(SERVE_ENV) $(VENV)/bin/ruv serve down  # a server make serve started
	rm -rf .ruv .numba_cache .cluster .demo dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
