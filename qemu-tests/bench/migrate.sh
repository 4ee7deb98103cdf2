#!/usr/bin/env bash
# qemu-tests/bench/migrate.sh: throughput of `env export` and `env import` (figures, not a
# test). Two boot servers on loopback (own state dirs, HTTP/NBD on 127.0.0.1 ports, DHCP
# and TFTP off). Server 1 holds environment `bench`: image lab, a 1 GiB base (`benchbase`:
# the lab root file system at its start, RUNS of random data up to FILL_MB, the rest
# holes) and the overlay of slot 0 with 10 % of the disk (102 MiB, in 1 MiB runs spread
# over the disk) written as random data. Per run: export to a file, import into server 2
# (under a fresh name, which reuses the base after the first run, so import is timed
# on a server without the base: each run restarts server 2 on a fresh state dir).
# Beside it, the conventional tool in the same run: `tar --sparse` of the base file and
# the overlay's files piped through `zstd -3` (and back: `zstd -d | tar -x`).
# Prints per run and medians: seconds, MB/s of disk data (base data + overlay allocated),
# bundle size against the raw disk data and against tar+zstd.
# Usage: qemu-tests/bench/migrate.sh [-n RUNS] [--fill-mb N]   (default 3 runs, 256 MB)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
runs=3 fill_mb=256
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --fill-mb) fill_mb="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
td="${CARGO_TARGET_DIR:-$repo/target}"
bin="${MIGRATE_SERVER_BIN:-$td/release/boot-server}"
[ -x "$bin" ] || { echo "missing $bin (cargo build --release -p boot-server)" >&2; exit 1; }
rootfs="$repo/images/build/lab/rootfs.raw"
[ -f "$rootfs" ] || { echo "missing $rootfs (images/build-lab-image.sh)" >&2; exit 1; }
work="$(mktemp -d "${TMPDIR:-/tmp}/bench-migrate.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# start N PORT: a server on a fresh state dir; sets CONF to its config path.
start() {
    local n="$1" port="$2" dir="$work/s$1"
    rm -rf "$dir"; mkdir -p "$dir/state"
    cat > "$dir/server.toml" <<TOML
state_dir = "$dir/state"
images_dir = "$repo/images"
server_ip = "127.0.0.1"
[http]
listen = "127.0.0.1:$port"
[tftp]
enabled = false
[nbd]
enabled = true
listen = "127.0.0.1:$((port + 1))"
[iscsi]
enabled = false
TOML
    "$bin" --config "$dir/server.toml" serve > "$dir/server.log" 2>&1 &
    pids+=($!)
    local i
    for i in $(seq 200); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && { CONF="$dir/server.toml"; return 0; }
        sleep 0.1
    done
    tail -n 20 "$dir/server.log" >&2
    return 1
}

# The 1 GiB base: rootfs, then FILL_MB of random data in 4 MiB runs every 32 MiB, holes.
base="$work/benchbase.raw"
cp --sparse=always "$rootfs" "$base"
truncate -s 1G "$base"
rootfs_mb=$(( $(stat -c %s "$rootfs") / 1048576 + 1 ))
off=$(( (rootfs_mb + 31) / 32 * 32 ))
left=$fill_mb
while [ "$left" -gt 0 ] && [ "$off" -lt 1020 ]; do
    dd if=/dev/urandom of="$base" bs=1M seek="$off" count=4 conv=notrunc status=none
    off=$((off + 32)); left=$((left - 4))
done

start 1 18181; c1="$CONF"
cli1() { "$bin" --config "$c1" "$@"; }
cli1 disk add-base benchbase "$base" --server-path >/dev/null 2>&1 || cli1 disk add-base benchbase "$base" >/dev/null
cli1 env create bench --image lab --disk-base benchbase --max 1 --inactive >/dev/null
cli1 disk create bench-slot0 --base benchbase >/dev/null
# 10 % of the disk written in the overlay: 102 runs of 1 MiB, one every 10 MiB, written
# straight into the overlay's files (data at the same offset, map state 1 = data) while
# nothing has it open.
ov="$work/s1/state/disks/overlays/bench-slot0"
python3 - "$ov" <<'PY'
import os, sys
d = sys.argv[1]
CH = 64 * 1024
with open(os.path.join(d, "data"), "r+b") as data, open(os.path.join(d, "map"), "r+b") as m:
    for i in range(102):
        off = i * 10 * 1048576
        data.seek(off); data.write(os.urandom(1048576))
        m.seek(4096 + off // CH); m.write(b"\x01" * (1048576 // CH))
    data.flush(); os.fsync(data.fileno()); m.flush(); os.fsync(m.fileno())
PY
base_data=$(( $(du -B1 "$base" | cut -f1) ))
ov_data=$(( 102 * 1048576 ))
raw=$(( base_data + ov_data ))
echo "disk data: base $((base_data / 1048576)) MiB allocated of 1024 MiB, overlay $((ov_data / 1048576)) MiB (10 %); raw total $((raw / 1048576)) MiB"
printf '%-4s %10s %9s %10s %9s %12s %8s | %10s %9s %10s %12s\n' run export_s MB/s import_s MB/s bundle_MB ratio tarzst_s MB/s untar_s tarzst_MB
ex=() im=() tz=() ut=() bs=() ts=()
for r in $(seq "$runs"); do
    start 2 18281; c2="$CONF"
    cli2() { "$bin" --config "$c2" "$@"; }
    t0=$(now); cli1 env export bench -o "$work/b.bundle" 2>/dev/null; t1=$(now)
    cli2 env import "$work/b.bundle" >/dev/null 2>&1 || { echo "import failed" >&2; cli2 env import "$work/b.bundle"; exit 1; }
    t2=$(now)
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
    # Conventional: tar --sparse + zstd, and back.
    t3=$(now)
    tar -C "$work/s1/state/disks" --sparse -cf - bases/benchbase.raw overlays/bench-slot0 | zstd -q -3 -T1 > "$work/c.tar.zst"
    t4=$(now)
    mkdir -p "$work/untar"; zstd -q -d -c "$work/c.tar.zst" | tar -C "$work/untar" -xf -; t5=$(now)
    rm -rf "$work/untar"
    e=$(secs "$t0" "$t1") i=$(secs "$t1" "$t2") c=$(secs "$t3" "$t4") u=$(secs "$t4" "$t5")
    b=$(stat -c %s "$work/b.bundle") z=$(stat -c %s "$work/c.tar.zst")
    ex+=("$e") im+=("$i") tz+=("$c") ut+=("$u") bs+=("$b") ts+=("$z")
    printf '%-4s %10s %9.1f %10s %9.1f %12.1f %8.3f | %10s %9.1f %10s %12.1f\n' "$r" "$e" \
        "$(awk -v r="$raw" -v s="$e" 'BEGIN { print r / 1e6 / s }')" "$i" \
        "$(awk -v r="$raw" -v s="$i" 'BEGIN { print r / 1e6 / s }')" \
        "$(awk -v b="$b" 'BEGIN { print b / 1e6 }')" "$(awk -v b="$b" -v r="$raw" 'BEGIN { print b / r }')" \
        "$c" "$(awk -v r="$raw" -v s="$c" 'BEGIN { print r / 1e6 / s }')" "$u" "$(awk -v z="$z" 'BEGIN { print z / 1e6 }')"
done
me=$(printf '%s\n' "${ex[@]}" | median) mi=$(printf '%s\n' "${im[@]}" | median)
mc=$(printf '%s\n' "${tz[@]}" | median) mu=$(printf '%s\n' "${ut[@]}" | median)
mb=$(printf '%s\n' "${bs[@]}" | median) mz=$(printf '%s\n' "${ts[@]}" | median)
echo "median of $runs: export $me s ($(awk -v r="$raw" -v s="$me" 'BEGIN { printf "%.1f", r / 1e6 / s }') MB/s), import $mi s ($(awk -v r="$raw" -v s="$mi" 'BEGIN { printf "%.1f", r / 1e6 / s }') MB/s);" \
    "tar --sparse | zstd -3: $mc s ($(awk -v r="$raw" -v s="$mc" 'BEGIN { printf "%.1f", r / 1e6 / s }') MB/s), back $mu s"
echo "bundle $(awk -v b="$mb" 'BEGIN { printf "%.1f", b / 1e6 }') MB = $(awk -v b="$mb" -v r="$raw" 'BEGIN { printf "%.3f", b / r }') x raw disk data ($(awk -v r="$raw" 'BEGIN { printf "%.1f", r / 1e6 }') MB);" \
    "tar+zstd $(awk -v z="$mz" 'BEGIN { printf "%.1f", z / 1e6 }') MB; export/tar+zstd time ratio $(awk -v a="$me" -v b="$mc" 'BEGIN { printf "%.2f", a / b }')"
