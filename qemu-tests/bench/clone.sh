#!/usr/bin/env bash
# qemu-tests/bench/clone.sh [-n RUNS]: live clone figures, median of RUNS (default 3):
# the template's pause (agent-measured, freeze -> thaw) and clone request -> new slot ready,
# from qemu-tests/test-clone.sh run with CLONE_RUNS (its checks run once, then RUNS-1 more
# clone + remove-node cycles on the same fleet). Needs root; not in CI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
n=3
while [ $# -gt 0 ]; do
    case "$1" in
        -n) n="$2"; shift 2 ;;
        *) echo "usage: $0 [-n RUNS]" >&2; exit 2 ;;
    esac
done
CLONE_RUNS="$n" exec "$here/../test-clone.sh"
