#!/usr/bin/env bash
# Several boot servers on one PostgreSQL store (issue 14): two boot-server
# processes in their own network namespaces, bridged onto one segment
# (10.61.0.0/16, the bridge in a third "client" namespace), sharing one
# database of the private cluster qemu-tests/lib/test-postgres.sh starts
# (reached over its Unix socket, which every namespace sees).
#   - servers: both register and heart-beat (`server list`), one is controller
#   - images: only srv1's images directory holds the lab image; srv2 pulls
#     its files by SHA-256 (verified) and serves identical bytes
#   - wake: a command queued on server 1 reaches an agent long-polling
#     server 2 within 100 ms (LISTEN/NOTIFY)
#   - events: an event written by server 1 reaches server 2's long poll
#   - dhcp: perfdhcp against both servers at once, same pool (relayed):
#     every ACKed address is held by exactly one MAC in the database;
#     exchanges/s of two servers and of one
#   - takeover: srv1 is made the preferred controller (`server prefer`);
#     kill -9 of it; srv2 takes over within 5 s (printed), `server list`
#     shows the dead one down
#   - boot with srv1 down: two BIOS TCG guests (MACs 52:54:00:61:01:0x) netboot
#     from srv2 alone (DHCP, iPXE script and image over HTTP) and their agents
#     reach `idle` (agent API on srv2)
#   - takeover during a scale-up: srv1 comes back and takes the lease again
#     (preferred); an environment (cold moves) is created for one node and scaled
#     to two while its first node is being claimed, and srv1 is killed -9 at
#     once; srv2 takes over within 5 s (printed) and finishes the scale-up (both
#     slots ready on their nodes); the database holds no node in two slots and
#     every node's slot agrees with its slot; no command of an earlier boot
#     is open on a node
#   - agents follow the servers: srv1 back; kill -9 of srv2, the server the
#     hax nodes booted from: their agents go on heart-beating through srv1
#     (learned from srv2's heartbeat answers), and a scale-down queued on
#     srv1 kexecs the released node back to the pool image (a warm move after
#     the server that booted it died)
# Prints `N passed, M failed, K skipped` and its elapsed time. Needs root.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/lib/summary.sh"
started=$(date +%s)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${BOOT_SERVER:-$target/release/boot-server}
finish() { echo "elapsed: $(($(date +%s) - started)) s"; t_summary; exit $?; }

[ "$(id -u)" = 0 ] || { t_skip "test-ha" "needs root (network namespaces)"; finish; }
for tool in perfdhcp psql curl jq qemu-system-x86_64; do
  command -v "$tool" >/dev/null || { t_skip "test-ha" "$tool missing (qemu-tests/install-deps.sh)"; finish; }
done
[ -x "$bin" ] || (cd "$repo" && cargo build -q --release -p boot-server) || { t_fail "boot-server builds"; finish; }

pgdir=${BOOT_TEST_PG_DIR:-/tmp/boot-test-pg}
pgport=${BOOT_TEST_PG_PORT:-55432}
"$here/lib/test-postgres.sh" start >/dev/null || { t_skip "test-ha" "PostgreSQL does not start (apt-get install postgresql)"; finish; }
db="ha_$$"
psql_() { runuser -u postgres -- psql -qAtX -h "$pgdir" -p "$pgport" "$@"; }
psql_ -d postgres -c "CREATE DATABASE $db" >/dev/null || { t_fail "database $db created"; finish; }
url="postgres://postgres@%2F${pgdir//\//%2F}:$pgport/$db"

tag=ha$$
c=${tag}c s1=${tag}s1 s2=${tag}s2
work=$(mktemp -d /tmp/test-ha.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  for n in "$c" "$s1" "$s2"; do ip netns del "$n" 2>/dev/null || true; done
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  if [ -n "${HA_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The segment: a bridge in the client namespace, one veth to each server.
ip netns add "$c"; ip netns add "$s1"; ip netns add "$s2"
ip -n "$c" link add br0 type bridge; ip -n "$c" link set br0 up; ip -n "$c" link set lo up
ip -n "$c" addr add 10.61.0.10/16 dev br0; ip -n "$c" addr add 10.61.0.11/16 dev br0
for i in 1 2; do
  ns=${tag}s$i
  ip link add "${tag}v$i" netns "$c" type veth peer name eth0 netns "$ns"
  ip -n "$c" link set "${tag}v$i" master br0 up
  ip -n "$ns" addr add "10.61.0.$i/16" dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
done

admin=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
# The lab image (built by images/build-lab-image.sh, as test-all does before
# the lab suites): the default image, and the same files as the environment's.
lab=$repo/images/build/lab
[ -f "$lab/vmlinuz" ] && [ -f "$lab/initrd.img" ] || { t_fail "lab image built ($lab: images/build-lab-image.sh)"; finish; }
# Only srv1 has them: srv2's images directory starts empty, and srv2 pulls
# each file by its SHA-256 in the image table from srv1 (verified).
mkdir -p "$work/images1/lab" "$work/images1/ha-env" "$work/images2"
cp "$lab/vmlinuz" "$lab/initrd.img" "$work/images1/lab/"
for img in lab ha-env; do
  printf '%s\n' "name = \"$img\"" 'version = "1"' 'kind = "linux"' 'kernel = "lab/vmlinuz"' \
    'initrd = "lab/initrd.img"' 'cmdline = "console=ttyS0 quiet cryptomgr.notests no_timer_check"' \
    'archs = ["bios"]' >"$work/images1/$img/image.toml"
done
config() { # server number
  printf '%s\n' "state_dir = \"$work/state$1\"" "images_dir = \"$work/images$1\"" \
    "server_ip = \"10.61.0.$1\"" 'interface = "eth0"' "admin_token = \"$admin\"" \
    'trust_boot_network = true' 'default_image = "lab"' 'loaders_dir = "/usr/lib/ipxe"' \
    '[http]' 'listen = "0.0.0.0:8080"' '[tftp]' 'enabled = true' 'listen = "0.0.0.0:69"' '[nbd]' 'enabled = false' \
    '[agent]' 'heartbeat_interval_secs = 2' 'heartbeat_timeout_secs = 10' \
    '[ra]' 'enabled = false' '[dhcp]' 'mode = "full"' 'proxy_port = 0' \
    '[[dhcp.subnet]]' 'network = "10.61.0.0/16"' 'range = ["10.61.1.0", "10.61.15.255"]' 'lease_secs = 3600' \
    '[store]' "url = \"$url\"" 'controller_ttl_ms = 3000' "server_name = \"srv$1\"" 'segment = "10.61.0.0/16"' \
    >"$work/s$1.toml"
}
start_server() { # number
  ip netns exec "${tag}s$1" env RUST_LOG=info "$bin" --config "$work/s$1.toml" serve \
    >"$work/s$1.out" 2>"$work/s$1.err" &
  pids+=($!); eval "pid$1=$!"
}
cli() { # server args... (the server's admin socket)
  local s=$1; shift
  "$bin" --config "$work/s$s.toml" "$@"
}
role_of() { # asking-server name -> controller | member | down | ""
  api "$1" GET /api/servers 2>/dev/null | jq -r --arg n "$2" '.[] | select(.name == $n) | .role' 2>/dev/null
}
role_is() { [ "$(role_of "$1" "$2")" = "$3" ]; }
api() { # server method path [curl args...]
  local s=$1 m=$2 p=$3; shift 3
  ip netns exec "$c" curl -sS -m 30 -X "$m" -H "authorization: Bearer $admin" "$@" "http://10.61.0.$s:8080$p"
}
wait_up() { # server
  for _ in $(seq 1 200); do
    ip netns exec "$c" curl -sf -m 1 "http://10.61.0.$1:8080/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
config 1; config 2
start_server 1; start_server 2
if ! wait_up 1 || ! wait_up 2; then
  t_fail "both servers start"; tail -n 20 "$work"/s*.err; finish
fi
t_ok "both servers start on one PostgreSQL store"

# --- registry: both listed, exactly one controller; srv1 preferred ---
controller=""
for _ in $(seq 1 50); do
  list=$(api 2 GET /api/servers)
  n_up=$(echo "$list" | grep -o '"up":true' | wc -l)
  n_ctl=$(echo "$list" | grep -o '"role":"controller"' | wc -l)
  [ "$n_up" = 2 ] && [ "$n_ctl" = 1 ] && break
  sleep 0.2
done
t_check "server list shows both servers up, one controller" [ "$n_up" = 2 -a "$n_ctl" = 1 ]
ip netns exec "$s2" "$bin" --config "$work/s2.toml" server list | sed 's/^/    /'
cli 2 server prefer srv1 >/dev/null || t_fail "server prefer srv1 accepted"
for _ in $(seq 1 100); do [ "$(role_of 2 srv1)" = controller ] && break; sleep 0.1; done
t_check "server prefer srv1 (given to srv2): srv1 holds the controller lease" [ "$(role_of 2 srv1)" = controller ]
controller=srv1

# --- images: srv2 pulled the lab image's files from srv1 by SHA-256 ---
synced() { cmp -s "$lab/vmlinuz" "$work/images2/lab/vmlinuz" && cmp -s "$lab/initrd.img" "$work/images2/lab/initrd.img"; }
for _ in $(seq 1 100); do synced && break; sleep 0.2; done
t_check "srv2 (empty images directory) pulled the lab image's files from srv1, verified by SHA-256" synced
code=$(ip netns exec "$c" curl -s -o "$work/k2" -w '%{http_code}' "http://10.61.0.2:8080/images/lab/vmlinuz")
t_check "srv2 serves the pulled kernel, identical to srv1's ($code)" sh -c "[ $code = 200 ] && cmp -s '$lab/vmlinuz' '$work/k2'"

# --- wake: a command queued on server 1 reaches an agent polling server 2 ---
mac=52:54:00:61:00:01
api 1 POST /api/nodes -H 'content-type: application/json' -d "{\"mac\":\"$mac\"}" >/dev/null
node=$(api 1 GET "/api/nodes/$mac" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' 2>/dev/null)
script=$(ip netns exec "$c" curl -sS -m 5 "http://10.61.0.2:8080/ipxe/${mac//:/-}")
tok=$(echo "$script" | tr ' ' '\n' | sed -n 's/^bootsrv.token=//p' | head -n 1)
if [ -z "$node" ] || [ -z "$tok" ]; then
  t_fail "an enrolled node gets an agent token from server 2 (node=$node)"
else
  hello='{"protocol_version":2,"agent_version":"t","inventory":{"nics":[],"cpus":1,"memory_bytes":1,"firmware":"bios"}}'
  code=$(ip netns exec "$c" curl -s -o /dev/null -w '%{http_code}' -m 5 -X POST -H "x-node-token: $tok" \
    -H 'content-type: application/json' -d "$hello" http://10.61.0.2:8080/api/agent/hello)
  t_check "the agent says hello to server 2" [ "$code" = 204 -o "$code" = 200 ]
  # Long poll on server 2, then queue on server 1; time queue -> delivery.
  ip netns exec "$c" sh -c "curl -sS -m 20 -H 'x-node-token: $tok' 'http://10.61.0.2:8080/api/agent/commands?wait=15' >'$work/poll.json'; date +%s%N >'$work/poll.t'" &
  poller=$!
  sleep 1 # the poll is waiting
  date +%s%N >"$work/queue.t"
  api 1 POST "/api/nodes/$node/commands" -H 'content-type: application/json' -d '{"kind":"reboot"}' >"$work/queue.json"
  wait "$poller"
  # From the command's creation on server 1 (its created_ms, same host
  # clock) to the poll's answer on server 2: no client start-up counted.
  created=$(api 1 GET "/api/nodes/$node/commands" | python3 -c 'import json,sys; print(min(c["created_ms"] for c in json.load(sys.stdin)))' 2>/dev/null)
  ms=$(( $(cat "$work/poll.t") / 1000000 - ${created:-0} ))
  echo "    command queued on srv1 reached the poll on srv2 after $ms ms (from the client: $(( ($(cat "$work/poll.t") - $(cat "$work/queue.t")) / 1000000 )) ms): $(cat "$work/poll.json")"
  t_check "a command queued on server 1 reaches an agent polling server 2 within 100 ms ($ms ms)" \
    sh -c "grep -q reboot '$work/poll.json' && [ $ms -lt 100 ]"
fi

# --- events: server 1's events reach server 2's long poll ---
last=$(api 2 GET '/api/events?tail=1' | python3 -c 'import json,sys; l=json.load(sys.stdin); print(l[-1]["id"] if l else 0)')
(api 2 GET "/api/events?after=$last&wait=10&node=$node" >"$work/ev.json"; date +%s%N >"$work/ev.t") &
evp=$!
sleep 0.5
date +%s%N >"$work/ev0.t"
api 1 PUT "/api/nodes/$node/state" -H 'content-type: application/json' -d '{"state":"quarantined"}' >/dev/null
wait "$evp"
ms=$(( ($(cat "$work/ev.t") - $(cat "$work/ev0.t")) / 1000000 ))
t_check "an event written by server 1 wakes an events long poll on server 2 ($ms ms)" \
  sh -c "grep -q '\"id\"' '$work/ev.json' && [ $ms -lt 1000 ]"

# --- dhcp: perfdhcp against both servers at once, one pool ---
rate=${HA_DHCP_RATE:-300} secs=${HA_DHCP_SECS:-5} clients=${HA_DHCP_CLIENTS:-400}
perf() { # local-address server out mac-base
  ip netns exec "$c" perfdhcp -4 -l "$1" -b "mac=$4" -r "$rate" -p "$secs" -R "$clients" \
    -d 2 -W 2000000 "$2" >"$3" 2>&1
}
acks() { awk '/^\*\*\*Statistics for: REQUEST-ACK/ {x=1} /^\*\*\*Statistics for: DISCOVER/ {x=0} x && /^received packets:/ {s+=$3} END {print s+0}' "$1"; }
perf 10.61.0.10 10.61.0.1 "$work/p1.txt" 00:0c:01:02:03:04 &
a=$!
perf 10.61.0.11 10.61.0.2 "$work/p2.txt" 00:0c:02:02:03:04 &
b=$!
wait "$a" "$b"
a1=$(acks "$work/p1.txt"); a2=$(acks "$work/p2.txt")
echo "    two servers at once: $a1 + $a2 ACKs in ${secs} s = $(( (a1 + a2) / secs )) exchanges/s"
t_check "perfdhcp gets ACKs from both servers ($a1, $a2)" [ "$a1" -gt 0 -a "$a2" -gt 0 ]
dup=$(psql_ -d "$db" -c "SELECT count(*) FROM (SELECT ip FROM leases GROUP BY ip HAVING count(DISTINCT mac) > 1) d")
held=$(psql_ -d "$db" -c "SELECT count(*) FROM leases WHERE mac LIKE '00:0c:0%' AND expires_at_ms > (extract(epoch from now())*1000)::bigint + 600000")
echo "    leases held in the database afterwards: $held (every ACKed client's address)"
t_check "every ACKed address is held by exactly one MAC in the database ($dup shared)" [ "$dup" = 0 ]
t_check "the database holds the ACKed clients' leases ($held)" [ "$held" -gt 0 ]
perf 10.61.0.10 10.61.0.1 "$work/p3.txt" 00:0c:03:02:03:04
a3=$(acks "$work/p3.txt")
echo "    one server alone: $a3 ACKs in ${secs} s = $(( a3 / secs )) exchanges/s (offered $rate/s per perfdhcp)"

# --- takeover: kill -9 the controller ---
if [ "$controller" = srv1 ]; then victim=1 other=2; else victim=2 other=1; fi
t0=$(date +%s%N)
kill -9 "$(eval echo "\$pid$victim")"
took=""
for _ in $(seq 1 100); do
  role=$(api "$other" GET /api/servers | python3 -c "import json,sys; print([s['role'] for s in json.load(sys.stdin) if s['name']=='srv$other'][0])" 2>/dev/null)
  if [ "$role" = controller ]; then took=$(( ($(date +%s%N) - t0) / 1000000 )); break; fi
  sleep 0.05
done
echo "    controller takeover after kill -9 of srv$victim: ${took:-none} ms"
t_check "srv$other takes over within 5 s of kill -9 of the controller (${took:-never} ms)" \
  sh -c "[ -n '$took' ] && [ '$took' -le 5000 ]"
for _ in $(seq 1 80); do
  vrole=$(api "$other" GET /api/servers | python3 -c "import json,sys; print([s['role'] for s in json.load(sys.stdin) if s['name']=='srv$victim'][0])" 2>/dev/null)
  [ "$vrole" = down ] && break
  sleep 0.1
done
t_check "server list marks the killed server down" [ "$vrole" = down ]

# --- boot with srv1 down: srv2 answers DHCP, the iPXE script, the image, the agent ---
guests=()
start_guest() { # name mac
  local tap=${tag}$1
  ip -n "$c" tuntap add dev "$tap" mode tap && ip -n "$c" link set "$tap" master br0 && ip -n "$c" link set "$tap" up
  ip netns exec "$c" qemu-system-x86_64 -accel tcg -m 384 -smp 1 -display none -monitor none \
    -serial "file:$work/$1.serial" -name "$1" -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=$2,bootindex=1" -boot n >"$work/$1.qemu.log" 2>&1 &
  pids+=($!); guests+=("$1")
}
node_of() { echo "node-${1//:/}"; }
idle_on() { # server node image
  cli "$1" node show "$2" --json 2>/dev/null | jq -e --arg img "$3" \
    '.state == "idle" and .booted_image == $img and .heartbeat != null' >/dev/null
}
wait_for() { # seconds cmd... (polled every 0.5 s)
  local until=$(( $(date +%s) + $1 )); shift
  while ! "$@"; do [ "$(date +%s)" -lt "$until" ] || return 1; sleep 0.5; done
}
diag() {
  for g in "${guests[@]}"; do echo "--- console of $g:"; tr -d '\r' <"$work/$g.serial" | tail -n 6; done
  for i in 1 2; do echo "--- srv$i log:"; tail -n 15 "$work/s$i.err"; done
}
g1=52:54:00:61:01:01 g2=52:54:00:61:01:02
if [ "$victim" = 1 ] && [ "$vrole" = down ]; then
  t1=$(date +%s%N)
  start_guest g1 "$g1"; start_guest g2 "$g2"
  ok=1
  for m in "$g1" "$g2"; do wait_for 150 idle_on 2 "$(node_of "$m")" lab || ok=0; done
  s=$(( ($(date +%s%N) - t1) / 1000000 ))
  echo "    two guests netbooted from srv2 alone to agent idle in $s ms"
  held=$(psql_ -d "$db" -c "SELECT count(*) FROM leases WHERE mac IN ('$g1', '$g2')")
  t_check "with srv1 down two guests netboot from srv2 (DHCP, iPXE, image, agent API) to idle (${s} ms, $held leases)" \
    [ "$ok" = 1 -a "$held" = 2 ]
  [ "$ok" = 1 ] || diag
else
  t_fail "boot with srv1 down: srv1 was not the controller killed above"; ok=0
fi

# --- kill -9 of the controller during an environment scale-up ---
slots_json() { cli 2 slot list hax --json 2>/dev/null; }
claiming() { slots_json | jq -e '[.[] | select(.node != null)] | length >= 1' >/dev/null; }
scaled() { slots_json | jq -e '([.[] | select(.node != null and .step == "ready")] | length) == 2' >/dev/null; }
if [ "$ok" = 1 ]; then
  start_server 1
  wait_up 1 || t_fail "srv1 restarts"
  wait_for 10 role_is 2 srv1 controller
  t_check "srv1 back: it takes the controller lease again (preferred)" [ "$(role_of 2 srv1)" = controller ]
  t2=$(date +%s%N)
  mkdir -p "$work/hooks"; printf '#!/bin/sh\nexit 0\n' >"$work/hooks/start"
  cli 2 env create hax --image ha-env --min 1 --nodes 1 --max 2 --boot cold --hostname-pattern 'hax-{slot}' \
    --hook "start=$work/hooks/start" >/dev/null \
    || t_fail "env create hax accepted"
  wait_for 20 claiming || t_fail "srv1's engine claims a node for hax"
  cli 2 env scale hax 2 >/dev/null || t_fail "env scale hax 2 accepted"
  at_kill=$(slots_json | jq -r '[.[] | "\(.index):\(.node // "-"):\(.step)"] | join(" ")')
  t0=$(date +%s%N)
  kill -9 "$pid1"
  took=""
  for _ in $(seq 1 100); do
    if [ "$(role_of 2 srv2)" = controller ]; then took=$(( ($(date +%s%N) - t0) / 1000000 )); break; fi
    sleep 0.05
  done
  echo "    slots when srv1 was killed: $at_kill; srv2 took over after ${took:-none} ms"
  t_check "kill -9 of srv1 during the scale-up: srv2 takes over within 5 s (${took:-never} ms)" \
    sh -c "[ -n '$took' ] && [ '$took' -le 5000 ]"
  if wait_for 150 scaled; then
    s=$(( ($(date +%s%N) - t2) / 1000000 ))
    t_ok "srv2 completes the scale-up: hax has 2 ready slots ($s ms from env create)"
  else
    t_fail "srv2 completes the scale-up: hax has 2 ready slots"
    slots_json | jq -c '.[]'; diag
  fi
  # The database: no node in two slots, no slot row twice, every node's
  # environment and slot agree with the slot that holds it.
  twice=$(psql_ -d "$db" -c "SELECT count(*) FROM (SELECT node FROM slots WHERE node IS NOT NULL GROUP BY node HAVING count(*) > 1) d")
  held=$(psql_ -d "$db" -c "SELECT count(DISTINCT node) || '/' || count(*) FROM slots WHERE environment = 'hax' AND node IS NOT NULL")
  bad=$(jq -n -r --argjson s "$(cli 2 slot list --json)" --argjson n "$(cli 2 node list --json)" '
    ($n[] | select(.environment != null) | . as $x | [$s[] | select(.node == $x.id)] as $h
      | select(($h | length) != 1 or $h[0].environment != $x.environment or $h[0].index != $x.slot) | $x.id),
    ($s[] | select(.node != null) | . as $y | [$n[] | select(.id == $y.node)][0] as $x
      | select($x == null or $x.environment != $y.environment or $x.slot != $y.index) | "\($y.environment)/\($y.index)")' 2>&1)
  echo "    database after the takeover: nodes held by two slots $twice; hax holds $held (distinct/slots); disagreements: ${bad:-none}"
  t_check "no node is held by two slots and no slot by two nodes (database: $twice, hax $held)" \
    [ "$twice" = 0 -a "$held" = 2/2 -a -z "$bad" ]
  # No boot command was carried out by a boot it was not queued for: every
  # command a hax node's present boot was handed is that boot's own.
  stray=$(psql_ -d "$db" -c "SELECT count(*) FROM commands c JOIN nodes n ON n.id = c.node JOIN slots s ON s.node = n.id WHERE s.environment = 'hax' AND c.boot <> n.boot AND c.status IN ('queued', 'delivered', 'started')")
  t_check "no command of an earlier boot is open on a hax node ($stray)" [ "$stray" = 0 ]
fi

# --- agents follow the servers: the hax nodes booted from srv2 (their
# bootsrv.server); srv1 comes back, the agents learn it from srv2's
# heartbeat answers; kill -9 of srv2: heartbeats go on through srv1 and a
# warm move (kexec back to the pool image) queued on srv1 reaches its agent ---
hb_of() { cli "$1" node show "$2" --json 2>/dev/null | jq -r '.last_heartbeat_ms // 0'; }
hax_nodes() { slots_json | jq -r '.[] | select(.node != null) | .node'; }
if [ "$ok" = 1 ] && scaled; then
  mapfile -t hn < <(hax_nodes)
  start_server 1
  wait_up 1 || t_fail "srv1 restarts"
  wait_for 10 role_is 2 srv1 controller
  # Every heartbeat srv2 answers from now on lists srv1: wait for one per node.
  listed=$(date +%s%3N)
  learned() { for n in "${hn[@]}"; do [ "$(hb_of 2 "$n")" -gt "$listed" ] || return 1; done; }
  wait_for 10 learned || t_fail "the hax nodes heart-beat to srv2 after srv1 is back"
  t0=$(date +%s%N)
  kill -9 "$pid2"; wait "$pid2" 2>/dev/null
  t0ms=$(date +%s%3N) # srv2 is gone: a heartbeat stored after this went through srv1
  followed() { for n in "${hn[@]}"; do [ "$(hb_of 1 "$n")" -gt "$t0ms" ] || return 1; done; }
  if wait_for 20 followed; then
    s=$(( ($(date +%s%N) - t0) / 1000000 ))
    t_ok "kill -9 of srv2 (the server that booted them): both hax agents heart-beat through srv1 (${s} ms)"
  else
    t_fail "kill -9 of srv2: both hax agents heart-beat through srv1"; diag
  fi
  cli 1 env scale hax 1 >/dev/null || t_fail "env scale hax 1 (on srv1) accepted"
  back() { # one hax node left in the pool image, idle, heart-beating through srv1
    [ "$(slots_json1 | jq '[.[] | select(.node != null and .step == "ready")] | length')" = 1 ] || return 1
    for n in "${hn[@]}"; do idle_on 1 "$n" lab && return 0; done
    return 1
  }
  slots_json1() { cli 1 slot list hax --json 2>/dev/null; }
  t3=$(date +%s%N)
  if wait_for 90 back; then
    s=$(( ($(date +%s%N) - t3) / 1000000 ))
    kx=$(for n in "${hn[@]}"; do cli 1 node commands "$n" --json 2>/dev/null; done | jq -s '[.[][] | select(.command.kind == "kexec" and .status == "succeeded")] | length')
    t_ok "scale-down queued on srv1 with srv2 dead: the released node kexecs back to the pool image and is idle on srv1 (${s} ms, $kx kexec)"
  else
    t_fail "scale-down queued on srv1 with srv2 dead: a released node is back idle in the pool image"
    slots_json1 | jq -c '.[]'; diag
  fi
  failed=$(for n in "${hn[@]}"; do cli 1 node show "$n" --json | jq -r .state; done | grep -c failed)
  t_check "no hax node was marked failed while its server was gone ($failed)" [ "$failed" = 0 ]
fi
finish
