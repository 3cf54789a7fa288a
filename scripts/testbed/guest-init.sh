#!/bin/sh
# /init of the testbed guest (busybox sh, PID 1). Installed by guest-image.sh.
#
# Loads the modules listed in /etc/modules.order, mounts the host's root
# (9p tag "rootfs", read-only) at /newroot and the results share (9p tag
# "results", writable) at /newroot/results, runs vgpud.cmd inside the root,
# writes its exit status to /results/exit-code and powers off.
# See guest-image.sh for the kernel command line options.

export PATH=/bin
NEWROOT=/newroot
# Largest message the virtio 9p transport takes: fewer round trips, which
# matters a lot when every exit to QEMU is emulated.
P9="trans=virtio,version=9p2000.L,msize=512000"

say() { echo "vgpud-init: $*"; }

# Value of a key=value word on the kernel command line ($2 if absent); the
# last one wins, so boot.sh --append can override its own defaults.
arg() {
    v=$2
    for w in $(cat /proc/cmdline); do
        case $w in "$1="*) v=${w#*=} ;; esac
    done
    echo "$v"
}

poweroff_now() {
    say "uptime at poweroff: $(cut -d' ' -f1 /proc/uptime) s"
    sync
    poweroff -f
    sleep 5 # poweroff -f does not return; this only avoids a PID 1 exit panic
}

# Something in the boot itself broke: tell the host, offer a shell if asked.
fail() {
    say "FAILED: $*"
    if [ -d $NEWROOT/results ] && grep -q " $NEWROOT/results " /proc/mounts; then
        echo "init: $*" >$NEWROOT/results/init-error
    fi
    if [ "$SHELL_MODE" = 1 ]; then
        say "dropping to the initramfs shell (exit to power off)"
        setsid cttyhack sh
    fi
    poweroff_now
}

mount_early() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
}

load_modules() {
    for m in $(cat /etc/modules.order); do
        # Marks the device probe on the console (the real-guest suite tells a guest that
        # hung before it from one that hung after it).
        [ "$m" != virtio_gpu ] || say "loading virtio_gpu (the GPU probe)"
        insmod "/lib/modules/$m.ko" || fail "insmod $m"
    done
}

# tmpfs mode: the shared root stays read-only; only the usual scratch
# directories are writable. overlay mode: every path is writable, changes
# live in guest RAM and are gone at poweroff.
mount_root() {
    case $ROOT_MODE in
        tmpfs)
            mount -t 9p -o "$P9,ro,cache=loose" rootfs $NEWROOT || fail "9p root"
            for d in tmp run var/tmp; do
                mount -t tmpfs -o mode=1777 tmpfs $NEWROOT/$d || fail "tmpfs /$d"
            done
            ;;
        overlay)
            mount -t 9p -o "$P9,ro,cache=loose" rootfs /lower || fail "9p root"
            { mount -t tmpfs tmpfs /rw && mkdir -p /rw/upper /rw/work; } || fail "tmpfs /rw"
            mount -t overlay overlay \
                -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work $NEWROOT ||
                fail "overlay root"
            ;;
        *) fail "unknown vgpud.root=$ROOT_MODE" ;;
    esac
    # No caching on the results share: the host reads it right after poweroff.
    mount -t 9p -o "$P9" results $NEWROOT/results || fail "9p results"
    mount -t proc proc $NEWROOT/proc
    mount -t sysfs sysfs $NEWROOT/sys
    mount -t devtmpfs devtmpfs $NEWROOT/dev
    mkdir -p $NEWROOT/dev/pts $NEWROOT/dev/shm
    mount -t devpts devpts $NEWROOT/dev/pts
    mount -t tmpfs -o mode=1777 tmpfs $NEWROOT/dev/shm
    # debugfs has /sys/kernel/debug/dri/N/virtio-gpu-features and friends.
    mount -t debugfs debugfs $NEWROOT/sys/kernel/debug || say "no debugfs"
    mkdir -p $NEWROOT/run/user/0 && chmod 700 $NEWROOT/run/user/0
}

# The project (guest tests, vgpud builds) at its host path. Its own share, mounted after the
# scratch tmpfs mounts: a project under /tmp would otherwise be hidden by the guest's /tmp.
mount_project() {
    [ -n "$PROJECT" ] || return 0
    mkdir -p "$NEWROOT$PROJECT" 2>/dev/null
    mount -t 9p -o "$P9,ro" project "$NEWROOT$PROJECT" || fail "9p project at $PROJECT"
}

# The small, fixed environment of programs run in the root (no spaces in
# values: used unquoted). The root's $HOME is read-only, hence the cache dir.
GUEST_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root TERM=linux LANG=C.UTF-8 XDG_RUNTIME_DIR=/run/user/0
XDG_CACHE_HOME=/tmp/cache VGPUD_GUEST=1"

# shellcheck disable=SC2086 # GUEST_ENV is split into words on purpose
in_root() { chroot $NEWROOT /usr/bin/env -i $GUEST_ENV "$@"; }

run_command() {
    say "running $CMD"
    # Exit status through a file: it cannot come back through the pipe.
    { in_root /bin/sh -c "$CMD"; echo $? >/tmp/exit-code; } 2>&1 |
        tee $NEWROOT/results/output.log
    rc=$(cat /tmp/exit-code)
    say "command exited with $rc"
    echo "$rc" >$NEWROOT/results/exit-code
}

mount_early
hostname vgpud-guest
CMD=$(arg vgpud.cmd "")
SHELL_MODE=$(arg vgpud.shell 0)
ROOT_MODE=$(arg vgpud.root tmpfs)
PROJECT=$(arg vgpud.project "")
say "kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s"
load_modules
mount_root
mount_project
[ -n "$CMD" ] && run_command
if [ "$SHELL_MODE" = 1 ]; then
    say "debug shell in the root (exit to power off)"
    # cttyhack gives the shell the console as controlling tty (job control).
    # shellcheck disable=SC2086
    setsid cttyhack chroot $NEWROOT /usr/bin/env -i $GUEST_ENV /bin/bash -l
    rc=$?
    [ -n "$CMD" ] || echo "$rc" >$NEWROOT/results/exit-code
elif [ -z "$CMD" ]; then
    say "no vgpud.cmd= and no vgpud.shell=1: nothing to do"
    echo 127 >$NEWROOT/results/exit-code
fi
poweroff_now
