//! Restores: the pipe reversed. Every byte is authenticated by age before it
//! leaves the pipe and both digests are checked at the end; destinations are
//! written so that a failure part-way leaves nothing that looks restored (a
//! scratch database that is dropped, a `.drctl-partial` file or directory
//! that is removed).

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::archive::{self, Next, Requested, Tier};
use crate::error::{Error, Result, StorageError, StorageErrorKind};
use crate::pipeline::{CHANNEL_CHUNKS, ChannelReader, Digests, Opener, crypto};
use crate::progress::Meter;
use crate::repo::Repo;
use crate::repo::manifest::{Manifest, ObjectRecord};
use crate::source::dumpscan::DumpPrint;
use crate::source::{files, fingerprint, postgres, process};
use crate::timespec::human_duration;

/// Bytes handed to the destination at a time.
const WRITE_BYTES: usize = 256 * 1024;
/// How often a wait for an archive retrieval looks at the cancel flag.
const POLL_STEP: Duration = Duration::from_millis(200);

/// Streams an object's authenticated plaintext into `consume` and checks
/// both digests against the manifest afterwards.
///
/// # Errors
/// `Integrity` naming the object for tampering, truncation or a digest
/// mismatch; `Key` for an identity that matches no recipient; the consumer's
/// own error otherwise.
pub async fn stream_object<T, F>(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    record: &ObjectRecord,
    meter: Meter,
    consume: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> Result<T> + Send + 'static,
{
    let object = format!("{}/{}", repo.store.location(), record.key);
    let (value, digests) = stream_plaintext(
        repo,
        identities,
        &record.key,
        record.version_id.as_deref(),
        meter,
        consume,
    )
    .await?;
    check_digests(&object, record, &digests)?;
    Ok(value)
}

/// Streams the authenticated plaintext of one object into `consume` and
/// returns what both sides hashed to, for the caller to compare with what
/// it expects (a manifest's record, or the digest in a WAL object's key).
///
/// # Errors
/// As [`stream_object`], without the digest comparison.
pub async fn stream_plaintext<T, F>(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    key: &str,
    version: Option<&str>,
    meter: Meter,
    consume: F,
) -> Result<(T, Digests)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> Result<T> + Send + 'static,
{
    let object = format!("{}/{}", repo.store.location(), key);
    let mut stream = repo
        .store
        .get_stream(key, version)
        .await
        .map_err(|e| fetch_error(e, &object))?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, StorageError>>(CHANNEL_CHUNKS);
    let stop = meter.cancel.clone();
    let pump = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let identities = identities.to_vec();
    let obj = object.clone();
    let worker = tokio::task::spawn_blocking(move || -> Result<(T, Digests)> {
        let cancel = meter.cancel.clone();
        let mut reader = ChannelReader::new(rx, meter.bytes);
        let outcome = (|| {
            let mut opener = Opener::new(&identities, &mut reader).map_err(|e| match e {
                crypto::OpenError::NoMatchingKey => Error::Key(format!("the identity file does not decrypt `{obj}`: it matches none of the backup's recipients")),
                other => Error::Integrity { object: obj.clone(), reason: other.to_string() },
            })?;
            let value = consume(&mut opener)?;
            let digests = opener.finish().map_err(|e| Error::Integrity {
                object: obj.clone(),
                reason: e.to_string(),
            })?;
            Ok((value, digests))
        })();
        match (outcome, reader.take_failure()) {
            (Err(_), _) if cancel.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(Error::Interrupted(
                    "the restore was stopped before it finished; nothing was put in place".into(),
                ))
            }
            (Err(_), Some(storage)) => Err(fetch_error(storage, &obj)),
            (outcome, _) => outcome,
        }
    });
    let result = worker.await.expect("restore worker panicked");
    pump.abort();
    result
}

fn fetch_error(e: StorageError, object: &str) -> Error {
    match e.kind {
        StorageErrorKind::NotFound => Error::Integrity {
            object: object.into(),
            reason: "the object is missing from the repository".into(),
        },
        // `thaw` normally catches this first, with the storage class.
        StorageErrorKind::Archived => Error::Archived(format!(
            "`{object}` is in an archive storage class (GLACIER or DEEP_ARCHIVE) and has no retrieved copy; \
             `drctl restore POLICY --backup ID --wait` asks S3 for one and waits for it"
        )),
        _ => Error::Storage(e),
    }
}

fn check_digests(object: &str, record: &ObjectRecord, got: &Digests) -> Result<()> {
    let want = &record.digests;
    let problem = if got.size != want.size {
        Some(format!(
            "{} bytes read, the manifest says {}",
            got.size, want.size
        ))
    } else if got.sha256 != want.sha256 {
        Some("the sha256 of the stored bytes differs from the manifest".to_string())
    } else if got.plaintext_size != want.plaintext_size
        || got.plaintext_sha256 != want.plaintext_sha256
    {
        Some("the decrypted data differs from what the manifest recorded".to_string())
    } else {
        None
    };
    match problem {
        Some(reason) => Err(Error::Integrity {
            object: object.into(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Reads a small sealed object (the fingerprint) whole.
///
/// # Errors
/// As [`stream_object`].
pub async fn read_sealed(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    record: &ObjectRecord,
) -> Result<Vec<u8>> {
    stream_object(repo, identities, record, Meter::default(), |r| {
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| Error::io("reading the fingerprint", e))?;
        Ok(out)
    })
    .await
}

fn copy_out(from: &mut dyn Read, to: &mut dyn Write, what: &str) -> Result<()> {
    let mut buf = vec![0u8; WRITE_BYTES];
    loop {
        let n = from.read(&mut buf).map_err(|e| read_error(e, what))?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing to {what}"), e))?;
    }
}

/// A read failure inside the pipe is an authentication or decompression
/// failure; the caller turns it into `Integrity` naming the object.
fn read_error(e: std::io::Error, what: &str) -> Error {
    Error::Integrity {
        object: String::new(),
        reason: format!("{e} (while writing to {what})"),
    }
}

fn name_object(e: Error, object: &str) -> Error {
    match e {
        Error::Integrity { object: o, reason } if o.is_empty() => Error::Integrity {
            object: object.into(),
            reason,
        },
        other => other,
    }
}

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

fn leftover_partial(partial: &Path) -> Error {
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

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".drctl-partial");
    path.with_file_name(name)
}

/// Unpacks a files backup into `dir`, which must not exist or be empty.
/// Unpacks beside it first (`DIR.drctl-partial`, which must not exist) and
/// renames into place at the end.
///
/// # Errors
/// As [`stream_object`]; a non-empty `dir` or a taken partial name is
/// refused before anything is read.
pub async fn to_directory(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    manifest: &Manifest,
    dir: &Path,
    verify: bool,
    meter: Meter,
) -> Result<Option<Vec<String>>> {
    let record = &manifest.data;
    check_empty_dir(dir)?;
    check_no_partial(dir)?;
    let partial = partial_path(dir);
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    // `create_dir` fails on anything already at that name, a link included,
    // even one put there since the check.
    std::fs::create_dir(&partial).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => leftover_partial(&partial),
        _ => Error::io(format!("creating {}", partial.display()), e),
    })?;
    let object = format!("{}/{}", repo.store.location(), record.key);
    let target = partial.clone();
    let result = stream_object(repo, identities, record, meter, move |r| {
        files::unpack(r, &target).map_err(|e| Error::Integrity {
            object: String::new(),
            reason: format!("unpacking: {e}"),
        })
    })
    .await
    .map_err(|e| name_object(e, &object));
    let result = match (result, &manifest.fingerprint) {
        (Ok(()), Some(print)) if verify => compare_files(repo, identities, print, &partial)
            .await
            .map(Some),
        (r, _) => r.map(|()| None),
    };
    match result {
        Ok(Some(diffs)) if !diffs.is_empty() => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(Error::Integrity {
                object: object.clone(),
                reason: format!(
                    "the unpacked files do not match the backup's fingerprint: {}",
                    diffs.join("; ")
                ),
            })
        }
        Ok(diffs) => {
            if dir.exists() {
                std::fs::remove_dir(dir)
                    .map_err(|e| Error::io(format!("replacing the empty {}", dir.display()), e))?;
            }
            std::fs::rename(&partial, dir).map_err(|e| {
                Error::io(
                    format!("renaming {} to {}", partial.display(), dir.display()),
                    e,
                )
            })?;
            Ok(diffs)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

async fn compare_files(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    record: &ObjectRecord,
    root: &Path,
) -> Result<Vec<String>> {
    let json = read_sealed(repo, identities, record).await?;
    let expected: files::FilesPrint =
        serde_json::from_slice(&json).map_err(|e| Error::Integrity {
            object: format!("{}/{}", repo.store.location(), record.key),
            reason: format!("not a files fingerprint: {e}"),
        })?;
    let root = root.to_path_buf();
    Ok(
        tokio::task::spawn_blocking(move || files::compare(&expected, &root))
            .await
            .expect("compare task panicked"),
    )
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

/// How to restore into a database.
#[derive(Debug, Clone, Default)]
pub struct DbRestoreOptions {
    /// Replace a target database that is not empty.
    pub clean: bool,
    /// Compare the restored database with the backup's fingerprint.
    pub verify: bool,
    pub pg_restore_args: Vec<String>,
}

/// What a finished restore into a database did.
#[derive(Debug, Clone, Default)]
pub struct DbRestored {
    /// With `verify`: one line per difference from the fingerprint (empty
    /// when it matched); `None` when nothing was compared.
    pub diffs: Option<Vec<String>>,
    /// Fetching, decrypting, decompressing and pg_restore, which stream
    /// together and so are timed together.
    pub restore_seconds: f64,
    pub verify_seconds: f64,
    /// Tables and rows the fingerprint covered.
    pub tables: usize,
    pub rows: u64,
}

/// What a restore into a database found and will do.
#[derive(Debug, Clone)]
pub struct DbTarget {
    pub url: String,
    pub describe: String,
    pub dbname: String,
    /// Relations (tables, views, sequences…) and large objects already there,
    /// or `None` if the database does not exist.
    pub existing_objects: Option<i64>,
}

/// Looks at the target database without changing it.
///
/// # Errors
/// `Database` when the server cannot be reached.
pub async fn inspect_target(url: &str) -> Result<DbTarget> {
    let pg = postgres::resolve(url)?;
    let describe = postgres::describe(&pg);
    let dbname = pg
        .get_dbname()
        .ok_or_else(|| Error::Database {
            target: describe.clone(),
            message: "the target names no database".into(),
        })?
        .to_string();
    let exists = postgres::Admin::connect(url).await?.exists(&dbname).await?;
    let db = |e: tokio_postgres::Error| Error::Database {
        target: describe.clone(),
        message: postgres::error_text(&e),
    };
    let existing_objects = if exists {
        let client = postgres::connect(&pg).await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') \
                 + (SELECT count(*) FROM pg_largeobject_metadata)",
                &[],
            )
            .await
            .map_err(db)?;
        Some(row.get::<_, i64>(0))
    } else {
        None
    };
    Ok(DbTarget {
        url: url.to_string(),
        describe,
        dbname,
        existing_objects,
    })
}

/// Restores a postgres backup into `target`: pg_restore into a fresh scratch
/// database on the same server, optional fingerprint check, then a rename
/// into place (replacing an empty, or with `clean` any, existing database).
/// On any failure the scratch database is dropped and the target is as it was.
///
/// # Errors
/// `Refused` for a non-empty target without `clean`; pipeline, pg_restore
/// and database errors otherwise.
pub async fn to_database(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    manifest: &Manifest,
    target: &DbTarget,
    opts: &DbRestoreOptions,
    meter: Meter,
) -> Result<DbRestored> {
    if let Some(n) = target.existing_objects.filter(|n| *n > 0)
        && !opts.clean
    {
        return Err(Error::Refused(format!(
            "database `{}` on {} is not empty ({n} objects); restore into a new database, or pass --clean to replace it",
            target.dbname, target.describe
        )));
    }
    let tag = manifest.id.rsplit('-').next().unwrap_or(&manifest.id);
    let scratch = postgres::db_name_with(&target.dbname, &format!("_drctl_{tag}"));
    let admin = postgres::Admin::connect(&target.url).await?;
    admin.drop(&scratch).await?;
    admin.create(&scratch).await?;
    let outcome = restore_into_scratch(
        repo,
        identities,
        manifest,
        &target.url,
        &scratch,
        opts,
        meter,
    )
    .await;
    let outcome = match outcome {
        Ok(done) if done.diffs.as_ref().is_some_and(|d| !d.is_empty()) => Err(Error::Integrity {
            object: format!("{}/{}", repo.store.location(), manifest.data.key),
            reason: format!(
                "the restored data does not match the backup's fingerprint: {}",
                done.diffs.unwrap_or_default().join("; ")
            ),
        }),
        other => other,
    };
    let outcome = match outcome {
        Ok(done) => swap_into_place(&admin, &scratch, target, tag)
            .await
            .map(|()| done),
        Err(e) => Err(e),
    };
    if outcome.is_err()
        && let Err(drop) = admin.drop(&scratch).await
    {
        tracing::error!(database = %scratch, error = %drop, "Could not drop the scratch database of a failed restore; drop it by hand.");
    }
    outcome
}

/// Renames the finished scratch database to the target's name. An existing
/// target is moved aside first and dropped only once the new one is in
/// place; if that fails it is moved back.
async fn swap_into_place(
    admin: &postgres::Admin,
    scratch: &str,
    target: &DbTarget,
    tag: &str,
) -> Result<()> {
    if target.existing_objects.is_none() {
        return admin.rename(scratch, &target.dbname).await;
    }
    let old = postgres::db_name_with(&target.dbname, &format!("_drctl_{tag}_old"));
    admin.rename(&target.dbname, &old).await?;
    if let Err(e) = admin.rename(scratch, &target.dbname).await {
        if let Err(back) = admin.rename(&old, &target.dbname).await {
            tracing::error!(database = %old, error = %back, "Could not move the original database back; it is intact under this name.");
        }
        return Err(e);
    }
    admin.drop(&old).await
}

async fn restore_into_scratch(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    manifest: &Manifest,
    target_url: &str,
    scratch: &str,
    opts: &DbRestoreOptions,
    meter: Meter,
) -> Result<DbRestored> {
    let started = std::time::Instant::now();
    let scratch_url = postgres::with_dbname(target_url, scratch);
    let pg = postgres::resolve(&scratch_url)?;
    let server = {
        let c = postgres::connect(&pg).await?;
        let row = c
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| Error::Database {
                target: postgres::describe(&pg),
                message: postgres::error_text(&e),
            })?;
        row.get::<_, i32>(0) as u32
    };
    let bin = postgres::bin_dir(None, server / 10000);
    let program = postgres::program(bin.as_deref(), "pg_restore");
    postgres::check_tool(&manifest.policy, &program, server)?;
    let mut cmd = postgres::pg_restore_command(&program, &scratch_url);
    cmd.args(&opts.pg_restore_args);
    if let Some(pw) = pg.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref());
    }
    let mut child = process::spawn(cmd, "pg_restore").map_err(|e| Error::Source {
        policy: manifest.policy.clone(),
        message: format!("cannot start {}: {e}", program.display()),
    })?;
    let object = format!("{}/{}", repo.store.location(), manifest.data.key);
    let streamed = stream_object(repo, identities, &manifest.data, meter, move |r| {
        let mut stdin = child.child.stdin.take().expect("pg_restore stdin is piped");
        let copied = copy_out(r, &mut stdin, "pg_restore");
        drop(stdin);
        if let Err(e) = copied {
            let stderr = child.kill();
            return Err(match e {
                Error::Io { .. } => Error::Database {
                    target: "pg_restore".into(),
                    message: format!("pg_restore stopped reading: {stderr}"),
                },
                other => other,
            });
        }
        let (status, stderr) = child
            .wait()
            .map_err(|e| Error::io("waiting for pg_restore", e))?;
        if !status.success() {
            return Err(Error::Database {
                target: "pg_restore".into(),
                message: format!(
                    "pg_restore failed ({}): {stderr}",
                    process::describe(status)
                ),
            });
        }
        Ok(())
    })
    .await
    .map_err(|e| name_object(e, &object));
    streamed?;
    let mut done = DbRestored {
        restore_seconds: started.elapsed().as_secs_f64(),
        ..DbRestored::default()
    };
    if !opts.verify {
        return Ok(done);
    }
    let Some(record) = &manifest.fingerprint else {
        return Ok(done);
    };
    let verify_started = std::time::Instant::now();
    let json = read_sealed(repo, identities, record).await?;
    let expected: DumpPrint = serde_json::from_slice(&json).map_err(|e| Error::Integrity {
        object: record.key.clone(),
        reason: format!("not a fingerprint: {e}"),
    })?;
    let client = postgres::connect(&pg).await?;
    let describe = postgres::describe(&pg);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| Error::Database {
            target: describe.clone(),
            message: postgres::error_text(&e),
        })?;
    let diffs = fingerprint::verify(&client, &describe, &expected).await?;
    let _ = client.batch_execute("COMMIT").await;
    done.verify_seconds = verify_started.elapsed().as_secs_f64();
    done.tables = expected.tables.len();
    done.rows = expected.tables.iter().map(|t| t.rows).sum();
    done.diffs = Some(diffs);
    Ok(done)
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
