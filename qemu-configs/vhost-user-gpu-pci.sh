#!/usr/bin/env bash
# Attaches QEMU's vhost-user-gpu-pci device (display, 2D) to a running vgpud.
#   vgpud --socket-path /run/vgpud/vm0.sock &
#   qemu-configs/vhost-user-gpu-pci.sh /run/vgpud/vm0.sock -kernel vmlinuz -initrd initrd.img ...
# Guest RAM must be shared memory (memfd, share=on) so the daemon can map it. Under TCG this needs a
# QEMU that allows vhost-user without KVM (11.x does; 7.2 stops with "requires kvm").
set -euo pipefail
socket=${1:?usage: $0 SOCKET [more qemu args]}
shift
accel=tcg
[[ -w /dev/kvm ]] && accel=kvm
exec "${QEMU:-qemu-system-x86_64}" \
    -accel "$accel" -cpu max -smp 2 -m 2G \
    -object memory-backend-memfd,id=mem0,size=2G,share=on \
    -machine q35,memory-backend=mem0 \
    -chardev socket,id=vgpu,path="$socket" \
    -device vhost-user-gpu-pci,chardev=vgpu \
    "$@"
