//! The library's error type: every variant names the thing that failed and,
//! where there is one, what to do about it.

use std::path::PathBuf;

/// Whether trying the same thing again later may succeed. Retries and alerts
/// branch on this: an S3 503 is temporary, a wrong key is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    Temporary,
    Permanent,
}

/// What went wrong in a storage call, independent of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The object (or bucket, or directory) does not exist.
    NotFound,
    /// A conditional write lost: the object exists, or changed since it was read.
    PreconditionFailed,
    /// Credentials were refused or lack a permission.
    AccessDenied,
    /// The object is in an archive storage class and must be restored first.
    Archived,
    /// Throttling, 5xx, a reset connection or a timeout.
    Transient,
    /// Anything else.
    Other,
}

/// A failed call to an object store, with the object and location it was about.
#[derive(Debug, thiserror::Error)]
#[error("{op} `{key}` in {location} failed: {detail}")]
pub struct StorageError {
    pub op: &'static str,
    pub location: String,
    pub key: String,
    pub kind: StorageErrorKind,
    pub detail: String,
}

impl StorageError {
    pub fn new(
        op: &'static str,
        location: impl Into<String>,
        key: impl Into<String>,
        kind: StorageErrorKind,
        detail: impl Into<String>,
    ) -> Self {
        StorageError {
            op,
            location: location.into(),
            key: key.into(),
            kind,
            detail: detail.into(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == StorageErrorKind::NotFound
    }
}

/// A configuration or policy file that could not be accepted.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("several configuration problems:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    ConfigMany(Vec<ConfigError>),

    #[error("no policy named `{name}`; known policies: {known}")]
    UnknownPolicy { name: String, known: String },

    #[error("cannot understand time `{input}`: {reason}")]
    InvalidTime { input: String, reason: String },

    #[error("{0}")]
    NoBackup(String),

    #[error(transparent)]
    Storage(#[from] StorageError),

    /// No `repo.json`; `detail` says what is there instead (nothing, a
    /// missing or unmounted directory, or backups without their marker).
    #[error("repository at {location} is not initialised (no repo.json): {detail}")]
    NotInitialised { location: String, detail: String },

    #[error("object `{object}` failed its integrity check: {reason}")]
    Integrity { object: String, reason: String },

    #[error("{failed} of {total} backups failed verification; first: {first}")]
    VerifyFailed {
        failed: usize,
        total: usize,
        first: String,
    },

    #[error("drill of `{policy}` failed: {reason}")]
    DrillFailed { policy: String, reason: String },

    #[error("policy `{policy}`: {message}")]
    Source { policy: String, message: String },

    #[error("database {target}: {message}")]
    Database { target: String, message: String },

    #[error("key: {0}")]
    Key(String),

    #[error("refused: {0}")]
    Refused(String),

    /// `wal-fetch`: the archive has no such file. PostgreSQL asks for files
    /// that were never archived and reads exit 1 as "not there".
    #[error("{0}")]
    NotArchived(String),

    /// `wal-push` could reach neither the repository nor room in the local
    /// spool: PostgreSQL keeps the WAL and tries again.
    #[error("{0}")]
    SpoolFull(String),

    /// `wal-fetch` failed for any reason but "not archived". Exit 126 makes
    /// PostgreSQL stop recovery; exit 1 would end it early (and without a
    /// target, promote onto a new timeline) while WAL is still missing.
    #[error("{0}; exiting 126 so that PostgreSQL stops recovery instead of ending it early")]
    StopRecovery(Box<Error>),

    /// A verification was asked for that this backup or destination cannot
    /// give. Never a pass: asking for proof that cannot be had must fail.
    #[error("cannot verify: {0}")]
    Unverifiable(String),

    /// Arguments that do not fit together, beyond what clap checks.
    #[error("{0}")]
    Usage(String),

    #[error("policy `{policy}` is busy: {message}")]
    Locked { policy: String, message: String },

    /// A running job could not renew its lease and stopped: a failure of
    /// the job (unlike `Locked`, where another job simply holds the policy).
    #[error("policy `{policy}`: {message}")]
    LeaseLost { policy: String, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// `status` found a policy over its RPO target or with a failed run.
    #[error("{0}")]
    Unhealthy(String),

    #[error("interrupted: {0}")]
    Interrupted(String),

    /// A policy's chain of drill records does not hold: a record was
    /// edited or removed. Each problem names the record.
    #[error("drill records were altered or removed:\n{}", .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    ChainBroken { problems: Vec<String> },

    /// Objects a job needs are in an archive storage class (GLACIER,
    /// DEEP_ARCHIVE) and not retrieved yet. Trying again later works.
    #[error("{0}")]
    Archived(String),

    /// With `[signing]`, an object the command would have used has no
    /// signature from a trusted key: planted or altered by someone who can
    /// write to the repository. Nothing was done with it.
    #[error("{0}")]
    Untrusted(String),

    /// `repo status`: the bucket's settings differ from drctl.toml.
    #[error("bucket settings of {location} differ from drctl.toml: {}; `drctl repo apply` sets them", .settings.join(", "))]
    BucketDrift {
        location: String,
        settings: Vec<String>,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn persistence(&self) -> Persistence {
        match self {
            Error::Storage(e) if e.kind == StorageErrorKind::Transient => Persistence::Temporary,
            Error::Locked { .. }
            | Error::Interrupted(_)
            | Error::Archived(_)
            | Error::SpoolFull(_) => Persistence::Temporary,
            _ => Persistence::Permanent,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
