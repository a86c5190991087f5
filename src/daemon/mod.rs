//! `drctl daemon`: runs every policy's backup and drill schedules until
//! SIGTERM, serves a status page (`/`), `/health`, `/metrics` and `/status`,
//! and sends alerts.
//!
//! One task owns the timetable and wakes for the next due run (or the next
//! RPO check, or a signal); each run is its own task, gated by a semaphore
//! of `max_concurrent_jobs`. A policy's next run is skipped while its
//! previous one is still going, and across hosts the policy's lease decides
//! who runs (a run that finds the lease held is "skipped", not failed).

pub mod copies;
pub mod http;
mod page;
pub mod state;
pub mod wal;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Duration, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::alert::{Alert, Alerter, Event};
use crate::config::{Config, Policy, SourceConfig};
use crate::error::{Error, Result};
use crate::repo::{Repo, catalog};
use crate::schedule::Timetable;
use state::{DaemonState, JobKind, KindState, NewestBackup, PolicyState, RunOutcome, Shared};

/// While a policy looks overdue, the repository is re-read at most this
/// often to confirm it (another host may have taken the backup).
const CONFIRM_INTERVAL: Duration = Duration::minutes(5);
/// How often an S3 repository's bucket settings are compared with drctl.toml.
const DRIFT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// A failure that persists (every run of a `*/5` schedule failing) alerts
/// again only this often; the first failure after a success always alerts.
pub const ALERT_REPEAT: Duration = Duration::hours(6);
/// After the grace period, aborting jobs get this long to clean up.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// The loop wakes at least this often, so a wall-clock jump (NTP, suspend)
/// delays nothing by more than this.
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Hands memory freed by finished jobs back to the system, so an idle
/// daemon's RSS reflects what it holds rather than what its busiest moment
/// needed.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub struct Options {
    pub config_path: PathBuf,
    /// Identity for drills, instead of `encryption.identity_file`.
    pub identity: Option<PathBuf>,
}

/// One schedule of one policy.
struct Slot {
    policy: String,
    kind: JobKind,
    expr: String,
    tz: chrono_tz::Tz,
    table: Timetable,
    next: Option<DateTime<Utc>>,
}

/// What every run needs; cloned into each run's task.
#[derive(Clone)]
struct JobCtx {
    repo: Arc<Repo>,
    config: Arc<Config>,
    state: Shared,
    alerter: Alerter,
    permits: Arc<Semaphore>,
    identity: Option<PathBuf>,
    /// Set when the shutdown grace period is over: every run aborts.
    abort: Arc<AtomicBool>,
}

/// Runs until SIGTERM or SIGINT.
///
/// # Errors
/// Only at start-up: an invalid configuration, an uninitialised
/// repository, an address that cannot be listened on. An unreachable
/// repository is waited for.
pub async fn run(opts: Options) -> Result<()> {
    let config = Arc::new(Config::load(&opts.config_path)?);
    let store = crate::storage::open(&config.repository).await?;
    let listener = tokio::net::TcpListener::bind(&config.daemon.listen)
        .await
        .map_err(|e| {
            Error::Usage(format!(
                "cannot listen on {} for /health and /metrics: {e}; set [daemon] listen in {} to a free address",
                config.daemon.listen,
                config.path.display()
            ))
        })?;
    let (mut term, mut int, mut hup) = (
        signal(SignalKind::terminate())
            .map_err(|e| Error::io("installing the SIGTERM handler", e))?,
        signal(SignalKind::interrupt())
            .map_err(|e| Error::io("installing the SIGINT handler", e))?,
        signal(SignalKind::hangup()).map_err(|e| Error::io("installing the SIGHUP handler", e))?,
    );
    let state: Shared = Arc::new(std::sync::Mutex::new(DaemonState {
        started_at: Utc::now(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        version: env!("CARGO_PKG_VERSION"),
        repository: store.location(),
        config: config.path.display().to_string(),
        ..Default::default()
    }));
    sync_policies(&state, &config);
    // /health answers (503, naming the repository) while the repository is
    // still out of reach, e.g. a daemon started at boot before the network.
    let http = tokio::spawn(http::serve(
        listener,
        Arc::new(http::Server::new(state.clone(), store.clone())),
    ));
    let Some(repo) = open_repository(store, &mut term, &mut int).await? else {
        http.abort();
        return Ok(());
    };
    // `[signing]` is read once: a reload does not change what is trusted.
    let repo = Arc::new(
        repo.with_signing(crate::signing::for_config(&config)?)
            .await?,
    );
    match (&repo.signing, &repo.marker_untrusted) {
        (None, _) => tracing::warn!(
            event = "repository_unsigned",
            "{}",
            crate::signing::unsigned_warning(&repo)
        ),
        (Some(_), Some(why)) => tracing::error!(event = "signing_misconfigured", "{why}"),
        (Some(_), None) => {}
    }
    load_newest(
        &repo,
        &state,
        config.policies.iter().map(|p| p.name.clone()),
    )
    .await;
    tokio::spawn(copies::load_newest(
        repo.clone(),
        config.clone(),
        state.clone(),
    ));
    let (alerter, mut dispatcher) = Alerter::start(config.alerts.clone());
    let mut ctx = JobCtx {
        repo,
        config: config.clone(),
        state: state.clone(),
        alerter,
        permits: Arc::new(Semaphore::new(config.daemon.max_concurrent_jobs as usize)),
        identity: opts.identity,
        abort: Arc::new(AtomicBool::new(false)),
    };
    let mut slots = build_slots(&config, &[], Utc::now());
    publish_next_runs(&state, &slots);
    tracing::info!(event = "daemon_started",
        policies = config.policies.len(),
        schedules = slots.len(),
        listen = %config.daemon.listen,
        repository = %ctx.repo.store.location(),
        "daemon started"
    );
    if slots.is_empty() {
        tracing::warn!(
            event = "nothing_scheduled",
            "no policy has a [schedule] backup or a [drill] schedule; the daemon only serves /health, /metrics and /status (add schedules, then send SIGHUP)"
        );
    }
    let mut jobs: JoinSet<()> = JoinSet::new();
    catch_up(&ctx, &slots, &mut jobs);
    let drift = tokio::spawn(watch_bucket(
        ctx.repo.clone(),
        config.clone(),
        state.clone(),
    ));
    let mut next_check = Utc::now() + config.daemon.check_interval;

    loop {
        let now = Utc::now();
        let mut fired = false;
        for slot in &mut slots {
            if slot.next.is_some_and(|n| n <= now) {
                trigger(&ctx, &slot.policy, slot.kind, &mut jobs);
                slot.next = slot.table.next_after(now);
                fired = true;
            }
        }
        if fired {
            publish_next_runs(&state, &slots);
        }
        if next_check <= now {
            check_rpo(&ctx, now, &mut jobs);
            check_wal(&ctx, now, &mut jobs);
            next_check = now + ctx.config.daemon.check_interval;
        }
        let wake = slots
            .iter()
            .filter_map(|s| s.next)
            .chain(std::iter::once(next_check))
            .min()
            .unwrap_or(next_check);
        let sleep = (wake - now).to_std().unwrap_or_default().min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(event = "job_panicked", error = %e, "a run panicked (a bug in drctl; please report it); its policy's next runs go ahead");
                }
                if jobs.is_empty() {
                    release_freed_memory();
                }
            }
            _ = hup.recv() => {
                if let Some(new) = reload(&ctx, &opts.config_path) {
                    slots = build_slots(&new, &slots, Utc::now());
                    publish_next_runs(&state, &slots);
                    if new.alerts != ctx.config.alerts {
                        let (alerter, fresh) = Alerter::start(new.alerts.clone());
                        ctx.alerter = alerter;
                        let old = std::mem::replace(&mut dispatcher, fresh);
                        tokio::spawn(old.finish());
                    }
                    let fresh_policies: Vec<String> = new
                        .policies
                        .iter()
                        .filter(|p| ctx.config.policies.iter().all(|o| o.name != p.name))
                        .map(|p| p.name.clone())
                        .collect();
                    ctx.config = new;
                    let (repo, state) = (ctx.repo.clone(), state.clone());
                    jobs.spawn(async move { load_newest(&repo, &state, fresh_policies.into_iter()).await });
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    shutdown(&ctx, &mut jobs, &mut term, &mut int).await;
    http.abort();
    drift.abort();
    drop(ctx);
    dispatcher.finish().await;
    tracing::info!(event = "daemon_stopped", "daemon stopped");
    Ok(())
}

/// Opens the repository, waiting (with backoff, up to a minute between
/// tries) while the store cannot be reached; `None` when told to stop first.
///
/// # Errors
/// Anything that waiting will not fix: no repo.json, access denied, a
/// newer format.
async fn open_repository(
    store: Arc<dyn crate::storage::Store>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Result<Option<Repo>> {
    let mut wait = std::time::Duration::from_secs(2);
    loop {
        match Repo::open(store.clone()).await {
            Ok(repo) => return Ok(Some(repo)),
            Err(e) if e.persistence() == crate::error::Persistence::Temporary => {
                tracing::warn!(event = "repository_waiting",
                    repository = %store.location(), error = %e, retry_in_seconds = wait.as_secs(),
                    "repository unreachable at start-up; waiting for it (/health answers 503 meanwhile)"
                );
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = term.recv() => return Ok(None),
            _ = int.recv() => return Ok(None),
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(60));
    }
}

async fn shutdown(
    ctx: &JobCtx,
    jobs: &mut JoinSet<()>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    state::lock(&ctx.state).stopping = true;
    // Runs queued behind max_concurrent_jobs must not start now.
    ctx.permits.close();
    let grace = std::time::Duration::from_secs(ctx.config.daemon.shutdown_grace_seconds);
    let running = running_jobs(&ctx.state);
    if !running.is_empty() {
        tracing::info!(event = "daemon_stopping",
            running = %running.join(", "),
            grace_seconds = grace.as_secs(),
            "stopping: no new runs; waiting for running ones to finish (signal again to abort them now)"
        );
    }
    let drained = tokio::select! {
        r = tokio::time::timeout(grace, async { while jobs.join_next().await.is_some() {} }) => r.is_ok(),
        _ = term.recv() => false,
        _ = int.recv() => false,
    };
    if !drained {
        tracing::warn!(event = "jobs_aborting",
            running = %running_jobs(&ctx.state).join(", "),
            "aborting running jobs: grace period over or signalled again (uploads are aborted, no manifest is written)"
        );
        ctx.abort.store(true, Ordering::Relaxed);
        let drain = async { while jobs.join_next().await.is_some() {} };
        if tokio::time::timeout(ABORT_WAIT, drain).await.is_err() {
            tracing::error!(
                event = "jobs_abort_timed_out",
                "jobs did not stop within {} s of being aborted; exiting anyway. An open multipart upload is removed by the bucket's abort-incomplete-uploads rule, and the lease expires by itself",
                ABORT_WAIT.as_secs()
            );
        }
    }
}

fn running_jobs(state: &Shared) -> Vec<String> {
    let state = state::lock(state);
    let mut out = Vec::new();
    for (name, p) in &state.policies {
        if p.backup.running {
            out.push(format!("backup {name}"));
        }
        if p.drill.as_ref().is_some_and(|d| d.running) {
            out.push(format!("drill {name}"));
        }
    }
    out
}

/// Hourly: does the bucket still have the versioning, lifecycle rules and
/// Object Lock defaults drctl.toml asks for? The daemon only reports drift
/// (log, `/status`, a metric); changing the bucket is `repo apply`'s job,
/// with the operator's permissions (docs/iam-policy.md). The configuration
/// read at start is used: `[lifecycle]` changes need a restart to be
/// compared, like the repository itself.
async fn watch_bucket(repo: Arc<Repo>, config: Arc<Config>, state: Shared) {
    let Some(admin) = repo.store.bucket() else {
        return;
    };
    let desired = crate::bucket::desired(&config.lifecycle, admin.prefix());
    let mut reported: Option<Vec<String>> = None;
    loop {
        match admin.settings().await {
            Ok(actual) => {
                let cmp = crate::bucket::compare(&desired, &actual);
                let drift: Vec<String> = cmp
                    .drifted()
                    .iter()
                    .map(|s| format!("{}: wanted {}, found {}", s.name, s.desired, s.actual))
                    .collect();
                if reported.as_ref() != Some(&drift) && !drift.is_empty() {
                    tracing::warn!(event = "bucket_drift", drift = %drift.join("; "), "bucket settings differ from drctl.toml; run `drctl repo status`, then `drctl repo apply`");
                }
                state::lock(&state).bucket_drift = Some(drift.clone());
                reported = Some(drift);
            }
            Err(e) if e.kind == crate::error::StorageErrorKind::AccessDenied => {
                tracing::info!(
                    event = "bucket_drift_unchecked",
                    "not allowed to read the bucket's settings; drift is not checked (docs/iam-policy.md)"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(event = "bucket_settings_unreadable", error = %e, "could not read the bucket's settings")
            }
        }
        tokio::time::sleep(DRIFT_INTERVAL).await;
    }
}

/// Schedules from the configuration. A schedule that did not change keeps
/// its next run; a new or changed one starts from `now` (no catch-up).
fn build_slots(config: &Config, old: &[Slot], now: DateTime<Utc>) -> Vec<Slot> {
    let mut slots = Vec::new();
    for p in &config.policies {
        let tz = p.schedule.as_ref().map_or(chrono_tz::UTC, |s| s.timezone);
        let wanted = [
            (
                JobKind::Backup,
                p.schedule.as_ref().and_then(|s| s.backup.clone()),
            ),
            (
                JobKind::Drill,
                p.drill.as_ref().and_then(|d| d.schedule.clone()),
            ),
        ];
        for (kind, expr) in wanted {
            let Some(expr) = expr else { continue };
            // Validated when the configuration was loaded.
            let Ok(table) = Timetable::new(&expr, tz) else {
                continue;
            };
            let kept = old
                .iter()
                .find(|s| s.policy == p.name && s.kind == kind && s.expr == expr && s.tz == tz)
                .and_then(|s| s.next);
            slots.push(Slot {
                policy: p.name.clone(),
                kind,
                next: kept.or_else(|| table.next_after(now)),
                expr,
                tz,
                table,
            });
        }
    }
    slots
}

fn publish_next_runs(state: &Shared, slots: &[Slot]) {
    let mut state = state::lock(state);
    for slot in slots {
        if let Some(p) = state.policies.get_mut(&slot.policy) {
            p.kind_mut(slot.kind).next_run = slot.next;
        }
    }
}

/// Makes the policy table match the configuration, keeping what is known
/// about policies that stay.
fn sync_policies(state: &Shared, config: &Config) {
    let mut state = state::lock(state);
    let now = Utc::now();
    state.configured = config.policies.iter().map(|p| p.name.clone()).collect();
    let configured = state.configured.clone();
    state.policies.retain(|name, p| {
        configured.contains(name) || p.backup.running || p.drill.as_ref().is_some_and(|d| d.running)
    });
    for p in &config.policies {
        let entry = state
            .policies
            .entry(p.name.clone())
            .or_insert_with(|| PolicyState {
                added_at: now,
                ..Default::default()
            });
        entry.kind = p.source.kind();
        if matches!(p.source, SourceConfig::PostgresCluster { .. }) {
            entry.wal.get_or_insert_with(Default::default);
        } else {
            entry.wal = None;
        }
        entry.rpo_target_seconds = rpo_target(p).map(|d| d.num_seconds());
        entry.rto_target_seconds = p
            .drill
            .as_ref()
            .and_then(|d| d.rto_target)
            .map(|d| d.num_milliseconds() as f64 / 1000.0);
        entry.drill_interval_seconds = p.drill.as_ref().and_then(|d| {
            let tz = p.schedule.as_ref().map_or(chrono_tz::UTC, |s| s.timezone);
            let t = Timetable::new(d.schedule.as_deref()?, tz).ok()?;
            longest_gap(&t, now).map(|g| g.num_seconds())
        });
        entry.backup.schedule = p.schedule.as_ref().and_then(|s| s.backup.clone());
        if entry.backup.schedule.is_none() {
            entry.backup.next_run = None;
        }
        match p.drill.as_ref().and_then(|d| d.schedule.clone()) {
            Some(s) => entry.kind_mut(JobKind::Drill).schedule = Some(s),
            None => {
                if !entry.drill.as_ref().is_some_and(|d| d.running) {
                    entry.drill = None;
                }
            }
        }
    }
}

/// The longest gap between the next runs of a timetable (a cron line may
/// be uneven: `0 3 * * 1,4` leaves three and four days).
fn longest_gap(t: &Timetable, from: DateTime<Utc>) -> Option<Duration> {
    let mut at = t.next_after(from)?;
    let mut longest = None;
    for _ in 0..64 {
        let next = t.next_after(at)?;
        longest = longest.max(Some(next - at));
        at = next;
    }
    longest
}

fn rpo_target(p: &Policy) -> Option<Duration> {
    p.rpo_target().map(|(t, _)| t)
}

async fn load_newest(repo: &Repo, state: &Shared, names: impl Iterator<Item = String>) {
    use futures::StreamExt;
    let found: Vec<(String, Result<Option<crate::repo::manifest::Manifest>>)> =
        futures::stream::iter(names)
            .map(|name| async move {
                let r = catalog::newest(repo, &name).await;
                (name, r)
            })
            .buffer_unordered(catalog::LIST_CONCURRENCY)
            .collect()
            .await;
    let now = Utc::now();
    let mut state = state::lock(state);
    for (name, r) in found {
        match r {
            Ok(newest) => {
                if let Some(p) = state.policies.get_mut(&name) {
                    p.newest_backup = newest.map(|m| NewestBackup {
                        id: m.id,
                        point_in_time: m.point_in_time,
                    });
                    p.confirmed_at = Some(now);
                }
            }
            Err(e) => {
                tracing::warn!(event = "newest_backup_unreadable", policy = %name, error = %e, "could not read the newest backup");
            }
        }
    }
}

/// At start-up, one run for each backup schedule that had a slot after its
/// newest backup: missed slots are not replayed one by one.
fn catch_up(ctx: &JobCtx, slots: &[Slot], jobs: &mut JoinSet<()>) {
    let now = Utc::now();
    for slot in slots.iter().filter(|s| s.kind == JobKind::Backup) {
        let newest = state::lock(&ctx.state)
            .policies
            .get(&slot.policy)
            .and_then(|p| p.newest_backup.as_ref().map(|n| n.point_in_time));
        if slot.table.catch_up_due(newest, now) {
            tracing::info!(event = "missed_run_catch_up",
                policy = %slot.policy,
                newest = %newest.map_or_else(|| "none".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                "a scheduled run was missed since the newest backup; running one now"
            );
            trigger(ctx, &slot.policy, JobKind::Backup, jobs);
        }
    }
}

fn trigger(ctx: &JobCtx, policy: &str, kind: JobKind, jobs: &mut JoinSet<()>) {
    {
        let mut state = state::lock(&ctx.state);
        let Some(p) = state.policies.get_mut(policy) else {
            return;
        };
        let k = p.kind_mut(kind);
        if k.running {
            tracing::warn!(
                event = "run_skipped_overlap",
                policy,
                job = kind.as_str(),
                "the previous run is still going; this one is skipped"
            );
            return;
        }
        k.running = true;
        k.queued = true;
    }
    let ctx = ctx.clone();
    let policy = policy.to_string();
    jobs.spawn(async move { run_job(ctx, policy, kind).await });
}

/// Clears a run's `running` flag however the run ends, panics included, so
/// one bad run cannot block its policy's schedule for good.
struct Running<'a> {
    ctx: &'a JobCtx,
    policy: &'a str,
    kind: JobKind,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        finish(self.ctx, self.policy, self.kind);
    }
}

async fn run_job(ctx: JobCtx, policy_name: String, kind: JobKind) {
    let _running = Running {
        ctx: &ctx,
        policy: &policy_name,
        kind,
    };
    // Closed at shutdown: a run still queued then never starts.
    let Ok(_permit) = ctx.permits.clone().acquire_owned().await else {
        tracing::info!(event = "job_not_started", job = kind.as_str(), policy = %policy_name, "not started: the daemon is stopping");
        return;
    };
    if let Some(p) = state::lock(&ctx.state).policies.get_mut(&policy_name) {
        p.kind_mut(kind).queued = false;
    }
    let started = Utc::now();
    let run_id = crate::repo::new_backup_id(started);
    let clock = std::time::Instant::now();
    let Some(policy) = ctx.config.policies.iter().find(|p| p.name == policy_name) else {
        return;
    };
    tracing::info!(event = "job_started", job = kind.as_str(), policy = %policy_name, run = %run_id, "job started");
    let mut outcome = RunOutcome {
        run_id: run_id.clone(),
        started_at: started,
        finished_at: started,
        result: "ok",
        error: None,
        id: None,
    };
    let mut size = None;
    let mut newest = None;
    let mut alert = None;
    let mut prune = None;
    let mut drilled = None;
    match kind {
        JobKind::Backup => {
            let opts = crate::backup::JobOptions {
                show_progress: false,
                cancel: ctx.abort.clone(),
            };
            match crate::backup::run(&ctx.repo, &ctx.config, policy, &opts).await {
                Ok(m) => {
                    for w in &m.warnings {
                        tracing::warn!(event = "backup_warning", policy = %policy_name, backup = %m.id, warning = %w, "the backup could not take everything as it was");
                    }
                    size = Some(m.objects().map(|o| o.digests.size).sum::<u64>());
                    outcome.id = Some(m.id.clone());
                    newest = Some(NewestBackup {
                        id: m.id,
                        point_in_time: m.point_in_time,
                    });
                    // Retention runs after each good backup, within the same
                    // run, so the policy's next backup waits for it.
                    if crate::retention::has_rules(&policy.retention) {
                        prune = prune_after_backup(&ctx, policy, &run_id).await;
                    }
                    copies::after_backup(&ctx, policy, &run_id).await;
                }
                Err(Error::Locked { message, .. }) => {
                    outcome.result = "skipped";
                    outcome.error = Some(message);
                }
                // Stopped by the daemon's shutdown: not the backup's fault.
                Err(Error::Interrupted(message)) if ctx.abort.load(Ordering::Relaxed) => {
                    outcome.result = "aborted";
                    outcome.error = Some(message);
                }
                Err(e) => {
                    outcome.result = "failed";
                    outcome.error = Some(e.to_string());
                    alert = Some(Alert::new(
                        Event::BackupFailed,
                        &policy_name,
                        e.to_string(),
                        serde_json::json!({ "run": run_id }),
                    ));
                }
            }
        }
        JobKind::Drill => {
            let opts = crate::drill::DrillOptions {
                choice: if policy.drill.as_ref().is_some_and(|d| d.random) {
                    crate::drill::Choice::Random
                } else {
                    crate::drill::Choice::Newest
                },
                keep: false,
                identity_file: ctx
                    .identity
                    .clone()
                    .or_else(|| ctx.config.identity_file.clone()),
                meter: crate::progress::Meter {
                    bytes: Default::default(),
                    cancel: ctx.abort.clone(),
                    count_plaintext: false,
                },
                skip_if_busy: true,
                config_path: ctx.config.path.clone(),
                allow_sample: true,
            };
            match crate::drill::run(&ctx.repo, policy, &opts).await {
                Ok(record) => {
                    outcome.id = Some(record.id.clone());
                    drilled = Some((record.rto.measured_seconds, record.passed));
                    if !record.passed {
                        let why = record.failure.clone().unwrap_or_default();
                        outcome.result = "failed";
                        outcome.error = Some(why.clone());
                        alert = Some(Alert::new(
                            Event::DrillFailed,
                            &policy_name,
                            why,
                            serde_json::json!({
                                "run": run_id,
                                "drill": record.id,
                                "backup": record.backup_id,
                            }),
                        ));
                    }
                }
                Err(Error::Locked { message, .. }) => {
                    outcome.result = "skipped";
                    outcome.error = Some(message);
                }
                Err(e) => {
                    outcome.result = "failed";
                    outcome.error = Some(format!("the drill record could not be written: {e}"));
                    alert = Some(Alert::new(
                        Event::DrillFailed,
                        &policy_name,
                        outcome.error.clone().unwrap_or_default(),
                        serde_json::json!({ "run": run_id }),
                    ));
                }
            }
        }
    }
    outcome.finished_at = Utc::now();
    let seconds = clock.elapsed().as_secs_f64();
    match outcome.result {
        "failed" => tracing::error!(event = "job_finished",
            job = kind.as_str(), policy = %policy_name, run = %run_id, result = "failed",
            seconds, error = outcome.error.as_deref().unwrap_or(""), "job finished"
        ),
        result @ ("skipped" | "aborted") => tracing::info!(event = "job_finished",
            job = kind.as_str(), policy = %policy_name, run = %run_id, result,
            seconds, reason = outcome.error.as_deref().unwrap_or(""), "job finished"
        ),
        _ => tracing::info!(event = "job_finished",
            job = kind.as_str(), policy = %policy_name, run = %run_id, result = "ok",
            seconds, id = outcome.id.as_deref().unwrap_or(""), bytes = size.unwrap_or(0),
            "job finished"
        ),
    }
    let mut state = state::lock(&ctx.state);
    let Some(p) = state.policies.get_mut(&policy_name) else {
        return;
    };
    if let Some(n) = newest {
        p.newest_backup = Some(n);
        p.rpo_breached = false;
    }
    if let Some(result) = prune {
        match result {
            Ok(()) => p.last_prune_error = None,
            Err(e) => {
                p.last_prune_error = Some(e);
                p.prune_failures_total += 1;
            }
        }
    }
    let k = p.kind_mut(kind);
    let was_failing = k.last_run.as_ref().is_some_and(|r| r.result == "failed");
    if let Some((rto, passed)) = drilled {
        k.last_rto_seconds = rto;
        k.last_passed = Some(passed);
        k.last_finished_at = Some(outcome.finished_at);
    }
    record(k, outcome, seconds, size);
    if let Some(a) = alert {
        let now = Utc::now();
        if !was_failing || k.alerted_at.is_none_or(|t| now - t >= ALERT_REPEAT) {
            k.alerted_at = Some(now);
            drop(state);
            ctx.alerter.send(a);
        } else {
            tracing::info!(event = "job_still_failing", policy = %policy_name, job = kind.as_str(), "still failing; alerted already (again every 6 h)");
        }
    }
}

/// `None` when the prune did not run to a verdict (busy, stopped).
async fn prune_after_backup(
    ctx: &JobCtx,
    policy: &Policy,
    run_id: &str,
) -> Option<Result<(), String>> {
    let opts = crate::prune::PruneOptions {
        cancel: ctx.abort.clone(),
        ..Default::default()
    };
    match crate::prune::prune(&ctx.repo, policy, &opts).await {
        Ok(r) => {
            tracing::info!(event = "prune_finished",
                job = "prune", policy = %policy.name, run = %run_id,
                kept = r.backups.len() - r.deleted.len(), deleted = r.deleted.len(),
                held = r.held.len(), retained = r.retained.len(), leftovers = r.leftovers.len(),
                damaged = r.damaged.len(),
                wal_deleted = r.wal.as_ref().map_or(0, |w| w.deleted_files),
                "prune finished"
            );
            Some(Ok(()))
        }
        Err(Error::Locked { message, .. }) => {
            tracing::info!(event = "prune_skipped",
                job = "prune", policy = %policy.name, run = %run_id, reason = %message,
                "prune skipped: the policy is busy"
            );
            None
        }
        Err(Error::Interrupted(_)) if ctx.abort.load(Ordering::Relaxed) => None,
        // The backup itself succeeded; a failed prune only delays deletions,
        // and shows in /health, /metrics and /status until one succeeds.
        Err(e) => {
            tracing::error!(event = "prune_failed",
                job = "prune", policy = %policy.name, run = %run_id, error = %e,
                "prune failed; old backups stay until the next run"
            );
            Some(Err(e.to_string()))
        }
    }
}

fn record(k: &mut KindState, outcome: RunOutcome, seconds: f64, size: Option<u64>) {
    match outcome.result {
        "ok" => {
            k.successes_total += 1;
            k.last_success_at = Some(outcome.finished_at);
            k.last_duration_seconds = Some(seconds);
            if size.is_some() {
                k.last_size_bytes = size;
            }
        }
        "failed" => k.failures_total += 1,
        _ => {}
    }
    k.last_run = Some(outcome);
}

fn finish(ctx: &JobCtx, policy: &str, kind: JobKind) {
    let mut state = state::lock(&ctx.state);
    if let Some(p) = state.policies.get_mut(policy) {
        let k = p.kind_mut(kind);
        k.running = false;
        k.queued = false;
        let idle = !p.backup.running && !p.drill.as_ref().is_some_and(|d| d.running);
        // Removed by a reload while this run went on.
        if idle && !state.configured.contains(policy) {
            state.policies.remove(policy);
        }
    }
}

/// Compares each policy's newest backup with its RPO target. Only a policy
/// that looks overdue costs a repository read (once before alerting, then at
/// most every [`CONFIRM_INTERVAL`]), and an alert goes out once per breach.
fn check_rpo(ctx: &JobCtx, now: DateTime<Utc>, jobs: &mut JoinSet<()>) {
    let mut to_confirm = Vec::new();
    {
        let mut state = state::lock(&ctx.state);
        let configured = state.configured.clone();
        for (name, p) in &mut state.policies {
            let Some(overdue) = p.rpo_overdue(now) else {
                continue;
            };
            if !configured.contains(name) {
                continue;
            }
            if !overdue {
                if p.rpo_breached {
                    tracing::info!(event = "rpo_met", policy = %name, "RPO met again");
                    p.rpo_breached = false;
                }
                continue;
            }
            if p.confirming {
                continue;
            }
            // Before alerting, and now and then while breached (another host
            // may have taken a backup since), read the repository.
            if p.rpo_breached && p.confirmed_at.is_some_and(|t| now - t < CONFIRM_INTERVAL) {
                continue;
            }
            p.confirmed_at = Some(now);
            p.confirming = true;
            to_confirm.push(name.clone());
        }
    }
    for name in to_confirm {
        let ctx = ctx.clone();
        jobs.spawn(async move {
            load_newest(&ctx.repo, &ctx.state, std::iter::once(name.clone())).await;
            let now = Utc::now();
            let mut state = state::lock(&ctx.state);
            let Some(p) = state.policies.get_mut(&name) else {
                return;
            };
            p.confirming = false;
            let Some(target) = p.rpo_target_seconds.map(Duration::seconds) else {
                return;
            };
            let age = p.newest_age(now);
            if p.rpo_overdue(now) == Some(true) && !p.rpo_breached {
                p.rpo_breached = true;
                let summary = match (&p.newest_backup, age) {
                    (Some(n), Some(a)) => format!(
                        "newest backup {} is {} old; the RPO target is {}",
                        n.id,
                        crate::timespec::human_duration(a),
                        crate::timespec::human_duration(target)
                    ),
                    _ => format!(
                        "no backup exists; the RPO target is {}",
                        crate::timespec::human_duration(target)
                    ),
                };
                let details = serde_json::json!({
                    "newest_backup": p.newest_backup,
                    "age_seconds": age.map(|a| a.num_seconds()),
                    "rpo_target_seconds": target.num_seconds(),
                });
                drop(state);
                ctx.alerter
                    .send(Alert::new(Event::RpoBreached, &name, summary, details));
            }
        });
    }
}

/// Looks at each `postgres-cluster` policy's archive (and its server), one
/// look at a time per policy, and alerts once when the archive lag goes over
/// the RPO target; a later look under the target ends the episode.
fn check_wal(ctx: &JobCtx, now: DateTime<Utc>, jobs: &mut JoinSet<()>) {
    let mut due = Vec::new();
    {
        let mut state = state::lock(&ctx.state);
        let configured = state.configured.clone();
        for (name, p) in &mut state.policies {
            let Some(wal) = &mut p.wal else { continue };
            if wal.scanning || !configured.contains(name) {
                continue;
            }
            let Some(url) = ctx.config.policies.iter().find_map(|c| match &c.source {
                SourceConfig::PostgresCluster { url, .. } if c.name == *name => Some(url.clone()),
                _ => None,
            }) else {
                continue;
            };
            wal.scanning = true;
            due.push((name.clone(), url, wal.clone()));
        }
    }
    for (name, url, before) in due {
        let ctx = ctx.clone();
        jobs.spawn(async move {
            let scanned = wal::scan(&ctx.repo, &name, &url, &ctx.config.wal, before, now).await;
            if let Some(e) = &scanned.scan_error {
                tracing::warn!(event = "wal_scan_failed", policy = %name, error = %e, "could not list the WAL archive");
            }
            let now = Utc::now();
            let mut state = state::lock(&ctx.state);
            let Some(p) = state.policies.get_mut(&name) else {
                return;
            };
            let (added_at, target) = (p.added_at, p.rpo_target_seconds.map(Duration::seconds));
            let Some(wal) = &mut p.wal else { return };
            let (lagging_before, spool_filling_before) = (wal.lagging, wal.spool_filling);
            *wal = state::WalState {
                scanning: false,
                lagging: lagging_before,
                spool_filling: spool_filling_before,
                ..scanned
            };
            let spool_alert = spool_episode(&name, wal);
            if let Some(alert) = spool_alert {
                ctx.alerter.send(alert);
            }
            let Some(target) = target else { return };
            match wal.overdue(target, added_at, now) {
                Some(true) if !wal.lagging => {
                    wal.lagging = true;
                    let lag = wal.lag(now);
                    let summary = match (&wal.last_archived, lag) {
                        (Some(seg), Some(lag)) => format!(
                            "the newest archived WAL segment {seg} was stored {} ago; the RPO target is {}",
                            crate::timespec::human_duration(lag),
                            crate::timespec::human_duration(target)
                        ),
                        _ => format!(
                            "no WAL segment reached the archive within the RPO target of {}",
                            crate::timespec::human_duration(target)
                        ),
                    };
                    let details = serde_json::json!({
                        "last_archived": wal.last_archived,
                        "last_archived_at": wal.last_archived_at,
                        "lag_seconds": lag.map(|l| l.num_seconds()),
                        "rpo_target_seconds": target.num_seconds(),
                        "server": wal.server,
                        "server_error": wal.server_error,
                    });
                    drop(state);
                    ctx.alerter
                        .send(Alert::new(Event::WalArchiveLagging, &name, summary, details));
                }
                Some(false) if wal.lagging => {
                    tracing::info!(event = "wal_archive_caught_up", policy = %name, "WAL archiving is within the RPO target again");
                    wal.lagging = false;
                }
                _ => {}
            }
        });
    }
}

/// Starts or ends a "spool filling" episode; the alert to send when one
/// starts. A spool that cannot be read (or is no longer seen) ends nothing:
/// the episode ends when the spool is seen draining.
fn spool_episode(policy: &str, wal: &mut state::WalState) -> Option<Alert> {
    let spool = wal.spool.as_ref().filter(|s| s.error.is_none())?;
    match (spool.filling(), wal.spool_filling) {
        (true, false) => {
            wal.spool_filling = true;
            Some(Alert::new(
                Event::WalSpoolFilling,
                policy,
                format!(
                    "the WAL spool on this host holds {}: the repository is not taking WAL; \
                     when the spool is full wal-push fails and WAL piles up in the server's pg_wal",
                    spool.describe()
                ),
                serde_json::json!({
                    "spool_bytes": spool.bytes,
                    "spool_segments": spool.segments,
                    "spool_max_bytes": spool.max_bytes,
                    "last_archived": wal.last_archived,
                    "scan_error": wal.scan_error,
                }),
            ))
        }
        (false, true) => {
            tracing::info!(event = "wal_spool_drained", policy = %policy, "the WAL spool is below its alert level again");
            wal.spool_filling = false;
            None
        }
        _ => None,
    }
}

/// Reads and validates the configuration again; on any problem the
/// running one stays, and the reason is logged and shown in `/status`.
fn reload(ctx: &JobCtx, path: &std::path::Path) -> Option<Arc<Config>> {
    let refuse = |why: String| {
        tracing::error!(event = "config_reload_failed", config = %path.display(), error = %why, "configuration NOT reloaded; still running the previous one");
        state::lock(&ctx.state).last_reload_error = Some(why);
        None
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    if new.repository != ctx.config.repository {
        return refuse(format!(
            "the repository changed ({} → {}); restart the daemon to switch repositories",
            ctx.config.repository.describe(),
            new.repository.describe()
        ));
    }
    if new.daemon.listen != ctx.config.daemon.listen {
        tracing::warn!(event = "restart_needed",
            listen = %ctx.config.daemon.listen,
            "[daemon] listen changed; it takes effect at the next restart"
        );
    }
    if new.daemon.max_concurrent_jobs != ctx.config.daemon.max_concurrent_jobs {
        tracing::warn!(
            event = "restart_needed",
            "[daemon] max_concurrent_jobs changed; it takes effect at the next restart"
        );
    }
    let new = Arc::new(new);
    sync_policies(&ctx.state, &new);
    state::lock(&ctx.state).last_reload_error = None;
    tracing::info!(event = "config_reloaded",
        config = %path.display(),
        policies = new.policies.len(),
        "configuration reloaded"
    );
    Some(new)
}
