#!/usr/bin/env bash
# Real-firmware check of boot-tftp: OVMF's own UEFI PXE client (EDK2 Mtftp4:
# tsize probe, then windowsize=4 / blksize=1468) downloads ipxe.efi from the
# example tftpd, and iPXE then fetches a script and an ~8 MB kernel (blksize
# 1432, lock-step). Everything runs in a private network namespace with a tap
# device; dnsmasq only does DHCP (--port=0, TFTP off).
#
#   sudo boot-server/tftp/scripts/ovmf-pxe-check.sh      (about 40 s under TCG)
#
# Needs root, qemu-system-x86, ovmf, ipxe, dnsmasq (a missing one is reported
# as SKIP, a failure under CI). Exit 0 when iPXE printed KERNEL-FETCHED-OK and
# the server log shows the probe and the windowed transfer. Last line:
# `N passed, M failed, K skipped` (qemu-tests/lib/summary.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=../../../qemu-tests/lib/summary.sh
. "$repo/qemu-tests/lib/summary.sh"
missing=""
[ "$(id -u)" = 0 ] || missing="root"
for t in qemu-system-x86_64 dnsmasq ip; do command -v "$t" >/dev/null || missing="$missing $t"; done
for f in /usr/share/ovmf/OVMF.fd /usr/lib/ipxe/ipxe.efi; do [ -e "$f" ] || missing="$missing $f"; done
if [ -n "$missing" ]; then
  t_skip "ovmf-pxe-check" "needs$missing"
  t_summary
  exit $?
fi
(cd "$repo" && cargo build --quiet --release -p boot-tftp --example tftpd)
tftpd=${CARGO_TARGET_DIR:-$repo/target}/release/examples/tftpd

ns=tftpovmf$$
work=$(mktemp -d /tmp/tftpovmf.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # Safety net: anything still running inside our own namespace.
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add tap0 mode tap
ip -n "$ns" addr add 192.168.77.1/24 dev tap0
ip -n "$ns" link set tap0 up
inns() { ip netns exec "$ns" "$@"; }

mkdir "$work/root"
cp /usr/lib/ipxe/ipxe.efi "$work/root/"
printf '#!ipxe\necho SCRIPT-FETCHED-OK\nimgfetch tftp://192.168.77.1/vmlinuz\necho KERNEL-FETCHED-OK\nshell\n' > "$work/root/boot.ipxe"
head -c 8000000 /dev/urandom > "$work/root/vmlinuz"

RUST_LOG=boot_tftp=debug ip netns exec "$ns" "$tftpd" --listen 192.168.77.1:69 --root "$work/root" > /dev/null 2> "$work/tftpd.log" &
pids+=($!)
ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root --interface=tap0 \
  --bind-interfaces --dhcp-range=192.168.77.50,192.168.77.60,1h --dhcp-match=set:ipxe,175 \
  --dhcp-boot=tag:!ipxe,ipxe.efi,,192.168.77.1 --dhcp-boot=tag:ipxe,tftp://192.168.77.1/boot.ipxe \
  --log-facility="$work/dnsmasq.log" &
pids+=($!)
ip netns exec "$ns" qemu-system-x86_64 -accel tcg -m 512 -bios /usr/share/ovmf/OVMF.fd \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0,romfile= \
  -boot n -display none -serial "file:$work/serial.log" -no-reboot &
pids+=($!)

ok=0
for _ in $(seq 1800); do   # at most 180 s
  if grep -q KERNEL-FETCHED-OK "$work/serial.log" 2>/dev/null; then ok=1; break; fi
  sleep 0.1
done
log=$(sed 's/\x1b\[[0-9;]*m//g' "$work/tftpd.log")
echo "$log" | grep -E "transfer (started|complete|failed)|size probe" | cut -c1-220
if [ $ok = 1 ]; then t_ok "iPXE fetched the kernel over TFTP (KERNEL-FETCHED-OK)"
else t_fail "iPXE did not report KERNEL-FETCHED-OK"; tail -c 2000 "$work/serial.log"; fi
t_check "EDK2 tsize probe seen" grep -q "size probe" <<<"$log"
t_check "windowed EDK2 transfer (blksize 1468, window 4)" \
  grep -q "file=ipxe.efi size=[0-9]* blksize=1468 window=4" <<<"$log"
t_summary
