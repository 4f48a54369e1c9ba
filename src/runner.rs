//! Runs one callback: argv from the config, the job on stdin, `BGQ_*` in the environment, its
//! own process group, a timeout that kills the whole group, a way to stop it the same way
//! (`bgq cancel --kill`), and a bounded tail of its output.
//!
//! One thread per running callback waits on the child, its output pipe and its stdin together
//! with poll(2), so that a callback that floods output, never reads stdin, or leaves a
//! background child holding the pipe can neither block nor exhaust bgq.
//!
//! The notify command starts and is waited for by the same code ([`run_command`]), without the
//! output tail and the stop handle, so that the two cannot come to differ in how a child is
//! started, fed or killed.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::Signal;

use crate::config::Callback;
use crate::coord::process_group;
use crate::coord::process_group::ProcessRecord;
use crate::store::ClaimedJob;

/// How much of a callback's output is kept with the job.
pub const OUTPUT_TAIL: usize = 16 * 1024;

/// How a callback run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ran past its timeout and its group was killed.
    TimedOut(Duration),
    /// It could not be started; the message says why.
    NotStarted(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
            Exit::TimedOut(after) => {
                write!(f, "timed out after {}", crate::duration::format(*after))
            }
            Exit::NotStarted(why) => f.write_str(why),
        }
    }
}

/// The name of signal `number` (`SIGKILL`), or its number when it has none.
pub fn signal_name(number: i32) -> String {
    Signal::try_from(number)
        .map_or_else(|_| number.to_string(), |signal| signal.as_str().to_owned())
}

/// Asks a callback's waiter, from another thread, to stop the callback as a timeout does:
/// SIGTERM to its group, SIGKILL after `kill_grace`, and what is left of the group killed
/// before its end is reported. An eventfd, so that the waiter sleeps in poll(2) meanwhile.
#[derive(Clone)]
pub struct StopHandle(Arc<EventFd>);

impl StopHandle {
    fn new() -> Result<StopHandle, String> {
        EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map(|fd| StopHandle(Arc::new(fd)))
            .map_err(|errno| format!("cannot create an eventfd: {}", std::io::Error::from(errno)))
    }

    /// Asks for the stop; harmless once the callback has ended.
    pub fn request(&self) {
        // It can only fail once the counter is full, and then a stop is pending anyway.
        let _ = self.0.write(1);
    }
}

/// A callback that has been started.
pub struct Started {
    run: Supervised,
    group: Option<ProcessRecord>,
    output: std::io::PipeReader,
    stop: StopHandle,
}

/// A child started from [`group_command`], up to its end: what callbacks and the notify command
/// share.
struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
    input: Vec<u8>,
    timeout: Duration,
    kill_grace: Duration,
}

/// The command that runs `program` with `args` as callbacks and the notify command run: the
/// program itself (no shell), stdin a pipe that bgq writes, and a process group of its own, so
/// that a timeout or a stop reaches whatever it started too.
fn group_command(program: &str, args: &[String]) -> Command {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::piped()).process_group(0);
    command
}

/// Runs `program` with `args` through the code callbacks run through (see `group_command`):
/// `input` written to its stdin for as long as it reads, stdout to `stdout`, stderr shared with
/// bgq, and its group stopped after `timeout` (SIGTERM, then SIGKILL after `kill_grace`). The
/// error is why it could not start.
pub fn run_command(
    program: &str,
    args: &[String],
    stdout: Stdio,
    input: Vec<u8>,
    timeout: Duration,
    kill_grace: Duration,
) -> std::io::Result<Exit> {
    let mut command = group_command(program, args);
    command.stdout(stdout);
    let child = command.spawn()?;
    let (exit, _) = Supervised::new(child, input, timeout, kill_grace).wait(None, None);
    Ok(exit)
}

/// A callback about to start: its command built and its output pipe made, so that the pipe can
/// be recorded before the callback runs (see `running_log`).
pub struct Prepared {
    command: Command,
    program: String,
    working_dir: PathBuf,
    input: Vec<u8>,
    output: std::io::PipeReader,
    pipe_inode: u64,
    timeout: Duration,
    kill_grace: Duration,
    stop: StopHandle,
}

/// Prepares `callback` for `job`; the error is the one-line reason it cannot start.
pub fn prepare(
    job: &ClaimedJob,
    callback: &Callback,
    config_path: &Path,
) -> Result<Prepared, String> {
    let program = callback
        .command
        .first()
        .ok_or("the callback has an empty command")?;
    let input = job
        .payload
        .as_ref()
        .map_err(String::clone)?
        .stdin_bytes()
        .map_err(|err| format!("cannot prepare the parameters: {err:#}"))?;
    let (output, writer) =
        std::io::pipe().map_err(|err| format!("cannot create an output pipe: {err}"))?;
    let writer_for_stderr = writer
        .try_clone()
        .map_err(|err| format!("cannot create an output pipe: {err}"))?;
    let pipe_inode = inode(&output);
    let stop = StopHandle::new()?;
    let mut command = group_command(program, &callback.command[1..]);
    command
        .current_dir(&callback.working_dir)
        .envs(&callback.env)
        .env("BGQ_JOB_ID", job.id.to_string())
        .env("BGQ_QUEUE", &job.queue)
        .env("BGQ_CALLBACK", &job.callback)
        .env("BGQ_ATTEMPT", job.attempts.to_string())
        .env("BGQ_CONFIG", config_path)
        .stdout(writer)
        .stderr(writer_for_stderr);
    set_or_remove(
        &mut command,
        "BGQ_SERIAL_GROUP",
        job.serial_group.as_deref(),
    );
    set_or_remove(&mut command, "BGQ_IDENTIFIER", job.identifier.as_deref());
    let batch = job.batch.map(|batch| batch.to_string());
    set_or_remove(&mut command, "BGQ_BATCH_ID", batch.as_deref());
    if let Some(bgq) = bgq_binary() {
        command.env("BGQ_BIN", bgq);
    }
    Ok(Prepared {
        command,
        program: program.clone(),
        working_dir: callback.working_dir.clone(),
        input,
        output,
        pipe_inode,
        timeout: callback.timeout,
        kill_grace: callback.kill_grace,
        stop,
    })
}

impl Prepared {
    /// Makes the callback die (SIGKILL) with the thread that starts it, when bgq dies: for a
    /// queue shared by hosts, where no later run on this host may be the one to recover its job
    /// and stop what is left of it.
    pub fn die_with_parent(&mut self) {
        let parent = nix::unistd::getpid().as_raw();
        // SAFETY: prctl and getppid are async-signal-safe system calls that touch no memory of
        // ours.
        unsafe {
            self.command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // bgq died before the call: nobody is left to send the signal.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }

    /// The inode of the callback's output pipe: whoever holds it open belongs to this run.
    pub fn pipe_inode(&self) -> u64 {
        self.pipe_inode
    }

    /// What stops the callback once started (a request made before its start stops it at once).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Starts the callback; the error is the one-line reason it could not start.
    pub fn spawn(self) -> Result<Started, String> {
        let Prepared {
            mut command,
            program,
            working_dir,
            input,
            output,
            timeout,
            kill_grace,
            stop,
            ..
        } = self;
        let spawned = command.spawn();
        // The Command owns the pipe's write ends; dropping it leaves the child as their only
        // holder, so that the read end sees EOF when the child is done.
        drop(command);
        let child = spawned.map_err(|err| {
            // The errors of a missing working_dir or #! interpreter name no path; say which.
            if !working_dir.is_dir() {
                format!(
                    "cannot start `{program}`: working_dir {} is not a directory",
                    working_dir.display()
                )
            } else if let Some(interpreter) = missing_interpreter(&program, &working_dir, &err) {
                format!("cannot start `{program}`: its interpreter `{interpreter}` was not found")
            } else {
                format!("cannot start `{program}`: {err}")
            }
        })?;
        let run = Supervised::new(child, input, timeout, kill_grace);
        set_nonblocking(&output);
        let group = i32::try_from(run.child.id())
            .ok()
            .and_then(process_group::identify);
        Ok(Started {
            run,
            group,
            output,
            stop,
        })
    }
}

/// When exec says "not found" of a program that exists, its `#!` line names what is missing.
fn missing_interpreter(program: &str, working_dir: &Path, err: &std::io::Error) -> Option<String> {
    if err.kind() != ErrorKind::NotFound || !program.contains('/') {
        return None;
    }
    let interpreter = interpreter(&working_dir.join(program))?;
    (!Path::new(&interpreter).exists()).then_some(interpreter)
}

/// This bgq's own executable, for callbacks that publish follow-up jobs (`BGQ_BIN`): cron's
/// PATH rarely holds it. Read once; `None` if the system cannot say.
fn bgq_binary() -> Option<&'static Path> {
    static BIN: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::current_exe().ok()).as_deref()
}

/// The interpreter the `#!` line of the file at `path` names, if it has one.
pub fn interpreter(path: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let count = std::fs::File::open(path)
        .and_then(|mut file| file.read(&mut head))
        .ok()?;
    let line = head[..count]
        .strip_prefix(b"#!")?
        .split(|b| *b == b'\n')
        .next()?;
    let interpreter = String::from_utf8_lossy(line)
        .trim()
        .split(' ')
        .next()?
        .to_owned();
    (!interpreter.is_empty()).then_some(interpreter)
}

/// The inode number of an open descriptor (0 if it cannot be read).
fn inode(fd: impl AsFd) -> u64 {
    nix::sys::stat::fstat(fd).map_or(0, |stat| stat.st_ino)
}

fn set_or_remove(command: &mut Command, name: &str, value: Option<&str>) {
    match value {
        Some(value) => command.env(name, value),
        None => command.env_remove(name),
    };
}

/// Sets O_NONBLOCK, keeping the other status flags. Left blocking if that fails, as it cannot
/// for a pipe we own.
fn set_nonblocking(fd: impl AsFd) {
    let fd = fd.as_fd();
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// A file descriptor that becomes readable when process `pid` exits (Linux 5.3+).
///
/// Hand-written because neither nix (0.32) nor the standard library (`PidFd` is unstable) wraps
/// pidfd_open(2); rustix does, but it cannot replace nix here (it has no user or group lookup)
/// and one system-call crate is enough.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) reads no memory of ours: it takes a pid and flags (none) by value
    // and returns a new descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just handed us this descriptor, open; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The last `cap` bytes written to it.
struct Tail {
    bytes: Vec<u8>,
    cap: usize,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        // Trim in big steps so that a flood costs amortised O(1) per byte.
        if self.bytes.len() > 2 * self.cap {
            let excess = self.bytes.len() - self.cap;
            self.bytes.drain(..excess);
        }
    }

    fn into_bytes(mut self) -> Vec<u8> {
        if self.bytes.len() > self.cap {
            let excess = self.bytes.len() - self.cap;
            self.bytes.drain(..excess);
        }
        self.bytes
    }
}

/// Where a run is in its timeout handling.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Terminating,
    Killed,
}

impl Started {
    /// The process group running the callback, if it could be identified.
    pub fn group(&self) -> Option<&ProcessRecord> {
        self.group.as_ref()
    }

    /// Feeds stdin, collects the output tail and enforces the timeout until the callback exits;
    /// a stop request ends it the same way, reporting how it then exited.
    pub fn finish(self) -> (Exit, Vec<u8>) {
        let Started {
            run,
            mut output,
            stop,
            ..
        } = self;
        run.wait(Some(&mut output), Some(&stop))
    }
}

/// What one poll(2) entry of [`Supervised::wait`] watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    Exit,
    Output,
    Stdin,
    Stop,
}

impl Supervised {
    /// Takes the child's stdin, made non-blocking so that a child that does not read it cannot
    /// block its waiter.
    fn new(mut child: Child, input: Vec<u8>, timeout: Duration, kill_grace: Duration) -> Self {
        let stdin = child.stdin.take();
        if let Some(stdin) = &stdin {
            set_nonblocking(stdin);
        }
        Supervised {
            child,
            stdin,
            input,
            timeout,
            kill_grace,
        }
    }

    /// Feeds stdin, drains `output` (when given) into a tail, and enforces the timeout until the
    /// child exits; `stop` (when given) ends it as the timeout does. Returns how it exited and
    /// the tail (empty without `output`).
    fn wait(
        mut self,
        mut output: Option<&mut std::io::PipeReader>,
        stop: Option<&StopHandle>,
    ) -> (Exit, Vec<u8>) {
        let pid = self.child.id();
        let pgid = i32::try_from(pid).unwrap_or(0);
        let pidfd = pidfd_open(pid);
        let mut tail = Tail {
            bytes: Vec::new(),
            cap: OUTPUT_TAIL,
        };
        let mut written = 0;
        let mut phase = Phase::Running;
        let mut timed_out = false;
        let mut stop_requested = false;
        let started = Instant::now();
        let mut deadline = Some(started + self.timeout);
        let mut buffer = vec![0u8; if output.is_some() { 64 * 1024 } else { 0 }];
        if self.input.is_empty() {
            self.stdin = None;
        }
        loop {
            let wait = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            // Without a pidfd (old kernels) the child's exit is noticed by polling it.
            let wait = if pidfd.is_none() {
                Some(wait.map_or(Duration::from_millis(20), |w| {
                    w.min(Duration::from_millis(20))
                }))
            } else {
                wait
            };
            let ready = {
                let mut watches = Vec::with_capacity(4);
                let mut fds = Vec::with_capacity(4);
                let mut watch = |what, fd, events| {
                    watches.push(what);
                    fds.push(PollFd::new(fd, events));
                };
                if let Some(fd) = &pidfd {
                    watch(Watch::Exit, fd.as_fd(), PollFlags::POLLIN);
                }
                if let Some(output) = &output {
                    watch(Watch::Output, output.as_fd(), PollFlags::POLLIN);
                }
                if let Some(stdin) = &self.stdin {
                    watch(Watch::Stdin, stdin.as_fd(), PollFlags::POLLOUT);
                }
                if let Some(stop) = stop.filter(|_| !stop_requested) {
                    watch(Watch::Stop, stop.0.as_fd(), PollFlags::POLLIN);
                }
                // An error (EINTR from a signal bgq handles) leaves every revents empty: the
                // loop then checks the deadline and polls again.
                let _ = poll(&mut fds, poll_timeout(wait));
                watches
                    .into_iter()
                    .zip(&fds)
                    // Flags nix does not know (revents() is None) count, as any event does.
                    .filter(|(_, fd)| fd.revents().is_none_or(|events| !events.is_empty()))
                    .map(|(what, _)| what)
                    .collect::<Vec<_>>()
            };
            if ready.contains(&Watch::Output)
                && let Some(pipe) = output.as_deref_mut()
                && !drain(pipe, &mut buffer, &mut tail)
            {
                output = None;
            }
            if ready.contains(&Watch::Stdin)
                && let Some(stdin) = &mut self.stdin
            {
                match stdin.write(&self.input[written..]) {
                    Ok(count) => written += count,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    // The child closed stdin or exited: it has read all it wants.
                    Err(_) => written = self.input.len(),
                }
                if written >= self.input.len() {
                    self.stdin = None;
                }
            }
            if ready.contains(&Watch::Stop) && !stop_requested {
                stop_requested = true;
                if phase == Phase::Running {
                    process_group::signal_group(pgid, Signal::SIGTERM);
                    phase = Phase::Terminating;
                    deadline = Some(Instant::now() + self.kill_grace);
                }
            }
            let exited = match &pidfd {
                Some(_) => ready.contains(&Watch::Exit),
                None => matches!(self.child.try_wait(), Ok(Some(_))),
            };
            if exited {
                break;
            }
            if deadline.is_some_and(|at| Instant::now() >= at) {
                match phase {
                    Phase::Running => {
                        process_group::signal_group(pgid, Signal::SIGTERM);
                        timed_out = true;
                        phase = Phase::Terminating;
                        deadline = Some(Instant::now() + self.kill_grace);
                    }
                    Phase::Terminating | Phase::Killed => {
                        process_group::signal_group(pgid, Signal::SIGKILL);
                        phase = Phase::Killed;
                        deadline = None;
                    }
                }
            }
        }
        // A stopped child whose first process exited (even with 0) while others of its group
        // still worked did not finish its work.
        let mut cut_short = false;
        if phase != Phase::Running {
            cut_short = stop_requested && process_group::has_live_members(pgid);
            // The leader is a zombie until we reap it, so its group id still names our group:
            // kill what is left of it (children that ignored SIGTERM).
            process_group::signal_group(pgid, Signal::SIGKILL);
        }
        self.stdin = None;
        if let Some(pipe) = output {
            drain(pipe, &mut buffer, &mut tail);
        }
        let status = self.child.wait();
        let exit = if timed_out {
            Exit::TimedOut(self.timeout)
        } else if cut_short {
            Exit::Signal(libc::SIGKILL)
        } else {
            match status {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(signal)) => Exit::Signal(signal),
                    (None, None) => Exit::NotStarted("unknown exit status".to_owned()),
                },
                Err(err) => Exit::NotStarted(format!("cannot wait for the callback: {err}")),
            }
        };
        (exit, tail.into_bytes())
    }
}

/// Reads what is available now; false once the pipe is at EOF.
fn drain(output: &mut std::io::PipeReader, buffer: &mut [u8], tail: &mut Tail) -> bool {
    loop {
        match output.read(buffer) {
            Ok(0) => return false,
            Ok(count) => tail.push(&buffer[..count]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// poll(2)'s timeout for `wait` (none: no limit), rounded up so that a deadline 0.4 ms away does
/// not spin.
fn poll_timeout(wait: Option<Duration>) -> PollTimeout {
    wait.map_or(PollTimeout::NONE, |wait| {
        PollTimeout::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(PollTimeout::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More than a pipe holds (64 KiB), so that feeding it takes the child's reading.
    const BIG_INPUT: usize = 1 << 20;

    fn sh(script: &str, args: &[&str]) -> Vec<String> {
        ["-c", script]
            .into_iter()
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn run_command_feeds_all_of_stdin_and_reports_the_exit_code() {
        let dir = tempfile::tempdir().expect("temp dir");
        let got = dir.path().join("stdin");
        let got_arg = got.to_str().expect("utf-8 path");
        let exit = run_command(
            "sh",
            &sh("cat > \"$0\"; exit 3", &[got_arg]),
            Stdio::null(),
            vec![b'x'; BIG_INPUT],
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .expect("started");
        assert_eq!(exit, Exit::Code(3));
        assert_eq!(std::fs::read(&got).expect("written").len(), BIG_INPUT);
    }

    #[test]
    fn run_command_does_not_wait_on_a_child_that_never_reads_stdin() {
        let started = Instant::now();
        let exit = run_command(
            "true",
            &[],
            Stdio::null(),
            vec![b'x'; BIG_INPUT],
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .expect("started");
        assert_eq!(exit, Exit::Code(0));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn run_command_runs_the_child_in_a_group_of_its_own() {
        // Field 5 of /proc/PID/stat is the process group; `sh` has no space in its name.
        let exit = run_command(
            "sh",
            &sh("test \"$(cut -d' ' -f5 /proc/$$/stat)\" = $$", &[]),
            Stdio::null(),
            Vec::new(),
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .expect("started");
        assert_eq!(exit, Exit::Code(0));
    }

    #[test]
    fn run_command_kills_the_whole_group_at_the_timeout() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("pid");
        let pidfile_arg = pidfile.to_str().expect("utf-8 path");
        // Long enough for the shell to have written the pid on a busy machine.
        let timeout = Duration::from_secs(1);
        let exit = run_command(
            "sh",
            &sh(
                "trap '' TERM; sleep 30 & echo $! > \"$0\"; wait",
                &[pidfile_arg],
            ),
            Stdio::null(),
            vec![b'x'; BIG_INPUT],
            timeout,
            Duration::from_millis(100),
        )
        .expect("started");
        assert_eq!(exit, Exit::TimedOut(timeout));
        let background: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid written")
            .trim()
            .parse()
            .expect("a pid");
        // Reparented to whoever reaps orphans here, it may stay a zombie for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_group::identify(background)
            .is_some_and(|record| process_group::is_alive(&record))
        {
            assert!(Instant::now() < deadline, "the background child survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn run_command_reports_a_program_that_cannot_start() {
        let err = run_command(
            "/no/such/program-xyz",
            &[],
            Stdio::null(),
            Vec::new(),
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .expect_err("not started");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn poll_timeouts_round_up_and_saturate() {
        assert_eq!(poll_timeout(None), PollTimeout::NONE);
        assert_eq!(poll_timeout(Some(Duration::ZERO)), PollTimeout::ZERO);
        assert_eq!(
            poll_timeout(Some(Duration::from_micros(400))),
            PollTimeout::from(1u8)
        );
        assert_eq!(
            poll_timeout(Some(Duration::from_millis(20))),
            PollTimeout::from(20u8)
        );
        assert_eq!(
            poll_timeout(Some(Duration::from_secs(100 * 86_400))),
            PollTimeout::MAX
        );
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail {
            bytes: Vec::new(),
            cap: 10,
        };
        for chunk in [&b"0123456"[..], b"789abcdef", b"ghij"] {
            tail.push(chunk);
        }
        assert_eq!(tail.into_bytes(), b"abcdefghij");
        let mut short = Tail {
            bytes: Vec::new(),
            cap: 10,
        };
        short.push(b"hi");
        assert_eq!(short.into_bytes(), b"hi");
    }
}
