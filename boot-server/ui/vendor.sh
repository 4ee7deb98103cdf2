#!/usr/bin/env bash
# boot-server/ui/vendor.sh: copies the web UI's third-party files (uPlot, pinned in
# package.json + package-lock.json) from node_modules into assets/vendor/, which is
# committed and embedded in the binary (a plain `cargo build` needs no npm).
#   vendor.sh          npm ci, then copy
#   vendor.sh --check  npm ci, copy into a scratch dir and fail when it differs from
#                      the committed assets/vendor/ (CI: test-all's ui-vendor step)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
check=0
[ "${1:-}" = --check ] && check=1
cd "$here"
npm ci --no-audit --no-fund --loglevel=error >&2
dest="$here/assets/vendor"
[ "$check" = 1 ] && dest="$(mktemp -d)"
mkdir -p "$dest"
cp node_modules/uplot/dist/uPlot.esm.js "$dest/uPlot.esm.js"
cp node_modules/uplot/dist/uPlot.min.css "$dest/uPlot.min.css"
cp node_modules/uplot/LICENSE "$dest/uPlot.LICENSE"
if [ "$check" = 1 ]; then
    if diff -r "$dest" "$here/assets/vendor"; then
        echo "ui vendor files match package-lock.json"
        rm -rf "$dest"
    else
        echo "assets/vendor/ differs from what package-lock.json gives: run boot-server/ui/vendor.sh and commit" >&2
        rm -rf "$dest"
        exit 1
    fi
fi
