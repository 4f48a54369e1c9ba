//! Wakes a `process --watch` as soon as another process writes the database, instead of at its
//! next tick: an inotify watch on the file that every commit writes (SQLite's write-ahead log),
//! read by a thread of its own. Linux only, like the rest of bgq.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Calls `changed` (on a thread of its own) each time `path` is written, until it returns
/// false. The thread blocks in `read` between changes, so it costs nothing while all is quiet.
pub fn on_write(
    path: &Path,
    mut changed: impl FnMut() -> bool + Send + 'static,
) -> anyhow::Result<()> {
    let name = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("cannot watch {}: NUL in its name", path.display()))?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)
        .map_err(std::io::Error::from)
        .context("cannot start inotify")?;
    inotify
        .add_watch(name.as_c_str(), AddWatchFlags::IN_MODIFY)
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot watch {}", path.display()))?;
    std::thread::Builder::new()
        .name("wake".to_owned())
        .spawn(move || {
            loop {
                match inotify.read_events() {
                    Ok(events) if events.is_empty() => break,
                    Ok(_) => {
                        if !changed() {
                            break;
                        }
                    }
                    Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        })
        .context("cannot start a thread to watch the database")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_write_to_the_file_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.sqlite-wal");
        std::fs::write(&path, b"").expect("create");
        let (sender, woken) = mpsc::channel();
        on_write(&path, move || sender.send(()).is_ok()).expect("watch");
        assert!(woken.recv_timeout(Duration::from_millis(200)).is_err());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(b"frame").expect("write");
        assert!(woken.recv_timeout(Duration::from_secs(5)).is_ok());
    }
}
