//! `bgq publish` (SPEC.md section 6): the payload forms, the printed id, the options as `list` shows
//! them, refusals that store nothing, and concurrent publishers that lose nothing.

use std::collections::HashSet;
use std::fs;

use crate::support::{
    TestEnv, TestResult, describe, env_with_callbacks, expect_error, expect_refused,
};

/// One callback `cb` that writes its stdin to `got.<job id>`; one job at a time.
fn recorder() -> TestResult<TestEnv> {
    env_with_callbacks(
        "concurrency = 1",
        &[("cb", "cat > \"@ROOT@/got.$BGQ_JOB_ID\"")],
    )
}

/// What the callback of job `id` got on stdin.
fn got(env: &TestEnv, id: i64) -> TestResult<Vec<u8>> {
    fs::read(env.path(&format!("got.{id}"))).map_err(|err| format!("got.{id}: {err}").into())
}

#[test]
fn json_text_prints_increasing_ids_alone() -> TestResult {
    let env = recorder()?;
    for expected in 1..=4 {
        let out = env
            .bgq()
            .args(["publish", "cb", "--json", r#"{"n":1}"#])
            .output()?;
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(String::from_utf8(out.stdout)?, format!("{expected}\n"));
        assert_eq!(String::from_utf8(out.stderr)?, "", "publish is quiet");
    }
    let ids: Vec<i64> = env
        .jobs()?
        .iter()
        .filter_map(|job| job["id"].as_i64())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    Ok(())
}

#[test]
fn json_from_text_file_and_stdin_is_delivered_compact_in_order() -> TestResult {
    let env = recorder()?;
    let compact = r#"{"b":1,"a":[true,null,"x"],"c":{"z":2.5,"y":"q\"t"}}"#;
    let pretty = "{\n  \"b\": 1,\n  \"a\": [ true, null, \"x\" ],\n  \"c\": { \"z\": 2.5, \"y\": \"q\\\"t\" }\n}\n";
    fs::write(env.path("params.json"), pretty)?;

    let from_text = env.publish("cb", compact)?;
    let from_file = env.publish("cb", &format!("@{}", env.path("params.json").display()))?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--json", "-"])
        .write_stdin(pretty)
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let from_stdin: i64 = String::from_utf8(out.stdout)?.trim().parse()?;

    env.process(&[])?;
    for id in [from_text, from_file, from_stdin] {
        assert_eq!(
            String::from_utf8(got(&env, id)?)?,
            format!("{compact}\n"),
            "stdin of job {id}"
        );
    }
    Ok(())
}

#[test]
fn raw_payload_from_file_and_stdin_is_delivered_byte_for_byte() -> TestResult {
    let env = recorder()?;
    let bytes: Vec<u8> = (0..=255u8).collect();
    fs::write(env.path("payload.bin"), &bytes)?;

    let out = env
        .bgq()
        .args(["publish", "cb", "--raw"])
        .arg(env.path("payload.bin"))
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "1\n");
    let out = env
        .bgq()
        .args(["publish", "cb", "--raw", "-"])
        .write_stdin(bytes.clone())
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "2\n");

    env.process(&[])?;
    assert_eq!(got(&env, 1)?, bytes, "--raw FILE");
    assert_eq!(got(&env, 2)?, bytes, "--raw -");
    Ok(())
}

#[test]
fn jsonl_from_file_and_stdin_publishes_one_job_per_line() -> TestResult {
    let env = recorder()?;
    fs::write(env.path("jobs.jsonl"), "{\"n\": 1}\n[1, 2]\n\"three\"\n")?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl"])
        .arg(env.path("jobs.jsonl"))
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "3\n", "prints the count");

    // The last line of stdin has no newline: still a line.
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl", "-"])
        .write_stdin("{\"n\":4}\n{\"n\":5}")
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "2\n");

    let ids: Vec<i64> = env
        .jobs()?
        .iter()
        .filter_map(|job| job["id"].as_i64())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    env.process(&[])?;
    let expected = [
        r#"{"n":1}"#,
        "[1,2]",
        r#""three""#,
        r#"{"n":4}"#,
        r#"{"n":5}"#,
    ];
    for (id, params) in (1..).zip(expected) {
        assert_eq!(String::from_utf8(got(&env, id)?)?, format!("{params}\n"));
    }
    Ok(())
}

#[test]
fn jsonl_with_a_bad_line_stores_nothing_and_names_the_line() -> TestResult {
    let env = recorder()?;
    fs::write(
        env.path("bad.jsonl"),
        "{\"n\":1}\n{\"n\":2}\n{\"n\":\n{\"n\":4}\n",
    )?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl"])
        .arg(env.path("bad.jsonl"))
        .output()?;
    expect_error(&out, 2, &["line 3"])?;
    assert!(env.jobs()?.is_empty(), "no job of the file is stored");

    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl", "-"])
        .write_stdin("{\"n\":1}\n\n{\"n\":3}\n")
        .output()?;
    expect_error(&out, 2, &["line 2"])?;
    assert!(env.jobs()?.is_empty(), "a blank line is an error too");
    Ok(())
}

#[test]
fn queue_serial_group_and_identifier_show_in_list() -> TestResult {
    let env = recorder()?;
    let tagged = env.publish_with(
        "cb",
        "{}",
        &[
            "--queue",
            "mail",
            "--serial-group",
            "invoice-7",
            "--identifier",
            "sendEmail-7",
        ],
    )?;
    let plain = env.publish("cb", "{}")?;
    assert!(plain > tagged, "ids increase");

    let job = env.job(tagged)?;
    assert_eq!(job["queue"], "mail");
    assert_eq!(job["serial_group"], "invoice-7");
    assert_eq!(job["identifier"], "sendEmail-7");
    assert_eq!(job["callback"], "cb");
    assert_eq!(job["state"], "READY");
    assert_eq!(job["attempts"], 0);

    let job = env.job(plain)?;
    assert_eq!(job["queue"], "general", "the default queue");
    assert!(job["serial_group"].is_null(), "{job}");
    assert!(job["identifier"].is_null(), "{job}");
    Ok(())
}

#[test]
fn default_queue_comes_from_the_config() -> TestResult {
    let env = env_with_callbacks("queue = \"custom\"", &[("cb", "exit 0")])?;
    let id = env.publish("cb", "{}")?;
    assert_eq!(env.job(id)?["queue"], "custom");
    env.process(&[])?;
    assert_eq!(
        env.state(id)?,
        "FINISHED",
        "process uses the config's queue"
    );
    Ok(())
}

#[test]
fn unknown_callback_is_refused_and_nothing_stored() -> TestResult {
    let env = recorder()?;
    let out = env
        .bgq()
        .args(["publish", "nope", "--json", "{}"])
        .output()?;
    expect_error(&out, 2, &["unknown callback `nope`"])?;
    let out = env
        .bgq()
        .args(["publish", "nope", "--jsonl", "-"])
        .write_stdin("{}\n")
        .output()?;
    expect_error(&out, 2, &["unknown callback `nope`"])?;
    assert!(env.jobs()?.is_empty());
    Ok(())
}

#[test]
fn invalid_json_is_refused_and_nothing_stored() -> TestResult {
    let env = recorder()?;
    for bad in [r#"{"a":"#, "{a:1}", "", "[1,]", "nul"] {
        let out = env.bgq().args(["publish", "cb", "--json", bad]).output()?;
        expect_error(&out, 2, &[]).map_err(|err| format!("--json {bad:?}: {err}"))?;
    }
    let out = env
        .bgq()
        .args(["publish", "cb", "--json", "-"])
        .write_stdin("{\"a\":1")
        .output()?;
    expect_error(&out, 2, &[])?;
    assert!(env.jobs()?.is_empty());
    Ok(())
}

#[test]
fn exactly_one_payload_option_is_required() -> TestResult {
    let env = recorder()?;
    fs::write(env.path("p.json"), "{}\n")?;
    let file = env.path("p.json").display().to_string();
    let cases: [&[&str]; 5] = [
        &[],
        &["--json", "{}", "--raw", &file],
        &["--json", "{}", "--jsonl", &file],
        &["--raw", &file, "--jsonl", &file],
        &["--json", "{}", "--json", "{}"],
    ];
    for args in cases {
        let out = env.bgq().args(["publish", "cb"]).args(args).output()?;
        expect_refused(&out, &[2]).map_err(|err| format!("publish cb {args:?}: {err}"))?;
    }
    assert!(env.jobs()?.is_empty());
    Ok(())
}

#[test]
fn concurrent_publishers_lose_nothing() -> TestResult {
    const THREADS: usize = 6;
    const EACH: usize = 30;
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let config = env.config_path();
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let config = config.clone();
            std::thread::spawn(move || -> Result<Vec<i64>, String> {
                let mut ids = Vec::new();
                for i in 0..EACH {
                    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
                        .env_remove("BGQ_CONFIG")
                        .arg("--config")
                        .arg(&config)
                        .args(["publish", "cb", "--json"])
                        .arg(format!(r#"{{"thread":{thread},"i":{i}}}"#))
                        .output()
                        .map_err(|err| err.to_string())?;
                    if !out.status.success() {
                        return Err(format!("publish failed: {}", describe(&out)));
                    }
                    let text = String::from_utf8_lossy(&out.stdout);
                    ids.push(
                        text.trim()
                            .parse()
                            .map_err(|_| format!("bad id {text:?}"))?,
                    );
                }
                Ok(ids)
            })
        })
        .collect();

    let mut printed = HashSet::new();
    for thread in threads {
        let ids = thread.join().map_err(|_| "publisher thread panicked")??;
        assert!(
            ids.windows(2).all(|pair| pair[0] < pair[1]),
            "one publisher's ids increase: {ids:?}"
        );
        for id in ids {
            assert!(printed.insert(id), "id {id} printed twice");
        }
    }
    assert_eq!(printed.len(), THREADS * EACH);

    let listed: HashSet<i64> = env
        .jobs()?
        .iter()
        .filter_map(|job| job["id"].as_i64())
        .collect();
    assert_eq!(listed, printed, "every printed id is listed, and no other");
    Ok(())
}

#[test]
fn nested_json_within_the_depth_limit_is_delivered_unchanged() -> TestResult {
    let env = recorder()?;
    let nested = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let id = env.publish("cb", &nested)?;
    env.process(&[])?;
    assert_eq!(String::from_utf8(got(&env, id)?)?, format!("{nested}\n"));
    Ok(())
}

/// README: "JSON nested deeper than 128 levels is refused": 128 levels are published (with
/// `--json` and `--jsonl`) and delivered unchanged, 129 are refused and store nothing.
#[test]
fn json_nested_128_levels_is_published_and_129_refused() -> TestResult {
    let env = recorder()?;
    let arrays = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = |depth: usize| format!("{}1{}", "{\"k\":".repeat(depth), "}".repeat(depth));
    let by_json = env.publish("cb", &arrays(128))?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl", "-"])
        .write_stdin(format!("{}\n{}\n", objects(128), arrays(1)))
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let by_jsonl = by_json + 1;
    for too_deep in [arrays(129), objects(129)] {
        let out = env
            .bgq()
            .args(["publish", "cb", "--json", &too_deep])
            .output()?;
        expect_error(
            &out,
            2,
            &["invalid JSON in --json: nested deeper than 128 levels"],
        )?;
        let out = env
            .bgq()
            .args(["publish", "cb", "--jsonl", "-"])
            .write_stdin(format!("{}\n{too_deep}\n", arrays(1)))
            .output()?;
        expect_error(
            &out,
            2,
            &["invalid JSON on --jsonl line 2: nested deeper than 128 levels"],
        )?;
    }
    assert_eq!(env.jobs()?.len(), 3, "only the jobs within the limit");
    env.process(&[])?;
    assert_eq!(String::from_utf8(got(&env, by_json)?)?, arrays(128) + "\n");
    assert_eq!(
        String::from_utf8(got(&env, by_jsonl)?)?,
        objects(128) + "\n"
    );
    Ok(())
}

#[test]
fn large_raw_payload_is_delivered_or_may_be_ignored() -> TestResult {
    let env = env_with_callbacks(
        "",
        &[
            ("cb", "cat > \"@ROOT@/got.$BGQ_JOB_ID\""),
            ("deaf", "echo not reading"),
        ],
    )?;
    // 3 MiB: far more than a pipe buffer, so bgq must feed stdin while the callback runs.
    let bytes: Vec<u8> = (0..3u32 << 20)
        .map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect();
    let out = env
        .bgq()
        .args(["publish", "cb", "--raw", "-"])
        .write_stdin(bytes.clone())
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let read = String::from_utf8(out.stdout)?.trim().parse()?;
    fs::write(env.path("big.bin"), &bytes)?;
    let out = env
        .bgq()
        .args(["publish", "deaf", "--raw"])
        .arg(env.path("big.bin"))
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    let ignored = String::from_utf8(out.stdout)?.trim().parse()?;

    env.process(&[])?;
    assert!(got(&env, read)? == bytes, "3 MiB delivered unchanged");
    assert_eq!(env.state(read)?, "FINISHED");
    assert_eq!(
        env.state(ignored)?,
        "FINISHED",
        "a callback that exits 0 without reading its stdin is FINISHED"
    );
    Ok(())
}

#[test]
fn integer_extremes_and_unicode_survive_the_round_trip() -> TestResult {
    let env = recorder()?;
    let id = env.publish(
        "cb",
        r#"{"min":-9223372036854775808,"max":18446744073709551615,"f":0.1,"s":"\u00e9\ud83d\ude00"}"#,
    )?;
    env.process(&[])?;
    assert_eq!(
        String::from_utf8(got(&env, id)?)?,
        "{\"min\":-9223372036854775808,\"max\":18446744073709551615,\"f\":0.1,\"s\":\"é😀\"}\n"
    );
    Ok(())
}

/// `max_payload` (README "Configuration"): a `--json` text or file, a `--raw` file or stdin, or
/// a `--jsonl` line up to it is published; one byte more is refused with exit 2 and one line
/// naming the size and the setting, and nothing is stored. An endless input is refused too:
/// bgq reads one byte past the limit, not the whole input.
#[test]
fn payloads_over_max_payload_are_refused_without_being_read_whole() -> TestResult {
    let env = env_with_callbacks("max_payload = \"1KiB\"", &[("cb", "exit 0")])?;
    let refusal = format!(
        "is larger than 1KiB, the max_payload of {}: nothing stored",
        env.config_path().display()
    );
    let json_of = |size: usize| format!("\"{}\"", "x".repeat(size - 2));
    let file = |name: &str, bytes: &[u8]| -> TestResult<String> {
        fs::write(env.path(name), bytes)?;
        Ok(env.path(name).display().to_string())
    };
    let fits = file("fits.json", json_of(1024).as_bytes())?;
    let over = file("over.json", json_of(1025).as_bytes())?;
    let raw_fits = file("fits.bin", &[7; 1024])?;
    let raw_over = file("over.bin", &[7; 1025])?;

    let mut published = 0;
    for args in [
        vec!["--json".to_owned(), json_of(1024)],
        vec!["--json".to_owned(), format!("@{fits}")],
        vec!["--raw".to_owned(), raw_fits.clone()],
    ] {
        env.bgq()
            .args(["publish", "cb"])
            .args(&args)
            .assert()
            .success();
        published += 1;
    }
    let out = env
        .bgq()
        .args(["publish", "cb", "--jsonl", "-"])
        .write_stdin(format!("{}\n{}\n", json_of(1024), json_of(1024)))
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    published += 2;

    let refused = |args: &[&str], stdin: Option<std::process::Stdio>, what: &str| -> TestResult {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bgq"))
            .current_dir(env.root())
            .env_remove("BGQ_CONFIG")
            .arg("--config")
            .arg(env.config_path())
            .args(["publish", "cb"])
            .args(args)
            .stdin(stdin.unwrap_or_else(std::process::Stdio::null))
            .output()?;
        expect_error(&out, 2, &[&format!("{what} {refusal}")])
            .map_err(|err| format!("publish {args:?}: {err}").into())
    };
    let zero = || -> TestResult<std::process::Stdio> { Ok(fs::File::open("/dev/zero")?.into()) };
    refused(&["--json", &json_of(1025)], None, "--json")?;
    refused(&["--json", &format!("@{over}")], None, "--json input")?;
    refused(&["--json", "-"], Some(zero()?), "--json input")?;
    refused(&["--raw", &raw_over], None, "--raw input")?;
    refused(&["--raw", "/dev/zero"], None, "--raw input")?;
    refused(&["--raw", "-"], Some(zero()?), "--raw input")?;
    refused(&["--jsonl", "/dev/zero"], None, "--jsonl line 1")?;
    let lines = file(
        "lines.jsonl",
        format!("{}\n{}\n", json_of(10), json_of(1025)).as_bytes(),
    )?;
    refused(&["--jsonl", &lines], None, "--jsonl line 2")?;
    assert_eq!(env.jobs()?.len(), published, "nothing refused was stored");
    Ok(())
}

/// Without `max_payload`, the limit is 16 MiB.
#[test]
fn the_default_max_payload_is_16_mib() -> TestResult {
    let env = env_with_callbacks("", &[("cb", "exit 0")])?;
    let bytes = vec![b'x'; (16 << 20) + 1];
    fs::write(env.path("over.bin"), &bytes)?;
    fs::write(env.path("fits.bin"), &bytes[1..])?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--raw"])
        .arg(env.path("over.bin"))
        .output()?;
    expect_error(
        &out,
        2,
        &["--raw input is larger than 16MiB, the max_payload of"],
    )?;
    let out = env
        .bgq()
        .args(["publish", "cb", "--raw"])
        .arg(env.path("fits.bin"))
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(env.jobs()?.len(), 1);
    Ok(())
}
