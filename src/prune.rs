//! Prune: apply a policy's retention rules to its backups in the store.
//!
//! Under the policy's lease (so no backup of it runs meanwhile), after
//! checking that the store's clock agrees with ours, prune decides with
//! [`crate::retention::select`], keeps every backup a running restore or
//! drill holds and the newest good backup whatever the rules say, then for
//! each forgotten backup deletes the manifest first (the backup stops
//! existing, invariant 1) and its data objects after. On a versioned bucket
//! the deletes write delete markers; the bytes stay restorable until the
//! lifecycle rule expires noncurrent versions. It also removes what failed
//! backups left behind: objects under a backup directory with no manifest,
//! once they are old enough that no job can still be writing them.
//!
//! For a `postgres-cluster` policy it then deletes the archived WAL that no
//! base backup still there needs ([`crate::retention::wal::select`]),
//! decided again after the backups are gone from the catalog as it is then
//! (so a backup a restore started holding meanwhile keeps its WAL), and
//! oldest first, so that a prune stopped part-way leaves no gap.
//!
//! Nothing here prints or prompts: the daemon calls [`prune`] after each
//! backup, and the command line prints the report it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::{Policy, SourceConfig};
use crate::error::{Error, Result, StorageErrorKind};
use crate::repo::lease::{self, Lease};
use crate::repo::{self, Repo, catalog};
use crate::retention::{self, Action};
use crate::storage::PutMode;

/// Prune refuses when the host's clock and the store's differ by more.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;
/// Objects of a backup without a manifest are removed once the newest of
/// them is this old: no backup runs that long without writing its manifest.
pub const LEFTOVER_MIN_AGE_HOURS: i64 = 24;

/// Receives the plan before anything is deleted.
pub type PlanCallback = Arc<dyn Fn(&PruneReport) + Send + Sync>;

/// How a prune runs. Policies say what to keep; these say how this run acts.
#[derive(Clone)]
pub struct PruneOptions {
    /// Decide and report, delete nothing (and write nothing: no lease, no
    /// clock probe).
    pub dry_run: bool,
    /// See [`LEFTOVER_MIN_AGE_HOURS`].
    pub leftover_min_age: Duration,
    /// Called with the plan before anything is deleted, so a caller can
    /// show it first. Must not block.
    pub on_plan: Option<PlanCallback>,
    /// Set to stop between deletions (each backup goes whole or not at all:
    /// manifest, then its objects).
    pub cancel: Arc<AtomicBool>,
    /// `drctl forget`: delete only this backup (an id or unique prefix),
    /// whatever the rules say, under the same lease, holds and newest-good
    /// invariant; no WAL, leftovers or records are touched.
    pub only: Option<String>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            leftover_min_age: Duration::hours(LEFTOVER_MIN_AGE_HOURS),
            on_plan: None,
            cancel: Arc::new(AtomicBool::new(false)),
            only: None,
        }
    }
}

/// What prune decided and did, per policy.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub policy: String,
    pub location: String,
    pub dry_run: bool,
    /// The retention rules in words.
    pub rules: String,
    /// Versioning of the store (`Enabled`, `Suspended`), `None` when it has
    /// none or it could not be read: with versioning a delete leaves a
    /// delete marker and the backup stays recoverable for a while.
    pub versioning: Option<String>,
    /// Whether the bucket has Object Lock: only then is a refused delete
    /// "retained"; elsewhere it is a missing permission, and a failure.
    pub object_lock: bool,
    /// Store clock minus host clock, when it was measured.
    pub clock_skew_seconds: Option<i64>,
    /// Every good backup, newest first.
    pub backups: Vec<BackupOutcome>,
    /// Manifests that cannot be read: never deleted, never counted as the
    /// newest good backup.
    pub damaged: Vec<Damaged>,
    /// With `[signing]`: manifests without a trusted signature. Never
    /// counted by the rules (a planted manifest cannot push a real backup
    /// out), never deleted (they are evidence).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub untrusted: Vec<Damaged>,
    /// Objects of backups that never got a manifest.
    pub leftovers: Vec<Leftover>,
    /// Ids of backups whose manifest was deleted.
    pub deleted: Vec<String>,
    /// Ids of backups kept only because a restore or drill holds them.
    pub held: Vec<String>,
    /// Objects the store refused to delete (Object Lock or a bucket policy).
    pub retained: Vec<Retained>,
    /// Holds left by restores and drills that died (SIGKILL), removed.
    pub expired_holds_removed: usize,
    /// Records of failed backups older than `runs::KEEP_DAYS`, removed.
    pub run_records_removed: usize,
    /// For a `postgres-cluster` policy: the archived WAL no kept base
    /// backup needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalPrune>,
}

/// What prune does to a `postgres-cluster` policy's archive.
#[derive(Debug, Clone, Serialize)]
pub struct WalPrune {
    /// Why every file is kept, when nothing may be deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_all: Option<String>,
    /// The start segment of the oldest kept base backup: nothing from it
    /// on is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon_backup: Option<String>,
    /// Files (segments, `.backup` and `.partial` files) before the horizon.
    pub files: usize,
    pub bytes: u64,
    /// The oldest and newest of them, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    pub deleted_files: usize,
    pub deleted_bytes: u64,
    /// Keys to delete, oldest first.
    #[serde(skip)]
    keys: Vec<(String, u64)>,
}

impl WalPrune {
    fn kept(reason: String) -> WalPrune {
        WalPrune::from_selection(
            "",
            retention::wal::WalSelection {
                keep_all: Some(reason),
                horizon: None,
                horizon_backup: None,
                delete: Vec::new(),
            },
        )
    }

    fn from_selection(policy: &str, s: retention::wal::WalSelection) -> WalPrune {
        let name = |o: &crate::storage::ObjectMeta| {
            crate::wal::parse_key(policy, &o.key).map(|(n, _)| n.name)
        };
        WalPrune {
            files: s.delete.len(),
            bytes: s.bytes(),
            first: s.delete.first().and_then(name),
            last: s.delete.last().and_then(name),
            keys: s.delete.iter().map(|o| (o.key.clone(), o.size)).collect(),
            keep_all: s.keep_all,
            horizon: s.horizon,
            horizon_backup: s.horizon_backup,
            deleted_files: 0,
            deleted_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupOutcome {
    pub id: String,
    pub point_in_time: DateTime<Utc>,
    pub action: Action,
    /// Why it is kept: the retention rules, `held by restore on db1`,
    /// `newest good backup`.
    pub reasons: Vec<String>,
    /// `planned`, `deleted`, or `retained by Object Lock`; `None` for kept.
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Leftover {
    pub id: String,
    pub objects: Vec<String>,
    pub newest_object_at: Option<DateTime<Utc>>,
    /// `delete` (planned), `deleted`, `too recent` (a job may still be
    /// writing it), or `retained by Object Lock`.
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Retained {
    pub key: String,
    pub reason: String,
}

const RETAINED_BY_LOCK: &str = "retained by Object Lock";

/// Applies `policy`'s retention to its backups.
///
/// # Errors
/// `Locked` when a job of the policy runs; `Refused` when the clocks
/// disagree by more than [`MAX_CLOCK_SKEW_SECONDS`]; storage errors (a
/// prune stopped part-way has deleted whole backups only, manifest first).
pub async fn prune(repo: &Repo, policy: &Policy, opts: &PruneOptions) -> Result<PruneReport> {
    if opts.dry_run {
        return plan(repo, policy, opts, None).await;
    }
    let skew = measure_clock_skew(repo, &policy.name).await?;
    check_clock_skew(&repo.store.location(), skew)?;
    let lease = Lease::acquire(repo.store.clone(), &policy.name, "prune").await?;
    let lost = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (signal, lost) = (lease.lost_signal(), lost.clone());
        tokio::spawn(async move {
            signal.await;
            lost.store(true, Ordering::Relaxed);
        })
    };
    let result = async {
        let mut report = plan(repo, policy, opts, Some(skew)).await?;
        execute(repo, &policy.name, &mut report, &lost, &opts.cancel).await?;
        if opts.only.is_some() {
            return Ok(report);
        }
        if report.wal.as_ref().is_some_and(|w| w.files > 0) {
            report.wal = Some(prune_wal(repo, policy, &mut report, &lost, &opts.cancel).await?);
        }
        report.expired_holds_removed =
            lease::remove_expired_holds(repo.store.as_ref(), &policy.name, Utc::now()).await?;
        report.run_records_removed = crate::repo::runs::remove_older_than(
            repo,
            &policy.name,
            Utc::now() - Duration::days(crate::repo::runs::KEEP_DAYS),
        )
        .await?;
        Ok(report)
    }
    .await;
    watcher.abort();
    lease.release().await;
    result
}

/// Decides everything and calls `on_plan`; deletes nothing.
async fn plan(
    repo: &Repo,
    policy: &Policy,
    opts: &PruneOptions,
    skew: Option<Duration>,
) -> Result<PruneReport> {
    let now = Utc::now();
    let cat = catalog::load(repo, &policy.name).await?;
    let tz = policy
        .schedule
        .as_ref()
        .map_or(chrono_tz::UTC, |s| s.timezone);
    let input: Vec<(String, DateTime<Utc>)> = cat
        .backups
        .iter()
        .map(|m| (m.id.clone(), m.point_in_time))
        .collect();
    let mut decisions = retention::select(&input, &policy.retention, tz);
    let only = match &opts.only {
        Some(id) => Some(cat.find(&policy.name, id)?.id.clone()),
        None => None,
    };
    if let Some(id) = &only {
        for d in &mut decisions {
            d.reasons = match &d.id == id {
                true => Vec::new(),
                false => vec!["not named by forget".into()],
            };
        }
    }
    let holds = lease::list_holds(repo.store.as_ref(), &policy.name, now).await?;
    let newest = cat.backups.first().map(|m| m.id.clone());

    let mut held = Vec::new();
    let backups: Vec<BackupOutcome> = decisions
        .into_iter()
        .map(|d| {
            let mut out = BackupOutcome {
                id: d.id,
                point_in_time: d.point_in_time,
                action: d.action,
                reasons: d.reasons,
                outcome: None,
            };
            let holding: BTreeSet<String> = holds
                .iter()
                .filter(|h| h.backup_id == out.id)
                .map(lease::Hold::describe)
                .collect();
            if !holding.is_empty() && out.action == Action::Forget {
                held.push(out.id.clone());
            }
            out.reasons.extend(holding);
            // Invariant 5, whatever the rules say.
            if newest.as_deref() == Some(out.id.as_str()) && out.reasons.is_empty() {
                out.reasons.push("newest good backup".into());
            }
            out.action = if out.reasons.is_empty() {
                Action::Forget
            } else {
                Action::Keep
            };
            if out.action == Action::Forget {
                out.outcome = Some("planned".into());
            }
            out
        })
        .collect();

    if let Some(id) = &only
        && let Some(b) = backups
            .iter()
            .find(|b| &b.id == id && b.action == Action::Keep)
    {
        return Err(Error::Refused(format!(
            "backup {id} of `{}` is not forgotten: it is kept ({}); nothing was deleted{}",
            policy.name,
            b.reasons.join(", "),
            if b.reasons.iter().any(|r| r == "newest good backup") {
                " (the newest good backup is never deleted: take a newer one first)"
            } else {
                " (try again once the restore or drill is done)"
            }
        )));
    }
    let leftovers = match only {
        Some(_) => Vec::new(),
        None => find_leftovers(repo, &policy.name, now, opts.leftover_min_age).await?,
    };
    let wal = if only.is_none() && matches!(policy.source, SourceConfig::PostgresCluster { .. }) {
        let kept: BTreeSet<&str> = backups
            .iter()
            .filter(|b| b.action == Action::Keep)
            .map(|b| b.id.as_str())
            .collect();
        Some(plan_wal(repo, policy, &cat, |id| kept.contains(id)).await?)
    } else {
        None
    };
    let (versioning, object_lock) = match repo.store.protection().await {
        Ok(p) => (p.versioning, p.object_lock.is_some()),
        Err(e) => {
            tracing::debug!(error = %e, "Could not read the bucket's versioning; reporting it as unknown.");
            (None, false)
        }
    };
    let report = PruneReport {
        policy: policy.name.clone(),
        location: repo.store.location(),
        dry_run: opts.dry_run,
        rules: retention::describe(&policy.retention),
        versioning,
        object_lock,
        clock_skew_seconds: skew.map(|s| s.num_seconds()),
        backups,
        damaged: cat
            .damaged
            .into_iter()
            .map(|(key, reason)| Damaged { key, reason })
            .collect(),
        untrusted: cat
            .untrusted
            .into_iter()
            .map(|(key, reason)| Damaged { key, reason })
            .collect(),
        leftovers,
        deleted: Vec::new(),
        held,
        retained: Vec::new(),
        expired_holds_removed: 0,
        run_records_removed: 0,
        wal,
    };
    if let Some(f) = &opts.on_plan {
        f(&report);
    }
    Ok(report)
}

/// Which archived WAL may go while the backups `kept` says stay.
async fn plan_wal(
    repo: &Repo,
    policy: &Policy,
    cat: &catalog::Catalog,
    kept: impl Fn(&str) -> bool,
) -> Result<WalPrune> {
    if !retention::has_rules(&policy.retention) {
        return Ok(WalPrune::kept(
            "no retention rules: every base backup and all WAL are kept".into(),
        ));
    }
    // An unreadable manifest may be a base backup whose start is unknown.
    if let Some((key, _)) = cat.damaged.first() {
        return Ok(WalPrune::kept(format!(
            "manifest {key} cannot be read, and the base backup it may be needs WAL from a start no one can tell; \
             repair or remove it (`drctl verify {}` names the problem), then prune again",
            policy.name
        )));
    }
    // An untrusted manifest (unsigned before `sign --existing`, or by a key
    // since removed from `trusted`) may be a genuine base backup: its WAL
    // stays until someone vouches for it or removes it.
    if let Some((key, _)) = cat.untrusted.first() {
        return Ok(WalPrune::kept(format!(
            "manifest {key} is not signed by a trusted key, and the base backup it may be needs WAL \
             from a start that cannot be trusted; vouch for it (`drctl sign --existing`) or remove it, \
             then prune again"
        )));
    }
    let kept: Vec<&crate::repo::manifest::Manifest> =
        cat.backups.iter().filter(|m| kept(&m.id)).collect();
    let listing = repo
        .store
        .list(&crate::wal::policy_prefix(&policy.name))
        .await?;
    Ok(WalPrune::from_selection(
        &policy.name,
        retention::wal::select(&policy.name, &kept, &listing),
    ))
}

/// Deletes the WAL no base backup still in the repository needs, deciding
/// again from the catalog as the backups' deletion left it: a restore that
/// took a hold since the plan kept its backup, and so its WAL.
async fn prune_wal(
    repo: &Repo,
    policy: &Policy,
    report: &mut PruneReport,
    lost: &AtomicBool,
    cancel: &AtomicBool,
) -> Result<WalPrune> {
    let cat = catalog::load(repo, &policy.name).await?;
    let mut wal = plan_wal(repo, policy, &cat, |_| true).await?;
    let name = policy.name.as_str();
    for (key, size) in wal.keys.clone() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted(format!(
                "prune of `{name}` stopped while deleting WAL ({} of {} files deleted, oldest first, so the archive has no gap)",
                wal.deleted_files, wal.files
            )));
        }
        if lost.load(Ordering::Relaxed) {
            return Err(Error::LeaseLost {
                policy: name.to_string(),
                message:
                    "the prune's lease could not be renewed; it stopped before deleting more WAL"
                        .into(),
            });
        }
        let before = report.retained.len();
        delete_objects(
            repo.store.as_ref(),
            std::iter::once(key),
            report.object_lock,
            &mut report.retained,
        )
        .await?;
        if report.retained.len() == before {
            wal.deleted_files += 1;
            wal.deleted_bytes += size;
        }
    }
    tracing::info!(
        event = "wal_pruned",
        policy = name,
        files = wal.deleted_files,
        bytes = wal.deleted_bytes,
        first = wal.first.as_deref().unwrap_or(""),
        last = wal.last.as_deref().unwrap_or(""),
        "Deleted the archived WAL that no kept base backup needs."
    );
    Ok(wal)
}

/// Backup directories with objects but no `manifest.json`.
async fn find_leftovers(
    repo: &Repo,
    policy: &str,
    now: DateTime<Utc>,
    min_age: Duration,
) -> Result<Vec<Leftover>> {
    let prefix = repo::backup_prefix(policy);
    let mut dirs: BTreeMap<String, Vec<crate::storage::ObjectMeta>> = BTreeMap::new();
    for o in repo.store.list(&prefix).await? {
        let rest = &o.key[prefix.len()..];
        if let Some((id, _)) = rest.split_once('/') {
            dirs.entry(id.to_string()).or_default().push(o);
        }
    }
    Ok(dirs
        .into_iter()
        .filter(|(id, objects)| {
            !objects
                .iter()
                .any(|o| o.key == repo::manifest_key(policy, id))
        })
        .map(|(id, objects)| {
            let newest = objects.iter().filter_map(|o| o.last_modified).max();
            // An object without a time is treated as just written.
            let old_enough = objects.iter().all(|o| o.last_modified.is_some())
                && newest.is_none_or(|t| now - t >= min_age);
            Leftover {
                id,
                objects: objects.into_iter().map(|o| o.key).collect(),
                newest_object_at: newest,
                outcome: if old_enough { "delete" } else { "too recent" }.into(),
            }
        })
        .collect())
}

async fn execute(
    repo: &Repo,
    policy: &str,
    report: &mut PruneReport,
    lost: &AtomicBool,
    cancel: &AtomicBool,
) -> Result<()> {
    let store = repo.store.clone();
    let may_go_on = || {
        if cancel.load(Ordering::Relaxed) {
            Err(Error::Interrupted(format!(
                "prune of `{policy}` stopped between backups; every backup is either whole or gone"
            )))
        } else if lost.load(Ordering::Relaxed) {
            Err(Error::LeaseLost {
                policy: policy.to_string(),
                message: "the prune's lease could not be renewed; it stopped before deleting more"
                    .into(),
            })
        } else {
            Ok(())
        }
    };
    for i in 0..report.backups.len() {
        if report.backups[i].action != Action::Forget {
            continue;
        }
        may_go_on()?;
        let id = report.backups[i].id.clone();
        // A restore may have started since the plan: look again right
        // before deleting.
        let holds = lease::list_holds(store.as_ref(), policy, Utc::now()).await?;
        let holding: Vec<String> = holds
            .iter()
            .filter(|h| h.backup_id == id)
            .map(lease::Hold::describe)
            .collect();
        if !holding.is_empty() {
            let b = &mut report.backups[i];
            b.reasons.extend(holding);
            b.action = Action::Keep;
            b.outcome = None;
            report.held.push(id);
            continue;
        }
        let manifest = repo::manifest_key(policy, &id);
        match store.delete(&manifest).await {
            Ok(()) => {}
            Err(e) if e.kind == StorageErrorKind::AccessDenied && report.object_lock => {
                report.retained.push(Retained {
                    key: manifest,
                    reason: format!("{RETAINED_BY_LOCK} or a bucket policy: {}", e.detail),
                });
                report.backups[i].outcome = Some(RETAINED_BY_LOCK.into());
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(event = "backup_pruned", policy, backup = %id, "Deleted the manifest of a backup the retention rules forget.");
        report.deleted.push(id.clone());
        report.backups[i].outcome = Some("deleted".into());
        let objects = store.list(&repo::backup_dir(policy, &id)).await?;
        delete_objects(
            store.as_ref(),
            objects.into_iter().map(|o| o.key),
            report.object_lock,
            &mut report.retained,
        )
        .await?;
    }
    for leftover in &mut report.leftovers {
        if leftover.outcome != "delete" {
            continue;
        }
        may_go_on()?;
        let before = report.retained.len();
        delete_objects(
            store.as_ref(),
            leftover.objects.iter().cloned(),
            report.object_lock,
            &mut report.retained,
        )
        .await?;
        leftover.outcome = if report.retained.len() > before {
            RETAINED_BY_LOCK.into()
        } else {
            tracing::info!(event = "leftover_removed", policy, backup = %leftover.id, "Removed the objects of a backup that never completed.");
            "deleted".into()
        };
    }
    Ok(())
}

/// Deletes objects; on an Object Lock bucket one the store refuses is
/// retained, not a failure. Elsewhere a refusal means the credentials lack
/// `s3:DeleteObject` (docs/iam-policy.md), and prune fails saying so.
async fn delete_objects(
    store: &dyn crate::storage::Store,
    keys: impl Iterator<Item = String>,
    object_lock: bool,
    retained: &mut Vec<Retained>,
) -> Result<()> {
    for key in keys {
        match store.delete(&key).await {
            Ok(()) => {}
            Err(e) if e.kind == StorageErrorKind::AccessDenied && object_lock => {
                retained.push(Retained {
                    key,
                    reason: format!("{RETAINED_BY_LOCK} or a bucket policy: {}", e.detail),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes a small object, reads its Last-Modified back and removes it:
/// the store's clock minus ours (zero when they agree within the time the
/// round trip took).
///
/// # Errors
/// Storage errors writing or reading the probe.
pub async fn measure_clock_skew(repo: &Repo, policy: &str) -> Result<Duration> {
    // '@' cannot start a policy name, so this never names a lease.
    let key = format!("locks/@clock.{policy}.{:016x}", rand::random::<u64>());
    let before = Utc::now();
    repo.store
        .put(
            &key,
            Bytes::from_static(b"drctl clock probe\n"),
            PutMode::Create,
        )
        .await?;
    let meta = repo.store.head(&key, None).await;
    let after = Utc::now();
    if let Err(e) = repo.store.delete(&key).await {
        tracing::warn!(event = "clock_probe_not_removed", key = %key, error = %e, "Could not remove the clock probe object.");
    }
    let meta = meta?;
    Ok(match meta.last_modified {
        Some(t) => clock_skew(before, after, t),
        None => Duration::zero(),
    })
}

/// How far `store_time` (an object's Last-Modified, written between
/// `before` and `after` by our clock) lies outside that interval. S3 keeps
/// whole seconds, so a second of truncation is not skew.
pub fn clock_skew(
    before: DateTime<Utc>,
    after: DateTime<Utc>,
    store_time: DateTime<Utc>,
) -> Duration {
    let earliest = before - Duration::seconds(1);
    if store_time < earliest {
        store_time - earliest
    } else if store_time > after {
        store_time - after
    } else {
        Duration::zero()
    }
}

/// Refuses a skew beyond [`MAX_CLOCK_SKEW_SECONDS`]: hold and lease expiry
/// and the age of leftovers all compare the store's times with ours.
///
/// # Errors
/// `Refused` naming both clocks' difference and the fix.
pub fn check_clock_skew(location: &str, skew: Duration) -> Result<()> {
    if skew.num_seconds().abs() <= MAX_CLOCK_SKEW_SECONDS {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "this host's clock and the clock of {location} differ by {}s (the store is {}); prune compares times across both and allows {MAX_CLOCK_SKEW_SECONDS}s. Fix the host's time (NTP) and run prune again; nothing was deleted",
        skew.num_seconds().abs(),
        if skew > Duration::zero() {
            "ahead"
        } else {
            "behind"
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn clock_skew_is_what_lies_outside_the_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 4, 0, 0).unwrap();
        let after = t + Duration::milliseconds(300);
        // S3 truncates to the second: 3:59:59.5 written at 4:00:00.2 is fine.
        assert_eq!(
            clock_skew(t + Duration::milliseconds(200), after, t),
            Duration::zero()
        );
        assert_eq!(
            clock_skew(t, after, t + Duration::minutes(7)),
            Duration::minutes(7) - Duration::milliseconds(300)
        );
        assert_eq!(
            clock_skew(t, after, t - Duration::minutes(6)),
            -Duration::minutes(6) + Duration::seconds(1)
        );
    }

    #[test]
    fn more_than_five_minutes_of_skew_is_refused() {
        assert!(check_clock_skew("s3://b", Duration::seconds(299)).is_ok());
        assert!(check_clock_skew("s3://b", Duration::seconds(-300)).is_ok());
        let err = check_clock_skew("s3://b", Duration::seconds(-420)).unwrap_err();
        assert!(matches!(err, Error::Refused(_)));
        let msg = err.to_string();
        assert!(
            msg.contains("differ by 420s")
                && msg.contains("behind")
                && msg.contains("NTP")
                && msg.contains("nothing was deleted"),
            "{msg}"
        );
        assert!(
            check_clock_skew("s3://b", Duration::minutes(6))
                .unwrap_err()
                .to_string()
                .contains("ahead")
        );
    }
}
