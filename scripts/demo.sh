#!/usr/bin/env bash
# The main job: vgpud serving a real Debian guest (QEMU 11, vhost-user-gpu-pci, stock virtio_gpu
# and Mesa) that draws through it: a 2D test pattern on the scanout, then OpenGL (kmscube) through
# virgl; then a second guest on QEMU's generic vhost-user device with a host-visible window runs
# Vulkan through Venus (compute and an offscreen render) and shows a test pattern on its own
# screen, which QEMU cannot display for that device: vgpud's VNC output does, and vncdotool (a
# real VNC viewer) takes a picture of it. Prints what the guests saw and writes PNG screenshots
# of both guests' screens to build/demo/.
# Builds what is missing first (testbed root, guest image, guest tests, vgpud with OpenGL).
set -euo pipefail
# shellcheck source=testbed/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/testbed/lib.sh"

OUT=$TB_PROJECT/build/demo
SOCK=$OUT/vgpud.sock
VENUS_SOCK=$OUT/vgpud-venus.sock
QMP=$OUT/qmp.sock
# The Venus guest's VNC output, on loopback inside the testbed root.
VENUS_VNC_PORT=5958
GROUPS_STARTED=()

cleanup() {
    local pid
    for pid in "${GROUPS_STARTED[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# Runs a command in its own process group, so cleanup reaches everything it started.
start() {
    setsid "$@" &
    GROUPS_STARTED+=("$!")
}

wait_for() {
    local what=$1 path=$2 pattern=${3:-} i
    for ((i = 0; i < 1200; i++)); do
        if [[ -z $pattern && -e $path ]] || { [[ -n $pattern && -f $path ]] && grep -q "$pattern" "$path"; }; then
            return 0
        fi
        sleep 0.25
    done
    tb_die "timed out waiting for $what"
}

# The real-guest suite's screen checks (vgpud-e2e screen; built in main).
e2e_screen() {
    cargo run --locked -q --manifest-path "$TB_PROJECT/Cargo.toml" -p vgpud-e2e -- screen "$@"
}

screenshot() {
    e2e_screen --qmp "$QMP" --out "$1" --format png
    tb_log "screenshot: $1"
}

# screenshot_picture FILE: poll screendumps until the screen shows a picture,
# not one flat colour (kmscube under TCG takes seconds to its first frame),
# for at most PICTURE_WAIT s; FILE gets it, or the last screendump.
PICTURE_WAIT=120
screenshot_picture() {
    local rc=0
    tb_log "waiting for the first rendered frame (at most $PICTURE_WAIT s)"
    e2e_screen --qmp "$QMP" --out "$1" --picture --wait "$PICTURE_WAIT" >&2 || rc=$?
    tb_log "screenshot: $1"
    return "$rc"
}

GUEST='
echo "== the virtio-gpu device as the guest sees it"
cat /sys/kernel/debug/dri/0/virtio-gpu-features
echo "== OpenGL in the guest"
eglinfo -B -p surfaceless 2>/dev/null | grep -E "^OpenGL (ES profile|core profile) (renderer|version):"
echo "== 2D: a test pattern on the scanout (dumb buffer, KMS)"
'"$TB_PROJECT"'/target/guest-tests/kms-pattern --seed 1 --hold 120 --wait-for /results/shot-2d-done
echo "== GL: kmscube through virgl onto the scanout"
echo DEMO-GL
kmscube --count=400 | grep -E "renderer|Rendered"
'

VENUS_GUEST='
echo "== the virtio-gpu device as the guest sees it"
dmesg | grep -E "Host memory window|features:"
echo "== Vulkan devices in the guest"
vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName"
echo "== Vulkan compute and an offscreen render through Venus"
'"$TB_PROJECT"'/target/guest-tests/vk-compute
'"$TB_PROJECT"'/target/guest-tests/vk-render
echo "== its own screen: a test pattern, which vgpud'"'"'s VNC output shows"
'"$TB_PROJECT"'/target/guest-tests/kms-pattern --seed 2 --hold 120 --wait-for /results/shot-venus-done
'

# The second guest: Vulkan through Venus on the generic device (no VMM display: its screen is
# seen through vgpud's VNC output).
venus_part() {
    start "$TB_SCRIPTS/run.sh" "$TB_PROJECT/target/testbed/release/vgpud" --renderer venus \
        --hostmem 256M --socket-path "$VENUS_SOCK,vnc=127.0.0.1:$VENUS_VNC_PORT" \
        >"$OUT/vgpud-venus.log" 2>&1 </dev/null
    wait_for "vgpud's Venus socket" "$VENUS_SOCK"
    tb_log "vgpud (Venus) is serving $VENUS_SOCK, its VNC output 127.0.0.1:$VENUS_VNC_PORT"
    local rc=0 shot=0 size shotfile=$OUT/screenshot-venus-vnc.png
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    start "$TB_SCRIPTS/boot.sh" -q -o "$OUT/guest-venus" -t 600 \
        -a -chardev -a "socket,id=vgpu1,path=$VENUS_SOCK" \
        -d vhost-user-test-device-pci,chardev=vgpu1,virtio-id=16,num_vqs=2,config_size=24 \
        -c "$VENUS_GUEST" >"$OUT/boot-venus.log" 2>&1
    local boot=${GROUPS_STARTED[-1]}
    wait_for "the Venus guest's pattern" "$OUT/guest-venus/output.log" "^READY"
    size=$(grep -m1 '^READY' "$OUT/guest-venus/output.log" | cut -d' ' -f2)
    sleep 1
    "$TB_SCRIPTS/run.sh" vncdo -s "127.0.0.1::$VENUS_VNC_PORT" capture "$shotfile" || shot=$?
    tb_log "screenshot through VNC: $shotfile"
    if [[ $shot -eq 0 ]]; then
        e2e_screen --compare-only --out "$shotfile" --size "$size" --seed 2 || shot=$?
    fi
    touch "$OUT/guest-venus/shot-venus-done"
    wait "$boot" || rc=$?
    echo "== what the Venus guest printed"
    cat "$OUT/guest-venus/output.log"
    echo "== its screen through vgpud's VNC output: $shotfile"
    [[ $rc -eq 0 ]] || tb_die "the Venus guest failed ($rc); see $OUT/guest-venus/console.log"
    [[ $shot -eq 0 ]] || tb_die "the Venus guest's screen through VNC is not its pattern"
}

main() {
    "$TB_SCRIPTS/root.sh"
    # The guest's /init is baked into the image: rebuild when its script changed.
    local img=$TB_GUEST/initramfs.cpio.gz
    if [[ ! -f $img || ! -f $TB_GUEST/vmlinuz || $TB_SCRIPTS/guest-init.sh -nt $img ]]; then
        "$TB_SCRIPTS/guest-image.sh"
    fi
    "$TB_SCRIPTS/run.sh" "$TB_PROJECT/guest-tests/build.sh" "$TB_PROJECT/target/guest-tests"
    "$TB_SCRIPTS/run.sh" cargo build --release --locked --features virgl
    cargo build --locked -q --manifest-path "$TB_PROJECT/Cargo.toml" -p vgpud-e2e
    rm -rf "$OUT"
    mkdir -p "$OUT"

    start "$TB_SCRIPTS/run.sh" "$TB_PROJECT/target/testbed/release/vgpud" --renderer virgl \
        --socket-path "$SOCK" >"$OUT/vgpud.log" 2>&1 </dev/null
    wait_for "vgpud's socket" "$SOCK"
    tb_log "vgpud is serving $SOCK (log: $OUT/vgpud.log)"

    # shellcheck disable=SC2054 # commas are QEMU option syntax
    start "$TB_SCRIPTS/boot.sh" -q -o "$OUT/guest" -t 600 \
        -a -chardev -a "socket,id=vgpu0,path=$SOCK" -d vhost-user-gpu-pci,chardev=vgpu0 \
        -a -qmp -a "unix:$QMP,server=on,wait=off" -c "$GUEST" >"$OUT/boot.log" 2>&1
    local boot=${GROUPS_STARTED[-1]}
    wait_for "the 2D pattern" "$OUT/guest/output.log" "^READY"
    sleep 1
    screenshot "$OUT/screenshot-2d.png"
    touch "$OUT/guest/shot-2d-done"
    wait_for "kmscube" "$OUT/guest/output.log" "^DEMO-GL"
    local shot=0 rc=0
    screenshot_picture "$OUT/screenshot-gl.png" || shot=$?
    wait "$boot" || rc=$?
    echo "== what the guest printed"
    grep -v '^DEMO-GL' "$OUT/guest/output.log"
    echo "== screenshots: $OUT/screenshot-2d.png $OUT/screenshot-gl.png"
    [[ $rc -eq 0 ]] || tb_die "the guest command failed ($rc); see $OUT/guest/console.log"
    [[ $shot -eq 0 ]] || tb_die "kmscube's cube never showed on the screen; see $OUT/screenshot-gl.png"
    venus_part
}

main "$@"
