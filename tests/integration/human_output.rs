//! Issue 5 tests: human_output (being written).
