//! SPEC.md section 5: what a callback gets (argv, stdin, environment, working dir) and how its exit maps to a state.
//! (A command that cannot be started is `broken_callbacks.rs`.)

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::support::{
    TestEnv, TestResult, callback_toml, notices, notify_line, read_lines, toml_str,
};

/// Parses `env` output (one `KEY=VALUE` a line) into a map.
fn env_map(path: &Path) -> TestResult<BTreeMap<String, String>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

#[test]
fn stdin_is_the_published_json_and_env_is_set() -> TestResult {
    let env = TestEnv::new("")?;
    let dir = env.path("out");
    fs::create_dir_all(&dir)?;
    let cb = env.script(
        "cb.sh",
        &format!(
            "cat > {d}/stdin-$BGQ_JOB_ID\nenv > {d}/env-$BGQ_JOB_ID",
            d = dir.display()
        ),
    )?;
    env.write_config(&callback_toml("rec", &cb, ""))?;

    let json = r#"{"b":1,"a":[true,null,"x"],"s":"é \"q\" \\ /"}"#;
    let id1 = env.publish_with(
        "rec",
        json,
        &["--serial-group", "grp-1", "--identifier", "ident-1"],
    )?;
    let id2 = env.publish_with("rec", r#"  { "z" : 2 , "y" : [ ] }  "#, &["--queue", "q2"])?;
    env.process(&[])?;
    env.process(&["--queue", "q2"])?;
    assert_eq!(env.state(id1)?, "FINISHED");
    assert_eq!(env.state(id2)?, "FINISHED");

    // Exactly the published JSON, compact, keys in the published order, plus one newline.
    let expected: Value = serde_json::from_str(json)?;
    let got = fs::read(dir.join(format!("stdin-{id1}")))?;
    assert_eq!(
        String::from_utf8(got.clone())?,
        format!("{}\n", serde_json::to_string(&expected)?)
    );
    assert_eq!(
        fs::read_to_string(dir.join(format!("stdin-{id2}")))?,
        "{\"z\":2,\"y\":[]}\n"
    );

    let e1 = env_map(&dir.join(format!("env-{id1}")))?;
    let job1 = env.job(id1)?;
    assert_eq!(e1.get("BGQ_JOB_ID"), Some(&id1.to_string()));
    assert_eq!(
        e1.get("BGQ_QUEUE").map(String::as_str),
        job1["queue"].as_str()
    );
    assert_eq!(e1.get("BGQ_CALLBACK").map(String::as_str), Some("rec"));
    assert_eq!(e1.get("BGQ_ATTEMPT").map(String::as_str), Some("1"));
    assert_eq!(
        e1.get("BGQ_SERIAL_GROUP").map(String::as_str),
        Some("grp-1")
    );
    assert_eq!(
        e1.get("BGQ_IDENTIFIER").map(String::as_str),
        Some("ident-1")
    );
    let config = e1.get("BGQ_CONFIG").ok_or("BGQ_CONFIG not set")?;
    assert_eq!(
        fs::canonicalize(config)?,
        fs::canonicalize(env.config_path())?
    );

    let e2 = env_map(&dir.join(format!("env-{id2}")))?;
    assert_eq!(e2.get("BGQ_JOB_ID"), Some(&id2.to_string()));
    assert_eq!(e2.get("BGQ_QUEUE").map(String::as_str), Some("q2"));
    assert_eq!(e2.get("BGQ_ATTEMPT").map(String::as_str), Some("1"));
    assert!(!e2.contains_key("BGQ_SERIAL_GROUP"), "{e2:?}");
    assert!(!e2.contains_key("BGQ_IDENTIFIER"), "{e2:?}");
    Ok(())
}

#[test]
fn argv_is_the_configured_command_unchanged_and_env_table_is_added() -> TestResult {
    let env = TestEnv::new("")?;
    let out = env.path("argv.txt");
    let envout = env.path("env.txt");
    let cb = env.script(
        "cb.sh",
        &format!(
            "printf '[%s]\\n' \"$0\" \"$@\" > {}\nenv > {}",
            out.display(),
            envout.display()
        ),
    )?;
    env.write_config(&format!(
        "[callbacks.args]\ncommand = [{}, \"a b\", \"--x\", \"$HOME\", \"*\"]\nenv = {{ FOO = \"bar baz\", BGQ_TEST_EMPTY = \"\" }}\n",
        toml_str(&cb.display().to_string())
    ))?;
    let id = env.publish("args", r#"{"not":"on the command line"}"#)?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "FINISHED");
    assert_eq!(
        fs::read_to_string(&out)?,
        format!("[{}]\n[a b]\n[--x]\n[$HOME]\n[*]\n", cb.display())
    );
    let vars = env_map(&envout)?;
    assert_eq!(vars.get("FOO").map(String::as_str), Some("bar baz"));
    assert_eq!(vars.get("BGQ_TEST_EMPTY").map(String::as_str), Some(""));
    // The inherited environment is kept.
    assert!(vars.contains_key("PATH"), "{vars:?}");
    Ok(())
}

#[test]
fn working_dir_is_honoured_and_defaults_to_the_config_folder() -> TestResult {
    let env = TestEnv::new("")?;
    fs::create_dir_all(env.path("abs-wd"))?;
    fs::create_dir_all(env.path("rel-wd"))?;
    fs::create_dir_all(env.path("elsewhere"))?;
    let cb = env.script("cb.sh", "pwd > \"$WD_OUT\"")?;
    let abs = env.path("abs-wd");
    env.write_config(&format!(
        "{}{}{}",
        callback_toml(
            "abs",
            &cb,
            &format!(
                "working_dir = {}\nenv = {{ WD_OUT = {} }}",
                toml_str(&abs.display().to_string()),
                toml_str(&env.path("abs.txt").display().to_string())
            )
        ),
        callback_toml(
            "rel",
            &cb,
            &format!(
                "working_dir = \"rel-wd\"\nenv = {{ WD_OUT = {} }}",
                toml_str(&env.path("rel.txt").display().to_string())
            )
        ),
        callback_toml(
            "default",
            &cb,
            &format!(
                "env = {{ WD_OUT = {} }}",
                toml_str(&env.path("default.txt").display().to_string())
            )
        ),
    ))?;
    let ids = [
        env.publish("abs", "{}")?,
        env.publish("rel", "{}")?,
        env.publish("default", "{}")?,
    ];
    // Run from another directory: the default must be the config's folder, not bgq's cwd.
    let out = env
        .bgq()
        .current_dir(env.path("elsewhere"))
        .arg("process")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ids {
        assert_eq!(env.state(id)?, "FINISHED");
    }
    let pwd = |name: &str| -> TestResult<std::path::PathBuf> {
        let text = fs::read_to_string(env.path(name))?;
        Ok(fs::canonicalize(text.trim_end())?)
    };
    assert_eq!(pwd("abs.txt")?, fs::canonicalize(&abs)?);
    assert_eq!(pwd("rel.txt")?, fs::canonicalize(env.path("rel-wd"))?);
    assert_eq!(pwd("default.txt")?, fs::canonicalize(env.root())?);
    Ok(())
}

#[test]
fn exit_codes_map_to_states() -> TestResult {
    let env = TestEnv::new("")?;
    // The payload is the exit code.
    let cb = env.script("cb.sh", "exit $(cat)")?;
    env.write_config(&format!(
        "[retry]\ndelay = \"0s\"\njitter = 0.0\n{}",
        callback_toml("code", &cb, "")
    ))?;
    let cases = [
        ("0", "FINISHED"),
        ("75", "TEMPORARILY_FAILED"),
        ("76", "WAITING"),
        ("3", "PERMANENTLY_FAILED"),
        ("1", "PERMANENTLY_FAILED"),
        ("77", "PERMANENTLY_FAILED"),
    ];
    let ids = cases
        .iter()
        .map(|(code, _)| env.publish("code", code))
        .collect::<TestResult<Vec<_>>>()?;
    let (code, stdout, _stderr) = env.process_output(&[])?;
    assert_eq!(code, 0, "process exits 0 whatever its jobs' outcomes");
    assert_eq!(stdout, "");
    for (id, (exit, state)) in ids.iter().zip(cases) {
        assert_eq!(env.state(*id)?, state, "exit {exit}");
    }
    Ok(())
}

#[test]
fn killed_by_a_signal_is_permanently_failed() -> TestResult {
    let env = TestEnv::new("")?;
    let cb = env.script("cb.sh", "kill -9 $$")?;
    env.write_config(&callback_toml("die", &cb, ""))?;
    let id = env.publish("die", "{}")?;
    let (code, _, stderr) = env.process_output(&[])?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(env.state(id)?, "PERMANENTLY_FAILED");
    Ok(())
}

#[test]
fn output_tail_is_kept_and_bounded() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = notify_line(&env)?;
    let cb = env.script(
        "cb.sh",
        "head -c 204800 /dev/zero | tr '\\0' 'x'\necho\necho THE-END\nexit 3",
    )?;
    env.write_config(&format!("{notify}\n{}", callback_toml("loud", &cb, "")))?;
    let id = env.publish("loud", "{}")?;
    let (code, _, stderr) = env.process_output(&[])?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(env.state(id)?, "PERMANENTLY_FAILED");
    let got = notices(&env.path("notices.jsonl"))?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"].as_i64(), Some(id));
    let output = got[0]["output"].as_str().ok_or("no output string")?;
    assert!(
        output.trim_end().ends_with("THE-END"),
        "tail: {:?}",
        &output[output.len().saturating_sub(100)..]
    );
    assert!(
        output.len() >= 4096,
        "output tail only {} bytes",
        output.len()
    );
    assert!(
        output.len() < 1024 * 1024,
        "output tail {} bytes",
        output.len()
    );
    Ok(())
}

#[test]
fn output_tail_includes_stderr() -> TestResult {
    let env = TestEnv::new("")?;
    let notify = notify_line(&env)?;
    let cb = env.script("cb.sh", "echo ERR-MARK >&2\nexit 3")?;
    env.write_config(&format!("{notify}\n{}", callback_toml("err", &cb, "")))?;
    let id = env.publish("err", "{}")?;
    env.process(&[])?;
    assert_eq!(env.state(id)?, "PERMANENTLY_FAILED");
    let got = notices(&env.path("notices.jsonl"))?;
    assert_eq!(got.len(), 1, "{got:?}");
    let output = got[0]["output"].as_str().ok_or("no output string")?;
    assert!(output.contains("ERR-MARK"), "{output:?}");
    Ok(())
}

#[test]
fn callback_that_never_reads_a_large_stdin_still_finishes() -> TestResult {
    let env = TestEnv::new("")?;
    let marker = env.path("ran");
    let cb = env.script(
        "cb.sh",
        &format!("sleep 0.1\ntouch {}\nexit 0", marker.display()),
    )?;
    env.write_config(&callback_toml("deaf", &cb, "timeout = \"20s\""))?;
    let payload = env.path("big.json");
    fs::write(
        &payload,
        serde_json::to_string(&Value::String("y".repeat(1024 * 1024)))?,
    )?;
    let id = env.publish("deaf", &format!("@{}", payload.display()))?;
    let start = std::time::Instant::now();
    let (code, _, stderr) = env.process_output(&[])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(start.elapsed().as_secs() < 15, "took {:?}", start.elapsed());
    assert!(marker.exists());
    assert_eq!(env.state(id)?, "FINISHED");
    Ok(())
}

#[test]
fn process_is_quiet_when_all_jobs_finish() -> TestResult {
    let env = TestEnv::new("")?;
    let log = env.path("log");
    let cb = env.script(
        "cb.sh",
        &format!(
            "echo some output; echo some error >&2; echo $BGQ_JOB_ID >> {}",
            log.display()
        ),
    )?;
    env.write_config(&callback_toml("ok", &cb, ""))?;
    for i in 0..3 {
        env.publish("ok", &format!("{{\"i\":{i}}}"))?;
    }
    let (code, stdout, stderr) = env.process_output(&[])?;
    assert_eq!(code, 0);
    assert_eq!(stdout, "");
    assert_eq!(stderr, "");
    assert_eq!(read_lines(&log).len(), 3);
    assert!(env.jobs()?.iter().all(|j| j["state"] == "FINISHED"));
    // Nothing to do: still quiet.
    let (code, stdout, stderr) = env.process_output(&[])?;
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
    Ok(())
}
