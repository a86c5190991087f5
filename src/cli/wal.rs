//! `wal-push` and `wal-fetch`: the commands PostgreSQL runs as its
//! `archive_command` and `restore_command`. Their exit codes are
//! PostgreSQL's contract (see [`crate::wal`]); what they print on stderr
//! goes to the server's log.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::Ctx;
use crate::config::{Config, Policy, SourceConfig};
use crate::error::{Error, Result};
use crate::wal::WalName;
use crate::wal::fetch::Fetched;
use crate::wal::marks::Mark;
use crate::wal::prefetch::Prefetch;
use crate::wal::push::{Outcome, Pushed};
use crate::wal::spool::Spool;
use crate::wal::status::Archiver;

fn cluster_policy<'c>(config: &'c Config, name: &str) -> Result<&'c Policy> {
    let policy = config.policy(name)?;
    match policy.source {
        SourceConfig::PostgresCluster { .. } => Ok(policy),
        _ => Err(Error::Usage(format!(
            "policy `{name}` is a `{}` policy; WAL is archived for `postgres-cluster` policies only",
            policy.source.kind()
        ))),
    }
}

fn spool_of(config: &Config, policy: &Policy) -> Spool {
    Spool::new(
        &config.wal.spool_dir,
        &policy.name,
        config.wal.spool_max_bytes,
    )
}

pub async fn push(ctx: &Ctx, policy: &str, path: &Path) -> Result<()> {
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    // Not `ctx.repo`: opening the repository reads it, and a repository
    // that does not answer is what the spool is for.
    let store = crate::storage::open(&config.repository).await?;
    let mut spool = spool_of(&config, policy);
    spool.claim(&store.location())?;
    let archiver = crate::wal::push::Archiver {
        store,
        policy: &policy.name,
        recipients: &config.recipients,
        level: policy.compression_level,
        spool,
        timeout: config.wal.store_timeout,
    };
    let report = crate::wal::push::archive(&archiver, path).await?;
    let (drained, ahead) = (report.drained, report.ahead);
    match report.outcome {
        Outcome::Pushed(Pushed::Stored { key, stored_bytes }) => tracing::info!(
            policy = %policy.name, key = %key, stored_bytes, drained, ahead, "Archived a WAL file."
        ),
        Outcome::Pushed(Pushed::AlreadyArchived { key }) => tracing::warn!(
            policy = %policy.name,
            key = %key,
            "This WAL file was archived before with the same content; nothing was written."
        ),
        Outcome::Spooled {
            file,
            queued_bytes,
            reason,
        } => tracing::warn!(
            policy = %policy.name,
            file = %file.display(),
            queued_bytes,
            max_bytes = config.wal.spool_max_bytes,
            reason = %reason,
            "The repository did not take this WAL file; it is sealed in the local spool and will be \
             stored by the next wal-push or `drctl wal drain`."
        ),
        Outcome::AlreadySpooled { file } => tracing::warn!(
            policy = %policy.name,
            file = %file.display(),
            "This WAL file is in the local spool already with the same content; nothing was written."
        ),
        Outcome::StoredAhead => tracing::info!(
            policy = %policy.name,
            "An earlier wal-push stored this WAL file ahead; nothing was written."
        ),
    }
    Ok(())
}

/// `drctl wal drain POLICY`: stores what waits in the spool.
pub async fn drain(ctx: &Ctx, policy: &str) -> Result<()> {
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    let mut spool = spool_of(&config, policy);
    let repo = ctx.repo(&config).await?;
    spool.claim(&repo.store.location())?;
    let drained = crate::wal::push::drain(&repo, &spool, &policy.name).await?;
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "policy": policy.name,
            "spool": spool.dir(),
            "stored": drained.stored,
            "left": drained.left,
            "busy": drained.busy,
        }));
    } else if drained.busy {
        outln!(
            "{}: another drctl is draining {} now; nothing was done",
            policy.name,
            spool.dir().display()
        );
    } else {
        outln!(
            "{}: stored {} spooled WAL file(s); {} left in {}",
            policy.name,
            drained.stored,
            drained.left,
            spool.dir().display()
        );
    }
    Ok(())
}

fn prefetch_of(config: &Config, policy: &Policy) -> Prefetch {
    let dir = match &config.wal.prefetch_dir {
        Some(dir) => dir.join(&policy.name),
        None => config.wal.spool_dir.join(&policy.name).join("prefetch"),
    };
    Prefetch::new(dir, config.wal.prefetch)
}

/// Starts the prefetch worker as a process of its own, in its own process
/// group, so that it outlives this call and PostgreSQL's signals to the
/// call do not reach it. Its log goes to `worker.log` in the directory.
fn spawn_prefetch_worker(
    ctx: &Ctx,
    config: &Config,
    policy: &str,
    dir: &Path,
) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("worker.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--config").arg(&config.path);
    if let Some(identity) = &ctx.cli.identity {
        cmd.arg("--identity").arg(identity);
    }
    cmd.args(["--quiet", "wal-prefetch", policy])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0);
    cmd.spawn().map(drop)
}

pub async fn fetch(ctx: &Ctx, policy: &str, name: &str, path: &Path) -> Result<()> {
    let fetched = async {
        let config = ctx.config()?;
        let policy = cluster_policy(&config, policy)?;
        let wal_name = WalName::parse(name).map_err(Error::Usage)?;
        let prefetch = prefetch_of(&config, policy);
        // The segment asked for comes first; the look-ahead starts after.
        let fetched = match tokio::task::block_in_place(|| prefetch.take(&wal_name, path))? {
            Some(taken) => {
                tracing::info!(policy = %policy.name, file = %wal_name, bytes = taken.bytes, "Restored a WAL file fetched ahead.");
                Fetched::Restored {
                    key: String::new(),
                    bytes: taken.bytes,
                }
            }
            None => {
                let identities = ctx.identities(&config)?;
                let repo = ctx.repo(&config).await?;
                crate::wal::fetch::fetch(&repo, &identities, &policy.name, name, path).await?
            }
        };
        if matches!(fetched, Fetched::Restored { .. }) {
            prefetch.request(&wal_name, || {
                spawn_prefetch_worker(ctx, &config, &policy.name, prefetch.dir())
            });
        }
        Ok(fetched)
    }
    .await;
    match fetched {
        Ok(Fetched::Restored { .. }) => Ok(()),
        Ok(Fetched::NotArchived) => Err(Error::NotArchived(format!(
            "{name} is not in the archive of `{policy}`"
        ))),
        Err(e) => Err(Error::StopRecovery(Box::new(e))),
    }
}

/// `drctl wal-prefetch POLICY`: the worker `wal-fetch` starts.
pub async fn prefetch_worker(ctx: &Ctx, policy: &str) -> Result<()> {
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    let prefetch = prefetch_of(&config, policy);
    if !prefetch.enabled() {
        return Ok(());
    }
    let identities = ctx.identities(&config)?;
    let repo = ctx.repo(&config).await?;
    prefetch.run_worker(&repo, &identities, &policy.name).await
}

fn cluster_source(policy: &Policy) -> &str {
    match &policy.source {
        SourceConfig::PostgresCluster { url, .. } => url,
        _ => unreachable!("checked by cluster_policy"),
    }
}

fn system_time(t: Option<std::time::SystemTime>) -> Option<DateTime<Utc>> {
    t.map(Into::into)
}

/// Reads `pg_stat_archiver` and the segment being written.
async fn archiver(url: &str, segment_bytes: u64) -> Result<Archiver> {
    let pg = crate::source::postgres::resolve(url)?;
    let target = crate::source::postgres::describe(&pg);
    let client = crate::source::postgres::connect(&pg).await?;
    let row = client
        .query_one(
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, \
                    last_failed_wal, last_failed_time, \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE pg_walfile_name(pg_current_wal_lsn()) END \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .map_err(|e| Error::Database {
            target,
            message: crate::source::postgres::error_text(&e),
        })?;
    let mut a = Archiver {
        archived_count: row.get(0),
        last_archived_wal: row.get(1),
        last_archived_time: system_time(row.get(2)),
        failed_count: row.get(3),
        last_failed_wal: row.get(4),
        last_failed_time: system_time(row.get(5)),
        current_wal: row.get(6),
        segment_lag: None,
    };
    a.segment_lag = a.current_wal.as_deref().and_then(|c| {
        crate::wal::status::segment_lag(c, a.last_archived_wal.as_deref(), segment_bytes)
    });
    Ok(a)
}

/// How long `wal status`, `mark` and `pitr setup` wait for the server.
const SERVER_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(SERVER_WAIT, f)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Database {
                target: what.to_string(),
                message: format!(
                    "cannot connect: no answer within {} s (is the server running and reachable?)",
                    SERVER_WAIT.as_secs()
                ),
            })
        })
}

fn fmt_time(t: DateTime<Utc>) -> String {
    format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"))
}

/// `drctl wal status POLICY`.
pub async fn status(ctx: &Ctx, policy: &str) -> Result<()> {
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    let repo = ctx.repo(&config).await?;
    let catalog = crate::repo::catalog::load(&repo, &policy.name).await?;
    // The identity shows where timelines branched; hosts that archive
    // usually hold only the public recipients, and the check works without.
    let identities = ctx.identities(&config).ok();
    let wal =
        crate::wal::check::continuity(&repo, &policy.name, &catalog.backups, identities.as_deref())
            .await?;
    let now = Utc::now();
    let newest_at = wal
        .timelines
        .iter()
        .filter_map(|t| t.newest_archived_at)
        .max();
    let rpo = policy.rpo_target().map(|(t, _)| t);
    let gap_lines = wal.gap_lines(&policy.name, &catalog.backups);
    let mut problems = crate::wal::status::problems(&policy.name, &gap_lines, newest_at, rpo, now);
    let spool = crate::wal::spool::usage(
        &config.wal.spool_dir,
        &policy.name,
        config.wal.spool_max_bytes,
    );
    match &spool {
        Some(u) if u.error.is_some() => problems.push(format!(
            "the WAL spool {} cannot be read: {}",
            config.wal.spool_dir.join(&policy.name).display(),
            u.error.as_deref().unwrap_or_default()
        )),
        Some(u) if u.filling() => problems.push(format!(
            "the WAL spool on this host holds {}: the repository is not taking WAL; \
             `drctl wal drain {}` stores it once the repository answers",
            u.describe(),
            policy.name
        )),
        _ => {}
    }
    let server = bounded(
        cluster_source(policy),
        archiver(cluster_source(policy), wal.segment_bytes),
    )
    .await;
    let lag_seconds = newest_at.map(|t| (now - t).num_seconds().max(0));
    if ctx.cli.json {
        let server_json = match &server {
            Ok(a) => {
                serde_json::json!({ "reachable": true, "archiver": a, "failing": a.failing() })
            }
            Err(e) => serde_json::json!({ "reachable": false, "error": e.to_string() }),
        };
        ctx.print_json(&serde_json::json!({
            "policy": policy.name,
            "ok": problems.is_empty(),
            "newest_archived_at": newest_at,
            "lag_seconds": lag_seconds,
            "rpo_target_seconds": rpo.map(|r| r.num_seconds()),
            "segments": wal.timelines.iter().map(|t| t.segments).sum::<u64>(),
            "timelines": wal.timelines,
            "gaps": gap_lines,
            "spool": spool,
            "note": wal.note,
            "server": server_json,
            "problems": problems,
        }));
    } else {
        let total: u64 = wal.timelines.iter().map(|t| t.segments).sum();
        outln!(
            "{}: {total} WAL segment{} archived on {} timeline{}",
            policy.name,
            if total == 1 { "" } else { "s" },
            wal.timelines.len(),
            if wal.timelines.len() == 1 { "" } else { "s" }
        );
        for t in &wal.timelines {
            outln!(
                "  timeline {}: {} segment{}{}{}{}",
                t.timeline,
                t.segments,
                if t.segments == 1 { "" } else { "s" },
                t.newest
                    .as_ref()
                    .map(|n| format!(", newest {n}"))
                    .unwrap_or_default(),
                t.newest_archived_at
                    .map(|a| format!(
                        " archived {} ({} ago)",
                        fmt_time(a),
                        crate::timespec::human_duration(now - a)
                    ))
                    .unwrap_or_default(),
                match (&t.checked_from, t.gaps.len()) {
                    (Some(from), 0) => format!("; no gap since {from}"),
                    (Some(from), n) =>
                        format!("; {n} gap{} since {from}", if n == 1 { "" } else { "s" }),
                    (None, _) => String::new(),
                }
            );
        }
        if let Some(rpo) = rpo {
            outln!(
                "  lag: {} against an RPO target of {}",
                lag_seconds
                    .map(|s| format!("{s} s"))
                    .unwrap_or_else(|| "nothing archived".into()),
                crate::timespec::human_duration(rpo)
            );
        }
        match &server {
            Ok(a) => {
                outln!(
                    "  server: last archived {}{}; {} failure{}{}{}",
                    a.last_archived_wal.as_deref().unwrap_or("nothing"),
                    a.last_archived_time
                        .map(|t| format!(" at {}", fmt_time(t)))
                        .unwrap_or_default(),
                    a.failed_count,
                    if a.failed_count == 1 { "" } else { "s" },
                    a.last_failed_wal
                        .as_ref()
                        .map(|w| format!(
                            " (last: {w}{}{})",
                            a.last_failed_time
                                .map(|t| format!(" at {}", fmt_time(t)))
                                .unwrap_or_default(),
                            if a.failing() {
                                ", newer than the last success: archiving is failing now"
                            } else {
                                ""
                            }
                        ))
                        .unwrap_or_default(),
                    match (&a.current_wal, a.segment_lag) {
                        (Some(c), Some(l)) => format!(
                            "; writing {c}, {l} finished segment{} not archived yet",
                            if l == 1 { "" } else { "s" }
                        ),
                        _ => String::new(),
                    }
                );
            }
            Err(e) => outln!("  server: not reachable with the policy's url ({e})"),
        }
        match &spool {
            Some(u) if u.error.is_none() && u.segments == 0 => outln!("  spool: empty"),
            Some(u) if u.error.is_none() => outln!(
                "  spool: {}, waiting for the repository (`drctl wal drain {}`)",
                u.describe(),
                policy.name
            ),
            Some(_) => {}
            None => outln!(
                "  spool: none on this host ({} does not exist)",
                config.wal.spool_dir.display()
            ),
        }
        if let Some(note) = &wal.note {
            outln!("  note: {note}");
        }
        for g in &gap_lines {
            outln!("GAP {g}");
        }
    }
    match problems.as_slice() {
        [] => Ok(()),
        [one] => Err(Error::Unhealthy(one.clone())),
        [first, rest @ ..] => Err(Error::Unhealthy(format!(
            "{first} (and {} more problem{}, listed above)",
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ))),
    }
}

/// `drctl mark POLICY NAME`.
pub async fn mark(ctx: &Ctx, policy: &str, name: &str) -> Result<()> {
    crate::wal::marks::usage(name)?;
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    let repo = ctx.repo(&config).await?;
    let url = cluster_source(policy);
    let pg = crate::source::postgres::resolve(url)?;
    let target = crate::source::postgres::describe(&pg);
    let (lsn, wal_file): (String, String) = bounded(&target, async {
        let client = crate::source::postgres::connect(&pg).await?;
        let row = client
            .query_one(
                "SELECT lsn::text, pg_walfile_name(lsn) FROM pg_create_restore_point($1) AS lsn",
                &[&name],
            )
            .await
            .map_err(|e| Error::Database {
                target: target.clone(),
                message: format!(
                    "pg_create_restore_point failed: {} (it needs a primary with wal_level replica, \
                     and a superuser or a role granted EXECUTE on it)",
                    crate::source::postgres::error_text(&e)
                ),
            })?;
        Ok((row.get(0), row.get(1)))
    })
    .await?;
    let mark = Mark {
        policy: policy.name.clone(),
        name: name.to_string(),
        lsn: lsn.parse().map_err(|e: String| Error::Database {
            target: target.clone(),
            message: e,
        })?,
        timeline: u32::from_str_radix(&wal_file[..8.min(wal_file.len())], 16).unwrap_or(0),
        wal_file,
        time: Utc::now(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
    };
    let key = crate::wal::marks::save(&repo, &mark).await?;
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({ "mark": mark, "key": key }));
    } else {
        errln!(
            "Marked restore point `{}` of {} on timeline {} (in {}); recorded as {key}.",
            mark.name,
            policy.name,
            mark.timeline,
            mark.wal_file
        );
        errln!(
            "It can be restored to (`drctl restore {} --to-name {} --data-dir DIR`) once {} is archived: \
             archive_timeout bounds that, or run SELECT pg_switch_wal().",
            policy.name,
            crate::source::pgcluster::recover::shell_quote(&mark.name),
            mark.wal_file
        );
        outln!("{}", mark.lsn);
    }
    Ok(())
}

/// `drctl pitr setup POLICY`.
pub async fn setup(ctx: &Ctx, policy: &str) -> Result<()> {
    use crate::source::pgcluster::recover::{conf_quote, shell_quote};
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the drctl executable", e))?;
    let config_path = Config::resolve_path(ctx.cli.config.as_deref());
    let config_path = std::fs::canonicalize(&config_path).map_err(|e| {
        Error::io(
            format!("finding the configuration {}", config_path.display()),
            e,
        )
    })?;
    let command = format!(
        "{} --config {} wal-push {} %p",
        shell_quote(&exe.display().to_string()),
        shell_quote(&config_path.display().to_string()),
        shell_quote(&policy.name)
    );
    let wanted = [
        ("wal_level", "replica".to_string()),
        ("archive_mode", "on".to_string()),
        ("archive_command", command.clone()),
        ("archive_timeout", "60".to_string()),
    ];
    let lines: Vec<String> = wanted
        .iter()
        .map(|(k, v)| match *k {
            "archive_command" => format!("{k} = {}", conf_quote(v)),
            _ => format!("{k} = {v}"),
        })
        .collect();
    let url = cluster_source(policy);
    let pg = crate::source::postgres::resolve(url)?;
    let target = crate::source::postgres::describe(&pg);
    let current = bounded(&target, async {
        let client = crate::source::postgres::connect(&pg).await?;
        let rows = client
            .query(
                "SELECT name, setting, context, pending_restart FROM pg_settings \
                 WHERE name IN ('wal_level', 'archive_mode', 'archive_command', 'archive_timeout')",
                &[],
            )
            .await
            .map_err(|e| Error::Database {
                target: target.clone(),
                message: crate::source::postgres::error_text(&e),
            })?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, bool>(3),
                    ),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>())
    })
    .await;
    let mut checks: Vec<(String, bool, String)> = Vec::new();
    if let Ok(current) = &current {
        for (name, _) in &wanted {
            let Some((setting, context, pending)) = current.get(*name) else {
                continue;
            };
            let ok = match *name {
                "wal_level" => setting == "replica" || setting == "logical",
                "archive_mode" => setting == "on" || setting == "always",
                "archive_command" => setting
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w[0] == "wal-push" && w[1] == shell_quote(&policy.name)),
                _ => setting.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)),
            };
            let how = if context == "postmaster" {
                "needs a restart"
            } else {
                "takes a reload (SELECT pg_reload_conf())"
            };
            let text = match (ok, pending) {
                (true, false) => format!("{name} is `{setting}`"),
                (true, true) => {
                    format!("{name} is `{setting}`, but a changed value waits for a restart")
                }
                (false, _) => format!("{name} is `{setting}`; the line above sets it, and {how}"),
            };
            checks.push((name.to_string(), ok && !pending, text));
        }
    }
    let differ: Vec<&(String, bool, String)> = checks.iter().filter(|c| !c.1).collect();
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "policy": policy.name,
            "lines": lines,
            "server": match &current {
                Ok(_) => serde_json::json!({ "reachable": true, "checks": checks.iter().map(|(n, ok, t)| serde_json::json!({"setting": n, "ok": ok, "detail": t})).collect::<Vec<_>>() }),
                Err(e) => serde_json::json!({ "reachable": false, "error": e.to_string() }),
            },
        }));
    } else {
        errln!(
            "# Add to postgresql.conf of the server `{}` backs up ({target}); the server runs drctl as its own \
             OS user, which must be able to read {} and the repository's credentials:",
            policy.name,
            config_path.display()
        );
        for l in &lines {
            outln!("{l}");
        }
        for (_, ok, text) in &checks {
            errln!("{} {text}", if *ok { "ok     " } else { "DIFFERS" });
        }
    }
    match current {
        Err(e) => Err(e),
        Ok(_) if differ.is_empty() => Ok(()),
        Ok(_) => Err(Error::Unhealthy(format!(
            "{} of the settings of {target} differ{} from what `{}` needs ({}); set the lines above",
            differ.len(),
            if differ.len() == 1 { "s" } else { "" },
            policy.name,
            differ
                .iter()
                .map(|d| d.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
