#!/usr/bin/env bash
# Inside the package test's fresh root (scripts/package-test.sh runs it there): checks what the
# package installed, then boots two domains through libvirt:
#  1. "draw": a vhostuser video device with 3D on. libvirt finds vgpud through its descriptor
#     and starts it itself; the guest runs kms-pattern and holds it for the screenshots.
#  2. "vulkan": what libvirt has no element for, the generic vhost-user device with its shared
#     memory window, passed through with <qemu:commandline> to a vgpud started here as an
#     operator would (Venus); the guest runs vk-info, which must find the Venus device, while
#     `vgpud status` shows the VM.
#
# usage: run-vm.sh RESULTS GUEST_IMAGE_DIR PROJECT SEED TIMEOUT
# Writes RESULTS/draw/screen-N.ppm (virsh screenshot) and RESULTS/draw/READY (the guest's
# mode), and each guest's output; exits non-zero with a FAIL line.
set -euo pipefail
results=$1 guest=$2 project=$3 seed=$4 timeout=$5
here=$(cd "$(dirname "$0")" && pwd)

fail() {
    echo "FAIL: $*"
    exit 1
}
say() { echo "[run-vm] $*"; }

check_package() {
    [[ -x /usr/bin/vgpud ]] || fail "no /usr/bin/vgpud"
    local caps units verify
    caps=$(vgpud --print-capabilities)
    say "vgpud --print-capabilities: $caps"
    [[ $caps == *'"virgl"'* ]] || fail "the package's vgpud offers no virgl: $caps"
    [[ -f /usr/share/qemu/vhost-user/40-vgpud.json ]] || fail "no vhost-user descriptor"
    getent passwd vgpud >/dev/null || fail "the package made no vgpud user"
    [[ -f /usr/share/man/man1/vgpud.1.gz ]] || fail "no man page"
    # The units as systemd reads them (no systemd runs here: checked offline). A template is
    # verified through an instance of it.
    units=$(mktemp -d)
    cp /usr/lib/systemd/system/vgpud.service "$units/"
    cp /usr/lib/systemd/system/vgpud@.socket "$units/vgpud@vm1.socket"
    if ! verify=$(cd "$units" && systemd-analyze verify --man=no ./vgpud.service ./vgpud@vm1.socket 2>&1); then
        echo "$verify"
        fail "systemd-analyze verify refused the units"
    fi
    say "systemd-analyze verify: the units are valid"
    systemd-analyze security --offline=true "$units/vgpud.service" 2>/dev/null |
        tail -1 | sed 's/^/[run-vm] systemd-analyze security: /' || true
    rm -rf "$units"
}

# libvirt's QEMU driver, run by hand (no systemd here) as root, without the confinement a
# chroot cannot give it (cgroups, namespaces, security labels).
start_libvirt() {
    cat >>/etc/libvirt/qemu.conf <<'CONF'
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
remember_owner = 0
CONF
    mkdir -p /run/libvirt /var/log/libvirt/qemu
    # The QEMU driver's own daemon where the package has it, else the monolithic one.
    local daemon_name=libvirtd
    command -v virtqemud >/dev/null && daemon_name=virtqemud
    "$daemon_name" --verbose >"$results/libvirt-daemon.log" 2>&1 &
    daemon=$!
    export LIBVIRT_DEFAULT_URI=qemu:///system
    for _ in $(seq 100); do
        virsh version >/dev/null 2>&1 && break
        sleep 0.1
    done
    virsh version >/dev/null 2>&1 || fail "$daemon_name did not start (see libvirt-daemon.log)"
    say "libvirt: $("$daemon_name" --version)"
}

# boot NAME CODE VIDEO_XML QEMU_XML: defines and starts domain NAME whose guest runs CODE;
# its results go to RESULTS/NAME.
boot() {
    local name=$1 code=$2 video=$3 qemu=$4 out=$results/$1 xml
    mkdir -p "$out"
    printf '#!/bin/bash\n%s\n' "$code" >"$out/cmd.sh"
    chmod +x "$out/cmd.sh"
    xml=$(sed -e "s|@NAME@|vgpud-$name|g" -e "s|@GUEST@|$guest|g" -e "s|@PROJECT@|$project|g" \
        -e "s|@RESULTS@|$out|g" "$here/domain.xml")
    xml=${xml/<!-- @VIDEO@ -->/$video}
    xml=${xml/<!-- @QEMU@ -->/$qemu}
    printf '%s\n' "$xml" >"$out/domain.xml"
    virsh define "$out/domain.xml" >/dev/null || fail "$name: virsh define"
    virsh start "vgpud-$name" || fail "$name: virsh start (see libvirt-daemon.log)"
    domains+=("vgpud-$name")
}

running() { [[ $(virsh domstate "vgpud-$1" 2>/dev/null) == running* ]]; }

# wait_line NAME REGEX: until the guest's output has a line matching REGEX.
wait_line() {
    local out=$results/$1
    until grep -aqE "$2" "$out/output.log" 2>/dev/null; do
        ((SECONDS < deadline)) || fail "$1: no '$2' from the guest (see $out/console.log)"
        [[ ! -f $out/init-error && ! -f $out/exit-code ]] ||
            fail "$1: the guest ended without '$2' (see $out/console.log, output.log)"
        running "$1" || fail "$1: the domain stopped early (see $out/console.log)"
        sleep 0.5
    done
}

# finish NAME PROGRAM: waits for the domain to end; the guest must have passed PROGRAM.
finish() {
    local out=$results/$1
    while running "$1"; do
        ((SECONDS < deadline)) || fail "$1: the guest did not finish"
        sleep 0.5
    done
    cp "/var/log/libvirt/qemu/vgpud-$1.log" "$out/qemu.log" 2>/dev/null || true
    grep -aq "^PASS: $2" "$out/output.log" || fail "$1: $2 did not pass (see $out/output.log)"
    say "$1: the guest passed $2"
}

cleanup() {
    local d
    for d in "${domains[@]}"; do virsh destroy "$d" >/dev/null 2>&1 || true; done
    [[ -z ${vgpud_pid:-} ]] || kill "$vgpud_pid" 2>/dev/null || true
    [[ -z ${daemon:-} ]] || kill "$daemon" 2>/dev/null || true
    wait 2>/dev/null || true
}
domains=()
trap cleanup EXIT
deadline=$((SECONDS + timeout))

check_package
start_libvirt

# 1. libvirt starts vgpud itself.
boot draw "exec $project/target/guest-tests/kms-pattern --seed $seed --hold $timeout --wait-for /results/screendump-taken" \
    "<video><driver name='vhostuser'/><model type='virtio' heads='1'><acceleration accel3d='yes'/></model></video>" ""
say "draw: libvirt's command line for QEMU:"
grep -ao -- '-chardev socket,id=chr-vu-video0[^ ]*\|-device {"driver":"vhost-user-[^}]*}' \
    /var/log/libvirt/qemu/vgpud-draw.log | sed 's/^/[run-vm]   /' || true
backend=$(ps -eo pid,args | grep '[/]usr/bin/vgpud' || true)
say "draw: backend: $backend"
[[ $backend == *'/usr/bin/vgpud --fd='*' --virgl'* ]] ||
    fail "libvirt did not start /usr/bin/vgpud --fd=N --virgl"
wait_line draw '^READY [0-9]+x[0-9]+'
grep -aoE '^READY [0-9]+x[0-9]+' "$results/draw/output.log" | head -1 | cut -d' ' -f2 >"$results/draw/READY"
# The guest may still be flushing: the host compares them and takes the first that matches.
for i in 1 2 3 4 5 6; do
    virsh screenshot vgpud-draw "$results/draw/screen-$i.ppm" --screen 0 >/dev/null ||
        fail "draw: virsh screenshot"
    sleep 0.5
done
touch "$results/draw/screendump-taken"
finish draw kms-pattern

# 2. The generic device, passed through to a vgpud run by the operator.
mkdir -p /run/vgpud
vgpud --renderer venus --hostmem 256M --control-socket /run/vgpud/control.sock \
    --socket-path /run/vgpud/vk.sock,name=vk >"$results/vgpud-vk.log" 2>&1 &
vgpud_pid=$!
for _ in $(seq 200); do
    [[ -S /run/vgpud/vk.sock ]] && break
    sleep 0.1
done
[[ -S /run/vgpud/vk.sock ]] || fail "vulkan: vgpud did not listen (see vgpud-vk.log)"
boot vulkan "$project/target/guest-tests/vk-info && sleep 3" "" \
    "<qemu:commandline>
    <qemu:arg value='-chardev'/>
    <qemu:arg value='socket,id=vgpu0,path=/run/vgpud/vk.sock'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='vhost-user-test-device-pci,chardev=vgpu0,virtio-id=16,num_vqs=2,config_size=24,bus=pcie.0,addr=0x10'/>
  </qemu:commandline>"
wait_line vulkan '^PASS: vk-info'
status=$(vgpud status --control-socket /run/vgpud/control.sock)
printf '%s\n' "$status" | sed 's/^/[run-vm] vulkan: status: /'
[[ $status == *' vk '*' venus '* ]] || fail "vulkan: vgpud status does not show VM vk on venus"
finish vulkan vk-info
