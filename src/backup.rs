//! A backup job: take the policy's lease, stream the source through the
//! pipeline into the store, confirm every object, write the manifest last.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Policy, SourceConfig};
use crate::error::{Error, Result};
use crate::pipeline::{self, CHANNEL_CHUNKS, ChannelWriter, Digests, Sealer, crypto};
use crate::progress::Progress;
use crate::repo::manifest::{Compression, Manifest, ObjectRecord, PostgresInfo};
use crate::repo::{self, Repo, lease::Lease};
use crate::source::dumpscan::{DumpPrint, DumpScanner};
use crate::source::{files, pgcluster, postgres, process};
use crate::storage::{PutMode, Stored, upload_stream};

/// Bytes read from pg_dump at a time.
const READ_BYTES: usize = 256 * 1024;
/// pg_dump chunks queued for the fingerprint thread.
const SCAN_CHUNKS: usize = 8;
/// How often a job looks at the process-wide stop flag.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// How long writing a failed attempt's run record may take. The store is
/// often why the backup failed; the caller should not wait on its retries.
const RUN_RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How the process runs a job (flags, not policy).
#[derive(Clone, Default)]
pub struct JobOptions {
    pub show_progress: bool,
    /// Set to stop the job; it aborts its upload and writes no manifest.
    pub cancel: Arc<AtomicBool>,
}

/// Runs one backup of `policy` and returns its manifest.
///
/// # Errors
/// Any failure of the source, pipeline or store. Nothing is left that looks
/// like a backup: without a manifest the objects are ignored, and they are
/// removed on the way out when possible.
///
/// A failed attempt leaves a run record (`runs/<policy>/<id>.json`, see
/// [`repo::runs`]) so that reports can count it; a busy policy (`Locked`)
/// or a stopped job (`Interrupted`) does not.
pub async fn run(
    repo: &Repo,
    config: &Config,
    policy: &Policy,
    opts: &JobOptions,
) -> Result<Manifest> {
    let started = Utc::now();
    let id = repo::new_backup_id(started);
    let result = attempt(repo, config, policy, opts, &id, started).await;
    if let Err(e) = &result
        // Told to stop (SIGTERM, Ctrl-C): whatever error that surfaced as,
        // the job was stopped on purpose and did not fail.
        && !opts.cancel.load(Ordering::Relaxed)
    {
        record_failure(repo, config, policy, &id, started, e).await;
    }
    result
}

/// Writes the run record of a failed attempt. Never a second error: the
/// store is often unreachable when a backup fails, and the backup's own
/// error is what the caller must see.
async fn record_failure(
    repo: &Repo,
    config: &Config,
    policy: &Policy,
    id: &str,
    started: chrono::DateTime<Utc>,
    error: &Error,
) {
    let Some(record) = repo::runs::RunRecord::failed(
        id,
        &policy.name,
        policy.source.kind(),
        &config.recipients,
        started,
        error,
    ) else {
        return;
    };
    let written = tokio::time::timeout(RUN_RECORD_TIMEOUT, repo::runs::write(repo, &record))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Storage(crate::error::StorageError::new(
                "put",
                repo.store.location(),
                repo::runs::run_key(&policy.name, id),
                crate::error::StorageErrorKind::Transient,
                format!("no answer within {} s", RUN_RECORD_TIMEOUT.as_secs()),
            )))
        });
    if let Err(e) = written {
        tracing::warn!(policy = %policy.name, run = %id, error = %e, "Cannot write the run record of the failed backup; reports will not count this failure.");
    }
}

async fn attempt(
    repo: &Repo,
    config: &Config,
    policy: &Policy,
    opts: &JobOptions,
    id: &str,
    started: chrono::DateTime<Utc>,
) -> Result<Manifest> {
    let lease = Lease::acquire(repo.store.clone(), &policy.name, "backup").await?;
    // The manifest's span starts once the lease is held, so that backups of
    // one policy never overlap in their manifests (the id keeps the time the
    // attempt began; it only has to sort).
    let started = Utc::now().max(started);
    // This job stops when the process is told to, or when this policy's
    // lease is lost; the latter must not stop other policies' jobs.
    let job = JobOptions {
        show_progress: opts.show_progress,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let lease_lost = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (outer, cancel, flag) = (opts.cancel.clone(), job.cancel.clone(), lease_lost.clone());
        let lost = lease.lost_signal();
        tokio::spawn(async move {
            tokio::select! {
                () = lost => flag.store(true, Ordering::Relaxed),
                () = async {
                    while !outer.load(Ordering::Relaxed) {
                        tokio::time::sleep(CANCEL_POLL).await;
                    }
                } => {}
            }
            cancel.store(true, Ordering::Relaxed);
        })
    };
    let result = run_locked(repo, config, policy, id, started, &job).await;
    abort_unfinished_uploads(repo, &policy.name, id).await;
    watcher.abort();
    let lost = lease_lost.load(Ordering::Relaxed);
    lease.release().await;
    match result {
        Ok(m) => Ok(m),
        Err(e) => {
            cleanup(repo, &policy.name, id).await;
            if lost {
                return Err(Error::LeaseLost {
                    policy: policy.name.clone(),
                    message: "the lease could not be renewed (is the repository reachable?); the backup was stopped and left nothing behind".into(),
                });
            }
            Err(e)
        }
    }
}

/// Aborts what is still open under the backup's prefix once its uploads
/// have ended, whether the backup succeeded or not: an upload whose start
/// was retried after a lost answer is known only to the store, and costs
/// storage until the bucket's lifecycle rule removes it.
async fn abort_unfinished_uploads(repo: &Repo, policy: &str, id: &str) {
    let prefix = repo::backup_dir(policy, id);
    match repo.store.abort_uploads(&prefix).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(policy, backup = %id, uploads = n, "Aborted unfinished uploads left by retried requests.");
        }
        Err(e) => {
            tracing::warn!(policy, backup = %id, error = %e, "Could not look for unfinished uploads of the backup; the bucket's abort-incomplete-uploads rule removes them.");
        }
    }
}

async fn cleanup(repo: &Repo, policy: &str, id: &str) {
    let prefix = repo::backup_dir(policy, id);
    if let Ok(objects) = repo.store.list(&prefix).await {
        for o in objects {
            if let Err(e) = repo.store.delete(&o.key).await {
                tracing::warn!(key = %o.key, error = %e, "Could not remove an object of a failed backup; it is ignored without a manifest.");
            }
        }
    }
}

async fn run_locked(
    repo: &Repo,
    config: &Config,
    policy: &Policy,
    id: &str,
    started: chrono::DateTime<Utc>,
    opts: &JobOptions,
) -> Result<Manifest> {
    let recipients = crypto::parse_recipients(&config.recipients)?;
    let dir = repo::backup_dir(&policy.name, id);
    let level = policy.compression_level;
    let mut progress =
        Progress::start(&format!("backup {}", policy.name), None, opts.show_progress);
    let counter = progress.counter.clone();
    let mut warnings = Vec::new();
    let mut cluster = None;
    let (data, fingerprint_json, point_in_time, pg_info, content) = match &policy.source {
        SourceConfig::Postgres {
            url,
            pg_dump_args,
            bin_dir,
            fingerprint: take_print,
        } => {
            let pg = postgres::resolve(url)?;
            let target = postgres::describe(&pg);
            let client = postgres::connect(&pg).await?;
            let snap = postgres::begin_snapshot(&client, &target).await?;
            let bin = postgres::bin_dir(bin_dir.as_deref(), snap.server_version_num / 10000);
            let program = postgres::program(bin.as_deref(), "pg_dump");
            let pg_dump_version =
                postgres::check_tool(&policy.name, &program, snap.server_version_num)?;
            let mut cmd = postgres::pg_dump_command(&program, url, &snap.id, pg_dump_args);
            if let Some(pw) = pg.get_password() {
                cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref());
            }
            let child = process::spawn(cmd, "pg_dump").map_err(|e| Error::Source {
                policy: policy.name.clone(),
                message: format!("cannot start {}: {e}", program.display()),
            })?;
            let name = policy.name.clone();
            let scan = *take_print;
            let produce = move |out: &mut dyn Write| dump_into(&name, child, out, &counter, scan);
            let key = format!("{dir}data.pgdump.zst.age");
            let data =
                store_sealed(repo, &key, &recipients, level, opts.cancel.clone(), produce).await;
            // The snapshot stayed exported until pg_dump had finished with it.
            let _ = client.batch_execute("COMMIT").await;
            let (data, print) = data?;
            let json = print.map(|p| serde_json::to_vec(&p).expect("fingerprint serialises"));
            let info = PostgresInfo {
                server_version: snap.server_version.clone(),
                pg_dump_version,
                database: pg.get_dbname().unwrap_or_default().to_string(),
                snapshot: snap.id.clone(),
            };
            (data, json, snap.point_in_time, Some(info), "pg_dump-custom")
        }
        SourceConfig::PostgresCluster {
            url,
            bin_dir,
            wal_wait,
        } => {
            let (stored, digests, info) =
                pgcluster::basebackup::capture(pgcluster::basebackup::Request {
                    repo,
                    policy: &policy.name,
                    url,
                    bin_dir: bin_dir.as_deref(),
                    wal_wait: wal_wait.to_std().unwrap_or_default(),
                    key: &format!("{dir}data.basebackup.tar.zst.age"),
                    label: &format!("drctl {id}"),
                    recipients: &recipients,
                    level,
                    cancel: opts.cancel.clone(),
                    counter: counter.clone(),
                })
                .await?;
            let point_in_time = info.end_time;
            cluster = Some(info);
            (
                (stored, digests),
                None,
                point_in_time,
                None,
                "basebackup-tar",
            )
        }
        SourceConfig::Files {
            paths,
            exclude,
            on_unreadable,
        } => {
            let (name, paths, exclude) = (policy.name.clone(), paths.clone(), exclude.clone());
            let on_unreadable = *on_unreadable;
            let produce = move |out: &mut dyn Write| {
                files::write_tar(&name, &paths, &exclude, on_unreadable, out, &counter)
            };
            let (data, archived) = store_sealed(
                repo,
                &format!("{dir}data.tar.zst.age"),
                &recipients,
                level,
                opts.cancel.clone(),
                produce,
            )
            .await?;
            warnings = archived.warnings;
            (
                data,
                Some(serde_json::to_vec(&archived.print).expect("fingerprint serialises")),
                started,
                None,
                "tar",
            )
        }
    };
    progress.finish();
    let (stored, digests) = data;
    let data_key = format!(
        "{dir}data.{}.zst.age",
        match content {
            "tar" => "tar",
            "basebackup-tar" => "basebackup.tar",
            _ => "pgdump",
        }
    );
    confirm(repo, &data_key, &stored, &digests).await?;
    let fingerprint = match fingerprint_json {
        Some(json) => {
            let key = format!("{dir}fingerprint.json.zst.age");
            let (sealed, digests) = pipeline::seal_bytes(&recipients, level, &json)
                .map_err(|e| Error::io("sealing the fingerprint", e))?;
            // As data, not with `put`: on S3 it gets the data tag, so the
            // archive lifecycle rule moves it with the dump it belongs to.
            let stored =
                crate::storage::put_data(repo.store.as_ref(), &key, Bytes::from(sealed)).await?;
            confirm(repo, &key, &stored, &digests).await?;
            Some(ObjectRecord {
                key,
                version_id: stored.version_id,
                content: "fingerprint-json".into(),
                digests,
            })
        }
        None => None,
    };
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted(
            "the backup was stopped before its manifest was written".into(),
        ));
    }
    let manifest = Manifest {
        format: repo::FORMAT_VERSION,
        id: id.to_string(),
        policy: policy.name.clone(),
        kind: policy.source.kind().to_string(),
        point_in_time,
        started_at: started,
        finished_at: Utc::now(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        compression: Compression {
            algorithm: "zstd".into(),
            level,
        },
        recipients: config.recipients.clone(),
        data: ObjectRecord {
            key: data_key,
            version_id: stored.version_id,
            content: content.into(),
            digests,
        },
        fingerprint,
        postgres: pg_info,
        warnings,
        cluster,
    };
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    repo.store
        .put(
            &repo::manifest_key(&policy.name, id),
            Bytes::from(body),
            PutMode::Create,
        )
        .await?;
    Ok(manifest)
}

/// Copies pg_dump's output into the pipe, fingerprinting the table data on
/// the way (see `source::fingerprint`), and checks how pg_dump ended.
fn dump_into(
    policy: &str,
    mut child: process::Supervised,
    out: &mut dyn Write,
    counter: &AtomicU64,
    scan: bool,
) -> Result<Option<DumpPrint>> {
    let mut stdout = child.child.stdout.take().expect("pg_dump stdout is piped");
    // The archive is parsed on a thread of its own from shared chunks, so it
    // runs beside compression instead of in front of it. Without a
    // fingerprint it still checks that the archive is complete: pg_dump can
    // exit 0 after a short write, and such a dump must not become a backup.
    let (scan_tx, scanner) = {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(SCAN_CHUNKS);
        let handle = std::thread::Builder::new()
            .name("drctl-fingerprint".into())
            .spawn(move || {
                let mut scanner = match scan {
                    true => DumpScanner::new(),
                    false => DumpScanner::structure_only(),
                };
                for chunk in rx {
                    let _ = scanner.write_all(&chunk);
                }
                scanner.finish()
            })
            .map_err(|e| Error::io("starting the fingerprint thread", e))?;
        (tx, handle)
    };
    let copied: std::io::Result<()> = (|| loop {
        let mut buf = bytes::BytesMut::zeroed(READ_BYTES);
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        let chunk = buf.freeze();
        // The scanner only stops early if it panicked; `join` reports that.
        let _ = scan_tx.send(chunk.clone());
        out.write_all(&chunk)?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    })();
    drop(scan_tx);
    if let Err(e) = copied {
        let stderr = child.kill();
        return Err(pipe_error(policy, e, &stderr));
    }
    let (status, stderr) = child
        .wait()
        .map_err(|e| Error::io("waiting for pg_dump", e))?;
    if !status.success() {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "pg_dump failed ({}): {}",
                process::describe(status),
                if stderr.is_empty() {
                    "no message"
                } else {
                    &stderr
                }
            ),
        });
    }
    let print = scanner
        .join()
        .expect("the fingerprint thread panicked")
        .map_err(|e| Error::Source {
            policy: policy.into(),
            message: format!(
                "pg_dump exited 0 but its output is not a complete archive ({e}); it was not kept as a backup. \
                 Look for the cause in pg_dump's environment (disk, memory, a killed pipe) and run the backup again"
            ),
        })?;
    Ok(scan.then_some(print))
}

fn pipe_error(policy: &str, e: std::io::Error, stderr: &str) -> Error {
    match e.kind() {
        _ if crate::pipeline::channel::is_cancelled(&e) => {
            Error::Interrupted("the backup was cancelled".into())
        }
        std::io::ErrorKind::BrokenPipe => Error::io("the upload stopped", e),
        _ => Error::Source {
            policy: policy.into(),
            message: format!("reading pg_dump output: {e} {stderr}"),
        },
    }
}

/// Streams what `produce` writes through seal → upload into a new object.
///
/// # Errors
/// The producer's error, or the store's when the upload failed first.
pub async fn store_sealed<T, F>(
    repo: &Repo,
    key: &str,
    recipients: &[age::x25519::Recipient],
    level: i32,
    cancel: Arc<AtomicBool>,
    produce: F,
) -> Result<((Stored, Digests), T)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> Result<T> + Send + 'static,
{
    store_sealed_with(
        repo,
        key,
        recipients,
        level,
        crate::pipeline::ZSTD_WORKERS,
        cancel,
        produce,
    )
    .await
}

/// [`store_sealed`] with `zstd_workers` compression threads: 0 for callers
/// that run several seals at once and would otherwise multiply zstd's
/// per-worker buffers.
///
/// # Errors
/// As [`store_sealed`].
pub async fn store_sealed_with<T, F>(
    repo: &Repo,
    key: &str,
    recipients: &[age::x25519::Recipient],
    level: i32,
    zstd_workers: u32,
    cancel: Arc<AtomicBool>,
    produce: F,
) -> Result<((Stored, Digests), T)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let (done_tx, done_rx) = oneshot::channel();
    let recipients = recipients.to_vec();
    let producer = tokio::task::spawn_blocking(move || -> Result<(Digests, T)> {
        let mut sealer = Sealer::with_workers(
            &recipients,
            level,
            zstd_workers,
            ChannelWriter::new(tx, cancel.clone()),
        )
        .map_err(|e| Error::io("starting encryption", e))?;
        // Whatever error a cancelled write turned into on its way up through
        // the source (tar names the file it was writing), it means "stopped".
        let value = produce(&mut sealer).map_err(|e| match cancel.load(Ordering::Relaxed) {
            true => Error::Interrupted("the backup was cancelled".into()),
            false => e,
        })?;
        let (mut sink, digests) = sealer.finish().map_err(|e| match e.kind() {
            _ if crate::pipeline::channel::is_cancelled(&e) => {
                Error::Interrupted("the backup was cancelled".into())
            }
            _ => Error::io("finishing compression and encryption", e),
        })?;
        sink.flush()
            .map_err(|e| Error::io("the upload stopped", e))?;
        let _ = done_tx.send(());
        Ok((digests, value))
    });
    let uploaded = upload_stream(repo.store.as_ref(), key, rx, done_rx).await;
    let produced = producer.await.expect("backup producer panicked");
    match (produced, uploaded) {
        (Ok((digests, value)), Ok(stored)) => Ok(((stored, digests), value)),
        // The producer only sees a closed pipe; the store knows why.
        (Err(Error::Io { .. }), Err(store_err)) => Err(store_err.into()),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

/// Checks that an object is in the store at the size that was sent.
pub(crate) async fn confirm(
    repo: &Repo,
    key: &str,
    stored: &Stored,
    digests: &Digests,
) -> Result<()> {
    let meta = repo.store.head(key, stored.version_id.as_deref()).await?;
    if meta.size != digests.size || stored.size != digests.size {
        return Err(Error::Integrity {
            object: format!("{}/{key}", repo.store.location()),
            reason: format!(
                "stored size {} differs from the {} bytes sent",
                meta.size, digests.size
            ),
        });
    }
    Ok(())
}
