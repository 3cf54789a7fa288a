#!/usr/bin/env bash
# Run guest code on QEMU's own virtio-gpu device with Venus, for comparison with vgpud: one testbed
# guest with
#
#   -device virtio-gpu-gl-pci,blob=true,hostmem=256M,venus=true
#
# and QEMU's -display sdl,gl=on on an Xvfb server in the testbed root (the host has no /dev/dri,
# so QEMU's GL needs an X display; install it with `scripts/testbed/run.sh apt-get install -y
# xvfb`). QEMU's Venus runs in virglrenderer's render server on the host's lavapipe.
#
# usage: run-builtin.sh [-t SECONDS] [-o DIR] CODE
#
#   CODE        bash code run in the guest, in the project dir (at the same path as on the host),
#               e.g. 'target/guest-tests/vk-info'; its output goes to /results/output.log
#   -t SECONDS  stop the guest after this long (default 300)
#   -o DIR      results dir (default $VGPUD_TESTBED/runs/builtin-<time>-<pid>), inside the project
#               or the testbed dir; the guest sees it as /results
#
# Prints the guest's output and exits with the guest code's status (124: timeout, 125: no status).
# Needs root (chroot, mount), like the testbed scripts.
set -euo pipefail
# shellcheck source=../scripts/testbed/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/testbed/lib.sh"

TIMEOUT=300
OUT=""
XVFB_PID=""

usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; }

cleanup() {
    if [[ -n $XVFB_PID ]]; then
        kill -TERM -- "-$XVFB_PID" 2>/dev/null || true
        wait "$XVFB_PID" 2>/dev/null || true
    fi
}

main() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            -t) TIMEOUT=$2; shift 2 ;;
            -o) OUT=$2; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            -*) usage >&2; exit 2 ;;
            *) break ;;
        esac
    done
    [[ $# -eq 1 ]] || { usage >&2; exit 2; }
    local code=$1
    tb_need_root
    tb_need_complete_root
    [[ -x $TB_ROOT/usr/bin/Xvfb ]] ||
        tb_die "no Xvfb in the root: scripts/testbed/run.sh apt-get install -y xvfb"
    [[ -f $TB_GUEST/initramfs.cpio.gz && -f $TB_GUEST/vmlinuz ]] || "$TB_SCRIPTS/guest-image.sh"
    [[ -n $OUT ]] || OUT=$TB_RUNS/builtin-$(date +%Y%m%d-%H%M%S)-$$
    mkdir -p "$OUT"
    OUT=$(realpath "$OUT")
    case $OUT/ in
        "$TB_PROJECT"/* | "$TB_DIR"/*) ;;
        *) tb_die "-o must be inside $TB_PROJECT or $TB_DIR (QEMU runs in the root)" ;;
    esac
    rm -f "$OUT"/{exit-code,console.log,output.log}
    { echo '#!/bin/bash'; printf 'cd %q\n%s\n' "$TB_PROJECT" "$code"; } >"$OUT/cmd.sh"
    chmod +x "$OUT/cmd.sh"

    # Xvfb picks a free display itself and writes its number to fd 1.
    setsid "$TB_SCRIPTS/run.sh" Xvfb -displayfd 1 -screen 0 1280x1024x24 -nolisten tcp \
        >"$OUT/xvfb.out" 2>"$OUT/xvfb.log" </dev/null &
    XVFB_PID=$!
    local display="" i
    for ((i = 0; i < 100; i++)); do
        display=$(head -1 "$OUT/xvfb.out")
        [[ -z $display ]] || break
        sleep 0.1
    done
    [[ -n $display ]] || tb_die "Xvfb did not start (see $OUT/xvfb.log)"

    local append="console=ttyS0 panic=-1 mitigations=off vgpud.root=tmpfs"
    append+=" vgpud.project=$TB_PROJECT vgpud.cmd=/results/cmd.sh"
    # The same guest as scripts/testbed/boot.sh, which cannot give QEMU a display.
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    local -a qemu=(qemu-system-x86_64 -nodefaults -no-user-config -display sdl,gl=on -no-reboot
        -accel tcg -cpu max -smp 2 -m 2G
        -object memory-backend-memfd,id=mem0,size=2G,share=on -machine q35,memory-backend=mem0
        -kernel "$TB_GUEST/vmlinuz" -initrd "$TB_GUEST/initramfs.cpio.gz" -append "$append"
        -chardev "file,id=con0,path=$OUT/console.log" -serial chardev:con0
        -virtfs local,path=/,mount_tag=rootfs,security_model=none,readonly=on,multidevs=remap
        -virtfs "local,path=$OUT,mount_tag=results,security_model=none,multidevs=remap"
        -virtfs "local,path=$TB_PROJECT,mount_tag=project,security_model=none,readonly=on,multidevs=remap"
        -device virtio-gpu-gl-pci,blob=true,hostmem=256M,venus=true)
    printf '%q ' "${qemu[@]}" >"$OUT/qemu-cmdline"
    local t0=$SECONDS qrc=0 rc
    "$TB_SCRIPTS/run.sh" timeout --kill-after=10 "$TIMEOUT" env "DISPLAY=:$display" \
        XDG_RUNTIME_DIR=/tmp "${qemu[@]}" >"$OUT/qemu.log" 2>&1 </dev/null || qrc=$?
    cat "$OUT/output.log" 2>/dev/null || true
    rc=$(cat "$OUT/exit-code" 2>/dev/null || true)
    if [[ ! $rc =~ ^[0-9]+$ ]]; then
        rc=125
        [[ $qrc -ne 124 ]] || rc=124
    fi
    tb_log "guest exit code $rc; QEMU ran $((SECONDS - t0)) s; results in $OUT"
    return "$rc"
}

trap cleanup EXIT
main "$@"
