#!/usr/bin/env bash
# qemu-tests/test-powerloss.sh: durability under power loss (hardening item 19).
#
# boot-server runs inside a TCG guest whose state (SQLite leases, NBD overlays) lives on
# an ext4 virtio disk opened with cache=none (O_DIRECT: the host page cache holds
# nothing, so what the guest did not flush dies with QEMU). SIGKILL to QEMU is the power
# cut: unlike kill -9 of the server, it also drops the guest's page cache.
#   1. lease storm: udhcpc clients on veths (a new MAC per exchange) get leases; QEMU is
#      killed mid-storm; after the next boot every (MAC, IP) a client saw ACKed is in the
#      store (admin API `leases --json`) and no address is bound to two MACs.
#   2. NBD writes with FLUSH: qemu-io rounds (write a pattern, FLUSH) to an overlay
#      export; QEMU is killed after a number of flushes returned while the next rounds
#      run; after the next boot every flushed round reads back byte for byte.
# Prints `N passed, M failed, K skipped` (qemu-tests/lib/summary.sh) and the elapsed time.
#
# Usage: qemu-tests/test-powerloss.sh
# Knobs: BOOT_SERVER_BIN (default $CARGO_TARGET_DIR/release/boot-server, built if
#   missing), PL_LAB_IMAGE (dir with vmlinuz + initrd.img; default images/build/lab, else
#   built with --no-agent into images/build/powerloss-lab), PL_WORKERS (DHCP clients, 6),
#   PL_ACKS (ACKs before the cut, 300), PL_FLUSHES (flushed rounds of 32 KiB before the
#   cut, 100; at most 500: the overlay is 16 MiB),
#   PL_SABOTAGE=eatmydata: fsync becomes a no-op in the guest (libeatmydata preloaded,
#   ext4 commit=60 so the journal does not save the data by chance): the durability
#   checks must then FAIL; this proves the test can see a missing fsync.
#   PL_SABOTAGE=eatmydata-nbd: the same from the second boot on (the NBD check fails).
#   LAB_KEEP_LOGS=1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
t_begin="$(date +%s.%N)"
# shellcheck source=lib/summary.sh
. "$here/lib/summary.sh"
# shellcheck source=lib/lab.sh
. "$here/lib/lab.sh"

workers="${PL_WORKERS:-6}"
want_acks="${PL_ACKS:-300}"
want_flushes="${PL_FLUSHES:-100}"
sabotage="${PL_SABOTAGE:-}"
guest_ip="10.77.0.2"
server="http://$guest_ip:8080"
token="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
export BOOT_SERVER_TOKEN="$token"
rid=$(($$ % 256))
round_len=32768
[ -n "${PL_SABOTAGE:-}" ] && echo "PL_SABOTAGE=$PL_SABOTAGE: durability checks are expected to FAIL"

finish() {
    echo "elapsed $(awk -v a="$t_begin" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
    t_summary
    exit $?
}

if ! lab_require_root; then t_skip "power loss" "needs root"; finish; fi
missing=""
for t in "${LAB_QEMU}" qemu-io mkfs.ext4 lz4 cpio udhcpc curl jq strip ldd; do
    command -v "$t" >/dev/null || missing="$missing $t"
done
if [ -n "$missing" ]; then t_skip "power loss" "missing tools:$missing"; finish; fi
case "$sabotage" in ""|eatmydata|eatmydata-nbd) ;; *) echo "PL_SABOTAGE: eatmydata or eatmydata-nbd" >&2; exit 2 ;; esac
if [ -n "$sabotage" ] && [ ! -e /usr/lib/x86_64-linux-gnu/libeatmydata.so ]; then
    t_skip "power loss sabotage" "libeatmydata1 not installed"; finish
fi

# ---- inputs: boot-server binary, lab kernel + initramfs -------------------------------
bin="${BOOT_SERVER_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/boot-server}"
if [ ! -x "$bin" ]; then
    (cd "$repo" && cargo build --release -p boot-server >&2)
fi
img="${PL_LAB_IMAGE:-$repo/images/build/lab}"
if [ ! -s "$img/initrd.img" ] || [ ! -s "$img/vmlinuz" ]; then
    img="$repo/images/build/powerloss-lab"
    "$repo/images/build-lab-image.sh" --no-agent --out "$img" >&2
fi

lab_gc
lab_create pl
# cache=none needs O_DIRECT: keep the disk off tmpfs.
run="$repo/qemu-tests/run/powerloss-$$"
mkdir -p "$run"
LAB_DIRS+=("$run")

# ---- guest initramfs: the lab one + boot-server, its libraries, our init and config ----
# Decompresses an initramfs by its magic (the lab image is lz4 -l today).
unpack() {
    case "$(od -An -tx1 -N4 "$1" | tr -d ' ')" in
        02214c18) lz4 -dc "$1" ;;
        28b52ffd) zstd -dc "$1" ;;
        1f8b*) gzip -dc "$1" ;;
        fd377a58) xz -dc "$1" ;;
        *) cat "$1" ;;
    esac
}

build_guest_initrd() {
    local root="$run/root" f
    mkdir -p "$root"
    (cd "$root" && unpack "$img/initrd.img" | cpio -idm --quiet)
    install -m 0755 "$repo/images/powerloss/init" "$root/init"
    strip -o "$root/bin/boot-server" "$bin"
    for f in $(ldd "$bin" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
    done
    if [ -n "$sabotage" ]; then
        cp -L /usr/lib/x86_64-linux-gnu/libeatmydata.so "$root/lib/libeatmydata.so"
    fi
    cat > "$root/etc/boot-server.toml" <<EOF
state_dir = "/state/boot"
images_dir = "/state/images"
loaders_dir = "/state/loaders"
server_ip = "$guest_ip"
interface = "eth0"
admin_token = "$token"

[http]
listen = "0.0.0.0:8080"

[tftp]
enabled = false

[dhcp]
mode = "full"

[[dhcp.subnet]]
network = "10.77.0.0/16"
range = ["10.77.1.1", "10.77.7.250"]
lease_secs = 3600

[ra]
enabled = false

[nbd]
enabled = true
listen = "0.0.0.0:10809"
EOF
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
        | lz4 -l -q > "$run/guest.img"
    rm -rf "$root"
}
build_guest_initrd
truncate -s 256M "$run/state.raw"
mkfs.ext4 -q -F -L plstate "$run/state.raw"
lab_add_tap "" pltap0

boot_no=0
# Boots the guest on the state disk and waits until its server answers /healthz.
boot_guest() {
    boot_no=$((boot_no + 1))
    local g="boot$boot_no" i sab=""
    # Sabotage: every boot (eatmydata), or from the second boot on (eatmydata-nbd,
    # so the overlay made in the first boot exists and the NBD check is what fails).
    if [ "$sabotage" = eatmydata ] || { [ "$sabotage" = eatmydata-nbd ] && [ "$boot_no" -ge 2 ]; }; then
        sab="pl.sabotage=eatmydata pl.mount=commit=60"
    fi
    lab_start_guest --name "$g" --tap pltap0 --mac "52:54:00:7c:$(printf %02x $rid):01" \
        --kernel "$img/vmlinuz" --initrd "$run/guest.img" --mem 512 \
        --append "console=ttyS0 quiet panic=-1 pl.ip=$guest_ip/16 $sab" \
        --extra "-drive file=$run/state.raw,if=virtio,format=raw,cache=none" || return 1
    GUEST="$g"
    lab_wait_console "$g" 'PL-SERVER-UP|PL-NO-STATE' 180 >/dev/null || return 1
    if [[ "$LAB_LINE" == *PL-NO-STATE* ]]; then lab_log "state disk not mounted"; return 1; fi
    for i in $(seq 600); do
        # Up = the admin API answers and the NBD port accepts connections.
        if lab_exec curl -sf -m 2 -o /dev/null "$server/healthz" \
            && lab_exec timeout 2 bash -c "exec 3<>/dev/tcp/$guest_ip/10809" 2>/dev/null; then
            lab_log "boot $boot_no: server up after ${LAB_ELAPSED}s+"
            return 0
        fi
        kill -0 "${LAB_GUEST_PID[$g]}" 2>/dev/null || break
        sleep 0.2
    done
    tr -d '\r' < "${LAB_GUEST_LOG[$g]}" | tail -n 30 >&2
    return 1
}

# The power cut: SIGKILL to QEMU (no guest shutdown, no flush of the guest's caches).
power_cut() {
    local pid="${LAB_GUEST_PID[$GUEST]}"
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    unset "LAB_GUEST_PID[$GUEST]"
    lab_log "power cut: QEMU $pid killed"
}

cli() { lab_exec "$bin" --server "$server" "$@"; }

if ! boot_guest; then t_fail "guest boots with its state disk"; finish; fi
t_ok "guest boots boot-server with its state on a cache=none virtio disk"

# NBD base + overlay for part 2 (created now so the cut of part 1 also covers them).
truncate -s 16M "$run/base.raw"
if cli disk add-base plbase "$run/base.raw" >/dev/null && cli disk create --base plbase plov >/dev/null; then
    t_ok "base and overlay created over the admin API"
else
    t_fail "base and overlay created over the admin API"
fi

# ---- 1. DHCP lease storm, cut mid-storm -----------------------------------------------
cat > "$run/rec.sh" <<'EOF'
#!/bin/sh
# udhcpc script: record each lease the server ACKed ("bound"), with the client's MAC.
[ "$1" = bound ] || exit 0
echo "$(cat "/sys/class/net/$interface/address") $ip" >> "$(dirname "$0")/acks.$interface"
EOF
cat > "$run/worker.sh" <<'EOF'
#!/bin/bash
# One DHCP client: a fresh MAC per exchange until $dir/stop exists.
k="$1" rid="$2" dir="$3" if="plc$1" n=0
while [ ! -e "$dir/stop" ]; do
    n=$((n + 1))
    ip link set "$if" down
    ip link set "$if" address "$(printf '02:7c:%02x:%02x:%02x:%02x' "$rid" "$k" $((n / 256 % 256)) $((n % 256)))"
    ip link set "$if" up
    udhcpc -i "$if" -f -q -n -B -t 3 -T 1 -s "$dir/rec.sh" >/dev/null 2>&1 || true
done
EOF
chmod +x "$run/rec.sh" "$run/worker.sh"
wpids=()
for k in $(seq "$workers"); do
    lab_exec ip link add "plc$k" type veth peer name "plb$k"
    lab_exec ip link set "plb$k" master br0
    lab_exec ip link set "plb$k" up
done
for k in $(seq "$workers"); do
    ip netns exec "$LAB_NS" "$run/worker.sh" "$k" "$rid" "$run" &
    wpids+=($!)
done
acks_now() { cat "$run"/acks.* 2>/dev/null | wc -l; }
t0=$SECONDS
while [ "$(acks_now)" -lt "$want_acks" ] && [ $((SECONDS - t0)) -lt 90 ]; do sleep 0.2; done
before_cut="$(acks_now)"
power_cut
touch "$run/stop"
for p in "${wpids[@]}"; do wait "$p" 2>/dev/null || true; done
cat "$run"/acks.* 2>/dev/null | sort -u > "$run/acked.txt" || true
acked="$(wc -l < "$run/acked.txt")"
lab_log "storm: $acked ACKs recorded ($before_cut when the power was cut) in $((SECONDS - t0))s"
if [ "$acked" -ge "$want_acks" ]; then
    t_ok "lease storm: $acked leases ACKed before the power cut"
else
    t_fail "lease storm: only $acked of $want_acks leases ACKed within 90s"
fi
dup_acks="$(awk '{print $2}' "$run/acked.txt" | sort | uniq -d | wc -l)"
t_check "no address ACKed to two MACs (clients' view)" [ "$dup_acks" = 0 ]

check_leases() {
    local tag="$1"
    if ! cli leases --json > "$run/leases.$tag.json"; then
        t_fail "$tag: leases readable over the admin API"; return
    fi
    jq -r '.[] | "\(.mac|ascii_downcase) \(.ip)"' "$run/leases.$tag.json" | sort -u > "$run/stored.$tag.txt"
    local lost
    lost="$(comm -23 "$run/acked.txt" "$run/stored.$tag.txt" | wc -l)"
    if [ "$lost" = 0 ]; then
        t_ok "$tag: all $acked ACKed leases are in the store ($(wc -l < "$run/stored.$tag.txt") stored)"
    else
        t_fail "$tag: $lost of $acked ACKed leases lost: $(comm -23 "$run/acked.txt" "$run/stored.$tag.txt" | head -3 | tr '\n' ' ')"
    fi
    local dups
    dups="$(jq -r '.[].ip' "$run/leases.$tag.json" | sort | uniq -d | wc -l)"
    t_check "$tag: no address bound to two MACs in the store" [ "$dups" = 0 ]
}

if ! boot_guest; then t_fail "guest boots again after the cut in the storm"; finish; fi
check_leases "after storm cut"

# ---- 2. NBD writes with FLUSH, cut after flushes returned -----------------------------
export_opts="driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=$guest_ip,file.server.port=10809,file.export=admin:$token:plov"
cat > "$run/writer.sh" <<'EOF'
#!/bin/bash
# Round r writes pattern (r % 250 + 1) to [r*len, r*len+len) and FLUSHes; "flushed r" is
# recorded once qemu-io returned with both commands done.
opts="$1" len="$2" out="$3" r=0
while :; do
    pat=$((r % 250 + 1))
    o="$(qemu-io --image-opts "$opts" -c "write -P $pat $((r * len)) $len" -c flush 2>&1)" || { echo "error $r $o" >> "$out"; sleep 0.2; continue; }
    case "$o" in *failed*|*rror*) echo "error $r $o" >> "$out"; sleep 0.2; continue ;; esac
    echo "flushed $r" >> "$out"
    r=$((r + 1))
done
EOF
chmod +x "$run/writer.sh"
: > "$run/flushed.log"
ip netns exec "$LAB_NS" "$run/writer.sh" "$export_opts" "$round_len" "$run/flushed.log" &
writer=$!
flushed_now() { grep -c '^flushed' "$run/flushed.log" || true; }
t0=$SECONDS
errors_now() { grep -c '^error' "$run/flushed.log" || true; }
while [ "$(flushed_now)" -lt "$want_flushes" ] && [ $((SECONDS - t0)) -lt 90 ] && [ "$(errors_now)" -lt 20 ]; do
    sleep 0.1
done
power_cut
kill "$writer" 2>/dev/null || true
wait "$writer" 2>/dev/null || true
flushed="$(flushed_now)"
lab_log "nbd: $flushed rounds flushed before the cut in $((SECONDS - t0))s; errors before the cut: $(errors_now)"
if [ "$flushed" -ge "$want_flushes" ]; then
    t_ok "NBD: $flushed write+FLUSH rounds acknowledged before the power cut"
else
    t_fail "NBD: only $flushed of $want_flushes write+FLUSH rounds within 90s: $(grep -m1 '^error' "$run/flushed.log" || true)"
fi

if ! boot_guest; then t_fail "guest boots again after the cut in the NBD writes"; finish; fi
if [ "$flushed" -gt 0 ]; then
    args=()
    for r in $(seq 0 $((flushed - 1))); do
        args+=(-c "read -P $((r % 250 + 1)) $((r * round_len)) $round_len")
    done
    out="$(lab_exec qemu-io --image-opts "$export_opts" "${args[@]}" 2>&1 || true)"
    bad="$(grep -c 'Pattern verification failed' <<<"$out" || true)"
    ok_reads="$(grep -c "^read $round_len/$round_len bytes" <<<"$out" || true)"
    if [ "$bad" = 0 ] && [ "$ok_reads" = "$flushed" ]; then
        t_ok "NBD: all $flushed flushed rounds read back byte for byte after the power cut"
    else
        t_fail "NBD: $bad of $flushed flushed rounds differ after the power cut ($ok_reads of $flushed reads done)"
        echo "$out" | grep -v '^read\|^[0-9]' | head -5
    fi
fi
check_leases "after NBD cut"
lab_stop_guest "$GUEST"
finish
