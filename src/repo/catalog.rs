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
}

/// Reads every manifest of a policy.
///
/// # Errors
/// Storage errors from listing; unreadable manifests go to `damaged`.
pub async fn load(repo: &Repo, policy: &str) -> Result<Catalog> {
    let keys: Vec<String> = repo
        .store
        .list(&super::backup_prefix(policy))
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with("/manifest.json"))
        .collect();
    let store = repo.store.clone();
    let results: Vec<(String, Result<Manifest, String>)> = futures::stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move {
                let parsed = match store.get(&key, None).await {
                    Ok((bytes, _)) => serde_json::from_slice::<Manifest>(&bytes)
                        .map_err(|e| format!("not a valid manifest: {e}")),
                    Err(e) => Err(e.to_string()),
                };
                (key, parsed)
            }
        })
        .buffer_unordered(LIST_CONCURRENCY)
        .collect()
        .await;
    let mut catalog = Catalog::default();
    for (key, parsed) in results {
        match parsed {
            Ok(m) if m.policy == policy && key == super::manifest_key(policy, &m.id) => {
                catalog.backups.push(m)
            }
            Ok(m) => catalog.damaged.push((
                key,
                format!(
                    "manifest names policy `{}` and id `{}`, not its own location",
                    m.policy, m.id
                ),
            )),
            Err(reason) => catalog.damaged.push((key, reason)),
        }
    }
    catalog
        .backups
        .sort_by(|a, b| b.point_in_time.cmp(&a.point_in_time).then(b.id.cmp(&a.id)));
    catalog.damaged.sort();
    Ok(catalog)
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
    if let Some(b) = backups.iter().find(|b| b.point_in_time <= target) {
        return Ok(Selection {
            backup: b,
            gap: target - b.point_in_time,
        });
    }
    Err(Error::NoBackup(match backups.last() {
        None => format!("policy `{policy}` has no backups yet; run `drctl backup {policy}` first"),
        Some(first) => format!(
            "no backup of `{policy}` is at or before {}; the first one is from {}",
            target.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            first
                .point_in_time
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Digests;
    use crate::repo::manifest::{Compression, ObjectRecord};
    use chrono::TimeZone;

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
                    sha256: String::new(),
                },
            },
            fingerprint: None,
            postgres: None,
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
            err.contains("the first one is from 2026-11-26T04:00:00Z"),
            "{err}"
        );
        let err = select("p", &[], t(3)).unwrap_err().to_string();
        assert!(err.contains("no backups yet"), "{err}");
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
