//! Placeholder: tests for issue 6 (watch) land here.
