#!/usr/bin/env bash
# A private PostgreSQL cluster for the store's tests: initdb under a directory
# of our own (default /tmp/boot-test-pg), listening on 127.0.0.1 and a Unix
# socket in that directory only, trust authentication (loopback only), run as
# the `postgres` user (the server refuses to run as root).
#   test-postgres.sh start   prints the URL to export as BOOT_TEST_PG_URL
#   test-postgres.sh stop    stops it (the data directory stays for the next start)
# Env: BOOT_TEST_PG_DIR (data + socket directory), BOOT_TEST_PG_PORT (default 55432).
set -euo pipefail
dir="${BOOT_TEST_PG_DIR:-/tmp/boot-test-pg}"
port="${BOOT_TEST_PG_PORT:-55432}"
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[ -x "$bin/pg_ctl" ] || { echo "test-postgres: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "${1:-}" in
    start)
        if [ ! -f "$dir/data/PG_VERSION" ]; then
            mkdir -p "$dir"
            [ "$(id -u)" = 0 ] && chown postgres: "$dir"
            as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
                || { cat "$dir/initdb.log" >&2; exit 1; }
        fi
        if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
            # fsync stays on: the store's tests measure durable writes.
            as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start \
                -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=400" >/dev/null \
                || { tail -n 20 "$dir/server.log" >&2; exit 1; }
        fi
        echo "postgres://postgres@127.0.0.1:$port/postgres"
        ;;
    stop)
        as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
        ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
