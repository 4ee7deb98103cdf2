#!/usr/bin/env bash
# qemu-tests/bench/reprovision.sh: re-purposing a running node, decision -> agent
# ready on the new image, in the QEMU lab through boot-server:
#   warm: `boot-server node kexec` (agent downloads kernel+initrd, kexec_file_load)
#   cold: `boot-server node reboot` (firmware, PXE/iPXE, HTTP, kernel)
# N runs each (default 5), alternating warm/cold; the image alternates between
# `lab` and `lab-b` (same files, another name) so every run is a real move.
# Prints each run and the medians. Usage: qemu-tests/bench/reprovision.sh [-n RUNS] [--firmware bios|uefi]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
runs=5 firmware=bios timeout=240
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --firmware) firmware="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=../lib/lab.sh
. "$here/../lib/lab.sh"
lab_require_root || exit 0
server="${CARGO_TARGET_DIR:-$repo/target}/release/boot-server"
[ -x "$server" ] || { echo "build boot-server first: cargo build --release -p boot-server" >&2; exit 1; }
lab_gc
lab_create reprov
lab_start_boot_server "$server" "$LAB_DIR/state"
config="$LAB_SERVER_CONFIG"
cli() { "$server" --config "$config" "$@"; }
sed -e 's/^name = "lab"/name = "lab-b"/' "$repo/images/lab/image.toml" > "$LAB_DIR/lab-b.toml"
cli image add --server-path "$LAB_DIR/lab-b.toml" >/dev/null
mac=52:54:00:30:00:01
lab_start_guest --name n --firmware "$firmware" --mac "$mac" --stamp --reboot
t0="$(awk -v t="${LAB_GUEST_T0[n]}" 'BEGIN { printf "%.0f", t * 1000 }')"
cli node timeline "$mac" --since-ms "$t0" --wait "$timeout" | tail -n 1 >&2

# One move: $1 = warm|cold, $2 = image; prints seconds from decision to agent ready.
move() {
    local kind="$1" image="$2" t1 line
    t1="$(date +%s%3N)"
    if [ "$kind" = warm ]; then
        cli node kexec "$mac" "$image" >/dev/null
    else
        cli assign --mac "$mac" "$image"
        cli node reboot "$mac" >/dev/null
    fi
    line="$(cli node timeline "$mac" --since-ms "$t1" --wait "$timeout" | grep " agent    ready on $image " | tail -n 1)" || { echo FAIL; return; }
    awk '{ print $1 }' <<<"$line"
}
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
warm=() cold=() image=lab
for i in $(seq "$runs"); do
    for kind in warm cold; do
        [ "$image" = lab ] && image=lab-b || image=lab
        t="$(move "$kind" "$image")"
        echo "run $i $kind -> $image: $t s"
        [ "$t" = FAIL ] && continue
        if [ "$kind" = warm ]; then warm+=("$t"); else cold+=("$t"); fi
    done
done
wm="$(printf '%s\n' "${warm[@]}" | grep . | median || true)"
cm="$(printf '%s\n' "${cold[@]}" | grep . | median || true)"
echo "median warm (kexec): ${wm:--} s (${#warm[@]}/$runs ok)"
echo "median cold (reboot through firmware + PXE): ${cm:--} s (${#cold[@]}/$runs ok)"
