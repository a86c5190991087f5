//! The configuration exactly as written: serde structs that refuse unknown
//! keys. Nothing outside `config` sees these; `model` turns them into the
//! validated types the rest of drctl uses.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub policies_dir: Option<String>,
    pub repository: RawRepository,
    pub encryption: RawEncryption,
    pub lifecycle: Option<RawLifecycle>,
    pub daemon: Option<RawDaemon>,
    pub alerts: Option<RawAlerts>,
    pub wal: Option<RawWal>,
    pub signing: Option<RawSigning>,
    #[serde(default)]
    pub copies: Vec<RawCopy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepository {
    pub url: Spanned<String>,
    pub endpoint: Option<Spanned<String>>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    pub recipients: Spanned<Vec<Spanned<String>>>,
    pub identity_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    pub archive_after_days: Option<u32>,
    pub archive_class: Option<Spanned<String>>,
    pub noncurrent_expire_days: Option<u32>,
    pub abort_incomplete_upload_days: Option<u32>,
    pub object_lock_mode: Option<Spanned<String>>,
    pub object_lock_days: Option<u32>,
    pub restore_tier: Option<Spanned<String>>,
    pub restore_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub listen: Option<Spanned<String>>,
    pub max_concurrent_jobs: Option<u32>,
    pub shutdown_grace_seconds: Option<u64>,
    pub check_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWal {
    pub spool_dir: Option<String>,
    pub spool_max_bytes: Option<Spanned<u64>>,
    pub store_timeout: Option<Spanned<String>>,
    pub prefetch: Option<Spanned<u64>>,
    pub prefetch_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    #[serde(default)]
    pub webhook: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Option<Spanned<String>>,
    pub url_env: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: Option<Spanned<String>>,
    pub compression_level: Option<Spanned<i32>>,
    pub source: RawSource,
    pub schedule: Option<RawSchedule>,
    pub retention: Option<RawRetention>,
    pub drill: Option<RawDrill>,
}

/// One struct for every kind of source: serde cannot keep spans (line
/// numbers) inside an internally tagged enum, so `model` checks which keys
/// belong to which `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    // postgres
    pub url: Option<Spanned<String>>,
    pub pg_dump_args: Option<Spanned<Vec<String>>>,
    pub bin_dir: Option<Spanned<String>>,
    pub fingerprint: Option<Spanned<bool>>,
    // postgres-cluster (with `url` and `bin_dir`)
    pub wal_wait: Option<Spanned<String>>,
    // files
    pub paths: Option<Spanned<Vec<String>>>,
    pub exclude: Option<Spanned<Vec<Spanned<String>>>>,
    pub on_unreadable: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub backup: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub rpo_target: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub schedule: Option<Spanned<String>>,
    pub scratch_url: Option<Spanned<String>>,
    pub scratch_dir: Option<String>,
    pub choose: Option<Spanned<String>>,
    pub rto_target: Option<Spanned<String>>,
    pub rpo_target: Option<Spanned<String>>,
    pub sample_percent: Option<Spanned<f64>>,
    pub full_check_every: Option<Spanned<String>>,
    #[serde(default)]
    pub checks: Vec<RawCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    pub sql: String,
    pub expect: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    pub key_file: Option<String>,
    pub trusted: Spanned<Vec<Spanned<String>>>,
}

/// `[[copies]]`: a second repository that backups are copied into.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCopy {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub endpoint: Option<Spanned<String>>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    pub profile: Option<Spanned<String>>,
    pub access_key_id_env: Option<Spanned<String>>,
    pub secret_access_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub after_backup: bool,
    pub retention: Option<RawRetention>,
}
