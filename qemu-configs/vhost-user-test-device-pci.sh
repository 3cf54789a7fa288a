#!/usr/bin/env bash
# Attaches QEMU's generic vhost-user device (vhost-user-test-device-pci) to a running vgpud as a
# virtio-gpu device with a host-visible window, which blob mappings and so Venus (Vulkan) need:
#   vgpud --socket-path /run/vgpud/vm0.sock --renderer venus --hostmem 256M &
#   qemu-configs/vhost-user-test-device-pci.sh /run/vgpud/vm0.sock -kernel vmlinuz -initrd initrd.img ...
# Needs QEMU >= 11.1: older generic devices have no vhost-user shared memory regions, so no window.
# virtio-id=16 makes it a GPU, num_vqs=2 gives the control and cursor queues, config_size=24 is
# virtio_gpu_config; the window's size comes from vgpud (--hostmem), not from this command line.
# The device has no display: scanouts show nowhere and there is no screendump; the guest still
# sees its connectors and can set modes. Migration is blocked: the window is a VIRTIO shared
# memory region, and QEMU does not migrate devices that have one. Guest RAM must be shared memory
# (memfd, share=on) so the daemon can map it; TCG works (no KVM needed).
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
    -device vhost-user-test-device-pci,chardev=vgpu,virtio-id=16,num_vqs=2,config_size=24 \
    "$@"
