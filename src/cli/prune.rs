//! `prune [POLICY] [--dry-run]` and `list --deleted`: the plan first (keep
//! or forget per backup, and the rule that keeps it), then what was done.

use std::sync::Arc;

use serde::Serialize;

use super::Ctx;
use super::inspect::selected;
use crate::error::{Error, Result};
use crate::prune::{self as job, PruneOptions, PruneReport};
use crate::repo::catalog;
use crate::retention::Action;

pub async fn prune(ctx: &Ctx, policy: Option<&str>, dry_run: bool) -> Result<()> {
    let config = ctx.config()?;
    let policies = selected(&config, policy)?;
    let json = ctx.cli.json;
    // Each repository by its own rules: the primary by the policies', a
    // copy by its `[[copies]] retention` when it has one. Without --repo,
    // the primary and then every copy that has been written.
    let mut targets = Vec::new();
    let mut unreachable_copies = Vec::new();
    match &ctx.cli.repo {
        Some(name) => targets.push((ctx.repo(&config).await?, Some(config.copy(name)?))),
        None => {
            targets.push((ctx.repo(&config).await?, None));
            for c in &config.copies {
                match crate::copy::open_copy(c, crate::signing::for_config(&config)?).await {
                    Ok(r) => targets.push((r, Some(c))),
                    Err(Error::Usage(_)) => {} // never copied to: nothing to prune
                    Err(e) => {
                        if !json {
                            errln!("copy {}: prune FAILED: {e}", c.name);
                        }
                        unreachable_copies.push((format!("copy {}", c.name), e));
                    }
                }
            }
        }
    }
    let opts = PruneOptions {
        dry_run,
        on_plan: (!json).then(|| Arc::new(print_plan) as job::PlanCallback),
        cancel: ctx.cancel.clone(),
        ..PruneOptions::default()
    };
    let mut reports = Vec::new();
    let mut errors = unreachable_copies;
    for (repo, copy) in &targets {
        for p in &policies {
            let mut p = (*p).clone();
            if let Some(c) = copy {
                p.retention = c.retention_for(&p).clone();
            }
            let p = &p;
            match job::prune(repo, p, &opts).await {
                Ok(report) => {
                    if !json {
                        print_outcome(&report);
                    }
                    reports.push(report);
                }
                Err(e) => {
                    let stop = matches!(e, Error::Interrupted(_));
                    // With one policy the error line from main says it all.
                    if !json && policies.len() > 1 {
                        errln!("{}: prune FAILED: {e}", p.name);
                    }
                    errors.push((p.name.clone(), e));
                    if stop {
                        break;
                    }
                }
            }
        }
    }
    if json {
        ctx.print_json(&serde_json::json!({
            "dry_run": dry_run,
            "reports": reports,
            "errors": errors.iter().map(|(p, e)| serde_json::json!({"policy": p, "error": e.to_string()})).collect::<Vec<_>>(),
        }));
    }
    match errors.into_iter().next() {
        None => {
            for u in reports.iter().flat_map(|r| &r.untrusted) {
                errln!("warning: {}", u.reason);
            }
            crate::repo::catalog::untrusted_summary(
                reports
                    .iter()
                    .flat_map(|r| r.untrusted.iter().map(|u| u.key.as_str())),
            )
        }
        Some((_, e)) => Err(e),
    }
}

/// `forget POLICY ID`: prune's machinery for one backup, so that the
/// lease, the holds of restores and drills and the newest-good invariant
/// apply as they do to prune. The plan is printed, then confirmed.
pub async fn forget(ctx: &Ctx, policy: &str, id: &str, dry_run: bool, yes: bool) -> Result<()> {
    let config = ctx.config()?;
    let policy = config.policy(policy)?;
    let repo = ctx.repo(&config).await?;
    let json = ctx.cli.json;
    let mut opts = PruneOptions {
        dry_run: true,
        on_plan: (!json).then(|| Arc::new(print_plan) as job::PlanCallback),
        cancel: ctx.cancel.clone(),
        only: Some(id.to_string()),
        ..PruneOptions::default()
    };
    let plan = job::prune(&repo, policy, &opts).await?;
    let report = if dry_run {
        plan
    } else {
        if !yes {
            super::restore::ask(&format!("deleting backup {id} of `{}`", policy.name))?;
        }
        opts.dry_run = false;
        opts.on_plan = None;
        job::prune(&repo, policy, &opts).await?
    };
    if json {
        ctx.print_json(&serde_json::json!({ "dry_run": dry_run, "reports": [&report] }));
    } else {
        print_outcome(&report);
    }
    Ok(())
}

fn print_plan(r: &PruneReport) {
    outln!(
        "Prune plan for {} ({}) in {}{}:",
        r.policy,
        r.rules,
        r.location,
        if r.dry_run { ", dry run" } else { "" }
    );
    if r.backups.is_empty() {
        outln!("  no backups");
    } else {
        outln!(
            "  {:<27} {:<20} {:<7} WHY",
            "ID",
            "POINT IN TIME (UTC)",
            "ACTION"
        );
    }
    for b in &r.backups {
        outln!(
            "  {:<27} {:<20} {:<7} {}",
            b.id,
            b.point_in_time.format("%Y-%m-%d %H:%M:%S"),
            match b.action {
                Action::Keep => "keep",
                Action::Forget => "forget",
            },
            b.reasons.join(", ")
        );
    }
    for d in &r.damaged {
        outln!(
            "  DAMAGED {}: {} (left alone; never counted as the newest good backup)",
            d.key,
            d.reason
        );
    }
    for l in &r.leftovers {
        outln!(
            "  leftover of a failed backup {} ({} object{}{}): {}",
            l.id,
            l.objects.len(),
            if l.objects.len() == 1 { "" } else { "s" },
            l.newest_object_at
                .map(|t| format!(", newest {}", t.format("%Y-%m-%d %H:%M:%S")))
                .unwrap_or_default(),
            match l.outcome.as_str() {
                "too recent" => "keep (younger than a day; a job may still be writing it)",
                "delete" => "delete",
                other => other,
            }
        );
    }
    if let Some(w) = &r.wal {
        outln!("  {}", describe_wal(w));
    }
}

/// The WAL line of a plan: what goes, and where the kept archive starts.
fn describe_wal(w: &job::WalPrune) -> String {
    if let Some(why) = &w.keep_all {
        return format!("WAL: all kept ({why})");
    }
    let horizon = match (&w.horizon, &w.horizon_backup) {
        (Some(h), Some(b)) => format!("{h}, where base backup {b} starts"),
        (Some(h), None) => h.clone(),
        _ => "the oldest kept base backup's start".into(),
    };
    match (&w.first, &w.last) {
        (Some(first), Some(last)) if w.files > 0 => format!(
            "WAL: delete {} file{} ({}) before {horizon}: {first} to {last}; .history files are kept",
            w.files,
            plural(w.files),
            crate::progress::bytes(w.bytes)
        ),
        _ => format!("WAL: nothing before {horizon} to delete"),
    }
}

fn print_outcome(r: &PruneReport) {
    if r.dry_run {
        let forget = r
            .backups
            .iter()
            .filter(|b| b.action == Action::Forget)
            .count();
        let wal = r
            .wal
            .as_ref()
            .map(|w| format!(" and {} WAL file{}", w.files, plural(w.files)))
            .unwrap_or_default();
        outln!(
            "Dry run: nothing was deleted ({forget} backup{}{wal} would be).",
            plural(forget)
        );
        return;
    }
    let kept = r
        .backups
        .iter()
        .filter(|b| b.action == Action::Keep)
        .count();
    let leftovers = r
        .leftovers
        .iter()
        .filter(|l| l.outcome == "deleted")
        .count();
    let wal = r
        .wal
        .as_ref()
        .map(|w| {
            format!(
                ", deleted {} WAL file{} ({})",
                w.deleted_files,
                plural(w.deleted_files),
                crate::progress::bytes(w.deleted_bytes)
            )
        })
        .unwrap_or_default();
    outln!(
        "{}: deleted {} backup{}, kept {kept}{}{}{wal}.",
        r.policy,
        r.deleted.len(),
        plural(r.deleted.len()),
        if r.held.is_empty() {
            String::new()
        } else {
            format!(" ({} held by a running restore or drill)", r.held.len())
        },
        if leftovers == 0 {
            String::new()
        } else {
            format!(", removed {leftovers} leftover{}", plural(leftovers))
        }
    );
    for x in &r.retained {
        outln!("  retained {}: {}", x.key, x.reason);
    }
    if !r.deleted.is_empty() && r.versioning.as_deref() == Some("Enabled") {
        outln!(
            "  The bucket is versioned: the deletes left delete markers. Until the lifecycle rule expires noncurrent versions, `drctl list --deleted {}` shows them and `drctl restore {} --backup ID` restores one.",
            r.policy,
            r.policy
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[derive(Serialize)]
struct DeletedRow<'a> {
    policy: &'a str,
    id: &'a str,
    point_in_time: chrono::DateTime<chrono::Utc>,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    manifest_version_id: &'a str,
    restorable: bool,
    missing: &'a [String],
}

pub async fn list_deleted(ctx: &Ctx, policy: Option<&str>) -> Result<()> {
    let config = ctx.config()?;
    let policies = selected(&config, policy)?;
    let repo = ctx.repo(&config).await?;
    let protection = repo.store.protection().await?;
    let mut found = Vec::new();
    let mut untrusted = Vec::new();
    for p in &policies {
        let deleted = catalog::load_deleted(&repo, &p.name).await?;
        for (key, reason) in &deleted.damaged {
            errln!("warning: a deleted manifest cannot be read: {key}: {reason}");
        }
        for (_, reason) in &deleted.untrusted {
            errln!("warning: {reason}");
        }
        untrusted.extend(deleted.untrusted.into_iter().map(|(k, _)| k));
        found.push((p.name.clone(), deleted.backups));
    }
    let note = if !protection.applicable {
        Some(format!(
            "{} is a local directory: it keeps no versions, so pruned backups are gone",
            repo.store.location()
        ))
    } else if protection.versioning.is_none() {
        Some(format!(
            "versioning was never enabled on {}: pruned backups are gone",
            repo.store.location()
        ))
    } else {
        None
    };
    if ctx.cli.json {
        let rows: Vec<DeletedRow> = found
            .iter()
            .flat_map(|(_, d)| d.iter())
            .map(|d| DeletedRow {
                policy: &d.manifest.policy,
                id: &d.manifest.id,
                point_in_time: d.manifest.point_in_time,
                deleted_at: d.deleted_at,
                manifest_version_id: &d.manifest_version_id,
                restorable: d.missing.is_empty(),
                missing: &d.missing,
            })
            .collect();
        ctx.print_json(&serde_json::json!({ "deleted": rows, "versioning": protection.versioning, "note": note }));
        return catalog::untrusted_summary(untrusted.iter().map(String::as_str));
    }
    if let Some(n) = &note {
        errln!("note: {n}");
    }
    for (name, deleted) in &found {
        outln!(
            "{name}: {} pruned backup{} still in the bucket",
            deleted.len(),
            plural(deleted.len())
        );
        if !deleted.is_empty() {
            outln!(
                "  {:<27} {:<20} {:<20} {:<34} RESTORABLE",
                "ID",
                "POINT IN TIME (UTC)",
                "DELETED (UTC)",
                "MANIFEST VERSION"
            );
        }
        for d in deleted {
            outln!(
                "  {:<27} {:<20} {:<20} {:<34} {}",
                d.manifest.id,
                d.manifest.point_in_time.format("%Y-%m-%d %H:%M:%S"),
                d.deleted_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                d.manifest_version_id,
                if d.missing.is_empty() {
                    "yes".to_string()
                } else {
                    format!("no (expired: {})", d.missing.join(", "))
                }
            );
        }
    }
    catalog::untrusted_summary(untrusted.iter().map(String::as_str))
}
