#!/usr/bin/env bash
# qemu-tests/conventional.sh: the conventional netboot stack in the lab, the
# benchmark baseline: dnsmasq (DHCP on br0, TFTP of /usr/lib/ipxe loaders, iPXE
# detected by option 175 -> HTTP script URL; BIOS undionly.kpxe / UEFI ipxe.efi by
# option 93) and nginx (the iPXE script and images/build/lab) inside the namespace.
#
# Sourced: provides
#   conv_start [--tricks]  start dnsmasq + nginx in the current lab ($LAB_NS/$LAB_DIR);
#                          --tricks adds the DESIGN.md fixes (option 60 PXEClient +
#                          siaddr + filename in the offer; RA with M/O clear from
#                          dnsmasq) to compare against the plain baseline.
#                          Sets CONV_URL (script URL), CONV_HTTP_LOG (nginx access log
#                          with msec timestamps).
#   conv_write_script FILE write the iPXE script (echo markers LAB-IPXE-*).
# Executed: builds the lab image, starts the stack, boots a BIOS guest (SeaBIOS +
# virtio-net iPXE ROM) and a UEFI guest (OVMF) side by side, waits for
# LAB-INIT-READY on both and prints their times. Options: [--tricks] [--timeout S]
# [--only bios|uefi] [--sga] (SeaBIOS/iPXE text on the BIOS serial log)
# [--nic virtio-net-pci|e1000].
set -euo pipefail

CONV_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONV_REPO="$(cd "$CONV_HERE/.." && pwd)"
CONV_PORT=8080
# The kernel command line of the lab image's manifest (what the boot server serves).
CONV_CMDLINE="$(sed -n 's/^cmdline *= *"\([^"]*\)".*/\1/p' "$CONV_REPO/images/lab/image.toml")"
CONV_CMDLINE="${CONV_CMDLINE:-console=ttyS0 quiet}"
# shellcheck source=lib/lab.sh
. "$CONV_HERE/lib/lab.sh"

conv_write_script() {
    local f="$1" base="http://$LAB_BRIDGE_ADDR:$CONV_PORT"
    cat > "$f" <<EOF
#!ipxe
echo LAB-IPXE-SCRIPT \${platform} \${buildarch} \${net0/mac} \${net0/ip}
echo LAB-IPXE-KERNEL
kernel $base/lab/vmlinuz initrd=initrd.img $CONV_CMDLINE
echo LAB-IPXE-INITRD
initrd $base/lab/initrd.img
echo LAB-IPXE-BOOT
boot
EOF
}

conv_start() {
    local tricks=0
    [ "${1:-}" = "--tricks" ] && tricks=1
    [ -n "$LAB_NS" ] || { lab_log "conv_start: no lab"; return 1; }
    local d="$LAB_DIR/conv"
    mkdir -p "$d/www" "$d/tmp"
    conv_write_script "$d/www/boot.ipxe"
    ln -sfn "$CONV_REPO/images/build/lab" "$d/www/lab"
    CONV_URL="http://$LAB_BRIDGE_ADDR:$CONV_PORT/boot.ipxe"
    CONV_HTTP_LOG="$d/access.log"
    rm -f "$d/dnsmasq.leases"

    cat > "$d/dnsmasq.conf" <<EOF
port=0
interface=br0
bind-interfaces
except-interface=lo
dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0,1h
dhcp-leasefile=$d/dnsmasq.leases
dhcp-authoritative
log-dhcp
log-facility=$d/dnsmasq.log
pid-file=$d/dnsmasq.pid
user=root
enable-tftp
tftp-root=/usr/lib/ipxe
dhcp-match=set:ipxe,175
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efi64,option:client-arch,9
dhcp-boot=tag:ipxe,$CONV_URL$([ "$tricks" = 1 ] && echo ",,$LAB_BRIDGE_ADDR")
dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe
EOF
    if [ "$tricks" = 1 ]; then
        cat >> "$d/dnsmasq.conf" <<EOF
# DESIGN.md fixes: PXEClient + siaddr + filename in the offer, RA with M/O clear,
# and no ICMP probe (dnsmasq pings an address for up to 3 s before offering it).
dhcp-option-force=tag:ipxe,60,PXEClient
no-ping
enable-ra
dhcp-range=fd77::,ra-only,64,1h
EOF
        lab_exec ip addr replace fd77::1/64 dev br0 nodad
    fi
    cat > "$d/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/nginx.error.log info;
events { worker_connections 64; }
http {
    types { text/plain ipxe; application/octet-stream img; }
    default_type application/octet-stream;
    log_format lab '\$msec \$remote_addr "\$request" \$status \$body_bytes_sent';
    access_log $d/access.log lab;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    sendfile on;
    server {
        listen $LAB_BRIDGE_ADDR:$CONV_PORT;
        root $d/www;
        disable_symlinks off;
    }
}
EOF
    lab_spawn dnsmasq dnsmasq -k -C "$d/dnsmasq.conf"
    lab_spawn nginx nginx -p "$d" -e "$d/nginx.error.log" -c "$d/nginx.conf"
    # Await readiness: the HTTP script answers and dnsmasq holds its DHCP socket.
    local i
    for i in $(seq 100); do
        if lab_exec curl -sf -o /dev/null "$CONV_URL" \
            && lab_exec ss -Hlun 'sport = :67' | grep -q .; then
            lab_log "conventional stack up (dnsmasq pid ${LAB_PID[dnsmasq]}, nginx pid ${LAB_PID[nginx]})"
            return 0
        fi
        kill -0 "${LAB_PID[dnsmasq]}" 2>/dev/null || { cat "$LAB_DIR/dnsmasq.log" "$d/dnsmasq.log" >&2; return 1; }
        kill -0 "${LAB_PID[nginx]}" 2>/dev/null || { cat "$LAB_DIR/nginx.log" "$d/nginx.error.log" >&2; return 1; }
        sleep 0.1
    done
    lab_log "conventional stack did not come up"
    return 1
}

conv_main() {
    local tricks="" timeout=180 only="" sga="" nic=virtio-net-pci
    while [ $# -gt 0 ]; do
        case "$1" in
            --tricks) tricks="--tricks"; shift ;;
            --timeout) timeout="$2"; shift 2 ;;
            --only) only="$2"; shift 2 ;;
            --sga) sga="--sga"; shift ;;
            --nic) nic="$2"; shift 2 ;;
            *) echo "unknown argument $1" >&2; return 2 ;;
        esac
    done
    lab_require_root || return 0
    "$CONV_REPO/images/build-lab-image.sh" >&2
    lab_gc
    lab_create conv
    conv_start $tricks
    local fws=(bios uefi) fw rc=0
    [ -n "$only" ] && fws=("$only")
    for fw in "${fws[@]}"; do
        lab_start_guest --name "$fw" --firmware "$fw" --nic "$nic" --stamp $sga
    done
    for fw in "${fws[@]}"; do
        if lab_wait_console "$fw" 'LAB-INIT-READY' "$timeout" >/dev/null; then
            echo "$fw: LAB-INIT-READY after ${LAB_ELAPSED}s from QEMU launch ($LAB_LINE)"
        else
            echo "$fw: FAILED"
            rc=1
            tail -n 30 "${LAB_GUEST_LOG[$fw]}" | tr -d '\r' | sed "s/^/  $fw| /" >&2
        fi
    done
    for fw in "${fws[@]}"; do
        echo "--- $fw serial (s since launch) ---" >&2
        grep -aE 'iPXE|Configuring|net0|LAB-|Booting|http' "${LAB_GUEST_LOG[$fw]}.ts" >&2 || true
    done
    echo "--- HTTP log ---" >&2
    cat "$CONV_HTTP_LOG" >&2 || true
    return $rc
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    conv_main "$@"
fi
