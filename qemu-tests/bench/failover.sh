#!/usr/bin/env bash
# qemu-tests/bench/failover.sh: failover time in the QEMU lab, node killed -> its slot
# ready again, on a warm spare and on a new VM started on a failover host, median of N
# runs, with a per-phase breakdown taken from the server's event timestamps:
#   detect  kill -> node-failed (power watch over QMP; the reason is printed)
#   fence   node-failed -> fenced (export revoked, power off read back)
#   claim   fenced -> the slot's disk attached to the new node (spare) / the VM reported
#           running by its host (VM: the disk is attached when the VM node is claimed)
#   pickup  (spare) -> the new node's agent reports on the kexec command it was sent
#   boot    -> the agent's hello in the slot's image (agent-ready; spare: kexec, kernel,
#           initrd; VM: firmware, PXE, iPXE, kernel, initrd)
#   ready   hello -> slot ready (slot configuration, start hook, first heartbeat)
# Fleet: 3 BIOS TCG guests (MACs 52:54:00:e2:00:01..03, QMP power control), environment
# bf with 1 slot and a disk, failed-node cool-down 5 s (a restarted guest is a spare
# again at once). Spare runs: the slot's node is killed, an idle guest (agent up) takes
# the slot; the killed guest is then restarted and waited for idle: its restart -> agent
# up, the conventional recovery (restart the dead machine), is printed beside. VM runs:
# the idle guests are quarantined, a host-mode agent runs in the lab namespace (TCG VMs
# on the bridge); the slot's node is killed and a VM takes the slot; then the node is
# restarted and the slot fails back (time printed), the VM stopped.
# Not a CI test. Needs root, jq, qemu-system-x86_64, busybox, built boot-server and
# node-agent, the lab image.
# Usage: qemu-tests/bench/failover.sh [-n RUNS] [--spare-only|--vm-only]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
runs=3 do_spare=1 do_vm=1 timeout=240
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --spare-only) do_vm=0; shift ;;
        --vm-only) do_spare=0; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=../lib/lab.sh
. "$here/../lib/lab.sh"
# shellcheck source=../lib/engine.sh
. "$here/../lib/engine.sh"
ENG_MAC_PREFIX="52:54:00:e2:00"
lab_require_root || exit 0
command -v jq >/dev/null || { echo "jq missing (qemu-tests/install-deps.sh)" >&2; exit 1; }
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
agent="$(ls -t "$td/release/node-agent" "$td/x86_64-unknown-linux-gnu/release/node-agent" 2>/dev/null | head -n 1)"
[ -x "$server" ] || { echo "build boot-server first: cargo build --release -p boot-server" >&2; exit 1; }
[ -n "$agent" ] && [ -x "$agent" ] || { echo "build node-agent first" >&2; exit 1; }
ENV=bf

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
guest_of() {
    local i
    for i in "${!ENG_MACS[@]}"; do
        [ "$(eng_node_id "${ENG_MACS[$i]}")" = "$1" ] && { echo "${ENG_GUESTS[$i]} ${ENG_MACS[$i]}"; return 0; }
    done
    return 1
}
slot_node() { eng_slot_field "$ENV" 0 node; }
slot_ready_on_other() { eng_slot_moved "$ENV" 0 "$1"; }
slot_on_vm() {
    local n; n="$(slot_node)"
    [ -n "$n" ] && [ "$n" != null ] && [ "$(eng_slot_field "$ENV" 0 step)" = ready ] || return 1
    eng_cli node show "$n" --json | jq -e '.labels.virtual == "true"' >/dev/null
}
restart_guest() {
    lab_start_guest --name "$1" --firmware bios --nic virtio-net-pci --mac "$2" --mem 384 --reboot \
        --extra "-qmp unix:$LAB_DIR/$1.qmp,server=on,wait=off"
}

# phases OLD NEW T_MS MODE: one line "total detect fence claim pickup boot ready reason"
# (seconds) from the events after the mark: pickup = claim -> the new node's agent reports
# on its kexec command (spare only); boot = -> the agent's hello in the slot's image
# (agent-ready); ready = hello -> slot ready (configuration, start hook).
phases() {
    local old="$1" new="$2" t="$3" mode="$4" ov
    ov="$(eng_slot_field "$ENV" 0 overlay)"
    eng_events_after "$ENG_EV_MARK" | jq -r -s --arg old "$old" --arg new "$new" --arg ov "$ov" \
        --argjson t "$t" --arg mode "$mode" '
        def at(f): [.[] | select(f) | .at_ms][0] // null;
        def s(a; b): if a == null or b == null then "-" else ((b - a) / 1000 | tostring) end;
        (at(.kind == "node-failed" and .node == $old)) as $failed
        | (at(.kind == "fenced" and .node == $old)) as $fenced
        | (if $mode == "vm" then at(.kind == "vm" and .detail.action == "running")
           else at(.kind == "disk-attached" and .node == $new and .detail.overlay == $ov) end) as $claimed
        | (if $mode == "vm" then null
           else at(.kind == "command-result" and .node == $new and .at_ms >= $claimed) end) as $pickup
        | (at(.kind == "agent-ready" and .node == $new and .at_ms >= $claimed)) as $hello
        | (at(.kind == "slot-step" and .detail.env == "bf" and .detail.node == $new and .detail.to == "ready")) as $ready
        | ([.[] | select(.kind == "node-failed" and .node == $old) | .detail.reason][0] // "?" | gsub(" "; "-")) as $why
        | "\(s($t; $ready)) \(s($t; $failed)) \(s($failed; $fenced)) \(s($fenced; $claimed)) \(s($claimed; $pickup)) \(s($pickup // $claimed; $hello)) \(s($hello; $ready)) \($why)"'
}

lab_gc
t_start=$SECONDS
eng_fleet_up fobench 3 || { echo "fleet did not come up" >&2; eng_diag; exit 1; }
# A failed node that comes back is a spare again 5 s later (default 300 s).
printf '\n[engine]\nfailed_node_cooldown_secs = 5\n' >> "$ENG_CONFIG"
eng_server_kill9
eng_server_start || { echo "server restart failed" >&2; exit 1; }
echo "fleet of 3 idle after $(eng_secs_since "$eng_t_fleet") s; load: $(cut -d' ' -f1-3 /proc/loadavg)"
eng__write_hooks "$ENV"
eng_cli env create "$ENV" --image env-a --description "failover bench" --min 1 --nodes 1 --max 1 \
    --priority 10 --disk-base "$ENG_BASE" --hostname-pattern 'bf-{slot}' \
    --addresses 10.77.0.240-10.77.0.249 --failback never --detect power-watch=true \
    --hook "start=$ENG_HOOKS/$ENV/start" --hook "health=$ENG_HOOKS/$ENV/health" >/dev/null \
    || { echo "env create failed" >&2; exit 1; }
eng_wait "$ENV ready, 2 idle" "$timeout" eng_env_and_idle "$ENV" 1 2 || { eng_diag; exit 1; }

declare -a SPARE=() VM=() CONV=() BACK=()
hdr="total detect fence claim pickup boot ready"
if [ "$do_spare" = 1 ]; then
    echo "== warm spare: the slot's node killed, an idle guest with its agent up takes the slot"
    echo "   run: $hdr (s) | detected by | restart of the killed guest -> agent up (conventional)"
    for r in $(seq "$runs"); do
        old="$(slot_node)"
        read -r g mac <<<"$(guest_of "$old")"
        eng_mark
        t="$(eng_now_ms)"
        kill -9 "${LAB_GUEST_PID[$g]}"
        if ! eng_wait "slot ready on a spare" "$timeout" slot_ready_on_other "$old"; then
            eng_diag; echo "run $r: FAIL"; continue
        fi
        new="$(slot_node)"
        line="$(phases "$old" "$new" "$t" spare)"
        SPARE+=("$line")
        # The conventional recovery: restart the dead machine (cold PXE boot) until its
        # agent is up again; it then rejoins the pool as a spare.
        wait "${LAB_GUEST_PID[$g]}" 2>/dev/null
        tc="$(eng_now_ms)"
        restart_guest "$g" "$mac"
        eng_wait "$g back" "$timeout" eng_node_hb_after "$old" "$tc" || { eng_diag; echo "run $r: $g did not come back"; continue; }
        conv="$(eng_secs_since_ms "$tc")"
        CONV+=("$conv")
        eng_cli node repaired "$old" >/dev/null 2>&1
        eng_wait "2 idle again" "$timeout" eng_env_and_idle "$ENV" 1 2 || { eng_diag; exit 1; }
        read -r tot det fen cla pic boo rea why <<<"$line"
        printf '   %d: %s %s %s %s %s %s %s | %s | %s\n' "$r" "$tot" "$det" "$fen" "$cla" "$pic" "$boo" "$rea" "$why" "$conv"
        sleep 6 # past the 5 s cool-down of the node just back
    done
fi

if [ "$do_vm" = 1 ]; then
    echo "== new VM: no spare (idle guests quarantined), a failover host starts a TCG VM for the slot"
    mkdir -p "$LAB_DIR/host-h1"
    eng_cli host add h1 > "$LAB_DIR/host-h1/secret" && chmod 600 "$LAB_DIR/host-h1/secret"
    lab_spawn host-h1 "$agent" host --server "http://$LAB_BRIDGE_ADDR:8080" \
        --credential-file "$LAB_DIR/host-h1/secret" --bridge br0 --reserve 1 --accel tcg --state-dir "$LAB_DIR/host-h1"
    eng_wait "h1 up" 60 eval '[ "$(eng_cli host show h1 --json | jq -r .state)" = up ]' || { eng_diag; exit 1; }
    eng_cli env set "$ENV" --failback immediate >/dev/null
    home="$(slot_node)"
    for n in $(eng_nodes | jq -r --arg h "$home" '.[] | select(.state == "idle" and .id != $h) | .id'); do
        eng_cli node quarantine "$n" >/dev/null
    done
    echo "   run: $hdr (s) | detected by | failback after the home's restart"
    for r in $(seq "$runs"); do
        old="$(slot_node)"
        read -r g mac <<<"$(guest_of "$old")"
        eng_mark
        t="$(eng_now_ms)"
        kill -9 "${LAB_GUEST_PID[$g]}"
        if ! eng_wait "slot ready on a VM" "$timeout" slot_on_vm; then
            eng_diag; echo "run $r: FAIL"; break
        fi
        new="$(slot_node)"
        line="$(phases "$old" "$new" "$t" vm)"
        VM+=("$line")
        wait "${LAB_GUEST_PID[$g]}" 2>/dev/null
        tb="$(eng_now_ms)"
        restart_guest "$g" "$mac"
        if ! eng_wait "slot back on $old" "$timeout" eval "[ \"\$(slot_node)\" = $old ] && [ \"\$(eng_slot_field $ENV 0 step)\" = ready ]"; then
            eng_diag; echo "run $r: no failback"; break
        fi
        back="$(eng_secs_since_ms "$tb")"
        BACK+=("$back")
        eng_wait "VM stopped" 60 eval "eng_cli host show h1 --json | jq -e '[.vms[] | select(.state == \"running\")] | length == 0'" || { eng_diag; break; }
        read -r tot det fen cla pic boo rea why <<<"$line"
        printf '   %d: %s %s %s %s %s %s %s | %s | %s\n' "$r" "$tot" "$det" "$fen" "$cla" "$pic" "$boo" "$rea" "$why" "$back"
    done
fi

col() { local i="$1"; shift; for l in "$@"; do echo "$l" | awk -v i="$i" '$i != "-" { print $i }'; done | median; }
echo
echo "== medians of $runs (s; load: $(cut -d' ' -f1-3 /proc/loadavg); $((SECONDS - t_start)) s in all)"
printf '%-30s %7s %7s %7s %7s %7s %7s %7s\n' "" total detect fence claim pickup boot ready
for kind in SPARE VM; do
    declare -n arr="$kind"
    [ "${#arr[@]}" -gt 0 ] || continue
    label="kill -> ready on a warm spare"
    [ "$kind" = VM ] && label="kill -> ready on a new VM"
    printf '%-30s %7s %7s %7s %7s %7s %7s %7s\n' "$label" "$(col 1 "${arr[@]}")" "$(col 2 "${arr[@]}")" \
        "$(col 3 "${arr[@]}")" "$(col 4 "${arr[@]}")" "$(col 5 "${arr[@]}")" "$(col 6 "${arr[@]}")" "$(col 7 "${arr[@]}")"
done
if [ "${#CONV[@]}" -gt 0 ]; then
    mc="$(printf '%s\n' "${CONV[@]}" | median)" ms="$(col 1 "${SPARE[@]}")"
    echo "conventional: restart the killed guest -> agent up: median $mc s"
    awk -v a="$ms" -v b="$mc" 'BEGIN { if (a > 0 && b > 0) printf "ratio spare failover / restart of the dead machine: %.2f\n", a / b }'
fi
[ "${#BACK[@]}" -gt 0 ] && echo "failback (home restarted -> slot ready on it again): median $(printf '%s\n' "${BACK[@]}" | median) s"
echo "seeds' goal: kill -> ready on a warm spare <= 15 s"
eng_fleet_down
