#!/usr/bin/env bash
# qemu-tests/bench/all.sh: every benchmark of qemu-tests/bench/ in one go, each
# beside its conventional peer in the same run (that is each bench's own job), and
# one summary table of the figures they print (ratios and medians).
#
#   qemu-tests/bench/all.sh            full sizes, medians of 5 (N) — outside CI, ~1 h
#   qemu-tests/bench/all.sh --smoke    tiny sizes, one run each: does every bench still
#                                      work? (CI's bench-smoke suite; prints
#                                      `N passed, M failed, K skipped`; no figure is a claim).
#                                      Uses the cargo suite's release binaries (no
#                                      build); UEFI boot runs the boot-server half only
#                                      (BIOS runs both halves of the same script).
# Env: N (runs per bench, default 5), ONLY="dhcp tftp ..." to pick benches.
# Logs: qemu-tests/run/bench-all/<bench>.log. Needs root (benches use namespaces).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
smoke=0
[ "${1:-}" = --smoke ] && smoke=1
# The smoke (CI) uses the binaries the cargo suite built: a bench's own cargo
# build may differ in features from the workspace build and recompile for minutes.
[ "$smoke" = 1 ] && export BENCH_PREBUILT=1
n="${N:-5}"
out="$repo/qemu-tests/run/bench-all"
mkdir -p "$out"
# shellcheck source=../lib/summary.sh
. "$here/../lib/summary.sh"
t_all=$SECONDS

# name | command (full) | command (smoke, - for none) | what the table keeps (ERE on the bench's output)
benches=(
  # DHCP at 16,000/s: what one perfdhcp offers reliably here and Kea answers without
  # loss (at 25,000/s the generator falls short and Kea drops, which skews CPU/exchange).
  "dhcp|env R=$n SERVERS=boot-server,kea,dnsmasq $here/dhcp.sh 16000 10 50000|$here/dhcp.sh 500 2 500|^ratio boot-server|^throughput ratio|^(boot-server|kea-dhcp4).*(exchanges/s|per exchange)"
  # The same at 60,000/s from the lean generator (perfdhcp cannot offer it here): what
  # boot-server answers without loss against what Kea manages (its limit is ~30,000/s).
  "dhcp-gen|env GEN=dhcpgen SERVERS=boot-server,kea $here/dhcp.sh 60000 10 50000|env GEN=dhcpgen SERVERS=boot-server,kea $here/dhcp.sh 500 2 500|^throughput ratio|^(boot-server|kea-dhcp4).*(exchanges/s|per exchange)"
  "tftp|env N=$n $here/tftp.sh|env N=1 SIZE_MB=4 BLKSIZES=1468 WINDOWS=4 $here/tftp.sh|ratio boot-server"
  "http|env C=500 R=$n $here/http.sh|env C=5 R=1 $here/http.sh|^ratio |^(boot-server|nginx) "
  "storm|env R=$n $here/storm.sh 500|$here/storm.sh --smoke|^ratio |^(boot-server|dnsmasq\+nginx): "
  "nbd|env N=$n $here/nbd.sh|env N=1 WRITE_N=1 SIZE_MB=16 $here/nbd.sh|^ratio |MB/s"
  "boot-bios|$here/boot.sh -n $n --kernels lab|$here/boot.sh -n 1|^(median|ratio) "
  "boot-uefi|$here/boot.sh -n $n --firmware uefi|$here/boot.sh -n 1 --firmware uefi --only server|^(median|ratio) "
  "boot-tuned|$here/boot.sh -n $n --conv-tricks --kernels lab,debian|-|^ratio boot-server agent ready \\(lab"
  "reprovision|$here/reprovision.sh -n $n|$here/reprovision.sh -n 1|^median "
)
[ -x "$here/iscsi.sh" ] && benches+=("iscsi|$here/iscsi.sh --runs $n|$here/iscsi.sh --size-mib 16 --runs 1 --secs 1|^ratio |MB/s|IOPS")

declare -A figures=() secs=()
for b in "${benches[@]}"; do
    IFS='|' read -r name full tiny keep <<<"$b"
    if [ -n "${ONLY:-}" ] && ! grep -qw "$name" <<<"$ONLY"; then continue; fi
    cmd="$full"
    [ "$smoke" = 1 ] && cmd="$tiny"
    [ "$cmd" = - ] && continue # a full-size-only bench (its smoke adds nothing the others test)
    echo "== $name: $cmd"
    t0=$SECONDS
    # shellcheck disable=SC2086 # the command is word-split on purpose
    timeout 1800 $cmd > "$out/$name.log" 2>&1
    rc=$?
    secs[$name]=$((SECONDS - t0))
    figures[$name]="$(grep -E "$keep" "$out/$name.log" | sed 's/^ *//' | head -n 8)"
    if grep -q '^SKIP' "$out/$name.log" && [ "$rc" = 0 ] && [ -z "${figures[$name]}" ]; then
        t_skip "$name: $(grep -m1 '^SKIP' "$out/$name.log")"
    elif [ "$rc" = 0 ] && [ -n "${figures[$name]}" ]; then
        t_ok "$name ran (${secs[$name]} s)"
    else
        t_fail "$name: exit $rc, $(wc -l <<<"${figures[$name]}") figure lines (log: $out/$name.log)"
        tail -n 15 "$out/$name.log" | sed 's/^/    /'
    fi
done

echo
echo "== summary ($([ "$smoke" = 1 ] && echo "smoke: tiny sizes, one run, not a claim" || echo "medians of $n"); logs in $out)"
printf '%-12s %6s  %s\n' bench secs figures
for b in "${benches[@]}"; do
    name="${b%%|*}"
    [ -n "${secs[$name]:-}" ] || continue
    first=1
    while IFS= read -r line; do
        if [ "$first" = 1 ]; then printf '%-12s %6s  %s\n' "$name" "${secs[$name]}" "$line"; first=0
        else printf '%-12s %6s  %s\n' "" "" "$line"; fi
    done <<<"${figures[$name]:-(none)}"
done
echo "bench/all: $((SECONDS - t_all)) s"
t_summary
