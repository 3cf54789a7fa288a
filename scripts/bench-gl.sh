#!/usr/bin/env bash
# GL benchmark in a real guest: kmscube through vgpud (vhost-user-gpu-pci + vgpud --renderer
# virgl) against QEMU's built-in virtio-gpu-gl-pci, same guest kernel and root, same QEMU 11.
#
# usage: bench-gl.sh
#
# QEMU's built-in GL device needs a GL display, and this host has no /dev/dri (egl-headless
# fails), so both QEMUs get `-display sdl,gl=on` on an Xvfb server in the testbed root (install
# it there with `scripts/testbed/run.sh apt-get install -y xvfb`). Every boot runs, in the guest:
#   1. kmscube --count=FRAMES                       (KMS: page flips on the scanout)
#   2. kmscube -O -x -v 1280x800 --count=OFFSCREEN  (offscreen, glFinish after every frame)
# and each kmscube must report a GL renderer starting with "virgl", else the run is invalid.
# The two devices alternate (vgpud first in odd runs). Prints fps per run, median and range per
# device, and the ratio vgpud / built-in of the medians (higher is better for vgpud).
#
# Environment:
#   VGPUD_BENCH_GL_RUNS       boots per device (default 3)
#   VGPUD_BENCH_GL_FRAMES     kmscube frames on the scanout (default 600)
#   VGPUD_BENCH_GL_OFFSCREEN  kmscube offscreen frames (default 1200)
#   VGPUD_BENCH_GL_DISPLAY    QEMU -display for the vgpud runs (default sdl,gl=on, as built-in)
#   VGPUD_BIN                 vgpud binary (default target/testbed/release/vgpud, built with
#                             --features virgl inside the root when missing)
#
# Results (logs of every boot, summary.txt) go to $VGPUD_TESTBED/runs/bench-gl-<time>-<pid>/.
# Needs root (chroot, mount), like the testbed scripts.
set -euo pipefail
# shellcheck source=testbed/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/testbed/lib.sh"

RUNS=${VGPUD_BENCH_GL_RUNS:-3}
FRAMES=${VGPUD_BENCH_GL_FRAMES:-600}
OFFSCREEN=${VGPUD_BENCH_GL_OFFSCREEN:-1200}
VGPUD_DISPLAY=${VGPUD_BENCH_GL_DISPLAY:-sdl,gl=on}
VGPUD=${VGPUD_BIN:-$TB_PROJECT/target/testbed/release/vgpud}
GUEST_TIMEOUT=120 # a boot takes 30-60 s

OUT=$TB_RUNS/bench-gl-$(date +%Y%m%d-%H%M%S)-$$
SOCK_DIR=/tmp/vgpud-bench-gl-$$ # in the root: vgpud, Xvfb and QEMU all run there
X_DISPLAY=""
GROUPS_STARTED=()

log() { printf '[bench-gl] %s\n' "$*" >&2; }

cleanup() {
    local pid
    for pid in "${GROUPS_STARTED[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    rm -rf -- "${TB_ROOT:?}$SOCK_DIR"
}

# Runs a command in its own process group (setsid), so stop() reaches all it started.
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
    # Forget it: cleanup must not signal a group whose number was reused.
    local -a keep=()
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

start_vgpud() {
    local dir=$1 i
    start "$TB_SCRIPTS/run.sh" "$VGPUD" --renderer virgl --socket-path "$SOCK_DIR/vgpud.sock" \
        >"$dir/vgpud.log" 2>&1 </dev/null
    VGPUD_PID=${GROUPS_STARTED[-1]}
    for ((i = 0; i < 100; i++)); do
        [[ -S $TB_ROOT$SOCK_DIR/vgpud.sock ]] && return 0
        sleep 0.1
    done
    tb_die "vgpud did not create its socket (see $dir/vgpud.log)"
}

# The guest's command: both kmscube runs, their logs into its results dir. "wall" is a whole
# kmscube run, its GL start-up (context, shaders, buffers) included.
guest_code() {
    echo '#!/bin/bash'
    echo "frames=$FRAMES offscreen=$OFFSCREEN"
    cat <<'EOF'
wall() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
echo "kernel: $(uname -r)"
echo "mode: $(head -1 /sys/class/drm/card0-*/modes)"
echo "uptime at start: $(cut -d' ' -f1 /proc/uptime)"
t=$EPOCHREALTIME
kmscube --count="$frames" >/results/kms.log 2>&1 || echo "FAIL: kmscube exit status $?"
echo "kms wall: $(wall "$t")"
t=$EPOCHREALTIME
kmscube -O -x -v 1280x800 --count="$offscreen" >/results/offscreen.log 2>&1 ||
    echo "FAIL: kmscube -O exit status $?"
echo "offscreen wall: $(wall "$t")"
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
        sleep 0.1
    done
    running "$pid" && log "guest still running after $GUEST_TIMEOUT s: stopping it"
    stop "$pid"
}

# fps LOG COUNT: the fps of kmscube's last "Rendered N frames in T sec (F fps)" line, if the
# renderer was virgl and all frames were drawn (N counts the frames after the first).
fps() {
    local log=$1 count=$2 last
    [[ -f $log ]] || { echo "no log"; return 1; }
    grep -aq '^ *renderer: "virgl' "$log" ||
        { echo "renderer not virgl: $(grep -a -m1 'renderer:' "$log" || echo none)"; return 1; }
    last=$(grep -a '^Rendered' "$log" | tail -1)
    [[ $last =~ ^Rendered\ ([0-9]+)\ frames\ in\ [0-9.]+\ sec\ \(([0-9.]+)\ fps\) ]] ||
        { echo "no Rendered line"; return 1; }
    [[ ${BASH_REMATCH[1]} -eq $((count - 1)) ]] ||
        { echo "rendered ${BASH_REMATCH[1]} of $((count - 1)) frames"; return 1; }
    echo "${BASH_REMATCH[2]}"
}

# cpu_times: busy, steal and total jiffies of all host CPUs so far (/proc/stat). Steal is time
# this machine's vCPUs waited for the physical host: load from outside that no process list shows.
cpu_times() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' \
        /proc/stat
}

# run_one N DEVICE: boot once with DEVICE (vgpud or builtin); appends "DEVICE N kms-fps
# offscreen-fps uptime kms-wall offscreen-wall" to $OUT/fps, or logs why the run is invalid.
run_one() {
    local n=$1 dev=$2 dir=$OUT/run$1-$2 t0 kms off load alive=1 ok=1 times cpu0 cpu
    mkdir -p "$dir"
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    cpu0=$(cpu_times)
    t0=$SECONDS
    if [[ $dev == vgpud ]]; then
        start_vgpud "$dir"
        # shellcheck disable=SC2054 # commas are QEMU option syntax
        boot "$dir" "$VGPUD_DISPLAY" -chardev "socket,id=vgpu0,path=$SOCK_DIR/vgpud.sock" \
            -device vhost-user-gpu-pci,chardev=vgpu0
        running "$VGPUD_PID" || { log "run $n: vgpud died (see $dir/vgpud.log)"; alive=0; }
        stop "$VGPUD_PID"
        rm -f "$TB_ROOT$SOCK_DIR/vgpud.sock"
    else
        boot "$dir" sdl,gl=on -device virtio-gpu-gl-pci
    fi
    cpu=$(awk -v a="$cpu0" -v b="$(cpu_times)" 'BEGIN { split(a, x, " "); split(b, y, " ")
        t = y[3] - x[3]; printf "busy %d%%, steal %d%%", 100 * (y[1] - x[1]) / t, 100 * (y[2] - x[2]) / t }')
    echo "run $n $dev: load average before $load; during the boot, host CPUs $cpu" >>"$OUT/load"
    kms=$(fps "$dir/kms.log" "$FRAMES") || ok=0
    off=$(fps "$dir/offscreen.log" "$OFFSCREEN") || ok=0
    if [[ $dev == vgpud ]] && grep -aq panicked "$dir/vgpud.log"; then alive=0; fi
    [[ $alive -eq 1 ]] || ok=0
    # Guest uptime when its command started, and the wall time of each kmscube.
    times="- - -"
    if [[ -f $dir/output.log ]]; then
        times=$(awk -F': ' '/^uptime at start:/ { u = $2 } /^kms wall:/ { k = $2 }
            /^offscreen wall:/ { o = $2 } END { print u + 0, k + 0, o + 0 }' "$dir/output.log")
    fi
    log "run $n $dev: kms $kms fps, offscreen $off fps; guest uptime, kms and offscreen wall:" \
        "$times s; boot $((SECONDS - t0)) s; load before: $load; CPUs $cpu"
    if [[ $ok -eq 1 ]]; then
        echo "$dev $n $kms $off $times" >>"$OUT/fps"
    else
        log "run $n $dev: INVALID (logs in $dir)"
        INVALID=$((INVALID + 1))
    fi
}

# stats DEVICE COLUMN: "median (min-max)" of a column of $OUT/fps for DEVICE.
stats() {
    awk -v d="$1" -v c="$2" '$1 == d { print $c }' "$OUT/fps" | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "-"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.1f (%.1f-%.1f)\n", m, v[1], v[NR] }'
}

ratio() {
    awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { if (a == "-" || b == "-") print "-";
        else printf "%.2f\n", a / b }'
}

summary() {
    local col v b
    echo "bench-gl $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2016 # dpkg-query fields, not shell expansions
    "$TB_SCRIPTS/run.sh" dpkg-query -W -f '${Package} ${Version}\n' qemu-system-x86 \
        libvirglrenderer1 mesa-libgallium kmscube xvfb libsdl2-2.0-0
    echo "guest kernel $(grep -ah -m1 '^kernel:' "$OUT"/run*/output.log 2>/dev/null | head -1 | cut -d' ' -f2)"
    echo "vgpud: $VGPUD, QEMU -display $VGPUD_DISPLAY; built-in: -display sdl,gl=on"
    echo "kmscube frames: $FRAMES on the scanout, $OFFSCREEN offscreen (1280x800)"
    echo "host load (load average 1, 5, 15 min; CPU use of both CPUs, this benchmark included):"
    sed 's/^/  /' "$OUT/load"
    echo "guest modes (boots): $(grep -ah '^mode:' "$OUT"/run*/output.log | sort | uniq -c | xargs)"
    echo
    echo "per run: device run kms-fps offscreen-fps; guest uptime at start, kms wall, offscreen wall (s)"
    sort -k2,2n -k1,1 "$OUT/fps"
    echo
    printf '%-34s %-22s %-22s %s\n' "median (min-max)" vgpud built-in "vgpud/built-in"
    local -a names=("" "" "kmscube KMS $FRAMES, fps" "kmscube -O -x $OFFSCREEN, fps"
        "guest uptime at start, s" "kmscube KMS wall, s" "kmscube -O -x wall, s")
    for col in 3 4 5 6 7; do
        v=$(stats vgpud "$col")
        b=$(stats builtin "$col")
        printf '%-34s %-22s %-22s %s\n' "${names[col - 1]}" "$v" "$b" "$(ratio "$v" "$b")"
    done
    echo "vgpud/built-in within each run (the two boots next to each other in time):"
    echo "  kmscube KMS:    $(pairs 3)"
    echo "  kmscube -O -x:  $(pairs 4)"
}

# pairs COLUMN: vgpud/built-in of COLUMN for each run that has both.
pairs() {
    awk -v c="$1" '{ f[$1 " " $2] = $c; if ($2 > m) m = $2 }
        END { for (r = 1; r <= m; r++) if (("vgpud " r) in f && ("builtin " r) in f)
            printf " %.2f", f["vgpud " r] / f["builtin " r]; print "" }' "$OUT/fps"
}

main() {
    case ${1:-} in -h | --help) sed -n '2,25s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
    trap cleanup EXIT
    trap 'log interrupted; exit 130' INT
    trap 'log terminated; exit 143' TERM
    prepare
    log "results in $OUT; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    start_xvfb
    INVALID=0
    : >"$OUT/fps"
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

main "$@"
