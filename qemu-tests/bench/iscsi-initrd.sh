#!/usr/bin/env bash
# What carrying open-iscsi costs a lab boot: the lab initramfs (initrd.img) against
# initrd-iscsi.img (the same plus iscsistart, iscsid and their libraries, used only by images
# with disk_transport = "iscsi"), same kernel, direct kernel boot under TCG (as the
# lab runs), no network, interleaved runs: sizes, and the median time from QEMU launch
# to LAB-INIT-READY (wall clock) and the guest's uptime at LAB-INIT-START.
#
#   qemu-tests/bench/iscsi-initrd.sh [-n RUNS]     # default 5; needs images/build/lab
set -uo pipefail
n=5
[ "${1:-}" = -n ] && n="$2"
repo=$(cd "$(dirname "$0")/../.." && pwd)
d="$repo/images/build/lab"
[ -f "$d/initrd-iscsi.img" ] || { echo "no $d/initrd-iscsi.img (images/build-lab-image.sh with open-iscsi)" >&2; exit 1; }
work=$(mktemp -d /tmp/iscsi-initrd.XXXXXX)
trap 'rm -rf "$work"' EXIT
run() {
    local ird="$1" log="$work/serial" t0 t1 pid up
    : >"$log"
    t0=$(date +%s.%N)
    qemu-system-x86_64 -accel tcg -m 384 -smp 1 -display none -monitor none -serial "file:$log" -nic none \
        -kernel "$d/vmlinuz" -initrd "$d/$ird" -no-reboot \
        -append "console=ttyS0 quiet cryptomgr.notests no_timer_check lab.nodhcp=1 lab.noagent=1" 2>/dev/null &
    pid=$!
    for _ in $(seq 2400); do grep -aq LAB-INIT-READY "$log" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    t1=$(date +%s.%N)
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    up=$(grep -ao 'LAB-INIT-START uptime=[0-9.]*' "$log" | sed 's/.*=//')
    echo "$ird $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') ${up:-nan}" >>"$work/times"
}
for _ in $(seq "$n"); do run initrd.img; run initrd-iscsi.img; done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '%-18s %10s %14s %16s\n' initrd bytes ready_s uptime_start_s
for i in initrd.img initrd-iscsi.img; do
    printf '%-18s %10s %14s %16s\n' "$i" "$(stat -c %s "$d/$i")" \
        "$(awk -v i="$i" '$1 == i { print $2 }' "$work/times" | median)" \
        "$(awk -v i="$i" '$1 == i { print $3 }' "$work/times" | median)"
done
echo "medians of $n interleaved runs; load $(cut -d' ' -f1 /proc/loadavg)"
