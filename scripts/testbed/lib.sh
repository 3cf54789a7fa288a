# shellcheck shell=bash disable=SC2034 # variables are used by the sourcing scripts
# Common settings and helpers for the vgpud real-guest testbed.
# Sourced by the other scripts in this directory; not meant to be run.

set -euo pipefail

TB_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The project is mounted at the same path inside the chroot, so paths built
# on the host (target/, scripts) stay valid inside the root and the guest.
TB_PROJECT=${VGPUD_PROJECT:-$(cd "$TB_SCRIPTS/../.." && pwd)}
TB_DIR=${VGPUD_TESTBED:-$TB_PROJECT/build/testbed}
TB_ROOT=$TB_DIR/root
TB_GUEST=$TB_DIR/guest
TB_RUNS=$TB_DIR/runs
TB_SUITE=${VGPUD_TESTBED_SUITE:-sid}
# Written last by root.sh: a root without it is incomplete and gets rebuilt.
TB_ROOT_STAMP=$TB_ROOT/.vgpud-testbed-complete

tb_log() { printf '[testbed] %s\n' "$*" >&2; }
tb_die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

# The Debian archive for the root: tb_mirror ($VGPUD_TESTBED_MIRROR, else the
# one the host's apt uses).
# shellcheck source=apt-archive.sh
source "$TB_SCRIPTS/apt-archive.sh"

tb_need_root() {
    [[ $(id -u) -eq 0 ]] || tb_die "must run as root (chroot, mount)"
}

tb_need_complete_root() {
    [[ -f $TB_ROOT_STAMP ]] || tb_die "no complete root at $TB_ROOT: run $TB_SCRIPTS/root.sh"
}

# --- mount table ---------------------------------------------------------

# Print every mount point of this mount namespace, in mount order.
# mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
tb_mountpoints() {
    local _id _parent _dev _rel mp _rest
    while read -r _id _parent _dev _rel mp _rest; do
        printf '%b\n' "$mp"
    done </proc/self/mountinfo
}

# Mount points at DIR or below it, deepest-last (mount order).
tb_mounts_under() {
    local dir
    dir=$(realpath -m "$1")
    tb_mountpoints | awk -v d="$dir" '$0 == d || index($0, d "/") == 1'
}

tb_is_mountpoint() {
    local p
    p=$(realpath -m "$1")
    # Not grep -q: it would stop reading early, and under pipefail the
    # writer's SIGPIPE would turn a match into a failure.
    [[ -n $(tb_mountpoints | grep -xF -- "$p") ]]
}

# Bind SRC onto DST unless DST already is a mount point (idempotent).
tb_bind() {
    local src=$1 dst=$2 opt=${3:-rw}
    tb_is_mountpoint "$dst" && return 0
    if [[ -d $src ]]; then mkdir -p "$dst"; else [[ -e $dst ]] || touch "$dst"; fi
    mount --bind "$src" "$dst"
    # A read-only bind needs a second remount step.
    if [[ $opt == ro ]]; then mount -o remount,bind,ro "$dst"; fi
}

# Mount everything the chroot needs. Safe to call repeatedly.
tb_mount() {
    tb_need_root
    [[ -d $TB_ROOT ]] || tb_die "no root at $TB_ROOT"
    if ! tb_is_mountpoint "$TB_ROOT/proc"; then
        mount -t proc proc "$TB_ROOT/proc"
    fi
    tb_bind /sys "$TB_ROOT/sys"
    tb_bind /dev "$TB_ROOT/dev"
    tb_bind /dev/pts "$TB_ROOT/dev/pts"
    if tb_is_mountpoint /dev/shm; then tb_bind /dev/shm "$TB_ROOT/dev/shm"; fi
    # Same paths inside as outside, so cargo/rustup and the work tree just work.
    local d
    for d in "$HOME/.cargo" "$HOME/.rustup"; do
        if [[ -d $d ]]; then tb_bind "$d" "$TB_ROOT$d"; fi
    done
    tb_bind "$TB_PROJECT" "$TB_ROOT$TB_PROJECT"
    # The testbed dir (guest image, run results) must be reachable too; it
    # already is when it lives inside the project.
    case $TB_DIR/ in
        "$TB_PROJECT"/*) ;;
        *) tb_bind "$TB_DIR" "$TB_ROOT$TB_DIR" ;;
    esac
    tb_host_files
}

# Network and TLS config from the host: the sid root's own CA store is not
# enough when the registry access goes through the host's trust settings.
tb_host_files() {
    cp -L /etc/resolv.conf "$TB_ROOT/etc/resolv.conf" 2>/dev/null || true
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        mkdir -p "$TB_ROOT/etc/vgpud-testbed"
        cp /etc/ssl/certs/ca-certificates.crt "$TB_ROOT/etc/vgpud-testbed/host-ca.crt"
    fi
}

# Unmount everything below the root, deepest first. Refuses to guess: a busy
# mount is reported and left alone (no lazy unmount hiding a live tree).
tb_umount() {
    tb_need_root
    local mp failed=0
    # tac: reverse mount order, so children go before their parents.
    while IFS= read -r mp; do
        [[ $mp == "$(realpath -m "$TB_ROOT")" ]] && continue
        if ! umount "$mp"; then
            tb_log "cannot unmount $mp (busy? see: fuser -vm '$mp')"
            failed=1
        fi
    done < <(tb_mounts_under "$TB_ROOT" | tac)
    [[ $failed -eq 0 ]] || tb_die "some mounts are still active under $TB_ROOT"
}

# rm -rf that refuses to run while anything is mounted at or below DIR.
# (--one-file-system alone is not enough: a bind mount of the project sits on
# the same filesystem and would be followed.)
tb_safe_rm_tree() {
    local dir=$1 mounted
    [[ -e $dir ]] || return 0
    mounted=$(tb_mounts_under "$dir")
    if [[ -n $mounted ]]; then
        tb_die "refusing to delete $dir, still mounted below it:"$'\n'"$mounted"
    fi
    rm -rf --one-file-system -- "$dir"
}

# --- running inside the root ---------------------------------------------

# Variables passed from the caller into the chroot (plus every VGPUD_*).
TB_PASS_ENV=(TERM RUST_LOG RUST_BACKTRACE CI CARGO_TARGET_DIR)

# exec COMMAND inside the root with a clean, predictable environment.
# Must be called with the mounts in place.
tb_exec_in_root() {
    local -a envv=(
        "HOME=$HOME"
        "PATH=$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "LANG=C.UTF-8"
        "CARGO_HOME=$HOME/.cargo"
        "RUSTUP_HOME=$HOME/.rustup"
        "VGPUD_IN_TESTBED=1"
    )
    if [[ -f $TB_ROOT/etc/vgpud-testbed/host-ca.crt ]]; then
        envv+=("SSL_CERT_FILE=/etc/vgpud-testbed/host-ca.crt"
            "CARGO_HTTP_CAINFO=/etc/vgpud-testbed/host-ca.crt")
    fi
    local v
    for v in "${TB_PASS_ENV[@]}"; do
        if [[ -n ${!v:-} ]]; then envv+=("$v=${!v}"); fi
    done
    while IFS= read -r v; do
        envv+=("$v=${!v}")
    done < <(compgen -e | grep '^VGPUD_' || true)
    # Builds in the root link against sid's libraries: keep them out of the
    # host's target/ so cargo never mixes the two.
    if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
        envv+=("CARGO_TARGET_DIR=$TB_PROJECT/target/testbed")
    fi
    local cwd=/
    case $PWD/ in "$TB_PROJECT"/*) cwd=$PWD ;; esac
    exec chroot "$TB_ROOT" /usr/bin/env -i "${envv[@]}" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$cwd" "$@"
}

# Run COMMAND inside the root in a private mount namespace: the mounts exist
# only for the command's lifetime and vanish with it, so nothing is left
# mounted under the root afterwards (and a later rm -rf cannot reach /dev or
# the project through a forgotten bind).
tb_in_root_ns() {
    tb_need_root
    unshare --mount --propagation private -- \
        bash -c 'source "$1/lib.sh"; shift; tb_mount; tb_exec_in_root "$@"' \
        bash "$TB_SCRIPTS" "$@"
}
