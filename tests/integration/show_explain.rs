//! Issue 5 tests: show_explain (being written).
