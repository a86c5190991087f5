//! Restores, the parts every kind shares: writing a backup's plaintext to
//! a file (a `.drctl-partial` renamed at the end) or to stdout, checking
//! destinations before anything is read, `verify`, and making archived
//! (Glacier) objects readable first. Restoring into a database is in
//! `source::postgres::restore`, into a directory in `source::files`, into a
//! cluster data directory in `source::pgcluster::recover`; every byte comes
//! through `sealed`, authenticated.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::archive::{self, Next, Requested, Tier};
use crate::error::{Error, Result};
use crate::progress::Meter;
use crate::repo::Repo;
use crate::repo::manifest::{Manifest, ObjectRecord};
use crate::sealed::{copy_out, fetch_error, name_object, stream_object};
use crate::timespec::human_duration;

/// How often a wait for an archive retrieval looks at the cancel flag.
const POLL_STEP: Duration = Duration::from_millis(200);

/// Writes the plaintext of `record` to `path` (a `.drctl-partial` file
/// renamed at the end). Refuses to replace an existing file, and refuses
/// anything already at the partial name (see [`check_no_partial`]).
///
/// # Errors
/// As [`stream_object`], plus `Refused` for an existing file or partial
/// name and I/O errors naming the path.
pub async fn to_file(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    record: &ObjectRecord,
    path: &Path,
    meter: Meter,
) -> Result<()> {
    check_new_file(path)?;
    let partial = partial_path(path);
    // Plaintext database content: readable by its owner only. `create_new`
    // (O_EXCL) neither follows a link at that name nor opens a file someone
    // put there since the check.
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => leftover_partial(&partial),
            _ => Error::io(format!("creating {}", partial.display()), e),
        })?;
    let what = partial.display().to_string();
    let object = format!("{}/{}", repo.store.location(), record.key);
    let result = stream_object(repo, identities, record, meter, move |r| {
        let mut file = file;
        copy_out(r, &mut file, &what)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {what}"), e))
    })
    .await
    .map_err(|e| name_object(e, &object));
    match result {
        Ok(()) => std::fs::rename(&partial, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", partial.display(), path.display()),
                e,
            )
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Streams the plaintext of `record` to stdout, for `--output -`. Bytes go
/// out as age authenticates them, so a failure part-way (a truncated or
/// tampered object, a digest mismatch found at the end) leaves the reader
/// with an incomplete stream: the error and the exit code say so.
///
/// # Errors
/// As [`stream_object`]; `Io` when the reader of stdout went away.
pub async fn to_stdout(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    record: &ObjectRecord,
    meter: Meter,
) -> Result<()> {
    let object = format!("{}/{}", repo.store.location(), record.key);
    stream_object(repo, identities, record, meter, move |r| {
        let mut out = std::io::stdout().lock();
        copy_out(r, &mut out, "standard output")?;
        out.flush()
            .map_err(|e| Error::io("writing to standard output", e))
    })
    .await
    .map_err(|e| match name_object(e, &object) {
        Error::Io { context, source } if source.kind() == std::io::ErrorKind::BrokenPipe => {
            Error::Io {
                context: format!(
                    "{context}: the program reading drctl's output stopped before the end; what it got is incomplete"
                ),
                source,
            }
        }
        other => other,
    })
}

/// Refuses `--output FILE` when `FILE` exists (a dangling link included), or
/// when something is at its partial name.
///
/// # Errors
/// `Refused` naming the path and how to clear it.
pub fn check_new_file(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::Refused(format!(
            "{} already exists; choose another --output or remove it",
            path.display()
        )));
    }
    check_no_partial(path)
}

/// Refuses a destination whose `.drctl-partial` name is taken. A symbolic
/// link there would have the plaintext written wherever it points, and a
/// file or directory there is most likely what an interrupted restore left:
/// plaintext that someone may still want, and in any case not drctl's to
/// delete silently.
///
/// # Errors
/// `Refused` naming the partial path and how to remove it.
pub fn check_no_partial(destination: &Path) -> Result<()> {
    let partial = partial_path(destination);
    match std::fs::symlink_metadata(&partial) {
        Ok(_) => Err(leftover_partial(&partial)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("checking {}", partial.display()), e)),
    }
}

pub(crate) fn leftover_partial(partial: &Path) -> Error {
    let shown = partial.display();
    match std::fs::symlink_metadata(partial) {
        Ok(m) if m.file_type().is_symlink() => Error::Refused(format!(
            "{shown} is a symbolic link; drctl writes a restore there first and never through a link; \
             remove it (`rm -- '{shown}'`) and run the restore again"
        )),
        Ok(m) if m.is_dir() => Error::Refused(format!(
            "{shown} already exists, most likely left by an interrupted restore; it may hold restored plaintext; \
             look at it, remove it (`rm -r -- '{shown}'`) and run the restore again"
        )),
        _ => Error::Refused(format!(
            "{shown} already exists, most likely left by an interrupted restore; it may hold restored plaintext; \
             look at it, remove it (`rm -- '{shown}'`) and run the restore again"
        )),
    }
}

pub(crate) fn partial_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".drctl-partial");
    path.with_file_name(name)
}

/// Refuses a directory that holds anything.
///
/// # Errors
/// `Refused` naming the directory.
pub fn check_empty_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(Error::Refused(format!(
            "{} is not empty; restore into a new or empty directory (drctl never unpacks over existing files)",
            dir.display()
        ))),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("reading {}", dir.display()), e)),
    }
}

/// What `verify` found for one backup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub policy: String,
    pub id: String,
    pub ok: bool,
    pub problems: Vec<String>,
    /// Objects not read because they are archived and not retrieved: not a
    /// problem with the backup, but not verified either.
    pub archived: Vec<String>,
}

/// Refuses, before anything is fetched or written, an identity that is not
/// one of the backup's recipients: age would only say "no matching key"
/// after the download has begun, and a wrong key is not damage.
///
/// # Errors
/// `Key` naming the backup, the identity's public keys and the recipients
/// it needs. A manifest without recorded recipients passes (age decides).
pub fn check_identity(identities: &[age::x25519::Identity], manifest: &Manifest) -> Result<()> {
    if manifest.recipients.is_empty() {
        return Ok(());
    }
    let have: Vec<String> = identities
        .iter()
        .map(|i| i.to_public().to_string())
        .collect();
    if have.iter().any(|h| manifest.recipients.contains(h)) {
        return Ok(());
    }
    Err(Error::Key(format!(
        "the identity file matches none of the backup's recipients: backup {} of `{}` is encrypted to {}, \
         and the identity given is for {}; use the identity file of one of those recipients \
         (--identity or `encryption.identity_file`). The backup itself is not damaged",
        manifest.id,
        manifest.policy,
        manifest.recipients.join(", "),
        if have.is_empty() {
            "no key".to_string()
        } else {
            have.join(", ")
        }
    )))
}

/// Checks a backup's objects: present and of the recorded size, and with
/// `read_data` every byte authenticated and both digests matched.
///
/// # Errors
/// `Key` when the identity matches none of the backup's recipients: that
/// is a problem with the key, not the backup, and checking the other
/// backups with the same key would only repeat it.
pub async fn verify(
    repo: &Repo,
    identities: Option<&[age::x25519::Identity]>,
    manifest: &Manifest,
) -> Result<VerifyReport> {
    if let Some(ids) = identities {
        check_identity(ids, manifest)?;
    }
    let mut problems = Vec::new();
    let mut archived = Vec::new();
    for record in manifest.objects() {
        let object = format!("{}/{}", repo.store.location(), record.key);
        let mut class = None;
        match repo
            .store
            .head(&record.key, record.version_id.as_deref())
            .await
        {
            Ok(meta) if meta.size != record.digests.size => problems.push(format!(
                "`{object}`: {} bytes stored, manifest says {}",
                meta.size, record.digests.size
            )),
            Ok(meta) => class = meta.storage_class,
            Err(e) if e.is_not_found() => {
                problems.push(format!("`{object}` is missing"));
                continue;
            }
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        }
        if identities.is_some() && archive::needs_retrieval(class.as_deref()) {
            let state = match repo.store.bucket() {
                Some(admin) => admin
                    .archive_state(&record.key, record.version_id.as_deref())
                    .await
                    .map(|s| s.next()),
                None => Ok(Next::Read),
            };
            match state {
                Ok(Next::Read) => {}
                Ok(_) => {
                    archived.push(format!(
                        "`{object}` ({}, not retrieved)",
                        class.as_deref().unwrap_or("archived")
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            }
        }
        if identities.is_none() && repo.copy_name.is_some() {
            // A copy is checked against the manifest's digest of the
            // stored bytes, which needs no identity: one byte that differs
            // from what was copied shows here.
            let hasher = record.digests.stored_hasher();
            match crate::copy::stored_digest(repo.store.as_ref(), &record.key, hasher).await {
                Ok(got) => {
                    if let Some(problem) = record.digests.stored_mismatch(&got) {
                        problems.push(format!("`{object}`: {problem}"));
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(ids) = identities {
            let r = stream_object(repo, ids, record, Meter::default(), |r| {
                std::io::copy(r, &mut std::io::sink()).map_err(|e| Error::Integrity {
                    object: String::new(),
                    reason: e.to_string(),
                })?;
                Ok(())
            })
            .await
            .map_err(|e| name_object(e, &object));
            match r {
                Ok(()) => {}
                Err(Error::Key(message)) => {
                    return Err(Error::Key(format!(
                        "{message}. Backup {} of `{}` is encrypted to {}",
                        manifest.id,
                        manifest.policy,
                        manifest.recipients.join(", ")
                    )));
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    Ok(VerifyReport {
        policy: manifest.policy.clone(),
        id: manifest.id.clone(),
        ok: problems.is_empty(),
        problems,
        archived,
    })
}

/// How to make archived objects readable before a job reads them.
#[derive(Debug, Clone)]
pub struct ThawOptions {
    /// Ask S3 for retrievals; without it, only say what is archived
    /// (verify and drills never start a billed retrieval).
    pub request: bool,
    pub tier: Tier,
    /// How long a retrieved copy stays readable.
    pub days: u32,
    /// Wait until every retrieval is done instead of failing with `Archived`.
    pub wait: bool,
    /// Time between HEADs while waiting.
    pub poll: Duration,
    pub cancel: Arc<AtomicBool>,
}

impl ThawOptions {
    /// Reports archived objects without asking for anything.
    pub fn check_only() -> ThawOptions {
        ThawOptions {
            request: false,
            tier: Tier::default(),
            days: archive::DEFAULT_RESTORE_DAYS,
            wait: false,
            poll: Duration::from_secs(60),
            cancel: Arc::default(),
        }
    }
}

/// Asks S3 for a readable copy of one archived object.
async fn request_retrieval(
    admin: &dyn crate::storage::admin::BucketAdmin,
    location: &str,
    record: &ObjectRecord,
    opts: &ThawOptions,
) -> Result<Requested> {
    admin
        .request_retrieval(
            &record.key,
            record.version_id.as_deref(),
            opts.tier,
            opts.days,
        )
        .await
        .map_err(|e| fetch_error(e, &format!("{location}/{}", record.key)))
}

/// Makes `records` (objects of `manifest`) readable: objects in GLACIER or
/// DEEP_ARCHIVE without a retrieved copy get a RestoreObject (unless one is
/// under way already), then either this waits, telling `report` how it
/// goes, or fails with `Archived` saying what was asked for and how long it
/// typically takes. A store that is not an S3 bucket has nothing archived.
///
/// # Errors
/// `Archived` (exit 5) when something is not readable yet and `wait` is
/// off; `Usage` for a tier the storage class does not offer (nothing is
/// requested then); `Interrupted` when cancelled while waiting; storage
/// errors of the HEAD and RestoreObject calls.
pub async fn thaw(
    repo: &Repo,
    manifest: &Manifest,
    records: &[&ObjectRecord],
    opts: &ThawOptions,
    report: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let Some(admin) = repo.store.bucket() else {
        return Ok(());
    };
    let location = repo.store.location();
    let mut pending = Vec::new();
    for record in records {
        let state = admin
            .archive_state(&record.key, record.version_id.as_deref())
            .await
            .map_err(|e| fetch_error(e, &format!("{location}/{}", record.key)))?;
        let next = state.next();
        if next != Next::Read {
            let class = state.storage_class.unwrap_or_default();
            pending.push((*record, class, next));
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let backup = format!("backup {} of `{}`", manifest.id, manifest.policy);
    let mut classes: Vec<&str> = pending.iter().map(|(_, c, _)| c.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    if !opts.request {
        let list: Vec<String> = pending
            .iter()
            .map(|(r, class, next)| {
                format!(
                    "`{location}/{}` ({class}, {})",
                    r.key,
                    match next {
                        Next::Wait => "retrieval in progress",
                        _ => "not retrieved",
                    }
                )
            })
            .collect();
        return Err(Error::Archived(format!(
            "{backup} is archived and cannot be read yet: {}. `drctl restore {} --backup {} --wait` asks S3 for a readable copy and waits for it",
            list.join(", "),
            manifest.policy,
            manifest.id
        )));
    }
    let mut times = Vec::new();
    for class in &classes {
        let time = archive::typical_time(class, opts.tier)
            .map_err(|e| Error::Usage(format!("{backup} is in {class}: {e}")))?;
        times.push(format!("{time} for {class}"));
    }
    let times = times.join(", ");
    const IN_PROGRESS: &str = "asked for earlier, still in progress (not asked again)";
    let mut lines = Vec::new();
    let mut all_done = true;
    for (record, class, next) in &pending {
        let requested = match next {
            Next::Wait => Requested::AlreadyInProgress,
            _ => request_retrieval(admin, &location, record, opts).await?,
        };
        all_done &= requested == Requested::AlreadyDone;
        let state = match requested {
            Requested::Started => "retrieval requested now",
            Requested::AlreadyInProgress => IN_PROGRESS,
            Requested::AlreadyDone => "already readable",
        };
        lines.push(format!("  `{location}/{}` ({class}): {state}", record.key));
    }
    if all_done {
        return Ok(());
    }
    let summary = format!(
        "{backup} is archived; retrieval from S3 (RestoreObject, {} tier, copy kept {} day{}; typically {times}):\n{}",
        opts.tier,
        opts.days,
        if opts.days == 1 { "" } else { "s" },
        lines.join("\n")
    );
    if !opts.wait {
        return Err(Error::Archived(format!(
            "{summary}\nNothing was restored. Run the same command again once the retrieval is done, or add --wait to wait for it."
        )));
    }
    report(&summary);
    let started = std::time::Instant::now();
    loop {
        let mut left = 0;
        for (record, _, _) in &pending {
            let state = admin
                .archive_state(&record.key, record.version_id.as_deref())
                .await
                .map_err(|e| fetch_error(e, &format!("{location}/{}", record.key)))?;
            match state.next() {
                Next::Read => {}
                Next::Wait => left += 1,
                // The retrieved copy expired, or the request was lost: ask
                // again rather than wait for nothing.
                Next::Request => {
                    request_retrieval(admin, &location, record, opts).await?;
                    left += 1;
                }
            }
        }
        let elapsed = human_duration(chrono::Duration::seconds(started.elapsed().as_secs() as i64));
        if left == 0 {
            report(&format!("Retrieved after {elapsed}; restoring."));
            return Ok(());
        }
        report(&format!(
            "Waiting for {left} of {} object{} to be retrieved from {} ({elapsed} so far; typically {times}).",
            pending.len(),
            if pending.len() == 1 { "" } else { "s" },
            classes.join(" and ")
        ));
        let until = std::time::Instant::now() + opts.poll;
        while std::time::Instant::now() < until {
            if opts.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::Interrupted(
                    "stopped waiting for the retrieval; it goes on at S3, and the same command run later picks it up".into(),
                ));
            }
            tokio::time::sleep(
                POLL_STEP.min(until.saturating_duration_since(std::time::Instant::now())),
            )
            .await;
        }
    }
}
