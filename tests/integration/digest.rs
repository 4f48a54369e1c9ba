//! Issue 5 tests: digest (being written).
