//! The guard of a run's callbacks on a queue shared by hosts: a small process forked at the
//! start of the run that holds a list of the callbacks' process groups and, when the run dies
//! however it dies (SIGKILL, OOM killer), kills them all. Another host may recover the run's
//! jobs once it is known dead; their old callbacks must be gone by then, helpers in their
//! process groups included (the parent-death signal reaches only a callback's first process).
//!
//! The run tells the guard of each group over a pipe (`+PGID` when a callback starts, `-PGID`
//! when it ended); the end of the pipe is the run's death. The guard is forked from a process
//! with threads, so it only makes system calls that are safe there: no allocation, no locks.

use std::io::Write;
use std::os::fd::AsRawFd;

use anyhow::Context;

/// Groups one guard keeps at once: far more than a run's concurrency.
const CAPACITY: usize = 4096;

/// The run's end of the pipe to its guard.
pub struct Guard {
    pipe: std::fs::File,
}

impl Guard {
    /// Forks the guard.
    pub fn start() -> anyhow::Result<Guard> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .context("cannot make the pipe to the callbacks' guard")?;
        // SAFETY: the child runs `guard`, which makes only async-signal-safe system calls on
        // memory of its own stack, and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()).context("cannot start the callbacks' guard"),
            0 => {
                drop(write);
                guard(read.as_raw_fd())
            }
            _ => {
                drop(read);
                Ok(Guard {
                    pipe: std::fs::File::from(write),
                })
            }
        }
    }

    /// Tells the guard of a callback's process group.
    pub fn add(&mut self, pgid: i32) -> std::io::Result<()> {
        writeln!(self.pipe, "+{pgid}")
    }

    /// Tells the guard a callback's process group has ended.
    pub fn remove(&mut self, pgid: i32) -> std::io::Result<()> {
        writeln!(self.pipe, "-{pgid}")
    }
}

/// The guard's life: read groups until the pipe ends, then kill those still listed.
fn guard(fd: i32) -> ! {
    // SAFETY (for every call below): plain system calls on our own stack memory.
    unsafe {
        // Its own session: a signal to the run's process group (a terminal's ^C, a supervisor
        // stopping the run) is for the run, which lets its callbacks finish; the guard waits.
        libc::setsid();
        // Keep only the pipe: the queue's lock and the database's connections stay the run's.
        if libc::dup2(fd, 0) == -1 {
            libc::_exit(1);
        }
        libc::syscall(
            libc::SYS_close_range,
            1 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
    }
    let mut groups = [0i32; CAPACITY];
    let mut buffer = [0u8; 512];
    let mut sign = 0u8;
    let mut number: i32 = 0;
    loop {
        // SAFETY: reads into our own buffer.
        let read = unsafe { libc::read(0, buffer.as_mut_ptr().cast(), buffer.len()) };
        if read == 0
            || (read < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            break;
        }
        let Ok(read) = usize::try_from(read) else {
            continue;
        };
        for &byte in &buffer[..read] {
            match byte {
                b'+' | b'-' => {
                    sign = byte;
                    number = 0;
                }
                b'0'..=b'9' => {
                    number = number
                        .saturating_mul(10)
                        .saturating_add(i32::from(byte - b'0'));
                }
                b'\n' => {
                    if sign == b'+' {
                        if let Some(slot) = groups.iter_mut().find(|slot| **slot == 0) {
                            *slot = number;
                        }
                    } else if let Some(slot) = groups.iter_mut().find(|slot| **slot == number) {
                        *slot = 0;
                    }
                    sign = 0;
                }
                _ => {}
            }
        }
    }
    for &pgid in groups.iter().filter(|pgid| **pgid > 1) {
        // SAFETY: a system call.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    // SAFETY: ends the forked child without running the parent's destructors.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Kills the guard's pipe by dropping it, as the death of the run would.
    #[test]
    fn a_guard_kills_the_groups_it_holds_when_its_run_goes() {
        let mut guard = Guard::start().expect("guard");
        let spawn = || {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .args(["-c", "sleep 60 & sleep 60"])
                .process_group(0)
                .spawn()
                .expect("spawn")
        };
        let mut kept = spawn();
        let mut ended = spawn();
        let kept_pgid = i32::try_from(kept.id()).expect("pid");
        let ended_pgid = i32::try_from(ended.id()).expect("pid");
        guard.add(kept_pgid).expect("add");
        guard.add(ended_pgid).expect("add");
        guard.remove(ended_pgid).expect("remove");
        drop(guard);
        let deadline = Instant::now() + Duration::from_secs(10);
        while kept.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the guarded group outlived its run"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Its helper (`sleep 60 &`) is killed with the group.
        while crate::coord::process_group::has_live_members(kept_pgid) {
            assert!(
                Instant::now() < deadline,
                "a helper of the guarded group outlived its run"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            ended.try_wait().expect("wait").is_none(),
            "a group the run said had ended was killed"
        );
        crate::coord::process_group::signal_group(ended_pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = ended.wait();
    }
}
