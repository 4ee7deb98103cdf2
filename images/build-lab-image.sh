#!/usr/bin/env bash
# Builds the default "lab" boot image from Debian packages already on the machine
# (no downloads): the lab kernel (images/build-lab-kernel.sh: Debian's kernel source,
# minimal config, everything built in, LZ4 bzImage; built once per machine and cached)
# copied to `vmlinuz`, and a small initramfs `initrd.img` holding busybox
# (busybox-static) and the node-agent. With --debian-kernel the image uses Debian's
# stock kernel (linux-image-amd64) and the initramfs carries and loads the modules a
# node needs, as before (for comparison).
#
# Usage: images/build-lab-image.sh [--out DIR] [--agent PATH] [--compress KIND] [--force]
#          [--debian-kernel [--kver VERSION]] [--kernel-compress KIND]
#   --out DIR        output directory (default: images/build/lab/)
#   --agent PATH     node-agent binary (default: $CARGO_TARGET_DIR or target/ release
#                    build; built static with crt-static when missing)
#   --no-agent       build the image without the agent (init keeps a shell)
#   --compress KIND  initramfs compression: gzip | lz4 | zstd | xz | none (default: lz4,
#                    the fastest to unpack under TCG, see images/lab/README.md)
#   --debian-kernel  Debian's stock kernel + its modules instead of the lab kernel
#   --kver VERSION   with --debian-kernel: kernel version (default: newest
#                    /boot/vmlinuz-* with modules)
#   --kernel-compress KIND  lab kernel bzImage compression: lz4 (default) | lzo |
#                    gzip | zstd | xz (see images/build-lab-kernel.sh)
#   --force          rebuild even if the stamp says the inputs are unchanged
#
# Cache: a stamp file in the output directory holds a hash of every input (kernel
# version and image, busybox, agent, this script, module list, compression); the image
# is rebuilt only when that hash changes. The lab kernel has its own cache (keyed by
# its config fragment and source version, see images/build-lab-kernel.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

out="$here/build/lab"
agent=""
no_agent=0
compress="lz4"
kver=""
force=0
debian_kernel=0
kernel_compress=lz4

# --debian-kernel only (the lab kernel has all of this built in): modules the node
# needs; their dependencies are pulled from modules.dep. af_packet (udhcpc raw
# sockets), unix, 8250 serial and devtmpfs are built into Debian's kernel.
MODULES=(virtio_pci virtio_net e1000 virtio_blk nbd efivarfs)
# Shipped but loaded only on demand (modprobe): ext4 for a root file system on NBD.
ONDEMAND_MODULES=(ext4 crc32c_generic)

die() { echo "build-lab-image: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --agent) agent="$2"; shift 2 ;;
        --no-agent) no_agent=1; shift ;;
        --compress) compress="$2"; shift 2 ;;
        --kver) kver="$2"; shift 2 ;;
        --debian-kernel) debian_kernel=1; shift ;;
        --kernel-compress) kernel_compress="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

# ---- inputs -------------------------------------------------------------------
if [ "$debian_kernel" = 1 ]; then
    if [ -z "$kver" ]; then
        for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V -r); do
            if [ -d "/lib/modules/$k" ]; then kver="$k"; break; fi
        done
    fi
    [ -n "$kver" ] || die "no /boot/vmlinuz-* with /lib/modules/<ver> (install linux-image-amd64)"
    kernel="/boot/vmlinuz-$kver"
    moddir="/lib/modules/$kver"
    [ -r "$kernel" ] || die "kernel $kernel not readable"
    [ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep missing"
    kind="debian"
else
    [ -z "$kver" ] || die "--kver needs --debian-kernel"
    kernel="$("$here/build-lab-kernel.sh" --compress "$kernel_compress" | tail -n 1)" \
        || die "lab kernel build failed"
    kver="$(cat "$(dirname "$kernel")/kernelrelease")"
    kind="lab-$kernel_compress"
fi

busybox="$(command -v busybox || true)"
[ -n "$busybox" ] || die "busybox not found (install busybox-static)"
file -L "$busybox" | grep -q 'statically linked' || die "$busybox is not static (install busybox-static)"

find_agent() {
    local td="${CARGO_TARGET_DIR:-$repo/target}"
    for p in "$td/x86_64-unknown-linux-gnu/release/node-agent" "$td/release/node-agent"; do
        if [ -x "$p" ]; then echo "$p"; return 0; fi
    done
    return 1
}
if [ "$no_agent" = 0 ] && [ -z "$agent" ]; then
    if ! agent="$(find_agent)"; then
        echo "build-lab-image: node-agent missing, building it static" >&2
        (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
            cargo build --release -p node-agent --target x86_64-unknown-linux-gnu >&2)
        agent="$(find_agent)" || die "node-agent build produced no binary"
    fi
fi
if [ "$no_agent" = 0 ]; then
    [ -x "$agent" ] || die "agent $agent not executable"
    if file -L "$agent" | grep -q 'dynamically linked'; then
        die "agent $agent is dynamically linked; build with RUSTFLAGS=\"-C target-feature=+crt-static\""
    fi
fi

case "$compress" in
    gzip) ccmd=(gzip -9 -n) ;;
    lz4) ccmd=(lz4 -l -9 -q) ;;   # the kernel only unpacks the legacy lz4 format
    zstd) ccmd=(zstd -19 -q --check) ;;
    xz) ccmd=(xz -9 --check=crc32 -q) ;;  # kernel's xz needs crc32 (or none)
    none) ccmd=(cat) ;;
    *) die "unknown compression $compress" ;;
esac

# Resolve module files (with dependencies) in load order.
resolve_modules() {
    local -A seen=()
    local order=()
    visit() {
        local rel="$1" deps d
        [ -n "${seen[$rel]:-}" ] && return 0
        seen[$rel]=1
        deps="$(awk -v m="$rel:" '$1 == m { $1 = ""; print }' "$moddir/modules.dep")"
        for d in $deps; do visit "$d"; done
        order+=("$rel")
    }
    local m rel
    for m in "$@"; do
        if grep -qE "/${m}\.ko$" "$moddir/modules.builtin" 2>/dev/null; then
            continue
        fi
        rel="$(awk -F: -v m="$m" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n); if (n == m) { print $1; exit } }' "$moddir/modules.dep")"
        [ -n "$rel" ] || die "module $m neither built in nor in $moddir"
        visit "$rel"
    done
    printf '%s\n' "${order[@]}"
}
modfiles=() allmodfiles=()
if [ "$debian_kernel" = 1 ]; then
    mapfile -t modfiles < <(resolve_modules "${MODULES[@]}")
    mapfile -t allmodfiles < <(resolve_modules "${MODULES[@]}" "${ONDEMAND_MODULES[@]}")
fi

hash_inputs() {
    {
        echo "kernel=$kind kver=$kver compress=$compress modules=${allmodfiles[*]}"
        sha256sum "$kernel" "$busybox" "${BASH_SOURCE[0]}" "$here/lab/init" "$here/lab/udhcpc.script"
        iscsistart="$(PATH="$PATH:/usr/sbin:/sbin" command -v iscsistart || true)"
        [ -n "$iscsistart" ] && sha256sum "$iscsistart"
        iscsid="$(PATH="$PATH:/usr/sbin:/sbin" command -v iscsid || true)"
        [ -n "$iscsid" ] && sha256sum "$iscsid"
        [ "$no_agent" = 1 ] && echo "no-agent" || sha256sum "$agent"
        for f in "${allmodfiles[@]}"; do sha256sum "$moddir/$f"; done
    } | sed "s|$repo/||" | sha256sum | cut -d' ' -f1
}
stamp_want="$(hash_inputs)"
mkdir -p "$out"
if [ "$force" = 0 ] && [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp_want" ] \
    && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ -s "$out/rootfs.raw" ]; then
    echo "build-lab-image: up to date ($out)"
    exit 0
fi

# ---- build --------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/lab-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,var/run,mnt}
mkdir -p "$root/usr/share/udhcpc"

cp "$busybox" "$root/bin/busybox"
# Applet symlinks at their canonical paths.
"$busybox" --list-full | while read -r applet; do
    [ "$applet" = "bin/busybox" ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

if [ "$no_agent" = 0 ]; then
    install -m 0755 "$agent" "$root/bin/node-agent"
    strip "$root/bin/node-agent" 2>/dev/null || true
fi

install -m 0755 "$here/lab/init" "$root/init"
install -m 0755 "$here/lab/udhcpc.script" "$root/usr/share/udhcpc/default.script"

# Modules (Debian kernel only): /init insmods /etc/modules.load when it exists.
if [ "$debian_kernel" = 1 ]; then
    mkdir -p "$root/lib/modules/$kver"
    : > "$root/etc/modules.load"
    for f in "${allmodfiles[@]}"; do
        mkdir -p "$root/lib/modules/$kver/$(dirname "$f")"
        cp "$moddir/$f" "$root/lib/modules/$kver/$f"
    done
    for f in "${modfiles[@]}"; do echo "/lib/modules/$kver/$f" >> "$root/etc/modules.load"; done
    cp "$moddir/modules.builtin" "$root/lib/modules/$kver/"
    printf '%s\n' "${allmodfiles[@]}" > "$root/lib/modules/$kver/modules.order"
    [ -f "$moddir/modules.builtin.modinfo" ] && cp "$moddir/modules.builtin.modinfo" "$root/lib/modules/$kver/"
    depmod -b "$root" "$kver"
fi

cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
echo "root:x:0:" > "$root/etc/group"
echo "lab" > "$root/etc/hostname"
cat > "$root/etc/image-release" <<EOF
name=lab
kernel=$kver
kernel_kind=$kind
compress=$compress
inputs=$stamp_want
EOF

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
    | "${ccmd[@]}" > "$work/initrd.img"

# The same tree as an ext4 disk (base for per-node NBD root overlays); /etc/rootfs
# tells /init it runs from the network disk.
echo "lab root file system on a network disk" > "$root/etc/rootfs"
mkdir -p "$root/var/lib"
mkfs.ext4 -q -F -L labroot -d "$root" "$work/rootfs.raw" 64M

# initrd-iscsi.img: the same initramfs plus open-iscsi's iscsistart and its shared
# libraries (a second compressed cpio appended: the kernel unpacks both), for images
# whose root disk goes over iSCSI (disk_transport = "iscsi"). Only those nodes load
# the extra ~3.5 MB; the plain initrd.img stays as it was.
# It also carries iscsid with its own libraries and loader under /opt/iscsid: /init
# copies that directory to /run (a tmpfs that moves into the new root) and starts
# iscsid chrooted into the new root just before switch_root. iscsid adopts the
# session iscsistart made (reading its CHAP logins back from sysfs) and logs in again
# whenever the connection drops, e.g. across a boot-server restart; without it the
# kernel's session stays failed and the root's I/O fails after the replacement timeout.
iscsistart="$(PATH="$PATH:/usr/sbin:/sbin" command -v iscsistart || true)"
iscsid="$(PATH="$PATH:/usr/sbin:/sbin" command -v iscsid || true)"
if [ -n "$iscsistart" ]; then
    add="$work/iscsi-add"
    mkdir -p "$add/sbin" "$add/etc/iscsi" "$add/run/lock/iscsi"
    cp "$iscsistart" "$add/sbin/iscsistart"
    ldd "$iscsistart" | awk '/=> \//{print $3} /^\t\/[^ ]*ld-linux/{print $1}' | while read -r lib; do
        mkdir -p "$add$(dirname "$lib")"
        cp -L "$lib" "$add$lib"
    done
    if [ -n "$iscsid" ]; then
        keep="$add/opt/iscsid"
        mkdir -p "$keep/lib"
        cp "$iscsid" "$keep/iscsid"
        ldd "$iscsid" | awk '/=> \//{print $3}' | while read -r lib; do cp -L "$lib" "$keep/lib/"; done
        cp -L "$(ldd "$iscsid" | awk '/^\t\/[^ ]*ld-linux/{print $1}')" "$keep/ld.so"
        # Re-login settings: a dead connection is noticed by NOP-Outs within ~15 s,
        # iscsid retries for ever, and the kernel holds the root's I/O for up to
        # 600 s meanwhile (as the NBD keeper's --dead-timeout 600).
        cat > "$keep/iscsid.conf" <<'CONF'
node.session.timeo.replacement_timeout = 600
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 10
node.conn[0].timeo.login_timeout = 15
node.session.reopen_max = 0
CONF
    else
        echo "build-lab-image: iscsid not found (open-iscsi): iSCSI roots will not log in again after a server restart" >&2
    fi
    (cd "$add" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
        | "${ccmd[@]}" > "$work/iscsi-add.img"
    cat "$work/initrd.img" "$work/iscsi-add.img" > "$work/initrd-iscsi.img"
else
    echo "build-lab-image: iscsistart not found (open-iscsi): no initrd-iscsi.img" >&2
fi

cp "$kernel" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/initrd.img" "$out/initrd.img"
[ -f "$work/initrd-iscsi.img" ] && mv -f "$work/initrd-iscsi.img" "$out/initrd-iscsi.img"
mv -f "$work/rootfs.raw" "$out/rootfs.raw"
echo "$stamp_want" > "$out/stamp"
echo "build-lab-image: built $out (kernel $kver $(stat -c %s "$out/vmlinuz") bytes, initrd $(stat -c %s "$out/initrd.img") bytes, $compress, ${#modfiles[@]} modules)"
