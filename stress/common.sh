# Shared by the stress scripts: finds or builds bgq, makes a scratch folder, small helpers.
# shellcheck shell=bash

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# bgq to test: $BGQ, else a release build of this checkout.
if [ -z "${BGQ:-}" ]; then
    (cd "$repo" && cargo build --release --locked --quiet)
    BGQ="${CARGO_TARGET_DIR:-$repo/target}/release/bgq"
fi
[ -x "$BGQ" ] || { echo "no bgq at $BGQ" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/bgq-stress.XXXXXX")"
cleanup() {
    # Callbacks of a killed run may outlive it for a moment; they only write into $work.
    [ -n "${KEEP:-}" ] && { echo "kept $work"; return; }
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    echo "(scratch folder kept: $work)" >&2
    KEEP=1
    exit 1
}

bgq() { "$BGQ" --config "$work/bgq.toml" "$@"; }

now_ns() { date +%s%N; }

# Ids of jobs in STATE, one a line, sorted.
ids_in_state() {
    bgq list --json --limit 1000000 --state "$1" | grep -o '"id":[0-9]*' | cut -d: -f2 | sort
}
