//! Issue 5 tests: check (being written).
