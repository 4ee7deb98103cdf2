#!/usr/bin/env bash
# qemu-tests/test-nbd-reconnect.sh: a node whose root file system is on its NBD overlay
# survives a boot-server restart. A BIOS guest boots with bootsrv.root=nbd:... (as in
# test-boot-server.sh nbdroot) on a copy of the lab image whose command line has
# lab.rootprobe=1: the disk's init writes, syncs, drops caches and reads back a file on
# the root every 2 s and prints `LAB-ROOT-PROBE n=N ok|bad`. Once probes run, the test
# kills boot-server (SIGKILL: the NBD connection dies without a goodbye) and starts it
# again; the initramfs's disk keeper (node-agent attach-disk --persist) must reconnect
# the root disk, so later probes read back what they wrote.
# Beside it, through the same restart, a second guest has its root on iSCSI (the lab
# image's initrd-iscsi.img, disk_transport = "iscsi"): iscsid, started by /init into
# the new root, must log in again so its probes go on as well (skipped when the image
# has no initrd-iscsi.img). Prints the elapsed time.
# Usage: qemu-tests/test-nbd-reconnect.sh [--timeout S]
# Needs root, the lab image (images/build-lab-image.sh) and target/release/boot-server.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
timeout=240
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
t_start="$(date +%s.%N)"
# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
finish() {
    echo "test-nbd-reconnect: elapsed $(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
    t_summary
    exit $?
}
if [ "$(id -u)" != 0 ]; then t_skip "nbd reconnect" "needs root (network namespaces, taps)"; finish; fi
for t in qemu-system-x86_64 curl ip; do
    command -v "$t" >/dev/null || { t_skip "nbd reconnect" "$t is not installed"; finish; }
done
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
[ -x "$server" ] || { t_fail "missing $server (cargo build --release -p boot-server)"; finish; }
[ -f "$repo/images/build/lab/rootfs.raw" ] || { t_fail "missing lab image (images/build-lab-image.sh)"; finish; }

# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"
lab_gc
lab_create nbdrc || { t_fail "lab namespace"; finish; }
state="$LAB_DIR/state"
iscsi_on=(-e '$a [iscsi]' -e '$a enabled = true' -e '$a listen = "10.77.0.1:3260"')
lab_start_boot_server "$server" "$state" "${iscsi_on[@]}" || { t_fail "boot-server starts"; finish; }
config="$LAB_SERVER_CONFIG"
cli() { "$server" --config "$config" "$@"; }

# The lab image with the root probe switched on, under another name.
manifest="$LAB_DIR/lab-probe.toml"
sed -e 's/^name = "lab"/name = "lab-probe"/' \
    -e 's/^cmdline = "\([^"]*\)"/cmdline = "\1 lab.rootprobe=1"/' "$repo/images/lab/image.toml" > "$manifest"
cli image add --server-path "$manifest" >/dev/null || t_fail "image add lab-probe"
mac=52:54:00:20:00:51
cli disk add-base labroot "$repo/images/build/lab/rootfs.raw" >/dev/null
cli disk create "ov-${mac//:/}" --base labroot >/dev/null
cli node add --mac "$mac" >/dev/null
cli disk attach "ov-${mac//:/}" --node "$mac"
cli assign --mac "$mac" lab-probe

# The same over iSCSI: the lab image with initrd-iscsi.img and its root disk as an
# iSCSI target.
imac=52:54:00:20:00:52
iscsi=0
if [ -f "$repo/images/build/lab/initrd-iscsi.img" ]; then
    iscsi=1
    sed -e 's/^name = "lab-probe"/name = "lab-probe-iscsi"/' -e 's|^initrd = .*|initrd = "build/lab/initrd-iscsi.img"|' \
        "$manifest" > "$LAB_DIR/lab-probe-iscsi.toml"
    echo 'disk_transport = "iscsi"' >> "$LAB_DIR/lab-probe-iscsi.toml"
    cli image add --server-path "$LAB_DIR/lab-probe-iscsi.toml" >/dev/null || t_fail "image add lab-probe-iscsi"
    cli disk create "ov-${imac//:/}" --base labroot >/dev/null
    cli node add --mac "$imac" >/dev/null
    cli disk attach "ov-${imac//:/}" --node "$imac" >/dev/null || t_fail "disk attach (iSCSI)"
    cli assign --mac "$imac" lab-probe-iscsi >/dev/null
elif [ -n "${CI:-}" ]; then
    t_fail "iSCSI root: no images/build/lab/initrd-iscsi.img (open-iscsi missing when the image was built)"
else
    t_skip "iSCSI root reconnect" "no images/build/lab/initrd-iscsi.img (install open-iscsi, rebuild the lab image)"
fi

guests=(rc)
lab_start_guest --name rc --firmware bios --mac "$mac" --stamp
if [ "$iscsi" = 1 ]; then
    lab_start_guest --name ri --firmware bios --mac "$imac" --stamp
    guests+=(ri)
fi
declare -A WHAT=([rc]=NBD [ri]=iSCSI)
log_of() { echo "${LAB_GUEST_LOG[$1]}"; }
dump() { echo "--- $1 console:"; tr -d '\r' < "$(log_of "$1")" | tail -n 30; echo "--- server log:"; tail -n 15 "$LAB_DIR/server.log"; }
for g in "${guests[@]}"; do
    if lab_wait_console "$g" 'LAB-ROOT-PROBE n=2 ok' "$timeout"; then
        t_ok "guest boots with its root on ${WHAT[$g]} and probes its root file system"
    else
        t_fail "guest boots with its root on ${WHAT[$g]} and probes its root file system"; dump "$g"; lab_cleanup; finish
    fi
done
t_check "the initramfs left an NBD disk keeper behind" grep -aq 'kept connected by pid' "$(log_of rc)"
[ "$iscsi" = 1 ] && t_check "the initramfs left iscsid behind for the iSCSI root" grep -aq 'LAB-ISCSID pid=' "$(log_of ri)"

# Restart boot-server the hard way: SIGKILL, then start it again on the same state.
last() { tr -d '\r' < "$(log_of "$1")" | grep -ao 'LAB-ROOT-PROBE n=[0-9]*' | tail -n1 | sed 's/.*n=//'; }
declare -A N0
for g in "${guests[@]}"; do N0[$g]="$(last "$g")"; done
kill -9 "${LAB_PID[server]}"; wait "${LAB_PID[server]}" 2>/dev/null
t_kill="$(date +%s.%N)"
# The link must actually die: wait for the probe to stall (no new probe for 4 s) or
# for the keeper to report the dead link.
lab_wait_console rc 'nbd link dead' 20 >/dev/null || true
mv "$LAB_DIR/server.log" "$LAB_DIR/server.1.log" 2>/dev/null
if lab_start_boot_server "$server" "$state" "${iscsi_on[@]}"; then
    t_ok "boot-server restarts on the same state ($(lab_secs "$t_kill" "$(date +%s.%N)") s down)"
else
    t_fail "boot-server restarts"; finish
fi
for g in "${guests[@]}"; do
    target=$((N0[$g] + 3))
    if lab_wait_console "$g" "LAB-ROOT-PROBE n=$target " "$timeout"; then
        t_check "${WHAT[$g]}: after the restart the root file system writes and reads back (probe $target: $LAB_LINE)" \
            grep -q " ok " <<<"$LAB_LINE "
    else
        t_fail "${WHAT[$g]}: root file system works again after the restart (probe $target never printed)"; dump "$g"
    fi
    log="$(log_of "$g")"
    bad="$(tr -d '\r' < "$log" | grep -ac 'LAB-ROOT-PROBE n=[0-9]* bad' || true)"
    t_check "${WHAT[$g]}: no probe read back something else ($bad bad)" test "$bad" = 0
    if grep -aqE 'I/O error|EXT4-fs error' "$log"; then
        t_fail "${WHAT[$g]}: no I/O errors on the root disk"; grep -aE 'I/O error|EXT4-fs error' "$log" | head -n 5
    else
        t_ok "${WHAT[$g]}: no I/O errors on the root disk"
    fi
done
t_check "the keeper reconnected the NBD root disk" grep -aq 'nbd reconnected' "$(log_of rc)"
tr -d '\r' < "$(log_of rc)" | grep -aE 'LAB-ROOT-PROBE|nbd|keeper' | sed 's/^/  | /' | tail -n 25
if [ "$iscsi" = 1 ]; then
    # iscsid logs in once when it adopts the session at start, and again after the
    # connection error the restart causes.
    relogins() { tr -d '\r' < "$(log_of ri)" | grep -ac 'operational after recovery' || true; }
    t_check "iscsid saw the connection drop and logged the iSCSI root in again ($(relogins) logins after recovery)" \
        bash -c "grep -aq 'Kernel reported iSCSI connection .* error' '$(log_of ri)' && [ $(relogins) -ge 2 ]"
    tr -d '\r' < "$(log_of ri)" | grep -aE 'LAB-ROOT-PROBE|iscsid|connection[0-9]|session' | sed 's/^/  | /' | tail -n 25
fi
lab_cleanup
finish
