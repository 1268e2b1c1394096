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

# llama.cpp's own C++ server, a benchmark peer for bench/serve.py: built from the llama.cpp sources
# vendored in the llama-cpp-python sdist (same commit as the bindings), no download beyond the sdist.
LLAMA_CPP_PY_VERSION ?= 0.3.36
LLAMA_SDIST := .tools/llama_cpp_python-$(LLAMA_CPP_PY_VERSION).tar.gz
LLAMA_SRC   := .tools/llama-src
llama-server: .tools/bin/llama-server

.tools/bin/llama-server:
	mkdir -p .tools/bin
	test -f $(LLAMA_SDIST) || $(VENV)/bin/pip download --no-deps --no-binary :all: -d .tools \
		llama-cpp-python==$(LLAMA_CPP_PY_VERSION)
	rm -rf $(LLAMA_SRC) && mkdir -p $(LLAMA_SRC)
	tar -xzf $(LLAMA_SDIST) -C $(LLAMA_SRC) --strip-components=3 \
		llama_cpp_python-$(LLAMA_CPP_PY_VERSION)/vendor/llama.cpp
	cmake -S $(LLAMA_SRC) -B .tools/llama-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	ninja -C .tools/llama-build llama-server
	cp -a .tools/llama-build/bin/. .tools/bin/
