//! A full disk, said as such: SQLite reports it as a generic I/O error as often as not.

use std::path::Path;

/// SQLite reports a full disk as a full database or, when the shared-memory file cannot grow,
/// as an I/O error: name the cause when the filesystem holding `path` is indeed full.
pub(super) fn explain(err: anyhow::Error, path: &Path) -> anyhow::Error {
    use rusqlite::ErrorCode::{DiskFull, SystemIoFailure};
    let io_error = err.chain().any(|cause| {
        cause
            .downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code)
            .is_some_and(|code| matches!(code, DiskFull | SystemIoFailure))
    });
    let folder = path.parent().unwrap_or(Path::new("/"));
    if io_error && free_bytes(folder).is_some_and(|free| free < 64 * 1024) {
        err.context(format!(
            "no space left on the filesystem holding {}",
            folder.display()
        ))
    } else {
        err
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `folder`.
fn free_bytes(folder: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(folder).ok()?;
    Some(
        stats
            .blocks_available()
            .saturating_mul(stats.fragment_size()),
    )
}
