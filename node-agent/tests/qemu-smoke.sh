#!/bin/bash
# QEMU smoke test of the agent's kernel-facing paths, which the host kernel
# here cannot exercise (no nbd module, no UEFI, kexec would hit the host):
#   1. BIOS guest: NBD attach over generic netlink to the real nbd driver,
#      write/read through /dev/nbd0, detach, re-attach with auto-mount,
#      then kexec_file_load + reboot(KEXEC) into the same kernel.
#   2. OVMF guest: set BootNext/BootOrder through the real efivarfs.
# Host services (nbdkit, a static HTTP server) listen on 127.0.0.1 only; the
# guest reaches them through QEMU user networking (10.0.2.2).
#
# usage: node-agent/tests/qemu-smoke.sh [/path/to/static/node-agent]
# Without an argument it builds the static agent first (cargo, release,
# x86_64-unknown-linux-gnu, crt-static) into $CARGO_TARGET_DIR or target/.
# Reports through qemu-tests/lib/summary.sh: a missing tool is a skip (a
# failure under CI), never a silent pass; last line `N passed, M failed, K skipped`.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=../../qemu-tests/lib/summary.sh
. "$REPO/qemu-tests/lib/summary.sh"
T0=$(date +%s)
finish() { echo "qemu smoke: elapsed $(($(date +%s) - T0)) s"; t_summary; exit $?; }
for t in qemu-system-x86_64 busybox nbdkit python3 cpio cargo; do
    command -v $t >/dev/null || { t_skip "qemu smoke" "$t is not installed"; finish; }
done
if [ -n "${1:-}" ]; then
    AGENT=$(readlink -f "$1")
else
    TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
    (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -p node-agent --target x86_64-unknown-linux-gnu) >&2
    AGENT=$TARGET_DIR/x86_64-unknown-linux-gnu/release/node-agent
fi
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
WORK=$(mktemp -d /tmp/agent-smoke.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
[ -r "$KERNEL" ] || { t_skip "qemu smoke" "no readable $KERNEL"; finish; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- initramfs ---------------------------------------------------------------
R=$WORK/root
mkdir -p $R/{bin,dev,proc,sys,tmp,mnt,lib/modules}
cp /bin/busybox $R/bin/busybox
cp "$AGENT" $R/node-agent
declare -A SEEN
ORDER=()
add_mod() { # $1 = module path relative to MODDIR; deps first
    local m=$1
    [ -n "${SEEN[$m]:-}" ] && return
    SEEN[$m]=1
    local deps
    deps=$(grep -E "^$m:" $MODDIR/modules.dep | cut -d: -f2)
    local d
    for d in $deps; do add_mod "$d"; done
    ORDER+=("$m")
}
for name in virtio_pci virtio_net nbd crc32c_generic crc32c-intel ext4 efivarfs; do
    p=$(grep -E "/$name\.ko(\.[a-z]+)?:" $MODDIR/modules.dep | cut -d: -f1 || true)
    [ -n "$p" ] && add_mod "$p"
done
for m in "${ORDER[@]}"; do
    b=$(basename "$m")
    case $b in
        *.ko.xz) xz -dc $MODDIR/$m >$R/lib/modules/${b%.xz} ;;
        *.ko.zst) zstd -qdc $MODDIR/$m >$R/lib/modules/${b%.zst} ;;
        *) cp $MODDIR/$m $R/lib/modules/$b ;;
    esac
    b=${b%.xz}; echo "${b%.zst}" >>$R/modules.order
done

cat >$R/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
export NODE_AGENT_LOG=debug
if grep -q smoke.kexeced /proc/cmdline; then
    echo "SMOKE_KEXEC_BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)"
    # The agent proper against the host's minimal API: time to "ready".
    NODE_AGENT_LOG=info timeout 4 /node-agent --server "http://10.0.2.2:$(arg smoke.httpport)" \
        --token t --dry-run 2>&1 | grep -aE 'agent (ready|starting)' | sed 's/^/SMOKE_AGENT_READY /'
    poweroff -f
fi
if [ -d /sys/firmware/efi ]; then
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars
    for f in /sys/firmware/efi/efivars/Boot0*; do
        echo "efivar: ${f##*/}"; hexdump -v -e '32/1 "%02x" "\n"' "$f" | sed 's/^/efivar:   /'
    done
    /node-agent set-netboot --mac "$(cat /sys/class/net/eth0/address)" && echo SMOKE_EFI_OK
    hexdump -C /sys/firmware/efi/efivars/BootNext-8be4df61-93ca-11d2-aa0d-00e098032b8c | sed 's/^/BootNext: /'
    hexdump -C /sys/firmware/efi/efivars/BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c | sed 's/^/BootOrder: /'
    # Second run must be idempotent (rewrites whole variables in one write).
    /node-agent set-netboot --mac "$(cat /sys/class/net/eth0/address)" && echo SMOKE_EFI_AGAIN_OK
    poweroff -f
fi
NBD=$(arg smoke.nbdport); HTTP=$(arg smoke.httpport)
/node-agent attach-disk --host 10.0.2.2 --port "$NBD" && echo SMOKE_ATTACH_OK
dd if=/dev/urandom of=/tmp/pat bs=4096 count=4 2>/dev/null
dd if=/tmp/pat of=/dev/nbd0 bs=4096 count=4 conv=fsync 2>/dev/null
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/nbd0 of=/tmp/back bs=4096 count=4 2>/dev/null
cmp /tmp/pat /tmp/back && echo SMOKE_RW_OK
mke2fs -q /dev/nbd0 >/dev/null 2>&1 || mkfs.ext2 /dev/nbd0 >/dev/null
/node-agent detach-disk --index 0 && echo SMOKE_DETACH_OK
t=0; while [ "$(cat /sys/block/nbd0/size)" != 0 ] && [ $t -lt 100 ]; do sleep 0.05; t=$((t+1)); done
/node-agent attach-disk --host 10.0.2.2 --port "$NBD" --mount /mnt && echo SMOKE_MOUNT_OK
echo hello >/mnt/f && sync && umount /mnt && echo SMOKE_FS_WRITE_OK
# Reconnect: the host kills and restarts nbdkit; the agent's reconnector must
# RECONFIGURE the device with a new socket so I/O goes on.
/node-agent detach-disk --index 0 >/dev/null
t=0; while [ "$(cat /sys/block/nbd0/size)" != 0 ] && [ $t -lt 100 ]; do sleep 0.05; t=$((t+1)); done
/node-agent attach-disk --host 10.0.2.2 --port "$NBD" --persist >/tmp/persist.log 2>&1 &
t=0; while [ "$(cat /sys/block/nbd0/size)" = 0 ] && [ $t -lt 200 ]; do sleep 0.05; t=$((t+1)); done
dd if=/tmp/pat of=/dev/nbd0 bs=4096 count=4 conv=fsync 2>/dev/null
echo SMOKE_KILL_NBD_NOW
t=0; until wget -q -O /tmp/flag "http://10.0.2.2:$HTTP/flag" 2>/dev/null || [ $t -ge 300 ]; do sleep 0.2; t=$((t+1)); done
dd if=/dev/urandom of=/tmp/pat2 bs=4096 count=4 2>/dev/null
dd if=/tmp/pat2 of=/dev/nbd0 bs=4096 count=4 conv=fsync 2>/dev/null
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/nbd0 of=/tmp/back2 bs=4096 count=4 2>/dev/null
cmp /tmp/pat2 /tmp/back2 && echo SMOKE_RECONNECT_OK
sed 's/^/persist: /' /tmp/persist.log
/node-agent kexec --kernel "http://10.0.2.2:$HTTP/vmlinuz" --initrd "http://10.0.2.2:$HTTP/initrd.img" \
    --cmdline "console=ttyS0 quiet smoke.kexeced smoke.httpport=$HTTP" --exec
echo SMOKE_KEXEC_RETURNED
poweroff -f
EOF
chmod +x $R/init
(cd $R && find . | cpio -o -H newc --quiet | gzip -1) >$WORK/initrd.img
cp $KERNEL $WORK/vmlinuz

# --- host services (loopback only) -------------------------------------------
NBDPORT=$(free_port)
nbdkit -f --exit-with-parent -i 127.0.0.1 -p $NBDPORT memory 64M &
NBDKIT=$!
PIDS+=($NBDKIT)
HTTPPORT=$(free_port)
# Static files for kexec plus a minimal agent API (hello/heartbeat/commands/results).
cat >$WORK/srv.py <<'PY'
import http.server, os, sys, time
root = sys.argv[2]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(s, *a, **k): super().__init__(*a, directory=root, **k)
    def log_message(s, *a): pass
    def reply(s, code, body=b""):
        s.send_response(code); s.send_header("Content-Length", str(len(body))); s.end_headers(); s.wfile.write(body)
    def do_POST(s):
        s.rfile.read(int(s.headers.get("Content-Length", 0)))
        if s.path == "/api/agent/hello":
            s.reply(200, b'{"node_id":"smoke","heartbeat_interval_secs":1}')
        else:
            s.reply(204)
    def do_GET(s):
        if s.path.startswith("/api/agent/commands"):
            time.sleep(1); s.reply(200, b"[]")
        else:
            super().do_GET()
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 $WORK/srv.py $HTTPPORT $WORK >/dev/null 2>&1 &
PIDS+=($!)
for p in $NBDPORT $HTTPPORT; do
    for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
done

# TCG like the lab (nested KVM here hung at "Booting from ROM"); SMOKE_ACCEL=kvm to try.
QEMU=(qemu-system-x86_64 -accel "${SMOKE_ACCEL:-tcg}" -m 768 -nographic -no-reboot
      -netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56)
check() { # log marker
    if grep -aq "$2" "$1"; then t_ok "$2"; else t_fail "$2"; fi
}

echo "== BIOS guest: NBD netlink attach, mount, kexec"
timeout 300 "${QEMU[@]}" -kernel $WORK/vmlinuz -initrd $WORK/initrd.img \
    -append "console=ttyS0 quiet smoke.nbdport=$NBDPORT smoke.httpport=$HTTPPORT" \
    </dev/null >$WORK/bios.log 2>&1 &
QPID=$!
PIDS+=($QPID)
restarted=0
while kill -0 $QPID 2>/dev/null; do
    if [ $restarted = 0 ] && grep -aq SMOKE_KILL_NBD_NOW $WORK/bios.log; then
        kill -9 $NBDKIT; wait $NBDKIT 2>/dev/null || true  # a crash: SIGTERM waits for clients
        nbdkit -f --exit-with-parent -i 127.0.0.1 -p $NBDPORT memory 64M &
        NBDKIT=$!
        PIDS+=($NBDKIT)
        for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$NBDPORT) 2>/dev/null && break; sleep 0.05; done
        touch $WORK/flag
        restarted=1
    fi
    sleep 0.1
done
grep -aE 'SMOKE|node-agent|nbd|kexec|size=|persist' $WORK/bios.log | tr -d '\r' | sed 's/^/  | /' | head -40 || true
for m in SMOKE_ATTACH_OK SMOKE_RW_OK SMOKE_DETACH_OK SMOKE_MOUNT_OK SMOKE_FS_WRITE_OK SMOKE_RECONNECT_OK SMOKE_KEXEC_BOOTED SMOKE_AGENT_READY; do
    check $WORK/bios.log $m
done

CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
if [ -r $CODE ]; then
    echo "== OVMF guest: BootNext/BootOrder through efivarfs"
    cp /usr/share/OVMF/OVMF_VARS_4M.fd $WORK/vars.fd
    timeout 300 "${QEMU[@]}" -drive if=pflash,format=raw,readonly=on,file=$CODE \
        -drive if=pflash,format=raw,file=$WORK/vars.fd \
        -kernel $WORK/vmlinuz -initrd $WORK/initrd.img -append "console=ttyS0 quiet" \
        </dev/null >$WORK/uefi.log 2>&1 || true
    grep -aE 'SMOKE|efivar:|Boot|node-agent' $WORK/uefi.log | tr -d '\r' | sed 's/^/  | /' | head -40 || true
    check $WORK/uefi.log SMOKE_EFI_OK
    check $WORK/uefi.log SMOKE_EFI_AGAIN_OK
    echo "== OVMF guest, power-on with the same NVRAM: firmware must follow BootNext to PXE"
    "${QEMU[@]}" -drive if=pflash,format=raw,readonly=on,file=$CODE \
        -drive if=pflash,format=raw,file=$WORK/vars.fd </dev/null >$WORK/uefi2.log 2>&1 &
    QPID=$!
    PIDS+=($QPID)
    for i in $(seq 1200); do
        grep -aq 'Start PXE over IPv4' $WORK/uefi2.log && break
        kill -0 $QPID 2>/dev/null || break
        sleep 0.1
    done
    kill $QPID 2>/dev/null || true
    grep -aoE 'Start PXE over IPv4[^\r]*|BdsDxe: [^\r]*' $WORK/uefi2.log | head -5 | sed 's/^/  | /' || true
    check $WORK/uefi2.log 'Start PXE over IPv4'
    if grep -aq 'failed to load Boot0001' $WORK/uefi2.log; then
        t_fail "firmware loads the agent-created Boot0001"
    else
        t_ok "firmware loads the agent-created Boot0001"
    fi
    echo "== OVMF guest again: firmware-created PXE entry must now be found as existing"
    timeout 300 "${QEMU[@]}" -drive if=pflash,format=raw,readonly=on,file=$CODE \
        -drive if=pflash,format=raw,file=$WORK/vars.fd \
        -kernel $WORK/vmlinuz -initrd $WORK/initrd.img -append "console=ttyS0 quiet" \
        </dev/null >$WORK/uefi3.log 2>&1 || true
    grep -aE 'SMOKE|Boot0' $WORK/uefi3.log | tr -d '\r' | sed 's/^/  | /' | head -20 || true
    check $WORK/uefi3.log SMOKE_EFI_OK
else
    t_skip "OVMF guest (BootNext/BootOrder)" "$CODE not readable (Debian package ovmf)"
fi
finish
