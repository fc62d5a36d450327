//! Human-friendly sizes and durations for config files and flags:
//! `512MiB`, `1.5GB`, `4096`; `90s`, `10m`, `1h30m`, `250ms`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A number of bytes, written as `4096`, `64KiB`, `512MiB`, `2GiB`, `1.5GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A duration, written as `250ms`, `90s`, `10m`, `2h`, `1h30m`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// Why a size or duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct ParseUnitError {
    what: &'static str,
    input: String,
    reason: &'static str,
}

impl FromStr for ByteSize {
    type Err = ParseUnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseUnitError { what: "size", input: s.to_owned(), reason };
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err("expected a number such as 512MiB"));
        }
        let value: f64 = num.parse().map_err(|_| err("expected a number such as 512MiB"))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(err("unknown unit (use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB)")),
        };
        let bytes = value * factor as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(err("too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, size) in UNITS {
            if self.0 >= size {
                let value = self.0 as f64 / size as f64;
                return if self.0.is_multiple_of(size) {
                    write!(f, "{}{name}", self.0 / size)
                } else {
                    write!(f, "{value:.1}{name}")
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl FromStr for HumanDuration {
    type Err = ParseUnitError;

    /// One parser for job files and provider settings alike.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        mayfly_provider_api::parse_duration(s).map(HumanDuration).map_err(|reason| ParseUnitError {
            what: "duration",
            input: s.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 && d < Duration::from_secs(10) {
            return write!(f, "{}ms", d.as_millis());
        }
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if s > 0 || out.is_empty() {
            out.push_str(&format!("{s}s"));
        }
        f.write_str(&out)
    }
}

macro_rules! serde_via_str {
    ($ty:ty, $expecting:literal, $from_u64:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        Ok($from_u64(v))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        u64::try_from(v).map($from_u64).map_err(|_| E::custom("must not be negative"))
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serde_via_str!(ByteSize, "a size such as 512MiB or a number of bytes", ByteSize);
serde_via_str!(HumanDuration, "a duration such as 90s or 10m, or a number of seconds", |v| HumanDuration(
    Duration::from_secs(v)
));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!("64KiB".parse::<ByteSize>(), Ok(ByteSize(65536)));
        assert_eq!("1.5GB".parse::<ByteSize>(), Ok(ByteSize(1_500_000_000)));
        assert_eq!(" 2 gib ".parse::<ByteSize>(), Ok(ByteSize(2 << 30)));
        assert!("12 parsecs".parse::<ByteSize>().unwrap_err().to_string().contains("unknown unit"));
        assert!("MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize(1536).to_string(), "1.5KiB");
    }

    #[test]
    fn durations() {
        assert_eq!("90".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_secs(90))));
        assert_eq!("1h30m".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_secs(5400))));
        assert_eq!("250ms".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_millis(250))));
        assert!("10 fortnights".parse::<HumanDuration>().is_err());
        assert!("5".parse::<HumanDuration>().is_ok());
        assert!("m".parse::<HumanDuration>().is_err());
        assert_eq!(HumanDuration(Duration::from_secs(5400)).to_string(), "1h30m");
        assert_eq!(HumanDuration(Duration::from_millis(250)).to_string(), "250ms");
    }
}
