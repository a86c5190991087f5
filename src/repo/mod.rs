//! The repository: its layout in the store, the `repo.json` marker, backup
//! ids and manifests, the catalog (what backups exist, what `--to` picks)
//! and the per-policy lease.
//!
//! ```text
//! repo.json                                    format version, public recipients
//! backups/<policy>/<backup-id>/data.<kind>.zst.age
//! backups/<policy>/<backup-id>/fingerprint.json.zst.age   (postgres)
//! backups/<policy>/<backup-id>/manifest.json   written last
//! runs/<policy>/<run-id>.json                  a failed backup attempt (see [`runs`])
//! attestations/<time>-<hex>.json               signed list of older unsigned objects (see [`attest`])
//! locks/<policy>                               lease
//! locks/<policy>@holds/<backup-id>.<unique>    a restore or drill reading that backup
//! ```

pub mod attest;
pub mod catalog;
pub mod lease;
pub mod manifest;
pub mod runs;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, StorageErrorKind};
use crate::storage::{PutMode, Store};

/// The newest repository format this drctl reads.
pub const FORMAT_VERSION: u32 = 2;
/// What `init` writes and backups record: format 1 manifests carry the
/// whole object's digest, which every reader checks.
pub const WRITE_FORMAT: u32 = 1;
/// Manifests a key rotation rewrote, and `repo.json` once there are any:
/// their objects' digests are in halves (header, payload), which a format-1
/// reader would not find.
pub const ROTATED_FORMAT: u32 = 2;
pub const MARKER_KEY: &str = "repo.json";

pub fn backup_prefix(policy: &str) -> String {
    format!("backups/{policy}/")
}

pub fn backup_dir(policy: &str, id: &str) -> String {
    format!("backups/{policy}/{id}/")
}

pub fn manifest_key(policy: &str, id: &str) -> String {
    format!("backups/{policy}/{id}/manifest.json")
}

/// Every `.json` object under `prefix`, in key order (ids sort by time),
/// with its bytes: drill records and run records are read this way.
///
/// # Errors
/// Storage errors from listing or reading.
pub async fn read_json_objects(repo: &Repo, prefix: &str) -> Result<Vec<(String, Bytes)>> {
    use futures::StreamExt;
    let mut keys: Vec<String> = repo
        .store
        .list(prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    let store = repo.store.clone();
    let fetched: Vec<Result<(String, Bytes)>> = futures::stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move {
                let (bytes, _) = store.get(&key, None).await?;
                Ok((key, bytes))
            }
        })
        .buffered(catalog::LIST_CONCURRENCY)
        .collect()
        .await;
    fetched.into_iter().collect()
}

pub fn lock_key(policy: &str) -> String {
    format!("locks/{policy}")
}

/// Where holds on a policy's backups live. ('@' cannot be in a policy name,
/// so this never collides with another policy's lease, as `.holds` could.)
pub fn holds_prefix(policy: &str) -> String {
    format!("locks/{policy}@holds/")
}

/// A fresh, time-sortable backup id: `20261127T012000Z-9f3a1c2e`. The random
/// suffix keeps two backups started in the same second apart.
pub fn new_backup_id(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:08x}",
        now.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>()
    )
}

/// `repo.json`: marks a repository and says how it was made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    pub format: u32,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub recipients: Vec<String>,
}

/// A store known to hold a drctl repository.
#[derive(Clone)]
pub struct Repo {
    pub store: Arc<dyn Store>,
    pub marker: Marker,
    /// `[signing]`: `None` in an unsigned installation, where nothing is
    /// signed and nothing is checked.
    pub signing: Option<Arc<crate::signing::Signing>>,
    /// Why `repo.json` is not trusted, when signing is on and it is not.
    pub marker_untrusted: Option<String>,
    /// The `[[copies]]` name when this is a copy, not the primary. Version
    /// ids in a copy's manifests are the primary's, so readers ignore them.
    pub copy_name: Option<String>,
    marker_bytes: Bytes,
    /// Unsigned objects a trusted attestation vouches for: key → sha256.
    attested: std::collections::HashMap<String, String>,
    /// Attestations without a trusted signature, as warnings.
    pub attestation_warnings: Vec<String>,
}

impl Repo {
    /// Opens a repository, checking its marker.
    ///
    /// # Errors
    /// `NotInitialised` when there is no marker, a storage error when the
    /// store cannot be reached, and a refusal for a newer format.
    pub async fn open(store: Arc<dyn Store>) -> Result<Repo> {
        let (bytes, _) = match store.get(MARKER_KEY, None).await {
            Ok(found) => found,
            Err(e) if e.kind == StorageErrorKind::NotFound && !e.detail.contains("bucket") => {
                return Err(Error::NotInitialised {
                    location: store.location(),
                    detail: missing_marker(store.as_ref()).await,
                });
            }
            Err(e) => return Err(Error::Storage(e)),
        };
        let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| Error::Integrity {
            object: format!("{}/{MARKER_KEY}", store.location()),
            reason: format!("not a drctl repository marker: {e}"),
        })?;
        if marker.format > FORMAT_VERSION {
            return Err(Error::Refused(format!(
                "repository {} has format {} but this drctl reads format {FORMAT_VERSION}; upgrade drctl",
                store.location(),
                marker.format
            )));
        }
        Ok(Repo {
            store,
            marker,
            signing: None,
            marker_untrusted: None,
            copy_name: None,
            marker_bytes: bytes,
            attested: std::collections::HashMap::new(),
            attestation_warnings: Vec::new(),
        })
    }

    /// Turns on signing (`[signing]` of drctl.toml): what this repository
    /// writes is signed with the key, what it reads is checked against the
    /// trusted keys (and the attestations they signed, read here). An
    /// untrusted `repo.json` is recorded, not refused: it holds nothing a
    /// reader acts on, and commands name it.
    ///
    /// # Errors
    /// Storage errors reading the attestations.
    pub async fn with_signing(
        mut self,
        signing: Option<Arc<crate::signing::Signing>>,
    ) -> Result<Repo> {
        self.signing = signing;
        (self.attested, self.attestation_warnings) = attest::load(&self).await?;
        self.marker_untrusted = self.check_signature(MARKER_KEY, &self.marker_bytes).err();
        Ok(self)
    }

    /// This repository's marker over another store that has none yet, with
    /// nothing written: what a dry run of a first copy plans against.
    pub fn unwritten_twin(&self, store: Arc<dyn Store>) -> Repo {
        Repo {
            store,
            attested: std::collections::HashMap::new(),
            attestation_warnings: Vec::new(),
            ..self.clone()
        }
    }

    /// `repo.json` exactly as stored: a copy's marker is these bytes.
    pub fn marker_bytes(&self) -> &Bytes {
        &self.marker_bytes
    }

    /// Whether the marker carries a signature, checked or not.
    pub fn marker_is_signed(&self) -> bool {
        crate::signing::is_signed(&self.marker_bytes)
    }

    /// The bytes to store at `key` for the pretty-printed JSON `body`:
    /// signed when signing is on.
    ///
    /// # Errors
    /// `Key` when `[signing]` is on but this host has no `key_file`: what it
    /// wrote unsigned every reader would ignore.
    pub fn sign(&self, key: &str, body: Vec<u8>) -> Result<Bytes> {
        match &self.signing {
            None => Ok(Bytes::from(body)),
            Some(s) => match &s.key {
                Some(k) => Ok(Bytes::from(crate::signing::sign(k, key, &body))),
                None => Err(no_signing_key(key)),
            },
        }
    }

    /// Refuses, before any work, a job that will write a manifest or a
    /// record on a host that cannot sign it.
    ///
    /// # Errors
    /// `Key`, as [`Repo::sign`].
    pub fn require_signing_key(&self, what: &str) -> Result<()> {
        match &self.signing {
            Some(s) if s.key.is_none() => Err(no_signing_key(what)),
            _ => Ok(()),
        }
    }

    /// With signing on, whether a trusted key signed exactly these bytes
    /// at this key. The stored bytes are then what to parse: the signature
    /// member is the only thing beyond the signed body, and readers ignore
    /// it as an unknown field.
    ///
    /// # Errors
    /// Why the object is not trusted, as a sentence naming the key and
    /// starting with [`crate::signing::UNTRUSTED`].
    pub fn check_signature(&self, key: &str, stored: &[u8]) -> Result<(), String> {
        let Some(s) = &self.signing else {
            return Ok(());
        };
        match crate::signing::verify(&s.trusted, key, stored) {
            Ok(_) => Ok(()),
            Err(crate::signing::Untrusted::Missing)
                if self
                    .attested
                    .get(key)
                    .is_some_and(|d| *d == attest::digest(stored)) =>
            {
                Ok(())
            }
            Err(why) => Err(crate::signing::untrusted_message(key, &why)),
        }
    }

    /// Writes the marker if there is none; an existing repository is left
    /// exactly as it is.
    ///
    /// # Errors
    /// Storage errors; `Ok(false)` means it already existed.
    pub async fn init(
        store: &Arc<dyn Store>,
        recipients: &[String],
        signing: Option<&crate::signing::Signing>,
    ) -> Result<bool> {
        let marker = Marker {
            format: WRITE_FORMAT,
            created_at: Utc::now(),
            created_by: format!("drctl {}", env!("CARGO_PKG_VERSION")),
            recipients: recipients.to_vec(),
        };
        let mut body = serde_json::to_vec_pretty(&marker).expect("marker serialises");
        // Backups without a marker are a repository that lost its
        // repo.json (or a wrong prefix): a new marker over them would hide
        // the problem and start a second history beside theirs.
        if let Err(e) = store.head(MARKER_KEY, None).await
            && e.kind == StorageErrorKind::NotFound
        {
            let mut orphans = store.list("backups/").await?;
            orphans.extend(store.list("wal/").await?);
            if let Some(first) = orphans.first() {
                return Err(Error::Refused(format!(
                    "{} holds {} backup or WAL objects (e.g. {}) but no repo.json; drctl init does not create a \
                     repository over them. If the repository lost its repo.json, restore it from a copy (or \
                     recover by hand, docs/manual-recovery.md); if this is the wrong place, fix [repository]",
                    store.location(),
                    orphans.len(),
                    first.key
                )));
            }
        }
        if let Some(key) = signing.and_then(|s| s.key.as_ref()) {
            body = crate::signing::sign(key, MARKER_KEY, &body);
        }
        match store
            .put(MARKER_KEY, Bytes::from(body), PutMode::Create)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind == StorageErrorKind::PreconditionFailed => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// What stands where `repo.json` should be. "Run `drctl init`" is the
/// right advice only for a place meant to hold a new repository: on a
/// volume that did not mount, or a repository whose marker was lost, it
/// would create an empty repository over the missing one.
async fn missing_marker(store: &dyn Store) -> String {
    let objects = store.list("").await.unwrap_or_default();
    let backups = objects
        .iter()
        .filter(|o| o.key.starts_with("backups/") || o.key.starts_with("wal/"))
        .count();
    if backups > 0 {
        return format!(
            "it holds {backups} backup or WAL objects (e.g. {}) but no repo.json, so repo.json was deleted \
             or this is not where drctl created it; do not run `drctl init` here (docs/manual-recovery.md \
             restores without it); point [repository] at the right place or restore repo.json from a copy",
            objects
                .iter()
                .find(|o| o.key.starts_with("backups/") || o.key.starts_with("wal/"))
                .map_or("", |o| o.key.as_str())
        );
    }
    let Some(root) = store.local_root() else {
        return "the prefix is empty; if this is where a new repository should be, run `drctl init`"
            .into();
    };
    let what = if root.is_dir() {
        format!("directory {} is empty", root.display())
    } else {
        format!("directory {} does not exist", root.display())
    };
    match unmounted_hint(root) {
        Some(hint) => format!(
            "{what}, and {hint}: if the backup volume should be mounted there, mount it \
             (`findmnt`, /etc/fstab) and try again; `drctl init` now would create a new, empty repository \
             in place of the one on that volume"
        ),
        None => format!("{what}; if this is where a new repository should be, run `drctl init`"),
    }
}

/// Why the repository directory looks like it sits on a volume that is not
/// mounted: it, or its parent, is an empty directory that nothing is
/// mounted on (same device as its own parent).
pub fn unmounted_hint(root: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let root = std::path::absolute(root).ok()?;
    let parent = root.parent()?;
    let empty_unmounted = |dir: &std::path::Path| -> bool {
        let Some(up) = dir.parent() else {
            return false;
        };
        let (Ok(meta), Ok(up_meta)) = (std::fs::metadata(dir), std::fs::metadata(up)) else {
            return false;
        };
        meta.is_dir()
            && meta.dev() == up_meta.dev()
            && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
    };
    let in_fstab = |dir: &std::path::Path| {
        std::fs::read_to_string("/etc/fstab").is_ok_and(|t| {
            t.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.split_whitespace().nth(1) == Some(&*dir.to_string_lossy()))
        })
    };
    for dir in [root.as_path(), parent] {
        if in_fstab(dir) && empty_unmounted(dir) {
            return Some(format!(
                "{} is a mount point in /etc/fstab with nothing mounted on it",
                dir.display()
            ));
        }
    }
    (!root.exists() && empty_unmounted(parent)).then(|| {
        format!(
            "its parent {} is an empty directory with nothing mounted on it",
            parent.display()
        )
    })
}

fn no_signing_key(what: &str) -> Error {
    Error::Key(format!(
        "{what}: [signing] is on but this host has no `key_file`, so what it wrote would be unsigned \
         and every reader would ignore it; set `[signing] key_file` (a key whose public half is in \
         `trusted`) on hosts that take backups, run drills or write marks"
    ))
}
