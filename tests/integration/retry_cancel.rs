//! Issue 5 tests: retry_cancel (being written).
