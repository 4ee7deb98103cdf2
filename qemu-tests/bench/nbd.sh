#!/usr/bin/env bash
# NBD throughput and 4k IOPS: boot-nbd (example `nbd-serve`) against `nbdkit file`
# and `qemu-nbd`, all serving the same random base on loopback in the same run.
#
# boot-nbd is measured through copy-on-write overlays: "empty" (every read falls
# through to the base) and "full" (every chunk allocated in the overlay), and the
# read-only base export. Throughput: `nbdcopy nbd://... /dev/null`, N runs per server,
# alternating; sequential write: nbdcopy of a random file into a fresh overlay (vs
# overwriting the others' files); IOPS: fio's nbd engine, 4k random read / write, iodepth 32.
#
#   qemu-tests/bench/nbd.sh                    # SIZE_MB=256 N=5 FIO_N=3 FIO_SECS=5
#   N=9 SIZE_MB=512 qemu-tests/bench/nbd.sh
#   FIO_N=0 qemu-tests/bench/nbd.sh          # throughput only
#
# Needs nbdkit, qemu-nbd (qemu-utils), nbdcopy (libnbd-bin), fio. Uses CARGO_TARGET_DIR.
set -euo pipefail

N=${N:-5}
SIZE_MB=${SIZE_MB:-256}
FIO_N=${FIO_N:-3}
FIO_SECS=${FIO_SECS:-5}
repo=$(cd "$(dirname "$0")/../.." && pwd)

for t in nbdkit qemu-nbd nbdcopy nbdinfo fio python3; do
  command -v "$t" >/dev/null || { echo "nbd bench: $t not installed" >&2; exit 1; }
done

echo "== building nbd-serve example (release)"
(cd "$repo" && cargo build --quiet --release -p boot-nbd --example nbd-serve)
target=${CARGO_TARGET_DIR:-$repo/target}
serve="$target/release/examples/nbd-serve"

work=$(mktemp -d /tmp/nbdbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > "$work/base.raw"
# nbdkit and qemu-nbd get their own writable copies (the IOPS test writes).
cp "$work/base.raw" "$work/kit.raw"
cp "$work/base.raw" "$work/qemu.raw"

"$serve" --root "$work/store" --listen 127.0.0.1:0 --base bench="$work/base.raw" \
  --overlay empty=bench --overlay full=bench $(for i in $(seq "$N"); do echo "--overlay w$i=bench"; done) > "$work/serve.out" 2> "$work/serve.log" &
pids+=($!)
kit_port=$(free_port)
nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$kit_port" file file="$work/kit.raw" 2> "$work/nbdkit.log" &
pids+=($!)
qemu_port=$(free_port)
qemu-nbd -f raw -b 127.0.0.1 -p "$qemu_port" -x bench -t --shared=16 "$work/qemu.raw" 2> "$work/qemu-nbd.log" &
pids+=($!)

# Await readiness: our server prints its address; the others answer nbdinfo.
for _ in $(seq 100); do grep -q '^listening on' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
ours=$(sed -n 's/^listening on //p' "$work/serve.out")
[ -n "$ours" ] || { echo "nbd-serve did not start:"; cat "$work/serve.log"; exit 1; }
for u in "nbd://127.0.0.1:$kit_port/" "nbd://127.0.0.1:$qemu_port/bench"; do
  for _ in $(seq 100); do nbdinfo --size "$u" >/dev/null 2>&1 && break; sleep 0.1; done
  nbdinfo --size "$u" >/dev/null
done

# Fill the "full" overlay (every chunk allocated) with the base's bytes.
nbdcopy "$work/base.raw" "nbd://$ours/full"

declare -A URI=(
  [ours-empty]="nbd://$ours/empty"
  [ours-full]="nbd://$ours/full"
  [ours-base]="nbd://$ours/bench"
  [nbdkit]="nbd://127.0.0.1:$kit_port/"
  [qemu-nbd]="nbd://127.0.0.1:$qemu_port/bench"
)
order=(ours-empty nbdkit ours-full qemu-nbd ours-base)

# Check every export really serves the base before timing anything.
for k in "${order[@]}"; do
  nbdcopy "${URI[$k]}" "$work/check.raw"
  cmp -s "$work/check.raw" "$work/base.raw" || { echo "$k serves wrong data"; exit 1; }
done
rm -f "$work/check.raw"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A TP
echo "== nbdcopy -> /dev/null, ${SIZE_MB} MiB, N=$N (alternating)"
for i in $(seq "$N"); do
  for k in "${order[@]}"; do
    t0=$(date +%s.%N)
    nbdcopy "${URI[$k]}" /dev/null
    t1=$(date +%s.%N)
    TP[$k]+="$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l) "
  done
done
declare -A TPM
for k in "${order[@]}"; do
  TPM[$k]=$(echo "${TP[$k]}" | tr ' ' '\n' | grep . | median)
  printf '%-11s median %8.1f MiB/s   runs: %s\n' "$k" "${TPM[$k]}" "${TP[$k]}"
done
for k in ours-empty ours-full ours-base; do
  printf 'ratio %s/nbdkit = %.2f   %s/qemu-nbd = %.2f\n' "$k" \
    "$(echo "${TPM[$k]} / ${TPM[nbdkit]}" | bc -l)" "$k" "$(echo "${TPM[$k]} / ${TPM[qemu-nbd]}" | bc -l)"
done

fio_iops() { # uri rw
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth=32 \
    --runtime="$FIO_SECS" --time_based --size="${SIZE_MB}M" --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))'
}
# Sequential write: a fresh (empty) overlay per run for us, overwrite in place for the
# others (their files are fully allocated already); nbdcopy flushes at the end.
echo "== nbdcopy file -> export (write), ${SIZE_MB} MiB, N=$N (alternating)"
head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > "$work/src.raw"
declare -A WR
for i in $(seq "$N"); do
  for k in ours-fresh nbdkit qemu-nbd; do
    u=${URI[$k]:-"nbd://$ours/w$i"}
    t0=$(date +%s.%N)
    nbdcopy "$work/src.raw" "$u"
    t1=$(date +%s.%N)
    WR[$k]+="$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l) "
  done
done
declare -A WRM
for k in ours-fresh nbdkit qemu-nbd; do
  WRM[$k]=$(echo "${WR[$k]}" | tr ' ' '\n' | grep . | median)
  printf '%-11s median %8.1f MiB/s   runs: %s\n' "$k" "${WRM[$k]}" "${WR[$k]}"
done
printf 'ratio ours-fresh/nbdkit = %.2f   ours-fresh/qemu-nbd = %.2f\n' \
  "$(echo "${WRM[ours-fresh]} / ${WRM[nbdkit]}" | bc -l)" "$(echo "${WRM[ours-fresh]} / ${WRM[qemu-nbd]}" | bc -l)"

[ "$FIO_N" -gt 0 ] || exit 0
declare -A IO
echo "== fio nbd engine, 4k random, iodepth 32, ${FIO_SECS}s, N=$FIO_N (alternating)"
for rw in randread randwrite; do
  if [ "$rw" = randread ]; then set -- ours-empty nbdkit ours-full qemu-nbd; else set -- ours-full nbdkit qemu-nbd; fi
  for i in $(seq "$FIO_N"); do
    for k in "$@"; do IO[$rw/$k]+="$(fio_iops "${URI[$k]}" "$rw") "; done
  done
  declare -A IOM=()
  for k in "$@"; do
    IOM[$k]=$(echo "${IO[$rw/$k]}" | tr ' ' '\n' | grep . | median)
    printf '%-9s %-11s median %8d IOPS   runs: %s\n' "$rw" "$k" "${IOM[$k]}" "${IO[$rw/$k]}"
  done
  for k in "$@"; do
    case $k in ours-*)
      printf '%-9s ratio %s/nbdkit = %.2f   %s/qemu-nbd = %.2f\n' "$rw" "$k" \
        "$(echo "${IOM[$k]} / ${IOM[nbdkit]}" | bc -l)" "$k" "$(echo "${IOM[$k]} / ${IOM[qemu-nbd]}" | bc -l)";;
    esac
  done
done
