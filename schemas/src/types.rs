//! Leaf value types of the fleet model: file modes, durations, absolute
//! paths, time zones. Each parses from a string with a message that says
//! what is wrong and how to write it instead.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::de::leaf;
use crate::suggest;

/// Why a leaf value did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafError {
    pub message: String,
    pub hint: Option<String>,
}

impl LeafError {
    pub fn new(message: impl Into<String>) -> Self {
        LeafError {
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for LeafError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for LeafError {}

/// Implements `Deserialize` through [`leaf::parse`] and `Serialize` through
/// `Display` for a type with `FromStr<Err = LeafError>`.
macro_rules! leaf_serde {
    ($ty:ty, $placeholder:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                leaf::parse(deserializer, <$ty>::from_str, || $placeholder)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    };
}

/// Implements `JsonSchema` as an inlined string schema.
macro_rules! leaf_schema {
    ($ty:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// Unix permission bits, written as an octal string such as `"0644"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileMode(u32);

impl FileMode {
    pub fn new(bits: u32) -> Option<Self> {
        (bits <= 0o7777).then_some(FileMode(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl FromStr for FileMode {
    type Err = LeafError;

    fn from_str(text: &str) -> Result<Self, LeafError> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        let octal =
            (3..=5).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
        let valid = octal && u32::from_str_radix(digits, 8).is_ok_and(|bits| bits <= 0o7777);
        if !valid {
            return Err(LeafError::new(format!("invalid file mode `{text}`"))
                .with_hint("write octal permission bits in quotes, such as \"0644\" or \"0755\""));
        }
        let bits = u32::from_str_radix(digits, 8)
            .map_err(|_| LeafError::new(format!("invalid file mode `{text}`")))?;
        Ok(FileMode(bits))
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

leaf_serde!(FileMode, FileMode(0));
leaf_schema!(FileMode, "FileMode", {
    "type": "string",
    "pattern": "^(0o)?0?[0-7]{3,4}$",
    "description": "Octal permission bits in quotes, such as \"0644\".",
    "examples": ["0644", "0755", "0600"]
});

/// A span of time written with units: `30s`, `5m`, `1h30m`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl FromStr for Duration {
    type Err = LeafError;

    fn from_str(text: &str) -> Result<Self, LeafError> {
        let invalid = || {
            LeafError::new(format!("invalid duration `{text}`")).with_hint(
                "write a number with a unit: ms, s, m, h, d or w, such as \"30s\" or \"1h30m\"",
            )
        };
        if text.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            if unit_len == 0 && rest.is_empty() && digits == text.len() {
                return Err(LeafError::new(format!("duration `{text}` has no unit"))
                    .with_hint(format!("write \"{text}s\" for seconds, or use m, h, d")));
            }
            let millis_per_unit: u64 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 604_800_000,
                _ => return Err(invalid()),
            };
            rest = &rest[unit_len..];
            total = value
                .checked_mul(millis_per_unit)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(|| LeafError::new(format!("duration `{text}` is too long")))?;
        }
        Ok(Duration(std::time::Duration::from_millis(total)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if millis >= size {
                write!(f, "{}{unit}", millis / size)?;
                millis %= size;
            }
        }
        Ok(())
    }
}

leaf_serde!(Duration, Duration::default());
leaf_schema!(Duration, "Duration", {
    "type": "string",
    "pattern": "^([0-9]+(ms|s|m|h|d|w))+$",
    "description": "A duration with units: ms, s, m, h, d, w (\"30s\", \"1h30m\").",
    "examples": ["30s", "5m", "1h30m", "7d"]
});

/// An absolute, normalised path on the host: starts with `/`, no `.` or
/// `..` components, no empty components, no NUL bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AbsPath(String);

impl AbsPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's components, without the leading `/`.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }
}

impl FromStr for AbsPath {
    type Err = LeafError;

    fn from_str(text: &str) -> Result<Self, LeafError> {
        if !text.starts_with('/') {
            return Err(
                LeafError::new(format!("path `{text}` is not absolute")).with_hint(format!(
                    "write the full path from `/`, such as \"/{}\"",
                    text.trim_start_matches("./")
                )),
            );
        }
        if text.contains('\0') {
            return Err(LeafError::new("path contains a NUL byte"));
        }
        if text.len() > 4096 {
            return Err(LeafError::new("path is longer than 4096 bytes"));
        }
        if text != "/" {
            for component in text[1..].split('/') {
                match component {
                    ".." => {
                        return Err(LeafError::new(format!("path `{text}` contains `..`"))
                            .with_hint("write the path without `..`; paths may not climb out of a directory"));
                    }
                    "." | "" => {
                        return Err(LeafError::new(format!("path `{text}` is not normalised"))
                            .with_hint(
                                "remove `.` components, doubled slashes and trailing slashes",
                            ));
                    }
                    _ => {}
                }
            }
        }
        Ok(AbsPath(text.to_string()))
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

leaf_serde!(AbsPath, AbsPath("/".into()));
leaf_schema!(AbsPath, "AbsPath", {
    "type": "string",
    "pattern": "^/",
    "description": "An absolute path without `.` or `..` components."
});

/// An IANA time zone name such as `Europe/Berlin` or `UTC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    pub const UTC: TimeZone = TimeZone(chrono_tz::Tz::UTC);

    pub fn tz(self) -> chrono_tz::Tz {
        self.0
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone::UTC
    }
}

impl FromStr for TimeZone {
    type Err = LeafError;

    fn from_str(text: &str) -> Result<Self, LeafError> {
        text.parse::<chrono_tz::Tz>().map(TimeZone).map_err(|_| {
            let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
            let error = LeafError::new(format!("unknown time zone `{text}`"));
            match suggest::closest(text, names) {
                Some(name) => error.with_hint(format!("did you mean `{name}`?")),
                None => error
                    .with_hint("use an IANA time zone name such as \"UTC\" or \"Europe/Berlin\""),
            }
        })
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

leaf_serde!(TimeZone, TimeZone::UTC);
leaf_schema!(TimeZone, "TimeZone", {
    "type": "string",
    "description": "An IANA time zone name, such as \"UTC\" or \"Europe/Berlin\".",
    "examples": ["UTC", "Europe/Berlin", "America/New_York"]
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!("0644".parse::<FileMode>().unwrap().bits(), 0o644);
        assert_eq!("755".parse::<FileMode>().unwrap().bits(), 0o755);
        assert_eq!("01777".parse::<FileMode>().unwrap().bits(), 0o1777);
        assert_eq!("0o600".parse::<FileMode>().unwrap().to_string(), "0600");
        for bad in ["", "0888", "rw-r--r--", "12", "077777"] {
            assert!(bad.parse::<FileMode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        let secs = |s: &str| s.parse::<Duration>().unwrap().as_secs();
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("7d"), 604_800);
        assert_eq!(secs("1w"), 604_800);
        assert_eq!(
            "1500ms".parse::<Duration>().unwrap().get().as_millis(),
            1500
        );
        assert_eq!("90m".parse::<Duration>().unwrap().to_string(), "1h30m");
        let err = "30".parse::<Duration>().unwrap_err();
        assert_eq!(
            err.hint.as_deref(),
            Some("write \"30s\" for seconds, or use m, h, d")
        );
        let err = "10 minutes".parse::<Duration>().unwrap_err();
        assert_eq!(err.message, "invalid duration `10 minutes`");
        for bad in [
            "",
            "s",
            "1x",
            "1h 30m",
            "-1s",
            "99999999999999999999d",
            "1h30",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!("/etc/motd".parse::<AbsPath>().is_ok());
        assert!("/".parse::<AbsPath>().is_ok());
        for bad in [
            "etc/motd",
            "/etc/../shadow",
            "/etc/./motd",
            "/etc//motd",
            "/etc/",
            "/a\0b",
            "",
        ] {
            assert!(bad.parse::<AbsPath>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_zones() {
        assert_eq!(
            "Europe/Berlin".parse::<TimeZone>().unwrap().to_string(),
            "Europe/Berlin"
        );
        let err = "Europe/Berln".parse::<TimeZone>().unwrap_err();
        assert_eq!(err.hint.as_deref(), Some("did you mean `Europe/Berlin`?"));
    }
}
