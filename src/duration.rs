//! Durations as users write them in the config and on the command line: `500ms`, `10s`, `5m`,
//! `2h`, `14d`. One whole number and one unit, so that a value reads the same everywhere.

use std::time::Duration;

/// The longest duration bgq accepts anywhere: 36500d, 100 years. Durations become due times
/// (`--delay`, retry delays) and deadlines (`timeout`); far beyond this a time no longer prints
/// as RFC 3339, and anything this long is a typo rather than a plan.
pub const MAX: Duration = Duration::from_secs(36_500 * 86_400);

/// [`MAX`] as users write it.
pub const MAX_TEXT: &str = "36500d (100 years)";

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `500ms`, `10s`, `5m`, `2h` or `14d`; the error names the value and the accepted forms.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`: write a whole number and a unit, like 500ms, 10s, 5m, 2h or 14d"
        )
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let per_unit = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, millis)| *millis)
        .ok_or_else(invalid)?;
    let count: u64 = number.parse().map_err(|_| invalid())?;
    let too_long = || format!("duration `{text}` is too long: at most {MAX_TEXT}");
    let millis = count.checked_mul(per_unit).ok_or_else(too_long)?;
    let duration = Duration::from_millis(millis);
    if duration > MAX {
        return Err(too_long());
    }
    Ok(duration)
}

/// Formats a duration in the largest unit that divides it exactly (`90s`, `5m`, `1500ms`).
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    UNITS
        .iter()
        .rev()
        .find(|(_, per_unit)| millis.is_multiple_of(u128::from(*per_unit)))
        .map_or_else(
            || format!("{millis}ms"),
            |(unit, per_unit)| format!("{}{unit}", millis / u128::from(*per_unit)),
        )
}

/// A `Duration` read from TOML as a string such as `"5m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("14d"), Ok(Duration::from_secs(14 * 86_400)));
    }

    #[test]
    fn refuses_what_is_not_one_number_and_one_unit() {
        for bad in [
            "", "s", "5", "-5s", "5 s", "1.5h", "5parsecs", "5S", "1h30m", " 5s", "+5s",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn refuses_overflow() {
        assert!(parse("99999999999999999999d").is_err());
        assert!(parse("999999999999999d").is_err());
    }

    #[test]
    fn refuses_more_than_100_years_in_any_unit() {
        assert_eq!(parse("36500d"), Ok(MAX));
        assert_eq!(parse("876000h"), Ok(MAX));
        for bad in ["36501d", "876001h", "18446744073709551615ms", "3153600001s"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("at most 36500d (100 years)"), "{err}");
        }
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(300)), "5m");
        assert_eq!(format(Duration::from_secs(86_400 * 14)), "14d");
    }
}
