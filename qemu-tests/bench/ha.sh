#!/usr/bin/env bash
# Several-server benchmark (a script, not a test): in the same run,
#  1. DHCP exchanges/s and server CPU per exchange of boot-server with the
#     SQLite store and with the PostgreSQL store (perfdhcp relaying, as
#     bench/dhcp.sh does: client namespace over a veth to a server namespace);
#  2. designated-controller takeover after kill -9 of the controller, median
#     of 5 (two servers on one database; time from the kill until the other
#     server holds the lease, read from the database).
# Usage: qemu-tests/bench/ha.sh [rate] [seconds] [clients]   (defaults 2000 10 5000)
# Needs root, perfdhcp (kea-admin), PostgreSQL (qemu-tests/lib/test-postgres.sh).
set -euo pipefail
rate=${1:-2000}
secs=${2:-10}
clients=${3:-5000}
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
db="habench_$$"
psql_ -d postgres -c "CREATE DATABASE $db" >/dev/null
url="postgres://postgres@%2F${pgdir//\//%2F}:$pgport/$db"

tag=hab$$
s=${tag}s c=${tag}c
work=$(mktemp -d "$target/ha-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$s" 2>/dev/null || true
  ip netns del "$c" 2>/dev/null || true
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$s"; ip netns add "$c"
ip link add "${tag}a" netns "$s" type veth peer name "${tag}b" netns "$c"
ip -n "$s" addr add 10.9.0.1/16 dev "${tag}a"; ip -n "$s" link set "${tag}a" up; ip -n "$s" link set lo up
ip -n "$c" addr add 10.9.0.2/16 dev "${tag}b"; ip -n "$c" link set "${tag}b" up; ip -n "$c" link set lo up

wait_port67() {
  for _ in $(seq 1 200); do
    ip netns exec "$s" ss -Hlun 'sport = :67' | grep -q . && return 0
    sleep 0.05
  done
  echo "server did not bind port 67"; exit 1
}
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
acks_of() { awk '/^\*\*\*Statistics for: REQUEST-ACK/ {x=1} /^\*\*\*Statistics for: DISCOVER/ {x=0} x && /^received packets:/ {s+=$3} END {print s+0}' "$1"; }
config() { # name extra-store-lines...
  local name=$1; shift
  printf '%s\n' "state_dir = \"$work/$name\"" "images_dir = \"$work/images\"" \
    'server_ip = "10.9.0.1"' "interface = \"${tag}a\"" \
    '[http]' 'listen = "127.0.0.1:0"' '[tftp]' 'enabled = false' '[nbd]' 'enabled = false' \
    '[ra]' 'enabled = false' '[dhcp]' 'mode = "full"' 'proxy_port = 0' \
    '[[dhcp.subnet]]' 'network = "10.9.0.0/16"' 'range = ["10.9.1.0", "10.9.255.254"]' 'lease_secs = 3600' \
    "$@" >"$work/$name.toml"
}
mkdir -p "$work/images"
declare -A rate_of us_of
dhcp_run() { # name
  local name=$1 pid acks cpu
  ip netns exec "$s" env RUST_LOG=warn "$bin" --config "$work/$name.toml" serve >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!); pid=$!
  wait_port67
  ip netns exec "$c" perfdhcp -4 -l 10.9.0.2 -b mac=00:0c:01:02:03:04 -r "$rate" -p "$secs" -R "$clients" \
    -d 2 -W 2000000 10.9.0.1 >"$work/$name.txt" 2>&1 || true
  cpu=$(cpu_secs "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  acks=$(acks_of "$work/$name.txt")
  rate_of[$name]=$((acks / secs))
  us_of[$name]=$(awk -v c="$cpu" -v a="$acks" 'BEGIN { if (a > 0) printf "%.1f", c * 1e6 / a; else print "n/a" }')
  printf '%-28s %6s exchanges/s   server CPU %s us per exchange   (%s ACKs, offered %s/s for %s s)\n' \
    "$name" "${rate_of[$name]}" "${us_of[$name]}" "$acks" "$rate" "$secs"
}
echo "== DHCP: boot-server with SQLite, then PostgreSQL (perfdhcp, relayed, $clients clients)"
config sqlite
dhcp_run sqlite
config postgres '[store]' "url = \"$url\"" 'server_name = "bench"'
dhcp_run postgres
awk -v a="${rate_of[postgres]}" -v b="${rate_of[sqlite]}" 'BEGIN { if (b > 0) printf "ratio PostgreSQL / SQLite exchanges/s: %.2f\n", a / b }'
echo "leases in PostgreSQL after the run: $(psql_ -d "$db" -c 'SELECT count(*) FROM leases')"

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
