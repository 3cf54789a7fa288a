#!/usr/bin/env bash
# The package's install test, and vgpud started by libvirt: builds the .deb (package.sh),
# makes a fresh Debian sid root (debootstrap), installs the .deb there with apt (which must
# find every dependency it declares) next to Debian's libvirt and QEMU, and boots domains
# through libvirt (scripts/libvirt/run-vm.sh, inside that root). libvirt reads vgpud's
# descriptor, asks it for its capabilities and starts it with --fd=N --virgl; the guest (the
# testbed's kernel and programs, over 9p) draws kms-pattern, and libvirt's screenshot must
# match the pattern pixel for pixel; the guest's driver must report virgl. A second domain
# passes the generic device through to a vgpud run by hand and runs Vulkan on Venus. Needs
# root; the testbed must be built (scripts/test.sh does).
#
# usage: package-test.sh      results in build/pkgtest/run
set -euo pipefail
cd "$(dirname "$0")/.."
project=$PWD
SEED=7
TIMEOUT=240

deb=$(scripts/package.sh | tail -1)
scripts/testbed/guest-image.sh >/dev/null 2>&1 || true
[[ -x target/guest-tests/kms-pattern ]] ||
    scripts/testbed/run.sh guest-tests/build.sh target/guest-tests >/dev/null
guest_root=$project/build/testbed/root
guest_image=$project/build/testbed/guest
[[ -f $guest_image/vmlinuz ]] || scripts/testbed/guest-image.sh

export VGPUD_TESTBED=$project/build/pkgtest
# shellcheck source=testbed/lib.sh
source scripts/testbed/lib.sh
tb_need_root
log() { printf '[package-test] %s\n' "$*" >&2; }
start=$SECONDS

# A fresh root every time: the package must bring what it needs.
tb_safe_rm_tree "$TB_DIR"
mkdir -p "$TB_DIR"
mirror=$(tb_mirror /etc)
log "debootstrap $TB_SUITE from $mirror"
debootstrap --variant=minbase "$TB_SUITE" "$TB_ROOT" "$mirror" >"$TB_DIR/debootstrap.log" 2>&1 ||
    { tail -20 "$TB_DIR/debootstrap.log" >&2; tb_die "debootstrap failed"; }
echo "deb $mirror $TB_SUITE main" >"$TB_ROOT/etc/apt/sources.list"
echo 'Acquire::Check-Valid-Until "false";' >"$TB_ROOT/etc/apt/apt.conf.d/90vgpud-pkgtest"
printf '#!/bin/sh\nexit 101\n' >"$TB_ROOT/usr/sbin/policy-rc.d"
chmod +x "$TB_ROOT/usr/sbin/policy-rc.d"
mkdir -p "$TB_ROOT/srv/guest-root"
cp "$deb" "$TB_ROOT/tmp/"
log "installing libvirt and QEMU, then $(basename "$deb") with what it recommends"
{
    tb_in_root_ns apt-get update -q &&
        tb_in_root_ns env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
            qemu-system-x86 &&
        tb_in_root_ns env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            "/tmp/$(basename "$deb")"
} >"$TB_DIR/apt.log" 2>&1 || { tail -30 "$TB_DIR/apt.log" >&2; tb_die "apt-get failed"; }
log "root ready in $((SECONDS - start)) s"

results=$TB_DIR/run
rm -rf "$results"
mkdir -p "$results"
# The guest's root is the testbed's (read-only); the project is bound at its own path.
rc=0
unshare --mount --propagation private -- bash -c '
    source "$1/lib.sh"
    tb_mount
    mount --bind "$2" "$TB_ROOT/srv/guest-root"
    mount -o remount,bind,ro "$TB_ROOT/srv/guest-root"
    shift 2
    tb_exec_in_root "$@"' bash "$TB_SCRIPTS" "$guest_root" \
    bash "$project/scripts/libvirt/run-vm.sh" "$results" "$guest_image" "$project" "$SEED" "$TIMEOUT" \
    >"$results/run-vm.log" 2>&1 || rc=$?
sed 's/^/    /' "$results/run-vm.log" >&2
[[ $rc -eq 0 ]] || tb_die "the domain did not run through (logs in $results)"

# The picture, and what the guest's driver was offered.
draw=$results/draw
size=$(cat "$draw/READY")
matched=""
for shot in "$draw"/screen-*.ppm; do
    if cargo run --locked -q -p vgpud-e2e -- screen --compare-only --out "$shot" --size "$size" \
        --seed "$SEED" >"$shot.txt" 2>&1; then
        matched=$shot
        break
    fi
done
[[ -n $matched ]] || tb_die "no screenshot shows the pattern: $(tail -1 "$draw/screen-6.ppm.txt")"
log "libvirt's screenshot: $(tail -1 "$matched.txt")"
# libvirt discards a vhost-user GPU backend's output, so the guest says what it was served.
grep -aq 'features: +virgl' "$draw/console.log" ||
    tb_die "the guest's GPU offers no virgl (see $draw/console.log)"
log "PASS: the package installs on a fresh root; libvirt starts vgpud for a domain that draws, and passes the generic device through to Venus ($((SECONDS - start)) s)"
