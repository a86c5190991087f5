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
    /// When the last alert about this kind of run went out: a failure that
    /// persists alerts again only every [`super::ALERT_REPEAT`].
    #[serde(skip)]
    pub alerted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyState {
    /// When the daemon started or the policy was added by a reload: a
    /// policy without a backup gets one RPO period from then.
    pub added_at: DateTime<Utc>,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_target_seconds: Option<i64>,
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
    /// the daemon took it on.
    pub fn rpo_overdue(&self, now: DateTime<Utc>) -> Option<bool> {
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
/// each policy its newest backup is within the RPO target (`rpo:<policy>`)
/// and its last backup and drill did not fail (`last_run:<policy>`).
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
        "1 while a backup of the policy is running or queued",
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
            .set(if p.backup.running { 1.0 } else { 0.0 });
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
        if let Some(d) = &p.drill {
            drill_failures.get_or_create(&l).inc_by(d.failures_total);
            if let Some(t) = d.last_success_at {
                drill_last_success.get_or_create(&l).set(ts(t));
            }
        }
    }
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
