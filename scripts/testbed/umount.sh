#!/usr/bin/env bash
# Undo mount.sh: unmount everything below the testbed root, deepest first.
# Idempotent. A busy mount is left in place and reported (no lazy unmount),
# and the script then fails; run it again once the user has gone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tb_umount
left=$(tb_mounts_under "$TB_ROOT")
[[ -z $left ]] || tb_die "still mounted:"$'\n'"$left"
tb_log "nothing mounted under $TB_ROOT"
