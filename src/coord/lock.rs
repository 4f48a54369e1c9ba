//! The file locks that keep one `process` per database and queue, and one `clear` per database,
//! and the folder they live in.
//!
//! A lock is a value: holding a `Lock` means holding the kernel lock, dropping it releases it.
//! The file is never removed: removing it would race with the next run that opens it. Neither
//! the folder nor the file is used unless no other user could have written it (see `trust`),
//! checked on every use: whoever could plant the file could hold it and stop the queue, or
//! write the notes that tell recovery what to kill.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use fs2::FileExt;

use crate::coord::share::{self, Sharing};
use crate::coord::trust::{self, Role};

/// The folder that holds the lock files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockFolder {
    path: PathBuf,
    /// bgq's own folder (`$TMPDIR/bgq-UID`, as tmux keeps `/tmp/tmux-UID`), not one the config
    /// named: it must belong to this user and be closed to everyone else.
    private: bool,
}

impl LockFolder {
    /// The folder the config's `temp_dir` names.
    pub fn named(path: PathBuf) -> LockFolder {
        LockFolder {
            path,
            private: false,
        }
    }

    /// bgq's private folder for the user it runs as, used when the config names none; with
    /// the config's `group`, the folder of that group's users (`bgq-gGID`), which all of them
    /// must find.
    pub fn private_default(sharing: &Sharing) -> LockFolder {
        let name = match sharing.group() {
            Some(group) => format!("bgq-g{}", group.gid),
            None => format!("bgq-{}", nix::unistd::Uid::effective()),
        };
        LockFolder {
            path: std::env::temp_dir().join(name),
            private: true,
        }
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is bgq's private folder rather than one the config named.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// The lock file of `process` runs on `queue` of the database `database` (its
    /// `Store::identity`: for SQLite, the canonical path of its file).
    pub fn process_lock_path(&self, database: &str, queue: &str) -> PathBuf {
        lock_path(&self.path, &["process", database, queue])
    }

    /// The lock file of `clear` runs on the database `database` (its `Store::identity`).
    pub fn clear_lock_path(&self, database: &str) -> PathBuf {
        lock_path(&self.path, &["clear", database])
    }

    /// Creates the folder when missing (mode 0700, or 2770 and the config's `group`), then
    /// refuses it unless it can be trusted.
    pub fn prepare(&self) -> anyhow::Result<()> {
        let sharing = share::current();
        if self.private {
            // The private folder is made in a shared one, which must exist: making parents
            // there would leave folders another user might have made first.
            match fs::DirBuilder::new()
                .mode(sharing.folder_mode())
                .create(&self.path)
            {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("cannot create lock folder {}", self.path.display())));
                }
            }
            // Ours (or root's to mend): given to the group however it was made.
            if fs::symlink_metadata(&self.path).is_ok_and(|meta| meta.is_dir()) {
                sharing.adopt_folder(&self.path, "lock folder")?;
            }
        } else {
            sharing.create_folder(&self.path, "lock folder")?;
        }
        if !self.verify()? {
            bail!(
                "lock folder {} vanished as it was made",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Refuses the folder unless it can be trusted; `false` when it does not exist.
    pub fn verify(&self) -> anyhow::Result<bool> {
        // The private folder is checked as it is, link and all: a symlink planted in its place
        // would send the locks wherever its maker likes.
        let meta = if self.private {
            fs::symlink_metadata(&self.path)
        } else {
            fs::metadata(&self.path)
        };
        let meta = match meta {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!(
                    "cannot inspect lock folder {}",
                    self.path.display()
                )));
            }
        };
        let shown = self.path.display();
        if meta.file_type().is_symlink() {
            bail!("lock folder {shown} is a symlink: refusing to follow it; remove it");
        }
        if !meta.is_dir() {
            bail!("lock folder {shown} is not a folder");
        }
        if self.private
            && let Some(group) = share::current().group()
        {
            // The group's folder: any of its users may have made it, and it must be theirs.
            if let Some(problem) = trust::distrust(&self.path, &meta, Role::LockFolder) {
                bail!(problem);
            }
            let mode = meta.mode() & 0o7777;
            if meta.gid() != group.gid || mode & 0o077 != 0o070 {
                bail!(
                    "lock folder {shown} is not shared with group {} (group {}, mode {mode:04o}): the queue's lock folder must be group {} and mode 2770; run `chgrp {} {shown} && chmod 2770 {shown}`",
                    group.name,
                    share::group_name(meta.gid()),
                    group.name,
                    group.name
                );
            }
            return Ok(true);
        }
        if self.private {
            let me = nix::unistd::Uid::effective().as_raw();
            if meta.uid() != me {
                bail!(
                    "lock folder {shown} is owned by {}, not by {}, the user bgq runs as: someone else made it; remove it",
                    trust::user_name(meta.uid()),
                    trust::user_name(me)
                );
            }
            let mode = meta.mode() & 0o7777;
            if mode & 0o077 != 0 {
                bail!(
                    "lock folder {shown} is open to other users (mode {mode:04o}): bgq's private lock folder must be mode 0700; run `chmod 700 {shown}`"
                );
            }
            return Ok(true);
        }
        trust::require(&self.path, &meta, Role::LockFolder)?;
        Ok(true)
    }
}

/// A held exclusive lock on a file.
#[derive(Debug)]
pub struct Lock {
    file: File,
}

impl Lock {
    /// Takes the lock at `path` in `folder` without waiting; `None` when another process holds
    /// it.
    ///
    /// The folder is made and checked first; the file is created mode 0600 (0660 and the
    /// config's `group`) if missing. A symlink, anything but a regular file, or a file someone
    /// else could have written is refused, and left untouched.
    pub fn try_acquire(folder: &LockFolder, path: &Path) -> anyhow::Result<Option<Lock>> {
        folder.prepare()?;
        let sharing = share::current();
        let file = open_trusted(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(sharing.file_mode()),
        )?;
        sharing.adopt_file(&file, path, "lock file")?;
        match file.try_lock_exclusive() {
            Ok(()) => Ok(Some(Lock { file })),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(err) => {
                Err(anyhow::Error::new(err).context(format!("cannot lock {}", path.display())))
            }
        }
    }

    /// The open lock file (its holder may keep notes in it: see `running_log`).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Opens the lock file at `path` with `options`, never through a symlink, and refuses it unless
/// it is a regular file no one else could have written.
pub fn open_trusted(path: &Path, options: &mut OpenOptions) -> anyhow::Result<File> {
    let shown = path.display();
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| {
            let is_symlink = fs::symlink_metadata(path).is_ok_and(|meta| meta.is_symlink());
            // In a sticky folder the kernel may refuse a link someone else owns before it
            // tells it is one: say what it is either way.
            if err.raw_os_error() == Some(libc::ELOOP) || is_symlink {
                return anyhow::anyhow!("lock file {shown} is a symlink: refusing to follow it");
            }
            if err.kind() == std::io::ErrorKind::PermissionDenied {
                let meta = fs::symlink_metadata(path).ok();
                return anyhow::anyhow!(
                    "cannot open lock file {shown}: {}",
                    share::current().denied(path, meta.as_ref(), false)
                );
            }
            anyhow::Error::new(err).context(format!("cannot open lock file {shown}"))
        })?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot inspect lock file {shown}"))?;
    if !meta.is_file() {
        bail!("lock file {shown} is not a regular file");
    }
    trust::require(path, &meta, Role::LockFile)?;
    Ok(file)
}

/// `temp_dir/bgq-<hash>.lock`, the hash being FNV-1a 64 of the parts joined by NUL: a function
/// fixed by its definition, so the name stays the same across bgq versions.
fn lock_path(temp_dir: &Path, parts: &[&str]) -> PathBuf {
    let key = parts.join("\0");
    temp_dir.join(format!("bgq-{:016x}.lock", fnv1a64(key.as_bytes())))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn folder_in(dir: &Path) -> LockFolder {
        LockFolder::named(dir.to_owned())
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let tmp = folder_in(Path::new("/tmp"));
        let db = "/srv/app/var/bgq.sqlite";
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            tmp.process_lock_path(db, "general"),
            tmp.process_lock_path(db, "general")
        );
        assert_ne!(
            tmp.process_lock_path(db, "general"),
            tmp.process_lock_path(db, "mail")
        );
        assert_ne!(
            tmp.process_lock_path(db, "general"),
            tmp.clear_lock_path(db)
        );
        let name = tmp.process_lock_path(db, "general");
        assert!(name.to_string_lossy().starts_with("/tmp/bgq-"));
        assert!(name.to_string_lossy().ends_with(".lock"));
    }

    #[test]
    fn second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = folder_in(dir.path());
        let path = dir.path().join("x.lock");
        let first = Lock::try_acquire(&folder, &path)
            .expect("lock")
            .expect("free");
        assert!(Lock::try_acquire(&folder, &path).expect("lock").is_none());
        drop(first);
        assert!(Lock::try_acquire(&folder, &path).expect("lock").is_some());
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_a_symlink_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("target");
        fs::write(&target, "keep").expect("write");
        let path = dir.path().join("x.lock");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let err = Lock::try_acquire(&folder_in(dir.path()), &path).expect_err("refused");
        assert!(err.to_string().contains("is a symlink"), "{err}");
        assert_eq!(fs::read_to_string(&target).expect("read"), "keep");
    }

    #[test]
    fn refuses_a_lock_file_others_can_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.lock");
        fs::write(&path, "").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = Lock::try_acquire(&folder_in(dir.path()), &path).expect_err("refused");
        assert!(err.to_string().contains("writable by every user"), "{err}");
    }

    #[test]
    fn the_default_folder_is_the_users_own_or_the_groups() {
        let own = LockFolder::private_default(&Sharing::private());
        let uid = nix::unistd::Uid::effective();
        assert!(own.path().ends_with(format!("bgq-{uid}")), "{own:?}");
        let shared = LockFolder::private_default(&Sharing::with_group("0").expect("group 0"));
        assert!(shared.path().ends_with("bgq-g0"), "{shared:?}");
        assert!(shared.is_private());
    }

    #[test]
    fn a_named_folder_is_made_with_its_parents_and_privately_by_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = folder_in(&dir.path().join("run/locks"));
        folder.prepare().expect("made");
        let mode = fs::metadata(folder.path())
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700);
    }

    #[test]
    fn the_private_folder_is_made_closed_and_checked_on_every_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = LockFolder {
            path: dir.path().join("bgq-private"),
            private: true,
        };
        folder.prepare().expect("made");
        let mode = fs::metadata(folder.path())
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(folder.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = folder.prepare().expect_err("refused");
        assert!(
            err.to_string().contains("open to other users (mode 0755)"),
            "{err}"
        );
    }

    #[test]
    fn a_symlink_in_place_of_the_private_folder_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).expect("chmod");
        let path = dir.path().join("bgq-private");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink");
        let folder = LockFolder {
            path,
            private: true,
        };
        let err = folder.prepare().expect_err("refused");
        assert!(err.to_string().contains("is a symlink"), "{err}");
    }
}
