#!/usr/bin/env bash
# Runs every test: unit and harness tests (against vgpud and against QEMU's own C backend), the
# protocol's randomized decode test, then the real-guest end-to-end suite (2D, GL, Vulkan) on the
# Debian sid testbed, then the Debian package's install test with libvirt (package-test.sh). Installs what the tests need on a fresh machine; needs root for the testbed.
# VGPUD_TEST_HOST_ONLY=1 skips the guest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
[[ -x /usr/lib/qemu/vhost-user-gpu ]] || need_packages+=(qemu-system-gui)
if ((${#need_packages[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages: ${need_packages[*]} (run as root or install them)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
fi

cargo test --workspace --locked "$@"
# How the testbed finds its Debian archive, on sample apt configurations (no network).
scripts/testbed/test-apt-archive.sh

[[ ${VGPUD_TEST_HOST_ONLY:-0} == 1 ]] && exit 0
# vgpud with OpenGL and Vulkan links the testbed's virglrenderer, so it is built inside the
# testbed, where the harness tests that need those renderers (tests/venus.rs) run too.
scripts/testbed/root.sh
scripts/testbed/run.sh cargo build --release --locked --features virgl
scripts/testbed/run.sh cargo test --release --locked --features virgl --test venus
# The real-guest suite (e2e/, the vgpud-e2e binary; a debug build, whose dependencies the
# workspace test above has built already).
VGPUD_BIN=$PWD/target/testbed/release/vgpud VGPUD_E2E_VIRGL=1 VGPUD_E2E_VENUS=1 \
    cargo run --locked -q -p vgpud-e2e
# The Debian package on a fresh root, and domains that libvirt starts (it starts vgpud itself).
scripts/package-test.sh
