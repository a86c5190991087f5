//! The daemon's copies (`[[copies]]` with `after_backup = true`): each new
//! backup is copied into them right after it is written, and each copy is
//! then pruned by its own retention. A copy that fails is logged, alerted
//! (`copy_failed`) and shown in `/health`, `/metrics` and `/status`; the
//! backup it follows stays a success. The newest backup in each copy is
//! read at start-up, so the copy lag is known before the first backup.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::JobCtx;
use super::state::{self, NewestBackup, Shared};
use crate::alert::{Alert, Event};
use crate::config::{Config, Policy};
use crate::error::Error;
use crate::repo::{Repo, catalog};

/// What the daemon knows of one policy in one copy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyState {
    /// The newest backup in the copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_backup: Option<NewestBackup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<Utc>>,
    /// The last copy's error, until one succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub failures_total: u64,
}

impl CopyState {
    /// How far the copy is behind the primary: the newest backup's point
    /// in time in the primary minus the copy's; with nothing in the copy,
    /// the age of the primary's newest backup. Zero when it is up to date
    /// (or there is nothing to copy).
    pub fn lag(&self, primary: Option<&NewestBackup>, now: DateTime<Utc>) -> Duration {
        let Some(p) = primary else {
            return Duration::zero();
        };
        match &self.newest_backup {
            Some(c) => (p.point_in_time - c.point_in_time).max(Duration::zero()),
            None => (now - p.point_in_time).max(Duration::zero()),
        }
    }
}

/// Reads the newest backup of every policy in every copy.
pub(super) async fn load_newest(repo: Arc<Repo>, config: Arc<Config>, state: Shared) {
    for c in &config.copies {
        let copy = match crate::copy::open_copy(c, repo.signing.clone()).await {
            Ok(r) => r,
            // Never copied to yet: nothing there, and the lag shows it.
            Err(Error::Usage(_)) => {
                let mut st = state::lock(&state);
                for p in &config.policies {
                    if let Some(ps) = st.policies.get_mut(&p.name) {
                        ps.copies.entry(c.name.clone()).or_default();
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(event = "copy_unreadable", copy = %c.name, error = %e, "could not open the copy");
                continue;
            }
        };
        for p in &config.policies {
            match catalog::newest(&copy, &p.name).await {
                Ok(newest) => {
                    if let Some(ps) = state::lock(&state).policies.get_mut(&p.name) {
                        ps.copies.entry(c.name.clone()).or_default().newest_backup =
                            newest.map(|m| NewestBackup {
                                id: m.id,
                                point_in_time: m.point_in_time,
                            });
                    }
                }
                Err(e) => {
                    tracing::warn!(event = "copy_unreadable", copy = %c.name, policy = %p.name, error = %e, "could not read the newest backup in the copy");
                }
            }
        }
    }
}

/// Copies the policy's new backups into every `after_backup` copy, then
/// prunes each copy by its retention. Never fails the backup.
pub(super) async fn after_backup(ctx: &JobCtx, policy: &Policy, run_id: &str) {
    for c in ctx.config.copies.iter().filter(|c| c.after_backup) {
        let opts = crate::copy::CopyOptions {
            cancel: ctx.abort.clone(),
            ..Default::default()
        };
        let result = async {
            let dest = crate::copy::open_destination(&ctx.repo, c, true).await?;
            let report = crate::copy::copy_policy(&ctx.repo, &dest, c, policy, &opts).await?;
            let mut pruned = policy.clone();
            pruned.retention = c.retention_for(policy).clone();
            if crate::retention::has_rules(&pruned.retention) {
                let opts = crate::prune::PruneOptions {
                    cancel: ctx.abort.clone(),
                    ..Default::default()
                };
                match crate::prune::prune(&dest, &pruned, &opts).await {
                    Ok(_) | Err(Error::Locked { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(report)
        }
        .await;
        let mut alert = None;
        {
            let mut st = state::lock(&ctx.state);
            let Some(p) = st.policies.get_mut(&policy.name) else {
                return;
            };
            let cs = p.copies.entry(c.name.clone()).or_default();
            match result {
                Ok(report) => {
                    tracing::info!(event = "copy_finished",
                        job = "copy", policy = %policy.name, copy = %c.name, run = %run_id,
                        bytes = report.bytes, seconds = report.seconds,
                        copied = report.backups.iter().filter(|b| b.action == "copied").count(),
                        "copy finished"
                    );
                    cs.last_success_at = Some(Utc::now());
                    cs.last_error = None;
                    if let Some(t) = report.newest_destination {
                        let id = report
                            .backups
                            .iter()
                            .find(|b| b.point_in_time == t)
                            .map(|b| b.id.clone())
                            .unwrap_or_default();
                        cs.newest_backup = Some(NewestBackup {
                            id,
                            point_in_time: t,
                        });
                    }
                }
                // Another copy or a prune of the copy is at it.
                Err(Error::Locked { message, .. }) => {
                    tracing::info!(event = "copy_skipped", job = "copy", policy = %policy.name, copy = %c.name, reason = %message, "copy skipped: busy");
                }
                Err(Error::Interrupted(_))
                    if ctx.abort.load(std::sync::atomic::Ordering::Relaxed) => {}
                Err(e) => {
                    tracing::error!(event = "copy_failed",
                        job = "copy", policy = %policy.name, copy = %c.name, run = %run_id, error = %e,
                        "copy failed; the backup is kept in the primary and the next run copies it"
                    );
                    cs.failures_total += 1;
                    cs.last_error = Some(e.to_string());
                    alert = Some(Alert::new(
                        Event::CopyFailed,
                        &policy.name,
                        format!("copy to `{}` failed: {e}", c.name),
                        serde_json::json!({ "run": run_id, "copy": c.name }),
                    ));
                }
            }
        }
        if let Some(a) = alert {
            ctx.alerter.send(a);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CopyLabels {
    policy: String,
    /// The `[[copies]]` name.
    repository: String,
}

/// The copy series of `/metrics`: per policy and copy, the newest backup's
/// point in time there, the lag behind the primary and failed copies.
pub(super) fn metrics(
    registry: &mut prometheus_client::registry::Registry,
    state: &state::DaemonState,
    now: DateTime<Utc>,
) {
    use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
    type G = Family<CopyLabels, Gauge<f64, std::sync::atomic::AtomicU64>>;
    let newest = G::default();
    registry.register(
        "copy_newest_backup_timestamp_seconds",
        "Unix time (point in time) of the newest backup of the policy in the copy",
        newest.clone(),
    );
    let lag = G::default();
    registry.register(
        "copy_lag_seconds",
        "How far the copy's newest backup is behind the primary's (point in time); with none in the copy, the age of the primary's newest",
        lag.clone(),
    );
    let last_success = G::default();
    registry.register(
        "copy_last_success_timestamp_seconds",
        "Unix time of the last successful copy by this daemon",
        last_success.clone(),
    );
    let failures = Family::<CopyLabels, Counter>::default();
    registry.register(
        "copy_failures",
        "Copies after a backup that failed since the daemon started",
        failures.clone(),
    );
    let ts = |t: DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
    for (policy, p) in &state.policies {
        for (copy, c) in &p.copies {
            let l = CopyLabels {
                policy: policy.clone(),
                repository: copy.clone(),
            };
            if let Some(n) = &c.newest_backup {
                newest.get_or_create(&l).set(ts(n.point_in_time));
            }
            lag.get_or_create(&l)
                .set(c.lag(p.newest_backup.as_ref(), now).num_milliseconds() as f64 / 1000.0);
            if let Some(t) = c.last_success_at {
                last_success.get_or_create(&l).set(ts(t));
            }
            failures.get_or_create(&l).inc_by(c.failures_total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest(t: DateTime<Utc>) -> NewestBackup {
        NewestBackup {
            id: "x".into(),
            point_in_time: t,
        }
    }

    #[test]
    fn the_lag_is_how_far_the_copy_is_behind_the_primary() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let primary = newest(now - Duration::hours(1));
        let mut c = CopyState::default();
        assert_eq!(c.lag(None, now), Duration::zero(), "nothing to copy");
        assert_eq!(
            c.lag(Some(&primary), now),
            Duration::hours(1),
            "an empty copy"
        );
        c.newest_backup = Some(newest(now - Duration::hours(25)));
        assert_eq!(c.lag(Some(&primary), now), Duration::hours(24));
        c.newest_backup = Some(newest(now - Duration::hours(1)));
        assert_eq!(c.lag(Some(&primary), now), Duration::zero());
        // A copy that keeps one the primary pruned is not "ahead".
        c.newest_backup = Some(newest(now));
        assert_eq!(c.lag(Some(&primary), now), Duration::zero());
    }
}
