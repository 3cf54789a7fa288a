#!/usr/bin/env bash
# Build the guest's kernel + initramfs from the kernel installed in the root:
#   $VGPUD_TESTBED/guest/vmlinuz
#   $VGPUD_TESTBED/guest/initramfs.cpio.gz
#
# The initramfs is only busybox, the few modules needed to reach the root
# (9p over virtio) and virtio-gpu, and an /init. The root itself stays on the
# host and is shared read-only over 9p: packing it into the initramfs makes
# boots under TCG much slower.
#
# Kernel command line understood by /init:
#   vgpud.cmd=PATH        program to run in the root (one word, no spaces;
#                         boot.sh writes /results/cmd.sh and passes that)
#   vgpud.shell=1         debug: interactive shell on the console instead
#                         (after PATH, when both are given)
#   vgpud.root=tmpfs      read-only root + tmpfs on /tmp /run /var/tmp (default)
#   vgpud.root=overlay    whole root writable, changes kept in guest RAM
#
# Always rebuilds (a few seconds). The /init itself is guest-init.sh.
#
# usage: guest-image.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Modules /init loads (with their dependencies) when the kernel has them as
# modules; built-in ones are skipped. virtio-pci is built into Debian's kernel.
WANTED_MODULES=(virtio_pci 9pnet_virtio 9p virtio_gpu overlay)

usage() { sed -n '2,22s/^# \{0,1\}//p' "$0"; }

# --- inside the root ---------------------------------------------------------

kernel_version() {
    if [[ -n ${VGPUD_TESTBED_KVER:-} ]]; then echo "$VGPUD_TESTBED_KVER"; return; fi
    local -a kvers
    mapfile -t kvers < <(ls /usr/lib/modules | sort -V)
    [[ ${#kvers[@]} -gt 0 ]] || tb_die "no kernel in the root (/usr/lib/modules is empty)"
    echo "${kvers[-1]}"
}

# modules.dep: "path/a.ko.xz: path/dep1.ko.xz path/dep2.ko.xz"
# Name of a module file: basename without .ko[.xz|.zst|.gz], '-' as '_'.
mod_name() { local b=${1##*/}; b=${b%%.ko*}; echo "${b//-/_}"; }

# Fill MOD_ORDER with the .ko paths to load, dependencies first (depth-first
# over modules.dep; a module is listed once, after everything it needs).
resolve_modules() {
    local moddir=$1; shift
    declare -gA MOD_PATH=() MOD_DEPS=() MOD_SEEN=()
    declare -ga MOD_ORDER=()
    local line path deps
    while IFS= read -r line; do
        path=${line%%:*}
        deps=${line#*:}
        MOD_PATH[$(mod_name "$path")]=$path
        MOD_DEPS[$path]=$deps
    done <"$moddir/modules.dep"
    local m
    for m in "$@"; do
        m=${m//-/_}
        if [[ -n ${MOD_PATH[$m]:-} ]]; then
            visit_module "${MOD_PATH[$m]}"
        elif grep -q "/${m//_/[-_]}\.ko" "$moddir/modules.builtin"; then
            tb_log "module $m is built in"
        else
            tb_die "module $m is neither a module nor built in"
        fi
    done
}

visit_module() {
    local path=$1 dep
    [[ -z ${MOD_SEEN[$path]:-} ]] || return 0
    MOD_SEEN[$path]=1
    for dep in ${MOD_DEPS[$path]}; do visit_module "$dep"; done
    MOD_ORDER+=("$path")
}

# Copy the modules uncompressed (busybox insmod is not relied on to
# decompress) and write the load order for /init.
stage_modules() {
    local stage=$1 kver=$2 moddir=/usr/lib/modules/$2 path name
    mkdir -p "$stage/lib/modules"
    resolve_modules "$moddir" "${WANTED_MODULES[@]}"
    : >"$stage/etc/modules.order"
    for path in "${MOD_ORDER[@]}"; do
        name=$(mod_name "$path")
        case $path in
            *.ko.xz) xz -dc "$moddir/$path" ;;
            *.ko.zst) zstd -qdc "$moddir/$path" ;;
            *.ko.gz) gzip -dc "$moddir/$path" ;;
            *.ko) cat "$moddir/$path" ;;
            *) tb_die "unknown module file type: $path" ;;
        esac >"$stage/lib/modules/$name.ko"
        echo "$name" >>"$stage/etc/modules.order"
    done
    tb_log "modules ($kver): $(tr '\n' ' ' <"$stage/etc/modules.order")"
}

stage_busybox() {
    local stage=$1 applet
    # Must be the static build: the initramfs has no libc.
    if [[ $(readelf -l /usr/bin/busybox) == *INTERP* ]]; then
        tb_die "/usr/bin/busybox is dynamic; install busybox-static in the root"
    fi
    mkdir -p "$stage/bin"
    cp /usr/bin/busybox "$stage/bin/busybox"
    for applet in $("$stage/bin/busybox" --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$stage/bin/$applet"
    done
    ln -s bin "$stage/sbin"
}

build_inside() {
    local kver out=$TB_GUEST
    kver=$(kernel_version)
    [[ -f /boot/vmlinuz-$kver ]] || tb_die "no /boot/vmlinuz-$kver in the root"
    STAGE=$(mktemp -d /tmp/vgpud-initramfs.XXXXXX)
    trap 'rm -rf "$STAGE"' EXIT
    local stage=$STAGE
    chmod 0755 "$stage" # becomes the initramfs "/": mktemp made it 0700
    mkdir -p "$stage"/{etc,proc,sys,dev,tmp,newroot,lower,rw}
    stage_busybox "$stage"
    stage_modules "$stage" "$kver"
    install -m 0755 "$TB_SCRIPTS/guest-init.sh" "$stage/init"
    mkdir -p "$out"
    # newc is the only cpio format the kernel unpacks; -R 0:0 so ownership
    # does not depend on who built it.
    (cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
        gzip -6 >"$out/initramfs.cpio.gz.tmp"
    cp "/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
    echo "$kver" >"$out/kernel-version"
}

# --- on the host ---------------------------------------------------------------

main() {
    case ${1:-} in
        --inside) build_inside; exit 0 ;;
        -h | --help) usage; exit 0 ;;
        "") ;;
        *) usage >&2; exit 2 ;;
    esac
    tb_need_root
    tb_need_complete_root
    local start=$SECONDS
    # Built inside the root: its busybox, kernel and compressors are the ones
    # that matter, and the host needs none of them.
    tb_in_root_ns bash "$TB_SCRIPTS/guest-image.sh" --inside
    tb_log "guest image ready in $((SECONDS - start)) s: kernel $(cat "$TB_GUEST/kernel-version")"
    ls -l "$TB_GUEST"/vmlinuz "$TB_GUEST"/initramfs.cpio.gz >&2
}

main "$@"
