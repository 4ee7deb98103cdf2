#!/usr/bin/env bash
# qemu-tests/bench/boot.sh: cold-boot benchmark. N runs (default 5) of a BIOS TCG
# guest (SeaBIOS + virtio-net iPXE ROM) booting the lab image through
#   (a) the conventional stack: dnsmasq + nginx, plain baseline config;
#   (b) the project's boot server (`boot-server serve --config FILE`),
# alternating a/b run by run. Time runs from QEMU launch to the console marker
# LAB-INIT-READY, and for the boot server also to the agent's "agent ready" log line
# (the conventional stack has no agent server). Each run gets a freshly started stack
# (no lease/cache carry-over). Per run and as medians it splits the time into phases:
#   pre-kernel  QEMU launch -> kernel clock start (firmware/ROM, DHCP, downloads,
#               bzImage self-decompression) = wall time of LAB-INIT-START minus the
#               guest uptime it prints
#   kernel      guest uptime at LAB-INIT-START
#   init        LAB-INIT-START -> LAB-INIT-READY (wall)
#   agent       LAB-INIT-READY -> agent ready (wall, boot server only)
# With --kernels "lab debian" each run boots every kernel in turn (the default image
# images/build/lab is swapped between runs and rebuilt for the lab kernel at the end).
#
# Usage: qemu-tests/bench/boot.sh [-n RUNS] [--timeout S] [--only conv|server]
#          [--server-cmd "CMD ..."]   (default: <target>/release/boot-server serve --config @CONFIG@)
#          [--server-config FILE]     (template; @STATE_DIR@ @IMAGES_DIR@ replaced)
#          [--conv-tricks]            (dnsmasq with the DESIGN.md fixes instead of baseline)
#          [--firmware bios|uefi]     (default bios)
#          [--kernels "lab debian"]   (or lab,debian; default lab: images/build-lab-image.sh kernels
#                                     to compare: lab | lab-<bzImage compression> | debian)
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
kernels=(lab)
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --server-cmd) server_cmd="$2"; shift 2 ;;
        --server-config) server_config_tmpl="$2"; shift 2 ;;
        --conv-tricks) conv_tricks="--tricks"; shift ;;
        --firmware) firmware="$2"; shift 2 ;;
        --kernels) read -r -a kernels <<<"${2//,/ }"; shift 2 ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
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

# One boot: starts guest NAME, waits for the marker (and with $2 = agent, for the
# agent's ready line); BENCH_T = seconds or FAIL, BENCH_A = seconds to agent ready or
# "-", BENCH_PH = "pre-kernel kernel init agent" seconds (see the header).
bench_one() {
    local name="$1" want_agent="${2:-}"
    BENCH_T=FAIL BENCH_A=- BENCH_PH="- - - -"
    lab_start_guest --name "$name" --firmware "$firmware" --stamp || return 0
    if lab_wait_console "$name" 'LAB-INIT-READY' "$timeout" >/dev/null; then
        BENCH_T="$LAB_ELAPSED"
        if [ -n "$want_agent" ] && lab_wait_console "$name" 'agent ready' 60 >/dev/null; then
            BENCH_A="$LAB_ELAPSED"
        fi
        # The stamp follower writes each line shortly after it appears.
        local ts="${LAB_GUEST_LOG[$name]}.ts" i
        for i in $(seq 20); do grep -q 'LAB-INIT-READY' "$ts" 2>/dev/null && break; sleep 0.1; done
        BENCH_PH="$(awk -v agent="$BENCH_A" '
            /LAB-INIT-START uptime=/ && !s { s = $1; match($0, /uptime=[0-9.]+/); up = substr($0, RSTART + 7, RLENGTH - 7) }
            /LAB-INIT-READY/ && !r { r = $1 }
            END {
                if (!s || !r) { print "- - - -"; exit }
                a = (agent == "-") ? "-" : sprintf("%.2f", agent - r)
                printf "%.2f %.2f %.2f %s\n", s - up, up, r - s, a
            }' "$ts")"
    fi
    lab_stop_guest "$name"
}

# Puts the image built for kernel $1 in place as the default image images/build/lab.
use_kernel() {
    local d="$repo/images/build/bench-boot-$1"
    cp -f "$d/vmlinuz" "$d/initrd.img" "$d/stamp" "$repo/images/build/lab/"
}

lab_require_root || exit 0
"$repo/images/build-lab-image.sh" >&2
for k in "${kernels[@]}"; do
    case "$k" in
        debian) kargs=(--debian-kernel) ;;
        lab) kargs=() ;;
        lab-*) kargs=(--kernel-compress "${k#lab-}") ;;
        *) echo "unknown kernel $k (lab | lab-<compression> | debian)" >&2; exit 2 ;;
    esac
    "$repo/images/build-lab-image.sh" "${kargs[@]}" --out "$repo/images/build/bench-boot-$k" >&2
done
lab_gc
lab_create bench
# Whatever ran last, leave the default image as images/build-lab-image.sh builds it
# (after lab.sh's own cleanup, which owns the EXIT trap).
trap 'lab_cleanup || true; "$repo/images/build-lab-image.sh" >/dev/null 2>&1 || true' EXIT

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

declare -A conv_times=() server_times=() agent_times=() phases=()
for i in $(seq "$runs"); do
  for k in "${kernels[@]}"; do
    use_kernel "$k"
    if [ "$do_conv" = 1 ]; then
        conv_start $conv_tricks
        bench_one "conv-$k-$i"; t="$BENCH_T"
        bench_stop dnsmasq nginx
        echo "run $i $k conventional: $t s (pre-kernel kernel init agent: $BENCH_PH)"
        [ "$t" != FAIL ] && conv_times[$k]+="$t " && phases[conv-$k]+="$BENCH_PH;"
    fi
    if [ "$do_server" = 1 ]; then
        # shellcheck disable=SC2086
        if bench_start_server $server_cmd; then
            bench_one "server-$k-$i" agent; t="$BENCH_T"
        else
            t=FAIL
        fi
        bench_stop server
        echo "run $i $k boot-server: $t s, agent ready $BENCH_A s (pre-kernel kernel init agent: $BENCH_PH)"
        [ "$t" != FAIL ] && server_times[$k]+="$t " && phases[server-$k]+="$BENCH_PH;"
        [ "$BENCH_A" != - ] && agent_times[$k]+="$BENCH_A "
    fi
  done
done

med() { printf '%s\n' $1 | { grep -E '^[0-9.]+$' || true; } | median; }
# Median of each phase column over the runs of key $1.
phase_medians() {
    local col out=""
    for col in 1 2 3 4; do
        out="$out $(tr ';' '\n' <<<"${phases[$1]:-}" | awk -v c="$col" 'NF { print $c }' | { grep -E '^[0-9.]+$' || true; } | median)"
    done
    echo "${out# }"
}
ratio() { [[ "$1" =~ ^[0-9.]+$ && "$2" =~ ^[0-9.]+$ ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' || echo -; }
declare -A cm=() sm=() am=()
for k in "${kernels[@]}"; do
    cm[$k]="$(med "${conv_times[$k]:-}")"; sm[$k]="$(med "${server_times[$k]:-}")"; am[$k]="$(med "${agent_times[$k]:-}")"
    echo "== kernel $k ($firmware)"
    echo "median conventional: ${cm[$k]} s to LAB-INIT-READY ($(wc -w <<<"${conv_times[$k]:-}")/$runs ok); phases pre-kernel kernel init: $(phase_medians "conv-$k" | cut -d' ' -f1-3)"
    echo "median boot-server:  ${sm[$k]} s to LAB-INIT-READY, ${am[$k]} s to agent ready ($(wc -w <<<"${server_times[$k]:-}")/$runs ok); phases pre-kernel kernel init agent: $(phase_medians "server-$k")"
    echo "ratio conventional/boot-server: $(ratio "${cm[$k]}" "${sm[$k]}")"
    # The issue's direction: boot-server's power-on -> agent ready over the
    # conventional stack's power-on -> init ready (goals: BIOS <= 0.30, UEFI <= 0.45).
    echo "ratio boot-server agent ready / conventional init ready ($k, $firmware${conv_tricks:+, conventional hand-tuned}): $(ratio "${am[$k]}" "${cm[$k]}")"
done
# The lean lab kernel against what a hand-tuned conventional stack boots: Debian's
# stock kernel and initramfs (goal with --conv-tricks: <= 0.8).
if [ -n "${cm[debian]:-}" ] && [ -n "${am[lab]:-}" ]; then
    echo "ratio boot-server agent ready (lab kernel) / conventional${conv_tricks:+ hand-tuned} init ready (debian kernel): $(ratio "${am[lab]}" "${cm[debian]}")"
fi
if [ ${#kernels[@]} -gt 1 ]; then
    b="${kernels[0]}"
    for k in "${kernels[@]:1}"; do
        echo "ratio $k/$b: conventional $(ratio "${cm[$k]}" "${cm[$b]}"), boot-server $(ratio "${sm[$k]}" "${sm[$b]}"), boot-server agent ready $(ratio "${am[$k]}" "${am[$b]}")"
    done
fi
