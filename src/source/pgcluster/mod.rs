//! A whole PostgreSQL cluster, physically: base backups streamed from
//! `pg_basebackup` (tar on stdout, no WAL in it: the WAL comes from the
//! archive `drctl wal-push` keeps), and recovery of a data directory to a
//! point in time with `drctl wal-fetch` as the `restore_command`.
//!
//! This file holds what both directions share and the pure parsing of what
//! PostgreSQL writes: `backup_label` and `backup_manifest`.

pub mod basebackup;
pub mod check;
pub mod recover;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::wal::Lsn;

/// What a base backup's manifest records about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// `pg_control`'s system identifier, as text (it does not fit a JSON
    /// number exactly): WAL of another cluster never replays onto this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    pub server_version: String,
    pub server_version_num: u32,
    pub pg_basebackup_version: String,
    /// The timeline the backup was taken on.
    pub timeline: u32,
    /// Where replay must start (`START WAL LOCATION` in `backup_label`).
    pub start_lsn: Lsn,
    /// Where the copy is consistent: recovery may stop no earlier.
    pub end_lsn: Lsn,
    /// When the backup began and when it was consistent (the end).
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub wal_segment_bytes: u64,
    /// `Manifest-Checksum` of the server's `backup_manifest`, which is in
    /// the tar: `pg_verifybackup` checks every file against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_manifest_checksum: Option<String>,
}

/// What `backup_label` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub start_lsn: Lsn,
    pub start_segment: String,
    pub timeline: u32,
}

/// Parses `backup_label` as PostgreSQL 15 writes it.
///
/// # Errors
/// A description of the line that is missing or malformed.
pub fn parse_label(text: &str) -> Result<Label, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| format!("backup_label has no `{name}` line"))
    };
    // START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
    let start = field("START WAL LOCATION:")?;
    let (lsn, rest) = start
        .split_once(' ')
        .ok_or_else(|| format!("backup_label: malformed START WAL LOCATION `{start}`"))?;
    let start_segment = rest
        .trim()
        .strip_prefix("(file ")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("backup_label: malformed START WAL LOCATION `{start}`"))?
        .to_string();
    let timeline = field("START TIMELINE:")?
        .parse()
        .map_err(|_| "backup_label: START TIMELINE is not a number".to_string())?;
    Ok(Label {
        start_lsn: lsn.parse()?,
        start_segment,
        timeline,
    })
}

/// What the server's `backup_manifest` says about the WAL a backup needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSummary {
    /// `(timeline, start, end)` for every range, oldest first.
    pub wal_ranges: Vec<(u32, Lsn, Lsn)>,
    pub checksum: Option<String>,
}

/// Parses the parts of `backup_manifest` drctl uses.
///
/// # Errors
/// When it is not JSON or has no WAL range.
pub fn parse_backup_manifest(text: &str) -> Result<ManifestSummary, String> {
    #[derive(Deserialize)]
    struct Range {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "Start-LSN")]
        start: Lsn,
        #[serde(rename = "End-LSN")]
        end: Lsn,
    }
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "WAL-Ranges")]
        wal_ranges: Vec<Range>,
        #[serde(rename = "Manifest-Checksum")]
        checksum: Option<String>,
    }
    let raw: Raw =
        serde_json::from_str(text).map_err(|e| format!("backup_manifest is not readable: {e}"))?;
    if raw.wal_ranges.is_empty() {
        return Err("backup_manifest lists no WAL range".into());
    }
    let mut wal_ranges: Vec<(u32, Lsn, Lsn)> = raw
        .wal_ranges
        .into_iter()
        .map(|r| (r.timeline, r.start, r.end))
        .collect();
    wal_ranges.sort();
    Ok(ManifestSummary {
        wal_ranges,
        checksum: raw.checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
CHECKPOINT LOCATION: 0/2000060\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: primary\n\
START TIME: 2026-11-30 18:00:00 UTC\n\
LABEL: drctl 20261130T180000Z-1\n\
START TIMELINE: 1\n";

    #[test]
    fn backup_label_gives_the_start() {
        let label = parse_label(LABEL).unwrap();
        assert_eq!(label.start_lsn, "0/2000028".parse().unwrap());
        assert_eq!(label.start_segment, "000000010000000000000002");
        assert_eq!(label.timeline, 1);
        let err = parse_label("LABEL: x\n").unwrap_err();
        assert!(err.contains("START WAL LOCATION"), "{err}");
    }

    #[test]
    fn backup_manifest_gives_the_wal_range() {
        let text = r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000138" }
],
"Manifest-Checksum": "abc" }"#;
        let m = parse_backup_manifest(text).unwrap();
        assert_eq!(
            m.wal_ranges,
            vec![(
                1,
                "0/2000028".parse().unwrap(),
                "0/2000138".parse().unwrap()
            )]
        );
        assert_eq!(m.checksum.as_deref(), Some("abc"));
        assert!(parse_backup_manifest("{").is_err());
    }
}
