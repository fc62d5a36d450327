//! Human-friendly sizes, durations and instants: parsed from config files and
//! flags (`512MiB`, `1.5GB`, `4096`; `90s`, `10m`, `1h30m`, `250ms`), and
//! mayfly's one formatter of them. `{}` writes the form a job file takes
//! (`1.5GiB`, `3m5s`); `{:#}` the form people read in a summary or report
//! (`1.5 GiB`, `3 min 05 s`); [`Utc`] an instant.

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
            "p" | "pb" => 1_000_000_000_000_000,
            "pib" => 1 << 50,
            _ => return Err(err("unknown unit (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB, PB or PiB)")),
        };
        let bytes = value * factor as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(err("too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// `1.5GiB`, `512MiB`, `100B`; with `{:#}`, `1.5 GiB`, `512 MiB`, `100 B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 5] =
            [("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        let space = if f.alternate() { " " } else { "" };
        for (name, size) in UNITS {
            if self.0 >= size {
                let value = self.0 as f64 / size as f64;
                return if self.0.is_multiple_of(size) {
                    write!(f, "{}{space}{name}", self.0 / size)
                } else {
                    write!(f, "{value:.1}{space}{name}")
                };
            }
        }
        write!(f, "{}{space}B", self.0)
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

impl HumanDuration {
    /// A number of milliseconds.
    pub const fn from_millis(ms: u64) -> HumanDuration {
        HumanDuration(Duration::from_millis(ms))
    }
}

impl fmt::Display for HumanDuration {
    /// `250ms`, `90s`, `1h30m`; with `{:#}`, `250 ms`, `1.2 s`, `3 min 05 s`,
    /// `2 h 03 min 05 s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if f.alternate() {
            let ms = d.as_millis();
            if ms < 1000 {
                return write!(f, "{ms} ms");
            }
            if ms < 60_000 {
                return write!(f, "{:.1} s", d.as_secs_f64());
            }
            let total = d.as_secs();
            let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
            return if h > 0 { write!(f, "{h} h {m:02} min {s:02} s") } else { write!(f, "{m} min {s:02} s") };
        }
        if d.subsec_nanos() != 0 && d < Duration::from_secs(10) {
            return write!(f, "{}ms", d.as_millis());
        }
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || (h == 0 && m == 0) {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

/// An instant in milliseconds since the Unix epoch, written
/// `YYYY-MM-DD HH:MM:SS UTC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc(pub u64);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let (y, m, d) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
        write!(f, "{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
    }
}

/// The civil date (year, month, day) of a count of days since 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01, so that the leap day ends each 400-year era's year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of the era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of the era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
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
    fn sizes_durations_and_instants_for_people() {
        assert_eq!(format!("{:#}", ByteSize(0)), "0 B");
        assert_eq!(format!("{:#}", ByteSize(1023)), "1023 B");
        assert_eq!(format!("{:#}", ByteSize(1536)), "1.5 KiB");
        assert_eq!(format!("{:#}", ByteSize(3 << 19)), "1.5 MiB");
        assert_eq!(format!("{:#}", ByteSize(5 << 30)), "5 GiB");
        assert_eq!(format!("{:#}", ByteSize(3 << 49)), "1.5 PiB");
        // What `{}` writes (a manifest's limits) reads back.
        for bytes in [0, 1023, 1536, 5 << 30, 2 << 50, 3 << 49] {
            assert_eq!(ByteSize(bytes).to_string().parse::<ByteSize>(), Ok(ByteSize(bytes)));
        }
        assert_eq!(format!("{:#}", HumanDuration::from_millis(850)), "850 ms");
        assert_eq!(format!("{:#}", HumanDuration::from_millis(1_200)), "1.2 s");
        assert_eq!(format!("{:#}", HumanDuration::from_millis(185_000)), "3 min 05 s");
        assert_eq!(format!("{:#}", HumanDuration::from_millis(7_385_000)), "2 h 03 min 05 s");
        assert_eq!(HumanDuration::from_millis(7_385_000).to_string(), "2h3m5s");
        assert_eq!(Utc(0).to_string(), "1970-01-01 00:00:00 UTC");
        assert_eq!(Utc(1_795_796_998_908).to_string(), "2026-11-27 16:29:58 UTC");
        assert_eq!(Utc(1_709_164_800_000).to_string(), "2024-02-29 00:00:00 UTC");
        assert_eq!(Utc(951_782_400_000).to_string(), "2000-02-29 00:00:00 UTC");
        assert_eq!(Utc(1_704_067_199_999).to_string(), "2023-12-31 23:59:59 UTC");
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
