#!/usr/bin/env bash
# Runs vgpud against crosvm's own vhost-user frontend (VhostUserFrontend), as a unit test
# compiled inside crosvm's devices crate. No KVM needed.
#
# usage: CROSVM_SRC=/path/crosvm MINIJAIL_SRC=/path/minijail VGPUD_BIN=/path/vgpud ./run.sh
#   CROSVM_SRC    a crosvm source tree (>= 8ae81e77); it is modified (test file + mod line)
#   MINIJAIL_SRC  minijail tree at crosvm's third_party/minijail submodule commit; copied in
#                 when CROSVM_SRC/third_party/minijail is empty (e.g. from `git archive`)
#   VGPUD_BIN     the vgpud binary
#   CARGO_TARGET_DIR (optional) default /tmp/crosvm-proof-ctarget
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CROSVM_SRC:?set CROSVM_SRC}" "${VGPUD_BIN:?set VGPUD_BIN}"
CROSVM_SRC=$(cd "$CROSVM_SRC" && pwd)
VGPUD_BIN=$(cd "$(dirname "$VGPUD_BIN")" && pwd)/$(basename "$VGPUD_BIN")
[ -x "$VGPUD_BIN" ] || { echo "no vgpud binary at $VGPUD_BIN" >&2; exit 2; }

# minijail submodule
mj="$CROSVM_SRC/third_party/minijail"
if [ ! -e "$mj/Makefile" ]; then
  : "${MINIJAIL_SRC:?set MINIJAIL_SRC (third_party/minijail is empty)}"
  mkdir -p "$mj"
  cp -a "$MINIJAIL_SRC"/. "$mj"/
fi

# host packages the build needs (bindgen's libclang, libcap for minijail)
missing=()
for p in libclang-dev libcap-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get install -y "${missing[@]}"
fi

# the test module
dir="$CROSVM_SRC/devices/src/virtio/vhost_user_frontend"
cp "$here/vgpud_frontend_test.rs" "$dir/vgpud_frontend_test.rs"
grep -q '^mod vgpud_frontend_test;' "$dir/mod.rs" ||
  printf '\n#[cfg(test)]\nmod vgpud_frontend_test;\n' >> "$dir/mod.rs"

export RUSTUP_TOOLCHAIN=${RUSTUP_TOOLCHAIN:-stable}   # crosvm pins 1.88.0, not installed here
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/crosvm-proof-ctarget}
export VGPUD_BIN
cd "$CROSVM_SRC"
echo "crosvm: $(git -C "$CROSVM_SRC" rev-parse HEAD 2>/dev/null || cat "$CROSVM_SRC/.commit" 2>/dev/null || echo unknown)"
echo "vgpud:  $("$VGPUD_BIN" --version)"
start=$(date +%s)
cargo test -p devices --lib --no-run
echo "build: $(( $(date +%s) - start )) s"
log=$(mktemp)
start=$(date +%s)
set +e
cargo test -p devices --lib vgpud_ -- --nocapture --test-threads=1 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "tests: $(( $(date +%s) - start )) s, exit $rc"
# a filter that matched nothing must not pass
grep -qE 'test result: ok\. [1-9][0-9]* passed' "$log" || { [ "$rc" -ne 0 ] || rc=1; echo "no vgpud_ test ran" >&2; }
rm -f "$log"
exit "$rc"
