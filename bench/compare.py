#!/usr/bin/env python3
"""Two builds of bgq side by side (issue 6, BENCHMARKS.md): an older build against a newer one,
in alternating rounds so that the machine's drift cancels out.

    python3 bench/compare.py --old OLD_BGQ --new NEW_BGQ drain     [--reps 7]
    python3 bench/compare.py ... delayed   [--reps 5] [--control]
    python3 bench/compare.py ... publish   [--reps 7] [--singles 200]
    python3 bench/compare.py ... upgrade   [--reps 5]   (OLD must write schema version 2)
    python3 bench/compare.py ... watch     [--idle 60] [--latency 20]

Build each with `cargo build --release` in its own worktree and target dir, e.g.
    git worktree add ../old 67ae663 && (cd ../old && CARGO_TARGET_DIR=../target-old cargo build --release)

Every measurement runs in a fresh folder under --tmp (default /tmp, ext4 on the VM's disk),
with a config like bench/bench.py's: database and lock files in the folder, concurrency 2, one
callback `cb`. Wall times are time.perf_counter around the command. Each sample also records
the share of the machine's CPU that processes outside this script used meanwhile
("others"); a paired sample with others > --noisy (default 5 %) is marked disturbed, kept in
the raw log, and repeated. Raw samples go to target/bench/compare-<measure>-<time>.json.
"""

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

DEVNULL = subprocess.DEVNULL
HERE = os.path.dirname(os.path.abspath(__file__))
NCPU = os.cpu_count() or 1
TIME = "/usr/bin/time"


def now():
    return time.perf_counter()


def median(xs):
    return statistics.median(xs)


def cpu_busy():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / tick


def own_cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Meter:
    """Share of the machine (all CPUs) used by processes other than this script and the
    children it has waited for, between start and stop."""

    def __init__(self, extra_pids=()):
        self.extra_pids = extra_pids
        self.wall0 = now()
        self.busy0 = cpu_busy()
        self.own0 = own_cpu() + sum(proc_cpu(p) for p in extra_pids)

    def stop(self):
        wall = now() - self.wall0
        busy = cpu_busy() - self.busy0
        own = own_cpu() + sum(proc_cpu(p) for p in self.extra_pids) - self.own0
        return max(0.0, (busy - own) / (wall * NCPU))


def proc_cpu(pid):
    """utime + stime of a live process and of the children it has waited for, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def wait_for_quiet(max_wait=30, threshold=0.10):
    deadline = now() + max_wait
    while True:
        b0, o0 = cpu_busy(), own_cpu()
        time.sleep(1)
        share = (cpu_busy() - b0 - (own_cpu() - o0)) / NCPU
        if share <= threshold or now() >= deadline:
            return share
        log(f"    (machine busy: others use {share:.0%}; waiting)")


def check_run(argv, **kw):
    kw.setdefault("stdout", DEVNULL)
    kw.setdefault("stderr", subprocess.PIPE)
    p = subprocess.run(argv, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{argv} exited {p.returncode}: {p.stderr.decode(errors='replace')[-400:]}")
    return p


def timed(argv, **kw):
    """(seconds, others share, cpu seconds user+sys of the tree or None)."""
    with tempfile.NamedTemporaryFile("r") as rep:
        full = [TIME, "-f", "%U %S", "-o", rep.name, *argv] if os.access(TIME, os.X_OK) else argv
        m = Meter()
        t0 = now()
        p = subprocess.run(full, stdout=kw.pop("stdout", DEVNULL), stderr=subprocess.PIPE, **kw)
        t = now() - t0
        others = m.stop()
        if p.returncode != 0:
            raise RuntimeError(f"{argv} exited {p.returncode}: {p.stderr.decode(errors='replace')[-400:]}")
        cpu = None
        if full is not argv:
            u, s = rep.read().split()[-2:]
            cpu = float(u) + float(s)
        return t, others, cpu, p


def log(text):
    print(text, flush=True)


def count(db, where="1=1"):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(f"SELECT count(*) FROM jobs WHERE {where}").fetchone()[0]
    finally:
        con.close()


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Bench:
    def __init__(self, args):
        self.a = args
        self.bins = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
        self.root = tempfile.mkdtemp(prefix="bgq6-", dir=args.tmp)
        self.n = 0
        self.raw = {"argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}

    def fresh(self, name, command=("/bin/true",), concurrency=2):
        self.n += 1
        d = os.path.join(self.root, f"{self.n:03d}-{name}")
        os.makedirs(d)
        argv = ", ".join(json.dumps(x) for x in command)
        with open(os.path.join(d, "bgq.toml"), "w") as f:
            f.write('database = "db.sqlite"\ntemp_dir = "."\n'
                    f"concurrency = {concurrency}\n[callbacks.cb]\ncommand = [{argv}]\n")
        return d

    def bgq(self, which, d, *args):
        return [self.bins[which], "--config", os.path.join(d, "bgq.toml"), *map(str, args)]

    def jsonl(self, d, count_, start=0):
        path = os.path.join(d, f"jobs-{start}.jsonl")
        with open(path, "w") as f:
            f.writelines(f'{{"n":{i}}}\n' for i in range(start, start + count_))
        return path

    def publish_jsonl(self, which, d, n, *extra):
        path = self.jsonl(d, n)
        out = check_run(self.bgq(which, d, "publish", "cb", "--jsonl", path, *extra), stdout=subprocess.PIPE)
        assert int(out.stdout) == n, out.stdout
        os.unlink(path)

    def paired(self, name, runners, reps):
        """Runs each runner once per round, order rotating; a round where any sample was
        disturbed (others > --noisy) is kept aside and repeated, up to reps extra rounds."""
        keys = list(runners)
        good = {k: [] for k in keys}
        disturbed = []
        rnd = 0
        extra = 0
        while len(good[keys[0]]) < reps:
            quiet = wait_for_quiet()
            order = keys[rnd % len(keys):] + keys[:rnd % len(keys)]
            rnd += 1
            samples = {}
            for k in order:
                samples[k] = runners[k]()
            # Below about 0.25 s the 10 ms ticks of /proc/stat make the share meaningless: only
            # longer samples decide whether a round was disturbed.
            judged = [s["others"] for s in samples.values() if s.get("wall", s["value"]) >= 0.25]
            worst = max(judged, default=0.0)
            text = "  ".join(f"{k} {samples[k]['value']:.4g}{samples[k].get('unit', '')} ({samples[k]['others']:.0%})"
                             for k in keys)
            if worst > self.a.noisy:
                extra += 1
                disturbed.append(samples)
                log(f"  round {rnd} DISTURBED (others up to {worst:.0%}), repeated: {text}")
                if extra > 3 * reps:
                    log("  too many disturbed rounds: giving up with fewer samples")
                    break
                continue
            for k in keys:
                good[k].append(samples[k])
            log(f"  round {rnd}: {text}")
        self.raw[name] = {"good": good, "disturbed": disturbed}
        return good, disturbed

    def summary(self, name, good, disturbed, fmt="{:.3f}", scale=1.0, unit="s"):
        lines = []
        for k, xs in good.items():
            vals = [s["value"] * scale for s in xs]
            oth = [s["others"] for s in xs]
            lines.append(f"  {name} {k}: median {fmt.format(median(vals))} {unit}, range "
                         f"{fmt.format(min(vals))}–{fmt.format(max(vals))}, n={len(vals)}, "
                         f"others {min(oth):.0%}–{max(oth):.0%}; runs: "
                         + " ".join(fmt.format(v) for v in vals))
            cpus = [s["cpu"] for s in xs if s.get("cpu") is not None]
            if cpus:
                lines.append(f"      cpu (user+sys) median {median(cpus):.3f} s, range {min(cpus):.3f}–{max(cpus):.3f}")
        lines.append(f"  {name}: {len(disturbed)} disturbed round(s) set aside")
        for l in lines:
            log(l)
        self.raw.setdefault("summary", []).extend(lines)

    def save(self, measure):
        out = os.path.join(HERE, "..", "target", "bench")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f"compare-{measure}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
        with open(path, "w") as f:
            json.dump(self.raw, f, indent=1, default=str)
        log(f"raw samples: {path}")
        if not self.a.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- 1: drain old vs new --------------------------------------------------------------

    def drain(self):
        n = self.a.jobs

        def runner(which):
            def run():
                d = self.fresh(f"drain-{which}")
                self.publish_jsonl(which, d, n)
                os.sync()
                t, others, cpu, _ = timed(self.bgq(which, d, "process"))
                done = count(os.path.join(d, "db.sqlite"), "state = 'FINISHED'")
                assert done == n, done
                shutil.rmtree(d)
                return {"value": t, "others": others, "cpu": cpu, "unit": "s"}
            return run

        good, dist = self.paired("drain", {"old": runner("old"), "new": runner("new")}, self.a.reps)
        self.summary("drain 5000", good, dist)
        ratios = [n_["value"] / o["value"] for o, n_ in zip(good["old"], good["new"])]
        log(f"  new/old per round: median {median(ratios):.3f}, range {min(ratios):.3f}–{max(ratios):.3f}")
        self.raw["drain_ratio"] = ratios

    # ---- 2: delayed and blocked jobs do not slow claims ------------------------------------

    def template(self, kind):
        """A database (new binary) holding 200,000 stored jobs that are not due: delayed by a
        day (`--delay 1d`) or waiting for an unfinished parent in another queue (`--after`)."""
        d = self.fresh(f"template-{kind}")
        big = self.a.big
        if kind == "delayed":
            self.publish_jsonl("new", d, big, "--delay", "1d")
        elif kind == "old-delayed":
            # Control: the same 200,000 not-due jobs for the old binary, which has no --delay:
            # published, then moved a day ahead as the old schema keeps such jobs (due = 0).
            self.publish_jsonl("old", d, big)
            check_run(["sqlite3", os.path.join(d, "db.sqlite"),
                       "UPDATE jobs SET due = 0, run_at = run_at + 86400000; PRAGMA wal_checkpoint(TRUNCATE);"])
        else:
            out = check_run(self.bgq("new", d, "publish", "cb", "--queue", "other", "--json", "{}"),
                            stdout=subprocess.PIPE)
            parent = int(out.stdout)
            self.publish_jsonl("new", d, big, "--after", parent)
        db = os.path.join(d, "db.sqlite")
        assert not os.path.exists(db + "-wal") or os.path.getsize(db + "-wal") == 0
        log(f"  template {kind}: {count(db):,} rows, {os.path.getsize(db) / 2**20:.1f} MiB")
        return db

    def delayed(self):
        n = self.a.jobs
        templates = {"delayed": self.template("delayed"), "blocked": self.template("blocked")}
        if self.a.control:
            templates["old-delayed"] = self.template("old-delayed")

        def runner(kind):
            which = "old" if kind.startswith("old") else "new"

            def run():
                d = self.fresh(f"claims-{kind}")
                if kind not in ("empty", "old-empty"):
                    shutil.copyfile(templates[kind], os.path.join(d, "db.sqlite"))
                    os.chmod(os.path.join(d, "db.sqlite"), 0o600)
                self.publish_jsonl(which, d, n)
                os.sync()
                t, others, cpu, _ = timed(self.bgq(which, d, "process"))
                db = os.path.join(d, "db.sqlite")
                done = count(db, "state = 'FINISHED'")
                assert done == n, (kind, done)
                waiting = count(db, "state = 'READY'")
                assert waiting == (0 if kind.endswith("empty") else self.a.big + (kind == "blocked")), waiting
                shutil.rmtree(d)
                return {"value": t, "others": others, "cpu": cpu, "unit": "s"}
            return run

        kinds = ["empty", "delayed", "blocked"] + (["old-empty", "old-delayed"] if self.a.control else [])
        good, dist = self.paired("delayed", {k: runner(k) for k in kinds}, self.a.reps)
        self.summary("drain 5000 (new)", good, dist)

    # ---- 3: publish throughput and latency -------------------------------------------------

    def publish(self):
        lines = self.a.lines

        def bulk(which):
            def run():
                d = self.fresh(f"jsonl-{which}")
                check_run(self.bgq(which, d, "publish", "cb", "--json", '{"n":1}'))
                path = self.jsonl(d, lines)
                os.sync()
                t, others, cpu, _ = timed(self.bgq(which, d, "publish", "cb", "--jsonl", path))
                assert count(os.path.join(d, "db.sqlite")) == lines + 1
                shutil.rmtree(d)
                return {"value": lines / t, "seconds": t, "others": others, "cpu": cpu, "unit": "/s"}
            return run

        good, dist = self.paired("jsonl", {"old": bulk("old"), "new": bulk("new")}, self.a.reps)
        self.summary(f"publish --jsonl {lines}", good, dist, fmt="{:,.0f}", unit="jobs/s")

        # Single publishes: one database per binary, old and new alternating call by call.
        dirs = {w: self.fresh(f"single-{w}") for w in ("old", "new")}
        argv = {w: self.bgq(w, dirs[w], "publish", "cb", "--json", '{"n":1}') for w in dirs}
        for w in dirs:
            check_run(argv[w])
        samples = {"old": [], "new": []}
        wait_for_quiet()
        block = Meter()
        for i in range(self.a.singles):
            for w in (("old", "new") if i % 2 == 0 else ("new", "old")):
                m = Meter()
                t0 = now()
                check_run(argv[w])
                t = now() - t0
                samples[w].append({"value": t, "others": m.stop()})
        block_others = block.stop()
        self.raw["single"] = samples
        self.raw["single_block_others"] = block_others
        log(f"  single publishes: others used {block_others:.0%} of the machine over the whole block")
        for w, xs in samples.items():
            vals = sorted(s["value"] * 1000 for s in xs)
            quiet = [s["value"] * 1000 for s in xs if s["others"] <= self.a.noisy]
            p90 = statistics.quantiles(vals, n=10)[8]
            line = (f"  single publish {w}: median {median(vals):.2f} ms, p90 {p90:.2f}, range "
                    f"{vals[0]:.2f}–{vals[-1]:.2f} ms, n={len(vals)}; "
                    f"{len(quiet)} quiet samples: median {median(quiet):.2f} ms")
            log(line)
            self.raw.setdefault("summary", []).append(line)

    # ---- 4: upgrade 2 -> 3 ----------------------------------------------------------------

    def upgrade(self):
        finished, ready = self.a.finished, self.a.ready
        d = self.fresh("upgrade-template")
        total = finished + ready
        chunk = 202_000
        t0 = now()
        start = 0
        while start < total:
            k = min(chunk, total - start)
            path = self.jsonl(d, k, start)
            out = check_run(self.bgq("old", d, "publish", "cb", "--jsonl", path), stdout=subprocess.PIPE)
            assert int(out.stdout) == k
            os.unlink(path)
            start += k
        db = os.path.join(d, "db.sqlite")
        sql = (f"PRAGMA journal_mode=WAL; UPDATE jobs SET state='FINISHED', finished_at=created_at, "
               f"started_at=created_at, attempts=1, state_changed_at=created_at, due=0 "
               f"WHERE id <= {finished}; PRAGMA wal_checkpoint(TRUNCATE);")
        check_run(["sqlite3", db, sql])
        fsync_path(db)
        build = now() - t0
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        ver = con.execute("PRAGMA user_version").fetchone()[0]
        states = con.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        con.close()
        size = os.path.getsize(db)
        log(f"  template: version {ver}, {states}, {size / 2**20:.0f} MiB, built in {build:.0f} s")
        self.raw["upgrade_template"] = {"version": ver, "states": states, "bytes": size}

        def copy(name):
            c = self.fresh(name)
            shutil.copyfile(db, os.path.join(c, "db.sqlite"))
            os.chmod(os.path.join(c, "db.sqlite"), 0o600)
            fsync_path(os.path.join(c, "db.sqlite"))
            return c

        def first_new(cold=False):
            c = copy("upgrade-new-cold" if cold else "upgrade-new")
            cdb = os.path.join(c, "db.sqlite")
            if cold:
                # Evict this copy's pages only (not the machine's whole page cache).
                fd = os.open(cdb, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            import threading
            peak = [0]
            stop = threading.Event()

            def watch_wal():
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], os.path.getsize(cdb + "-wal"))
                    except OSError:
                        pass
                    time.sleep(0.005)
            th = threading.Thread(target=watch_wal)
            th.start()
            t, others, cpu, _ = timed(self.bgq("new", c, "list", "--limit", 1))
            stop.set()
            th.join()
            cdb = os.path.join(c, "db.sqlite")
            con = sqlite3.connect(f"file:{cdb}?mode=ro", uri=True)
            v = con.execute("PRAGMA user_version").fetchone()[0]
            con.close()
            assert v == 3, v
            after = os.path.getsize(cdb)
            t2, o2, _, _ = timed(self.bgq("new", c, "list", "--limit", 1))
            shutil.rmtree(c)
            return {"value": t, "others": others, "cpu": cpu, "unit": "s", "bytes_after": after,
                    "second_list_s": t2, "wal_peak": peak[0]}

        def old_list():
            c = copy("upgrade-oldlist")
            t, others, cpu, _ = timed(self.bgq("old", c, "list", "--limit", 1))
            shutil.rmtree(c)
            return {"value": t, "others": others, "cpu": cpu, "unit": "s"}

        good, dist = self.paired("upgrade", {"new_first": first_new, "new_first_cold": lambda: first_new(True),
                                             "old_list": old_list}, self.a.reps)
        self.summary("first command on a v2 database of 1,010,000 jobs", good, dist)
        sec = [s["second_list_s"] * 1000 for s in good["new_first"]]
        wal = [s["wal_peak"] for s in good["new_first"] + good["new_first_cold"]]
        log(f"  WAL seen during the upgrade: up to {max(wal) / 2**20:.1f} MiB (sampled every 5 ms)")
        log(f"  second `list --limit 1` after the upgrade: median {median(sec):.1f} ms; db size "
            f"{size / 2**20:.0f} MiB -> {good['new_first'][0]['bytes_after'] / 2**20:.0f} MiB")

    # ---- 5: process --watch ---------------------------------------------------------------

    def watch(self):
        d = self.fresh("watch-idle")
        db = os.path.join(d, "db.sqlite")
        check_run(self.bgq("new", d, "publish", "cb", "--json", "{}"))
        check_run(self.bgq("new", d, "process"))
        wait_for_quiet()
        errf = open(os.path.join(d, "watch.err"), "w")
        p = subprocess.Popen(self.bgq("new", d, "process", "--watch"), stdout=DEVNULL, stderr=errf)
        time.sleep(2)  # settle: recovery, run row
        def sizes():
            out = {}
            for s in ("", "-wal", "-shm"):
                try:
                    st = os.stat(db + s)
                    out[s] = f"{st.st_size} B, mtime {time.strftime('%H:%M:%S', time.gmtime(st.st_mtime))}"
                except OSError:
                    out[s] = None
            return out
        cpu0 = proc_cpu(p.pid)
        m = Meter(extra_pids=(p.pid,))
        size_log = [(0, sizes())]
        t0 = now()
        while now() - t0 < self.a.idle:
            time.sleep(10)
            size_log.append((round(now() - t0), sizes()))
        wall = now() - t0
        cpu1 = proc_cpu(p.pid)
        others = m.stop()
        with open(f"/proc/{p.pid}/status") as f:
            rss = [l.strip() for l in f if l.startswith(("VmRSS", "VmHWM"))]
        if True:
            ps_time = subprocess.run(["ps", "-o", "time=", "-p", str(p.pid)], stdout=subprocess.PIPE, text=True).stdout.strip()
        idle = {"wall_s": wall, "cpu_s": cpu1 - cpu0, "others": others, "sizes": size_log,
                "rss": rss, "ps_time": ps_time}
        log(f"  idle {wall:.0f} s: bgq used {cpu1 - cpu0:.2f} s CPU ({(cpu1 - cpu0) / wall:.2%} of one core), "
            f"others {others:.0%}, {rss}, ps time {ps_time}")
        for t, s in size_log:
            log(f"    t={t:3d}s  db {s['']}  wal {s['-wal']}  shm {s['-shm']}")
        # What it does while idle: its system calls over 10 s.
        if shutil.which("strace"):
            st = subprocess.run(["timeout", "-s", "INT", "10", "strace", "-f", "-c", "-p", str(p.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            idle["strace_10s"] = st.stdout
            log("  strace -c -f over 10 s of idling:\n" + st.stdout)
        p.terminate()
        p.wait()
        self.raw["watch_idle"] = idle

        # Latency: publish -> callback start, with the watch run waiting.
        d = self.fresh("watch-latency", command=("/bin/sh", "-c", 'date +%s%N > "started-$BGQ_JOB_ID"; cat >/dev/null'))
        check_run(self.bgq("new", d, "publish", "cb", "--json", "{}"))
        errf = open(os.path.join(d, "watch.err"), "w")
        p = subprocess.Popen(self.bgq("new", d, "process", "--watch"), stdout=DEVNULL, stderr=errf, cwd=d)
        time.sleep(2)
        argv = self.bgq("new", d, "publish", "cb", "--json", "{}")
        samples = []
        for i in range(self.a.latency):
            time.sleep(random.uniform(0.4, 0.8))
            m = Meter(extra_pids=(p.pid,))
            before = time.time_ns()
            out = check_run(argv, stdout=subprocess.PIPE)
            after = time.time_ns()
            job = int(out.stdout)
            path = os.path.join(d, f"started-{job}")
            deadline = now() + 10
            while not (os.path.exists(path) and os.path.getsize(path) > 0):
                if now() > deadline:
                    raise RuntimeError(f"job {job} did not start")
                time.sleep(0.002)
            started = int(open(path).read())
            samples.append({"from_return_ms": (started - after) / 1e6, "from_start_ms": (started - before) / 1e6,
                            "publish_ms": (after - before) / 1e6, "others": m.stop()})
        p.terminate()
        p.wait()
        # What the callback itself costs to write its timestamp: sh + date, started from here.
        spawn = []
        for i in range(20):
            before = time.time_ns()
            r = subprocess.run(["/bin/sh", "-c", "date +%s%N; cat >/dev/null"], stdin=DEVNULL, stdout=subprocess.PIPE)
            spawn.append((int(r.stdout) - before) / 1e6)
        self.raw["watch_latency"] = {"samples": samples, "callback_self_ms": spawn}
        for key in ("from_return_ms", "from_start_ms", "publish_ms"):
            v = [s[key] for s in samples]
            log(f"  {key}: median {median(v):.1f} ms, range {min(v):.1f}–{max(v):.1f}, n={len(v)}; "
                + " ".join(f"{x:.0f}" for x in v))
        log(f"  others during the latency samples: {min(s['others'] for s in samples):.0%}–{max(s['others'] for s in samples):.0%}")
        log(f"  sh -c 'date' start to timestamp (no bgq): median {median(spawn):.1f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="the older bgq binary")
    ap.add_argument("--new", required=True, help="the newer bgq binary")
    ap.add_argument("--tmp", default=os.environ.get("BENCH_TMP", "/tmp"))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--noisy", type=float, default=0.05)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--big", type=int, default=200_000)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--finished", type=int, default=1_000_000)
    ap.add_argument("--ready", type=int, default=10_000)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("--latency", type=int, default=20)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--control", action="store_true",
                    help="delayed: also the old binary, empty and with 200,000 not-due jobs")
    ap.add_argument("measure", choices=["drain", "delayed", "publish", "upgrade", "watch"])
    a = ap.parse_args()
    b = Bench(a)
    log(f"{a.measure}: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {open('/proc/loadavg').read().split()[:3]}")
    try:
        getattr(b, a.measure)()
    finally:
        b.raw["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        b.save(a.measure)
    log(f"done: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
