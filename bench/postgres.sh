#!/usr/bin/env bash
# Issue 15's speed targets on PostgreSQL, each measured side by side with its reference in one
# run (BENCHMARKS.md, "Issue 15: PostgreSQL"):
#   1  a drain of 2,000 /bin/true jobs costs the same per job with 1,000,000 FINISHED rows in
#      the schema as on an empty one (≤ 1.2x)
#   2  draining 5,000 /bin/true jobs (concurrency 2) takes ≤ 1.3x `xargs -P2` starting /bin/true
#      5,000 times; two runs as two hosts drain `sleep 0.02` jobs ≥ 1.6x as fast as one
#   3  one `bgq publish` per process costs ≤ half of one `psql -c "INSERT ..."` per process
#   4  peak RSS of `bgq process` draining 5,000 jobs < 20 MiB
#   5  against f2828c3 (the last commit before the PostgreSQL backend): `--version` and SQLite
#      `publish`, interleaved, within ±5 %; binary sizes
#   r  round trips (sendto calls under strace) of a publish and per job of a drain
#
#   bench/postgres.sh            # everything, 3 reps (about 5 minutes on 2 cores + builds)
#   bench/postgres.sh --quick    # tiny sizes, 1 rep: checks the harness in ~30 s (figures mean nothing)
#   bench/postgres.sh --only 1,3 --reps 5    # any option goes to bench/postgres.py
#
# It builds `cargo build --release` (or measures BGQ_BIN), and the old build from `git archive
# f2828c3` into target/bench/postgres/old-src (or takes BGQ_OLD_BIN), measures private copies
# of both, starts its own throwaway PostgreSQL with tests/postgres-server.sh (stopped on exit),
# and prints one table. That server runs with fsync=off, synchronous_commit=off and
# full_page_writes=off (it holds nothing worth keeping): commits cost no disk flush here, which
# favours both sides of target 3 alike but makes every PostgreSQL figure faster than on a real
# server. Raw samples and the log go to target/bench/postgres/ (not in git).
# Installs with apt-get what is missing (GNU time, strace, postgresql-client, postgresql) unless
# BENCH_NO_INSTALL=1. BENCH_TMP=DIR puts the temporary folders there (default /tmp).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
out_dir=$repo/target/bench/postgres
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$out_dir/run-$stamp.txt
exec > >(tee "$log") 2>&1

say() { printf '%s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
old_commit=f2828c3

# --- machine ---------------------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
tmp_dir=${BENCH_TMP:-${TMPDIR:-/tmp}}
say "machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
say "temp dir: $tmp_dir ($(df -T "$tmp_dir" | awk 'NR == 2 {print $2 " on " $1}'))"
say "date: $(date -u '+%Y-%m-%d %H:%M UTC'), load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- installs --------------------------------------------------------------------------------
apt_updated=
apt_install() { # PACKAGE: installs a Debian package, running apt-get update once first
    [ -z "${BENCH_NO_INSTALL:-}" ] && have apt-get || return 1
    if [ -z "$apt_updated" ]; then
        apt-get update -qq >"$out_dir/apt.log" 2>&1 || return 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >>"$out_dir/apt.log" 2>&1
}
[ -x /usr/bin/time ] || { say "installing time (Debian)"; apt_install time || say "  failed: no peak RSS from GNU time"; }
have strace || { say "installing strace (Debian)"; apt_install strace || say "  failed: no round-trip count"; }
have psql || { say "installing postgresql-client (Debian)"; apt_install postgresql-client || { say "  failed: psql is required"; exit 1; }; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || have initdb ||
    { say "installing postgresql (Debian)"; apt_install postgresql || { say "  failed: a PostgreSQL server is required"; exit 1; }; }

# --- builds ----------------------------------------------------------------------------------
work=$(mktemp -d "$tmp_dir/bgq-pgbench-bin-XXXXXX")
chmod 755 "$work"
server=$work/server
cleanup() {
    tests/postgres-server.sh stop "$server" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${BGQ_BIN:-}" ]; then
    say "measuring $BGQ_BIN (BGQ_BIN set: not building)"
    cp "$BGQ_BIN" "$work/bgq"
    commit="given binary $BGQ_BIN"
else
    say "building: cargo build --release"
    cargo build --release 2>"$out_dir/build.log" || { tail -20 "$out_dir/build.log"; say "build failed"; exit 1; }
    cp "${CARGO_TARGET_DIR:-target}/release/bgq" "$work/bgq"
    commit=$(git describe --always --dirty 2>/dev/null || echo unknown)
fi
if [ -n "${BGQ_OLD_BIN:-}" ]; then
    cp "$BGQ_OLD_BIN" "$work/bgq-old"
else
    old_src=$out_dir/old-src
    if [ ! -f "$old_src/Cargo.toml" ]; then
        mkdir -p "$old_src"
        git archive "$old_commit" | tar -x -C "$old_src"
    fi
    say "building $old_commit (the build before the PostgreSQL backend) in $old_src"
    (cd "$old_src" && CARGO_TARGET_DIR=$out_dir/old-target cargo build --release) \
        2>"$out_dir/build-old.log" || { tail -20 "$out_dir/build-old.log"; say "old build failed"; exit 1; }
    cp "$out_dir/old-target/release/bgq" "$work/bgq-old"
fi
say "bgq: $commit (sha256 $(sha256sum "$work/bgq" | cut -c1-12)); old: $old_commit (sha256 $(sha256sum "$work/bgq-old" | cut -c1-12))"

# --- the server ------------------------------------------------------------------------------
url=$(tests/postgres-server.sh start "$server")
pg_version=$(psql -X -At "$url" -c "SHOW server_version")
say "server: PostgreSQL $pg_version, throwaway, $url"
say "NOTE: the bench server runs with $(psql -X -At "$url" -c "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')") (tests/postgres-server.sh): no commit waits for the disk."
say "      Target 3 gains equally on both sides; real servers make publishes slower by one WAL flush each."
say "tools: $(psql --version), $(xargs --version | head -1), $(strace -V 2>/dev/null | head -1 || echo 'no strace')"
say

status=0
server_pid=$(head -1 "$server/data/postmaster.pid")
python3 bench/postgres.py --bgq "$work/bgq" --old-bgq "$work/bgq-old" --url "$url" --server-pid "$server_pid" \
    --tmp "$tmp_dir" --json-out "$out_dir/run-$stamp.json" "$@" || status=$?
say
say "date: $(date -u '+%Y-%m-%d %H:%M UTC'), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
say "kept: $log and run-$stamp.json"
exit $status
