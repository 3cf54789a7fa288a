#!/usr/bin/env bash
# End-to-end check of the testbed: boot the guest with a virtio-gpu device
# and verify that the guest's virtio_gpu driver bound to it and that a KMS
# client (kmscube) can put frames on the scanout.
# Builds the root and the guest image first if needed.
#
# usage: smoke.sh [--vhost-user] [boot.sh options]
#
#   default       QEMU's built-in virtio-gpu-pci
#   --vhost-user  vhost-user-gpu-pci, served by the backend command in
#                 $VGPUD_TESTBED_BACKEND, run inside the root; "%s" in it is
#                 replaced by the socket path. Default: QEMU's reference
#                 backend, '/usr/lib/qemu/vhost-user-gpu --socket-path=%s'.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BACKEND_PID=""
SOCK=""

GUEST_CHECK='
cat /proc/version
echo "virtio drivers: $(ls /sys/bus/virtio/drivers | tr "\n" " ")"
bound=$(ls -d /sys/bus/virtio/drivers/virtio_gpu/virtio* 2>/dev/null) || {
    echo "FAIL: virtio_gpu is not bound to any device"
    exit 1
}
echo "virtio_gpu bound to: $bound"
cat /sys/kernel/debug/dri/0/virtio-gpu-features
ls -l /dev/dri
timeout 120 kmscube --count=3 >/tmp/kmscube.log 2>&1 || {
    cat /tmp/kmscube.log
    echo "FAIL: kmscube"
    exit 1
}
grep -E "^Using|renderer:|^Rendered" /tmp/kmscube.log
echo PASS'

stop_backend() {
    # The backend runs in its own process group (setsid): kill the group, which also reaches a
    # backend that run.sh's mount namespace wrapper started as a child rather than exec'd.
    if [[ -n $BACKEND_PID ]] && kill -0 "$BACKEND_PID" 2>/dev/null; then
        kill -TERM -- "-$BACKEND_PID" 2>/dev/null || true
        wait "$BACKEND_PID" 2>/dev/null || true
    fi
    [[ -z $SOCK ]] || rm -f "$TB_ROOT$SOCK"
}

# Start the vhost-user backend in the root and wait for its socket.
start_backend() {
    local template=${VGPUD_TESTBED_BACKEND:-/usr/lib/qemu/vhost-user-gpu --socket-path=%s}
    local log=$TB_DIR/backend.log i
    SOCK=/tmp/vgpud-smoke-$$.sock
    rm -f "$TB_ROOT$SOCK"
    # The template is a printf format, split into words on purpose.
    # shellcheck disable=SC2059,SC2046
    set -- $(printf "$template" "$SOCK")
    tb_log "backend: $* (log: $log)"
    setsid "$TB_SCRIPTS/run.sh" "$@" >"$log" 2>&1 </dev/null &
    BACKEND_PID=$!
    trap stop_backend EXIT
    for ((i = 0; i < 300; i++)); do
        [[ -S $TB_ROOT$SOCK ]] && return 0
        kill -0 "$BACKEND_PID" 2>/dev/null || { cat "$log" >&2; tb_die "backend exited"; }
        sleep 0.1
    done
    tb_die "backend socket $SOCK did not appear within 30 s"
}

main() {
    local vhost_user=0
    case ${1:-} in
        --vhost-user) vhost_user=1; shift ;;
        -h | --help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;;
    esac
    "$TB_SCRIPTS/root.sh"
    local -a dev=(-d virtio-gpu-pci)
    if [[ $vhost_user -eq 1 ]]; then
        start_backend
        # shellcheck disable=SC2054 # commas are QEMU option syntax
        dev=(-a -chardev -a "socket,id=vgpu0,path=$SOCK" -d vhost-user-gpu-pci,chardev=vgpu0)
    fi
    local rc=0
    "$TB_SCRIPTS/boot.sh" "${dev[@]}" "$@" -c "$GUEST_CHECK" || rc=$?
    if [[ $rc -eq 0 ]]; then tb_log "smoke test passed"; else tb_log "smoke test FAILED ($rc)"; fi
    exit "$rc"
}

main "$@"
