#!/usr/bin/env bash
# All tests: unit + integration (cargo, real Debian clients), the QEMU lab tests
# (conventional stack and boot-server, BIOS and UEFI guests) and a fuzz smoke run.
# Needs root for network namespaces and QEMU taps (CI runs as root).
#
# Every suite reports `N passed, M failed, K skipped` (cargo suites: libtest's counts,
# with tests that printed `SKIP: <test>: <reason>` moved from passed to skipped);
# test-all sums them. A suite that exits non-zero, or prints no summary, counts as a
# failure even when its counts say otherwise: a suite that could not run did not pass.
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
logs="$(mktemp -d /tmp/test-all.XXXXXX)"
# A lab run with failed checks leaves its server log and guest serials here.
export LAB_FAILED_LOGS="$logs/lab-failed"
t_all=$SECONDS

total_p=0 total_f=0 total_s=0 failures=()
# suite NAME KIND CMD...   KIND: cargo (libtest output) | script (prints N passed, M failed[, K skipped])
#                               | step (a build step: 1 passed or 1 failed)
suite() {
    local name="$1" kind="$2"; shift 2
    local log="$logs/$name.log" t0=$SECONDS rc p=0 f=0 s=0 line
    echo "==== $name: $*"
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    s="$(grep -c '^SKIP: ' "$log")"
    case "$kind" in
        cargo)
            while read -r line; do
                p=$((p + $(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$line")))
                f=$((f + $(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")))
            done < <(grep -E '^test result: ' "$log")
            p=$((p - s)); [ "$p" -ge 0 ] || p=0
            [ "$rc" = 0 ] || [ "$f" -gt 0 ] || f=1 ;;
        script)
            line="$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)"
            if [ -z "$line" ]; then
                f=1
            else
                p="$(sed -E 's/^([0-9]+) passed.*/\1/' <<<"$line")"
                f="$(sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/' <<<"$line")"
                s="$(sed -nE 's/.*, ([0-9]+) skipped.*/\1/p' <<<"$line")"; s="${s:-0}"
            fi
            [ "$rc" = 0 ] || [ "$f" -gt 0 ] || f=1 ;;
        step)
            if [ "$rc" = 0 ]; then p=1; else f=1; fi ;;
    esac
    total_p=$((total_p + p)) total_f=$((total_f + f)) total_s=$((total_s + s))
    [ "$f" = 0 ] || failures+=("$name")
    echo "==== $name: $p passed, $f failed, $s skipped ($((SECONDS - t0)) s)"
}

# The web UI's vendored files (uPlot) are what its package-lock.json gives.
suite ui-vendor step "$repo/boot-server/ui/vendor.sh" --check
# --- PostgreSQL for the store's conformance tests (store/postgres) ---------
# A private cluster on 127.0.0.1:55432 (qemu-tests/lib/test-postgres.sh);
# the cargo suite reads BOOT_TEST_PG_URL (an URL already set is kept).
if [ -z "${BOOT_TEST_PG_URL:-}" ]; then
    if BOOT_TEST_PG_URL="$("$here/lib/test-postgres.sh" start)"; then
        export BOOT_TEST_PG_URL
        trap '"$here/lib/test-postgres.sh" stop' EXIT
    else
        echo "test-all: PostgreSQL for the store tests did not start; its tests fail under CI" >&2
        unset BOOT_TEST_PG_URL
    fi
fi
# --- end PostgreSQL --------------------------------------------------------

# Release profile: the lab then boots the very binaries the tests ran.
suite cargo-test cargo cargo test --release --workspace --no-fail-fast
suite api script "$here/test-api.sh"
if [ "$lab" = 1 ]; then
    suite agent-build step env RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -p node-agent --target x86_64-unknown-linux-gnu
    suite lab-image step "$repo/images/build-lab-image.sh" --agent "$td/x86_64-unknown-linux-gnu/release/node-agent"
    suite lab-conventional script "$here/test-lab.sh"
    suite lab-boot-server script "$here/test-boot-server.sh"
    suite lab-nbd-reconnect script "$here/test-nbd-reconnect.sh"
    suite lab-powerloss script "$here/test-powerloss.sh"
    suite agent-qemu-smoke script "$repo/node-agent/tests/qemu-smoke.sh" "$td/x86_64-unknown-linux-gnu/release/node-agent"
    suite lab-engine script "$here/test-engine.sh"
    suite lab-ha script "$here/test-ha.sh"
    suite lab-clone script "$here/test-clone.sh"
    suite lab-migrate script "$here/test-migrate.sh"
    suite lab-sanboot script "$here/test-sanboot.sh"
    suite lab-failover script "$here/test-failover.sh"
    suite lab-ui script "$here/test-ui.sh"
    # Every benchmark once at a tiny size (does it still work; no figure is a claim).
    suite bench-smoke script "$here/bench/all.sh" --smoke
fi
if [ "$fuzz" = 1 ]; then
    suite fuzz-smoke step env FUZZ_SECONDS="${FUZZ_SECONDS:-10}" "$repo/boot-server/fuzz/smoke.sh"
fi
# What failed, again at the very end (where a CI log's tail shows it).
for name in "${failures[@]}"; do
    echo "---- $name: its failures and last lines"
    grep -E '^(not ok|FAIL|SKIP)|panicked at|^test .* FAILED$' "$logs/$name.log" | head -n 20
    tail -n 15 "$logs/$name.log"
done
[ ${#failures[@]} -eq 0 ] || echo "failed suites: ${failures[*]}"
echo "test-all: $total_p passed, $total_f failed, $total_s skipped ($((SECONDS - t_all)) s; logs in $logs)"
[ "$total_f" = 0 ]
