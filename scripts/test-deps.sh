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
