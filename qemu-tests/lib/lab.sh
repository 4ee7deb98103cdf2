# shellcheck shell=bash
# qemu-tests/lib/lab.sh: the network-namespace + QEMU lab (source it from bash).
#
# Owns: lab network namespaces (`bootlab-<pid>-<name>`) with a bridge br0
# (10.77.0.1/24 + fe80::1), tap devices, QEMU guests (TCG) started inside the
# namespace, helper daemons started inside it, waiting on guest serial consoles, and
# cleanup of all of that (EXIT/INT/TERM trap) plus garbage collection of namespaces
# left by killed earlier runs. Everything talks only to addresses inside the lab.
#
# API (all functions return non-zero on failure):
#   lab_require_root                 -> 0 if root, else prints SKIP and returns 1
#   lab_create NAME [--subnet A.B.C] -> creates namespace; sets LAB_NS, LAB_DIR and
#                                       LAB_BRIDGE_* (br0 is A.B.C.1/24; default 10.77.0)
#   lab_use NAME                     -> makes lab NAME (created earlier) the current one
#   lab_add_tap NAME TAPNAME         -> tap in lab NAME (or "" = current) on br0
#   lab_exec CMD...                  -> run CMD inside the current lab namespace
#   lab_spawn NAME CMD...            -> start CMD in the background inside the
#                                       namespace, log in $LAB_DIR/NAME.log;
#                                       sets LAB_PID[NAME]
#   lab_start_guest [options]        -> start a TCG guest inside the namespace
#       --name NAME          guest name (default g<n>)
#       --firmware bios|uefi (default bios: SeaBIOS; uefi: OVMF 4M code + VARS copy)
#       --nic MODEL          virtio-net-pci (default) | e1000 | none
#       --mac MAC            (default 52:54:00:77:xx:yy derived from the name)
#       --tap TAP            tap to use (default created: t<n>-<pid>)
#       --kernel F --initrd F --append S   direct kernel boot instead of netboot
#       --mem MB             (default 512)
#       --sga                add the Serial Graphics Adapter so SeaBIOS and the iPXE
#                            ROM text (and iPXE script echo) reach the serial log
#       --stamp              also write NAME.serial.ts: every serial line prefixed
#                            with seconds since QEMU launch (phase breakdowns)
#       --extra "ARGS"       more QEMU arguments (word-split)
#       --no-rom             no option ROM on the NIC (romfile=): under OVMF the
#                            firmware's own network stack (PXE / HTTP boot) drives it
#                            instead of the iPXE ROM QEMU ships for the NIC
#       --http-boot          UEFI HTTP boot: --no-rom, and OVMF's PXE and IPv6 are
#                            switched off (fw_cfg), so its only network boot option
#                            is HTTPv4 (DHCP with option 60 HTTPClient, URL answer)
#       --reboot             a guest reboot restarts the machine (default: QEMU exits)
#     sets LAB_GUEST_PID[NAME], LAB_GUEST_LOG[NAME] (serial log), LAB_GUEST_T0[NAME]
#   lab_wait_console GUEST REGEX TIMEOUT
#                                    -> waits for a serial line matching REGEX (ERE);
#                                       prints it and sets LAB_LINE to it; sets
#                                       LAB_ELAPSED (seconds since the guest's QEMU
#                                       launch, 3 decimals); 1 on timeout or when QEMU
#                                       died first. Call it directly, not in $(...).
#   lab_start_boot_server BIN STATE [SED-ARGS...]
#                                    -> writes $LAB_DIR/boot-server.toml from
#                                       qemu-tests/lab-server.toml (extra sed args edit it),
#                                       starts BIN serve as daemon "server", waits for
#                                       /healthz; sets LAB_SERVER_CONFIG
#   lab_stop_guest GUEST             -> kill one guest
#   lab_cleanup                      -> kill everything, delete namespaces (trap)
#   lab_gc                           -> delete `bootlab-*` namespaces of dead runs
#
# Environment knobs: LAB_QEMU (default qemu-system-x86_64), LAB_OVMF_CODE,
# LAB_OVMF_VARS, LAB_KEEP_LOGS=1 keeps $LAB_DIR after cleanup; LAB_FAILED_LOGS=DIR
# (test-all sets it) receives the text logs (*.log, *.serial, *.toml) of a run whose
# checks failed, so a CI failure can be read after its lab is gone.

LAB_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAB_QEMU="${LAB_QEMU:-qemu-system-x86_64}"
LAB_OVMF_CODE="${LAB_OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}"
LAB_OVMF_VARS="${LAB_OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}"
LAB_BRIDGE_ADDR="10.77.0.1"
LAB_BRIDGE_CIDR="10.77.0.1/24"
LAB_BRIDGE_LL="fe80::1/64"

LAB_NS=""
LAB_DIR=""
LAB_NAMESPACES=()
LAB_DIRS=()
LAB_GUESTS=()
LAB_ELAPSED=""
LAB_LINE=""
LAB_GUEST_SEQ=0
declare -gA LAB_GUEST_PID=() LAB_GUEST_LOG=() LAB_GUEST_T0=() LAB_PID=()
LAB_TRAP_SET=0
LAB_WAIT_PIDS=()
LAB_STAMP_PIDS=()

lab_log() { echo "[lab $(date +%H:%M:%S.%3N)] $*" >&2; }

lab_now() { date +%s.%N; }

# Seconds (3 decimals) between two `lab_now` stamps.
lab_secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

lab_require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "SKIP: the QEMU lab needs root (network namespaces, tap devices)" >&2
        return 1
    fi
    return 0
}

lab__trap() {
    [ "$LAB_TRAP_SET" = 1 ] && return 0
    LAB_TRAP_SET=1
    trap 'lab_cleanup' EXIT
    trap 'lab_cleanup; trap - INT; kill -INT $$' INT
    trap 'lab_cleanup; trap - TERM; kill -TERM $$' TERM
}

declare -gA LAB_BY_NAME=()

lab_create() {
    local name="${1:?lab_create NAME}" subnet=10.77.0
    [ "${2:-}" = --subnet ] && subnet="${3:?lab_create NAME --subnet A.B.C}"
    local ns="bootlab-$$-$name"
    LAB_BRIDGE_ADDR="$subnet.1"
    LAB_BRIDGE_CIDR="$subnet.1/24"
    lab__trap
    ip netns add "$ns" || { lab_log "cannot create namespace $ns"; return 1; }
    LAB_NAMESPACES+=("$ns")
    LAB_NS="$ns"
    LAB_DIR="$(mktemp -d "${TMPDIR:-/tmp}/$ns.XXXXXX")"
    LAB_DIRS+=("$LAB_DIR")
    ip -n "$ns" link set lo up
    ip -n "$ns" link add br0 type bridge forward_delay 0 stp_state 0 mcast_snooping 0
    ip -n "$ns" addr add "$LAB_BRIDGE_CIDR" dev br0
    # nodad: the address is usable at once, before any port has carrier.
    ip -n "$ns" addr add "$LAB_BRIDGE_LL" dev br0 nodad
    ip -n "$ns" link set br0 up
    LAB_BY_NAME[$name]="$ns|$LAB_DIR|$subnet"
    lab_log "lab $ns up (br0 $LAB_BRIDGE_CIDR, dir $LAB_DIR)"
}

lab_use() {
    local name="${1:?lab_use NAME}" rec
    rec="${LAB_BY_NAME[$name]:-}"
    [ -n "$rec" ] || { lab_log "no lab $name"; return 1; }
    IFS='|' read -r LAB_NS LAB_DIR rec <<<"$rec"
    LAB_BRIDGE_ADDR="$rec.1"
    LAB_BRIDGE_CIDR="$rec.1/24"
}

lab_exec() {
    [ -n "$LAB_NS" ] || { lab_log "no lab (call lab_create)"; return 1; }
    ip netns exec "$LAB_NS" "$@"
}

lab_add_tap() {
    local name="$1" tap="${2:?lab_add_tap NAME TAPNAME}" ns="$LAB_NS"
    [ -n "$name" ] && ns="bootlab-$$-$name"
    ip -n "$ns" tuntap add dev "$tap" mode tap || return 1
    ip -n "$ns" link set "$tap" master br0 || return 1
    ip -n "$ns" link set "$tap" up
}

lab_spawn() {
    local name="${1:?lab_spawn NAME CMD...}"
    shift
    ip netns exec "$LAB_NS" "$@" >"$LAB_DIR/$name.log" 2>&1 &
    LAB_PID[$name]=$!
    lab_log "spawned $name (pid $!): $*"
}

lab_start_guest() {
    local name="" fw=bios nic=virtio-net-pci mac="" tap="" kernel="" initrd="" append=""
    local mem=512 extra="" sga=0 stamp=0 reboot=-no-reboot rom=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --name) name="$2"; shift 2 ;;
            --firmware) fw="$2"; shift 2 ;;
            --nic) nic="$2"; shift 2 ;;
            --mac) mac="$2"; shift 2 ;;
            --tap) tap="$2"; shift 2 ;;
            --kernel) kernel="$2"; shift 2 ;;
            --initrd) initrd="$2"; shift 2 ;;
            --append) append="$2"; shift 2 ;;
            --mem) mem="$2"; shift 2 ;;
            --extra) extra="$2"; shift 2 ;;
            --sga) sga=1; shift ;;
            --stamp) stamp=1; shift ;;
            --reboot) reboot=""; shift ;;
            --no-rom) rom=",romfile="; shift ;;
            --http-boot) rom=",romfile="
                extra="$extra -fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=no"
                extra="$extra -fw_cfg name=opt/org.tianocore/IPv6Support,string=no"
                shift ;;
            *) lab_log "lab_start_guest: unknown option $1"; return 1 ;;
        esac
    done
    [ -n "$LAB_NS" ] || { lab_log "no lab (call lab_create)"; return 1; }
    LAB_GUEST_SEQ=$((LAB_GUEST_SEQ + 1))
    local seq=$LAB_GUEST_SEQ
    [ -n "$name" ] || name="g$seq"
    [ -n "$mac" ] || mac="$(printf '52:54:00:77:%02x:%02x' $(($$ % 256)) $((seq % 256)))"
    local log="$LAB_DIR/$name.serial"
    : > "$log"
    local args=(-accel tcg -m "$mem" -smp 1 -display none -monitor none
        -serial "file:$log" $reboot -name "$name")
    case "$fw" in
        bios) ;;
        uefi)
            [ -r "$LAB_OVMF_CODE" ] || { lab_log "OVMF code $LAB_OVMF_CODE missing"; return 1; }
            cp "$LAB_OVMF_VARS" "$LAB_DIR/$name.vars.fd"
            args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$LAB_OVMF_CODE"
                -drive "if=pflash,format=raw,unit=1,file=$LAB_DIR/$name.vars.fd")
            ;;
        *) lab_log "unknown firmware $fw"; return 1 ;;
    esac
    if [ "$nic" = none ]; then
        args+=(-nic none)
    else
        [ -n "$tap" ] || { tap="t$seq-$$"; tap="${tap:0:15}"; lab_add_tap "" "$tap" || return 1; }
        local bootidx=""
        [ -z "$kernel" ] && bootidx=",bootindex=1"
        args+=(-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no"
            -device "$nic,netdev=n0,mac=$mac$bootidx$rom")
    fi
    if [ -n "$kernel" ]; then
        args+=(-kernel "$kernel")
        [ -n "$initrd" ] && args+=(-initrd "$initrd")
        [ -n "$append" ] && args+=(-append "$append")
    else
        args+=(-boot n)
    fi
    [ "$sga" = 1 ] && args+=(-device sga)
    # shellcheck disable=SC2206
    [ -n "$extra" ] && args+=($extra)
    echo "$LAB_QEMU ${args[*]}" > "$LAB_DIR/$name.cmd"
    LAB_GUEST_T0[$name]="$(lab_now)"
    # `ip netns exec` execs QEMU in place, so $! is QEMU's pid.
    ip netns exec "$LAB_NS" "$LAB_QEMU" "${args[@]}" >"$LAB_DIR/$name.qemu.log" 2>&1 &
    LAB_GUEST_PID[$name]=$!
    LAB_GUEST_LOG[$name]="$log"
    LAB_GUESTS+=("$name")
    [ "$stamp" = 1 ] && lab__stamp "$name"
    lab_log "guest $name ($fw, $nic, $mac) pid $! serial $log"
}

lab_wait_console() {
    local guest="${1:?guest}" re="${2:?regex}" to="${3:-120}"
    local log="${LAB_GUEST_LOG[$guest]:-}" qpid="${LAB_GUEST_PID[$guest]:-}"
    [ -n "$log" ] || { lab_log "unknown guest $guest"; return 1; }
    local fifo="$LAB_DIR/.wait.$BASHPID.$RANDOM"
    mkfifo "$fifo"
    # tail -F follows the serial log (inotify) and ends when QEMU ends (--pid).
    tail -n +1 -F --pid="$qpid" "$log" 2>/dev/null > "$fifo" &
    local tp=$! line="" rc=0
    # grep runs in the background and we `wait` for it: unlike a foreground
    # command, `wait` lets an INT/TERM trap (lab_cleanup) run at once.
    timeout "$to" grep -a -m1 -E -- "$re" < "$fifo" > "$fifo.out" &
    local gp=$!
    LAB_WAIT_PIDS+=("$tp" "$gp")
    wait "$gp" || rc=$?
    local t1
    t1="$(lab_now)"
    kill "$tp" 2>/dev/null || true
    wait "$tp" 2>/dev/null || true
    LAB_WAIT_PIDS=()
    line="$(head -n 1 "$fifo.out")"
    rm -f "$fifo" "$fifo.out"
    LAB_ELAPSED="$(lab_secs "${LAB_GUEST_T0[$guest]}" "$t1")"
    LAB_LINE="${line//$'\r'/}"
    if [ "$rc" = 0 ]; then
        printf '%s\n' "$LAB_LINE"
        return 0
    fi
    if [ "$rc" = 124 ]; then
        lab_log "guest $guest: no /$re/ within ${to}s"
    else
        lab_log "guest $guest: QEMU ended before /$re/ (after ${LAB_ELAPSED}s)"
    fi
    return 1
}

# Follow GUEST's serial log, writing each line prefixed by seconds since launch.
# serial-lines.pl drops escape sequences and splits sgabios screen drawing into lines.
lab__stamp() {
    local g="$1" t0="${LAB_GUEST_T0[$1]}"
    (
        tail -n +1 -F --pid="${LAB_GUEST_PID[$g]}" "${LAB_GUEST_LOG[$g]}" 2>/dev/null \
            | perl "$LAB_LIB_DIR/serial-lines.pl" \
            | while IFS= read -r line; do
                [[ "$line" =~ [[:alnum:]] ]] || continue
                printf '%s %s\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%7.3f", b - a }')" "$line"
            done > "${LAB_GUEST_LOG[$g]}.ts"
    ) &
    LAB_STAMP_PIDS+=($!)
}

lab_start_boot_server() {
    local bin="${1:?lab_start_boot_server BIN STATE [SED-ARGS...]}" state="${2:?state dir}" i
    shift 2
    LAB_SERVER_CONFIG="$LAB_DIR/boot-server.toml"
    # Another subnet than the file's 10.77.0.0/24 (lab_create --subnet): move every address.
    local net="${LAB_BRIDGE_ADDR%.1}"
    sed -e "s|@STATE_DIR@|$state|" -e "s|@IMAGES_DIR@|$LAB_LIB_DIR/../../images|" \
        -e "s|10\.77\.0\.|$net.|g" "$@" \
        "$LAB_LIB_DIR/../lab-server.toml" > "$LAB_SERVER_CONFIG" || return 1
    lab_spawn server "$bin" --config "$LAB_SERVER_CONFIG" serve
    for i in $(seq 300); do
        lab_exec curl -sf -o /dev/null "http://$LAB_BRIDGE_ADDR:8080/healthz" && return 0
        kill -0 "${LAB_PID[server]}" 2>/dev/null || break
        sleep 0.1
    done
    lab_log "boot-server did not come up:"
    tail -n 30 "$LAB_DIR/server.log" >&2
    return 1
}

lab_stop_guest() {
    local guest="${1:?guest}" pid="${LAB_GUEST_PID[$1]:-}"
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "LAB_GUEST_PID[$guest]"
}

# Kill every process whose network namespace is NS (all were started by this lab).
lab__kill_ns_pids() {
    local ns="$1" sig pids
    for sig in TERM KILL; do
        pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
        [ -n "${pids// /}" ] || return 0
        # shellcheck disable=SC2086
        kill -s "$sig" $pids 2>/dev/null || true
        local i
        for i in $(seq 30); do
            pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
            [ -n "${pids// /}" ] || return 0
            sleep 0.1
        done
    done
}

# Copy DIR's text logs (small: no disks, no images) into DEST.
lab__keep_text_logs() {
    local src="$1" dest="$2"
    [ -d "$src" ] || return 0
    mkdir -p "$dest" || return 0
    (cd "$src" && find . -maxdepth 2 -type f \( -name '*.log' -o -name '*.serial' -o -name '*.toml' \) \
        -size -64M -exec cp --parents -t "$dest" {} +) 2>/dev/null
    lab_log "logs of the failed run copied to $dest"
}

lab_cleanup() {
    local rc=$? g ns d p
    for p in "${LAB_WAIT_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for g in "${!LAB_GUEST_PID[@]}"; do kill "${LAB_GUEST_PID[$g]}" 2>/dev/null || true; done
    for g in "${!LAB_PID[@]}"; do kill "${LAB_PID[$g]}" 2>/dev/null || true; done
    for ns in "${LAB_NAMESPACES[@]}"; do
        lab__kill_ns_pids "$ns"
        ip netns del "$ns" 2>/dev/null || true
    done
    for g in "${!LAB_GUEST_PID[@]}"; do wait "${LAB_GUEST_PID[$g]}" 2>/dev/null || true; done
    for g in "${!LAB_PID[@]}"; do wait "${LAB_PID[$g]}" 2>/dev/null || true; done
    # Serial stampers end by themselves within a second of their QEMU (tail --pid).
    for p in "${LAB_STAMP_PIDS[@]}" "${LAB_WAIT_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${LAB_FAILED_LOGS:-}" ] && { [ "${T_FAILED:-0}" -gt 0 ] || [ "$rc" != 0 ]; }; then
        for d in "${LAB_DIRS[@]}"; do lab__keep_text_logs "$d" "$LAB_FAILED_LOGS/$(basename "$d")"; done
    fi
    if [ "${LAB_KEEP_LOGS:-0}" != 1 ]; then
        for d in "${LAB_DIRS[@]}"; do rm -rf "$d"; done
    elif [ "${#LAB_DIRS[@]}" -gt 0 ]; then
        lab_log "logs kept in ${LAB_DIRS[*]}"
    fi
    LAB_NAMESPACES=() LAB_DIRS=() LAB_NS="" LAB_DIR="" LAB_BY_NAME=()
    LAB_GUEST_PID=() LAB_PID=() LAB_STAMP_PIDS=() LAB_WAIT_PIDS=()
    return $rc
}

# Remove bootlab-<pid>-* namespaces whose creating shell is gone.
lab_gc() {
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^bootlab-' || true); do
        pid="$(echo "$ns" | sed -n 's/^bootlab-\([0-9]*\).*/\1/p')"
        # A namespace whose creating process still exists belongs to a live run.
        if [ -z "$pid" ] || [ "$pid" = "$$" ] || kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        lab_log "gc: removing stale namespace $ns"
        lab__kill_ns_pids "$ns"
        ip netns del "$ns" 2>/dev/null || true
    done
    local d
    for d in "${TMPDIR:-/tmp}"/bootlab-*.??????; do
        [ -d "$d" ] || continue
        pid="$(basename "$d" | sed -n 's/^bootlab-\([0-9]*\).*/\1/p')"
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && continue
        rm -rf "$d"
    done
}
