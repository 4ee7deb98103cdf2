#!/usr/bin/env bash
# qemu-tests/bench/reprovision.sh: re-purposing a running node, decision -> agent
# ready on the new image, in the QEMU lab through boot-server:
#   staged: `boot-server node prestage` first (the agent downloads the image and
#           kexec_file_loads it ahead; its command line carries a one-time hand-off
#           credential, no token), then, timed, `boot-server node kexec`: the agent
#           only jumps, and the new boot fetches its token with the credential
#   warm:   `boot-server node kexec` alone (agent gets kernel+initrd, kexec_file_load)
#   cold:   `boot-server node reboot` (firmware, PXE/iPXE, HTTP, kernel)
# N runs of each (default 5), interleaved; the image alternates between `lab` and
# `lab-b` (same files, another name) so every run is a real move.
# For the kexec moves it prints a per-phase breakdown: what the agent reported in its
# command result (the server's events) and, for the new boot, the host's timestamps
# of the guest's serial console lines (n.serial.ts): under TCG the guest's own clock
# is not trustworthy across kexec (its uptime goes on from the TSC).
#   queue   decision -> the agent started the command (server events)
#   get     download (or image-cache read) of kernel + initrd, as the agent timed it
#   load    kexec_file_load, as the agent timed it (0: staged, already loaded)
#   jump    decision -> the agent's "jumping to the new kernel" line (queue + get +
#           load + result post + sync)
#   kernel  that line -> the new boot's /init starts (LAB-INIT-START): reboot(KEXEC),
#           purgatory (checks the segments' SHA-256), decompression, kernel init
#   dhcp    /init start -> its DHCP done (LAB-DHCP-DONE)
#   init    DHCP done -> the agent starts (LAB-AGENT-START)
#   agent   agent start -> hello accepted (inventory, hand-off, hello)
# (No stop phase: these moves have no application; the engine's moves add the
# stop hook, see test-engine.sh scenario 9.)
# Prints each run, the medians, and the median breakdown per kind.
# Usage: qemu-tests/bench/reprovision.sh [-n RUNS] [--firmware bios|uefi]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
runs=5 firmware=bios timeout=240
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --firmware) firmware="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=../lib/lab.sh
. "$here/../lib/lab.sh"
lab_require_root || exit 0
command -v jq >/dev/null || { echo "jq missing (qemu-tests/install-deps.sh)" >&2; exit 1; }
server="${CARGO_TARGET_DIR:-$repo/target}/release/boot-server"
[ -x "$server" ] || { echo "build boot-server first: cargo build --release -p boot-server" >&2; exit 1; }
lab_gc
lab_create reprov
lab_start_boot_server "$server" "$LAB_DIR/state"
config="$LAB_SERVER_CONFIG"
cli() { "$server" --config "$config" "$@"; }
sed -e 's/^name = "lab"/name = "lab-b"/' "$repo/images/lab/image.toml" > "$LAB_DIR/lab-b.toml"
cli image add --server-path "$LAB_DIR/lab-b.toml" >/dev/null
mac=52:54:00:30:00:01
lab_start_guest --name n --firmware "$firmware" --mac "$mac" --stamp --reboot
t0="$(awk -v t="${LAB_GUEST_T0[n]}" 'BEGIN { printf "%.0f", t * 1000 }')"
cli node timeline "$mac" --since-ms "$t0" --wait "$timeout" | tail -n 1 >&2
node_id="$(cli node show "$mac" --json | jq -r .id)"

last_event() { cli events --node "$node_id" --limit 100000 | tail -n 1 | jq -r .id; }

# Waits until command $1 has a final result; prints its detail.
command_done() {
    local id="$1" deadline=$((SECONDS + timeout)) line
    while [ $SECONDS -lt $deadline ]; do
        line="$(cli events --node "$node_id" --limit 100000 \
            | jq -c --argjson id "$id" 'select(.kind == "command-result" and .detail.id == $id and .detail.status != "started")' | tail -n 1)"
        if [ -n "$line" ]; then jq -r .detail.detail <<<"$line"; return 0; fi
        sleep 0.2
    done
    return 1
}

# The breakdown of the kexec move that started after event $1 at $2 (ms) and after
# line $3 of the serial timestamps: one line "queue get load jump kernel dhcp init
# agent" (seconds), or nothing.
breakdown() {
    local after="$1" t1="$2" from="$3" srv ser
    srv="$(cli events --node "$node_id" --after "$after" --limit 100000 | jq -s -r --argjson t1 "$t1" '
        (map(select(.kind == "command-queued" and .detail.command.kind == "kexec")) | first) as $q
        | (map(select(.kind == "command-result" and .detail.id == $q.detail.id)) ) as $r
        | ($r | map(select(.detail.status == "started")) | first) as $st
        | ($r | map(select(.detail.status == "succeeded")) | first) as $ok
        | ($ok.detail.detail // "") as $d
        | (if ($d | test("download [0-9]+ ms")) then ($d | capture("download (?<v>[0-9]+) ms").v | tonumber) else 0 end) as $get
        | (if ($d | test(" load [0-9]+ ms")) then ($d | capture(" load (?<v>[0-9]+) ms").v | tonumber) else 0 end) as $load
        | [ ($st.at_ms - $t1), $get, $load ] | map(. / 1000 | tostring) | join(" ")' 2>/dev/null)" || true
    # Host times (s since the guest's start) of the new boot's serial lines.
    ser="$(tail -n +"$((from + 1))" "$LAB_DIR/n.serial.ts" | awk -v t0="${LAB_GUEST_T0[n]}" -v t1="$t1" '
        /jumping to the new kernel/ && !j { j = $1 }
        j && /LAB-INIT-START/ && !i { i = $1 }
        i && /LAB-DHCP-DONE/ && !d { d = $1 }
        i && /LAB-AGENT-START/ && !a { a = $1 }
        a && /agent ready \(hello accepted\)/ && !r { r = $1 }
        END { if (r) printf "%.3f %.3f %.3f %.3f %.3f", (t0 + j) - t1 / 1000, i - j, d - i, a - d, r - a }')"
    echo "$srv $ser"
}

# One move: $1 = staged|warm|cold, $2 = image; prints "seconds [breakdown]".
move() {
    local kind="$1" image="$2" t1 line after qid lines
    if [ "$kind" = staged ]; then
        qid="$(cli node prestage "$mac" "$image" | awk '{ print $3 }')"
        command_done "$qid" >/dev/null || { echo FAIL; return; }
    fi
    after="$(last_event)"
    lines="$(wc -l < "$LAB_DIR/n.serial.ts")"
    t1="$(date +%s%3N)"
    if [ "$kind" = cold ]; then
        cli assign --mac "$mac" "$image"
        cli node reboot "$mac" >/dev/null
    else
        cli node kexec "$mac" "$image" >/dev/null
    fi
    line="$(cli node timeline "$mac" --since-ms "$t1" --wait "$timeout" | grep " agent    ready on $image " | tail -n 1)" || { echo FAIL; return; }
    if [ "$kind" = cold ]; then
        awk '{ print $1 }' <<<"$line"
    else
        echo "$(awk '{ print $1 }' <<<"$line") $(breakdown "$after" "$t1" "$lines")"
    fi
}
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A res=()
image=lab
for i in $(seq "$runs"); do
    for kind in staged warm cold; do
        [ "$image" = lab ] && image=lab-b || image=lab
        r="$(move "$kind" "$image")"
        echo "run $i $kind -> $image: $r"
        [ "${r%% *}" = FAIL ] && continue
        res[$kind]+="$r"$'\n'
    done
done
phases=(total queue get load jump kernel dhcp init agent)
for kind in staged warm cold; do
    rows="${res[$kind]:-}"
    n="$(grep -c . <<<"$rows" || true)"
    m="$(awk '{ print $1 }' <<<"$rows" | grep . | median || true)"
    case "$kind" in
        staged) label="warm, pre-staged (jump only)" ;;
        warm) label="warm, not staged (download + load + jump)" ;;
        cold) label="cold (reboot through firmware + PXE)" ;;
    esac
    echo "median $kind: ${m:--} s ($n/$runs ok) — $label"
    if [ "$kind" != cold ] && [ "$n" -gt 0 ]; then
        out="  breakdown (medians, s):"
        for c in $(seq 2 ${#phases[@]}); do
            v="$(awk -v c="$c" 'NF >= c { print $c }' <<<"$rows" | median)"
            out+=" ${phases[$((c - 1))]} $v"
        done
        echo "$out"
    fi
done
