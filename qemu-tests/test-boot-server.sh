#!/usr/bin/env bash
# qemu-tests/test-boot-server.sh: end-to-end tests of boot-server in the QEMU lab.
#   full   : full DHCP mode; a BIOS guest (SeaBIOS, virtio-net) and a UEFI guest
#            (OVMF, e1000) side by side network-boot the default image; both agents
#            report ready with inventory and heartbeats; DHCP leases are recorded; a
#            forged agent token is refused; stopping a guest marks its node failed.
#            Beside them a UEFI HTTP boot guest (OVMF's own HTTPv4 boot: no NIC ROM,
#            PXE off, DHCP option 60 HTTPClient answered with the loader's http://
#            URL, no TFTP) reaches agent ready; prints power-on -> agent ready.
#   proxy  : dnsmasq (own namespace on the same bridge) hands out addresses only;
#            boot-server in proxy mode adds the boot answers; a BIOS guest boots.
#   kexec  : an admin `node kexec` moves a running node to another image without
#            firmware; the new boot's agent reports ready on that image.
#   reprovision: a UEFI guest with its own persistent OVMF vars; `node reprovision`
#            makes the agent write BootNext/BootOrder through efivarfs and reboot;
#            the firmware network-boots again and the node comes up on the image
#            the server assigned meanwhile.
#   nbdroot: two BIOS guests boot with their root file system on their own NBD
#            copy-on-write overlay of one base disk; the disk's init counts boots on
#            the disk: a reboot of the first guest finds its count (2), the second
#            guest on the same base starts at 1.
# Prints `N passed, M failed, K skipped`; exits non-zero on failure. Needs root (a skip
# outside CI, a failure under CI).
# Usage: qemu-tests/test-boot-server.sh [--timeout S] [TEST...]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
timeout=240
tests=()
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) tests+=("$1"); shift ;;
    esac
done
[ ${#tests[@]} -gt 0 ] || tests=(full proxy kexec reprovision nbdroot)

# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"
# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
t0_all=$SECONDS
if ! lab_require_root; then t_skip "test-boot-server.sh" "needs root (network namespaces, tap devices)"; t_summary; exit; fi
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
[ -x "$server" ] || { t_fail "missing $server (cargo build --release -p boot-server)"; t_summary; exit 1; }
[ -f "$repo/images/build/lab/initrd.img" ] || { t_fail "missing lab image (images/build-lab-image.sh)"; t_summary; exit 1; }

ok() { t_ok "$1"; }
not_ok() { t_fail "$1"; }
check() { t_check "$@"; }

# Starts boot-server in the current lab with the lab config; $1 = dhcp mode,
# more arguments are sed arguments editing the config.
start_server() {
    state="$LAB_DIR/state"
    local mode="$1"; shift
    lab_start_boot_server "$server" "$state" -e "s|^mode = \"full\"|mode = \"$mode\"|" "$@" || return 1
    config="$LAB_SERVER_CONFIG"
}
cli() { "$server" --config "$config" "$@"; }
t0_ms() { awk -v t="${LAB_GUEST_T0[$1]}" 'BEGIN { printf "%.0f", t * 1000 }'; }
# Waits for the node (MAC $1, guest $2) to report ready; prints its timeline.
wait_ready() {
    if cli node timeline "$1" --since-ms "$(t0_ms "$2")" --wait "$timeout"; then
        return 0
    fi
    echo "--- console of $2:"; tr -d '\r' < "${LAB_GUEST_LOG[$2]}" | tail -n 25
    echo "--- server log:"; tail -n 25 "$LAB_DIR/server.log"
    return 1
}
node_field() { cli node show "$1" --json | tr -d ' \n' | grep -o "\"$2\":[^,}]*" | head -n1 | sed 's/^[^:]*://'; }

test_full() {
    lab_create full || { not_ok "full: lab namespace"; return; }
    # Debian's /usr/lib/ipxe/ipxe.efi is a symlink to /boot, which the server's
    # no-escape path rule refuses: the loaders are copied into the lab.
    mkdir -p "$LAB_DIR/loaders"
    cp -L /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/ipxe.efi "$LAB_DIR/loaders/"
    start_server full -e "s|^loaders_dir = .*|loaders_dir = \"$LAB_DIR/loaders\"|" \
        || { not_ok "full: server starts"; return; }
    local bios=52:54:00:20:00:01 uefi=52:54:00:20:00:02 hboot=52:54:00:20:00:03
    lab_start_guest --name bios --firmware bios --nic virtio-net-pci --mac "$bios" --stamp
    lab_start_guest --name uefi --firmware uefi --nic e1000 --mac "$uefi" --stamp
    lab_start_guest --name hboot --firmware uefi --nic virtio-net-pci --mac "$hboot" --stamp --http-boot
    local tl i
    tl="$(wait_ready "$bios" bios)"; echo "$tl"
    check "full: BIOS guest boots the default image and its agent reports ready" grep -q "agent    ready on lab" <<<"$tl"
    check "full: BIOS timeline shows dhcp, script, kernel, initrd" \
        bash -c 'grep -q " dhcp " <<<"$1" && grep -q " script " <<<"$1" && grep -q " kernel " <<<"$1" && grep -q " initrd " <<<"$1"' _ "$tl"
    tl="$(wait_ready "$uefi" uefi)"; echo "$tl"
    check "full: UEFI guest (OVMF) boots the default image and its agent reports ready" grep -q "agent    ready on lab" <<<"$tl"
    # UEFI HTTP boot: the firmware's own DHCP (option 60 HTTPClient) gets the
    # loader's URL; iPXE loaded over HTTP then boots the image as usual.
    tl="$(wait_ready "$hboot" hboot)"; echo "$tl"
    check "full: UEFI HTTP boot guest (OVMF HTTPv4, no NIC ROM) reaches agent ready" grep -q "agent    ready on lab" <<<"$tl"
    check "full: the firmware's DHCP answer is the loader's http:// URL" \
        grep -q "offer/ack -> http://$LAB_BRIDGE_ADDR:8080/loaders/ipxe.efi" <<<"$tl"
    check "full: the firmware fetched its loader over HTTP" \
        grep -q "Downloading...100%" "${LAB_GUEST_LOG[hboot]}"
    check "full: no TFTP on the HTTP boot path" bash -c '! grep -q " tftp " <<<"$1"' _ "$tl"
    # Seconds since QEMU's launch, from the time-stamped serial log.
    local ts="$LAB_DIR/hboot.serial.ts" t_http="" t_ready=""
    for i in $(seq 50); do grep -aq 'agent ready' "$ts" 2>/dev/null && break; sleep 0.1; done
    t_http="$(grep -a -m1 'Start HTTP Boot' "$ts" | awk '{print $1}')"
    t_ready="$(grep -a -m1 'agent ready' "$ts" | awk '{print $1}')"
    echo "full: UEFI HTTP boot: power-on -> firmware HTTP boot start ${t_http:-?} s -> agent ready ${t_ready:-?} s"
    check "full: inventory says bios for the BIOS node" grep -q '"firmware":"bios"' <<<"$(cli node show "$bios" --json | tr -d ' \n')"
    check "full: inventory says uefi for the UEFI node" grep -q '"firmware":"uefi"' <<<"$(cli node show "$uefi" --json | tr -d ' \n')"
    local leases; leases="$(cli leases)"; echo "$leases"
    check "full: both guests hold durable leases" bash -c 'grep -q "$1" <<<"$3" && grep -q "$2" <<<"$3"' _ "$bios" "$uefi" "$leases"
    # Heartbeats keep arriving: the heartbeat timestamp moves.
    local hb1 hb2
    hb1="$(node_field "$bios" last_heartbeat_ms)"
    for i in $(seq 100); do hb2="$(node_field "$bios" last_heartbeat_ms)"; [ "$hb2" != "$hb1" ] && break; sleep 0.1; done
    check "full: live heartbeats ($hb1 -> $hb2)" test "$hb2" != "$hb1"
    # Takeover attempt from another host on the boot network (the lab host's bridge
    # address): the node's script comes back without its token or disk secret,
    # and the running agent keeps its token (heartbeats go on).
    local stolen
    stolen="$(lab_exec curl -s "http://$LAB_BRIDGE_ADDR:8080/ipxe/$bios")"
    check "full: another host asking for the node's script gets no token" \
        bash -c 'grep -q "^#!ipxe" <<<"$1" && ! grep -q "bootsrv.token=" <<<"$1"' _ "$stolen"
    check "full: the refusal is in the event log" grep -q access-refused <<<"$(cli events --node "$bios")"
    hb1="$(node_field "$bios" last_heartbeat_ms)"
    for i in $(seq 100); do hb2="$(node_field "$bios" last_heartbeat_ms)"; [ "$hb2" != "$hb1" ] && break; sleep 0.1; done
    check "full: the node's agent still heart-beats after the attempt" test "$hb2" != "$hb1"
    # Power the UEFI guest off: after heartbeat_timeout_secs (10) the node is failed.
    lab_stop_guest uefi
    local state=""
    for i in $(seq 300); do
        state="$(node_field "$uefi" state)"
        [ "$state" = '"failed"' ] && break
        sleep 0.1
    done
    check "full: a stopped guest is marked failed after the heartbeat limit (state $state)" test "$state" = '"failed"'
    check "full: the failure is in the event log" grep -q node-failed <<<"$(cli events --node "node-${uefi//:/}")"
    lab_cleanup
}

test_proxy() {
    lab_create proxy || { not_ok "proxy: lab namespace"; return; }
    # dnsmasq in its own namespace on the lab bridge: addresses only, no boot options.
    local dns="${LAB_NS}-dhcp"
    ip netns add "$dns" && LAB_NAMESPACES+=("$dns")
    ip link add pxv0 netns "$LAB_NS" type veth peer name pxv1 netns "$dns"
    ip -n "$LAB_NS" link set pxv0 master br0 up
    ip -n "$dns" link set lo up
    ip -n "$dns" addr add 10.77.0.2/24 dev pxv1
    ip -n "$dns" link set pxv1 up
    ip netns exec "$dns" dnsmasq --keep-in-foreground --port=0 --no-resolv --bind-interfaces \
        --interface=pxv1 --dhcp-range=10.77.0.50,10.77.0.90,1h --dhcp-leasefile="$LAB_DIR/dnsmasq.leases" \
        --pid-file="$LAB_DIR/dnsmasq.pid" --log-dhcp --log-facility="$LAB_DIR/dnsmasq.log" &
    start_server proxy || { not_ok "proxy: server starts"; return; }
    local mac=52:54:00:20:00:11
    lab_start_guest --name px --firmware bios --nic virtio-net-pci --mac "$mac" --stamp
    local tl; tl="$(wait_ready "$mac" px)"; echo "$tl"
    check "proxy: a BIOS guest boots through proxy answers beside dnsmasq" grep -q "agent    ready on lab" <<<"$tl"
    local theirs ours
    theirs="$(cat "$LAB_DIR/dnsmasq.leases" 2>/dev/null)"
    ours="$(cli leases --json)"
    check "proxy: the address came from dnsmasq, not from boot-server" \
        bash -c 'grep -qi "$1" <<<"$2" && ! grep -qi "$1" <<<"$3"' _ "$mac" "$theirs" "$ours"
    lab_cleanup
}

test_kexec() {
    lab_create kexec || { not_ok "kexec: lab namespace"; return; }
    start_server full || { not_ok "kexec: server starts"; return; }
    # A second image: the same files under another name.
    local m="$LAB_DIR/lab-b.toml"
    sed -e 's/^name = "lab"/name = "lab-b"/' -e 's/^version = .*/version = "2"/' "$repo/images/lab/image.toml" > "$m"
    cli image add --server-path "$m" >/dev/null
    local mac=52:54:00:20:00:21
    lab_start_guest --name kx --firmware bios --nic virtio-net-pci --mac "$mac" --stamp
    local tl; tl="$(wait_ready "$mac" kx)"
    check "kexec: node up on lab" grep -q "agent    ready on lab" <<<"$tl"
    local t1; t1="$(date +%s%3N)"
    cli node kexec "$mac" lab-b
    tl="$(cli node timeline "$mac" --since-ms "$t1" --wait "$timeout")"; echo "$tl"
    check "kexec: the agent reports ready on lab-b after a warm reprovision" grep -q "agent    ready on lab-b" <<<"$tl"
    check "kexec: no firmware or PXE on the way (no DHCP boot answer since the command)" bash -c '! grep -q " dhcp " <<<"$1"' _ "$tl"
    lab_cleanup
}

test_reprovision() {
    lab_create reprov || { not_ok "reprov: lab namespace"; return; }
    start_server full || { not_ok "reprovision: server starts"; return; }
    local m="$LAB_DIR/lab-b.toml"
    sed -e 's/^name = "lab"/name = "lab-b"/' "$repo/images/lab/image.toml" > "$m"
    cli image add --server-path "$m" >/dev/null
    local mac=52:54:00:20:00:31
    lab_start_guest --name rp --firmware uefi --nic virtio-net-pci --mac "$mac" --stamp --reboot
    local tl; tl="$(wait_ready "$mac" rp)"
    check "reprovision: UEFI node up on lab" grep -q "agent    ready on lab" <<<"$tl"
    cli assign --mac "$mac" lab-b
    local t1; t1="$(date +%s%3N)"
    cli node reprovision "$mac"
    tl="$(cli node timeline "$mac" --since-ms "$t1" --wait "$timeout")"; echo "$tl"
    check "reprovision: the agent set the firmware boot pointer (BootNext)" grep -q "BootNext" <<<"$tl"
    check "reprovision: after a cold reboot through firmware and PXE the node is up on lab-b" \
        bash -c 'grep -q " dhcp " <<<"$1" && grep -q "agent    ready on lab-b" <<<"$1"' _ "$tl"
    lab_cleanup
}

test_nbdroot() {
    lab_create nbdroot || { not_ok "nbdroot: lab namespace"; return; }
    start_server full || { not_ok "nbdroot: server starts"; return; }
    cli disk add-base labroot "$repo/images/build/lab/rootfs.raw" >/dev/null
    local a=52:54:00:20:00:41 b=52:54:00:20:00:42 m
    for m in "$a" "$b"; do
        cli disk create "ov-${m//:/}" --base labroot >/dev/null
        # Enrol the node so the disk can be attached before its first boot.
        cli node add --mac "$m" >/dev/null
        cli disk attach "ov-${m//:/}" --node "$m"
    done
    lab_start_guest --name ra --firmware bios --mac "$a" --stamp --reboot
    if lab_wait_console ra 'LAB-ROOT-NBD boots=1' "$timeout"; then ok "nbdroot: guest A boots with its root file system on its NBD overlay"
    else not_ok "nbdroot: guest A boots with its root file system on its NBD overlay"; tr -d '\r' < "${LAB_GUEST_LOG[ra]}" | tail -n 25; fi
    wait_ready "$a" ra >/dev/null || true
    cli node reboot "$a" >/dev/null
    if lab_wait_console ra 'LAB-ROOT-NBD boots=2' "$timeout"; then ok "nbdroot: after a reboot guest A finds what it wrote (boot count 2)"
    else not_ok "nbdroot: after a reboot guest A finds what it wrote (boot count 2)"; tr -d '\r' < "${LAB_GUEST_LOG[ra]}" | tail -n 25; fi
    lab_start_guest --name rb --firmware bios --mac "$b" --stamp
    if lab_wait_console rb 'LAB-ROOT-NBD boots=' "$timeout"; then
        check "nbdroot: guest B on the same base does not see A's writes ($LAB_LINE)" grep -q 'boots=1' <<<"$LAB_LINE"
    else not_ok "nbdroot: guest B boots from its overlay"; tr -d '\r' < "${LAB_GUEST_LOG[rb]}" | tail -n 25; fi
    lab_cleanup
}

lab_gc
for t in "${tests[@]}"; do
    echo "== $t"
    "test_$t"
done
# Nothing left behind by this run.
left="$(ip netns list | grep -c "^bootlab-$$-" || true)"
check "no lab namespace left behind" test "$left" = 0
echo "test-boot-server: $((SECONDS - t0_all)) s"
t_summary
