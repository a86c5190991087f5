//! `drctl wal-push POLICY %p`: PostgreSQL's `archive_command`.
//!
//! The contract (PostgreSQL's "Continuous Archiving"): exit 0 only once the
//! file is durably stored, since PostgreSQL then recycles it; any other
//! answer keeps it in `pg_wal` and the call is repeated. The same file may
//! be pushed again (after a crash, or by a standby after promotion): the
//! same content must succeed, different content must fail, and nothing is
//! overwritten.
//!
//! [`archive`] is what the command runs: it answers from the local state
//! when it can (a segment look-ahead already stored, or one already in the
//! spool), empties the spool into the repository first, stores the file,
//! and then stores other `.ready` segments ahead of PostgreSQL's calls.
//! When the repository does not answer within `[wal] store_timeout`, or
//! fails with an error that retrying may cure, the file is sealed into the
//! spool instead (see [`super::spool`]), and PostgreSQL is told it is
//! archived: it is, durably and encrypted, on this host.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::WalName;
use super::spool::{Spool, Spooled};
use crate::error::{Error, Result, StorageErrorKind};
use crate::pipeline::crypto;
use crate::repo::Repo;
use crate::storage::Store;

/// Uploads one `wal-push` runs at once, draining the spool or storing
/// segments ahead. On S3 their part buffers share the store's one memory
/// budget (`storage::s3::PART_MEMORY_BYTES`) and parts beyond it are sent
/// from spill files, so this bounds zstd and age state, not part buffers
/// (docs/benchmarks.md has the figures measured).
pub const PARALLEL_UPLOADS: usize = 2;

/// `.ready` segments one call stores ahead at most, so that a call that
/// finds a long backlog still returns to PostgreSQL in bounded time.
pub const LOOKAHEAD_MAX: usize = 16;

/// Bytes read from the WAL file at a time while hashing.
const READ_BYTES: usize = 256 * 1024;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Stored now: the key and the bytes stored.
    Stored { key: String, stored_bytes: u64 },
    /// An earlier push stored the same content.
    AlreadyArchived { key: String },
}

/// The SHA-256 (lowercase hex) and size of a file.
///
/// # Errors
/// I/O errors naming the file.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BYTES];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

fn wal_name(path: &Path) -> Result<WalName> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Usage(format!("{} names no WAL file", path.display())))?;
    WalName::parse(file_name).map_err(Error::Usage)
}

async fn hash_blocking(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    let (sha256, _) = tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .expect("hashing task panicked")?;
    Ok(sha256)
}

/// Archives the WAL file at `path` for `policy`.
///
/// # Errors
/// `Usage` for a file that is not a WAL file; `Refused` when different
/// content is archived under the same name already; storage and I/O
/// errors. Every error leaves the archive as it was (an upload that failed
/// is aborted), so PostgreSQL keeps the file and tries again.
pub async fn push(
    repo: &Repo,
    policy: &str,
    recipients: &[String],
    level: i32,
    path: &Path,
) -> Result<Pushed> {
    let name = wal_name(path)?;
    // Hashing first costs a second read of a file the page cache holds, and
    // lets the key carry the digest: a repeated push is answered from a
    // listing, without the identity.
    let sha256 = hash_blocking(path).await?;
    push_hashed(repo, policy, recipients, level, path, &name, &sha256).await
}

async fn push_hashed(
    repo: &Repo,
    policy: &str,
    recipients: &[String],
    level: i32,
    path: &Path,
    name: &WalName,
    sha256: &str,
) -> Result<Pushed> {
    let sha256 = sha256.to_string();
    let name = name.clone();
    let prefix = super::name_prefix(policy, &name);
    let existing = repo.store.list(&prefix).await?;
    if let Some(found) = existing
        .iter()
        .find(|o| super::parse_key(policy, &o.key).is_some_and(|(_, s)| s == sha256))
    {
        return Ok(Pushed::AlreadyArchived {
            key: found.key.clone(),
        });
    }
    if let Some(other) = existing.first() {
        return Err(Error::Refused(format!(
            "{name} is archived already with other content (`{}`; this file's sha256 is {sha256}); \
             it was not overwritten. Two servers archiving to one policy (a split brain, or a \
             standby promoted without a new timeline) cause this: find out which server's WAL is \
             right before anything else, and give each server its own policy",
            other.key
        )));
    }
    let key = super::object_key(policy, &name, &sha256);
    let recipients = crypto::parse_recipients(recipients)?;
    let source = path.to_path_buf();
    let ((stored, digests), ()) = crate::sealed::store_sealed_with(
        repo,
        &key,
        &recipients,
        level,
        crate::pipeline::SealMode::WAL,
        Arc::new(AtomicBool::new(false)),
        move |out| {
            let mut file = std::fs::File::open(&source)
                .map_err(|e| Error::io(format!("opening {}", source.display()), e))?;
            std::io::copy(&mut file, out)
                .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
            Ok(())
        },
    )
    .await?;
    if digests.plaintext_sha256 != sha256 {
        // PostgreSQL never rewrites a finished segment; if this one changed
        // under us the stored object does not match its key, so it goes.
        let _ = repo.store.delete(&key).await;
        return Err(Error::Integrity {
            object: path.display().to_string(),
            reason: "the file changed while it was archived; nothing was kept, and PostgreSQL will push it again".into(),
        });
    }
    crate::sealed::confirm(repo, &key, &stored, &digests).await?;
    Ok(Pushed::Stored {
        key,
        stored_bytes: digests.size,
    })
}

/// Whether trying again later may succeed: the errors a spool rides out.
/// A refusal, a missing bucket or denied credentials are not: spooling
/// them would hide a fault that needs a person until the spool is full.
pub fn is_transient(e: &Error) -> bool {
    matches!(e, Error::Storage(s) if s.kind == StorageErrorKind::Transient)
}

/// What `wal-push` needs besides the file.
pub struct Archiver<'a> {
    pub store: Arc<dyn Store>,
    pub policy: &'a str,
    pub recipients: &'a [String],
    pub level: i32,
    pub spool: Spool,
    /// How long each step that talks to the repository (opening it,
    /// draining the spool, storing the file, look-ahead) may take.
    pub timeout: Duration,
}

/// How a file PostgreSQL asked for was archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In the repository, now or from before.
    Pushed(Pushed),
    /// Sealed into the spool, because the repository did not take it.
    Spooled {
        file: PathBuf,
        queued_bytes: u64,
        reason: String,
    },
    /// An earlier call spooled the same content.
    AlreadySpooled { file: PathBuf },
    /// An earlier call stored it ahead (look-ahead) with the same content.
    StoredAhead,
}

/// What one `wal-push` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub outcome: Outcome,
    /// Spooled files stored into the repository first.
    pub drained: usize,
    /// Other `.ready` files stored ahead.
    pub ahead: usize,
}

/// `wal-push`: archives the file at `path`, in the repository if it
/// answers and else in the spool (see the module documentation).
///
/// # Errors
/// `Usage` for a file that is not a WAL file; `Refused` when other content
/// is archived or spooled under the name; `SpoolFull` when the repository
/// did not take the file and the spool has no room; errors that retrying
/// will not cure (denied access, a missing bucket); I/O errors. PostgreSQL
/// keeps the file after any of them.
pub async fn archive(a: &Archiver<'_>, path: &Path) -> Result<Report> {
    let name = wal_name(path)?;
    let sha256 = hash_blocking(path).await?;
    let report = |outcome| Report {
        outcome,
        drained: 0,
        ahead: 0,
    };
    match a.spool.done(&name) {
        Some(done) if done == sha256 => {
            a.spool.prune_markers(&name);
            return Ok(report(Outcome::StoredAhead));
        }
        Some(other) => {
            return Err(Error::Refused(format!(
                "{name} was stored ahead (by an earlier wal-push's look-ahead) with other content \
                 (sha256 {other}; this file's sha256 is {sha256}); nothing was changed. Two \
                 servers archiving to one policy cause this: find out which server's WAL is right \
                 before anything else"
            )));
        }
        None => {}
    }
    let queued = a.spool.find(&name)?;
    if let Some(same) = queued.iter().find(|s| s.sha256 == sha256) {
        return Ok(report(Outcome::AlreadySpooled {
            file: a.spool.path_of(same),
        }));
    }
    if let Some(other) = queued.first() {
        return Err(Error::Refused(format!(
            "{name} is spooled already with other content ({}, sha256 {}; this file's sha256 is \
             {sha256}); nothing was changed. Two servers archiving to one policy cause this: find \
             out which server's WAL is right before anything else",
            a.spool.path_of(other).display(),
            other.sha256
        )));
    }

    let spool_it = |reason: String| -> Result<Report> {
        let recipients = crypto::parse_recipients(a.recipients)?;
        let (entry, queued_bytes) = a
            .spool
            .seal(path, &name, &sha256, &recipients, a.level)
            .map_err(|e| match e {
                Error::SpoolFull(full) => {
                    Error::SpoolFull(format!("{full}. The repository: {reason}"))
                }
                other => other,
            })?;
        Ok(report(Outcome::Spooled {
            file: a.spool.path_of(&entry),
            queued_bytes,
            reason,
        }))
    };
    let timed_out = |what: &str| {
        format!(
            "{what} {} did not finish within {:?} (`[wal] store_timeout`)",
            a.store.location(),
            a.timeout
        )
    };

    let repo = match tokio::time::timeout(a.timeout, Repo::open(a.store.clone())).await {
        Ok(Ok(repo)) => repo,
        Ok(Err(e)) if is_transient(&e) => return spool_blocking(spool_it, e.to_string()).await,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return spool_blocking(spool_it, timed_out("opening the repository")).await;
        }
    };
    let mut drained = 0;
    match tokio::time::timeout(a.timeout, drain(&repo, &a.spool, a.policy)).await {
        Ok(Ok(d)) => drained = d.stored,
        Ok(Err(e)) if is_transient(&e) => {
            return spool_blocking(spool_it, e.to_string()).await;
        }
        // The spool holds something that needs a person (other content
        // under a name); this file can still be stored.
        Ok(Err(e)) => {
            tracing::error!(policy = %a.policy, error = %e, "The WAL spool cannot be drained.")
        }
        Err(_) => tracing::warn!(
            policy = %a.policy,
            "Draining the WAL spool took longer than `[wal] store_timeout`; the next call goes on."
        ),
    }
    let pushed = tokio::time::timeout(
        a.timeout,
        push_hashed(&repo, a.policy, a.recipients, a.level, path, &name, &sha256),
    )
    .await;
    let pushed = match pushed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) if is_transient(&e) => {
            let mut r = spool_blocking(spool_it, e.to_string()).await?;
            r.drained = drained;
            return Ok(r);
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let mut r = spool_blocking(spool_it, timed_out("storing the file in")).await?;
            r.drained = drained;
            return Ok(r);
        }
    };
    a.spool.prune_markers(&name);
    let ahead = Arc::new(AtomicUsize::new(0));
    let _ = tokio::time::timeout(a.timeout, look_ahead(&repo, a, path, &name, ahead.clone())).await;
    Ok(Report {
        outcome: Outcome::Pushed(pushed),
        drained,
        ahead: ahead.load(Ordering::Relaxed),
    })
}

/// Runs the sealing into the spool off the async threads.
async fn spool_blocking(
    spool_it: impl FnOnce(String) -> Result<Report>,
    reason: String,
) -> Result<Report> {
    tokio::task::block_in_place(|| spool_it(reason))
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Files now in the repository and gone from the spool.
    pub stored: usize,
    /// Files still in the spool.
    pub left: usize,
    /// Another process was draining this spool; nothing was done.
    pub busy: bool,
}

/// Stores what waits in the spool, in WAL order ([`super::spool::drain_order`]),
/// up to [`PARALLEL_UPLOADS`] at once, and removes each file once the
/// repository holds it. The first failure stops the drain: what is left
/// stays for the next call.
///
/// # Errors
/// The first failure: storage errors, or `Refused` for a spooled file
/// whose name is archived with other content (it stays in the spool).
pub async fn drain(repo: &Repo, spool: &Spool, policy: &str) -> Result<Drained> {
    // Most calls find nothing queued: they neither lock nor create the
    // spool directory, so a push the repository takes never depends on it.
    if spool.queued()?.is_empty() {
        return Ok(Drained::default());
    }
    let Some(_lock) = spool.try_lock_drain()? else {
        return Ok(Drained {
            busy: true,
            ..Drained::default()
        });
    };
    let queued = spool.queued()?;
    if queued.is_empty() {
        return Ok(Drained::default());
    }
    let failed = AtomicBool::new(false);
    let results: Vec<Result<bool>> = futures::stream::iter(queued.iter())
        .map(|s| {
            let failed = &failed;
            async move {
                // Started in WAL order; after a failure nothing new starts.
                if failed.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                let result = store_spooled(repo, spool, policy, s).await;
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                result.map(|()| true)
            }
        })
        .buffered(PARALLEL_UPLOADS)
        .collect()
        .await;
    let stored = results.iter().filter(|r| matches!(r, Ok(true))).count();
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        tracing::warn!(policy, stored, "Drained part of the WAL spool.");
        return Err(e);
    }
    Ok(Drained {
        stored,
        left: spool.queued()?.len(),
        busy: false,
    })
}

/// Stores one spooled file at its key, create-only, and removes it from
/// the spool once the repository holds it.
async fn store_spooled(repo: &Repo, spool: &Spool, policy: &str, s: &Spooled) -> Result<()> {
    let key = s.key(policy);
    let existing = repo
        .store
        .list(&super::name_prefix(policy, &s.name))
        .await?;
    if existing.iter().any(|o| o.key == key) {
        // Same key, same plaintext: an earlier drain stored it and was
        // stopped before it removed the file.
        return spool.remove(s);
    }
    if let Some(other) = existing
        .iter()
        .find(|o| super::parse_key(policy, &o.key).is_some_and(|(n, _)| n == s.name))
    {
        return Err(Error::Refused(format!(
            "{} is archived with other content (`{}`) than the spooled {} (sha256 {}); the \
             spooled file stays where it is. Two servers archiving to one policy cause this: \
             find out which server's WAL is right, then delete the wrong copy by hand",
            s.name,
            other.key,
            spool.path_of(s).display(),
            s.sha256
        )));
    }
    let stored = match upload_file(repo.store.as_ref(), &key, &spool.path_of(s)).await {
        Ok(stored) => stored.size,
        // Written by a concurrent drain or push since the listing; the key
        // says it is the same content, once it is really there.
        Err(Error::Storage(e)) if e.kind == StorageErrorKind::PreconditionFailed => {
            repo.store.head(&key, None).await?.size
        }
        Err(e) => return Err(e),
    };
    let meta = repo.store.head(&key, None).await?;
    if stored != s.size || meta.size != s.size {
        return Err(Error::Integrity {
            object: format!("{}/{key}", repo.store.location()),
            reason: format!(
                "{} bytes are stored but the spooled {} has {}; the spooled file is kept",
                meta.size,
                spool.path_of(s).display(),
                s.size
            ),
        });
    }
    spool.remove(s)
}

/// Streams a local file to a new object at `key`, with bounded memory.
async fn upload_file(store: &dyn Store, key: &str, path: &Path) -> Result<crate::storage::Stored> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(crate::pipeline::CHANNEL_CHUNKS);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let source = path.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut file = std::fs::File::open(&source)
            .map_err(|e| Error::io(format!("opening {}", source.display()), e))?;
        loop {
            let mut buf = vec![0u8; crate::pipeline::CHUNK_BYTES];
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
            if n == 0 {
                let _ = done_tx.send(());
                return Ok(());
            }
            buf.truncate(n);
            if tx.blocking_send(Bytes::from(buf)).is_err() {
                // The upload stopped; its own error says why.
                return Ok(());
            }
        }
    });
    let uploaded = crate::storage::upload_stream(store, key, rx, done_rx).await;
    let read = reader.await.expect("spool reader panicked");
    read?;
    Ok(uploaded?)
}

/// Stores other `.ready` files of `pg_wal/archive_status/` (the directory
/// of `path`) ahead of PostgreSQL's calls, and marks each in the spool's
/// `done/` so that the call for it is answered without the network.
/// Failures are left for PostgreSQL's own call to meet.
async fn look_ahead(
    repo: &Repo,
    a: &Archiver<'_>,
    path: &Path,
    current: &WalName,
    count: Arc<AtomicUsize>,
) {
    let Some(dir) = path.parent() else { return };
    let marked = a.spool.markers();
    let Ok(entries) = std::fs::read_dir(dir.join("archive_status")) else {
        return;
    };
    let mut ready: Vec<WalName> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_str()?.strip_suffix(".ready")?.to_string();
            WalName::parse(&file).ok()
        })
        .filter(|n| n != current && !marked.contains(&n.name))
        .collect();
    ready.sort_by(|x, y| x.name.cmp(&y.name));
    ready.truncate(LOOKAHEAD_MAX);
    futures::stream::iter(ready)
        .for_each_concurrent(PARALLEL_UPLOADS, |name| {
            let file = dir.join(&name.name);
            let count = count.clone();
            async move {
                let stored = async {
                    let sha256 = hash_blocking(&file).await?;
                                        push_hashed(repo, a.policy, a.recipients, a.level, &file, &name, &sha256)
                        .await?;
                    a.spool.mark_done(&name, &sha256)
                }
                .await;
                match stored {
                    Ok(()) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(file = %file.display(), error = %e, "Look-ahead left a file for PostgreSQL's own call."),
                }
            }
        })
        .await;
}
