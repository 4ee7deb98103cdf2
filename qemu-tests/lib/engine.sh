# shellcheck shell=bash
# qemu-tests/lib/engine.sh: the engine lab fleet and what the engine tests and
# benchmarks read through the CLI (source it after lib/lab.sh; needs jq).
#
# Owns: one lab namespace with boot-server (full DHCP, NBD), a control web server
# (busybox httpd on 10.77.0.1:8097 serving $ENG_CTL) the environment hooks ask for
# their load and busy answers, N BIOS TCG guests (MACs 52:54:00:e0:00:01..) booted
# into the default image and idle in the pool, the images env-a/env-b (the lab files
# under other names), the disk base `engbase` (the lab root file system), the hook
# scripts, and the environments alpha and beta of the engine test.
#
# API:
#   eng_fleet_up NAME N         lab + server + images + base + N guests idle
#   eng_has_engine              the server's CLI has `env`
#   eng_envs_create             alpha (1 node, disk, hooks, preemptible) and beta (inactive)
#   eng_cli ARGS...             boot-server CLI against the lab server
#   eng_wait DESC SECS CMD...   poll CMD (0.5 s) until it succeeds; 1 on deadline
#   eng_hold SECS CMD...        CMD stays true for SECS (polled); 1 as soon as it fails
#   eng_mark                    remember the newest event id (eng_event_since reads after)
#   eng_event_since KIND FILTER an event of KIND ("" = any) after the mark matches jq FILTER
#   eng_env_is ENV N            exactly N slots of ENV hold a node, all `ready`
#   eng_fleet_is ENV N|idle N.. several of those at once (idle: nodes idle, no env)
#   eng_slots_match ENV IMAGE DISK  each held slot: node's env/slot/booted image,
#                               heartbeat host/ip equal the slot's (DISK=1: a marker)
#   eng_consistent              no slot held twice, every assignment both ways
#   eng_server_kill9 / eng_server_start   crash and restart on the same state
#   eng_ctl PATH VALUE / eng_ctl_rm PATH...   control files the hooks read
#   eng_diag                    slots, nodes, recent events, consoles, server log
ENG_MAC_PREFIX="52:54:00:e0:00"
ENG_CTL_PORT=8097
ENG_BASE=engbase
ENG_EV_MARK=0
ENG_SERVER_LOG=""
ENG_RESTARTS=0
ENG_MACS=() ENG_GUESTS=()
eng_t_fleet=""

eng_cli() { "$server" --config "$ENG_CONFIG" "$@"; }
eng_now_ms() { date +%s%3N; }
eng_secs_since_ms() { awk -v a="$1" -v b="$(eng_now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }
eng_secs_since() { awk -v a="$1" -v b="$(lab_now)" 'BEGIN { printf "%.1f", b - a }'; }
eng_node_id() { echo "node-${1//:/}"; }

eng_wait() {
    local desc="$1" secs="$2" t0=$SECONDS
    shift 2
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        if [ $((SECONDS - t0)) -ge "$secs" ]; then
            lab_log "timeout (${secs}s) waiting for: $desc"
            return 1
        fi
        sleep 0.5
    done
}

eng_hold() {
    local secs="$1" t0=$SECONDS
    shift
    while [ $((SECONDS - t0)) -lt "$secs" ]; do
        "$@" >/dev/null 2>&1 || { lab_log "no longer true after $((SECONDS - t0)) s: $*"; return 1; }
        sleep 1
    done
    return 0
}

# ---- control files (what the hooks report) ----------------------------------------
eng_ctl() { mkdir -p "$(dirname "$ENG_CTL/$1")"; printf '%s\n' "$2" > "$ENG_CTL/$1.tmp" && mv -f "$ENG_CTL/$1.tmp" "$ENG_CTL/$1"; }
eng_ctl_rm() { local p; for p in "$@"; do rm -f "$ENG_CTL/$p"; done; }

# ---- events -----------------------------------------------------------------------
eng_events_after() { eng_cli events --after "$1" --limit 100000; }
eng_mark() {
    local last
    last="$(eng_events_after "$ENG_EV_MARK" | tail -n 1 | jq -r '.id // empty' 2>/dev/null)"
    [ -n "$last" ] && ENG_EV_MARK="$last"
    return 0
}
eng_event_since() {
    local kind="$1" filter="$2"
    eng_events_after "$ENG_EV_MARK" | jq -e -s --arg k "$kind" \
        "[.[] | select(\$k == \"\" or .kind == \$k) | select($filter)] | length > 0" >/dev/null
}

# ---- slots and nodes --------------------------------------------------------------
eng_slots() { eng_cli slot list "$@" --json; }
eng_nodes() { eng_cli node list --json; }
eng_slot_field() { eng_slots "$1" | jq -r --argjson i "$2" ".[] | select(.index == \$i) | .$3"; }
eng_node_field() { eng_cli node show "$1" --json | jq -r ".$2"; }
eng_env_ready() { eng_slots "$1" | jq '[.[] | select(.node != null and .step == "ready")] | length'; }
eng_env_is() {
    eng_slots "$1" | jq -e --argjson n "$2" \
        '([.[] | select(.node != null and .step == "ready")] | length) == $n
         and ([.[] | select(.node != null)] | length) == $n' >/dev/null
}
eng_env_at_least() { [ "$(eng_env_ready "$1")" -ge "$2" ]; }
eng_env_nodes() { eng_slots "$1" | jq -r '[.[] | select(.node != null and .step == "ready") | .node] | sort | join(" ")'; }
eng_env_nodes_are() { [ "$(eng_env_nodes "$1")" = "$(tr ' ' '\n' <<<"$2" | sort | grep . | paste -sd' ')" ]; }
eng_idle_count() {
    eng_nodes | jq '[.[] | select(.state == "idle" and (.environment == null))] | length'
}
# eng_env_and_idle ENV N IDLE: ENV holds exactly N ready slots and at least IDLE nodes are idle.
eng_env_and_idle() { eng_env_is "$1" "$2" && [ "$(eng_idle_count)" -ge "$3" ]; }
# eng_slot_moved ENV I OLD: slot I is ready on a node other than OLD.
eng_slot_moved() {
    eng_slots "$1" | jq -e --argjson i "$2" --arg old "$3" \
        '.[] | select(.index == $i) | .step == "ready" and .node != null and .node != $old' >/dev/null
}
eng_fleet_is() {
    while [ $# -ge 2 ]; do
        if [ "$1" = idle ]; then
            [ "$(eng_idle_count)" = "$2" ] || return 1
        else
            eng_env_is "$1" "$2" || return 1
        fi
        shift 2
    done
}
eng_node_health() { eng_cli node show "$1" --json | jq -r ".heartbeat.health.$2 // empty"; }
eng_slot_health() {
    local n; n="$(eng_slot_field "$1" "$2" node)"
    [ -n "$n" ] && [ "$n" != null ] || return 1
    eng_node_health "$n" "$3"
}
eng_slot_health_is() { [ "$(eng_slot_health "$1" "$2" "$3")" = "$4" ]; }
eng_node_busy_is() { [ "$(eng_cli node show "$1" --json | jq -r '.heartbeat.busy')" = "$2" ]; }
eng_node_hb_after() { [ "$(eng_node_field "$1" last_heartbeat_ms)" -gt "$2" ] 2>/dev/null; }
eng_node_quarantined() {
    local n="$1"
    eng_cli node show "$n" --json | jq -e '.state == "quarantined" and .environment == null' >/dev/null || return 1
    [ "$(eng_slots | jq --arg n "$n" '[.[] | select(.node == $n)] | length')" = 0 ]
}

# Every held slot of ENV: the node says it is in ENV at that slot, booted IMAGE, and its
# health hook reports the slot's host name and address (and, DISK=1, a disk marker).
eng_slots_match() {
    local env="$1" image="$2" disk="$3" s n bad=0 nj want
    s="$(eng_slots "$env")"
    while read -r sl; do
        n="$(jq -r .node <<<"$sl")"
        nj="$(eng_cli node show "$n" --json)"
        want="$(jq -c '{index, hostname, ip, overlay}' <<<"$sl")"
        local got
        got="$(jq -c --arg img "$image" '{environment, slot, booted_image, host: .heartbeat.health.host, ip: .heartbeat.health.ip, marker: .heartbeat.health.marker}' <<<"$nj")"
        if ! jq -e -n --argjson s "$sl" --argjson n "$nj" --arg env "$env" --arg img "$image" --argjson disk "$disk" '
            $n.environment == $env and $n.slot == $s.index and $n.booted_image == $img
            and $n.heartbeat.health.host == $s.hostname
            and ($s.ip == null or $n.heartbeat.health.ip == $s.ip)
            and ($disk == 0 or (($n.heartbeat.health.marker // "") != "" and $s.overlay != null))' >/dev/null; then
            echo "   slot $want: node $n has $got" >&2
            bad=1
        fi
    done < <(jq -c '.[] | select(.node != null)' <<<"$s")
    [ "$bad" = 0 ]
}

# No slot held by two nodes; a node with an environment is held by exactly that slot;
# a held slot's node says so.
eng_consistent() {
    local s n out
    s="$(eng_slots)" n="$(eng_nodes)"
    out="$(jq -n -r --argjson s "$s" --argjson n "$n" '
        ([$s[] | select(.node != null) | .node] | group_by(.) | map(select(length > 1) | "node \(.[0]) holds \(length) slots")[]),
        ($n[] | select(.environment != null) | . as $x
            | [$s[] | select(.node == $x.id)] as $held
            | if ($held | length) != 1 or $held[0].environment != $x.environment or $held[0].index != $x.slot
              then "node \($x.id) says \($x.environment)/\($x.slot) but slots holding it: \($held | map("\(.environment)/\(.index)"))" else empty end),
        ($s[] | select(.node != null) | . as $y
            | [$n[] | select(.id == $y.node)][0] as $x
            | if $x == null or $x.environment != $y.environment or $x.slot != $y.index
              then "slot \($y.environment)/\($y.index) holds \($y.node), which says \($x.environment // "none")/\($x.slot // "none")" else empty end)')"
    [ -z "$out" ] && return 0
    echo "$out" | sed 's/^/   /' >&2
    return 1
}

# ---- server -------------------------------------------------------------------------
eng_server_kill9() {
    kill -9 "${LAB_PID[$ENG_SERVER_NAME]}" 2>/dev/null
    wait "${LAB_PID[$ENG_SERVER_NAME]}" 2>/dev/null || true
}
eng_server_start() {
    local i
    ENG_RESTARTS=$((ENG_RESTARTS + 1))
    ENG_SERVER_NAME="server-r$ENG_RESTARTS"
    ENG_SERVER_LOG="$LAB_DIR/$ENG_SERVER_NAME.log"
    lab_spawn "$ENG_SERVER_NAME" "$server" --config "$ENG_CONFIG" serve
    for i in $(seq 300); do
        lab_exec curl -sf -o /dev/null "http://$LAB_BRIDGE_ADDR:8080/healthz" && return 0
        kill -0 "${LAB_PID[$ENG_SERVER_NAME]}" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 30 "$ENG_SERVER_LOG" >&2
    return 1
}

# ---- hooks --------------------------------------------------------------------------
# The hooks' shared part: the host name, the first IPv4 address, the control server.
eng__hook_head() {
    cat <<EOF
#!/bin/sh
ctl=http://$LAB_BRIDGE_ADDR:$ENG_CTL_PORT
env=$1
h=\${SLOT_HOSTNAME:-\$(hostname)}
# (busybox 1.35 wget -T segfaults: timeout instead)
get() { timeout 3 wget -q -O - "\$ctl/\$1" 2>/dev/null; }
EOF
}
eng__write_hooks() {
    local env="$1" dir="$ENG_HOOKS/$1"
    mkdir -p "$dir"
    { eng__hook_head "$env"; cat <<'EOF'
# First run on this slot's disk: leave a marker there (it must survive moves).
m=/var/lib/env-marker
if [ ! -s "$m" ]; then
    mkdir -p /var/lib
    echo "$h-$(cat /proc/sys/kernel/random/uuid 2>/dev/null || echo $$$RANDOM)" > "$m" && sync
fi
exit 0
EOF
    } > "$dir/start"
    { eng__hook_head "$env"; cat <<'EOF'
ip=$(ip -4 addr show | awk '/inet / && $2 !~ /^127\./ { split($2, a, "/"); print a[1]; exit }')
l=$(get "load/$h") || l=$(get "load/$env") || l=0
echo "host=$(hostname)"
echo "ip=$ip"
echo "marker=$(cat /var/lib/env-marker 2>/dev/null || echo none)"
echo "load=${l:-0}"
exit 0
EOF
    } > "$dir/health"
    { eng__hook_head "$env"; cat <<'EOF'
[ "$(get "busy/$h")" = 1 ] && exit 0
[ "$(get "busy/$env")" = 1 ] && exit 0
exit 1
EOF
    } > "$dir/busy"
}

# ---- fleet --------------------------------------------------------------------------
eng_fleet_up() {
    local name="$1" n="$2" i m mf img
    eng_t_fleet="$(lab_now)"
    lab_create "$name" || return 1
    ENG_CTL="$LAB_DIR/ctl" ENG_HOOKS="$LAB_DIR/hooks"
    mkdir -p "$ENG_CTL/load" "$ENG_CTL/busy"
    lab_spawn ctl busybox httpd -f -p "$LAB_BRIDGE_ADDR:$ENG_CTL_PORT" -h "$ENG_CTL" || return 1
    # The agents talk TLS to the server (ENG_AGENT_TLS=0: plain HTTP).
    local tls=()
    [ "${ENG_AGENT_TLS:-1}" = 0 ] || tls=(-e '/^\[agent\]/a tls_listen = "0.0.0.0:8443"')
    lab_start_boot_server "$server" "$LAB_DIR/state" "${tls[@]}" || return 1
    ENG_CONFIG="$LAB_SERVER_CONFIG" ENG_SERVER_NAME=server ENG_SERVER_LOG="$LAB_DIR/server.log"
    for img in env-a env-b; do
        mf="$LAB_DIR/$img.toml"
        sed -e "s/^name = \"lab\"/name = \"$img\"/" "$repo/images/lab/image.toml" > "$mf"
        eng_cli image add --server-path "$mf" >/dev/null || { lab_log "image add $img failed"; return 1; }
    done
    eng_cli disk add-base "$ENG_BASE" "$repo/images/build/lab/rootfs.raw" >/dev/null \
        || { lab_log "disk add-base $ENG_BASE failed"; return 1; }
    eng__write_hooks alpha
    eng__write_hooks beta
    ENG_MACS=() ENG_GUESTS=()
    for i in $(seq "$n"); do
        m="$(printf '%s:%02x' "$ENG_MAC_PREFIX" "$i")"
        ENG_MACS+=("$m") ENG_GUESTS+=("e$i")
        # Each guest's QEMU monitor is its "BMC" (power control over QMP).
        eng_cli node add --mac "$m" --power "qmp://$LAB_DIR/e$i.qmp" >/dev/null \
            || { lab_log "node add $m failed"; return 1; }
        lab_start_guest --name "e$i" --firmware bios --nic virtio-net-pci --mac "$m" --mem 384 --reboot \
            --extra "-qmp unix:$LAB_DIR/e$i.qmp,server=on,wait=off"
    done
    for i in $(seq "$n"); do
        m="${ENG_MACS[$((i - 1))]}"
        eng_wait "e$i idle on lab" 300 eng__node_idle_on "$(eng_node_id "$m")" lab || return 1
    done
    lab_log "fleet of $n idle after $(eng_secs_since "$eng_t_fleet") s"
}
eng__node_idle_on() {
    eng_cli node show "$1" --json | jq -e --arg img "$2" \
        '.state == "idle" and .booted_image == $img and .heartbeat != null' >/dev/null
}
eng_fleet_down() { lab_cleanup; }

eng_has_engine() { eng_cli env list --json >/dev/null 2>&1; }

eng_envs_create() {
    local a="$ENG_HOOKS/alpha" b="$ENG_HOOKS/beta"
    eng_cli env create alpha --image env-a --description "engine lab alpha" --min 1 --nodes 1 --max 3 \
        --priority 10 --preemptible --disk-base "$ENG_BASE" --hostname-pattern 'alpha-{slot}' \
        --addresses 10.77.0.210-10.77.0.219 --config role=a \
        --hook "start=$a/start" --hook "health=$a/health" --hook "busy=$a/busy" || return 1
    eng_cli env create beta --image env-b --description "engine lab beta" --min 1 --nodes 2 --max 3 \
        --priority 20 --hostname-pattern 'beta-{slot}' --addresses 10.77.0.230-10.77.0.239 \
        --config role=b --inactive \
        --hook "start=$b/start" --hook "health=$b/health" --hook "busy=$b/busy" || return 1
}

# A cron expression (seconds first, 6 fields, UTC) firing SECS seconds from now.
eng_cron_in() { date -u -d "@$(( $(date +%s) + $1 ))" '+%-S %-M %-H %-d %-m *'; }

eng_diag() {
    echo "--- slot list:"; eng_cli slot list 2>&1 | tail -n 20
    echo "--- nodes:"
    eng_nodes 2>/dev/null | jq -r '.[] | "\(.id) \(.state) env=\(.environment // "-")/\(.slot // "-") image=\(.booted_image) hb=\(.last_heartbeat_ms) health=\(.heartbeat.health // {} | tojson) busy=\(.heartbeat.busy)"' 2>&1
    echo "--- engine events since the mark:"
    eng_events_after "$ENG_EV_MARK" 2>/dev/null | jq -c 'select(.kind == "engine-decision" or .kind == "slot-step" or .kind == "alert" or .kind == "command")' 2>/dev/null | tail -n 25
    local g
    for g in "${ENG_GUESTS[@]}"; do
        echo "--- console of $g:"; tr -d '\r' < "${LAB_GUEST_LOG[$g]}" | tail -n 8
    done
    echo "--- server log ($ENG_SERVER_LOG):"; tail -n 30 "$ENG_SERVER_LOG"
}

# eng_is GOT WANT: equal, else says what it got.
eng_is() { [ "$1" = "$2" ] && return 0; echo "   got '$1', want '$2'" >&2; return 1; }
