//! Times as people read them: local time, "3 min ago", and both with UTC for `show`.

use crate::job::{Millis, format_utc};

/// Local time to the second with its offset, e.g. `2026-11-23 10:01:02 +01:00`.
pub fn local_time(millis: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or_else(
        || millis.to_string(),
        |time| {
            time.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S %:z")
                .to_string()
        },
    )
}

/// How far `millis` is from `now`, e.g. `3 min ago`, `in 2 h`, `just now`.
pub fn relative(millis: Millis, now: Millis) -> String {
    let past = millis <= now;
    let span = span(now.abs_diff(millis));
    match span {
        None => "just now".to_owned(),
        Some(span) if past => format!("{span} ago"),
        Some(span) => format!("in {span}"),
    }
}

/// A span of milliseconds in its largest whole unit (`45s`, `3 min`, `2 h`, `4 d`); `None`
/// under a second.
pub fn span(millis: u64) -> Option<String> {
    let seconds = millis / 1000;
    Some(match seconds {
        0 => return None,
        1..60 => format!("{seconds}s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    })
}

/// `n` and the noun, singular for 1: `1 job`, `2 jobs`, `0 jobs`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// How long something ran, to the millisecond under a second and to a tenth of a second under a
/// minute: `120ms`, `4.2s`, `3m 07s`, `2h 05m`.
pub fn elapsed(millis: Millis) -> String {
    let millis = millis.max(0);
    match millis {
        0..1000 => format!("{millis}ms"),
        1000..60_000 => format!("{:.1}s", millis as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {:02}s", millis / 60_000, millis / 1000 % 60),
        _ => format!("{}h {:02}m", millis / 3_600_000, millis / 60_000 % 60),
    }
}

/// Local time, how far from now, and UTC: `2026-11-23 10:01:02 +01:00 (3 min ago), 2026-11-23T09:01:02.123Z`.
pub fn full_time(millis: Millis, now: Millis) -> String {
    format!(
        "{} ({}), {}",
        local_time(millis),
        relative(millis, now),
        format_utc(millis)
    )
}

/// Local time and how far from now: `2026-11-23 10:01:02 +01:00 (3 min ago)`.
pub fn when(millis: Millis, now: Millis) -> String {
    format!("{} ({})", local_time(millis), relative(millis, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_times_keep_the_precision_that_matters() {
        assert_eq!(elapsed(0), "0ms");
        assert_eq!(elapsed(120), "120ms");
        assert_eq!(elapsed(4_240), "4.2s");
        assert_eq!(elapsed(187_000), "3m 07s");
        assert_eq!(elapsed(7_500_000), "2h 05m");
    }

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        let now = 1_000_000_000;
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now - 999, now), "just now");
        assert_eq!(relative(now - 45_000, now), "45s ago");
        assert_eq!(relative(now - 3 * 60_000 - 59_000, now), "3 min ago");
        assert_eq!(relative(now - 2 * 3_600_000, now), "2 h ago");
        assert_eq!(relative(now - 4 * 86_400_000, now), "4 d ago");
        assert_eq!(relative(now + 5 * 60_000, now), "in 5 min");
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(1, "job"), "1 job");
        assert_eq!(count(2, "job"), "2 jobs");
        assert_eq!(count(0, "due job"), "0 due jobs");
    }

    #[test]
    fn full_time_shows_local_relative_and_utc() {
        let text = full_time(0, 60_000);
        assert!(
            text.ends_with(" (1 min ago), 1970-01-01T00:00:00.000Z"),
            "{text}"
        );
    }
}
