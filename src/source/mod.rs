//! Sources of plaintext, and where restored plaintext goes: PostgreSQL
//! databases (`pg_dump` from an exported snapshot, with a fingerprint taken
//! in the same snapshot, see [`postgres`]), whole clusters (`pg_basebackup`
//! plus the WAL archive, see [`pgcluster`]) and files (a tar stream, see
//! [`files`]).
//!
//! The backup job calls [`capture`] and writes what it returns into the
//! manifest; it knows nothing else about the kinds. Each kind stores its
//! data through [`crate::sealed`] under the directory it is given.

pub mod files;
pub mod pgcluster;
pub mod postgres;
pub mod process;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use chrono::{DateTime, Utc};

use crate::config::SourceConfig;
use crate::error::Result;
use crate::pipeline::Digests;
use crate::repo::Repo;
use crate::repo::manifest::PostgresInfo;
use crate::storage::Stored;

/// What one backup job hands a source.
pub struct Capture<'a> {
    pub repo: &'a Repo,
    pub policy: &'a str,
    pub id: &'a str,
    /// `backups/<policy>/<id>/`: every object of the backup goes under it.
    pub dir: &'a str,
    pub recipients: &'a [age::x25519::Recipient],
    pub level: i32,
    pub cancel: Arc<AtomicBool>,
    /// Plaintext bytes read so far, for progress.
    pub counter: Arc<AtomicU64>,
    /// When the job started (a files backup's point in time).
    pub started: DateTime<Utc>,
}

/// What a source stored, for the manifest.
pub struct Captured {
    pub key: String,
    /// What the plaintext is: `pg_dump-custom`, `basebackup-tar`, `tar`.
    pub content: &'static str,
    pub stored: Stored,
    pub digests: Digests,
    /// A fingerprint (JSON) for the job to seal and store beside the data.
    pub fingerprint: Option<Vec<u8>>,
    pub point_in_time: DateTime<Utc>,
    pub postgres: Option<PostgresInfo>,
    pub cluster: Option<pgcluster::ClusterInfo>,
    pub warnings: Vec<String>,
}

/// Takes the data of one backup of `source` into the store.
///
/// # Errors
/// The source's, the pipeline's or the store's; what was stored is the
/// job's to clean up (it has no manifest, so nothing treats it as a backup).
pub async fn capture(source: &SourceConfig, cx: &Capture<'_>) -> Result<Captured> {
    match source {
        SourceConfig::Postgres {
            url,
            pg_dump_args,
            bin_dir,
            fingerprint,
        } => postgres::dump::capture(cx, url, pg_dump_args, bin_dir.as_deref(), *fingerprint).await,
        SourceConfig::PostgresCluster {
            url,
            bin_dir,
            wal_wait,
        } => {
            pgcluster::basebackup::capture(
                cx,
                url,
                bin_dir.as_deref(),
                wal_wait.to_std().unwrap_or_default(),
            )
            .await
        }
        SourceConfig::Files {
            paths,
            exclude,
            on_unreadable,
        } => files::capture(cx, paths, exclude, *on_unreadable).await,
    }
}
