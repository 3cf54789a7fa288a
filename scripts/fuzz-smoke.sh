#!/usr/bin/env bash
# A bounded fuzzing run for CI, on the stable toolchain: each cargo-fuzz target (fuzz/README.md)
# runs for a fixed time without a sanitizer (-s none) but with debug assertions and overflow
# checks (-a). Exits non-zero on the first crash, panic, broken invariant, hang (> 10 s for one
# input) or memory blow-up (> 2 GB). Installs cargo-fuzz if it is missing.
#
#   VGPUD_FUZZ_SECONDS  seconds per target (default 60)
#   VGPUD_FUZZ_TARGETS  targets to run, space-separated (default: decode device worker share vnc)
#
# Each target starts from the corpus earlier runs left in fuzz/corpus/<target> (not in git) and
# adds to it. A failing input is saved under fuzz/artifacts/<target>/; the run's full log is
# fuzz/artifacts/<target>-smoke.log.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${VGPUD_FUZZ_SECONDS:-60}
targets=${VGPUD_FUZZ_TARGETS:-decode device worker share vnc}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "VGPUD_FUZZ_SECONDS must be a positive number of seconds, not '$seconds'" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mkdir -p fuzz/artifacts
for target in $targets; do
    log=fuzz/artifacts/$target-smoke.log
    echo "fuzz-smoke: building $target" >&2
    cargo fuzz build -s none -a "$target"
    echo "fuzz-smoke: fuzzing $target for ${seconds}s (log: $log)" >&2
    start=$SECONDS
    status=0
    RUST_BACKTRACE=1 cargo fuzz run -s none -a "$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    if ((status != 0)); then
        tail -n 80 "$log" >&2
        echo "fuzz-smoke: $target FAILED (exit $status) after $((SECONDS - start))s;" \
            "the input is in fuzz/artifacts/$target/, see fuzz/README.md to replay it" >&2
        exit 1
    fi
    runs=$(grep -o '^Done [0-9]* runs in [0-9]* second(s)' "$log" || echo "Done (no summary)")
    echo "fuzz-smoke: $target ok: $runs" >&2
done
