#!/usr/bin/env bash
# DHCP throughput benchmark: perfdhcp (kea-admin) runs full DORA exchanges in a
# client namespace over a veth to a server namespace, first against the
# boot-dhcp example daemon (durable leases: group-committed, fdatasync'ed log
# on disk), the boot-server binary (SQLite), dnsmasq --no-ping and Kea
# (kea-dhcp4, memfile with persist) in the same run, and prints exchanges/s,
# drops, server CPU time per exchange and the ratios.
#
# Usage: qemu-tests/bench/dhcp.sh [rate] [seconds] [clients]
#   defaults: 25000 10 50000. Needs root. Env: CARGO_TARGET_DIR (default
#   /work/targets/dhcp), LEASE_DIR (default: a temp dir under the target dir,
#   on disk so fdatasync is real), SERVERS (default "dhcpd boot-server dnsmasq
#   dnsmasq-ro kea": which to run), PERF_DIR (record `perf record -g` of each
#   server into PERF_DIR/<name>.perf while perfdhcp runs), PERFDHCP_PROCS (split
#   the load over N perfdhcp processes), KEA_MT (Kea's multi-threading with N
#   threads; off, Kea 2.2's default, when unset), GEN=dhcpgen (load from
#   boot-dhcp's lean generator example instead of perfdhcp), COALESCE_US and
#   COMMIT_DELAY_US (boot-server's [dhcp] coalesce_us and [store]
#   commit_delay_us; 0 shows what each buys), R (repeat the whole comparison
#   R times and print the median of each figure). Kea and dnsmasq get the same
#   16 MB receive buffer as perfdhcp (boot-server asks 8 MB for itself).
set -euo pipefail
rate=${1:-25000}
secs=${2:-10}
clients=${3:-50000}
here=$(cd "$(dirname "$0")" && pwd)
# R=n: the whole comparison n times over (each run starts every server afresh),
# then the median of each figure across the runs.
if [ "${R:-1}" -gt 1 ]; then
  runs=$(mktemp -d)
  trap 'rm -rf "$runs"' EXIT
  for i in $(seq 1 "$R"); do
    echo "==== run $i of $R"
    R=1 "$0" "$@" | tee "$runs/$i" | sed 's/^/  | /' # indented: the summary below is what all.sh keeps
  done
  echo
  echo "== medians of $R runs (${GEN:-perfdhcp} -r $rate -p $secs -R $clients)"
  median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
  for label in "boot-server (SQLite, durable)" "kea-dhcp4 (memfile persist)" "dnsmasq --no-ping"; do
    grep -qF "$label" "$runs/1" || continue
    ex=$(cat "$runs"/* | grep -F "$label" | grep ' exchanges/s ' | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "exchanges/s") print $i }' | median)
    us=$(cat "$runs"/* | grep -F "$label" | sed -n 's/.*= \([0-9.]*\) us per exchange.*/\1/p')
    printf '%-36s median %s exchanges/s, %s us per exchange (runs: %s)\n' "$label" "$ex" "$(median <<<"$us")" "$(echo $us)"
  done
  for what in "ratio boot-server / kea" "throughput ratio boot-server / kea" "ratio boot-server / dnsmasq"; do
    vals=$(cat "$runs"/* | grep "^$what: " | sed "s|^$what: \([0-9.]*\).*|\1|")
    [ -n "$vals" ] || continue
    echo "$what: $(echo "$vals" | median) (median of $R; runs: $(echo "$vals" | tr '\n' ' ' | sed 's/ $//'))"
  done
  exit 0
fi
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (network namespaces)"; exit 0; }
command -v perfdhcp >/dev/null || { echo "perfdhcp missing (apt-get install kea-admin)"; exit 1; }
command -v dnsmasq >/dev/null || { echo "dnsmasq missing"; exit 1; }
kea=$(command -v kea-dhcp4 || true) # qemu-tests/install-deps.sh installs kea-dhcp4-server

dhcpd=$target/release/examples/dhcpd
# BENCH_PREBUILT=1 (CI's bench smoke): use what the cargo suite built, no build here.
if [ -z "${BENCH_PREBUILT:-}" ]; then
  (cd "$repo" && CARGO_TARGET_DIR=$target cargo build -q --release -p boot-dhcp --example dhcpd --example dhcpgen)
fi
[ -x "$dhcpd" ] || { echo "dhcp bench: $dhcpd not built (cargo build --release -p boot-dhcp --example dhcpd)"; exit 1; }

servers=" ${SERVERS:-dhcpd boot-server dnsmasq dnsmasq-ro kea} "
servers=${servers//,/ } # SERVERS=boot-server,kea works where spaces cannot (all.sh)
want() { [[ $servers == *" $1 "* ]]; }
perf_start() { # pid name: profile the server while perfdhcp runs (PERF_DIR)
  [ -n "${PERF_DIR:-}" ] || return 0
  mkdir -p "$PERF_DIR"
  perf record -q -g -p "$1" -o "$PERF_DIR/$2.perf" >/dev/null 2>&1 &
  perf_pid=$!
}
perf_stop() { [ -n "${perf_pid:-}" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; perf_pid=""; }; return 0; }

tag=dhb$$
s=${tag}s c=${tag}c si=${tag}a ci=${tag}b
work=$(mktemp -d "${LEASE_DIR:-$target}/dhcp-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$s" 2>/dev/null || true
  ip netns del "$c" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$s"; ip netns add "$c"
ip link add "$si" netns "$s" type veth peer name "$ci" netns "$c"
ip -n "$s" addr add 10.9.0.1/16 dev "$si"; ip -n "$s" link set "$si" up; ip -n "$s" link set lo up
ip -n "$c" addr add 10.9.0.2/16 dev "$ci"; ip -n "$c" link set "$ci" up; ip -n "$c" link set lo up

# perfdhcp's receive socket keeps the kernel default buffer (~200 KB): the
# bursts of ACKs a group commit releases at once overflow it (counted as
# drops, visible as client-side UdpRcvbufErrors). A tiny LD_PRELOAD shim gives
# perfdhcp's sockets a 16 MB buffer (SO_RCVBUFFORCE) without touching host
# sysctls; RAW_PERFDHCP=1 runs perfdhcp unmodified.
preload=""
if [ -z "${RAW_PERFDHCP:-}" ] && command -v cc >/dev/null; then
  cc -shared -fPIC -O2 -o "$work/rcvbuf.so" "$here/../lib/rcvbuf.c" -ldl && preload="$work/rcvbuf.so"
fi

# perfdhcp acts as a relay (giaddr = 10.9.0.2, port 67): the servers see
# relayed DORA and answer to 10.9.0.2:67.
udp_errors() { # namespace: UDP InErrors / RcvbufErrors / SndbufErrors
  ip netns exec "$1" awk '/^Udp:/ { if (!h) { split($0, k); h=1 } else { split($0, v); for (i in k) if (k[i] ~ /InErrors|RcvbufErrors|SndbufErrors/) printf "%s=%s ", k[i], v[i] } }' /proc/net/snmp
}
# PERFDHCP_PROCS=N splits the load over N perfdhcp processes (own relay
# address 10.9.0.2+i and MAC base each), when one generator is the limit.
procs=${PERFDHCP_PROCS:-1}
# GEN=dhcpgen: the lean generator (boot-dhcp's example) instead of perfdhcp, for
# every server alike; it leaves more of these 2 cores to the server under test.
gen=${GEN:-perfdhcp}
dhcpgen=$target/release/examples/dhcpgen
[ "$gen" = perfdhcp ] || [ -x "$dhcpgen" ] || { echo "dhcp bench: $dhcpgen not built"; exit 1; }
for i in $(seq 1 $((procs - 1))); do ip -n "$c" addr add "10.9.0.$((2 + i))/16" dev "$ci"; done
run_perfdhcp() { # output file
  local i ppids=()
  for i in $(seq 0 $((procs - 1))); do
    if [ "$gen" = dhcpgen ]; then
      ip netns exec "$c" "$dhcpgen" --local "10.9.0.$((2 + i))" --server 10.9.0.1 --rate "$((rate / procs))" \
        --secs "$secs" --clients "$((clients / procs))" --mac-base "$i" --drain-ms 2000 >"$1.$i" 2>&1 &
    else
      ip netns exec "$c" env ${preload:+LD_PRELOAD=$preload} perfdhcp -4 -l "10.9.0.$((2 + i))" \
        -b "mac=00:0c:0$i:02:03:04" -r "$((rate / procs))" -p "$secs" -R "$((clients / procs))" \
        -d 2 -W 2000000 ${PERFDHCP_ARGS:-} 10.9.0.1 >"$1.$i" 2>&1 &
    fi
    ppids+=($!)
  done
  wait "${ppids[@]}" || true
  cat "$1".? >"$1"
}
wait_port67() {
  for _ in $(seq 1 200); do
    ip netns exec "$s" ss -Hlun 'sport = :67' | grep -q . && return 0
    sleep 0.05
  done
  echo "server did not bind port 67"; exit 1
}
cpu_secs() { # pid: user+system CPU seconds so far
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"
}
acks_of() { # perfdhcp output: ACKs received
  awk '/^\*\*\*Statistics for: REQUEST-ACK/ {x=1} /^\*\*\*Statistics for: DISCOVER/ {x=0} x && /^received packets:/ {s+=$3} END {print s+0}' "$1"
}
cpu_line() { # file label: server CPU per exchange (from the .cpu file)
  local f=$1 label=$2 a
  a=$(acks_of "$f")
  awk -v c="$(cat "$f.cpu")" -v a="$a" -v l="$label" 'BEGIN {
    if (a > 0) printf "%-36s server CPU %.2f s for %d DORA = %.1f us per exchange\n", l, c, a, c * 1e6 / a }'
  awk -v c="$(cat "$f.cpu")" -v a="$a" 'BEGIN { if (a > 0) printf "%.3f", c * 1e6 / a; else print 0 }' >"$f.us"
}
summary() { # file label
  local f=$1 label=$2
  local r drops sent
  # completed DORA = ACKs received; perfdhcp's own "Rate:" also divides by
  # the -W drain time, so compute exchanges/s over the test period here
  r=$(awk -v secs="$secs" '/^\*\*\*Statistics for: REQUEST-ACK/ {x=1} /^\*\*\*Statistics for: DISCOVER/ {x=0} x && /^received packets:/ {s+=$3} END {printf "%.0f", s/secs}' "$f")
  drops=$(awk '/^drops:/ {s+=$2} END {print s+0}' "$f")
  sent=$(awk '/^sent packets:/ {s+=$3} END {print s+0}' "$f")
  # what the generator managed to offer (perfdhcp is CPU-bound itself on small machines)
  offered=$(awk -v secs="$secs" '/^\*\*\*Statistics for: DISCOVER/ {x=1} /^\*\*\*Statistics for: REQUEST/ {x=0} x && /^sent packets:/ {s+=$3} END {printf "%.0f", s/secs}' "$f")
  printf '%-36s %8s exchanges/s   drops %s of %s packets sent   (the generator offered %s DISCOVER/s)\n' "$label" "$r" "$drops" "$sent" "$offered"
  # what a client waits (the price of batching: group commit, wake-up moderation)
  awk -v l="$label" '/^\*\*\*Statistics for: DISCOVER-OFFER/ {x="do"} /^\*\*\*Statistics for: REQUEST-ACK/ {x="ra"}
    /^avg delay:/ && x { s[x] += $3; n[x]++ } /^max delay:/ && x { if ($3 > m[x]) m[x] = $3 }
    END { if (n["do"] && n["ra"]) printf "%-36s delay DISCOVER-OFFER avg %.2f ms (max %.1f), REQUEST-ACK avg %.2f ms (max %.1f)\n", l, s["do"] / n["do"], m["do"], s["ra"] / n["ra"], m["ra"] }' "$f"
  echo "$r" >"$f.rate"; echo "$drops" >"$f.drops"
}

if want dhcpd; then
  echo "== boot-dhcp example (durable group-committed leases on $(df --output=source "$work" | tail -1)) rate=$rate/s for ${secs}s, $clients clients"
  ip netns exec "$s" "$dhcpd" --interface "$si" --server-ip 10.9.0.1 \
    --subnet 10.9.0.0/16 --range 10.9.1.0-10.9.255.254 --lease-secs 3600 \
    --leases "$work/leases.jsonl" --proxy-port 0 >"$work/dhcpd.out" 2>"$work/dhcpd.err" &
  pids+=($!); dpid=$!
  wait_port67
  perf_start "$dpid" dhcpd
  run_perfdhcp "$work/ours.txt"
  perf_stop
  # server CPU time (user+system, incl. the kernel network path it drives)
  read -r utime stime < <(awk '{print $14, $15}' "/proc/$dpid/stat")
  echo "kernel UDP counters: client ns: $(udp_errors "$c") server ns: $(udp_errors "$s")"
  kill -TERM "$dpid"; wait "$dpid" 2>/dev/null || true
  grep -E "STATS|STORE" "$work/dhcpd.out" || true
  acks=$(sed -n 's/.* acks=\([0-9]*\).*/\1/p' "$work/dhcpd.out")
  awk -v u="$utime" -v s="$stime" -v hz="$(getconf CLK_TCK)" -v a="${acks:-0}" 'BEGIN {
    cpu = (u + s) / hz; if (a > 0) printf "server CPU: %.2f s user+sys for %d DORA = %.1f us per exchange (~%.0f exchanges/s per dedicated core)\n", cpu, a, cpu * 1e6 / a, a / cpu }'
  echo "lease log: $(wc -l <"$work/leases.jsonl") records, $(du -h "$work/leases.jsonl" | cut -f1)"
fi

bootsrv="${BOOT_SERVER:-$repo/target/release/boot-server}"
if ! want boot-server; then
  :
elif [ -x "$bootsrv" ]; then
  echo "== boot-server serve (SQLite store: WAL, synchronous=FULL, group commit)"
  mkdir -p "$work/images"
  printf '%s\n' "state_dir = \"$work/state\"" "images_dir = \"$work/images\"" \
    'server_ip = "10.9.0.1"' "interface = \"$si\"" \
    '[http]' 'listen = "127.0.0.1:0"' '[tftp]' 'enabled = false' '[nbd]' 'enabled = false' \
    '[ra]' 'enabled = false' '[dhcp]' 'mode = "full"' 'proxy_port = 0' \
    ${COALESCE_US:+"coalesce_us = $COALESCE_US"} \
    '[[dhcp.subnet]]' 'network = "10.9.0.0/16"' 'range = ["10.9.1.0", "10.9.255.254"]' 'lease_secs = 3600' \
    >"$work/boot-server.toml"
  [ -n "${COMMIT_DELAY_US:-}" ] && printf '[store]\ncommit_delay_us = %s\n' "$COMMIT_DELAY_US" >>"$work/boot-server.toml"
  ip netns exec "$s" env RUST_LOG=warn "$bootsrv" --config "$work/boot-server.toml" serve >"$work/bs.out" 2>"$work/bs.err" &
  pids+=($!); bpid=$!
  wait_port67
  perf_start "$bpid" boot-server
  run_perfdhcp "$work/boot-server.txt"
  perf_stop
  cpu_secs "$bpid" >"$work/boot-server.txt.cpu"
  kill -TERM "$bpid"; wait "$bpid" 2>/dev/null || true
  echo "leases durable in the store after the run: $(sqlite3 "$work/state/state.db" 'select count(*) from leases')"
else
  echo "== boot-server: $bootsrv not built (cargo build --release -p boot-server); skipped"
fi

if want dnsmasq; then
  echo "== dnsmasq --no-ping"
  ip netns exec "$s" env ${preload:+LD_PRELOAD=$preload} dnsmasq --keep-in-foreground --port=0 --no-ping --interface="$si" --bind-interfaces \
    --dhcp-range=10.9.1.0,10.9.255.254,255.255.0.0,1h --dhcp-lease-max=200000 \
    --dhcp-leasefile="$work/dnsmasq.leases" --pid-file="$work/dnsmasq.pid" --log-facility=/dev/null &
  pids+=($!); mpid=$!
  wait_port67
  perf_start "$mpid" dnsmasq
  run_perfdhcp "$work/dnsmasq.txt"
  perf_stop
  cpu_secs "$mpid" >"$work/dnsmasq.txt.cpu"
  echo "kernel UDP counters (cumulative): client ns: $(udp_errors "$c") server ns: $(udp_errors "$s")"
  kill -TERM "$mpid"; wait "$mpid" 2>/dev/null || true
fi

if want dnsmasq-ro; then
  echo "== dnsmasq --no-ping --leasefile-ro (no lease persistence)"
  ip netns exec "$s" env ${preload:+LD_PRELOAD=$preload} dnsmasq --keep-in-foreground --port=0 --no-ping --interface="$si" --bind-interfaces \
    --dhcp-range=10.9.1.0,10.9.255.254,255.255.0.0,1h --dhcp-lease-max=200000 --leasefile-ro \
    --pid-file="$work/dnsmasq2.pid" --log-facility=/dev/null &
  pids+=($!); mpid=$!
  wait_port67
  run_perfdhcp "$work/dnsmasq-ro.txt"
  kill -TERM "$mpid"; wait "$mpid" 2>/dev/null || true
fi

if ! want kea; then
  :
elif [ -n "$kea" ]; then
  echo "== kea-dhcp4 $("$kea" -v) (memfile, persist: CSV appended, not fsync'ed)"
  # KEA_MT=N: Kea's multi-threading with N threads (off by default in Kea 2.2).
  kea_mt=""
  [ -n "${KEA_MT:-}" ] && kea_mt="
  \"multi-threading\": { \"enable-multi-threading\": true, \"thread-pool-size\": $KEA_MT, \"packet-queue-size\": 1024 },"
  # perfdhcp relays (giaddr 10.9.0.2): UDP sockets, the subnet chosen by giaddr
  cat >"$work/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "$si" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": true, "name": "$work/kea-leases4.csv", "lfc-interval": 0 },$kea_mt
  "valid-lifetime": 3600,
  "subnet4": [ { "id": 1, "subnet": "10.9.0.0/16", "pools": [ { "pool": "10.9.1.0 - 10.9.255.254" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "$work/kea.log" } ], "severity": "WARN" } ]
} }
JSON
  # The same 16 MB receive buffer as perfdhcp (boot-server asks 8 MB itself).
  ip netns exec "$s" env ${preload:+LD_PRELOAD=$preload} KEA_LOCKFILE_DIR="$work" KEA_PIDFILE_DIR="$work" "$kea" -c "$work/kea.json" \
    >"$work/kea.out" 2>&1 &
  pids+=($!); kpid=$!
  wait_port67
  perf_start "$kpid" kea
  run_perfdhcp "$work/kea.txt"
  perf_stop
  cpu_secs "$kpid" >"$work/kea.txt.cpu"
  kill -TERM "$kpid"; wait "$kpid" 2>/dev/null || true
  echo "kea lease file: $(wc -l <"$work/kea-leases4.csv") lines"
else
  echo "== kea-dhcp4 not installed (apt-get install kea-dhcp4-server); skipped"
fi

echo
echo "== results ($gen -r $rate -p $secs -R $clients, DORA, $procs generator process(es))"
[ -f "$work/ours.txt" ] && summary "$work/ours.txt" "boot-dhcp (durable, group commit)"
[ -f "$work/boot-server.txt" ] && summary "$work/boot-server.txt" "boot-server (SQLite, durable)"
[ -f "$work/dnsmasq.txt" ] && summary "$work/dnsmasq.txt" "dnsmasq --no-ping"
[ -f "$work/dnsmasq-ro.txt" ] && summary "$work/dnsmasq-ro.txt" "dnsmasq --no-ping --leasefile-ro"
[ -f "$work/kea.txt" ] && summary "$work/kea.txt" "kea-dhcp4 (memfile persist)"
echo "-- server CPU time per exchange (user+sys of the server process)"
[ -f "$work/boot-server.txt.cpu" ] && cpu_line "$work/boot-server.txt" "boot-server (SQLite, durable)"
[ -f "$work/dnsmasq.txt.cpu" ] && cpu_line "$work/dnsmasq.txt" "dnsmasq --no-ping"
[ -f "$work/kea.txt.cpu" ] && cpu_line "$work/kea.txt" "kea-dhcp4 (memfile persist)"
[ -f "$work/ours.txt.rate" ] && [ -f "$work/dnsmasq.txt.rate" ] && awk -v a="$(cat "$work/ours.txt.rate")" -v b="$(cat "$work/dnsmasq.txt.rate")" \
  'BEGIN { if (b > 0) printf "ratio boot-dhcp / dnsmasq: %.2f\n", a / b }'
[ -f "$work/boot-server.txt.rate" ] && [ -f "$work/dnsmasq.txt.rate" ] && awk -v a="$(cat "$work/boot-server.txt.rate")" -v b="$(cat "$work/dnsmasq.txt.rate")" \
  'BEGIN { if (b > 0) printf "ratio boot-server / dnsmasq: %.2f\n", a / b }'
if [ -f "$work/boot-server.txt.us" ] && [ -f "$work/kea.txt.us" ]; then
  awk -v a="$(cat "$work/boot-server.txt.us")" -v b="$(cat "$work/kea.txt.us")" \
    'BEGIN { if (b > 0) printf "ratio boot-server / kea: %.2f (server CPU per exchange; below 1 is cheaper)\n", a / b }'
  awk -v a="$(cat "$work/boot-server.txt.rate")" -v b="$(cat "$work/kea.txt.rate")" \
    'BEGIN { if (b > 0) printf "throughput ratio boot-server / kea: %.2f\n", a / b }'
fi
if [ -n "${VERBOSE:-}" ]; then for f in "$work"/*.txt; do echo "--- $f"; cat "$f"; done; fi
true
