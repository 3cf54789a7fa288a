#!/usr/bin/env bash
# Vulkan compute benchmark in a real guest: guest-tests/vk-compute on the Venus device, served
# by vgpud (vhost-user-test-device-pci + vgpud --renderer venus) and by QEMU's built-in
# virtio-gpu-gl-pci with venus=true. Same guest kernel and root, same QEMU, same host Vulkan
# driver (lavapipe: the host has no GPU).
#
# usage: bench-vk.sh
#
# The built-in device needs a GL display and this host has no /dev/dri, so its QEMU gets
# `-display sdl,gl=on` on an Xvfb server in the testbed root; the vgpud QEMU gets the same by
# default, so both pay for the same display. Every boot runs vk-compute --count COUNT --rounds
# ROUNDS REPEAT times in a row; each run must pass and must have used "Virtio-GPU Venus", else
# the boot is invalid. The devices alternate (vgpud first in odd runs). Prints, per device,
# median and range of elements/s (vk-compute's own figure: elements over the summed GPU time,
# submission to fence), of that GPU time and of each vk-compute's wall time in the guest (Vulkan
# instance and device set-up, CPU fill and check included), and the ratio vgpud / built-in.
#
# Environment:
#   VGPUD_BENCH_VK_RUNS     boots per device (default 3)
#   VGPUD_BENCH_VK_REPEAT   vk-compute runs per boot (default 3)
#   VGPUD_BENCH_VK_COUNT    elements (default 8388608: two 32 MiB buffers, which fit the
#                           256M host-visible window; vk-compute's own 1048576 leaves the
#                           GPU a few ms per round, too little to time)
#   VGPUD_BENCH_VK_ROUNDS   rounds per vk-compute (default 10)
#   VGPUD_BENCH_VK_DISPLAY  QEMU -display for the vgpud runs (default sdl,gl=on, as built-in)
#   VGPUD_BENCH_VK_PROGRAM  the guest program, inside the project (default
#                           target/guest-tests/vk-compute)
#   VGPUD_BIN               vgpud binary, inside the project (default
#                           target/testbed/release/vgpud; built with --features virgl if missing)
#
# Needs the guest program (scripts/testbed/run.sh guest-tests/build.sh
# target/guest-tests) and Xvfb in the root. Results (logs of every boot, summary.txt) go to
# $VGPUD_TESTBED/runs/bench-vk-<time>-<pid>/. Needs root (chroot, mount).
set -euo pipefail
# shellcheck source=testbed/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/testbed/lib.sh"
# shellcheck source=bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

bench_init vk results
RUNS=${VGPUD_BENCH_VK_RUNS:-3}
REPEAT=${VGPUD_BENCH_VK_REPEAT:-3}
COUNT=${VGPUD_BENCH_VK_COUNT:-8388608}
ROUNDS=${VGPUD_BENCH_VK_ROUNDS:-10}
VGPUD_DISPLAY=${VGPUD_BENCH_VK_DISPLAY:-sdl,gl=on}
VGPUD=${VGPUD_BIN:-$TB_PROJECT/target/testbed/release/vgpud}
VK_COMPUTE=${VGPUD_BENCH_VK_PROGRAM:-$TB_PROJECT/target/guest-tests/vk-compute}
HOSTMEM=256M
VGPUD_ARGS=(--renderer venus --hostmem "$HOSTMEM")
VGPUD_DEVICE=vhost-user-test-device-pci,chardev=vgpu0,virtio-id=16,num_vqs=2,config_size=24
BUILTIN_DEVICE=virtio-gpu-gl-pci,blob=true,hostmem=$HOSTMEM,venus=true
GUEST_TIMEOUT=240
TABLE_WIDTHS="36 26"
GUEST_PROGRAM=$VK_COMPUTE
GUEST_PROGRAM_BUILD="scripts/testbed/run.sh guest-tests/build.sh target/guest-tests"
COUNT_OTHER_QEMUS=1

# The guest's command: vk-compute REPEAT times, each log into the results dir, with its wall time.
guest_code() {
    guest_head 2 "vk=$VK_COMPUTE count=$COUNT rounds=$ROUNDS repeat=$REPEAT"
    cat <<'EOF'
echo "uptime at start: $(cut -d' ' -f1 /proc/uptime)"
for ((i = 1; i <= repeat; i++)); do
    t=$EPOCHREALTIME
    "$vk" --count "$count" --rounds "$rounds" >"/results/vk$i.log" 2>&1 ||
        echo "FAIL: vk-compute $i exit status $?"
    echo "vk$i wall: $(wall "$t")"
done
EOF
}

# vk_result LOG: "M-elements/s gpu-ms" of a passing vk-compute run on Venus, else why not.
vk_result() {
    local log=$1
    [[ -f $log ]] || { echo "no log"; return 1; }
    grep -aq '^PASS: vk-compute' "$log" ||
        { echo "no PASS: $(grep -a -m1 '^FAIL' "$log" || echo 'no FAIL line either')"; return 1; }
    grep -aq '^vk-compute: using device [0-9]*: Virtio-GPU Venus' "$log" ||
        { echo "not on Virtio-GPU Venus: $(grep -a -m1 'using device' "$log")"; return 1; }
    awk '/ on the GPU / { for (i = 1; i < NF; i++) if ($(i + 1) == "s" && $(i + 2) == "on") g += $i }
        / elements\/s$/ { e = $(NF - 1) } END { if (e == "") exit 1; printf "%.1f %.1f\n", e / 1e6, g * 1e3 }' \
        "$log" || { echo "no elements/s line"; return 1; }
}

# run_one N DEVICE: one boot with DEVICE (vgpud or builtin); appends a line "DEVICE N REPEAT
# uptime M-elements/s gpu-ms wall-s" to $OUT/results per vk-compute run, or logs why it is invalid.
run_one() {
    local n=$1 dev=$2 dir=$OUT/run$1-$2 ok i r wall up
    boot_run "$n" "$dev"
    ok=$RUN_OK
    up=$(awk -F': ' '/^uptime at start:/ { print $2 + 0 }' "$dir/output.log" 2>/dev/null) || true
    local -a lines=()
    for ((i = 1; i <= REPEAT; i++)); do
        r=$(vk_result "$dir/vk$i.log") || { log "run $n $dev vk-compute $i: $r"; ok=0; continue; }
        wall=$(awk -F': ' -v k="vk$i wall" '$1 == k { print $2 + 0 }' "$dir/output.log") || true
        lines+=("$dev $n $i ${up:--} $r ${wall:--}")
        log "run $n $dev vk-compute $i: $r (M elements/s, GPU ms), wall ${wall:-?} s"
    done
    log "run $n $dev: boot $((SECONDS - RUN_T0)) s, guest uptime at start ${up:-?} s; load before: $RUN_LOAD; CPUs $RUN_CPU"
    record_run "$n" "$dev" "$ok" "${lines[@]}"
}

summary() {
    local i
    summary_head qemu-system-x86 libvirglrenderer1 virgl-server mesa-vulkan-drivers xvfb libsdl2-2.0-0
    echo "vgpud: $VGPUD --renderer venus --hostmem $HOSTMEM, QEMU -display $VGPUD_DISPLAY;" \
        "built-in: virtio-gpu-gl-pci,blob=true,hostmem=$HOSTMEM,venus=true, -display sdl,gl=on"
    echo "vk-compute --count $COUNT --rounds $ROUNDS, $REPEAT times per boot"
    summary_load
    echo
    echo "per vk-compute: device run repeat guest-uptime-at-start M-elements/s GPU-ms wall-s"
    sort -k2,2n -k1,1 -k3,3n "$RESULTS"
    echo
    table_header
    table_row "M elements/s, all vk-compute runs" 5
    table_row "GPU time (sum of rounds), ms" 6
    table_row "vk-compute wall in the guest, s" 7
    table_row "guest uptime at start, s" 4
    for ((i = 1; i <= REPEAT; i++)); do
        table_row "M elements/s, vk-compute #$i of a boot" 5 "$i"
    done
    summary_pairs "elements/s:   " 5 "wall:         " 7
}

bench_main "$@"
