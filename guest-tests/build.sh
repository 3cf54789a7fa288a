#!/usr/bin/env bash
# Build the guest tests. Run it inside the testbed root (it needs the root's
# gcc, sid's libdrm/EGL/GLES/Vulkan headers and glslangValidator), e.g.:
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
read -r -a vulkan <<<"$(pkg-config --cflags --libs vulkan)"

# The Vulkan tests' GLSL shaders, compiled to SPIR-V and embedded as C arrays:
# shaders/NAME.STAGE becomes $out/gen/NAME.STAGE.h with the array
# NAME_STAGE ('-' and '.' turned into '_'). Generated here, never committed.
gen=$out/gen
mkdir -p "$gen"
for shader in "$src"/shaders/*.comp "$src"/shaders/*.vert "$src"/shaders/*.frag; do
    [[ -f $shader ]] || continue
    file=${shader##*/}
    if ! log=$(glslangValidator -V --target-env vulkan1.0 --vn "${file//[-.]/_}" \
        -o "$gen/$file.h.tmp" "$shader" 2>&1); then
        printf '%s\n' "$log" >&2
        echo "glslangValidator failed on $shader" >&2
        exit 1
    fi
    mv "$gen/$file.h.tmp" "$gen/$file.h"
done

# build NAME SOURCES... -- LIBS...
build() {
    local name=$1 sources=() libs=()
    shift
    while [[ $# -gt 0 && $1 != -- ]]; do sources+=("$src/$1"); shift; done
    [[ $# -gt 0 ]] && shift
    libs=("$@")
    gcc "${CFLAGS[@]}" -I "$gen" -o "$out/$name.tmp" "${sources[@]}" "${libs[@]}"
    mv "$out/$name.tmp" "$out/$name"
    echo "built $out/$name"
}

build probe probe.c -- "${drm[@]}"
build kms-pattern kms-pattern.c -- "${drm[@]}"
build gl-offscreen gl-offscreen.c gl-util.c -- "${gl[@]}" -lm
build fences fences.c gl-util.c -- "${gl[@]}"
build vk-info vk-info.c vk-util.c -- "${vulkan[@]}"
build vk-compute vk-compute.c vk-util.c -- "${vulkan[@]}"
build vk-render vk-render.c vk-util.c -- "${vulkan[@]}" -lm
build vk-coherent vk-coherent.c vk-util.c -- "${vulkan[@]}"
build vk-churn vk-churn.c vk-util.c -- "${vulkan[@]}"
build drm-blob drm-blob.c -- "${drm[@]}"
build share-buffer share-buffer.c share-render.c vk-util.c -- "${drm[@]}" "${vulkan[@]}"
# Not a test: the benchmarks' LD_PRELOAD library that makes glmark2-drm use the preferred mode.
build preferred-mode.so preferred-mode.c -- -shared -fPIC "${drm[@]}" -ldl
