# Quick start:  make run   (set up .venv, run the pipeline)   |   make test   (set up, run the tests)
# Another dataset:  make run PROFILE=sst2   (profiles/*.yaml)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS ?= 1
export GX_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup run base repro test test-fast test-ui ui deploy promote clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# `make run PROFILE=sst2` first switches params.yaml to profiles/sst2.yaml.
run: setup
	$(if $(PROFILE),$(BIN)/python -m tasks.profile $(PROFILE))
	$(BIN)/python -m flows.pipeline

# A base language model, registered for reuse: make base PROFILE=base_tweets (README, "Unlabelled text").
base: setup
	$(BIN)/python -m flows.base_model $(if $(PROFILE),--profile $(PROFILE))

repro: setup
	$(BIN)/dvc repro

# Needs PREFECT_API_URL (a Prefect server) and the cpu/gpu work pools: see README "Run on a schedule".
# GPU_WORKSPACE=/path/of/the/clone/on/the/gpu/machine  CRON="0 3 * * *"
deploy: setup
	$(BIN)/python -m flows.deploy --cpu-workspace . $(if $(GPU_WORKSPACE),--gpu-workspace $(GPU_WORKSPACE)) $(if $(CRON),--cron "$(CRON)")

promote: setup
	$(BIN)/python -m flows.promote

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The MLflow and Prefect UIs over this workspace's runs, on loopback (README, "See your runs").
ui: setup
	$(BIN)/python -m tasks.ui

# A real headless Chromium (shipped inside the npm package, pinned) drives the reports and UIs.
BROWSER_DIR := .ui-browser
BROWSER_PACKAGES := @sparticuz/chromium@153.0.0 puppeteer-core@25.16.0
$(BROWSER_DIR)/.installed:
	npm install --prefix $(BROWSER_DIR) --no-audit --no-fund --loglevel=error $(BROWSER_PACKAGES)
	touch $@

# Not part of `make test` (which needs no browser); .ci/run calls both. Screenshots: reports/ui/.
test-ui: setup $(BROWSER_DIR)/.installed
	LANG=en_US.UTF-8 $(BIN)/python -m pytest -o addopts="-ra" tests/ui

clean:
	rm -rf data/raw data/validated data/corpus data/tokenized checkpoints/* reports/* .prefect mlflow.db mlartifacts
