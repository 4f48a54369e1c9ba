#!/usr/bin/env bash
# The long version of tests/integration/contention.rs (hardening issue, point 2): PUBLISHERS
# shell loops each run `bgq publish` JOBS times, one process per job, while `bgq process` drains
# the queue (started again whenever it runs out of work). Checks that every publish exits 0 with
# nothing on stderr, that `process` never fails, and that every job runs exactly once. Prints
# the publish latencies (max, 99th percentile, median).
#
#   stress/contention.sh [PUBLISHERS [JOBS]]   (defaults: 8 publishers x 300 jobs)
#   BGQ=/path/to/bgq stress/contention.sh      (else: cargo build --release of this checkout)
set -uo pipefail
publishers="${1:-8}"
per="${2:-300}"
source "$(dirname "$0")/common.sh"

ran="$work/ran.log"
mkdir -p "$work/locks" "$work/pub"
printf '#!/bin/sh\necho $BGQ_JOB_ID >> %s\n' "$ran" >"$work/cb.sh"
chmod +x "$work/cb.sh"
cat >"$work/bgq.toml" <<TOML
database = "bgq.sqlite"
temp_dir = "$work/locks"
concurrency = 4
[callbacks.cb]
command = ["$work/cb.sh"]
TOML

# One line per publish: exit code, nanoseconds, printed id; stderr collected per publisher.
publisher() {
    local p=$1 i t0 t1 id rc
    for i in $(seq 1 "$per"); do
        t0=$(now_ns)
        id=$(bgq publish cb --json "{\"publisher\":$p,\"job\":$i}" 2>>"$work/pub/$p.err")
        rc=$?
        t1=$(now_ns)
        echo "$rc $((t1 - t0)) $id" >>"$work/pub/$p.log"
    done
}

drainer() {
    local runs=0
    while [ ! -e "$work/publishing-done" ]; do
        bgq process 2>>"$work/process.err" || echo "process run $runs exited $?" >>"$work/process.err"
        runs=$((runs + 1))
    done
    echo "$runs" >"$work/process.runs"
}

started_at=$(now_ns)
drainer &
drainer_pid=$!
pids=()
for p in $(seq 1 "$publishers"); do
    publisher "$p" &
    pids+=($!)
done
wait "${pids[@]}"
publish_ms=$((($(now_ns) - started_at) / 1000000))
touch "$work/publishing-done"
wait "$drainer_pid"
bgq process 2>>"$work/process.err" || echo "the last process run failed" >>"$work/process.err"
elapsed_ms=$((($(now_ns) - started_at) / 1000000))

total=$((publishers * per))
cat "$work"/pub/*.log >"$work/publishes"
[ "$(wc -l <"$work/publishes")" -eq "$total" ] || fail "$(wc -l <"$work/publishes") of $total publishes logged"
failed=$(awk '$1 != 0 || $3 == ""' "$work/publishes" | wc -l)
[ "$failed" -eq 0 ] || fail "$failed publishes failed"
if cat "$work"/pub/*.err | grep -q .; then
    fail "publish wrote to stderr: $(cat "$work"/pub/*.err | sort | uniq -c | head -5)"
fi
[ -s "$work/process.err" ] && fail "process wrote to stderr: $(head -5 "$work/process.err")"
awk '{print $3}' "$work/publishes" | sort -n >"$work/ids"
[ "$(uniq -d "$work/ids" | wc -l)" -eq 0 ] || fail "an id was given out twice"
finished=$(ids_in_state FINISHED | wc -l)
[ "$finished" -eq "$total" ] || fail "$finished of $total jobs FINISHED"
sort -n "$ran" >"$work/ran.sorted"
[ "$(uniq -d "$work/ran.sorted" | wc -l)" -eq 0 ] || fail "a job ran twice: $(uniq -d "$work/ran.sorted" | head)"
cmp -s "$work/ids" "$work/ran.sorted" || fail "the jobs that ran are not the jobs published"

read -r max p99 median < <(awk '{print $2}' "$work/publishes" | sort -n |
    awk '{ v[NR] = $1 } END { printf "%d %d %d\n", v[NR] / 1e6, v[int(NR * 0.99)] / 1e6, v[int(NR / 2)] / 1e6 }')
echo "contention: OK publishers=$publishers jobs=$total failed=0 stderr=0 ran_once=$total" \
    "process_runs=$(cat "$work/process.runs") publish_latency_ms: max=$max p99=$p99 median=$median" \
    "publishing=${publish_ms}ms total=${elapsed_ms}ms"
