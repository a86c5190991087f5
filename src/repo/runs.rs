//! Run records: one small JSON object per failed backup attempt, so that a
//! report can count failures and give a success rate. A failed backup
//! leaves no manifest (invariant 1), so without these it leaves no trace.
//!
//! Error text can name tables (pg_dump's "permission denied for table …"),
//! so only a fixed error class is plaintext; the message itself is sealed
//! with age to the repository's recipients (invariant 4).

use std::io::Write;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::storage::PutMode;

/// Version of the run record; bumped when a field changes meaning or goes.
pub const RUN_FORMAT: u32 = 1;

/// How long run records are kept: a year's audit period and then some.
/// Prune removes older ones, by the time in their id.
pub const KEEP_DAYS: i64 = 400;

pub fn runs_prefix(policy: &str) -> String {
    format!("runs/{policy}/")
}

pub fn run_key(policy: &str, id: &str) -> String {
    format!("runs/{policy}/{id}.json")
}

/// `runs/<policy>/<run-id>.json`. docs/FORMAT.md describes every field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunRecord {
    pub format: u32,
    /// The id the backup would have had (`backups/<policy>/<id>/` may hold
    /// leftovers when they could not be removed).
    pub id: String,
    pub policy: String,
    /// `postgres` or `files`.
    pub kind: String,
    pub host: String,
    pub tool_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Always `failed` for now: successful backups are shown by their manifest.
    pub result: String,
    /// One of [`ERROR_CLASSES`]; never the message, which may name tables.
    pub error_class: String,
    /// The error message, age-encrypted to the repository's recipients,
    /// base64 (standard alphabet, padded). Null when it could not be sealed.
    pub error_sealed: Option<String>,
}

/// Every value `error_class` takes.
pub const ERROR_CLASSES: &[&str] = &[
    "source",
    "database",
    "storage",
    "integrity",
    "lease_lost",
    "key",
    "config",
    "io",
    "other",
];

/// The class of a failed attempt's error, or `None` when the error means no
/// backup was attempted or it was stopped on purpose (`Locked`,
/// `Interrupted`): those are not failures and get no record.
pub fn error_class(e: &Error) -> Option<&'static str> {
    Some(match e {
        Error::Locked { .. } | Error::Interrupted(_) => return None,
        Error::Source { .. } => "source",
        Error::Database { .. } => "database",
        Error::Storage(_)
        | Error::NotInitialised { .. }
        | Error::Archived(_)
        | Error::SpoolFull(_) => "storage",
        Error::Integrity { .. } | Error::VerifyFailed { .. } | Error::Untrusted(_) => "integrity",
        Error::LeaseLost { .. } => "lease_lost",
        Error::Key(_) => "key",
        Error::Config(_)
        | Error::ConfigMany(_)
        | Error::UnknownPolicy { .. }
        | Error::InvalidTime { .. }
        | Error::Usage(_) => "config",
        Error::Io { .. } => "io",
        Error::NoBackup(_)
        | Error::DrillFailed { .. }
        | Error::Refused(_)
        | Error::Unverifiable(_)
        | Error::NotArchived(_)
        | Error::StopRecovery(_)
        | Error::Unhealthy(_)
        | Error::ChainBroken { .. }
        | Error::BucketDrift { .. } => "other",
    })
}

/// Encrypts `message` with age alone (no compression), so that
/// `base64 -d | age -d -i KEY` reads it without drctl.
///
/// # Errors
/// A recipient that is not an age X25519 key, or an encryption failure.
pub fn seal_message(recipients: &[String], message: &str) -> Result<String> {
    let recipients = crate::pipeline::crypto::parse_recipients(recipients)?;
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| Error::Key(format!("cannot encrypt to the recipients: {e}")))?;
    let mut sealed = Vec::new();
    let mut w = encryptor
        .wrap_output(&mut sealed)
        .map_err(|e| Error::io("sealing an error message", e))?;
    w.write_all(message.as_bytes())
        .and_then(|()| w.finish().map(|_| ()))
        .map_err(|e| Error::io("sealing an error message", e))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

impl RunRecord {
    /// The record of an attempt that failed with `error`; `None` when the
    /// error is not a failure (see [`error_class`]).
    pub fn failed(
        id: &str,
        policy: &str,
        kind: &str,
        recipients: &[String],
        started_at: DateTime<Utc>,
        error: &Error,
    ) -> Option<RunRecord> {
        let class = error_class(error)?;
        let error_sealed = match seal_message(recipients, &error.to_string()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(event = "run_record_unsealed", policy = %policy, error = %e, "Cannot seal the error message of a failed backup; its run record has only the error class.");
                None
            }
        };
        Some(RunRecord {
            format: RUN_FORMAT,
            id: id.to_string(),
            policy: policy.to_string(),
            kind: kind.to_string(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at,
            finished_at: Utc::now(),
            result: "failed".into(),
            error_class: class.into(),
            error_sealed,
        })
    }
}

/// Writes a run record with a conditional create, so none is overwritten.
///
/// # Errors
/// Storage errors.
pub async fn write(repo: &Repo, record: &RunRecord) -> Result<()> {
    let key = run_key(&record.policy, &record.id);
    let body = serde_json::to_vec_pretty(record).expect("run record serialises");
    repo.store
        .put(&key, repo.sign(&key, body)?, PutMode::Create)
        .await?;
    Ok(())
}

/// A run record as stored: its key, and the record or why it cannot be read.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub key: String,
    pub record: std::result::Result<RunRecord, String>,
}

/// Every run record of a policy, oldest first (ids sort by time).
///
/// # Errors
/// Storage errors from listing or reading.
pub async fn load(repo: &Repo, policy: &str) -> Result<Vec<StoredRun>> {
    Ok(crate::repo::read_json_objects(repo, &runs_prefix(policy))
        .await?
        .into_iter()
        .map(|(key, bytes)| StoredRun {
            record: repo.check_signature(&key, &bytes).and_then(|()| {
                serde_json::from_slice::<RunRecord>(&bytes).map_err(|e| e.to_string())
            }),
            key,
        })
        .collect())
}

/// Deletes the run records of `policy` begun before `cutoff` (by the time
/// in their id); returns how many. Prune calls it under the policy's lease.
///
/// # Errors
/// Storage errors of the listing or a delete.
pub async fn remove_older_than(repo: &Repo, policy: &str, cutoff: DateTime<Utc>) -> Result<usize> {
    let mut removed = 0;
    for object in repo.store.list(&runs_prefix(policy)).await? {
        let id = object.key[runs_prefix(policy).len()..].trim_end_matches(".json");
        if crate::repo::catalog::id_time(id).is_some_and(|t| t < cutoff) {
            repo.store.delete(&object.key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{StorageError, StorageErrorKind};

    #[test]
    fn locked_and_interrupted_attempts_are_not_failures() {
        let locked = Error::Locked {
            policy: "db".into(),
            message: "held by backup on host-a".into(),
        };
        assert_eq!(error_class(&locked), None);
        assert_eq!(error_class(&Error::Interrupted("SIGTERM".into())), None);
    }

    #[test]
    fn every_failure_has_a_class_from_the_vocabulary() {
        let cases = [
            (
                Error::Source {
                    policy: "db".into(),
                    message: "pg_dump failed: permission denied for table secret_orders".into(),
                },
                "source",
            ),
            (
                Error::Database {
                    target: "db@127.0.0.1".into(),
                    message: "connection refused".into(),
                },
                "database",
            ),
            (
                Error::Storage(StorageError::new(
                    "put",
                    "s3://b",
                    "k",
                    StorageErrorKind::Transient,
                    "503",
                )),
                "storage",
            ),
            (
                Error::Integrity {
                    object: "o".into(),
                    reason: "size".into(),
                },
                "integrity",
            ),
            (
                Error::LeaseLost {
                    policy: "db".into(),
                    message: "lost".into(),
                },
                "lease_lost",
            ),
            (Error::Key("bad recipient".into()), "key"),
            (Error::Usage("x".into()), "config"),
            (
                Error::io("the upload stopped", std::io::Error::other("x")),
                "io",
            ),
            (Error::Refused("x".into()), "other"),
        ];
        for (e, class) in cases {
            assert_eq!(error_class(&e), Some(class), "{e}");
            assert!(ERROR_CLASSES.contains(&class));
        }
    }

    #[test]
    fn a_record_keeps_the_message_only_sealed() {
        let (secret, public) = crate::pipeline::crypto::generate();
        let err = Error::Source {
            policy: "app-config".into(),
            message: "cannot read /etc/secret_orders.conf".into(),
        };
        let r = RunRecord::failed(
            "20261127T012000Z-00000001",
            "app-config",
            "files",
            std::slice::from_ref(&public),
            Utc::now(),
            &err,
        )
        .expect("a source error is a failure");
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("secret_orders"), "{json}");
        assert_eq!(
            (r.result.as_str(), r.error_class.as_str()),
            ("failed", "source")
        );
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(r.error_sealed.unwrap())
            .unwrap();
        let key = secret.lines().last().unwrap();
        let id: age::x25519::Identity = key.parse().unwrap();
        let plain = age::decrypt(&id, &sealed).unwrap();
        assert_eq!(String::from_utf8(plain).unwrap(), err.to_string());
        let back: RunRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.id, "20261127T012000Z-00000001");
    }
}
