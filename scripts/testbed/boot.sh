#!/usr/bin/env bash
# Boot the testbed guest under QEMU (TCG) and run a command in it.
#
# usage: boot.sh [options] [--] COMMAND [ARGS...]
#        boot.sh [options] -c 'SHELL CODE'
#        boot.sh [options] --shell
#
#   -c CODE            run CODE with bash in the guest instead of COMMAND
#   -d, --device SPEC  add "-device SPEC" to QEMU (repeatable)
#   -a, --qemu-arg ARG add one raw QEMU argument (repeatable), e.g.
#                      -a -chardev -a socket,id=gpu0,path=/tmp/vgpud.sock
#   -t, --timeout S    kill QEMU after S seconds (default 300, 0 = none)
#   -m, --mem SIZE     guest RAM, shared memfd (default 2G)
#   --smp N            guest CPUs (default 2)
#   --root-mode M      tmpfs (read-only root, default) or overlay (writable)
#   --append ARGS      extra kernel command line
#   -o, --out DIR      results directory (default $VGPUD_TESTBED/runs/<time>)
#   -q, --quiet        do not copy the console to stdout (it is always logged)
#   --shell            interactive root shell on the serial console (debug;
#                      runs COMMAND first if one is given). Ctrl-A X quits.
#
# The guest sees the testbed root as "/" (read-only, so programs built with
# run.sh run unchanged, the project at the same path) and the results dir as
# /results (writable). Results dir: console.log, output.log (the command's
# output), exit-code, cmd.sh, qemu-cmdline.
#
# Exit status: the guest command's; 124 if QEMU timed out before the command
# finished; 125 if the guest never reported one (boot failure, crash).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,30s/^# \{0,1\}//p' "$0"; }

TIMEOUT=${VGPUD_TESTBED_TIMEOUT:-300}
MEM=${VGPUD_TESTBED_MEM:-2G}
SMP=${VGPUD_TESTBED_SMP:-2}
ROOT_MODE=tmpfs
APPEND=""
OUT=""
QUIET=0
SHELL_MODE=0
CODE=""
DEVICES=()
QEMU_EXTRA=()

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            -c) CODE=$2; shift 2 ;;
            -d | --device) DEVICES+=(-device "$2"); shift 2 ;;
            -a | --qemu-arg) QEMU_EXTRA+=("$2"); shift 2 ;;
            -t | --timeout) TIMEOUT=$2; shift 2 ;;
            -m | --mem) MEM=$2; shift 2 ;;
            --smp) SMP=$2; shift 2 ;;
            --root-mode) ROOT_MODE=$2; shift 2 ;;
            --append) APPEND=$2; shift 2 ;;
            -o | --out) OUT=$2; shift 2 ;;
            -q | --quiet) QUIET=1; shift ;;
            --shell) SHELL_MODE=1; shift ;;
            -h | --help) usage; exit 0 ;;
            --) shift; break ;;
            -*) tb_die "unknown option $1 (see --help)" ;;
            *) break ;;
        esac
    done
    COMMAND=("$@")
    if [[ -z $CODE && ${#COMMAND[@]} -eq 0 && $SHELL_MODE -eq 0 ]]; then
        usage >&2
        exit 2
    fi
}

# Rebuild the guest image when missing or older than what it is made from.
ensure_guest_image() {
    local img=$TB_GUEST/initramfs.cpio.gz src
    for src in "$TB_SCRIPTS/guest-init.sh" "$TB_SCRIPTS/guest-image.sh" "$TB_ROOT_STAMP"; do
        if [[ ! -f $img || $src -nt $img ]]; then
            "$TB_SCRIPTS/guest-image.sh"
            return
        fi
    done
}

# The guest runs /results/cmd.sh: the kernel command line cannot carry
# arbitrary quoting, a file can.
write_command() {
    {
        echo '#!/bin/bash'
        if [[ -n $CODE ]]; then
            printf '%s\n' "$CODE"
        elif [[ ${#COMMAND[@]} -gt 0 ]]; then
            printf 'exec'
            printf ' %q' "${COMMAND[@]}"
            printf '\n'
        fi
    } >"$OUT/cmd.sh"
    chmod +x "$OUT/cmd.sh"
}

build_qemu_cmdline() {
    local cmdarg=""
    [[ -n $CODE || ${#COMMAND[@]} -gt 0 ]] && cmdarg="vgpud.cmd=/results/cmd.sh"
    local append="console=ttyS0 panic=-1 mitigations=off vgpud.root=$ROOT_MODE"
    append+=" vgpud.project=$TB_PROJECT"
    append+=" vgpud.shell=$SHELL_MODE $cmdarg $APPEND"
    local console
    if [[ $SHELL_MODE -eq 1 ]]; then
        # Monitor multiplexed on the console: Ctrl-A X quits, Ctrl-A C monitor.
        console=(-chardev "stdio,id=con0,mux=on,signal=off,logfile=$OUT/console.log"
            -serial chardev:con0 -mon chardev=con0)
    elif [[ $QUIET -eq 1 ]]; then
        console=(-chardev "file,id=con0,path=$OUT/console.log" -serial chardev:con0)
    else
        console=(-chardev "stdio,id=con0,signal=off,logfile=$OUT/console.log"
            -serial chardev:con0)
    fi
    # QEMU runs inside the root, so "/" below is the testbed root. vhost-user
    # needs all guest RAM in a shared memfd. multidevs=remap: the root has
    # other filesystems mounted in it (the project, /proc, ...), whose inode
    # numbers could collide in the guest.
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    QEMU=(qemu-system-x86_64
        -nodefaults -no-user-config -display none -no-reboot
        -accel tcg -cpu max -smp "$SMP" -m "$MEM"
        -object "memory-backend-memfd,id=mem0,size=$MEM,share=on"
        -machine q35,memory-backend=mem0
        -kernel "$TB_GUEST/vmlinuz" -initrd "$TB_GUEST/initramfs.cpio.gz"
        -append "$append"
        "${console[@]}"
        -virtfs local,path=/,mount_tag=rootfs,security_model=none,readonly=on,multidevs=remap
        -virtfs "local,path=$OUT,mount_tag=results,security_model=none,multidevs=remap"
        -virtfs "local,path=$TB_PROJECT,mount_tag=project,security_model=none,readonly=on,multidevs=remap"
        "${DEVICES[@]}" "${QEMU_EXTRA[@]}")
}

run_qemu() {
    printf '%q ' "${QEMU[@]}" >"$OUT/qemu-cmdline"
    echo >>"$OUT/qemu-cmdline"
    local -a tmo=()
    if [[ $TIMEOUT != 0 && $SHELL_MODE -eq 0 ]]; then
        tmo=(timeout --kill-after=10 "$TIMEOUT")
    fi
    if [[ $SHELL_MODE -eq 1 ]]; then
        "$TB_SCRIPTS/run.sh" "${tmo[@]}" "${QEMU[@]}"
    else
        # stdin from /dev/null: nothing typed here should reach the guest.
        "$TB_SCRIPTS/run.sh" "${tmo[@]}" "${QEMU[@]}" </dev/null
    fi
}

main() {
    parse_args "$@"
    tb_need_root
    tb_need_complete_root
    ensure_guest_image
    [[ -n $OUT ]] || OUT=$TB_RUNS/$(date +%Y%m%d-%H%M%S)-$$
    mkdir -p "$OUT"
    OUT=$(realpath "$OUT")
    case $OUT/ in
        "$TB_PROJECT"/* | "$TB_DIR"/*) ;;
        *) tb_die "--out must be inside $TB_PROJECT or $TB_DIR (QEMU runs in the root)" ;;
    esac
    [[ $OUT != *,* ]] || tb_die "QEMU options cannot take a path with a comma: $OUT"
    rm -f "$OUT"/{exit-code,init-error,console.log,output.log}
    ln -sfn "$OUT" "$TB_RUNS/latest" 2>/dev/null || true
    write_command
    build_qemu_cmdline

    local t0 qrc=0 rc
    t0=$(date +%s.%N)
    run_qemu || qrc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    rc=$(cat "$OUT/exit-code" 2>/dev/null || true)
    if [[ $rc =~ ^[0-9]+$ ]]; then
        :
    elif [[ $qrc -eq 124 ]]; then
        tb_log "timed out after $TIMEOUT s"
        rc=124
    else
        tb_log "guest reported no exit code (QEMU status $qrc)"
        grep -a 'vgpud-init: FAILED' "$OUT/console.log" >&2 || true
        rc=125
    fi
    local up
    up=$(grep -ao 'uptime at poweroff: [0-9.]* s' "$OUT/console.log" | tail -1 || true)
    tb_log "guest exit code $rc; QEMU ran ${secs} s (${up:-no poweroff seen}); results in $OUT"
    exit "$rc"
}

main "$@"
