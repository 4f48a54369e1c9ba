//! Who may use the files bgq creates: the user it runs as alone (the default), or the users of
//! the config's `group` (a web server's user publishing, a service user processing, root now
//! and then), and the one-line explanation when one of them is denied a file.
//!
//! With a group, every file bgq makes (the SQLite database, its -wal and -shm files, their
//! folder, the lock folder and lock files) is given to that group and made group read/writable
//! (0660, folders 0770 and setgid, so that what others create in them gets the group too),
//! whoever runs bgq: root too, which must never leave files only root can open. A file of
//! bgq's that is owned by the user bgq runs as (or any, when that is root) but not yet shared
//! this way is fixed as it is opened, so that a run by root mends what an older setup left.
//!
//! The policy is process-wide, like the umask it stands in for: set once from the config
//! ([`set`]) and read where files are made ([`current`]).

use std::fs::{File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use nix::unistd::{Gid, Group, Uid, User};

use crate::coord::trust::user_name;

/// The group the config's `group` names, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedGroup {
    /// Its name, as the config wrote it.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

/// How bgq's files are shared: not at all, or with one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sharing {
    group: Option<SharedGroup>,
}

static CURRENT: OnceLock<Sharing> = OnceLock::new();
static PRIVATE: Sharing = Sharing { group: None };

/// Makes `sharing` the policy of this process (the first call wins: one config per process).
pub fn set(sharing: Sharing) {
    let _ = CURRENT.set(sharing);
}

/// The policy of this process: private unless [`set`] said otherwise.
pub fn current() -> &'static Sharing {
    CURRENT.get().unwrap_or(&PRIVATE)
}

impl Sharing {
    /// Files readable and writable by their owner only.
    pub fn private() -> Sharing {
        Sharing { group: None }
    }

    /// Files shared with the group `name`; an error when the system has no such group.
    pub fn with_group(name: &str) -> Result<Sharing, String> {
        let group = if let Ok(gid) = name.parse::<u32>() {
            Group::from_gid(Gid::from_raw(gid))
        } else {
            Group::from_name(name)
        };
        match group {
            Ok(Some(group)) => Ok(Sharing {
                group: Some(SharedGroup {
                    name: name.to_owned(),
                    gid: group.gid.as_raw(),
                }),
            }),
            Ok(None) => Err(format!(
                "there is no group `{name}` on this system: create it (`groupadd {name}`) and add the queue's users to it (`usermod -aG {name} USER`)"
            )),
            Err(err) => Err(format!("cannot look up group `{name}`: {err}")),
        }
    }

    /// The shared group, if there is one.
    pub fn group(&self) -> Option<&SharedGroup> {
        self.group.as_ref()
    }

    /// The mode of a file bgq creates.
    pub fn file_mode(&self) -> u32 {
        if self.group.is_some() { 0o660 } else { 0o600 }
    }

    /// The mode of a folder bgq creates (setgid when shared: files made in it by any of the
    /// queue's users get its group, SQLite's -wal and -shm among them).
    pub fn folder_mode(&self) -> u32 {
        if self.group.is_some() { 0o2770 } else { 0o700 }
    }

    /// Whether `gid` is the shared group.
    pub fn is_shared_gid(&self, gid: u32) -> bool {
        self.group.as_ref().is_some_and(|group| group.gid == gid)
    }

    /// Whether the user `uid` is one of the queue's users: a member of the shared group (by
    /// its primary group or the group's member list).
    pub fn is_member(&self, uid: u32) -> bool {
        let Some(group) = &self.group else {
            return false;
        };
        let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
            return false;
        };
        user.gid.as_raw() == group.gid
            || Group::from_gid(Gid::from_raw(group.gid))
                .ok()
                .flatten()
                .is_some_and(|entry| entry.mem.contains(&user.name))
    }

    /// Whether this process has the shared group (root, or the group among its own: a user
    /// just added to it has it only from its next login).
    pub fn process_has_group(&self) -> bool {
        let Some(group) = &self.group else {
            return true;
        };
        Uid::effective().is_root()
            || Gid::effective().as_raw() == group.gid
            || nix::unistd::getgroups()
                .is_ok_and(|groups| groups.iter().any(|gid| gid.as_raw() == group.gid))
    }

    /// Gives the open file or folder `file` at `path` (a `what`, for messages) to the shared
    /// group with `mode`, when it is ours to change (owned by this user, or bgq runs as root)
    /// and not so already. Private: nothing changes (the mode it was made with stands).
    fn adopt_with(&self, file: &File, path: &Path, what: &str, mode: u32) -> anyhow::Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let meta = file
            .metadata()
            .with_context(|| format!("cannot inspect {what} {}", path.display()))?;
        let me = Uid::effective();
        if meta.uid() != me.as_raw() && !me.is_root() {
            return Ok(());
        }
        let fd = file.as_raw_fd();
        if meta.gid() != group.gid {
            // SAFETY: fchown on a descriptor we own; -1 keeps the owner.
            if unsafe { libc::fchown(fd, u32::MAX, group.gid) } != 0 {
                let err = std::io::Error::last_os_error();
                let me = user_name(me.as_raw());
                anyhow::bail!(
                    "cannot give {what} {} to group {} as user {me}: {err}; add {me} to the group (`usermod -aG {} {me}`, then log in again or restart its service)",
                    path.display(),
                    group.name,
                    group.name
                );
            }
        }
        // A chown clears the setgid bit of some filesystems: set the mode after it.
        if meta.mode() & 0o7777 != mode || meta.gid() != group.gid {
            // SAFETY: fchmod on a descriptor we own.
            if unsafe { libc::fchmod(fd, mode as libc::mode_t) } != 0 {
                let err = std::io::Error::last_os_error();
                anyhow::bail!(
                    "cannot make {what} {} mode {mode:04o}: {err}",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Shares the open file `file` at `path` (see [`Sharing::adopt_with`]): mode 0660.
    pub fn adopt_file(&self, file: &File, path: &Path, what: &str) -> anyhow::Result<()> {
        self.adopt_with(file, path, what, self.file_mode())
    }

    /// Shares the file at `path` if it exists, opened without following a symlink (SQLite's
    /// -wal and -shm files, made by SQLite).
    pub fn adopt_existing_file(&self, path: &Path, what: &str) -> anyhow::Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        match file {
            Ok(file) if file.metadata().is_ok_and(|meta| meta.is_file()) => {
                self.adopt_file(&file, path, what)
            }
            _ => Ok(()),
        }
    }

    /// Shares the folder at `path` (mode 2770), opened without following a symlink.
    pub fn adopt_folder(&self, path: &Path, what: &str) -> anyhow::Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        let folder = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(path)
            .with_context(|| format!("cannot open {what} {}", path.display()))?;
        self.adopt_with(&folder, path, what, self.folder_mode())
    }

    /// Creates the folder `path` and any missing parents, each with [`Sharing::folder_mode`]
    /// and given to the shared group; folders that exist are left as they are. Returns whether
    /// `path` itself was made.
    pub fn create_folder(&self, path: &Path, what: &str) -> anyhow::Result<bool> {
        let missing: Vec<&Path> = path
            .ancestors()
            .take_while(|folder| std::fs::symlink_metadata(folder).is_err())
            .collect();
        for folder in missing.iter().rev() {
            match std::fs::DirBuilder::new()
                .mode(self.folder_mode())
                .create(folder)
            {
                Ok(()) => self.adopt_folder(folder, what)?,
                // Made by another run meanwhile: theirs, as made.
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    let because = if err.kind() == std::io::ErrorKind::PermissionDenied {
                        format!(
                            "{}: permission denied for user {}",
                            folder.parent().unwrap_or(Path::new("/")).display(),
                            user_name(Uid::effective().as_raw())
                        )
                    } else {
                        err.to_string()
                    };
                    anyhow::bail!("cannot create {what} {}: {because}", folder.display());
                }
            }
        }
        Ok(!missing.is_empty())
    }

    /// Why this user may not open `path` (a file, or with `folder` a folder), in words that
    /// follow "cannot open X: ": the user, the file's owner, group and mode, and what to
    /// change.
    pub fn denied(&self, path: &Path, meta: Option<&Metadata>, folder: bool) -> String {
        let me = user_name(Uid::effective().as_raw());
        let shown = path.display();
        let mode = if folder { "2770" } else { "660" };
        let Some(meta) = meta else {
            return format!("permission denied for user {me}");
        };
        let facts = format!(
            "permission denied for user {me} (owner {}, group {}, mode {:04o})",
            user_name(meta.uid()),
            group_name(meta.gid()),
            meta.mode() & 0o7777
        );
        match &self.group {
            None => format!(
                "{facts}; to share the queue between users, set `group = \"NAME\"` in the config (a group of all its users) and run `chgrp NAME {shown} && chmod {mode} {shown}`"
            ),
            Some(group) if self.is_shared_gid(meta.gid()) && !self.process_has_group() => {
                format!(
                    "{facts}; user {me} is not in group {}: run `usermod -aG {} {me}`, then log in again or restart its service",
                    group.name, group.name
                )
            }
            Some(group) => format!(
                "{facts}; it is not shared with group {} (the config's `group`): run `chgrp {} {shown} && chmod {mode} {shown}`, or run bgq once as root or as its owner, which does that",
                group.name, group.name
            ),
        }
    }
}

/// `name` for a gid with an entry in the group database, else `gid N`.
pub fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => format!("gid {gid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn own_group() -> Sharing {
        let gid = Gid::effective().as_raw();
        Sharing {
            group: Some(SharedGroup {
                name: group_name(gid),
                gid,
            }),
        }
    }

    #[test]
    fn modes_are_private_by_default_and_group_wide_when_shared() {
        assert_eq!(Sharing::private().file_mode(), 0o600);
        assert_eq!(Sharing::private().folder_mode(), 0o700);
        assert_eq!(own_group().file_mode(), 0o660);
        assert_eq!(own_group().folder_mode(), 0o2770);
    }

    #[test]
    fn an_unknown_group_is_refused_with_the_fix() {
        let err = Sharing::with_group("no-such-group-bgq").expect_err("refused");
        assert!(err.contains("groupadd no-such-group-bgq"), "{err}");
    }

    #[test]
    fn created_folders_and_adopted_files_get_the_group_and_its_modes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sharing = own_group();
        let folder = dir.path().join("a/b");
        assert!(sharing.create_folder(&folder, "folder").expect("made"));
        for made in [dir.path().join("a"), folder.clone()] {
            let mode = std::fs::metadata(&made)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o2770, "{}", made.display());
        }
        assert!(!sharing.create_folder(&folder, "folder").expect("exists"));
        let path = folder.join("f");
        let file = File::create(&path).expect("create");
        sharing.adopt_file(&file, &path, "file").expect("adopted");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o660);
    }
}
