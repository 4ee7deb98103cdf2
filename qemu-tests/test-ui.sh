#!/usr/bin/env bash
# qemu-tests/test-ui.sh: acceptance test of boot-server's web UI in a real browser
# (Debian's Chromium driven by playwright-core, pinned in qemu-tests/ui/package-lock.json).
#
# One lab namespace (bootlab-<pid>-ui) with boot-server in full DHCP mode and one BIOS TCG
# guest (MAC 52:54:00:e1:00:01) booted into the default image. The browser runs inside
# the namespace against http://10.77.0.1:8080/ui/ and, as an operator would:
#   - logs in with the admin token (a wrong one is refused);
#   - sees the node with its agent up on the dashboard, opens its boot timeline
#     (DHCP, script, kernel, initrd, agent ready, with durations), load chart, inventory;
#   - creates an environment with the wizard (image `uienv`: the lab files under another
#     name), scales it to 1 and sees the engine's decision appear live (no reload), then
#     the slot reach `ready`;
#   - revokes a token and sees the UI refuse it (SKIP while the server has no /api/tokens);
#   - renders every view; then enrols 1,000 synthetic nodes through POST /api/nodes and
#     measures the nodes view: hash change -> table painted, median of 3, must be < 1 s.
# Also checks (curl) content types, ETag revalidation and that the event stream needs
# the token. Screenshots: $OUT (default qemu-tests/run/test-ui/), listed at the end.
# Prints `N passed, M failed, K skipped` and its elapsed time. Needs root, chromium, npm.
# Usage: qemu-tests/test-ui.sh [--out DIR] [--timeout S]
#   (UI_STEPS=login,dashboard,... runs some browser steps only, see qemu-tests/ui/ui-test.mjs)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
out="$repo/qemu-tests/run/test-ui" timeout=240
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"
# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
t0_all=$SECONDS
done_() { echo "test-ui: $((SECONDS - t0_all)) s"; t_summary; exit; }
if ! lab_require_root; then t_skip "test-ui.sh" "needs root (network namespaces, tap devices)"; done_; fi
for tool in chromium npm node jq curl; do
    command -v "$tool" >/dev/null || { t_skip "test-ui.sh" "$tool missing (qemu-tests/install-deps.sh)"; done_; }
done
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
[ -x "$server" ] || { t_fail "missing $server (cargo build --release -p boot-server)"; done_; }
[ -f "$repo/images/build/lab/initrd.img" ] || { t_fail "missing lab image (images/build-lab-image.sh)"; done_; }

if ! (cd "$here/ui" && npm ci --no-audit --no-fund --loglevel=error); then
    t_fail "npm ci in qemu-tests/ui (playwright-core)"; done_
fi
rm -rf "$out"; mkdir -p "$out"
t_check "the boot timeline's phase logic (node --test qemu-tests/ui/timeline.test.mjs)" \
    node --test "$here/ui/timeline.test.mjs"

mac=52:54:00:e1:00:01 node_id=node-525400e10001
lab_gc
lab_create ui || { t_fail "lab namespace"; done_; }
lab_start_boot_server "$server" "$LAB_DIR/state" || { t_fail "boot-server starts in the lab"; done_; }
cli() { "$server" --config "$LAB_SERVER_CONFIG" "$@"; }
base="http://$LAB_BRIDGE_ADDR:8080"
token="$(cat "$LAB_DIR/state/admin.token")"
sed -e 's/^name = "lab"/name = "uienv"/' "$repo/images/lab/image.toml" > "$LAB_DIR/uienv.toml"
cli image add --server-path "$LAB_DIR/uienv.toml" >/dev/null || t_fail "image uienv added"

# ---- HTTP-level checks (curl) ------------------------------------------------------
hdr() { lab_exec curl -s -D - -o /dev/null "$@"; }
ct="$(hdr "$base/ui/app.js" | tr -d '\r' | sed -n 's/^content-type: //Ip')"
t_check "GET /ui/app.js is served as JavaScript ($ct)" grep -q javascript <<<"$ct"
etag="$(hdr "$base/ui/style.css" | tr -d '\r' | sed -n 's/^etag: //Ip')"
code="$(lab_exec curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$base/ui/style.css")"
t_check "an unchanged UI file revalidates with 304 (ETag $etag)" test "$code" = 304
code="$(lab_exec curl -s -o /dev/null -w '%{http_code}' -m 3 "$base/api/events/stream")"
t_check "the event stream refuses a request without the token (HTTP $code)" test "$code" = 401
lab_exec curl -sN -m 3 -H "Authorization: Bearer $token" "$base/api/events/stream" > "$LAB_DIR/sse.txt" 2>/dev/null
t_check "the event stream answers Server-Sent Events with the token" grep -q '^event: open' "$LAB_DIR/sse.txt"

# ---- the lab node ------------------------------------------------------------------
t_boot=$SECONDS
lab_start_guest --name ui1 --firmware bios --nic virtio-net-pci --mac "$mac" --mem 384 --reboot
node_up() { cli node show "$node_id" --json 2>/dev/null | jq -e '.state == "idle" and .heartbeat != null' >/dev/null; }
for _ in $(seq "$((timeout * 2))"); do node_up && break; sleep 0.5; done
if ! node_up; then
    t_fail "the lab node $node_id boots and its agent heart-beats"
    tail -n 20 "${LAB_GUEST_LOG[ui1]}"; tail -n 20 "$LAB_DIR/server.log"
    done_
fi
t_ok "the lab node $node_id booted, agent up ($((SECONDS - t_boot)) s)"

# ---- the browser -------------------------------------------------------------------
lab_exec env BASE="$base" TOKEN="$token" OUT="$out" NODE="$node_id" ENV_IMAGE=uienv ENV_NAME=uiweb \
    LIVE_TIMEOUT="$timeout" STEPS="${UI_STEPS:-}" HOME="$LAB_DIR" node "$here/ui/ui-test.mjs" > "$LAB_DIR/browser.log" 2>&1
rc=$?
cat "$LAB_DIR/browser.log"
render_ms="$(sed -n 's/^UI_RENDER_MS \([0-9]*\).*/\1/p' "$LAB_DIR/browser.log")"
n=0
while IFS= read -r line; do
    n=$((n + 1))
    kind="${line#RESULT }"; kind="${kind%% *}"
    rest="${line#RESULT "$kind" }"
    case "$kind" in
        ok) t_ok "$rest" ;;
        fail) t_fail "$rest" ;;
        skip) t_skip "${rest%% :: *}" "${rest#* :: }" ;;
    esac
done < <(grep '^RESULT ' "$LAB_DIR/browser.log")
[ "$n" -gt 0 ] || t_fail "the browser script reported nothing (exit $rc)"
[ "$rc" = 0 ] || t_fail "the browser script exited $rc"

echo "nodes view with 1,000+ nodes rendered in ${render_ms:-?} ms (median of 3, headless Chromium)"
echo "screenshots:"; ls -1 "$out"/*.png 2>/dev/null | sed 's/^/   /'
lab_cleanup
left="$(ip netns list | grep -c "^bootlab-$$-" || true)"
t_check "no lab namespace left behind" test "$left" = 0
done_
