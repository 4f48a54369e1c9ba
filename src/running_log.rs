//! The process groups a `process` run has started, written into the run's lock file, so that
//! the next holder of the lock can kill what a dead run left behind.
//!
//! The lock file is the right home: only the lock's holder writes it, it lives on the machine
//! where the groups run, and one small write per job costs far less than a database commit.
//! Lines read `JOB_ID PGID START_TICKS BOOT_ID`; a later line for a job supersedes earlier ones,
//! and a malformed line (a write cut short) is skipped.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::Context;

use crate::lock::Lock;
use crate::process_group::ProcessRecord;

/// Past this size the log is rewritten with only the groups still running.
const COMPACT_AT: u64 = 1 << 20;

/// The running-groups log in a held lock file.
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

    /// The last recorded group of every job in the log.
    pub fn read(&self) -> anyhow::Result<HashMap<i64, ProcessRecord>> {
        // Positioned reads: the descriptor shares its offset with the lock's.
        let mut text = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let count = self
                .file
                .read_at(&mut chunk, text.len() as u64)
                .context("cannot read the lock file's log")?;
            if count == 0 {
                break;
            }
            text.extend_from_slice(&chunk[..count]);
        }
        Ok(parse(&String::from_utf8_lossy(&text)))
    }

    /// Empties the log (once what it recorded has been dealt with).
    pub fn clear(&mut self) -> anyhow::Result<()> {
        self.file
            .set_len(0)
            .context("cannot empty the lock file's log")?;
        self.len = 0;
        Ok(())
    }

    /// Records the groups of newly started jobs, in one write.
    pub fn append(&mut self, groups: &[(i64, &ProcessRecord)]) -> anyhow::Result<()> {
        let text = format_lines(groups);
        self.file
            .write_all_at(text.as_bytes(), self.len)
            .context("cannot write the lock file's log")?;
        self.len += text.len() as u64;
        Ok(())
    }

    /// Rewrites a long log with only `running` groups, so that it stays small in long runs.
    ///
    /// One write replaces the head of the file before it is cut, so a crash in between leaves
    /// every running group recorded (old lines after the cut are superseded or harmless).
    pub fn compact(&mut self, running: &[(i64, &ProcessRecord)]) -> anyhow::Result<()> {
        if self.len < COMPACT_AT {
            return Ok(());
        }
        let text = format_lines(running);
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

fn format_lines(groups: &[(i64, &ProcessRecord)]) -> String {
    groups
        .iter()
        .map(|(id, group)| format!("{id} {} {} {}\n", group.pid, group.started, group.boot_id))
        .collect()
}

fn parse(text: &str) -> HashMap<i64, ProcessRecord> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            let pid = fields.next()?.parse().ok()?;
            let started = fields.next()?.parse().ok()?;
            let boot_id = fields.next()?.to_owned();
            if boot_id.is_empty() || fields.next().is_some() {
                return None;
            }
            Some((
                id,
                ProcessRecord {
                    pid,
                    started,
                    boot_id,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: i32) -> ProcessRecord {
        ProcessRecord {
            pid,
            started: 1000 + pid as u64,
            boot_id: "b00t".to_owned(),
        }
    }

    #[test]
    fn later_lines_win_and_broken_lines_are_skipped() {
        let parsed = parse("1 10 1010 b00t\n2 20 1020 b00t\n1 11 1011 b00t\n2 2x\n0 20 1020\n");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[&1], record(11));
        assert_eq!(parsed[&2], record(20));
    }

    #[test]
    fn appends_reads_clears_and_compacts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lock = Lock::try_acquire(&dir.path().join("x.lock"))
            .expect("lock")
            .expect("free");
        let mut log = RunningLog::open(&lock).expect("log");
        log.append(&[(1, &record(10)), (2, &record(20))])
            .expect("append");
        log.append(&[(3, &record(30))]).expect("append");
        let reread = RunningLog::open(&lock).expect("log");
        assert_eq!(reread.read().expect("read").len(), 3);
        log.len = COMPACT_AT;
        log.compact(&[(3, &record(30))]).expect("compact");
        let after = RunningLog::open(&lock).expect("log").read().expect("read");
        assert_eq!(after.into_iter().collect::<Vec<_>>(), [(3, record(30))]);
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
