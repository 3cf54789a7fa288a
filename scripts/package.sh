#!/usr/bin/env bash
# Builds the Debian package of vgpud (with OpenGL and Vulkan) in the testbed, against sid's
# virglrenderer: target/debian/vgpud_<version>_amd64.deb. cargo-deb reads the package's
# metadata in Cargo.toml ([package.metadata.deb]); its dependencies on shared libraries come
# from dpkg-shlibdeps. Installs cargo-deb (from crates.io) if it is missing. Needs root.
#
# usage: package.sh     (prints the .deb's path last)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --locked --version 3.8.0 >&2
fi
scripts/testbed/root.sh >&2
scripts/testbed/run.sh cargo build --release --locked --features virgl >&2
# The man page, from the command-line definition of the binary being packaged.
mkdir -p target/man
scripts/testbed/run.sh target/testbed/release/vgpud manpage | gzip -9n >target/man/vgpud.1.gz
# CARGO_TARGET_DIR is the testbed's (run.sh), so cargo-deb takes that build of the binary.
scripts/testbed/run.sh cargo deb --no-build --no-strip --output target/debian >&2
ls -t target/debian/vgpud_*.deb | head -1
