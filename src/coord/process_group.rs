//! Process groups of running callbacks: who they are (so that a reused pid is never mistaken for
//! one of ours), and how to stop them.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// A process as recorded, so that a later run can tell whether it still lives: a callback's
/// group leader (its pid is the group id), or a `process` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Process id.
    pub pid: i32,
    /// Its start time in clock ticks since boot.
    pub started: u64,
    /// Boot id of the machine it ran on.
    pub boot_id: String,
}

/// The identity of process `pid` (for a group leader: of its group), read from /proc; `None`
/// when the process is gone.
pub fn identify(pid: i32) -> Option<ProcessRecord> {
    Some(ProcessRecord {
        pid,
        started: start_ticks(pid)?,
        boot_id: boot_id(),
    })
}

/// Whether the recorded process still runs (same boot, same pid, same start time). A process
/// that has exited but is not yet reaped (a zombie, as under a container's PID 1 that reaps
/// late) is dead: it holds no lock and runs nothing.
pub fn is_alive(record: &ProcessRecord) -> bool {
    if record.boot_id != boot_id() {
        return false;
    }
    let Some(fields) = stat_fields(record.pid) else {
        return false;
    };
    let running = fields.first().is_some_and(|state| !is_dead_state(state));
    running && fields.get(19).and_then(|ticks| ticks.parse().ok()) == Some(record.started)
}

/// A zombie (`Z`) or a process being torn down (`X`), as /proc/PID/stat's state field says.
fn is_dead_state(state: &str) -> bool {
    state == "Z" || state == "X"
}

/// This boot's id, so that groups recorded before a reboot are known to be gone.
pub fn boot_id() -> String {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|id| id.trim().to_owned())
                .unwrap_or_default()
        })
        .clone()
}

/// Fields of /proc/PID/stat after the command name, which may itself hold spaces and ')'.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_ticks(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Sends `signal` to every process of group `pgid`; a group already gone is not an error.
pub fn signal_group(pgid: i32, signal: Signal) {
    // Gone already (ESRCH) is the only likely error, and it is the outcome the caller wanted.
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// What recovery found of a dead run's callback group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanGroup {
    /// It was still alive and has been killed.
    Killed,
    /// Nothing of it was left.
    Gone,
    /// Its pid now belongs to another process, which was left alone.
    PidReused,
}

/// Kills what is left of a recorded group, unless its pid now names some other process.
///
/// A group's id cannot be handed out again while any member lives, so when the leader is gone
/// but members remain, the group is still the one we recorded.
pub fn kill_orphan(record: &ProcessRecord, wait: Duration) -> OrphanGroup {
    stop_group(record, Duration::ZERO, wait)
}

/// Stops a recorded group, unless its pid now names some other process: SIGTERM, then
/// SIGKILL to what is left after `grace` (at once when `grace` is zero); waits up to `wait`
/// for it to be gone.
pub fn stop_group(record: &ProcessRecord, grace: Duration, wait: Duration) -> OrphanGroup {
    if record.pid <= 1 || record.boot_id != boot_id() {
        return OrphanGroup::Gone;
    }
    if start_ticks(record.pid).is_some_and(|started| started != record.started) {
        return OrphanGroup::PidReused;
    }
    if !has_live_members(record.pid) {
        return OrphanGroup::Gone;
    }
    let gone_within = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while has_live_members(record.pid) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    };
    if !grace.is_zero() {
        signal_group(record.pid, Signal::SIGTERM);
        if gone_within(grace) {
            return OrphanGroup::Killed;
        }
    }
    signal_group(record.pid, Signal::SIGKILL);
    gone_within(wait);
    OrphanGroup::Killed
}

/// Kills every process holding the pipe with `inode` open (a callback and its children), with
/// the process group of each that leads one, and waits up to `wait` for them to be gone;
/// returns how many holders it found.
///
/// Only groups led by a holder are killed: a holder caught between its spawn and joining its
/// own group is still in the group of the `process` that spawned it (and of whatever started
/// that: cron, a shell, a test), which must not be touched.
pub fn kill_pipe_holders(inode: u64, wait: Duration) -> usize {
    let holders = pipe_holders(inode);
    for pid in &holders {
        let leads_its_group =
            stat_fields(*pid).and_then(|fields| fields.get(2)?.parse::<i32>().ok()) == Some(*pid);
        if leads_its_group && *pid > 1 {
            signal_group(*pid, Signal::SIGKILL);
        }
        // One that exited meanwhile is what we wanted; the wait below checks the rest.
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + wait;
    while !pipe_holders(inode).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    holders.len()
}

/// Live (not zombie) processes that have the pipe with `inode` open on any descriptor.
fn pipe_holders(inode: u64) -> Vec<i32> {
    let target = format!("pipe:[{inode}]");
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
                })
            })
        })
        .filter(|pid| {
            stat_fields(*pid)
                .and_then(|fields| fields.first().cloned())
                .is_some_and(|state| !is_dead_state(&state))
        })
        .collect()
}

/// Whether any process that is not a zombie belongs to group `pgid`.
pub fn has_live_members(pgid: i32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat_fields)
        .any(|fields| {
            fields.first().is_some_and(|state| !is_dead_state(state))
                && fields.get(2).and_then(|pgrp| pgrp.parse::<i32>().ok()) == Some(pgid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn identifies_a_live_process_and_not_a_dead_one() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let record = identify(me).expect("own process is alive");
        assert_eq!(record.pid, me);
        assert_eq!(record.boot_id, boot_id());
        assert!(is_alive(&record));
        assert!(!is_alive(&ProcessRecord {
            started: record.started + 1,
            ..record.clone()
        }));
        assert!(identify(i32::MAX).is_none());
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // Not reaped yet: it stays a zombie until `wait`. Its record is read before it exits,
        // when possible; a start time read from the zombie is the same.
        let record = ProcessRecord {
            pid,
            started: start_ticks(pid).expect("a zombie keeps its /proc entry until reaped"),
            boot_id: boot_id(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while stat_fields(pid).and_then(|f| f.first().cloned()).as_deref() != Some("Z") {
            assert!(Instant::now() < deadline, "the child never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!is_alive(&record), "a zombie counted as alive");
        child.wait().expect("reaped");
    }

    #[test]
    fn kills_a_recorded_group_with_its_children() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid fits");
        let record = identify(pid).expect("alive");
        assert_eq!(
            kill_orphan(&record, Duration::from_secs(5)),
            OrphanGroup::Killed
        );
        child.wait().expect("reaped");
        assert!(!has_live_members(pid));
    }

    #[test]
    fn kills_the_holders_of_a_pipe_and_their_groups() {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let inode = nix::sys::stat::fstat(&reader).expect("fstat").st_ino;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .stdout(writer)
            .process_group(0)
            .spawn()
            .expect("spawn");
        drop(reader);
        assert!(kill_pipe_holders(inode, Duration::from_secs(5)) >= 1);
        child.wait().expect("reaped");
        assert!(pipe_holders(inode).is_empty());
    }

    #[test]
    fn leaves_a_reused_pid_alone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid fits");
        let mut record = identify(pid).expect("alive");
        record.started += 1;
        assert_eq!(
            kill_orphan(&record, Duration::from_secs(1)),
            OrphanGroup::PidReused
        );
        assert!(
            child.try_wait().expect("status").is_none(),
            "the process was killed"
        );
        child.kill().expect("kill");
        child.wait().expect("reaped");
    }

    #[test]
    fn groups_from_another_boot_are_gone() {
        let record = ProcessRecord {
            pid: 12345,
            started: 1,
            boot_id: "another-boot".to_owned(),
        };
        assert_eq!(
            kill_orphan(&record, Duration::from_secs(1)),
            OrphanGroup::Gone
        );
    }
}
