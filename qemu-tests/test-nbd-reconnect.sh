#!/usr/bin/env bash
# qemu-tests/test-nbd-reconnect.sh: a node whose root file system is on its NBD overlay
# survives a boot-server restart. A BIOS guest boots with bootsrv.root=nbd:... (as in
# test-boot-server.sh nbdroot) on a copy of the lab image whose command line has
# lab.rootprobe=1: the disk's init writes, syncs, drops caches and reads back a file on
# the root every 2 s and prints `LAB-ROOT-PROBE n=N ok|bad`. Once probes run, the test
# kills boot-server (SIGKILL: the NBD connection dies without a goodbye) and starts it
# again; the initramfs's disk keeper (node-agent attach-disk --persist) must reconnect
# the root disk, so later probes read back what they wrote. Prints the elapsed time.
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
lab_start_boot_server "$server" "$state" || { t_fail "boot-server starts"; finish; }
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

lab_start_guest --name rc --firmware bios --mac "$mac" --stamp
log="${LAB_GUEST_LOG[rc]}"
dump() { echo "--- console:"; tr -d '\r' < "$log" | tail -n 30; echo "--- server log:"; tail -n 15 "$LAB_DIR/server.log"; }
if lab_wait_console rc 'LAB-ROOT-PROBE n=2 ok' "$timeout"; then
    t_ok "guest boots with its root on NBD and probes its root file system"
else
    t_fail "guest boots with its root on NBD and probes its root file system"; dump; lab_cleanup; finish
fi
t_check "the initramfs left a disk keeper behind" grep -aq 'kept connected by pid' "$log"

# Restart boot-server the hard way: SIGKILL, then start it again on the same state.
last() { tr -d '\r' < "$log" | grep -ao 'LAB-ROOT-PROBE n=[0-9]*' | tail -n1 | sed 's/.*n=//'; }
n0="$(last)"
kill -9 "${LAB_PID[server]}"; wait "${LAB_PID[server]}" 2>/dev/null
t_kill="$(date +%s.%N)"
# The link must actually die: wait for the probe to stall (no new probe for 4 s) or
# for the keeper to report the dead link.
lab_wait_console rc 'nbd link dead' 20 >/dev/null || true
mv "$LAB_DIR/server.log" "$LAB_DIR/server.1.log" 2>/dev/null
if lab_start_boot_server "$server" "$state"; then
    t_ok "boot-server restarts on the same state ($(lab_secs "$t_kill" "$(date +%s.%N)") s down)"
else
    t_fail "boot-server restarts"; finish
fi
target=$((n0 + 3))
if lab_wait_console rc "LAB-ROOT-PROBE n=$target " "$timeout"; then
    t_check "after the restart the root file system writes and reads back (probe $target: $LAB_LINE)" \
        grep -q " ok " <<<"$LAB_LINE "
else
    t_fail "root file system works again after the restart (probe $target never printed)"; dump
fi
bad="$(tr -d '\r' < "$log" | grep -ac 'LAB-ROOT-PROBE n=[0-9]* bad' || true)"
t_check "no probe read back something else ($bad bad)" test "$bad" = 0
t_check "the keeper reconnected the root disk" grep -aq 'nbd reconnected' "$log"
if grep -aqE 'I/O error|EXT4-fs error' "$log"; then
    t_fail "no I/O errors on the root disk"; grep -aE 'I/O error|EXT4-fs error' "$log" | head -n 5
else
    t_ok "no I/O errors on the root disk"
fi
tr -d '\r' < "$log" | grep -aE 'LAB-ROOT-PROBE|nbd|keeper' | sed 's/^/  | /' | tail -n 25
lab_cleanup
finish
