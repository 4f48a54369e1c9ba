//! The exit-code protocol: 2 for input the user must fix, 3 for a publish that stored its jobs
//! but could not print their ids, 1 for anything else.

use std::fmt;

/// Marks an error as the user's to fix (bad flag, config, callback name or JSON): exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds an `anyhow::Error` that exits 2.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// A publish that stored its jobs but could not print their ids (stdout full or closed): exit 3,
/// so that a caller that retries on failure can tell it from a publish that stored nothing.
#[derive(Debug)]
pub struct StoredButUnprinted(pub String);

impl fmt::Display for StoredButUnprinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoredButUnprinted {}

/// The exit code of a [`StoredButUnprinted`] publish.
pub const STORED_BUT_UNPRINTED: u8 = 3;

/// Whether `err` is, or was caused by, a [`StoredButUnprinted`] publish.
fn is_stored_but_unprinted(err: &anyhow::Error) -> bool {
    // downcast_ref also finds it where it was added as context; chain() finds it as a cause.
    err.downcast_ref::<StoredButUnprinted>().is_some()
        || err.chain().any(|cause| cause.is::<StoredButUnprinted>())
}

/// A check (`status`, `check`) that ran and printed its findings, which are not good, or a
/// `process` run that already said on stderr what kept it from its work (a callback that could
/// not be started): exit 1 with no error line, since the findings already say why.
#[derive(Debug)]
pub struct Unhealthy;

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("problems found")
    }
}

impl std::error::Error for Unhealthy {}

/// True when the error is an `Unhealthy` verdict, already reported.
pub fn is_unhealthy(err: &anyhow::Error) -> bool {
    err.is::<Unhealthy>()
}

/// Exit code for a failed command: 3 for a stored job whose id was lost, 2 if any cause is a
/// `UsageError`, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if is_stored_but_unprinted(err) {
        STORED_BUT_UNPRINTED
    } else if err.chain().any(|cause| cause.is::<UsageError>()) {
        2
    } else {
        1
    }
}

/// True when the error is a closed stdout (`bgq list | head`), which is not a failure; unless
/// what was lost is the id of a stored job, which the caller needed.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    if is_stored_but_unprinted(err) {
        return false;
    }
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_exit_2_even_under_context() {
        let err = Err::<(), _>(usage("unknown callback `x`"))
            .context("cannot publish")
            .expect_err("is an error");
        assert_eq!(exit_code(&err), 2);
        assert_eq!(format!("{err:#}"), "cannot publish: unknown callback `x`");
    }

    #[test]
    fn other_errors_exit_1() {
        let err = anyhow::anyhow!("disk full");
        assert_eq!(exit_code(&err), 1);
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let err = anyhow::Error::new(io).context("writing the list");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }

    #[test]
    fn a_lost_id_exits_3_even_when_stdout_was_a_closed_pipe() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let err = anyhow::Error::new(io).context(StoredButUnprinted("job 4 was stored".into()));
        assert!(!is_broken_pipe(&err));
        assert_eq!(exit_code(&err), 3);
        let err = anyhow::Error::new(StoredButUnprinted("job 4".into())).context("x");
        assert_eq!(exit_code(&err), 3);
    }
}
