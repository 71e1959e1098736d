//! Durations (`"250ms"`, `"30s"`, `"10m"`) and sizes (`65536`, `"64KiB"`) as
//! they appear in eddy's TOML.
//!
//! Both types parse strictly (a typo is an error with the key's position, not a
//! silent default) and print back in the same notation, so `eddy check` and
//! `GET /config` show values an operator can paste into a file.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configured duration, written `"<integer><unit>"` with unit `ms`, `s`,
/// `m` or `h`; parts may be combined (`"1m30s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Dur(pub Duration);

impl Dur {
    pub(crate) const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
    pub(crate) const fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }
    pub(crate) fn get(self) -> Duration {
        self.0
    }
    pub(crate) fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

/// Parses `"250ms"`, `"30s"`, `"1.5s"`, `"10m"`, `"1h"`, `"1m30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const FORMS: &str =
        "a number and a unit: ms, s, m or h, e.g. \"250ms\", \"1.5s\", \"30s\", \"1m30s\"";
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty duration; expected {FORMS}"));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: expected {FORMS}"));
        }
        let whole: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        // A fraction, to the microsecond: "1.5s".
        let mut fraction = (0u128, 1u128);
        if let Some(after) = rest.strip_prefix('.') {
            let frac = after.bytes().take_while(u8::is_ascii_digit).count();
            if frac == 0 || frac > 6 {
                return Err(format!("invalid duration {s:?}: expected {FORMS}"));
            }
            fraction = (after[..frac].parse().unwrap_or(0), 10u128.pow(frac as u32));
            rest = &after[frac..];
        }
        let spaced = rest.trim_start();
        let unit_len = spaced.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &spaced[..unit_len];
        let unit_us: u128 = match unit {
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: the number needs a unit (ms, s, m or h), e.g. \"{whole}s\""
                ))
            }
            other => {
                let short = match other.to_ascii_lowercase().as_str() {
                    "msec" | "msecs" | "millisecond" | "milliseconds" => Some("ms"),
                    "sec" | "secs" | "second" | "seconds" => Some("s"),
                    "min" | "mins" | "minute" | "minutes" => Some("m"),
                    "hr" | "hrs" | "hour" | "hours" => Some("h"),
                    _ => None,
                };
                return Err(match short {
                    Some(u) => format!(
                        "invalid duration {s:?}: write the unit short and without a space, \"{whole}{u}\""
                    ),
                    None => format!(
                        "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m or h)"
                    ),
                });
            }
        };
        if unit_len > 0 && spaced.len() != rest.len() {
            return Err(format!(
                "invalid duration {s:?}: no space between the number and its unit, e.g. \"{whole}{unit}\""
            ));
        }
        rest = &spaced[unit_len..];
        let us = whole
            .saturating_mul(unit_us)
            .saturating_add(fraction.0.saturating_mul(unit_us) / fraction.1);
        total = total
            .checked_add(us)
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    }
    let total = total / 1_000;
    // A century is more than any timeout needs; refusing larger values keeps
    // `Instant + Duration` arithmetic from overflowing anywhere downstream.
    if total > 100 * 365 * 24 * 3_600_000 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_millis(total as u64))
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            f.write_str("0s")
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1_000 == 0 {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"30s\" or \"10m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A configured size in bytes: an integer, or a string with unit `B`, `KiB`,
/// `MiB`, `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Size(pub u64);

impl Size {
    pub(crate) const fn kib(n: u64) -> Size {
        Size(n * 1024)
    }
    pub(crate) fn bytes(self) -> u64 {
        self.0
    }
    /// The size as a `usize`, saturating on 32-bit targets.
    pub(crate) fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// Parses a size: bytes, or with `KiB`, `MiB`, `GiB` (and `KB`, `MB`, `GB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size {s:?}: expected bytes or a number with KiB, MiB, GiB, KB, MB, GB or B (e.g. \"64KiB\")"
        ));
    }
    let n: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let mult: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b % (1 << 30) == 0 {
            write!(f, "{}GiB", b >> 30)
        } else if b != 0 && b % (1 << 20) == 0 {
            write!(f, "{}MiB", b >> 20)
        } else if b != 0 && b % (1 << 10) == 0 {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, or a string such as \"64KiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A string schema with a pattern and a description (the configuration's
/// JSON Schema).
pub(crate) fn string_schema(pattern: Option<&str>, description: &str) -> schemars::schema::Schema {
    use schemars::schema::{InstanceType, Metadata, SchemaObject, StringValidation};
    SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        string: pattern.map(|p| {
            Box::new(StringValidation {
                pattern: Some(p.to_string()),
                ..StringValidation::default()
            })
        }),
        metadata: Some(Box::new(Metadata {
            description: Some(description.to_string()),
            ..Metadata::default()
        })),
        ..SchemaObject::default()
    }
    .into()
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> String {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        string_schema(
            Some(r"^\s*([0-9]+(\.[0-9]{1,6})?(ms|s|m|h))+\s*$"),
            "A duration: a number and a unit (ms, s, m or h), no space, e.g. \"250ms\", \"1.5s\", \"30s\", \"1m30s\".",
        )
    }
}

impl schemars::JsonSchema for Size {
    fn schema_name() -> String {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        use schemars::schema::{InstanceType, NumberValidation, SchemaObject, SubschemaValidation};
        let bytes: schemars::schema::Schema = SchemaObject {
            instance_type: Some(InstanceType::Integer.into()),
            number: Some(Box::new(NumberValidation {
                minimum: Some(0.0),
                ..NumberValidation::default()
            })),
            ..SchemaObject::default()
        }
        .into();
        SchemaObject {
            subschemas: Some(Box::new(SubschemaValidation {
                any_of: Some(vec![
                    string_schema(
                        Some(r"^\s*[0-9]+\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$"),
                        "A size: bytes, or a number with B, KiB, MiB, GiB, KB, MB or GB, e.g. \"64KiB\".",
                    ),
                    bytes,
                ]),
                ..SubschemaValidation::default()
            })),
            ..SchemaObject::default()
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_round_trip() {
        for (text, ms) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("0s", 0),
            ("1.5s", 1_500),
            ("0.25s", 250),
            ("1.5m", 90_000),
        ] {
            let d = parse_duration(text).expect(text);
            assert_eq!(d, Duration::from_millis(ms), "{text}");
            let printed = Dur(d).to_string();
            assert_eq!(parse_duration(&printed).expect("reparse"), d);
        }
        assert_eq!(Dur::millis(90_000).to_string(), "90s");
    }

    #[test]
    fn bad_durations_are_rejected_with_a_reason() {
        for bad in ["", "30", "s", "10 parsecs", "5d", "-1s", "1.s", "30 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse_duration("30x").unwrap_err().contains("unknown unit"));
        // The message says what to write instead, in the user's terms.
        let seconds = parse_duration("30 seconds").unwrap_err();
        assert!(seconds.contains("\"30s\""), "{seconds}");
        let bare = parse_duration("30").unwrap_err();
        assert!(
            bare.contains("needs a unit") && bare.contains("\"30s\""),
            "{bare}"
        );
        assert!(parse_duration("30 s").unwrap_err().contains("no space"));
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("12 furlongs").is_err());
        assert_eq!(Size(65536).to_string(), "64KiB");
        assert_eq!(Size(1000).to_string(), "1000B");
    }
}
