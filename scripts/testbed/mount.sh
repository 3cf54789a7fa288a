#!/usr/bin/env bash
# Set up the testbed root's mounts in the host's mount namespace and leave
# them in place (for working in the chroot by hand). Idempotent.
# run.sh does not need this: it mounts privately for each command.
# Undo with umount.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tb_mount
tb_log "mounted under $TB_ROOT:"
tb_mounts_under "$TB_ROOT" | sed 's/^/    /' >&2
