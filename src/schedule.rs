//! Cron expressions as people write them (5-field crontab, 6-field with
//! seconds, `@daily`), turned into the `cron` crate's form. Pure.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// Parses a schedule. Crontab's day-of-week numbers (0 or 7 = Sunday) are
/// translated to the `cron` crate's (1 = Sunday … 7 = Saturday), so that an
/// expression copied from a crontab means what it meant there.
///
/// # Errors
/// A sentence naming the expression, the field and what it takes; or what
/// the crate objected to, for what this module does not check itself.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let expr = expr.trim();
    let normalized = if expr.starts_with('@') {
        expr.to_string()
    } else {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let kinds: &[Field] = match fields.len() {
            5 => &FIELDS[1..],
            6 => &FIELDS,
            _ => &[],
        };
        for (field, text) in kinds.iter().zip(&fields) {
            field
                .check(text)
                .map_err(|problem| format!("`{expr}`: {problem}"))?;
        }
        match fields.len() {
            5 => format!(
                "0 {} {} {} {} {}",
                fields[0],
                fields[1],
                fields[2],
                fields[3],
                crontab_dow(fields[4])?
            ),
            6 => format!(
                "{} {} {} {} {} {}",
                fields[0],
                fields[1],
                fields[2],
                fields[3],
                fields[4],
                crontab_dow(fields[5])?
            ),
            n => {
                return Err(format!(
                    "`{expr}` has {n} fields; expected 5 (min hour day month weekday), \
                     6 (with seconds first) or @hourly/@daily/@weekly/@monthly"
                ));
            }
        }
    };
    cron::Schedule::from_str(&normalized)
        .map_err(|e| format!("`{expr}` is not a valid schedule: {e}"))
}

/// One field of a crontab line, in crontab's numbering (day of week 0-7,
/// Sunday both 0 and 7), checked here because the cron crate's messages are
/// in its own numbering and off by one ("Minutes must be less than 59" for
/// 60, when 59 is valid).
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names the field takes instead of numbers.
    names: &'static [&'static str],
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Second (6-field form only), minute, hour, day of month, month, day of week.
static FIELDS: [Field; 6] = [
    Field {
        name: "second",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: WEEKDAYS,
    },
];

impl Field {
    /// What the field takes, for messages.
    fn takes(&self) -> String {
        let mut s = format!("the {} field takes {}-{}", self.name, self.min, self.max);
        if self.name == "day of week" {
            s.push_str(" (0 and 7 are Sunday)");
        }
        if let (Some(first), Some(last)) = (self.names.first(), self.names.last()) {
            s.push_str(&format!(" or names {first}-{last}"));
        }
        s.push_str(", `*`, lists (1,15), ranges (1-5) and steps (*/10, 0-30/5)");
        s
    }

    fn check(&self, text: &str) -> Result<(), String> {
        let bad = |what: String| Err(format!("{what}; {}", self.takes()));
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (item, None),
            };
            if let Some(step) = step {
                match step.parse::<u32>() {
                    Ok(n) if (1..=self.max.max(1)).contains(&n) => {}
                    Ok(n) => {
                        return bad(format!(
                            "step `/{n}` in the {} field is out of range (1-{})",
                            self.name,
                            self.max.max(1)
                        ));
                    }
                    Err(_) => {
                        return bad(format!(
                            "step `/{step}` in the {} field is not a number",
                            self.name
                        ));
                    }
                }
            }
            if range == "*" || range == "?" {
                continue;
            }
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (a, Some(b)),
                None => (range, None),
            };
            let first = self.value(a)?;
            if let Some(b) = b {
                let last = self.value(b)?;
                if let (Some(first), Some(last)) = (first, last)
                    && first > last
                {
                    return bad(format!(
                        "range `{range}` in the {} field runs backwards",
                        self.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// A number in range (`Some`), a name the crate reads (`None`), or an
    /// error saying what the field takes.
    fn value(&self, text: &str) -> Result<Option<u32>, String> {
        if self.names.iter().any(|n| n.eq_ignore_ascii_case(text)) {
            return Ok(None);
        }
        match text.parse::<u32>() {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(Some(n)),
            Ok(n) => Err(format!(
                "{} `{n}` is out of range; {}",
                self.name,
                self.takes()
            )),
            // Other forms (L, W, #) are the crate's to judge.
            Err(_) if text.chars().any(|c| c.is_ascii_alphabetic()) && !self.names.is_empty() => {
                Ok(None)
            }
            Err(_) => Err(format!(
                "`{text}` is not a valid {}; {}",
                self.name,
                self.takes()
            )),
        }
    }
}

/// A parsed schedule in its time zone: when it fires next, and whether a
/// run was missed.
#[derive(Debug, Clone)]
pub struct Timetable {
    schedule: cron::Schedule,
    tz: chrono_tz::Tz,
}

impl Timetable {
    /// # Errors
    /// As [`parse_cron`].
    pub fn new(expr: &str, tz: chrono_tz::Tz) -> Result<Timetable, String> {
        Ok(Timetable {
            schedule: parse_cron(expr)?,
            tz,
        })
    }

    /// The first firing strictly after `t`. `None` only for a schedule that
    /// never fires again (a fixed year in the past).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|n| n.with_timezone(&Utc))
    }

    /// Whether a daemon starting at `now` should run once at once: a slot
    /// came and went after the newest backup (or there is none), as anacron
    /// decides. However many slots were missed, it is one run, never a
    /// replay of each.
    pub fn catch_up_due(&self, newest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match newest {
            None => true,
            Some(n) => self.next_after(n).is_some_and(|slot| slot <= now),
        }
    }
}

fn crontab_dow(field: &str) -> Result<String, String> {
    let shift = |s: &str| -> Result<String, String> {
        match s.parse::<u8>() {
            Ok(n @ 0..=6) => Ok((n + 1).to_string()),
            Ok(7) => Ok("1".into()),
            Ok(n) => Err(format!("day of week {n} is out of range 0-7")),
            Err(_) => Ok(s.to_string()),
        }
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let mut piece = match range.split_once('-') {
            // A range ending on 7 (Sunday) would wrap in the crate's
            // numbering: a..6 keeps its offsets as (a+1)..7, and Sunday is
            // added on its own when the step lands on it.
            Some(("7", "7")) => "1".to_string(),
            Some((a, "7")) if a != "0" && a.parse::<u8>().is_ok() => {
                let first: u8 = a.parse().unwrap_or(1);
                let every: u8 = step.and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
                if (7 - first.min(7)).is_multiple_of(every) {
                    out.push("1".to_string());
                }
                format!("{}-7", shift(a)?)
            }
            Some((a, b)) => format!("{}-{}", shift(a)?, shift(b)?),
            None => shift(range)?,
        };
        if let Some(s) = step {
            piece = format!("{piece}/{s}");
        }
        out.push(piece);
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Utc};

    #[test]
    fn crontab_forms_parse() {
        for e in [
            "0 3 * * *",
            "*/5 * * * *",
            "0 0 3 * * *",
            "@daily",
            "@hourly",
            "0 4 * * 1-5",
            "0 4 * * 0,6",
            "0 4 * * 5-7",
        ] {
            parse_cron(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        }
        assert!(parse_cron("0 3 * *").unwrap_err().contains("4 fields"));
        assert!(parse_cron("0 25 * * *").is_err());
    }

    /// The cron crate says "Minutes must be less than 59" for 60 (59 is
    /// valid) and speaks of days of week in its own numbering.
    #[test]
    fn out_of_range_fields_say_what_the_field_takes() {
        for (expr, needles) in [
            ("60 3 * * *", &["minute `60` is out of range", "0-59"][..]),
            ("0 24 * * *", &["hour `24`", "0-23"]),
            ("0 3 0 * *", &["day of month `0`", "1-31"]),
            ("0 3 * 13 *", &["month `13`", "1-12", "JAN-DEC"]),
            (
                "0 3 * * 8",
                &["day of week `8`", "0-7", "0 and 7 are Sunday"],
            ),
            ("61 0 3 * * *", &["second `61`", "0-59"]),
            ("0-60 3 * * *", &["minute `60`"]),
            ("*/0 3 * * *", &["step `/0`", "1-59"]),
            ("30-10 3 * * *", &["range `30-10`", "backwards"]),
            ("x 3 * * *", &["`x` is not a valid minute"]),
        ] {
            let err = parse_cron(expr).unwrap_err();
            assert!(err.starts_with(&format!("`{expr}`: ")), "{err}");
            for needle in needles {
                assert!(err.contains(needle), "{expr}: {err}");
            }
            assert!(!err.contains("must be less than"), "{err}");
        }
        for good in [
            "59 23 31 12 7",
            "0 0 1 JAN SUN",
            "0 4 * * MON-FRI",
            "*/15 * * * *",
            "0 0-23/2 * * *",
            "0 3 ? * *",
        ] {
            parse_cron(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_run_honours_the_time_zone() {
        let t = Timetable::new("0 3 * * *", chrono_tz::Europe::Berlin).unwrap();
        // 03:00 in Berlin in winter is 02:00 UTC.
        assert_eq!(
            t.next_after(at("2026-11-27T12:00:00Z")),
            Some(at("2026-11-28T02:00:00Z"))
        );
        let utc = Timetable::new("@hourly", chrono_tz::UTC).unwrap();
        assert_eq!(
            utc.next_after(at("2026-11-27T12:00:00Z")),
            Some(at("2026-11-27T13:00:00Z"))
        );
    }

    #[test]
    fn catch_up_when_a_slot_passed_since_the_newest_backup() {
        let daily = Timetable::new("0 2 * * *", chrono_tz::UTC).unwrap();
        let now = at("2026-11-27T12:30:00Z");
        assert!(daily.catch_up_due(None, now));
        // Today's 02:00 ran: nothing to catch up.
        assert!(!daily.catch_up_due(Some(at("2026-11-27T02:00:05Z")), now));
        // Down from 01:55 to 02:10 across today's slot: yesterday's backup
        // is not a day old yet, but today's slot was missed.
        let reboot = at("2026-11-27T02:10:00Z");
        assert!(daily.catch_up_due(Some(at("2026-11-26T02:00:20Z")), reboot));
        // Weekdays only: Friday's backup is not overdue on Sunday.
        let weekdays = Timetable::new("0 2 * * 1-5", chrono_tz::UTC).unwrap();
        let sunday = at("2026-11-29T12:00:00Z");
        assert!(!weekdays.catch_up_due(Some(at("2026-11-27T02:00:10Z")), sunday));
        assert!(weekdays.catch_up_due(Some(at("2026-11-25T02:00:10Z")), sunday));
    }

    #[test]
    fn a_stepped_range_to_sunday_does_not_add_sunday() {
        // 2-7/2 is Tuesday, Thursday, Saturday in crontab.
        let s = parse_cron("0 4 * * 2-7/2").unwrap();
        let start = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        let days: Vec<_> = s.after(&start).take(6).map(|t| t.weekday()).collect();
        assert!(!days.contains(&chrono::Weekday::Sun), "{days:?}");
        assert!(days.contains(&chrono::Weekday::Tue), "{days:?}");
        let s = parse_cron("0 4 * * 1-7/2").unwrap();
        let days: Vec<_> = s.after(&start).take(8).map(|t| t.weekday()).collect();
        assert!(
            days.contains(&chrono::Weekday::Sun),
            "1-7/2 includes Sunday: {days:?}"
        );
        let s = parse_cron("0 4 * * 7-7").unwrap();
        let days: Vec<_> = s.after(&start).take(3).map(|t| t.weekday()).collect();
        assert!(days.iter().all(|d| *d == chrono::Weekday::Sun), "{days:?}");
    }

    #[test]
    fn crontab_sunday_is_sunday() {
        let s = parse_cron("0 4 * * 0").unwrap();
        let start = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        let next = s.after(&start).next().unwrap();
        assert_eq!(next.weekday(), chrono::Weekday::Sun);
        let s = parse_cron("0 4 * * 1").unwrap();
        assert_eq!(
            s.after(&start).next().unwrap().weekday(),
            chrono::Weekday::Mon
        );
    }
}
