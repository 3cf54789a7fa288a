#!/usr/bin/env bash
# Build the guest tests. Run it inside the testbed root (it needs the root's
# gcc and sid's libdrm/EGL/GLES headers), e.g.:
#
#   scripts/testbed/run.sh guest-tests/build.sh target/guest-tests
#
# usage: build.sh OUTDIR
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"

CFLAGS=(-std=gnu11 -O2 -g -Wall -Wextra -Werror)
read -r -a drm <<<"$(pkg-config --cflags --libs libdrm)"
read -r -a gl <<<"$(pkg-config --cflags --libs egl glesv2)"

# build NAME SOURCES... -- LIBS...
build() {
    local name=$1 sources=() libs=()
    shift
    while [[ $# -gt 0 && $1 != -- ]]; do sources+=("$src/$1"); shift; done
    [[ $# -gt 0 ]] && shift
    libs=("$@")
    gcc "${CFLAGS[@]}" -o "$out/$name.tmp" "${sources[@]}" "${libs[@]}"
    mv "$out/$name.tmp" "$out/$name"
    echo "built $out/$name"
}

build probe probe.c -- "${drm[@]}"
build kms-pattern kms-pattern.c -- "${drm[@]}"
build gl-offscreen gl-offscreen.c gl-util.c -- "${gl[@]}" -lm
build fences fences.c gl-util.c -- "${gl[@]}"
