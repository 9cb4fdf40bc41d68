# kubetune: two commands do all set-up on a fresh machine.
#   make quickstart   fine-tune Gemma 3 270M locally on the embedded defaults
#   make dpo-quickstart  then DPO on preference pairs, starting from the quickstart's adapter
#   make test         every test (unit, integration with real servers, e2e)
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export KUBETUNE_LLAMA_CPP_DIR ?= $(CURDIR)/.cache/llama.cpp
export HF_HUB_OFFLINE := 1
PYTEST_ARGS ?=
# `make test`: test files spread over this many worker processes (pytest-xdist), each torch on one thread,
# heaviest files first (tests/file_order.py); TEST_WORKERS=0 runs them in this process, one after another
TEST_WORKERS ?= 2

.PHONY: setup quickstart dpo-quickstart test test-fast lint docs clean

setup:
	bash scripts/setup.sh

quickstart: setup
	$(VENV)/bin/launch submit --local examples/quickstart.yaml

# DPO from the quickstart's SFT adapter (docs/preference.md); the quickstart runs first only when its output is missing
dpo-quickstart: setup
	test -f examples/runs/quickstart/_SUCCESS || $(VENV)/bin/launch submit --local examples/quickstart.yaml
	$(VENV)/bin/launch submit --local examples/dpo-quickstart.yaml

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .
	$(PY) -m trainer.spec.doc --check docs/spec.md

test: setup lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: lint
	$(PY) -m pytest -m "not slow and not integration and not e2e" $(PYTEST_ARGS)

docs:
	$(PY) -m trainer.spec.doc > docs/spec.md

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
