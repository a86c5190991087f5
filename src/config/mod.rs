//! Configuration: `drctl.toml` (where the repository is, which keys) and
//! `policies/*.toml` (what to protect). `raw` is the file as written; this
//! module validates it once into the model that everything else uses, with
//! errors that carry the file and line.

mod copies;
mod raw;

use std::path::{Path, PathBuf};

use chrono::Duration;
use toml::Spanned;

use crate::error::{ConfigError, Error, Result};
use crate::timespec::parse_duration;
use raw::{RawConfig, RawPolicy, RawSource};

pub const DEFAULT_CONFIG: &str = "drctl.toml";
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub repository: RepositoryConfig,
    pub recipients: Vec<String>,
    pub identity_file: Option<PathBuf>,
    pub policies_dir: PathBuf,
    pub policies: Vec<Policy>,
    pub lifecycle: Lifecycle,
    pub daemon: DaemonConfig,
    pub alerts: Vec<Webhook>,
    pub wal: WalConfig,
    /// `[signing]`; `None` for an unsigned repository.
    pub signing: Option<SigningConfig>,
    /// `[[copies]]`: second repositories backups are copied into.
    pub copies: Vec<CopyConfig>,
}

pub use copies::{CopyConfig, S3Credentials};

/// `[signing]`: the key this host signs with, if it writes, and the public
/// keys every reader accepts. Pinned here, never read from the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningConfig {
    pub key_file: Option<PathBuf>,
    pub trusted: Vec<crate::signing::PublicKey>,
}

/// `[wal]`: how `wal-push` rides out a repository that does not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Where sealed WAL waits while the repository cannot take it, one
    /// directory per policy. It must survive a reboot (not a tmpfs): what
    /// is in it was reported archived to PostgreSQL.
    pub spool_dir: PathBuf,
    /// The most the spool may hold (sealed bytes, per policy). Past it
    /// `wal-push` fails and PostgreSQL keeps the WAL in `pg_wal`.
    pub spool_max_bytes: u64,
    /// How long one `wal-push` tries the repository before it spools.
    pub store_timeout: std::time::Duration,
    /// WAL segments `wal-fetch` downloads ahead of recovery; 0 turns
    /// prefetch off.
    pub prefetch: usize,
    /// Where prefetched segments wait, one directory per policy; `None`:
    /// beside the spool (`<spool_dir>/<policy>/prefetch`). Never inside a
    /// data directory.
    pub prefetch_dir: Option<PathBuf>,
}

pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/drctl/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Long enough for the SDK's retries of a refused connection (about 6 s of
/// back-off) and for a 16 MiB segment at 1 MB/s; short enough that
/// PostgreSQL's archiver is not held for minutes by a dead endpoint.
pub const DEFAULT_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// 128 MiB of 16 MiB segments ahead, pgBackRest's default queue: replay
/// of a segment takes about as long as fetching one, so a few in hand
/// absorb the round trips; more only costs disk.
pub const DEFAULT_PREFETCH: usize = 8;
/// More would be gigabytes of WAL on disk per recovery.
pub const MAX_PREFETCH: u64 = 64;

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            prefetch: DEFAULT_PREFETCH,
            prefetch_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryConfig {
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        path_style: bool,
        /// Credentials other than the standard chain's (a copy in another
        /// account); `None`: the environment, profile or instance role.
        credentials: Option<S3Credentials>,
    },
    Local {
        path: PathBuf,
    },
}

impl RepositoryConfig {
    pub fn describe(&self) -> String {
        match self {
            RepositoryConfig::S3 { bucket, prefix, .. } if prefix.is_empty() => {
                format!("s3://{bucket}")
            }
            RepositoryConfig::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
            RepositoryConfig::Local { path } => format!("file://{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub archive_after_days: Option<u32>,
    pub archive_class: Option<String>,
    pub noncurrent_expire_days: Option<u32>,
    pub abort_incomplete_upload_days: Option<u32>,
    pub object_lock_mode: Option<String>,
    pub object_lock_days: Option<u32>,
    /// Retrieval tier for archived objects; `restore --archive-tier` overrides it.
    pub restore_tier: Option<crate::archive::Tier>,
    /// Days a retrieved copy of an archived object stays readable.
    pub restore_days: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub listen: String,
    pub max_concurrent_jobs: u32,
    pub shutdown_grace_seconds: u64,
    /// How often the daemon compares each policy's newest backup with its
    /// RPO target (in memory; the repository is read only to confirm a breach).
    pub check_interval: Duration,
}

/// Where alerts go. The URL of an incoming webhook is a secret (whoever has
/// it can post), so it can come from the environment and is never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: WebhookUrl,
    pub format: WebhookFormat,
}

#[derive(Clone, PartialEq, Eq)]
pub enum WebhookUrl {
    Literal(String),
    /// The name of an environment variable holding the URL.
    Env(String),
}

/// Never the URL itself: a `{config:?}` in a log must not leak it.
impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookUrl::Literal(_) => f.write_str("Literal(<redacted>)"),
            WebhookUrl::Env(var) => write!(f, "Env({var})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// drctl's own JSON object (docs/operations.md, "Alerts").
    Generic,
    /// Slack's incoming-webhook shape: `{"text": …}`.
    Slack,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: "127.0.0.1:9187".into(),
            max_concurrent_jobs: 2,
            shutdown_grace_seconds: 300,
            check_interval: Duration::seconds(30),
        }
    }
}

/// How long a base backup waits for the WAL it needs to be archived.
pub const DEFAULT_WAL_WAIT_SECONDS: i64 = 120;

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub file: PathBuf,
    pub compression_level: i32,
    pub source: SourceConfig,
    pub schedule: Option<Schedule>,
    pub retention: Retention,
    pub drill: Option<Drill>,
}

impl Policy {
    /// The policy's one RPO target, and the setting it comes from:
    /// `[schedule] rpo_target`, else `[drill] rpo_target` (both may be set
    /// only to the same value; the configuration refuses a conflict).
    /// Status, the daemon, its alerts and metrics, drills and the report
    /// all read it here, so they cannot disagree.
    pub fn rpo_target(&self) -> Option<(Duration, &'static str)> {
        let schedule = self.schedule.as_ref().and_then(|s| s.rpo_target);
        let drill = self.drill.as_ref().and_then(|d| d.rpo_target);
        match (schedule, drill) {
            (Some(t), _) => Some((t, "[schedule] rpo_target")),
            (None, Some(t)) => Some((t, "[drill] rpo_target")),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    Postgres {
        /// A libpq connection string or URL, never with a password in it.
        url: String,
        pg_dump_args: Vec<String>,
        bin_dir: Option<PathBuf>,
        fingerprint: bool,
    },
    Files {
        paths: Vec<PathBuf>,
        exclude: Vec<String>,
        on_unreadable: OnUnreadable,
    },
    /// A whole PostgreSQL cluster, physically: base backups by
    /// `pg_basebackup` and continuous WAL archiving (`drctl wal-push`).
    PostgresCluster {
        /// A libpq connection string or URL of a role that may replicate,
        /// never with a password in it.
        url: String,
        bin_dir: Option<PathBuf>,
        /// How long a base backup waits for its WAL to reach the archive
        /// before it fails.
        wal_wait: Duration,
    },
}

/// What a files backup does with a path it finds and cannot read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnUnreadable {
    /// The backup fails: a backup that silently lacks a file is worse than
    /// none that says why.
    #[default]
    Fail,
    /// The backup goes on without it; the manifest and the output say so.
    Skip,
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Postgres { .. } => "postgres",
            SourceConfig::Files { .. } => "files",
            SourceConfig::PostgresCluster { .. } => "postgres-cluster",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub backup: Option<String>,
    pub timezone: chrono_tz::Tz,
    pub rpo_target: Option<Duration>,
}

/// Retention rules, in the semantics of restic's `forget`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Drill {
    pub schedule: Option<String>,
    pub scratch_url: Option<String>,
    pub scratch_dir: Option<PathBuf>,
    /// `choose = "random"`: drills without `--backup` restore a random
    /// backup (a cluster: a random time in the recoverable window) rather
    /// than the newest.
    pub random: bool,
    pub rto_target: Option<Duration>,
    pub rpo_target: Option<Duration>,
    /// Scheduled drills of a `postgres` policy hash this share of each
    /// large table's rows (rounded up to whole 1/32 buckets) instead of all
    /// of them, and count every row; `None`: always a full check.
    pub sample_percent: Option<f64>,
    /// With `sample_percent`: a scheduled drill checks in full when the
    /// newest passed full check is older than this (default 7 days).
    pub full_check_every: Duration,
    pub checks: Vec<DrillCheck>,
}

#[derive(Debug, Clone)]
pub struct DrillCheck {
    pub name: String,
    pub sql: String,
    pub expect: String,
}

impl Config {
    /// Where the configuration lives: the flag, then `DRCTL_CONFIG` (clap
    /// handles both), then `./drctl.toml`.
    pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
        flag.map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }

    /// Reads and validates `drctl.toml` and every policy file.
    ///
    /// # Errors
    /// Every problem found, each with its file and line; nothing is partially
    /// accepted.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(ConfigError {
                path: path.to_path_buf(),
                line: None,
                message: format!(
                    "cannot read configuration: {e}{}",
                    if e.kind() == std::io::ErrorKind::NotFound {
                        " (pass --config or set DRCTL_CONFIG; `drctl.toml.example` shows the format)"
                    } else {
                        ""
                    }
                ),
            })
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut errors = Vec::new();
        let config = parse_config(path, &text, &base, &mut errors);
        let Some(mut config) = config else {
            return Err(collect(errors));
        };
        config.policies = load_policies(&config.policies_dir, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(collect(errors))
        }
    }

    /// The policy with this name.
    ///
    /// # Errors
    /// `UnknownPolicy`, listing the names that do exist.
    pub fn policy(&self, name: &str) -> Result<&Policy> {
        self.policies
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::UnknownPolicy {
                name: name.to_string(),
                known: self.policy_names(),
            })
    }

    pub fn policy_names(&self) -> String {
        if self.policies.is_empty() {
            format!("none (no *.toml in {})", self.policies_dir.display())
        } else {
            self.policies
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

fn collect(mut errors: Vec<ConfigError>) -> Error {
    if errors.len() == 1 {
        Error::Config(errors.remove(0))
    } else {
        Error::ConfigMany(errors)
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        let line = line_of(self.text, spanned.span().start);
        self.errors.push(ConfigError {
            path: self.path.to_path_buf(),
            line: Some(line),
            message: message.into(),
        });
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<Duration> {
        let v = value.as_ref()?;
        match parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(v, format!("`{key}` = \"{}\": {e}", v.get_ref()));
                None
            }
        }
    }

    fn schedule(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<String> {
        let v = value.as_ref()?;
        match crate::schedule::parse_cron(v.get_ref()) {
            Ok(_) => Some(v.get_ref().clone()),
            Err(e) => {
                self.err(v, format!("`{key}`: {e}"));
                None
            }
        }
    }
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start));
    let mut message = e.message().trim().to_string();
    if let Some(hint) = suggest_field(&message) {
        message.push_str(&format!("; did you mean `{hint}`?"));
    }
    if let Some(better) = line.and_then(|l| name_the_key(text, l, &message)) {
        message = better;
    }
    ConfigError {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// Most problems a file can have, listed at once. serde stops at the first
/// type error or unknown key, so each such line is set aside (commented
/// out, so that line numbers stay) and the file read again, up to
/// [`MAX_LISTED_ERRORS`]. The checks after parsing (cron, durations,
/// names) list their problems together in the next run.
fn read_listing_errors<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let before = errors.len();
    let parsed = read_setting_aside(path, text, errors);
    // In line order, as a reader goes through the file.
    errors[before..].sort_by_key(|e| e.line);
    // The checks after parsing would then report what was set aside as
    // missing ("a files source needs paths"), which is not the problem.
    parsed.filter(|_| errors.len() == before)
}

fn read_setting_aside<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut current = text.to_string();
    let mut set_aside = std::collections::BTreeSet::new();
    for _ in 0..MAX_LISTED_ERRORS {
        let e = match toml::from_str::<T>(&current) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let message = e.message();
        let data = [
            "invalid type",
            "invalid value",
            "unknown field",
            "unknown variant",
            "invalid length",
        ]
        .iter()
        .any(|p| message.starts_with(p));
        if !set_aside.is_empty() && !data {
            // A consequence of a line set aside (a required key now
            // missing, an array cut in two), not a problem of the file.
            return None;
        }
        errors.push(toml_error(path, &current, &e));
        let line = e.span().map(|s| line_of(&current, s.start));
        match line {
            Some(l) if data && set_aside.insert(l) => {
                current = current
                    .split('\n')
                    .enumerate()
                    .map(|(i, s)| {
                        if i + 1 == l {
                            format!("#{s}")
                        } else {
                            s.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            _ => return None,
        }
    }
    None
}

/// Beyond this many problems in one file, the rest wait for the next run.
const MAX_LISTED_ERRORS: usize = 20;

/// serde's "invalid type: string \"7\", expected u32" names no key; the
/// line does: "`retention.keep_daily` must be a non-negative integer, not
/// the string \"7\"".
fn name_the_key(text: &str, line: usize, message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (found, expected) = rest.rsplit_once(", expected ")?;
    let lines: Vec<&str> = text.split('\n').collect();
    let key = lines.get(line.checked_sub(1)?)?.split_once('=')?.0.trim();
    let key = key.trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    let full = match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "a sequence" => "an array",
        "a boolean" => "true or false",
        other => other,
    };
    let found = found
        .strip_prefix("integer ")
        .map(|n| n.trim_matches('`').to_string())
        .unwrap_or_else(|| format!("the {found}"));
    Some(format!("`{full}` must be {expected}, not {found}"))
}

/// For serde's "unknown field `x`, expected one of `a`, `b`", the closest
/// expected name when it is a plausible typo.
fn suggest_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let candidates = rest.split('`').skip(1).step_by(2);
    candidates
        .map(|c| (edit_distance(unknown, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn parse_config(
    path: &Path,
    text: &str,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let raw: RawConfig = read_listing_errors(path, text, errors)?;
    let mut cx = Ctx { path, text, errors };
    let repository = parse_repository(&mut cx, &raw.repository, base);

    let mut recipients = Vec::new();
    if raw.encryption.recipients.get_ref().is_empty() {
        cx.err(
            &raw.encryption.recipients,
            "`recipients` is empty; add the public key printed by `drctl key generate`",
        );
    }
    for r in raw.encryption.recipients.get_ref() {
        match r.get_ref().parse::<age::x25519::Recipient>() {
            Ok(_) => recipients.push(r.get_ref().clone()),
            Err(e) => cx.err(
                r,
                format!(
                    "recipient `{}` is not an age X25519 public key (age1…): {e}",
                    r.get_ref()
                ),
            ),
        }
    }
    let identity_file = raw.encryption.identity_file.as_ref().map(|p| base.join(p));
    let policies_dir = base.join(raw.policies_dir.as_deref().unwrap_or("policies"));

    let mut lifecycle = Lifecycle::default();
    if let Some(l) = &raw.lifecycle {
        lifecycle.archive_after_days = l.archive_after_days;
        lifecycle.noncurrent_expire_days = l.noncurrent_expire_days;
        lifecycle.abort_incomplete_upload_days = l.abort_incomplete_upload_days;
        lifecycle.object_lock_days = l.object_lock_days;
        if let Some(c) = &l.archive_class {
            match c.get_ref().as_str() {
                "GLACIER_IR" | "GLACIER" | "DEEP_ARCHIVE" | "STANDARD_IA" => lifecycle.archive_class = Some(c.get_ref().clone()),
                other => cx.err(c, format!("`archive_class` = \"{other}\": expected GLACIER_IR, GLACIER, DEEP_ARCHIVE or STANDARD_IA")),
            }
        }
        if let Some(m) = &l.object_lock_mode {
            match m.get_ref().as_str() {
                "GOVERNANCE" | "COMPLIANCE" => {
                    lifecycle.object_lock_mode = Some(m.get_ref().clone())
                }
                other => cx.err(
                    m,
                    format!("`object_lock_mode` = \"{other}\": expected GOVERNANCE or COMPLIANCE"),
                ),
            }
        }
        lifecycle.restore_days = l.restore_days;
        if let Some(t) = &l.restore_tier {
            match t.get_ref().parse() {
                Ok(tier) => lifecycle.restore_tier = Some(tier),
                Err(e) => cx.err(t, format!("`restore_tier`: {e}")),
            }
        }
        for problem in lifecycle_problems(&lifecycle) {
            cx.errors.push(ConfigError {
                path: path.to_path_buf(),
                line: None,
                message: format!("[lifecycle]: {problem}"),
            });
        }
    }
    let mut daemon = DaemonConfig::default();
    if let Some(d) = &raw.daemon {
        if let Some(listen) = &d.listen {
            if listen.get_ref().parse::<std::net::SocketAddr>().is_err() {
                cx.err(
                    listen,
                    format!(
                        "`listen` = \"{}\": expected ADDRESS:PORT such as 127.0.0.1:9187",
                        listen.get_ref()
                    ),
                );
            }
            daemon.listen = listen.get_ref().clone();
        }
        if let Some(n) = d.max_concurrent_jobs {
            daemon.max_concurrent_jobs = n.max(1);
        }
        if let Some(s) = d.shutdown_grace_seconds {
            daemon.shutdown_grace_seconds = s;
        }
        if let Some(i) = cx.duration(&d.check_interval, "check_interval") {
            if i < Duration::seconds(1) {
                if let Some(v) = &d.check_interval {
                    cx.err(v, "`check_interval` must be at least 1s");
                }
            } else {
                daemon.check_interval = i;
            }
        }
    }
    let mut alerts = Vec::new();
    for w in raw.alerts.iter().flat_map(|a| &a.webhook) {
        let url = match (&w.url, &w.url_env) {
            (Some(u), None) => {
                if !(u.get_ref().starts_with("https://") || u.get_ref().starts_with("http://")) {
                    cx.err(u, "webhook `url` must start with https:// (or http://)");
                }
                Some(WebhookUrl::Literal(u.get_ref().clone()))
            }
            (None, Some(e)) => Some(WebhookUrl::Env(e.get_ref().clone())),
            (Some(u), Some(_)) => {
                cx.err(u, "give a webhook either `url` or `url_env`, not both");
                None
            }
            (None, None) => {
                cx.errors.push(ConfigError {
                    path: path.to_path_buf(),
                    line: None,
                    message: "an [[alerts.webhook]] needs `url` or `url_env` (the name of an environment variable holding the URL)".into(),
                });
                None
            }
        };
        let format = match w.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
            None | Some((_, "generic")) => WebhookFormat::Generic,
            Some((_, "slack")) => WebhookFormat::Slack,
            Some((f, other)) => {
                cx.err(
                    f,
                    format!("webhook `format` = \"{other}\": expected \"generic\" or \"slack\""),
                );
                WebhookFormat::Generic
            }
        };
        if let Some(url) = url {
            alerts.push(Webhook { url, format });
        }
    }
    let mut wal = WalConfig::default();
    if let Some(w) = &raw.wal {
        if let Some(dir) = &w.spool_dir {
            wal.spool_dir = base.join(dir);
        }
        if let Some(max) = &w.spool_max_bytes {
            wal.spool_max_bytes = *max.get_ref();
        }
        if let Some(dir) = &w.prefetch_dir {
            wal.prefetch_dir = Some(base.join(dir));
        }
        if let Some(n) = &w.prefetch {
            if *n.get_ref() > MAX_PREFETCH {
                cx.err(
                    n,
                    format!(
                        "`prefetch` = {}: at most {MAX_PREFETCH} segments",
                        n.get_ref()
                    ),
                );
            } else {
                wal.prefetch = *n.get_ref() as usize;
            }
        }
        if let Some(t) = cx.duration(&w.store_timeout, "store_timeout") {
            match t.to_std() {
                Ok(t) if t >= std::time::Duration::from_secs(1) => wal.store_timeout = t,
                _ => {
                    if let Some(v) = &w.store_timeout {
                        cx.err(v, "`store_timeout` must be at least 1s");
                    }
                }
            }
        }
    }
    let signing = raw.signing.as_ref().map(|s| {
        if s.trusted.get_ref().is_empty() {
            cx.err(
                &s.trusted,
                "`[signing] trusted` is empty; add the public key printed by `drctl key generate --signing` (readers accept only what these keys signed)",
            );
        }
        let mut trusted = Vec::new();
        for t in s.trusted.get_ref() {
            match t.get_ref().parse::<crate::signing::PublicKey>() {
                Ok(k) => trusted.push(k),
                Err(e) => cx.err(t, format!("`[signing] trusted`: {e}")),
            }
        }
        SigningConfig {
            key_file: s.key_file.as_ref().map(|p| base.join(p)),
            trusted,
        }
    });
    let copies = copies::parse(&mut cx, &raw.copies, repository.as_ref(), base);
    Some(Config {
        path: path.to_path_buf(),
        repository: repository?,
        recipients,
        identity_file,
        policies_dir,
        policies: Vec::new(),
        lifecycle,
        daemon,
        alerts,
        wal,
        signing,
        copies,
    })
}

/// Settings of `[lifecycle]` that do not fit together, or that S3 would
/// refuse when `repo apply` writes them.
fn lifecycle_problems(l: &Lifecycle) -> Vec<String> {
    let mut problems = Vec::new();
    if l.archive_class.is_some() && l.archive_after_days.is_none() {
        problems.push(
            "`archive_class` needs `archive_after_days` (how old backup data is when it moves)"
                .to_string(),
        );
    }
    if let (Some("STANDARD_IA"), Some(d)) = (l.archive_class.as_deref(), l.archive_after_days)
        && d < 30
    {
        problems.push(format!(
            "`archive_after_days` = {d}: S3 moves objects to STANDARD_IA only after 30 days or more"
        ));
    }
    match (&l.object_lock_mode, l.object_lock_days) {
        (Some(_), None) => problems
            .push("`object_lock_mode` needs `object_lock_days` (the default retention)".into()),
        (None, Some(_)) => problems
            .push("`object_lock_days` needs `object_lock_mode` (GOVERNANCE or COMPLIANCE)".into()),
        _ => {}
    }
    for (key, value) in [
        ("noncurrent_expire_days", l.noncurrent_expire_days),
        (
            "abort_incomplete_upload_days",
            l.abort_incomplete_upload_days,
        ),
        ("object_lock_days", l.object_lock_days),
        ("restore_days", l.restore_days),
    ] {
        if value == Some(0) {
            problems.push(format!("`{key}` = 0: expected 1 or more days"));
        }
    }
    problems
}

fn parse_repository(
    cx: &mut Ctx,
    raw: &raw::RawRepository,
    base: &Path,
) -> Option<RepositoryConfig> {
    let url = raw.url.get_ref();
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            cx.err(
                &raw.url,
                format!("`url` = \"{url}\": no bucket name (expected s3://BUCKET/PREFIX)"),
            );
            return None;
        }
        if let Err(problem) = check_bucket_name(bucket) {
            cx.err(
                &raw.url,
                format!(
                    "`url` = \"{url}\": bucket name `{bucket}` {problem}; S3 bucket names are 3 to 63 characters of lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
                ),
            );
            return None;
        }
        if let Some(e) = &raw.endpoint
            && url::Url::parse(e.get_ref()).is_err()
        {
            cx.err(
                e,
                format!(
                    "`endpoint` = \"{}\": not a URL (expected e.g. https://s3.example.com)",
                    e.get_ref()
                ),
            );
        }
        Some(RepositoryConfig::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: raw.endpoint.as_ref().map(|e| e.get_ref().clone()),
            region: raw.region.clone(),
            path_style: raw.path_style,
            credentials: None,
        })
    } else if let Some(rest) = url.strip_prefix("file://") {
        if rest.is_empty() {
            cx.err(&raw.url, "`url` = \"file://\": no path (expected file:///absolute/path or file://relative/path)");
            return None;
        }
        Some(RepositoryConfig::Local {
            path: base.join(rest),
        })
    } else {
        cx.err(
            &raw.url,
            format!("`url` = \"{url}\": expected s3://BUCKET/PREFIX or file:///PATH"),
        );
        None
    }
}

fn parse_retention(cx: &mut Ctx, r: &raw::RawRetention) -> Retention {
    Retention {
        keep_last: r.keep_last,
        keep_hourly: r.keep_hourly,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
        keep_within: cx.duration(&r.keep_within, "keep_within"),
    }
}

/// Checks a bucket name against S3's rules for new buckets, so that a typo
/// is a line-numbered error from `drctl check` rather than a signing or
/// "invalid bucket" error from the first request. What fails is said in
/// words.
fn check_bucket_name(name: &str) -> std::result::Result<(), String> {
    let len = name.len();
    if !(3..=63).contains(&len) {
        return Err(format!("is {len} characters long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(match c {
            ' ' => "contains a space".to_string(),
            c if c.is_ascii_uppercase() => format!("contains the uppercase letter `{c}`"),
            c => format!("contains `{c}`"),
        });
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err("does not start and end with a letter or digit".into());
    }
    if name.contains("..") {
        return Err("has two dots in a row".into());
    }
    Ok(())
}

fn load_policies(dir: &Path, errors: &mut Vec<ConfigError>) -> Vec<Policy> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ConfigError {
                path: dir.to_path_buf(),
                line: None,
                message: format!("cannot read the policies directory: {e}"),
            });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut policies: Vec<Policy> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    path: file.clone(),
                    line: None,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        if let Some(p) = parse_policy(&file, &text, errors) {
            if let Some(other) = policies.iter().find(|o| o.name == p.name) {
                errors.push(ConfigError {
                    path: file.clone(),
                    line: None,
                    message: format!(
                        "policy name `{}` is also used by {}",
                        p.name,
                        other.file.display()
                    ),
                });
                continue;
            }
            policies.push(p);
        }
    }
    policies
}

fn parse_source(cx: &mut Ctx, raw: &RawSource, base: &Path) -> Option<SourceConfig> {
    let kind = raw.kind.get_ref().as_str();
    let misplaced =
        |cx: &mut Ctx, present: bool, span: Option<std::ops::Range<usize>>, key: &str| {
            if present {
                let line = span.map(|s| line_of(cx.text, s.start));
                cx.errors.push(ConfigError {
                    path: cx.path.to_path_buf(),
                    line,
                    message: format!("`{key}` does not apply to a `{kind}` source"),
                });
            }
        };
    match kind {
        "postgres" => {
            misplaced(
                cx,
                raw.paths.is_some(),
                raw.paths.as_ref().map(|s| s.span()),
                "paths",
            );
            misplaced(
                cx,
                raw.exclude.is_some(),
                raw.exclude.as_ref().map(|s| s.span()),
                "exclude",
            );
            misplaced(
                cx,
                raw.on_unreadable.is_some(),
                raw.on_unreadable.as_ref().map(|s| s.span()),
                "on_unreadable",
            );
            misplaced(
                cx,
                raw.wal_wait.is_some(),
                raw.wal_wait.as_ref().map(|s| s.span()),
                "wal_wait",
            );
            let Some(url) = &raw.url else {
                cx.err(
                    &raw.kind,
                    "a `postgres` source needs `url` (a connection string without the password)",
                );
                return None;
            };
            check_pg_url(cx, url, true);
            if let Some(args) = &raw.pg_dump_args
                && let Some(problem) = pg_dump_args_problem(args.get_ref())
            {
                cx.err(args, problem);
            }
            Some(SourceConfig::Postgres {
                url: url.get_ref().clone(),
                pg_dump_args: raw
                    .pg_dump_args
                    .as_ref()
                    .map(|a| a.get_ref().clone())
                    .unwrap_or_default(),
                bin_dir: raw.bin_dir.as_ref().map(|d| base.join(d.get_ref())),
                fingerprint: raw.fingerprint.as_ref().is_none_or(|f| *f.get_ref()),
            })
        }
        "files" => {
            misplaced(
                cx,
                raw.url.is_some(),
                raw.url.as_ref().map(|s| s.span()),
                "url",
            );
            misplaced(
                cx,
                raw.pg_dump_args.is_some(),
                raw.pg_dump_args.as_ref().map(|s| s.span()),
                "pg_dump_args",
            );
            misplaced(
                cx,
                raw.bin_dir.is_some(),
                raw.bin_dir.as_ref().map(|s| s.span()),
                "bin_dir",
            );
            misplaced(
                cx,
                raw.fingerprint.is_some(),
                raw.fingerprint.as_ref().map(|s| s.span()),
                "fingerprint",
            );
            misplaced(
                cx,
                raw.wal_wait.is_some(),
                raw.wal_wait.as_ref().map(|s| s.span()),
                "wal_wait",
            );
            let Some(paths) = &raw.paths else {
                cx.err(
                    &raw.kind,
                    "a `files` source needs `paths` (absolute paths to protect)",
                );
                return None;
            };
            if paths.get_ref().is_empty() {
                cx.err(
                    paths,
                    "`paths` is empty; list the files or directories to protect",
                );
            }
            for p in paths.get_ref() {
                if !Path::new(p).is_absolute() {
                    cx.err(paths, format!("path `{p}` is not absolute"));
                }
            }
            let mut exclude = Vec::new();
            for g in raw
                .exclude
                .as_ref()
                .map(|e| e.get_ref().as_slice())
                .unwrap_or_default()
            {
                match globset::Glob::new(g.get_ref()) {
                    Ok(_) => exclude.push(g.get_ref().clone()),
                    Err(e) => cx.err(g, format!("exclude pattern `{}`: {e}", g.get_ref())),
                }
            }
            let on_unreadable = match raw.on_unreadable.as_ref() {
                None => OnUnreadable::Fail,
                Some(v) => match v.get_ref().as_str() {
                    "fail" => OnUnreadable::Fail,
                    "skip" => OnUnreadable::Skip,
                    other => {
                        cx.err(
                            v,
                            format!("`on_unreadable` = \"{other}\": expected \"fail\" (the default) or \"skip\""),
                        );
                        OnUnreadable::Fail
                    }
                },
            };
            Some(SourceConfig::Files {
                paths: paths.get_ref().iter().map(PathBuf::from).collect(),
                exclude,
                on_unreadable,
            })
        }
        "postgres-cluster" => {
            for (present, span, key) in [
                (
                    raw.paths.is_some(),
                    raw.paths.as_ref().map(|s| s.span()),
                    "paths",
                ),
                (
                    raw.exclude.is_some(),
                    raw.exclude.as_ref().map(|s| s.span()),
                    "exclude",
                ),
                (
                    raw.pg_dump_args.is_some(),
                    raw.pg_dump_args.as_ref().map(|s| s.span()),
                    "pg_dump_args",
                ),
                (
                    raw.fingerprint.is_some(),
                    raw.fingerprint.as_ref().map(|s| s.span()),
                    "fingerprint",
                ),
            ] {
                misplaced(cx, present, span, key);
            }
            let Some(url) = &raw.url else {
                cx.err(
                    &raw.kind,
                    "a `postgres-cluster` source needs `url` (a connection string of a role with REPLICATION, without the password)",
                );
                return None;
            };
            check_pg_url(cx, url, false);
            let wal_wait = cx
                .duration(&raw.wal_wait, "wal_wait")
                .unwrap_or(Duration::seconds(DEFAULT_WAL_WAIT_SECONDS));
            Some(SourceConfig::PostgresCluster {
                url: url.get_ref().clone(),
                bin_dir: raw.bin_dir.as_ref().map(|d| base.join(d.get_ref())),
                wal_wait,
            })
        }
        other => {
            cx.err(
                &raw.kind,
                format!("source type `{other}` is unknown; expected \"postgres\", \"postgres-cluster\" or \"files\""),
            );
            None
        }
    }
}

/// Checks a source's PostgreSQL connection string: parseable, without a
/// password, and naming a database where the kind needs one (a cluster's
/// replication connection does not).
fn check_pg_url(cx: &mut Ctx, url: &Spanned<String>, needs_db: bool) {
    match url.get_ref().parse::<tokio_postgres::Config>() {
        Ok(c) if c.get_password().is_some() => cx.err(url, "`url` contains a password; remove it and use PGPASSWORD or a pgpass file (mode 0600)"),
        Ok(c) if needs_db && c.get_dbname().is_none() => cx.err(url, "`url` names no database (add /DBNAME or dbname=…)"),
        Ok(_) => {}
        // The parser's message can quote the string, password and all.
        Err(_) => cx.err(url, "`url` is not a PostgreSQL connection string (expected postgres://USER@HOST:PORT/DB or key=value pairs)"),
    }
}

/// Whether a policy name can be used in object keys and on the command line.
pub fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
        })
}

/// Parses one policy file.
pub fn parse_policy(path: &Path, text: &str, errors: &mut Vec<ConfigError>) -> Option<Policy> {
    let before = errors.len();
    let raw: RawPolicy = read_listing_errors(path, text, errors)?;
    let mut cx = Ctx { path, text, errors };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match &raw.name {
        Some(n) => {
            if !valid_policy_name(n.get_ref()) {
                cx.err(n, format!("name `{}` must be lowercase letters, digits, `-`, `_` or `.`, starting with a letter or digit", n.get_ref()));
            }
            n.get_ref().clone()
        }
        None => {
            if !valid_policy_name(&stem) {
                cx.errors.push(ConfigError {
                    path: path.to_path_buf(),
                    line: None,
                    message: format!(
                        "file name `{stem}` is not a valid policy name; add `name = \"…\"`"
                    ),
                });
            }
            stem
        }
    };
    let compression_level = match &raw.compression_level {
        Some(l) if !(1..=19).contains(l.get_ref()) => {
            cx.err(
                l,
                format!("`compression_level` = {}: expected 1 to 19", l.get_ref()),
            );
            DEFAULT_COMPRESSION_LEVEL
        }
        Some(l) => *l.get_ref(),
        None => DEFAULT_COMPRESSION_LEVEL,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let source = parse_source(&mut cx, &raw.source, base)?;
    let schedule = raw.schedule.as_ref().map(|s| {
        let timezone = match &s.timezone {
            Some(tz) => tz.get_ref().parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
                cx.err(
                    tz,
                    format!(
                        "`timezone` = \"{}\": not an IANA time zone name (e.g. UTC, Europe/Berlin)",
                        tz.get_ref()
                    ),
                );
                chrono_tz::UTC
            }),
            None => chrono_tz::UTC,
        };
        Schedule {
            backup: cx.schedule(&s.backup, "backup"),
            timezone,
            rpo_target: cx.duration(&s.rpo_target, "rpo_target"),
        }
    });
    let retention = raw.retention.as_ref().map(|r| parse_retention(&mut cx, r));
    let drill = raw.drill.as_ref().map(|d| {
        if let (Some(u), SourceConfig::Postgres { url, .. }) = (&d.scratch_url, &source)
            && u.get_ref() == url
        {
            cx.err(
                u,
                "`scratch_url` is the source database; a drill must restore somewhere else",
            );
        }
        if let (Some(u), SourceConfig::PostgresCluster { .. }) = (&d.scratch_url, &source) {
            cx.err(
                u,
                "`scratch_url` is for `postgres` policies: a `postgres-cluster` drill recovers the whole cluster \
                 into `scratch_dir` and starts its own throwaway server there; set `scratch_dir` instead",
            );
        }
        Drill {
            schedule: cx.schedule(&d.schedule, "schedule"),
            scratch_url: d.scratch_url.as_ref().map(|u| u.get_ref().clone()),
            scratch_dir: d.scratch_dir.as_ref().map(|p| base.join(p)),
            random: match d.choose.as_ref().map(|c| c.get_ref().as_str()) {
                None | Some("newest") => false,
                Some("random") => true,
                Some(other) => {
                    let c = d.choose.as_ref().expect("matched Some");
                    cx.err(
                        c,
                        format!("`choose` = \"{other}\": a drill restores the \"newest\" backup or a \"random\" one"),
                    );
                    false
                }
            },
            rto_target: cx.duration(&d.rto_target, "rto_target"),
            rpo_target: cx.duration(&d.rpo_target, "rpo_target"),
            sample_percent: d.sample_percent.as_ref().and_then(|p| {
                let v = *p.get_ref();
                if !(v > 0.0 && v <= 100.0) {
                    cx.err(
                        p,
                        format!("`sample_percent` = {v}: give a share of rows above 0 and at most 100, e.g. 5"),
                    );
                    return None;
                }
                if !matches!(source, SourceConfig::Postgres { .. }) {
                    cx.err(
                        p,
                        "`sample_percent` is for `postgres` policies: other drills always check everything",
                    );
                    return None;
                }
                Some(v)
            }),
            full_check_every: cx
                .duration(&d.full_check_every, "full_check_every")
                .unwrap_or_else(|| Duration::days(7)),
            checks: d
                .checks
                .iter()
                .map(|c| DrillCheck {
                    name: c.name.clone(),
                    sql: c.sql.clone(),
                    expect: c.expect.clone(),
                })
                .collect(),
        }
    });
    if let (Some(rs), Some(rd)) = (
        raw.schedule.as_ref().and_then(|s| s.rpo_target.as_ref()),
        raw.drill.as_ref().and_then(|d| d.rpo_target.as_ref()),
    ) && let (Some(a), Some(b)) = (
        schedule.as_ref().and_then(|s| s.rpo_target),
        drill.as_ref().and_then(|d| d.rpo_target),
    ) && a != b
    {
        let line = line_of(cx.text, rs.span().start);
        cx.err(
            rd,
            format!(
                "`[drill] rpo_target` = \"{}\" disagrees with `[schedule] rpo_target` = \"{}\" (line {line}); \
                 a policy has one RPO target, used by status, the daemon's alerts, drills and the report: \
                 set it once, in [schedule]",
                rd.get_ref(),
                rs.get_ref()
            ),
        );
    }
    if errors.len() > before {
        return None;
    }
    Some(Policy {
        name,
        file: path.to_path_buf(),
        compression_level,
        source,
        schedule,
        retention: retention.unwrap_or_default(),
        drill,
    })
}

/// Why `pg_dump_args` cannot be used, if it cannot. The connection comes
/// from `url` alone: drctl reads its snapshot over that connection, so
/// pg_dump must dump the same database, and an argument is visible to
/// every local user in `ps`, so a password there leaks. The message never
/// quotes the argument, which may hold the secret.
fn pg_dump_args_problem(args: &[String]) -> Option<String> {
    const CONNECTION: &[(&str, &str)] = &[
        ("-d", "--dbname"),
        ("-h", "--host"),
        ("-p", "--port"),
        ("-U", "--username"),
        ("-W", "--password"),
    ];
    // Passwords first: that message matters more, whatever option carries it.
    for (i, arg) in args.iter().enumerate() {
        let lower = arg.to_ascii_lowercase();
        let uri_password = ["postgres://", "postgresql://"].iter().any(|scheme| {
            lower
                .find(scheme)
                .is_some_and(|at| url::Url::parse(&arg[at..]).is_ok_and(|u| u.password().is_some()))
        });
        if uri_password || lower.contains("password=") {
            return Some(format!(
                "`pg_dump_args` item {} holds a password, which every local user could read in `ps`; \
                 remove it and use PGPASSWORD or a pgpass file (mode 0600)",
                i + 1
            ));
        }
    }
    for arg in args {
        let option = arg.split('=').next().unwrap_or(arg);
        if let Some((short, long)) = CONNECTION.iter().find(|(short, long)| {
            option == *long || (arg.starts_with(short) && !arg.starts_with("--"))
        }) {
            return Some(format!(
                "`pg_dump_args` sets the connection with `{long}` ({short}); the connection comes from `url` only \
                 (pg_dump must read drctl's snapshot from that database), so remove it and change `url` instead"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_errors(text: &str) -> Vec<String> {
        let mut errors = Vec::new();
        parse_policy(Path::new("policies/orders.toml"), text, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_drill_chooses_newest_or_random() {
        let with = |choose: &str| {
            policy_errors(&format!(
                "[source]\ntype = \"files\"\npaths = [\"/etc\"]\n\n[drill]\nscratch_dir = \"s\"\nchoose = \"{choose}\"\n"
            ))
        };
        assert!(with("newest").is_empty());
        assert!(with("random").is_empty());
        let errs = with("oldest");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("policies/orders.toml:7:") && errs[0].contains("\"random\""),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn a_cluster_drill_is_refused_a_scratch_url() {
        let errs = policy_errors(
            "[source]\ntype = \"postgres-cluster\"\nurl = \"postgres://u@h/postgres\"\n\n[drill]\nscratch_url = \"postgres://u@h2/postgres\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("policies/orders.toml:6:")
                && errs[0].contains("set `scratch_dir` instead"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn unknown_key_names_line_and_suggests() {
        let errs = policy_errors(
            "[source]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\n\n[retention]\nkeep_last = 3\nkeep_dayly = 7\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("policies/orders.toml:7:"),
            "{}",
            errs[0]
        );
        assert!(
            errs[0].contains("did you mean `keep_daily`?"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn connection_options_and_passwords_in_pg_dump_args_are_refused() {
        let with = |args: &str| {
            policy_errors(&format!(
                "[source]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\npg_dump_args = {args}\n"
            ))
        };
        for args in [
            r#"["--dbname=postgres://user:secret@db1/shop"]"#,
            r#"["-d", "postgresql://user:secret@db1/shop"]"#,
            r#"["--no-owner", "host=db1 password=secret dbname=shop"]"#,
        ] {
            let errs = with(args);
            assert_eq!(errs.len(), 1, "{args}: {errs:?}");
            assert!(
                errs[0].contains(":4:") && errs[0].contains("holds a password"),
                "{args}: {}",
                errs[0]
            );
            assert!(
                !errs[0].contains("secret"),
                "the password is quoted: {}",
                errs[0]
            );
        }
        for (args, option) in [
            (r#"["--dbname=other"]"#, "--dbname"),
            (r#"["-h", "db2"]"#, "--host"),
            (r#"["-Uadmin"]"#, "--username"),
            (r#"["--port=5433"]"#, "--port"),
        ] {
            let errs = with(args);
            assert_eq!(errs.len(), 1, "{args}: {errs:?}");
            assert!(
                errs[0].contains(option) && errs[0].contains("comes from `url`"),
                "{}",
                errs[0]
            );
        }
        assert!(with(r#"["--no-owner", "--exclude-table=audit", "-n", "public"]"#).is_empty());
    }

    #[test]
    fn password_in_url_is_refused() {
        let errs =
            policy_errors("[source]\ntype = \"postgres\"\nurl = \"postgres://u:secret@h/db\"\n");
        assert!(
            errs[0].contains(":3:") && errs[0].contains("contains a password"),
            "{errs:?}"
        );
        assert!(!errs[0].contains("secret"), "{errs:?}");
    }

    /// serde stops at the first wrong type and names no key; every problem
    /// of a file is listed, each naming its key.
    #[test]
    fn wrong_types_name_their_keys_and_are_listed_with_the_rest() {
        let errs = policy_errors(
            "[source]\ntype = \"files\"\npaths = [\"/etc\"]\n[retention]\nkeep_last = -1\nkeep_daily = \"7\"\nkeep_dayly = 3\n",
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].contains(":5:")
                && errs[0].contains("`retention.keep_last` must be a non-negative integer, not -1"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains(":6:")
                && errs[1].contains(
                    "`retention.keep_daily` must be a non-negative integer, not the string \"7\""
                ),
            "{errs:?}"
        );
        assert!(
            errs[2].contains(":7:") && errs[2].contains("did you mean `keep_daily`?"),
            "{errs:?}"
        );
        let errs = policy_errors("[source]\ntype = \"files\"\npaths = \"/etc\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains(":3:")
                && errs[0].contains("`source.paths` must be an array, not the string"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_schedule_and_duration_name_their_lines() {
        let errs = policy_errors(
            "[source]\ntype = \"files\"\npaths = [\"/etc\"]\n[schedule]\nbackup = \"0 3 * *\"\n[retention]\nkeep_within = \"3x\"\n",
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains(":5:") && errs[0].contains("4 fields"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains(":7:") && errs[1].contains("unknown unit"),
            "{errs:?}"
        );
    }

    fn config_errors(extra: &str) -> Vec<String> {
        config_errors_at("file:///tmp/r", extra)
    }

    fn config_errors_at(url: &str, extra: &str) -> Vec<String> {
        let text = format!(
            "[repository]\nurl = \"{url}\"\n[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n{extra}"
        );
        let mut errors = Vec::new();
        parse_config(
            Path::new("drctl.toml"),
            &text,
            Path::new("/tmp"),
            &mut errors,
        );
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn alert_webhooks_are_checked() {
        assert!(
            config_errors(
                "[[alerts.webhook]]\nurl = \"https://hooks.example/x\"\nformat = \"slack\"\n"
            )
            .is_empty()
        );
        let errs = config_errors("[[alerts.webhook]]\nurl = \"https://h/x\"\nformat = \"teams\"\n");
        assert!(
            errs[0].contains("drctl.toml:7:") && errs[0].contains("\"generic\" or \"slack\""),
            "{errs:?}"
        );
        let errs = config_errors("[[alerts.webhook]]\nurl = \"hooks.example/x\"\n");
        assert!(
            errs[0].contains(":6:") && errs[0].contains("https://"),
            "{errs:?}"
        );
        let errs = config_errors("[[alerts.webhook]]\nformat = \"slack\"\n");
        assert!(errs[0].contains("`url_env`"), "{errs:?}");
        let errs = config_errors("[daemon]\ncheck_interval = \"500ms\"\n");
        assert!(errs[0].contains("check_interval"), "{errs:?}");
        let errs = config_errors("[wal]\nstore_timeout = \"0s\"\n");
        assert!(errs[0].contains("store_timeout"), "{errs:?}");
        let errs = config_errors("[wal]\nprefetch = 1000\n");
        assert!(
            errs[0].contains("prefetch") && errs[0].contains("at most 64"),
            "{errs:?}"
        );
    }

    #[test]
    fn s3_bucket_names_follow_the_s3_rules() {
        let errors = |bucket: &str| config_errors_at(&format!("s3://{bucket}/drctl"), "");
        for good in ["abc", "acme-backups", "a.b-c.1", &"a".repeat(63)] {
            assert_eq!(errors(good), Vec::<String>::new(), "{good}");
        }
        for (bad, why) in [
            ("bad bucket", "contains a space"),
            ("Acme", "uppercase letter `A`"),
            ("ab", "2 characters long"),
            (&"a".repeat(64), "64 characters long"),
            ("-acme", "start and end"),
            ("acme.", "start and end"),
            ("acme..b", "two dots"),
            ("acme_b", "contains `_`"),
        ] {
            let errs = errors(bad);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(errs[0].starts_with("drctl.toml:2:"), "{}", errs[0]);
            assert!(
                errs[0].contains(&format!("`{bad}`")) && errs[0].contains(why),
                "{}",
                errs[0]
            );
            assert!(errs[0].contains("3 to 63"), "{}", errs[0]);
        }
    }

    #[test]
    fn on_unreadable_is_fail_skip_or_an_error_with_its_line() {
        let parse = |extra: &str| {
            let mut errors = Vec::new();
            let p = parse_policy(
                Path::new("policies/etc.toml"),
                &format!("[source]\ntype = \"files\"\npaths = [\"/etc\"]\n{extra}"),
                &mut errors,
            );
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            (p.map(|p| p.source), errors)
        };
        for (extra, want) in [
            ("", OnUnreadable::Fail),
            ("on_unreadable = \"fail\"\n", OnUnreadable::Fail),
            ("on_unreadable = \"skip\"\n", OnUnreadable::Skip),
        ] {
            match parse(extra) {
                (Some(SourceConfig::Files { on_unreadable, .. }), e) if e.is_empty() => {
                    assert_eq!(on_unreadable, want, "{extra}")
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
        let (_, errs) = parse("on_unreadable = \"ignore\"\n");
        assert!(
            errs[0].starts_with("policies/etc.toml:4:") && errs[0].contains("\"skip\""),
            "{errs:?}"
        );
        let errs = policy_errors(
            "[source]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\non_unreadable = \"skip\"\n",
        );
        assert!(
            errs[0].contains(":4:") && errs[0].contains("does not apply to a `postgres` source"),
            "{errs:?}"
        );
    }

    #[test]
    fn suggestion_only_for_near_misses() {
        assert_eq!(
            suggest_field("unknown field `keep_dayly`, expected one of `keep_last`, `keep_daily`")
                .as_deref(),
            Some("keep_daily")
        );
        assert_eq!(
            suggest_field("unknown field `colour`, expected one of `keep_last`, `keep_daily`"),
            None
        );
    }
}
