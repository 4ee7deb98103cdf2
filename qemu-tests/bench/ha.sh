#!/usr/bin/env bash
# Several-server benchmark (a script, not a test): in the same run,
#  1. DHCP exchanges/s at the rate perfdhcp reaches, server CPU and database
#     CPU per exchange, medians of N runs, of: boot-server with the SQLite
#     store; one boot-server on PostgreSQL; two boot-servers on one
#     PostgreSQL database (one perfdhcp each, same pool, different MACs); and
#     beside them kea-dhcp4 with its PostgreSQL lease backend (the
#     conventional server on the same database cluster). perfdhcp relays (as
#     bench/dhcp.sh does): a client namespace with a bridge, one veth to each
#     server namespace. The configurations alternate within each run, so load
#     from other work on the machine falls on all of them alike;
#  2. designated-controller takeover after kill -9 of the controller, median
#     of 5 (two servers on one database; time from the kill until the other
#     server holds the lease, read from the database).
# Usage: qemu-tests/bench/ha.sh [rate] [seconds] [clients] [runs]
#   defaults 4000 5 5000 3 (rate: DISCOVERs/s offered by each perfdhcp, above
#   what any of them sustains here, so the figure is the maximum rate).
# Env: HA_TAKEOVER=0 skips part 2; HA_KEA=0 skips Kea; BOOT_SERVER (binary);
#   BOOT_TEST_PG_DIR / BOOT_TEST_PG_PORT: a private cluster (the database CPU
#   is the whole cluster's, so other users of a shared one inflate it).
# Needs root, perfdhcp (kea-admin), PostgreSQL (qemu-tests/lib/test-postgres.sh).
set -euo pipefail
rate=${1:-4000}
secs=${2:-5}
clients=${3:-5000}
runs=${4:-3}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${BOOT_SERVER:-$target/release/boot-server}
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (network namespaces)"; exit 0; }
command -v perfdhcp >/dev/null || { echo "perfdhcp missing (apt-get install kea-admin)"; exit 1; }
[ -x "$bin" ] || (cd "$repo" && cargo build -q --release -p boot-server)
pgdir=${BOOT_TEST_PG_DIR:-/tmp/boot-test-pg}
pgport=${BOOT_TEST_PG_PORT:-55432}
"$here/../lib/test-postgres.sh" start >/dev/null
psql_() { runuser -u postgres -- psql -qAtX -h "$pgdir" -p "$pgport" "$@"; }
db="habench_$$" keadb="habench_kea_$$"
psql_ -d postgres -c "CREATE DATABASE $db" >/dev/null
url="postgres://postgres@%2F${pgdir//\//%2F}:$pgport/$db"
kea=$(command -v kea-dhcp4 || true)
[ "${HA_KEA:-1}" = 0 ] && kea=""

tag=hab$$
c=${tag}c
work=$(mktemp -d "$target/ha-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "$c" "${tag}s1" "${tag}s2"; do ip netns del "$n" 2>/dev/null || true; done
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $keadb WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# The segment: a bridge in the client namespace (10.9.0.2 and .4, one per
# perfdhcp), one veth to each server namespace (server N at 10.9.0.(2N-1)).
ip netns add "$c"
ip -n "$c" link add br0 type bridge; ip -n "$c" link set br0 up; ip -n "$c" link set lo up
ip -n "$c" addr add 10.9.0.2/16 dev br0; ip -n "$c" addr add 10.9.0.4/16 dev br0
for i in 1 2; do
  ns=${tag}s$i
  ip netns add "$ns"
  ip link add "${tag}v$i" netns "$c" type veth peer name eth0 netns "$ns"
  ip -n "$c" link set "${tag}v$i" master br0 up
  ip -n "$ns" addr add "10.9.0.$((2 * i - 1))/16" dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
done

# perfdhcp's sockets get a 16 MB receive buffer (as in bench/dhcp.sh): bursts
# of replies overflow the kernel default and would count as drops.
preload=""
if command -v cc >/dev/null; then
  cc -shared -fPIC -O2 -o "$work/rcvbuf.so" "$here/../lib/rcvbuf.c" -ldl && preload="$work/rcvbuf.so"
fi

wait_port67() { # server number
  for _ in $(seq 1 200); do
    ip netns exec "${tag}s$1" ss -Hlun 'sport = :67' | grep -q . && return 0
    sleep 0.05
  done
  echo "server $1 did not bind port 67"; exit 1
}
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# CPU seconds of the whole PostgreSQL cluster: the postmaster, its reaped
# children (ended backends) and its live children.
pg_cpu() {
  local pm kids
  pm=$(head -1 "$pgdir/data/postmaster.pid")
  kids=$(ps --ppid "$pm" -o pid= | tr -d ' ' || true)
  { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pm/stat"
    for k in $kids; do awk '{ print $14 + $15 }' "/proc/$k/stat" 2>/dev/null || true; done
  } | awk -v hz="$(getconf CLK_TCK)" '{ s += $1 } END { printf "%.3f", s / hz }'
}
acks_of() { awk '/^\*\*\*Statistics for: REQUEST-ACK/ {x=1} /^\*\*\*Statistics for: DISCOVER/ {x=0} x && /^received packets:/ {s+=$3} END {print s+0}' "$1"; }
perf() { # client-number out: perfdhcp from 10.9.0.(2N) to server N, MAC base N
  ip netns exec "$c" env ${preload:+LD_PRELOAD=$preload} perfdhcp -4 -l "10.9.0.$((2 * $1))" \
    -b "mac=00:0c:0$1:02:03:04" -r "$rate" -p "$secs" -R "$clients" -d 2 -W 2000000 \
    "10.9.0.$((2 * $1 - 1))" >"$2" 2>&1 || true
}
config() { # name server-number extra-lines...
  local name=$1 n=$2; shift 2
  printf '%s\n' "state_dir = \"$work/$name\"" "images_dir = \"$work/images\"" \
    "server_ip = \"10.9.0.$((2 * n - 1))\"" 'interface = "eth0"' \
    '[http]' 'listen = "127.0.0.1:0"' '[tftp]' 'enabled = false' '[nbd]' 'enabled = false' \
    '[ra]' 'enabled = false' '[dhcp]' 'mode = "full"' 'proxy_port = 0' \
    '[[dhcp.subnet]]' 'network = "10.9.0.0/16"' 'range = ["10.9.1.0", "10.9.255.254"]' 'lease_secs = 3600' \
    "$@" >"$work/$name.toml"
}
mkdir -p "$work/images"
config sqlite 1
config pg1 1 '[store]' "url = \"$url\"" 'server_name = "bench1"'
config pg2 2 '[store]' "url = \"$url\"" 'server_name = "bench2"'

declare -A res # "config run" -> "rate server-us db-us"
record() { # config run acks server-cpu db-cpu-before db-cpu-after
  local name=$1 run=$2 acks=$3 scpu=$4 d0=$5 d1=$6
  local line
  line=$(awk -v a="$acks" -v s="$scpu" -v d0="$d0" -v d1="$d1" -v secs="$secs" 'BEGIN {
    if (a > 0) printf "%d %.1f %.1f", a / secs, s * 1e6 / a, (d1 - d0) * 1e6 / a; else print "0 0 0" }')
  res["$name $run"]=$line
  set -- $line
  printf '  run %s %-34s %6s exchanges/s   server CPU %7s us/exchange   database CPU %7s us/exchange   (%s ACKs)\n' \
    "$run" "$name" "$1" "$2" "$3" "$acks"
}
boot_run() { # run name configs... (one server per config: config k runs in namespace s<k>)
  local run=$1 name=$2; shift 2
  local k=0 spids=() cfg d0 d1 scpu=0 acks=0 ppids=()
  psql_ -d "$db" -c "TRUNCATE leases" >/dev/null 2>&1 || true
  d0=$(pg_cpu)
  for cfg in "$@"; do
    k=$((k + 1))
    rm -rf "$work/$cfg"
    ip netns exec "${tag}s$k" env RUST_LOG=warn "$bin" --config "$work/$cfg.toml" serve \
      >"$work/$cfg.out" 2>"$work/$cfg.err" &
    pids+=($!); spids+=($!)
    wait_port67 "$k"
  done
  # The servers have loaded their leases (they answer only then): wait a beat.
  sleep 0.5
  for i in $(seq 1 "$k"); do perf "$i" "$work/$name.$i.txt" & ppids+=($!); done
  wait "${ppids[@]}"
  for p in "${spids[@]}"; do
    scpu=$(awk -v a="$scpu" -v b="$(cpu_secs "$p")" 'BEGIN { print a + b }')
    kill -TERM "$p"; wait "$p" 2>/dev/null || true
  done
  sleep 0.5 # the backends end and are reaped
  d1=$(pg_cpu)
  for i in $(seq 1 "$k"); do acks=$((acks + $(acks_of "$work/$name.$i.txt"))); done
  record "$name" "$run" "$acks" "$scpu" "$d0" "$d1"
}
kea_ok=""
if [ -n "$kea" ] && command -v kea-admin >/dev/null; then
  psql_ -d postgres -c "CREATE DATABASE $keadb" >/dev/null
  if kea-admin db-init pgsql -u postgres -p "" -n "$keadb" -h "$pgdir" -P "$pgport" >"$work/kea-admin.log" 2>&1; then
    kea_ok=1
    kea_name="kea-dhcp4 $("$kea" -v) PostgreSQL"
    cat >"$work/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "eth0" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "postgresql", "name": "$keadb", "host": "$pgdir", "port": $pgport, "user": "postgres" },
  "multi-threading": { "enable-multi-threading": true, "thread-pool-size": 8, "packet-queue-size": 256 },
  "valid-lifetime": 3600,
  "subnet4": [ { "id": 1, "subnet": "10.9.0.0/16", "pools": [ { "pool": "10.9.1.0 - 10.9.255.254" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "$work/kea.log" } ], "severity": "WARN" } ]
} }
JSON
  else
    echo "kea-admin db-init failed (Kea skipped): $(tail -3 "$work/kea-admin.log")"
  fi
fi
kea_run() { # run
  local d0 d1 kp
  psql_ -d "$keadb" -c "TRUNCATE lease4" >/dev/null
  d0=$(pg_cpu)
  ip netns exec "${tag}s1" env KEA_LOCKFILE_DIR="$work" KEA_PIDFILE_DIR="$work" "$kea" -c "$work/kea.json" \
    >"$work/kea.out" 2>&1 &
  pids+=($!); kp=$!
  wait_port67 1
  sleep 0.5
  perf 1 "$work/kea.txt"
  local scpu
  scpu=$(cpu_secs "$kp")
  kill -TERM "$kp"; wait "$kp" 2>/dev/null || true
  sleep 0.5
  d1=$(pg_cpu)
  record "$kea_name" "$1" "$(acks_of "$work/kea.txt")" "$scpu" "$d0" "$d1"
}

echo "== DHCP at the rate perfdhcp reaches (offered $rate DISCOVER/s per perfdhcp, $secs s, $clients clients each, relayed), $runs runs"
echo "   load before: $(uptime)"
names=("sqlite" "postgres, one server" "postgres, two servers")
[ -n "$kea_ok" ] && names+=("$kea_name")
for run in $(seq 1 "$runs"); do
  boot_run "$run" "sqlite" sqlite
  boot_run "$run" "postgres, one server" pg1
  boot_run "$run" "postgres, two servers" pg1 pg2
  [ -n "$kea_ok" ] && kea_run "$run"
done
echo "   load after: $(uptime)"
declare -A med
median_of() { # config field(1-3)
  local name=$1 f=$2 r
  for r in $(seq 1 "$runs"); do echo "${res["$name $r"]}" | awk -v f="$f" '{ print $f }'; done |
    sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
for name in "${names[@]}"; do
  med[$name]=$(median_of "$name" 1)
  printf 'median of %s: %-34s %6s exchanges/s   server CPU %7s us/exchange   database CPU %7s us/exchange\n' \
    "$runs" "$name" "${med[$name]}" "$(median_of "$name" 2)" "$(median_of "$name" 3)"
done
ratio() { awk -v a="$2" -v b="$3" -v l="$1" 'BEGIN { if (b > 0) printf "ratio %s: %.2f\n", l, a / b }'; }
ratio "PostgreSQL (one server) / SQLite exchanges/s" "${med[postgres, one server]}" "${med[sqlite]}"
ratio "two servers / one server on PostgreSQL" "${med[postgres, two servers]}" "${med[postgres, one server]}"
[ -n "$kea_ok" ] && ratio "boot-server / Kea, both on PostgreSQL" "${med[postgres, one server]}" "${med[$kea_name]}"
psql_ -d "$db" -c "SELECT count(*) FROM leases" >/dev/null
echo "addresses held by two MACs after the two-server runs: $(psql_ -d "$db" -c "SELECT count(*) FROM (SELECT ip FROM leases GROUP BY ip HAVING count(DISTINCT mac) > 1) d")"
[ "${HA_TAKEOVER:-1}" = 0 ] && exit 0

echo "== controller takeover after kill -9 (ttl 3000 ms), 5 runs"
for n in a b; do
  printf '%s\n' "state_dir = \"$work/t$n\"" "images_dir = \"$work/images\"" \
    '[http]' 'listen = "127.0.0.1:0"' '[tftp]' 'enabled = false' '[nbd]' 'enabled = false' \
    '[ra]' 'enabled = false' '[dhcp]' 'mode = "off"' \
    '[store]' "url = \"$url\"" 'controller_ttl_ms = 3000' "server_name = \"t$n\"" >"$work/t$n.toml"
done
declare -A pid_of
start_t() { "$bin" --config "$work/t$1.toml" serve >"$work/t$1.out" 2>"$work/t$1.err" & pids+=($!); pid_of[$1]=$!; }
holder() { psql_ -d "$db" -c "SELECT holder FROM controller WHERE expires_at > now()"; }
start_t a; start_t b
times=()
for i in 1 2 3 4 5; do
  h=""
  for _ in $(seq 1 200); do h=$(holder); [ -n "$h" ] && break; sleep 0.05; done
  victim=${h%%:*}; victim=${victim#t}
  [ "$victim" = a ] || [ "$victim" = b ] || { echo "no controller ($h)"; exit 1; }
  t0=$(date +%s%N)
  kill -9 "${pid_of[$victim]}"
  while :; do
    now=$(holder)
    if [ -n "$now" ] && [ "$now" != "$h" ]; then break; fi
    sleep 0.02
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  times+=("$ms")
  echo "run $i: t$victim killed, ${now%%:*} took over after $ms ms"
  start_t "$victim"
  sleep 1
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
echo "controller takeover: median $median ms of 5 (${times[*]}); lease ttl 3000 ms, candidates try every 500 ms"
