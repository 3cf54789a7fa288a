#!/usr/bin/env bash
# Run a command inside the testbed root (default: an interactive bash).
#
# usage: run.sh [COMMAND [ARGS...]]
#
# The mounts (/proc, /sys, /dev, ~/.cargo, ~/.rustup, the project at its own
# path) live in a private mount namespace that disappears with the command,
# so concurrent run.sh calls never step on each other and nothing stays
# mounted. The command starts in the current directory when that is inside
# the project, else in /. Exit status is the command's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case ${1:-} in -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
tb_need_complete_root
[[ $# -gt 0 ]] || set -- bash -l
tb_in_root_ns "$@"
