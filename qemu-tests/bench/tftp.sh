#!/usr/bin/env bash
# TFTP throughput: boot-server (`boot-server serve`, as users run it: its TFTP
# server with the boot server's audit events, serving from its images directory)
# against dnsmasq's built-in TFTP server. Both run on the loopback of a private
# network namespace created here (dnsmasq can only serve TFTP on port 69); curl
# fetches a 64 MiB file from each, alternating, N times per block size, and the
# medians are printed with each server's median CPU time per MB (utime + stime
# over the fetch) and the load.
# Then the same with the crate's RFC 7440 client (example `tftpget`) asking
# windowsize W at blksize 1468: a server without windowsize (dnsmasq 2.90)
# leaves it out of its OACK and the client runs lock-step; the window each
# server granted is printed.
#
#   sudo qemu-tests/bench/tftp.sh            # N=5, sizes 1468 and 512, windows 1 4 16
#   N=9 SIZE_MB=32 BLKSIZES="1468" WINDOWS="4" qemu-tests/bench/tftp.sh
#   SPIN_US=0 qemu-tests/bench/tftp.sh      # boot-server's [tftp] spin_us (default 50)
#   ASYNC_TFTP=1 qemu-tests/bench/tftp.sh   # also measure the async-tftp crate
#     (builds boot-server/tftp/bench/async-tftp-server; or give ASYNC_TFTP_BIN=path)
#
# Needs root (ip netns), dnsmasq and curl. Uses CARGO_TARGET_DIR if set.
set -euo pipefail

N=${N:-5}
SIZE_MB=${SIZE_MB:-64}
BLKSIZES=${BLKSIZES:-"1468 512"}
WINDOWS=${WINDOWS:-"1 4 16"}
repo=$(cd "$(dirname "$0")/../.." && pwd)

if [ "$(id -u)" != 0 ]; then
  echo "tftp bench: SKIP (needs root for a network namespace)"
  exit 0
fi
for t in dnsmasq curl ip; do
  command -v "$t" >/dev/null || { echo "tftp bench: $t not installed" >&2; exit 1; }
done

target=${CARGO_TARGET_DIR:-$repo/target}
bootsrv="$target/release/boot-server"
tftpget="$target/release/examples/tftpget"
# BENCH_PREBUILT=1 (CI's bench smoke): use what the cargo suite built, no build here.
if [ -z "${BENCH_PREBUILT:-}" ]; then
  echo "== building boot-server and the tftpget example (release)"
  (cd "$repo" && cargo build --quiet --release -p boot-server --bin boot-server && cargo build --quiet --release -p boot-tftp --example tftpget)
fi
for x in "$bootsrv" "$tftpget"; do
  [ -x "$x" ] || { echo "tftp bench: $x not built (cargo build --release -p boot-server -p boot-tftp --bins --examples)" >&2; exit 1; }
done
if [ -n "${ASYNC_TFTP:-}" ] && [ -z "${ASYNC_TFTP_BIN:-}" ]; then
  echo "== building async-tftp comparison server (release)"
  (cd "$repo/boot-server/tftp/bench/async-tftp-server" && cargo build --quiet --release --target-dir "$target/async-tftp-server")
  ASYNC_TFTP_BIN="$target/async-tftp-server/release/async-tftp-server"
fi

ns="tftpbench$$"
work=$(mktemp -d /tmp/tftpbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # Safety net: anything still running inside our own namespace.
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

chmod 755 "$work"
mkdir -m 755 "$work/root"
head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > "$work/root/big"
echo hello > "$work/root/small"
chmod 644 "$work/root/"*

ip netns add "$ns"
ip -n "$ns" link set lo up
inns() { ip netns exec "$ns" "$@"; }

ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root \
  --listen-address=127.0.0.1 --bind-interfaces --enable-tftp --tftp-root="$work/root" \
  --quiet-tftp --pid-file="$work/dnsmasq.pid" --log-facility="$work/dnsmasq.log" &
pids+=($!)
mkdir -m 700 "$work/loaders" "$work/state"
cat > "$work/boot-server.toml" <<EOF
state_dir = "$work/state"
images_dir = "$work/root"
loaders_dir = "$work/loaders"
server_ip = "127.0.0.1"
[http]
listen = "127.0.0.1:0"
[tftp]
listen = "127.0.0.1:6969"
spin_us = ${SPIN_US:-50}
[dhcp]
mode = "off"
[nbd]
enabled = false
[ra]
enabled = false
EOF
ip netns exec "$ns" env RUST_LOG=warn "$bootsrv" --config "$work/boot-server.toml" serve > "$work/boot-server.log" 2>&1 &
pids+=($!)
# Server process by port (ip netns exec execs the server: $! is its pid).
declare -A SPID=([6969]=$!)

# Optional third contender, run as `$ASYNC_TFTP_BIN DIR 127.0.0.1:7070`.
if [ -n "${ASYNC_TFTP_BIN:-}" ]; then
  ip netns exec "$ns" "$ASYNC_TFTP_BIN" "$work/root" 127.0.0.1:7070 > "$work/async.log" 2>&1 &
  pids+=($!)
fi

# Wait (bounded) until every server answers a real TFTP request.
ready() { inns curl -sf --max-time 1 "tftp://127.0.0.1:$1/small" -o /dev/null; }
for port in 69 6969 ${ASYNC_TFTP_BIN:+7070}; do
  for _ in $(seq 100); do ready $port && break; sleep 0.1; done
  ready $port || { echo "server on port $port did not come up" >&2; cat "$work"/*.log >&2; exit 1; }
done

SPID[69]=$(cat "$work/dnsmasq.pid" 2>/dev/null || pgrep -f "tftp-root=$work/root" | head -1)
[ -n "${ASYNC_TFTP_BIN:-}" ] && SPID[7070]=$(pgrep -f "$ASYNC_TFTP_BIN" | head -1)
hz=$(getconf CLK_TCK)
# CPU clock ticks (utime + stime) the server on PORT has used so far.
ticks() { awk '{print $14 + $15}' "/proc/${SPID[$1]}/stat"; }
# cpu_note PORT TICKS_BEFORE: appends the server's CPU µs per MB of the last fetch
# to $work/cpu.PORT.
cpu_note() {
  awk -v a="$2" -v b="$(ticks "$1")" -v hz="$hz" -v mb="$SIZE_MB" \
    'BEGIN { printf "%.0f\n", (b - a) * 1e6 / hz / (mb * 1.048576) }' >> "$work/cpu.$1"
}
cpu_median() { median < "$work/cpu.$1"; rm -f "$work/cpu.$1"; }

# fetch PORT BLKSIZE -> prints MB/s (10^6 bytes), checks the bytes.
fetch() {
  local speed c0
  c0=$(ticks "$1")
  speed=$(inns curl -sf --max-time 120 --tftp-blksize "$2" -w '%{speed_download}' \
    "tftp://127.0.0.1:$1/big" -o "$work/out")
  cpu_note "$1" "$c0"
  cmp -s "$work/out" "$work/root/big" || { echo "port $1: data differs" >&2; exit 1; }
  awk -v s="$speed" 'BEGIN { printf "%.1f\n", s / 1e6 }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

names=(boot-server dnsmasq)
ports=(6969 69)
if [ -n "${ASYNC_TFTP_BIN:-}" ]; then
  names+=(async-tftp)
  ports+=(7070)
fi

echo "== ${SIZE_MB} MiB file, N=$N runs per server and block size, order rotated (MB/s = 10^6 B/s)"
for bs in $BLKSIZES; do
  declare -A runs=()
  k=${#names[@]}
  for i in $(seq "$N"); do
    for j in $(seq 0 $((k - 1))); do
      s=$(((i + j) % k))
      runs[$s]+="$(fetch "${ports[$s]}" "$bs") "
    done
  done
  line="blksize $bs:"
  for s in $(seq 0 $((k - 1))); do
    med[$s]=$(printf '%s\n' ${runs[$s]} | median)
    line+=" ${names[$s]} ${med[$s]} MB/s, CPU $(cpu_median "${ports[$s]}") us/MB [${runs[$s]% }],"
  done
  echo "${line%,}  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  for s in $(seq 1 $((k - 1))); do
    echo "  ratio boot-server/${names[$s]} at $bs: $(awk -v a="${med[0]}" -v b="${med[$s]}" 'BEGIN { printf "%.2f", a / b }')"
  done
  unset runs
done

# fetchw PORT WINDOW -> prints MB/s with tftpget (blksize 1468), checks the
# bytes, and records the window the server granted in $work/granted.PORT.
fetchw() {
  local line c0
  c0=$(ticks "$1")
  line=$(inns "$tftpget" --blksize 1468 --windowsize "$2" "127.0.0.1:$1" big "$work/out")
  cpu_note "$1" "$c0"
  cmp -s "$work/out" "$work/root/big" || { echo "port $1: data differs" >&2; exit 1; }
  echo "$line" | sed -n 's/.*windowsize=\([0-9]*\).*/\1/p' > "$work/granted.$1"
  echo "$line" | sed -n 's/.*mb_per_s=\([0-9.]*\).*/\1/p'
}

echo "== RFC 7440 client (example tftpget), blksize 1468, windowsize asked W, N=$N"
for w in $WINDOWS; do
  declare -A runs=()
  k=${#names[@]}
  for i in $(seq "$N"); do
    for j in $(seq 0 $((k - 1))); do
      s=$(((i + j) % k))
      runs[$s]+="$(fetchw "${ports[$s]}" "$w") "
    done
  done
  line="windowsize $w:"
  for s in $(seq 0 $((k - 1))); do
    med[$s]=$(printf '%s\n' ${runs[$s]} | median)
    line+=" ${names[$s]} ${med[$s]} MB/s, CPU $(cpu_median "${ports[$s]}") us/MB (granted $(cat "$work/granted.${ports[$s]}")) [${runs[$s]% }],"
  done
  echo "${line%,}  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  for s in $(seq 1 $((k - 1))); do
    echo "  ratio boot-server/${names[$s]} at windowsize $w: $(awk -v a="${med[0]}" -v b="${med[$s]}" 'BEGIN { printf "%.2f", a / b }')"
  done
  unset runs
done
