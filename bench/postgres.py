#!/usr/bin/env python3
"""Issue 15's speed targets on PostgreSQL, each against its reference in the same run.

Called by bench/postgres.sh, which builds the binaries and starts a throwaway server; usable
alone against any server where the role may create schemas:

    python3 bench/postgres.py --bgq NEW_BGQ --old-bgq OLD_BGQ --url postgres://... [--quick]

Reuses bench/bench.py's helpers (timing, GNU time's peak RSS, VmHWM sampling, the quiet wait,
the table and the "others' CPU" column). Every measurement gets a schema of its own
(`pgb_<pid>_<n>`), dropped at the end, and a folder for its config and lock files. Short
measurements run --reps times with bgq and its reference alternating; a ratio is the median of
the ratios of runs made side by side.

Targets (numbers as in the issue):
  1  a claim costs the same with 1,000,000 FINISHED rows in the table as with none
  2  drain 5,000 /bin/true against xargs -P2; two runs (two "hosts") against one, sleep 0.02
  3  one publish per process against one `psql -c "INSERT ..."` per process
  4  peak RSS of `process` draining 5,000 jobs
  5  the build before the PostgreSQL backend (f2828c3) against this one: --version and
     SQLite publishes, interleaved, and the binary sizes
  r  round trips (sendto calls, strace): one publish, one claimed job of a drain
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the helpers of bench/bench.py)
from bench import (  # noqa: E402
    Skip, check_run, median, now, paired_ratio, sample_hwm, timed, timed_rss, write_jsonl,
)

PSQL = shutil.which("psql") or "psql"


def server_cpu(postmaster):
    """CPU seconds of the PostgreSQL server: the postmaster with the backends it has reaped,
    and every live process under it. The bench's own server is not a child of this script, so
    without this its work would count as "others' CPU"."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == postmaster:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def spread(values, fmt="{:.2f}"):
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}"


class PgBench(bench.Bench):
    def __init__(self, args):
        super().__init__(args)
        self.url = args.url
        self.old_bin = os.path.abspath(args.old_bgq) if args.old_bgq else None
        self.schemas = []
        self.prefix = f"pgb_{os.getpid()}"

    # -- the server --------------------------------------------------------------------------

    def psql(self, sql):
        """Runs sql (one or more statements) and returns the unaligned output."""
        out = check_run([PSQL, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", self.url, "-c", sql],
                        stdout=subprocess.PIPE)
        return out.stdout.decode().strip()

    def new_schema(self):
        name = f"{self.prefix}_{len(self.schemas)}"
        self.schemas.append(name)
        return name

    def drop_schemas(self):
        for name in self.schemas:
            try:
                self.psql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
            except Exception as err:  # the table still gets printed
                print(f"  (could not drop schema {name}: {err})")

    # -- configs -----------------------------------------------------------------------------

    def pg_config(self, folder, schema, command=("/bin/true",), concurrency=2):
        """bgq.toml in folder: the server's URL, schema `schema`, lock files in the folder."""
        argv = ", ".join(json.dumps(part) for part in command)
        with open(os.path.join(folder, "bgq.toml"), "w") as out:
            out.write(
                f"database = {json.dumps(self.url)}\n"
                f'schema = "{schema}"\n'
                f"temp_dir = {json.dumps(folder)}\n"
                f"concurrency = {concurrency}\n"
                "[callbacks.cb]\n"
                f"command = [{argv}]\n"
            )
        return folder

    def pg_setup(self, name, **kw):
        """A fresh folder and schema with its config; the schema is created by bgq (one
        publish, whose job is deleted again)."""
        schema = self.new_schema()
        folder = self.pg_config(self.fresh(name), schema, **kw)
        check_run(self.bgq(folder, "publish", "cb", "--json", '{"n":1}'))
        self.psql(f"DELETE FROM {schema}.jobs")
        return folder, schema

    def bgq_as(self, binary, folder, *args):
        return [binary, "--config", os.path.join(folder, "bgq.toml"), *map(str, args)]

    def finished(self, schema, above=0):
        return int(self.psql(f"SELECT count(*) FROM {schema}.jobs "
                             f"WHERE state = 'FINISHED' AND id > {above}"))

    def publish_n(self, folder, n):
        self.publish_jsonl(folder, n)

    # -- target 1 ----------------------------------------------------------------------------

    def target1(self):
        """A claim with 1,000,000 other rows costs what it costs with none, drain of 2,000 jobs"""
        n, big = self.args.t1_jobs, self.args.big_rows
        empty_dir, empty = self.pg_setup("t1-empty")
        big_dir, bigs = self.pg_setup("t1-big")
        start = now()
        # As bgq leaves a FINISHED job (see src/store/postgres/schema.sql): not due, not blocked, an empty
        # output, started and finished an hour ago; payload {"n":1} in MessagePack.
        self.psql(f"""
            INSERT INTO {bigs}.jobs (queue, callback, payload, state, attempts, created_at,
                                     run_at, due, started_at, finished_at, claimed_run,
                                     state_changed_at, output)
            SELECT 'general', 'cb', '\\x81a16e01'::bytea, 'FINISHED', 1, b + x / 1000,
                   b + x / 1000, false, b + x / 1000, b + x / 1000 + 5, 1, b + x / 1000 + 5,
                   '\\x'::bytea
            FROM generate_series(1, {big}) x,
                 (SELECT (extract(epoch FROM now()) * 1000)::bigint - 3600000 AS b) t""")
        self.psql(f"VACUUM ANALYZE {bigs}.jobs")
        self.psql(f"VACUUM ANALYZE {empty}.jobs")
        size = self.psql(f"SELECT pg_size_pretty(pg_total_relation_size('{bigs}.jobs'))")
        floor = {s: int(self.psql(f"SELECT coalesce(max(id), 0) FROM {s}.jobs"))
                 for s in (empty, bigs)}
        self.note(f"{big:,} FINISHED rows inserted and VACUUM ANALYZEd in {now() - start:.1f} s "
                  f"(table and indexes {size})")
        big_t, empty_t = [], []

        def drain(folder, schema, out):
            self.publish_n(folder, n)
            out.append(timed(self.bgq(folder, "process")))
            done = self.finished(schema, floor[schema])
            if done != n:
                raise RuntimeError(f"process finished {done} jobs, not {n}")
            # Back to the state before, as autovacuum would leave it (not timed).
            self.psql(f"DELETE FROM {schema}.jobs WHERE id > {floor[schema]}")
            self.psql(f"VACUUM ANALYZE {schema}.jobs")

        for rep in range(self.args.reps):
            steps = [lambda: drain(big_dir, bigs, big_t), lambda: drain(empty_dir, empty, empty_t)]
            for step in (steps if rep % 2 == 0 else steps[::-1]):
                step()
            self.note(f"rep {rep + 1}: {big:,} rows {big_t[-1]:.3f} s, empty {empty_t[-1]:.3f} s")
        b, e, ratio = median(big_t), median(empty_t), paired_ratio(big_t, empty_t)
        ratios = [x / y for x, y in zip(big_t, empty_t)]
        self.raw["t1"] = {"big_s": big_t, "empty_s": empty_t, "rows": big, "jobs": n}
        self.row("1", f"drain {n:,} × /bin/true (conc. 2), {big:,} FINISHED rows",
                 f"{b / n * 1e6:.0f} µs/job ({b:.2f} s; {spread(big_t)})",
                 f"{e / n * 1e6:.0f} µs/job ({e:.2f} s; {spread(empty_t)}), empty schema",
                 f"{ratio:.2f} ({spread(ratios)})", "≤ 1.20", ratio <= 1.20)

    # -- target 2 ----------------------------------------------------------------------------

    def target2(self):
        """Drain 5,000 /bin/true against xargs -P2, and two hosts against one"""
        n = self.args.t2_jobs
        ref_cmd = f"seq {n} | xargs -P2 -n1 /bin/true"
        bgq_t, ref_t, rss, hwm, bgq_cpu, ref_cpu = [], [], [], [], [], []
        for rep in range(self.args.reps):
            def run_bgq():
                folder, schema = self.pg_setup("t2")
                self.publish_n(folder, n)
                stop, samples = threading.Event(), []
                sampler = threading.Thread(target=sample_hwm, args=(self.bgq_bin, stop, samples))
                sampler.start()
                try:
                    t, kib, cpu = timed_rss(self.bgq(folder, "process"))
                finally:
                    stop.set()
                    sampler.join()
                done = self.finished(schema)
                if done != n:
                    raise RuntimeError(f"process finished {done} jobs, not {n}")
                bgq_t.append(t)
                rss.append(kib)
                hwm.append(max(samples) if samples else None)
                bgq_cpu.append(cpu)

            def run_ref():
                t, _, cpu = timed_rss(["bash", "-c", ref_cmd], cwd=self.fresh("t2-xargs"))
                ref_t.append(t)
                ref_cpu.append(cpu)

            for step in ((run_bgq, run_ref) if rep % 2 == 0 else (run_ref, run_bgq)):
                step()
            self.note(f"rep {rep + 1}: bgq {bgq_t[-1]:.2f} s, xargs {ref_t[-1]:.2f} s, "
                      f"peak RSS {rss[-1]} KiB (VmHWM of bgq {hwm[-1]} KiB)")
        b, r, ratio = median(bgq_t), median(ref_t), paired_ratio(bgq_t, ref_t)
        ratios = [x / y for x, y in zip(bgq_t, ref_t)]
        self.raw["t2a"] = {"bgq_s": bgq_t, "xargs_s": ref_t, "rss_kib": rss, "vmhwm_kib": hwm,
                           "bgq_cpu_s": bgq_cpu, "xargs_cpu_s": ref_cpu}
        self.row("2a", f"drain {n:,} × /bin/true, concurrency 2",
                 f"{b:.2f} s ({b / n * 1e6:.0f} µs/job; {spread(bgq_t)})",
                 f"{r:.2f} s (`{ref_cmd}`; {spread(ref_t)})",
                 f"{ratio:.2f} ({spread(ratios)})", "≤ 1.30", ratio <= 1.30)
        if None not in bgq_cpu + ref_cpu:
            bc, rc = median(bgq_cpu), median(ref_cpu)
            self.row("2a", "same, CPU time of bgq's tree (user + system; the server's not counted)",
                     f"{bc:.2f} s ({bc / n * 1e6:.0f} µs/job)",
                     f"{rc:.2f} s ({rc / n * 1e6:.0f} µs/job)",
                     f"{paired_ratio(bgq_cpu, ref_cpu):.2f}", "(info)", None)
        # Target 4 is read off these runs.
        self.t4 = (rss, hwm, n)
        self.two_hosts()

    def two_hosts(self):
        n = self.args.t2_sleep_jobs
        command = ("/bin/sleep", "0.02")
        one_t, two_t, shares = [], [], []

        def run_one():
            folder, schema = self.pg_setup("t2-one", command=command)
            self.publish_n(folder, n)
            env = dict(os.environ, BGQ_HOST_ID="bench-host-a")
            one_t.append(timed(self.bgq(folder, "process"), env=env))
            if self.finished(schema) != n:
                raise RuntimeError("one run left jobs unfinished")

        def run_two():
            a, schema = self.pg_setup("t2-two-a", command=command)
            b = self.pg_config(self.fresh("t2-two-b"), schema, command=command)
            self.publish_n(a, n)
            procs, errs = [], []
            start = now()
            for folder, host in ((a, "bench-host-a"), (b, "bench-host-b")):
                err = open(os.path.join(folder, "process.err"), "w+")
                errs.append(err)
                procs.append(subprocess.Popen(self.bgq(folder, "process"), stdout=err, stderr=err,
                                              env=dict(os.environ, BGQ_HOST_ID=host)))
            for p in procs:
                p.wait(timeout=900)
            two_t.append(now() - start)
            for p, err in zip(procs, errs):
                if p.returncode != 0:
                    err.seek(0)
                    raise RuntimeError(f"second host's process exited {p.returncode}: {err.read()[-400:]}")
            if self.finished(schema) != n:
                raise RuntimeError("two runs left jobs unfinished")
            # How the jobs were shared: runs of the schema and the jobs each ran.
            rows = self.psql(f"SELECT host_id || ':' || jobs FROM {schema}.runs "
                             f"WHERE host_id LIKE 'bench-host-%' ORDER BY host_id")
            shares.append(rows.replace("\n", " "))

        for rep in range(self.args.reps):
            for step in ((run_one, run_two) if rep % 2 == 0 else (run_two, run_one)):
                step()
            self.note(f"rep {rep + 1}: one run {one_t[-1]:.2f} s, two runs {two_t[-1]:.2f} s "
                      f"(jobs per host {shares[-1]})")
        speedups = [o / t for o, t in zip(one_t, two_t)]
        s = median(speedups)
        self.raw["t2b"] = {"one_s": one_t, "two_s": two_t, "shares": shares, "jobs": n}
        self.row("2b", f"{n:,} × `sleep 0.02`, two runs (2 hosts, conc. 2 each) vs one",
                 f"{median(two_t):.2f} s two runs ({spread(two_t)})",
                 f"{median(one_t):.2f} s one run ({spread(one_t)})",
                 f"speed-up {s:.2f} ({spread(speedups)})", "≥ 1.60", s >= 1.60)

    # -- target 3 ----------------------------------------------------------------------------

    def target3(self):
        """One publish per process against one psql INSERT per process"""
        n = self.args.t3_publishes
        folder, _ = self.pg_setup("t3")
        ref = self.new_schema()
        self.psql(f"CREATE SCHEMA {ref}; "
                  f"CREATE TABLE {ref}.t (id bigserial PRIMARY KEY, payload json NOT NULL)")
        bgq_argv = self.bgq(folder, "publish", "cb", "--json", '{"n":1}')
        ref_argv = [PSQL, "-X", "-q", self.url, "-c",
                    f"INSERT INTO {ref}.t (payload) VALUES ('{{\"n\":1}}')"]
        rounds = {"bgq": [], "psql": []}

        def calls(argv, out):
            samples = []
            for _ in range(n):
                samples.append(timed(argv))
            out.append(samples)

        for rep in range(self.args.reps):
            steps = [lambda: calls(bgq_argv, rounds["bgq"]), lambda: calls(ref_argv, rounds["psql"])]
            for step in (steps if rep % 2 == 0 else steps[::-1]):
                step()
            self.note(f"rep {rep + 1}: bgq median {median(rounds['bgq'][-1]) * 1000:.2f} ms, "
                      f"psql median {median(rounds['psql'][-1]) * 1000:.2f} ms")
        bm = [median(s) for s in rounds["bgq"]]
        pm = [median(s) for s in rounds["psql"]]
        ratios = [b / p for b, p in zip(bm, pm)]
        self.raw["t3"] = {"bgq_s": rounds["bgq"], "psql_s": rounds["psql"]}
        trips = self.raw.get("round_trips", {})
        bt = f"; {trips['publish']} round trips" if "publish" in trips else ""
        pt = f"; {trips['psql']} round trips" if "psql" in trips else ""
        self.row("3", f"{n} × one publish per process",
                 f"{median(bm) * 1000:.2f} ms/publish ({spread([x * 1000 for x in bm])}{bt})",
                 f"{median(pm) * 1000:.2f} ms/insert (`psql -c`; {spread([x * 1000 for x in pm])}{pt})",
                 f"{median(ratios):.2f} ({spread(ratios)})", "≤ 0.50", median(ratios) <= 0.50)

    # -- target 4 ----------------------------------------------------------------------------

    def target4(self):
        """Peak memory of process draining 5,000 jobs (read off target 2's runs)"""
        if not hasattr(self, "t4"):
            raise Skip("needs target 2's drains")
        rss, hwm, n = self.t4
        if None in rss:
            raise Skip("no GNU time")
        peak = max(rss) / 1024
        hw = [h for h in hwm if h]
        own = f"; VmHWM of bgq itself {max(hw) / 1024:.1f} MiB" if hw else ""
        self.row("4", f"peak RSS of process draining {n:,} jobs (max of {len(rss)} runs)",
                 f"{peak:.1f} MiB (GNU time %M, tree{own})", "20 MiB (goal)",
                 f"{peak / 20:.2f}", "< 20 MiB", peak < 20)

    # -- target 5 ----------------------------------------------------------------------------

    def target5(self):
        """The build before the PostgreSQL backend against this one: start, SQLite publish, size"""
        if not self.old_bin:
            raise Skip("no --old-bgq given")
        n = self.args.t5_calls
        bins = {"old": self.old_bin, "new": self.bgq_bin}
        folders = {}
        for which in bins:
            folder = self.config(self.fresh(f"t5-{which}"))  # SQLite, as bench.py's
            check_run(self.bgq_as(bins[which], folder, "publish", "cb", "--json", '{"n":1}'))
            folders[which] = folder
        results = {}
        for what, args in (("version", ("--version",)),
                           ("publish", ("publish", "cb", "--json", '{"n":1}'))):
            rounds = {"old": [], "new": []}
            for rep in range(self.args.reps):
                samples = {"old": [], "new": []}
                order = ("old", "new") if rep % 2 == 0 else ("new", "old")
                for _ in range(n):  # ABAB: one call of each in turn
                    for which in order:
                        argv = ([bins[which], *args] if what == "version"
                                else self.bgq_as(bins[which], folders[which], *args))
                        samples[which].append(timed(argv))
                for which in rounds:
                    rounds[which].append(samples[which])
                self.note(f"{what} rep {rep + 1}: old median {median(samples['old']) * 1000:.3f} ms, "
                          f"new {median(samples['new']) * 1000:.3f} ms")
            om = [median(s) for s in rounds["old"]]
            nm = [median(s) for s in rounds["new"]]
            ratios = [x / y for x, y in zip(nm, om)]
            r = median(ratios)
            results[what] = {"old_s": rounds["old"], "new_s": rounds["new"]}
            label = "`bgq --version`" if what == "version" else "SQLite `publish` (one per process)"
            self.row("5", f"{n} × {label}, ABAB",
                     f"{median(nm) * 1000:.2f} ms ({spread([x * 1000 for x in nm])})",
                     f"{median(om) * 1000:.2f} ms f2828c3 ({spread([x * 1000 for x in om])})",
                     f"{r:.3f} ({spread(ratios, '{:.3f}')})", "0.95–1.05", 0.95 <= r <= 1.05)
        sizes = {w: os.path.getsize(b) for w, b in bins.items()}
        results["sizes"] = sizes
        self.raw["t5"] = results
        self.row("5", "binary size (release, not stripped)", f"{sizes['new'] / 2**20:.2f} MiB",
                 f"{sizes['old'] / 2**20:.2f} MiB f2828c3",
                 f"{sizes['new'] / sizes['old']:.2f}", "(info)", None)

    # -- round trips -------------------------------------------------------------------------

    def target6(self):
        """Round trips (strace sendto): one publish, one psql -c, one job of a drain"""
        if not shutil.which("strace"):
            raise Skip("strace not installed")
        trips = self.raw.setdefault("round_trips", {})

        def sendto(argv, env=None):
            out = os.path.join(self.root, f"strace-{self.counter}-{len(trips)}.txt")
            self.counter += 1
            check_run(["strace", "-f", "-qq", "-e", "trace=sendto", "-o", out, *argv], env=env)
            with open(out) as f:
                lines = [line for line in f if "sendto(" in line]
            # The last message of a connection is Terminate ('X'): no answer comes back.
            return sum(1 for line in lines if '"X\\0\\0\\0\\4"' not in line)

        folder, schema = self.pg_setup("rt")
        trips["publish"] = sendto(self.bgq(folder, "publish", "cb", "--json", '{"n":1}'))
        ref = self.new_schema()
        self.psql(f"CREATE SCHEMA {ref}; CREATE TABLE {ref}.t (id bigserial PRIMARY KEY, payload json)")
        trips["psql"] = sendto([PSQL, "-X", "-q", self.url, "-c",
                                f"INSERT INTO {ref}.t (payload) VALUES ('{{\"n\":1}}')"])
        per = {}
        for count in (100, 300):
            self.psql(f"DELETE FROM {schema}.jobs")
            self.publish_n(folder, count)
            per[count] = sendto(self.bgq(folder, "process"))
        trips["process_100"], trips["process_300"] = per[100], per[300]
        trips["per_job"] = (per[300] - per[100]) / 200
        self.row("r", "round trips (sendto) of one publish / one `psql -c` (connection start included)",
                 f"{trips['publish']}", f"{trips['psql']}", "-", "(info)", None)
        self.row("r", "round trips per job of a drain (300 jobs minus 100, /200)",
                 f"{trips['per_job']:.1f} (drain of 100: {per[100]}, of 300: {per[300]})",
                 "-", "-", "(info)", None)

    def target7(self):
        """(unused)"""

    def mixed_schema(self, n, name):
        """A folder and schema holding n jobs as a queue `clear` has not pruned, the mix of
        bench.py's target 17.5a (97 % FINISHED, the rest in every other state, four queues,
        two callbacks), inserted in one statement, then one `process --max-jobs 1` run."""
        folder, schema = self.pg_setup(name)
        with open(os.path.join(folder, "bgq.toml"), "a") as out:
            out.write('[callbacks.cb2]\ncommand = ["/bin/true"]\n')
        self.psql(f"""
            INSERT INTO {schema}.jobs (queue, callback, payload, state, attempts, created_at,
                                       run_at, due, started_at, finished_at, state_changed_at)
            SELECT CASE x % 5 WHEN 0 THEN 'other-' || (x % 3) ELSE 'general' END,
                   CASE x % 2 WHEN 0 THEN 'cb' ELSE 'cb2' END, '\\x81a16e01'::bytea,
                   CASE WHEN k IN ('DUE', 'LATER') THEN 'READY' ELSE k END,
                   CASE WHEN k IN ('DUE', 'LATER') THEN 0 ELSE 1 END, b + x / 1000,
                   CASE WHEN k IN ('TEMPORARILY_FAILED', 'WAITING', 'LATER')
                        THEN b + 315360000000 + x ELSE b + x / 1000 END,
                   k = 'DUE',
                   CASE WHEN k NOT IN ('DUE', 'LATER') THEN b + x / 1000 END,
                   CASE WHEN k IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED')
                        THEN b + x / 1000 + 5 END,
                   b + x / 1000 + 5
            FROM (SELECT x, CASE
                      WHEN x % 1000 < 970 THEN 'FINISHED' WHEN x % 1000 < 975 THEN 'DUE'
                      WHEN x % 1000 < 980 THEN 'LATER' WHEN x % 1000 < 984 THEN 'TEMPORARILY_FAILED'
                      WHEN x % 1000 < 988 THEN 'WAITING' WHEN x % 1000 < 993 THEN 'PERMANENTLY_FAILED'
                      ELSE 'CANCELLED' END AS k
                  FROM generate_series(1, {n}) x) g,
                 (SELECT (extract(epoch FROM now()) * 1000)::bigint - 3600000 AS b) t""")
        if self.psql(f"SELECT to_regclass('{schema}.job_counts') IS NOT NULL") == "t":
            # The job deleted behind bgq's back by pg_setup was not counted out: count afresh.
            self.psql(f"""
                DELETE FROM {schema}.job_count_deltas; DELETE FROM {schema}.job_counts;
                INSERT INTO {schema}.job_counts (queue, callback, state, jobs)
                SELECT queue, callback, state, count(*) FROM {schema}.jobs
                GROUP BY queue, callback, state""")
        self.psql(f"VACUUM ANALYZE {schema}.jobs")
        check_run(self.bgq(folder, "process", "--max-jobs", 1))
        return folder

    def target_reads(self):
        """`stats` (each format) and `status` on a million jobs that `clear` has not pruned,
        against the same on 1,000 jobs of the same mix (PostgreSQL)."""
        big_n, small_n = self.args.big_rows, 1000
        start = now()
        big, small = self.mixed_schema(big_n, "reads-big"), self.mixed_schema(small_n, "reads-small")
        self.note(f"{big_n:,} and {small_n:,} rows inserted in {now() - start:.1f} s")
        reps = max(self.args.reps, 7)
        for command in [("stats",), ("stats", "--json"), ("stats", "--prometheus"), ("status",)]:
            argv_big, argv_small = self.bgq(big, *command), self.bgq(small, *command)
            if command == ("stats", "--json"):
                out = check_run(argv_big, stdout=subprocess.PIPE)
                counted = sum(sum(q["jobs"].values()) for q in json.loads(out.stdout)["queues"])
                if counted != big_n:
                    raise RuntimeError(f"stats --json counts {counted} jobs, not {big_n}")
            big_t, small_t = [], []
            for rep in range(reps + 1):
                pair = ((argv_big, big_t), (argv_small, small_t))
                for argv, times in (pair if rep % 2 == 0 else pair[::-1]):
                    t0 = now()
                    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    times.append(now() - t0)
            big_t, small_t = big_t[1:], small_t[1:]  # the first pair warms the caches
            b, sm = median(big_t), median(small_t)
            ratio = bench.paired_ratio(big_t, small_t)
            what = " ".join(command)
            self.raw.setdefault("reads", {})[what] = {"big_s": big_t, "small_s": small_t}
            self.row("17.5a", f"`{what}`, {big_n:,} jobs (97 % FINISHED)", f"{b * 1000:.1f} ms",
                     f"{sm * 1000:.1f} ms ({small_n:,} jobs)", f"{ratio:.2f}", "≤ 3.00",
                     ratio <= 3.0)

    def target_serial(self):
        """(SQLite only: bench.py's target 17.5b)"""
        raise bench.Skip("measured on SQLite by bench/run.sh")

    def run(self):
        try:
            super().run()
        finally:
            self.drop_schemas()


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bgq", required=True, help="the bgq binary under test")
    p.add_argument("--old-bgq", help="the build before the PostgreSQL backend (target 5)")
    p.add_argument("--url", required=True, help="PostgreSQL URL (the role creates schemas)")
    p.add_argument("--server-pid", type=int,
                   help="the postmaster's pid: its CPU counts as the benchmark's, not others'")
    p.add_argument("--tmp", default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", default="6,1,2,3,4,5",
                   help="targets, in order (6 is the round-trip count, printed as r)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--wait-idle", type=float, default=60)
    p.add_argument("--json-out")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--big-rows", type=int, default=1_000_000)
    p.add_argument("--t1-jobs", type=int, default=2000)
    p.add_argument("--t2-jobs", type=int, default=5000)
    p.add_argument("--t2-sleep-jobs", type=int, default=800)
    p.add_argument("--t3-publishes", type=int, default=300)
    p.add_argument("--t5-calls", type=int, default=300)
    args = p.parse_args()
    if args.quick:
        args.reps, args.wait_idle = 1, 5
        args.big_rows, args.t1_jobs, args.t2_jobs, args.t2_sleep_jobs = 20_000, 200, 300, 40
        args.t3_publishes, args.t5_calls = 20, 20
    if args.server_pid:
        own = bench.own_cpu
        bench.own_cpu = lambda: own() + server_cpu(args.server_pid)
    PgBench(args).run()


if __name__ == "__main__":
    main()
