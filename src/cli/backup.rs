//! `backup POLICY` and `backup --all`.

use super::Ctx;
use crate::backup::{self, JobOptions};
use crate::error::{Error, Result};
use crate::progress::bytes;

pub async fn backup(ctx: &Ctx, policy: Option<&str>, all: bool) -> Result<()> {
    let config = ctx.config()?;
    let policies = if all {
        config.policies.iter().collect::<Vec<_>>()
    } else {
        vec![config.policy(policy.expect("clap requires a policy"))?]
    };
    let repo = ctx.repo(&config).await?;
    let opts = JobOptions {
        show_progress: ctx.progress(),
        cancel: ctx.cancel.clone(),
    };
    let mut results = Vec::new();
    let mut first_error = None;
    for p in policies {
        tracing::info!(policy = %p.name, "Backup started.");
        match backup::run(&repo, &config, p, &opts).await {
            Ok(m) => {
                tracing::info!(policy = %p.name, id = %m.id, "Backup finished.");
                if !ctx.cli.json {
                    outln!(
                        "{}: backup {} of {} ({} of data, {} stored) in {:.1}s",
                        p.name,
                        m.id,
                        m.point_in_time
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        bytes(m.data.digests.plaintext_size),
                        bytes(m.data.digests.size),
                        m.duration_seconds()
                    );
                }
                // Last, so that they are not lost above a progress display;
                // on stderr even with --json, whose manifest holds them too.
                for w in &m.warnings {
                    errln!("{}: warning: {w}", p.name);
                }
                results.push(serde_json::json!({"policy": p.name, "ok": true, "manifest": m}));
            }
            Err(e) => {
                // The CLI prints the error itself; the log line is for --log-format json.
                tracing::info!(policy = %p.name, error = %e, "Backup failed.");
                if all && !ctx.cli.json {
                    errln!("{}: backup FAILED: {e}", p.name);
                }
                results.push(
                    serde_json::json!({"policy": p.name, "ok": false, "error": e.to_string()}),
                );
                let stop = matches!(e, Error::Interrupted(_));
                first_error.get_or_insert(e);
                if stop {
                    break;
                }
            }
        }
    }
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({ "results": results }));
    }
    match first_error {
        Some(e) if !all => Err(e),
        Some(e) => {
            let failed = results.iter().filter(|r| r["ok"] == false).count();
            errln!(
                "{failed} of {} backups failed; the first failure follows.",
                results.len()
            );
            // The first failure keeps its own exit code (busy, unavailable…).
            Err(e)
        }
        None => Ok(()),
    }
}
