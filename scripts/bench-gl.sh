#!/usr/bin/env bash
# GL benchmark in a real guest: kmscube and glmark2 through vgpud (vhost-user-gpu-pci + vgpud
# --renderer virgl) against QEMU's built-in virtio-gpu-gl-pci, same guest kernel and root, same
# QEMU 11.
#
# usage: bench-gl.sh
#
# QEMU's built-in GL device needs a GL display, and this host has no /dev/dri (egl-headless
# fails), so both QEMUs get `-display sdl,gl=on` on an Xvfb server in the testbed root (install
# it there, with glmark2: `scripts/testbed/run.sh apt-get install -y xvfb glmark2-drm`). Every
# boot runs, in the guest:
#   1. kmscube --count=FRAMES                       (KMS: page flips on the scanout)
#   2. kmscube -O -x -v 1280x800 --count=OFFSCREEN  (offscreen, glFinish after every frame)
#   3. glmark2-drm, its default scenes (GLMARK2_SECONDS each), full screen with page flips, at
#      the device's preferred mode 1280x800 on both devices. Left alone, glmark2-drm takes the
#      largest mode on the list (5120x2160 from the EDID) and a config with alpha, whose
#      ARGB8888 frame buffers virtio-gpu's primary plane refuses (XRGB8888 only): every mode
#      set fails with EINVAL and nothing reaches the screen. So it runs with
#      --visual-config alpha=0, and guest-tests/preferred-mode.c, an LD_PRELOAD library, leaves
#      it only the preferred mode.
# and each must report a GL renderer starting with "virgl" (glmark2: and a 1280x800 surface),
# else the run is invalid.
# The two devices alternate (vgpud first in odd runs). Prints fps per run, median and range per
# device, and the ratio vgpud / built-in of the medians (higher is better for vgpud).
#
# Environment:
#   VGPUD_BENCH_GL_RUNS       boots per device (default 3)
#   VGPUD_BENCH_GL_FRAMES     kmscube frames on the scanout (default 600)
#   VGPUD_BENCH_GL_OFFSCREEN  kmscube offscreen frames (default 1200)
#   VGPUD_BENCH_GL_GLMARK2    0 skips glmark2 (default 1)
#   VGPUD_BENCH_GL_GLMARK2_SECONDS  seconds per glmark2 scene (default 3; glmark2's own: 10)
#   VGPUD_BENCH_GL_DISPLAY    QEMU -display for the vgpud runs (default sdl,gl=on, as built-in)
#   VGPUD_BENCH_GL_VGPUD_ARGS more vgpud arguments, split at spaces (e.g. "--worker-spin 0")
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
GLMARK2=${VGPUD_BENCH_GL_GLMARK2:-1}
GLMARK2_SECONDS=${VGPUD_BENCH_GL_GLMARK2_SECONDS:-3}
VGPUD_DISPLAY=${VGPUD_BENCH_GL_DISPLAY:-sdl,gl=on}
VGPUD=${VGPUD_BIN:-$TB_PROJECT/target/testbed/release/vgpud}
# shellcheck disable=SC2206 # split at spaces on purpose
VGPUD_ARGS=(--renderer virgl ${VGPUD_BENCH_GL_VGPUD_ARGS:-})
VGPUD_DEVICE=vhost-user-gpu-pci,chardev=vgpu0
BUILTIN_DEVICE=virtio-gpu-gl-pci
GUEST_TIMEOUT=600 # a boot takes 30-60 s, glmark2 about 3 minutes more
GUEST_PROGRAM=$TB_PROJECT/target/guest-tests/preferred-mode.so
GUEST_PROGRAM_BUILD="scripts/testbed/run.sh guest-tests/build.sh target/guest-tests"
MODE=1280x800 # both devices' default resolution (xres/yres, vgpud's width/height)
TABLE_WIDTHS="34 22"

# The guest's command: both kmscube runs, their logs into its results dir. "wall" is a whole
# kmscube run, its GL start-up (context, shaders, buffers) included.
guest_code() {
    guest_head 1 "frames=$FRAMES offscreen=$OFFSCREEN glmark2=$GLMARK2 shim=$GUEST_PROGRAM
seconds=$GLMARK2_SECONDS"
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
if [[ $glmark2 == 1 ]]; then
    t=$EPOCHREALTIME
    # An option-only benchmark sets options for the default scenes that follow it.
    LD_PRELOAD=$shim glmark2-drm --visual-config alpha=0 -b ":duration=$seconds" \
        >/results/glmark2.log 2>&1 || echo "FAIL: glmark2-drm exit status $?"
    echo "glmark2 wall: $(wall "$t")"
fi
EOF
}

# score LOG: glmark2's score, if it ran on virgl at $MODE full screen (else why not; "-" when
# glmark2 was skipped).
score() {
    local log=$1 line
    [[ $GLMARK2 == 1 ]] || { echo -; return 0; }
    [[ -f $log ]] || { echo "no log"; return 1; }
    grep -aq 'GL_RENDERER: *virgl' "$log" ||
        { echo "renderer not virgl: $(grep -a -m1 'GL_RENDERER' "$log" || echo none)"; return 1; }
    grep -aq "Surface Size: *$MODE fullscreen" "$log" ||
        { echo "not $MODE: $(grep -a -m1 'Surface Size' "$log" || echo none)"; return 1; }
    ! grep -aq 'Failed to set crtc' "$log" || { echo "mode set failed"; return 1; }
    line=$(grep -a 'glmark2 Score:' "$log" | tail -1)
    [[ $line =~ Score:\ ([0-9]+) ]] || { echo "no score"; return 1; }
    echo "${BASH_REMATCH[1]}"
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
    local n=$1 dev=$2 dir=$OUT/run$1-$2 kms off gl ok times
    boot_run "$n" "$dev"
    ok=$RUN_OK
    kms=$(fps "$dir/kms.log" "$FRAMES") || ok=0
    off=$(fps "$dir/offscreen.log" "$OFFSCREEN") || ok=0
    gl=$(score "$dir/glmark2.log") || ok=0
    # Guest uptime when its command started, and the wall time of each program.
    times="- - - -"
    if [[ -f $dir/output.log ]]; then
        times=$(awk -F': ' '/^uptime at start:/ { u = $2 } /^kms wall:/ { k = $2 }
            /^offscreen wall:/ { o = $2 } /^glmark2 wall:/ { g = $2 }
            END { print u + 0, k + 0, o + 0, g + 0 }' "$dir/output.log")
    fi
    log "run $n $dev: kms $kms fps, offscreen $off fps, glmark2 $gl; guest uptime, kms," \
        "offscreen and glmark2 wall: $times s; boot $((SECONDS - RUN_T0)) s;" \
        "load before: $RUN_LOAD; CPUs $RUN_CPU"
    record_run "$n" "$dev" "$ok" "$dev $n $kms $off $gl $times"
}

summary() {
    summary_head qemu-system-x86 libvirglrenderer1 mesa-libgallium kmscube glmark2-drm xvfb \
        libsdl2-2.0-0
    echo "vgpud: $VGPUD ${VGPUD_ARGS[*]}, QEMU -display $VGPUD_DISPLAY; built-in: -display sdl,gl=on"
    echo "kmscube frames: $FRAMES on the scanout, $OFFSCREEN offscreen (1280x800)"
    summary_load
    echo "guest modes (boots): $(grep -ah '^mode:' "$OUT"/run*/output.log | sort | uniq -c | xargs)"
    echo
    echo "per run: device run kms-fps offscreen-fps glmark2-score; guest uptime at start, kms wall,"
    echo "offscreen wall, glmark2 wall (s)"
    sort -k2,2n -k1,1 "$RESULTS"
    echo
    table_header
    table_row "kmscube KMS $FRAMES, fps" 3
    table_row "kmscube -O -x $OFFSCREEN, fps" 4
    [[ $GLMARK2 != 1 ]] || table_row "glmark2-drm $MODE, score" 5
    table_row "guest uptime at start, s" 6
    table_row "kmscube KMS wall, s" 7
    table_row "kmscube -O -x wall, s" 8
    [[ $GLMARK2 != 1 ]] || table_row "glmark2-drm wall, s" 9
    summary_pairs "kmscube KMS:    " 3 "kmscube -O -x:  " 4
    [[ $GLMARK2 != 1 ]] || summary_pairs "glmark2-drm:    " 5
    [[ $GLMARK2 != 1 ]] || scenes
}

# Each glmark2 scene's fps: the median per device and their ratio (where a difference sits).
scenes() {
    echo
    echo "glmark2-drm scenes, fps: median vgpud, median built-in, vgpud/built-in"
    local f dev
    for f in "$OUT"/run*-*/glmark2.log; do
        [[ -f $f ]] || continue
        dev=${f%/glmark2.log}
        dev=${dev##*-}
        grep -a '^\[' "$f" | sed -E "s/^(.*): FPS: ([0-9]+).*/$dev\t\1\t\2/"
    done | awk -F'\t' '
        NF == 3 { v[$2, $1] = v[$2, $1] " " $3; if (!($2 in seen)) { seen[$2] = 1; order[n++] = $2 } }
        function med(s,   a, k, i, j, t) {
            k = split(s, a, " ")
            if (k == 0) return 0
            for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            return a[int((k + 1) / 2)]
        }
        END {
            for (i = 0; i < n; i++) {
                s = order[i]; a = med(v[s, "vgpud"]); b = med(v[s, "builtin"])
                printf "  %-64s %6s %6s %6s\n", s, a, b, (b > 0 ? sprintf("%.2f", a / b) : "-")
            }
        }'

}

[[ $GLMARK2 != 1 || -x $TB_ROOT/usr/bin/glmark2-drm ]] ||
    tb_die "no glmark2-drm in the root: scripts/testbed/run.sh apt-get install -y glmark2-drm"
bench_main "$@"
