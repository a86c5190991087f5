//! drctl: backups of PostgreSQL databases and clusters and of configuration
//! files into an encrypted, versioned repository, and restores from it.
//!
//! How bytes flow, and which module does what (docs/ARCHITECTURE.md walks
//! through it):
//!
//! ```text
//! source ──▶ sealed (pipeline stages) ─────────────▶ storage
//! (pg_dump | pg_basebackup | tar)  hash → zstd → age → hash   (S3 multipart | local dir)
//!                                        repo: manifest written last
//! PostgreSQL archive_command ──▶ wal::push ──▶ sealed ──▶ storage (wal/)
//! ```
//!
//! - [`config`]: `drctl.toml` and `policies/*.toml`, validated once.
//! - [`source`]: the seam between a kind of data and the pipe: one module
//!   per kind (`postgres`, `pgcluster`, `files`), each taking a backup
//!   ([`source::capture`]) and restoring one.
//! - [`sealed`]: how a stream becomes a stored object and comes back,
//!   authenticated and with both digests checked; [`pipeline`] has the
//!   stages it uses and the bridge between blocking CPU work and async I/O.
//! - [`storage`]: the object-store seam and its two implementations.
//! - [`repo`]: repository layout, backup ids, manifests, the catalog and
//!   `--to` selection, leases, and the run records of failed backups.
//! - [`signing`]: ed25519 signatures embedded in the manifests, records and
//!   marker stored in the clear, checked against keys pinned in drctl.toml.
//! - [`backup`] and [`restore`]: the jobs that join them.
//! - [`wal`]: continuous WAL archiving for `postgres-cluster` policies
//!   (`wal-push` and `wal-fetch`, PostgreSQL's archive and restore commands).
//! - [`copy`]: copies of backups, WAL and records, as stored, into the
//!   second repositories of `[[copies]]`, checked there by SHA-256.
//! - [`drill`]: restore drills and their hash-chained records.
//! - [`rotate`]: `key rotate`, a new age header over each unchanged payload.
//! - [`retention`] (pure: which backups the rules keep) and [`prune`] (applies
//!   it to the store under the policy's lease, sparing held backups).
//! - [`report`]: compliance reports from backups and drill records (pure).
//! - [`daemon`]: the scheduler, `/health` and `/metrics`; [`alert`] sends
//!   its webhooks.
//! - [`malloc`]: glibc allocator settings for drctl's few large buffers.
//! - [`timespec`] and [`schedule`]: pure parsing of times and cron lines.
//! - [`bucket`] and [`archive`]: pure logic of the bucket settings `repo
//!   apply` keeps in shape, and of retrieving archived (Glacier) objects.

pub mod alert;
pub mod archive;
pub mod backup;
pub mod bucket;
pub mod cli;
pub mod config;
pub mod copy;
pub mod daemon;
pub mod drill;
pub mod error;
pub mod malloc;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod repo;
pub mod report;
pub mod restore;
pub mod retention;
pub mod rotate;
pub mod schedule;
pub mod sealed;
pub mod signing;
pub mod source;
pub mod storage;
pub mod timespec;
pub mod wal;

pub use error::{Error, Result};
