#!/usr/bin/env bash
# NBD read throughput of boot-server itself against `nbdkit file`, same data, same run.
#
# boot-server runs as shipped (`boot-server serve`, its export policy in the path) and is
# read through the admin export name of an empty copy-on-write overlay on a random base
# (every read falls through the overlay map to the base). nbdkit's `file` plugin serves
# a copy of the same base. Each read run is `nbdcopy URI null:`; N runs per server,
# alternating; medians, the ratio and each server's CPU time per MB (utime + stime
# from /proc over the run: machine-load independent) are printed, with the load.
# Then WRITE_N write runs: `nbdcopy --flush base URI` into a fresh empty overlay
# (copy-on-write into the overlay, durable at the end) against nbdkit `file` writing
# a fresh sparse file. Optional 4k random-read IOPS with fio.
#
#   qemu-tests/bench/nbd.sh                  # SIZE_MB=1024 N=7 WRITE_N=5 FIO_N=0
#   N=11 WRITE_N=0 qemu-tests/bench/nbd.sh
#   FIO_N=3 FIO_SECS=5 qemu-tests/bench/nbd.sh
#
# Needs nbdkit, nbdcopy/nbdinfo (libnbd-bin), python3 (fio with FIO_N>0). Builds
# boot-server (release) into CARGO_TARGET_DIR.
set -euo pipefail

N=${N:-7}
WRITE_N=${WRITE_N:-5}
SIZE_MB=${SIZE_MB:-1024}
FIO_N=${FIO_N:-0}
FIO_SECS=${FIO_SECS:-5}
repo=$(cd "$(dirname "$0")/../.." && pwd)

need=(nbdkit nbdcopy nbdinfo python3 bc)
[ "$FIO_N" -gt 0 ] && need+=(fio)
for t in "${need[@]}"; do
  command -v "$t" >/dev/null || { echo "nbd bench: $t not installed" >&2; exit 1; }
done

# BENCH_PREBUILT=1 (CI's bench smoke): use what the cargo suite built.
if [ -z "${BENCH_PREBUILT:-}" ]; then
  echo "== building boot-server (release)"
  (cd "$repo" && cargo build --quiet --release -p boot-server --bin boot-server)
fi
target=${CARGO_TARGET_DIR:-$repo/target}
bs="$target/release/boot-server"

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
cp "$work/base.raw" "$work/kit.raw"

mkdir -p "$work/images"
cat > "$work/bs.toml" <<EOF
state_dir = "$work/state"
images_dir = "$work/images"
[http]
listen = "127.0.0.1:0"
[tftp]
enabled = false
[nbd]
listen = "127.0.0.1:0"
EOF
RUST_LOG=warn,boot_server=info "$bs" --config "$work/bs.toml" serve 2> "$work/bs.log" &
pids+=($!)
declare -A PID=([boot-server]=$!)
kit_port=$(free_port)
nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$kit_port" file file="$work/kit.raw" 2> "$work/nbdkit.log" &
pids+=($!)
PID[nbdkit]=$!

# Await readiness: boot-server logs its addresses; nbdkit answers nbdinfo.
for _ in $(seq 300); do grep -q 'boot-server ready:' "$work/bs.log" 2>/dev/null && break; sleep 0.1; done
nbd=$(sed -n 's/.*boot-server ready:.* nbd=\([0-9.:]*\).*/\1/p' "$work/bs.log")
[ -n "$nbd" ] || { echo "boot-server did not start:"; cat "$work/bs.log"; exit 1; }
# The admin CLI talks to the running server (its admin socket).
"$bs" --config "$work/bs.toml" disk add-base bench "$work/base.raw" >/dev/null
"$bs" --config "$work/bs.toml" disk create empty --base bench >/dev/null
token=$("$bs" --config "$work/bs.toml" admin-token)
kit="nbd://127.0.0.1:$kit_port/"
for _ in $(seq 100); do nbdinfo --size "$kit" >/dev/null 2>&1 && break; sleep 0.1; done

declare -A URI=(
  [boot-server]="nbd://$nbd/admin:$token:empty"
  [nbdkit]="$kit"
)
order=(boot-server nbdkit)

# Both serve the base, byte for byte, before anything is timed.
for k in "${order[@]}"; do
  nbdcopy "${URI[$k]}" "$work/check.raw"
  cmp -s "$work/check.raw" "$work/base.raw" || { echo "$k serves wrong data"; exit 1; }
done
rm -f "$work/check.raw"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# CPU clock ticks (utime + stime, all threads) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A TP CPU
# timed KEY CMD...: runs CMD, appends MB/s to TP[KEY] and the server's CPU µs per MB
# to CPU[KEY].
timed() {
  local k=$1 c0 c1 t0 t1
  shift
  c0=$(ticks "${PID[${k#*:}]}")
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  c1=$(ticks "${PID[${k#*:}]}")
  TP[$k]+="$(echo "$SIZE_MB * 1.048576 / ($t1 - $t0)" | bc -l | xargs printf '%.0f') "
  CPU[$k]+="$(echo "($c1 - $c0) * 1000000 / $hz / ($SIZE_MB * 1.048576)" | bc -l | xargs printf '%.0f') "
}
# report KIND: medians per server and the ratio.
report() {
  local kind=$1 k
  declare -A TPM
  for k in "${order[@]}"; do
    TPM[$k]=$(echo "${TP[$kind:$k]}" | tr ' ' '\n' | grep . | median)
    printf '%-11s %s median %6.0f MB/s  server CPU %4.0f us/MB   runs: %s  cpu: %s\n' "$k" "$kind" \
      "${TPM[$k]}" "$(echo "${CPU[$kind:$k]}" | tr ' ' '\n' | grep . | median)" "${TP[$kind:$k]}" "${CPU[$kind:$k]}"
  done
  printf 'ratio boot-server/nbdkit %s = %.2f   (load: %s)\n' "$kind" \
    "$(echo "${TPM[boot-server]} / ${TPM[nbdkit]}" | bc -l)" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "== nbdcopy URI null:, ${SIZE_MB} MiB, N=$N (alternating; load: $(cut -d' ' -f1-3 /proc/loadavg))"
for i in $(seq "$N"); do
  for k in "${order[@]}"; do timed "read:$k" nbdcopy "${URI[$k]}" null:; done
done
report read

if [ "$WRITE_N" -gt 0 ]; then
  echo "== nbdcopy --flush base URI, ${SIZE_MB} MiB into an empty overlay / a sparse file, N=$WRITE_N"
  for i in $(seq "$WRITE_N"); do
    "$bs" --config "$work/bs.toml" disk create "w$i" --base bench >/dev/null
    timed write:boot-server nbdcopy --flush "$work/base.raw" "nbd://$nbd/admin:$token:w$i"
    # nbdkit keeps the file open: empty it in place (same inode, all holes).
    truncate -s 0 "$work/kit.raw"
    truncate -s $((SIZE_MB * 1024 * 1024)) "$work/kit.raw"
    timed write:nbdkit nbdcopy --flush "$work/base.raw" "$kit"
    if [ "$i" = 1 ]; then
      for u in "nbd://$nbd/admin:$token:w$i" "$kit"; do
        nbdcopy "$u" "$work/check.raw"
        cmp -s "$work/check.raw" "$work/base.raw" || { echo "$u reads back wrong data"; exit 1; }
      done
      rm -f "$work/check.raw"
    fi
    "$bs" --config "$work/bs.toml" disk delete "w$i" >/dev/null
  done
  report write
fi

[ "$FIO_N" -gt 0 ] || exit 0
fio_iops() { # uri
  fio --name=b --ioengine=nbd --uri="$1" --rw=randread --bs=4k --iodepth=32 \
    --runtime="$FIO_SECS" --time_based --size="${SIZE_MB}M" --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int(j["read"]["iops"]))'
}
declare -A IO
echo "== fio nbd engine, 4k randread, iodepth 32, ${FIO_SECS}s, N=$FIO_N (alternating)"
for i in $(seq "$FIO_N"); do
  for k in "${order[@]}"; do IO[$k]+="$(fio_iops "${URI[$k]}") "; done
done
declare -A IOM
for k in "${order[@]}"; do
  IOM[$k]=$(echo "${IO[$k]}" | tr ' ' '\n' | grep . | median)
  printf '%-11s median %8d IOPS   runs: %s\n' "$k" "${IOM[$k]}" "${IO[$k]}"
done
printf 'ratio boot-server/nbdkit = %.2f\n' "$(echo "${IOM[boot-server]} / ${IOM[nbdkit]}" | bc -l)"
