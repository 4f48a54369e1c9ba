//! PostgreSQL only, through PgBouncer in transaction mode: `publish` works (bgq sends unnamed
//! statements, one transaction each), and `process`, which needs a session of its own, refuses
//! in one line and starts nothing. Needs `pgbouncer` (Debian's package); without it the tests
//! say so and pass, except in CI (`CI=true`).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A PgBouncer in transaction mode in front of the test's server, stopped on drop.
struct Bouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Host, port, user and database of a `postgres://user@host:port/db` URL.
fn parts(url: &str) -> TestResult<(String, String, String, String)> {
    let rest = url.split_once("://").ok_or("not a URL")?.1;
    let (authority, db) = rest.split_once('/').ok_or("no database")?;
    let db = db.split('?').next().unwrap_or(db).to_owned();
    let (user, hostport) = authority.rsplit_once('@').ok_or("no user")?;
    let user = user.split(':').next().unwrap_or(user).to_owned();
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    Ok((host.to_owned(), port.to_owned(), user, db))
}

fn start_bouncer(url: &str) -> TestResult<Option<Bouncer>> {
    if !Path::new(PGBOUNCER).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{PGBOUNCER} is missing: install Debian's pgbouncer package"
        );
        println!("skipped: {PGBOUNCER} is not installed");
        return Ok(None);
    }
    let (host, port, user, db) = parts(url)?;
    let dir = tempfile::tempdir()?;
    let listen = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n"))?;
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{db} = host={host} port={port} dbname={db}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             default_pool_size = 4\nlogfile = {log}\n",
            users = dir.path().join("users.txt").display(),
            log = dir.path().join("pgbouncer.log").display(),
        ),
    )?;
    // PgBouncer will not run as root.
    let mut command = if nix_is_root() {
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )?;
        // setpriv execs PgBouncer in its own place, so that killing the child stops it.
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            PGBOUNCER,
        ]);
        command
    } else {
        Command::new(PGBOUNCER)
    };
    let child = command
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let bouncer = Bouncer {
        child,
        port: listen,
        _dir: dir,
    };
    wait_for("PgBouncer to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
    })?;
    Ok(Some(bouncer))
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
}

/// The test's config with its database reached through `bouncer`.
fn through(env: &TestEnv, bouncer: &Bouncer, url: &str) -> TestResult<String> {
    let (_, _, user, db) = parts(url)?;
    let config = std::fs::read_to_string(env.config_path())?;
    Ok(config.replace(
        url,
        &format!("postgres://{user}@127.0.0.1:{}/{db}", bouncer.port),
    ))
}

#[test]
fn publish_works_through_a_transaction_pool_and_process_refuses_it() -> TestResult {
    let env = TestEnv::new("")?;
    if env.postgres().is_none() {
        return Ok(());
    }
    let script = env.script("ok.sh", "cat > /dev/null")?;
    env.write_config(&callback_toml("work", &script, ""))?;
    let config = std::fs::read_to_string(env.config_path())?;
    let url: toml::Value = toml::from_str(&config)?;
    let url = url["database"].as_str().ok_or("no database")?.to_owned();
    let Some(bouncer) = start_bouncer(&url)? else {
        return Ok(());
    };
    let pooled = env.path("pooled.toml");
    std::fs::write(&pooled, through(&env, &bouncer, &url)?)?;
    // Publishers at once, each its own connection through the pool.
    let publishers: Vec<Child> = (0..8)
        .map(|n| {
            Command::new(env!("CARGO_BIN_EXE_bgq"))
                .arg("--config")
                .arg(&pooled)
                .args(["publish", "work", "--json", &format!("{{\"n\":{n}}}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut ids = Vec::new();
    for publisher in publishers {
        let out = publisher.wait_with_output()?;
        assert!(out.status.success(), "{}", describe(&out));
        ids.push(printed_id(&out)?);
    }
    assert_eq!(env.jobs()?.len(), 8);
    let out = Command::new(env!("CARGO_BIN_EXE_bgq"))
        .arg("--config")
        .arg(&pooled)
        .arg("process")
        .output()?;
    expect_error(&out, 1, &["needs a session of its own", "transaction pool"])?;
    for id in &ids {
        assert_eq!(env.state(*id)?, "READY", "a refused run started job {id}");
    }
    // Directly connected, the same jobs run.
    env.process(&[])?;
    for id in &ids {
        assert_eq!(env.state(*id)?, "FINISHED");
    }
    Ok(())
}
