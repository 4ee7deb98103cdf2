#!/usr/bin/env bash
# Measures the lab image with QEMU direct kernel boot (TCG): seconds from QEMU launch
# to the console marker LAB-INIT-READY, N runs per initramfs compression, medians.
# The guest has no NIC (-nic none), so this times firmware + kernel + init only.
#
# Usage: qemu-tests/bench/image.sh [-n RUNS] [COMPRESSION...]   (default: lz4 gzip zstd none)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../lib/lab.sh
. "$here/../lib/lab.sh"
lab_require_root || exit 0

runs=3
if [ "${1:-}" = "-n" ]; then runs="$2"; shift 2; fi
comps=("$@")
[ ${#comps[@]} -gt 0 ] || comps=(lz4 gzip zstd none)

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

lab_gc
lab_create img
for c in "${comps[@]}"; do
    "$repo/images/build-lab-image.sh" --compress "$c" --out "$repo/images/build/lab-$c" >&2
done
declare -A times=() uptimes=()
# Interleave compressions run by run, so load drift on the shared machine hits all alike.
for i in $(seq "$runs"); do
    for c in "${comps[@]}"; do
        out="$repo/images/build/lab-$c"
        g="$c-$i"
        lab_start_guest --name "$g" --nic none --kernel "$out/vmlinuz" \
            --initrd "$out/initrd.img" --append "console=ttyS0"
        if lab_wait_console "$g" 'LAB-INIT-READY' 120 >/dev/null; then
            times[$c]+="$LAB_ELAPSED "
            up="$(echo "$LAB_LINE" | sed -n 's/.*uptime=\([0-9.]*\).*/\1/p')"
            uptimes[$c]+="$up "
            echo "$c run $i: ${LAB_ELAPSED}s (guest uptime ${up}s)"
        else
            echo "$c run $i: FAILED"
        fi
        lab_stop_guest "$g"
    done
done
for c in "${comps[@]}"; do
    # shellcheck disable=SC2086
    m="$(printf '%s\n' ${times[$c]} | median)"
    # shellcheck disable=SC2086
    u="$(printf '%s\n' ${uptimes[$c]} | median)"
    echo "RESULT compression=$c initrd_bytes=$(stat -c %s "$repo/images/build/lab-$c/initrd.img") median_s=$m median_guest_uptime_s=$u runs=${times[$c]}"
done
