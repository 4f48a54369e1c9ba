#!/usr/bin/env bash
# The long version of tests/integration/crash_loop.rs (hardening issue, point 1): publishes JOBS
# jobs, starts `bgq process` and SIGKILLs it at a random moment, KILLS times, then lets a last
# run finish. Checks that no job is lost, none ran twice at the same time, reruns are bounded by
# the reported recoveries, and every recovery names a job that was in flight. The jobs form one
# sealed batch: checks that its completion job is published exactly once, counting every job.
# Prints a summary.
#
#   stress/crash-loop.sh [JOBS [KILLS]]      (defaults: 400 jobs, 100 kills)
#   BGQ=/path/to/bgq stress/crash-loop.sh    (else: cargo build --release of this checkout)
#   SEED=123 ...                              repeats the random choices of a run (not its timing)
#   PROCESS_ARGS=--watch ...                  kills `bgq process --watch` runs instead
set -uo pipefail
jobs="${1:-400}"
kills="${2:-100}"
source "$(dirname "$0")/common.sh"
seed="${SEED:-$RANDOM}"
RANDOM="$seed"

log="$work/runs.log"
ran="$work/ran.log"
mkdir -p "$work/locks" "$work/err"
cat >"$work/cb.sh" <<CB
#!/bin/sh
echo "start \$BGQ_JOB_ID \$\$ \$(date +%s%N)" >> $log
# 5 to 30 ms of work; every 20th job half a second, so that kills catch some mid-run.
if [ \$((BGQ_JOB_ID % 20)) -eq 0 ]; then sleep 0.5; else sleep \$(printf '0.%03d' \$((BGQ_JOB_ID % 26 + 5))); fi
echo "end \$BGQ_JOB_ID \$\$ \$(date +%s%N)" >> $log
echo \$BGQ_JOB_ID >> $ran
CB
chmod +x "$work/cb.sh"
cat >"$work/bgq.toml" <<TOML
database = "bgq.sqlite"
temp_dir = "$work/locks"
concurrency = 4
# A job killed at every round loses an attempt each time: let no job run out of them here.
[retry]
max_attempts = 100000
[callbacks.cb]
command = ["$work/cb.sh"]
[callbacks.done]
command = ["sh", "-c", "cat >> $work/done.log"]
TOML

batch=$(bgq batch new --on-complete done) || fail "batch new"
seq 1 "$jobs" | sed 's/.*/{"n":&}/' | bgq publish cb --jsonl - --batch "$batch" >/dev/null || fail "publish"
bgq batch seal "$batch" >/dev/null || fail "batch seal"
starts() { if [ -e "$log" ]; then grep -c "^start " "$log" || true; else echo 0; fi; }
recovered_in() { grep -o '^bgq: recovered job [0-9]*' "$1" | awk '{print $4}' | sort; }

started_at=$(now_ns)
in_flight=""
recoveries=0
done_kills=0
early_kills=0
for round in $(seq 1 "$kills"); do
    before=$(starts)
    err="$work/err/$round"
    # exec, so that $! is bgq itself and the kill reaches it.
    # shellcheck disable=SC2086 # PROCESS_ARGS is a list of words
    (exec "$BGQ" --config "$work/bgq.toml" process ${PROCESS_ARGS:-} 2>"$err") &
    pid=$!
    early=0
    if [ $((RANDOM % 5)) -eq 0 ]; then
        early=1
        sleep "$(printf '0.%03d' $((RANDOM % 15)))"
    else
        for _ in $(seq 1 1000); do
            kill -0 "$pid" 2>/dev/null || break
            [ "$(starts)" -gt "$before" ] && break
            sleep 0.01
        done
        sleep "$(printf '0.%03d' $((RANDOM % 100)))"
    fi
    alone=1
    if kill -KILL "$pid" 2>/dev/null; then
        alone=0
        done_kills=$((done_kills + 1))
        early_kills=$((early_kills + early))
    fi
    wait "$pid" 2>/dev/null
    # Killed before its exec, bgq never ran (nor opened its stderr file).
    [ -e "$err" ] || : >"$err"
    grep -q panicked "$err" && fail "round $round panicked: $(cat "$err")"
    got=$(recovered_in "$err")
    extra=$(comm -23 <(echo "$got") <(echo "$in_flight") | grep . || true)
    [ -z "$extra" ] || fail "round $round recovered $extra, which were not in flight"
    if [ "$early" -eq 0 ] || [ "$alone" -eq 1 ]; then
        [ "$got" = "$in_flight" ] || fail "round $round recovered [$got], in flight were [$in_flight]"
    fi
    [ -n "$got" ] && recoveries=$((recoveries + $(echo "$got" | wc -l)))
    in_flight=$(ids_in_state PROCESSING)
    [ "$alone" -eq 1 ] && break
done

final="$work/err/final"
bgq process 2>"$final" || fail "the last run failed: $(cat "$final")"
got=$(recovered_in "$final")
[ "$got" = "$in_flight" ] || fail "the last run recovered [$got], in flight were [$in_flight]"
[ -n "$got" ] && recoveries=$((recoveries + $(echo "$got" | wc -l)))
elapsed_ms=$((($(now_ns) - started_at) / 1000000))

finished=$(ids_in_state FINISHED | wc -l)
# The members and the completion job.
[ "$finished" -eq "$((jobs + 1))" ] || fail "$finished of $jobs jobs and the completion FINISHED"
completions=$(bgq list --callback done --json | wc -l)
[ "$completions" -eq 1 ] || fail "$completions completion jobs published, not one"
grep -q "\"FINISHED\":$jobs," "$work/done.log" || fail "the completion did not count every job: $(cat "$work/done.log")"
completed=$(sort -nu "$ran" | wc -l)
[ "$completed" -eq "$jobs" ] || fail "$completed of $jobs jobs completed a run"

# Runs per job (start, end or "-" when killed), sorted by job and start; nanosecond times all
# have 19 digits, so they compare as strings.
awk '$1 == "start" { start[$2 " " $3] = $4 }
     $1 == "end"   { end[$2 " " $3] = $4 }
     END { for (k in start) { split(k, p, " "); print p[1], start[k], (k in end ? end[k] : "-") } }' \
    "$log" | sort -k1,1n -k2,2 >"$work/runs.sorted"
overlaps=$(awk '$1 == id && prev_end != "-" && prev_end > $2 { print "job " $1 ": run ending " prev_end " overlaps one starting " $2 }
               { id = $1; prev_end = $3 }' "$work/runs.sorted")
[ -z "$overlaps" ] || fail "runs overlapped: $overlaps"
runs=$(wc -l <"$work/runs.sorted")
killed=$(awk '$3 == "-"' "$work/runs.sorted" | wc -l)
reruns=$((runs - jobs))
[ "$reruns" -le "$recoveries" ] || fail "$reruns reruns but only $recoveries recoveries reported"

# Recoveries of a callback whose group was not recorded (the kill came between spawn and
# record), and of a job whose callback had not started.
by_pipe=$(cat "$work"/err/* | grep -c "holding its output) was killed" || true)
not_started=$(cat "$work"/err/* | grep -c "callback had not" || true)
echo "crash-loop: OK seed=$seed jobs=$jobs kills=$done_kills (early $early_kills) recoveries=$recoveries" \
    "runs=$runs reruns=$reruns killed_runs=$killed killed_by_pipe=$by_pipe not_started=$not_started overlaps=0 lost=0 time=${elapsed_ms}ms"
