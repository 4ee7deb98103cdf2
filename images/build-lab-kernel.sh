#!/usr/bin/env bash
# Builds the lab kernel: Debian's kernel source (linux-source-<ver> package) with
# `make allnoconfig` + the fragment images/lab/kernel.config, everything built in (no
# modules), bzImage compressed with LZ4. Prints the bzImage path on stdout (last
# line); everything else goes to stderr.
#
# Usage: images/build-lab-kernel.sh [--cache DIR] [--compress lz4|lzo|gzip|zstd|xz]
#                                    [--fragment FILE] [--force]
#   --cache DIR      cache directory (default: $LAB_KERNEL_CACHE, else
#                    images/build/kernel-cache/)
#   --compress KIND  bzImage compression (default lz4; x86 has no uncompressed bzImage
#                    in 6.1)
#   --fragment FILE  config fragment (default images/lab/kernel.config)
#   --force          rebuild even when the cache holds this kernel
#
# Cache: <cache>/<hash>/bzImage, where hash covers the fragment, the source package
# version and tarball, the compression, the compiler version and RECIPE below; a
# machine builds each kernel once. The unpacked source stays in <cache>/src/<ver>/
# (shared by all configs, built out of tree); the object tree of a finished build is
# removed. A lock file serialises concurrent builds of the same cache.
#
# Needs: linux-source-6.1 (or another linux-source-*), bc bison flex libelf-dev
# libssl-dev make gcc cpio lz4 (qemu-tests/install-deps.sh installs them).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Bump when the build steps below change what they produce.
RECIPE=1

cache="${LAB_KERNEL_CACHE:-$here/build/kernel-cache}"
compress=lz4
fragment="$here/lab/kernel.config"
force=0

die() { echo "build-lab-kernel: $*" >&2; exit 1; }
log() { echo "build-lab-kernel: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cache) cache="$2"; shift 2 ;;
        --compress) compress="$2"; shift 2 ;;
        --fragment) fragment="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
case "$compress" in
    lz4|lzo|gzip|zstd|xz) ;;
    *) die "unknown --compress $compress (lz4 lzo gzip zstd xz)" ;;
esac
[ -r "$fragment" ] || die "config fragment $fragment not readable"

# ---- inputs -------------------------------------------------------------------
tarball="$(ls -1 /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n 1 || true)"
[ -n "$tarball" ] || die "no /usr/src/linux-source-*.tar.xz (apt-get install linux-source)"
pkg="$(basename "$tarball" .tar.xz)"   # linux-source-6.1
pkgver="$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)"
[ -n "$pkgver" ] || pkgver="$(stat -c %s-%Y "$tarball")"
for t in make gcc bc bison flex lz4 perl; do
    command -v "$t" >/dev/null || die "$t missing (qemu-tests/install-deps.sh installs the kernel build tools)"
done
[ -e /usr/include/libelf.h ] || die "libelf.h missing (apt-get install libelf-dev)"
[ -e /usr/include/openssl/ssl.h ] || die "openssl headers missing (apt-get install libssl-dev)"

hash="$({
    echo "recipe=$RECIPE pkg=$pkg ver=$pkgver compress=$compress arch=x86_64"
    gcc -dumpfullversion
    stat -c %s "$tarball"
    sha256sum < "$fragment"
} | sha256sum | cut -c1-16)"
dir="$cache/$hash"

if [ "$force" = 0 ] && [ -s "$dir/bzImage" ]; then
    log "cached $dir/bzImage ($(cat "$dir/kernelrelease" 2>/dev/null))"
    echo "$dir/bzImage"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
    log "another build holds $cache/.lock; waiting"
    flock 9
fi
# Another process may have built it while we waited.
if [ "$force" = 0 ] && [ -s "$dir/bzImage" ]; then
    echo "$dir/bzImage"
    exit 0
fi

# ---- source: unpacked once per package version --------------------------------
src="$cache/src/$pkg-$pkgver"
if [ ! -f "$src/.unpacked" ]; then
    log "unpacking $tarball ($pkgver)"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xaf "$tarball" -C "$src.tmp" --strip-components=1
    touch "$src.tmp/.unpacked"
    mv "$src.tmp" "$src"
fi

# ---- configure: allnoconfig + fragment, every fragment line must survive -------
obj="$dir/obj"
rm -rf "$dir"
mkdir -p "$obj"
start=$(date +%s)
kmake() { nice -n 10 make -C "$src" O="$obj" ARCH=x86_64 "$@"; }
frag="$obj/lab.config"
{
    grep -vE '^(# )?CONFIG_KERNEL_(GZIP|BZIP2|LZMA|XZ|LZO|LZ4|ZSTD)[= ]' "$fragment"
    echo "CONFIG_KERNEL_${compress^^}=y"
} > "$frag"
kmake allnoconfig >/dev/null
(cd "$obj" && KCONFIG_CONFIG="$obj/.config" "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$frag") >/dev/null
kmake olddefconfig >/dev/null
bad=""
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) sym="${line%%=*}" ;;
        "# CONFIG_"*" is not set") sym="${line#\# }"; sym="${sym%% *}" ;;
        *) continue ;;
    esac
    have="$(grep -E "^$sym=|^# $sym is not set" "$obj/.config" || true)"
    if [ "$have" != "$line" ] && ! { [ -z "$have" ] && [ "${line#\# }" != "$line" ]; }; then
        bad="$bad
  want: $line   got: ${have:-(absent)}"
    fi
done < "$frag"
[ -z "$bad" ] || die "config fragment lines lost in the merge (missing dependency?):$bad"

# ---- build ----------------------------------------------------------------------
log "building $pkg $pkgver ($compress) in $obj; log $dir/build.log"
if ! kmake -j"${LAB_KERNEL_JOBS:-2}" bzImage > "$dir/build.log" 2>&1; then
    tail -n 30 "$dir/build.log" >&2
    die "kernel build failed (full log $dir/build.log)"
fi
secs=$(( $(date +%s) - start ))
cp "$obj/arch/x86/boot/bzImage" "$dir/bzImage.tmp"
cp "$obj/.config" "$dir/config"
kmake -s kernelrelease > "$dir/kernelrelease"
echo "$pkg $pkgver compress=$compress build_secs=$secs" > "$dir/info"
rm -rf "$obj"
mv "$dir/bzImage.tmp" "$dir/bzImage"
log "built $dir/bzImage ($(stat -c %s "$dir/bzImage") bytes, $(cat "$dir/kernelrelease")) in ${secs}s"
echo "$dir/bzImage"
