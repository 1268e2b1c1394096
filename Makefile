# The two commands of the README: `make demo` and `make test`. Each installs what it needs first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
KITDEV := $(VENV)/bin/kit-dev
PYTEST_ARGS ?=

.PHONY: setup setup-test demo demo-kit test test-fast lint format bench bench-pull llama-server clean

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

demo-kit: setup
	$(PY) scripts/link_smollm2.py examples/smollm2
	$(KITDEV) pack examples/smollm2 -t smollm2:demo

# Serves on 127.0.0.1:8000 in the foreground; Ctrl-C stops it.
demo: demo-kit
	$(KITDEV) start --modelkit smollm2:demo --foreground

test: setup-test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Everything but the tests marked slow (real models, registries, Prometheus).
test-fast: setup-test
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/serve.py

clean:
	rm -rf models-cache/blobs models-cache/ingest models-cache/unpacked models-cache/run \
	       models-cache/index.json models-cache/oci-layout .fixtures
