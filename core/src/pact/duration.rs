//! Durations in configuration and pacts: `"30s"`, `"15m"`, `"2h"`, `"7d"`.

use schemars::JsonSchema;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// A non-negative duration written in human units, held in microseconds (the engine's
/// event-time unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub i64);

impl Dur {
    /// From a std duration.
    pub fn from_std(d: Duration) -> Dur {
        Dur(d.as_micros().min(i64::MAX as u128) as i64)
    }
    /// Microseconds.
    pub fn micros(self) -> i64 {
        self.0
    }
    /// Parses `"15m"`-style text; negative durations are refused.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(format!("negative duration `{s}`: windows and dwell times must be positive"));
        }
        humantime::parse_duration(t)
            .map(Dur::from_std)
            .map_err(|e| format!("invalid duration `{s}`: {e} (write e.g. 30s, 15m, 2h, 7d)"))
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(Duration::from_micros(self.0.max(0) as u64)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = Dur::parse(&s).map_err(D::Error::custom)?;
        if v.0 == 0 {
            return Err(D::Error::custom(format!("duration `{s}` must be greater than zero")));
        }
        Ok(v)
    }
}

/// For settings where zero means "none" (e.g. no out-of-orderness on an in-order source),
/// unlike pact windows and dwell times: `#[serde(deserialize_with = "zero_ok")]`.
pub fn zero_ok<'de, D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let s = String::deserialize(d)?;
    Dur::parse(&s).map_err(D::Error::custom)
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?\\s*(us|ms|s|sec|m|min|h|hr|d|day|w)([0-9 a-z]*)$",
            "description": "A positive duration such as 30s, 15m, 2h or 7d."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_negatives() {
        assert_eq!(Dur::parse("15m").unwrap().micros(), 15 * 60 * 1_000_000);
        assert_eq!(Dur::parse("1h 30m").unwrap().micros(), 90 * 60 * 1_000_000);
        assert!(Dur::parse("-5m").unwrap_err().contains("negative"));
        assert!(Dur::parse("soon").is_err());
    }

    #[test]
    fn zero_is_refused_unless_the_setting_allows_it() {
        #[derive(Deserialize)]
        struct S {
            #[serde(deserialize_with = "zero_ok")]
            lax: Dur,
            strict: Option<Dur>,
        }
        let s: S = serde_json::from_str(r#"{"lax":"0s"}"#).unwrap();
        assert_eq!(s.lax, Dur(0));
        assert!(s.strict.is_none());
        let e = serde_json::from_str::<S>(r#"{"lax":"0s","strict":"0s"}"#).err().unwrap().to_string();
        assert!(e.contains("greater than zero"), "{e}");
        assert!(serde_json::from_str::<S>(r#"{"lax":"-1s"}"#).is_err());
    }
}
