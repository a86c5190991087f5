//! Pure parsing of the times and durations people type: `--to` targets
//! (`latest`, RFC 3339, `YYYY-MM-DD HH:MM[:SS]`, `2h`) and policy durations.

use std::path::Path;

use chrono::{DateTime, Duration, Local, LocalResult, NaiveDateTime, TimeZone, Utc};

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
    parse_timespec_at(input, tz, Utc::now())
}

/// [`parse_timespec`] with the current time given: a bare `HH:MM` is the
/// latest such time at or before `now` (today, else yesterday), as someone
/// on call means "restore to 18:44".
///
/// # Errors
/// Returns a sentence saying which forms are accepted.
pub fn parse_timespec_at<Tz: TimeZone>(
    input: &str,
    tz: &Tz,
    now: DateTime<Utc>,
) -> Result<TimeSpec, String> {
    let s = input.trim();
    if s.eq_ignore_ascii_case("latest") || s.eq_ignore_ascii_case("now") {
        return Ok(TimeSpec::Latest);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(TimeSpec::At(t.with_timezone(&Utc)));
    }
    // As drctl's own plans and messages print UTC: `2026-11-30 17:44:00 UTC`.
    if let Some(naive) = s
        .strip_suffix(" UTC")
        .and_then(|t| parse_local_form(t.trim_end()))
    {
        return Ok(TimeSpec::At(naive.and_utc()));
    }
    // What PostgreSQL prints and people paste: a space instead of `T`,
    // fractional seconds, and an offset of hours only (`+01`).
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Ok(TimeSpec::At(t.with_timezone(&Utc)));
        }
    }
    let today = now.with_timezone(tz).date_naive();
    let naive = match (parse_local_form(s), parse_local_short(s, today)) {
        (Some(n), _) => Some(n),
        // A bare time still to come today means yesterday's.
        (None, Some(n)) if s.contains(':') && earliest_in(tz, &n).is_some_and(|t| t > now) => {
            Some(n - Duration::days(1))
        }
        (None, short) => short,
    };
    if let Some(naive) = naive {
        return match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => Ok(TimeSpec::At(t.with_timezone(&Utc))),
            LocalResult::Ambiguous(a, b) => Err(format!(
                "`{s}` happens twice in the local time zone (a clock change); \
                 give an offset, e.g. {} or {}",
                a.with_timezone(&Utc).to_rfc3339(),
                b.with_timezone(&Utc).to_rfc3339()
            )),
            LocalResult::None => Err(format!(
                "`{s}` does not exist in the local time zone (skipped by a clock change)"
            )),
        };
    }
    if s.chars().next().is_some_and(|c| c.is_ascii_digit()) && !s.contains('-') {
        return parse_duration(s)
            .map(TimeSpec::Ago)
            .map_err(|e| format!("{e}; or give `latest`, RFC 3339, or `YYYY-MM-DD HH:MM`"));
    }
    Err(
        "expected `latest`, an RFC 3339 time (2026-11-26T14:30:00Z), \
         `YYYY-MM-DD HH:MM[:SS]`, a date (`YYYY-MM-DD`, its midnight) or `HH:MM` \
         (the latest such time today or yesterday) in local time, or a duration ago such as 2h or 3d"
            .into(),
    )
}

fn earliest_in<Tz: TimeZone>(tz: &Tz, naive: &NaiveDateTime) -> Option<DateTime<Utc>> {
    tz.from_local_datetime(naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// A bare date (its midnight) or a bare `HH:MM[:SS]` on `today`.
fn parse_local_short(s: &str, today: chrono::NaiveDate) -> Option<NaiveDateTime> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0);
    }
    ["%H:%M:%S", "%H:%M"]
        .iter()
        .find_map(|fmt| chrono::NaiveTime::parse_from_str(s, fmt).ok())
        .map(|time| today.and_time(time))
}

/// The forms of `--to` that are read in a time zone.
fn parse_local_form(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|fmt| NaiveDateTime::parse_from_str(s, fmt).ok())
}

/// Parses `--to` in the process's local time zone (`TZ`, else the
/// system's). The zone is looked at only when the input is a local time.
///
/// # Errors
/// As [`parse_timespec`]; and for a local time, a `TZ` that names no zone.
pub fn parse_timespec_local(input: &str) -> Result<TimeSpec, String> {
    read_timespec_local(input, Utc::now()).map(|r| r.spec)
}

/// A `--to` as it was read: the spec and, when it was a local time, the
/// sentence that says how, for the plan to echo (`18:44 read as
/// 2026-11-30 18:44:00 Europe/Berlin (UTC+01:00) = 2026-11-30 17:44:00 UTC`):
/// a time pasted from another zone's screen must not silently pick the
/// wrong backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub spec: TimeSpec,
    pub local: Option<String>,
}

/// [`parse_timespec_local`], saying how a local time was read.
///
/// # Errors
/// As [`parse_timespec_local`].
pub fn read_timespec_local(input: &str, now: DateTime<Utc>) -> Result<Reading, String> {
    let s = input.trim();
    if parse_local_form(s)
        .or_else(|| parse_local_short(s, now.date_naive()))
        .is_none()
    {
        // No local time in it: the zone does not matter.
        return Ok(Reading {
            spec: parse_timespec_at(input, &Utc, now)?,
            local: None,
        });
    }
    let zone = LocalZone::from_env()?;
    let spec = match zone {
        LocalZone::System => parse_timespec_at(input, &Local, now)?,
        LocalZone::Named(tz) => parse_timespec_at(input, &tz, now)?,
    };
    let local = match &spec {
        TimeSpec::At(t) => Some(format!(
            "`{s}` read as {} = {} UTC",
            zone.describe(*t),
            t.format(SECONDS)
        )),
        _ => None,
    };
    Ok(Reading { spec, local })
}

/// How times are printed for people: to the second, no fraction.
pub const SECONDS: &str = "%Y-%m-%d %H:%M:%S";

/// The zone that local times are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalZone {
    /// What chrono's `Local` reads: `TZ` as a zoneinfo file or a POSIX
    /// rule, or without `TZ` the system's `/etc/localtime`.
    System,
    /// An IANA name (or empty `TZ`, UTC), from drctl's own copy of the
    /// zone database, so that it does not depend on the host having tzdata.
    Named(chrono_tz::Tz),
}

/// Where chrono looks for a zoneinfo file named by a relative `TZ`.
const ZONEINFO_DIRS: [&str; 4] = [
    "/usr/share/zoneinfo",
    "/share/zoneinfo",
    "/etc/zoneinfo",
    "/usr/share/lib/zoneinfo",
];

impl LocalZone {
    /// The zone `TZ` names.
    ///
    /// # Errors
    /// A sentence naming `TZ` when it names no zone: chrono would read such
    /// a value as UTC (or the system's zone) without a word, and a local
    /// `--to` would then be hours off.
    pub fn from_env() -> Result<LocalZone, String> {
        match std::env::var("TZ") {
            Ok(tz) => LocalZone::resolve(Some(&tz)),
            Err(std::env::VarError::NotPresent) => LocalZone::resolve(None),
            Err(std::env::VarError::NotUnicode(raw)) => Err(format!(
                "the environment variable TZ ({}) is not UTF-8, so it names no time zone; \
                 set TZ to a zone name such as Europe/Berlin or UTC, unset it to use the system's zone, \
                 or give the time with an offset (2026-11-26T14:30:00+01:00)",
                raw.to_string_lossy()
            )),
        }
    }

    /// The zone a value of `TZ` names, as glibc (and chrono) read it: empty
    /// is UTC, an IANA name, a zoneinfo file (with or without a leading
    /// `:`), or a POSIX rule such as `CET-1CEST,M3.5.0,M10.5.0/3`.
    ///
    /// # Errors
    /// A sentence naming `TZ` and its value when it is none of those.
    pub fn resolve(tz: Option<&str>) -> Result<LocalZone, String> {
        let Some(value) = tz else {
            return Ok(LocalZone::System);
        };
        if value.is_empty() {
            return Ok(LocalZone::Named(chrono_tz::UTC));
        }
        let name = value.strip_prefix(':').unwrap_or(value);
        if let Ok(zone) = name.parse::<chrono_tz::Tz>() {
            return Ok(LocalZone::Named(zone));
        }
        if is_zoneinfo_file(name) || (!value.starts_with(':') && is_posix_rule(value)) {
            return Ok(LocalZone::System);
        }
        Err(format!(
            "the environment variable TZ is `{value}`, which names no time zone \
             (not an IANA name, a zoneinfo file or a POSIX TZ rule), so a local time cannot be read; \
             set TZ to a zone name such as Europe/Berlin or UTC, unset it to use the system's zone, \
             or give the time with an offset (2026-11-26T14:30:00+01:00)"
        ))
    }

    /// The zone's name: the IANA name when known (`TZ`, `/etc/timezone`,
    /// the `/etc/localtime` link), else `local time`.
    pub fn name(self) -> String {
        match self {
            LocalZone::Named(tz) => tz.name().to_string(),
            LocalZone::System => std::env::var("TZ")
                .ok()
                .map(|v| v.trim_start_matches(':').to_string())
                .or_else(|| {
                    std::fs::read_to_string("/etc/timezone")
                        .ok()
                        .map(|t| t.trim().to_string())
                })
                .or_else(|| {
                    let link = std::fs::read_link("/etc/localtime").ok()?;
                    let link = link.to_string_lossy();
                    Some(link.split_once("zoneinfo/")?.1.to_string())
                })
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "local time".into()),
        }
    }

    /// The offset from UTC at `t`, in seconds east.
    pub fn offset_seconds(self, t: DateTime<Utc>) -> i32 {
        use chrono::Offset;
        match self {
            LocalZone::System => t.with_timezone(&Local).offset().fix().local_minus_utc(),
            LocalZone::Named(tz) => t.with_timezone(&tz).offset().fix().local_minus_utc(),
        }
    }

    /// `t` on this zone's clock, to the second.
    pub fn clock(self, t: DateTime<Utc>) -> String {
        match self {
            LocalZone::System => t.with_timezone(&Local).format(SECONDS).to_string(),
            LocalZone::Named(tz) => t.with_timezone(&tz).format(SECONDS).to_string(),
        }
    }

    /// `2026-11-30 18:44:00 Europe/Berlin (UTC+01:00)`.
    pub fn describe(self, t: DateTime<Utc>) -> String {
        let off = self.offset_seconds(t);
        format!(
            "{} {} (UTC{}{:02}:{:02})",
            self.clock(t),
            self.name(),
            if off < 0 { '-' } else { '+' },
            off.abs() / 3600,
            off.abs() / 60 % 60
        )
    }

    /// `2026-11-30 17:44:00 UTC (18:44:00 Europe/Berlin)`, or only the UTC
    /// time where this zone's clock shows the same.
    pub fn beside_utc(self, t: DateTime<Utc>) -> String {
        let utc = format!("{} UTC", t.format(SECONDS));
        if self.offset_seconds(t) == 0 {
            return utc;
        }
        let clock = self.clock(t);
        let same_day = clock.get(..10) == Some(&utc[..10]);
        format!(
            "{utc} ({} {})",
            if same_day { &clock[11..] } else { &clock[..] },
            self.name()
        )
    }

    /// The earliest instant a local date and time names in this zone.
    pub fn earliest(self, naive: &NaiveDateTime) -> Option<DateTime<Utc>> {
        let utc = |r: LocalResult<DateTime<Utc>>| r.earliest();
        match self {
            LocalZone::System => utc(Local
                .from_local_datetime(naive)
                .map(|t| t.with_timezone(&Utc))),
            LocalZone::Named(tz) => {
                utc(tz.from_local_datetime(naive).map(|t| t.with_timezone(&Utc)))
            }
        }
    }
}

/// A TZif file where chrono would look for it.
fn is_zoneinfo_file(name: &str) -> bool {
    let is_tzif = |p: &Path| {
        use std::io::Read;
        let mut magic = [0u8; 4];
        std::fs::File::open(p)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok_and(|()| &magic == b"TZif")
    };
    let path = Path::new(name);
    if path.is_absolute() {
        return is_tzif(path);
    }
    // A relative name must not climb out of the zoneinfo directories.
    !name.split('/').any(|c| c == "..")
        && ZONEINFO_DIRS
            .iter()
            .any(|dir| is_tzif(&Path::new(dir).join(path)))
}

/// Whether `s` is a POSIX TZ rule: `std offset [dst [offset] [,start[/time],end[/time]]]`,
/// e.g. `UTC0`, `EST5EDT`, `<+0330>-3:30`, `CET-1CEST,M3.5.0,M10.5.0/3`.
fn is_posix_rule(s: &str) -> bool {
    fn name(s: &str) -> Option<&str> {
        if let Some(rest) = s.strip_prefix('<') {
            let end = rest.find('>')?;
            let inner = &rest[..end];
            let ok = inner.len() >= 3
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
            return ok.then_some(&rest[end + 1..]);
        }
        let len = s.chars().take_while(char::is_ascii_alphabetic).count();
        (len >= 3).then_some(&s[len..])
    }
    /// `[+-]hh[:mm[:ss]]`, hours up to `max_hours`.
    fn offset(s: &str, max_hours: u32) -> Option<&str> {
        let s = s.strip_prefix(['+', '-']).unwrap_or(s);
        let mut rest = s;
        for (i, max) in [max_hours, 59, 59].into_iter().enumerate() {
            if i > 0 {
                match rest.strip_prefix(':') {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 || digits > 3 || rest[..digits].parse::<u32>().ok()? > max {
                return None;
            }
            rest = &rest[digits..];
        }
        Some(rest)
    }
    fn date(s: &str) -> bool {
        let (day, time) = s.split_once('/').unwrap_or((s, ""));
        let day_ok = if let Some(m) = day.strip_prefix('M') {
            let parts: Vec<&str> = m.split('.').collect();
            parts.len() == 3
                && [(1, 12), (1, 5), (0, 6)]
                    .iter()
                    .zip(&parts)
                    .all(|((lo, hi), p)| p.parse::<u32>().is_ok_and(|n| (*lo..=*hi).contains(&n)))
        } else {
            let n = day.strip_prefix('J').unwrap_or(day);
            n.parse::<u32>().is_ok_and(|n| n <= 365)
        };
        day_ok && (time.is_empty() || offset(time, 167) == Some(""))
    }
    let Some(rest) = name(s).and_then(|r| offset(r, 24)) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = name(rest) else {
        return false;
    };
    let rest = if rest.starts_with(',') || rest.is_empty() {
        rest
    } else {
        match offset(rest, 24) {
            Some(r) => r,
            None => return false,
        }
    };
    if rest.is_empty() {
        return true;
    }
    let mut rules = rest[1..].split(',');
    rest.starts_with(',')
        && matches!((rules.next(), rules.next(), rules.next()), (Some(a), Some(b), None) if date(a) && date(b))
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
            "{} UTC is in the future (now is {} UTC); did you mean another date or offset?",
            t.format(SECONDS),
            now.format(SECONDS)
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
    fn times_as_postgres_prints_them_are_read_with_their_offset() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let at = |s: &str| match parse_timespec(s, &utc).unwrap() {
            TimeSpec::At(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(at("2026-11-30 14:29:59+01"), "2026-11-30T13:29:59.000000Z");
        assert_eq!(
            at("2026-11-30 14:29:59.123456+00"),
            "2026-11-30T14:29:59.123456Z"
        );
        assert_eq!(
            at("2026-11-30 14:29:59.5-02:30"),
            "2026-11-30T16:59:59.500000Z"
        );
        assert_eq!(at("2026-11-30 14:29+01"), "2026-11-30T13:29:00.000000Z");
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
    fn tz_values_that_name_a_zone_are_accepted() {
        assert_eq!(LocalZone::resolve(None), Ok(LocalZone::System));
        assert_eq!(
            LocalZone::resolve(Some("")),
            Ok(LocalZone::Named(chrono_tz::UTC))
        );
        for name in ["Europe/Berlin", ":Europe/Berlin", "UTC", "America/New_York"] {
            assert!(
                matches!(LocalZone::resolve(Some(name)), Ok(LocalZone::Named(_))),
                "{name}"
            );
        }
        for rule in [
            "UTC0",
            "EST5",
            "WART4WARST",
            "<+0330>-3:30",
            "CET-1CEST,M3.5.0,M10.5.0/3",
            "NZST-12NZDT,M9.5.0,M4.1.0/3",
            "AAA3BBB,J60/2,300",
        ] {
            assert_eq!(
                LocalZone::resolve(Some(rule)),
                Ok(LocalZone::System),
                "{rule}"
            );
        }
    }

    /// chrono reads these as UTC or the system's zone without a word.
    #[test]
    fn tz_values_that_name_no_zone_are_refused_naming_tz() {
        for bogus in [
            "Bogus/Zone",
            ":Bogus/Zone",
            "Europe/Berlinn",
            "5",
            "CET-1CEST,M13.5.0,M10.5.0",
            "../../etc/passwd",
        ] {
            let err = LocalZone::resolve(Some(bogus)).unwrap_err();
            assert!(err.contains("TZ") && err.contains(bogus), "{bogus}: {err}");
            assert!(err.contains("Europe/Berlin"), "{err}");
        }
    }

    #[test]
    fn a_named_zone_reads_local_times_in_that_zone() {
        let berlin = LocalZone::resolve(Some("Europe/Berlin")).unwrap();
        let naive = parse_local_form("2026-07-01 12:00").unwrap();
        assert_eq!(
            berlin.earliest(&naive),
            Some(Utc.with_ymd_and_hms(2026, 7, 1, 10, 0, 0).unwrap())
        );
    }

    /// `list` shows UTC; people paste a date or just the clock time.
    #[test]
    fn a_bare_date_is_midnight_and_a_bare_time_the_latest_past_one() {
        let tz = FixedOffset::east_opt(3600).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 17, 0, 0).unwrap();
        let at = |s: &str| parse_timespec_at(s, &tz, now).unwrap();
        assert_eq!(
            at("2026-11-29"),
            TimeSpec::At(Utc.with_ymd_and_hms(2026, 11, 28, 23, 0, 0).unwrap())
        );
        // 18:00 local is 17:00 UTC: now, so today.
        assert_eq!(
            at("18:00"),
            TimeSpec::At(Utc.with_ymd_and_hms(2026, 11, 30, 17, 0, 0).unwrap())
        );
        // 18:44 local is still to come today: yesterday's.
        assert_eq!(
            at("18:44"),
            TimeSpec::At(Utc.with_ymd_and_hms(2026, 11, 29, 17, 44, 0).unwrap())
        );
        assert_eq!(
            at("09:15:30"),
            TimeSpec::At(Utc.with_ymd_and_hms(2026, 11, 30, 8, 15, 30).unwrap())
        );
        assert!(parse_timespec_at("25:00", &tz, now).is_err());
        assert_eq!(
            at("2026-11-30 16:00:00 UTC"),
            TimeSpec::At(Utc.with_ymd_and_hms(2026, 11, 30, 16, 0, 0).unwrap())
        );
    }

    #[test]
    fn a_named_zone_describes_a_time_with_its_name_and_offset() {
        let berlin = LocalZone::resolve(Some("Europe/Berlin")).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 11, 30, 17, 44, 0).unwrap();
        assert_eq!(
            berlin.describe(t),
            "2026-11-30 18:44:00 Europe/Berlin (UTC+01:00)"
        );
        let ny = LocalZone::resolve(Some("America/New_York")).unwrap();
        assert_eq!(
            ny.describe(t),
            "2026-11-30 12:44:00 America/New_York (UTC-05:00)"
        );
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
