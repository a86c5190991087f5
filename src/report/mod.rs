//! Compliance reports: what the backups and restore drills of a period show,
//! per policy, and how that maps to the controls auditors ask about. Pure:
//! the CLI gathers a [`ReportInput`] from the repository, [`build`] computes
//! a [`Report`], and the `render_*` functions format it (HTML, Markdown,
//! JSON). docs/reports.md defines every figure and the JSON schema.

mod chart;
mod controls;
pub(crate) mod html;
mod markdown;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Lifecycle, Policy, Retention};
use crate::drill::record::{ChainReport, StoredRecord, check_chain};
use crate::pipeline::crypto::recipient_fingerprint;
use crate::repo::catalog::Catalog;
use crate::repo::manifest::Manifest;
use crate::repo::runs::StoredRun;
use crate::storage::Protection;

pub use html::render_html;
pub use markdown::render_markdown;

/// Version of the JSON document; bumped when a field changes meaning or goes.
pub const REPORT_FORMAT: u32 = 1;

pub const TITLE: &str = "Backup and recovery evidence";

/// Said of a policy without any run record: 0 failures may only mean that
/// nothing recorded them.
pub const NO_RUN_RECORDS: &str = "no run records for this policy: drctl records failed backup attempts only since run records were introduced (drctl 0.1.0, `runs/` in the repository), so failures before that are not counted";

/// Everything a report is made from, gathered by the caller.
#[derive(Debug, Clone)]
pub struct ReportInput {
    /// Start of the period (inclusive).
    pub since: DateTime<Utc>,
    /// End of the period (inclusive); usually the time of the report.
    pub until: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub tool_version: String,
    /// `s3://bucket/prefix` or `file:///path`.
    pub repository: String,
    /// Versioning and Object Lock of the bucket, or why they could not be read.
    pub protection: Result<Protection, String>,
    /// Public keys from drctl.toml.
    pub recipients: Vec<String>,
    pub lifecycle: Lifecycle,
    pub policies: Vec<PolicyInput>,
}

/// One policy's settings and everything the repository holds for it.
#[derive(Debug, Clone)]
pub struct PolicyInput {
    pub name: String,
    /// `postgres` or `files`.
    pub kind: String,
    pub rpo_target_seconds: Option<f64>,
    /// Which setting the RPO target comes from, e.g. `[drill] rpo_target`.
    pub rpo_target_from: Option<String>,
    pub rto_target_seconds: Option<f64>,
    /// Whether the policy has a `[drill]` section.
    pub drill_configured: bool,
    pub retention: Retention,
    /// Every backup of the policy, in any order; [`build`] picks the
    /// period's and the newest one before it.
    pub backups: Vec<Manifest>,
    /// Manifests that exist but cannot be read: `(key, reason)`.
    pub damaged_manifests: Vec<(String, String)>,
    /// Every drill record of the policy, oldest first, as
    /// [`crate::drill::load_records`] returns them.
    pub records: Vec<StoredRecord>,
    /// Every run record (failed backup attempt) of the policy, as
    /// [`crate::repo::runs::load`] returns them.
    pub runs: Vec<StoredRun>,
    /// The policy's newest backup in each `[[copies]]` repository.
    pub copies: Vec<CopyInput>,
}

/// What one copy (second repository) holds of a policy.
#[derive(Debug, Clone)]
pub struct CopyInput {
    pub name: String,
    pub location: String,
    /// The newest backup there, or why the copy could not be read.
    pub newest: Result<Option<Manifest>, String>,
}

/// A copy in the report: its newest backup and how far it is behind the
/// primary's newest (by point in time).
#[derive(Debug, Clone, Serialize)]
pub struct CopyView {
    pub name: String,
    pub location: String,
    pub newest_backup: Option<String>,
    pub newest_point_in_time: Option<DateTime<Utc>>,
    /// The primary's newest point in time minus the copy's; `None` when
    /// the copy holds none or could not be read.
    pub lag_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One sentence per copy, for the rendered reports.
pub fn copy_sentence(c: &CopyView) -> String {
    match (&c.error, &c.newest_backup, c.lag_seconds) {
        (Some(e), _, _) => format!("{} ({}): could not be read: {e}", c.name, c.location),
        (None, None, _) => format!("{} ({}): no backup of this policy", c.name, c.location),
        (None, Some(id), Some(l)) if l <= 0.0 => {
            format!(
                "{} ({}): newest backup {id}, up to date",
                c.name, c.location
            )
        }
        (None, Some(id), lag) => format!(
            "{} ({}): newest backup {id}, {} behind the primary",
            c.name,
            c.location,
            lag.map_or("-".to_string(), fmt_seconds)
        ),
    }
}

impl PolicyInput {
    /// The targets and retention from `policy`, the backups from `catalog`.
    /// The RPO target is `[drill] rpo_target`, else `[schedule] rpo_target`
    /// (the same order a drill uses when it records its RPO).
    pub fn new(
        policy: &Policy,
        catalog: Catalog,
        records: Vec<StoredRecord>,
        runs: Vec<StoredRun>,
    ) -> PolicyInput {
        let seconds = |d: chrono::Duration| d.num_milliseconds() as f64 / 1000.0;
        let (rpo_target_seconds, rpo_target_from) = match policy.rpo_target() {
            Some((d, from)) => (Some(seconds(d)), Some(from.to_string())),
            None => (None, None),
        };
        PolicyInput {
            name: policy.name.clone(),
            kind: policy.source.kind().to_string(),
            rpo_target_seconds,
            rpo_target_from,
            rto_target_seconds: policy
                .drill
                .as_ref()
                .and_then(|d| d.rto_target)
                .map(seconds),
            drill_configured: policy.drill.is_some(),
            retention: policy.retention.clone(),
            backups: catalog.backups,
            damaged_manifests: catalog.damaged,
            records,
            runs,
            copies: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// The report (also the JSON document; docs/reports.md is its schema)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: u32,
    pub title: String,
    pub generated_at: DateTime<Utc>,
    pub tool_version: String,
    pub period: Period,
    pub repository: RepositoryView,
    pub recipients: Vec<RecipientView>,
    pub lifecycle: LifecycleView,
    pub totals: Totals,
    pub policies: Vec<PolicyReport>,
    pub controls: Vec<Control>,
    /// What no part of this report can show, in sentences.
    pub limitations: Vec<String>,
    pub evidence: Evidence,
}

#[derive(Debug, Clone, Serialize)]
pub struct Period {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub days: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepositoryView {
    pub location: String,
    pub protection: ProtectionView,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProtectionView {
    /// False for a local directory, where neither exists.
    pub applicable: bool,
    /// `Enabled`, `Suspended`, or null when versioning was never enabled.
    pub versioning: Option<String>,
    /// E.g. `Enabled, default GOVERNANCE retention of 30 days`; null without
    /// Object Lock.
    pub object_lock: Option<String>,
    /// Why the settings could not be read (then the other fields say nothing).
    pub error: Option<String>,
    /// One line for people.
    pub summary: String,
}

impl ProtectionView {
    fn versioned(&self) -> bool {
        self.error.is_none() && self.versioning.as_deref() == Some("Enabled")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientView {
    /// First 8 bytes of sha256 of the public key, hex.
    pub fingerprint: String,
    pub recipient: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LifecycleView {
    pub archive_after_days: Option<u32>,
    pub archive_class: Option<String>,
    pub noncurrent_expire_days: Option<u32>,
    pub abort_incomplete_upload_days: Option<u32>,
    pub object_lock_mode: Option<String>,
    pub object_lock_days: Option<u32>,
    /// The settings as sentences; empty when none is set.
    pub summary: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub policies: usize,
    pub backups_taken: usize,
    /// Failed backup attempts with a run record in the period.
    pub backups_failed: usize,
    pub drills_run: usize,
    pub drills_passed: usize,
    pub drills_failed: usize,
    /// Every policy's chain of drill records is intact.
    pub chains_intact: bool,
    /// Drill records over every chain: with none, "intact" says nothing,
    /// and the report shows it grey, not as a pass.
    pub drill_records: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub name: String,
    pub kind: String,
    pub retention: RetentionView,
    /// Fingerprints of the recipients the period's backups were encrypted to.
    pub backup_recipients: Vec<String>,
    pub backups: BackupSummary,
    pub drills: DrillSummary,
    /// The chain check over every record of the policy, not only the period's.
    pub chain: ChainReport,
    /// Things a reader must know to read the figures right, in sentences.
    pub notes: Vec<String>,
    /// Second repositories (`[[copies]]`): the newest backup in each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionView {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within_seconds: Option<f64>,
    /// `keep_last = 3, keep_daily = 14`, or `none (every backup is kept)`.
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// Backups whose point in time is in the period.
    pub taken: usize,
    /// Failed backup attempts of the period: run records whose start is in
    /// it. Attempts that could not write their record are not counted.
    pub failed: usize,
    /// `taken / (taken + failed) * 100`; null when both are 0.
    pub success_rate_percent: Option<f64>,
    /// Set when the figure needs it: the policy has no run record at all.
    pub failed_note: Option<String>,
    /// Run records of the period that cannot be read (not in `failed`).
    pub unreadable_run_records: usize,
    /// The period's failed attempts, oldest first.
    pub failures: Vec<FailurePoint>,
    /// Manifests of the policy (any time) that could not be read.
    pub damaged_manifests: usize,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    /// Where the gap measurement starts: the period's start when a backup
    /// from before it still exists, else the first backup in the period.
    pub measured_from: Option<DateTime<Utc>>,
    /// The achieved RPO: the longest time in the period during which the
    /// newest backup was that old. See docs/reports.md.
    pub largest_gap: Option<Gap>,
    pub rpo_target_seconds: Option<f64>,
    pub rpo_target_from: Option<String>,
    /// null without a target; false when there is a target but no backup.
    pub rpo_met: Option<bool>,
    pub stored_bytes_total: u64,
    pub stored_bytes_latest: Option<u64>,
    /// The period's backups, oldest first.
    pub series: Vec<BackupPoint>,
}

/// A failed backup attempt. Its error message is sealed in the run record
/// and never shown here (it may name tables); the class is.
#[derive(Debug, Clone, Serialize)]
pub struct FailurePoint {
    pub id: String,
    pub key: String,
    pub started_at: DateTime<Utc>,
    pub error_class: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    pub seconds: f64,
    /// Point in time of the backup that starts the gap.
    pub from: DateTime<Utc>,
    pub from_backup: String,
    /// Point in time of the backup that ends it, or the end of the period.
    pub to: DateTime<Utc>,
    /// null when the gap runs to the end of the period (`open`).
    pub to_backup: Option<String>,
    /// The gap is still running at the end of the period.
    pub open: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupPoint {
    pub id: String,
    pub point_in_time: DateTime<Utc>,
    pub stored_bytes: u64,
    pub plaintext_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillSummary {
    /// The policy has a `[drill]` section.
    pub configured: bool,
    /// Drill records (readable) whose start is in the period.
    pub run: usize,
    pub passed: usize,
    pub failed: usize,
    /// Records in the period that cannot be read (counted in none of the above).
    pub unreadable: usize,
    /// `passed / run * 100`; null when no drill ran (never 100 by default).
    pub pass_rate_percent: Option<f64>,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    /// Whether the most recent drill in the period passed; null without drills.
    pub latest_passed: Option<bool>,
    /// Passed drills that compared the restored data with the fingerprint
    /// taken at backup time (a check named `fingerprint`, `files`, or
    /// `backup_manifest` for a cluster's base backup).
    pub data_verified: usize,
    /// Passed drills whose fingerprint check read only a sample of rows
    /// (`fingerprint-sample`); not counted in `data_verified`.
    pub data_sampled: usize,
    pub rto_target_seconds: Option<f64>,
    /// Passed drills with a measured RTO: the sample the statistics use.
    pub rto_samples: usize,
    pub rto_median_seconds: Option<f64>,
    pub rto_worst_seconds: Option<f64>,
    /// null without a target or without samples.
    pub rto_met: Option<bool>,
    /// Samples above the target.
    pub rto_over_target: usize,
    /// The period's drills, oldest first.
    pub series: Vec<DrillPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillPoint {
    pub id: String,
    pub key: String,
    pub started_at: DateTime<Utc>,
    pub passed: bool,
    pub backup_id: Option<String>,
    pub rto_seconds: Option<f64>,
    pub rto_target_seconds: Option<f64>,
    /// Age of the newest backup when the drill started.
    pub rpo_seconds: Option<f64>,
    pub checks_passed: usize,
    pub checks_total: usize,
    pub failure: Option<String>,
    /// A `postgres-cluster` drill's target and where recovery stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<crate::drill::record::Recovery>,
    /// Set when the fingerprint check read a sample of rows, not all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<crate::drill::record::Sample>,
}

impl DrillPoint {
    /// The checks cell: passed of total, and "sampled" when the data check
    /// read a sample of rows, so it is never read as a full check.
    pub fn checks_text(&self, separator: &str) -> String {
        format!(
            "{}{separator}{}{}",
            self.checks_passed,
            self.checks_total,
            if self.sample.is_some() {
                " (sampled)"
            } else {
                ""
            }
        )
    }

    /// What the drill restored, for the tables: the backup, and for a
    /// cluster drill the target and where replay stopped.
    pub fn restored_text(&self) -> Option<String> {
        let backup = self.backup_id.clone()?;
        Some(match &self.recovery {
            Some(r) => format!("{backup}, {}", crate::drill::cluster::describe_recovery(r)),
            None => backup,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    NotShown,
    Partial,
    Shown,
}

impl Coverage {
    pub fn label(self) -> &'static str {
        match self {
            Coverage::Shown => "shown",
            Coverage::Partial => "partly shown",
            Coverage::NotShown => "not shown",
        }
    }
}

/// One control and what this report's evidence says about it.
#[derive(Debug, Clone, Serialize)]
pub struct Control {
    /// Stable identifier, e.g. `soc2-a1.3`.
    pub id: String,
    pub framework: String,
    /// E.g. `A1.3` or `164.308(a)(7)(ii)(B)`.
    pub reference: String,
    pub title: String,
    /// The control's wording (abridged where long).
    pub requirement: String,
    pub coverage: Coverage,
    pub shows: Vec<String>,
    pub does_not_show: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub chains_intact: bool,
    pub chains: Vec<ChainReport>,
    /// Every drill record of the period (and every unreadable one that may be).
    pub records: Vec<EvidenceRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvidenceRecord {
    pub policy: String,
    pub key: String,
    /// sha256 of the record's stored bytes.
    pub sha256: String,
    pub readable: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub passed: Option<bool>,
    pub previous_sha256: Option<String>,
}

// ---------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------

/// Computes every figure of the report. Pure.
pub fn build(input: &ReportInput) -> Report {
    let (since, until) = (input.since, input.until);
    let protection = protection_view(&input.protection);
    let config_fingerprints: Vec<String> = input
        .recipients
        .iter()
        .map(|r| recipient_fingerprint(r))
        .collect();
    let mut policies = Vec::new();
    let mut evidence_records = Vec::new();
    for p in &input.policies {
        let (policy, records) = build_policy(p, since, until, &config_fingerprints);
        policies.push(policy);
        evidence_records.extend(records);
    }
    let totals = Totals {
        policies: policies.len(),
        backups_taken: policies.iter().map(|p| p.backups.taken).sum(),
        backups_failed: policies.iter().map(|p| p.backups.failed).sum(),
        drills_run: policies.iter().map(|p| p.drills.run).sum(),
        drills_passed: policies.iter().map(|p| p.drills.passed).sum(),
        drills_failed: policies.iter().map(|p| p.drills.failed).sum(),
        chains_intact: policies.iter().all(|p| p.chain.ok),
        drill_records: policies.iter().map(|p| p.chain.records).sum(),
    };
    let lifecycle = lifecycle_view(&input.lifecycle);
    let limitations = limitations(&policies, &protection);
    let controls = controls::controls(&policies, &protection, input.recipients.len());
    Report {
        format: REPORT_FORMAT,
        title: TITLE.to_string(),
        generated_at: input.generated_at,
        tool_version: input.tool_version.clone(),
        period: Period {
            since,
            until,
            days: seconds_between(since, until) / 86_400.0,
        },
        repository: RepositoryView {
            location: input.repository.clone(),
            protection,
        },
        recipients: input
            .recipients
            .iter()
            .map(|r| RecipientView {
                fingerprint: recipient_fingerprint(r),
                recipient: r.clone(),
            })
            .collect(),
        lifecycle,
        controls,
        evidence: Evidence {
            chains_intact: totals.chains_intact,
            chains: policies.iter().map(|p| p.chain.clone()).collect(),
            records: evidence_records,
        },
        totals,
        policies,
        limitations,
    }
}

/// The report as pretty-printed JSON (the schema is in docs/reports.md).
pub fn render_json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).expect("report serialises");
    s.push('\n');
    s
}

fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

fn in_period(t: DateTime<Utc>, since: DateTime<Utc>, until: DateTime<Utc>) -> bool {
    since <= t && t <= until
}

/// The start time encoded in an id (`20261127T012000Z-…`, or with
/// milliseconds for drills, `20261127T012000123Z-…`), the last path segment
/// of `key`.
fn key_time(key: &str) -> Option<DateTime<Utc>> {
    let stamp = key.rsplit('/').next()?.split('-').next()?;
    ["%Y%m%dT%H%M%S%3fZ", "%Y%m%dT%H%M%SZ"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(stamp, f).ok())
        .map(|t| t.and_utc())
}

fn build_policy(
    p: &PolicyInput,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    config_fingerprints: &[String],
) -> (PolicyReport, Vec<EvidenceRecord>) {
    let mut notes = Vec::new();
    let backups = backup_summary(p, since, until);
    if backups.taken == 0 {
        notes.push("No backups in this period.".to_string());
    } else if backups.measured_from != Some(since) {
        notes.push(format!(
            "No backup from before the period remains, so gaps are measured from the first backup in the period ({}).",
            fmt_time(backups.first.expect("taken > 0"))
        ));
    }
    if backups.unreadable_run_records > 0 {
        notes.push(format!(
            "{} run record{} in the period cannot be read and {} not counted as failed attempts.",
            backups.unreadable_run_records,
            plural(backups.unreadable_run_records),
            if backups.unreadable_run_records == 1 {
                "is"
            } else {
                "are"
            },
        ));
    }
    if backups.damaged_manifests > 0 {
        notes.push(format!(
            "{} manifest{} of this policy cannot be read and {} not counted; `drctl verify {}` names {}.",
            backups.damaged_manifests,
            plural(backups.damaged_manifests),
            if backups.damaged_manifests == 1 { "is" } else { "are" },
            p.name,
            if backups.damaged_manifests == 1 { "it" } else { "them" },
        ));
    }
    let mut backup_recipients: Vec<String> = p
        .backups
        .iter()
        .filter(|m| in_period(m.point_in_time, since, until))
        .flat_map(|m| m.recipients.iter().map(|r| recipient_fingerprint(r)))
        .collect();
    backup_recipients.sort();
    backup_recipients.dedup();
    let unknown: Vec<&str> = backup_recipients
        .iter()
        .filter(|f| !config_fingerprints.contains(f))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        notes.push(format!(
            "Backups in the period were also encrypted to recipients that drctl.toml does not list today: {}.",
            unknown.join(", ")
        ));
    }

    let (drills, evidence) = drill_summary(p, since, until);
    if !p.drill_configured {
        notes.push(
            "This policy has no [drill] section, so drctl does not drill-test it.".to_string(),
        );
    }
    if drills.run == 0 {
        notes.push("No drills were run in this period.".to_string());
    }
    if drills.unreadable > 0 {
        notes.push(format!(
            "{} drill record{} in the period cannot be read; see the evidence appendix.",
            drills.unreadable,
            plural(drills.unreadable)
        ));
    }
    let chain = check_chain(&p.name, &p.records);
    if !chain.ok {
        notes.push(format!(
            "The chain of drill records is broken ({} problem{}): records were edited or removed, and the drill figures cannot be relied on until that is explained.",
            chain.problems.len(),
            plural(chain.problems.len())
        ));
    }
    (
        PolicyReport {
            name: p.name.clone(),
            kind: p.kind.clone(),
            retention: retention_view(&p.retention),
            backup_recipients,
            backups,
            drills,
            chain,
            notes,
            copies: copy_views(p),
        },
        evidence,
    )
}

fn copy_views(p: &PolicyInput) -> Vec<CopyView> {
    let primary = p.backups.iter().map(|m| m.point_in_time).max();
    p.copies
        .iter()
        .map(|c| {
            let newest = c.newest.as_ref().ok().and_then(Option::as_ref);
            CopyView {
                name: c.name.clone(),
                location: c.location.clone(),
                newest_backup: newest.map(|m| m.id.clone()),
                newest_point_in_time: newest.map(|m| m.point_in_time),
                lag_seconds: match (primary, newest) {
                    (Some(p), Some(m)) => {
                        Some(((p - m.point_in_time).num_milliseconds() as f64 / 1000.0).max(0.0))
                    }
                    _ => None,
                },
                error: c.newest.as_ref().err().cloned(),
            }
        })
        .collect()
}

fn backup_summary(p: &PolicyInput, since: DateTime<Utc>, until: DateTime<Utc>) -> BackupSummary {
    let mut inside: Vec<&Manifest> = p
        .backups
        .iter()
        .filter(|m| in_period(m.point_in_time, since, until))
        .collect();
    inside.sort_by(|a, b| a.point_in_time.cmp(&b.point_in_time).then(a.id.cmp(&b.id)));
    let before = p
        .backups
        .iter()
        .filter(|m| m.point_in_time < since)
        .max_by(|a, b| a.point_in_time.cmp(&b.point_in_time).then(a.id.cmp(&b.id)));
    let largest_gap = largest_gap(before, &inside, until);
    let measured_from = match before {
        Some(_) => Some(since),
        None => inside.first().map(|m| m.point_in_time),
    };
    let rpo_met = match (p.rpo_target_seconds, &largest_gap) {
        (None, _) => None,
        (Some(target), Some(gap)) => Some(gap.seconds <= target),
        (Some(_), None) => Some(false),
    };
    let (failures, unreadable_run_records) = failures(p, since, until);
    let (taken, failed) = (inside.len(), failures.len());
    BackupSummary {
        taken,
        failed,
        success_rate_percent: (taken + failed > 0)
            .then(|| taken as f64 * 100.0 / (taken + failed) as f64),
        failed_note: p.runs.is_empty().then(|| NO_RUN_RECORDS.to_string()),
        unreadable_run_records,
        failures,
        damaged_manifests: p.damaged_manifests.len(),
        first: inside.first().map(|m| m.point_in_time),
        last: inside.last().map(|m| m.point_in_time),
        measured_from,
        largest_gap,
        rpo_target_seconds: p.rpo_target_seconds,
        rpo_target_from: p.rpo_target_from.clone(),
        rpo_met,
        stored_bytes_total: inside.iter().map(|m| m.data.digests.size).sum(),
        stored_bytes_latest: inside.last().map(|m| m.data.digests.size),
        series: inside
            .iter()
            .map(|m| BackupPoint {
                id: m.id.clone(),
                point_in_time: m.point_in_time,
                stored_bytes: m.data.digests.size,
                plaintext_bytes: m.data.digests.plaintext_size,
            })
            .collect(),
    }
}

/// The period's failed attempts (oldest first), and how many run records
/// that may be in the period cannot be read.
fn failures(
    p: &PolicyInput,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> (Vec<FailurePoint>, usize) {
    let mut out = Vec::new();
    let mut unreadable = 0;
    for stored in &p.runs {
        match &stored.record {
            Ok(r) if r.result == "failed" && in_period(r.started_at, since, until) => {
                out.push(FailurePoint {
                    id: r.id.clone(),
                    key: stored.key.clone(),
                    started_at: r.started_at,
                    error_class: r.error_class.clone(),
                });
            }
            Ok(_) => {}
            Err(_) => {
                if key_time(&stored.key).is_none_or(|t| in_period(t, since, until)) {
                    unreadable += 1;
                }
            }
        }
    }
    out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    (out, unreadable)
}

/// The longest stretch of the period during which the newest backup was
/// that old: the gaps between consecutive backups whose later end is in the
/// period (the first starting at `before`, the newest backup from before
/// the period, when there is one), and the open gap from the newest backup
/// to `until`. `inside` is oldest first.
fn largest_gap(
    before: Option<&Manifest>,
    inside: &[&Manifest],
    until: DateTime<Utc>,
) -> Option<Gap> {
    let mut best: Option<Gap> = None;
    let mut consider = |gap: Gap| {
        if best.as_ref().is_none_or(|b| gap.seconds > b.seconds) {
            best = Some(gap);
        }
    };
    let mut anchor = before;
    for m in inside {
        if let Some(a) = anchor {
            consider(Gap {
                seconds: seconds_between(a.point_in_time, m.point_in_time),
                from: a.point_in_time,
                from_backup: a.id.clone(),
                to: m.point_in_time,
                to_backup: Some(m.id.clone()),
                open: false,
            });
        }
        anchor = Some(*m);
    }
    if let Some(a) = anchor {
        consider(Gap {
            seconds: seconds_between(a.point_in_time, until).max(0.0),
            from: a.point_in_time,
            from_backup: a.id.clone(),
            to: until,
            to_backup: None,
            open: true,
        });
    }
    best
}

fn drill_summary(
    p: &PolicyInput,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> (DrillSummary, Vec<EvidenceRecord>) {
    let mut series = Vec::new();
    let mut evidence = Vec::new();
    let mut unreadable = 0;
    for stored in &p.records {
        match &stored.record {
            Ok(r) => {
                if !in_period(r.started_at, since, until) {
                    continue;
                }
                evidence.push(EvidenceRecord {
                    policy: p.name.clone(),
                    key: stored.key.clone(),
                    sha256: stored.sha256.clone(),
                    readable: true,
                    started_at: Some(r.started_at),
                    passed: Some(r.passed),
                    previous_sha256: r.previous_sha256.clone(),
                });
                series.push(DrillPoint {
                    id: r.id.clone(),
                    key: stored.key.clone(),
                    started_at: r.started_at,
                    passed: r.passed,
                    backup_id: r.backup_id.clone(),
                    rto_seconds: r.rto.measured_seconds,
                    rto_target_seconds: r.rto.target_seconds,
                    rpo_seconds: r.rpo.measured_seconds,
                    checks_passed: r.checks.iter().filter(|c| c.ok).count(),
                    checks_total: r.checks.len(),
                    failure: r.failure.clone(),
                    recovery: r.recovery.clone(),
                    sample: r.sample.clone(),
                });
            }
            Err(_) => {
                // Its time is only in its name; one that cannot be dated
                // may be in the period, so it is listed.
                if key_time(&stored.key).is_none_or(|t| in_period(t, since, until)) {
                    unreadable += 1;
                    evidence.push(EvidenceRecord {
                        policy: p.name.clone(),
                        key: stored.key.clone(),
                        sha256: stored.sha256.clone(),
                        readable: false,
                        started_at: key_time(&stored.key),
                        passed: None,
                        previous_sha256: None,
                    });
                }
            }
        }
    }
    series.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    let data_verified = p
        .records
        .iter()
        .filter_map(|s| s.record.as_ref().ok())
        .filter(|r| in_period(r.started_at, since, until) && r.passed)
        .filter(|r| {
            r.checks.iter().any(|c| {
                c.ok && (c.name == "fingerprint"
                    || c.name == "files"
                    || c.name == "backup_manifest")
            })
        })
        .count();
    let data_sampled = series
        .iter()
        .filter(|d| d.passed && d.sample.is_some())
        .count();
    let run = series.len();
    let passed = series.iter().filter(|d| d.passed).count();
    let mut samples: Vec<f64> = series
        .iter()
        .filter(|d| d.passed)
        .filter_map(|d| d.rto_seconds)
        .collect();
    samples.sort_by(f64::total_cmp);
    let target = p.rto_target_seconds;
    let worst = samples.last().copied();
    (
        DrillSummary {
            configured: p.drill_configured,
            run,
            passed,
            failed: run - passed,
            unreadable,
            pass_rate_percent: (run > 0).then(|| passed as f64 * 100.0 / run as f64),
            first: series.first().map(|d| d.started_at),
            last: series.last().map(|d| d.started_at),
            latest_passed: series.last().map(|d| d.passed),
            data_verified,
            data_sampled,
            rto_target_seconds: target,
            rto_samples: samples.len(),
            rto_median_seconds: median(&samples),
            rto_worst_seconds: worst,
            rto_met: match (target, worst) {
                (Some(t), Some(w)) => Some(w <= t),
                _ => None,
            },
            rto_over_target: target.map_or(0, |t| samples.iter().filter(|s| **s > t).count()),
            series,
        },
        evidence,
    )
}

/// The median of sorted values: the middle one, or the mean of the two
/// middle ones.
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn protection_view(p: &Result<Protection, String>) -> ProtectionView {
    match p {
        Err(e) => ProtectionView {
            applicable: true,
            versioning: None,
            object_lock: None,
            error: Some(e.clone()),
            summary: format!("unknown: the bucket's settings could not be read ({e})"),
        },
        Ok(p) if !p.applicable => ProtectionView {
            applicable: false,
            versioning: None,
            object_lock: None,
            error: None,
            summary: "not applicable: the repository is a local directory (no versioning, no Object Lock)".to_string(),
        },
        Ok(p) => ProtectionView {
            applicable: true,
            versioning: p.versioning.clone(),
            object_lock: p.object_lock.clone(),
            error: None,
            summary: format!(
                "versioning {}; Object Lock {}",
                match p.versioning.as_deref() {
                    Some(v) => v.to_lowercase(),
                    None => "off (never enabled)".to_string(),
                },
                match p.object_lock.as_deref() {
                    Some(l) => l.to_string(),
                    None => "off".to_string(),
                }
            ),
        },
    }
}

fn lifecycle_view(l: &Lifecycle) -> LifecycleView {
    let mut summary = Vec::new();
    if let Some(d) = l.archive_after_days {
        summary.push(format!(
            "objects move to {} after {d} day{}",
            l.archive_class.as_deref().unwrap_or("an archive class"),
            plural(d as usize)
        ));
    }
    if let Some(d) = l.noncurrent_expire_days {
        summary.push(format!(
            "noncurrent (deleted or replaced) versions expire after {d} day{}",
            plural(d as usize)
        ));
    }
    if let Some(d) = l.abort_incomplete_upload_days {
        summary.push(format!(
            "incomplete uploads are aborted after {d} day{}",
            plural(d as usize)
        ));
    }
    if let Some(m) = &l.object_lock_mode {
        summary.push(match l.object_lock_days {
            Some(d) => format!(
                "new objects are locked in {m} mode for {d} day{}",
                plural(d as usize)
            ),
            None => format!("new objects are locked in {m} mode"),
        });
    }
    LifecycleView {
        archive_after_days: l.archive_after_days,
        archive_class: l.archive_class.clone(),
        noncurrent_expire_days: l.noncurrent_expire_days,
        abort_incomplete_upload_days: l.abort_incomplete_upload_days,
        object_lock_mode: l.object_lock_mode.clone(),
        object_lock_days: l.object_lock_days,
        summary,
    }
}

fn retention_view(r: &Retention) -> RetentionView {
    let mut parts = Vec::new();
    for (name, v) in [
        ("keep_last", r.keep_last),
        ("keep_hourly", r.keep_hourly),
        ("keep_daily", r.keep_daily),
        ("keep_weekly", r.keep_weekly),
        ("keep_monthly", r.keep_monthly),
        ("keep_yearly", r.keep_yearly),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} = {v}"));
        }
    }
    if let Some(d) = r.keep_within {
        parts.push(format!(
            "keep_within = {}",
            fmt_seconds(d.num_milliseconds() as f64 / 1000.0)
        ));
    }
    RetentionView {
        keep_last: r.keep_last,
        keep_hourly: r.keep_hourly,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
        keep_within_seconds: r.keep_within.map(|d| d.num_milliseconds() as f64 / 1000.0),
        summary: if parts.is_empty() {
            "none (every backup is kept)".to_string()
        } else {
            parts.join(", ")
        },
    }
}

fn limitations(policies: &[PolicyReport], protection: &ProtectionView) -> Vec<String> {
    let mut out = vec![
        "Failed backup attempts are counted from their run records (`runs/` in the repository), written since drctl 0.1.0. An attempt that could not write its record (often because the repository itself was unreachable) is not counted, so the failed count is a lower bound.".to_string(),
        "The backup success rate divides the backups that still exist by those plus the recorded failures: backups removed by retention make it look lower, never higher.".to_string(),
        "Gaps between backups are computed from the backups that still exist. Retention may have removed some, which can make a gap look longer than it was, never shorter.".to_string(),
        "This report reads manifests and drill records, not backup data: it does not show that stored data is still intact today (`drctl verify --read-data` authenticates every stored byte).".to_string(),
        "Times come from the clocks of the hosts that took the backups and ran the drills.".to_string(),
        format!(
            "The hash chain shows an edited or removed drill record only when a later record of the same policy follows it; an edit to, or the removal of, the newest record is not visible in the chain. {}",
            if protection.versioned() {
                "The bucket keeps versions, so such a change leaves the earlier version (and a delete marker) behind to inspect."
            } else {
                "A bucket with versioning or Object Lock would keep such a change visible; this repository has neither."
            }
        ),
        "Lifecycle settings are those in drctl.toml; the bucket's own lifecycle rules are not read.".to_string(),
    ];
    let untested: Vec<&str> = policies
        .iter()
        .filter(|p| !p.drills.configured)
        .map(|p| p.name.as_str())
        .collect();
    if !untested.is_empty() {
        out.push(format!(
            "Drills cover only policies with a [drill] section; not drilled: {}.",
            untested.join(", ")
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// Formatting shared by the renderers
// ---------------------------------------------------------------------------

/// The summary's first sentence, shared by the Markdown and HTML pages;
/// `chains` is the chain verdict as the page shows it.
pub(crate) fn totals_sentence(t: &Totals, chains: &str) -> String {
    format!(
        "{} polic{}, {} backup{} in the period ({} failed attempt{} recorded), {} drill{} run ({} passed, {} failed). Drill records: {chains}.",
        t.policies,
        if t.policies == 1 { "y" } else { "ies" },
        t.backups_taken,
        plural(t.backups_taken),
        t.backups_failed,
        plural(t.backups_failed),
        t.drills_run,
        plural(t.drills_run),
        t.drills_passed,
        t.drills_failed,
    )
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `0.8 s`, `42 s`, `4 min 05 s`, `10 min`, `3 h 12 min`, `1 h`, `2 d 4 h`,
/// `2 d`: two units at most, a zero second unit left out.
pub(crate) fn fmt_seconds(s: f64) -> String {
    if !s.is_finite() {
        return "-".to_string();
    }
    let s = s.max(0.0);
    if s < 10.0 {
        return format!("{s:.1} s");
    }
    let whole = s.round() as u64;
    let (big, small) = match whole {
        0..60 => return format!("{whole} s"),
        60..3600 => ((whole / 60, "min"), (whole % 60, "s")),
        3600..86_400 => ((whole / 3600, "h"), (whole / 60 % 60, "min")),
        _ => ((whole / 86_400, "d"), (whole / 3600 % 24, "h")),
    };
    match small {
        (0, _) => format!("{} {}", big.0, big.1),
        (n, "h") => format!("{} {} {n} h", big.0, big.1),
        (n, unit) => format!("{} {} {n:02} {unit}", big.0, big.1),
    }
}

/// `2026-11-27 01:30 UTC`.
pub(crate) fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub(crate) fn fmt_bytes(n: u64) -> String {
    crate::progress::bytes(n)
}

/// A pass rate that never rounds up to 100 %: `66 %`.
pub(crate) fn fmt_percent(p: f64) -> String {
    format!("{} %", p.floor() as u64)
}

/// `met`, `NOT met`, or `no target`.
pub(crate) fn fmt_met(met: Option<bool>, has_target: bool) -> &'static str {
    match (met, has_target) {
        (Some(true), _) => "met",
        (Some(false), _) => "NOT met",
        (None, false) => "no target set",
        (None, true) => "not measured",
    }
}

/// `age1qyq…x7kz` for tables.
pub(crate) fn short_recipient(r: &str) -> String {
    if r.len() <= 20 {
        r.to_string()
    } else {
        format!("{}…{}", &r[..10], &r[r.len() - 6..])
    }
}

/// What the RPO line says: `1 d 2 h (2026-… to 2026-…), target 26 h: met`.
pub(crate) fn rpo_sentence(b: &BackupSummary) -> String {
    let gap = match &b.largest_gap {
        None => "no backup, so no gap can be measured".to_string(),
        Some(g) => format!(
            "{} (from the backup of {} to {})",
            fmt_seconds(g.seconds),
            fmt_time(g.from),
            if g.open {
                "the end of the period".to_string()
            } else {
                format!("the next, of {}", fmt_time(g.to))
            }
        ),
    };
    match b.rpo_target_seconds {
        Some(t) => format!(
            "{gap}; target {} ({}): {}",
            fmt_seconds(t),
            b.rpo_target_from.as_deref().unwrap_or("policy"),
            fmt_met(b.rpo_met, true)
        ),
        None => format!("{gap}; no RPO target set"),
    }
}

/// What the failed-backups line says: `1 (storage 1); 2 of 3 attempts
/// succeeded (66 %)`, never a rate without attempts.
pub(crate) fn failed_sentence(b: &BackupSummary) -> String {
    let mut by_class = std::collections::BTreeMap::<&str, usize>::new();
    for f in &b.failures {
        *by_class.entry(f.error_class.as_str()).or_default() += 1;
    }
    let counted: Vec<String> = by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let mut s = b.failed.to_string();
    if !counted.is_empty() {
        s.push_str(&format!(" ({})", counted.join(", ")));
    }
    if let Some(rate) = b.success_rate_percent {
        s.push_str(&format!(
            "; {} of {} attempt{} succeeded ({})",
            b.taken,
            b.taken + b.failed,
            plural(b.taken + b.failed),
            fmt_percent(rate)
        ));
    }
    if let Some(note) = &b.failed_note {
        s.push_str(&format!(" — {note}"));
    }
    s
}

/// What the drills line says; never a percentage without drills.
pub(crate) fn drills_sentence(d: &DrillSummary) -> String {
    match (d.run, d.pass_rate_percent) {
        (0, _) | (_, None) => "none in this period".to_string(),
        (run, Some(rate)) => format!(
            "{run} run: {} passed, {} failed ({} passed)",
            d.passed,
            d.failed,
            fmt_percent(rate)
        ),
    }
}

/// What the RTO line says.
pub(crate) fn rto_sentence(d: &DrillSummary) -> String {
    let observed = match (d.rto_median_seconds, d.rto_worst_seconds) {
        (Some(m), Some(w)) => format!(
            "median {}, worst {} over {} passed drill{}",
            fmt_seconds(m),
            fmt_seconds(w),
            d.rto_samples,
            plural(d.rto_samples)
        ),
        _ => "not demonstrated (no passed drill in this period)".to_string(),
    };
    match d.rto_target_seconds {
        Some(t) => format!(
            "{observed}; target {}: {}",
            fmt_seconds(t),
            fmt_met(d.rto_met, true)
        ),
        None => format!("{observed}; no RTO target set"),
    }
}

pub(crate) fn chain_sentence(c: &ChainReport) -> String {
    if c.ok && c.records == 0 {
        "no drill records, so no chain to check".to_string()
    } else if c.ok {
        format!("{} record{}, chain intact", c.records, plural(c.records))
    } else {
        format!(
            "{} record{}, chain BROKEN ({} problem{})",
            c.records,
            plural(c.records),
            c.problems.len(),
            plural(c.problems.len())
        )
    }
}

#[cfg(test)]
mod tests;
