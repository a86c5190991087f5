//! Cron expressions as people write them (5-field crontab, 6-field with
//! seconds, `@daily`), turned into the `cron` crate's form. Pure.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};

/// Parses a schedule. Crontab's day-of-week numbers (0 or 7 = Sunday) are
/// translated to the `cron` crate's (1 = Sunday … 7 = Saturday), so that an
/// expression copied from a crontab means what it meant there.
///
/// # Errors
/// A sentence naming the expression and what the crate objected to.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let expr = expr.trim();
    let normalized = if expr.starts_with('@') {
        expr.to_string()
    } else {
        let fields: Vec<&str> = expr.split_whitespace().collect();
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

/// A parsed schedule in its time zone: when it fires next, and how long a
/// period is (what "the newest backup is overdue" is measured against).
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

    /// The longest gap between consecutive firings in the near future, so a
    /// weekday-only schedule counts a weekend as one period rather than
    /// calling Saturday's backup missed.
    pub fn period(&self, now: DateTime<Utc>) -> Option<Duration> {
        let times: Vec<_> = self
            .schedule
            .after(&now.with_timezone(&self.tz))
            .take(8)
            .collect();
        times.windows(2).map(|w| w[1] - w[0]).max()
    }

    /// Whether a daemon starting at `now` should run once at once: the newest
    /// backup is older than one period (or there is none). Missed slots are
    /// never replayed one by one.
    pub fn catch_up_due(&self, newest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match (newest, self.period(now)) {
            (None, _) => true,
            (Some(n), Some(p)) => now - n > p,
            (Some(_), None) => false,
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
            // A range ending on 7 (Sunday) would wrap in the crate's numbering.
            Some((a, "7")) if a != "0" && a.parse::<u8>().is_ok() => {
                out.push("1".to_string());
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
    fn catch_up_only_when_a_whole_period_was_missed() {
        let now = at("2026-11-27T12:30:00Z");
        let daily = Timetable::new("@daily", chrono_tz::UTC).unwrap();
        assert_eq!(daily.period(now), Some(Duration::days(1)));
        assert!(daily.catch_up_due(None, now));
        assert!(!daily.catch_up_due(Some(at("2026-11-27T00:00:05Z")), now));
        assert!(daily.catch_up_due(Some(at("2026-11-26T00:00:05Z")), now));
        // Weekdays only: Friday's backup is not overdue on Sunday.
        let weekdays = Timetable::new("0 2 * * 1-5", chrono_tz::UTC).unwrap();
        let sunday = at("2026-11-29T12:00:00Z");
        assert!(!weekdays.catch_up_due(Some(at("2026-11-27T02:00:10Z")), sunday));
        assert!(weekdays.catch_up_due(Some(at("2026-11-25T02:00:10Z")), sunday));
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
