#!/usr/bin/env bash
# TFTP under an unauthenticated flood: figures, not a pass/fail test (the
# regression tests are boot-server/tftp/tests/limits.rs and netascii_memory.rs).
#
#   sudo qemu-tests/bench/tftp-flood.sh          # SIZE_MB=64 TRIES=5
#
# In a private network namespace, against the example `tftpd` (default
# limits: 8 transfers per client address, 512 in total):
#  1. netascii flood: 64 loopback addresses x 8 = 512 netascii requests for a
#     SIZE_MB text file (timeout 255, never ACKed), plus 512 over the limits.
#     Prints the server's RSS before, during and its peak (VmHWM).
#  2. one-address flood: 512 octet requests with timeout 255 from 127.0.0.1,
#     then a client on 127.0.0.2 measures the time to its first DATA block
#     (RRQ -> OACK -> ACK 0 -> DATA 1), TRIES times; and curl fetches a file.
#  3. the same with 512 requests spread over 64 addresses (the total limit
#     is full; the server evicts the oldest never-ACKed transfer): how long
#     until another client is served.
# Needs root (ip netns), python3 and curl. Uses CARGO_TARGET_DIR if set.
set -euo pipefail

SIZE_MB=${SIZE_MB:-64}
TRIES=${TRIES:-5}
repo=$(cd "$(dirname "$0")/../.." && pwd)

if [ "$(id -u)" != 0 ]; then
  echo "tftp-flood: SKIP (needs root for a network namespace)"
  exit 0
fi
for t in python3 curl ip; do
  command -v "$t" >/dev/null || { echo "tftp-flood: $t not installed" >&2; exit 1; }
done

echo "== building tftpd example (release)"
(cd "$repo" && cargo build --quiet --release -p boot-tftp --example tftpd)
tftpd=${CARGO_TARGET_DIR:-$repo/target}/release/examples/tftpd

ns="tftpflood$$"
work=$(mktemp -d /tmp/tftpflood.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

chmod 755 "$work"
mkdir -m 755 "$work/root"
python3 - "$work/root/big.txt" "$SIZE_MB" <<'PY'
import sys
line = b"kernel vmlinuz console=ttyS0\rroot=/dev/nbd0 quiet splash ....\n"
with open(sys.argv[1], "wb") as f:
    block = line * (1 << 14)
    for _ in range(int(sys.argv[2]) * (1 << 20) // len(block)):
        f.write(block)
PY
head -c 2000000 /dev/urandom > "$work/root/boot.efi"
chmod 644 "$work/root/"*

cat > "$work/flood.py" <<'PY'
"""flood.py MODE SERVER_PORT ... ; see the calling script."""
import socket, sys, time

def rrq(name, mode, *opts):
    p = b"\x00\x01" + name.encode() + b"\0" + mode.encode() + b"\0"
    for o in opts:
        p += o.encode() + b"\0"
    return p

def flood(port, name, mode, addrs, per_addr):
    """Sends per_addr requests from each address; returns the sockets (kept open)."""
    socks = []
    req = rrq(name, mode, "timeout", "255", "blksize", "1468")
    for a in addrs:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((a, 0))
        for _ in range(per_addr):
            s.sendto(req, ("127.0.0.1", port))
        socks.append(s)
    return socks

def count_errors(socks, wait, expect=None):
    n = 0
    end = time.time() + wait
    for s in socks:
        s.settimeout(0.01)
    while time.time() < end:
        for s in socks:
            try:
                while True:
                    p = s.recv(70000)
                    if p[:2] == b"\x00\x05":
                        n += 1
                        if n == expect:
                            return n
            except (socket.timeout, BlockingIOError):
                pass
    return n

def first_block(port, src, timeout=10.0):
    """Seconds from RRQ to DATA 1, or None if refused / no answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(timeout)
    t = time.monotonic()
    s.sendto(rrq("boot.efi", "octet", "blksize", "1468", "tsize", "0"), ("127.0.0.1", port))
    try:
        p, peer = s.recvfrom(70000)
        if p[:2] != b"\x00\x06":
            return None
        s.sendto(b"\x00\x04\x00\x00", peer)
        while True:
            p, _ = s.recvfrom(70000)
            if p[:4] == b"\x00\x03\x00\x01":
                dt = time.monotonic() - t
                s.sendto(b"\x00\x05\x00\x00\x00", peer)  # done: end the transfer
                return dt
    except socket.timeout:
        return None

mode, port = sys.argv[1], int(sys.argv[2])
addrs64 = ["127.0.1.%d" % i for i in range(1, 65)]
if mode == "netascii":
    t = time.monotonic()
    socks = flood(port, "big.txt", "netascii", addrs64, 16)
    n = count_errors(socks, 30.0, expect=512)
    print("errors_received %d (of 512 over the per-address limit) after %.1f s" % (n, time.monotonic() - t), flush=True)
    sys.stdin.readline()  # hold the sockets until told
elif mode == "one":
    tries = int(sys.argv[3])
    res = []
    for _ in range(tries):
        socks = flood(port, "boot.efi", "octet", ["127.0.0.1"], 512)
        res.append(first_block(port, "127.0.0.2"))
        print("errors_received", count_errors(socks, 0.5), flush=True)
        for s in socks:
            s.close()
    print("first_block_ms", " ".join("refused" if r is None else "%.1f" % (r * 1e3) for r in res))
elif mode == "spread":
    socks = flood(port, "boot.efi", "octet", addrs64, 8)
    t = time.monotonic()
    refusals = 0
    while True:
        r = first_block(port, "127.0.0.2", timeout=1.0)
        if r is not None:
            break
        refusals += 1
        time.sleep(0.05)
    print("served_after_s %.2f refusals_before %d" % (time.monotonic() - t, refusals))
PY

ip netns add "$ns"
ip -n "$ns" link set lo up
inns() { ip netns exec "$ns" "$@"; }
rss() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MiB  ", $1, $2 / 1024 }' "/proc/$1/status"; echo; }

start_server() {
  ip netns exec "$ns" "$tftpd" --listen 127.0.0.1:6969 --root "$work/root" > "$work/tftpd.out" 2> "$work/tftpd.log" &
  server=$!
  pids+=($server)
  for _ in $(seq 100); do grep -q listening "$work/tftpd.out" && break; sleep 0.05; done
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; }

echo "== 1. netascii flood: 64 addresses x 16 requests for a ${SIZE_MB} MiB text file (timeout 255, never ACKed)"
start_server
echo -n "server before: "; rss "$server"
mkfifo "$work/hold"
inns python3 "$work/flood.py" netascii 6969 < "$work/hold" > "$work/netascii.out" &
fl=$!
pids+=($fl)
exec 9> "$work/hold"
for _ in $(seq 200); do grep -q errors_received "$work/netascii.out" && break; sleep 0.1; done
cat "$work/netascii.out"
echo -n "server during (512 transfers open): "; rss "$server"
sleep 5   # the transfers are still open (1 s x 6 tries); counting passes done
echo -n "server 5 s later: "; rss "$server"
exec 9>&-
wait "$fl" 2>/dev/null || true
stop_server

echo "== 2. one-address flood: 512 requests (timeout 255) from 127.0.0.1, client on 127.0.0.2, $TRIES tries"
start_server
inns python3 "$work/flood.py" one 6969 "$TRIES"

inns python3 "$work/flood.py" one 6969 1 > /dev/null &
fl=$!
ok=$(inns curl -sf --max-time 30 --interface 127.0.0.2 --tftp-blksize 1468 -o /dev/null -w '%{time_starttransfer} %{time_total}' "tftp://127.0.0.1:6969/boot.efi" || echo failed)
wait "$fl" || true
echo "curl (from 127.0.0.2) 2 MB during the flood: time to first byte / total (s): $ok"
echo -n "server: "; rss "$server"
stop_server

echo "== 3. total limit full: 64 addresses x 8 requests (never ACKed), then a client on 127.0.0.2"
start_server
inns python3 "$work/flood.py" spread 6969
stop_server
