//! What backups a policy has, read from the repository itself (there is no
//! local state), and which one a `--to` time picks.

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;

use super::Repo;
use super::manifest::Manifest;
use crate::error::{Error, Result};

/// Manifests fetched at once when listing.
pub const LIST_CONCURRENCY: usize = 16;

#[derive(Debug, Default)]
pub struct Catalog {
    /// Newest point in time first.
    pub backups: Vec<Manifest>,
    /// Manifests that exist but cannot be read: `(key, reason)`.
    pub damaged: Vec<(String, String)>,
    /// With signing on, manifests without a trusted signature:
    /// `(key, security warning)`. Never listed, restored or counted.
    pub untrusted: Vec<(String, String)>,
}

/// Why a manifest read from `key` is not a backup: untrusted (first) or
/// damaged (second).
enum Rejected {
    Untrusted(String),
    Damaged(String),
}

/// The manifest in `bytes`, read from `key`, if it is a trusted backup of
/// `policy`.
fn parse(repo: &Repo, policy: &str, key: &str, bytes: &[u8]) -> Result<Manifest, Rejected> {
    repo.check_signature(key, bytes)
        .map_err(Rejected::Untrusted)?;
    let mut m = serde_json::from_slice::<Manifest>(bytes)
        .map_err(|e| Rejected::Damaged(format!("not a valid manifest: {e}")))?;
    m.check_location(policy, key).map_err(Rejected::Damaged)?;
    if repo.copy_name.is_some() {
        // A copy's manifest is the primary's, bytes and signature; the
        // version ids in it name versions in the primary's bucket.
        m.data.version_id = None;
        if let Some(f) = &mut m.fingerprint {
            f.version_id = None;
        }
    }
    Ok(m)
}

/// The keys of every manifest of a policy, in key order.
async fn manifest_keys(repo: &Repo, policy: &str) -> Result<Vec<String>> {
    Ok(repo
        .store
        .list(&super::backup_prefix(policy))
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with("/manifest.json"))
        .collect())
}

/// Reads every manifest of a policy.
///
/// # Errors
/// Storage errors from listing; unreadable manifests go to `damaged`.
pub async fn load(repo: &Repo, policy: &str) -> Result<Catalog> {
    let keys = manifest_keys(repo, policy).await?;
    // Each manifest is fetched and checked in a task of its own, so that
    // parsing and signature checks spread over the runtime's threads.
    let shared = std::sync::Arc::new(repo.clone());
    let results: Vec<(String, Result<Manifest, Rejected>)> = futures::stream::iter(keys)
        .map(|key| {
            let repo = shared.clone();
            let policy = policy.to_string();
            tokio::spawn(async move {
                let parsed = match repo.store.get(&key, None).await {
                    Ok((bytes, _)) => parse(&repo, &policy, &key, &bytes),
                    Err(e) => Err(Rejected::Damaged(e.to_string())),
                };
                (key, parsed)
            })
        })
        .buffer_unordered(LIST_CONCURRENCY)
        .map(|joined| joined.expect("a manifest task does not panic"))
        .collect()
        .await;
    let mut catalog = Catalog::default();
    for (key, parsed) in results {
        match parsed {
            Ok(m) => catalog.backups.push(m),
            Err(Rejected::Damaged(reason)) => catalog.damaged.push((key, reason)),
            Err(Rejected::Untrusted(reason)) => catalog.untrusted.push((key, reason)),
        }
    }
    catalog.untrusted.sort();
    catalog
        .backups
        .sort_by(|a, b| b.point_in_time.cmp(&a.point_in_time).then(b.id.cmp(&a.id)));
    catalog.damaged.sort();
    Ok(catalog)
}

/// The newest readable backup of a policy, fetching only its manifest (and
/// older ones only while newer ones are damaged). The daemon calls this for
/// every policy, so it must not read every manifest as [`load`] does.
///
/// Ids sort by start time, which orders backups as their points in time do
/// (a backup's snapshot is taken within moments of its start).
///
/// # Errors
/// Storage errors from listing.
pub async fn newest(repo: &Repo, policy: &str) -> Result<Option<Manifest>> {
    let mut keys = manifest_keys(repo, policy).await?;
    keys.sort_unstable_by(|a, b| b.cmp(a));
    // Ids carry whole seconds and then a random suffix, so backups begun
    // in the same second are read together and ordered by point in time.
    let second = |key: &str| -> String {
        let id = key.rsplit('/').nth(1).unwrap_or(key);
        id.split('-').next().unwrap_or(id).to_string()
    };
    let mut i = 0;
    while i < keys.len() {
        let group = second(&keys[i]);
        let mut best: Option<Manifest> = None;
        while i < keys.len() && second(&keys[i]) == group {
            let key = &keys[i];
            i += 1;
            let bytes = match repo.store.get(key, None).await {
                Ok((bytes, _)) => bytes,
                // Pruned between the listing and now.
                Err(e) if e.kind == crate::error::StorageErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            match parse(repo, policy, key, &bytes) {
                Ok(m) => {
                    if best
                        .as_ref()
                        .is_none_or(|b| m.point_in_time > b.point_in_time)
                    {
                        best = Some(m);
                    }
                }
                Err(Rejected::Untrusted(why)) => {
                    tracing::warn!(event = "untrusted_object", "{why}");
                }
                Err(Rejected::Damaged(_)) => {}
            }
        }
        if best.is_some() {
            return Ok(best);
        }
    }
    Ok(None)
}

/// The backup `--to` picks, and how far before the target it is.
#[derive(Debug, PartialEq)]
pub struct Selection<'a> {
    pub backup: &'a Manifest,
    pub gap: Duration,
}

/// Picks the newest backup whose point in time is at or before `target`.
/// `backups` must be newest first, as [`load`] returns them.
///
/// # Errors
/// `NoBackup`, saying whether there are none at all or none early enough.
pub fn select<'a>(
    policy: &str,
    backups: &'a [Manifest],
    target: DateTime<Utc>,
) -> Result<Selection<'a>> {
    // Points in time are shown to the second, and a time copied from
    // `list` must pick the backup on that line, not the one before it.
    let shown = |t: DateTime<Utc>| chrono::SubsecRound::trunc_subsecs(t, 0);
    if let Some(b) = backups.iter().find(|b| shown(b.point_in_time) <= target) {
        return Ok(Selection {
            backup: b,
            gap: (target - b.point_in_time).max(Duration::zero()),
        });
    }
    Err(Error::NoBackup(match backups.last() {
        None => format!("policy `{policy}` has no backups yet; run `drctl backup {policy}` first"),
        Some(first) => format!(
            "no backup of `{policy}` is at or before {} UTC; the first one is from {} UTC",
            target.format(crate::timespec::SECONDS),
            first.point_in_time.format(crate::timespec::SECONDS)
        ),
    }))
}

impl Catalog {
    /// [`select`], refusing when a damaged manifest stands where the answer
    /// would be: silently restoring an older backup instead would widen the
    /// data-loss window without saying so.
    ///
    /// # Errors
    /// `Integrity` naming the damaged manifest; otherwise as [`select`].
    pub fn select(&self, policy: &str, target: DateTime<Utc>) -> Result<Selection<'_>> {
        let untrusted = entries(&self.untrusted)
            .filter(|(id, _, _)| id_time(id).is_some_and(|t| t <= target))
            .max_by(|a, b| a.0.cmp(b.0));
        let chosen = select(policy, &self.backups, target);
        match (&chosen, untrusted) {
            (Ok(s), Some((id, key, reason))) if id > s.backup.id.as_str() => {
                return Err(untrusted_error(key, reason, Some(&s.backup.id)));
            }
            (Err(_), Some((_, key, reason))) => return Err(untrusted_error(key, reason, None)),
            _ => {}
        }
        let damaged = self
            .damaged_entries()
            .filter(|(id, _, _)| id_time(id).is_some_and(|t| t <= target))
            .max_by(|a, b| a.0.cmp(b.0));
        let chosen = select(policy, &self.backups, target);
        match (chosen, damaged) {
            (Ok(s), Some((id, key, reason))) if id > s.backup.id.as_str() => {
                Err(damaged_error(key, reason, Some(&s.backup.id)))
            }
            (Err(_), Some((_, key, reason))) => Err(damaged_error(key, reason, None)),
            (chosen, _) => chosen,
        }
    }

    /// [`find`], naming a damaged manifest when the id is one.
    ///
    /// # Errors
    /// `Integrity` for a damaged manifest; otherwise as [`find`].
    pub fn find(&self, policy: &str, id: &str) -> Result<&Manifest> {
        let found = find(policy, &self.backups, id);
        if found.is_err()
            && let Some((_, key, reason)) =
                entries(&self.untrusted).find(|(d, _, _)| d.starts_with(id))
        {
            return Err(untrusted_error(key, reason, None));
        }
        if found.is_err()
            && let Some((_, key, reason)) =
                self.damaged_entries().find(|(d, _, _)| d.starts_with(id))
        {
            return Err(damaged_error(key, reason, None));
        }
        found
    }

    fn damaged_entries(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        entries(&self.damaged)
    }

    /// `Untrusted` when a manifest without a trusted signature claims (by
    /// its id) to be newer than `chosen`, the backup a command is about to
    /// use: without it, it might have been the one used.
    ///
    /// # Errors
    /// `Untrusted` naming those manifests.
    pub fn refuse_untrusted_newer(&self, chosen: &str) -> Result<()> {
        untrusted_summary(
            entries(&self.untrusted)
                .filter(|(id, _, _)| *id > chosen)
                .map(|(_, key, _)| key),
        )
    }

    /// `Untrusted` naming every manifest set aside for its signature, for
    /// a command that would otherwise have counted them (list, verify,
    /// prune); `Ok` when there are none.
    ///
    /// # Errors
    /// `Untrusted` when there are some.
    pub fn refuse_untrusted(&self) -> Result<()> {
        untrusted_summary(self.untrusted.iter().map(|(k, _)| k.as_str()))
    }
}

/// `Untrusted` listing `keys`, if any.
///
/// # Errors
/// When `keys` is not empty.
pub fn untrusted_summary<'a>(keys: impl Iterator<Item = &'a str>) -> Result<()> {
    let keys: Vec<String> = keys.map(crate::signing::printable).collect();
    if keys.is_empty() {
        return Ok(());
    }
    Err(Error::Untrusted(format!(
        "{} object(s) without a trusted signature were ignored: {}. Whoever wrote them has write access to the repository but not the signing key; see \"Signing\" in docs/operations.md",
        keys.len(),
        keys.join(", ")
    )))
}

/// `(id, key, reason)` of manifests given as `(key, reason)`.
fn entries(list: &[(String, String)]) -> impl Iterator<Item = (&str, &str, &str)> {
    list.iter().filter_map(|(key, reason)| {
        key.split('/')
            .nth(2)
            .map(|id| (id, key.as_str(), reason.as_str()))
    })
}

fn untrusted_error(key: &str, reason: &str, older: Option<&str>) -> Error {
    Error::Untrusted(match older {
        Some(id) => format!(
            "{reason}; it stands where the backup this command would use is. Nothing was restored. If the newest trusted backup is what you want, pass --backup {id}"
        ),
        None => format!("{reason} (`{key}`); nothing was restored"),
    })
}

/// The start time encoded in a backup id (`20261127T012000Z-…`).
pub(crate) fn id_time(id: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(id.get(..16)?, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

fn damaged_error(key: &str, reason: &str, older: Option<&str>) -> Error {
    Error::Integrity {
        object: key.to_string(),
        reason: match older {
            Some(id) => format!(
                "{reason}; it is the backup this restore would use. To restore the older backup instead, pass --backup {id}"
            ),
            None => reason.to_string(),
        },
    }
}

/// Finds a backup by id (or a unique prefix of one).
///
/// # Errors
/// `NoBackup` when none or several match.
pub fn find<'a>(policy: &str, backups: &'a [Manifest], id: &str) -> Result<&'a Manifest> {
    let matches: Vec<&Manifest> = backups.iter().filter(|b| b.id.starts_with(id)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::NoBackup(format!(
            "policy `{policy}` has no backup with id `{id}`; `drctl list {policy}` shows them"
        ))),
        many => Err(Error::NoBackup(format!(
            "`{id}` matches {} backups of `{policy}`; give more of the id",
            many.len()
        ))),
    }
}

/// A backup whose manifest's latest version is a delete marker: pruned on
/// a versioned bucket, and restorable by version id until the lifecycle
/// rule expires the noncurrent versions.
#[derive(Debug, Clone)]
pub struct DeletedBackup {
    /// The manifest as it was, with every object's version id filled in
    /// (from the listing, for objects written before versioning was on).
    pub manifest: Manifest,
    pub manifest_version_id: String,
    /// When the delete marker was written.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Objects whose recorded version no longer exists (expired by the
    /// lifecycle rule, or deleted by version id): the backup cannot be
    /// restored when this is not empty.
    pub missing: Vec<String>,
}

/// The pruned backups of a policy, and the manifest versions set aside.
#[derive(Debug, Default)]
pub struct Deleted {
    /// Newest point in time first.
    pub backups: Vec<DeletedBackup>,
    /// `(key, reason)`: versions that cannot be read or parsed.
    pub damaged: Vec<(String, String)>,
    /// `(key, security warning)`: versions without a trusted signature.
    /// A planted version never hides a genuine older one of the same key.
    pub untrusted: Vec<(String, String)>,
}

/// Reads the deleted backups of a policy from the store's object versions;
/// a store without versions has none. Of a deleted manifest's versions the
/// newest trusted one is the backup: someone with write access but not the
/// signing key can add a version, but not make it the one restored.
///
/// # Errors
/// Storage errors listing versions.
pub async fn load_deleted(repo: &Repo, policy: &str) -> Result<Deleted> {
    let versions = repo
        .store
        .list_versions(&super::backup_prefix(policy))
        .await?;
    let mut by_key: std::collections::BTreeMap<&str, Vec<&crate::storage::ObjectVersion>> =
        std::collections::BTreeMap::new();
    for v in &versions {
        by_key.entry(v.key.as_str()).or_default().push(v);
    }
    let mut out = Deleted::default();
    for (key, list) in &by_key {
        if !key.ends_with("/manifest.json") || !list.first().is_some_and(|v| v.is_delete_marker) {
            continue;
        }
        let mut found = None;
        for version in list.iter().filter(|v| !v.is_delete_marker) {
            match repo.store.get(key, Some(&version.version_id)).await {
                Ok((bytes, _)) => match parse(repo, policy, key, &bytes) {
                    Ok(m) => {
                        found = Some((m, *version));
                        break;
                    }
                    Err(Rejected::Untrusted(reason)) => out.untrusted.push((
                        key.to_string(),
                        format!("{reason} (version {})", version.version_id),
                    )),
                    Err(Rejected::Damaged(reason)) => out.damaged.push((
                        key.to_string(),
                        format!("version {}: {reason}", version.version_id),
                    )),
                },
                Err(e) => out.damaged.push((
                    key.to_string(),
                    format!("version {}: {e}", version.version_id),
                )),
            }
        }
        let Some((mut manifest, version)) = found else {
            continue;
        };
        let mut missing = Vec::new();
        let fill = |r: &mut super::manifest::ObjectRecord, missing: &mut Vec<String>| {
            let stored = by_key.get(r.key.as_str());
            match &r.version_id {
                Some(v) => {
                    if !stored.is_some_and(|l| l.iter().any(|x| &x.version_id == v)) {
                        missing.push(r.key.clone());
                    }
                }
                None => match stored.and_then(|l| l.iter().find(|x| !x.is_delete_marker)) {
                    Some(x) => r.version_id = Some(x.version_id.clone()),
                    None => missing.push(r.key.clone()),
                },
            }
        };
        fill(&mut manifest.data, &mut missing);
        if let Some(f) = manifest.fingerprint.as_mut() {
            fill(f, &mut missing);
        }
        out.backups.push(DeletedBackup {
            manifest,
            manifest_version_id: version.version_id.clone(),
            deleted_at: list[0].last_modified,
            missing,
        });
    }
    out.backups.sort_by(|a, b| {
        b.manifest
            .point_in_time
            .cmp(&a.manifest.point_in_time)
            .then(b.manifest.id.cmp(&a.manifest.id))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Digests;
    use crate::repo::manifest::{Compression, ObjectRecord};
    use chrono::TimeZone;

    /// Ids carry whole seconds and a random suffix: of two backups begun in
    /// one second, the one with the later point in time is the newest
    /// whichever suffix sorts first.
    #[tokio::test]
    async fn the_newest_of_backups_begun_in_one_second_is_the_later_one() {
        use crate::storage::{PutMode, Store, local::LocalStore};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
        Repo::init(&store, &[], None).await.unwrap();
        let repo = Repo::open(store.clone()).await.unwrap();
        let second = Utc.with_ymd_and_hms(2026, 12, 1, 1, 58, 36).unwrap();
        for (id, ms) in [
            ("20261201T015836Z-aaaa0000", 400),
            ("20261201T015836Z-ffff0000", 100),
            ("20261201T015835Z-ffff0000", -100),
        ] {
            let mut man = m(id, second + Duration::milliseconds(ms));
            man.data.key = format!("backups/p/{id}/data.tar.zst.age");
            let body = serde_json::to_vec_pretty(&man).unwrap();
            store
                .put(
                    &super::super::manifest_key("p", id),
                    body.into(),
                    PutMode::Create,
                )
                .await
                .unwrap();
        }
        let newest = newest(&repo, "p").await.unwrap().unwrap();
        assert_eq!(newest.id, "20261201T015836Z-aaaa0000");
    }

    fn m(id: &str, t: DateTime<Utc>) -> Manifest {
        Manifest {
            format: 1,
            id: id.into(),
            policy: "p".into(),
            kind: "files".into(),
            point_in_time: t,
            started_at: t,
            finished_at: t,
            host: "h".into(),
            tool_version: "0".into(),
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            recipients: vec![],
            data: ObjectRecord {
                key: "k".into(),
                version_id: None,
                content: "tar".into(),
                digests: Digests {
                    plaintext_size: 0,
                    plaintext_sha256: String::new(),
                    size: 0,
                    sha256: Some(String::new()),
                    ..Default::default()
                },
            },
            fingerprint: None,
            postgres: None,
            warnings: Vec::new(),
            cluster: None,
        }
    }

    #[test]
    fn picks_newest_at_or_before_target() {
        let t = |h| Utc.with_ymd_and_hms(2026, 11, 26, h, 0, 0).unwrap();
        let backups = vec![m("c", t(12)), m("b", t(8)), m("a", t(4))];
        let s = select("p", &backups, t(10)).unwrap();
        assert_eq!(s.backup.id, "b");
        assert_eq!(s.gap, Duration::hours(2));
        assert_eq!(select("p", &backups, t(12)).unwrap().backup.id, "c");
        let err = select("p", &backups, t(3)).unwrap_err().to_string();
        assert!(
            err.contains("the first one is from 2026-11-26 04:00:00 UTC"),
            "{err}"
        );
        // A time copied from `list`, which shows whole seconds.
        let precise = t(8) + Duration::milliseconds(700);
        let backups = vec![m("b", precise), m("a", t(4))];
        let s = select("p", &backups, t(8)).unwrap();
        assert_eq!((s.backup.id.as_str(), s.gap), ("b", Duration::zero()));
        let err = select("p", &[], t(3)).unwrap_err().to_string();
        assert!(err.contains("no backups yet"), "{err}");
    }

    #[test]
    fn an_untrusted_newer_manifest_stops_a_restore_and_an_older_one_does_not() {
        let t = |h| Utc.with_ymd_and_hms(2026, 11, 26, h, 0, 0).unwrap();
        let catalog = Catalog {
            backups: vec![m("20261126T040000Z-aa", t(4))],
            untrusted: vec![(
                "backups/p/20261126T080000Z-bb/manifest.json".into(),
                "security: `backups/p/20261126T080000Z-bb/manifest.json` is ignored: it has no signature".into(),
            )],
            ..Catalog::default()
        };
        let err = catalog.select("p", t(10)).unwrap_err();
        assert!(matches!(err, Error::Untrusted(_)), "{err}");
        assert!(
            err.to_string().contains("--backup 20261126T040000Z-aa"),
            "{err}"
        );
        // Before the planted one's time, the trusted backup is the answer.
        assert_eq!(
            catalog.select("p", t(5)).unwrap().backup.id,
            "20261126T040000Z-aa"
        );
        assert!(matches!(
            catalog.find("p", "20261126T08"),
            Err(Error::Untrusted(_))
        ));
        assert!(
            catalog
                .refuse_untrusted_newer("20261126T040000Z-aa")
                .is_err()
        );
        assert!(
            catalog
                .refuse_untrusted_newer("20261126T090000Z-cc")
                .is_ok()
        );
    }

    #[test]
    fn a_damaged_newer_manifest_is_not_skipped_silently() {
        let t = |h| Utc.with_ymd_and_hms(2026, 11, 26, h, 0, 0).unwrap();
        let catalog = Catalog {
            backups: vec![m("20261126T040000Z-aa", t(4))],
            damaged: vec![(
                "backups/p/20261126T080000Z-bb/manifest.json".into(),
                "not a valid manifest".into(),
            )],
            ..Catalog::default()
        };
        let err = catalog.select("p", t(10)).unwrap_err().to_string();
        assert!(
            err.contains("20261126T080000Z-bb/manifest.json")
                && err.contains("--backup 20261126T040000Z-aa"),
            "{err}"
        );
        assert_eq!(
            catalog.select("p", t(6)).unwrap().backup.id,
            "20261126T040000Z-aa"
        );
        assert!(
            catalog
                .find("p", "20261126T08")
                .unwrap_err()
                .to_string()
                .contains("not a valid manifest")
        );
    }

    #[test]
    fn find_by_unique_prefix() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 1, 0, 0).unwrap();
        let backups = vec![m("20261126T010000Z-aa", t), m("20261126T010000Z-ab", t)];
        assert_eq!(
            find("p", &backups, "20261126T010000Z-aa").unwrap().id,
            "20261126T010000Z-aa"
        );
        assert!(
            find("p", &backups, "20261126")
                .unwrap_err()
                .to_string()
                .contains("matches 2")
        );
        assert!(find("p", &backups, "x").is_err());
    }
}
