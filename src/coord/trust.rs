//! Which files and folders bgq may rely on: those no other local user could have written.
//!
//! A lock file holds the notes that tell recovery which process groups to kill, and the lock
//! decides whether a queue runs at all; the database's folder decides which file bgq opens and
//! where SQLite writes beside it. Someone who can write any of them can stop a queue silently or
//! make bgq kill, read or write with its rights (root's, under a root crontab). So each is
//! trusted only when:
//! - its owner is the user bgq runs as, root, or (with the config's `group`) a member of that
//!   group, one of the queue's users;
//! - no other user can write it: not writable by everyone, and writable by its group only when
//!   that group is its owner's own (a user-private group, as Debian and Fedora make them) or
//!   the config's `group` (see `share`);
//! - for a file, it has a single link (another name for it could be anyone's).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::coord::share::{self, Sharing, group_name};

/// What a checked path is to bgq, for the messages that refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The folder lock files live in.
    LockFolder,
    /// A lock file, with its notes about running callbacks.
    LockFile,
    /// The folder of the database file.
    DatabaseFolder,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::LockFolder => "lock folder",
            Role::LockFile => "lock file",
            Role::DatabaseFolder => "database folder",
        }
    }

    /// What the user can do about an untrusted path of this role.
    fn fix(self) -> &'static str {
        match self {
            Role::LockFolder => {
                "leave temp_dir unset (bgq then keeps its locks in a private folder) or name a folder only this queue's users can write"
            }
            Role::LockFile => {
                "remove it, and make sure only this queue's users can write its folder"
            }
            Role::DatabaseFolder => {
                "keep the database in a folder only this queue's users can write"
            }
        }
    }
}

/// Why `path` is not trusted, in one line with its owner and the fix; `None` when it is.
pub fn distrust(path: &Path, meta: &Metadata, role: Role) -> Option<String> {
    distrust_as(path, meta, role, share::current())
}

/// [`distrust`] under the sharing policy `sharing`.
fn distrust_as(path: &Path, meta: &Metadata, role: Role, sharing: &Sharing) -> Option<String> {
    let me = Uid::effective().as_raw();
    let owner = meta.uid();
    let mode = meta.mode() & 0o7777;
    let what = role.name();
    let shown = path.display();
    let reason = if owner != me && owner != 0 && !sharing.is_member(owner) {
        let members = sharing
            .group()
            .map(|group| format!(" nor by a member of group {}", group.name))
            .unwrap_or_default();
        let trusted = if me == 0 {
            format!("root, the user bgq runs as,{members}")
        } else {
            format!(
                "{}, the user bgq runs as, nor by root{members}",
                user_name(me)
            )
        };
        format!(
            "{what} {shown} is owned by {}, not by {trusted}",
            user_name(owner)
        )
    } else if mode & 0o002 != 0 {
        format!(
            "{what} {shown} is writable by every user (mode {mode:04o}, owner {})",
            user_name(owner)
        )
    } else if mode & 0o020 != 0
        && !sharing.is_shared_gid(meta.gid())
        && !is_private_group(meta.gid(), owner)
    {
        format!(
            "{what} {shown} is writable by group {}, which is not private to its owner {} (mode {mode:04o})",
            group_name(meta.gid()),
            user_name(owner)
        )
    } else if meta.is_file() && meta.nlink() > 1 {
        format!(
            "{what} {shown} has {} links (owner {}): another name for it could be anyone's",
            meta.nlink(),
            user_name(owner)
        )
    } else {
        return None;
    };
    Some(format!("{reason}: {}", role.fix()))
}

/// Refuses `path` with an error unless it is trusted (see [`distrust`]).
pub fn require(path: &Path, meta: &Metadata, role: Role) -> anyhow::Result<()> {
    match distrust(path, meta, role) {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}

/// Why the folder of the database at `database` is not trusted, if it is not: the folder the
/// path names and, for a database that is a symlink, the folder it leads to. `None` also when
/// the folder does not exist yet (bgq makes it, mode 0700).
pub fn database_folder_problem(database: &Path) -> Option<String> {
    let folder = database.parent()?;
    let meta = std::fs::metadata(folder).ok()?;
    if let Some(problem) = distrust(folder, &meta, Role::DatabaseFolder) {
        return Some(problem);
    }
    let is_link = std::fs::symlink_metadata(database).is_ok_and(|meta| meta.is_symlink());
    if !is_link {
        return None;
    }
    let target = std::fs::canonicalize(database).ok()?;
    let target_folder = target.parent()?;
    let meta = std::fs::metadata(target_folder).ok()?;
    distrust(target_folder, &meta, Role::DatabaseFolder).map(|problem| {
        format!(
            "the database {} is a symlink to {}: {problem}",
            database.display(),
            target.display()
        )
    })
}

/// Whether `gid` is the primary group of `owner` with no other members listed: writing allowed
/// to it is writing allowed to its owner.
fn is_private_group(gid: u32, owner: u32) -> bool {
    let primary = User::from_uid(Uid::from_raw(owner))
        .ok()
        .flatten()
        .map(|user| user.gid.as_raw());
    if primary != Some(gid) {
        return false;
    }
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(group)) => group.mem.is_empty(),
        // A primary group without an entry of its own has no listed members either.
        Ok(None) => true,
        Err(_) => false,
    }
}

/// `name` for a uid with an entry in the user database, else `uid N`.
pub fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn verdict(path: &Path, role: Role) -> Option<String> {
        let meta = fs::symlink_metadata(path).expect("metadata");
        distrust(path, &meta, role)
    }

    #[test]
    fn own_private_files_and_folders_are_trusted() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(verdict(dir.path(), Role::LockFolder), None);
        let file = dir.path().join("x.lock");
        fs::write(&file, "").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(verdict(&file, Role::LockFile), None);
    }

    #[test]
    fn a_folder_everyone_can_write_is_refused_even_when_sticky() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).expect("chmod");
        let why = verdict(dir.path(), Role::LockFolder).expect("refused");
        assert!(why.contains("writable by every user (mode 1777"), "{why}");
        assert!(why.contains("leave temp_dir unset"), "{why}");
    }

    #[test]
    fn a_file_with_a_second_name_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("x.lock");
        fs::write(&file, "").expect("write");
        fs::hard_link(&file, dir.path().join("other")).expect("link");
        let why = verdict(&file, Role::LockFile).expect("refused");
        assert!(why.contains("has 2 links"), "{why}");
    }

    #[test]
    fn a_database_linked_into_a_folder_everyone_can_write_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = dir.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).expect("chmod");
        fs::write(open.join("bgq.sqlite"), "").expect("write");
        let link = dir.path().join("bgq.sqlite");
        std::os::unix::fs::symlink(open.join("bgq.sqlite"), &link).expect("symlink");
        let why = database_folder_problem(&link).expect("refused");
        assert!(why.contains("is a symlink to"), "{why}");
        assert!(why.contains("writable by every user"), "{why}");
        assert_eq!(
            database_folder_problem(&dir.path().join("plain.sqlite")),
            None
        );
    }

    #[test]
    fn a_folder_of_the_shared_group_is_trusted_and_of_another_group_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o2770)).expect("chmod");
        let meta = fs::symlink_metadata(dir.path()).expect("metadata");
        let gid = meta.gid();
        let shared = Sharing::with_group(&gid.to_string()).expect("group");
        assert_eq!(
            distrust_as(dir.path(), &meta, Role::LockFolder, &shared),
            None
        );
        // Root's group is never a user-private one of the user that owns this folder, unless
        // that user is root: then it is (root's own), and the refusal is beside the point.
        if !Uid::effective().is_root() || !is_private_group(gid, meta.uid()) {
            let why = distrust_as(dir.path(), &meta, Role::LockFolder, &Sharing::private())
                .expect("refused");
            assert!(why.contains("writable by group"), "{why}");
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o2777)).expect("chmod");
        let meta = fs::symlink_metadata(dir.path()).expect("metadata");
        let why = distrust_as(dir.path(), &meta, Role::LockFolder, &shared).expect("refused");
        assert!(why.contains("writable by every user"), "{why}");
    }

    #[test]
    fn unknown_users_are_named_by_number() {
        assert_eq!(user_name(4_000_000_000), "uid 4000000000");
    }
}
