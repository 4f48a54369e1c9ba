#!/usr/bin/env bash
# Power cuts under publishers (issue 17): PUBLISHERS shell loops run `bgq publish`, one process
# per job, while a `bgq process --watch` runs the jobs; at a random moment everything is
# SIGKILLed at once and the folder of the database is rebuilt as a power cut would have left it:
# every write that no completed fsync/fdatasync of its file covered is dropped (an LD_PRELOAD
# shim, powercut/shim.c, logs every write and sync; powercut/replay.py rebuilds the folder from
# a snapshot and that log). Then the "rebooted" database must pass `PRAGMA integrity_check`,
# hold every id a publish printed, and open in bgq; the next cut starts from it.
#
#   stress/power-cut.sh [CUTS [PUBLISHERS]]     (defaults: 20 cuts, 4 publishers)
#   DURABILITY=normal stress/power-cut.sh       the control: `durability = "normal"` must lose
#                                               printed ids (else the harness proves nothing);
#                                               fails if none is lost
#   BGQ=/path/to/bgq stress/power-cut.sh        (else: cargo build --release of this checkout)
#
# Device-mapper (dm-flakey, dm-log-writes) would be the faithful tool, but this kernel has none
# (no /dev/mapper/control), so the shim it is: it sees the libc calls of dynamically linked
# programs, which is how bgq and SQLite write.
set -uo pipefail
cuts="${1:-20}"
publishers="${2:-4}"
durability="${DURABILITY:-full}"
source "$(dirname "$0")/common.sh"
here="$(cd "$(dirname "$0")" && pwd)"

gcc -O2 -shared -fPIC -o "$work/shim.so" "$here/powercut/shim.c" -ldl || fail "cannot build the shim"
mkdir -p "$work/state" "$work/locks"
state="$(realpath "$work/state")"
cat >"$work/bgq.toml" <<TOML
database = "state/bgq.sqlite"
temp_dir = "$work/locks"
$([ -n "${DURABILITY:-}" ] && echo "durability = \"$durability\"")
concurrency = 2
[callbacks.cb]
command = ["/bin/true"]
TOML
bgq list >/dev/null || fail "cannot create the database"
sync

printed_total=0
lost_total=0
checked=0
dropped_log="$work/replays.log"
for cut in $(seq 1 "$cuts"); do
    rm -rf "$work/snapshot" "$work/log" "$work/printed."*
    cp -a "$state" "$work/snapshot"
    sync
    # Everything that writes the database runs under the shim, in one process group.
    setsid bash -c '
        export LD_PRELOAD="$1" POWERCUT_DIR="$2" POWERCUT_LOG="$3"
        bgq_bin=$4 config=$5 work=$6 n=$7 cut=$8
        "$bgq_bin" --config "$config" process --watch 2>>"$work/process.err" &
        for p in $(seq 1 "$n"); do
            (
                i=0
                while :; do
                    i=$((i + 1))
                    id=$("$bgq_bin" --config "$config" publish cb --json "{\"cut\":$cut,\"p\":$p,\"i\":$i}") || exit 1
                    echo "$id" >>"$work/printed.$p"
                done
            ) &
        done
        wait
    ' power-cut "$work/shim.so" "$state" "$work/log" "$BGQ" "$work/bgq.toml" "$work" "$publishers" "$cut" &
    group=$!
    # 0.3 to 2 s of publishing, then the cut.
    sleep "0.$((RANDOM % 10 + 3))$((RANDOM % 10))"
    [ $((RANDOM % 3)) -eq 0 ] && sleep 0.7
    kill -KILL -- -"$group" 2>/dev/null
    wait "$group" 2>/dev/null
    # Nothing of the group may write on after the cut.
    while pgrep -g "$group" >/dev/null 2>&1; do sleep 0.01; done

    replay=$(python3 "$here/powercut/replay.py" "$work/snapshot" "$work/log" "$state" "$work/after") ||
        fail "cut $cut: replay failed"
    echo "cut $cut: $replay" >>"$dropped_log"
    # Checked on a copy: the sqlite3 tool folds the -wal in and removes it as it closes, and
    # the next cut must start from the files as the power cut left them.
    rm -rf "$work/check"
    cp -a "$work/after" "$work/check"
    db="$work/check/bgq.sqlite"
    integrity=$(sqlite3 "$db" 'PRAGMA integrity_check' 2>&1)
    [ "$integrity" = ok ] || fail "cut $cut: integrity_check: $integrity"
    sqlite3 "$db" 'SELECT id FROM jobs' | sort >"$work/present"
    cat "$work/printed."* 2>/dev/null | sort >"$work/printed"
    printed=$(wc -l <"$work/printed")
    lost=$(comm -23 "$work/printed" "$work/present" | wc -l)
    printed_total=$((printed_total + printed))
    lost_total=$((lost_total + lost))
    if [ "$lost" -gt 0 ] && [ "$durability" = full ]; then
        fail "cut $cut: $lost of $printed printed ids lost, e.g. $(comm -23 "$work/printed" "$work/present" | head -3 | tr '\n' ' ')"
    fi
    # The rebooted folder is the next cut's start; bgq must open it (and take a publish).
    rm -rf "$state"
    mv "$work/after" "$state"
    bgq list --limit 1 >/dev/null 2>"$work/list.err" || fail "cut $cut: bgq cannot open the rebooted database: $(cat "$work/list.err")"
    sync
    checked=$((checked + 1))
    echo "cut $cut: $printed printed, $lost lost, integrity ok; $replay"
done
wal=$(stat -c %s "$state/bgq.sqlite-wal" 2>/dev/null || echo none)
jobs_now=$(sqlite3 "$state/bgq.sqlite" 'SELECT count(*) FROM jobs')
summary="cuts=$checked publishers=$publishers durability=$durability printed=$printed_total lost=$lost_total jobs=$jobs_now wal_bytes=$wal"
if [ "$durability" = full ]; then
    echo "power-cut: OK $summary"
elif [ "$lost_total" -gt 0 ]; then
    echo "power-cut: OK (control: durability = \"normal\" lost printed ids, as it may) $summary"
else
    fail "control: durability = \"normal\" lost nothing in $checked cuts: the harness may not drop writes ($summary)"
fi
