//! The archive of a policy as `verify`, `wal status` and a recovery see it:
//! listed, with its timeline history read where an identity allows, and
//! its continuity checked per timeline from each base backup's start.

use std::collections::BTreeMap;

use super::archive::{self, Gap, Inventory, TimelineReport};
use super::history::{self, Switch};
use super::{DEFAULT_SEGMENT_BYTES, Lsn, WalName};
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::repo::manifest::Manifest;

/// Lists `wal/<policy>/`.
///
/// # Errors
/// Storage errors.
pub async fn inventory(repo: &Repo, policy: &str, segment_bytes: u64) -> Result<Inventory> {
    let listing = repo.store.list(&super::policy_prefix(policy)).await?;
    Ok(Inventory::from_listing(policy, listing, segment_bytes))
}

/// Reads and parses every archived history file.
///
/// # Errors
/// Storage and decryption errors; `Integrity` for a history file that is
/// not one (recovery along it would fail the same way).
pub async fn histories(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    policy: &str,
    inventory: &Inventory,
) -> Result<BTreeMap<u32, Vec<Switch>>> {
    let mut out = BTreeMap::new();
    for (&timeline, meta) in &inventory.histories {
        let name = WalName::parse(&format!("{timeline:08X}.history")).expect("a history name");
        let Some(bytes) = super::fetch::read(repo, identities, policy, &name).await? else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let parsed = history::parse(timeline, &text).map_err(|reason| Error::Integrity {
            object: format!("{}/{}", repo.store.location(), meta.key),
            reason,
        })?;
        out.insert(timeline, parsed);
    }
    Ok(out)
}

/// The segment size of a policy's cluster, from its newest base backup.
pub fn segment_bytes(backups: &[Manifest]) -> u64 {
    backups
        .iter()
        .find_map(|m| m.cluster.as_ref().map(|c| c.wal_segment_bytes))
        .unwrap_or(DEFAULT_SEGMENT_BYTES)
}

/// What the continuity check found.
#[derive(Debug)]
pub struct Continuity {
    pub segment_bytes: u64,
    pub timelines: Vec<TimelineReport>,
    pub gaps: Vec<Gap>,
    /// Why timelines after the first were checked only from their oldest
    /// archived segment, if they were.
    pub note: Option<String>,
}

impl Continuity {
    /// One line per gap, naming the timeline, the segments and the base
    /// backups that cannot replay past it.
    pub fn gap_lines(&self, policy: &str, backups: &[Manifest]) -> Vec<String> {
        self.gaps
            .iter()
            .map(|g| {
                let stuck: Vec<&str> = backups
                    .iter()
                    .filter(|m| {
                        m.cluster.as_ref().is_some_and(|c| {
                            c.timeline <= g.timeline
                                && c.start_lsn.0 / self.segment_bytes <= g.last.number
                        })
                    })
                    .map(|m| m.id.as_str())
                    .collect();
                format!(
                    "WAL of `{policy}` is missing on timeline {}: {}{}",
                    g.timeline,
                    g.describe(self.segment_bytes),
                    if stuck.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; recovery from base backup {} cannot replay past it",
                            stuck.join(", ")
                        )
                    }
                )
            })
            .collect()
    }
}

/// Checks the WAL of a policy per timeline, from each base backup's start
/// (and each timeline's branch point, when `identities` can read the
/// history files) to the newest archived segment.
///
/// # Errors
/// Storage errors; decryption errors of history files when an identity
/// was given.
pub async fn continuity(
    repo: &Repo,
    policy: &str,
    backups: &[Manifest],
    identities: Option<&[age::x25519::Identity]>,
) -> Result<Continuity> {
    let segment_bytes = segment_bytes(backups);
    let inventory = inventory(repo, policy, segment_bytes).await?;
    let starts: Vec<(u32, Lsn)> = backups
        .iter()
        .filter_map(|m| m.cluster.as_ref().map(|c| (c.timeline, c.start_lsn)))
        .collect();
    let (branches, note) = match identities {
        Some(ids) => {
            let h = histories(repo, ids, policy, &inventory).await?;
            let branches: BTreeMap<u32, Lsn> = h
                .iter()
                .filter_map(|(&t, s)| s.last().map(|s| (t, s.at)))
                .collect();
            (branches, None)
        }
        None if inventory.histories.is_empty() => (BTreeMap::new(), None),
        None => (
            BTreeMap::new(),
            Some(
                "timelines that branched were checked from their oldest archived segment: \
                 reading where they branched needs the identity (encryption.identity_file or --identity)"
                    .to_string(),
            ),
        ),
    };
    let check_from = archive::check_starts(&starts, &branches, segment_bytes);
    let (timelines, gaps) = archive::report(&inventory, &check_from, segment_bytes);
    Ok(Continuity {
        segment_bytes,
        timelines,
        gaps,
        note,
    })
}

/// What `drctl verify` says about a policy's WAL.
#[derive(Debug, serde::Serialize)]
pub struct Verified {
    pub policy: String,
    pub timelines: Vec<TimelineReport>,
    /// One line per gap (see [`Continuity::gap_lines`]).
    pub gaps: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Verified {
    /// The lines `verify` prints: one per timeline, then one per gap.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .timelines
            .iter()
            .filter(|t| t.gaps.is_empty() && t.segments > 0)
            .map(|t| {
                format!(
                    "ok      {} WAL timeline {}: {} to {}, no gap",
                    self.policy,
                    t.timeline,
                    t.checked_from.as_deref().unwrap_or("?"),
                    t.newest.as_deref().unwrap_or("?")
                )
            })
            .collect();
        out.extend(self.gaps.iter().map(|g| format!("GAP     {g}")));
        if let Some(n) = &self.note {
            out.push(format!("note    {}: {n}", self.policy));
        }
        out
    }
}

/// `drctl verify`'s WAL part for a `postgres-cluster` policy: continuity
/// per timeline from each base backup's start, every gap named.
///
/// # Errors
/// Storage errors; decryption errors of history files.
pub async fn verify(
    repo: &Repo,
    policy: &str,
    backups: &[Manifest],
    identities: Option<&[age::x25519::Identity]>,
) -> Result<Verified> {
    let c = continuity(repo, policy, backups, identities).await?;
    Ok(Verified {
        policy: policy.to_string(),
        gaps: c.gap_lines(policy, backups),
        timelines: c.timelines,
        note: c.note,
    })
}
