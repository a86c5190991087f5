//! `daemon` and `status`.

use chrono::Utc;
use serde::Serialize;

use super::Ctx;
use crate::error::{Error, Result};
use crate::repo::catalog;
use crate::schedule::Timetable;
use crate::timespec::human_duration;

pub async fn daemon(ctx: &Ctx) -> Result<()> {
    crate::daemon::run(crate::daemon::Options {
        config_path: crate::config::Config::resolve_path(ctx.cli.config.as_deref()),
        identity: ctx.cli.identity.clone(),
    })
    .await
}

/// One policy, in the shapes of the daemon's `/status` where the two say
/// the same thing (`newest_backup`, `rpo_target_seconds`, `backup`,
/// `wal`), so a script reads either the same way.
#[derive(Debug, Serialize)]
struct PolicyStatus {
    policy: String,
    kind: &'static str,
    rpo_target_seconds: Option<i64>,
    newest_backup: Option<NewestBackup>,
    newest_age_seconds: Option<i64>,
    /// `ok`, `breached`, `no backup` (`no WAL` for a cluster), or `no target`.
    rpo: &'static str,
    backup: BackupStatus,
    /// `postgres-cluster`: the newest WAL segment in the repository and how
    /// long ago it was stored, which is what the RPO is judged by.
    #[serde(skip_serializing_if = "Option::is_none")]
    wal: Option<WalStatus>,
    last_error: Option<String>,
    /// Per `[[copies]]`: the newest backup there and how far it is behind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    copies: Vec<CopyStatus>,
}

#[derive(Debug, Serialize)]
struct NewestBackup {
    id: String,
    point_in_time: chrono::DateTime<Utc>,
}

impl NewestBackup {
    fn of(m: &crate::repo::manifest::Manifest) -> NewestBackup {
        NewestBackup {
            id: m.id.clone(),
            point_in_time: m.point_in_time,
        }
    }
}

#[derive(Debug, Serialize)]
struct BackupStatus {
    schedule: Option<String>,
    next_run: Option<chrono::DateTime<Utc>>,
    /// From the daemon's `/status`, when it answers.
    running: Option<bool>,
    last_run: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct WalStatus {
    last_archived: Option<String>,
    last_archived_at: Option<chrono::DateTime<Utc>>,
    lag_seconds: Option<i64>,
}

#[derive(Debug, Serialize)]
struct CopyStatus {
    copy: String,
    newest_backup: Option<NewestBackup>,
    /// The primary's newest point in time minus the copy's (with nothing
    /// in the copy, the primary's newest backup's age).
    lag_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    repository: String,
    /// `http://…/status` and whether it answered.
    daemon: String,
    daemon_reachable: bool,
    policies: Vec<PolicyStatus>,
}

/// Asks the local daemon (at `[daemon] listen`) for what only it knows:
/// running jobs and the last run's result.
async fn daemon_status(listen: &str) -> Option<serde_json::Value> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .ok()?;
    let r = client
        .get(format!("http://{listen}/status"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

pub async fn status(ctx: &Ctx) -> Result<()> {
    let config = ctx.config()?;
    let repo = ctx.repo(&config).await?;
    let daemon = daemon_status(&config.daemon.listen).await;
    let now = Utc::now();
    let mut out = Status {
        repository: repo.store.location(),
        daemon: format!("http://{}/status", config.daemon.listen),
        daemon_reachable: daemon.is_some(),
        policies: Vec::new(),
    };
    let mut copies = Vec::new();
    for c in &config.copies {
        copies.push((
            c,
            crate::copy::open_copy(c, repo.signing.clone())
                .await
                .map_err(|e| e.to_string()),
        ));
    }
    for p in &config.policies {
        let newest = catalog::newest(&repo, &p.name).await?;
        let mut copy_rows = Vec::new();
        for (c, opened) in &copies {
            let found = match opened {
                Ok(r) => catalog::newest(r, &p.name).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            let there = found.as_ref().ok().cloned().flatten();
            copy_rows.push(CopyStatus {
                copy: c.name.clone(),
                newest_backup: there.as_ref().map(NewestBackup::of),
                lag_seconds: match (&newest, &there, &found) {
                    (_, _, Err(_)) => None,
                    (None, _, _) => Some(0),
                    (Some(n), Some(t), _) => {
                        Some((n.point_in_time - t.point_in_time).num_seconds().max(0))
                    }
                    (Some(n), None, _) => Some((now - n.point_in_time).num_seconds().max(0)),
                },
                error: found.err(),
            });
        }
        let target = p.rpo_target().map(|(t, _)| t);
        let age = newest.as_ref().map(|m| now - m.point_in_time);
        // A cluster's data-loss window is its WAL archive's, not its base
        // backups' age (a weekly base backup is not a week of loss).
        let wal = match p.source {
            crate::config::SourceConfig::PostgresCluster { .. } => {
                let objects = repo.store.list(&crate::wal::policy_prefix(&p.name)).await?;
                Some(
                    crate::daemon::wal::observe(&p.name, Default::default(), &objects)
                        .last_archived,
                )
            }
            _ => None,
        };
        let rpo = match (&wal, target, age) {
            (_, None, _) => "no target",
            (Some(None), Some(_), _) => "no WAL",
            (Some(Some((_, at))), Some(t), _) if now - *at <= t => "ok",
            (Some(Some(_)), Some(_), _) => "breached",
            (None, Some(_), None) => "no backup",
            (None, Some(t), Some(a)) if a <= t => "ok",
            (None, Some(_), Some(_)) => "breached",
        };
        let wal = wal.map(|last| WalStatus {
            lag_seconds: last
                .as_ref()
                .map(|(_, at)| (now - *at).num_seconds().max(0)),
            last_archived_at: last.as_ref().map(|(_, at)| *at),
            last_archived: last.map(|(name, _)| name),
        });
        let schedule = p.schedule.as_ref().and_then(|s| s.backup.clone());
        let next_run = p.schedule.as_ref().and_then(|s| {
            Timetable::new(s.backup.as_deref()?, s.timezone)
                .ok()?
                .next_after(now)
        });
        let from_daemon = daemon
            .as_ref()
            .and_then(|d| d.get("policies")?.get(&p.name)?.get("backup").cloned());
        let last_run = from_daemon
            .as_ref()
            .and_then(|b| b.get("last_run").cloned());
        out.policies.push(PolicyStatus {
            policy: p.name.clone(),
            kind: p.source.kind(),
            newest_backup: newest.as_ref().map(NewestBackup::of),
            newest_age_seconds: age.map(|a| a.num_seconds()),
            rpo_target_seconds: target.map(|t| t.num_seconds()),
            wal,
            rpo,
            last_error: last_run
                .as_ref()
                .filter(|r| r.get("result").and_then(|v| v.as_str()) == Some("failed"))
                .and_then(|r| r.get("error")?.as_str().map(str::to_string)),
            backup: BackupStatus {
                schedule,
                next_run,
                running: from_daemon
                    .as_ref()
                    .and_then(|b| b.get("running")?.as_bool()),
                last_run,
            },
            copies: copy_rows,
        });
    }
    let unhealthy: Vec<&str> = out
        .policies
        .iter()
        .filter(|p| matches!(p.rpo, "breached" | "no backup" | "no WAL") || p.last_error.is_some())
        .map(|p| p.policy.as_str())
        .collect();
    if ctx.cli.json {
        ctx.print_json(&out);
    } else {
        print_table(&out);
    }
    if unhealthy.is_empty() {
        Ok(())
    } else {
        Err(Error::Unhealthy(format!(
            "{} of {} policies need attention: {}",
            unhealthy.len(),
            out.policies.len(),
            unhealthy.join(", ")
        )))
    }
}

fn print_table(s: &Status) {
    outln!("repository  {}", s.repository);
    outln!(
        "daemon      {}",
        if s.daemon_reachable {
            format!("answering at {}", s.daemon)
        } else {
            format!(
                "not answering at {} (running jobs and last errors are known only to it)",
                s.daemon
            )
        }
    );
    outln!();
    outln!(
        "{:<20} {:<9} {:<26} {:>9}  {:<18} {:<34} LAST RUN",
        "POLICY",
        "KIND",
        "NEWEST BACKUP",
        "AGE",
        "RPO",
        "NEXT RUN"
    );
    let now = Utc::now();
    for p in &s.policies {
        let age = p
            .newest_age_seconds
            .map_or("-".into(), |a| human_duration(chrono::Duration::seconds(a)));
        let wal_lag = p.wal.as_ref().and_then(|w| w.lag_seconds);
        let rpo = match (p.rpo, p.rpo_target_seconds, wal_lag) {
            (r, Some(t), Some(lag)) => format!(
                "{r} (WAL {} / {})",
                human_duration(chrono::Duration::seconds(lag)),
                human_duration(chrono::Duration::seconds(t))
            ),
            (r, Some(t), None) => {
                format!("{r} ({})", human_duration(chrono::Duration::seconds(t)))
            }
            (r, None, _) => r.to_string(),
        };
        let next = p.backup.next_run.map_or("not scheduled".into(), |t| {
            format!(
                "{} (in {})",
                t.format("%Y-%m-%d %H:%M:%SZ"),
                human_duration(t - now)
            )
        });
        let last = match (&p.backup.running, &p.backup.last_run, &p.last_error) {
            (Some(true), _, _) => "running".to_string(),
            (_, _, Some(e)) => format!("FAILED: {e}"),
            (_, Some(r), None) => r
                .get("result")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string(),
            (_, None, None) => "-".to_string(),
        };
        outln!(
            "{:<20} {:<9} {:<26} {:>9}  {:<18} {:<34} {}",
            p.policy,
            p.kind,
            p.newest_backup.as_ref().map_or("none", |b| b.id.as_str()),
            age,
            rpo,
            next,
            last
        );
        for c in &p.copies {
            outln!(
                "  copy {:<15} {:<26} {}",
                c.copy,
                c.newest_backup.as_ref().map_or("none", |b| b.id.as_str()),
                match (&c.error, c.lag_seconds) {
                    (Some(e), _) => format!("UNREADABLE: {e}"),
                    (None, Some(0)) => "up to date".to_string(),
                    (None, Some(l)) => format!(
                        "{} behind the primary",
                        human_duration(chrono::Duration::seconds(l))
                    ),
                    (None, None) => "-".to_string(),
                }
            );
        }
    }
}
