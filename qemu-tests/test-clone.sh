#!/usr/bin/env bash
# qemu-tests/test-clone.sh: acceptance test of live cloning in the QEMU lab, on a fleet
# of 3 BIOS TCG guests (MACs 52:54:00:c1:00:01..03, the fleet of lib/engine.sh) and the
# environment `clonea` (2 nodes, max 4, slot disks: overlays of the lab root file
# system, addresses 10.77.0.240-247, host names clonea-N).
#
# Its start hook runs a small TCP service on port 8000 (busybox httpd with two CGI
# scripts: /cgi-bin/w?n=N appends N to /var/lib/clone-data on the slot's disk,
# /cgi-bin/r prints the file), and gives the disk a machine id and an SSH host key file
# when it has none. Its prepare-clone hook refuses ("draining: ...") while the lab's
# control file refuse/clonea holds 1; purge-sessions leaves /var/lib/purged.
# Checks:
#   - a refusing prepare-clone stops `env clone clonea 1 --into 3` with its reason, and
#     nothing is created (no slot 3, no disk clonea-slot3);
#   - `--force` clones slot 1 into slot 3 while a client loop keeps writing and reading
#     through slot 1's service: no request of the loop fails;
#   - slot 3 becomes ready on the idle node with its own host name, address and machine
#     id, a new SSH host key, purge-sessions run, and its data is slot 1's as of the
#     freeze (a prefix of slot 1's data holding every write acknowledged before the
#     clone was asked);
#   - `env remove-node clonea 3 --delete-disk` returns the node to the pool, the slot
#     and its disk go away.
# Prints the template's pause (agent-measured, freeze to thaw), the longest request of
# the client loop, and clone request -> slot 3 ready; `N passed, M failed, K skipped`
# and its elapsed time. Needs root (a skip outside CI, a failure under CI).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"
# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
# shellcheck source=lib/engine.sh
. "$here/lib/engine.sh"
ENG_MAC_PREFIX="52:54:00:c1:00"
t0_all=$SECONDS
done_() { echo "test-clone.sh: $((SECONDS - t0_all)) s"; t_summary; exit; }
if ! lab_require_root; then t_skip "test-clone.sh" "needs root (network namespaces, tap devices)"; done_; fi
command -v jq >/dev/null || { t_skip "test-clone.sh" "jq missing (qemu-tests/install-deps.sh)"; done_; }
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
[ -x "$server" ] || { t_fail "missing $server (cargo build --release -p boot-server)"; done_; }
[ -f "$repo/images/build/lab/initrd.img" ] || { t_fail "missing lab image (images/build-lab-image.sh)"; done_; }

lab_gc
if ! eng_fleet_up clone 3; then
    t_fail "fleet: 3 guests idle in the pool"
    eng_diag; done_
fi
t_ok "fleet: 3 guests idle in the pool ($(eng_secs_since "$eng_t_fleet") s)"

# ---- the environment's hooks --------------------------------------------------------
hd="$LAB_DIR/hooks/clonea"
mkdir -p "$hd"
{ eng__hook_head clonea; cat <<'EOF'
mkdir -p /srv/cgi-bin /var/lib
cat > /srv/cgi-bin/w <<'X'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
case "$QUERY_STRING" in n=*) echo "${QUERY_STRING#n=}" >> /var/lib/clone-data ;; esac
wc -l < /var/lib/clone-data 2>/dev/null || echo 0
X
cat > /srv/cgi-bin/r <<'X'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
cat /var/lib/clone-data 2>/dev/null
X
chmod 755 /srv/cgi-bin/w /srv/cgi-bin/r
# What an installed system has: a machine id and an SSH host key.
[ -s /etc/machine-id ] || tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id
mkdir -p /etc/ssh
[ -s /etc/ssh/ssh_host_ed25519_key ] || cat /proc/sys/kernel/random/uuid > /etc/ssh/ssh_host_ed25519_key
sync
busybox httpd -p 8000 -h /srv
exit 0
EOF
} > "$hd/start"
{ eng__hook_head clonea; cat <<'EOF'
ip=$(ip -4 addr show | awk '/inet / && $2 !~ /^127\./ { split($2, a, "/"); print a[1]; exit }')
echo "host=$(hostname)"
echo "ip=$ip"
echo "machine=$(cat /etc/machine-id 2>/dev/null)"
echo "sshkey=$(md5sum < /etc/ssh/ssh_host_ed25519_key 2>/dev/null | cut -c1-12)"
echo "purged=$(cat /var/lib/purged 2>/dev/null)"
echo "load=0"
exit 0
EOF
} > "$hd/health"
{ eng__hook_head clonea; cat <<'EOF'
if [ "$(get refuse/$env)" = 1 ]; then echo "draining: refused by the lab's control file"; exit 1; fi
echo "ready to be cloned"
exit 0
EOF
} > "$hd/prepare-clone"
printf '#!/bin/sh\necho resumed\nexit 0\n' > "$hd/clone-done"
printf '#!/bin/sh\necho "$SLOT_HOSTNAME" > /var/lib/purged && sync\nexit 0\n' > "$hd/purge-sessions"

if ! eng_cli env create clonea --image env-a --description "clone lab" --min 1 --nodes 2 --max 4 \
    --disk-base "$ENG_BASE" --hostname-pattern 'clonea-{slot}' --addresses 10.77.0.240-10.77.0.247 \
    --hook "start=$hd/start" --hook "health=$hd/health" --hook "prepare-clone=$hd/prepare-clone" \
    --hook "clone-done=$hd/clone-done" --hook "purge-sessions=$hd/purge-sessions"; then
    t_fail "environment clonea created"; eng_diag; done_
fi
eng_mark
if ! eng_wait "clonea: 2 ready slots" 400 eng_env_is clonea 2; then
    t_fail "clonea: slots 0 and 1 ready"; eng_diag; done_
fi
t_ok "clonea: slots 0 and 1 ready"
ip1=10.77.0.241 ip3=10.77.0.243
svc() { lab_exec curl -sf --max-time "${3:-20}" "http://$1:8000/cgi-bin/$2"; }
if ! eng_wait "slot 1's service answers" 120 svc "$ip1" "w?n=0" 5; then
    t_fail "slot 1's TCP service answers on $ip1:8000"; eng_diag; done_
fi
health() { eng_slot_health clonea "$1" "$2"; }
has_machine() { [ -n "$(health 1 machine)" ]; }
eng_wait "slot 1 reports its machine id" 60 has_machine || true

# ---- refused ---------------------------------------------------------------------------
eng_ctl refuse/clonea 1
out="$(eng_cli env clone clonea 1 --into 3 2>&1)"; rc=$?
if [ "$rc" != 0 ] && grep -q "draining" <<<"$out"; then
    t_ok "a refusing prepare-clone stops the clone with its reason (exit $rc)"
else
    t_fail "a refusing prepare-clone stops the clone (rc $rc: $out)"
fi
no_slot3() {
    [ -z "$(eng_slots clonea | jq '.[] | select(.index == 3)')" ] \
        && ! eng_cli disk list --json | jq -e '.[] | select(.name == "clonea-slot3")' >/dev/null
}
t_check "a refused clone creates no slot 3 and no disk clonea-slot3" no_slot3

# ---- forced, under load ---------------------------------------------------------------
loop_log="$LAB_DIR/client.log"
: > "$loop_log"
(
    i=0
    while [ ! -e "$LAB_DIR/client.stop" ]; do
        i=$((i + 1))
        t=$(date +%s%3N)
        if r="$(svc "$ip1" "w?n=$i" 30)" && svc "$ip1" r 30 | grep -qx "$i"; then s=ok; else s=fail; fi
        echo "$i $s $(( $(date +%s%3N) - t )) $t" >> "$loop_log"
        sleep 0.2
    done
) &
loop_pid=$!
loop_runs() { [ "$(grep -c ' ok ' "$loop_log")" -ge 5 ]; }
eng_wait "the client loop runs" 60 loop_runs
acked_before="$(awk '$2 == "ok" { n = $1 } END { print n + 0 }' "$loop_log")"
t_clone="$(eng_now_ms)"
out="$(eng_cli env clone clonea 1 --into 3 --force --json 2>&1)"; rc=$?
if [ "$rc" = 0 ] && jq -e '.job.phase == "done"' <<<"$out" >/dev/null; then
    pause="$(jq -r '.job.pause_ms' <<<"$out")"
    t_ok "--force clones slot 1 into slot 3 past the refusal (template pause ${pause} ms, snapshot $(jq -r .job.snapshot_ms <<<"$out") ms)"
else
    pause=""
    t_fail "--force clones slot 1 into slot 3 (rc $rc: $out)"
fi
eng_ctl_rm refuse/clonea
if eng_wait "slot 3 ready" 400 eng_env_is clonea 3; then
    ready_s="$(eng_secs_since_ms "$t_clone")"
    t_ok "slot 3 ready on the idle node ($ready_s s after the clone request)"
else
    ready_s=""
    t_fail "slot 3 ready"; eng_diag
fi
sleep 3
touch "$LAB_DIR/client.stop"; wait "$loop_pid" 2>/dev/null
fails="$(grep -c ' fail ' "$loop_log")"; total="$(wc -l < "$loop_log")"
longest="$(awk '$3 > m { m = $3 } END { print m + 0 }' "$loop_log")"
t_check "the client loop on slot 1 never failed ($total requests, $fails failed, longest ${longest} ms)" [ "$fails" = 0 ]

# ---- the clone's identity and data ----------------------------------------------------
eng_wait "slot 3 reports its health" 60 eng_slot_health_is clonea 3 host clonea-3 || true
t_check "slot 3 has its own host name (clonea-3) and address ($ip3)" \
    eng_slots_match clonea env-a 0
m1="$(health 1 machine)" m3="$(health 3 machine)"
t_check "slot 3 has its own machine id ($m3 vs slot 1's $m1)" \
    bash -c "[ -n '$m1' ] && [ -n '$m3' ] && [ '$m1' != '$m3' ]"
k1="$(health 1 sshkey)" k3="$(health 3 sshkey)"
t_check "slot 3's SSH host key was renewed ($k3 vs $k1)" bash -c "[ -n '$k1' ] && [ '$k1' != '$k3' ]"
t_check "purge-sessions ran on slot 3 only" \
    bash -c "[ '$(health 3 purged)' = clonea-3 ] && [ -z '$(health 1 purged)' ]"
d1="$(svc "$ip1" r)" d3="$(svc "$ip3" r)"
n3="$(grep -c . <<<"$d3")"
if [ "$n3" -ge "$acked_before" ] && [ "$d3" = "$(head -n "$n3" <<<"$d1")" ] && [ "$n3" -lt "$(grep -c . <<<"$d1")" ]; then
    t_ok "slot 3 holds slot 1's data as of the freeze ($n3 lines; $acked_before acknowledged before the request; slot 1 has $(grep -c . <<<"$d1") now)"
else
    t_fail "slot 3 holds slot 1's data as of the freeze (slot 3: $n3 lines, acked before: $acked_before, slot 1: $(grep -c . <<<"$d1"))"
fi

# ---- remove the clone -----------------------------------------------------------------
n3id="$(eng_slot_field clonea 3 node)"
if eng_cli env remove-node clonea 3 --delete-disk; then
    gone() {
        [ -z "$(eng_slots clonea | jq '.[] | select(.index == 3)')" ] \
            && ! eng_cli disk list --json | jq -e '.[] | select(.name == "clonea-slot3")' >/dev/null \
            && eng__node_idle_on "$n3id" lab
    }
    t_check "remove-node --delete-disk: node back in the pool, slot 3 and its disk gone" \
        eng_wait "slot 3 gone" 300 gone
else
    t_fail "env remove-node clonea 3 --delete-disk"
fi

# ---- more clones for the figures (CLONE_RUNS=N; qemu-tests/bench/clone.sh, outside CI) --
pauses=("${pause:-}") readies=("${ready_s:-}")
for ((run = 2; run <= ${CLONE_RUNS:-1}; run++)); do
    t_c="$(eng_now_ms)"
    o="$(eng_cli env clone clonea 1 --into 3 --force --json 2>&1)" || { t_fail "clone run $run: $o"; break; }
    eng_wait "run $run: slot 3 ready" 400 eng_env_is clonea 3 || { t_fail "clone run $run: slot 3 ready"; break; }
    pauses+=("$(jq -r .job.pause_ms <<<"$o")") readies+=("$(eng_secs_since_ms "$t_c")")
    n3id="$(eng_slot_field clonea 3 node)"
    if ! eng_cli env remove-node clonea 3 --delete-disk >/dev/null || ! eng_wait "run $run: slot 3 gone" 300 gone; then
        t_fail "clone run $run: remove-node"; break
    fi
done
median() { printf '%s\n' "$@" | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : "?") }'; }
echo "figures: longest client request during the first clone ${longest} ms"
echo "figures over ${#pauses[@]} clone(s): template pause (agent: freeze -> thaw) median $(median "${pauses[@]}") ms [${pauses[*]}]; clone request -> slot 3 ready median $(median "${readies[@]}") s [${readies[*]}]"
eng_fleet_down
done_
