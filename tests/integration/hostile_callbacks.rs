//! Callbacks that flood their output, close stdin at once, leave a child holding their output open,
//! or look for the job's data in every command line on the machine. (`broken_callbacks.rs` covers missing
//! and non-executable commands; `protocol.rs` an unread 1 MiB stdin and the output tail; `retries.rs` a callback
//! that ignores SIGTERM.)

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    TestEnv, TestResult, alive, callback_toml, notices, notify_line, read_lines, send_signal,
};

/// Peak resident memory allowed to a `bgq process` whose callback floods hundreds of MiB.
const MAX_RSS_KIB: u64 = 50 * 1024;

/// VmHWM (peak resident set, KiB) of a live process.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Kills the processes whose pids a callback wrote to a file, when dropped.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in read_lines(&self.0) {
            if let Ok(pid) = pid.trim().parse::<i32>()
                && alive(pid)
            {
                let _ = send_signal(pid.unsigned_abs(), "KILL");
            }
        }
    }
}

#[test]
fn a_flood_of_output_keeps_memory_bounded_and_the_tail() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = notify_line(&env)?;
    // 300 MB, half on stdout and half on stderr at the same time, then a last line.
    let cb = env.script(
        "flood.sh",
        "head -c 150000000 /dev/zero &\n\
         head -c 150000000 /dev/zero >&2\n\
         wait\n\
         echo\n\
         echo FLOOD-END\n\
         exit 3",
    )?;
    env.write_config(&format!("{notify}\n{}", callback_toml("flood", &cb, "")))?;
    let id = env.publish("flood", "{}")?;

    let started = Instant::now();
    let mut run = env.spawn(&["process"])?;
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(run.pid()) {
            peak = peak.max(kib);
        }
        if let Some(status) = run.child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("process did not end within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{}", run.stderr());
    assert!(peak > 0, "could not read VmHWM of bgq");
    assert!(
        peak < MAX_RSS_KIB,
        "bgq peaked at {peak} KiB while its callback printed 300 MB"
    );
    assert_eq!(env.state(id)?, "PERMANENTLY_FAILED");
    let sent = notices(&env.path("notices.jsonl"))?;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let output = sent[0]["output"]
        .as_str()
        .ok_or("no output in the notice")?;
    assert!(
        output.ends_with("\nFLOOD-END\n"),
        "the tail ends with the last line: {:?}",
        &output[output.len().saturating_sub(80)..]
    );
    assert!(
        output.len() <= 64 * 1024,
        "the tail is bounded: {}",
        output.len()
    );
    eprintln!(
        "flood: bgq peaked at {peak} KiB, took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_callback_that_closes_stdin_at_once_gets_its_outcome() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("log");
    let at_once = env.script(
        "at-once.sh",
        &format!("exec 0<&-\necho $BGQ_JOB_ID >> {}\nexit 0", log.display()),
    )?;
    // Closes stdin, then lives on while bgq still has most of the payload to write.
    let lingers = env.script(
        "lingers.sh",
        &format!(
            "exec 0<&-\nsleep 0.3\necho $BGQ_JOB_ID >> {}\nexit 0",
            log.display()
        ),
    )?;
    let fails = env.script("fails.sh", "exec 0<&-\nexit 75")?;
    env.write_config(&format!(
        "[retry]\ndelay = \"1h\"\n{}{}{}",
        callback_toml("at_once", &at_once, "timeout = \"20s\""),
        callback_toml("lingers", &lingers, "timeout = \"20s\""),
        callback_toml("fails", &fails, "timeout = \"20s\"")
    ))?;
    let payload = env.path("big.json");
    fs::write(
        &payload,
        serde_json::to_string(&Value::String("z".repeat(8 * 1024 * 1024)))?,
    )?;
    let json = format!("@{}", payload.display());
    let ids = [
        env.publish("at_once", &json)?,
        env.publish("lingers", &json)?,
        env.publish("fails", &json)?,
    ];
    let started = Instant::now();
    let (code, stdout, stderr) = env.process_output(&[])?;
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(env.state(ids[0])?, "FINISHED");
    assert_eq!(env.state(ids[1])?, "FINISHED");
    assert_eq!(env.state(ids[2])?, "TEMPORARILY_FAILED");
    let mut ran = read_lines(&log);
    ran.sort();
    let mut expected = vec![ids[0].to_string(), ids[1].to_string()];
    expected.sort();
    assert_eq!(ran, expected);
    Ok(())
}

#[test]
fn a_background_child_holding_the_output_open_does_not_hang_process() -> TestResult {
    let env = TestEnv::new("")?;
    let pids = env.path("children");
    let _cleanup = KillOnDrop(pids.clone());
    // The child inherits stdout and stderr (bgq's output pipe) and outlives the callback.
    let cb = env.script(
        "daemon.sh",
        &format!(
            "sleep 30 &\necho $! >> {p}\n\
             (while :; do echo still here; sleep 0.05; done) &\necho $! >> {p}\n\
             echo started\nexit 0",
            p = pids.display()
        ),
    )?;
    env.write_config(&callback_toml("daemon", &cb, "timeout = \"20s\""))?;
    let id = env.publish("daemon", "{}")?;
    let started = Instant::now();
    let (code, _, stderr) = env.process_output(&[])?;
    let took = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    assert!(took < Duration::from_secs(5), "process took {took:?}");
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(read_lines(&pids).len(), 2);
    Ok(())
}

#[test]
fn job_data_never_appears_in_any_command_line() -> TestResult {
    let env = TestEnv::new("")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let secret = format!("bgq-secret-{}-{nanos}", std::process::id());
    let dir = env.path("seen");
    fs::create_dir_all(&dir)?;
    // The callback takes the secret from stdin into a file, so that no command line it runs
    // holds it, then counts the command lines (and environments) on the machine that do.
    let cb = env.script(
        "look.sh",
        &format!(
            "d={d}/$BGQ_JOB_ID\nmkdir -p $d\n\
             if [ \"$BGQ_CALLBACK\" = json ]; then sed -e 's/.*\"secret\":\"\\([^\"]*\\)\".*/\\1/' > $d/pattern\n\
             else cat > $d/pattern; fi\n\
             for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done > $d/argv\n\
             for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f 2>/dev/null; echo; done > $d/environ\n\
             grep -c -F -f $d/pattern $d/argv > $d/argv.count\n\
             grep -c -F -f $d/pattern $d/environ > $d/environ.count\n\
             exit 0",
            d = dir.display()
        ),
    )?;
    env.write_config(&format!(
        "{}{}",
        callback_toml("json", &cb, ""),
        callback_toml("raw", &cb, "")
    ))?;
    let json_file = env.path("job.json");
    fs::write(&json_file, format!("{{\"secret\":\"{secret}\"}}"))?;
    let raw_file = env.path("job.bin");
    fs::write(&raw_file, &secret)?;
    // Published from files, so that no command line of the test holds the secret either.
    let json_id = env.publish("json", &format!("@{}", json_file.display()))?;
    let out = env
        .bgq()
        .args(["publish", "raw", "--raw"])
        .arg(&raw_file)
        .output()?;
    assert!(out.status.success(), "{}", crate::support::describe(&out));
    let raw_id: i64 = String::from_utf8(out.stdout)?.trim().parse()?;
    env.process(&[])?;

    for id in [json_id, raw_id] {
        assert_eq!(env.state(id)?, "FINISHED", "job {id}");
        let seen = dir.join(id.to_string());
        assert_eq!(
            fs::read_to_string(seen.join("pattern"))?.trim_end(),
            secret,
            "job {id}: the callback got the secret on stdin"
        );
        let argv = fs::read_to_string(seen.join("argv"))?;
        assert!(
            argv.contains("bgq") && argv.contains("process"),
            "job {id}: the scan saw bgq's own command line"
        );
        assert_eq!(
            fs::read_to_string(seen.join("argv.count"))?.trim(),
            "0",
            "job {id}: the job's data is in a command line"
        );
        assert_eq!(
            fs::read_to_string(seen.join("environ.count"))?.trim(),
            "0",
            "job {id}: the job's data is in an environment"
        );
    }
    Ok(())
}

#[test]
fn commands_that_cannot_run_leave_their_jobs_as_they_were_naming_their_path() -> TestResult {
    let env = TestEnv::new("")?;
    let plain = env.path("plain.txt");
    fs::write(&plain, "not a program\n")?;
    let folder = env.path("a-folder");
    fs::create_dir_all(&folder)?;
    // Executable, but its interpreter does not exist.
    let orphan = env.path("orphan.sh");
    fs::write(&orphan, "#!/nonexistent/interpreter\nexit 0\n")?;
    fs::set_permissions(&orphan, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let commands = [("plain", &plain), ("folder", &folder), ("orphan", &orphan)];
    let config: String = commands
        .iter()
        .map(|(name, path)| callback_toml(name, path, ""))
        .collect();
    env.write_config(&config)?;
    let ids = commands
        .iter()
        .map(|(name, _)| env.publish(name, "{}"))
        .collect::<TestResult<Vec<i64>>>()?;
    let (code, stdout, stderr) = env.process_output(&[])?;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    for ((name, path), id) in commands.iter().zip(ids) {
        assert_eq!(env.state(id)?, "READY", "{name}");
        assert_eq!(env.job(id)?["attempts"], 0, "{name}");
        let line = stderr
            .lines()
            .find(|line| line.starts_with(&format!("bgq: error: callback `{name}` ")))
            .ok_or_else(|| format!("no error line for {name}: {stderr}"))?;
        assert!(
            line.contains(&path.display().to_string()),
            "the line names {}: {line}",
            path.display()
        );
    }
    Ok(())
}
