//! Durations as written in `mesh.toml`: `"90s"`, `"10m"`, `"4h"`, `"1d"`, `"1h30m"`.

use std::time::Duration;

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// The accepted form, for error messages.
pub const DURATION_FORM: &str =
    "write a whole number followed by a unit d, h, m or s, largest unit first, e.g. \"90s\", \"10m\", \"4h\", \"1d\" or \"1h30m\"";

/// Parses `"1h30m"`-style durations (units d, h, m, s; each at most once, largest first).
/// The error says what is wrong with the text (without a fix; see [`DURATION_FORM`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("the duration is empty".into());
    }
    let mut total: u64 = 0;
    let mut last_unit: Option<usize> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("\"{text}\" is not a duration: expected a number at \"{rest}\""));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| format!("\"{text}\" is too long a duration"))?;
        rest = &rest[digits..];
        let Some(unit_char) = rest.chars().next() else {
            return Err(format!("\"{text}\" has a number without a unit at the end"));
        };
        let Some(unit) = UNITS.iter().position(|(c, _)| *c == unit_char) else {
            return Err(format!("\"{text}\" has an unknown unit '{unit_char}'"));
        };
        if let Some(last) = last_unit {
            if unit <= last {
                return Err(format!("\"{text}\" repeats a unit or puts a smaller unit before a larger one"));
            }
        }
        last_unit = Some(unit);
        rest = &rest[unit_char.len_utf8()..];
        total = number
            .checked_mul(UNITS[unit].1)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("\"{text}\" is too long a duration"))?;
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds the way [`parse_duration`] reads them: `4h`, `1h30m`, `90s` → `1m30s`, `0s`.
/// Sub-second parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (c, n) in UNITS {
        if secs >= n {
            out.push_str(&format!("{}{c}", secs / n));
            secs %= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d2h3m4s"), Ok(Duration::from_secs(86_400 + 7200 + 180 + 4)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "10",
            "h",
            "10x",
            "1m1h",
            "1h1h",
            " 1h",
            "1h ",
            "-1s",
            "1.5h",
            "99999999999999999999s",
            "999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["90s", "10m", "4h", "1d", "1h30m", "1d2h3m4s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
