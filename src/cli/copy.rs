//! `copy [POLICY] [--to NAME] [--dry-run]`: the plan per policy and copy,
//! progress on stderr, then what was copied; and the check that `--repo`
//! is given only to commands that read from a copy.

use std::sync::Arc;

use super::inspect::selected;
use super::{Command, Ctx, WalCommand};
use crate::copy::{self as job, CopyOptions, CopyReport};
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Only this policy (default: every policy).
    pub policy: Option<String>,
    /// Only this copy (`[[copies]] name`; default: every copy).
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
    /// Print what would be copied and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--repo`/`--from` reads from a copy; commands that write backups,
/// WAL or settings work on the primary only.
///
/// # Errors
/// `Usage` naming the command.
pub fn refuse_repo_flag(command: &Command, name: &str) -> Result<()> {
    let allowed = matches!(
        command,
        Command::List { .. }
            | Command::Restore(_)
            | Command::Drill(_)
            | Command::Drills { .. }
            | Command::Verify { .. }
            | Command::Report(_)
            | Command::Prune { .. }
            | Command::Key {
                command: crate::cli::KeyCommand::Rotate { .. }
            }
            | Command::WalFetch { .. }
            | Command::WalPrefetch { .. }
            | Command::Wal {
                command: WalCommand::Status { .. }
            }
    );
    if allowed {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--repo {name}: only list, restore, drill, drills, verify, report, prune, key rotate, wal status and wal-fetch work on a copy; this command works on the primary repository (unset DRCTL_REPO, or drop --repo/--from)"
        )))
    }
}

pub async fn copy(ctx: &Ctx, args: &CopyArgs) -> Result<()> {
    let config = ctx.config()?;
    let policies = selected(&config, args.policy.as_deref())?;
    let copies: Vec<&crate::config::CopyConfig> = match &args.to {
        Some(name) => vec![config.copy(name)?],
        None if config.copies.is_empty() => {
            return Err(Error::Usage(format!(
                "{} has no [[copies]]; add one (see \"Copies\" in docs/operations.md)",
                config.path.display()
            )));
        }
        None => config.copies.iter().collect(),
    };
    let source = ctx.repo(&config).await?;
    let show = ctx.progress();
    let opts = CopyOptions {
        dry_run: args.dry_run,
        on_progress: show.then(|| Arc::new(|m: &str| errln!("{m}")) as job::ProgressCallback),
        cancel: ctx.cancel.clone(),
    };
    let mut reports = Vec::new();
    let mut errors: Vec<(String, String, Error)> = Vec::new();
    for c in &copies {
        let dest = match job::open_destination(&source, c, !args.dry_run).await {
            Ok(d) => d,
            Err(e) => {
                if !ctx.cli.json && copies.len() > 1 {
                    errln!("copy {}: FAILED: {e}", c.name);
                }
                errors.push((String::new(), c.name.clone(), e));
                continue;
            }
        };
        for p in &policies {
            match job::copy_policy(&source, &dest, c, p, &opts).await {
                Ok(report) => {
                    if !ctx.cli.json {
                        print_report(&report);
                    }
                    reports.push(report);
                }
                Err(e) => {
                    let stop = matches!(e, Error::Interrupted(_));
                    if !ctx.cli.json && policies.len() * copies.len() > 1 {
                        errln!("{} → {}: copy FAILED: {e}", p.name, c.name);
                    }
                    errors.push((p.name.clone(), c.name.clone(), e));
                    if stop {
                        break;
                    }
                }
            }
        }
    }
    for r in &reports {
        for s in &r.skipped {
            errln!("warning: {}: not copied: {s}", r.policy);
        }
        for w in &r.warnings {
            errln!("warning: {w}");
        }
    }
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "dry_run": args.dry_run,
            "reports": reports,
            "errors": errors.iter().map(|(p, c, e)| serde_json::json!({"policy": p, "copy": c, "error": e.to_string()})).collect::<Vec<_>>(),
        }));
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some((_, _, e)) => Err(e),
    }
}

fn print_report(r: &CopyReport) {
    let count = |a: &str| r.backups.iter().filter(|b| b.action == a).count();
    if r.dry_run {
        outln!(
            "Copy plan for {} into {} ({}), dry run:",
            r.policy,
            r.copy,
            r.destination
        );
        for b in r.backups.iter().filter(|b| b.action == "planned") {
            outln!(
                "  copy {}  {}  {}",
                b.id,
                b.point_in_time.format("%Y-%m-%d %H:%M:%S"),
                crate::progress::bytes(b.bytes)
            );
        }
        outln!(
            "  {} backup(s) to copy, {} already there, {} not kept by the copy's retention; {} WAL object(s), {} record(s); {} in all",
            count("planned"),
            count("present"),
            count("not kept"),
            r.wal_copied,
            r.records_copied,
            crate::progress::bytes(r.bytes)
        );
    } else {
        outln!(
            "{} → {}: {} backup(s) copied, {} already there, {} WAL object(s), {} record(s); {} in {:.1}s{}",
            r.policy,
            r.copy,
            count("copied"),
            count("present"),
            r.wal_copied,
            r.records_copied,
            crate::progress::bytes(r.bytes),
            r.seconds,
            match (r.newest_source, r.newest_destination) {
                (Some(s), Some(d)) if d >= s => "; the copy is up to date".to_string(),
                (Some(s), Some(d)) => format!(
                    "; the copy's newest backup is {} behind",
                    crate::timespec::human_duration(s - d)
                ),
                _ => String::new(),
            }
        );
    }
}
