//! Issue 5 tests: completions (being written).
