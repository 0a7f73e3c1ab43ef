#!/usr/bin/env bash
# A whole ruv-assets deployment on this machine, as it runs on several (`make cluster`, `make
# cluster-run`, `make cluster-down`): PostgreSQL and Redis (Debian's packages), the Dagster daemon,
# the webserver and $WORKERS Celery workers, each worker with its own scratch directory as if on
# its own host. Everything listens on 127.0.0.1 only; passwords are generated into .cluster/env
# (mode 600) on first start. `down` stops exactly the process groups `up` recorded, and Postgres
# through pg_ctl on its own data directory; nothing else. A step that fails prints one line (what
# failed, the last line of its log, the log's path), and a half-started cluster is stopped again.
#
# Postgres runs as the `postgres` user when this runs as root: its data directory is .cluster/pg
# when that user can reach it, else (a clone inside a 0700 home, say) /var/lib/ruv-cluster/<id>/pg;
# RUV_CLUSTER_PG_DIR chooses another. Only directories this script creates have their mode set.
#
#   scripts/cluster.sh up | run | down | status | env | forget
set -Eeuo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER="${RUV_CLUSTER_DIR:-$ROOT/.cluster}"
VENV="${VENV:-$ROOT/.venv}"
WORKERS="${WORKERS:-2}"
PIDS="$CLUSTER/pids"
LOGS="$CLUSTER/logs"
# services write the store and the slots: group/other may read them (a server of another user)
umask 022

secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

fail() { echo "cluster: $*" >&2; return 1; }

step() {  # what, log, command...: run it into its log; on failure one line with the log's last words
    local what="$1" log="$2"; shift 2
    if ! "$@" >> "$log" 2>&1; then
        fail "$what failed: $(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c1-300) (log: $log)"
    fi
}

write_env() {  # ports and passwords, generated once, kept across restarts
    mkdir -p "$CLUSTER"
    [ -f "$CLUSTER/env" ] && return 0
    (umask 077 && cat > "$CLUSTER/env") <<EOF
export RUV_CLUSTER_PG_PORT=${RUV_CLUSTER_PG_PORT:-55432}
export RUV_CLUSTER_REDIS_PORT=${RUV_CLUSTER_REDIS_PORT:-56379}
export RUV_CLUSTER_WEB_PORT=${RUV_CLUSTER_WEB_PORT:-53000}
export DAGSTER_PG_HOST=127.0.0.1
export DAGSTER_PG_PORT=\$RUV_CLUSTER_PG_PORT
export DAGSTER_PG_DB=dagster
export DAGSTER_PG_USER=ruv
export DAGSTER_PG_PASSWORD=$(secret)
export RUV_CLUSTER_REDIS_PASSWORD=$(secret)
export DAGSTER_CELERY_BROKER_URL=redis://:\$RUV_CLUSTER_REDIS_PASSWORD@127.0.0.1:\$RUV_CLUSTER_REDIS_PORT/0
export DAGSTER_CELERY_BACKEND_URL=redis://:\$RUV_CLUSTER_REDIS_PASSWORD@127.0.0.1:\$RUV_CLUSTER_REDIS_PORT/1
EOF
}

load_env() {
    write_env
    # shellcheck disable=SC1091
    source "$CLUSTER/env"
    export DAGSTER_HOME="$CLUSTER/home"
    export DAGSTER_MAX_CONCURRENT_RUNS="$WORKERS"  # one run per worker slot: none waits in the broker
    export RUV_HOME="${RUV_HOME:-$ROOT/.ruv}"
    export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$ROOT/.numba_cache}"
    export PYTHONUNBUFFERED=1
    export PATH="$VENV/bin:$PATH"  # dagster-celery starts `celery` from PATH
    PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    PGDATA_DIR="$(pg_dir)"
}

postgres_can_reach() {  # dir: can the postgres user pass through every directory down to it?
    [ "$(id -u)" != 0 ] && return 0  # not root: Postgres runs as this user
    local d="$1"
    while [ ! -e "$d" ]; do d="$(dirname "$d")"; done
    runuser -u postgres -- test -x "$d"
}

pg_dir() {  # where Postgres keeps its data: recorded at the first start, then always the same
    if [ -n "${RUV_CLUSTER_PG_DIR:-}" ]; then echo "$RUV_CLUSTER_PG_DIR"; return; fi
    if [ -s "$CLUSTER/pgdir" ]; then cat "$CLUSTER/pgdir"; return; fi
    if postgres_can_reach "$CLUSTER"; then echo "$CLUSTER/pg"; return; fi
    # a private parent (a clone inside a 0700 home): a directory of this cluster's own elsewhere
    echo "/var/lib/ruv-cluster/$(printf '%s' "$CLUSTER" | sha256sum | cut -c1-16)/pg"
}

make_dirs() {  # dir mode owner: create dir and its missing parents; only those get mode and owner
    local dir="$1" mode="$2" owner="$3" d missing=()
    d="$dir"
    while [ ! -e "$d" ]; do missing=("$d" "${missing[@]}"); d="$(dirname "$d")"; done
    for d in "${missing[@]}"; do
        mkdir "$d"
        chmod "$mode" "$d"
        [ -n "$owner" ] && chown "$owner" "$d"
    done
    return 0
}

as_postgres() {  # Postgres refuses to run as root: run its tools as the `postgres` user then
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_group() {  # name, command...: a new session (process group), its id recorded
    local name="$1"; shift
    setsid "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! > "$PIDS/$name.pgid"
}

wait_for() {  # description, seconds, command...
    local what="$1" seconds="$2"; shift 2
    for _ in $(seq "$((seconds * 2))"); do
        if "$@" > /dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    local log="$LOGS/${what}.log"
    [ -f "$log" ] && fail "$what did not come up in ${seconds}s: $(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c1-300) (log: $log)"
    fail "$what did not come up in ${seconds}s (logs: $LOGS)"
}

postgres_up() {
    local data="$PGDATA_DIR" owner=""
    [ "$(id -u)" = 0 ] && owner=postgres
    if [ ! -s "$data/PG_VERSION" ]; then
        # the parents this creates: passable (no listing) by the postgres user; the data directory its own
        make_dirs "$(dirname "$data")" 711 ""
        make_dirs "$data" 700 "$owner"
        postgres_can_reach "$data" || fail "the postgres user cannot reach $data; set RUV_CLUSTER_PG_DIR to a directory it can"
        echo "$data" > "$CLUSTER/pgdir"
        local pwfile
        pwfile="$(mktemp "$(dirname "$data")/.pgpw.XXXXXX")"  # initdb wants an empty data directory
        printf '%s\n' "$DAGSTER_PG_PASSWORD" > "$pwfile"
        [ -n "$owner" ] && chown "$owner" "$pwfile"
        if ! step "initdb" "$LOGS/initdb.log" as_postgres "$PGBIN/initdb" -D "$data" -U "$DAGSTER_PG_USER" \
                --auth=scram-sha-256 --pwfile="$pwfile" -E UTF8; then
            rm -f "$pwfile"
            return 1
        fi
        rm -f "$pwfile"
    fi
    if ! as_postgres "$PGBIN/pg_ctl" -D "$data" status > /dev/null 2>&1; then
        # loopback only, no Unix socket outside the data directory, enough connections for NullPool
        step "postgres" "$LOGS/postgres.log" as_postgres "$PGBIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $RUV_CLUSTER_PG_PORT -k $data -c max_connections=200"
    fi
    export PGPASSWORD="$DAGSTER_PG_PASSWORD"
    if ! psql -h 127.0.0.1 -p "$RUV_CLUSTER_PG_PORT" -U "$DAGSTER_PG_USER" -d postgres -tAc \
            "select 1 from pg_database where datname = '$DAGSTER_PG_DB'" 2>> "$LOGS/postgres.log" | grep -q 1; then
        step "createdb" "$LOGS/postgres.log" createdb -h 127.0.0.1 -p "$RUV_CLUSTER_PG_PORT" -U "$DAGSTER_PG_USER" "$DAGSTER_PG_DB"
    fi
    unset PGPASSWORD
}

redis_up() {
    mkdir -p "$CLUSTER/redis"
    cat > "$CLUSTER/redis/redis.conf" <<EOF
bind 127.0.0.1
protected-mode yes
port $RUV_CLUSTER_REDIS_PORT
requirepass $RUV_CLUSTER_REDIS_PASSWORD
dir $CLUSTER/redis
save ""
appendonly no
daemonize no
EOF
    start_group redis redis-server "$CLUSTER/redis/redis.conf"
    wait_for "redis" 20 env REDISCLI_AUTH="$RUV_CLUSTER_REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$RUV_CLUSTER_REDIS_PORT" ping
}

up() {
    bash "$ROOT/scripts/cluster-deps.sh"
    load_env
    if [ -n "$(ls "$PIDS" 2>/dev/null)" ]; then
        echo "cluster: already started (pids in $PIDS); make cluster-down first" >&2
        exit 1
    fi
    mkdir -p "$PIDS" "$LOGS" "$DAGSTER_HOME"
    # a step that fails stops what this start had started, then says what failed
    trap 'echo "cluster: stopping what had started" >&2; down > /dev/null 2>&1 || true' ERR
    cp "$ROOT/deploy/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
    postgres_up
    redis_up
    # create the schema once, before several processes race to create it on first connection
    step "dagster instance migrate" "$LOGS/migrate.log" "$VENV/bin/dagster" instance migrate
    start_group daemon "$VENV/bin/dagster-daemon" run -w "$ROOT/workspace.yaml"
    start_group webserver "$VENV/bin/dagster-webserver" -h 127.0.0.1 -p "$RUV_CLUSTER_WEB_PORT" -w "$ROOT/workspace.yaml"
    for i in $(seq "$WORKERS"); do
        local scratch="$CLUSTER/worker-$i"
        mkdir -p "$scratch/tmp"
        # its own scratch (TMPDIR) and id, as on its own host; the store and Numba's cache are shared
        (cd "$scratch" && RUV_WORKER_ID="worker-$i" TMPDIR="$scratch/tmp" \
            start_group "worker-$i" "$VENV/bin/dagster-celery" worker start -A dagster_celery.app \
                -y "$ROOT/deploy/celery.yaml" -n "worker-$i" -- --concurrency=1)
    done
    wait_for "webserver" 120 curl -sf "http://127.0.0.1:$RUV_CLUSTER_WEB_PORT/server_info"
    for i in $(seq "$WORKERS"); do
        wait_for "worker-$i" 120 grep -qE "worker-$i@.* ready\." "$LOGS/worker-$i.log"
    done
    trap - ERR
    echo "cluster: up. postgres 127.0.0.1:$RUV_CLUSTER_PG_PORT, redis 127.0.0.1:$RUV_CLUSTER_REDIS_PORT," \
         "webserver http://127.0.0.1:$RUV_CLUSTER_WEB_PORT, $WORKERS workers; DAGSTER_HOME=$DAGSTER_HOME RUV_HOME=$RUV_HOME"
}

run() {
    load_env
    [ -f "$PIDS/daemon.pgid" ] || { echo "cluster: not started; run make cluster first" >&2; exit 1; }
    "$VENV/bin/ruv" cluster-run --webserver "127.0.0.1:$RUV_CLUSTER_WEB_PORT" "$@"
}

stop_group() {  # pgid file: TERM the group, wait, then KILL what is left of it
    local file="$1" pgid
    pgid="$(cat "$file")"
    if kill -0 -- "-$pgid" 2>/dev/null; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    rm -f "$file"
}

down() {
    load_env
    for file in "$PIDS"/worker-*.pgid "$PIDS"/daemon.pgid "$PIDS"/webserver.pgid "$PIDS"/redis.pgid; do
        [ -f "$file" ] && stop_group "$file"
    done
    if [ -s "$PGDATA_DIR/PG_VERSION" ] && as_postgres "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status > /dev/null 2>&1; then
        as_postgres "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop > /dev/null
    fi
    echo "cluster: down"
}

forget() {  # `make clean`: a Postgres data directory kept outside the clone goes with it
    [ -s "$CLUSTER/pgdir" ] || return 0
    local data
    data="$(cat "$CLUSTER/pgdir")"
    case "$data" in /var/lib/ruv-cluster/*/pg) rm -rf "$(dirname "$data")" ;; esac
}

status() {
    load_env
    for file in "$PIDS"/*.pgid; do
        [ -f "$file" ] || continue
        if kill -0 -- "-$(cat "$file")" 2>/dev/null; then state=running; else state=gone; fi
        echo "$(basename "$file" .pgid): $state"
    done
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status > /dev/null 2>&1 && echo "postgres: running" || echo "postgres: stopped"
}

case "${1:-}" in
    up) up ;;
    run) shift; run "$@" ;;
    down) down ;;
    status) status ;;
    env) load_env; echo "source $CLUSTER/env; export DAGSTER_HOME=$DAGSTER_HOME" ;;
    forget) forget ;;
    *) echo "usage: $0 up|run|down|status|env|forget" >&2; exit 2 ;;
esac
