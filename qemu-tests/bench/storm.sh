#!/usr/bin/env bash
# qemu-tests/bench/storm.sh: PXE boot storm. N simulated BIOS PXE clients start at
# once (boot-server/examples/pxestorm.rs): each does DHCP DORA with PXE options from
# its own MAC, TFTP of the loader (undionly.kpxe) at blksize 1468 from its leased
# address, DHCP again as iPXE, then over HTTP the iPXE script and the kernel + initrd
# of the lab image it names. Against `boot-server serve` and against dnsmasq
# (DHCP + TFTP) + nginx (HTTP) in the same run, alternating, R rounds each. Prints
# per run and as medians: time until all N are done, p50/p99 per client, failures,
# the servers' peak RSS (VmHWM; dnsmasq + nginx master + workers), the client's own
# CPU time (to show it is not the bottleneck) and the ratio boot-server / conventional.
#
#   qemu-tests/bench/storm.sh 500          # R=3 rounds
#   R=5 qemu-tests/bench/storm.sh 500
#   qemu-tests/bench/storm.sh --smoke      # N=5, one round: does it still work (CI)
#
# Network: two namespaces (storm-<pid>-srv/-cli) joined by a veth, 10.78.0.0/16; the
# DHCP pool 10.78.16.0/21 is routed to lo in the client namespace so each client can
# bind the address it leased. dnsmasq runs with no-ping (every pool address answers
# ping here; a real PXE client does not, and dnsmasq would wait up to 3 s per new
# lease) and tftp-max=1000 (default 50 concurrent transfers); nginx with sendfile, 2
# workers, 4096 connections each, no access log. Needs root, dnsmasq, nginx.
# Env: BIN (boot-server), STORM_CLIENT (pxestorm), R, STORM_ONLY="boot-server" or
# "conventional", STORM_KEEP=1 (keep the work dir: logs, configs),
# STORM_DNSMASQ_EXTRA (more dnsmasq.conf lines, e.g. log-dhcp).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
smoke=0 n=""
for a in "$@"; do
    case "$a" in
        --smoke) smoke=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) n="$a" ;;
    esac
done
if [ "$smoke" = 1 ]; then n="${n:-5}"; R=1; fi
n="${n:-500}"
R="${R:-3}"
# shellcheck source=../lib/summary.sh
. "$here/../lib/summary.sh"
if [ "$(id -u)" != 0 ]; then t_skip "storm" "needs root (network namespaces)"; t_summary; exit 0; fi
for t in dnsmasq nginx; do
    command -v "$t" >/dev/null || { t_fail "storm: $t not installed"; t_summary; exit 1; }
done
td="${CARGO_TARGET_DIR:-$repo/target}"
BIN="${BIN:-$td/release/boot-server}"
STORM_CLIENT="${STORM_CLIENT:-$td/release/examples/pxestorm}"
if [ -z "${BENCH_PREBUILT:-}" ] && { [ ! -x "$STORM_CLIENT" ] || [ ! -x "$BIN" ]; }; then
    echo "== building boot-server and the storm client (release)"
    (cd "$repo" && cargo build --quiet --release -p boot-server --bin boot-server --example pxestorm) \
        || { t_fail "storm: build"; t_summary; exit 1; }
fi
for x in "$BIN" "$STORM_CLIENT"; do
    [ -x "$x" ] || { t_fail "storm: $x not built (cargo build --release -p boot-server --bin boot-server --example pxestorm)"; t_summary; exit 1; }
done
lab="$repo/images/build/lab"
[ -s "$lab/vmlinuz" ] && [ -s "$lab/initrd.img" ] || { t_fail "storm: no lab image (images/build-lab-image.sh)"; t_summary; exit 1; }
cmdline="$(sed -n 's/^cmdline *= *"\([^"]*\)".*/\1/p' "$repo/images/lab/image.toml")"

work="$(mktemp -d /tmp/storm-bench.XXXXXX)"
srv="storm-$$-srv" cli="storm-$$-cli"
pids=()
stop_servers() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
net_down() { ip netns del "$srv" 2>/dev/null || true; ip netns del "$cli" 2>/dev/null || true; }
cleanup() { stop_servers; net_down; rm -rf "$work"; }
trap cleanup EXIT
trap 'cleanup; trap - INT; kill -INT $$' INT
trap 'cleanup; trap - TERM; kill -TERM $$' TERM
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# A fresh pair of namespaces per run: no neighbour or lease state carried over.
net_up() {
    net_down
    ip netns add "$srv" && ip netns add "$cli" || return 1
    ip link add s0 netns "$srv" type veth peer name c0 netns "$cli" || return 1
    ip -n "$srv" link set lo up
    ip -n "$cli" link set lo up
    ip -n "$srv" addr add 10.78.0.1/16 dev s0
    ip -n "$cli" addr add 10.78.0.2/16 dev c0
    ip -n "$srv" link set s0 up
    ip -n "$cli" link set c0 up
    # The pool is local to the client namespace (answers ARP on c0), and limited
    # broadcast needs a route.
    ip -n "$cli" route add local 10.78.16.0/21 dev lo
    ip -n "$cli" route add default dev c0
}

wait_http() {
    local i
    for i in $(seq 200); do
        ip netns exec "$srv" curl -sf -o /dev/null "$1" && return 0
        sleep 0.05
    done
    return 1
}

start_boot_server() {
    mkdir -p "$work/bs" && rm -rf "$work/bs/state"
    cat > "$work/bs/boot-server.toml" <<EOF
state_dir = "$work/bs/state"
images_dir = "$repo/images"
loaders_dir = "/usr/lib/ipxe"
server_ip = "10.78.0.1"
interface = "s0"
default_image = "lab"
[http]
listen = "0.0.0.0:8080"
[tftp]
enabled = true
listen = "0.0.0.0:69"
[dhcp]
mode = "full"
[[dhcp.subnet]]
network = "10.78.0.0/16"
range = ["10.78.16.1", "10.78.23.254"]
router = "10.78.0.1"
lease_secs = 3600
[ra]
enabled = false
EOF
    ip netns exec "$srv" "$BIN" --config "$work/bs/boot-server.toml" serve > "$work/bs/server.log" 2>&1 &
    pids=($!)
    server_pids="$!"
    wait_http http://10.78.0.1:8080/healthz || { tail -n 20 "$work/bs/server.log" >&2; return 1; }
    ip netns exec "$srv" ss -Hlun 'sport = :67' | grep -q .
}

start_conventional() {
    local d="$work/conv"
    rm -rf "$d" && mkdir -p "$d/www" "$d/tmp"
    ln -s "$lab" "$d/www/lab"
    cat > "$d/www/boot.ipxe" <<EOF
#!ipxe
kernel http://10.78.0.1:8080/lab/vmlinuz initrd=initrd.img $cmdline
initrd http://10.78.0.1:8080/lab/initrd.img
boot
EOF
    cat > "$d/dnsmasq.conf" <<EOF
port=0
interface=s0
bind-interfaces
except-interface=lo
dhcp-range=10.78.16.1,10.78.23.254,255.255.0.0,1h
dhcp-lease-max=4096
dhcp-leasefile=$d/dnsmasq.leases
dhcp-authoritative
no-ping
${STORM_DNSMASQ_EXTRA:-}
pid-file=$d/dnsmasq.pid
user=root
enable-tftp
tftp-root=/usr/lib/ipxe
tftp-max=1000
dhcp-match=set:ipxe,175
dhcp-boot=tag:ipxe,http://10.78.0.1:8080/boot.ipxe
dhcp-boot=tag:!ipxe,undionly.kpxe
EOF
    cat > "$d/nginx.conf" <<EOF
user root;
worker_processes 2;
daemon off;
pid $d/nginx.pid;
error_log $d/nginx.error.log warn;
events { worker_connections 4096; }
http {
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    sendfile on;
    keepalive_requests 1000;
    server {
        listen 10.78.0.1:8080 backlog=4096;
        root $d/www;
        disable_symlinks off;
    }
}
EOF
    ip netns exec "$srv" dnsmasq -k -C "$d/dnsmasq.conf" > "$d/dnsmasq.out" 2>&1 &
    local dp=$!
    ip netns exec "$srv" nginx -p "$d" -e "$d/nginx.error.log" -c "$d/nginx.conf" > "$d/nginx.out" 2>&1 &
    local np=$!
    pids=("$dp" "$np")
    wait_http http://10.78.0.1:8080/boot.ipxe || { cat "$d/nginx.error.log" "$d/dnsmasq.out" >&2; return 1; }
    local i
    for i in $(seq 100); do ip netns exec "$srv" ss -Hlun 'sport = :67' | grep -q . && break; sleep 0.05; done
    # nginx's workers are children of its master.
    server_pids="$dp $np $(cat /proc/"$np"/task/*/children 2>/dev/null)"
}

# CPU seconds (user + system) summed over the server's processes.
server_cpu() {
    local p t=0 v
    for p in $server_pids; do
        v="$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null)"
        t=$((t + ${v:-0}))
    done
    awk -v t="$t" 'BEGIN { printf "%.2f", t / 100 }'
}

# Peak RSS (VmHWM) summed over the server's processes, in MiB.
peak_rss() {
    local p kb=0 v
    for p in $server_pids; do
        v="$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null)"
        kb=$((kb + ${v:-0}))
    done
    awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }'
}

field() { sed -nE "s/.*(^| )$1=([^ ]*).*/\\2/p" <<<"$2"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else print a[int((NR+1)/2)]}'; }

declare -A all=() p50=() p99=() fails=() rss=() ccpu=() scpu=()
echo "== storm: N=$n clients, R=$R rounds; client $STORM_CLIENT"
for r in $(seq "$R"); do
    for kind in ${STORM_ONLY:-boot-server conventional}; do
        net_up || { t_fail "storm: namespaces"; continue; }
        if [ "$kind" = boot-server ]; then start_boot_server; else start_conventional; fi \
            || { t_fail "storm: $kind starts (round $r)"; stop_servers; continue; }
        out="$(ip netns exec "$cli" "$STORM_CLIENT" -n "$n" --mac-byte "$r" --timeout 300 2>&1)"
        summary="$(grep '^clients=' <<<"$out")"
        mem="$(peak_rss)" cpu="$(server_cpu)"
        threads="$(for p in $server_pids; do awk '/^Threads:/ {print $2}' "/proc/$p/status" 2>/dev/null; done | paste -sd+ | bc)"
        stop_servers
        grep '^FAIL' <<<"$out" | head -n 5 | sed "s/^/    $kind: /"
        if [ -z "$summary" ]; then
            t_fail "storm: $kind client gave no summary (round $r): $(tail -n 3 <<<"$out")"
            continue
        fi
        echo "run $r $kind: all done $(field all_secs "$summary") s, p50 $(field p50_secs "$summary") s, p99 $(field p99_secs "$summary") s, failed $(field failed "$summary")/$n, peak RSS $mem MiB, server CPU $cpu s, server threads at the end $threads, client CPU $(field client_cpu_secs "$summary") s ($summary)"
        all[$kind]+=" $(field all_secs "$summary")"
        p50[$kind]+=" $(field p50_secs "$summary")"
        p99[$kind]+=" $(field p99_secs "$summary")"
        fails[$kind]+=" $(field failed "$summary")"
        rss[$kind]+=" $mem"
        scpu[$kind]+=" $cpu"
        ccpu[$kind]+=" $(field client_cpu_secs "$summary")"
    done
done
declare -A m=()
for kind in boot-server conventional; do
    m[$kind]="$(median <<<"${all[$kind]:-}")"
    label="$kind"; [ "$kind" = conventional ] && label="dnsmasq+nginx"
    echo "$label: all $n done $(median <<<"${all[$kind]:-}") s, p50 $(median <<<"${p50[$kind]:-}") s, p99 $(median <<<"${p99[$kind]:-}") s, failures$(echo "${fails[$kind]:-}" | tr -s ' ' | sed 's/ /,/2g') , peak RSS $(median <<<"${rss[$kind]:-}") MiB, server CPU $(median <<<"${scpu[$kind]:-}") s, client CPU $(median <<<"${ccpu[$kind]:-}") s (medians of $R)"
done
if [ "${m[boot-server]}" != - ] && [ "${m[conventional]}" != - ]; then
    echo "ratio boot-server / dnsmasq+nginx (time until all $n done): $(awk -v a="${m[boot-server]}" -v b="${m[conventional]}" 'BEGIN { printf "%.2f", a / b }') ($(awk -v a="${m[boot-server]}" -v b="${m[conventional]}" 'BEGIN { printf "%.2f", b / a }')x faster)"
fi
# boot-server must serve every client; the conventional stack's failures are a
# figure (dnsmasq does not reserve what it offers: NAK races under a storm).
for kind in ${STORM_ONLY:-boot-server conventional}; do
    total_fail=0
    for f in ${fails[$kind]:-}; do total_fail=$((total_fail + f)); done
    ran="$(wc -w <<<"${all[$kind]:-}")"
    if [ "$kind" = boot-server ]; then
        t_check "storm: $kind: $ran/$R rounds ran, $total_fail client failures" test "$ran" = "$R" -a "$total_fail" = 0
    else
        t_check "storm: $kind: $ran/$R rounds ran ($total_fail client failures)" test "$ran" = "$R"
    fi
done
t_summary
