//! What the daemon knows about each policy, shared by the scheduler, the
//! jobs and the HTTP endpoints; and the health verdict and metrics derived
//! from it. Everything here is in memory: the repository stays the only
//! record of backups, and a restarted daemon re-reads the newest of each.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Drill,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Drill => "drill",
        }
    }
}

/// The end of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `ok`, `failed`, or `skipped` (another host holds the policy's lease).
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backup written, or the drill record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewestBackup {
    pub id: String,
    pub point_in_time: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KindState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
    /// Started, or waiting for a slot under `max_concurrent_jobs`.
    pub running: bool,
    /// Waiting for a slot under `max_concurrent_jobs` (then also `running`).
    pub queued: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_duration_seconds: Option<f64>,
    /// Stored (encrypted) bytes of the last successful backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_size_bytes: Option<u64>,
    pub failures_total: u64,
    pub successes_total: u64,
    /// Drills: the last finished drill's measured RTO and verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rto_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_passed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_finished_at: Option<DateTime<Utc>>,
    /// When the last alert about this kind of run went out: a failure that
    /// persists alerts again only every [`super::ALERT_REPEAT`].
    #[serde(skip)]
    pub alerted_at: Option<DateTime<Utc>>,
}

/// `pg_stat_archiver` and the current WAL file, as the policy's server
/// reported them at the last check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerArchiver {
    /// Failed attempts since the server's statistics were last reset.
    pub failed_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failed_at: Option<DateTime<Utc>>,
    /// `pg_walfile_name(pg_current_wal_lsn())`; `None` on a standby.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_wal: Option<String>,
    /// Finished segments not yet archived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_segments: Option<u64>,
}

/// WAL archiving of a `postgres-cluster` policy (see [`super::wal`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalState {
    /// The newest segment in the repository, by when it was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_archived: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_archived_at: Option<DateTime<Utc>>,
    /// When the repository was last listed, and why that failed if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanned_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerArchiver>,
    /// Why the server could not be asked, at the last check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_error: Option<String>,
    /// Whether the lag over the RPO target has been alerted; cleared when
    /// archiving catches up.
    pub lagging: bool,
    /// The local spool of `wal-push` on this host; `None` when this host has
    /// no spool directory (the daemon runs away from the database server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<crate::wal::spool::Usage>,
    /// Whether a spool over [`crate::wal::spool::ALERT_FRACTION`] has been alerted;
    /// cleared when it drains below.
    pub spool_filling: bool,
    /// The newest segment in WAL order, for narrowing the next listing.
    #[serde(skip)]
    pub newest_in_order: Option<String>,
    #[serde(skip)]
    pub full_scan_at: Option<DateTime<Utc>>,
    /// A check is under way.
    #[serde(skip)]
    pub scanning: bool,
}

impl WalState {
    /// Now minus when the newest segment was stored.
    pub fn lag(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.last_archived_at
            .map(|t| (now - t).max(Duration::zero()))
    }

    /// Whether the archive lag is over `target` at `now`; `None` before the
    /// repository was listed once. An archive with no segment at all counts
    /// from when the daemon took the policy on.
    pub fn overdue(
        &self,
        target: Duration,
        added_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<bool> {
        self.scanned_at?;
        Some(match self.lag(now) {
            Some(lag) => lag > target,
            None => now - added_at > target,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyState {
    /// When the daemon started or the policy was added by a reload: a
    /// policy without a backup gets one RPO period from then.
    pub added_at: DateTime<Utc>,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_target_seconds: Option<i64>,
    /// `[drill] rto_target`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto_target_seconds: Option<f64>,
    /// The longest gap between two scheduled drills (from the cron line),
    /// so a rule can say "no drill within its schedule".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill_interval_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_backup: Option<NewestBackup>,
    /// Whether the RPO breach has been confirmed against the repository
    /// (and alerted); cleared when a newer backup arrives.
    pub rpo_breached: bool,
    pub backup: KindState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<KindState>,
    /// The retention run after the last backup, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_prune_error: Option<String>,
    pub prune_failures_total: u64,
    /// For a `postgres-cluster` policy: its WAL archiving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalState>,
    /// Per `[[copies]]` name: the newest backup there and the last copy.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub copies: BTreeMap<String, super::copies::CopyState>,
    /// When the repository was last read to confirm a breach.
    #[serde(skip)]
    pub confirmed_at: Option<DateTime<Utc>>,
    /// A confirming read is under way.
    #[serde(skip)]
    pub confirming: bool,
}

impl PolicyState {
    pub fn kind_mut(&mut self, kind: JobKind) -> &mut KindState {
        match kind {
            JobKind::Backup => &mut self.backup,
            JobKind::Drill => self.drill.get_or_insert_with(KindState::default),
        }
    }

    /// Age of the newest backup at `now`; `None` without any backup.
    pub fn newest_age(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.newest_backup.as_ref().map(|n| now - n.point_in_time)
    }

    /// Whether the policy is past its RPO target at `now`; `None` without a
    /// target. A policy without any backup gets one target period from when
    /// the daemon took it on. For a `postgres-cluster` policy the data-loss
    /// window is the WAL archive's, not the base backup's age (a daily base
    /// backup would breach a five-minute target all day): see
    /// [`WalState::overdue`].
    pub fn rpo_overdue(&self, now: DateTime<Utc>) -> Option<bool> {
        if self.wal.is_some() {
            return None;
        }
        let target = Duration::seconds(self.rpo_target_seconds?);
        Some(match self.newest_age(now) {
            Some(age) => age > target,
            None => now - self.added_at > target,
        })
    }
}

#[derive(Debug, Default, Serialize)]
pub struct DaemonState {
    pub started_at: DateTime<Utc>,
    pub host: String,
    pub version: &'static str,
    pub repository: String,
    pub config: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<String>,
    pub stopping: bool,
    /// Bucket settings that differ from drctl.toml (`repo status`), checked
    /// hourly on S3; `None` before the first check or where it cannot run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_drift: Option<Vec<String>>,
    /// Whether `repo.json` answered the last probe (`/health`, `/metrics`
    /// and a background check every `check_interval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_up: Option<bool>,
    pub policies: BTreeMap<String, PolicyState>,
    /// Policies in the configuration now; others stay only while a run of
    /// theirs finishes.
    #[serde(skip)]
    pub configured: std::collections::BTreeSet<String>,
}

pub type Shared = Arc<Mutex<DaemonState>>;

/// The state, even if a panicking job poisoned the lock: what it holds is
/// plain bookkeeping, and the endpoints must keep answering.
pub fn lock(state: &Shared) -> std::sync::MutexGuard<'_, DaemonState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One line of `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// The `/health` verdict: the repository answered (`repository`), and for
/// each policy its newest backup is within the RPO target (`rpo:<policy>`),
/// or for a `postgres-cluster` policy its WAL archive lag is
/// (`wal_archive:<policy>`), and its last backup and drill did not fail
/// (`last_run:<policy>`).
pub fn health(
    state: &DaemonState,
    repository: Result<(), String>,
    now: DateTime<Utc>,
) -> BTreeMap<String, Check> {
    let mut checks = BTreeMap::new();
    checks.insert(
        "repository".to_string(),
        match repository {
            Ok(()) => Check {
                ok: true,
                detail: format!("{} answered", state.repository),
            },
            Err(e) => Check {
                ok: false,
                detail: e,
            },
        },
    );
    for (name, p) in &state.policies {
        if let (Some(target), Some(overdue)) = (p.rpo_target_seconds, p.rpo_overdue(now)) {
            let target = crate::timespec::human_duration(Duration::seconds(target));
            let detail = match (p.newest_age(now), overdue) {
                (Some(age), false) => format!(
                    "newest backup is {} old (target {target})",
                    crate::timespec::human_duration(age)
                ),
                (Some(age), true) => format!(
                    "newest backup is {} old, over the RPO target of {target}",
                    crate::timespec::human_duration(age)
                ),
                (None, false) => "no backup yet; the first is due".into(),
                (None, true) => "no backup exists".into(),
            };
            let check = Check {
                ok: !overdue,
                detail,
            };
            checks.insert(format!("rpo:{name}"), check);
        }
        if let (Some(wal), Some(target)) = (&p.wal, p.rpo_target_seconds)
            && let Some(check) = wal_check(wal, Duration::seconds(target), p.added_at, now)
        {
            checks.insert(format!("wal_archive:{name}"), check);
        }
        if let Some(spool) = p.wal.as_ref().and_then(|w| w.spool.as_ref()) {
            checks.insert(format!("wal_spool:{name}"), spool_check(spool));
        }
        for (copy, c) in &p.copies {
            checks.insert(
                format!("copy:{name}:{copy}"),
                match &c.last_error {
                    Some(e) => Check {
                        ok: false,
                        detail: format!("the last copy failed: {e}"),
                    },
                    None => Check {
                        ok: true,
                        detail: format!(
                            "{} behind the primary",
                            crate::timespec::human_duration(c.lag(p.newest_backup.as_ref(), now))
                        ),
                    },
                },
            );
        }
        let mut failed: Vec<String> = std::iter::once(("backup", Some(&p.backup)))
            .chain(std::iter::once(("drill", p.drill.as_ref())))
            .filter_map(|(what, k)| {
                let run = k?.last_run.as_ref()?;
                (run.result == "failed").then(|| {
                    format!(
                        "last {what} ({}) failed: {}",
                        run.run_id,
                        run.error.as_deref().unwrap_or("unknown error")
                    )
                })
            })
            .collect();
        if let Some(e) = &p.last_prune_error {
            failed.push(format!("last prune failed: {e}"));
        }
        checks.insert(
            format!("last_run:{name}"),
            Check {
                ok: failed.is_empty(),
                detail: if failed.is_empty() {
                    "last runs did not fail".into()
                } else {
                    failed.join("; ")
                },
            },
        );
    }
    checks
}

/// The local spool against its limit: past [`crate::wal::spool::ALERT_FRACTION`] the
/// repository has been out of reach long enough that `wal-push` will soon
/// fail and WAL pile up on the server.
fn spool_check(spool: &crate::wal::spool::Usage) -> Check {
    if let Some(e) = &spool.error {
        return Check {
            ok: false,
            detail: format!("the WAL spool cannot be read: {e}"),
        };
    }
    let filling = spool.filling();
    Check {
        ok: !filling,
        detail: if filling {
            format!(
                "the WAL spool holds {}: over {:.0} %; the repository is not taking WAL (see `drctl wal status`); \
                 when the spool is full wal-push fails and WAL piles up in the server's pg_wal",
                spool.describe(),
                crate::wal::spool::ALERT_FRACTION * 100.0
            )
        } else {
            format!("the WAL spool holds {}", spool.describe())
        },
    }
}

/// The archive lag against the RPO target, with what the server says
/// about why when it lags; `None` before the first listing.
fn wal_check(
    wal: &WalState,
    target: Duration,
    added_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<Check> {
    let overdue = wal.overdue(target, added_at, now)?;
    let target_text = crate::timespec::human_duration(target);
    let mut detail = match (&wal.last_archived, wal.lag(now)) {
        (Some(name), Some(lag)) => format!(
            "newest archived segment {name} was stored {} ago ({} the RPO target of {target_text})",
            crate::timespec::human_duration(lag),
            if overdue { "over" } else { "within" }
        ),
        _ if overdue => format!(
            "no WAL segment is in the archive, {target_text} (the RPO target) after the daemon started watching"
        ),
        _ => "no WAL segment archived yet".into(),
    };
    if overdue {
        match (&wal.server, &wal.server_error) {
            (Some(s), _) => {
                detail.push_str(&format!(
                    "; the server reports {} failed archive attempt{}",
                    s.failed_count,
                    if s.failed_count == 1 { "" } else { "s" }
                ));
                if let Some(w) = &s.last_failed_wal {
                    detail.push_str(&format!(" (last: {w})"));
                }
                if let Some(n) = s.lag_segments {
                    detail.push_str(&format!(" and {n} finished segment(s) waiting"));
                }
                detail.push_str(
                    "; check archive_command (`SELECT * FROM pg_stat_archiver`, the server log), \
                     or set archive_timeout below the RPO target if the server is idle",
                );
            }
            (None, Some(e)) => detail.push_str(&format!("; the server cannot be asked why: {e}")),
            (None, None) => {}
        }
    }
    Some(Check {
        ok: !overdue,
        detail,
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// `/metrics` in the Prometheus text format. Built afresh from the state at
/// each scrape: a few hundred series cost microseconds, and ages are then
/// exact at scrape time.
pub fn metrics(state: &DaemonState, now: DateTime<Utc>) -> String {
    let mut registry = Registry::with_prefix("drctl");
    registry.register(
        "build",
        "drctl version",
        Info::new(BuildLabels {
            version: state.version.to_string(),
        }),
    );
    let family = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<PolicyLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(name, help, f.clone());
        f
    };
    let last_success = family(
        &mut registry,
        "backup_last_success_timestamp_seconds",
        "Unix time of the last successful backup by this daemon",
    );
    let last_duration = family(
        &mut registry,
        "backup_last_duration_seconds",
        "Duration of the last successful backup",
    );
    let last_size = family(
        &mut registry,
        "backup_last_size_bytes",
        "Stored (compressed, encrypted) size of the last successful backup",
    );
    let running = family(
        &mut registry,
        "backup_running",
        "1 while a backup of the policy runs (not while it waits for a slot)",
    );
    let queued = family(
        &mut registry,
        "backup_queued",
        "1 while a backup of the policy waits for a slot under max_concurrent_jobs",
    );
    let newest_ts = family(
        &mut registry,
        "backup_newest_timestamp_seconds",
        "Unix time (point in time) of the newest backup in the repository, by any host",
    );
    let repo_up = Gauge::<i64>::default();
    registry.register(
        "repository_up",
        "1 when the repository answered the last check (repo.json readable), 0 when not",
        repo_up.clone(),
    );
    repo_up.set(match state.repository_up {
        Some(true) => 1,
        _ => 0,
    });
    let drill_rto = family(
        &mut registry,
        "drill_last_rto_seconds",
        "Measured RTO of the last finished drill run by this daemon",
    );
    let drill_passed = family(
        &mut registry,
        "drill_last_passed",
        "1 when the last finished drill run by this daemon passed, 0 when it failed",
    );
    let drill_last = family(
        &mut registry,
        "drill_last_timestamp_seconds",
        "Unix time the last drill run by this daemon finished, passed or failed",
    );
    let rto_target = family(
        &mut registry,
        "drill_rto_target_seconds",
        "The policy's RTO target ([drill] rto_target)",
    );
    let watched = family(
        &mut registry,
        "policy_watched_since_timestamp_seconds",
        "Unix time this daemon started watching the policy (start-up or the reload that added it)",
    );
    let drill_interval = family(
        &mut registry,
        "drill_interval_seconds",
        "The longest gap between two scheduled drills of the policy (from its cron line)",
    );
    let newest_age = family(
        &mut registry,
        "backup_newest_age_seconds",
        "Age of the newest backup in the repository (from its point in time)",
    );
    let rpo_target = family(
        &mut registry,
        "backup_rpo_target_seconds",
        "The policy's RPO target",
    );
    let drill_last_success = family(
        &mut registry,
        "drill_last_success_timestamp_seconds",
        "Unix time of the last passed drill run by this daemon",
    );
    let failures = Family::<PolicyLabel, prometheus_client::metrics::counter::Counter>::default();
    registry.register(
        "backup_failures",
        "Backups that failed since the daemon started",
        failures.clone(),
    );
    let successes = Family::<PolicyLabel, prometheus_client::metrics::counter::Counter>::default();
    registry.register(
        "backup_successes",
        "Backups that succeeded since the daemon started",
        successes.clone(),
    );
    let drill_successes =
        Family::<PolicyLabel, prometheus_client::metrics::counter::Counter>::default();
    registry.register(
        "drill_successes",
        "Drills that passed since the daemon started",
        drill_successes.clone(),
    );
    let prune_failures =
        Family::<PolicyLabel, prometheus_client::metrics::counter::Counter>::default();
    registry.register(
        "prune_failures",
        "Retention runs that failed since the daemon started",
        prune_failures.clone(),
    );
    let drill_failures =
        Family::<PolicyLabel, prometheus_client::metrics::counter::Counter>::default();
    registry.register(
        "drill_failures",
        "Drills that failed since the daemon started",
        drill_failures.clone(),
    );
    let wal_last_archived = family(
        &mut registry,
        "wal_last_archived_timestamp_seconds",
        "Unix time the newest WAL segment in the repository was stored",
    );
    let wal_lag = family(
        &mut registry,
        "wal_archive_lag_seconds",
        "Seconds since the newest WAL segment in the repository was stored",
    );
    let wal_lag_segments = family(
        &mut registry,
        "wal_archive_lag_segments",
        "Finished WAL segments the server has not archived yet (from pg_stat_archiver)",
    );
    let wal_server_up = family(
        &mut registry,
        "wal_server_up",
        "1 when the policy's server answered the last pg_stat_archiver query",
    );
    let wal_failures =
        Family::<PolicyLabel, prometheus_client::metrics::counter::Counter>::default();
    registry.register(
        "wal_archive_failures",
        "Failed archive_command runs the server reports (pg_stat_archiver.failed_count; resets with the server's statistics)",
        wal_failures.clone(),
    );
    let spool_bytes = family(
        &mut registry,
        "wal_spool_bytes",
        "Sealed WAL bytes waiting in this host's wal-push spool for the repository",
    );
    let spool_segments = family(
        &mut registry,
        "wal_spool_segments",
        "WAL files waiting in this host's wal-push spool",
    );
    let spool_max = family(
        &mut registry,
        "wal_spool_max_bytes",
        "The spool's limit ([wal] spool_max_bytes); past it wal-push fails",
    );
    if let Some(drift) = &state.bucket_drift {
        let g = Gauge::<i64>::default();
        g.set(drift.len() as i64);
        registry.register(
            "bucket_drift_settings",
            "Bucket settings that differ from drctl.toml (run `drctl repo status`)",
            g,
        );
    }
    let ts = |t: DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
    for (name, p) in &state.policies {
        let l = PolicyLabel {
            policy: name.clone(),
        };
        if let Some(t) = p.backup.last_success_at {
            last_success.get_or_create(&l).set(ts(t));
        }
        if let Some(d) = p.backup.last_duration_seconds {
            last_duration.get_or_create(&l).set(d);
        }
        if let Some(s) = p.backup.last_size_bytes {
            last_size.get_or_create(&l).set(s as f64);
        }
        running
            .get_or_create(&l)
            .set(if p.backup.running && !p.backup.queued {
                1.0
            } else {
                0.0
            });
        queued
            .get_or_create(&l)
            .set(if p.backup.queued { 1.0 } else { 0.0 });
        if let Some(n) = &p.newest_backup {
            newest_ts.get_or_create(&l).set(ts(n.point_in_time));
        }
        successes.get_or_create(&l).inc_by(p.backup.successes_total);
        if let Some(t) = p.rto_target_seconds {
            rto_target.get_or_create(&l).set(t);
        }
        watched.get_or_create(&l).set(ts(p.added_at));
        if let Some(i) = p.drill_interval_seconds {
            drill_interval.get_or_create(&l).set(i as f64);
        }
        if let Some(age) = p.newest_age(now) {
            newest_age
                .get_or_create(&l)
                .set(age.num_milliseconds() as f64 / 1000.0);
        }
        if let Some(t) = p.rpo_target_seconds {
            rpo_target.get_or_create(&l).set(t as f64);
        }
        failures.get_or_create(&l).inc_by(p.backup.failures_total);
        prune_failures
            .get_or_create(&l)
            .inc_by(p.prune_failures_total);
        if let Some(w) = &p.wal {
            if let Some(t) = w.last_archived_at {
                wal_last_archived.get_or_create(&l).set(ts(t));
            }
            if let Some(lag) = w.lag(now) {
                wal_lag
                    .get_or_create(&l)
                    .set(lag.num_milliseconds() as f64 / 1000.0);
            }
            if w.scanned_at.is_some() {
                wal_server_up
                    .get_or_create(&l)
                    .set(if w.server.is_some() { 1.0 } else { 0.0 });
            }
            if let Some(s) = w.spool.as_ref().filter(|s| s.error.is_none()) {
                spool_bytes.get_or_create(&l).set(s.bytes as f64);
                spool_segments.get_or_create(&l).set(s.segments as f64);
                spool_max.get_or_create(&l).set(s.max_bytes as f64);
            }
            if let Some(s) = &w.server {
                wal_failures.get_or_create(&l).inc_by(s.failed_count);
                if let Some(n) = s.lag_segments {
                    wal_lag_segments.get_or_create(&l).set(n as f64);
                }
            }
        }
        if let Some(d) = &p.drill {
            drill_failures.get_or_create(&l).inc_by(d.failures_total);
            drill_successes.get_or_create(&l).inc_by(d.successes_total);
            if let Some(r) = d.last_rto_seconds {
                drill_rto.get_or_create(&l).set(r);
            }
            if let Some(passed) = d.last_passed {
                drill_passed
                    .get_or_create(&l)
                    .set(if passed { 1.0 } else { 0.0 });
            }
            if let Some(t) = d.last_finished_at {
                drill_last.get_or_create(&l).set(ts(t));
            }
            if let Some(t) = d.last_success_at {
                drill_last_success.get_or_create(&l).set(ts(t));
            }
        }
    }
    super::copies::metrics(&mut registry, state, now);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(now: DateTime<Utc>) -> DaemonState {
        let mut s = DaemonState {
            started_at: now - Duration::hours(3),
            version: "0.1.0",
            repository: "file:///repo".into(),
            ..Default::default()
        };
        s.policies.insert(
            "orders-db".into(),
            PolicyState {
                kind: "postgres",
                rpo_target_seconds: Some(3600),
                newest_backup: Some(NewestBackup {
                    id: "x".into(),
                    point_in_time: now - Duration::minutes(10),
                }),
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn health_flags_rpo_and_failed_runs() {
        let now = Utc::now();
        let mut s = state(now);
        let h = health(&s, Ok(()), now);
        assert!(h.values().all(|c| c.ok), "{h:?}");
        let p = s.policies.get_mut("orders-db").unwrap();
        p.newest_backup.as_mut().unwrap().point_in_time = now - Duration::hours(2);
        p.backup.last_run = Some(RunOutcome {
            run_id: "r1".into(),
            started_at: now,
            finished_at: now,
            result: "failed",
            error: Some("pg_dump exited 1".into()),
            id: None,
        });
        let h = health(&s, Err("timed out".into()), now);
        assert!(!h["repository"].ok);
        assert!(!h["rpo:orders-db"].ok);
        assert!(h["rpo:orders-db"].detail.contains("over the RPO target"));
        assert!(h["last_run:orders-db"].detail.contains("pg_dump exited 1"));
    }

    fn cluster(now: DateTime<Utc>) -> PolicyState {
        PolicyState {
            added_at: now - Duration::hours(1),
            kind: "postgres-cluster",
            rpo_target_seconds: Some(300),
            // A day-old base backup: not a breach for a cluster policy.
            newest_backup: Some(NewestBackup {
                id: "b".into(),
                point_in_time: now - Duration::days(1),
            }),
            wal: Some(WalState {
                last_archived: Some("000000010000000000000010".into()),
                last_archived_at: Some(now - Duration::seconds(42)),
                scanned_at: Some(now),
                server: Some(ServerArchiver {
                    failed_count: 3,
                    lag_segments: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_cluster_policys_health_follows_its_wal_archive_lag_not_its_base_backups_age() {
        let now = Utc::now();
        let mut s = state(now);
        s.policies.insert("pg".into(), cluster(now));
        let h = health(&s, Ok(()), now);
        assert!(!h.contains_key("rpo:pg"), "{h:?}");
        assert!(h["wal_archive:pg"].ok, "{h:?}");
        assert!(
            h["wal_archive:pg"]
                .detail
                .contains("000000010000000000000010")
        );

        let wal = s.policies.get_mut("pg").unwrap().wal.as_mut().unwrap();
        wal.last_archived_at = Some(now - Duration::minutes(6));
        wal.server.as_mut().unwrap().last_failed_wal = Some("000000010000000000000011".into());
        wal.server.as_mut().unwrap().lag_segments = Some(2);
        let h = health(&s, Ok(()), now);
        let c = &h["wal_archive:pg"];
        assert!(!c.ok);
        for part in [
            "over the RPO target of 5m",
            "3 failed archive attempts (last: 000000010000000000000011)",
            "2 finished segment(s) waiting",
            "archive_command",
        ] {
            assert!(c.detail.contains(part), "{part}: {}", c.detail);
        }

        // Before the first listing nothing is claimed; an empty archive is
        // overdue one target period after the daemon took the policy on.
        s.policies.get_mut("pg").unwrap().wal = Some(WalState::default());
        assert!(!health(&s, Ok(()), now).contains_key("wal_archive:pg"));
        s.policies
            .get_mut("pg")
            .unwrap()
            .wal
            .as_mut()
            .unwrap()
            .scanned_at = Some(now);
        assert!(!health(&s, Ok(()), now)["wal_archive:pg"].ok);
    }

    #[test]
    fn wal_metrics_come_from_the_repository_and_the_server() {
        let now = Utc::now();
        let mut s = state(now);
        s.policies.insert("pg".into(), cluster(now));
        let text = metrics(&s, now);
        let at = (now - Duration::seconds(42)).timestamp_millis() as f64 / 1000.0;
        for line in [
            format!("drctl_wal_last_archived_timestamp_seconds{{policy=\"pg\"}} {at}"),
            "drctl_wal_archive_lag_seconds{policy=\"pg\"} 42".into(),
            "drctl_wal_archive_lag_segments{policy=\"pg\"} 0".into(),
            "drctl_wal_archive_failures_total{policy=\"pg\"} 3".into(),
            "drctl_wal_server_up{policy=\"pg\"} 1".into(),
        ] {
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("drctl_wal_archive_lag_seconds{policy=\"orders-db\"}"));
        let wal = s.policies.get_mut("pg").unwrap().wal.as_mut().unwrap();
        wal.server = None;
        let text = metrics(&s, now);
        assert!(
            text.contains("drctl_wal_server_up{policy=\"pg\"} 0"),
            "{text}"
        );
        assert!(!text.contains("drctl_wal_archive_lag_segments{"), "{text}");
    }

    #[test]
    fn metrics_name_every_series_per_policy() {
        let now = Utc::now();
        let mut s = state(now);
        s.policies
            .get_mut("orders-db")
            .unwrap()
            .backup
            .failures_total = 2;
        let text = metrics(&s, now);
        assert!(
            text.contains("drctl_build_info{version=\"0.1.0\"} 1"),
            "{text}"
        );
        assert!(text.contains("drctl_backup_failures_total{policy=\"orders-db\"} 2"));
        assert!(text.contains("drctl_backup_newest_age_seconds{policy=\"orders-db\"} 600"));
        assert!(text.contains("drctl_backup_running{policy=\"orders-db\"} 0"));
        assert!(text.ends_with("# EOF\n"));
    }
}
