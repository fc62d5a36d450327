//! A provider's settings: the `[provider]` keys of a job file (besides `name`
//! and `path`), with helpers that name the key in every error.

use std::time::Duration;

use crate::{ErrorKind, ProviderError};

/// Parses `250ms`, `90s`, `10m`, `2h`, `1h30m`, `1d`, or a number of seconds.
/// The error is the reason, to be shown after the text that failed.
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let t = text.trim();
    if t.is_empty() {
        return Err("expected a duration such as 90s or 10m");
    }
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| "out of range");
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| "expected a duration such as 90s or 10m")?;
        let secs = match unit.trim() {
            "ms" => value / 1000.0,
            "s" | "sec" | "secs" => value,
            "m" | "min" | "mins" => value * 60.0,
            "h" | "hr" | "hours" => value * 3600.0,
            "d" | "days" => value * 86_400.0,
            "" => return Err("missing unit (use ms, s, m, h or d)"),
            _ => return Err("unknown unit (use ms, s, m, h or d)"),
        };
        let part = Duration::try_from_secs_f64(secs).map_err(|_| "out of range")?;
        total = total.checked_add(part).ok_or("out of range")?;
        rest = tail;
    }
    Ok(total)
}

/// A provider's settings. Take each key you know with a typed getter, then
/// call [`Settings::finish`], which refuses any key left over by name.
#[derive(Debug, Clone)]
pub struct Settings {
    provider: String,
    values: serde_json::Map<String, serde_json::Value>,
    known: Vec<&'static str>,
}

impl Settings {
    /// The settings for `provider`.
    pub fn new(provider: impl Into<String>, values: serde_json::Map<String, serde_json::Value>) -> Self {
        Settings { provider: provider.into(), values, known: Vec::new() }
    }

    /// No settings.
    pub fn empty(provider: impl Into<String>) -> Self {
        Settings::new(provider, serde_json::Map::new())
    }

    /// The same settings, for the provider called `name` (errors name it).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.provider = name.into();
        self
    }

    /// The provider these settings are for.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    fn err(&self, key: &str, message: impl std::fmt::Display) -> ProviderError {
        ProviderError::new(&self.provider, ErrorKind::Config, format!("`provider.{key}`: {message}"))
    }

    fn take(&mut self, key: &'static str) -> Option<serde_json::Value> {
        self.known.push(key);
        self.values.remove(key)
    }

    /// A string, if set.
    pub fn string(&mut self, key: &'static str) -> Result<Option<String>, ProviderError> {
        match self.take(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(key, format!("expected a string, found {other}"))),
        }
    }

    /// A duration (`"90s"`, `"10m"`, or a number of seconds), or `default`.
    pub fn duration(&mut self, key: &'static str, default: Duration) -> Result<Duration, ProviderError> {
        let text = match self.take(key) {
            None => return Ok(default),
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(other) => return Err(self.err(key, format!("expected a duration such as \"60s\", found {other}"))),
        };
        parse_duration(&text).map_err(|reason| self.err(key, format!("invalid duration {text:?}: {reason}")))
    }

    /// A whole number, or `default`.
    pub fn u64(&mut self, key: &'static str, default: u64) -> Result<u64, ProviderError> {
        match self.take(key) {
            None => Ok(default),
            Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or(default)),
            Some(other) => Err(self.err(key, format!("expected a whole number, found {other}"))),
        }
    }

    /// A boolean, or `default`.
    pub fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, ProviderError> {
        match self.take(key) {
            None => Ok(default),
            Some(serde_json::Value::Bool(b)) => Ok(b),
            Some(other) => Err(self.err(key, format!("expected true or false, found {other}"))),
        }
    }

    /// Refuses any key that was not taken, naming it and the keys that exist.
    pub fn finish(self) -> Result<(), ProviderError> {
        if let Some(key) = self.values.keys().next() {
            let expected = if self.known.is_empty() { "none".to_owned() } else { self.known.join(", ") };
            return Err(ProviderError::new(
                &self.provider,
                ErrorKind::Config,
                format!("unknown key `provider.{key}` for the {} provider (expected {expected})", self.provider),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5x"), Err("unknown unit (use ms, s, m, h or d)"));
        assert_eq!(parse_duration(""), Err("expected a duration such as 90s or 10m"));
        assert_eq!(parse_duration("10000000000000000000s10000000000000000000s"), Err("out of range"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name_with_the_known_ones() {
        let values = serde_json::json!({ "ttl": "5s", "regoin": "x" });
        let serde_json::Value::Object(map) = values else { unreachable!() };
        let mut s = Settings::new("demo", map);
        assert_eq!(s.duration("ttl", Duration::ZERO).unwrap(), Duration::from_secs(5));
        let err = s.finish().unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            "provider demo: unknown key `provider.regoin` for the demo provider (expected ttl)"
        );
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let serde_json::Value::Object(map) = serde_json::json!({ "ttl": true }) else { unreachable!() };
        let err = Settings::new("demo", map).duration("ttl", Duration::ZERO).unwrap_err();
        assert!(err.message.contains("`provider.ttl`: expected a duration"), "{err}");
    }
}
