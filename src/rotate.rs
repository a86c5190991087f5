//! `drctl key rotate`: every object a policy's backups and WAL archive are
//! made of, re-encrypted to a new recipient set without decrypting the data.
//!
//! An age object is a header that wraps the file key to each recipient and
//! a payload encrypted under that file key; a new header over the same
//! payload (`pipeline::rewrap`) is a rotation. The payload's SHA-256 is in
//! the manifest (recorded at backup), so the rotated object is checked by
//! its new header's digest and the unchanged payload digest, and S3 copies
//! the payload inside the bucket: a rotation moves a header and one part per
//! object through this host, whatever the backup's size.
//!
//! For each backup, in an order that keeps it readable at every step:
//!
//! 1. write each object, rewrapped, under a new key next to the old one
//!    (`data.pgdump.zst.age` → `data.pgdump.k2.zst.age`), create-only;
//! 2. replace the manifest (compare-and-swap on its ETag, signed) with one
//!    naming the new objects and recipients;
//! 3. delete the old objects, unless a restore or drill holds the backup
//!    (the next rotation removes them).
//!
//! A crash before 2 leaves the old manifest and objects, readable by the
//! old key set, and unreferenced new objects that the next run replaces; a
//! crash after 2 leaves a rotated backup and old objects that the next run
//! deletes. So every backup stays readable by one of the two key sets, and
//! running the command again finishes the work.
//!
//! WAL objects have no manifest and their keys are content addresses, so
//! each is replaced in place in one conditional write, and the position is
//! kept in `rotation/<policy>.json` so that a second run resumes there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, StorageErrorKind};
use crate::pipeline::crypto::OpenError;
use crate::pipeline::hash::{Hasher, MAX_HEADER_BYTES, header_end};
use crate::pipeline::rewrap;
use crate::repo::lease::{self, Lease};
use crate::repo::manifest::{Manifest, ObjectRecord};
use crate::repo::{self, Repo, catalog};
use crate::storage::{PutMode, Store};

/// What a first read of an object asks for: more than any header of a few
/// recipients, so that one request usually does.
const HEAD_READ_BYTES: u64 = 64 * 1024;
/// WAL objects between two saves of the position.
const WAL_SAVE_EVERY: usize = 50;

pub type Say = Arc<dyn Fn(String) + Send + Sync>;

pub struct RotateOptions {
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub dry_run: bool,
    /// Also delete, for good, the versions a versioned bucket keeps of the
    /// objects rotated away (where Object Lock allows).
    pub purge_versions: bool,
    pub cancel: Arc<AtomicBool>,
    pub say: Option<Say>,
}

impl RotateOptions {
    fn say(&self, line: String) {
        if let Some(say) = &self.say {
            say(line);
        }
    }

    fn check_cancel(&self, policy: &str) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted(format!(
                "key rotation of `{policy}` stopped; every backup is readable by the old or the new keys, \
                 and running `drctl key rotate` again with the same keys finishes it"
            )));
        }
        Ok(())
    }

    /// The recipients an object encrypted to `current` should have.
    pub fn target(&self, current: &[String]) -> Vec<String> {
        let mut out: Vec<String> = current
            .iter()
            .filter(|r| !self.remove.contains(r))
            .cloned()
            .collect();
        for a in &self.add {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

/// What a rotation of one policy did, or (dry run) would do.
#[derive(Debug, Default, Serialize)]
pub struct RotateReport {
    pub policy: String,
    pub location: String,
    pub dry_run: bool,
    /// Trusted backups of the policy.
    pub backups: usize,
    /// Rotated now (or to rotate).
    pub rotated: Vec<String>,
    /// Already readable by the new key set only.
    pub already: usize,
    /// Backups whose old objects were kept because a restore or drill
    /// holds them; the next rotation removes them.
    pub held: Vec<String>,
    pub old_objects_removed: usize,
    pub wal_objects: usize,
    pub wal_rotated: usize,
    /// Bytes of the objects rotated: what downloading and re-encrypting
    /// them would have moved each way.
    pub bytes_of_objects: u64,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    /// Bytes the store copied inside itself (S3 UploadPartCopy).
    pub bytes_copied_in_store: u64,
    /// Manifests that are not trusted (signing on): never rotated, since a
    /// signed rotation would bless them.
    pub untrusted: Vec<String>,
    /// Backups left as they are because an object is in an archive storage
    /// class (GLACIER, DEEP_ARCHIVE) and has no retrieved copy.
    pub archived: Vec<String>,
    /// With `purge_versions`: old versions deleted for good, and those the
    /// store kept (Object Lock), as `key (version): reason`.
    pub versions_purged: usize,
    pub versions_retained: Vec<String>,
}

/// Where a policy's WAL rotation stands, so that a second run resumes.
#[derive(Debug, Serialize, Deserialize)]
struct WalProgress {
    recipients: Vec<String>,
    started_at: DateTime<Utc>,
    /// Every WAL key up to this one (in key order) is rotated.
    done_through: Option<String>,
}

fn progress_key(policy: &str) -> String {
    format!("rotation/{policy}.json")
}

/// Rotates one policy's backups and WAL archive in `repo`.
///
/// # Errors
/// `Key` when the identities read no object's header; `Integrity` when an
/// object does not match its manifest (it is left as it is); storage
/// errors; `Interrupted` when cancelled.
pub async fn rotate_policy(
    repo: &Repo,
    policy: &str,
    identities: &[age::x25519::Identity],
    wal_recipients: &[String],
    opts: &RotateOptions,
) -> Result<RotateReport> {
    let mut report = RotateReport {
        policy: policy.to_string(),
        location: repo.store.location(),
        dry_run: opts.dry_run,
        ..RotateReport::default()
    };
    let lease = if opts.dry_run {
        None
    } else {
        Some(Lease::acquire(repo.store.clone(), policy, "key rotate").await?)
    };
    let result = async {
        rotate_backups(repo, policy, identities, opts, &mut report).await?;
        rotate_wal(repo, policy, identities, wal_recipients, opts, &mut report).await
    }
    .await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    result.map(|()| report)
}

async fn rotate_backups(
    repo: &Repo,
    policy: &str,
    identities: &[age::x25519::Identity],
    opts: &RotateOptions,
    report: &mut RotateReport,
) -> Result<()> {
    let catalog = catalog::load(repo, policy).await?;
    report.untrusted = catalog.untrusted.iter().map(|(k, _)| k.clone()).collect();
    report.backups = catalog.backups.len();
    let mut by_dir: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in repo.store.list(&repo::backup_prefix(policy)).await? {
        if let Some((dir, _)) = o.key.rsplit_once('/') {
            by_dir.entry(format!("{dir}/")).or_default().push(o.key);
        }
    }
    let held: BTreeSet<String> = if opts.dry_run {
        BTreeSet::new()
    } else {
        lease::list_holds(repo.store.as_ref(), policy, Utc::now())
            .await?
            .into_iter()
            .map(|h| h.backup_id)
            .collect()
    };
    for m in &catalog.backups {
        opts.check_cancel(policy)?;
        let target = opts.target(&m.recipients);
        if target.is_empty() {
            return Err(Error::Usage(format!(
                "backup {} of `{policy}` is encrypted to {} only; removing it would leave no key that reads the backup \
                 (add a recipient with --add)",
                m.id,
                m.recipients.join(", ")
            )));
        }
        let dir = repo::backup_dir(policy, &m.id);
        let is_held = held.contains(&m.id);
        if same_set(&target, &m.recipients) {
            report.already += 1;
            // Left by a rotation that stopped after its manifest was written.
            let referenced: BTreeSet<&str> = m.objects().map(|r| r.key.as_str()).collect();
            let manifest = repo::manifest_key(policy, &m.id);
            let stale: Vec<&String> = by_dir
                .get(&dir)
                .into_iter()
                .flatten()
                .filter(|k| **k != manifest && !referenced.contains(k.as_str()))
                .collect();
            if opts.dry_run || stale.is_empty() {
                continue;
            }
            if is_held {
                report.held.push(m.id.clone());
                continue;
            }
            for k in stale {
                repo.store.delete(k).await?;
                report.old_objects_removed += 1;
                if opts.purge_versions {
                    purge_versions(repo.store.as_ref(), k, None, report).await?;
                }
            }
            continue;
        }
        report.rotated.push(m.id.clone());
        report.bytes_of_objects += m.objects().map(|r| r.digests.size).sum::<u64>();
        if opts.dry_run {
            // About one first part per object through this host on S3.
            for r in m.objects() {
                let moved = move_estimate(repo, r.digests.size, r.digests.payload_sha256.is_some());
                report.bytes_downloaded += moved;
                report.bytes_uploaded += moved;
            }
            continue;
        }
        opts.say(format!(
            "{policy}: rotating backup {} ({} → {} recipient(s))",
            m.id,
            m.recipients.len(),
            target.len()
        ));
        match rotate_backup(repo, m, &target, identities, is_held, opts, report).await {
            Ok(()) => {}
            Err(Error::Archived(why)) => {
                report.rotated.pop();
                opts.say(format!("{policy}: backup {} not rotated: {why}", m.id));
                report.archived.push(m.id.clone());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bytes a rotation of one object moves through this host, each way: the
/// header and S3's minimum first part when the store copies the rest, the
/// whole object otherwise (a local directory, a small object, or a backup
/// from before payload digests, which is read once to compute it).
fn move_estimate(repo: &Repo, size: u64, has_payload_digest: bool) -> u64 {
    let first = crate::storage::s3::SPLICE_FIRST_PART_BYTES as u64;
    if repo.store.local_root().is_some() || !has_payload_digest || size < 2 * first {
        size
    } else {
        first
    }
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

async fn rotate_backup(
    repo: &Repo,
    m: &Manifest,
    target: &[String],
    identities: &[age::x25519::Identity],
    is_held: bool,
    opts: &RotateOptions,
    report: &mut RotateReport,
) -> Result<()> {
    let recipients = crate::pipeline::crypto::parse_recipients(target)?;
    let manifest_key = repo::manifest_key(&m.policy, &m.id);
    // The manifest as stored now, with its ETag for the swap below.
    let (body, meta) = repo.store.get(&manifest_key, None).await?;
    let etag = meta.etag.ok_or_else(|| {
        Error::Refused(format!(
            "{} gave no ETag for `{manifest_key}`, so the manifest cannot be replaced safely",
            repo.store.location()
        ))
    })?;
    let stored: Manifest = serde_json::from_slice(&body).map_err(|e| Error::Integrity {
        object: format!("{}/{manifest_key}", repo.store.location()),
        reason: format!("not a valid manifest: {e}"),
    })?;
    if stored.recipients != m.recipients || stored.data.key != m.data.key {
        return Err(Error::Refused(format!(
            "the manifest of backup {} changed while the rotation read it; run `drctl key rotate` again",
            m.id
        )));
    }
    let mut rotated = m.clone();
    let mut written = Vec::new();
    let outcome = async {
        rotated.data = rotate_object(repo, &m.data, identities, &recipients, report).await?;
        written.push(rotated.data.key.clone());
        if let Some(f) = &m.fingerprint {
            let r = rotate_object(repo, f, identities, &recipients, report).await?;
            written.push(r.key.clone());
            rotated.fingerprint = Some(r);
        }
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = outcome {
        for k in &written {
            let _ = repo.store.delete(k).await;
        }
        return Err(e);
    }
    // Version ids name the primary's versions in a copy's manifests; keep
    // the manifest's own convention.
    if repo.copy_name.is_some() {
        rotated.data.version_id = None;
        if let Some(f) = &mut rotated.fingerprint {
            f.version_id = None;
        }
    }
    rotated.recipients = target.to_vec();
    rotated.format = repo::ROTATED_FORMAT;
    let json = serde_json::to_vec_pretty(&rotated).expect("manifest serialises");
    let signed = repo.sign(&manifest_key, json)?;
    match repo
        .store
        .put(&manifest_key, signed, PutMode::IfMatch(etag))
        .await
    {
        Ok(_) => {}
        Err(e) => {
            for k in &written {
                let _ = repo.store.delete(k).await;
            }
            if e.kind == StorageErrorKind::PreconditionFailed || e.is_not_found() {
                return Err(Error::Refused(format!(
                    "the manifest of backup {} changed or was removed during the rotation (a prune?); \
                     its new objects were removed; run `drctl key rotate` again",
                    m.id
                )));
            }
            return Err(e.into());
        }
    }
    if is_held {
        report.held.push(m.id.clone());
        return Ok(());
    }
    for r in m.objects() {
        repo.store.delete(&r.key).await?;
        report.old_objects_removed += 1;
        if opts.purge_versions {
            purge_versions(repo.store.as_ref(), &r.key, None, report).await?;
        }
    }
    Ok(())
}

/// Deletes for good the versions of `key` (every one, or only `only`) and
/// its delete markers: what a versioned bucket keeps of an object that a
/// rotation replaced. A version Object Lock keeps is reported, not an error.
async fn purge_versions(
    store: &dyn Store,
    key: &str,
    only: Option<&str>,
    report: &mut RotateReport,
) -> Result<()> {
    let versions: Vec<String> = match only {
        Some(v) => vec![v.to_string()],
        None => store
            .list_versions(key)
            .await?
            .into_iter()
            .filter(|v| v.key == key)
            .map(|v| v.version_id)
            .collect(),
    };
    for v in versions {
        match store.delete_version(key, &v).await {
            Ok(()) => report.versions_purged += 1,
            Err(e) if e.kind == StorageErrorKind::AccessDenied => report
                .versions_retained
                .push(format!("{key} ({v}): {}", e.detail)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The next generation's key: `data.pgdump.zst.age` → `data.pgdump.k2.zst.age`
/// → `data.pgdump.k3.zst.age`.
pub fn next_key(key: &str) -> String {
    let (stem, suffix) = match key.strip_suffix(".zst.age") {
        Some(stem) => (stem, ".zst.age"),
        None => (key, ""),
    };
    if let Some((base, n)) = stem.rsplit_once(".k")
        && let Ok(n) = n.parse::<u32>()
    {
        return format!("{base}.k{}{suffix}", n + 1);
    }
    format!("{stem}.k2{suffix}")
}

/// Reads as much of an object as its age header takes.
async fn read_header(store: &dyn Store, key: &str, version: Option<&str>) -> Result<Bytes> {
    let head = store.get_head(key, version, HEAD_READ_BYTES).await?;
    if header_end(&head).is_some() || (head.len() as u64) < HEAD_READ_BYTES {
        return Ok(head);
    }
    Ok(store
        .get_head(key, version, MAX_HEADER_BYTES as u64)
        .await?)
}

fn open_error(e: OpenError, object: &str) -> Error {
    match e {
        OpenError::NoMatchingKey => Error::Key(format!(
            "the identity file reads none of the recipients of `{object}`; key rotate needs an identity of a \
             key the object is encrypted to now (keep the old identity in the file until the rotation is done)"
        )),
        other => Error::Integrity {
            object: object.to_string(),
            reason: other.to_string(),
        },
    }
}

async fn rotate_object(
    repo: &Repo,
    r: &ObjectRecord,
    identities: &[age::x25519::Identity],
    recipients: &[age::x25519::Recipient],
    report: &mut RotateReport,
) -> Result<ObjectRecord> {
    let store = repo.store.as_ref();
    let object = format!("{}/{}", store.location(), r.key);
    let version = if repo.copy_name.is_some() {
        None
    } else {
        r.version_id.as_deref()
    };
    let head = read_header(store, &r.key, version)
        .await
        .map_err(|e| match e {
            Error::Storage(e) => crate::sealed::fetch_error(e, &object),
            other => other,
        })?;
    report.bytes_downloaded += head.len() as u64;
    let (header, old_size) =
        rewrap::rewrap(&head, identities, recipients).map_err(|e| open_error(e, &object))?;
    let integrity = |reason: String| Error::Integrity {
        object: object.clone(),
        reason,
    };
    let want = &r.digests;
    if want.header_size.is_some_and(|h| h != old_size as u64)
        || want
            .header_sha256
            .as_ref()
            .is_some_and(|h| *h != hex::encode(Sha256::digest(&head[..old_size])))
    {
        return Err(integrity(
            "its age header differs from the one the manifest records; not rotated (run `drctl verify --read-data`)"
                .into(),
        ));
    }
    let payload_sha256 = match &want.payload_sha256 {
        Some(p) => p.clone(),
        None => {
            // A backup from before payload digests: read it once, check it
            // against the manifest, and record the payload's digest.
            let got =
                crate::copy::stored_digest_version(store, &r.key, version, Hasher::new(true, true))
                    .await?;
            report.bytes_downloaded += got.size;
            if let Some(problem) = want.stored_mismatch(&got) {
                return Err(integrity(format!("{problem}; not rotated")));
            }
            got.split
                .ok_or_else(|| integrity("no complete age header".into()))?
                .payload_sha256
        }
    };
    let new_key = next_key(&r.key);
    // Left by a rotation that stopped before its manifest was written.
    match store.head(&new_key, None).await {
        Ok(_) => store.delete(&new_key).await?,
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let header_len = header.len() as u64;
    let header_sha256 = hex::encode(Sha256::digest(&header));
    let spliced = store
        .put_spliced(
            &new_key,
            Bytes::from(header),
            &r.key,
            version,
            old_size as u64,
        )
        .await?;
    report.bytes_downloaded += spliced.downloaded;
    report.bytes_uploaded += spliced.uploaded;
    report.bytes_copied_in_store += spliced.copied_in_store;
    let size = header_len + (want.size - old_size as u64);
    let meta = store
        .head(&new_key, spliced.stored.version_id.as_deref())
        .await?;
    if meta.size != size {
        let _ = store.delete(&new_key).await;
        return Err(Error::Integrity {
            object: format!("{}/{new_key}", store.location()),
            reason: format!(
                "stored size {} differs from the {size} bytes written; removed",
                meta.size
            ),
        });
    }
    Ok(ObjectRecord {
        key: new_key,
        version_id: spliced.stored.version_id,
        content: r.content.clone(),
        digests: crate::pipeline::Digests {
            plaintext_size: want.plaintext_size,
            plaintext_sha256: want.plaintext_sha256.clone(),
            size,
            sha256: None,
            header_size: Some(header_len),
            header_sha256: Some(header_sha256),
            payload_sha256: Some(payload_sha256),
        },
    })
}

async fn rotate_wal(
    repo: &Repo,
    policy: &str,
    identities: &[age::x25519::Identity],
    target: &[String],
    opts: &RotateOptions,
    report: &mut RotateReport,
) -> Result<()> {
    let store = repo.store.as_ref();
    let mut keys: Vec<(String, u64)> = store
        .list(&crate::wal::policy_prefix(policy))
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    keys.sort();
    report.wal_objects = keys.len();
    let pkey = progress_key(policy);
    let mut progress = match store.get(&pkey, None).await {
        Ok((body, _)) => serde_json::from_slice::<WalProgress>(&body)
            .ok()
            .filter(|p| same_set(&p.recipients, target)),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    }
    .unwrap_or(WalProgress {
        recipients: target.to_vec(),
        started_at: Utc::now(),
        done_through: None,
    });
    let todo: Vec<&(String, u64)> = keys
        .iter()
        .filter(|(k, _)| progress.done_through.as_ref().is_none_or(|d| k > d))
        .collect();
    report.wal_rotated = todo.len();
    report.bytes_of_objects += todo.iter().map(|(_, s)| s).sum::<u64>();
    if opts.dry_run {
        let moved: u64 = todo.iter().map(|(_, s)| s).sum();
        report.bytes_downloaded += moved;
        report.bytes_uploaded += moved;
        return Ok(());
    }
    if todo.is_empty() {
        let _ = store.delete(&pkey).await;
        return Ok(());
    }
    opts.say(format!(
        "{policy}: rotating {} WAL object(s){}",
        todo.len(),
        if progress.done_through.is_some() {
            " (resuming)"
        } else {
            ""
        }
    ));
    let recipients = crate::pipeline::crypto::parse_recipients(target)?;
    let mut done = 0;
    let result = async {
        for (key, _) in &todo {
            opts.check_cancel(policy)?;
            let object = format!("{}/{key}", store.location());
            let (body, meta) = store.get(key, None).await?;
            report.bytes_downloaded += body.len() as u64;
            let (header, old_size) = rewrap::rewrap(&body, identities, &recipients)
                .map_err(|e| open_error(e, &object))?;
            let mut new = header;
            new.extend_from_slice(&body[old_size..]);
            report.bytes_uploaded += new.len() as u64;
            let etag = meta.etag.unwrap_or_default();
            store.replace_data(key, Bytes::from(new), &etag).await?;
            if opts.purge_versions
                && let Some(old) = &meta.version_id
            {
                purge_versions(store, key, Some(old), report).await?;
            }
            progress.done_through = Some(key.clone());
            done += 1;
            if done % WAL_SAVE_EVERY == 0 {
                save_progress(store, &pkey, &progress).await?;
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = result {
        // Stopped or failed: the next run starts after what is done.
        if progress.done_through.is_some() {
            let _ = save_progress(store, &pkey, &progress).await;
        }
        return Err(e);
    }
    store.delete(&pkey).await?;
    Ok(())
}

async fn save_progress(store: &dyn Store, key: &str, p: &WalProgress) -> Result<()> {
    let body = Bytes::from(serde_json::to_vec_pretty(p).expect("progress serialises"));
    // The policy's lease makes this the only writer; replace what is there.
    let _ = store.delete(key).await;
    store.put(key, body, PutMode::Create).await?;
    Ok(())
}

/// After a rotation: `repo.json` says format 2 (rotated manifests record
/// their digests in halves, which format 1 readers would call damaged) and,
/// when every policy was rotated, the new recipients.
///
/// # Errors
/// Storage errors, and `Key` without a signing key where signing is on.
pub async fn update_marker(repo: &Repo, recipients: Option<&[String]>) -> Result<()> {
    let (body, meta) = repo.store.get(repo::MARKER_KEY, None).await?;
    let mut marker: repo::Marker = serde_json::from_slice(&body).map_err(|e| Error::Integrity {
        object: format!("{}/{}", repo.store.location(), repo::MARKER_KEY),
        reason: format!("not a drctl repository marker: {e}"),
    })?;
    let mut changed = false;
    if marker.format < repo::ROTATED_FORMAT {
        marker.format = repo::ROTATED_FORMAT;
        changed = true;
    }
    if let Some(r) = recipients
        && marker.recipients != r
    {
        marker.recipients = r.to_vec();
        changed = true;
    }
    if !changed {
        return Ok(());
    }
    let json = serde_json::to_vec_pretty(&marker).expect("marker serialises");
    let signed = repo.sign(repo::MARKER_KEY, json)?;
    let etag = meta.etag.unwrap_or_default();
    repo.store
        .put(repo::MARKER_KEY, signed, PutMode::IfMatch(etag))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_later_generations() {
        let d = "backups/p/20261201T000000Z-0000abcd/data.pgdump.zst.age";
        let d2 = next_key(d);
        assert_eq!(
            d2,
            "backups/p/20261201T000000Z-0000abcd/data.pgdump.k2.zst.age"
        );
        assert_eq!(
            next_key(&d2),
            "backups/p/20261201T000000Z-0000abcd/data.pgdump.k3.zst.age"
        );
        assert_eq!(
            next_key("a/fingerprint.json.k9.zst.age"),
            "a/fingerprint.json.k10.zst.age"
        );
    }

    #[test]
    fn the_target_drops_removed_keys_and_appends_new_ones_once() {
        let opts = RotateOptions {
            add: vec!["c".into(), "a".into()],
            remove: vec!["b".into()],
            dry_run: true,
            purge_versions: false,
            cancel: Arc::default(),
            say: None,
        };
        assert_eq!(opts.target(&["a".into(), "b".into()]), vec!["a", "c"]);
        assert!(same_set(
            &["x".into(), "y".into()],
            &["y".into(), "x".into()]
        ));
    }
}
