//! drctl: backups of PostgreSQL databases and configuration files into an
//! encrypted, versioned repository, and restores from it.
//!
//! How bytes flow, and which module does what:
//!
//! ```text
//! source ──▶ pipeline ─────────────────────────────▶ storage
//! (pg_dump | tar)  hash → zstd → age → hash          (S3 multipart | local dir)
//!                                        repo: manifest written last
//! ```
//!
//! - [`config`]: `drctl.toml` and `policies/*.toml`, validated once.
//! - [`source`]: produces plaintext (pg_dump with a fingerprint taken in the
//!   same snapshot, or a tar stream) and consumes it on restore.
//! - [`pipeline`]: the streaming hash/compress/encrypt stages and the bridge
//!   between blocking CPU work and async network I/O.
//! - [`storage`]: the object-store seam and its two implementations.
//! - [`repo`]: repository layout, backup ids, manifests, the catalog and
//!   `--to` selection, leases, and the run records of failed backups.
//! - [`backup`] and [`restore`]: the jobs that join them.
//! - [`drill`]: restore drills and their hash-chained records.
//! - [`retention`] (pure: which backups the rules keep) and [`prune`] (applies
//!   it to the store under the policy's lease, sparing held backups).
//! - [`report`]: compliance reports from backups and drill records (pure).
//! - [`daemon`]: the scheduler, `/health` and `/metrics`; [`alert`] sends
//!   its webhooks.
//! - [`wal`]: continuous WAL archiving for `postgres-cluster` policies
//!   (`wal-push` and `wal-fetch`, PostgreSQL's archive and restore commands).
//! - [`timespec`] and [`schedule`]: pure parsing of times and cron lines.
//! - [`bucket`] and [`archive`]: pure logic of the bucket settings `repo
//!   apply` keeps in shape, and of retrieving archived (Glacier) objects.

// `println!` and `eprintln!` panic when the stream is closed; the CLI's
// output goes through `cli::stdio` instead.
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod alert;
pub mod archive;
pub mod backup;
pub mod bucket;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod drill;
pub mod error;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod repo;
pub mod report;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod source;
pub mod storage;
pub mod timespec;
pub mod wal;

pub use error::{Error, Result};
