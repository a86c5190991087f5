//! Copies to a second repository (`[[copies]]`, the 3-2-1 rule): every
//! backup the destination lacks, as stored bytes, never decrypted.
//!
//! Per policy, under the destination's lease of that policy (so a prune of
//! the copy never runs meanwhile): the WAL of a `postgres-cluster` policy
//! first (a base backup is usable only with its WAL), then each backup the
//! copy's retention keeps and the destination lacks, newest first: its data
//! objects and fingerprint, each streamed part by part from the source's
//! store into the destination's and read back there to check its SHA-256
//! against the manifest, and only then the manifest, byte for byte as in
//! the source (so its signature still verifies: it signs the key and the
//! body). Last the drill records, run records and marks. A backup whose
//! manifest is not at the destination is not there, whatever else is: an
//! interrupted copy is never listed, and the next run finds its objects,
//! checks them and goes on.
//!
//! The destination's `repo.json` is the primary's, byte for byte, written
//! at the first copy; a destination whose `repo.json` is another
//! repository's (another creation time) is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::pipeline::Digests;
use crate::pipeline::hash::{Hashed, Hasher};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::config::{CopyConfig, Policy, SourceConfig};
use crate::error::{Error, Result, StorageErrorKind};
use crate::repo::lease::Lease;
use crate::repo::manifest::Manifest;
use crate::repo::{self, MARKER_KEY, Repo, catalog};
use crate::storage::{PutMode, Store};

/// Small objects (records, marks) copied at once.
pub const RECORD_CONCURRENCY: usize = 8;

/// Receives progress sentences (for stderr); must not block.
pub type ProgressCallback = Arc<dyn Fn(&str) + Send + Sync>;

/// How a copy runs. The configuration says where; these say how this run acts.
#[derive(Clone, Default)]
pub struct CopyOptions {
    /// Decide and report; write nothing at the destination.
    pub dry_run: bool,
    pub on_progress: Option<ProgressCallback>,
    /// Set to stop between objects; what is half-copied has no manifest.
    pub cancel: Arc<AtomicBool>,
}

impl CopyOptions {
    fn say(&self, message: impl AsRef<str>) {
        if let Some(f) = &self.on_progress {
            f(message.as_ref());
        }
    }

    fn check_cancel(&self, policy: &str) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted(format!(
                "copy of `{policy}` stopped; backups without their manifest at the destination are not listed there, and the next `drctl copy` completes them"
            )));
        }
        Ok(())
    }
}

/// One backup and what the copy did with it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupCopy {
    pub id: String,
    pub point_in_time: DateTime<Utc>,
    /// `copied`, `present` (already there), `planned` (dry run) or
    /// `not kept` (the copy's retention would not keep it).
    pub action: String,
    pub bytes: u64,
}

/// What a copy of one policy into one destination decided and did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub policy: String,
    pub copy: String,
    pub source: String,
    pub destination: String,
    pub dry_run: bool,
    pub backups: Vec<BackupCopy>,
    /// WAL objects copied (or to copy, in a dry run) and already there.
    pub wal_copied: usize,
    pub wal_present: usize,
    /// Drill records, run records and marks copied (or to copy).
    pub records_copied: usize,
    /// Bytes written to the destination (planned, in a dry run).
    pub bytes: u64,
    pub seconds: f64,
    /// The newest backup in each repository, after the copy.
    pub newest_source: Option<DateTime<Utc>>,
    pub newest_destination: Option<DateTime<Utc>>,
    /// Source manifests not copied: untrusted or damaged.
    pub skipped: Vec<String>,
    pub warnings: Vec<String>,
}

/// Opens a copy to read from it (`list --repo`, `restore --from`, …),
/// without the primary, which may be the thing that is down.
///
/// # Errors
/// `Usage` for a copy never written; storage errors.
pub async fn open_copy(
    copy: &CopyConfig,
    signing: Option<Arc<crate::signing::Signing>>,
) -> Result<Repo> {
    let store = crate::storage::open(&copy.repository).await?;
    let mut repo = match Repo::open(store).await {
        Ok(r) => r,
        Err(Error::NotInitialised { location, .. }) => {
            return Err(Error::Usage(format!(
                "copy `{}` ({location}) holds no repository yet (no repo.json); run `drctl copy --to {}` first",
                copy.name, copy.name
            )));
        }
        Err(e) => return Err(e),
    }
    .with_signing(signing)
    .await?;
    repo.copy_name = Some(copy.name.clone());
    Ok(repo)
}

/// Opens a copy to write into it: a destination without `repo.json` gets
/// the primary's (unless `create` is false, for a dry run, when nothing is
/// written and it reads as empty), and one that holds another repository or anything
/// else is refused before anything is written.
///
/// # Errors
/// `Refused` for a destination that holds another repository or other
/// objects; storage errors.
pub async fn open_destination(primary: &Repo, copy: &CopyConfig, create: bool) -> Result<Repo> {
    let store = crate::storage::open(&copy.repository).await?;
    let dest = match Repo::open(store.clone()).await {
        Ok(dest) => dest,
        Err(Error::NotInitialised { location, .. }) => {
            let present = store.list("").await?;
            if let Some(first) = present.first() {
                return Err(Error::Refused(format!(
                    "copy `{}`: {location} is not empty and is not a drctl repository (no repo.json; it holds `{}` and {} other object(s)); give the copy an empty bucket prefix or directory",
                    copy.name,
                    first.key,
                    present.len() - 1
                )));
            }
            if !create {
                let mut dest = primary.unwritten_twin(store);
                dest.copy_name = Some(copy.name.clone());
                return Ok(dest);
            }
            match store
                .put(MARKER_KEY, primary.marker_bytes().clone(), PutMode::Create)
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind == StorageErrorKind::PreconditionFailed => {}
                Err(e) => return Err(e.into()),
            }
            Repo::open(store).await?
        }
        Err(e) => return Err(e),
    };
    if !same_repository(&primary.marker, &dest.marker) {
        return Err(Error::Refused(format!(
            "copy `{}`: {} holds another drctl repository (created {} by {}), not a copy of {} (created {}); give the copy an empty bucket prefix or directory",
            copy.name,
            dest.store.location(),
            dest.marker.created_at.to_rfc3339(),
            dest.marker.created_by,
            primary.store.location(),
            primary.marker.created_at.to_rfc3339(),
        )));
    }
    let mut dest = dest.with_signing(primary.signing.clone()).await?;
    dest.copy_name = Some(copy.name.clone());
    Ok(dest)
}

/// A copy's marker is the primary's: the creation time (to the
/// nanosecond) says which repository it is. Recipients are not compared:
/// they change when keys are rotated.
fn same_repository(a: &repo::Marker, b: &repo::Marker) -> bool {
    a.created_at == b.created_at && a.created_by == b.created_by
}

/// Copies one policy's backups (and WAL, records, marks) from `source`
/// into `dest`.
///
/// # Errors
/// `Locked` when a prune or another copy holds the destination's lease;
/// `Integrity` when an object read back from the destination does not
/// match the manifest (it is removed; its backup is not listed there);
/// storage errors. What was copied before an error stays, complete.
pub async fn copy_policy(
    source: &Repo,
    dest: &Repo,
    copy: &CopyConfig,
    policy: &Policy,
    opts: &CopyOptions,
) -> Result<CopyReport> {
    let started = std::time::Instant::now();
    let name = policy.name.as_str();
    let from = catalog::load(source, name).await?;
    let to = catalog::load(dest, name).await?;
    let mut report = CopyReport {
        policy: name.to_string(),
        copy: copy.name.clone(),
        source: source.store.location(),
        destination: dest.store.location(),
        dry_run: opts.dry_run,
        backups: Vec::new(),
        wal_copied: 0,
        wal_present: 0,
        records_copied: 0,
        bytes: 0,
        seconds: 0.0,
        newest_source: from.backups.first().map(|m| m.point_in_time),
        newest_destination: to.backups.first().map(|m| m.point_in_time),
        skipped: from
            .untrusted
            .iter()
            .chain(&from.damaged)
            .map(|(k, why)| format!("{k}: {why}"))
            .collect(),
        warnings: Vec::new(),
    };
    let present_manifests: BTreeSet<String> = dest
        .store
        .list(&repo::backup_prefix(name))
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with("/manifest.json"))
        .collect();
    let keep = kept_ids(&from.backups, copy, policy);
    let lease = if opts.dry_run {
        None
    } else {
        Some(Lease::acquire(dest.store.clone(), name, "copy").await?)
    };
    let result = async {
        if matches!(policy.source, SourceConfig::PostgresCluster { .. }) {
            copy_wal(source, dest, name, opts, &mut report).await?;
        }
        for m in &from.backups {
            opts.check_cancel(name)?;
            let key = repo::manifest_key(name, &m.id);
            let size: u64 = m.objects().map(|o| o.digests.size).sum();
            let action = if present_manifests.contains(&key) {
                "present"
            } else if !keep.contains(&m.id) {
                "not kept"
            } else if opts.dry_run {
                report.bytes += size;
                "planned"
            } else {
                opts.say(format!(
                    "{name}: copying backup {} ({}) to {}",
                    m.id,
                    crate::progress::bytes(size),
                    copy.name
                ));
                // A prune of the primary must not delete it mid-copy.
                let hold = crate::repo::lease::hold_backup(source, name, &m.id, "copy").await;
                let copied = copy_backup(source, dest, m, opts).await;
                if let Some(h) = hold {
                    h.release().await;
                }
                report.bytes += copied?;
                "copied"
            };
            report.backups.push(BackupCopy {
                id: m.id.clone(),
                point_in_time: m.point_in_time,
                action: action.to_string(),
                bytes: size,
            });
        }
        copy_records(source, dest, name, opts, &mut report).await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    result?;
    if !opts.dry_run {
        report.newest_destination = catalog::newest(dest, name).await?.map(|m| m.point_in_time);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The backups the copy's retention keeps, as prune of the copy would
/// decide: copying one it would delete next time is wasted, and copying
/// it again after that prune would never end.
fn kept_ids(backups: &[Manifest], copy: &CopyConfig, policy: &Policy) -> BTreeSet<String> {
    let rules = copy.retention_for(policy);
    if !crate::retention::has_rules(rules) {
        return backups.iter().map(|m| m.id.clone()).collect();
    }
    let tz = policy
        .schedule
        .as_ref()
        .map_or(chrono_tz::UTC, |s| s.timezone);
    let list: Vec<(String, DateTime<Utc>)> = backups
        .iter()
        .map(|m| (m.id.clone(), m.point_in_time))
        .collect();
    crate::retention::select(&list, rules, tz)
        .into_iter()
        .filter(|d| d.action == crate::retention::Action::Keep)
        .map(|d| d.id)
        .collect()
}

/// Copies one backup: its objects, checked at the destination, then its
/// manifest. Returns the bytes written.
async fn copy_backup(source: &Repo, dest: &Repo, m: &Manifest, opts: &CopyOptions) -> Result<u64> {
    let mut bytes = 0;
    for record in m.objects() {
        opts.check_cancel(&m.policy)?;
        bytes += copy_object(
            source.store.as_ref(),
            dest.store.as_ref(),
            &record.key,
            record.version_id.as_deref(),
            Some(&record.digests),
        )
        .await?;
    }
    let key = repo::manifest_key(&m.policy, &m.id);
    let (body, _) = source.store.get(&key, None).await?;
    put_same(dest.store.as_ref(), &key, body.clone()).await?;
    Ok(bytes + body.len() as u64)
}

/// Writes a small object create-only; an object already there with the
/// same bytes (a copy interrupted after this write) is fine.
async fn put_same(store: &dyn Store, key: &str, body: Bytes) -> Result<bool> {
    match store.put(key, body.clone(), PutMode::Create).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind == StorageErrorKind::PreconditionFailed => {
            let (there, _) = store.get(key, None).await?;
            if there == body {
                Ok(false)
            } else {
                Err(Error::Integrity {
                    object: format!("{}/{key}", store.location()),
                    reason: "the copy holds different bytes at this key than the source; it was left as it is (compare both, and remove the wrong one)".into(),
                })
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Streams one large object from `src` to `dst`, part by part, then reads
/// it back from `dst` and compares its SHA-256 with what was read (and
/// with `expect`, the manifest's size and digest). Returns the bytes
/// written; 0 when a complete, matching object was already there.
///
/// # Errors
/// `Integrity` naming the object when the source does not match its
/// manifest or the destination does not give back what was written (the
/// destination's object is then removed); storage errors.
pub async fn copy_object(
    src: &dyn Store,
    dst: &dyn Store,
    key: &str,
    version: Option<&str>,
    expect: Option<&Digests>,
) -> Result<u64> {
    let fresh = || expect.map_or_else(Hasher::whole, Digests::stored_hasher);
    match dst.head(key, None).await {
        Ok(meta) => {
            // Left by an interrupted copy: keep it if it is right.
            let there = stored_digest(dst, key, fresh()).await?;
            let same = match expect {
                Some(d) => d.stored_mismatch(&there).is_none(),
                None => there == stored_digest_version(src, key, version, fresh()).await?,
            };
            if same {
                return Ok(0);
            }
            tracing::warn!(
                event = "copy_object_replaced",
                key,
                size = meta.size,
                "an object at the destination does not match the source; replacing it"
            );
            dst.delete(key).await?;
        }
        Err(e) if e.kind == StorageErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut stream = src.get_stream(key, version).await?;
    let mut upload = dst.create_upload(key).await?;
    let mut hasher = fresh();
    let mut parts = crate::storage::Parts::new(upload.as_ref());
    let streamed: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            parts.push(upload.as_mut(), chunk).await?;
        }
        if let Some(d) = expect
            && let Some(problem) = d.stored_mismatch(&hasher.result())
        {
            return Err(Error::Integrity {
                object: format!("{}/{key}", src.location()),
                reason: format!(
                    "the source does not match its manifest ({problem}); not copied (run `drctl verify`)"
                ),
            });
        }
        parts.finish(upload.as_mut()).await?;
        Ok(())
    }
    .await;
    if let Err(e) = streamed {
        let _ = upload.abort().await;
        return Err(e);
    }
    upload.complete().await?;
    let sent = hasher.result();
    let back = stored_digest(dst, key, fresh()).await?;
    if back != sent {
        let _ = dst.delete(key).await;
        return Err(Error::Integrity {
            object: format!("{}/{key}", dst.location()),
            reason: format!(
                "read back {} bytes that hash differently from the {} bytes written; removed, and the backup is not listed in the copy (run the copy again)",
                back.size, sent.size
            ),
        });
    }
    Ok(sent.size)
}

/// What the bytes stored at `key`, read as a stream, hash to with `hasher`
/// (see [`Digests::stored_hasher`]).
///
/// # Errors
/// Storage errors.
pub async fn stored_digest(store: &dyn Store, key: &str, hasher: Hasher) -> Result<Hashed> {
    stored_digest_version(store, key, None, hasher).await
}

/// As [`stored_digest`], of one version.
///
/// # Errors
/// Storage errors.
pub async fn stored_digest_version(
    store: &dyn Store,
    key: &str,
    version: Option<&str>,
    mut hasher: Hasher,
) -> Result<Hashed> {
    let mut stream = store.get_stream(key, version).await?;
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk?);
    }
    Ok(hasher.result())
}

/// Copies every archived WAL object of a policy that the destination lacks.
/// WAL keys are content-addressed (they carry the plaintext's SHA-256), so
/// one present at the destination is the same file.
async fn copy_wal(
    source: &Repo,
    dest: &Repo,
    policy: &str,
    opts: &CopyOptions,
    report: &mut CopyReport,
) -> Result<()> {
    let prefix = crate::wal::policy_prefix(policy);
    let there: BTreeMap<String, u64> = dest
        .store
        .list(&prefix)
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let wanted = source.store.list(&prefix).await?;
    let missing: Vec<_> = wanted
        .iter()
        .filter(|o| there.get(&o.key) != Some(&o.size))
        .collect();
    report.wal_present = wanted.len() - missing.len();
    if missing.is_empty() {
        return Ok(());
    }
    if opts.dry_run {
        report.wal_copied = missing.len();
        report.bytes += missing.iter().map(|o| o.size).sum::<u64>();
        return Ok(());
    }
    opts.say(format!(
        "{policy}: copying {} WAL object(s) to {}",
        missing.len(),
        report.copy
    ));
    for o in missing {
        opts.check_cancel(policy)?;
        report.bytes += copy_object(
            source.store.as_ref(),
            dest.store.as_ref(),
            &o.key,
            None,
            None,
        )
        .await?;
        report.wal_copied += 1;
    }
    Ok(())
}

/// Copies drill records, run records and marks the destination lacks,
/// as they are (signatures and hash chain intact), and the attestations
/// that vouch for older unsigned ones.
async fn copy_records(
    source: &Repo,
    dest: &Repo,
    policy: &str,
    opts: &CopyOptions,
    report: &mut CopyReport,
) -> Result<()> {
    let drills = crate::drill::drills_prefix(policy);
    for prefix in [
        drills.clone(),
        crate::repo::runs::runs_prefix(policy),
        format!("marks/{policy}/"),
        "attestations/".to_string(),
    ] {
        let there: BTreeSet<String> = dest
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let here: Vec<String> = source
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.ends_with(".json"))
            .collect();
        let ours: BTreeSet<&String> = here.iter().collect();
        if prefix == drills
            && let Some(own) = there.iter().find(|k| !ours.contains(k))
        {
            // A drill run from the copy linked its record to the copy's
            // chain; the source's later records link to another one.
            report.warnings.push(format!(
                "{policy}: the copy holds a drill record of its own ({own}); the source's drill records are no longer copied there, so that the copy's chain stays whole"
            ));
            continue;
        }
        let missing: Vec<String> = here.into_iter().filter(|k| !there.contains(k)).collect();
        if opts.dry_run {
            report.records_copied += missing.len();
            continue;
        }
        let copied: Vec<Result<bool>> = futures::stream::iter(missing)
            .map(|key| async move {
                let (body, _) = source.store.get(&key, None).await?;
                put_same(dest.store.as_ref(), &key, body).await
            })
            .buffer_unordered(RECORD_CONCURRENCY)
            .collect()
            .await;
        for c in copied {
            if c? {
                report.records_copied += 1;
            }
        }
    }
    Ok(())
}
