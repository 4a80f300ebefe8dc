//! Time as the core sees it: plain numbers handed in by the caller.
//!
//! The core never reads a clock. The engine passes `now` in; tests pass
//! whatever simulated time they like.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn after(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64),
        )
    }

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Parses durations written as `500ms`, `90s`, `5m`, `1h`, `2d` or a
/// sum of them (`1m30s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; expected e.g. \"500ms\", \"90s\", \"5m\", \"1h\"".into());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{text}`: expected a number before `{rest}`; write e.g. \"500ms\", \"90s\", \"5m\", \"1h\""));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let ms_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "`{text}`: missing unit; use ms, s, m, h or d (e.g. \"{n}s\")"
                ))
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}`; use ms, s, m, h or d"
                ))
            }
        };
        total = total
            .checked_add(
                n.checked_mul(ms_per)
                    .ok_or_else(|| format!("`{text}`: too large"))?,
            )
            .ok_or_else(|| format!("`{text}`: too large"))?;
        rest = &rest[unit_len..];
    }
    if total > MAX_DURATION.as_millis() {
        return Err(format!(
            "`{text}` is longer than 30d, the longest wait cutover takes"
        ));
    }
    Ok(Duration::from_millis(total as u64))
}

/// The longest duration anything in cutover is given (a hold, a bake, a
/// window, a timeout): 30 days (`30d` in messages). Anything longer is a
/// slip of the keyboard.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// Formats a duration the way plan files write it: `1h5m`, `90s` → `1m30s`, `500ms`.
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        let (h, m, s, rem) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        let mut out = String::new();
        if h > 0 {
            out += &format!("{h}h");
        }
        if m > 0 {
            out += &format!("{m}m");
        }
        if s > 0 {
            out += &format!("{s}s");
        }
        if rem > 0 {
            out += &format!("{rem}ms");
        }
        f.write_str(&out)
    }
}

/// Serde helpers for `Duration` fields written as human strings.
pub mod serde_duration {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Human(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<u64, &str>) {
        match (parse_duration(input), expected) {
            (Ok(d), Ok(ms)) => assert_eq!(d.as_millis() as u64, ms, "{input}"),
            (Err(e), Err(part)) => assert!(e.contains(part), "{input}: {e}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn durations() {
        check("500ms", Ok(500));
        check("90s", Ok(90_000));
        check("5m", Ok(300_000));
        check("1h", Ok(3_600_000));
        check("1m30s", Ok(90_000));
        check(" 2d ", Ok(172_800_000));
        check("", Err("empty"));
        check("10", Err("missing unit"));
        check("10x", Err("unknown unit `x`"));
        check("s", Err("expected a number"));
        check("99999999999999999999999999h", Err("longer than 30d"));
        check("30d", Ok(30 * 86_400_000));
        check("30d1ms", Err("`30d1ms` is longer than 30d"));
        check("18446744073709551615ms", Err("longer than 30d"));
    }

    #[test]
    fn human_round_trips() {
        for text in ["500ms", "1m30s", "1h", "2h5m", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(Human(d).to_string(), text);
        }
    }
}
