//! A backup job: take the policy's lease, stream the source through the
//! pipeline into the store, confirm every object, write the manifest last.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use chrono::Utc;

use crate::config::{Config, Policy};
use crate::error::{Error, Result};
use crate::pipeline::{self, crypto};
use crate::progress::Progress;
use crate::repo::manifest::{Compression, Manifest, ObjectRecord};
use crate::repo::{self, Repo, lease::Lease};
use crate::sealed::confirm;
use crate::source;
use crate::storage::PutMode;

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
    repo.require_signing_key(&format!("backup of policy `{}`", policy.name))?;
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
        tracing::warn!(event = "run_record_not_written", policy = %policy.name, run = %id, error = %e, "Cannot write the run record of the failed backup; reports will not count this failure.");
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
            tracing::info!(event = "upload_cleanup_failed", policy, backup = %id, uploads = n, "Aborted unfinished uploads left by retried requests.");
        }
        Err(e) => {
            tracing::warn!(event = "upload_cleanup_failed", policy, backup = %id, error = %e, "Could not look for unfinished uploads of the backup; the bucket's abort-incomplete-uploads rule removes them.");
        }
    }
}

async fn cleanup(repo: &Repo, policy: &str, id: &str) {
    let prefix = repo::backup_dir(policy, id);
    if let Ok(objects) = repo.store.list(&prefix).await {
        for o in objects {
            if let Err(e) = repo.store.delete(&o.key).await {
                tracing::warn!(event = "leftover_not_removed", key = %o.key, error = %e, "Could not remove an object of a failed backup; it is ignored without a manifest.");
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
    let captured = source::capture(
        &policy.source,
        &source::Capture {
            repo,
            policy: &policy.name,
            id,
            dir: &dir,
            recipients: &recipients,
            level,
            cancel: opts.cancel.clone(),
            counter: progress.counter.clone(),
            started,
        },
    )
    .await?;
    progress.finish();
    let source::Captured {
        key: data_key,
        content,
        stored,
        digests,
        fingerprint: fingerprint_json,
        point_in_time,
        postgres: pg_info,
        cluster,
        warnings,
    } = captured;
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
        format: repo::WRITE_FORMAT,
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
    let key = repo::manifest_key(&policy.name, id);
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    repo.store
        .put(&key, repo.sign(&key, body)?, PutMode::Create)
        .await?;
    Ok(manifest)
}
