# shellcheck shell=bash disable=SC2034 # variables are used by the sourcing scripts
# Common part of the real-guest benchmarks bench-gl.sh and bench-vk.sh: vgpud against QEMU's
# built-in virtio-gpu-gl-pci, booted alternately with the testbed's kernel and root under a
# shared Xvfb, and the summary's statistics. Sourced after testbed/lib.sh; not meant to be run.
#
# A benchmark calls bench_init NAME RESULTS-FILE, then sets
#   RUNS              boots per device
#   VGPUD             the vgpud binary, inside the project
#   VGPUD_ARGS        vgpud's arguments (an array; --socket-path is added)
#   VGPUD_DEVICE      QEMU's -device for vgpud (its chardev is vgpu0)
#   VGPUD_DISPLAY     QEMU's -display for the vgpud boots
#   BUILTIN_DEVICE    QEMU's -device for the built-in boots (-display sdl,gl=on)
#   GUEST_TIMEOUT     seconds a guest may run
#   TABLE_WIDTHS      widths of the summary table's label and device columns ("LABEL CELL")
# and, if it wants them (bench_init clears them)
#   GUEST_PROGRAM     a guest program that must exist, inside the project
#   GUEST_PROGRAM_BUILD  how to build it (for the error message)
#   COUNT_OTHER_QEMUS 1: note in $OUT/load the most QEMUs it did not start seen during a boot
# defines
#   guest_code        prints the guest's command (/results/cmd.sh; start it with guest_head)
#   run_one N DEVICE  boots run N of DEVICE (vgpud or builtin) with boot_run, records it with
#                     record_run: lines "DEVICE N ..." in $RESULTS
#   summary           prints the summary (summary_head, table_row, summary_pairs...)
# and ends with bench_main "$@".

# bench_init NAME RESULTS-FILE: the benchmark's name (bench-NAME) and the file of its results
# in its results directory $OUT.
bench_init() {
    BENCH=bench-$1
    OUT=$TB_RUNS/$BENCH-$(date +%Y%m%d-%H%M%S)-$$
    RESULTS=$OUT/$2
    SOCK_DIR=/tmp/vgpud-$BENCH-$$ # in the root: vgpud, Xvfb and QEMU all run there
    X_DISPLAY=""
    GROUPS_STARTED=()
    GUEST_PROGRAM=""
    GUEST_PROGRAM_BUILD=""
    COUNT_OTHER_QEMUS=0
}

log() { printf '[%s] %s\n' "$BENCH" "$*" >&2; }

cleanup() {
    local pid
    for pid in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    rm -rf -- "${TB_ROOT:?}$SOCK_DIR"
}

# Runs a command in its own process group (setsid), so stop() reaches everything it started.
start() {
    setsid "$@" &
    GROUPS_STARTED+=("$!")
}

stop() {
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local -a keep=() # forget it: cleanup must not signal a reused group number
    for i in "${GROUPS_STARTED[@]}"; do [[ $i == "$pid" ]] || keep+=("$i"); done
    GROUPS_STARTED=("${keep[@]}")
}

# Is PID alive (a zombie is not)?
running() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

prepare() {
    tb_need_root
    tb_need_complete_root
    [[ -x $TB_ROOT/usr/bin/Xvfb ]] ||
        tb_die "no Xvfb in the root: scripts/testbed/run.sh apt-get install -y xvfb"
    [[ -z $GUEST_PROGRAM || -x $GUEST_PROGRAM ]] || tb_die "no $GUEST_PROGRAM: $GUEST_PROGRAM_BUILD"
    # The guest's /init is baked into the image: rebuild it when it is older than its inputs.
    local img=$TB_GUEST/initramfs.cpio.gz src
    for src in "$TB_SCRIPTS/guest-init.sh" "$TB_SCRIPTS/guest-image.sh" "$TB_ROOT_STAMP"; do
        if [[ ! -f $img || ! -f $TB_GUEST/vmlinuz || $src -nt $img ]]; then
            "$TB_SCRIPTS/guest-image.sh"
            break
        fi
    done
    if [[ ! -x $VGPUD ]]; then
        log "building vgpud with --features virgl (inside the root)"
        "$TB_SCRIPTS/run.sh" cargo build --release --locked --features virgl \
            --manifest-path "$TB_PROJECT/Cargo.toml" >&2
    fi
    case $VGPUD in "$TB_PROJECT"/*) ;; *) tb_die "VGPUD_BIN must be inside $TB_PROJECT" ;; esac
    if [[ -n $GUEST_PROGRAM ]]; then
        case $GUEST_PROGRAM in "$TB_PROJECT"/*) ;; *) tb_die "the guest program must be inside $TB_PROJECT" ;; esac
    fi
    mkdir -p "$OUT" "$TB_ROOT$SOCK_DIR"
    chmod 700 "$TB_ROOT$SOCK_DIR"
}

# Xvfb picks a free display number itself (-displayfd) and writes it to its stdout.
start_xvfb() {
    local i
    start "$TB_SCRIPTS/run.sh" Xvfb -displayfd 1 -screen 0 1920x1080x24 -nolisten tcp \
        >"$OUT/xvfb.out" 2>"$OUT/xvfb.log" </dev/null
    for ((i = 0; i < 100; i++)); do
        X_DISPLAY=$(head -1 "$OUT/xvfb.out")
        [[ -z $X_DISPLAY ]] || { log "Xvfb on :$X_DISPLAY"; return 0; }
        sleep 0.1
    done
    tb_die "Xvfb did not start (see $OUT/xvfb.log)"
}

# start_vgpud DIR ARGS...: vgpud ARGS on $SOCK_DIR/vgpud.sock, its log in DIR; sets VGPUD_PID.
start_vgpud() {
    local dir=$1 i
    shift
    start "$TB_SCRIPTS/run.sh" "$VGPUD" "$@" --socket-path "$SOCK_DIR/vgpud.sock" \
        >"$dir/vgpud.log" 2>&1 </dev/null
    VGPUD_PID=${GROUPS_STARTED[-1]}
    for ((i = 0; i < 100; i++)); do
        [[ -S $TB_ROOT$SOCK_DIR/vgpud.sock ]] && return 0
        sleep 0.1
    done
    tb_die "vgpud did not create its socket (see $dir/vgpud.log)"
}

# guest_head DECIMALS ASSIGNMENTS: the start of guest_code: the shell line ASSIGNMENTS, a function
# "wall START" that prints the seconds since START (an $EPOCHREALTIME) with DECIMALS decimals,
# and a line "kernel: RELEASE".
guest_head() {
    cat <<EOF
#!/bin/bash
$2
wall() { awk -v a="\$1" -v b="\$EPOCHREALTIME" 'BEGIN { printf "%.$1f", b - a }'; }
echo "kernel: \$(uname -r)"
EOF
}

# boot DIR DISPLAY DEVICE-ARGS...: one guest with the testbed's kernel, initramfs and 9p root
# (the same QEMU line as scripts/testbed/boot.sh, which cannot pass DISPLAY to QEMU).
boot() {
    local dir=$1 display=$2 pid i
    local append="console=ttyS0 panic=-1 mitigations=off vgpud.root=tmpfs"
    append+=" vgpud.project=$TB_PROJECT vgpud.cmd=/results/cmd.sh"
    shift 2
    guest_code >"$dir/cmd.sh"
    chmod +x "$dir/cmd.sh"
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    local -a qemu=(qemu-system-x86_64 -nodefaults -no-user-config -display "$display" -no-reboot
        -accel tcg -cpu max -smp 2 -m 2G
        -object memory-backend-memfd,id=mem0,size=2G,share=on -machine q35,memory-backend=mem0
        -kernel "$TB_GUEST/vmlinuz" -initrd "$TB_GUEST/initramfs.cpio.gz"
        -append "$append"
        -chardev "file,id=con0,path=$dir/console.log" -serial chardev:con0
        -virtfs local,path=/,mount_tag=rootfs,security_model=none,readonly=on,multidevs=remap
        -virtfs "local,path=$dir,mount_tag=results,security_model=none,multidevs=remap"
        -virtfs "local,path=$TB_PROJECT,mount_tag=project,security_model=none,readonly=on,multidevs=remap"
        "$@")
    printf '%q ' "${qemu[@]}" >"$dir/qemu-cmdline"
    start "$TB_SCRIPTS/run.sh" env "DISPLAY=:$X_DISPLAY" "XDG_RUNTIME_DIR=$SOCK_DIR" "${qemu[@]}" \
        >"$dir/qemu.log" 2>&1 </dev/null
    pid=${GROUPS_STARTED[-1]}
    for ((i = 0; i < GUEST_TIMEOUT * 10; i++)); do
        running "$pid" || break
        [[ $COUNT_OTHER_QEMUS != 1 ]] || ((i % 10)) || count_other_qemus
        sleep 0.1
    done
    running "$pid" && log "guest still running after $GUEST_TIMEOUT s: stopping it"
    stop "$pid"
}

# Raises OTHER_QEMUS to the number of QEMUs running now that this script did not start
# (another benchmark or test on this machine competes for the same two CPUs).
count_other_qemus() {
    local n
    n=$(ps -eo pgid=,comm= | awk -v g=" ${GROUPS_STARTED[*]} " \
        '$2 ~ /^qemu-system/ && !index(g, " " $1 " ") { n++ } END { print n + 0 }')
    ((n <= OTHER_QEMUS)) || OTHER_QEMUS=$n
}

# cpu_times: busy, steal and total jiffies of all host CPUs so far (/proc/stat). Steal is time
# this machine's vCPUs waited for the physical host: load from outside that no process list shows.
cpu_times() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' \
        /proc/stat
}

# boot_run N DEVICE: boots run N's guest with DEVICE (vgpud or builtin), its logs in
# $OUT/runN-DEVICE, and appends the host's load before and during the boot to $OUT/load. Sets
# RUN_T0 ($SECONDS at the start), RUN_LOAD (load average before), RUN_CPU (host CPU use during
# the boot) and RUN_OK (0 if vgpud died or panicked, else 1).
boot_run() {
    local n=$1 dev=$2 dir=$OUT/run$1-$2 cpu0
    mkdir -p "$dir"
    RUN_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
    cpu0=$(cpu_times)
    RUN_T0=$SECONDS
    RUN_OK=1
    OTHER_QEMUS=0
    if [[ $dev == vgpud ]]; then
        start_vgpud "$dir" "${VGPUD_ARGS[@]}"
        # shellcheck disable=SC2054 # commas are QEMU option syntax
        boot "$dir" "$VGPUD_DISPLAY" -chardev "socket,id=vgpu0,path=$SOCK_DIR/vgpud.sock" \
            -device "$VGPUD_DEVICE"
        running "$VGPUD_PID" || { log "run $n: vgpud died (see $dir/vgpud.log)"; RUN_OK=0; }
        stop "$VGPUD_PID"
        rm -f "$TB_ROOT$SOCK_DIR/vgpud.sock"
        ! grep -aq panicked "$dir/vgpud.log" || RUN_OK=0
    else
        boot "$dir" sdl,gl=on -device "$BUILTIN_DEVICE"
    fi
    RUN_CPU=$(awk -v a="$cpu0" -v b="$(cpu_times)" 'BEGIN { split(a, x, " "); split(b, y, " ")
        t = y[3] - x[3]; printf "busy %d%%, steal %d%%", 100 * (y[1] - x[1]) / t, 100 * (y[2] - x[2]) / t }')
    [[ $COUNT_OTHER_QEMUS != 1 ]] || RUN_CPU+=", other QEMUs running: up to $OTHER_QEMUS"
    echo "run $n $dev: load average before $RUN_LOAD; during the boot, host CPUs $RUN_CPU" >>"$OUT/load"
}

# record_run N DEVICE OK LINE...: appends the LINEs to $RESULTS if OK is 1, else counts run N of
# DEVICE as invalid.
record_run() {
    local n=$1 dev=$2 ok=$3
    shift 3
    if [[ $ok -eq 1 ]]; then
        printf '%s\n' "$@" >>"$RESULTS"
    else
        log "run $n $dev: INVALID (logs in $OUT/run$n-$dev)"
        INVALID=$((INVALID + 1))
    fi
}

# stats DEVICE COLUMN [KEY]: "median (min-max)" of a column of $RESULTS for DEVICE (and only
# the lines whose third column is KEY, or all).
stats() {
    awk -v d="$1" -v c="$2" -v r="${3:-}" '$1 == d && (r == "" || $3 == r) { print $c }' \
        "$RESULTS" | sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "-"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.1f (%.1f-%.1f)\n", m, v[1], v[NR] }'
}

ratio() {
    awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { if (a == "-" || b == "-") print "-";
        else printf "%.2f\n", a / b }'
}

# pairs COLUMN: vgpud/built-in of COLUMN's per-boot mean, for each run that has both boots.
pairs() {
    awk -v c="$1" '{ s[$1 " " $2] += $c; k[$1 " " $2]++; if ($2 > m) m = $2 }
        END { for (r = 1; r <= m; r++) if (("vgpud " r) in s && ("builtin " r) in s)
            printf " %.2f", (s["vgpud " r] / k["vgpud " r]) / (s["builtin " r] / k["builtin " r])
            print "" }' "$RESULTS"
}

# summary_head PACKAGE...: the summary's first lines: benchmark, date, host, the versions of
# the PACKAGEs in the root, the guest's kernel.
summary_head() {
    echo "$BENCH $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2016 # dpkg-query fields, not shell expansions
    "$TB_SCRIPTS/run.sh" dpkg-query -W -f '${Package} ${Version}\n' "$@"
    echo "guest kernel $(grep -ah -m1 '^kernel:' "$OUT"/run*/output.log 2>/dev/null | head -1 | cut -d' ' -f2)"
}

summary_load() {
    echo "host load (load average 1, 5, 15 min; CPU use of both CPUs, this benchmark included):"
    sed 's/^/  /' "$OUT/load"
}

# table_line LABEL VGPUD BUILTIN RATIO: a line of the summary table, columns TABLE_WIDTHS wide.
table_line() {
    local -a w
    read -r -a w <<<"$TABLE_WIDTHS"
    printf '%-*s %-*s %-*s %s\n' "${w[0]}" "$1" "${w[1]}" "$2" "${w[1]}" "$3" "$4"
}

table_header() { table_line "median (min-max)" vgpud built-in "vgpud/built-in"; }

# table_row LABEL COLUMN [KEY]: the table's line of stats COLUMN [KEY] for both devices.
table_row() {
    local label=$1 v b
    shift
    v=$(stats vgpud "$@")
    b=$(stats builtin "$@")
    table_line "$label" "$v" "$b" "$(ratio "$v" "$b")"
}

# summary_pairs LABEL COLUMN...: pairs of each COLUMN, a line each, after its LABEL.
summary_pairs() {
    echo "vgpud/built-in within each run (the two boots next to each other in time):"
    while (($#)); do
        echo "  $1$(pairs "$2")"
        shift 2
    done
}

bench_main() {
    case ${1:-} in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
    trap cleanup EXIT
    trap 'log interrupted; exit 130' INT
    trap 'log terminated; exit 143' TERM
    prepare
    log "results in $OUT; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    start_xvfb
    INVALID=0
    : >"$RESULTS"
    : >"$OUT/load"
    local n t0=$SECONDS
    for ((n = 1; n <= RUNS; n++)); do
        if ((n % 2)); then
            run_one "$n" vgpud
            run_one "$n" builtin
        else
            run_one "$n" builtin
            run_one "$n" vgpud
        fi
    done
    log "all boots took $((SECONDS - t0)) s"
    summary | tee "$OUT/summary.txt"
    [[ $INVALID -eq 0 ]] || tb_die "$INVALID invalid runs"
}
