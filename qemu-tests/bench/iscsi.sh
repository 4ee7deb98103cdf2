#!/usr/bin/env bash
# qemu-tests/bench/iscsi.sh: boot-server's iSCSI target against Debian's tgt (tgtd),
# same run, same base file, same initiator (libiscsi's iscsi-perf), both on loopback
# inside a private network namespace: sequential read MB/s (128 KiB requests) and
# 4 KiB random read IOPS, median of RUNS runs of SECS seconds each, and the ratio
# boot-server / tgt. boot-server serves the base through an empty overlay attached to
# a node (CHAP, as a node logs in); tgt serves the base file itself (rdwr backing
# store, no authentication). The goal is a ratio >= 1.0.
# Usage: qemu-tests/bench/iscsi.sh [--size-mib N] [--runs N] [--secs S] [--queue N]
#   defaults: 256 MiB base, 5 runs, 5 s each, 32 requests in flight.
# Needs root (namespace), iscsi-perf + iscsi-inq (libiscsi-bin), tgtd + tgtadm (tgt),
# curl and target/release/boot-server.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
size_mib=256 runs=5 secs=5 queue=32
while [ $# -gt 0 ]; do
    case "$1" in
        --size-mib) size_mib="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --secs) secs="$2"; shift 2 ;;
        --queue) queue="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
t0="$(date +%s.%N)"
die() { echo "bench/iscsi: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespace)"
for t in iscsi-perf iscsi-inq tgtd tgtadm curl ip; do
    command -v "$t" >/dev/null || die "$t not installed (qemu-tests/install-deps.sh)"
done
server="${CARGO_TARGET_DIR:-$repo/target}/release/boot-server"
[ -x "$server" ] || die "missing $server (cargo build --release -p boot-server)"

ns="iscsiboot-bench-$$"
work="$(mktemp -d /tmp/iscsiboot-bench.XXXXXX)"
cport=$((20000 + $$ % 10000))   # tgtd's management port (its socket is per port)
pids=()
cleanup() {
    local p
    # tgtd ignores SIGTERM while it has targets: SIGKILL (nothing of it is kept).
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    # Safety net: anything still running inside our own namespace.
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
ip netns add "$ns"
ip -n "$ns" link set lo up
inns() { ip netns exec "$ns" "$@"; }

head -c "$((size_mib << 20))" /dev/urandom > "$work/base.raw"

# boot-server: the base, an empty overlay attached to a node whose address is loopback.
mkdir -p "$work/images"
cat > "$work/boot-server.toml" <<EOF
state_dir = "$work/state"
images_dir = "$work/images"
[http]
listen = "127.0.0.1:8080"
[tftp]
enabled = false
[nbd]
listen = "127.0.0.1:10809"
[iscsi]
enabled = true
listen = "127.0.0.1:3260"
[engine]
enabled = false
EOF
# Not through inns: $! of a backgrounded function is a subshell, and killing
# it would leave the server running.
ip netns exec "$ns" "$server" --config "$work/boot-server.toml" serve > "$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    inns curl -sf -o /dev/null http://127.0.0.1:8080/healthz && break
    sleep 0.1
done
cli() { "$server" --config "$work/boot-server.toml" "$@"; }
mac=52:54:00:15:00:99
cli disk add-base bbase "$work/base.raw" >/dev/null
cli disk create bov --base bbase >/dev/null
cli node add --mac "$mac" >/dev/null
attach="$(cli disk attach bov --node "$mac")"
word() { awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }' <<<"$attach"; }
iqn="$(word target)" user="$(word chap-user)" secret="$(word chap-secret)"
[ -n "$secret" ] || die "disk attach printed no iSCSI login: $attach"
# An enrolled node's first script fetch binds its address (loopback here).
inns curl -sf -o /dev/null "http://127.0.0.1:8080/ipxe/$mac"
ours="iscsi://$user%$secret@127.0.0.1:3260/$iqn/0"
for _ in $(seq 50); do inns iscsi-inq "$ours" >/dev/null 2>&1 && break; sleep 0.2; done
inns iscsi-inq "$ours" >/dev/null 2>&1 || die "cannot log in to boot-server's target"

# tgt: the same base file, LUN 1 (LUN 0 is tgt's controller).
ip netns exec "$ns" tgtd -f -C "$cport" --iscsi portal=127.0.0.1:3261 > "$work/tgtd.log" 2>&1 &
pids+=($!)
tgt() { inns tgtadm -C "$cport" --lld iscsi "$@"; }
for _ in $(seq 50); do tgt --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
tgt --op new --mode target --tid 1 -T iqn.2026-12.bench:tgt
tgt --op new --mode logicalunit --tid 1 --lun 1 -b "$work/base.raw"
tgt --op bind --mode target --tid 1 -I ALL
theirs="iscsi://127.0.0.1:3261/iqn.2026-12.bench:tgt/1"
inns iscsi-inq "$theirs" >/dev/null || die "cannot log in to tgt"

# iscsi-perf prints a progress line per second and, at the end, a summary line
# `iops average N (M MB/s)`: those two figures are what we keep.
perf() {
    local url="$1"; shift
    inns timeout $((secs + 20)) iscsi-perf -m "$queue" -t "$secs" "$@" "$url" 2>&1 | tr '\r' '\n' > "$work/perf.out" || true
}
figure() { # iops | mbs
    local line
    line="$(grep -a -E '^iops average [0-9]+ \([0-9.]+ MB/s\)' "$work/perf.out" | tail -n 1)"
    [ -n "$line" ] || { echo "bench/iscsi: no summary from iscsi-perf:" >&2; tail -n 5 "$work/perf.out" >&2; echo 0; return; }
    case "$1" in
        iops) sed -E 's/^iops average ([0-9]+) .*/\1/' <<<"$line" ;;
        mbs) sed -E 's/^iops average [0-9]+ \(([0-9.]+) MB.*/\1/' <<<"$line" ;;
    esac
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A res
for i in $(seq "$runs"); do
    for who in ours theirs; do
        url="$ours"; [ "$who" = theirs ] && url="$theirs"
        perf "$url" -b 256
        res[$who.seq]+="$(figure mbs) "
        perf "$url" -b 8 -r
        res[$who.rand]+="$(figure iops) "
    done
done
m() { tr ' ' '\n' <<<"${res[$1]}" | grep -v '^$' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
os="$(m ours.seq)" ts="$(m theirs.seq)" orr="$(m ours.rand)" tr_="$(m theirs.rand)"
echo "iSCSI read, ${size_mib} MiB base, iscsi-perf -m $queue, median of $runs x ${secs}s (loopback, namespace $ns)"
printf '%-28s %14s %14s %8s\n' "" "boot-server" "tgt" "ratio"
printf '%-28s %14s %14s %8s\n' "sequential read MB/s (128K)" "$os" "$ts" "$(ratio "$os" "$ts")"
printf '%-28s %14s %14s %8s\n' "random read IOPS (4K)" "$orr" "$tr_" "$(ratio "$orr" "$tr_")"
echo "runs: boot-server seq [${res[ours.seq]% }] rand [${res[ours.rand]% }]; tgt seq [${res[theirs.seq]% }] rand [${res[theirs.rand]% }]"
echo "bench/iscsi: elapsed $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
