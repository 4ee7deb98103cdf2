#!/usr/bin/env bash
# Several boot servers on one PostgreSQL store (issue 14): two boot-server
# processes in their own network namespaces, bridged onto one segment
# (10.61.0.0/16, the bridge in a third "client" namespace), sharing one
# database of the private cluster qemu-tests/lib/test-postgres.sh starts
# (reached over its Unix socket, which every namespace sees).
#   - servers: both register and heart-beat (`server list`), one is controller
#   - wake: a command queued on server 1 reaches an agent long-polling
#     server 2 within 100 ms (LISTEN/NOTIFY)
#   - events: an event written by server 1 reaches server 2's long poll
#   - dhcp: perfdhcp against both servers at once, same pool (relayed):
#     every ACKed address is held by exactly one MAC in the database;
#     exchanges/s of two servers and of one
#   - takeover: kill -9 of the controller; the other takes over within 5 s
#     (printed), `server list` shows the dead one down
# Not covered yet (reported as skips): a QEMU guest booting with server 1
# down, and a takeover during an environment scale-up.
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
for tool in perfdhcp psql curl; do
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
mkdir -p "$work/images/lab"
head -c 300000 /dev/urandom >"$work/images/lab/vmlinuz"
head -c 100000 /dev/urandom >"$work/images/lab/initrd.img"
printf '%s\n' 'name = "lab"' 'version = "1"' 'kind = "linux"' 'kernel = "lab/vmlinuz"' \
  'initrd = "lab/initrd.img"' 'cmdline = "console=ttyS0"' >"$work/images/lab/image.toml"
config() { # server number
  printf '%s\n' "state_dir = \"$work/state$1\"" "images_dir = \"$work/images\"" \
    "server_ip = \"10.61.0.$1\"" 'interface = "eth0"' "admin_token = \"$admin\"" \
    'trust_boot_network = true' 'default_image = "lab"' \
    '[http]' 'listen = "0.0.0.0:8080"' '[tftp]' 'enabled = false' '[nbd]' 'enabled = false' \
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

# --- registry: both listed, exactly one controller ---
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
controller=$(echo "$list" | python3 -c 'import json,sys; print([s["name"] for s in json.load(sys.stdin) if s["role"]=="controller"][0])' 2>/dev/null)

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

# Not built yet (issue 14): a guest booting to ready with server 1 down, and a
# takeover in the middle of an environment scale-up. Not reported as skips: a skip
# says a tool was missing, and these are simply not written.
finish
