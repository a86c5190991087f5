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

#[derive(Debug, Serialize)]
struct PolicyStatus {
    policy: String,
    kind: &'static str,
    newest_backup: Option<String>,
    newest_point_in_time: Option<chrono::DateTime<Utc>>,
    newest_age_seconds: Option<i64>,
    rpo_target_seconds: Option<i64>,
    /// `ok`, `breached`, `no backup`, or `no target`.
    rpo: &'static str,
    schedule: Option<String>,
    next_run: Option<chrono::DateTime<Utc>>,
    /// From the daemon's `/status`, when it answers.
    running: Option<bool>,
    last_run: Option<serde_json::Value>,
    last_error: Option<String>,
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
    for p in &config.policies {
        let newest = catalog::newest(&repo, &p.name).await?;
        let target = p.schedule.as_ref().and_then(|s| s.rpo_target);
        let age = newest.as_ref().map(|m| now - m.point_in_time);
        let rpo = match (target, age) {
            (None, _) => "no target",
            (Some(_), None) => "no backup",
            (Some(t), Some(a)) if a <= t => "ok",
            (Some(_), Some(_)) => "breached",
        };
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
            newest_backup: newest.as_ref().map(|m| m.id.clone()),
            newest_point_in_time: newest.as_ref().map(|m| m.point_in_time),
            newest_age_seconds: age.map(|a| a.num_seconds()),
            rpo_target_seconds: target.map(|t| t.num_seconds()),
            rpo,
            schedule,
            next_run,
            running: from_daemon
                .as_ref()
                .and_then(|b| b.get("running")?.as_bool()),
            last_error: last_run
                .as_ref()
                .filter(|r| r.get("result").and_then(|v| v.as_str()) == Some("failed"))
                .and_then(|r| r.get("error")?.as_str().map(str::to_string)),
            last_run,
        });
    }
    let unhealthy: Vec<&str> = out
        .policies
        .iter()
        .filter(|p| matches!(p.rpo, "breached" | "no backup") || p.last_error.is_some())
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
        let rpo = match (p.rpo, p.rpo_target_seconds) {
            (r, Some(t)) => format!("{r} ({})", human_duration(chrono::Duration::seconds(t))),
            (r, None) => r.to_string(),
        };
        let next = p.next_run.map_or("not scheduled".into(), |t| {
            format!(
                "{} (in {})",
                t.format("%Y-%m-%d %H:%M:%SZ"),
                human_duration(t - now)
            )
        });
        let last = match (&p.running, &p.last_run, &p.last_error) {
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
            p.newest_backup.as_deref().unwrap_or("none"),
            age,
            rpo,
            next,
            last
        );
    }
}
