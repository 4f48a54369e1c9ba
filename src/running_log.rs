//! What a `process` run has started, written into the run's lock file, so that the next holder
//! of the lock can kill what a dead run left behind.
//!
//! The lock file is the right home: only the lock's holder writes it, it lives on the machine
//! where the callbacks run, and one small write per job costs far less than a database commit.
//! Two kinds of line:
//! - `S JOB_ID PIPE_INODE BOOT_ID`, written before the callback is started: whoever holds that
//!   pipe open is the job's callback, even if the run died before it could record the group;
//! - `G JOB_ID PGID START_TICKS BOOT_ID`, written once the callback runs in its process group.
//!
//! A later line for a job supersedes earlier ones of its kind; a malformed line is skipped.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context;

use crate::lock::Lock;
use crate::process_group::{ProcessRecord, boot_id};

/// What the log in the lock file at `path` records of each job, read without taking the lock
/// (for `bgq cancel --kill`, while a `process` holds it). A missing file records nothing.
pub fn read_unlocked(path: &Path) -> anyhow::Result<HashMap<i64, Recorded>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(err) => {
            return Err(anyhow::Error::new(err)
                .context(format!("cannot open lock file {}", path.display())));
        }
    };
    read_all(&file)
}

/// Every line of the log in `file`.
fn read_all(file: &File) -> anyhow::Result<HashMap<i64, Recorded>> {
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
        Ok(RunningLog { file, len })
    }

    /// What the log records of each job.
    pub fn read(&self) -> anyhow::Result<HashMap<i64, Recorded>> {
        read_all(&self.file)
    }

    /// Empties the log (once what it recorded has been dealt with).
    pub fn clear(&mut self) -> anyhow::Result<()> {
        self.file
            .set_len(0)
            .context("cannot empty the lock file's log")?;
        self.len = 0;
        Ok(())
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

    /// Whether the log has grown long enough to be compacted.
    pub fn needs_compacting(&self) -> bool {
        self.len >= COMPACT_AT
    }

    /// Rewrites a long log with only the `running` callbacks, so that it stays small in long
    /// runs.
    ///
    /// One write replaces the head of the file before it is cut, so a crash in between leaves
    /// every running callback recorded (old lines after the cut are superseded or harmless).
    pub fn compact(&mut self, running: &[Entry<'_>]) -> anyhow::Result<()> {
        if !self.needs_compacting() {
            return Ok(());
        }
        let boot = boot_id();
        let text: String = running
            .iter()
            .map(|entry| {
                let start = format!("S {} {} {boot}\n", entry.id, entry.pipe);
                let group = entry
                    .group
                    .map(|group| group_line(entry.id, group))
                    .unwrap_or_default();
                start + &group
            })
            .collect();
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

fn group_line(id: i64, group: &ProcessRecord) -> String {
    format!("G {id} {} {} {}\n", group.pid, group.started, group.boot_id)
}

/// Reads the log; pipe inodes count only when recorded on `boot` (they are reused after a reboot).
fn parse(text: &str, boot: &str) -> HashMap<i64, Recorded> {
    let mut recorded: HashMap<i64, Recorded> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["S", id, pipe, line_boot] => {
                if let (Ok(id), Ok(pipe)) = (id.parse(), pipe.parse()) {
                    recorded.entry(id).or_default().pipe = (line_boot == boot).then_some(pipe);
                }
            }
            ["G", id, pid, started, line_boot] if !line_boot.is_empty() => {
                if let (Ok(id), Ok(pid), Ok(started)) = (id.parse(), pid.parse(), started.parse()) {
                    recorded.entry(id).or_default().group = Some(ProcessRecord {
                        pid,
                        started,
                        boot_id: line_boot.to_owned(),
                    });
                }
            }
            _ => {}
        }
    }
    recorded
}

#[cfg(test)]
mod tests {
    use super::*;

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
             G 2 2x\nG 0 20 1020\nS 3 99 other-boot\nS 4 9",
            "b00t",
        );
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            parsed[&1],
            Recorded {
                pipe: Some(77),
                group: Some(record(11))
            }
        );
        assert_eq!(
            parsed[&2],
            Recorded {
                pipe: Some(88),
                group: Some(record(20))
            }
        );
        assert_eq!(
            parsed[&3],
            Recorded {
                pipe: None,
                group: None
            }
        );
    }

    #[test]
    fn records_reads_clears_and_compacts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lock = Lock::try_acquire(&dir.path().join("x.lock"))
            .expect("lock")
            .expect("free");
        let mut log = RunningLog::open(&lock).expect("log");
        log.starting(&[(1, 71), (2, 72), (3, 73)])
            .expect("starting");
        log.started(&[(1, &record(10)), (2, &record(20))])
            .expect("started");
        log.started(&[(3, &record(30))]).expect("started");
        let reread = RunningLog::open(&lock).expect("log").read().expect("read");
        assert_eq!(reread.len(), 3);
        assert_eq!(reread[&2].pipe, Some(72));
        let thirty = record(30);
        log.len = COMPACT_AT;
        log.compact(&[Entry {
            id: 3,
            pipe: 73,
            group: Some(&thirty),
        }])
        .expect("compact");
        let after = RunningLog::open(&lock).expect("log").read().expect("read");
        assert_eq!(after.len(), 1);
        assert_eq!(
            after[&3],
            Recorded {
                pipe: Some(73),
                group: Some(record(30))
            }
        );
        log.clear().expect("clear");
        assert!(
            RunningLog::open(&lock)
                .expect("log")
                .read()
                .expect("read")
                .is_empty()
        );
    }
}
