#!/usr/bin/env bash
# Measures the lab image with QEMU direct kernel boot (TCG): seconds from QEMU launch
# to the console marker LAB-AGENT-START (init has mounted, configured and is starting
# the agent), N runs per (kernel, initramfs compression) variant, interleaved, medians.
# Also prints the guest's uptime at LAB-INIT-START (kernel boot, without the bzImage
# self-decompression, which runs before the kernel clock) and LAB-AGENT-START - LAB-INIT-START
# (init). The guest has no NIC (-nic none), so this times firmware + kernel + init
# only. The command line is the one images/lab/image.toml gives the server.
#
# Usage: qemu-tests/bench/image.sh [-n RUNS] [--kernels "K..."] [COMPRESSION...]
#   K: lab (lab kernel, LZ4 bzImage) | lab-<lzo|gzip|zstd|xz> (lab kernel, other bzImage
#      compression; built once, ~5 min CPU) | debian (--debian-kernel)   (default: lab)
#   COMPRESSION: initramfs compression lz4 | gzip | zstd | xz | none   (default: lz4 gzip zstd none)
# Example (lab kernel vs Debian kernel): qemu-tests/bench/image.sh -n 5 --kernels "lab debian" lz4
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../lib/lab.sh
. "$here/../lib/lab.sh"
lab_require_root || exit 0

runs=3
kernels=(lab)
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --kernels) read -r -a kernels <<<"$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
comps=("$@")
[ ${#comps[@]} -gt 0 ] || comps=(lz4 gzip zstd none)
cmdline="$(sed -n 's/^cmdline = "\([^"]*\)".*/\1/p' "$repo/images/lab/image.toml")"

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
uptime_of() { tr -d '\r' < "$1" | sed -n "s/^$2 uptime=\([0-9.]*\).*/\1/p" | head -n 1; }

variants=()
for k in "${kernels[@]}"; do
    case "$k" in
        debian) kargs=(--debian-kernel) ;;
        lab) kargs=() ;;
        lab-*) kargs=(--kernel-compress "${k#lab-}") ;;
        *) echo "unknown kernel $k (lab | lab-<compression> | debian)" >&2; exit 2 ;;
    esac
    for c in "${comps[@]}"; do
        "$repo/images/build-lab-image.sh" "${kargs[@]}" --compress "$c" --out "$repo/images/build/bench-$k-$c" >&2
        variants+=("$k-$c")
    done
done

lab_gc
lab_create img
declare -A times=() kup=() initt=()
# Interleave variants run by run, so load drift on the shared machine hits all alike.
for i in $(seq "$runs"); do
    for v in "${variants[@]}"; do
        out="$repo/images/build/bench-$v"
        g="$v-$i"
        lab_start_guest --name "$g" --nic none --kernel "$out/vmlinuz" \
            --initrd "$out/initrd.img" --append "$cmdline"
        if lab_wait_console "$g" 'LAB-AGENT-START' 120 >/dev/null; then
            times[$v]+="$LAB_ELAPSED "
            a="$(uptime_of "${LAB_GUEST_LOG[$g]}" LAB-INIT-START)"
            b="$(uptime_of "${LAB_GUEST_LOG[$g]}" LAB-AGENT-START)"
            d="$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b - a }')"
            kup[$v]+="$a " initt[$v]+="$d "
            echo "$v run $i: ${LAB_ELAPSED}s to LAB-AGENT-START (guest uptime at LAB-INIT-START ${a}s, init ${d}s)"
        else
            echo "$v run $i: FAILED"
        fi
        lab_stop_guest "$g"
    done
done
base=""
for v in "${variants[@]}"; do
    # shellcheck disable=SC2086
    m="$(printf '%s\n' ${times[$v]:-} | grep . | median)"
    # shellcheck disable=SC2086
    u="$(printf '%s\n' ${kup[$v]:-} | grep . | median)"
    # shellcheck disable=SC2086
    n="$(printf '%s\n' ${initt[$v]:-} | grep . | median)"
    [ -n "$base" ] || base="$m"
    ratio="$(awk -v a="$m" -v b="$base" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }')"
    d="$repo/images/build/bench-$v"
    echo "RESULT variant=$v kernel_bytes=$(stat -c %s "$d/vmlinuz") initrd_bytes=$(stat -c %s "$d/initrd.img") median_s=$m median_uptime_at_init_start_s=$u median_init_to_agent_start_s=$n time_ratio_vs_${variants[0]}=$ratio runs=${times[$v]:-}"
done
