#!/usr/bin/env bash
# HTTP download storm: C parallel clients (default 500), each from its own
# loopback address (curl --interface 127.0.N.M), fetch a kernel-sized and an
# initrd-sized file over one kept-alive connection, as iPXE does, against
# `boot-server serve` and against nginx (nginx-light, sendfile on, own config
# in a temp dir) in the same run, alternating, R rounds each. Prints per
# server: time until all clients are done, p50/p99 per-client time, failures,
# and the server's peak RSS (VmHWM; nginx = master + workers), medians over
# the rounds and the boot-server/nginx ratio.
#
#   qemu-tests/bench/http.sh                 # C=500 R=3
#   C=200 R=5 qemu-tests/bench/http.sh
#   BIN=path/to/boot-server qemu-tests/bench/http.sh   # e.g. an older build
#
# Uses the lab image's kernel and initrd if images/build/lab holds them, else
# random files of 8 MB and 4 MB. Loopback only. Needs curl and nginx.
set -euo pipefail

C=${C:-500}
R=${R:-3}
repo=$(cd "$(dirname "$0")/../.." && pwd)
for t in curl nginx; do
  command -v "$t" >/dev/null || { echo "http bench: $t not installed (apt-get install curl nginx-light)" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  # BENCH_PREBUILT=1 (CI's bench smoke): use what the cargo suite built.
  if [ -z "${BENCH_PREBUILT:-}" ]; then
    echo "== building boot-server (release)"
    (cd "$repo" && cargo build --quiet --release -p boot-server)
  fi
  BIN="${CARGO_TARGET_DIR:-$repo/target}/release/boot-server"
fi

work=$(mktemp -d /tmp/httpbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$work/images/lab" "$work/state" "$work/nginx"
if [ -s "$repo/images/build/lab/vmlinuz" ] && [ -s "$repo/images/build/lab/initrd.img" ]; then
  cp "$repo/images/build/lab/vmlinuz" "$repo/images/build/lab/initrd.img" "$work/images/lab/"
  echo "== files: lab image kernel and initrd"
else
  head -c $((8 * 1024 * 1024)) /dev/urandom > "$work/images/lab/vmlinuz"
  head -c $((4 * 1024 * 1024)) /dev/urandom > "$work/images/lab/initrd.img"
  echo "== files: random 8 MiB kernel, 4 MiB initrd (lab image not built)"
fi
chmod -R a+rX "$work"
kernel_size=$(stat -c %s "$work/images/lab/vmlinuz")
initrd_size=$(stat -c %s "$work/images/lab/initrd.img")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_boot_server() {
  cat > "$work/boot-server.toml" <<EOF
state_dir = "$work/state"
images_dir = "$work/images"
[http]
listen = "127.0.0.1:0"
[tftp]
enabled = false
[nbd]
enabled = false
[ra]
enabled = false
EOF
  "$BIN" --config "$work/boot-server.toml" serve 2> "$work/boot-server.log" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 300); do
    port=$(grep -o 'http=127.0.0.1:[0-9]*' "$work/boot-server.log" | head -1 | cut -d: -f2 || true)
    [ -n "$port" ] && curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "boot-server did not come up" >&2; cat "$work/boot-server.log" >&2; exit 1; }
  url="http://127.0.0.1:$port/images/lab"
  server_pids="$server_pid"
}

start_nginx() {
  port=$(free_port)
  cat > "$work/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 10;
  client_body_temp_path $work/nginx/tmp;
  proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp;
  scgi_temp_path $work/nginx/tmp;
  server {
    listen 127.0.0.1:$port;
    location /images/ { alias $work/images/; }
  }
}
EOF
  mkdir -p "$work/nginx/tmp"
  nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" 2>> "$work/nginx/error.log" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/images/lab/initrd.img" && break
    sleep 0.1
  done
  url="http://127.0.0.1:$port/images/lab"
  server_pids="$server_pid $(pgrep -P "$server_pid" | tr '\n' ' ')"
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}

peak_rss_kb() { # sum of VmHWM over the given pids
  local total=0 p v
  for p in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# One storm: C clients, each one curl with both URLs (one connection).
storm() { # name -> appends "wall_s p50_s p99_s failures rss_kb" to $work/$name.rounds
  local name=$1 i out="$work/$1.out"
  : > "$out"
  local t0 t1
  t0=$(date +%s.%N)
  for i in $(seq 0 $((C - 1))); do
    local src="127.0.$((1 + i / 250)).$((1 + i % 250))"
    (
      r=$(curl -s --interface "$src" --max-time 120 \
        -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$url/vmlinuz" \
        -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$url/initrd.img" 2>/dev/null || true)
      echo "$r" | awk -v k="$kernel_size" -v n="$initrd_size" '
        NR==1 { ok = ($1 == 200 && $2 == k); t = $3 }
        NR==2 { ok = ok && ($1 == 200 && $2 == n); t += $3 }
        END { printf "%s %.4f\n", (NR == 2 && ok) ? "ok" : "fail", t }'
    ) >> "$out" &
  done
  wait_clients
  t1=$(date +%s.%N)
  local rss
  # shellcheck disable=SC2086
  rss=$(peak_rss_kb $server_pids)
  sort -k2 -g "$out" | awk -v wall="$(echo "$t1 - $t0" | bc)" -v rss="$rss" '
    { t[NR] = $2; if ($1 != "ok") f++ }
    END {
      i99 = int(NR * 0.99) + 1; if (i99 > NR) i99 = NR
      missing = '"$C"' - NR; if (missing < 0) missing = 0
      printf "%.3f %.3f %.3f %d %d\n", wall, t[int(NR * 0.5) + 1], t[i99], f + missing, rss }' \
    >> "$work/$name.rounds"
}

# Waits for the client subshells (not the servers, which are also children).
wait_clients() {
  local p
  for p in $(jobs -p); do
    case " ${pids[*]} " in *" $p "*) ;; *) wait "$p" 2>/dev/null || true ;; esac
  done
}

for round in $(seq "$R"); do
  for name in boot-server nginx; do
    if [ "$name" = boot-server ]; then start_boot_server; else start_nginx; fi
    base=$(eval peak_rss_kb "$server_pids")
    storm "$name"
    stop_server
    echo "round $round $name: $(tail -1 "$work/$name.rounds") (wall_s p50_s p99_s failures peak_rss_kb; idle rss ${base} kB)"
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "== $C clients x (kernel $kernel_size B + initrd $initrd_size B), medians of $R rounds"
printf "%-12s %9s %9s %9s %9s %12s\n" server all_done_s p50_s p99_s failures peak_rss_MiB
declare -A med
for name in boot-server nginx; do
  for col in 1 2 3 4 5; do
    med[$name.$col]=$(awk -v c=$col '{ print $c }' "$work/$name.rounds" | median)
  done
  printf "%-12s %9s %9s %9s %9s %12.1f\n" "$name" "${med[$name.1]}" "${med[$name.2]}" "${med[$name.3]}" \
    "${med[$name.4]}" "$(echo "${med[$name.5]} / 1024" | bc -l)"
done
printf "ratio boot-server/nginx: all_done %.2f, p50 %.2f, p99 %.2f, peak RSS %.2f\n" \
  "$(echo "${med[boot-server.1]} / ${med[nginx.1]}" | bc -l)" \
  "$(echo "${med[boot-server.2]} / ${med[nginx.2]}" | bc -l)" \
  "$(echo "${med[boot-server.3]} / ${med[nginx.3]}" | bc -l)" \
  "$(echo "${med[boot-server.5]} / ${med[nginx.5]}" | bc -l)"
