//! `bgq check`: the config checked against this machine and the queue, before cron finds out.
//! Each problem is one line; exit 1 when there is any. It never creates the database.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::statfs::statfs;
use nix::unistd::{AccessFlags, access};

use crate::config::{Config, Database};
use crate::coord::trust::user_name;

/// Runs `bgq check`.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (name, callback) in &config.callbacks {
        let path_var = callback
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok());
        if let Some(problem) = command_problem(&callback.command, path_var.as_deref()) {
            problems.push(format!("callback `{name}`: {problem}"));
        }
        if !callback.working_dir.is_dir() {
            let what = if callback.working_dir.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            problems.push(format!(
                "callback `{name}`: working_dir {} {what}",
                callback.working_dir.display()
            ));
        }
    }
    if let Some(notify) = &config.notify
        && let Some(problem) = command_problem(notify, std::env::var("PATH").ok().as_deref())
    {
        problems.push(format!("notify: {problem}"));
    }
    problems.extend(folder_problems(config));
    problems.extend(access_problems(config));
    let mut database = "not created yet";
    let untrusted = match &config.database {
        Database::Sqlite(database_file) => {
            crate::coord::trust::database_folder_problem(database_file)
        }
        Database::Postgres(_) => None,
    };
    if let Some(problem) = &untrusted {
        problems.push(problem.clone());
        database = "not opened";
    } else if let Some(store) = open_existing(config, &mut problems) {
        database = "ok";
        let known: Vec<&str> = config.callbacks.keys().map(String::as_str).collect();
        for (queue, callback, count) in store.waiting_callbacks_not_in(&known)? {
            problems.push(format!(
                "{count} unfinished job(s) of queue `{}` wait for callback `{}`, which the config does not define",
                crate::escape::line(&queue),
                crate::escape::line(&callback)
            ));
        }
    }
    let mut out = std::io::stdout().lock();
    for problem in &problems {
        writeln!(out, "problem: {problem}")?;
    }
    if problems.is_empty() {
        writeln!(
            out,
            "ok: {}: {} callback(s); database {} ({database}); temp_dir {}",
            config.path.display(),
            config.callbacks.len(),
            config.database,
            config.lock_folder.path().display()
        )?;
    }
    out.flush()?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::error::Unhealthy.into())
    }
}

/// The queue's store if it exists and this user can open it; a problem line when it cannot.
fn open_existing(
    config: &Config,
    problems: &mut Vec<String>,
) -> Option<Box<dyn crate::store::Store>> {
    match crate::store::open_existing(&config.database) {
        Ok(store) => store,
        Err(err) => {
            problems.push(format!("{err:#}"));
            None
        }
    }
}

/// What this user may not do to the files the queue shares with its other users: the
/// config's `group` it lacks, the database and its companions it cannot open for writing, the
/// lock files it cannot open.
fn access_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let sharing = &config.sharing;
    let me = user_name(nix::unistd::Uid::effective().as_raw());
    if let Some(group) = sharing.group()
        && !sharing.process_has_group()
    {
        problems.push(format!(
            "user {me} is not in group {} (the config's `group`): it cannot use the queue's shared files; run `usermod -aG {} {me}`, then log in again or restart its service",
            group.name, group.name
        ));
    }
    let mut files = Vec::new();
    if let Database::Sqlite(database) = &config.database {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = database.as_os_str().to_owned();
            name.push(suffix);
            files.push((PathBuf::from(name), "the database file"));
        }
        if let Some(folder) = database.parent()
            && let Some(group) = sharing.group()
            && let Ok(meta) = std::fs::metadata(folder)
            && (meta.gid() != group.gid || meta.mode() & 0o2070 != 0o2070)
        {
            problems.push(format!(
                "the database folder {} is not shared with group {} (group {}, mode {:04o}): the write-ahead log the queue's users make there must get the group; run `chgrp {} {} && chmod 2770 {}`",
                folder.display(),
                group.name,
                crate::coord::share::group_name(meta.gid()),
                meta.mode() & 0o7777,
                group.name,
                folder.display(),
                folder.display()
            ));
        }
    }
    if let Ok(entries) = std::fs::read_dir(config.lock_folder.path()) {
        let mut locks: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("bgq-") && name.ends_with(".lock"))
            })
            .collect();
        locks.sort();
        files.extend(locks.into_iter().map(|path| (path, "the lock file")));
    }
    for (path, what) in files {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && access(&path, AccessFlags::R_OK | AccessFlags::W_OK).is_err() {
            problems.push(format!(
                "user {me} cannot open {what} {} for writing: {}",
                path.display(),
                sharing.denied(&path, Some(&meta), false)
            ));
        }
    }
    problems
}

/// Why `argv` cannot be started, if it cannot.
fn command_problem(argv: &[String], path_var: Option<&str>) -> Option<String> {
    let Some(program) = argv.first() else {
        return Some("the command is empty".to_owned());
    };
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        let found = path_var
            .unwrap_or_default()
            .split(':')
            .filter(|folder| !folder.is_empty())
            .map(|folder| Path::new(folder).join(program))
            .find(|candidate| candidate.is_file() && is_executable(candidate));
        match found {
            Some(path) => path,
            None => return Some(format!("command `{program}` was not found in PATH")),
        }
    };
    if !path.exists() {
        return Some(format!("command {} does not exist", path.display()));
    }
    if path.is_dir() {
        return Some(format!("command {} is a directory", path.display()));
    }
    if !is_executable(&path) {
        return Some(format!("command {} is not executable", path.display()));
    }
    if has_crlf_shebang(&path) {
        return Some(format!(
            "command {} has Windows (CRLF) line endings: its `#!` line names an interpreter ending in a carriage return, which the system cannot find; convert it with `sed -i 's/\\r$//' {}` (or dos2unix)",
            path.display(),
            path.display()
        ));
    }
    if let Some(interpreter) = crate::runner::interpreter(&path)
        && !Path::new(&interpreter).exists()
    {
        return Some(format!(
            "command {}: its interpreter `{interpreter}` was not found",
            path.display()
        ));
    }
    None
}

/// Whether the file at `path` starts with a `#!` line that ends in `\r\n`: the kernel takes
/// the carriage return for part of the interpreter's name.
fn has_crlf_shebang(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 256];
    let Ok(count) = std::fs::File::open(path).and_then(|mut file| file.read(&mut head)) else {
        return false;
    };
    let head = &head[..count];
    head.starts_with(b"#!")
        && head
            .iter()
            .position(|b| *b == b'\n')
            .is_some_and(|end| end > 0 && head[end - 1] == b'\r')
}

/// Whether we may execute the file at `path`.
fn is_executable(path: &Path) -> bool {
    access(path, AccessFlags::X_OK).is_ok()
        && std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o111 != 0)
}

/// Whether we may create files in `folder`.
fn is_writable(folder: &Path) -> bool {
    access(folder, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}

/// Problems with the folders bgq writes: the lock folder and the database's folder.
fn folder_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let temp_dir = config.lock_folder.path();
    let lock_folder = config.lock_folder.verify();
    if let Err(err) = &lock_folder {
        problems.push(format!("{err:#}"));
    } else if config.lock_folder.is_private() {
        // Made on first use, in a folder that must exist.
        if let Some(parent) = temp_dir.parent().filter(|parent| !is_writable(parent)) {
            problems.push(format!(
                "the private lock folder {} cannot be made: {} is not writable",
                temp_dir.display(),
                parent.display()
            ));
        }
    } else if !temp_dir.is_dir() {
        problems.push(format!(
            "temp_dir {} does not exist or is not a directory",
            temp_dir.display()
        ));
    } else if !is_writable(temp_dir) {
        problems.push(format!("temp_dir {} is not writable", temp_dir.display()));
    } else if let Some(kind) = network_filesystem(temp_dir) {
        problems.push(format!(
            "temp_dir {} is on a network filesystem ({kind}): file locks there are not reliable",
            temp_dir.display()
        ));
    }
    // The folder that exists now: the database's, or the nearest parent bgq would create it in.
    let Database::Sqlite(database_file) = &config.database else {
        return problems;
    };
    // The nearest path that exists on the way to it: the folder itself, or where bgq would
    // start making it.
    let Some(folder) = database_file
        .ancestors()
        .skip(1)
        .find(|folder| std::fs::metadata(folder).is_ok())
    else {
        return problems;
    };
    let wanted = database_file.parent().unwrap_or(folder);
    let me = user_name(nix::unistd::Uid::effective().as_raw());
    if folder != wanted && !folder.is_dir() {
        problems.push(format!(
            "the database folder {} does not exist, and bgq cannot create it: {} is not a folder",
            wanted.display(),
            folder.display()
        ));
    } else if folder != wanted && !is_writable(folder) {
        problems.push(format!(
            "the database folder {} does not exist, and user {me} cannot create it: {} is not writable",
            wanted.display(),
            folder.display()
        ));
    } else if !folder.is_dir() {
        problems.push(format!(
            "the database folder {} is not a folder",
            folder.display()
        ));
    } else if !is_writable(folder) {
        problems.push(format!(
            "the database folder {} is not writable by user {me}: {}",
            folder.display(),
            config
                .sharing
                .denied(folder, std::fs::metadata(folder).ok().as_ref(), true)
        ));
    } else if let Some(kind) = network_filesystem(folder) {
        problems.push(format!(
            "the database {} is on a network filesystem ({kind}): SQLite's WAL mode needs a local one",
            config.database
        ));
    }
    problems
}

/// The kind of network filesystem holding `path`, if it is on one.
fn network_filesystem(path: &Path) -> Option<&'static str> {
    let kind = statfs(path).ok()?.filesystem_type();
    // The magic numbers are 32-bit; the field's width and sign vary by platform.
    #[allow(clippy::unnecessary_cast)]
    network_kind((kind.0 as u64) & 0xFFFF_FFFF)
}

/// Names the network filesystems among statfs(2) magic numbers.
fn network_kind(magic: u64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x0102_1997 => "9P",
        0x00C3_6400 => "Ceph",
        0x5346_414F => "AFS",
        0x7375_7245 => "Coda",
        0x0BD0_0BD0 => "Lustre",
        0x0116_1970 => "GFS2",
        0x7461_636F => "OCFS2",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_with_crlf_line_endings_is_named_as_such() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("job.sh");
        std::fs::write(&script, "#!/bin/sh\r\nexit 0\r\n").expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let problem = command_problem(&[script.display().to_string()], None).expect("problem");
        assert!(problem.contains("CRLF"), "{problem}");
        std::fs::write(&script, "#!/bin/sh\nexit 0\r\n").expect("write");
        assert_eq!(command_problem(&[script.display().to_string()], None), None);
    }

    #[test]
    fn network_filesystems_are_named_and_local_ones_are_not() {
        assert_eq!(network_kind(0x6969), Some("NFS"));
        assert_eq!(network_kind(0xFF53_4D42), Some("CIFS"));
        assert_eq!(network_kind(0xEF53), None); // ext4
        assert_eq!(network_kind(0x0102_1994), None); // tmpfs
        assert_eq!(network_filesystem(Path::new("/")), None);
    }

    #[test]
    fn commands_are_found_in_path_or_named_as_missing() {
        assert_eq!(
            command_problem(&["sh".to_owned()], Some("/bin:/usr/bin")),
            None
        );
        let missing = command_problem(&["no-such-xyz".to_owned()], Some("/bin"));
        assert_eq!(
            missing.as_deref(),
            Some("command `no-such-xyz` was not found in PATH")
        );
        let folder = command_problem(&["/".to_owned()], None);
        assert_eq!(folder.as_deref(), Some("command / is a directory"));
    }
}
