//! The drill record: what one restore drill did and found, stored as
//! `drills/<policy>/<drill-id>.json`. Each record carries the sha256 of the
//! policy's previous record, so the records form a chain that shows an
//! edited or removed record. Pure data and pure checks; no I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const RECORD_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub format: u32,
    pub id: String,
    pub policy: String,
    /// `postgres` or `files`.
    pub kind: String,
    /// The backup restored; absent when the drill failed before choosing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_point_in_time: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub host: String,
    pub tool_version: String,
    pub passed: bool,
    /// Why the drill failed or refused to run, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Each timed step, in order.
    pub steps: Vec<Step>,
    pub rto: Objective,
    pub rpo: Objective,
    pub checks: Vec<Check>,
    /// A `postgres-cluster` drill's point-in-time recovery: the target and
    /// where replay really stopped. Absent for other kinds (and in records
    /// written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// Present when the fingerprint check read only a sample of the rows
    /// (its check is then named `fingerprint-sample`, never `fingerprint`).
    /// Absent for a full check and in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sample>,
    /// sha256 (hex) of the exact bytes of the policy's previous record, or
    /// `None` for the first record of the policy.
    pub previous_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub seconds: f64,
    pub ok: bool,
}

/// A measured value against its target (either may be missing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_seconds: Option<f64>,
}

impl Objective {
    /// `None` when there is no target or no measurement.
    pub fn met(&self) -> Option<bool> {
        Some(self.measured_seconds? <= self.target_seconds?)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found, e.g. "42 tables, 1200000 rows matched" or the query
    /// result against the expected value.
    pub detail: String,
}

/// What a sampled fingerprint check covered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// `[drill] sample_percent` as configured.
    pub percent: f64,
    /// The buckets whose rows were hashed, out of `of_buckets`; chosen at
    /// random for each drill.
    pub buckets: Vec<usize>,
    pub of_buckets: usize,
    /// Large tables of which only those buckets were hashed; every table's
    /// row count was checked.
    pub tables_sampled: usize,
    /// Tables read whole (small ones, and any without buckets).
    pub tables_full: usize,
    pub rows_hashed: u64,
    /// Rows in the backup, all of which were counted.
    pub rows_total: u64,
}

/// What a cluster drill asked recovery for and what it got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// `latest` (the end of the archive) or `time`.
    pub target: String,
    /// The time asked for, with `target = "time"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<DateTime<Utc>>,
    /// The WAL the plan replays, first and last segment, and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_first: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_last: Option<String>,
    #[serde(default)]
    pub wal_segments: u64,
    /// When the newest archived segment was stored: the RPO is measured
    /// from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_archived_at: Option<DateTime<Utc>>,
    /// `pg_last_wal_replay_lsn()` once recovery ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_lsn: Option<String>,
    /// `pg_last_xact_replay_timestamp()`: the last transaction replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transaction_at: Option<DateTime<Utc>>,
    /// The server's own line on where it stopped, when it wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_line: Option<String>,
}

impl DrillRecord {
    pub fn duration_seconds(&self) -> f64 {
        (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0
    }
}

/// sha256 of a record's stored bytes, the link the next record carries.
pub fn record_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One stored record as read back: its key, its exact bytes, and the parsed
/// record (or why it could not be parsed).
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub key: String,
    pub sha256: String,
    pub record: Result<DrillRecord, String>,
}

/// Whether the record was set aside for its signature (missing, unknown or
/// bad) rather than for being unreadable.
pub fn is_untrusted(record: &StoredRecord) -> bool {
    record
        .record
        .as_ref()
        .is_err_and(|e| e.starts_with(crate::signing::UNTRUSTED))
}

/// What checking a policy's chain found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainReport {
    pub policy: String,
    pub records: usize,
    pub ok: bool,
    /// One sentence per break, naming the record.
    pub problems: Vec<String>,
}

/// Checks one policy's records, given in id order (oldest first): each
/// parses, names this policy, and links to the sha256 of the one before.
/// A record edited in place breaks the link after it; a removed record
/// breaks the link of its successor. (Removing the newest record leaves no
/// successor to notice; a versioned bucket or Object Lock keeps that
/// visible, see docs/FORMAT.md.)
pub fn check_chain(policy: &str, records: &[StoredRecord]) -> ChainReport {
    let mut problems = Vec::new();
    let mut previous: Option<&StoredRecord> = None;
    // Records without a trusted signature are not links: the report names
    // them as security warnings, and the chain runs through the rest.
    for stored in records.iter().filter(|r| !is_untrusted(r)) {
        match &stored.record {
            Err(reason) => problems.push(format!(
                "{}: not a readable drill record ({reason})",
                stored.key
            )),
            Ok(r) => {
                if r.policy != policy {
                    problems.push(format!("{}: names policy `{}`", stored.key, r.policy));
                }
                let expected = previous.map(|p| p.sha256.clone());
                if r.previous_sha256 != expected {
                    problems.push(match (&r.previous_sha256, previous) {
                        (Some(_), None) => format!("{}: links to an earlier record that is not there (removed?)", stored.key),
                        (None, Some(p)) => format!("{}: claims to be the first record, but {} comes before it", stored.key, p.key),
                        (_, Some(p)) => format!("{}: does not match {} before it (that record was edited, or one between them removed)", stored.key, p.key),
                        (None, None) => unreachable!("equal when both are None"),
                    });
                }
            }
        }
        previous = Some(stored);
    }
    ChainReport {
        policy: policy.to_string(),
        records: records.len(),
        ok: problems.is_empty(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, previous: Option<String>) -> DrillRecord {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        DrillRecord {
            format: RECORD_FORMAT,
            id: id.into(),
            policy: "p".into(),
            kind: "postgres".into(),
            backup_id: Some("b".into()),
            backup_point_in_time: Some(t),
            started_at: t,
            finished_at: t,
            host: "h".into(),
            tool_version: "0".into(),
            passed: true,
            failure: None,
            steps: vec![],
            rto: Objective::default(),
            rpo: Objective::default(),
            checks: vec![],
            recovery: None,
            sample: None,
            previous_sha256: previous,
        }
    }

    fn chain(n: usize) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|(_, b)| record_sha256(b));
            let bytes = serde_json::to_vec_pretty(&record(&format!("r{i}"), prev)).unwrap();
            out.push((format!("drills/p/r{i}.json"), bytes));
        }
        out
    }

    fn stored(items: &[(String, Vec<u8>)]) -> Vec<StoredRecord> {
        items
            .iter()
            .map(|(k, b)| StoredRecord {
                key: k.clone(),
                sha256: record_sha256(b),
                record: serde_json::from_slice(b).map_err(|e| e.to_string()),
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_passes() {
        assert!(check_chain("p", &stored(&chain(4))).ok);
        assert!(check_chain("p", &[]).ok);
    }

    #[test]
    fn an_edited_record_is_named() {
        let mut c = chain(3);
        let mut r: DrillRecord = serde_json::from_slice(&c[1].1).unwrap();
        r.passed = !r.passed;
        c[1].1 = serde_json::to_vec_pretty(&r).unwrap();
        let report = check_chain("p", &stored(&c));
        assert!(!report.ok);
        assert!(
            report.problems[0].contains("drills/p/r2.json")
                && report.problems[0].contains("drills/p/r1.json"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_removed_record_is_noticed() {
        let mut c = chain(3);
        c.remove(1);
        assert!(!check_chain("p", &stored(&c)).ok);
        let mut c = chain(3);
        c.remove(0);
        let report = check_chain("p", &stored(&c));
        assert!(
            report.problems[0].contains("not there"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn objectives() {
        let o = Objective {
            measured_seconds: Some(10.0),
            target_seconds: Some(60.0),
        };
        assert_eq!(o.met(), Some(true));
        assert_eq!(
            Objective {
                measured_seconds: Some(10.0),
                target_seconds: None
            }
            .met(),
            None
        );
    }
}
