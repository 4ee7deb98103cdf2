#!/usr/bin/env bash
# Runs every fuzz target for a short smoke time (default 20 s each).
# Longer runs: FUZZ_SECONDS=3600 boot-server/fuzz/smoke.sh [target...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-20}
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
echo "fuzz smoke: ${#targets[@]} targets ran clean"
