#!/usr/bin/env bash
# Installs the Debian packages the project, its tests and its lab need.
# Idempotent: installs only what is missing (apt-get update first when it must).
set -euo pipefail
packages=(
    qemu-system-x86 ipxe-qemu ipxe ovmf linux-image-amd64 busybox-static kexec-tools
    dnsmasq nginx-light udhcpc isc-dhcp-client atftp nbdkit libnbd-bin qemu-utils fio
    kea-admin kea-dhcp4-server iproute2 cpio zstd lz4 xz-utils sqlite3 tcpdump curl perl kmod file e2fsprogs gcc jq binutils
    linux-source bc bison flex libelf-dev libssl-dev make  # the lab kernel (images/build-lab-kernel.sh)
    ipmitool openipmi  # BMC power control and its simulator (failover fencing)
    libiscsi-bin  # iSCSI initiator tools + iscsi-test-cu conformance suite (boot-iscsi tests)
    qemu-block-extra  # qemu-img/qemu-io iscsi:// driver (boot-iscsi tests)
    chromium nodejs  # the web UI test (qemu-tests/test-ui.sh) and boot-server/ui/vendor.sh
    prometheus  # promtool: check /metrics and boot-server/dist/alerts.yml (boot-server/tests/ops_*.rs)
    systemd  # systemd-analyze verify/security of boot-server/dist/boot-server.service (tests/ops_dist.rs)
    python3 python3-venv openssl  # qemu-tests/test-api.sh (schemathesis venv, certificate fingerprint)
    socat  # qemu-tests/lab-up.sh: the web UI reached from the host's loopback
    open-iscsi  # iscsistart in the sanboot base disk's initramfs (images/build-sanboot-base.sh)
    syslinux syslinux-common mtools dosfstools fdisk  # the sanboot base disk: MBR + syslinux on a FAT ESP, built without mounts
    grub-efi-amd64-bin grub-common  # the sanboot base disk's UEFI loader (grub-mkstandalone)
    tgt  # qemu-tests/bench/iscsi.sh: Debian's iSCSI target beside boot-server's
    postgresql  # the PostgreSQL store's tests (qemu-tests/lib/test-postgres.sh)
)
# npm: Debian's package, unless a nodejs from elsewhere (NodeSource) already brings it.
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# qemu-block-extra (Debian 12's 7.2) conflicts with a newer qemu-utils from
# backports, and apt resolves that by *removing* qemu-utils: put the matching
# one back, else qemu-img (NBD, iSCSI and snapshot tests) is gone.
if ! command -v qemu-img >/dev/null; then
    echo "install-deps: qemu-img is missing (qemu-utils removed by a version conflict?); installing qemu-utils" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-utils
fi
# Services the packages start on install would hold the lab's ports; the lab
# runs its own instances inside namespaces.
for svc in dnsmasq nginx prometheus tgt iscsid; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
