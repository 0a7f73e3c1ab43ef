#!/usr/bin/env bash
# System packages the tests need: Debian's Chromium (the browser test), PostgreSQL and Redis (the
# cluster tests), and vLLM's own venv for the serving tests. Idempotent; `apt-get update` at most once.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "chromium is missing and this is not root: install Debian's 'chromium' package" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    export RUV_APT_UPDATED=1
    apt-get install -y -qq chromium >/dev/null
fi

bash scripts/model-deps.sh
bash scripts/cluster-deps.sh
bash scripts/serve-deps.sh
