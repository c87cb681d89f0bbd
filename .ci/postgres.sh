#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the tests, on 127.0.0.1 and a free port.
#
#   . .ci/postgres.sh                        # start; exports the two variables below and
#                                            # stops the server when the calling shell exits
#   eval "$(bash .ci/postgres.sh)"           # the same, run as a program
#   bash .ci/postgres.sh stop "$LATENT_PAINTER_TEST_POSTGRES_DATA"
#
# Prints, on stdout and nothing else:
#   export LATENT_PAINTER_TEST_POSTGRES_URL=postgresql+asyncpg://postgres@127.0.0.1:PORT/latent_painter_test
#   export LATENT_PAINTER_TEST_POSTGRES_DATA=/tmp/latent-painter-pg.XXXXXX
# Installs Debian's postgresql package when no server binaries are found. PostgreSQL
# refuses to run as root, so as root the cluster belongs to the 'postgres' user.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
    fi
}

as_owner() {
    # Run a command as the cluster's owner: ourselves, or 'postgres' when we are root.
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

BINDIR=$(find_bindir)
if [ -z "$BINDIR" ]; then
    log "PostgreSQL not found; installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends postgresql >&2
    BINDIR=$(find_bindir)
    if [ -z "$BINDIR" ]; then
        log "postgresql installed but pg_ctl/initdb not found under /usr/lib/postgresql/*/bin"
        exit 1
    fi
fi

if [ "${1:-}" = "stop" ]; then
    DATA=${2:?usage: postgres.sh stop DIR}
    if [ -f "$DATA/cluster/postmaster.pid" ]; then
        as_owner "$BINDIR/pg_ctl" -D "$DATA/cluster" -m immediate -w stop >&2 || true
    fi
    rm -rf "$DATA"
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi

DATA=$(mktemp -d /tmp/latent-painter-pg.XXXXXX)
if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$DATA"
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

as_owner "$BINDIR/initdb" -D "$DATA/cluster" -U postgres -A trust -E UTF8 --no-sync >&2
# Durability settings off: a test server is thrown away, and fsync per commit would
# make the queue tests measure the disk instead of the queue.
as_owner "$BINDIR/pg_ctl" -D "$DATA/cluster" -l "$DATA/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >&2 || { cat "$DATA/server.log" >&2; exit 1; }
as_owner "$BINDIR/createdb" -h 127.0.0.1 -p "$PORT" -U postgres latent_painter_test

export LATENT_PAINTER_TEST_POSTGRES_URL="postgresql+asyncpg://postgres@127.0.0.1:$PORT/latent_painter_test"
export LATENT_PAINTER_TEST_POSTGRES_DATA="$DATA"
echo "export LATENT_PAINTER_TEST_POSTGRES_URL=$LATENT_PAINTER_TEST_POSTGRES_URL"
echo "export LATENT_PAINTER_TEST_POSTGRES_DATA=$LATENT_PAINTER_TEST_POSTGRES_DATA"
if [ "${BASH_SOURCE[0]}" != "$0" ] && [ -z "$(trap -p EXIT)" ]; then
    # Sourced (as .ci/run does): stop the server when that shell ends.
    trap "bash '$(readlink -f "${BASH_SOURCE[0]}")' stop '$DATA'" EXIT
fi
