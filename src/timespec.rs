//! Pure parsing of the times and durations people type: `--to` targets
//! (`latest`, RFC 3339, `YYYY-MM-DD HH:MM[:SS]`, `2h`) and policy durations.

use chrono::{DateTime, Duration, Local, NaiveDateTime, TimeZone, Utc};

/// What `restore --to` asked for, before it is resolved against a clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeSpec {
    Latest,
    At(DateTime<Utc>),
    Ago(Duration),
}

/// Parses a duration such as `90s`, `30m`, `2h`, `3d`, `1w` or `1d12h`.
///
/// # Errors
/// Returns a sentence saying what is wrong, for the caller to wrap.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::zero();
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.is_empty() {
            return Err(format!(
                "expected a number before `{c}` (use forms like 90s, 30m, 2h, 3d, 1w)"
            ));
        }
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("number `{digits}` is too large"))?;
        digits.clear();
        let unit = match c {
            's' => Duration::try_seconds(n),
            'm' => Duration::try_minutes(n),
            'h' => Duration::try_hours(n),
            'd' => Duration::try_days(n),
            'w' => Duration::try_weeks(n),
            'y' => Duration::try_days(n.saturating_mul(365)),
            _ => {
                return Err(format!(
                    "unknown unit `{c}` (use s, m, h, d, w or y, e.g. 30m or 3d)"
                ));
            }
        }
        .ok_or_else(|| "duration is too large".to_string())?;
        total = total
            .checked_add(&unit)
            .ok_or_else(|| "duration is too large".to_string())?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "`{digits}` has no unit (use s, m, h, d, w or y, e.g. {digits}h)"
        ));
    }
    if total.is_zero() {
        return Err("duration must be greater than zero".into());
    }
    Ok(total)
}

/// Parses a `--to` argument. Local times without an offset are read in `tz`.
///
/// # Errors
/// Returns a sentence saying which forms are accepted.
pub fn parse_timespec<Tz: TimeZone>(input: &str, tz: &Tz) -> Result<TimeSpec, String> {
    let s = input.trim();
    if s.eq_ignore_ascii_case("latest") || s.eq_ignore_ascii_case("now") {
        return Ok(TimeSpec::Latest);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(TimeSpec::At(t.with_timezone(&Utc)));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return match tz.from_local_datetime(&naive) {
                chrono::LocalResult::Single(t) => Ok(TimeSpec::At(t.with_timezone(&Utc))),
                chrono::LocalResult::Ambiguous(a, b) => Err(format!(
                    "`{s}` happens twice in the local time zone (a clock change); \
                     give an offset, e.g. {} or {}",
                    a.with_timezone(&Utc).to_rfc3339(),
                    b.with_timezone(&Utc).to_rfc3339()
                )),
                chrono::LocalResult::None => Err(format!(
                    "`{s}` does not exist in the local time zone (skipped by a clock change)"
                )),
            };
        }
    }
    if s.chars().next().is_some_and(|c| c.is_ascii_digit()) && !s.contains('-') {
        return parse_duration(s)
            .map(TimeSpec::Ago)
            .map_err(|e| format!("{e}; or give `latest`, RFC 3339, or `YYYY-MM-DD HH:MM`"));
    }
    Err(
        "expected `latest`, an RFC 3339 time (2026-11-26T14:30:00Z), \
         `YYYY-MM-DD HH:MM[:SS]` in local time, or a duration ago such as 2h or 3d"
            .into(),
    )
}

/// Parses `--to` in the process's local time zone.
///
/// # Errors
/// As [`parse_timespec`].
pub fn parse_timespec_local(input: &str) -> Result<TimeSpec, String> {
    parse_timespec(input, &Local)
}

/// The instant a spec names, given the current time. `Latest` is `now`.
///
/// # Errors
/// A target in the future is refused: it is almost always a typo (a wrong
/// year or a missing offset) and silently meaning "latest" would hide it.
pub fn resolve(spec: &TimeSpec, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    match spec {
        TimeSpec::Latest => Ok(now),
        TimeSpec::Ago(d) => Ok(now - *d),
        TimeSpec::At(t) if *t > now + Duration::seconds(5) => Err(format!(
            "{} is in the future (now is {}); did you mean another date or offset?",
            t.to_rfc3339(),
            now.to_rfc3339()
        )),
        TimeSpec::At(t) => Ok(*t),
    }
}

/// A short human form of a duration: `3h 12m`, `2d 4h`, `45s`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.num_seconds().max(0);
    let (days, hours, mins, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {s}s"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::seconds(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::hours(2));
        assert_eq!(parse_duration("1d12h").unwrap(), Duration::hours(36));
        assert_eq!(parse_duration("1w").unwrap(), Duration::days(7));
        assert!(parse_duration("2").unwrap_err().contains("no unit"));
        assert!(parse_duration("2x").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("h")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn timespecs() {
        let tz = FixedOffset::east_opt(3600).unwrap();
        assert_eq!(parse_timespec("latest", &tz).unwrap(), TimeSpec::Latest);
        assert_eq!(
            parse_timespec("2026-11-26 14:30", &tz).unwrap(),
            TimeSpec::At(Utc.with_ymd_and_hms(2026, 11, 26, 13, 30, 0).unwrap())
        );
        assert_eq!(
            parse_timespec("2026-11-26T14:30:00Z", &tz).unwrap(),
            TimeSpec::At(Utc.with_ymd_and_hms(2026, 11, 26, 14, 30, 0).unwrap())
        );
        assert_eq!(
            parse_timespec("3d", &tz).unwrap(),
            TimeSpec::Ago(Duration::days(3))
        );
        assert!(parse_timespec("yesterday", &tz).is_err());
        assert!(parse_timespec("2026-13-40 10:00", &tz).is_err());
    }

    #[test]
    fn future_targets_are_refused() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        let spec = TimeSpec::At(now + Duration::days(365));
        assert!(resolve(&spec, now).unwrap_err().contains("in the future"));
        assert_eq!(
            resolve(&TimeSpec::Ago(Duration::hours(2)), now).unwrap(),
            now - Duration::hours(2)
        );
    }
}
