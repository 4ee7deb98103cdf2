#!/usr/bin/env bash
# qemu-tests/test-sanboot.sh: a BIOS guest (SeaBIOS) and a UEFI guest (OVMF) boot
# through iPXE `sanboot` from their own iSCSI overlay of the sanboot base disk
# (images/build-sanboot-base.sh): boot-server serves with [iscsi] enabled, each node
# has an overlay attached and the image `sanboot-base` (kind sanboot, no san_url), so
# its script sanboots the overlay's target with the node's CHAP login (mutual). The
# disk's bootloader (syslinux / GRUB) loads the kernel, whose initramfs logs in again
# from the iBFT (iscsistart -b) and runs the root's init, which counts boots on the
# disk and syncs. Each guest is then powered off and started again: the second boot
# must see the first boot's record (`boot=2 previous="boot 1 firmware bios|uefi"`).
# Agent attach: a third (BIOS) guest boots the lab image (kernel + initrd-iscsi.img,
# `disk_transport = "iscsi"`) with its root on its own iSCSI overlay of the lab
# rootfs: the initramfs's `node-agent attach-iscsi` logs in with the node's CHAP
# login (iscsistart), mounts the disk and switches root; the agent reports ready; a
# second boot (to its root's init) counts boots=2 on the same disk.
# Prints `N passed, M failed, K skipped` and the elapsed time.
# Usage: qemu-tests/test-sanboot.sh [--timeout S]
# Needs root, the lab image's kernel (images/build-lab-image.sh), the packages of
# images/build-sanboot-base.sh and target/release/boot-server.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
timeout=300
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
t_start="$(date +%s.%N)"
# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
finish() {
    echo "test-sanboot: elapsed $(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
    t_summary
    exit $?
}
if [ "$(id -u)" != 0 ]; then t_skip "sanboot" "needs root (network namespaces, taps)"; finish; fi
for t in qemu-system-x86_64 curl ip; do
    command -v "$t" >/dev/null || { t_skip "sanboot" "$t is not installed"; finish; }
done
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
[ -x "$server" ] || { t_fail "missing $server (cargo build --release -p boot-server)"; finish; }
base="$repo/images/build/sanboot/base.raw"
if "$repo/images/build-sanboot-base.sh"; then
    t_ok "the sanboot base disk builds"
else
    t_fail "the sanboot base disk builds"; finish
fi

# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"
lab_gc
lab_create sanboot || { t_fail "lab namespace"; finish; }
state="$LAB_DIR/state"
lab_start_boot_server "$server" "$state" \
    -e '$a [iscsi]' -e '$a enabled = true' -e '$a listen = "10.77.0.1:3260"' \
    || { t_fail "boot-server starts"; finish; }
config="$LAB_SERVER_CONFIG"
cli() { "$server" --config "$config" "$@"; }

manifest="$LAB_DIR/sanboot-base.toml"
printf 'name = "sanboot-base"\nversion = "1"\nkind = "sanboot"\narchs = ["bios", "uefi-x64"]\n' > "$manifest"
cli image add --server-path "$manifest" >/dev/null || t_fail "image add sanboot-base"
cli disk add-base sanbase "$base" >/dev/null || t_fail "disk add-base"
declare -A MAC=([bios]=52:54:00:15:00:01 [uefi]=52:54:00:15:00:02)
# The lab image with its root over iSCSI (initrd with iscsistart).
agent_mac=52:54:00:15:00:03
lab_ird="$repo/images/build/lab/initrd-iscsi.img"
if [ -f "$lab_ird" ] && [ -f "$repo/images/build/lab/rootfs.raw" ]; then
    sed -e 's/^name = "lab"/name = "lab-iscsi"/' -e 's|^initrd = .*|initrd = "build/lab/initrd-iscsi.img"|' \
        "$repo/images/lab/image.toml" > "$LAB_DIR/lab-iscsi.toml"
    echo 'disk_transport = "iscsi"' >> "$LAB_DIR/lab-iscsi.toml"
    cli image add --server-path "$LAB_DIR/lab-iscsi.toml" >/dev/null || t_fail "image add lab-iscsi"
    cli disk add-base labroot "$repo/images/build/lab/rootfs.raw" >/dev/null || t_fail "disk add-base labroot"
    cli disk create ov-agent --base labroot >/dev/null
    cli node add --mac "$agent_mac" >/dev/null
    cli disk attach ov-agent --node "$agent_mac" >/dev/null || t_fail "disk attach ov-agent"
    cli assign --mac "$agent_mac" lab-iscsi >/dev/null
else
    agent_mac=""
fi
for fw in bios uefi; do
    mac="${MAC[$fw]}"
    cli disk create "ov-$fw" --base sanbase >/dev/null
    cli node add --mac "$mac" >/dev/null
    cli disk attach "ov-$fw" --node "$mac" | grep -q "iscsi target iqn.2026-12.boot-server:ov-$fw" \
        || t_fail "disk attach ov-$fw prints its iSCSI target"
    cli assign --mac "$mac" sanboot-base >/dev/null
done

dump() {
    local g="$1"
    echo "--- $g console:"; tr -d '\r' < "${LAB_GUEST_LOG[$g]}" | grep -av '^\s*$' | tail -n 40
    echo "--- server log:"; tail -n 15 "$LAB_DIR/server.log"
}
# boot N: start both guests, wait for each one's N-th boot of its own disk.
boot() {
    local n="$1" fw g
    for fw in bios uefi; do
        # --sga: SeaBIOS and iPXE text (the script's echo) reach the serial log, drawn
        # as screen updates; --stamp's NAME.serial.ts has them as lines.
        local sga=""
        [ "$fw" = bios ] && sga=--sga
        lab_start_guest --name "$fw$n" --firmware "$fw" --mac "${MAC[$fw]}" --mem 384 --stamp $sga
    done
    for fw in bios uefi; do
        g="$fw$n"
        local want="SANBOOT-ROOT-READY boot=$n firmware=$fw"
        [ "$n" = 2 ] && want="$want previous=\"boot 1 firmware $fw\""
        if lab_wait_console "$g" "SANBOOT-ROOT-READY" "$timeout" && [[ "$LAB_LINE" == *"$want"* ]]; then
            t_ok "$fw guest, boot $n: iPXE sanboot -> bootloader -> iBFT login -> root init (${LAB_ELAPSED}s)"
            t_check "$fw guest, boot $n: iPXE sanbooted its overlay's target" \
                grep -aq "boots sanboot-base from iscsi:10.77.0.1::3260::iqn.2026-12.boot-server:ov-$fw" "${LAB_GUEST_LOG[$g]}.ts"
            t_check "$fw guest, boot $n: the initramfs logged in from the iBFT" \
                grep -aq "SANBOOT-INITRAMFS-LOGIN .*target=iqn.2026-12.boot-server:ov-$fw" "${LAB_GUEST_LOG[$g]}"
        else
            t_fail "$fw guest, boot $n: wanted '$want', saw '${LAB_LINE:-nothing}'"; dump "$g"
        fi
    done
    for fw in bios uefi; do lab_stop_guest "$fw$n"; done
}
# Polls the node's timeline (since T0_MS) until its agent is ready on lab-iscsi.
agent_ready() {
    local i
    for i in $(seq $((timeout * 2))); do
        tl="$(cli node timeline "$agent_mac" --since-ms "$1" 2>&1)"
        grep -q "agent    ready on lab-iscsi" <<<"$tl" && return 0
        sleep 0.5
    done
    return 1
}
# The agent attaches its root over iSCSI: boot N of the lab image to agent ready.
agent_boot() {
    local n="$1" g="agent$1"
    lab_start_guest --name "$g" --firmware bios --mac "$agent_mac" --mem 384 --stamp
    local t0_ms
    t0_ms="$(awk -v t="${LAB_GUEST_T0[$g]}" 'BEGIN { printf "%.0f", t * 1000 }')"
    if lab_wait_console "$g" "LAB-ROOT-NBD boots=|LAB-ROOT-ISCSI-FAILED" "$timeout" && [[ "$LAB_LINE" == *"boots=$n"* ]]; then
        t_ok "lab guest, boot $n: node-agent attach-iscsi -> root on iSCSI, boots=$n (${LAB_ELAPSED}s)"
        t_check "lab guest, boot $n: the agent logged in to its overlay's target" \
            grep -aq "iscsi iqn.2026-12.boot-server:ov-agent attached as /dev/sd" "${LAB_GUEST_LOG[$g]}"
        # Boot 1 runs to the agent's ready; boot 2 only has to see boot 1's write.
        local tl=""
        if [ "$n" = 2 ]; then
            :
        elif agent_ready "$t0_ms"; then
            t_ok "lab guest, boot $n: its agent reports ready with its root on iSCSI ($(lab_secs "${LAB_GUEST_T0[$g]}" "$(lab_now)")s)"
        else
            t_fail "lab guest, boot $n: its agent reports ready"; echo "$tl"; dump "$g"
        fi
    else
        t_fail "lab guest, boot $n: wanted 'LAB-ROOT-NBD boots=$n', saw '${LAB_LINE:-nothing}'"; dump "$g"
    fi
    lab_stop_guest "$g"
}
boot 1
boot 2
if [ -n "$agent_mac" ]; then
    a0="$(date +%s.%N)"
    agent_boot 1
    agent_boot 2
    echo "test-sanboot: lab image over iSCSI, two boots: $(awk -v a="$a0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
else
    t_skip "lab image with its root over iSCSI" "no images/build/lab/initrd-iscsi.img (images/build-lab-image.sh with open-iscsi installed)"
fi
# The script fetch brought the node's target up: iPXE's first login was not refused
# (a node whose lease is seconds old would otherwise wait for the export table's
# next refresh and iPXE's 5 s retry).
t_check "no iSCSI login was refused" bash -c "! grep -aq 'iSCSI login refused' '$LAB_DIR/server.log'"
lab_cleanup
finish
