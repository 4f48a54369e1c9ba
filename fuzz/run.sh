#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 300), one after another, and prints one
# summary line per target. Not run by CI: see README.md in this folder.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). There is no nightly toolchain here:
# RUSTC_BOOTSTRAP=1 lets stable rustc accept the -Z sanitizer flags cargo-fuzz passes.
#
#   fuzz/run.sh 300            # 5 minutes per target
#   fuzz/run.sh 60 json raw    # only these targets
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-300}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(config json jsonl raw)
export RUSTC_BOOTSTRAP=1

mkdir -p logs
cargo fuzz build --debug-assertions 2>&1 | tail -1
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
    log="logs/$target.log"
    started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    # Configs and JSONL files grow longer than libFuzzer's default 4 KiB inputs.
    if cargo fuzz run --debug-assertions "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        result="clean"
    else
        result="FAILED (see fuzz/$log and fuzz/artifacts/$target/)"
        status=1
    fi
    runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
    corpus=$(find "corpus/$target" -type f | wc -l)
    echo "$target: $result; started $started; ${runs:-no final stats}; corpus $corpus inputs"
done
exit "$status"
