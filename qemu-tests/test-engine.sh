#!/usr/bin/env bash
# qemu-tests/test-engine.sh: acceptance test of the dynamic boot engine (environments,
# slots, reconciler) in the QEMU lab, on one shared fleet of 4 BIOS TCG guests
# (SeaBIOS, virtio-net, MACs 52:54:00:e0:00:01..04) booted once into the default image
# (the pool, nodes `idle`), boot-server in full DHCP mode with NBD.
#
# Two environment images, env-a and env-b (the lab kernel + initramfs under other
# names). alpha's slots have a disk: an overlay of the lab root file system (`engbase`),
# so the node's root is on the slot's NBD disk and what a hook writes there stays with
# the slot. The hooks ask the lab host's control web server (busybox httpd on
# 10.77.0.1:8097, files under $LAB_DIR/ctl) what load to report and whether to say
# busy, so the test steers them from the host without logging into a node:
#   start : writes /var/lib/env-marker (host name + random) on the slot disk if absent
#   health: prints host=, ip=, marker=, load= (load from ctl/load/HOST, else ctl/load/ENV)
#   busy  : exit 0 when ctl/busy/HOST or ctl/busy/ENV holds 1
# Scenarios (each prints PASS/FAIL lines and its seconds):
#   1 scale: alpha 1 -> 3 reprovisions two idle nodes with alpha's image and each slot's host
#     name, address and disk; a slot that loses its node and gets one back finds its
#     marker again
#   2 preempt: beta (higher priority) needing 2 nodes takes the idle node and alpha's
#     least-loaded preemptible slot; beta asking for 3 never takes alpha below its minimum
#   3 busy: a node whose busy hook says busy is not removed until it says idle
#   4 policy: load above the threshold for the window adds a node, below removes one
#   5 schedule: a schedule a few seconds ahead starts and then stops beta
#   6 crash: kill -9 of the server during an allocation; after the restart the engine
#     converges, no node half-assigned, no slot held by two nodes
#   7 quarantine: the node stays up (heartbeats go on), leaves the environment, and an
#     alert event says so
#   8 failover: the QEMU of the node holding alpha's highest ready slot is killed; its power (QMP) reads
#     off, it is fenced (proven) and an idle spare comes up as slot 1 with the slot's host
#     name, address and the marker its disk holds; time kill -> ready printed
#   9 pre-staged warm move: a new inactive environment gamma (image env-c, no disk, highest
#     priority): the engine pre-stages env-c on the nodes most likely to join it (the agent
#     downloads and kexec_file_loads it; the command line carries a hand-off credential,
#     no token); gamma is activated: the node that joins it only jumps (the kexec result
#     says the staged image was used), fetches its token with the credential (handoff
#     event), and gamma's slot is ready; decision -> agent ready and -> slot ready printed
# The agents talk to the server's agent API over TLS with its certificate pinned
# (bootsrv.tlspin on the kernel command line).
# Assertions read what a user sees: `slot list --json`, `node list/show --json`,
# `events`. Waits poll the CLI with a deadline. Prints `N passed, M failed, K skipped`.
# Needs root (a skip outside CI, a failure under CI).
# Usage: qemu-tests/test-engine.sh [--timeout S] [--fleet-only] [SCENARIO...]
#   SCENARIO: 1..9 (default all, in order; each builds on the state the previous left)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
timeout=120
fleet_only=0
scenarios=()
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout="$2"; shift 2 ;;
        --fleet-only) fleet_only=1; shift ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        [1-9]) scenarios+=("$1"); shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(1 2 3 4 5 6 7 8 9)

# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"
# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
# shellcheck source=lib/engine.sh
. "$here/lib/engine.sh"
t0_all=$SECONDS
if ! lab_require_root; then t_skip "test-engine.sh" "needs root (network namespaces, tap devices)"; t_summary; exit; fi
command -v jq >/dev/null || { t_skip "test-engine.sh" "jq missing (qemu-tests/install-deps.sh)"; t_summary; exit; }
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
[ -x "$server" ] || { t_fail "missing $server (cargo build --release -p boot-server)"; t_summary; exit 1; }
[ -f "$repo/images/build/lab/initrd.img" ] || { t_fail "missing lab image (images/build-lab-image.sh)"; t_summary; exit 1; }

lab_gc
if ! eng_fleet_up engine 4; then
    t_fail "fleet: 4 guests idle in the pool, images and disk base registered"
    eng_diag
    t_summary
    exit 1
fi
t_ok "fleet: 4 guests idle in the pool on the default image ($(eng_secs_since "$eng_t_fleet") s)"
# The agents got there over TLS: the plain listener refuses the agent API.
agent_plain_refused() {
    lab_exec curl -s -X POST -H 'x-node-token: x' "http://$LAB_BRIDGE_ADDR:8080/api/agent/hello" -d '{}' \
        | grep -q 'served over TLS at https://10.77.0.1:8443'
}
t_check "fleet: the agents talk TLS (pinned certificate); plain HTTP refuses the agent API" agent_plain_refused
if [ "$fleet_only" = 1 ]; then eng_fleet_down; t_summary; exit; fi
if ! eng_has_engine; then
    t_fail "the server has no engine (\`boot-server env\` missing): scenarios not run"
    t_summary; exit 1
fi
if ! eng_envs_create; then
    t_fail "environments alpha and beta created"
    eng_diag; t_summary; exit 1
fi
t_ok "environments alpha (1 node, disk $ENG_BASE) and beta (inactive) created"

# ---- 1: scale alpha from 1 to 3 -------------------------------------------------------
scenario_1() {
    local t; t="$(eng_now_ms)"
    # alpha starts with one node: wait for it.
    if ! eng_wait "alpha has 1 ready slot" "$timeout" eng_env_is alpha 1; then
        t_fail "1: alpha's first slot ready"; eng_diag; return
    fi
    local before; before="$(eng_env_nodes alpha)"
    eng_mark
    eng_cli env scale alpha 3 >/dev/null || { t_fail "1: env scale alpha 3 accepted"; return; }
    if eng_wait "alpha has 3 ready slots" "$timeout" eng_env_is alpha 3; then
        t_ok "1: alpha scaled 1 -> 3: three slots ready ($(eng_secs_since_ms "$t") s)"
    else
        t_fail "1: alpha scaled 1 -> 3: three slots ready"; eng_diag; return
    fi
    local after moved; after="$(eng_env_nodes alpha)"
    moved="$(comm -13 <(tr ' ' '\n' <<<"$before" | sort) <(tr ' ' '\n' <<<"$after" | sort) | grep -c . || true)"
    t_check "1: two nodes came from the pool ($before -> $after)" test "$moved" = 2
    t_check "1: each slot's node boots alpha's image with the slot's host name, address and disk" eng_slots_match alpha env-a 1
    t_check "1: the engine's decision is in the event log (engine-decision for alpha)" eng_wait "the event" 15 eng_event_since engine-decision '.detail.env == "alpha" or (.detail | tostring | test("\"alpha\""))'
    # Move a slot's node away (scale 3 -> 2) and back (2 -> 3): the slot's disk
    # keeps what its start hook wrote.
    local -A marks=()
    local i m
    for i in 0 1 2; do marks[$i]="$(eng_slot_health alpha "$i" marker)"; done
    echo "   markers: 0=${marks[0]} 1=${marks[1]} 2=${marks[2]}"
    eng_cli env scale alpha 2 >/dev/null || { t_fail "1: env scale alpha 2 accepted"; return; }
    if eng_wait "alpha has 2 ready slots, 2 nodes idle" "$timeout" eng_fleet_is alpha 2 idle 2; then
        t_ok "1: alpha scaled 3 -> 2: a node went back to the pool idle on the default image"
    else
        t_fail "1: alpha scaled 3 -> 2: a node went back to the pool idle on the default image"; eng_diag; return
    fi
    eng_cli env scale alpha 3 >/dev/null || { t_fail "1: env scale alpha 3 (again) accepted"; return; }
    if ! eng_wait "alpha has 3 ready slots" "$timeout" eng_env_is alpha 3; then
        t_fail "1: alpha back to 3"; eng_diag; return
    fi
    local bad=""
    for i in 0 1 2; do
        m="$(eng_slot_health alpha "$i" marker)"
        [ -n "${marks[$i]}" ] && [ "$m" = "${marks[$i]}" ] || bad="$bad slot$i:${marks[$i]}->$m"
    done
    t_check "1: every slot's disk kept its marker across the move away and back${bad:+ (differs:$bad)}" test -z "$bad"
    t_check "1: still each slot with its host name, address and disk" eng_slots_match alpha env-a 1
}

# ---- 2: beta preempts alpha, never below alpha's minimum -------------------------------------
scenario_2() {
    local t; t="$(eng_now_ms)"
    eng_cli env set alpha --min 2 >/dev/null || { t_fail "2: env set alpha --min 2"; return; }
    eng_cli env scale alpha 3 >/dev/null
    eng_wait "alpha has 3 ready slots" "$timeout" eng_env_is alpha 3 || { t_fail "2: alpha starts with 3 ready slots"; eng_diag; return; }
    # Loads: slot 1 is clearly the least loaded.
    local h0 h1 h2
    h0="$(eng_slot_field alpha 0 hostname)" h1="$(eng_slot_field alpha 1 hostname)" h2="$(eng_slot_field alpha 2 hostname)"
    eng_ctl "load/$h0" 0.9; eng_ctl "load/$h1" 0.1; eng_ctl "load/$h2" 0.8
    eng_wait "alpha's heartbeats show the loads" 30 eng_slot_health_is alpha 1 load 0.1 || { t_fail "2: alpha's health shows the load set for slot 1"; eng_diag; return; }
    # All three: a slot whose heartbeat still shows its old load could look least loaded.
    eng_wait "alpha's heartbeats show the loads" 30 eng_slot_health_is alpha 0 load 0.9 || true
    eng_wait "alpha's heartbeats show the loads" 30 eng_slot_health_is alpha 2 load 0.8 || true
    local victim; victim="$(eng_slot_field alpha 1 node)"
    eng_mark
    eng_cli env activate beta >/dev/null || { t_fail "2: env activate beta"; return; }
    if eng_wait "beta has 2 ready slots" "$timeout" eng_env_is beta 2; then
        t_ok "2: beta (priority 20) got its 2 nodes ($(eng_secs_since_ms "$t") s)"
    else
        t_fail "2: beta got its 2 nodes"; eng_diag; return
    fi
    t_check "2: alpha kept 2 ready slots (its minimum)" eng_env_is alpha 2
    t_check "2: the node taken from alpha was its least-loaded slot (slot 1, $victim)" \
        eng_is "$(eng_node_field "$victim" environment)" beta
    t_check "2: alpha's slot 1 is the one left without a node" eng_is "$(eng_slot_field alpha 1 node | sed "s/^$/null/")" null
    t_check "2: beta's slots boot beta's image with their host names and addresses" eng_slots_match beta env-b 0
    # beta asks for a third node: only alpha's slots are left, and alpha is at its minimum.
    eng_mark
    eng_cli env scale beta 3 >/dev/null || { t_fail "2: env scale beta 3 accepted"; return; }
    # The engine says why beta stays at 2; then 10 s more of reconciler rounds.
    t_check "2: the engine says beta is short (wants 3, holds 2)" \
        eng_wait "beta short" 30 eng_event_since engine-decision '.detail.action == "short" and .detail.env == "beta" and .detail.target == 3 and .detail.holding == 2'
    eng_hold 10 eng_env_at_least alpha 2
    t_check "2: beta asking for 3 never took alpha below its minimum of 2 (alpha: $(eng_env_ready alpha) ready, beta: $(eng_env_ready beta) ready)" \
        eng_fleet_is alpha 2 beta 2
    eng_cli env scale beta 2 >/dev/null || t_fail "2: env scale beta 2"
    eng_ctl_rm "load/$h0" "load/$h1" "load/$h2"
    # beta leaves: its nodes return to the pool and alpha gets its third slot back.
    eng_cli env deactivate beta >/dev/null || { t_fail "2: env deactivate beta"; return; }
    if eng_wait "beta empty, alpha 3 ready, 1 idle" "$timeout" eng_fleet_is alpha 3 idle 1 beta 0; then
        t_ok "2: beta deactivated: its nodes went back to the pool, alpha got its slot back"
    else
        t_fail "2: beta deactivated: its nodes went back to the pool, alpha got its slot back"; eng_diag
    fi
}

# ---- 3: busy nodes are not removed until idle --------------------------------------
scenario_3() {
    local t; t="$(eng_now_ms)"
    eng_cli env scale alpha 3 >/dev/null
    eng_wait "alpha has 3 ready slots" "$timeout" eng_env_is alpha 3 || { t_fail "3: alpha starts with 3 ready slots"; eng_diag; return; }
    local nodes n; nodes="$(eng_env_nodes alpha)"
    eng_ctl busy/alpha 1
    for n in $nodes; do
        eng_wait "$n reports busy" 30 eng_node_busy_is "$n" true || { t_fail "3: $n's heartbeat says busy"; eng_diag; return; }
    done
    t_ok "3: alpha's three nodes report busy in their heartbeats"
    eng_mark
    eng_cli env scale alpha 2 >/dev/null || { t_fail "3: env scale alpha 2 accepted"; return; }
    # Several heartbeats (2 s) and reconciler rounds: nothing may move.
    if eng_hold 12 eng_env_nodes_are alpha "$nodes"; then
        t_ok "3: scaling alpha to 2 removes none of its busy nodes (12 s, $(echo "$nodes" | wc -w) nodes still ready)"
    else
        t_fail "3: scaling alpha to 2 removes none of its busy nodes"; eng_diag
    fi
    eng_ctl busy/alpha 0
    if eng_wait "alpha has 2 ready slots, 2 idle" "$timeout" eng_fleet_is alpha 2 idle 2; then
        t_ok "3: once idle, one node leaves alpha for the pool ($(eng_secs_since_ms "$t") s)"
    else
        t_fail "3: once idle, one node leaves alpha for the pool"; eng_diag
    fi
}

# ---- 4: load policy adds and removes nodes -----------------------------------------
scenario_4() {
    local t; t="$(eng_now_ms)"
    eng_ctl busy/alpha 0
    eng_cli env scale alpha 2 >/dev/null
    eng_wait "alpha has 2 ready slots" "$timeout" eng_env_is alpha 2 || { t_fail "4: alpha starts with 2 ready slots"; eng_diag; return; }
    eng_ctl load/alpha 0.5
    eng_cli policy set alpha --add-above 0.8 --remove-below 0.2 --window 4 >/dev/null || { t_fail "4: policy set alpha"; return; }
    eng_mark
    eng_ctl load/alpha 0.95
    if eng_wait "alpha has 3 ready slots" "$timeout" eng_env_is alpha 3; then
        t_ok "4: load 0.95 above 0.8 for the window added a node to alpha ($(eng_secs_since_ms "$t") s)"
    else
        t_fail "4: load above the threshold added a node"; eng_diag; return
    fi
    t_check "4: a load-threshold alert or an engine decision names the load" \
        eng_event_since '' '(.kind == "alert" and .detail.alert == "load-threshold") or (.kind == "engine-decision" and (.detail | tostring | test("load")))'
    local t2; t2="$(eng_now_ms)"
    eng_mark
    eng_ctl load/alpha 0.05
    if eng_wait "alpha has 2 ready slots" "$timeout" eng_fleet_is alpha 2 idle 2; then
        t_ok "4: load 0.05 below 0.2 for the window removed a node from alpha ($(eng_secs_since_ms "$t2") s)"
    else
        t_fail "4: load below the threshold removed a node"; eng_diag
    fi
    eng_cli policy clear alpha >/dev/null || t_fail "4: policy clear alpha"
    eng_ctl_rm load/alpha
}

# ---- 5: a schedule starts and stops beta ------------------------------------------------
scenario_5() {
    local t; t="$(eng_now_ms)"
    eng_cli env deactivate beta >/dev/null
    eng_wait "beta empty" "$timeout" eng_env_is beta 0 || true
    local at; at="$(eng_cron_in 4)"
    eng_mark
    eng_cli env set beta --schedule "$at=>activate" >/dev/null || { t_fail "5: env set beta --schedule '$at=>activate'"; return; }
    if eng_wait "beta active with 2 ready slots" "$timeout" eng_env_is beta 2; then
        t_ok "5: the schedule '$at' activated beta: 2 slots ready ($(eng_secs_since_ms "$t") s)"
    else
        t_fail "5: the schedule '$at' activated beta"; eng_diag; return
    fi
    t_check "5: an env-started alert for beta" eng_wait "the event" 15 eng_event_since alert '.detail.alert == "env-started"'
    local t2; t2="$(eng_now_ms)"
    at="$(eng_cron_in 3)"
    eng_mark
    eng_cli env set beta --schedule "$at=>deactivate" >/dev/null || { t_fail "5: env set beta --schedule '$at=>deactivate'"; return; }
    if eng_wait "beta stopped, its nodes idle" "$timeout" eng_fleet_is beta 0 idle 2; then
        t_ok "5: the schedule '$at' deactivated beta: its nodes are back in the pool ($(eng_secs_since_ms "$t2") s)"
    else
        t_fail "5: the schedule '$at' deactivated beta"; eng_diag; return
    fi
    t_check "5: an env-stopped alert for beta" eng_wait "the event" 15 eng_event_since alert '.detail.alert == "env-stopped"'
    t_check "5: beta is inactive" eng_is "$(eng_cli env show beta --json | jq -r .active)" false
}

# ---- 6: kill -9 during an allocation -------------------------------------------------
scenario_6() {
    local t; t="$(eng_now_ms)"
    eng_cli env scale alpha 2 >/dev/null
    eng_wait "alpha has 2 ready slots, 2 idle" "$timeout" eng_fleet_is alpha 2 idle 2 || { t_fail "6: alpha starts with 2 ready slots"; eng_diag; return; }
    eng_mark
    eng_cli env scale alpha 3 >/dev/null || { t_fail "6: env scale alpha 3 accepted"; return; }
    # Kill the server once the new slot is on its way (a slot-step out of pending).
    if ! eng_wait "a slot of alpha moving" 60 eng_event_since slot-step '.detail.env == "alpha" and (.detail.to == "pointing" or .detail.to == "booting" or .detail.to == "stopping")'; then
        t_fail "6: a slot-step event for alpha's new slot"; eng_diag; return
    fi
    local step; step="$(eng_cli slot list alpha --json | jq -c '[.[] | {index, node, step}]')"
    eng_server_kill9
    echo "   killed the server (-9) with alpha's slots at $step"
    eng_server_start || { t_fail "6: the server restarts on its state"; eng_diag; return; }
    t_ok "6: the server restarted after kill -9 mid-allocation"
    if eng_wait "alpha has 3 ready slots, 1 idle, all settled" "$timeout" eng_fleet_is alpha 3 idle 1; then
        t_ok "6: the engine converged after the restart: alpha 3 ready, 1 idle ($(eng_secs_since_ms "$t") s)"
    else
        t_fail "6: the engine converged after the restart"; eng_diag
    fi
    t_check "6: no slot held by two nodes, no node half-assigned (slot list vs node list)" eng_consistent
    t_check "6: no slot left in a transient step" eng_is "$(eng_slots | jq '[.[] | select(.step != "ready" and .step != "vacant")] | length')" 0
}

# ---- 7: quarantine --------------------------------------------------------------------
scenario_7() {
    local t; t="$(eng_now_ms)"
    eng_wait "alpha has a ready slot" "$timeout" eng_env_at_least alpha 1 || { t_fail "7: alpha has a ready slot"; eng_diag; return; }
    local n; n="$(eng_slots alpha | jq -r '[.[] | select(.node != null and .step == "ready")] | max_by(.index) | .node')"
    eng_mark
    eng_cli env quarantine alpha "$n" >/dev/null || { t_fail "7: env quarantine alpha $n"; return; }
    if eng_wait "$n quarantined and out of alpha" 60 eng_node_quarantined "$n"; then
        t_ok "7: $n is quarantined and holds no slot of alpha ($(eng_secs_since_ms "$t") s)"
    else
        t_fail "7: $n is quarantined and holds no slot of alpha"; eng_diag; return
    fi
    local hb1; hb1="$(eng_node_field "$n" last_heartbeat_ms)"
    if eng_wait "$n heart-beats" 20 eng_node_hb_after "$n" "$hb1"; then
        t_ok "7: the quarantined node stays up (heartbeats go on)"
    else
        t_fail "7: the quarantined node stays up (heartbeats go on)"; eng_diag
    fi
    t_check "7: an alert event says node-quarantined" eng_wait "the event" 15 eng_event_since alert '.detail.alert == "node-quarantined"'
    t_check "7: no slot holds the quarantined node" eng_is "$(eng_slots | jq --arg n "$n" '[.[] | select(.node == $n)] | length')" 0
    t_check "7: slots and nodes stay consistent" eng_consistent
}

# ---- 8: failover to a spare ------------------------------------------------------------
scenario_8() {
    local n
    # The spare: a node idle on the pool image (what scenario 7 quarantined stays
    # quarantined: released, it would still run alpha's image from a cut disk).
    eng_cli env deactivate beta >/dev/null 2>&1 || true
    eng_cli env set alpha --min 1 >/dev/null; eng_cli env scale alpha 2 >/dev/null
    if ! eng_wait "alpha has 2 ready slots and a node idle" "$timeout" eng_env_and_idle alpha 2 1; then
        t_fail "8: alpha holds 2 ready slots with a spare idle"; eng_diag; return
    fi
    # The slot whose node dies: the highest one that holds a ready node.
    local k
    k="$(eng_slots alpha | jq -r '[.[] | select(.node != null and .step == "ready")] | max_by(.index) | .index')"
    n="$(eng_slot_field alpha "$k" node)"
    local host ip marker g=""
    host="$(eng_slot_field alpha "$k" hostname)" ip="$(eng_slot_field alpha "$k" ip)"
    marker="$(eng_slot_health alpha "$k" marker)"
    for i in "${!ENG_MACS[@]}"; do
        [ "$(eng_node_id "${ENG_MACS[$i]}")" = "$n" ] && g="${ENG_GUESTS[$i]}"
    done
    [ -n "$g" ] || { t_fail "8: the guest of $n is known"; return; }
    eng_mark
    local t; t="$(eng_now_ms)"
    kill -9 "${LAB_GUEST_PID[$g]}"
    if eng_wait "alpha slot $k ready on another node" "$timeout" eng_slot_moved alpha "$k" "$n"; then
        t_ok "8: $g ($n) killed: slot $k ready on $(eng_slot_field alpha "$k" node) $(eng_secs_since_ms "$t") s after the kill"
    else
        t_fail "8: slot $k ready on a spare after $g was killed"; eng_diag; return
    fi
    t_check "8: the slot kept its host name and address ($host, $ip)" \
        test "$(eng_slot_field alpha "$k" hostname) $(eng_slot_field alpha "$k" ip)" = "$host $ip"
    t_check "8: the spare runs from slot $k's disk: the marker slot $k wrote ($marker)" \
        eng_wait "the marker" 30 eng_slot_health_is alpha "$k" marker "$marker"
    t_check "8: the dead node was fenced, proven by its power state (fenced: off via qmp)" \
        eng_wait "the event" 15 eng_event_since fenced ".node == \"$n\" and .detail.fence.proven == true and .detail.fence.export_revoked == true"
    t_check "8: failover-started and failover-finished alerts" \
        eng_wait "the event" 15 eng_event_since alert '.detail.alert == "failover-finished"'
    t_check "8: slots and nodes stay consistent" eng_consistent
}

# ---- 9: pre-staged warm move ------------------------------------------------------------
# Nodes (ids) whose latest prestage of env-c since the mark succeeded.
eng_staged_nodes() {
    eng_events_after "$ENG_EV_MARK" | jq -r -s '
        (map(select(.kind == "command-queued" and .detail.command.kind == "prestage")) | map({key: (.detail.id | tostring), value: .node}) | from_entries) as $q
        | map(select(.kind == "command-result" and .detail.status == "succeeded" and $q[.detail.id | tostring] != null and (.detail.detail | startswith("staged image"))) | $q[.detail.id | tostring])
        | unique | join(" ")'
}
# Prestage commands of env-c queued since the mark and not finished yet.
eng_stages_open() {
    eng_events_after "$ENG_EV_MARK" | jq -r -s '
        (map(select(.kind == "command-queued" and .detail.command.kind == "prestage" and (.detail.command.cmdline | test("bootsrv.image=env-c ")))) | map(.detail.id)) as $q
        | (map(select(.kind == "command-result" and .detail.status != "started") | .detail.id)) as $done
        | [$q[] | select(. as $i | $done | index($i) | not)] | length'
}
# At least $1 nodes staged env-c, and no stage of it still under way.
eng_staged_at_least() { [ "$(wc -w <<<"$(eng_staged_nodes)")" -ge "$1" ] && [ "$(eng_stages_open)" = 0 ]; }
scenario_9() {
    local mf="$LAB_DIR/env-c.toml" g="$ENG_HOOKS/beta"
    sed -e 's/^name = "lab"/name = "env-c"/' "$repo/images/lab/image.toml" > "$mf"
    eng_cli image add --server-path "$mf" >/dev/null || { t_fail "9: image env-c added"; return; }
    eng_mark
    # Who can join gamma: idle nodes, else alpha's (preemptible, lower priority).
    local want=1
    [ "$(eng_idle_count)" -ge 1 ] || want="$(eng_env_ready alpha)"
    eng_cli env create gamma --image env-c --description "engine lab gamma (pre-staged)" --min 0 --nodes 1 --max 1         --priority 30 --hostname-pattern 'gamma-{slot}' --addresses 10.77.0.240-10.77.0.249 --inactive         --hook "start=$g/start" --hook "health=$g/health" --hook "busy=$g/busy" >/dev/null         || { t_fail "9: env create gamma"; return; }
    if eng_wait "env-c staged on $want node(s)" 90 eng_staged_at_least "$want"; then
        t_ok "9: the engine pre-staged env-c on $(eng_staged_nodes) (download + kexec_file_load ahead, no token on its command line)"
    else
        t_fail "9: the engine pre-staged env-c on $want node(s)"; eng_diag; return
    fi
    local staged; staged="$(eng_staged_nodes)"
    t_check "9: no token in a prestage command (hand-off credential only, fingerprinted in the log)" \
        eng_is "$(eng_events_after "$ENG_EV_MARK" | jq -s '[.[] | select(.kind == "command-queued" and .detail.command.kind == "prestage") | .detail.command.cmdline | select(test("bootsrv.token=") or (test("bootsrv.handoff=<[0-9a-f]{8}>") | not))] | length')" 0
    eng_mark
    local t; t="$(eng_now_ms)"
    eng_cli env activate gamma >/dev/null || { t_fail "9: env activate gamma"; return; }
    if eng_wait "gamma has 1 ready slot" "$timeout" eng_env_is gamma 1; then
        t_ok "9: gamma activated: slot ready ($(eng_secs_since_ms "$t") s)"
    else
        t_fail "9: gamma activated: slot ready"; eng_diag; return
    fi
    local n; n="$(eng_slot_field gamma 0 node)"
    t_check "9: gamma's node ($n) is one the engine pre-staged ($staged)" grep -qw -- "$n" <<<"$staged"
    if eng_event_since kexec-planned ".node == \"$n\" and .detail.image == \"env-c\" and .detail.staged != null"; then
        t_ok "9: the kexec was planned on the staged image"
    else
        t_fail "9: the kexec was planned on the staged image"
        eng_events_after "$ENG_EV_MARK" | jq -c --arg n "$n" 'select(.node == $n and (.kind == "kexec-planned" or .kind == "command-queued" or .kind == "command-result"))' | head -n 8
    fi
    t_check "9: the agent used the staged image (kexec result: staged image ... used, nothing loaded)" \
        eng_event_since command-result ".node == \"$n\" and .detail.status == \"succeeded\" and (.detail.detail | test(\"^staged image s[0-9a-f]+ used\"))"
    t_check "9: the new boot fetched its token with the hand-off credential (handoff event)" \
        eng_event_since handoff ".node == \"$n\""
    # decision (the engine's claim) -> the agent's hello on env-c, and -> slot ready.
    local times
    times="$(eng_events_after "$ENG_EV_MARK" | jq -r -s --arg n "$n" '
        (map(select(.kind == "engine-decision" and .detail.env == "gamma" and (.detail.action == "claim" or .detail.action == "preempt") and ((.detail.nodes // []) | index($n)) != null)) | first | .at_ms) as $d
        | (map(select(.kind == "agent-ready" and .node == $n and .detail.image == "env-c")) | first | .at_ms) as $a
        | (map(select(.kind == "slot-step" and .detail.env == "gamma" and .detail.to == "ready")) | first | .at_ms) as $r
        | "\(($a - $d) / 1000) \(($r - $d) / 1000)"')"
    read -r d_agent d_ready <<<"$times"
    echo "   PRESTAGED_MOVE decision -> agent ready ${d_agent} s, -> slot ready ${d_ready} s"
    t_check "9: decision -> agent ready measured (${d_agent} s)" test -n "$d_agent" -a "$d_agent" != null
    t_check "9: slots and nodes stay consistent" eng_consistent
}

for s in "${scenarios[@]}"; do
    echo "== scenario $s"
    s0=$SECONDS
    "scenario_$s"
    echo "== scenario $s: $((SECONDS - s0)) s"
done
eng_fleet_down
left="$(ip netns list | grep -c "^bootlab-$$-" || true)"
t_check "no lab namespace left behind" test "$left" = 0
echo "test-engine: $((SECONDS - t0_all)) s"
t_summary
