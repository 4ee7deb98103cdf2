#!/usr/bin/env bash
# qemu-tests/bench/engine.sh: the engine's reprovisioning time, decision -> all N nodes
# ready in the new environment, for N = 1, 2, 4 nodes of a 4-guest BIOS TCG fleet
# (qemu-tests/lib/engine.sh: nodes idle in the pool on the default image `lab`).
#
# One run for size N: an inactive environment P (image env-b, a start hook that exits 0,
# N nodes) is activated (`env activate P`); the time is from just before the command to
# the newest `slot-step ... to ready` event of P (the events' own timestamps), i.e.
# decision -> the last slot ready; "first" is the first slot's ready in the same run
# (the single-node time under the same load). Then P is deactivated and the nodes go
# back to the pool (not timed). Beside it, in the same fleet, the same move without
# the engine: `boot-server node kexec MAC env-b` for N nodes at once, timed to the last
# `agent ready on env-b` of the boot timeline (then `node kexec MAC lab` back; these
# runs come after all engine runs, as `node kexec` also assigns the image).
#   warm: the agents are up, the engine moves them with kexec.
#   cold: a reboot through firmware and PXE. The engine contract has no switch that
#         forces a cold move (cold is its fallback when no agent is up); --cold is
#         accepted and reported as not measured until it does.
# Prints each run, then a table of medians beside the seeds' 15 s target.
# Usage: qemu-tests/bench/engine.sh [-n RUNS] [--sizes "1 2 4"] [--no-manual] [--cold]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
runs=3 sizes="1 2 4" manual=1 cold=0 timeout=240 target=15
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --sizes) sizes="$2"; shift 2 ;;
        --no-manual) manual=0; shift ;;
        --cold) cold=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=../lib/lab.sh
. "$here/../lib/lab.sh"
# shellcheck source=../lib/engine.sh
. "$here/../lib/engine.sh"
lab_require_root || exit 0
command -v jq >/dev/null || { echo "jq missing (qemu-tests/install-deps.sh)" >&2; exit 1; }
server="${CARGO_TARGET_DIR:-$repo/target}/release/boot-server"
[ -x "$server" ] || { echo "build boot-server first: cargo build --release -p boot-server" >&2; exit 1; }
maxn=0
for n in $sizes; do [ "$n" -gt "$maxn" ] && maxn=$n; done
[ "$maxn" -le 4 ] || { echo "sizes up to 4 (the fleet has 4 guests)" >&2; exit 2; }
lab_gc
eng_fleet_up enbench 4 || { echo "fleet did not come up" >&2; eng_diag; exit 1; }
echo "fleet of 4 idle after $(eng_secs_since "$eng_t_fleet") s; load: $(cut -d' ' -f1-3 /proc/loadavg)"
eng_has_engine || { echo "the server has no engine (\`boot-server env\` missing)" >&2; exit 1; }

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# One engine run: N nodes into P. Prints "ALL FIRST" seconds, or FAIL.
engine_run() {
    local n="$1" t1 ev
    eng_cli env scale P "$n" >/dev/null 2>&1 || eng_cli env set P --nodes "$n" >/dev/null || { echo FAIL; return; }
    eng_mark
    t1="$(eng_now_ms)"
    eng_cli env activate P >/dev/null || { echo FAIL; return; }
    if ! eng_wait "P has $n ready slots" "$timeout" eng_env_is P "$n"; then
        eng_diag >&2; echo FAIL; return
    fi
    ev="$(eng_events_after "$ENG_EV_MARK" | jq -s -r --argjson t "$t1" '
        [.[] | select(.kind == "slot-step" and .detail.env == "P" and .detail.to == "ready") | .at_ms]
        | if length == 0 then "FAIL" else "\((max - $t) / 1000) \((min - $t) / 1000)" end')"
    eng_cli env deactivate P >/dev/null
    eng_wait "P empty, 4 idle" "$timeout" eng_fleet_is P 0 idle 4 || { eng_diag >&2; echo FAIL; return; }
    echo "$ev"
}

# The same move without the engine: node kexec of N nodes at once.
manual_run() {
    local n="$1" img="$2" t1 i m worst=0 t
    t1="$(eng_now_ms)"
    for i in $(seq "$n"); do eng_cli node kexec "${ENG_MACS[$((i - 1))]}" "$img" >/dev/null || { echo FAIL; return; }; done
    for i in $(seq "$n"); do
        m="${ENG_MACS[$((i - 1))]}"
        t="$(eng_cli node timeline "$m" --since-ms "$t1" --wait "$timeout" | grep " agent    ready on $img " | tail -n 1 | awk '{ print $1 }')"
        [ -n "$t" ] || { echo FAIL; return; }
        worst="$(awk -v a="$worst" -v b="$t" 'BEGIN { print (b > a) ? b : a }')"
    done
    echo "$worst"
}

eng_cli env create P --image env-b --description "bench" --min 0 --nodes 1 --max 4 \
    --hostname-pattern 'p-{slot}' --hook "start=$ENG_HOOKS/B/start" --hook "health=$ENG_HOOKS/B/health" \
    --inactive >/dev/null || { echo "env create P failed" >&2; exit 1; }
declare -A all=() first=() man=()
for r in $(seq "$runs"); do
    for n in $sizes; do
        read -r a f <<<"$(engine_run "$n")"
        echo "run $r engine warm N=$n: all ready ${a} s, first ${f:--} s"
        [ "$a" != FAIL ] && { all[$n]+="$a "; first[$n]+="$f "; }
    done
done
# Manual moves last: `node kexec` also assigns the image, which takes the nodes out
# of the engine's pool.
if [ "$manual" = 1 ]; then
    for r in $(seq "$runs"); do
        for n in $sizes; do
            t="$(manual_run "$n" env-b)"
            echo "run $r manual kexec N=$n: all ready $t s"
            [ "$t" != FAIL ] && man[$n]+="$t "
            manual_run "$n" lab >/dev/null
        done
    done
fi
echo
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-5s %-22s %-26s %-22s %-8s %s\n' mode N "engine: all ready (s)" "first node, same load (s)" "manual kexec (s)" target "engine/target"
for n in $sizes; do
    am="$(tr ' ' '\n' <<<"${all[$n]:-}" | grep . | median)"
    fm="$(tr ' ' '\n' <<<"${first[$n]:-}" | grep . | median)"
    mm="$(tr ' ' '\n' <<<"${man[$n]:-}" | grep . | median)"
    ok="$(tr ' ' '\n' <<<"${all[$n]:-}" | grep -c .)"
    ratio="$(awk -v a="$am" -v t="$target" 'BEGIN { if (a == "-") print "-"; else printf "%.2f", a / t }')"
    printf '%-6s %-5s %-22s %-26s %-22s %-8s %s\n' warm "$n" "$am ($ok/$runs ok)" "$fm" "${mm}" "${target} s" "$ratio"
done
if [ "$cold" = 1 ]; then
    echo "cold: not measured: the engine has no switch that forces a cold move (reboot); it reboots only nodes without a live agent"
fi
