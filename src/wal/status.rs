//! `drctl wal status`: how far behind the archive is, judged against the
//! policy's RPO target. The verdict is pure; `cli::wal` gathers the
//! listing and the server's `pg_stat_archiver`.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{Segment, WalName};

/// The server's `pg_stat_archiver`, and the segment it is writing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Archiver {
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
    /// `pg_walfile_name(pg_current_wal_lsn())`; none on a standby.
    pub current_wal: Option<String>,
    /// Complete segments not yet archived: between `last_archived_wal`
    /// and `current_wal` (which is still being written).
    pub segment_lag: Option<u64>,
}

impl Archiver {
    /// Whether the newest attempt failed: archiving is stuck right now.
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// Segments finished but not archived, from the segment being written and
/// the last one archived. `.history`/`.backup` names in `last_archived_wal`
/// tell nothing about segments, so they give no answer.
pub fn segment_lag(current: &str, last_archived: Option<&str>, segment_bytes: u64) -> Option<u64> {
    let seg = |n: &str| {
        WalName::parse(n)
            .ok()
            .and_then(|w| Segment::from_name(&w, segment_bytes))
    };
    let current = seg(current)?;
    match last_archived {
        // Nothing archived yet: every finished segment is behind.
        None => Some(current.number),
        Some(last) => {
            let last = seg(last)?;
            Some(current.number.saturating_sub(last.number + 1))
        }
    }
}

/// What makes `wal status` exit 1: gaps, and an archive older than the
/// RPO target.
pub fn problems(
    policy: &str,
    gap_lines: &[String],
    newest_archived_at: Option<DateTime<Utc>>,
    rpo: Option<Duration>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut out = gap_lines.to_vec();
    if let Some(rpo) = rpo {
        let limit = crate::timespec::human_duration(rpo);
        match newest_archived_at {
            None => out.push(format!(
                "nothing of `{policy}` is archived yet, and its RPO target is {limit}; check that \
                 archive_command runs `drctl wal-push {policy} %p` (`drctl pitr setup {policy}`)"
            )),
            Some(t) => {
                let lag = now - t;
                if lag > rpo {
                    out.push(format!(
                        "the newest WAL of `{policy}` was archived {} ago, beyond its RPO target of {limit}; \
                         check pg_stat_archiver for failures, and set archive_timeout below the target so a \
                         quiet server still archives",
                        crate::timespec::human_duration(lag)
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = super::super::DEFAULT_SEGMENT_BYTES;

    #[test]
    fn segment_lag_counts_finished_segments_not_archived() {
        let cur = "000000010000000000000009";
        assert_eq!(
            segment_lag(cur, Some("000000010000000000000008"), MB16),
            Some(0)
        );
        assert_eq!(
            segment_lag(cur, Some("000000010000000000000005"), MB16),
            Some(3)
        );
        assert_eq!(
            segment_lag(cur, Some("000000020000000000000009"), MB16),
            Some(0)
        );
        assert_eq!(segment_lag(cur, Some("00000002.history"), MB16), None);
        assert_eq!(segment_lag(cur, None, MB16), Some(9));
    }

    #[test]
    fn lag_beyond_the_rpo_and_gaps_are_problems() {
        let now: DateTime<Utc> = "2026-11-30T18:00:00Z".parse().unwrap();
        let rpo = Some(Duration::seconds(300));
        let recent = Some(now - chrono::Duration::seconds(60));
        let old = Some(now - chrono::Duration::seconds(600));
        assert!(problems("db", &[], recent, rpo, now).is_empty());
        assert!(problems("db", &[], old, None, now).is_empty());
        let p = problems("db", &[], old, rpo, now);
        assert!(p[0].contains("beyond its RPO target"), "{p:?}");
        assert!(problems("db", &[], None, rpo, now)[0].contains("nothing"));
        assert_eq!(problems("db", &["gap".into()], recent, rpo, now).len(), 1);
    }

    #[test]
    fn failing_means_the_newest_attempt_failed() {
        let t = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        let mut a = Archiver {
            last_archived_time: t("2026-11-30T18:00:00Z"),
            last_failed_time: t("2026-11-30T17:00:00Z"),
            ..Archiver::default()
        };
        assert!(!a.failing());
        a.last_failed_time = t("2026-11-30T18:01:00Z");
        assert!(a.failing());
    }
}
