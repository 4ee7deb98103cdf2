#!/usr/bin/env bash
# qemu-tests/test-migrate.sh: capture an environment on one boot server and instantiate it
# on another (`env export` / `env import` / `env activate`), in the QEMU lab.
#
# Server 1: lab namespace mig1 (br0 10.77.0.1/24, its own state dir), 2 BIOS TCG guests
# (MACs 52:54:00:e2:00:01..02) idle in the pool; environment alpha (2 nodes, image env-a,
# slot disks on the base engbase, addresses 10.77.0.210-219, a policy, a schedule, hooks).
# Its start hook writes 1 MiB of random data to /var/lib/migrate-data on the slot's disk
# (then sync); its health hook reports the file's SHA-256, the host name and the address.
# Server 2: lab namespace mig2 (br0 10.78.0.1/24, another state dir), 2 guests
# (52:54:00:e3:00:01..02) idle in the pool.
# Checks, each as a user sees them (CLI output, exit status, `--json` answers):
#   - export of alpha from server 1 while it runs to a file: each slot's agent froze its
#     file systems for the snapshot (the bundle says `frozen` per slot; pauses printed)
#   - a truncated and a tampered bundle are refused by server 2 with an error naming the
#     problem, and nothing is created (no environment, no disk, no image)
#   - --dry-run prints the plan (addresses moved into 10.78.0.0/24) and creates nothing
#   - the import (--subnet 10.78.0.0/24, --map-nodes: slot0 -> server 2's 2nd guest)
#     creates alpha inactive; a second import is refused
#   - env activate alpha on server 2: both slots become ready there; each slot's data
#     file has the SHA-256 it had on server 1; host names equal, addresses moved; slot 0 is
#     on the mapped node; policy, schedules, hooks, key/values, requirements and sizes equal
#   - export --halt of alpha on server 2: deactivated, every node released, slots `halted`;
#     imported again --as beta with --map-addresses: beta's slots at the mapped addresses
# Prints `N passed, M failed, K skipped` and its elapsed time. Needs root (a skip outside
# CI, a failure under CI).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"
# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
# shellcheck source=lib/engine.sh
. "$here/lib/engine.sh"
t0_all=$SECONDS
WORK=""
finish() {
    t_summary; local rc=$?
    echo "test-migrate: $((SECONDS - t0_all)) s"
    [ -n "$WORK" ] && rm -rf "$WORK"
    # The import on server 2 placed env-a's files under the shared images directory.
    rm -rf "$repo/images/uploaded/env-a"
    rmdir "$repo/images/uploaded" 2>/dev/null || true
    exit $rc
}
if ! lab_require_root; then t_skip "test-migrate.sh" "needs root (network namespaces, tap devices)"; finish; fi
for tool in jq zstd python3; do
    command -v "$tool" >/dev/null || { t_skip "test-migrate.sh" "$tool missing (qemu-tests/install-deps.sh)"; finish; }
done
td="${CARGO_TARGET_DIR:-$repo/target}"
server="${MIGRATE_SERVER_BIN:-$td/release/boot-server}"
[ -x "$server" ] || { t_fail "missing $server (cargo build --release -p boot-server)"; finish; }
[ -f "$repo/images/build/lab/initrd.img" ] || { t_fail "missing lab image (images/build-lab-image.sh)"; finish; }
lab_gc

WORK="$(mktemp -d "${TMPDIR:-/tmp}/migrate.XXXXXX")"

# ---- hooks: data on the slot disk, its digest in the heartbeat ----------------------
mkdir -p "$WORK/hooks"
cat > "$WORK/hooks/start" <<'HOOK'
#!/bin/sh
f=/var/lib/migrate-data
if [ ! -s "$f" ]; then
    mkdir -p /var/lib
    dd if=/dev/urandom of="$f.tmp" bs=64k count=16 2>/dev/null && mv "$f.tmp" "$f" && sync
fi
exit 0
HOOK
cat > "$WORK/hooks/health" <<'HOOK'
#!/bin/sh
ip=$(ip -4 addr show | awk '/inet / && $2 !~ /^127\./ { split($2, a, "/"); print a[1]; exit }')
echo "host=$(hostname)"
echo "ip=$ip"
echo "data=$(sha256sum /var/lib/migrate-data 2>/dev/null | cut -c1-64)"
echo "load=0.5"
exit 0
HOOK

# mig_up NAME SUBNET MACPREFIX: a lab with a server and 2 idle guests; sets ENG_CONFIG.
mig_up() {
    local name="$1" subnet="$2" prefix="$3" i m
    lab_create "$name" --subnet "$subnet" || return 1
    lab_start_boot_server "$server" "$LAB_DIR/state" || return 1
    ENG_CONFIG="$LAB_SERVER_CONFIG"
    for i in 1 2; do
        m="$prefix:0$i"
        eng_cli node add --mac "$m" >/dev/null || { lab_log "node add $m failed"; return 1; }
        lab_start_guest --name "$name-g$i" --firmware bios --nic virtio-net-pci --mac "$m" --mem 384 --reboot
    done
    for i in 1 2; do
        eng_wait "$name-g$i idle on lab" 300 eng__node_idle_on "$(eng_node_id "$prefix:0$i")" lab || return 1
    done
}
# slot_data: "index hostname ip data" per ready slot of alpha, sorted.
slot_data() {
    local s nj
    s="$(eng_slots alpha)"
    jq -r '.[] | select(.node != null and .step == "ready") | "\(.index) \(.node)"' <<<"$s" | while read -r i n; do
        nj="$(eng_cli node show "$n" --json)"
        jq -r --arg i "$i" '"\($i) \(.heartbeat.health.host // "-") \(.heartbeat.health.ip // "-") \(.heartbeat.health.data // "-")"' <<<"$nj"
    done | sort
}
two_with_data() { [ "$(slot_data | awk 'length($4) == 64' | wc -l)" = 2 ]; }
settings() { eng_cli env show alpha --json | jq -S '{policy, schedules, hooks, config, requirements, min, max, desired, priority, hostname_pattern, boot, description}'; }
# bundle_captures FILE: how each slot's overlay was captured, comma-separated.
bundle_captures() { zstd -q -d -c "$1" | tar -xOf - environment.json | jq -r '[.slots[].capture] | join(",")'; }
nothing_here() {
    [ "$(eng_cli env list --json | jq length)" = 0 ] || return 1
    [ "$(eng_cli disk list --json | jq '[.[] | select(.name == "engbase" or (.name | startswith("alpha")))] | length')" = 0 ] || return 1
    ! eng_cli image list --json | jq -e '.[] | select(.name == "env-a")' >/dev/null
}

# ---- server 1 -----------------------------------------------------------------------
t1=$SECONDS
if ! mig_up mig1 10.77.0 52:54:00:e2:00; then
    t_fail "server 1: 2 guests idle in the pool"; eng_diag; finish
fi
S1_CONFIG="$ENG_CONFIG"
mf="$WORK/env-a.toml"
sed -e 's/^name = "lab"/name = "env-a"/' "$repo/images/lab/image.toml" > "$mf"
eng_cli image add --server-path "$mf" >/dev/null && eng_cli disk add-base engbase "$repo/images/build/lab/rootfs.raw" >/dev/null \
    || { t_fail "server 1: image env-a and base engbase"; finish; }
eng_cli env create alpha --image env-a --description "migrated" --min 1 --nodes 2 --max 3 \
    --disk-base engbase --hostname-pattern 'alpha-{slot}' --addresses 10.77.0.210-10.77.0.219 \
    --config role=a --require cpus=1 --hook "start=$WORK/hooks/start" --hook "health=$WORK/hooks/health" \
    --schedule '0 0 3 1 1 *=>scale:2' >/dev/null \
    && eng_cli policy set alpha --add-above 50 --remove-below 0.01 --window 600 >/dev/null \
    || { t_fail "server 1: environment alpha created"; finish; }
if eng_wait "alpha: 2 slots ready with data" 300 two_with_data; then
    t_ok "server 1: alpha ready on 2 nodes, data written on both slot disks ($((SECONDS - t1)) s)"
else
    t_fail "server 1: alpha ready on 2 nodes with data"; eng_diag; finish
fi
before="$(slot_data)"
settings > "$WORK/settings1.json"
lab_log "server 1 slots: $before"
te=$SECONDS
if eng_cli env export alpha -o "$WORK/alpha.bundle" 2>"$WORK/export.err" && [ -s "$WORK/alpha.bundle" ]; then
    t_ok "export of running alpha: $(stat -c %s "$WORK/alpha.bundle") bytes in $((SECONDS - te)) s ($(tail -n 2 "$WORK/export.err" | head -n 1))"
else
    t_fail "export of alpha: $(cat "$WORK/export.err")"; finish
fi
pauses="$(eng_events_after 0 | jq -r -s '[.[] | select(.kind == "env-changed" and .detail.change == "export-snapshot")] | last | .detail.pause_ms | to_entries | map("slot \(.key) \(.value) ms") | join(", ")')"
t_check "live export: both slots frozen by their agents for the snapshot (pauses: $pauses)" \
    eng_is "$(bundle_captures "$WORK/alpha.bundle")" "frozen,frozen"
lab_stop_guest mig1-g1; lab_stop_guest mig1-g2

# ---- server 2 -----------------------------------------------------------------------
t2=$SECONDS
if ! mig_up mig2 10.78.0 52:54:00:e3:00; then
    t_fail "server 2: 2 guests idle in the pool"; eng_diag; finish
fi
t_ok "server 2 (10.78.0.0/24, own state): 2 guests idle ($((SECONDS - t2)) s)"

# Truncated and tampered bundles.
head -c "$(( $(stat -c %s "$WORK/alpha.bundle") / 2 ))" "$WORK/alpha.bundle" > "$WORK/cut.bundle"
if out="$(eng_cli env import "$WORK/cut.bundle" --subnet 10.78.0.0/24 2>&1)"; then
    t_fail "a truncated bundle is refused (it was imported: $out)"
else
    t_check "a truncated bundle is refused with a clear error, nothing created ($(tail -n 1 <<<"$out"))" \
        bash -c '[[ "$1" == *truncated* ]]' _ "$out"
    t_check "nothing created after the truncated bundle" nothing_here
fi
zstd -q -d -c "$WORK/alpha.bundle" > "$WORK/alpha.tar"
python3 - "$WORK/alpha.tar" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
name = b"disks/overlays/slot0.chunks"
# The tar header of the entry (the manifest mentions the name first): the entry's
# header is 512-aligned and starts with its name.
at = next(i for i in range(0, len(b), 512) if b[i:i + len(name)] == name)
b[at + 512 + 4096] ^= 0xFF
open(p, 'wb').write(b)
PY
zstd -q -c "$WORK/alpha.tar" > "$WORK/tampered.bundle"
if out="$(eng_cli env import "$WORK/tampered.bundle" --subnet 10.78.0.0/24 2>&1)"; then
    t_fail "a tampered bundle is refused (it was imported: $out)"
else
    t_check "a tampered bundle is refused naming the entry ($(tail -n 1 <<<"$out"))" \
        bash -c '[[ "$1" == *slot0.chunks* && "$1" == *SHA-256* ]]' _ "$out"
    t_check "nothing created after the tampered bundle" nothing_here
fi

# Dry run, then the import.
if out="$(eng_cli env import "$WORK/alpha.bundle" --subnet 10.78.0.0/24 --dry-run 2>&1)" \
    && [[ "$out" == *"addresses 10.78.0.210-10.78.0.219"* && "$out" == *"no conflicts"* ]] && nothing_here; then
    t_ok "dry run prints the plan (addresses 10.78.0.210-219, no conflicts) and creates nothing"
else
    t_fail "dry run: $out"
fi
printf '# slot -> node of server 2\nslot0 %s\n' "$(eng_node_id 52:54:00:e3:00:02)" > "$WORK/nodes.map"
ti=$SECONDS
if out="$(eng_cli env import "$WORK/alpha.bundle" --subnet 10.78.0.0/24 --map-nodes "$WORK/nodes.map" 2>&1)"; then
    t_ok "import on server 2 in $((SECONDS - ti)) s ($(grep -o 'import: .*' <<<"$out" | head -n 1))"
    echo "$out" | sed 's/^/   /'
else
    t_fail "import on server 2: $out"; eng_diag; finish
fi
t_check "the imported alpha is inactive" eng_is "$(eng_cli env show alpha --json | jq -r .active)" false
if out="$(eng_cli env import "$WORK/alpha.bundle" --subnet 10.78.0.0/24 2>&1)"; then
    t_fail "a second import is refused (it was imported)"
else
    t_check "a second import is refused ($(tail -n 1 <<<"$out"))" bash -c '[[ "$1" == *exists* ]]' _ "$out"
fi

# Activate and compare.
ta=$SECONDS
eng_cli env activate alpha >/dev/null || t_fail "env activate alpha"
if eng_wait "alpha ready on server 2 with data" 300 two_with_data; then
    t_ok "server 2: alpha ready on 2 nodes $((SECONDS - ta)) s after activation"
else
    t_fail "server 2: alpha ready on 2 nodes"; eng_diag
fi
after="$(slot_data)"
lab_log "server 2 slots: $after"
want="$(sed 's/ 10\.77\.0\./ 10.78.0./' <<<"$before")"
t_check "same data on each slot disk (SHA-256), same host names, addresses moved to 10.78.0.x" \
    eng_is "$after" "$want"
t_check "slot 0 runs on the mapped node" \
    eng_is "$(eng_slot_field alpha 0 node)" "$(eng_node_id 52:54:00:e3:00:02)"
settings > "$WORK/settings2.json"
t_check "policy, schedules, hooks, key/values, requirements and sizes equal" \
    diff -u "$WORK/settings1.json" "$WORK/settings2.json"

# Halted export, then an import under another name with an address map.
th=$SECONDS
if eng_cli env export alpha --halt -o "$WORK/halted.bundle" 2>"$WORK/halt.err"; then
    held="$(eng_slots alpha | jq '[.[] | select(.node != null)] | length')"
    t_check "export --halt: alpha inactive, no node held, each slot captured halted ($((SECONDS - th)) s)" \
        eng_is "$(eng_cli env show alpha --json | jq -r .active) $held $(bundle_captures "$WORK/halted.bundle")" \
        "false 0 halted,halted"
else
    t_fail "export --halt: $(cat "$WORK/halt.err")"
fi
printf '# old -> new: the range moves as one\n10.78.0.210 10.78.0.230\n' > "$WORK/addresses.map"
if out="$(eng_cli env import "$WORK/halted.bundle" --as beta --map-addresses "$WORK/addresses.map" 2>&1)"; then
    t_check "import --as beta --map-addresses: beta inactive, its slots at 10.78.0.230 and .231" \
        eng_is "$(eng_cli env show beta --json | jq -r .active) $(eng_slots beta | jq -r '[.[] | "\(.index)=\(.ip)"] | sort | join(" ")')" \
        "false 0=10.78.0.230 1=10.78.0.231"
else
    t_fail "import --as beta --map-addresses: $out"
fi
finish
