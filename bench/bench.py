#!/usr/bin/env python3
"""Measures bgq against the reference of each target of the throughput issue (targets 1-7) and
of issue 17 (17.1-17.3: one publish against one dd, end to end against task-spooler), in one run.

Called by bench/run.sh after the release build and the installs; usable alone:

    python3 bench/bench.py --bgq target/release/bgq [--only 1,4] [--reps 3] [--quick]

Every measurement runs in a fresh folder under one temporary root that is removed at the end.
Times are wall clock (time.perf_counter). Short measurements run --reps times, bgq and its
reference alternating, and the median is kept. Prints one table at the end; --json-out also
writes every figure, raw samples included.
"""

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

DEVNULL = subprocess.DEVNULL
# The real interpreter, not a version-manager shim: huey's enqueue script runs 1,000 times.
PYTHON = os.path.realpath(sys.executable)


class Skip(Exception):
    """A comparison that cannot run here (a tool is missing); the message says why."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def median(values):
    return statistics.median(values)


def paired_ratio(mine, theirs):
    """Median over the repetitions of bgq's figure over the reference's measured next to it:
    a slow drift of the machine's speed cancels out of each pair."""
    return median([m / t for m, t in zip(mine, theirs)])


def p99(values):
    if len(values) < 2:
        return max(values)
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def now():
    return time.perf_counter()


def check_run(argv, **kw):
    """Runs argv to completion; raises with its stderr when it fails."""
    kw.setdefault("stdout", DEVNULL)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", 900)
    proc = subprocess.run(argv, **kw)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() if proc.stderr else ""
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: {err[-500:]}")
    return proc


def timed(argv, limit=900, **kw):
    """Seconds that argv took. Killed past `limit` seconds."""
    errfile = tempfile.TemporaryFile()
    kw.setdefault("stdout", DEVNULL)
    start = now()
    proc = subprocess.Popen(argv, stderr=errfile, **kw)
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    elapsed = now() - start
    if proc.returncode != 0:
        errfile.seek(0)
        err = errfile.read().decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: {err[-500:]}")
    return elapsed


TIME = "/usr/bin/time"


def timed_rss(argv, **kw):
    """Seconds that argv took, its peak RSS in KiB as GNU time's %M reports it, and the CPU
    seconds (user + system) of it and its descendants. The peak is wait4's ru_maxrss: the
    largest of the process and its descendants; a child started with vfork or posix_spawn
    records its parent's peak at exec, so a small C parent is needed (measured from Python,
    every child would show Python's own 14 MiB). RSS and CPU are None without GNU time."""
    if not os.access(TIME, os.X_OK):
        return timed(argv, **kw), None, None
    with tempfile.NamedTemporaryFile("r") as report:
        elapsed = timed([TIME, "-f", "%M %U %S", "-o", report.name, *argv], **kw)
        kib, user, system = report.read().split()[-3:]
        return elapsed, int(kib), float(user) + float(system)


def cpu_busy():
    """Busy and total CPU seconds of the whole machine so far (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def own_cpu():
    """CPU seconds used by this script and every child it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_for_quiet(max_wait, threshold=0.15):
    """Waits (up to max_wait seconds) until the machine is mostly idle; returns the busy share
    seen last."""
    deadline = now() + max_wait
    while True:
        b0, t0 = cpu_busy()
        time.sleep(1)
        b1, t1 = cpu_busy()
        share = (b1 - b0) / max(t1 - t0, 1e-9)
        if share <= threshold or now() >= deadline:
            return share
        print(f"  machine busy ({share:.0%} of CPU used by others); waiting for it to calm down",
              flush=True)


def parse_utc(text):
    """Seconds since the epoch of an RFC 3339 UTC time with up to nanoseconds."""
    from datetime import datetime, timezone
    head, _, frac = text.rstrip("Z").partition(".")
    whole = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return whole.timestamp() + (float("0." + frac) if frac else 0.0)


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sample_hwm(binary, stop, out):
    """Appends the VmHWM (KiB) of the running `bgq process` (found by its executable) every
    20 ms until stop is set: bgq's own peak, without its children."""
    pid = None
    while not stop.is_set():
        if pid is None:
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        if os.readlink(f"/proc/{entry}/exe") == binary:
                            with open(f"/proc/{entry}/cmdline", "rb") as f:
                                if b"process" in f.read().split(b"\0"):
                                    pid = entry
                                    break
                    except OSError:
                        pass
        if pid is not None:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            out.append(int(line.split()[1]))
            except OSError:
                pid = None
        stop.wait(0.02)


def write_jsonl(path, count, start=0):
    with open(path, "w") as out:
        out.writelines(f'{{"n":{n}}}\n' for n in range(start, start + count))


def count_rows(db, where="1 = 1", table="jobs"):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]
    finally:
        con.close()


def recount(con):
    """Counts the jobs written behind bgq's back into its kept counts (schema version 7: changes
    of state are counted by a trigger, but `publish` and `clear` count the rows they add and
    delete themselves, as these raw writes must)."""
    if con.execute("SELECT 1 FROM sqlite_schema WHERE name = 'job_counts'").fetchone():
        con.execute("DELETE FROM job_counts")
        con.execute("INSERT INTO job_counts (queue, callback, state, jobs) "
                    "SELECT queue, callback, state, count(*) FROM jobs "
                    "GROUP BY queue, callback, state")


class Bench:
    def __init__(self, args):
        self.args = args
        self.bgq_bin = os.path.abspath(args.bgq)
        self.root = tempfile.mkdtemp(prefix="bgq-bench-", dir=args.tmp)
        self.counter = 0
        self.rows = []  # the table
        self.raw = {}  # every figure, for --json-out
        self.templates = {}
        self.current_noise = "?"

    # -- folders and bgq ---------------------------------------------------------------------

    def fresh(self, name):
        """A new empty folder for one measurement."""
        self.counter += 1
        path = os.path.join(self.root, f"{self.counter:03d}-{name}")
        os.makedirs(path)
        return path

    def config(self, folder, command=("/bin/true",), concurrency=2, durability=None):
        """bgq.toml in folder: database and lock files inside it, one callback `cb`."""
        argv = ", ".join(json.dumps(part) for part in command)
        with open(os.path.join(folder, "bgq.toml"), "w") as out:
            out.write(
                'database = "db.sqlite"\n'
                'temp_dir = "."\n'
                + (f'durability = "{durability}"\n' if durability else "")
                + f"concurrency = {concurrency}\n"
                "[callbacks.cb]\n"
                f"command = [{argv}]\n"
            )
        return folder

    def bgq(self, folder, *args):
        return [self.bgq_bin, "--config", os.path.join(folder, "bgq.toml"), *map(str, args)]

    def db(self, folder):
        return os.path.join(folder, "db.sqlite")

    def publish_jsonl(self, folder, count, start=0):
        path = os.path.join(folder, f"jobs-{start}-{count}.jsonl")
        write_jsonl(path, count, start)
        out = check_run(self.bgq(folder, "publish", "cb", "--jsonl", path), stdout=subprocess.PIPE)
        if int(out.stdout) != count:
            raise RuntimeError(f"publish --jsonl stored {out.stdout!r} jobs, not {count}")
        os.unlink(path)

    # -- big databases -----------------------------------------------------------------------

    def template(self, kind):
        """A database with a million rows, built once per kind and copied for each use.

        bgq creates the database and its schema (one publish, whose row gives the payload
        bytes and is then deleted); the rows go in with one INSERT ... SELECT over a recursive
        counter, straight into `jobs`, as bgq itself would have left them:
        - "finished": 1,000,000 FINISHED jobs of the queue (due = 0, finished_at set);
        - "mixed": interleaved, 40 % FINISHED jobs of the queue, 30 % READY jobs of other
          queues (due = 1, in those queues' claim path), 30 % READY jobs of the queue scheduled
          ten years ahead (due = 0, run_at in the future).
        """
        if kind in self.templates:
            return self.templates[kind]
        n = self.args.big_rows
        folder = self.config(self.fresh(f"template-{kind}"))
        check_run(self.bgq(folder, "publish", "cb", "--json", '{"n":1}'))
        db = self.db(folder)
        start = now()
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("PRAGMA synchronous = OFF")
        payload = con.execute("SELECT payload FROM jobs").fetchone()[0]
        base = int(time.time() * 1000) - 3_600_000  # an hour ago, in ms
        future = base + 10 * 365 * 86_400_000
        con.execute("BEGIN")
        con.execute("DELETE FROM jobs")
        if kind == "finished":
            kind_of = "'F'"
        else:
            kind_of = "CASE WHEN x % 10 < 4 THEN 'F' WHEN x % 10 < 7 THEN 'O' ELSE 'S' END"
        con.execute(
            f"""
            WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n),
                 k(x, kind) AS (SELECT x, {kind_of} FROM c)
            INSERT INTO jobs (queue, callback, payload, state, attempts, created_at, run_at,
                              due, started_at, finished_at, claimed_run)
            SELECT CASE kind WHEN 'O' THEN 'other-' || (x % 7) ELSE 'general' END,
                   'cb', :payload,
                   CASE kind WHEN 'F' THEN 'FINISHED' ELSE 'READY' END,
                   CASE kind WHEN 'F' THEN 1 ELSE 0 END,
                   :base + x / 1000,
                   CASE kind WHEN 'S' THEN :future + x ELSE :base + x / 1000 END,
                   CASE kind WHEN 'O' THEN 1 ELSE 0 END,
                   CASE kind WHEN 'F' THEN :base + x / 1000 END,
                   CASE kind WHEN 'F' THEN :base + x / 1000 + 5 END,
                   0
            FROM k
            """,
            {"n": n, "payload": payload, "base": base, "future": future},
        )
        recount(con)
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        fsync_file(db)
        size = os.path.getsize(db)
        self.note(
            f"template {kind}: {n:,} rows, {size / 2**20:.0f} MiB, built in {now() - start:.1f} s"
        )
        self.templates[kind] = db
        return db

    def copy_of(self, kind, name):
        """A fresh folder holding a copy of a template database, synced so that no write-back
        of the copy lands inside a timed run."""
        template = self.template(kind)
        folder = self.config(self.fresh(name))
        shutil.copyfile(template, self.db(folder))
        os.chmod(self.db(folder), 0o600)
        fsync_file(self.db(folder))
        return folder

    # -- reporting ---------------------------------------------------------------------------

    def note(self, text):
        print(f"  {text}", flush=True)

    def row(self, target, what, bgq, ref, ratio, goal, ok):
        verdict = "PASS" if ok else "FAIL"
        if ok is None:
            verdict = "info"
        self.rows.append((target, what, bgq, ref, ratio, goal, verdict, self.current_noise))
        print(f"  => {target} {what}: bgq {bgq} | ref {ref} | ratio {ratio} | goal {goal} | {verdict}",
              flush=True)

    def skip(self, target, what, why):
        self.rows.append((target, what, "-", "-", "-", "-", f"SKIP ({why})", self.current_noise))
        print(f"  => {target} {what}: SKIPPED: {why}", flush=True)

    # -- target 1 ------------------------------------------------------------------------------

    def target1(self):
        """Draining 5,000 /bin/true jobs with concurrency 2, against xargs -P2 starting
        /bin/true 5,000 times."""
        n = self.args.t1_jobs
        ref_cmd = f"seq {n} | xargs -P2 -n1 /bin/true"
        bgq_t, ref_t, rss, bgq_cpu, ref_cpu = [], [], [], [], []
        for rep in range(self.args.reps):
            def run_bgq():
                folder = self.config(self.fresh("t1"))
                self.publish_jsonl(folder, n)
                t, kib, cpu = timed_rss(self.bgq(folder, "process"))
                bgq_cpu.append(cpu)
                done = count_rows(self.db(folder), "state = 'FINISHED'")
                if done != n:
                    raise RuntimeError(f"bgq process finished {done} jobs, not {n}")
                bgq_t.append(t)
                rss.append(kib)

            def run_ref():
                folder = self.fresh("t1-xargs")
                t, _, cpu = timed_rss(["bash", "-c", ref_cmd], cwd=folder)
                ref_t.append(t)
                ref_cpu.append(cpu)

            for step in ((run_bgq, run_ref) if rep % 2 == 0 else (run_ref, run_bgq)):
                step()
            self.note(f"rep {rep + 1}: bgq {bgq_t[-1]:.2f} s, xargs {ref_t[-1]:.2f} s")
        b, r, ratio = median(bgq_t), median(ref_t), paired_ratio(bgq_t, ref_t)
        self.raw["t1"] = {"bgq_s": bgq_t, "xargs_s": ref_t, "bgq_rss_kib": rss,
                          "bgq_cpu_s": bgq_cpu, "xargs_cpu_s": ref_cpu}
        self.raw["rss_empty_kib"] = max(rss) if None not in rss else None
        self.row("1", f"drain {n:,} × /bin/true, concurrency 2",
                 f"{b:.2f} s ({b / n * 1e6:.0f} µs/job)",
                 f"{r:.2f} s (`{ref_cmd}`)", f"{ratio:.2f}", "≤ 1.10", ratio <= 1.10)
        if None not in bgq_cpu + ref_cpu:
            # CPU time barely moves with the load of other processes: a steadier view of what
            # bgq adds per job than the wall time, though not the goal itself.
            bc, rc = median(bgq_cpu), median(ref_cpu)
            self.row("1", "same, CPU time (user + system, callbacks included)",
                     f"{bc:.2f} s ({bc / n * 1e6:.0f} µs/job)", f"{rc:.2f} s ({rc / n * 1e6:.0f} µs/job)",
                     f"{paired_ratio(bgq_cpu, ref_cpu):.2f}", "(info)", None)

    # -- target 18 (issue 18: batches) -------------------------------------------------------

    def target18(self):
        """Draining N /bin/true jobs of one sealed batch against N jobs of none, concurrency 2
        (issue 18: a batch's counters cost nothing measurable per job)."""
        n = self.args.t18_jobs
        plain_t, batch_t, plain_cpu, batch_cpu = [], [], [], []
        for rep in range(self.args.reps):
            def run_plain():
                folder = self.config(self.fresh("t18-plain"))
                self.publish_jsonl(folder, n)
                t, _, cpu = timed_rss(self.bgq(folder, "process"))
                if count_rows(self.db(folder), "state = 'FINISHED'") != n:
                    raise RuntimeError("not every job FINISHED")
                plain_t.append(t)
                plain_cpu.append(cpu)

            def run_batch():
                folder = self.config(self.fresh("t18-batch"))
                out = check_run(self.bgq(folder, "batch", "new", "--on-complete", "cb"),
                                stdout=subprocess.PIPE)
                batch = int(out.stdout)
                path = os.path.join(folder, "jobs.jsonl")
                write_jsonl(path, n)
                check_run(self.bgq(folder, "publish", "cb", "--jsonl", path, "--batch", batch),
                          stdout=subprocess.DEVNULL)
                check_run(self.bgq(folder, "batch", "seal", batch), stdout=subprocess.DEVNULL)
                t, _, cpu = timed_rss(self.bgq(folder, "process"))
                # Every member and the completion job, which the same run starts at the end.
                if count_rows(self.db(folder), "state = 'FINISHED'") != n + 1:
                    raise RuntimeError("not every job of the batch, or its completion, FINISHED")
                batch_t.append(t)
                batch_cpu.append(cpu)

            for step in ((run_plain, run_batch) if rep % 2 == 0 else (run_batch, run_plain)):
                step()
            self.note(f"rep {rep + 1}: no batch {plain_t[-1]:.2f} s, one batch {batch_t[-1]:.2f} s")
        b, r, ratio = median(batch_t), median(plain_t), paired_ratio(batch_t, plain_t)
        self.raw["t18"] = {"batch_s": batch_t, "plain_s": plain_t, "batch_cpu_s": batch_cpu,
                           "plain_cpu_s": plain_cpu}
        self.row("18", f"drain {n:,} × /bin/true in one batch vs in none, concurrency 2",
                 f"{b:.2f} s ({b / n * 1e6:.0f} µs/job)", f"{r:.2f} s ({r / n * 1e6:.0f} µs/job)",
                 f"{ratio:.2f}", "≤ 1.10", ratio <= 1.10)
        if None not in batch_cpu + plain_cpu:
            # CPU time barely moves with the load of other processes: the steadier view.
            bc, rc = median(batch_cpu), median(plain_cpu)
            self.row("18", "same, CPU time (user + system, callbacks included)",
                     f"{bc:.2f} s ({bc / n * 1e6:.0f} µs/job)",
                     f"{rc:.2f} s ({rc / n * 1e6:.0f} µs/job)",
                     f"{paired_ratio(batch_cpu, plain_cpu):.2f}", "(info)", None)

    # -- target 2 ------------------------------------------------------------------------------

    def target2(self):
        """300 sequential `bgq publish` processes against 300 sequential `sqlite3` CLI inserts
        into a WAL database with synchronous = FULL."""
        n = self.args.t2_publishes
        if not shutil.which("sqlite3"):
            raise Skip("sqlite3 CLI not installed")
        sql = ("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
               "INSERT INTO t(payload) VALUES ('{\"n\":1}');")
        bgq_t, ref_t = [], []
        for rep in range(self.args.reps):
            def run_bgq():
                folder = self.config(self.fresh("t2"))
                argv = self.bgq(folder, "publish", "cb", "--json", '{"n":1}')
                check_run(argv)  # creates the database; not timed
                start = now()
                for _ in range(n):
                    check_run(argv)
                bgq_t.append(now() - start)

            def run_ref():
                folder = self.fresh("t2-sqlite3")
                db = os.path.join(folder, "db.sqlite")
                check_run(["sqlite3", db, "PRAGMA journal_mode=WAL; "
                           "CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT NOT NULL);"])
                argv = ["sqlite3", "-batch", "-init", "/dev/null", db, sql]
                start = now()
                for _ in range(n):
                    check_run(argv)
                ref_t.append(now() - start)
                if count_rows(db, table="t") != n:
                    raise RuntimeError("sqlite3 reference lost rows")

            for step in ((run_bgq, run_ref) if rep % 2 == 0 else (run_ref, run_bgq)):
                step()
            self.note(f"rep {rep + 1}: bgq {bgq_t[-1]:.2f} s, sqlite3 {ref_t[-1]:.2f} s")
        b, r, ratio = median(bgq_t), median(ref_t), paired_ratio(bgq_t, ref_t)
        self.raw["t2"] = {"bgq_s": bgq_t, "sqlite3_s": ref_t}
        syncs = self.raw["t2_syncs"] = self.count_syncs()
        same = f"; fsyncs per call {syncs['bgq']} and {syncs['sqlite3']}" if syncs else ""
        self.row("2", f"{n} × one publish per process",
                 f"{b / n * 1000:.2f} ms/publish",
                 f"{r / n * 1000:.2f} ms/insert (sqlite3 CLI{same})",
                 f"{ratio:.2f}", "≤ 1.20", ratio <= 1.20)

    def count_syncs(self):
        """fsync/fdatasync calls of one bgq publish and one sqlite3 insert: the same count
        means the same durability work."""
        if not shutil.which("strace"):
            return None
        counts = {}
        folder = self.config(self.fresh("t2-strace"))
        check_run(self.bgq(folder, "publish", "cb", "--json", '{"n":1}'))
        db = os.path.join(folder, "ref.sqlite")
        check_run(["sqlite3", db, "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT);"])
        sql = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; INSERT INTO t(payload) VALUES ('{\"n\":1}');"
        for name, argv in (("bgq", self.bgq(folder, "publish", "cb", "--json", '{"n":1}')),
                           ("sqlite3", ["sqlite3", "-batch", "-init", "/dev/null", db, sql])):
            log = os.path.join(folder, f"{name}.strace")
            check_run(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", log, *argv])
            with open(log) as f:
                counts[name] = sum(1 for line in f if "sync(" in line)
        self.note(f"fsync/fdatasync per call: bgq publish {counts['bgq']}, sqlite3 insert {counts['sqlite3']}")
        return counts

    # -- target 3 ------------------------------------------------------------------------------

    def target3(self):
        """`bgq publish --jsonl` of 500,000 small jobs, in jobs per second."""
        n = self.args.t3_lines
        times = []
        for rep in range(self.args.reps):
            folder = self.config(self.fresh("t3"))
            check_run(self.bgq(folder, "publish", "cb", "--json", '{"n":1}'))
            path = os.path.join(folder, "jobs.jsonl")
            write_jsonl(path, n)
            t = timed(self.bgq(folder, "publish", "cb", "--jsonl", path))
            if count_rows(self.db(folder)) != n + 1:
                raise RuntimeError("publish --jsonl did not store every line")
            times.append(t)
            self.note(f"rep {rep + 1}: {n:,} jobs in {t:.2f} s = {n / t:,.0f} jobs/s")
            shutil.rmtree(folder)
        rate = n / median(times)
        self.raw["t3"] = {"seconds": times, "jobs_per_s": rate}
        self.row("3", f"publish --jsonl, {n:,} lines", f"{rate:,.0f} jobs/s",
                 "200,000 jobs/s (goal)", f"{rate / 200_000:.2f}", "≥ 1.00", rate >= 200_000)

    # -- target 4 ------------------------------------------------------------------------------

    def target4(self):
        """`process --max-jobs 500` with a million other rows, against an empty database."""
        n = self.args.t4_jobs
        big_t, empty_t = [], []
        self.template("mixed")
        for rep in range(self.args.reps):
            def run_big():
                folder = self.copy_of("mixed", "t4-big")
                self.publish_jsonl(folder, n)
                big_t.append(timed(self.bgq(folder, "process", "--max-jobs", n)))
                done = count_rows(self.db(folder), "state = 'FINISHED' AND claimed_run > 0")
                if done != n:
                    raise RuntimeError(f"process on the big database finished {done}, not {n}")
                shutil.rmtree(folder)

            def run_empty():
                folder = self.config(self.fresh("t4-empty"))
                self.publish_jsonl(folder, n)
                empty_t.append(timed(self.bgq(folder, "process", "--max-jobs", n)))
                if count_rows(self.db(folder), "state = 'FINISHED'") != n:
                    raise RuntimeError("process on the empty database left jobs")

            for step in ((run_big, run_empty) if rep % 2 == 0 else (run_empty, run_big)):
                step()
            self.note(f"rep {rep + 1}: 1M rows {big_t[-1]:.3f} s, empty {empty_t[-1]:.3f} s")
        b, e, ratio = median(big_t), median(empty_t), paired_ratio(big_t, empty_t)
        self.raw["t4"] = {"big_s": big_t, "empty_s": empty_t}
        self.row("4", f"process --max-jobs {n}, {self.args.big_rows:,} other rows",
                 f"{b:.3f} s", f"{e:.3f} s (empty database)", f"{ratio:.2f}", "≤ 1.20",
                 ratio <= 1.20)

    # -- target 5 ------------------------------------------------------------------------------

    def publish_loop(self, folder, stop, samples, gap=0.0, limit=None):
        """Publishes one job per process until stop is set (or limit reached); appends
        (start, seconds) per publish."""
        argv = self.bgq(folder, "publish", "cb", "--json", '{"n":1}')
        while not stop.is_set() and (limit is None or len(samples) < limit):
            start = now()
            check_run(argv)
            samples.append((start, now() - start))
            if gap:
                time.sleep(gap)

    def target5(self):
        """`clear` of a million FINISHED rows: its time alone, then the latency of
        back-to-back publishes while it runs."""
        n = self.args.big_rows
        self.template("finished")
        alone = []
        for rep in range(self.args.reps):
            folder = self.copy_of("finished", "t5-alone")
            start = now()
            proc = subprocess.run(self.bgq(folder, "clear"), stdout=subprocess.PIPE, check=True)
            t = now() - start
            if int(proc.stdout) != n:
                raise RuntimeError(f"clear deleted {proc.stdout!r}, not {n}")
            alone.append(t)
            self.note(f"rep {rep + 1}: clear alone {t:.2f} s")
            shutil.rmtree(folder)
        # With publishes running: baseline first (no clear), then during clear.
        folder = self.copy_of("finished", "t5-concurrent")
        base = []
        self.publish_loop(folder, threading.Event(), base, limit=50)
        base = [d for _, d in base]
        samples, stop = [], threading.Event()
        loop = threading.Thread(target=self.publish_loop, args=(folder, stop, samples))
        loop.start()
        time.sleep(0.3)
        start = now()
        proc = subprocess.run(self.bgq(folder, "clear"), stdout=subprocess.PIPE)
        end = now()
        stop.set()
        loop.join()
        if proc.returncode != 0 or int(proc.stdout) != n:
            raise RuntimeError(f"clear under publishes: exit {proc.returncode}, {proc.stdout!r}")
        during = [d for s, d in samples if s < end and s + d > start]
        with_pub = end - start
        self.note(f"clear with publishes {with_pub:.2f} s; {len(during)} publishes during it, "
                  f"max {max(during) * 1000:.1f} ms, median {median(during) * 1000:.1f} ms; "
                  f"alone: median {median(base) * 1000:.1f} ms, max {max(base) * 1000:.1f} ms")
        shutil.rmtree(folder)
        c = median(alone)
        worst = max(during)
        self.raw["t5"] = {"clear_alone_s": alone, "clear_with_publishes_s": with_pub,
                          "publish_during_s": during, "publish_baseline_s": base}
        self.row("5a", f"clear {n:,} FINISHED rows", f"{c:.2f} s",
                 f"{with_pub:.2f} s with publishes running", "-", "< 2 s", c < 2.0)
        self.row("5b", f"max publish latency during clear ({len(during)} publishes)",
                 f"{worst * 1000:.0f} ms",
                 f"{max(base) * 1000:.0f} ms max, {median(base) * 1000:.1f} ms median without clear",
                 "-", "< 100 ms", worst < 0.100)

    # -- target 6 ------------------------------------------------------------------------------

    def target6(self):
        """Peak RSS of `process` draining 5,000 jobs on the million-row database; p99 latency of
        200 publishes while a `process` runs `sleep 0.01` jobs."""
        n = self.args.t6_jobs
        folder = self.copy_of("mixed", "t6-rss")
        self.publish_jsonl(folder, n)
        hwm = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_hwm, args=(self.bgq_bin, stop, hwm))
        sampler.start()
        try:
            t, kib, _ = timed_rss(self.bgq(folder, "process"))
        finally:
            stop.set()
            sampler.join()
        done = count_rows(self.db(folder), "state = 'FINISHED' AND claimed_run > 0")
        if done != n:
            raise RuntimeError(f"process finished {done} jobs, not {n}")
        shutil.rmtree(folder)
        empty = self.raw.get("rss_empty_kib")
        own = max(hwm) if hwm else None
        self.note(f"process of {n:,} jobs on {self.args.big_rows:,} rows: {t:.2f} s; peak RSS "
                  + (f"{kib / 1024:.1f} MiB (GNU time %M)" if kib else "not measured (no GNU time)")
                  + "; VmHWM of bgq itself " + (f"{own / 1024:.1f} MiB" if own else "not sampled"))
        self.raw["t6_rss"] = {"kib": kib, "seconds": t, "empty_kib": empty, "vmhwm_kib": own}
        figure = kib or own
        if figure is None:
            raise RuntimeError("no peak RSS: neither GNU time nor /proc sampling worked")
        self.row("6a", f"peak RSS of process, {n:,} jobs, {self.args.big_rows:,} other rows",
                 f"{figure / 1024:.1f} MiB" + ("" if kib else " (VmHWM)"),
                 f"{empty / 1024:.1f} MiB on an empty database" if empty else "-",
                 "-", "< 20 MiB", figure < 20 * 1024)

        count = self.args.t6_publishes
        folder = self.config(self.fresh("t6-latency"), command=("sleep", "0.01"))
        self.publish_jsonl(folder, n)
        base = []
        self.publish_loop(folder, threading.Event(), base, limit=count)
        base = [d for _, d in base]
        proc = subprocess.Popen(self.bgq(folder, "process"), stderr=subprocess.PIPE)
        time.sleep(0.5)
        samples = []
        self.publish_loop(folder, threading.Event(), samples, gap=0.01, limit=count)
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        if not still_running:
            raise RuntimeError("process ended before the publishes did: publish more jobs")
        if proc.returncode != 0:
            raise RuntimeError(f"process exited {proc.returncode}: {err.decode()[-300:]}")
        during = [d for _, d in samples]
        self.note(f"{count} publishes during process: p99 {p99(during) * 1000:.1f} ms, max "
                  f"{max(during) * 1000:.1f} ms, median {median(during) * 1000:.1f} ms; without: p99 "
                  f"{p99(base) * 1000:.1f} ms, median {median(base) * 1000:.1f} ms")
        self.raw["t6_latency"] = {"during_s": during, "baseline_s": base}
        self.row("6b", f"p99 publish latency during process ({count} publishes)",
                 f"{p99(during) * 1000:.1f} ms",
                 f"{p99(base) * 1000:.1f} ms p99 without process", "-", "< 50 ms",
                 p99(during) < 0.050)

    # -- target 7 ------------------------------------------------------------------------------

    def target7(self):
        """1,000 jobs, one enqueue command each, then drained with 2 workers: bgq, pueue,
        task-spooler, huey (SQLite)."""
        n = self.args.t7_jobs
        results = {}
        tools = (("bgq", self.t7_bgq), ("task-spooler", self.t7_tsp),
                 ("pueue", self.t7_pueue), ("huey", self.t7_huey))
        wanted = self.args.t7_tools.split(",")
        for name, fn in tools:
            if name not in wanted:
                continue
            try:
                enq, drain = fn(n)
                results[name] = (enq, drain)
                self.note(f"{name}: enqueue {enq:.2f} s + drain {drain:.2f} s = {enq + drain:.2f} s")
            except Skip as why:
                self.skip("7", f"{name}, {n:,} jobs end to end", str(why))
            except Exception as err:  # one tool failing must not cost the others
                self.skip("7", f"{name}, {n:,} jobs end to end", f"error: {err}")
        self.raw["t7"] = {k: {"enqueue_s": e, "drain_s": d} for k, (e, d) in results.items()}
        if "bgq" not in results:
            return
        be, bd = results["bgq"]
        others = {k: v for k, v in results.items() if k != "bgq"}
        for name, (e, d) in sorted(results.items(), key=lambda kv: sum(kv[1])):
            if name == "bgq":
                continue
            self.row("7", f"vs {name}: enqueue + drain",
                     f"{be:.1f} + {bd:.1f} = {be + bd:.1f} s",
                     f"{e:.1f} + {d:.1f} = {e + d:.1f} s", f"{(be + bd) / (e + d):.2f}",
                     "< 1.00", (be + bd) < (e + d))
        if others:
            ranking = sorted(results, key=lambda k: sum(results[k]))
            self.raw["t7_ranking"] = ranking
            self.note("ranking: " + ", ".join(f"{k} {sum(results[k]):.1f} s" for k in ranking))

    def t7_bgq(self, n):
        folder = self.config(self.fresh("t7-bgq"))
        check_run(self.bgq(folder, "list"))  # creates the database, as a deployment has it
        start = now()
        for i in range(n):
            check_run(self.bgq(folder, "publish", "cb", "--json", f'{{"n":{i}}}'))
        enq = now() - start
        start = now()
        check_run(self.bgq(folder, "process"))
        drain = now() - start
        if count_rows(self.db(folder), "state = 'FINISHED'") != n:
            raise RuntimeError("bgq did not finish every job")
        return enq, drain

    def t7_tsp(self, n):
        if not shutil.which("tsp"):
            raise Skip("tsp (task-spooler) not installed")
        folder = self.fresh("t7-tsp")
        env = dict(os.environ, TS_SOCKET=os.path.join(folder, "socket"), TMPDIR=folder,
                   TS_MAXFINISHED=str(n + 10))
        env.pop("TS_SLOTS", None)
        try:
            # task-spooler keeps one waiting client process and connection per queued job and
            # accepts at most 1,000 connections (MAXCONN in its server.c): it cannot hold 1,000
            # queued jobs, so it cannot be paused while they are enqueued as the others are.
            # Its jobs run while the next ones are enqueued; "drain" is what is left after the
            # last enqueue. This favours it.
            check_run(["tsp", "-S", "2"], env=env)  # starts the server, outside the timing
            start = now()
            for _ in range(n):
                check_run(["tsp", "/bin/true"], env=env)
            enq = now() - start
            start = now()
            check_run(["tsp", "-w"], env=env)
            while True:
                listing = check_run(["tsp", "-l"], env=env, stdout=subprocess.PIPE).stdout.decode()
                if not any(w in listing for w in (" running ", " queued ")):
                    break
                time.sleep(0.005)
            drain = now() - start
            ok = sum(1 for line in listing.splitlines()
                     if " finished " in line and "/bin/true" in line and line.split()[3] == "0")
            if ok != n:
                raise RuntimeError(f"task-spooler finished {ok} jobs well, not {n}")
            return enq, drain
        finally:
            subprocess.run(["tsp", "-K"], env=env, stdout=DEVNULL, stderr=DEVNULL)

    def t7_pueue(self, n):
        if not (shutil.which("pueue") and shutil.which("pueued")):
            raise Skip("pueue/pueued not installed")
        folder = self.fresh("t7-pueue")
        config = os.path.join(folder, "pueue.yml")
        with open(config, "w") as out:
            out.write(
                "shared:\n"
                f"  pueue_directory: {folder}/data\n"
                f"  runtime_directory: {folder}/run\n"
                "  use_unix_socket: true\n"
                f"  unix_socket_path: {folder}/run/pueue.socket\n"
            )
        os.makedirs(os.path.join(folder, "data"))
        os.makedirs(os.path.join(folder, "run"))
        env = dict(os.environ, PUEUE_CONFIG_PATH=config)
        log = open(os.path.join(folder, "pueued.log"), "w")
        daemon = subprocess.Popen(["pueued"], env=env, stdout=log, stderr=log)
        try:
            deadline = now() + 20
            while subprocess.run(["pueue", "status"], env=env, stdout=DEVNULL,
                                 stderr=DEVNULL).returncode != 0:
                if now() > deadline or daemon.poll() is not None:
                    raise RuntimeError("pueued did not come up")
                time.sleep(0.05)
            check_run(["pueue", "parallel", "2"], env=env)
            check_run(["pueue", "pause"], env=env)  # jobs wait for the drain, as with the others
            start = now()
            for _ in range(n):
                check_run(["pueue", "add", "--", "/bin/true"], env=env)
            enq = now() - start
            start, wall_start = now(), time.time()
            check_run(["pueue", "start"], env=env)
            # `pueue wait` polls every 2 s; the drain ends at the last task's recorded end.
            check_run(["pueue", "wait", "--quiet"], env=env, timeout=self.args.t7_timeout)
            waited = now() - start
            status = json.loads(check_run(["pueue", "status", "--json"], env=env,
                                          stdout=subprocess.PIPE).stdout)
            done = [t["status"].get("Done", {}) for t in status["tasks"].values()
                    if isinstance(t["status"], dict)]
            ok = sum(1 for d in done if d.get("result") == "Success")
            if ok != n:
                raise RuntimeError(f"pueue finished {ok} tasks well, not {n}")
            last_end = max(parse_utc(d["end"]) for d in done)
            drain = min(waited, last_end - wall_start)
            return enq, drain
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pueue did not drain within {self.args.t7_timeout} s")
        finally:
            subprocess.run(["pueue", "shutdown"], env=env, stdout=DEVNULL, stderr=DEVNULL)
            try:
                daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            log.close()

    def t7_huey(self, n):
        probe = subprocess.run([PYTHON, "-c", "import huey"], stdout=DEVNULL, stderr=DEVNULL)
        if probe.returncode != 0:
            raise Skip(f"huey not importable by {PYTHON}")
        folder = self.fresh("t7-huey")
        db = os.path.join(folder, "huey.db")
        with open(os.path.join(folder, "tasks.py"), "w") as out:
            out.write(
                "import subprocess\n"
                "from huey import SqliteHuey\n"
                f"huey = SqliteHuey(filename={db!r})\n"
                "@huey.task()\n"
                "def run_true(n):\n"
                "    subprocess.run(['/bin/true'], check=True)\n"
                "    return n\n"
            )
        with open(os.path.join(folder, "enqueue.py"), "w") as out:
            out.write("import sys\nfrom tasks import run_true\nrun_true(int(sys.argv[1]))\n")
        enqueue = [PYTHON, os.path.join(folder, "enqueue.py")]
        check_run([PYTHON, "-c", "import tasks; tasks.huey.storage.queue_size()"], cwd=folder)
        start = now()
        for i in range(n):
            check_run([*enqueue, str(i)], cwd=folder)
        enq = now() - start
        if count_rows(db, table="task") != n:
            raise RuntimeError("huey did not store every task")
        log = open(os.path.join(folder, "consumer.log"), "w")
        start = now()
        consumer = subprocess.Popen(
            [PYTHON, "-m", "huey.bin.huey_consumer", "tasks.huey", "-w", "2", "-k", "thread"],
            cwd=folder, stdout=log, stderr=log)
        try:
            deadline = start + self.args.t7_timeout
            while count_rows(db, table="kv") < n:
                if consumer.poll() is not None:
                    raise RuntimeError(f"huey_consumer exited {consumer.returncode}")
                if now() > deadline:
                    raise RuntimeError(f"huey did not drain within {self.args.t7_timeout} s")
                time.sleep(0.02)
            drain = now() - start
        finally:
            consumer.send_signal(signal.SIGINT)
            try:
                consumer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                consumer.kill()
                consumer.wait()
            log.close()
        return enq, drain

    # -- issue 17 ------------------------------------------------------------------------------

    def loop_time(self, argv, n):
        """Seconds for one shell to run argv n times in a row, each its own process; the
        shell's fork and exec are in the figure, as they are in the reference's."""
        script = 'for i in $(seq "$1"); do "${@:2}" >/dev/null || exit 1; done'
        return timed(["bash", "-c", script, "loop", str(n), *map(str, argv)])

    def publish_vs_dd(self, key, durability, dsync):
        """300 publishes (each its own process) against 300 dd appends of 100 bytes."""
        n = self.args.t2_publishes
        dd_flags = "append,dsync" if dsync else "append"
        bgq_t, ref_t = [], []
        for rep in range(self.args.reps):
            def run_bgq():
                folder = self.config(self.fresh(f"t{key}"), durability=durability)
                argv = self.bgq(folder, "publish", "cb", "--json", '{"n":1}')
                check_run(argv)  # creates the database; not timed
                bgq_t.append(self.loop_time(argv, n))
                if count_rows(self.db(folder)) != n + 1:
                    raise RuntimeError("a publish was lost")

            def run_ref():
                folder = self.fresh(f"t{key}-dd")
                target = os.path.join(folder, "F")
                check_run(["dd", "if=/dev/zero", f"of={target}", "bs=100", "count=1",
                           f"oflag={dd_flags}", "conv=notrunc", "status=none"])
                ref_t.append(self.loop_time(
                    ["dd", "if=/dev/zero", f"of={target}", "bs=100", "count=1",
                     f"oflag={dd_flags}", "conv=notrunc", "status=none"], n))
                if os.path.getsize(target) != 100 * (n + 1):
                    raise RuntimeError("dd did not append every time")

            for step in ((run_bgq, run_ref) if rep % 2 == 0 else (run_ref, run_bgq)):
                step()
            self.note(f"rep {rep + 1}: bgq {bgq_t[-1]:.3f} s, dd {ref_t[-1]:.3f} s")
        self.raw[f"t{key}"] = {"bgq_s": bgq_t, "dd_s": ref_t}
        return bgq_t, ref_t, n, dd_flags

    def target17_1(self):
        """Issue 17.1: 300 durable publishes, each its own process, against 300 `dd
        oflag=append,dsync` of 100 bytes."""
        bgq_t, ref_t, n, flags = self.publish_vs_dd("17.1", None, True)
        ratio = paired_ratio(bgq_t, ref_t)
        syncs = self.raw["t17.1_syncs"] = self.count_syncs()
        fsyncs = f", {syncs['bgq']} fsync/fdatasync per publish" if syncs else ""
        self.row("17.1", f"{n} × durable publish (one process each{fsyncs})",
                 f"{median(bgq_t) / n * 1000:.2f} ms/publish",
                 f"{median(ref_t) / n * 1000:.2f} ms/append (`dd oflag={flags} conv=notrunc`)",
                 f"{ratio:.2f}", "≤ 1.50 (stretch 1.25)", ratio <= 1.50)

    def target17_3(self):
        """Issue 17.3: 300 publishes with durability = "normal" against 300 `dd oflag=append`
        (no sync) of 100 bytes."""
        bgq_t, ref_t, n, flags = self.publish_vs_dd("17.3", "normal", False)
        ratio = paired_ratio(bgq_t, ref_t)
        self.row("17.3", f'{n} × publish, durability = "normal"',
                 f"{median(bgq_t) / n * 1000:.2f} ms/publish",
                 f"{median(ref_t) / n * 1000:.2f} ms/append (`dd oflag={flags} conv=notrunc`)",
                 f"{ratio:.2f}", "≤ 1.20", ratio <= 1.20)

    def target17_2(self):
        """Issue 17.2: 1,000 jobs published one command at a time while `process --watch`
        (concurrency 2) runs them, until the last is FINISHED, against task-spooler."""
        n = self.args.t7_jobs
        bgq_t, tsp_t = [], []
        for rep in range(self.args.reps):
            def run_bgq():
                bgq_t.append(self.t17_2_bgq(n))

            def run_tsp():
                enq, drain = self.t7_tsp(n)
                tsp_t.append(enq + drain)

            for step in ((run_bgq, run_tsp) if rep % 2 == 0 else (run_tsp, run_bgq)):
                step()
            self.note(f"rep {rep + 1}: bgq {bgq_t[-1]:.2f} s, task-spooler {tsp_t[-1]:.2f} s")
        self.raw["t17.2"] = {"bgq_s": bgq_t, "tsp_s": tsp_t}
        b, t, ratio = median(bgq_t), median(tsp_t), paired_ratio(bgq_t, tsp_t)
        self.row("17.2", f"{n:,} publishes while process --watch runs them, to the last FINISHED",
                 f"{b:.2f} s", f"{t:.2f} s (task-spooler `tsp -S 2`, {n:,} `tsp` calls)",
                 f"{ratio:.2f}", "< 1.00", ratio < 1.0)

    def t17_2_bgq(self, n):
        if not shutil.which("tsp"):
            raise Skip("tsp (task-spooler) not installed")
        folder = self.config(self.fresh("t17.2-bgq"))
        check_run(self.bgq(folder, "list"))  # creates the database, as a deployment has it
        watcher = subprocess.Popen(self.bgq(folder, "process", "--watch"), stderr=subprocess.PIPE)
        try:
            start = now()
            for i in range(n):
                check_run(self.bgq(folder, "publish", "cb", "--json", f'{{"n":{i}}}'))
            deadline = now() + self.args.t7_timeout
            while count_rows(self.db(folder), "state = 'FINISHED'") < n:
                if watcher.poll() is not None or now() > deadline:
                    raise RuntimeError("process --watch did not finish every job")
                time.sleep(0.002)
            return now() - start
        finally:
            watcher.send_signal(signal.SIGTERM)
            _, err = watcher.communicate(timeout=60)
            if watcher.returncode != 0:
                raise RuntimeError(f"process --watch exited {watcher.returncode}: {err.decode()[-300:]}")

    # -- read commands at scale (issue 17, point 5) ------------------------------------------

    def mixed_states(self, n, name):
        """A folder whose database holds n jobs as a queue that `clear` has not pruned: 97 %
        FINISHED, the rest in every other state (due READY, READY scheduled ahead, TEMPORARILY_
        FAILED, WAITING, PERMANENTLY_FAILED, CANCELLED, PROCESSING), over four queues and two
        callbacks, inserted straight into `jobs` (and counted as bgq would have), then one
        `process --max-jobs 1` run so that every queue read has a last run."""
        folder = self.config(self.fresh(name))
        with open(os.path.join(folder, "bgq.toml"), "a") as out:
            out.write('[callbacks.cb2]\ncommand = ["/bin/true"]\n')
        check_run(self.bgq(folder, "publish", "cb", "--json", '{"n":1}'))
        con = sqlite3.connect(self.db(folder), isolation_level=None)
        con.execute("PRAGMA synchronous = OFF")
        payload = con.execute("SELECT payload FROM jobs").fetchone()[0]
        base = int(time.time() * 1000) - 3_600_000
        future = base + 10 * 365 * 86_400_000
        con.execute("BEGIN")
        con.execute("DELETE FROM jobs")
        con.execute(
            """
            WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n),
                 k(x, kind) AS (SELECT x, CASE
                     WHEN x % 1000 < 970 THEN 'FINISHED' WHEN x % 1000 < 975 THEN 'DUE'
                     WHEN x % 1000 < 980 THEN 'LATER' WHEN x % 1000 < 984 THEN 'TEMPORARILY_FAILED'
                     WHEN x % 1000 < 988 THEN 'WAITING' WHEN x % 1000 < 993 THEN 'PERMANENTLY_FAILED'
                     WHEN x % 1000 < 998 THEN 'CANCELLED' ELSE 'PROCESSING' END FROM c)
            INSERT INTO jobs (queue, callback, payload, state, attempts, created_at, run_at,
                              due, started_at, finished_at, state_changed_at, claimed_run)
            SELECT CASE x % 5 WHEN 0 THEN 'other-' || (x % 3) ELSE 'general' END,
                   CASE x % 2 WHEN 0 THEN 'cb' ELSE 'cb2' END, :payload,
                   CASE WHEN kind IN ('DUE', 'LATER') THEN 'READY' ELSE kind END,
                   CASE WHEN kind IN ('DUE', 'LATER') THEN 0 ELSE 1 END,
                   :base + x / 1000,
                   CASE WHEN kind IN ('FINISHED', 'DUE', 'PERMANENTLY_FAILED', 'CANCELLED',
                                      'PROCESSING') THEN :base + x / 1000 ELSE :future + x END,
                   CASE kind WHEN 'DUE' THEN 1 ELSE 0 END,
                   CASE WHEN kind IN ('DUE', 'LATER') THEN NULL ELSE :base + x / 1000 END,
                   CASE WHEN kind IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED')
                        THEN :base + x / 1000 + 5 END,
                   :base + x / 1000 + 5, 0
            FROM k
            """,
            {"n": n, "payload": payload, "base": base, "future": future},
        )
        recount(con)
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        check_run(self.bgq(folder, "process", "--max-jobs", 1))
        fsync_file(self.db(folder))
        return folder

    def target_reads(self):
        """`stats` (each format) and `status` on a million jobs that `clear` has not pruned,
        against the same on 1,000 jobs of the same mix."""
        big_n, small_n = self.args.big_rows, 1000
        start = now()
        big = self.mixed_states(big_n, "reads-big")
        small = self.mixed_states(small_n, "reads-small")
        size = os.path.getsize(self.db(big))
        self.note(f"{big_n:,} rows ({size / 2**20:.0f} MiB) and {small_n:,} rows built in "
                  f"{now() - start:.1f} s")
        reps = max(self.args.reps, 7)
        commands = [("stats",), ("stats", "--json"), ("stats", "--prometheus"), ("status",)]
        for command in commands:
            argv_big, argv_small = self.bgq(big, *command), self.bgq(small, *command)
            out_big = subprocess.run(argv_big, stdout=subprocess.PIPE, stderr=DEVNULL)
            out_small = subprocess.run(argv_small, stdout=subprocess.PIPE, stderr=DEVNULL)
            if command[0] == "stats" and (out_big.returncode or out_small.returncode):
                raise RuntimeError(f"{' '.join(command)} failed")
            if command == ("stats", "--json"):
                counted = sum(sum(q["jobs"].values()) for q in json.loads(out_big.stdout)["queues"])
                if counted != big_n:
                    raise RuntimeError(f"stats --json counts {counted} jobs, not {big_n}")
            big_t, small_t = [], []
            for rep in range(reps):
                pair = ((argv_big, big_t), (argv_small, small_t))
                for argv, times in (pair if rep % 2 == 0 else pair[::-1]):
                    t0 = now()
                    subprocess.run(argv, stdout=DEVNULL, stderr=DEVNULL)
                    times.append(now() - t0)
            b, sm, ratio = median(big_t), median(small_t), paired_ratio(big_t, small_t)
            what = " ".join(command)
            self.raw.setdefault("reads", {})[what] = {"big_s": big_t, "small_s": small_t}
            self.note(f"{what}: {b * 1000:.1f} ms on {big_n:,}, {sm * 1000:.1f} ms on {small_n:,}")
            self.row("17.5a", f"`{what}`, {big_n:,} jobs (97 % FINISHED)", f"{b * 1000:.1f} ms",
                     f"{sm * 1000:.1f} ms ({small_n:,} jobs)", f"{ratio:.2f}", "≤ 3.00",
                     ratio <= 3.0)

    def serial_group(self, blocked, others, name):
        """A folder whose queue holds a serial group held by a PERMANENTLY_FAILED head whose
        callback says serial_failure = "block", with `blocked` READY jobs behind it, then
        `others` READY jobs outside any group, published after them."""
        folder = self.config(self.fresh(name))
        with open(os.path.join(folder, "bgq.toml"), "a") as out:
            out.write('serial_failure = "block"\n')
        check_run(self.bgq(folder, "publish", "cb", "--json", '{"n":1}'))
        con = sqlite3.connect(self.db(folder), isolation_level=None)
        payload = con.execute("SELECT payload FROM jobs").fetchone()[0]
        base = int(time.time() * 1000) - 3_600_000
        con.execute("BEGIN")
        con.execute("DELETE FROM jobs")
        con.execute(
            """INSERT INTO jobs (queue, callback, payload, state, attempts, serial_group,
                                 created_at, run_at, due, finished_at, state_changed_at)
               VALUES ('general', 'cb', :payload, 'PERMANENTLY_FAILED', 1, 'g', :base, :base,
                       0, :base, :base)""",
            {"payload": payload, "base": base},
        )
        con.execute(
            """WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
               INSERT INTO jobs (queue, callback, payload, serial_group, created_at, run_at, due)
               SELECT 'general', 'cb', :payload, 'g', :base, :base, 1 FROM c""",
            {"n": blocked, "payload": payload, "base": base},
        )
        recount(con)
        con.execute("COMMIT")
        con.close()
        self.publish_jsonl(folder, others)
        fsync_file(self.db(folder))
        return folder

    def target_serial(self):
        """`process` claims with a serial group of 10,000 blocked jobs in the queue, against a
        group of 10."""
        many, few, n = 10_000, 10, self.args.t4_jobs
        many_t, few_t = [], []
        for rep in range(self.args.reps):
            def run(blocked, times):
                folder = self.serial_group(blocked, n, f"serial-{blocked}")
                times.append(timed(self.bgq(folder, "process", "--max-jobs", n)))
                done = count_rows(self.db(folder), "state = 'FINISHED'")
                left = count_rows(self.db(folder), "state = 'READY' AND serial_group = 'g'")
                if (done, left) != (n, blocked):
                    raise RuntimeError(f"finished {done} (not {n}), group left {left} "
                                       f"(not {blocked})")
                shutil.rmtree(folder)

            steps = ((many, many_t), (few, few_t))
            for blocked, times in (steps if rep % 2 == 0 else steps[::-1]):
                run(blocked, times)
            self.note(f"rep {rep + 1}: {many:,} blocked {many_t[-1]:.3f} s, "
                      f"{few} blocked {few_t[-1]:.3f} s")
        m, f, ratio = median(many_t), median(few_t), paired_ratio(many_t, few_t)
        self.raw["serial"] = {"many_s": many_t, "few_s": few_t}
        self.row("17.5b", f"process --max-jobs {n} beside a group of {many:,} blocked jobs",
                 f"{m / n * 1000:.2f} ms/claim", f"{f / n * 1000:.2f} ms/claim ({few} blocked)",
                 f"{ratio:.2f}", "≤ 1.20", ratio <= 1.20)

    # -- run -----------------------------------------------------------------------------------

    def run(self):
        targets = {
            "1": self.target1, "2": self.target2, "3": self.target3, "4": self.target4,
            "5": self.target5, "6": self.target6, "7": self.target7,
            "17.1": self.target17_1, "17.2": self.target17_2, "17.3": self.target17_3,
            "18": self.target18,
            "17.5a": self.target_reads, "17.5b": self.target_serial,
        }
        chosen = self.args.only.split(",") if self.args.only else list(targets)
        self.wait_budget = self.args.wait_idle
        self.quiet()
        busy0, total0 = cpu_busy()
        own0 = own_cpu()
        started = now()
        try:
            for key in chosen:
                fn = targets[key]
                print(f"\n== target {key}: {fn.__doc__.split(chr(10))[0]}", flush=True)
                self.quiet()
                t0 = now()
                b0, all0 = cpu_busy()
                o0 = own_cpu()
                first_row = len(self.rows)
                self.current_noise = "?"
                try:
                    fn()
                except Skip as why:
                    self.skip(key, fn.__doc__.split(",")[0], str(why))
                except Exception as err:
                    self.skip(key, "(whole target)", f"error: {err}")
                b1, all1 = cpu_busy()
                share = max(0.0, (b1 - b0) - (own_cpu() - o0)) / max(all1 - all0, 1e-9)
                self.raw.setdefault("other_cpu_share", {})[key] = share
                self.rows[first_row:] = [r[:7] + (f"{share:.0%}",) for r in self.rows[first_row:]]
                print(f"  ({now() - t0:.0f} s; CPU used by other processes meanwhile: {share:.0%})",
                      flush=True)
        finally:
            if self.args.keep:
                print(f"\nkept {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)
        self.raw["total_s"] = now() - started
        busy1, total1 = cpu_busy()
        others = max(0.0, (busy1 - busy0) - (own_cpu() - own0))
        share = others / max(total1 - total0, 1e-9)
        self.raw["other_cpu_share_total"] = share
        self.print_table()
        print(f"CPU used by processes outside the benchmark while it ran: {share:.0%} of the "
              f"machine{' (noisy run: figures may be off)' if share > 0.05 else ''}")
        if self.args.json_out:
            with open(self.args.json_out, "w") as out:
                json.dump({"rows": self.rows, "raw": self.raw}, out, indent=1)

    def quiet(self):
        """Waits for other processes to leave the CPU, within what is left of --wait-idle."""
        if self.wait_budget <= 0:
            return
        start = now()
        share = wait_for_quiet(self.wait_budget)
        self.wait_budget -= now() - start
        if share > 0.15:
            print(f"  going on although other processes use {share:.0%} of the CPU", flush=True)

    def print_table(self):
        head = ("#", "measure", "bgq", "reference", "ratio", "goal", "result", "others' CPU")
        rows = [head] + [tuple(map(str, r)) for r in self.rows]
        print(f"\nResults ({self.raw['total_s']:.0f} s of measuring, median of {self.args.reps} "
              "where repeated):\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for r in rows[1:]:
            print("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
        print("\nratio: bgq over the reference (for repeated runs, the median of the ratios of "
              "runs made side by side); others' CPU: share of the machine that processes "
              "outside the benchmark used during that target (high: the figures are disturbed)")
        fails = [r for r in self.rows if r[6] == "FAIL"]
        skips = [r for r in self.rows if r[6].startswith("SKIP")]
        print(f"\n{sum(r[6] == 'PASS' for r in self.rows)} pass, {len(fails)} fail, "
              f"{len(skips)} skipped")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bgq", default="target/release/bgq")
    p.add_argument("--only", help="comma-separated targets, e.g. 1,4")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tmp", default=None, help="where the temporary folders go")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    p.add_argument("--wait-idle", type=float, default=60,
                   help="wait up to this many seconds in all (before each target) for other "
                        "processes to leave the CPU")
    p.add_argument("--json-out")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, to check that the script works (figures not comparable)")
    p.add_argument("--big-rows", type=int, default=1_000_000)
    p.add_argument("--t1-jobs", type=int, default=5000)
    p.add_argument("--t2-publishes", type=int, default=300)
    p.add_argument("--t3-lines", type=int, default=500_000)
    p.add_argument("--t4-jobs", type=int, default=500)
    p.add_argument("--t6-jobs", type=int, default=5000)
    p.add_argument("--t6-publishes", type=int, default=200)
    p.add_argument("--t7-jobs", type=int, default=1000)
    p.add_argument("--t18-jobs", type=int, default=100_000)
    p.add_argument("--t7-timeout", type=float, default=300)
    p.add_argument("--t7-tools", default="bgq,task-spooler,pueue,huey",
                   help="which of bgq,task-spooler,pueue,huey target 7 runs")
    args = p.parse_args()
    if args.quick:
        args.reps = 1
        args.big_rows, args.t1_jobs, args.t2_publishes, args.t3_lines = 50_000, 200, 30, 20_000
        args.t4_jobs, args.t6_jobs, args.t6_publishes, args.t7_jobs = 100, 500, 30, 30
        args.t18_jobs = 500
    if not os.access(args.bgq, os.X_OK):
        sys.exit(f"bench: no bgq binary at {args.bgq}")
    Bench(args).run()


if __name__ == "__main__":
    main()
