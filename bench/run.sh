#!/usr/bin/env bash
# bgq throughput and scale benchmarks: builds bgq in release mode, installs the reference tools
# that are missing, runs every comparison of the issue in one go and prints one table.
#
#   bench/run.sh                 # everything (about 8 minutes on 2 cores, after the installs)
#   bench/run.sh --only 1,4      # some targets; any other option goes to bench/bench.py
#   bench/run.sh --only 17.5a,17.5b    # issue 17 point 5: stats/status at 1M rows against 1,000,
#                                      # claims beside a serial group of 10,000 blocked jobs against 10
#   bench/run.sh --quick         # small sizes: checks that the harness works, figures meaningless
#
# The output is also kept in target/bench/ (ignored by git): run-<time>.txt and .json.
# Environment: BGQ_BIN=PATH measures that binary instead of building (to compare two builds);
# BENCH_NO_INSTALL=1 installs nothing (missing tools are skipped with a reason);
# BENCH_TMP=DIR puts the temporary folders there (default: the system temp dir; the timings
# include fsync, so it must be the disk a real queue would live on, not a tmpfs).
set -uo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
out_dir=$repo/target/bench
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$out_dir/run-$stamp.txt
exec > >(tee "$log") 2>&1

say() { printf '%s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# --- machine ---------------------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
tmp_dir=${BENCH_TMP:-${TMPDIR:-/tmp}}
fs=$(df -T "$tmp_dir" | awk 'NR == 2 {print $2 " on " $1}')
say "machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
say "temp dir: $tmp_dir ($fs)"
say "date: $(date -u '+%Y-%m-%d %H:%M UTC'), load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- installs --------------------------------------------------------------------------------
apt_updated=
apt_install() { # PACKAGE: installs a Debian package, running apt-get update once first
    [ -n "${BENCH_NO_INSTALL:-}" ] && return 1
    have apt-get || return 1
    if [ -z "$apt_updated" ]; then
        apt-get update -qq >"$out_dir/apt.log" 2>&1 || return 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >>"$out_dir/apt.log" 2>&1
}
have sqlite3 || { say "installing sqlite3 (Debian)"; apt_install sqlite3 || say "  failed: target 2 will be skipped"; }
have tsp || { say "installing task-spooler (Debian)"; apt_install task-spooler || say "  failed: task-spooler will be skipped"; }
[ -x /usr/bin/time ] || { say "installing time (Debian; GNU time measures peak memory)"; apt_install time || say "  failed: peak memory from /proc sampling only"; }
have strace || { say "installing strace (Debian; only to count fsync calls)"; apt_install strace || say "  failed: no fsync count"; }
if ! { have pueue && have pueued; }; then
    if [ -z "${BENCH_NO_INSTALL:-}" ] && have cargo; then
        say "installing pueue (crates.io; a few minutes the first time, log in target/bench/pueue-install.log)"
        cargo install pueue --locked >"$out_dir/pueue-install.log" 2>&1 || say "  failed: pueue will be skipped"
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi
python=$(command -v python3) || { say "python3 is required"; exit 1; }
if ! "$python" -c 'import huey' 2>/dev/null; then
    if [ -z "${BENCH_NO_INSTALL:-}" ]; then
        say "installing huey (PyPI)"
        "$python" -m pip install -q huey >"$out_dir/pip.log" 2>&1 || say "  failed: huey will be skipped"
    fi
fi

# --- build -----------------------------------------------------------------------------------
# Measure a private copy: a rebuild during the run must not change the binary under test.
work=$(mktemp -d "$tmp_dir/bgq-bench-bin-XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ -n "${BGQ_BIN:-}" ]; then
    say "measuring $BGQ_BIN (BGQ_BIN set: not building)"
    cp "$BGQ_BIN" "$work/bgq" || exit 1
    commit="given binary $BGQ_BIN"
else
    say "building: cargo build --release"
    if ! cargo build --release 2>"$out_dir/build.log"; then
        tail -20 "$out_dir/build.log"
        say "build failed"
        exit 1
    fi
    cp target/release/bgq "$work/bgq"
    commit=$(git describe --always --dirty 2>/dev/null || echo unknown)
fi
say "bgq: $commit (sha256 $(sha256sum "$work/bgq" | cut -c1-12))"

versions=()
have sqlite3 && versions+=("sqlite3 $(sqlite3 --version | cut -d' ' -f1)")
have pueue && versions+=("$(pueue --version)")
have tsp && versions+=("task-spooler $(dpkg-query -W -f='${Version}' task-spooler 2>/dev/null || echo '?')")
huey_version=$("$python" -c 'import huey; print(huey.__version__)' 2>/dev/null) && versions+=("huey $huey_version")
versions+=("$(xargs --version | head -1)" "Python $("$python" -c 'import platform; print(platform.python_version())')")
say "tools: $(IFS=,; echo "${versions[*]}" | sed 's/,/, /g')"
say

"$python" bench/bench.py --bgq "$work/bgq" --tmp "$tmp_dir" --json-out "$out_dir/run-$stamp.json" "$@"
status=$?
say
say "date: $(date -u '+%Y-%m-%d %H:%M UTC'), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
say "kept: $log"
exit $status
