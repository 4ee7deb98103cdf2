# shellcheck shell=bash
# qemu-tests/lib/summary.sh: one way for every test script to count and report.
#
# Source it, then call t_ok/t_fail/t_skip for each check, and t_summary at the end:
#   t_ok "what passed"            ok   - what passed
#   t_fail "what failed"          FAIL - what failed
#   t_skip "what" "why"           SKIP: what: why       (a failure when CI is set)
#   t_check "what" CMD...         t_ok or t_fail by CMD's exit status
#   t_summary                     prints `N passed, M failed, K skipped`; returns 1 on failures
# Under CI (CI set and not 0/false) a skip is a failure: CI installs everything the
# tests need, so a missing tool is a broken run, not a pass.
T_PASSED=0 T_FAILED=0 T_SKIPPED=0
t_under_ci() { case "${CI:-}" in ""|0|false|FALSE|False) return 1 ;; *) return 0 ;; esac; }
t_ok() { echo "ok   - $1"; T_PASSED=$((T_PASSED + 1)); }
t_fail() { echo "FAIL - $1"; T_FAILED=$((T_FAILED + 1)); }
t_skip() {
    if t_under_ci; then t_fail "$1 (needed under CI: $2)"; return; fi
    echo "SKIP: $1: $2"; T_SKIPPED=$((T_SKIPPED + 1))
}
t_check() { local what="$1"; shift; if "$@"; then t_ok "$what"; else t_fail "$what"; fi; }
t_summary() { echo "$T_PASSED passed, $T_FAILED failed, $T_SKIPPED skipped"; [ "$T_FAILED" = 0 ]; }
