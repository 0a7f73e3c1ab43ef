#!/usr/bin/env bash
# Debian's PostgreSQL and Redis for `make cluster` and the cluster tests. Idempotent; needs root
# when something is missing. Debian may start its own default instances on install: `make cluster`
# does not use them (it runs its own, on other ports, with passwords).
set -euo pipefail
missing=()
ls -d /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1 && command -v psql > /dev/null || missing+=(postgresql)
command -v redis-server > /dev/null && command -v redis-cli > /dev/null || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
[ -n "${RUV_APT_UPDATED:-}" ] || apt-get update -qq
apt-get install -y -qq "${missing[@]}" > /dev/null
