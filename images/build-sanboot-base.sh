#!/usr/bin/env bash
# Builds a small bootable base disk for iPXE `sanboot` from an iSCSI overlay
# (image kind `sanboot`), from Debian packages on the machine, without root, loop
# devices or mounts:
#
#   MBR partition table (sfdisk) with syslinux's mbr.bin as boot code
#   p1  ESP, FAT16 (mkfs.vfat + mtools), type 0xef, active:
#         BIOS: syslinux (mtools installer) + syslinux.cfg
#         UEFI: EFI/BOOT/BOOTX64.EFI, a standalone GRUB (grub-mkstandalone) whose
#               embedded grub.cfg finds this partition by its volume id
#         vmlinuz (the lab kernel: iscsi_tcp and the iBFT built in) + initrd.img
#   p2  root, ext4 labelled sanboot-root (mke2fs -d): static busybox and
#       images/sanboot-base/init as /sbin/init (counts boots, see that file)
#
# The initramfs (images/sanboot-base/initramfs-init) logs in to the disk iPXE
# booted from, as the iBFT describes it, with open-iscsi's iscsistart (copied with
# the shared libraries it links), then mounts the root partition.
#
# Usage: images/build-sanboot-base.sh [--out DIR] [--kernel PATH] [--force]
#   --out DIR      output directory (default: images/build/sanboot/); writes base.raw
#   --kernel PATH  kernel (default: images/build/lab/vmlinuz, from build-lab-image.sh)
#   --force        rebuild even if the stamp says the inputs are unchanged
# Needs: busybox-static, open-iscsi, syslinux, syslinux-common, mtools, dosfstools,
# grub-efi-amd64-bin, grub-common, fdisk, e2fsprogs, cpio (qemu-tests/install-deps.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/build/sanboot"
kernel="$here/build/lab/vmlinuz"
force=0
die() { echo "build-sanboot-base: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --kernel) kernel="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
done

t0=$(date +%s.%N)
[ -f "$kernel" ] || die "kernel $kernel missing (build it: images/build-lab-image.sh)"
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] && file -L "$busybox" | grep -q 'statically linked' \
    || die "no static busybox (install busybox-static)"
iscsistart="$(PATH="$PATH:/usr/sbin:/sbin" command -v iscsistart || true)"
[ -n "$iscsistart" ] || die "iscsistart not found (install open-iscsi)"
mbr=/usr/lib/syslinux/mbr/mbr.bin
grub_dir=/usr/lib/grub/x86_64-efi
for tool in syslinux mcopy mmd mkfs.vfat sfdisk mke2fs grub-mkstandalone cpio; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null \
        || die "$tool not found (qemu-tests/install-deps.sh installs it)"
done
[ -f "$mbr" ] || die "$mbr missing (install syslinux-common)"
[ -d "$grub_dir" ] || die "$grub_dir missing (install grub-efi-amd64-bin)"
export PATH="$PATH:/usr/sbin:/sbin"

stamp_want="$(sha256sum "$kernel" "$busybox" "$iscsistart" "${BASH_SOURCE[0]}" \
    "$here/sanboot-base/init" "$here/sanboot-base/initramfs-init" "$mbr" | sha256sum | cut -d' ' -f1)"
if [ "$force" = 0 ] && [ -f "$out/stamp" ] && [ -f "$out/base.raw" ] \
    && [ "$(cat "$out/stamp")" = "$stamp_want" ]; then
    echo "build-sanboot-base: $out/base.raw up to date"
    exit 0
fi
mkdir -p "$out"
work="$(mktemp -d "$out/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Layout in MiB: 1 (MBR, gap) + ESP + root.
esp_mib=24
root_mib=32
# The ESP's volume id: GRUB finds the partition by it (`search --fs-uuid`).
volid="$(printf '%s' "$stamp_want" | cut -c1-8 | tr a-f A-F)"
uuid="${volid:0:4}-${volid:4:4}"

# --- initramfs: busybox + iscsistart and its libraries + init ------------------
ird="$work/initramfs"
mkdir -p "$ird"/{bin,sbin,etc/iscsi,proc,sys,dev,run,tmp,newroot,lib64}
cp "$busybox" "$ird/bin/busybox"
for applet in sh mount umount mkdir cat cut sleep ip awk tr findfs switch_root setsid \
    cttyhack echo ls dmesg; do
    ln -s busybox "$ird/bin/$applet"
done
cp "$iscsistart" "$ird/sbin/iscsistart"
# The shared libraries iscsistart links, at their own paths (ld.so finds them there).
ldd "$iscsistart" | awk '/=> \//{print $3} /^\t\/[^ ]*ld-linux/{print $1}' | while read -r lib; do
    mkdir -p "$ird$(dirname "$lib")"
    cp -L "$lib" "$ird$lib"
done
cp "$here/sanboot-base/initramfs-init" "$ird/init"
chmod 755 "$ird/init"
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -9 > "$work/initrd.img"

# --- ESP: kernel, initramfs, syslinux (BIOS), standalone GRUB (UEFI) ----------
cmdline="console=ttyS0 sanboot.root_label=sanboot-root"
cat > "$work/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT sanboot
PROMPT 0
TIMEOUT 0
LABEL sanboot
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
EOF
cat > "$work/grub.cfg" <<EOF
set timeout=0
search --no-floppy --fs-uuid --set=root $uuid
echo "sanboot-base: loading the kernel from (\$root)"
linux /vmlinuz $cmdline
initrd /initrd.img
boot
EOF
grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" \
    --modules="part_msdos fat search search_fs_uuid linux echo normal" \
    --install-modules="part_msdos fat search search_fs_uuid linux echo normal boot configfile gzio" \
    --locales="" --fonts="" --themes="" \
    "boot/grub/grub.cfg=$work/grub.cfg"
esp="$work/esp.img"
truncate -s "${esp_mib}M" "$esp"
# -h 2048: hidden sectors = the partition's start, which the syslinux boot sector uses.
mkfs.vfat -F 16 -n SANBOOT -i "$volid" -h 2048 "$esp" >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT
mcopy -i "$esp" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$kernel" ::/vmlinuz
mcopy -i "$esp" "$work/initrd.img" ::/initrd.img
mcopy -i "$esp" "$work/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$esp"

# --- root: busybox + the image's init ------------------------------------------
rootd="$work/root"
mkdir -p "$rootd"/{bin,sbin,etc,proc,sys,dev,run,tmp,var/lib/sanboot,root}
cp "$busybox" "$rootd/bin/busybox"
"$busybox" --list | while read -r applet; do
    [ "$applet" = busybox ] || [ "$applet" = init ] || ln -s busybox "$rootd/bin/$applet"
done
cp "$here/sanboot-base/init" "$rootd/sbin/init"
chmod 755 "$rootd/sbin/init"
echo sanboot-base > "$rootd/etc/hostname"
rootimg="$work/root.img"
mke2fs -q -t ext4 -L sanboot-root -E root_owner=0:0 -d "$rootd" "$rootimg" "${root_mib}M"

# --- the disk --------------------------------------------------------------------
disk="$work/base.raw"
truncate -s "$((1 + esp_mib + root_mib))M" "$disk"
sfdisk --quiet "$disk" <<EOF
label: dos
unit: sectors
start=2048, size=$((esp_mib * 2048)), type=ef, bootable
start=$(((1 + esp_mib) * 2048)), size=$((root_mib * 2048)), type=83
EOF
dd if="$mbr" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc status=none
dd if="$rootimg" of="$disk" bs=1M seek=$((1 + esp_mib)) conv=notrunc status=none
mv "$disk" "$out/base.raw"
echo "$stamp_want" > "$out/stamp"
echo "build-sanboot-base: $out/base.raw ($(du -h --apparent-size "$out/base.raw" | cut -f1)," \
    "initrd $(du -h "$work/initrd.img" | cut -f1), BOOTX64.EFI $(du -h "$work/BOOTX64.EFI" | cut -f1))" \
    "in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
