//! Diagnostics on stderr that can never stop bgq.
//!
//! `eprintln!` panics when stderr cannot be written (a full log disk, a closed pipe), and a
//! panic in `process` would stop the whole queue on every run. A line that cannot be written is
//! dropped instead, and remembered, so that the exit code still says something went wrong.
//!
//! Every line is also escaped (`escape::text`) on its way out: stderr is read on terminals and
//! in cron's mail, and a name or message interpolated without escaping must not send the reader's
//! terminal a command. What callers escaped already passes unchanged.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DROPPED: AtomicBool = AtomicBool::new(false);

/// Writes `message`, escaped, and a newline to stderr in one write; drops it if stderr cannot
/// take it.
pub fn write_line(message: fmt::Arguments<'_>) {
    let mut line = crate::escape::text(&message.to_string()).into_owned();
    line.push('\n');
    if std::io::stderr().lock().write_all(line.as_bytes()).is_err() {
        DROPPED.store(true, Ordering::Relaxed);
    }
}

/// Whether any diagnostic of this process could not be written.
pub fn any_dropped() -> bool {
    DROPPED.load(Ordering::Relaxed)
}

/// `eprintln!` that drops what stderr cannot take instead of panicking.
#[macro_export]
macro_rules! diagnostic {
    ($($arg:tt)*) => {
        $crate::diagnostic::write_line(format_args!($($arg)*))
    };
}
