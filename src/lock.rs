//! The file locks that keep one `process` per database and queue, and one `clear` per database.
//!
//! A lock is a value: holding a `Lock` means holding the kernel lock, dropping it releases it.
//! The file is never removed: removing it would race with the next run that opens it.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use fs2::FileExt;

/// A held exclusive lock on a file.
#[derive(Debug)]
pub struct Lock {
    file: File,
}

impl Lock {
    /// Takes the lock at `path` without waiting; `None` when another process holds it.
    ///
    /// The file is created mode 0600 if missing; a symlink or anything but a regular file is
    /// refused, and its target left untouched.
    pub fn try_acquire(path: &Path) -> anyhow::Result<Option<Lock>> {
        if let Some(folder) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(folder)
                .with_context(|| format!("cannot create lock folder {}", folder.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|err| {
                if err.raw_os_error() == Some(libc::ELOOP) {
                    anyhow::anyhow!(
                        "lock file {} is a symlink: refusing to follow it",
                        path.display()
                    )
                } else {
                    anyhow::Error::new(err)
                        .context(format!("cannot open lock file {}", path.display()))
                }
            })?;
        let is_file = file
            .metadata()
            .with_context(|| format!("cannot inspect lock file {}", path.display()))?
            .is_file();
        if !is_file {
            bail!("lock file {} is not a regular file", path.display());
        }
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

/// The lock file of `process` runs on `queue` of the database at `database` (canonical).
pub fn process_lock_path(temp_dir: &Path, database: &Path, queue: &str) -> PathBuf {
    lock_path(temp_dir, &["process", &database.to_string_lossy(), queue])
}

/// The lock file of `clear` runs on the database at `database` (canonical).
pub fn clear_lock_path(temp_dir: &Path, database: &Path) -> PathBuf {
    lock_path(temp_dir, &["clear", &database.to_string_lossy()])
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

    #[test]
    fn names_are_stable_and_distinct() {
        let tmp = Path::new("/tmp");
        let db = Path::new("/srv/app/var/bgq.sqlite");
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            process_lock_path(tmp, db, "general"),
            process_lock_path(tmp, db, "general")
        );
        assert_ne!(
            process_lock_path(tmp, db, "general"),
            process_lock_path(tmp, db, "mail")
        );
        assert_ne!(
            process_lock_path(tmp, db, "general"),
            clear_lock_path(tmp, db)
        );
        let name = process_lock_path(tmp, db, "general");
        assert!(name.to_string_lossy().starts_with("/tmp/bgq-"));
        assert!(name.to_string_lossy().ends_with(".lock"));
    }

    #[test]
    fn second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.lock");
        let first = Lock::try_acquire(&path).expect("lock").expect("free");
        assert!(Lock::try_acquire(&path).expect("lock").is_none());
        drop(first);
        assert!(Lock::try_acquire(&path).expect("lock").is_some());
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
        let err = Lock::try_acquire(&path).expect_err("refused");
        assert!(err.to_string().contains("is a symlink"), "{err}");
        assert_eq!(fs::read_to_string(&target).expect("read"), "keep");
    }
}
