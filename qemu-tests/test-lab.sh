#!/usr/bin/env bash
# qemu-tests/test-lab.sh: end-to-end tests of the lab image and the QEMU lab.
#   1. image build: outputs, initramfs content (lab kernel: no modules; Debian
#      kernel with --debian-kernel: its modules), cache stamp, lab kernel cache
#   1b. direct kernel boot: init keeps a console shell (no panic) when the agent
#      exits and when it is absent
#   2. a BIOS guest and a UEFI guest side by side netboot the lab image through the
#      conventional stack (dnsmasq + nginx) to LAB-INIT-READY with a DHCP address;
#      afterwards no bootlab namespace and no QEMU of that run is left
#   3. a failing run (marker never comes, short timeout) still cleans up
#   4. a run killed by SIGTERM while its guest boots still cleans up
#   5. lab_gc removes namespaces left by dead runs
# Each scenario runs in its own bash process (its own lab and traps), so the
# checks after it see what the lab really left behind. Prints `N passed, M failed`,
# exits non-zero on any failure. Needs root (skips otherwise).
#
# Usage: qemu-tests/test-lab.sh [--timeout S] [TEST...]   (TEST: image direct netboot fail kill gc)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
timeout=240

# ---- scenarios (run as `test-lab.sh --scenario NAME`, one process each) --------------
scenario() {
    # shellcheck source=conventional.sh
    . "$here/conventional.sh"
    case "$1" in
        netboot)
            lab_create t
            conv_start
            lab_start_guest --name bios --firmware bios --nic virtio-net-pci
            lab_start_guest --name uefi --firmware uefi --nic virtio-net-pci
            echo "qemu-pids ${LAB_GUEST_PID[bios]} ${LAB_GUEST_PID[uefi]}"
            local g rc=0
            for g in bios uefi; do
                if lab_wait_console "$g" 'LAB-INIT-READY' "$2" >/dev/null; then
                    echo "$g-ready ${LAB_ELAPSED}s $LAB_LINE"
                else
                    echo "$g-failed"
                    tr -d '\r' < "${LAB_GUEST_LOG[$g]}" | tail -n 20 >&2
                    rc=1
                fi
            done
            return $rc
            ;;
        fail)
            lab_create f
            # No DHCP/HTTP server: the guest never reaches the marker.
            lab_start_guest --name lost --firmware bios
            echo "qemu-pids ${LAB_GUEST_PID[lost]}"
            if lab_wait_console lost 'LAB-INIT-READY' 5; then
                echo "unexpected-ready"
                return 0
            fi
            echo "timed-out"
            return 1
            ;;
        direct)
            # Direct kernel boot without network: init must keep a console shell
            # whether the agent exits (stub) or is absent, and never panic.
            lab_create d
            local img
            for img in lab lab-noagent; do
                lab_start_guest --name "$img" --nic none \
                    --kernel "$2/$img/vmlinuz" --initrd "$2/$img/initrd.img" \
                    --append "console=ttyS0 quiet lab.nodhcp=1"
            done
            echo "qemu-pids ${LAB_GUEST_PID[lab]} ${LAB_GUEST_PID[lab-noagent]}"
            local rc=0
            for img in lab lab-noagent; do
                if lab_wait_console "$img" 'LAB-CONSOLE-SHELL' 120 >/dev/null; then
                    echo "$img-shell ${LAB_ELAPSED}s"
                else
                    echo "$img-noshell"; rc=1
                fi
            done
            for img in lab lab-noagent; do
                if grep -aq 'Kernel panic' "${LAB_GUEST_LOG[$img]}"; then echo "$img-panic"; rc=1; fi
                kill -0 "${LAB_GUEST_PID[$img]}" 2>/dev/null && echo "$img-alive"
                grep -aq 'LAB-AGENT-ABSENT' "${LAB_GUEST_LOG[$img]}" && echo "$img-agent-absent"
                grep -aq 'LAB-AGENT-EXITED' "${LAB_GUEST_LOG[$img]}" && echo "$img-agent-exited"
            done
            return $rc
            ;;
        kill)
            lab_create k
            conv_start
            lab_start_guest --name victim --firmware bios
            echo "qemu-pids ${LAB_GUEST_PID[victim]}"
            echo "ready-to-kill"
            lab_wait_console victim 'LAB-INIT-READY' 600
            ;;
    esac
}

if [ "${1:-}" = "--scenario" ]; then
    scenario "$2" "${3:-}"
    exit $?
fi

# ---- runner -----------------------------------------------------------------------
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout="$2"; shift 2 ;;
        *) break ;;
    esac
done
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(image direct netboot fail kill gc)

# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
if [ "$(id -u)" != 0 ]; then
    t_skip "test-lab.sh" "needs root (network namespaces, tap devices)"
    t_summary; exit
fi

passed=0 failed=0
out="$(mktemp -d /tmp/test-lab.XXXXXX)"
trap 'rm -rf "$out"' EXIT

ok() { echo "ok   - $1"; passed=$((passed + 1)); }
nok() { echo "FAIL - $1${2:+: $2}"; failed=$((failed + 1)); }

# Nothing of run PID left: no namespace bootlab-PID-*, no QEMU of that run alive.
assert_clean() {
    local name="$1" pid="$2" log="$3" left="" p
    left="$(ip netns list | awk '{print $1}' | grep "^bootlab-$pid-" || true)"
    [ -z "$left" ] || { nok "$name leaves nothing" "namespace $left"; return; }
    for p in $(sed -n 's/^qemu-pids //p' "$log"); do
        if kill -0 "$p" 2>/dev/null; then nok "$name leaves nothing" "qemu pid $p alive"; return; fi
    done
    if pgrep -f "bootlab-$pid-" >/dev/null; then
        nok "$name leaves nothing" "process of the run alive: $(pgrep -af "bootlab-$pid-" | head -3)"
        return
    fi
    ok "$name leaves nothing (no namespace, no qemu)"
}

t_image() {
    local o="$out/img"
    if ! "$repo/images/build-lab-image.sh" --out "$o" >"$out/img.log" 2>&1; then
        nok "image builds" "$(tail -n 5 "$out/img.log")"; return
    fi
    ok "image builds ($(stat -c %s "$o/vmlinuz") B kernel, $(stat -c %s "$o/initrd.img") B initrd)"
    local list
    list="$(lz4 -dc "$o/initrd.img" 2>/dev/null | cpio -it --quiet 2>/dev/null || true)"
    local f missing=""
    for f in init bin/busybox bin/sh sbin/udhcpc bin/node-agent usr/share/udhcpc/default.script; do
        grep -qx "$f" <<<"$list" || missing="$missing $f"
    done
    [ -z "$missing" ] && ok "initramfs holds init, busybox, agent" || nok "initramfs content" "missing$missing"
    # The lab kernel has its drivers built in: no module, no load list in the initramfs.
    local kinfo mods
    kinfo="$(file -L "$o/vmlinuz")"
    mods="$(grep -E '\.ko(\.[a-z]+)?$|^etc/modules\.load$' <<<"$list" | head -3 | tr '\n' ' ' || true)"
    if grep -q 'version [0-9.]*-lab ' <<<"$kinfo" && [ -z "$mods" ]; then
        ok "lab kernel ($(sed 's/.*version \([^ ]*\).*/\1/' <<<"$kinfo")), no modules in the initramfs"
    else
        nok "lab kernel, no modules in the initramfs" "kernel: $kinfo; modules: $mods"
    fi
    # The lab kernel is cached: a second request builds nothing.
    if "$repo/images/build-lab-kernel.sh" 2>&1 | grep -q '^build-lab-kernel: cached '; then
        ok "lab kernel cached (no rebuild)"
    else
        nok "lab kernel cached (no rebuild)"
    fi
    # --debian-kernel: Debian's stock kernel, the initramfs carries and loads its modules.
    local od="$out/img-debian"
    if "$repo/images/build-lab-image.sh" --debian-kernel --out "$od" >"$out/img-debian.log" 2>&1; then
        list="$(lz4 -dc "$od/initrd.img" 2>/dev/null | cpio -it --quiet 2>/dev/null || true)"
        missing=""
        grep -qx etc/modules.load <<<"$list" || missing="$missing etc/modules.load"
        grep -q 'virtio_net.ko' <<<"$list" || missing="$missing virtio_net.ko"
        grep -q 'nbd.ko' <<<"$list" || missing="$missing nbd.ko"
        grep -q 'modules.dep$' <<<"$list" || missing="$missing modules.dep"
        if [ -z "$missing" ] && ! file -L "$od/vmlinuz" | grep -q -- '-lab '; then
            ok "--debian-kernel: stock kernel, initramfs holds its modules"
        else
            nok "--debian-kernel image" "missing$missing; $(file -L "$od/vmlinuz")"
        fi
    else
        nok "--debian-kernel image builds" "$(tail -n 5 "$out/img-debian.log")"
    fi
    if "$repo/images/build-lab-image.sh" --out "$o" 2>&1 | grep -q 'up to date'; then
        ok "unchanged inputs: no rebuild"
    else
        nok "unchanged inputs: no rebuild"
    fi
    # The default image (the one the stack serves) must exist for the boot tests.
    "$repo/images/build-lab-image.sh" >/dev/null 2>&1 || nok "default image builds"
}

t_direct() {
    local imgs="$out/direct" log="$out/direct.log" rc=0
    mkdir -p "$imgs"
    "$repo/images/build-lab-image.sh" --out "$imgs/lab" >/dev/null 2>&1 \
        && "$repo/images/build-lab-image.sh" --no-agent --out "$imgs/lab-noagent" >/dev/null 2>&1 \
        || { nok "direct boot images build"; return; }
    bash "$0" --scenario direct "$imgs" >"$log" 2>"$out/direct.err" &
    local pid=$!
    wait $pid || rc=$?
    if grep -q '^lab-shell' "$log" && grep -q '^lab-alive' "$log" && ! grep -q panic "$log"; then
        ok "agent exits: init keeps a console shell, no panic ($(grep -c agent-exited "$log") exit seen)"
    else
        nok "agent exits: init keeps a console shell" "$(tr '\n' ' ' < "$log")"
    fi
    if grep -q '^lab-noagent-shell' "$log" && grep -q '^lab-noagent-alive' "$log" \
        && grep -q '^lab-noagent-agent-absent' "$log" && ! grep -q panic "$log"; then
        ok "agent absent: init says so and keeps a console shell"
    else
        nok "agent absent: init keeps a console shell" "$(tr '\n' ' ' < "$log")"
    fi
    assert_clean direct "$pid" "$log"
}

t_netboot() {
    local log="$out/netboot.log" rc=0
    bash "$0" --scenario netboot "$timeout" >"$log" 2>"$out/netboot.err" &
    local pid=$!
    wait $pid || rc=$?
    if grep -q '^bios-ready' "$log"; then ok "BIOS guest netboots to LAB-INIT-READY ($(grep '^bios-ready' "$log" | cut -d' ' -f2-))"
    else nok "BIOS guest netboots to LAB-INIT-READY" "$(tail -n 5 "$out/netboot.err")"; fi
    if grep -q '^uefi-ready' "$log"; then ok "UEFI guest netboots to LAB-INIT-READY ($(grep '^uefi-ready' "$log" | cut -d' ' -f2-))"
    else nok "UEFI guest netboots to LAB-INIT-READY" "$(tail -n 5 "$out/netboot.err")"; fi
    if grep -q '^bios-ready.*eth0=10\.77\.0\.' "$log" && grep -q '^uefi-ready.*eth0=10\.77\.0\.' "$log"; then
        ok "both guests got a lab address from DHCP in init"
    else
        nok "both guests got a lab address from DHCP in init"
    fi
    [ "$rc" = 0 ] && ok "netboot scenario exits 0" || nok "netboot scenario exits 0" "rc=$rc"
    assert_clean netboot "$pid" "$log"
}

t_fail() {
    local log="$out/fail.log" rc=0
    bash "$0" --scenario fail >"$log" 2>"$out/fail.err" &
    local pid=$!
    wait $pid || rc=$?
    if [ "$rc" != 0 ] && grep -q '^timed-out' "$log"; then
        ok "guest without server times out (rc=$rc)"
    else
        nok "guest without server times out" "rc=$rc $(cat "$log")"
    fi
    assert_clean "failing run" "$pid" "$log"
}

t_kill() {
    local log="$out/kill.log"
    : > "$log"
    bash "$0" --scenario kill >"$log" 2>"$out/kill.err" &
    local pid=$!
    # Await the scenario's signal that its guest is running, then TERM it.
    if ! timeout 60 bash -c 'until grep -q ready-to-kill "$1"; do sleep 0.1; done' _ "$log"; then
        nok "killed run" "scenario never started"; kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
        return
    fi
    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    [ "$rc" != 0 ] && ok "run killed by SIGTERM exits (rc=$rc)" || nok "run killed by SIGTERM exits non-zero"
    assert_clean "killed run" "$pid" "$log"
}

t_gc() {
    local fake="bootlab-999999999-stale"
    ip netns add "$fake"
    ( . "$here/lib/lab.sh"; lab_gc ) 2>/dev/null
    if ip netns list | awk '{print $1}' | grep -qx "$fake"; then
        ip netns del "$fake"
        nok "lab_gc removes a dead run's namespace"
    else
        ok "lab_gc removes a dead run's namespace"
    fi
}

for t in "${tests[@]}"; do
    echo "# $t"
    "t_$t"
done
echo "$passed passed, $failed failed, 0 skipped"
[ "$failed" = 0 ]
