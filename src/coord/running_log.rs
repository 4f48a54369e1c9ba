//! What a `process` run has started, written into the run's lock file, so that the next holder
//! of the lock can kill what a dead run left behind.
//!
//! The lock file is the right home: only the lock's holder writes it, it lives on the machine
//! where the callbacks run, and one small write per job costs far less than a database commit.
//! It is read only once `lock` has found it trustworthy: its lines name process groups to kill.
//! Three kinds of line:
//! - `R PID START_TICKS BOOT_ID`, written by a run once it holds the lock, before it claims
//!   anything: from then on every callback it starts is noted here, so a job of that run with
//!   no note provably never started;
//! - `S JOB_ID PIPE_INODE BOOT_ID`, written before the callback is started: whoever holds that
//!   pipe open is the job's callback, even if the run died before it could record the group;
//! - `G JOB_ID PGID START_TICKS BOOT_ID`, written once the callback runs in its process group.
//!
//! A later line for a job supersedes earlier ones of its kind; a malformed line is skipped.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Context;

use crate::coord::lock::{self, Lock};
use crate::coord::process_group::{ProcessRecord, boot_id};

/// What the log in the lock file at `path` records, read without taking the lock (for `bgq
/// cancel --kill`, while a `process` holds it). A missing file records nothing; a file someone
/// else could have written is refused.
pub fn read_unlocked(path: &Path) -> anyhow::Result<Notes> {
    let file = match lock::open_trusted(path, std::fs::OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
        {
            return Ok(Notes::default());
        }
        Err(err) => return Err(err),
    };
    read_all(&file)
}

/// Every line of the log in `file`.
fn read_all(file: &File) -> anyhow::Result<Notes> {
    // Positioned reads: the lock's holder shares the descriptor's offset.
    let mut text = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let count = file
            .read_at(&mut chunk, text.len() as u64)
            .context("cannot read the lock file's log")?;
        if count == 0 {
            break;
        }
        text.extend_from_slice(&chunk[..count]);
    }
    Ok(parse(&String::from_utf8_lossy(&text), &boot_id()))
}

/// Past this size the log is rewritten with only the callbacks still running.
const COMPACT_AT: u64 = 1 << 20;

/// What the log says about one job's last run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The inode of its output pipe, if its start was recorded on this boot.
    pub pipe: Option<u64>,
    /// Its process group, once it ran.
    pub group: Option<ProcessRecord>,
}

/// Everything a log records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    jobs: HashMap<i64, Recorded>,
    /// Runs that kept their notes here (`R` lines).
    runs: Vec<ProcessRecord>,
}

/// What the notes tell of a job's callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// Its start (and maybe its group) is noted.
    Noted(Recorded),
    /// Its run kept its notes here and noted no start: the callback never started.
    Never,
    /// Nothing is noted, and nothing proves it never started (its run noted elsewhere, or
    /// before bgq kept `R` lines).
    Unknown,
}

impl Notes {
    /// What is noted of job `id`, claimed by the run `claimed_by`.
    pub fn of(&self, id: i64, claimed_by: Option<&ProcessRecord>) -> Started {
        if let Some(recorded) = self.jobs.get(&id) {
            return Started::Noted(recorded.clone());
        }
        match claimed_by {
            Some(run) if self.runs.contains(run) => Started::Never,
            _ => Started::Unknown,
        }
    }
}

/// A job whose callback is running, as the log records it.
pub struct Entry<'a> {
    /// Job id.
    pub id: i64,
    /// Inode of its output pipe.
    pub pipe: u64,
    /// Its process group, if known.
    pub group: Option<&'a ProcessRecord>,
}

/// The log in a held lock file.
pub struct RunningLog {
    file: File,
    len: u64,
    /// The lines every rewrite starts with: this run's `R` line and the notes it keeps for jobs
    /// of other runs that are still alive.
    kept: String,
}

impl RunningLog {
    /// The log of `lock`'s file, as the previous holder left it.
    pub fn open(lock: &Lock) -> anyhow::Result<RunningLog> {
        let file = lock
            .file()
            .try_clone()
            .context("cannot open the lock file's log")?;
        let len = file
            .metadata()
            .context("cannot read the lock file's log")?
            .len();
        Ok(RunningLog {
            file,
            len,
            kept: String::new(),
        })
    }

    /// What the log records.
    pub fn read(&self) -> anyhow::Result<Notes> {
        read_all(&self.file)
    }

    /// Starts this run's notes, once what the log recorded has been dealt with: keeps of
    /// `notes` only what concerns the jobs in `keep` (still running under a live run) and the
    /// runs in `live_runs`, then notes this run, `me`, in one write.
    pub fn begin(
        &mut self,
        me: &ProcessRecord,
        notes: &Notes,
        keep: &[i64],
        live_runs: &[&ProcessRecord],
    ) -> anyhow::Result<()> {
        let mut kept: String = notes
            .runs
            .iter()
            .filter(|run| live_runs.contains(run) && *run != me)
            .map(run_line)
            .collect();
        for id in keep {
            if let Some(recorded) = notes.jobs.get(id) {
                kept.push_str(&job_lines(*id, recorded.pipe, recorded.group.as_ref()));
            }
        }
        kept.push_str(&run_line(me));
        self.kept = kept;
        self.rewrite(&[])
    }

    /// Records that callbacks with these output pipes are about to start, in one write.
    pub fn starting(&mut self, pipes: &[(i64, u64)]) -> anyhow::Result<()> {
        let boot = boot_id();
        let text: String = pipes
            .iter()
            .map(|(id, pipe)| format!("S {id} {pipe} {boot}\n"))
            .collect();
        self.write(&text)
    }

    /// Records the process groups of callbacks that started, in one write.
    pub fn started(&mut self, groups: &[(i64, &ProcessRecord)]) -> anyhow::Result<()> {
        let text: String = groups
            .iter()
            .map(|(id, group)| group_line(*id, group))
            .collect();
        self.write(&text)
    }

    fn write(&mut self, text: &str) -> anyhow::Result<()> {
        self.file
            .write_all_at(text.as_bytes(), self.len)
            .context("cannot write the lock file's log")?;
        self.len += text.len() as u64;
        Ok(())
    }

    /// Rewrites a long log with only the `running` callbacks, so that it stays small in long
    /// runs. Every callback that ended must have its outcome committed by then: its notes go.
    pub fn compact(&mut self, running: &[Entry<'_>]) -> anyhow::Result<()> {
        if !self.needs_compacting() {
            return Ok(());
        }
        self.rewrite(running)
    }

    /// Whether the log has grown long enough to be compacted.
    pub fn needs_compacting(&self) -> bool {
        self.len >= COMPACT_AT
    }

    /// Replaces the log with the kept lines and `running`. One write replaces the head of the
    /// file before it is cut, so a crash in between leaves every running callback recorded (old
    /// lines after the cut are superseded or harmless).
    fn rewrite(&mut self, running: &[Entry<'_>]) -> anyhow::Result<()> {
        let mut text = self.kept.clone();
        for entry in running {
            text.push_str(&job_lines(entry.id, Some(entry.pipe), entry.group));
        }
        self.file
            .write_all_at(text.as_bytes(), 0)
            .context("cannot write the lock file's log")?;
        self.file
            .set_len(text.len() as u64)
            .context("cannot write the lock file's log")?;
        self.len = text.len() as u64;
        Ok(())
    }
}

fn run_line(run: &ProcessRecord) -> String {
    format!("R {} {} {}\n", run.pid, run.started, run.boot_id)
}

fn job_lines(id: i64, pipe: Option<u64>, group: Option<&ProcessRecord>) -> String {
    let start = pipe.map_or_else(String::new, |pipe| format!("S {id} {pipe} {}\n", boot_id()));
    start + &group.map(|group| group_line(id, group)).unwrap_or_default()
}

fn group_line(id: i64, group: &ProcessRecord) -> String {
    format!("G {id} {} {} {}\n", group.pid, group.started, group.boot_id)
}

/// Reads the log; pipe inodes count only when recorded on `boot` (they are reused after a reboot).
fn parse(text: &str, boot: &str) -> Notes {
    let mut notes = Notes::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["R", pid, started, run_boot] if !run_boot.is_empty() => {
                if let (Ok(pid), Ok(started)) = (pid.parse(), started.parse()) {
                    notes.runs.push(ProcessRecord {
                        pid,
                        started,
                        boot_id: run_boot.to_owned(),
                    });
                }
            }
            ["S", id, pipe, line_boot] => {
                if let (Ok(id), Ok(pipe)) = (id.parse(), pipe.parse()) {
                    notes.jobs.entry(id).or_default().pipe = (line_boot == boot).then_some(pipe);
                }
            }
            ["G", id, pid, started, line_boot] if !line_boot.is_empty() => {
                if let (Ok(id), Ok(pid), Ok(started)) = (id.parse(), pid.parse(), started.parse()) {
                    notes.jobs.entry(id).or_default().group = Some(ProcessRecord {
                        pid,
                        started,
                        boot_id: line_boot.to_owned(),
                    });
                }
            }
            _ => {}
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::lock::LockFolder;

    fn record(pid: i32) -> ProcessRecord {
        ProcessRecord {
            pid,
            started: 1000 + u64::try_from(pid).unwrap_or_default(),
            boot_id: "b00t".to_owned(),
        }
    }

    #[test]
    fn later_lines_win_and_broken_lines_are_skipped() {
        let parsed = parse(
            "S 1 77 b00t\nG 1 10 1010 b00t\nS 2 88 b00t\nG 2 20 1020 b00t\nG 1 11 1011 b00t\n\
             G 2 2x\nG 0 20 1020\nS 3 99 other-boot\nS 4 9\nR 5 1005 b00t\nR 6 x b00t\nR 7 8\n",
            "b00t",
        );
        assert_eq!(parsed.jobs.len(), 3);
        assert_eq!(parsed.runs, [record(5)]);
        assert_eq!(
            parsed.jobs[&1],
            Recorded {
                pipe: Some(77),
                group: Some(record(11))
            }
        );
        assert_eq!(
            parsed.jobs[&2],
            Recorded {
                pipe: Some(88),
                group: Some(record(20))
            }
        );
        assert_eq!(
            parsed.jobs[&3],
            Recorded {
                pipe: None,
                group: None
            }
        );
    }

    #[test]
    fn a_job_without_notes_never_started_only_if_its_run_noted_here() {
        let notes = parse("R 5 1005 b00t\nS 1 77 b00t\n", "b00t");
        assert!(matches!(notes.of(1, Some(&record(5))), Started::Noted(_)));
        assert_eq!(notes.of(2, Some(&record(5))), Started::Never);
        assert_eq!(notes.of(2, Some(&record(6))), Started::Unknown);
        assert_eq!(notes.of(2, None), Started::Unknown);
    }

    #[test]
    fn records_reads_begins_and_compacts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lock = Lock::try_acquire(
            &LockFolder::named(dir.path().to_owned()),
            &dir.path().join("x.lock"),
        )
        .expect("lock")
        .expect("free");
        let mut log = RunningLog::open(&lock).expect("log");
        log.starting(&[(1, 71), (2, 72), (3, 73)])
            .expect("starting");
        log.started(&[(1, &record(10)), (2, &record(20))])
            .expect("started");
        log.started(&[(3, &record(30))]).expect("started");
        let reread = RunningLog::open(&lock).expect("log").read().expect("read");
        assert_eq!(reread.jobs.len(), 3);
        assert_eq!(reread.jobs[&2].pipe, Some(72));

        // A new run keeps job 2 (its run, 99, lives on) and notes itself.
        let me = record(50);
        log.begin(&me, &reread, &[2], &[&record(99)])
            .expect("begin");
        let begun = RunningLog::open(&lock).expect("log").read().expect("read");
        assert_eq!(begun.jobs.len(), 1);
        assert_eq!(begun.jobs[&2].group, Some(record(20)));
        assert_eq!(begun.runs, std::slice::from_ref(&me));

        let thirty = record(30);
        log.starting(&[(3, 73)]).expect("starting");
        log.len = COMPACT_AT;
        log.compact(&[Entry {
            id: 3,
            pipe: 73,
            group: Some(&thirty),
        }])
        .expect("compact");
        let after = RunningLog::open(&lock).expect("log").read().expect("read");
        assert_eq!(after.jobs.len(), 2, "the kept job and the running one");
        assert_eq!(after.runs, [me]);
        assert_eq!(
            after.jobs[&3],
            Recorded {
                pipe: Some(73),
                group: Some(record(30))
            }
        );
    }
}
