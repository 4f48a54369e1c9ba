//! Memory sizes as users write them on the command line and in the config: `1048576`, `512K`,
//! `256M`, `2G` (also `KB`/`KiB` and the like). Units are binary: 1K is 1024 bytes, as `ps` and `top` count.

/// Parses a size in bytes; the error names the value and the accepted forms.
pub fn parse(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!("invalid size `{text}`: write bytes, or a whole number with K, M or G (like 256M)")
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let count: u64 = number.parse().map_err(|_| invalid())?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(invalid()),
    };
    count
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// Formats a size in the largest binary unit that divides it exactly (`16MiB`, `1500`), in a
/// form [`parse`] reads back.
pub fn format(bytes: u64) -> String {
    [("GiB", 30), ("MiB", 20), ("KiB", 10)]
        .iter()
        .find(|(_, shift)| bytes >= 1 << shift && bytes.is_multiple_of(1 << shift))
        .map_or_else(
            || bytes.to_string(),
            |(unit, shift)| format!("{}{unit}", bytes >> shift),
        )
}

/// A size read from TOML as a string such as `"16MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

impl<'de> serde::Deserialize<'de> for ConfigSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text)
            .map(ConfigSize)
            .map_err(serde::de::Error::custom)
    }
}

/// The resident memory of this process in bytes, read from /proc.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()?;
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("1K"), Ok(1024));
        assert_eq!(parse("256M"), Ok(256 << 20));
        assert_eq!(parse("2GiB"), Ok(2 << 30));
        assert_eq!(parse("3mb"), Ok(3 << 20));
        for bad in ["", "M", "lots", "1T", "-1K", "1.5G"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit_and_read_back() {
        for (bytes, text) in [
            (16 << 20, "16MiB"),
            (1024, "1KiB"),
            (1536, "1536"),
            (1, "1"),
            (0, "0"),
            (3 << 30, "3GiB"),
        ] {
            assert_eq!(format(bytes), text);
            assert_eq!(parse(text), Ok(bytes));
        }
    }

    #[test]
    fn this_process_has_some_resident_memory() {
        assert!(resident_bytes().is_some_and(|bytes| bytes > 0));
    }
}
