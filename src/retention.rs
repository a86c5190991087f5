//! Which backups a policy's retention rules keep: a pure function of the
//! backups' points in time (read from their manifests, never from key names
//! or the local clock), in the semantics of restic's `forget`.
//!
//! - `keep_last = n`: the n newest backups.
//! - `keep_hourly|daily|weekly|monthly|yearly = n`: for the n newest hours
//!   (days, ISO weeks, months, years) that have a backup, the newest backup
//!   in each. Calendar buckets are taken in the policy's schedule time zone.
//!   As restic does, when fewer such buckets exist than a rule asks for, the
//!   oldest backup is kept as well (reason `oldest daily`), so that the
//!   history reaches as far back as the rule allows.
//! - `keep_within = d`: every backup whose point in time is less than d
//!   before the NEWEST backup's (not before now: a policy whose backups
//!   stopped does not lose them to the passing of time).
//!
//! With no rule at all, everything is kept: nothing is ever deleted without
//! a rule saying so. The newest backup is always kept.
//!
//! [`wal`] decides, from the base backups kept, which archived WAL of a
//! `postgres-cluster` policy may go.

pub mod wal;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::Serialize;

use crate::config::Retention;

/// What happens to one backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Forget,
}

/// The decision for one backup and the rules behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub point_in_time: DateTime<Utc>,
    pub action: Action,
    /// The rules that keep it, e.g. `["last", "daily", "within 7d"]`;
    /// empty when it is forgotten.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Calendar {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Calendar {
    fn name(self) -> &'static str {
        match self {
            Calendar::Hourly => "hourly",
            Calendar::Daily => "daily",
            Calendar::Weekly => "weekly",
            Calendar::Monthly => "monthly",
            Calendar::Yearly => "yearly",
        }
    }

    /// The bucket a point in time falls in, on the wall clock of `tz`.
    fn bucket(self, t: DateTime<Utc>, tz: chrono_tz::Tz) -> i64 {
        let l = t.with_timezone(&tz);
        let (y, m, d, h) = (
            i64::from(l.year()),
            i64::from(l.month()),
            i64::from(l.day()),
            i64::from(l.hour()),
        );
        match self {
            Calendar::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
            Calendar::Daily => (y * 100 + m) * 100 + d,
            Calendar::Weekly => {
                let w = l.iso_week();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Calendar::Monthly => y * 100 + m,
            Calendar::Yearly => y,
        }
    }
}

/// The calendar rules a retention sets, with their counts.
fn calendar_rules(r: &Retention) -> Vec<(Calendar, u32)> {
    [
        (Calendar::Hourly, r.keep_hourly),
        (Calendar::Daily, r.keep_daily),
        (Calendar::Weekly, r.keep_weekly),
        (Calendar::Monthly, r.keep_monthly),
        (Calendar::Yearly, r.keep_yearly),
    ]
    .into_iter()
    .filter_map(|(c, n)| n.filter(|n| *n > 0).map(|n| (c, n)))
    .collect()
}

fn within(r: &Retention) -> Option<Duration> {
    r.keep_within.filter(|d| *d > Duration::zero())
}

/// True when at least one rule could keep something; otherwise prune keeps
/// everything.
pub fn has_rules(r: &Retention) -> bool {
    r.keep_last.is_some_and(|n| n > 0) || !calendar_rules(r).is_empty() || within(r).is_some()
}

/// The rules in words, for plans and reports: `keep_last 2, keep_daily 7`.
pub fn describe(r: &Retention) -> String {
    let mut parts = Vec::new();
    if let Some(n) = r.keep_last {
        parts.push(format!("keep_last {n}"));
    }
    for (c, n) in [
        (Calendar::Hourly, r.keep_hourly),
        (Calendar::Daily, r.keep_daily),
        (Calendar::Weekly, r.keep_weekly),
        (Calendar::Monthly, r.keep_monthly),
        (Calendar::Yearly, r.keep_yearly),
    ] {
        if let Some(n) = n {
            parts.push(format!("keep_{} {n}", c.name()));
        }
    }
    if let Some(d) = r.keep_within {
        parts.push(format!("keep_within {}", compact_duration(d)));
    }
    if parts.is_empty() {
        "no retention rules: everything is kept".into()
    } else {
        parts.join(", ")
    }
}

/// `7d`, `36h`, `90m`, `45s`: the largest unit that divides the duration.
pub fn compact_duration(d: Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s != 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s != 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Decides, for every backup, whether the rules keep it. `backups` are
/// `(id, point_in_time)` in any order; the answer is newest first (ties by
/// id, descending) and does not depend on the input's order.
pub fn select(
    backups: &[(String, DateTime<Utc>)],
    rules: &Retention,
    tz: chrono_tz::Tz,
) -> Vec<Decision> {
    let mut sorted: Vec<&(String, DateTime<Utc>)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    sorted.dedup_by(|a, b| a.0 == b.0);

    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|(id, t)| Decision {
            id: id.clone(),
            point_in_time: *t,
            action: Action::Forget,
            reasons: Vec::new(),
        })
        .collect();
    if decisions.is_empty() {
        return decisions;
    }
    if !has_rules(rules) {
        for d in &mut decisions {
            d.action = Action::Keep;
            d.reasons.push("no retention rule".into());
        }
        return decisions;
    }

    let newest = decisions[0].point_in_time;
    let last_index = decisions.len() - 1;
    let mut last_left = rules.keep_last.unwrap_or(0);
    // Per calendar rule: how many buckets it may still keep, and the bucket
    // of the backup it kept last.
    let mut calendars: Vec<(Calendar, u32, Option<i64>)> = calendar_rules(rules)
        .into_iter()
        .map(|(c, n)| (c, n, None))
        .collect();
    let within = within(rules);

    for (i, d) in decisions.iter_mut().enumerate() {
        if last_left > 0 {
            last_left -= 1;
            d.reasons.push("last".into());
        }
        for (cal, left, last_bucket) in &mut calendars {
            if *left == 0 {
                continue;
            }
            let bucket = cal.bucket(d.point_in_time, tz);
            if Some(bucket) != *last_bucket {
                *left -= 1;
                *last_bucket = Some(bucket);
                d.reasons.push(cal.name().into());
            } else if i == last_index {
                d.reasons.push(format!("oldest {}", cal.name()));
            }
        }
        if let Some(w) = within
            && d.point_in_time > newest - w
        {
            d.reasons.push(format!("within {}", compact_duration(w)));
        }
        if i == 0 && d.reasons.is_empty() {
            d.reasons.push("newest".into());
        }
        if !d.reasons.is_empty() {
            d.action = Action::Keep;
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn input(times: &[DateTime<Utc>]) -> Vec<(String, DateTime<Utc>)> {
        times
            .iter()
            .map(|t| (t.format("%Y%m%dT%H%M%SZ").to_string(), *t))
            .collect()
    }

    fn kept(ds: &[Decision]) -> Vec<DateTime<Utc>> {
        ds.iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| d.point_in_time)
            .collect()
    }

    fn reasons_of(ds: &[Decision], t: DateTime<Utc>) -> &[String] {
        &ds.iter().find(|d| d.point_in_time == t).unwrap().reasons
    }

    /// restic's documentation example: snapshots on each day at a few
    /// times, `--keep-daily 4` keeps the newest of each of the last 4 days.
    #[test]
    fn keep_daily_keeps_the_newest_of_each_of_the_last_days() {
        let mut times = Vec::new();
        for day in 1..=10 {
            for hour in [3, 11, 19] {
                times.push(utc(2026, 11, day, hour, 0));
            }
        }
        let r = Retention {
            keep_daily: Some(4),
            ..Default::default()
        };
        let ds = select(&input(&times), &r, chrono_tz::UTC);
        assert_eq!(
            kept(&ds),
            vec![
                utc(2026, 11, 10, 19, 0),
                utc(2026, 11, 9, 19, 0),
                utc(2026, 11, 8, 19, 0),
                utc(2026, 11, 7, 19, 0)
            ]
        );
    }

    /// restic's documented combination: `--keep-last 2 --keep-daily 3`; a
    /// backup kept by two rules names both.
    #[test]
    fn rules_add_up_and_name_themselves() {
        let times = [
            utc(2026, 11, 5, 12, 0),
            utc(2026, 11, 5, 8, 0),
            utc(2026, 11, 4, 12, 0),
            utc(2026, 11, 3, 12, 0),
            utc(2026, 11, 2, 12, 0),
        ];
        let r = Retention {
            keep_last: Some(2),
            keep_daily: Some(3),
            ..Default::default()
        };
        let ds = select(&input(&times), &r, chrono_tz::UTC);
        assert_eq!(reasons_of(&ds, times[0]), ["last", "daily"]);
        assert_eq!(reasons_of(&ds, times[1]), ["last"]);
        assert_eq!(reasons_of(&ds, times[2]), ["daily"]);
        assert_eq!(reasons_of(&ds, times[3]), ["daily"]);
        assert!(reasons_of(&ds, times[4]).is_empty());
    }

    /// restic: "--keep-within 2d" is relative to the latest snapshot, not to
    /// now; a policy whose backups stopped keeps them.
    #[test]
    fn keep_within_counts_from_the_newest_backup_not_the_clock() {
        let times = [
            utc(2020, 1, 10, 0, 0),
            utc(2020, 1, 9, 0, 0),
            utc(2020, 1, 8, 1, 0),
            utc(2020, 1, 8, 0, 0),
            utc(2020, 1, 1, 0, 0),
        ];
        let r = Retention {
            keep_within: Some(Duration::days(2)),
            ..Default::default()
        };
        let ds = select(&input(&times), &r, chrono_tz::UTC);
        assert_eq!(kept(&ds), times[..3].to_vec());
        assert_eq!(reasons_of(&ds, times[0]), ["within 2d"]);
    }

    /// restic: with fewer buckets than the rule allows, the oldest backup is
    /// kept too, so the history is as long as the rule permits.
    #[test]
    fn the_oldest_backup_is_kept_when_a_calendar_rule_has_room_left() {
        let times = [
            utc(2026, 11, 2, 12, 0),
            utc(2026, 11, 2, 6, 0),
            utc(2026, 11, 1, 12, 0),
            utc(2026, 11, 1, 6, 0),
        ];
        let r = Retention {
            keep_daily: Some(7),
            ..Default::default()
        };
        let ds = select(&input(&times), &r, chrono_tz::UTC);
        assert_eq!(kept(&ds), vec![times[0], times[2], times[3]]);
        assert_eq!(reasons_of(&ds, times[3]), ["oldest daily"]);
    }

    #[test]
    fn weekly_and_monthly_and_yearly_buckets() {
        // 2026-11-30 is a Monday: ISO week 49, while 11-29 (Sunday) is week 48.
        let times = [
            utc(2026, 11, 30, 1, 0),
            utc(2026, 11, 29, 23, 0),
            utc(2026, 11, 28, 23, 0),
        ];
        let r = Retention {
            keep_weekly: Some(2),
            ..Default::default()
        };
        assert_eq!(
            kept(&select(&input(&times), &r, chrono_tz::UTC)),
            vec![times[0], times[1]]
        );
        let times = [
            utc(2027, 1, 1, 0, 0),
            utc(2026, 12, 31, 0, 0),
            utc(2026, 12, 1, 0, 0),
            utc(2026, 11, 30, 0, 0),
            utc(2025, 6, 1, 0, 0),
        ];
        let r = Retention {
            keep_monthly: Some(2),
            ..Default::default()
        };
        assert_eq!(
            kept(&select(&input(&times), &r, chrono_tz::UTC)),
            vec![times[0], times[1]]
        );
        let r = Retention {
            keep_yearly: Some(3),
            ..Default::default()
        };
        assert_eq!(
            kept(&select(&input(&times), &r, chrono_tz::UTC)),
            vec![times[0], times[1], times[4]]
        );
    }

    /// Buckets follow the policy's time zone: 23:30 UTC on Nov 26 is already
    /// Nov 27 in Berlin, the same day as the backup at 08:00 UTC on Nov 27.
    #[test]
    fn days_are_counted_on_the_policy_time_zone() {
        let times = [utc(2026, 11, 27, 8, 0), utc(2026, 11, 26, 23, 30)];
        let r = Retention {
            keep_daily: Some(1),
            ..Default::default()
        };
        assert_eq!(
            kept(&select(&input(&times), &r, chrono_tz::UTC)),
            vec![times[0]]
        );
        let r = Retention {
            keep_daily: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&select(&input(&times), &r, chrono_tz::UTC)).len(), 2);
        let ds = select(&input(&times), &r, chrono_tz::Europe::Berlin);
        assert_eq!(reasons_of(&ds, times[0]), ["daily"]);
        assert_eq!(reasons_of(&ds, times[1]), ["oldest daily"]);
    }

    #[test]
    fn without_rules_everything_is_kept() {
        let times = [utc(2026, 11, 2, 12, 0), utc(2020, 1, 1, 0, 0)];
        for r in [
            Retention::default(),
            Retention {
                keep_last: Some(0),
                keep_within: Some(Duration::zero()),
                ..Default::default()
            },
        ] {
            let ds = select(&input(&times), &r, chrono_tz::UTC);
            assert_eq!(kept(&ds), times.to_vec());
            assert_eq!(ds[1].reasons, ["no retention rule"]);
        }
        assert!(select(&[], &Retention::default(), chrono_tz::UTC).is_empty());
    }

    #[test]
    fn descriptions() {
        let r = Retention {
            keep_last: Some(2),
            keep_daily: Some(7),
            keep_within: Some(Duration::hours(36)),
            ..Default::default()
        };
        assert_eq!(describe(&r), "keep_last 2, keep_daily 7, keep_within 36h");
        assert!(describe(&Retention::default()).contains("everything is kept"));
    }

    fn retention() -> impl Strategy<Value = Retention> {
        let n = || proptest::option::of(0u32..5);
        (
            n(),
            n(),
            n(),
            n(),
            n(),
            n(),
            proptest::option::of(0i64..2_000),
        )
            .prop_map(|(l, h, d, w, m, y, within)| Retention {
                keep_last: l,
                keep_hourly: h,
                keep_daily: d,
                keep_weekly: w,
                keep_monthly: m,
                keep_yearly: y,
                keep_within: within.map(Duration::hours),
            })
    }

    /// Backups over about three years, clustered so buckets hold several.
    fn backups() -> impl Strategy<Value = Vec<(String, DateTime<Utc>)>> {
        proptest::collection::vec(0i64..(3 * 365 * 24 * 4), 0..40).prop_map(|quarters| {
            let base = utc(2024, 1, 1, 0, 0);
            quarters
                .into_iter()
                .enumerate()
                .map(|(i, q)| {
                    (
                        format!("b{i:03}"),
                        base + Duration::minutes(15 * q) + Duration::seconds(i as i64 % 3),
                    )
                })
                .collect()
        })
    }

    fn zone() -> impl Strategy<Value = chrono_tz::Tz> {
        prop_oneof![
            Just(chrono_tz::UTC),
            Just(chrono_tz::Europe::Berlin),
            Just(chrono_tz::America::New_York),
            Just(chrono_tz::Asia::Kolkata),
        ]
    }

    proptest! {
        #[test]
        fn the_newest_backup_is_always_kept(b in backups(), r in retention(), tz in zone()) {
            let ds = select(&b, &r, tz);
            if let Some(first) = ds.first() {
                prop_assert_eq!(first.action, Action::Keep);
                let newest = b.iter().map(|x| x.1).max().unwrap();
                prop_assert_eq!(first.point_in_time, newest);
            }
        }

        #[test]
        fn every_bucket_among_the_newest_n_keeps_its_newest_backup(b in backups(), r in retention(), tz in zone()) {
            let ds = select(&b, &r, tz);
            for (cal, n) in calendar_rules(&r) {
                // Newest first, so the first decision per bucket is its newest backup.
                let mut seen: BTreeMap<i64, &Decision> = BTreeMap::new();
                let mut order = Vec::new();
                for d in &ds {
                    let k = cal.bucket(d.point_in_time, tz);
                    if let std::collections::btree_map::Entry::Vacant(e) = seen.entry(k) {
                        e.insert(d);
                        order.push(k);
                    }
                }
                for k in order.iter().take(n as usize) {
                    let d = seen[k];
                    prop_assert_eq!(d.action, Action::Keep);
                    prop_assert!(d.reasons.iter().any(|x| x == cal.name()), "{:?} lacks {}", d, cal.name());
                }
            }
            if let Some(n) = r.keep_last {
                for d in ds.iter().take(n as usize) {
                    prop_assert!(d.reasons.iter().any(|x| x == "last"));
                }
            }
            if let (Some(w), Some(first)) = (within(&r), ds.first()) {
                for d in &ds {
                    if d.point_in_time > first.point_in_time - w {
                        prop_assert_eq!(d.action, Action::Keep);
                    }
                }
            }
        }

        #[test]
        fn selecting_again_from_what_was_kept_forgets_nothing(b in backups(), r in retention(), tz in zone()) {
            let ds = select(&b, &r, tz);
            let kept: Vec<(String, DateTime<Utc>)> = ds
                .iter()
                .filter(|d| d.action == Action::Keep)
                .map(|d| (d.id.clone(), d.point_in_time))
                .collect();
            let again = select(&kept, &r, tz);
            prop_assert!(again.iter().all(|d| d.action == Action::Keep), "{:?}", again);
        }

        #[test]
        fn the_answer_does_not_depend_on_input_order(b in backups(), r in retention(), tz in zone(), seed in any::<u64>()) {
            let mut shuffled = b.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(select(&b, &r, tz), select(&shuffled, &r, tz));
            let ids: BTreeSet<&String> = b.iter().map(|x| &x.0).collect();
            prop_assert_eq!(select(&b, &r, tz).len(), ids.len());
        }
    }
}
