//! Issue 5 tests: stats_status (being written).
