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
# shellcheck source=bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

bench_init gl fps
RUNS=${VGPUD_BENCH_GL_RUNS:-3}
FRAMES=${VGPUD_BENCH_GL_FRAMES:-600}
OFFSCREEN=${VGPUD_BENCH_GL_OFFSCREEN:-1200}
VGPUD_DISPLAY=${VGPUD_BENCH_GL_DISPLAY:-sdl,gl=on}
VGPUD=${VGPUD_BIN:-$TB_PROJECT/target/testbed/release/vgpud}
VGPUD_ARGS=(--renderer virgl)
VGPUD_DEVICE=vhost-user-gpu-pci,chardev=vgpu0
BUILTIN_DEVICE=virtio-gpu-gl-pci
GUEST_TIMEOUT=120 # a boot takes 30-60 s
TABLE_WIDTHS="34 22"

# The guest's command: both kmscube runs, their logs into its results dir. "wall" is a whole
# kmscube run, its GL start-up (context, shaders, buffers) included.
guest_code() {
    guest_head 1 "frames=$FRAMES offscreen=$OFFSCREEN"
    cat <<'EOF'
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

# run_one N DEVICE: boot once with DEVICE (vgpud or builtin); appends "DEVICE N kms-fps
# offscreen-fps uptime kms-wall offscreen-wall" to $OUT/fps, or logs why the run is invalid.
run_one() {
    local n=$1 dev=$2 dir=$OUT/run$1-$2 kms off ok times
    boot_run "$n" "$dev"
    ok=$RUN_OK
    kms=$(fps "$dir/kms.log" "$FRAMES") || ok=0
    off=$(fps "$dir/offscreen.log" "$OFFSCREEN") || ok=0
    # Guest uptime when its command started, and the wall time of each kmscube.
    times="- - -"
    if [[ -f $dir/output.log ]]; then
        times=$(awk -F': ' '/^uptime at start:/ { u = $2 } /^kms wall:/ { k = $2 }
            /^offscreen wall:/ { o = $2 } END { print u + 0, k + 0, o + 0 }' "$dir/output.log")
    fi
    log "run $n $dev: kms $kms fps, offscreen $off fps; guest uptime, kms and offscreen wall:" \
        "$times s; boot $((SECONDS - RUN_T0)) s; load before: $RUN_LOAD; CPUs $RUN_CPU"
    record_run "$n" "$dev" "$ok" "$dev $n $kms $off $times"
}

summary() {
    summary_head qemu-system-x86 libvirglrenderer1 mesa-libgallium kmscube xvfb libsdl2-2.0-0
    echo "vgpud: $VGPUD, QEMU -display $VGPUD_DISPLAY; built-in: -display sdl,gl=on"
    echo "kmscube frames: $FRAMES on the scanout, $OFFSCREEN offscreen (1280x800)"
    summary_load
    echo "guest modes (boots): $(grep -ah '^mode:' "$OUT"/run*/output.log | sort | uniq -c | xargs)"
    echo
    echo "per run: device run kms-fps offscreen-fps; guest uptime at start, kms wall, offscreen wall (s)"
    sort -k2,2n -k1,1 "$RESULTS"
    echo
    table_header
    table_row "kmscube KMS $FRAMES, fps" 3
    table_row "kmscube -O -x $OFFSCREEN, fps" 4
    table_row "guest uptime at start, s" 5
    table_row "kmscube KMS wall, s" 6
    table_row "kmscube -O -x wall, s" 7
    summary_pairs "kmscube KMS:    " 3 "kmscube -O -x:  " 4
}

bench_main "$@"
