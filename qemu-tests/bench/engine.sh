#!/usr/bin/env bash
# qemu-tests/bench/engine.sh: the engine's reprovisioning time, decision -> all N nodes
# ready in the new environment, for N = 1, 2, 4 nodes of a 4-guest BIOS TCG fleet
# (qemu-tests/lib/engine.sh: nodes idle in the pool on the default image `lab`).
#
# One run for size N: an inactive environment bench (image env-b, a start hook that exits 0,
# N nodes) is activated (`env activate bench`); the time is from just before the command to
# the newest `slot-step ... to ready` event of bench (the events' own timestamps), i.e.
# decision -> the last slot ready; "first" is the first slot's ready in the same run
# (the single-node time under the same load). Then bench is deactivated and the nodes go
# back to the pool (not timed). Beside it, in the same fleet, the same move without
# the engine: `boot-server node kexec MAC env-b` for N nodes at once, timed to the last
# `agent ready on env-b` of the boot timeline (then `node kexec MAC lab` back; these
# runs come after all engine runs, as `node kexec` also assigns the image).
#   warm: the agents are up, the engine moves them with kexec (`--boot warm`, default).
#   cold: `env set bench --boot cold`: a reboot through firmware and PXE (measured when
#         the CLI has that switch; otherwise the script says so).
# Prints each run, then a table of medians beside the seeds' 15 s target.
# Usage: qemu-tests/bench/engine.sh [-n RUNS] [--sizes "1 2 4"] [--no-manual] [--warm-only]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
runs=3 sizes="1 2 4" manual=1 warm_only=0 timeout=240 target=15
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --sizes) sizes="$2"; shift 2 ;;
        --no-manual) manual=0; shift ;;
        --warm-only) warm_only=1; shift ;;
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

# One engine run: N nodes into bench. Prints "ALL FIRST" seconds, or FAIL.
engine_run() {
    local n="$1" t1 ev
    eng_cli env scale bench "$n" >/dev/null 2>&1 || eng_cli env set bench --nodes "$n" >/dev/null || { echo FAIL; return; }
    eng_mark
    t1="$(eng_now_ms)"
    eng_cli env activate bench >/dev/null || { echo FAIL; return; }
    if ! eng_wait "bench has $n ready slots" "$timeout" eng_env_is bench "$n"; then
        eng_diag >&2; echo FAIL; return
    fi
    ev="$(eng_events_after "$ENG_EV_MARK" | jq -s -r --argjson t "$t1" '
        [.[] | select(.kind == "slot-step" and .detail.env == "bench" and .detail.to == "ready") | .at_ms]
        | if length == 0 then "FAIL" else "\((max - $t) / 1000) \((min - $t) / 1000)" end')"
    eng_cli env deactivate bench >/dev/null
    eng_wait "bench empty, 4 idle" "$timeout" eng_fleet_is bench 0 idle 4 || { eng_diag >&2; echo FAIL; return; }
    echo "$ev"
}

# The same move without the engine, N nodes at once: warm `node kexec MAC IMG`, cold
# `assign --mac MAC IMG` + `node reboot MAC`; to the last `agent ready on IMG`.
manual_run() {
    local mode="$1" n="$2" img="$3" t1 i m worst=0 t
    t1="$(eng_now_ms)"
    for i in $(seq "$n"); do
        m="${ENG_MACS[$((i - 1))]}"
        if [ "$mode" = warm ]; then
            eng_cli node kexec "$m" "$img" >/dev/null || { echo FAIL; return; }
        else
            { eng_cli assign --mac "$m" "$img" && eng_cli node reboot "$m"; } >/dev/null || { echo FAIL; return; }
        fi
    done
    for i in $(seq "$n"); do
        m="${ENG_MACS[$((i - 1))]}"
        t="$(eng_cli node timeline "$m" --since-ms "$t1" --wait "$timeout" | grep " agent    ready on $img " | tail -n 1 | awk '{ print $1 }')"
        [ -n "$t" ] || { echo FAIL; return; }
        worst="$(awk -v a="$worst" -v b="$t" 'BEGIN { print (b > a) ? b : a }')"
    done
    echo "$worst"
}

# The engine's cold switch: `env set NAME --boot cold|warm` (BootMode), when the CLI has it.
has_boot_switch() { eng_cli env set --help 2>/dev/null | grep -q -- '--boot'; }
modes="warm"
if [ "$warm_only" = 1 ]; then :; elif has_boot_switch; then modes="warm cold"; else
    echo "cold: not measured: this CLI has no \`env set --boot cold\`; the engine reboots only nodes without a live agent"
fi

eng_cli env create bench --image env-b --description "bench" --min 0 --nodes 1 --max 4 \
    --hostname-pattern 'bench-{slot}' --hook "start=$ENG_HOOKS/beta/start" --hook "health=$ENG_HOOKS/beta/health" \
    --inactive >/dev/null || { echo "env create bench failed" >&2; exit 1; }
declare -A all=() first=() man=()
for mode in $modes; do
    [ "$mode" = warm ] || eng_cli env set bench --boot "$mode" >/dev/null || { echo "env set bench --boot $mode failed" >&2; continue; }
    for r in $(seq "$runs"); do
        for n in $sizes; do
            read -r a f <<<"$(engine_run "$n")"
            echo "run $r engine $mode N=$n: all ready ${a} s, first ${f:--} s"
            [ "$a" != FAIL ] && { all[$mode.$n]+="$a "; first[$mode.$n]+="$f "; }
        done
    done
done
# Manual moves last: they assign images, which takes the nodes out of the engine's pool.
if [ "$manual" = 1 ]; then
    for mode in $modes; do
        for r in $(seq "$runs"); do
            for n in $sizes; do
                t="$(manual_run "$mode" "$n" env-b)"
                echo "run $r manual $mode N=$n: all ready $t s"
                [ "$t" != FAIL ] && man[$mode.$n]+="$t "
                manual_run "$mode" "$n" lab >/dev/null
            done
        done
    done
fi
echo
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-3s %-24s %-27s %-20s %-7s %s\n' mode N "engine: all ready (s)" "first node, same load (s)" "manual, no engine (s)" target "engine/target"
for mode in $modes; do
    for n in $sizes; do
        k="$mode.$n"
        am="$(tr ' ' '\n' <<<"${all[$k]:-}" | grep . | median)"
        fm="$(tr ' ' '\n' <<<"${first[$k]:-}" | grep . | median)"
        mm="$(tr ' ' '\n' <<<"${man[$k]:-}" | grep . | median)"
        ok="$(tr ' ' '\n' <<<"${all[$k]:-}" | grep -c .)"
        ratio="$(awk -v a="$am" -v t="$target" 'BEGIN { if (a == "-") print "-"; else printf "%.2f", a / t }')"
        printf '%-5s %-3s %-24s %-27s %-20s %-7s %s\n' "$mode" "$n" "$am ($ok/$runs ok)" "$fm" "$mm" "${target} s" "$ratio"
    done
done
