#!/usr/bin/env bash
# Real-guest end-to-end tests of vgpud: each case starts vgpud in the testbed
# root, boots Debian guests under QEMU (TCG) with vhost-user-gpu-pci attached
# to it (Venus cases: the generic vhost-user-test-device-pci, which has the
# host-visible window and no display), and runs test programs from
# guest-tests/ in them.
#
# usage: e2e.sh [--list] [--only NAME]...
#
#   --list       print the cases and exit
#   --only NAME  run only this case (repeatable)
#
# Environment:
#   VGPUD_BIN          vgpud binary to test (default: cargo build --release on
#                      the host; with VGPUD_E2E_VIRGL=1 or VGPUD_E2E_VENUS=1,
#                      --features virgl inside the root, as virglrenderer 1.3
#                      is sid's)
#   VGPUD_E2E_VIRGL=1  also run the cases that need vgpud --renderer virgl
#   VGPUD_E2E_VENUS=1  also run the cases that need vgpud --renderer venus
#                      (Vulkan through Venus; QEMU >= 11.1 for the generic
#                      device, as the testbed root has)
#   VGPUD_E2E_TIMEOUT  per-guest timeout in seconds (default 240)
#   VGPUD_E2E_PROBE_STALL  seconds without console output before the GPU
#                      probe after which a guest counts as hung (default 60)
#
# Builds what is missing first: the testbed root (root.sh), the guest image
# (guest-image.sh), the guest tests (in the root, into target/guest-tests) and
# vgpud. Each case's logs go to $VGPUD_TESTBED/runs/e2e-<time>-<pid>/<case>/:
# vgpud.log (vk-churn: also churn.txt, vgpud's measurements), and per guest
# vm<N>/ with console.log, output.log, boot.log and screen.txt (plus
# screen.ppm when a screendump did not match; kmscube cases: screen.png).
#
# A guest that hangs before its GPU is probed (no console output for
# VGPUD_E2E_PROBE_STALL s after the kernel started, and no line about the
# device yet) is no vgpud result: its QEMU is stopped and the case runs once
# more (the first run's logs stay in <case>.hung/). A hang after the probe is
# a failure like any other.
#
# Prints one PASS/FAIL/SKIP line per case, a line "retried: K boot(s) hung
# before the device probe" when there were such retries, then the summary line
# "N passed, N failed[, N skipped]" alone (CI reads it as it is), and exits
# non-zero if any case failed. Needs root (chroot, mount), like the testbed scripts.
set -euo pipefail
# shellcheck source=testbed/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/testbed/lib.sh"

E2E_HELPERS=$TB_PROJECT/scripts/e2e
GUEST_TESTS=$TB_PROJECT/target/guest-tests
GUEST_TIMEOUT=${VGPUD_E2E_TIMEOUT:-240}
# Hung before the device probe: the console has the kernel's banner, nothing
# matching PROBE_MARK (guest-init.sh says "loading virtio_gpu" right before
# the driver; the driver's own lines say [drm] or virtio-gpu), and has not
# grown for PROBE_STALL s. TCG guests have been seen to stop that way right
# after "smp: Brought up 1 node, 2 CPUs".
PROBE_STALL=${VGPUD_E2E_PROBE_STALL:-60}
PROBE_MARK='virtio_gpu|virtio-gpu|\[drm\]'
HUNG_FILE="hung-before-probe"
# kms-pattern holds its image until this file appears; the guest sees its
# results dir (the host's <case>/vm<N>/) as /results.
DONE_FILE=/results/screendump-taken
# Features vgpud's 2D renderer offers, as virtio-gpu-features reports them.
FEATURES_2D=(virgl=no edid=yes indirect=yes resource_uuid=yes blob_resources=no context_init=no)
KMSCUBE_FRAMES=60
# Venus cases: vgpud's host-visible window (--hostmem) and the generic device
# that carries it (virtio-id 16 is GPU; config_size 24 is virtio_gpu_config).
VENUS_HOSTMEM=256M
VENUS_HOSTMEM_HEX=0x10000000
VENUS_DEVICE=vhost-user-test-device-pci,virtio-id=16,num_vqs=2,config_size=24
# Features vgpud's Venus renderer offers (it has virgl as well, for 2D).
FEATURES_VENUS=(virgl=yes blob_resources=yes context_init=yes)
# vk-churn: cycles in all, cycles before the first checkpoint, phases after
# it; at each later checkpoint vgpud's VmRSS may exceed checkpoint 0's by at
# most CHURN_RSS_SLACK_KB and its open fds checkpoint 0's by at most
# CHURN_FD_SLACK.
CHURN_CYCLES=2000
CHURN_WARMUP=200
CHURN_PHASES=4
CHURN_RSS_SLACK_KB=8192
CHURN_FD_SLACK=2
# share-buffer: pages shared, and the pattern's seed.
SHARE_PAGES=256
SHARE_SEED=4242
# vgpud's VNC output listens on loopback port 5900 + VNC_DISPLAY inside the root
# (the display number is what gvnccapture takes).
VNC_DISPLAY=$((40 + $$ % 50))
# More arguments for vgpud in the case being run (start_vgpud).
VGPUD_ARGS=()

# name|vgpud renderer|description. Cases with the virgl renderer run only
# with VGPUD_E2E_VIRGL=1, those with venus only with VGPUD_E2E_VENUS=1.
CASES=(
    "probe|2d|virtio_gpu binds, card0 exists, 2D feature set, >= 1 scanout"
    "kms-pattern|2d|dumb buffer pattern on the CRTC, QEMU screendump compared pixel for pixel"
    "kmscube|2d|kmscube renders $KMSCUBE_FRAMES frames (llvmpipe in the guest, 2D scanout)"
    "modetest|2d|libdrm's modetest (a peer tool): connectors, encoders, planes, then a mode set with its test pattern"
    "two-vms|2d|one vgpud, two guests at once (1280x800 and 1024x768): probe + kms-pattern, different seeds"
    "gl-offscreen|virgl|probe virgl=yes, then a GLES2 triangle offscreen, GL_RENDERER virgl"
    "fences|virgl|GL draws with sync fd out-fences in flight, waited for in order"
    "kms-pattern-virgl|virgl|kms-pattern with the virgl renderer (2D resources are virglrenderer textures)"
    "kmscube-virgl|virgl|kmscube rendered by virgl through vgpud, $KMSCUBE_FRAMES frames"
    "venus-probe|venus|generic device: probe with blobs and context init, host memory window of $VENUS_HOSTMEM"
    "vk-info|venus|Vulkan lists a \"Virtio-GPU Venus\" device; a logical device on it"
    "vk-compute|venus|compute shader over 1M elements on Venus, checked element by element"
    "vk-render|venus|offscreen render of a known scene on Venus, compared with the CPU's image"
    "vk-coherent|venus|HOST_COHERENT memory, CPU to GPU and GPU to CPU, 4 KiB .. 16 MiB"
    "vk-churn|venus|$CHURN_CYCLES allocate/map/free cycles; vgpud's RSS and fds flat after warm-up"
    "drm-blob|venus|raw virtio-gpu ioctls: Venus context, GUEST and HOST3D blobs, ring-0 fences, a Venus reply, 256 blobs mapped at once"
    "two-venus|venus|one vgpud, two guests at once, each with its own render worker: vk-compute and vk-render in both"
    "worker-kill|venus|two guests at once; one's render worker is killed mid-workload: the other's vk-compute and vk-render pass"
    "gl-beside-vk|venus|one vgpud, a GL guest (virgl, vhost-user-gpu-pci) beside a Vulkan guest (Venus), per-socket settings, a render worker each"
    "share-buffer|venus|one guest renders a frame with Vulkan (Venus) into a $SHARE_PAGES-page Venus blob and exports it and a fence point through the share context; another waits for the fence, imports and maps the blob: every pixel checked, and a write seen back by the exporter"
    "share-moves|venus|two buffers of daemon memory under a one-buffer --share-budget: the importer sees MOVED, maps it again on a new resource of the same blob id and reads back what it wrote, bit for bit; a malformed stream reads INVALID and runs nothing"
    "share-moves-virgl|virgl|share-moves with two virgl guests (generic device, $VENUS_HOSTMEM window): the buffers made on the share context are daemon memory whatever the renderer"
    "share-moves-venus|venus|share-moves with two Venus guests"
    "vnc-pattern|2d|kms-pattern on vhost-user-gpu-pci with vgpud's own VNC output: gvnccapture's and vncdotool's pictures and QEMU's screendump all match the pattern exactly"
    "vnc-kmscube|virgl|kmscube through virgl on the generic device (no VMM display), seen through vgpud's VNC output: both real viewers' pictures show the rendered cube (3D resources read back through the render worker)"
    "vnc-share|venus|the sharing scene on screen: guest 0 renders a frame with Vulkan and exports it; guest 1 (generic device, no VMM display) imports it and makes it its scanout (SET_SCANOUT_BLOB): its VNC output matches the frame pixel for pixel in gvnccapture and vncdotool; guest 0 frees it and guest 1's screen goes black"
)

RUN_DIR=""
SOCK_DIR=""     # in the root's /tmp: QEMU and vgpud run in the root
VGPUD=""        # the staged binary, at a path visible in the root
RENDERER=""     # the current case's --renderer
TRACKED=()      # process-group leaders started here (setsid), stopped at exit
VGPUD_PID=""    # the process group started for vgpud (run.sh and its children)
WATCHERS=()     # watch_probe subshells (same process group as this script)
VHOST_ERRORS_EXPECTED=""  # guests a case disconnects on purpose (see qemu_vhost_errors)
RETRIED=0       # guests that hung before the device probe, whose case ran again
BOOT_PID=""
READY_SIZE=""
REASON=""
EXPORTER=""    # share_export: the exporting guest's boot.sh pid, its UUID and fence point
UUID=""
FENCE=""

log() { printf '[e2e] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- processes -------------------------------------------------------------

track() { TRACKED+=("$1"); }

untrack() {
    local -a keep=()
    local p
    for p in "${TRACKED[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    TRACKED=("${keep[@]}")
}

# Is PID alive (a zombie is not)?
running() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# QEMU runs under timeout(1), which moves itself into a process group of its
# own, so a signal to boot.sh's group does not reach it: stop it through its
# pidfile (checked to still be QEMU).
stop_qemu() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == qemu-system-* ]]; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
}

stop_qemus() {
    local f
    for f in "$TB_ROOT$SOCK_DIR"/*.qemu.pid; do
        [[ -f $f ]] || continue
        stop_qemu "$f"
        rm -f "$f"
    done
}

# Stop the process group led by PID: TERM, then KILL after 10 s.
stop_group() {
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    untrack "$pid"
}

stop_all() {
    [[ -z $SOCK_DIR ]] || stop_qemus
    local pid
    for pid in "${WATCHERS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    WATCHERS=()
    for pid in "${TRACKED[@]}"; do stop_group "$pid"; done
    VGPUD_PID=""
}

cleanup() {
    stop_all
    if [[ -n $SOCK_DIR && -d $TB_ROOT$SOCK_DIR ]]; then rm -rf -- "${TB_ROOT:?}$SOCK_DIR"; fi
}

# --- building ------------------------------------------------------------------

ensure_guest_image() {
    local img=$TB_GUEST/initramfs.cpio.gz src
    for src in "$TB_SCRIPTS/guest-init.sh" "$TB_SCRIPTS/guest-image.sh" "$TB_ROOT_STAMP"; do
        if [[ ! -f $img || ! -f $TB_GUEST/vmlinuz || $src -nt $img ]]; then
            "$TB_SCRIPTS/guest-image.sh"
            return
        fi
    done
}

build_all() {
    "$TB_SCRIPTS/root.sh"
    # Done here once: concurrent boot.sh calls would each rebuild a stale image.
    ensure_guest_image
    log "building guest tests into $GUEST_TESTS (inside the root)"
    "$TB_SCRIPTS/run.sh" "$TB_PROJECT/guest-tests/build.sh" "$GUEST_TESTS" >&2
    local bin=${VGPUD_BIN:-}
    [[ -n $bin ]] || build_vgpud
    [[ -x $bin ]] || tb_die "vgpud binary $bin is missing or not executable"
    # A copy in the run dir: visible inside the root wherever the original
    # lives, and safe from rebuilds during the run.
    VGPUD=$RUN_DIR/vgpud
    cp "$bin" "$VGPUD"
    log "vgpud: $bin"
}

# Sets bin (local to build_all) to a freshly built vgpud.
build_vgpud() {
    local target=${CARGO_TARGET_DIR:-}
    [[ -z $target ]] || target=$(realpath -m "$target")
    if [[ ${VGPUD_E2E_VIRGL:-0} != 1 && ${VGPUD_E2E_VENUS:-0} != 1 ]]; then
        log "cargo build --release"
        cargo build --release --manifest-path "$TB_PROJECT/Cargo.toml" >&2
        bin=${target:-$TB_PROJECT/target}/release/vgpud
        return
    fi
    # The virgl feature (the virgl and venus renderers) needs sid's
    # virglrenderer: build inside the root (run.sh's default target dir is
    # target/testbed).
    log "cargo build --release --features virgl (inside the root)"
    CARGO_TARGET_DIR=$target "$TB_SCRIPTS/run.sh" \
        cargo build --release --features virgl --manifest-path "$TB_PROJECT/Cargo.toml" >&2
    target=${target:-$TB_PROJECT/target/testbed}
    # A target dir outside the project was the root's own, e.g. its /tmp.
    case $target/ in "$TB_PROJECT"/*) ;; *) target=$TB_ROOT$target ;; esac
    bin=$target/release/vgpud
}

# --- vgpud and guests ------------------------------------------------------------

# Every guest has a results dir <case>/vm<N>; its vhost-user socket, QMP
# socket and QEMU pidfile are $SOCK_DIR/<case>-vm<N>.{sock,qmp,qemu.pid}.
vm_tag() { echo "$(basename "$(dirname "$1")")-$(basename "$1")"; }

# start_vgpud CASE_DIR NVMS [SETTINGS...]: one vgpud (--renderer $RENDERER)
# serving the sockets of CASE_DIR/vm0 .. vm<NVMS-1>, log in
# CASE_DIR/vgpud.log; the i-th SETTINGS, if given, are that guest's own
# (--socket-path PATH,SETTINGS).
start_vgpud() {
    local dir=$1 n=$2 i all sock own
    shift 2
    local -a socks=() args=(--renderer "$RENDERER" "${VGPUD_ARGS[@]}")
    if [[ $RENDERER == venus ]]; then args+=(--hostmem "$VENUS_HOSTMEM"); fi
    for ((i = 0; i < n; i++)); do
        socks+=("$SOCK_DIR/$(vm_tag "$dir/vm$i").sock")
        own=${1:-}
        [[ $# -eq 0 ]] || shift
        args+=(--socket-path "${socks[i]}${own:+,$own}")
    done
    setsid "$TB_SCRIPTS/run.sh" "$VGPUD" "${args[@]}" >"$dir/vgpud.log" 2>&1 </dev/null &
    VGPUD_PID=$!
    track "$VGPUD_PID"
    for ((i = 0; i < 300; i++)); do
        all=1
        for sock in "${socks[@]}"; do
            [[ -S $TB_ROOT$sock ]] || all=0
        done
        [[ $all -eq 0 ]] || return 0
        if ! running "$VGPUD_PID"; then
            REASON="vgpud exited at start: $(tail -3 "$dir/vgpud.log" | tr '\n' ' ')"
            return 1
        fi
        sleep 0.1
    done
    REASON="vgpud sockets did not appear within 30 s"
    return 1
}

# vgpud must still be serving at the end of a case, and must not have panicked.
check_vgpud() {
    local dir=$1
    if grep -aq 'panicked' "$dir/vgpud.log"; then
        REASON="vgpud panicked: $(grep -a -m1 'panicked' "$dir/vgpud.log")"
        return 1
    fi
    if ! running "$VGPUD_PID"; then
        REASON="vgpud died during the case: $(tail -2 "$dir/vgpud.log" | tr '\n' ' ')"
        return 1
    fi
}

# vgpud's warnings and errors do not fail a case by themselves, but are shown:
# the first five distinct ones (without timestamps) and how many there were.
show_vgpud_warnings() {
    local log=$1/vgpud.log line n
    [[ -f $log ]] || return 0
    n=$(grep -acE '^\[[^]]* (ERROR|WARN) ' "$log" || true)
    [[ $n -gt 0 ]] || return 0
    log "  vgpud logged $n WARN/ERROR lines; the first distinct ones:"
    while IFS= read -r line; do
        log "    $line"
    done < <(grep -aE '^\[[^]]* (ERROR|WARN) ' "$log" | sed 's/^\[[^ ]* //' |
        awk '!seen[$0]++' | head -5)
}

# boot_guest OUT CODE [PROPS]: boot a guest in the background running bash
# CODE, with vhost-user-gpu-pci (plus ",PROPS") on its vgpud socket and a QMP
# socket; in Venus cases the generic device instead, unless GUEST_DEVICE names
# one. Sets BOOT_PID.
boot_guest() {
    local out=$1 code=$2 props=${3:+,$3} tag device=vhost-user-gpu-pci
    [[ $RENDERER != venus ]] || device=$VENUS_DEVICE
    device=${GUEST_DEVICE:-$device}
    tag=$SOCK_DIR/$(vm_tag "$out")
    mkdir -p "$out"
    rm -f "$out/${DONE_FILE##*/}"
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    local -a args=(-q -o "$out" -t "$GUEST_TIMEOUT"
        -a -chardev -a "socket,id=vgpu0,path=$tag.sock"
        -d "$device,chardev=vgpu0$props"
        -a -qmp -a "unix:$tag.qmp,server=on,wait=off"
        -a -pidfile -a "$tag.qemu.pid")
    setsid "$TB_SCRIPTS/boot.sh" "${args[@]}" -c "$code" >"$out/boot.log" 2>&1 </dev/null &
    BOOT_PID=$!
    track "$BOOT_PID"
    watch_probe "$out" "$BOOT_PID" &
    WATCHERS+=("$!")
}

# watch_probe OUT PID (in the background, while boot.sh PID runs): if the
# guest hangs before the device probe (see PROBE_STALL), write why to
# OUT/hung-before-probe and stop its QEMU; the guest then fails, and
# run_case runs the case again.
watch_probe() {
    local out=$1 pid=$2 console=$1/console.log size=-1 cur last
    last=$(date +%s)
    while running "$pid"; do
        sleep 1
        if grep -aqE "$PROBE_MARK" "$console" 2>/dev/null; then return 0; fi
        cur=$(stat -c %s "$console" 2>/dev/null || echo 0)
        if [[ $cur != "$size" ]]; then
            size=$cur
            last=$(date +%s)
        elif (($(date +%s) - last >= PROBE_STALL)) && grep -aq 'Linux version' "$console"; then
            echo "no console output for $PROBE_STALL s before the device probe;" \
                "last line: $(tail -n 1 "$console" | tr -cd '[:print:]')" >"$out/$HUNG_FILE"
            stop_qemu "$TB_ROOT$SOCK_DIR/$(vm_tag "$out").qemu.pid"
            return 0
        fi
    done
}

# finish_guest PID OUT PROGRAM...: wait for the guest; it must exit 0 and
# print "PASS: PROGRAM" for each PROGRAM.
finish_guest() {
    local pid=$1 out=$2 rc=0 prog line
    shift 2
    wait "$pid" || rc=$?
    untrack "$pid"
    grep -aE '^(PASS|FAIL): ' "$out/output.log" 2>/dev/null |
        sed "s|^|    $(basename "$out"): |" >&2 || true
    if [[ $rc -ne 0 ]]; then
        line=$(grep -a -m1 '^FAIL: ' "$out/output.log" 2>/dev/null || true)
        if [[ -n $line ]]; then
            REASON="guest ${line#FAIL: }"
        else
            REASON="guest exit code $rc (124: timeout, 125: no status; see $out/console.log)"
        fi
        return 1
    fi
    for prog in "$@"; do
        if ! grep -aqx "PASS: $prog" "$out/output.log"; then
            REASON="guest printed no 'PASS: $prog' (see $out/output.log)"
            return 1
        fi
    done
}

# wait_line OUT PID REGEX: wait until the guest prints a whole line matching
# REGEX; sets LINE to it. Read from output.log, which the guest writes through
# the uncached results share as it goes: unlike console.log, no kernel
# message can land in the middle of the line. (Not a $(...) function: this
# script would only act on a signal once such a subshell had ended.)
wait_line() {
    local out=$1 pid=$2 regex=$3 i
    LINE=""
    for ((i = 0; i < GUEST_TIMEOUT * 5; i++)); do
        LINE=$(grep -axE -m1 "$regex" "$out/output.log" 2>/dev/null || true)
        [[ -z $LINE ]] || return 0
        running "$pid" || return 1
        sleep 0.2
    done
    return 1
}

# wait_ready OUT PID: wait for kms-pattern's "READY WxH" line; sets
# READY_SIZE to WxH.
wait_ready() {
    READY_SIZE=""
    wait_line "$1" "$2" 'READY [0-9]+x[0-9]+' || return 1
    READY_SIZE=${LINE#READY }
}

# screen_check OUT SEED PID: once the guest shows its pattern, take a
# screendump and compare it with the pattern for SEED; then let the guest go.
screen_check() {
    local out=$1 seed=$2 pid=$3 vm rc=0
    vm=$(basename "$out")
    if ! wait_ready "$out" "$pid"; then
        REASON="$vm: kms-pattern never printed READY (see $out/output.log, console.log)"
        return 1
    fi
    python3 "$E2E_HELPERS/screen.py" --qmp "$TB_ROOT$SOCK_DIR/$(vm_tag "$out").qmp" \
        --out "$out/screen.ppm" --size "$READY_SIZE" --seed "$seed" >"$out/screen.txt" 2>&1 || rc=$?
    touch "$out/${DONE_FILE##*/}"
    log "  $vm: $(tail -1 "$out/screen.txt")"
    if [[ $rc -ne 0 ]]; then
        REASON="$vm: $(tail -1 "$out/screen.txt")"
        return 1
    fi
    # An exact match says all there is to say about it; a mismatch is kept.
    rm -f "$out/screen.ppm"
}

# picture_check OUT PID: once kmscube holds a frame on the screen (the guest
# prints KMSCUBE-HOLD), take screendumps until one shows a picture, not one
# flat colour (screen.py --picture), then let the guest go. The picture (or
# the last screendump) is kept as OUT/screen.png.
picture_check() {
    local out=$1 pid=$2 vm rc=0
    vm=$(basename "$out")
    if ! wait_line "$out" "$pid" 'KMSCUBE-HOLD'; then
        REASON="$vm: kmscube never held a frame for the screendump (see $out/output.log)"
        return 1
    fi
    python3 "$E2E_HELPERS/screen.py" --qmp "$TB_ROOT$SOCK_DIR/$(vm_tag "$out").qmp" \
        --out "$out/screen.png" --picture --wait 30 >"$out/screen.txt" 2>&1 || rc=$?
    touch "$out/${DONE_FILE##*/}"
    log "  $vm: $(tail -1 "$out/screen.txt")"
    if [[ $rc -ne 0 ]]; then
        REASON="$vm: $(tail -1 "$out/screen.txt")"
        return 1
    fi
}

# vnc_capture OUT NAME DISPLAY: both real viewers, inside the root, take a
# picture of vgpud's VNC output on display DISPLAY: OUT/NAME-gvnc.png
# (gvnccapture, gtk-vnc) and OUT/NAME-vncdo.png (vncdotool).
vnc_capture() {
    local out=$1 name=$2 display=$3
    if ! "$TB_SCRIPTS/run.sh" timeout 60 gvnccapture "127.0.0.1:$display" \
        "$out/$name-gvnc.png" >"$out/$name-gvnc.log" 2>&1; then
        REASON="gvnccapture failed: $(tail -1 "$out/$name-gvnc.log")"
        return 1
    fi
    if ! "$TB_SCRIPTS/run.sh" timeout 60 vncdo -s "127.0.0.1::$((5900 + display))" \
        capture "$out/$name-vncdo.png" >"$out/$name-vncdo.log" 2>&1; then
        REASON="vncdotool failed: $(tail -1 "$out/$name-vncdo.log")"
        return 1
    fi
}

# vnc_check OUT NAME DISPLAY CHECK...: takes both viewers' pictures until both
# pass `screen.py --compare-only CHECK...` (5 tries, 1 s apart: the guest may
# still be flushing).
vnc_check() {
    local out=$1 name=$2 display=$3 try viewer ok
    shift 3
    for ((try = 1; try <= 5; try++)); do
        vnc_capture "$out" "$name" "$display" || return 1
        ok=1
        for viewer in gvnc vncdo; do
            python3 "$E2E_HELPERS/screen.py" --compare-only --out "$out/$name-$viewer.png" "$@" \
                >"$out/$name-$viewer.txt" 2>&1 || ok=0
        done
        if [[ $ok -eq 1 ]]; then
            log "  $(basename "$out") VNC: gvnccapture: $(tail -1 "$out/$name-gvnc.txt")"
            log "  $(basename "$out") VNC: vncdotool: $(tail -1 "$out/$name-vncdo.txt")"
            return 0
        fi
        sleep 1
    done
    REASON="$(basename "$out") VNC $name: gvnccapture: $(tail -1 "$out/$name-gvnc.txt");"
    REASON+=" vncdotool: $(tail -1 "$out/$name-vncdo.txt")"
    return 1
}

# Guest command lines.
guest_program() {
    printf '%q/%s' "$GUEST_TESTS" "$1"
    shift
    # (printf with no arguments would still print one empty one)
    [[ $# -eq 0 ]] || printf ' %q' "$@"
}

kms_pattern_code() {
    guest_program kms-pattern --seed "$1" --hold "$GUEST_TIMEOUT" --wait-for "$DONE_FILE"
}

# libdrm's own KMS test tool, as a second opinion on the KMS paths kms-pattern covers.
MODETEST_GUEST_CODE=$(cat <<'EOF'
modetest -M virtio_gpu -c >/tmp/connectors || { echo "FAIL: modetest: listing connectors"; exit 1; }
conn=$(awk '$3 == "connected" { print $1; exit }' /tmp/connectors)
[ -n "$conn" ] || { echo "FAIL: modetest: no connected connector"; exit 1; }
echo "modetest: connector $conn connected"
modetest -M virtio_gpu -e -p >/tmp/resources || { echo "FAIL: modetest: listing encoders and planes"; exit 1; }
# modetest draws its test pattern, then waits for a newline before restoring the mode.
if ! echo | timeout 60 modetest -M virtio_gpu -s "$conn:1024x768" >/tmp/set.log 2>&1; then
    tail -5 /tmp/set.log
    echo "FAIL: modetest: mode set on connector $conn"
    exit 1
fi
grep -a "setting mode" /tmp/set.log || true
echo "PASS: modetest"
EOF
)

# kmscube in the guest ($want and $done_file are set in front of it).
# kmscube prints "Rendered N frames ..." every 2 s and once at the end, where
# N counts the frames after the first. On its way it holds a frame on the
# screen for the host's screendump: the first framebuffer kmscube puts on the
# plane (debugfs state) is a blank one, set before its first draw; once
# another one replaces it (the first page flip), a cube is on the screen.
# kmscube runs in short slices (SIGCONT, 50 ms, SIGSTOP) and the plane is
# looked at while it is stopped, so however fast it renders (virgl draws all
# its frames in under a second) the flip is seen before it ends; it stays
# stopped until the host has its screendump ($done_file), then goes on to
# the end.
KMSCUBE_GUEST_CODE=$(cat <<'EOF'
deadline=$((SECONDS + 150))
# kmscube quits ("user interrupted!") once its stdin is readable, and a
# background job's stdin is /dev/null: a FIFO opened read-write never is.
mkfifo /tmp/kmscube.in
kmscube --count="$want" >/tmp/kmscube.log 2>&1 <>/tmp/kmscube.in &
pid=$!
kill -STOP $pid
state=/sys/kernel/debug/dri/0/state
held=0 first=""
while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do
    fb=$(awk '/allocated by = kmscube/ { print prev } { prev = $1 }' $state 2>/dev/null)
    [ -n "$first" ] || first=$fb
    if [ -n "$fb" ] && [ "$fb" != "$first" ]; then
        held=1
        break
    fi
    kill -CONT $pid 2>/dev/null
    sleep 0.05
    kill -STOP $pid 2>/dev/null
done
if [ $held = 1 ]; then
    echo "kmscube: holding a frame ($first, then $fb on the plane)"
    echo KMSCUBE-HOLD
    limit=$((SECONDS + 60))
    while [ ! -e "$done_file" ] && [ $SECONDS -lt $limit ]; do sleep 0.1; done
    kill -CONT $pid
fi
while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do sleep 0.1; done
kill -0 $pid 2>/dev/null && kill -KILL $pid
wait $pid
rc=$?
grep -aE '^Using|renderer:' /tmp/kmscube.log
last=$(grep -a '^Rendered' /tmp/kmscube.log | tail -1)
echo "$last"
if [ "$rc" -ne 0 ]; then
    tail -5 /tmp/kmscube.log
    echo "FAIL: kmscube: exit status $rc"
    exit 1
fi
frames=$(echo "$last" | awk '{ print $2 }')
if [ "${frames:-0}" -lt $((want - 1)) ]; then
    echo "FAIL: kmscube: rendered ${frames:-no} frames of $want"
    exit 1
fi
if [ $held != 1 ]; then
    echo "FAIL: kmscube: no page flip seen in $state, no frame held for the screendump"
    exit 1
fi
echo "PASS: kmscube"
EOF
)

# --- cases: each returns 0, or sets REASON and returns 1 ------------------------

case_probe() {
    local dir=$1
    start_vgpud "$dir" 1 || return 1
    boot_guest "$dir/vm0" "$(guest_program probe "${FEATURES_2D[@]}")"
    finish_guest "$BOOT_PID" "$dir/vm0" probe || return 1
    check_vgpud "$dir"
}

case_kms-pattern() {
    local dir=$1 ok=0
    start_vgpud "$dir" 1 || return 1
    boot_guest "$dir/vm0" "$(kms_pattern_code 1)"
    screen_check "$dir/vm0" 1 "$BOOT_PID" || ok=1
    # Keep the screendump's verdict; still let the guest finish.
    local reason=$REASON
    finish_guest "$BOOT_PID" "$dir/vm0" kms-pattern || ok=1
    [[ -z $reason ]] || REASON=$reason
    [[ $ok -eq 0 ]] || return 1
    check_vgpud "$dir"
}

case_modetest() {
    local dir=$1
    start_vgpud "$dir" 1 || return 1
    boot_guest "$dir/vm0" "$MODETEST_GUEST_CODE"
    finish_guest "$BOOT_PID" "$dir/vm0" modetest || return 1
    check_vgpud "$dir"
}

case_kmscube() {
    local dir=$1 renderer=llvmpipe ok=0 reason
    [[ $RENDERER != virgl ]] || renderer=virgl
    start_vgpud "$dir" 1 || return 1
    boot_guest "$dir/vm0" "want=$KMSCUBE_FRAMES done_file=$DONE_FILE"$'\n'"$KMSCUBE_GUEST_CODE"
    picture_check "$dir/vm0" "$BOOT_PID" || ok=1
    reason=$REASON
    # The guest's own verdict comes first; then the screendump's.
    finish_guest "$BOOT_PID" "$dir/vm0" kmscube || return 1
    if [[ $ok -ne 0 ]]; then
        REASON=$reason
        return 1
    fi
    log "  $(grep -a 'renderer:' "$dir/vm0/output.log" | head -1 | tr -s ' ')"
    log "  $(grep -a '^Rendered' "$dir/vm0/output.log" | tail -1)"
    if ! grep -aq "renderer: \"$renderer" "$dir/vm0/output.log"; then
        REASON="kmscube did not render with $renderer"
        return 1
    fi
    check_vgpud "$dir"
}

case_two-vms() {
    local dir=$1 ok=0 pid0 pid1 reason=""
    start_vgpud "$dir" 2 || return 1
    boot_guest "$dir/vm0" "$(guest_program probe "${FEATURES_2D[@]}") && $(kms_pattern_code 2)"
    pid0=$BOOT_PID
    # The second display is smaller: each VM's mode must come from its own
    # QEMU display (vgpud's default is 1280x800).
    boot_guest "$dir/vm1" "$(guest_program probe "${FEATURES_2D[@]}") && $(kms_pattern_code 5)" \
        xres=1024,yres=768
    pid1=$BOOT_PID
    # Every step runs even after a failure (so both guests are released and
    # waited for); REASON ends up as the first failure's.
    screen_check "$dir/vm0" 2 "$pid0" || ok=1
    reason=${reason:-$REASON}
    screen_check "$dir/vm1" 5 "$pid1" || ok=1
    reason=${reason:-$REASON}
    finish_guest "$pid0" "$dir/vm0" probe kms-pattern || ok=1
    reason=${reason:-$REASON}
    finish_guest "$pid1" "$dir/vm1" probe kms-pattern || ok=1
    REASON=${reason:-$REASON}
    [[ $ok -eq 0 ]] || return 1
    check_vgpud "$dir"
}

case_gl-offscreen() {
    local dir=$1
    start_vgpud "$dir" 1 || return 1
    boot_guest "$dir/vm0" \
        "$(guest_program probe virgl=yes) && $(guest_program gl-offscreen --expect-renderer virgl)"
    finish_guest "$BOOT_PID" "$dir/vm0" probe gl-offscreen || return 1
    check_vgpud "$dir"
}

case_fences() {
    local dir=$1
    start_vgpud "$dir" 1 || return 1
    boot_guest "$dir/vm0" "$(guest_program fences --expect-renderer virgl --native)"
    finish_guest "$BOOT_PID" "$dir/vm0" fences || return 1
    check_vgpud "$dir"
}

case_kms-pattern-virgl() { case_kms-pattern "$@"; }
case_kmscube-virgl() { case_kmscube "$@"; }

# --- Venus cases: vgpud --renderer venus --hostmem, the generic device ---------

# The guest half of venus-probe: the kernel found the host-visible window
# (shared memory region 1), of the size vgpud was given.
HOSTMEM_GUEST_CODE=$(cat <<'EOF2'
line=$(dmesg | grep -a -m1 'Host memory window:')
if [ -z "$line" ]; then
    echo "FAIL: host-memory-window: no 'Host memory window:' in the kernel log"
    exit 1
fi
echo "host-memory-window: ${line#*] }"
size=${line##*+}
if [ $((size)) -ne $((want)) ]; then
    echo "FAIL: host-memory-window: $size bytes, expected $want"
    exit 1
fi
echo "PASS: host-memory-window"
EOF2
)

case_venus-probe() {
    local dir=$1
    start_vgpud "$dir" 1 || return 1
    boot_guest "$dir/vm0" "$(guest_program probe "${FEATURES_VENUS[@]}") || exit 1
want=$VENUS_HOSTMEM_HEX
$HOSTMEM_GUEST_CODE"
    finish_guest "$BOOT_PID" "$dir/vm0" probe host-memory-window || return 1
    log "  $(grep -a -m1 '^host-memory-window: ' "$dir/vm0/output.log")"
    check_vgpud "$dir"
}

# venus_program DIR PROGRAM [ARGS...]: one guest running one guest test.
venus_program() {
    local dir=$1
    shift
    start_vgpud "$dir" 1 || return 1
    boot_guest "$dir/vm0" "$(guest_program "$@")"
    finish_guest "$BOOT_PID" "$dir/vm0" "$1" || return 1
    check_vgpud "$dir"
}

case_vk-info() {
    venus_program "$1" vk-info || return 1
    log "  $(grep -a -m1 '^vk-info: using device' "$1/vm0/output.log")"
}

case_vk-compute() {
    venus_program "$1" vk-compute || return 1
    log "  $(grep -a -m1 'elements/s' "$1/vm0/output.log")"
}

case_vk-render() { venus_program "$1" vk-render; }

# two_guests DIR CODE0 PROGRAMS0 CODE1 PROGRAMS1: one vgpud, two guests at
# once; each guest's programs (space-separated) must all pass. Both run to the
# end even after a failure; REASON is the first one's. vgpud must have had a
# render worker per guest. VM0_SETTINGS and VM0_DEVICE, if set, are the first
# guest's own vgpud settings and QEMU device.
two_guests() {
    local dir=$1 ok=0 pid0 pid1 reason="" workers
    start_vgpud "$dir" 2 "${VM0_SETTINGS:-}" || return 1
    GUEST_DEVICE=${VM0_DEVICE:-} boot_guest "$dir/vm0" "$2"
    pid0=$BOOT_PID
    boot_guest "$dir/vm1" "$4"
    pid1=$BOOT_PID
    # shellcheck disable=SC2086 # the program lists split into words
    finish_guest "$pid0" "$dir/vm0" $3 || ok=1
    reason=${reason:-$REASON}
    # shellcheck disable=SC2086
    finish_guest "$pid1" "$dir/vm1" $5 || ok=1
    REASON=${reason:-$REASON}
    [[ $ok -eq 0 ]] || return 1
    workers=$(grep -ac 'event=worker-start ' "$dir/vgpud.log" || true)
    if [[ $workers -lt 2 ]]; then
        REASON="$workers render worker(s) started for two guests"
        return 1
    fi
    log "  $workers render workers started"
    check_vgpud "$dir"
}

case_two-venus() {
    local code
    code="$(guest_program vk-compute) && $(guest_program vk-render)"
    two_guests "$1" "$code" "vk-compute vk-render" "$code" "vk-compute vk-render"
}

# render_worker_of DIR/vmN: the pid of vgpud's render worker for that guest
# (its command line names the guest's socket).
render_worker_of() {
    local sock f
    sock="$(vm_tag "$1").sock"
    for f in /proc/[0-9]*/cmdline; do
        if tr '\0' ' ' <"$f" 2>/dev/null | grep -q "render-worker.*$sock"; then
            f=${f#/proc/}
            echo "${f%/cmdline}"
            return 0
        fi
    done
    return 1
}

# Guest 0 runs Vulkan compute in a loop; once it is under way its render worker
# is killed. vgpud must disconnect that guest alone (its QEMU is then stopped;
# its result does not count), keep running, and guest 1's workload must pass.
case_worker-kill() {
    local dir=$1 pid0 pid1 worker="" i
    start_vgpud "$dir" 2 || return 1
    boot_guest "$dir/vm0" "while $(guest_program vk-compute); do :; done"
    pid0=$BOOT_PID
    boot_guest "$dir/vm1" "$(guest_program vk-compute) && $(guest_program vk-render)"
    pid1=$BOOT_PID
    for ((i = 0; i < GUEST_TIMEOUT; i++)); do
        if grep -aq '^PASS: vk-compute' "$dir/vm0/output.log" 2>/dev/null &&
            worker=$(render_worker_of "$dir/vm0"); then
            break
        fi
        running "$pid0" || break
        sleep 1
    done
    if [[ -z $worker ]]; then
        REASON="guest 0 never got under way with a render worker"
        stop_qemus
        wait "$pid0" "$pid1" || true
        untrack "$pid0"
        untrack "$pid1"
        return 1
    fi
    kill -KILL "$worker"
    # Its VM is disconnected: QEMU reports the lost backend.
    VHOST_ERRORS_EXPECTED=vm0
    log "  killed render worker $worker of guest 0"
    for ((i = 0; i < 20; i++)); do
        grep -aq "event=worker-end pid=$worker " "$dir/vgpud.log" && break
        sleep 0.5
    done
    stop_qemu "$TB_ROOT$SOCK_DIR/$(vm_tag "$dir/vm0").qemu.pid"
    wait "$pid0" || true
    untrack "$pid0"
    finish_guest "$pid1" "$dir/vm1" vk-compute vk-render || return 1
    if ! grep -aq "event=worker-end pid=$worker " "$dir/vgpud.log"; then
        REASON="vgpud did not log the end of worker $worker"
        return 1
    fi
    log "  $(grep -a -m1 "event=worker-end pid=$worker " "$dir/vgpud.log" | sed 's/^\[[^ ]* //')"
    check_vgpud "$dir"
}

# The GL guest is on vhost-user-gpu-pci, with a virgl worker and no window: its
# socket's own settings.
case_gl-beside-vk() {
    VM0_SETTINGS=renderer=virgl,hostmem=0 VM0_DEVICE=vhost-user-gpu-pci two_guests "$1" \
        "$(guest_program probe virgl=yes) && $(guest_program gl-offscreen --expect-renderer virgl)" \
        "probe gl-offscreen" \
        "$(guest_program vk-compute)" vk-compute
}
# Guest 0 exports a HOST3D blob of its Venus renderer and prints its UUID; guest 1 is booted
# with it, imports them (policy: b may import from a), checks every word and
# writes a mark the exporter must see in its own pages.
# share_export CASE_DIR B_SETTINGS: vgpud with guests a (exporter) and b
# (B_SETTINGS: b's own, after name=b,share=on) under a policy letting b import
# a's buffers; boots guest 0 with share-buffer export and waits for its line.
# Sets EXPORTER (its boot.sh pid), UUID and FENCE.
share_export() {
    local dir=$1 own=$2 policy=$SOCK_DIR/share-policy.json
    printf '{"allow": [{"exporter": "a", "importers": ["b"]}]}\n' >"$TB_ROOT$policy"
    VGPUD_ARGS=(--share-policy "$policy")
    start_vgpud "$dir" 2 name=a,share=on "name=b,share=on${own:+,$own}" || return 1
    VGPUD_ARGS=()
    boot_guest "$dir/vm0" "$(guest_program share-buffer export "$SHARE_SEED" "$SHARE_PAGES")"
    EXPORTER=$BOOT_PID
    if ! wait_line "$dir/vm0" "$EXPORTER" 'SHARE-UUID [0-9a-f]{32} FENCE [0-9]+'; then
        REASON="guest 0 exported nothing (see $dir/vm0/output.log)"
        stop_qemus
        wait "$EXPORTER" || true
        untrack "$EXPORTER"
        return 1
    fi
    read -r _ UUID _ FENCE <<<"$LINE"
    log "  guest 0 exported $UUID and fence point $FENCE"
}

case_share-buffer() {
    local dir=$1 pid0 pid1 uuid fence
    share_export "$dir" "" || return 1
    pid0=$EXPORTER uuid=$UUID fence=$FENCE
    boot_guest "$dir/vm1" \
        "$(guest_program share-buffer import "$uuid" "$SHARE_SEED" "$SHARE_PAGES" "$fence")"
    pid1=$BOOT_PID
    local ok=0 reason=""
    finish_guest "$pid1" "$dir/vm1" share-buffer || ok=1
    reason=$REASON
    finish_guest "$pid0" "$dir/vm0" share-buffer || ok=1
    REASON=${reason:-$REASON}
    [[ $ok -eq 0 ]] || return 1
    if ! grep -aq 'imports a buffer of a' "$dir/vgpud.log"; then
        REASON="vgpud did not log the import"
        return 1
    fi
    check_vgpud "$dir"
}
# kms-pattern on vhost-user-gpu-pci, with vgpud's VNC output too: both real
# viewers' pictures must match the pattern exactly, and so must QEMU's own
# screendump of the same guest.
case_vnc-pattern() {
    local dir=$1 ok=0 seed=5 reason
    start_vgpud "$dir" 1 "vnc=127.0.0.1:$((5900 + VNC_DISPLAY))" || return 1
    boot_guest "$dir/vm0" "$(kms_pattern_code "$seed")"
    if ! wait_ready "$dir/vm0" "$BOOT_PID"; then
        REASON="vm0: kms-pattern never printed READY (see $dir/vm0/output.log)"
        stop_qemus
        return 1
    fi
    vnc_check "$dir/vm0" pattern "$VNC_DISPLAY" --size "$READY_SIZE" --seed "$seed" || ok=1
    reason=$REASON
    screen_check "$dir/vm0" "$seed" "$BOOT_PID" || ok=1
    reason=${reason:-$REASON}
    finish_guest "$BOOT_PID" "$dir/vm0" kms-pattern || ok=1
    REASON=${reason:-$REASON}
    [[ $ok -eq 0 ]] || return 1
    check_vgpud "$dir"
}

# kmscube through virgl on the generic device, whose VMM has no display: once
# kmscube holds a frame, both real viewers' pictures of vgpud's VNC output
# must show a rendered picture (screen.py --picture), read back from the
# render worker.
case_vnc-kmscube() {
    local dir=$1 ok=0 reason
    VGPUD_ARGS=(--hostmem "$VENUS_HOSTMEM")
    start_vgpud "$dir" 1 "vnc=127.0.0.1:$((5900 + VNC_DISPLAY))" || return 1
    VGPUD_ARGS=()
    GUEST_DEVICE=$VENUS_DEVICE boot_guest "$dir/vm0" \
        "want=$KMSCUBE_FRAMES done_file=$DONE_FILE"$'\n'"$KMSCUBE_GUEST_CODE"
    if ! wait_line "$dir/vm0" "$BOOT_PID" 'KMSCUBE-HOLD'; then
        REASON="vm0: kmscube never held a frame (see $dir/vm0/output.log)"
        stop_qemus
        return 1
    fi
    vnc_check "$dir/vm0" cube "$VNC_DISPLAY" --picture || ok=1
    reason=$REASON
    touch "$dir/vm0/${DONE_FILE##*/}"
    finish_guest "$BOOT_PID" "$dir/vm0" kmscube || ok=1
    REASON=${reason:-$REASON}
    [[ $ok -eq 0 ]] || return 1
    if ! grep -aq 'renderer: "virgl' "$dir/vm0/output.log"; then
        REASON="kmscube did not render with virgl"
        return 1
    fi
    check_vgpud "$dir"
}

# The sharing scene on a screen no VMM gives: guest 0 renders share-buffer's
# frame with Vulkan and exports it; guest 1 (generic device, resolution the
# frame's size, vgpud's VNC output) imports it and makes it its scanout. Both
# real viewers must show the frame pixel for pixel; once guest 0 has freed it
# (its guest ends), guest 1's screen must be black.
case_vnc-share() {
    local dir=$1 pid0 pid1 uuid fence ok=0 reason=""
    local rows=$((SHARE_PAGES * 4096 / 1024)) wait_file=$dir/vm1/${DONE_FILE##*/}
    share_export "$dir" "resolution=256x$rows,vnc=127.0.0.1:$((5900 + VNC_DISPLAY))" || return 1
    pid0=$EXPORTER uuid=$UUID fence=$FENCE
    boot_guest "$dir/vm1" "$(guest_program share-buffer show "$uuid" "$SHARE_SEED" \
        "$SHARE_PAGES" "$fence" "$DONE_FILE")"
    pid1=$BOOT_PID
    if ! wait_line "$dir/vm1" "$pid1" "SHOWN 256x$rows"; then
        REASON="guest 1 never showed the frame (see $dir/vm1/output.log)"
        stop_qemus
        return 1
    fi
    vnc_check "$dir/vm1" frame "$VNC_DISPLAY" --size "256x$rows" --seed "$SHARE_SEED" \
        --share-frame || ok=1
    reason=$REASON
    # Guest 1 tells guest 0, which frees the buffer and ends.
    touch "$wait_file"
    finish_guest "$pid0" "$dir/vm0" share-buffer || ok=1
    reason=${reason:-$REASON}
    vnc_check "$dir/vm1" revoked "$VNC_DISPLAY" --black || ok=1
    reason=${reason:-$REASON}
    touch "$wait_file.gone"
    finish_guest "$pid1" "$dir/vm1" share-buffer || ok=1
    REASON=${reason:-$REASON}
    [[ $ok -eq 0 ]] || return 1
    check_vgpud "$dir"
}

# Guest 0 offers two buffers of vgpud's own memory, made on its share context;
# the budget holds one; its import of its own buffer is refused. Guest 1 fills
# the first, maps the second (the first moves out), checks that a malformed
# stream is refused visibly and runs nothing, that the moved-out mapping reads
# zeros, maps the first again on a new resource of the same blob id (the
# guide's way) and checks it came back bit-exact. Both guests' renderer is
# SHARE_RENDERER (2d unless set), on the generic device with a window.
case_share-moves() {
    local dir=$1 pid0 pid1 policy=$SOCK_DIR/share-policy.json uuids i r=${SHARE_RENDERER:-2d}
    printf '{"allow": [{"exporter": "a", "importers": ["b"]}]}\n' >"$TB_ROOT$policy"
    VGPUD_ARGS=(--share-policy "$policy" --share-budget "$((SHARE_PAGES * 4))K"
        --share-evict-dir "$SOCK_DIR")
    if [[ $RENDERER != venus ]]; then VGPUD_ARGS+=(--hostmem "$VENUS_HOSTMEM"); fi
    start_vgpud "$dir" 2 "name=a,share=on,renderer=$r" "name=b,share=on,renderer=$r" || return 1
    VGPUD_ARGS=()
    GUEST_DEVICE=$VENUS_DEVICE boot_guest "$dir/vm0" \
        "$(guest_program share-buffer offer "$SHARE_PAGES" 2 "$DONE_FILE")"
    pid0=$BOOT_PID
    for ((i = 0; i < GUEST_TIMEOUT * 5; i++)); do
        uuids=$(grep -aoE '^SHARE-UUID [0-9a-f]{32}$' "$dir/vm0/output.log" 2>/dev/null |
            cut -d' ' -f2 | tr '\n' ' ')
        [[ $(wc -w <<<"$uuids") -lt 2 ]] || break
        running "$pid0" || break
        sleep 0.2
    done
    if [[ $(wc -w <<<"$uuids") -lt 2 ]]; then
        REASON="guest 0 offered fewer than two buffers (see $dir/vm0/output.log)"
        stop_qemus
        wait "$pid0" || true
        untrack "$pid0"
        return 1
    fi
    # shellcheck disable=SC2086 # two UUIDs
    GUEST_DEVICE=$VENUS_DEVICE boot_guest "$dir/vm1" \
        "$(guest_program share-buffer moves $uuids "$SHARE_SEED" "$SHARE_PAGES")"
    pid1=$BOOT_PID
    local ok=0 reason=""
    finish_guest "$pid1" "$dir/vm1" share-buffer || ok=1
    reason=$REASON
    touch "$dir/vm0/${DONE_FILE##*/}"
    finish_guest "$pid0" "$dir/vm0" share-buffer || ok=1
    REASON=${reason:-$REASON}
    [[ $ok -eq 0 ]] || return 1
    # The guests checked the MOVED events, the contents and the answers; the refusals are in
    # vgpud's log as docs/share-protocol.md quotes them, and vgpud must still be well.
    local line
    for line in 'a: may not import that buffer (policy)' \
        '(share: stream refused, nothing run: reserved field not zero at byte '; do
        if ! grep -aqF "$line" "$dir/vgpud.log"; then
            REASON="vgpud did not log '$line'"
            return 1
        fi
    done
    check_vgpud "$dir"
}
case_share-moves-virgl() { SHARE_RENDERER=virgl case_share-moves "$@"; }
case_share-moves-venus() { SHARE_RENDERER=venus case_share-moves "$@"; }
case_vk-coherent() { venus_program "$1" vk-coherent; }
case_drm-blob() { venus_program "$1" drm-blob; }

# The vgpud process itself (run.sh leads the session it runs in; the render
# server vgpud starts is in it too).
vgpud_process() {
    local f pid rest
    for f in /proc/[0-9]*/comm; do
        [[ $(cat "$f" 2>/dev/null) == vgpud ]] || continue
        pid=${f#/proc/}
        pid=${pid%/comm}
        rest=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${rest##*) }
        # Fields after the command: state ppid pgrp session ...
        read -r _ _ _ rest _ <<<"$rest"
        if [[ $rest == "$VGPUD_PID" ]]; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# process_sample PID: "VmRSS-kB open-fds" of PID.
process_sample() {
    local rss fds
    rss=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
    fds=$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    [[ -n $rss ]] || return 1
    echo "$rss $fds"
}

# Other processes in vgpud's session: its render workers and the render servers
# they start (names vgpud-worker, virgl*): "count RSS-kB fds", for information.
render_server_sample() {
    local f pid n=0 rss=0 fds=0 s sess name
    for f in /proc/[0-9]*/comm; do
        name=$(cat "$f" 2>/dev/null) || continue
        [[ $name == virgl* || $name == vgpud-worker ]] || continue
        pid=${f#/proc/}
        pid=${pid%/comm}
        sess=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        sess=${sess##*) }
        read -r _ _ _ sess _ <<<"$sess"
        [[ $sess == "$VGPUD_PID" ]] || continue
        s=$(process_sample "$pid") || continue
        n=$((n + 1))
        rss=$((rss + ${s% *}))
        fds=$((fds + ${s#* }))
    done
    echo "$n $rss $fds"
}

# wait_churn_phase OUT PID K: wait until the guest has printed the end of
# phase K, or stopped.
wait_churn_phase() {
    local out=$1 pid=$2 k=$3 i
    for ((i = 0; i < GUEST_TIMEOUT * 5; i++)); do
        grep -aqE "^vk-churn: phase $k done" "$out/output.log" 2>/dev/null && return 0
        running "$pid" || return 1
        sleep 0.2
    done
    return 1
}

# vk-churn: the guest stops at each checkpoint until the host has measured
# vgpud (VmRSS, open fds; repeated until the fd count holds still for 0.5 s,
# at most 5 s, as the guest's frees may still be on their way) and created
# /results/churn-sampled-<k>. Checkpoint 0 follows the warm-up; at every later
# one vgpud may have grown by CHURN_RSS_SLACK_KB and CHURN_FD_SLACK at most.
case_vk-churn() {
    local dir=$1 out=$1/vm0 pid k i s prev base="" ok=0 reason="" rss fds rs=()
    start_vgpud "$dir" 1 || return 1
    if ! pid=$(vgpud_process); then
        REASON="no vgpud process found in the session of $VGPUD_PID"
        return 1
    fi
    boot_guest "$out" "$(guest_program vk-churn "$CHURN_CYCLES" --warmup "$CHURN_WARMUP" \
        --phases "$CHURN_PHASES" --wait-dir /results)"
    echo "checkpoint vgpud-VmRSS-kB vgpud-fds render-server-processes render-server-RSS-kB render-server-fds" \
        >"$dir/churn.txt"
    for ((k = 0; k <= CHURN_PHASES; k++)); do
        if ! wait_churn_phase "$out" "$BOOT_PID" "$k"; then
            reason="the guest never reached checkpoint $k (see $out/output.log)"
            ok=1
            break
        fi
        prev=""
        for ((i = 0; i < 10; i++)); do
            s=$(process_sample "$pid") || break
            [[ ${s#* } != "${prev#* }" ]] || break
            prev=$s
            sleep 0.5
        done
        if [[ -z $s ]]; then
            reason="vgpud (pid $pid) is gone at checkpoint $k"
            ok=1
            break
        fi
        read -r -a rs <<<"$(render_server_sample)"
        echo "$k $s ${rs[*]}" >>"$dir/churn.txt"
        read -r rss fds <<<"$s"
        log "  checkpoint $k: vgpud VmRSS $rss kB, $fds fds; render server: ${rs[0]} processes," \
            "${rs[1]} kB, ${rs[2]} fds"
        touch "$out/churn-sampled-$k"
        if [[ -z $base ]]; then
            base=$s
        elif [[ -z $reason ]]; then
            if ((rss > ${base% *} + CHURN_RSS_SLACK_KB)); then
                reason="vgpud's VmRSS grew from ${base% *} kB after the warm-up to $rss kB at checkpoint $k (slack $CHURN_RSS_SLACK_KB kB)"
            elif ((fds > ${base#* } + CHURN_FD_SLACK)); then
                reason="vgpud's open fds grew from ${base#* } after the warm-up to $fds at checkpoint $k (slack $CHURN_FD_SLACK)"
            fi
        fi
    done
    # Let the guest finish either way; its verdict comes first.
    for ((k = 0; k <= CHURN_PHASES; k++)); do touch "$out/churn-sampled-$k"; done
    finish_guest "$BOOT_PID" "$out" vk-churn || return 1
    if [[ $ok -ne 0 || -n $reason ]]; then
        REASON=$reason
        return 1
    fi
    check_vgpud "$dir"
}

# --- running a case ------------------------------------------------------------

# The guests of the case run in DIR that hung before the device probe.
hung_guests() {
    local f
    for f in "$1"/vm*/"$HUNG_FILE"; do
        [[ ! -f $f ]] || basename "$(dirname "$f")"
    done
}

# qemu_vhost_errors DIR: the first of QEMU's vhost error lines in the boot logs
# of DIR's guests, with the guest's name, leaving out the guests named in
# VHOST_ERRORS_EXPECTED (a case that disconnects a guest on purpose names it).
# QEMU goes on after many of them (a memory table it could not send leaves the
# device with a stale view of guest memory), so no case passes with one.
qemu_vhost_errors() {
    local dir=$1 log vm
    for log in "$dir"/vm*/boot.log; do
        [[ -f $log ]] || continue
        vm=$(basename "$(dirname "$log")")
        [[ " $VHOST_ERRORS_EXPECTED " != *" $vm "* ]] || continue
        if grep -aiqE '^qemu-system[^ ]*: .*vhost' "$log"; then
            echo "$vm: $(grep -aiE '^qemu-system[^ ]*: .*vhost' "$log" | head -1)"
            return 0
        fi
    done
    return 0
}

# run_case NAME: run case NAME in $RUN_DIR/NAME, then stop what it started.
# When it failed and a guest hung before the device probe, it runs once more
# (the first run's logs move to NAME.hung; RETRIED counts the hung guests);
# a second such hang is a failure. Returns the case's status, with REASON
# and CASE_NOTE (a note on a retry, for the PASS/FAIL line) set.
run_case() {
    local name=$1 dir=$RUN_DIR/$1 attempt rc hung vhost_error
    CASE_NOTE=""
    for attempt in 1 2; do
        mkdir -p "$dir"
        REASON=""
        VHOST_ERRORS_EXPECTED=""
        rc=0
        "case_$name" "$dir" || rc=$?
        show_vgpud_warnings "$dir"
        stop_all
        vhost_error=$(qemu_vhost_errors "$dir")
        if [[ $rc -eq 0 && -n $vhost_error ]]; then
            REASON="QEMU logged a vhost error: $vhost_error"
            return 1
        fi
        [[ $rc -ne 0 ]] || return 0
        hung=$(hung_guests "$dir" | tr '\n' ' ')
        hung=${hung% }
        [[ -n $hung ]] || return 1
        if [[ $attempt -eq 2 ]]; then
            REASON="$hung hung before the device probe again, after a retry:"
            REASON+=" $(head -1 "$dir/${hung%% *}/$HUNG_FILE")"
            return 1
        fi
        RETRIED=$((RETRIED + $(wc -w <<<"$hung")))
        CASE_NOTE="; $hung hung before the device probe and was booted again, see $name.hung/"
        log "  $hung hung before the device probe ($(head -1 "$dir/${hung%% *}/$HUNG_FILE"))"
        log "  not a vgpud result: running $name once more"
        rm -rf -- "$dir.hung"
        mv -- "$dir" "$dir.hung"
        # vgpud's sockets and QEMU's: a stale one would look ready at once.
        rm -f -- "$TB_ROOT$SOCK_DIR/$name"-vm*
    done
}

# --- main ------------------------------------------------------------------------

usage() { sed -n '2,42s/^# \{0,1\}//p' "$0"; }

list_cases() {
    local entry name renderer desc
    for entry in "${CASES[@]}"; do
        IFS='|' read -r name renderer desc <<<"$entry"
        if [[ $renderer == virgl ]]; then desc+=" [needs VGPUD_E2E_VIRGL=1]"; fi
        if [[ $renderer == venus ]]; then desc+=" [needs VGPUD_E2E_VENUS=1]"; fi
        printf '%-18s %s\n' "$name" "$desc"
    done
}

main() {
    local -a only=()
    local entry name desc known
    while [[ $# -gt 0 ]]; do
        case $1 in
            --list) list_cases; exit 0 ;;
            --only) [[ $# -ge 2 ]] || tb_die "--only needs a case name"; only+=("$2"); shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; exit 2 ;;
        esac
    done
    for name in "${only[@]}"; do
        known=0
        for entry in "${CASES[@]}"; do [[ ${entry%%|*} != "$name" ]] || known=1; done
        [[ $known -eq 1 ]] || tb_die "unknown case '$name' (see --list)"
    done
    tb_need_root
    command -v python3 >/dev/null || tb_die "python3 is needed on the host (QMP, image check)"

    local t_start
    t_start=$(now)
    RUN_DIR=$TB_RUNS/e2e-$(date +%Y%m%d-%H%M%S)-$$
    mkdir -p "$RUN_DIR"
    SOCK_DIR=/tmp/vgpud-e2e-$$
    trap cleanup EXIT
    trap 'log interrupted; exit 130' INT
    trap 'log terminated; exit 143' TERM
    mkdir -p "$TB_ROOT$SOCK_DIR"
    # QMP sockets are opened from the host through the root's path, and a
    # UNIX socket path has at most 107 bytes.
    local longest=$TB_ROOT$SOCK_DIR/kms-pattern-virgl-vm0.qemu.pid
    [[ ${#longest} -le 107 ]] || tb_die "testbed root path too long for UNIX sockets: $TB_ROOT"
    build_all
    log "build steps took $(since "$t_start") s; results in $RUN_DIR"

    local passed=0 failed=0 skipped=0 t0
    for entry in "${CASES[@]}"; do
        IFS='|' read -r name RENDERER desc <<<"$entry"
        if [[ ${#only[@]} -gt 0 && " ${only[*]} " != *" $name "* ]]; then continue; fi
        if [[ $RENDERER == virgl && ${VGPUD_E2E_VIRGL:-0} != 1 ]]; then
            echo "SKIP: $name (needs VGPUD_E2E_VIRGL=1)"
            skipped=$((skipped + 1))
            continue
        fi
        if [[ $RENDERER == venus && ${VGPUD_E2E_VENUS:-0} != 1 ]]; then
            echo "SKIP: $name (needs VGPUD_E2E_VENUS=1)"
            skipped=$((skipped + 1))
            continue
        fi
        log "$name: $desc"
        t0=$(now)
        if run_case "$name"; then
            echo "PASS: $name ($(since "$t0") s$CASE_NOTE)"
            passed=$((passed + 1))
        else
            echo "FAIL: $name: ${REASON:-unknown failure} ($(since "$t0") s$CASE_NOTE; logs in $RUN_DIR/$name)"
            failed=$((failed + 1))
        fi
    done

    local summary="$passed passed, $failed failed"
    [[ $skipped -eq 0 ]] || summary+=", $skipped skipped"
    if [[ $RETRIED -gt 0 ]]; then
        echo "retried: $RETRIED boot(s) hung before the device probe and were booted again"
    fi
    echo "$summary"
    # The staged binary is only worth keeping to reproduce a failure.
    [[ $failed -ne 0 ]] || rm -f "$VGPUD"
    log "total $(since "$t_start") s; results in $RUN_DIR"
    [[ $failed -eq 0 ]]
}

main "$@"
