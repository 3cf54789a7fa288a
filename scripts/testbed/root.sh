#!/usr/bin/env bash
# Build the Debian sid root of the testbed at $VGPUD_TESTBED/root.
#
# Debian 12's QEMU and virglrenderer are too old for vhost-user-gpu work, so
# the testbed lives in a sid chroot: it hosts QEMU, virglrenderer and the
# daemon's build, and the same tree is the guest's root filesystem (over 9p).
#
# usage: root.sh [--force]     --force rebuilds even a complete root
#
# A complete root is reused; packages added to the lists below since it was
# built are installed into it (compared with dpkg-query), so an existing root
# picks them up without a rebuild.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Host side: QEMU, the GPU stacks the daemon links against, a C toolchain.
HOST_PKGS=(
    qemu-system-x86 qemu-system-gui qemu-utils
    libvirglrenderer-dev virgl-server
    libepoxy-dev libgbm-dev libegl-dev libegl1-mesa-dev libgles-dev libgles2
    libgl1-mesa-dri mesa-vulkan-drivers
    pkgconf gcc libc6-dev libdrm-dev ca-certificates
)
# Guest side: test programs, what guest-tests/build.sh needs for the Vulkan
# tests (headers and loader, GLSL to SPIR-V compiler), the kernel, and busybox
# for the initramfs.
GUEST_PKGS=(
    mesa-utils vulkan-tools kmscube mesa-vulkan-drivers
    libvulkan-dev glslang-tools
    busybox-static linux-image-amd64
)
# Used by guest-image.sh (run inside the root) and handy in the guest; dpkg-dev
# for the Debian package (scripts/package.sh).
TOOL_PKGS=(cpio gzip xz-utils zstd kmod procps dpkg-dev)
# VNC viewers nobody here wrote, for the e2e checks of vgpud's own output:
# vncdotool (Python/Twisted) and gvnccapture (gtk-vnc, in gvncviewer).
VIEWER_PKGS=(vncdotool gvncviewer)
# Installed when the archive has them (names have moved before).
OPTIONAL_PKGS=(qemu-system-modules-opengl libdrm-tests)

usage() { sed -n '2,13s/^# \{0,1\}//p' "$0"; }

ensure_host_tools() {
    command -v unshare >/dev/null || tb_die "unshare (util-linux) missing"
    if ! command -v debootstrap >/dev/null; then
        tb_log "installing debootstrap on the host"
        DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null
    fi
}

bootstrap() {
    tb_log "debootstrap $TB_SUITE from $TB_MIRROR"
    mkdir -p "$TB_DIR"
    debootstrap --variant=minbase "$TB_SUITE" "$TB_ROOT" "$TB_MIRROR" \
        >"$TB_DIR/debootstrap.log" 2>&1 ||
        { tail -20 "$TB_DIR/debootstrap.log" >&2; tb_die "debootstrap failed (log: $TB_DIR/debootstrap.log)"; }
}

configure_root() {
    echo "deb $TB_MIRROR $TB_SUITE main" >"$TB_ROOT/etc/apt/sources.list"
    # Mirrors that serve a frozen archive carry an expired Valid-Until; the
    # root is a disposable test tree, so accept it rather than fail.
    cat >"$TB_ROOT/etc/apt/apt.conf.d/90vgpud-testbed" <<'EOF'
Acquire::Check-Valid-Until "false";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
    # Docs and translations are dead weight in a test root.
    cat >"$TB_ROOT/etc/dpkg/dpkg.cfg.d/90vgpud-testbed-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
EOF
    # Never start services inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$TB_ROOT/usr/sbin/policy-rc.d"
    chmod +x "$TB_ROOT/usr/sbin/policy-rc.d"
    # Mount points the guest needs on its read-only root.
    mkdir -p "$TB_ROOT/results" "$TB_ROOT/etc/vgpud-testbed"
}

# Print those of the given optional packages the archive actually has.
available_optional() {
    local p
    for p in "$@"; do
        if tb_in_root_ns apt-cache show --no-all-versions "$p" >/dev/null 2>&1; then
            echo "$p"
        else
            tb_log "optional package $p not in $TB_SUITE, skipped"
        fi
    done
}

install_packages() {
    tb_log "apt-get update"
    tb_in_root_ns apt-get update -q >"$TB_DIR/apt.log" 2>&1 ||
        { tail -20 "$TB_DIR/apt.log" >&2; tb_die "apt-get update failed"; }
    local -a pkgs=("${HOST_PKGS[@]}" "${GUEST_PKGS[@]}" "${TOOL_PKGS[@]}" "${VIEWER_PKGS[@]}")
    mapfile -t -O "${#pkgs[@]}" pkgs < <(available_optional "${OPTIONAL_PKGS[@]}")
    tb_log "installing ${#pkgs[@]} packages (+ dependencies)"
    printf '%s\n' "${pkgs[@]}" >"$TB_DIR/packages.requested"
    # INITRD=No: the kernel's postinst would build a dracut initrd we never
    # use (guest-image.sh makes its own), which costs time and space.
    tb_in_root_ns env DEBIAN_FRONTEND=noninteractive INITRD=No \
        apt-get install -y -q "${pkgs[@]}" >>"$TB_DIR/apt.log" 2>&1 ||
        { tail -30 "$TB_DIR/apt.log" >&2; tb_die "apt-get install failed (log: $TB_DIR/apt.log)"; }
    tb_in_root_ns apt-get clean
}

# Print those of the given packages that are not installed in the root.
not_installed() {
    [[ $# -gt 0 ]] || return 0
    local -A installed=()
    local status name p
    # One query for all (each run in the root costs a mount namespace); an
    # unknown name only makes dpkg-query complain and exit non-zero.
    # shellcheck disable=SC2016 # a dpkg-query format, not an expansion
    while read -r status name; do
        [[ $status != ii ]] || installed[$name]=1
    done < <(tb_in_root_ns dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' "$@" 2>/dev/null || true)
    for p in "$@"; do
        [[ -n ${installed[$p]:-} ]] || echo "$p"
    done
}

# A complete root built from older lists: install what the lists gained since.
# Optional packages missing from the archive are skipped, as in a fresh build.
top_up_packages() {
    local -a missing optional
    mapfile -t missing < <(not_installed "${HOST_PKGS[@]}" "${GUEST_PKGS[@]}" "${TOOL_PKGS[@]}" "${VIEWER_PKGS[@]}")
    mapfile -t optional < <(not_installed "${OPTIONAL_PKGS[@]}")
    if [[ ${#missing[@]} -eq 0 && ${#optional[@]} -gt 0 ]]; then
        # Only optional ones: ask the package lists the root already has
        # first, so an optional package the archive lacks costs no update.
        mapfile -t optional < <(available_optional "${optional[@]}" 2>/dev/null)
    fi
    if [[ ${#missing[@]} -eq 0 && ${#optional[@]} -eq 0 ]]; then
        tb_log "root is complete, reusing $TB_ROOT (--force to rebuild)"
        return 0
    fi
    tb_log "root is complete but lacks: ${missing[*]} ${optional[*]}"
    tb_log "apt-get update"
    tb_in_root_ns apt-get update -q >"$TB_DIR/apt.log" 2>&1 ||
        { tail -20 "$TB_DIR/apt.log" >&2; tb_die "apt-get update failed"; }
    mapfile -t -O "${#missing[@]}" missing < <(available_optional "${optional[@]}")
    [[ ${#missing[@]} -gt 0 ]] || return 0
    tb_log "installing ${#missing[@]} packages (+ dependencies) into the existing root"
    tb_in_root_ns env DEBIAN_FRONTEND=noninteractive INITRD=No \
        apt-get install -y -q "${missing[@]}" >>"$TB_DIR/apt.log" 2>&1 ||
        { tail -30 "$TB_DIR/apt.log" >&2; tb_die "apt-get install failed (log: $TB_DIR/apt.log)"; }
    tb_in_root_ns apt-get clean
    record_versions
    # Things built from the root (the guest image) compare themselves with
    # the stamp: they are rebuilt after the root changed.
    date -u +%FT%TZ >"$TB_ROOT_STAMP"
}

record_versions() {
    # shellcheck disable=SC2016 # a dpkg-query format, not an expansion
    tb_in_root_ns dpkg-query -W -f '${Package} ${Version}\n' \
        >"$TB_ROOT/etc/vgpud-testbed/packages.txt"
    tb_log "key versions:"
    grep -E '^(qemu-system-x86|libvirglrenderer1|virgl-server|mesa-vulkan-drivers|libgl1-mesa-dri|linux-image-[0-9].*|busybox-static) ' \
        "$TB_ROOT/etc/vgpud-testbed/packages.txt" | sed 's/^/    /' >&2
}

main() {
    local force=0
    case ${1:-} in
        --force) force=1 ;;
        -h | --help) usage; exit 0 ;;
        "") ;;
        *) usage >&2; exit 2 ;;
    esac
    tb_need_root
    if [[ -f $TB_ROOT_STAMP && $force -eq 0 ]]; then
        top_up_packages
        exit 0
    fi
    local start=$SECONDS
    TB_MIRROR=$(tb_mirror /etc)
    ensure_host_tools
    # A leftover (partial or forced) root goes first; refused if mounted.
    tb_safe_rm_tree "$TB_ROOT"
    bootstrap
    configure_root
    install_packages
    record_versions
    date -u +%FT%TZ >"$TB_ROOT_STAMP"
    tb_log "root ready in $((SECONDS - start)) s: $TB_ROOT ($(du -shx "$TB_ROOT" | cut -f1))"
}

main "$@"
