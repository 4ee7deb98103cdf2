#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts boot-server (embedded SQLite
# state) in a lab network namespace, network-boots one QEMU node from the default
# image and prints its boot timeline; then the engine moves it into an application
# environment (`demo`: the lab image under another name, with a start hook) by kexec and
# prints how long each step took; the server keeps running until Ctrl-C.
#
# Usage: qemu-tests/lab-up.sh [--firmware bios|uefi] [--nic virtio-net-pci|e1000]
#                             [--mac MAC] [--state DIR] [--timeout S]
# State (nodes, leases, events) persists in qemu-tests/run/state unless --state.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
firmware=bios nic=virtio-net-pci mac=52:54:00:10:00:01 state="$repo/qemu-tests/run/state" timeout=240
while [ $# -gt 0 ]; do
    case "$1" in
        --firmware) firmware="$2"; shift 2 ;;
        --nic) nic="$2"; shift 2 ;;
        --mac) mac="$2"; shift 2 ;;
        --state) state="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "lab-up: needs root (network namespaces, tap devices)" >&2; exit 1; }

step() { echo "== $*" >&2; }
step "installing missing Debian packages"
"$here/install-deps.sh"
step "building boot-server and the static node-agent"
(cd "$repo" && cargo build --release -q -p boot-server)
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -q -p node-agent --target x86_64-unknown-linux-gnu)
td="${CARGO_TARGET_DIR:-$repo/target}"
server="$td/release/boot-server"
step "building the lab image"
"$repo/images/build-lab-image.sh" --agent "$td/x86_64-unknown-linux-gnu/release/node-agent" >&2

# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"
lab_gc
lab_create main
mkdir -p "$state"
step "starting boot-server in $LAB_NS (log $LAB_DIR/server.log)"
lab_start_boot_server "$server" "$state"
config="$LAB_SERVER_CONFIG"

step "powering on node ($firmware, $nic, $mac)"
lab_start_guest --name node1 --firmware "$firmware" --nic "$nic" --mac "$mac" --stamp
t0_ms="$(awk -v t="${LAB_GUEST_T0[node1]}" 'BEGIN { printf "%.0f", t * 1000 }')"
echo "console: ${LAB_GUEST_LOG[node1]}" >&2
"$server" --config "$config" node timeline "$mac" --since-ms "$t0_ms" --wait "$timeout"
cli() { "$server" --config "$config" "$@"; }
echo
cli node list
echo

step "the engine: environment demo claims the node from the pool (warm move by kexec)"
sed -e 's/^name = "lab"/name = "demo"/' "$repo/images/lab/image.toml" > "$LAB_DIR/demo.toml"
cli image add --server-path "$LAB_DIR/demo.toml" >/dev/null
printf '#!/bin/sh\necho "demo application on $(hostname), slot $SLOT_INDEX" > /dev/console\n' > "$LAB_DIR/demo-start"
cli env delete demo >/dev/null 2>&1 || true
cli env create demo --image demo --nodes 1 --max 2 --hostname-pattern 'demo-{slot}' \
    --hook "start=$LAB_DIR/demo-start" >/dev/null
for _ in $(seq "$timeout"); do
    [ "$(cli slot list demo --json | jq -r '.[0].step // ""')" = ready ] && break
    sleep 1
done
cli env show demo
echo
cli env history demo --json | jq -r '.decisions[] | select(.detail.action == "ready") |
    "demo slot \(.detail.slot) ready \(.detail.total_ms) ms after the decision; per step (ms): \(.detail.timings | tojson)"'
echo
# The web UI: the server lives in the lab namespace; forward a host loopback
# port to its HTTP port so that a browser on this machine reaches it.
ui_port="${UI_PORT:-8180}"
if command -v socat >/dev/null; then
    socat "TCP-LISTEN:$ui_port,bind=127.0.0.1,reuseaddr,fork" \
        "EXEC:ip netns exec $LAB_NS socat STDIO TCP\:$LAB_BRIDGE_ADDR\:8080" \
        >"$LAB_DIR/ui-forward.log" 2>&1 &
    LAB_PID[ui-forward]=$!
    echo "web UI: http://127.0.0.1:$ui_port/ui/  (log in with the token in $state/admin.token)"
fi
echo "boot-server is running in namespace $LAB_NS; admin CLI: $server --config $config ..."
echo "Ctrl-C stops the node and the server and removes the namespace."
wait "${LAB_PID[server]}"
