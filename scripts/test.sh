#!/usr/bin/env bash
# Runs every test: unit, the vhost-user harness against vgpud (and against QEMU's own C backend),
# and the protocol's randomized decode test. Installs what the tests need on a fresh machine.
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
