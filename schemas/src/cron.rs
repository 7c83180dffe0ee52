//! Standard 5-field crontab schedules, evaluated with the `cron` crate.
//!
//! Users write crontab as in `crontab(5)`: `minute hour day-of-month month
//! day-of-week`, with day-of-week 0–7 where 0 and 7 are Sunday, names such
//! as `mon`, and the `@daily`-style macros. The `cron` crate wants a seconds
//! field and numbers weekdays from Sunday = 1, so each expression is checked
//! field by field here (for precise messages) and translated: a seconds
//! field of `0` is prepended and the weekday field is rewritten with names,
//! which mean the same in both dialects. When both day fields are
//! restricted, crontab runs a job when *either* matches; that rule is kept
//! by evaluating two schedules and merging them.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone as _};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::de::leaf;
use crate::types::LeafError;

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A crontab schedule, such as `0 3 * * 1` (Mondays at 03:00).
#[derive(Clone)]
pub struct CronSchedule {
    source: String,
    schedules: Vec<cron::Schedule>,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSchedule").field(&self.source).finish()
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CronSchedule {}

impl CronSchedule {
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The first due time strictly after `after`, in `after`'s time zone.
    pub fn next_after<Tz: chrono::TimeZone>(&self, after: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        self.schedules
            .iter()
            .filter_map(|schedule| schedule.after(after).next())
            .min()
    }

    /// Due times after `after`, in order.
    pub fn upcoming<Tz: chrono::TimeZone>(
        &self,
        after: &DateTime<Tz>,
    ) -> impl Iterator<Item = DateTime<Tz>> {
        let mut cursor = after.clone();
        std::iter::from_fn(move || {
            let next = self.next_after(&cursor)?;
            cursor = next.clone();
            Some(next)
        })
    }

    /// The placeholder used after a parse error has been reported.
    fn placeholder() -> Self {
        CronSchedule {
            source: String::new(),
            schedules: Vec::new(),
        }
    }
}

impl FromStr for CronSchedule {
    type Err = LeafError;

    fn from_str(text: &str) -> Result<Self, LeafError> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            "@reboot" => {
                return Err(LeafError::new("`@reboot` is not a schedule")
                    .with_hint("run the script from a policy's `exec` resource instead"));
            }
            macro_ if macro_.starts_with('@') => {
                return Err(LeafError::new(format!("unknown schedule macro `{macro_}`"))
                    .with_hint("use @hourly, @daily, @weekly, @monthly or @yearly"));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            let hint = if fields.len() == 6 {
                "crontab has no seconds field: write minute hour day-of-month month day-of-week"
            } else {
                "write five fields: minute hour day-of-month month day-of-week, such as \"0 3 * * 1\""
            };
            return Err(LeafError::new(format!(
                "`{text}` has {} fields, expected 5",
                fields.len()
            ))
            .with_hint(hint));
        }
        let [minute, hour, day_of_month, month, day_of_week] =
            [fields[0], fields[1], fields[2], fields[3], fields[4]];
        let field_error = |name: &str, err: String| LeafError::new(format!("{name} field: {err}"));
        parse_field(minute, 0, 59, &[]).map_err(|e| field_error("minute", e))?;
        parse_field(hour, 0, 23, &[]).map_err(|e| field_error("hour", e))?;
        parse_field(day_of_month, 1, 31, &[]).map_err(|e| field_error("day-of-month", e))?;
        parse_field(month, 1, 12, &MONTHS).map_err(|e| field_error("month", e))?;
        let weekdays =
            parse_field(day_of_week, 0, 7, &WEEKDAYS).map_err(|e| field_error("day-of-week", e))?;

        let weekday_names: Vec<&str> = (0..7)
            .filter(|day| weekdays & (1 << day) != 0 || (*day == 0 && weekdays & (1 << 7) != 0))
            .map(|day| WEEKDAYS[day])
            .collect();
        let weekday_field = weekday_names.join(",");
        let dom_restricted = !day_of_month.starts_with('*');
        let dow_restricted = !day_of_week.starts_with('*');

        let mut expressions = Vec::new();
        if dom_restricted && dow_restricted {
            expressions.push(format!("0 {minute} {hour} {day_of_month} {month} *"));
            expressions.push(format!("0 {minute} {hour} * {month} {weekday_field}"));
        } else if dow_restricted {
            expressions.push(format!("0 {minute} {hour} * {month} {weekday_field}"));
        } else {
            expressions.push(format!("0 {minute} {hour} {day_of_month} {month} *"));
        }
        let schedules = expressions
            .iter()
            .map(|expr| {
                cron::Schedule::from_str(expr).map_err(|err| {
                    LeafError::new(format!("`{text}` is not a valid schedule: {err}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CronSchedule {
            source: text.to_string(),
            schedules,
        })
    }
}

/// Parses one crontab field into a bit set of the values it matches.
/// `names` are accepted case-insensitively for `min..` onwards.
fn parse_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |text: &str| -> Result<u32, String> {
        if let Some(index) = names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(text))
        {
            return Ok(min + u32::try_from(index).unwrap_or(0));
        }
        let number: u32 = text.parse().map_err(|_| {
            if names.is_empty() {
                format!("`{text}` is not a number")
            } else {
                format!(
                    "`{text}` is not a number or a name such as `{}`",
                    names[0].to_ascii_lowercase()
                )
            }
        })?;
        if !(min..=max).contains(&number) {
            return Err(format!("{number} is out of range {min}-{max}"));
        }
        Ok(number)
    };
    let mut bits = 0u64;
    for item in field.split(',') {
        if item.is_empty() {
            return Err("empty list item".into());
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("step `{step}` is not a number"))?;
                if step == 0 {
                    return Err("step must be at least 1".into());
                }
                (range, step)
            }
            None => (item, 1),
        };
        let (first, last) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range `{range}` runs backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `a/step` means "from a to the end, every step", as in cronie.
            (a, if step > 1 { max } else { a })
        };
        let mut v = first;
        while v <= last {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        leaf::parse(
            deserializer,
            CronSchedule::from_str,
            CronSchedule::placeholder,
        )
    }
}

impl Serialize for CronSchedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl JsonSchema for CronSchedule {
    fn schema_name() -> Cow<'static, str> {
        "CronSchedule".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A standard 5-field crontab expression (minute hour day-of-month month day-of-week; 0 and 7 are Sunday) or a macro such as @daily.",
            "examples": ["0 3 * * *", "*/15 * * * *", "0 3 * * 1", "@daily"]
        })
    }
}

/// Next due times of `schedule` after `after`, rendered in `tz`: used by
/// `muster plan` and the CLI to show what a schedule means.
pub fn next_runs(
    schedule: &CronSchedule,
    tz: chrono_tz::Tz,
    after: DateTime<chrono::Utc>,
    n: usize,
) -> Vec<DateTime<chrono_tz::Tz>> {
    let start = tz.from_utc_datetime(&after.naive_utc());
    schedule.upcoming(&start).take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Utc, Weekday};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str) -> String {
        let schedule: CronSchedule = expr.parse().unwrap();
        schedule.next_after(&at(after)).unwrap().to_rfc3339()
    }

    #[test]
    fn monday_is_one() {
        // 2026-11-22 is a Sunday.
        assert_eq!(
            next("0 3 * * 1", "2026-11-22T12:00:00Z"),
            "2026-11-23T03:00:00+00:00"
        );
        let schedule: CronSchedule = "0 3 * * 1".parse().unwrap();
        let runs: Vec<_> = schedule
            .upcoming(&at("2026-11-22T12:00:00Z"))
            .take(3)
            .collect();
        assert!(
            runs.iter()
                .all(|run| run.weekday() == Weekday::Mon && run.hour() == 3)
        );
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        assert_eq!(
            next("0 0 * * 0", "2026-11-20T00:00:00Z"),
            "2026-11-22T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-11-20T00:00:00Z"),
            "2026-11-22T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 * * sun", "2026-11-20T00:00:00Z"),
            "2026-11-22T00:00:00+00:00"
        );
    }

    #[test]
    fn weekday_ranges() {
        // Friday 2026-11-20 18:00 → next weekday 09:00 is Monday.
        assert_eq!(
            next("0 9 * * 1-5", "2026-11-20T18:00:00Z"),
            "2026-11-23T09:00:00+00:00"
        );
        assert_eq!(
            next("0 9 * * mon-fri", "2026-11-20T18:00:00Z"),
            "2026-11-23T09:00:00+00:00"
        );
        // 5-7 is Friday, Saturday, Sunday.
        assert_eq!(
            next("0 9 * * 5-7", "2026-11-21T10:00:00Z"),
            "2026-11-22T09:00:00+00:00"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // The 1st of the month or any Monday, as in crontab(5).
        assert_eq!(
            next("0 0 1 * 1", "2026-11-22T12:00:00Z"),
            "2026-11-23T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 1 * 1", "2026-11-24T12:00:00Z"),
            "2026-11-30T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 1 * 1", "2026-11-30T12:00:00Z"),
            "2026-12-01T00:00:00+00:00"
        );
    }

    #[test]
    fn steps_and_macros() {
        assert_eq!(
            next("*/15 * * * *", "2026-11-22T12:01:00Z"),
            "2026-11-22T12:15:00+00:00"
        );
        assert_eq!(
            next("@daily", "2026-11-22T12:00:00Z"),
            "2026-11-23T00:00:00+00:00"
        );
        assert_eq!(
            next("@weekly", "2026-11-20T12:00:00Z"),
            "2026-11-22T00:00:00+00:00"
        );
    }

    #[test]
    fn time_zones_apply() {
        let schedule: CronSchedule = "0 3 * * *".parse().unwrap();
        let runs = next_runs(
            &schedule,
            chrono_tz::Europe::Berlin,
            at("2026-11-22T12:00:00Z"),
            1,
        );
        assert_eq!(runs[0].to_rfc3339(), "2026-11-23T03:00:00+01:00");
    }

    #[test]
    fn bad_expressions_say_why() {
        let err = |text: &str| text.parse::<CronSchedule>().unwrap_err().to_string();
        assert_eq!(
            err("0 0 3 * * 1"),
            "`0 0 3 * * 1` has 6 fields, expected 5 (crontab has no seconds field: write minute hour day-of-month month day-of-week)"
        );
        assert_eq!(err("61 * * * *"), "minute field: 61 is out of range 0-59");
        assert_eq!(err("0 0 * * 8"), "day-of-week field: 8 is out of range 0-7");
        assert_eq!(
            err("0 0 * * funday"),
            "day-of-week field: `funday` is not a number or a name such as `sun`"
        );
        assert_eq!(
            err("0 0 5-1 * *"),
            "day-of-month field: range `5-1` runs backwards"
        );
        assert!(err("@reboot").contains("not a schedule"));
    }
}
