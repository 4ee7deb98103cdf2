#!/usr/bin/env bash
# qemu-tests/bench/boot.sh: cold-boot benchmark. N runs (default 5) of a BIOS TCG
# guest (SeaBIOS + virtio-net iPXE ROM) booting the lab image through
#   (a) the conventional stack: dnsmasq + nginx, plain baseline config;
#   (b) the project's boot server (`boot-server serve --config FILE`),
# alternating a/b run by run. Time runs from QEMU launch to the console marker
# LAB-INIT-READY. Each run gets a freshly started stack (no lease/cache carry-over).
#
# Usage: qemu-tests/bench/boot.sh [-n RUNS] [--timeout S] [--only conv|server]
#          [--server-cmd "CMD ..."]   (default: <target>/release/boot-server serve --config @CONFIG@)
#          [--server-config FILE]     (template; @STATE_DIR@ @IMAGES_DIR@ replaced)
#          [--conv-tricks]            (dnsmasq with the DESIGN.md fixes instead of baseline)
#          [--firmware bios|uefi]     (default bios)
# The server binary is looked up in $CARGO_TARGET_DIR, then target/; when absent the
# server half is skipped with a message.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../conventional.sh
. "$here/../conventional.sh"

runs=5
timeout=180
only=""
server_cmd=""
server_config_tmpl=""
conv_tricks=""
firmware=bios
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --server-cmd) server_cmd="$2"; shift 2 ;;
        --server-config) server_config_tmpl="$2"; shift 2 ;;
        --conv-tricks) conv_tricks="--tricks"; shift ;;
        --firmware) firmware="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

median() {
    sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# Writes the boot server's config for the lab to $1 (state dir $2).
bench_server_config() {
    local f="$1" state="$2"
    sed -e "s|@STATE_DIR@|$state|g" -e "s|@IMAGES_DIR@|$repo/images|g" \
        "${server_config_tmpl:-$repo/qemu-tests/lab-server.toml}" > "$f"
}

find_server() {
    local td="${CARGO_TARGET_DIR:-$repo/target}" p
    for p in "$td/release/boot-server" "$repo/target/release/boot-server"; do
        [ -x "$p" ] && { echo "$p"; return 0; }
    done
    return 1
}

# Starts a server command inside the namespace as daemon "server" and waits until it
# serves HTTP on 8080 and holds UDP 67. Arguments: the command (@CONFIG@ replaced).
bench_start_server() {
    local cfg="$LAB_DIR/server.toml" state
    state="$(mktemp -d "$LAB_DIR/state.XXXXXX")"
    bench_server_config "$cfg" "$state"
    local cmd=() a
    for a in "$@"; do cmd+=("${a//@CONFIG@/$cfg}"); done
    lab_spawn server "${cmd[@]}"
    local i
    for i in $(seq 300); do
        if lab_exec curl -s -o /dev/null "http://$LAB_BRIDGE_ADDR:8080/" \
            && lab_exec ss -Hlun 'sport = :67' | grep -q .; then
            return 0
        fi
        if ! kill -0 "${LAB_PID[server]}" 2>/dev/null; then
            lab_log "server exited:"; tail -n 20 "$LAB_DIR/server.log" >&2; return 1
        fi
        sleep 0.1
    done
    lab_log "server not ready after 30 s"; tail -n 20 "$LAB_DIR/server.log" >&2
    return 1
}

# Stops the daemons named in $@ (LAB_PID keys): SIGTERM, then SIGKILL after 5 s.
bench_stop() {
    local n pid i
    for n in "$@"; do
        pid="${LAB_PID[$n]:-}"
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            lab_log "$n ignored SIGTERM for 5 s; SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        unset "LAB_PID[$n]"
    done
}

# One boot: starts guest NAME, waits for the marker; BENCH_T = seconds or FAIL.
bench_one() {
    local name="$1"
    BENCH_T=FAIL
    lab_start_guest --name "$name" --firmware "$firmware" --stamp || return 0
    if lab_wait_console "$name" 'LAB-INIT-READY' "$timeout" >/dev/null; then BENCH_T="$LAB_ELAPSED"; fi
    lab_stop_guest "$name"
}

lab_require_root || exit 0
"$repo/images/build-lab-image.sh" >&2
lab_gc
lab_create bench

do_conv=1 do_server=1
[ "$only" = server ] && do_conv=0
[ "$only" = conv ] && do_server=0
if [ "$do_server" = 1 ] && [ -z "$server_cmd" ]; then
    if bin="$(find_server)"; then
        server_cmd="$bin serve --config @CONFIG@"
    else
        echo "boot-server binary not found (build: cargo build --release -p boot-server); server runs skipped" >&2
        do_server=0
    fi
fi

conv_times=() server_times=()
for i in $(seq "$runs"); do
    if [ "$do_conv" = 1 ]; then
        conv_start $conv_tricks
        bench_one "conv-$i"; t="$BENCH_T"
        bench_stop dnsmasq nginx
        echo "run $i conventional: $t s"
        [ "$t" != FAIL ] && conv_times+=("$t")
    fi
    if [ "$do_server" = 1 ]; then
        # shellcheck disable=SC2086
        if bench_start_server $server_cmd; then
            bench_one "server-$i"; t="$BENCH_T"
        else
            t=FAIL
        fi
        bench_stop server
        echo "run $i boot-server: $t s"
        [ "$t" != FAIL ] && server_times+=("$t")
    fi
done

cm="$(printf '%s\n' "${conv_times[@]}" | grep . | median || true)"
sm="$(printf '%s\n' "${server_times[@]}" | grep . | median || true)"
echo "median conventional: ${cm:--} s (${#conv_times[@]}/$runs ok)"
echo "median boot-server:  ${sm:--} s (${#server_times[@]}/$runs ok)"
if [[ "$cm" =~ ^[0-9.]+$ && "$sm" =~ ^[0-9.]+$ ]]; then
    echo "ratio conventional/boot-server: $(awk -v a="$cm" -v b="$sm" 'BEGIN { printf "%.2f", a / b }')"
fi
