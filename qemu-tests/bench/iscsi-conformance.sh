#!/usr/bin/env bash
# libiscsi's whole conformance suite (iscsi-test-cu, every SCSI and iSCSI family) against
# boot-iscsi, one family per iscsi-test-cu run, printing per family: tests passed/total,
# how many of the passes were skips (the suite counts "[SKIPPED] X is not implemented"
# as a pass when the target answers INVALID COMMAND OPERATION CODE), and the time.
# Not run by CI (CI runs the claimed families in boot-server/iscsi/tests/conformance.rs).
#
#   qemu-tests/bench/iscsi-conformance.sh             # SIZE_MB=64
#   SIZE_MB=256 qemu-tests/bench/iscsi-conformance.sh SCSI.Read10 iSCSI.iSCSITMF
#
# The LUN is an overlay on a random base; SCSI.ReadOnly runs against the base (read-only).
# Needs iscsi-test-cu (libiscsi-bin). Builds the iscsi-serve example (release).
set -euo pipefail
SIZE_MB=${SIZE_MB:-64}
repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../lib/summary.sh
. "$repo/qemu-tests/lib/summary.sh"
command -v iscsi-test-cu >/dev/null || { echo "iscsi-conformance: iscsi-test-cu not installed (libiscsi-bin)" >&2; exit 1; }

echo "== building the iscsi-serve example (release)"
(cd "$repo" && cargo build --quiet --release -p boot-iscsi --example iscsi-serve)
target=${CARGO_TARGET_DIR:-$repo/target}
work=$(mktemp -d /tmp/iscsi-conf.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
head -c "$((SIZE_MB << 20))" /dev/urandom >"$work/base.img"
iqn=iqn.2026-12.bench.boot
"$target/release/examples/iscsi-serve" --root "$work/store" --listen 127.0.0.1:0 \
  --base deb="$work/base.img" --overlay node=deb \
  --target "$iqn:node=overlay:node" --target "$iqn:base=base:deb" >"$work/out" 2>"$work/log" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/out")
[ -n "$addr" ] || { echo "iscsi-serve did not start"; cat "$work/log"; exit 1; }

families=("$@")
[ ${#families[@]} -gt 0 ] || mapfile -t families < <(iscsi-test-cu --list 2>&1 | grep -E '^(SCSI|iSCSI)\.[A-Za-z0-9_-]+$')
t0=$(date +%s)
printf '%-30s %7s %7s %7s %8s\n' family passed total skipped seconds
tot_p=0 tot_t=0 tot_s=0
for f in "${families[@]}"; do
  lun="$iqn:node"
  [ "$f" = SCSI.ReadOnly ] && lun="$iqn:base"
  s=$(date +%s.%N)
  out=$(timeout 300 iscsi-test-cu --dataloss --verbose -i iqn.2026-12.bench:a -I iqn.2026-12.bench:b \
        --test="$f" "iscsi://$addr/$lun/0" 2>&1 || true)
  e=$(date +%s.%N)
  read -r total ran passed failed _ < <(echo "$out" | awk '$1=="tests"{print $2, $3, $4, $5, $6}') || true
  skipped=$(echo "$out" | grep -E '^ +Test: .*\[SKIPPED\]' | grep -c -v 'PERSISTENT RESERVE IN is not implemented.$' || true)
  printf '%-30s %7s %7s %7s %8.2f\n' "$f" "${passed:-?}" "${total:-?}" "$skipped" "$(echo "$e - $s" | bc)"
  if [ -n "${total:-}" ] && [ "${failed:-1}" = 0 ] && [ "$ran" = "$total" ]; then
    t_ok "$f" >/dev/null
  else
    t_fail "$f"
  fi
  tot_p=$((tot_p + ${passed:-0})) tot_t=$((tot_t + ${total:-0})) tot_s=$((tot_s + skipped))
done
echo "tests: $tot_p/$tot_t passed ($tot_s of them skipped by the suite); $(( $(date +%s) - t0 )) s"
t_summary
