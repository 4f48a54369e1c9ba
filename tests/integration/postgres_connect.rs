//! PostgreSQL only: how bgq reaches its server (SPEC section 10). Secrets from the URL,
//! `PGPASSWORD` or a password file, never shown; TLS as `sslmode` says, the certificate checked
//! by `verify-ca` and `verify-full`; the key=value form. The server is the suite's throwaway
//! one (tests/postgres-server.sh), whose roles `bgq_pw` (password `bgq-secret`) and `bgq_tls`
//! (TLS only) and certificate authority (`BGQ_TEST_POSTGRES_CA`) these tests use; without them
//! the tests say so and return, except in CI, where they fail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::*;

/// The test server's host port and this test's schema, and the server's certificate
/// authority.
struct Server {
    port: String,
    schema: String,
    ca: PathBuf,
}

fn server(env: &TestEnv) -> TestResult<Option<Server>> {
    let Some((url, schema)) = env.postgres() else {
        return Ok(None);
    };
    let Some(ca) = std::env::var_os("BGQ_TEST_POSTGRES_CA").map(PathBuf::from) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "BGQ_TEST_POSTGRES_CA must name the test server's authority in CI (tests/run.sh sets it)"
        );
        println!(
            "skipped: BGQ_TEST_POSTGRES_CA is not set (the server is not one of tests/postgres-server.sh)"
        );
        return Ok(None);
    };
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .ok_or("no port in the test server's URL")?
        .to_owned();
    // The queue, made by the trusted role; the other roles are its members.
    env.bgq().arg("list").assert().success();
    Ok(Some(Server { port, schema, ca }))
}

/// `bgq list` against `database`, with `vars` in its environment.
fn list(
    env: &TestEnv,
    server: &Server,
    database: &str,
    vars: &[(&str, &str)],
) -> TestResult<Output> {
    let config = env.path("connect.toml");
    std::fs::write(
        &config,
        format!(
            "database = {}\nschema = {}\ntemp_dir = {}\n",
            toml_str(database),
            toml_str(&server.schema),
            toml_str(&env.path("locks").display().to_string())
        ),
    )?;
    let mut cmd = env.bgq_bare();
    cmd.arg("--config").arg(&config).arg("list");
    cmd.env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .env("HOME", env.root());
    for (key, value) in vars {
        cmd.env(key, value);
    }
    Ok(cmd.output()?)
}

fn connects(out: &Output) -> bool {
    out.status.success()
}

/// Asserts one line, exit 1, naming the server without the secret and saying `cause`.
fn refused(out: &Output, cause: &str) -> TestResult {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("bgq: error: cannot connect to "),
        "{stderr}"
    );
    assert!(stderr.contains(cause), "{stderr}");
    assert!(!stderr.contains("bgq-secret"), "{stderr}");
    Ok(())
}

#[test]
fn the_password_comes_from_the_url_the_environment_or_a_private_password_file() -> TestResult {
    let env = TestEnv::new("")?;
    let Some(server) = server(&env)? else {
        return Ok(());
    };
    let port = &server.port;
    let plain = format!("postgres://bgq_pw@127.0.0.1:{port}/bgq_test?sslmode=disable");
    refused(&list(&env, &server, &plain, &[])?, "password")?;
    let in_url = format!("postgres://bgq_pw:bgq-secret@127.0.0.1:{port}/bgq_test?sslmode=disable");
    assert!(connects(&list(&env, &server, &in_url, &[])?));
    let wrong = format!("postgres://bgq_pw:not-it@127.0.0.1:{port}/bgq_test?sslmode=disable");
    refused(
        &list(&env, &server, &wrong, &[])?,
        "password authentication failed",
    )?;
    assert!(connects(&list(
        &env,
        &server,
        &plain,
        &[("PGPASSWORD", "bgq-secret")]
    )?));

    // ~/.pgpass (HOME is the test's folder), then a file named by PGPASSFILE.
    let pgpass = env.path(".pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{port}:bgq_test:bgq_pw:bgq-secret\n"),
    )?;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600))?;
    assert!(connects(&list(&env, &server, &plain, &[])?));
    let named = env.path("named.pgpass");
    std::fs::rename(&pgpass, &named)?;
    let named_str = named.display().to_string();
    assert!(connects(&list(
        &env,
        &server,
        &plain,
        &[("PGPASSFILE", &named_str)]
    )?));
    // A file others may read is ignored, as libpq does, and bgq says why.
    std::fs::set_permissions(&named, std::fs::Permissions::from_mode(0o644))?;
    let out = list(&env, &server, &plain, &[("PGPASSFILE", &named_str)])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "password file {named_str} is ignored: others may read it"
        )),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn tls_is_used_as_sslmode_says_and_verify_modes_check_the_certificate() -> TestResult {
    let env = TestEnv::new("")?;
    let Some(server) = server(&env)? else {
        return Ok(());
    };
    let port = &server.port;
    let ca = server.ca.display().to_string();
    let url =
        |host: &str, query: &str| format!("postgres://bgq_tls@{host}:{port}/bgq_test?{query}");
    // bgq_tls may connect only over TLS: these prove TLS was used.
    refused(
        &list(&env, &server, &url("127.0.0.1", "sslmode=disable"), &[])?,
        "",
    )?;
    for query in ["sslmode=prefer", "sslmode=require"] {
        let out = list(&env, &server, &url("127.0.0.1", query), &[])?;
        assert!(connects(&out), "{query}: {}", describe(&out));
    }
    let verify_full = format!("sslmode=verify-full&sslrootcert={ca}");
    let out = list(&env, &server, &url("localhost", &verify_full), &[])?;
    assert!(connects(&out), "{}", describe(&out));
    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca does not.
    refused(
        &list(&env, &server, &url("127.0.0.1", &verify_full), &[])?,
        "not valid for name",
    )?;
    let verify_ca = format!("sslmode=verify-ca&sslrootcert={ca}");
    let out = list(&env, &server, &url("127.0.0.1", &verify_ca), &[])?;
    assert!(connects(&out), "{}", describe(&out));
    // Another authority: refused, whatever the name.
    let stranger = env.path("stranger.crt");
    make_authority(env.root(), &stranger)?;
    let other = format!("sslmode=verify-ca&sslrootcert={}", stranger.display());
    refused(
        &list(&env, &server, &url("localhost", &other), &[])?,
        "invalid peer certificate",
    )?;
    // verify-full without a root certificate anywhere: said, not guessed.
    refused(
        &list(&env, &server, &url("localhost", "sslmode=verify-full"), &[])?,
        "root certificate",
    )?;
    // libpq's variables set the same.
    let out = list(
        &env,
        &server,
        &format!("postgres://bgq_tls@localhost:{port}/bgq_test"),
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)],
    )?;
    assert!(connects(&out), "{}", describe(&out));
    Ok(())
}

#[test]
fn the_key_value_form_connects_like_the_url() -> TestResult {
    let env = TestEnv::new("")?;
    let Some(server) = server(&env)? else {
        return Ok(());
    };
    let keywords = format!(
        "host=localhost port={} dbname=bgq_test user=bgq_tls sslmode=verify-full sslrootcert='{}'",
        server.port,
        server.ca.display()
    );
    let out = list(&env, &server, &keywords, &[])?;
    assert!(connects(&out), "{}", describe(&out));
    let out = list(&env, &server, "host=localhost port='unclosed", &[])?;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    Ok(())
}

/// A self-signed authority of no one, in `cert`.
fn make_authority(dir: &Path, cert: &Path) -> TestResult {
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=stranger", "-keyout"])
        .arg(dir.join("stranger.key"))
        .arg("-out")
        .arg(cert)
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    Ok(())
}
