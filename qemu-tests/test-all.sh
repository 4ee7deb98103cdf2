#!/usr/bin/env bash
# All tests: unit + integration (cargo, real Debian clients), the QEMU lab tests
# (conventional stack and boot-server, BIOS and UEFI guests) and a fuzz smoke run.
# Needs root for network namespaces and QEMU taps (CI runs as root).
# Usage: qemu-tests/test-all.sh [--no-lab] [--no-fuzz]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
lab=1 fuzz=1
for a in "$@"; do
    case "$a" in
        --no-lab) lab=0 ;;
        --no-fuzz) fuzz=0 ;;
        *) echo "unknown argument $a" >&2; exit 2 ;;
    esac
done
cd "$repo"
"$here/install-deps.sh" || exit 1
export CARGO_TERM_COLOR=never
td="${CARGO_TARGET_DIR:-$repo/target}"

passed=0 failed=0 failures=()
suite() {
    local name="$1"; shift
    echo "==== $name: $*"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1)); echo "==== $name: ok ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "==== $name: FAILED ($((SECONDS - t0)) s)"
    fi
}

# Release profile: the lab then boots the very binaries the tests ran.
suite cargo-test cargo test --release --workspace --no-fail-fast
if [ "$lab" = 1 ]; then
    suite agent-build env RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -p node-agent --target x86_64-unknown-linux-gnu
    suite lab-image "$repo/images/build-lab-image.sh" --agent "$td/x86_64-unknown-linux-gnu/release/node-agent"
    suite lab-conventional "$here/test-lab.sh"
    suite lab-boot-server "$here/test-boot-server.sh"
fi
if [ "$fuzz" = 1 ]; then
    suite fuzz-smoke env FUZZ_SECONDS="${FUZZ_SECONDS:-10}" "$repo/boot-server/fuzz/smoke.sh"
fi
[ ${#failures[@]} -eq 0 ] || echo "failed suites: ${failures[*]}"
echo "test-all: $passed passed, $failed failed"
[ "$failed" = 0 ]
