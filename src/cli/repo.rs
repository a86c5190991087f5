//! `repo apply` and `repo status`: the bucket's versioning, lifecycle rules
//! and Object Lock default retention against what drctl.toml asks for.

use super::Ctx;
use crate::bucket::{self, Comparison, Setting};
use crate::error::{Error, Result};
use crate::storage::BucketAdmin;

#[derive(Debug, clap::Subcommand)]
pub enum RepoCommand {
    /// Set versioning, the lifecycle rules and Object Lock default retention
    /// on the bucket from drctl.toml; prints the plan first. Safe to repeat.
    Apply {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask before setting COMPLIANCE retention (which nobody can undo).
        #[arg(long, short)]
        yes: bool,
    },
    /// Compare the bucket's settings with drctl.toml; exits 1 on drift.
    Status,
}

pub async fn run(ctx: &Ctx, command: &RepoCommand) -> Result<()> {
    let config = ctx.config()?;
    let store = crate::storage::open(&config.repository).await?;
    let Some(admin) = store.bucket() else {
        let message = format!(
            "Bucket settings (versioning, lifecycle rules, Object Lock) apply to S3 repositories only; {} is a local directory, so there is nothing to {}.",
            store.location(),
            match command {
                RepoCommand::Apply { .. } => "apply",
                RepoCommand::Status => "compare",
            }
        );
        if ctx.cli.json {
            ctx.print_json(&serde_json::json!({
                "location": store.location(),
                "applicable": false,
                "message": message,
            }));
        } else {
            outln!("{message}");
        }
        return Ok(());
    };
    let desired = bucket::desired(&config.lifecycle, admin.prefix());
    let actual = admin.settings().await?;
    match command {
        RepoCommand::Status => status(ctx, &store.location(), &bucket::compare(&desired, &actual)),
        RepoCommand::Apply { dry_run, yes } => {
            apply(
                ctx,
                &store.location(),
                admin,
                &desired,
                &actual,
                *dry_run,
                *yes,
            )
            .await
        }
    }
}

fn status(ctx: &Ctx, location: &str, c: &Comparison) -> Result<()> {
    let drifted: Vec<&Setting> = c.drifted();
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "location": location,
            "applicable": true,
            "drift": !drifted.is_empty(),
            "settings": c.settings,
            "other_rules": c.other_rules,
        }));
    } else {
        outln!("Bucket settings of {location}:");
        for s in &c.settings {
            print_setting(s, "DRIFT");
        }
        print_others(&c.other_rules);
        match drifted.len() {
            0 => outln!("No drift: the bucket matches drctl.toml."),
            n => outln!(
                "DRIFT in {n} setting{}; `drctl repo apply` sets them.",
                if n == 1 { "" } else { "s" }
            ),
        }
    }
    if drifted.is_empty() {
        Ok(())
    } else {
        Err(Error::BucketDrift {
            location: location.to_string(),
            settings: drifted.iter().map(|s| s.name.clone()).collect(),
        })
    }
}

/// `label` marks a setting that differs: DRIFT in a status, CHANGE in a plan.
fn print_setting(s: &Setting, label: &str) {
    outln!("  {:<6} {}", if s.drift { label } else { "ok" }, s.name);
    outln!("         desired: {}", s.desired);
    outln!("         actual:  {}", s.actual);
}

fn print_others(others: &[String]) {
    if !others.is_empty() {
        outln!("  Lifecycle rules not managed by drctl (kept as they are):");
        for o in others {
            outln!("         {o}");
        }
    }
}

async fn apply(
    ctx: &Ctx,
    location: &str,
    admin: &dyn BucketAdmin,
    desired: &bucket::Desired,
    actual: &bucket::Actual,
    dry_run: bool,
    yes: bool,
) -> Result<()> {
    let plan = bucket::plan(desired, actual)
        .map_err(|e| Error::Refused(format!("bucket `{}`: {e}", admin.bucket_name())))?;
    let others = bucket::compare(desired, actual).other_rules;
    // The plan goes out before anything is changed.
    if !ctx.cli.json {
        if plan.is_empty() {
            outln!("Bucket settings of {location} match drctl.toml; nothing to change.");
        } else {
            outln!(
                "Plan for {location}{}:",
                if dry_run { " (dry run)" } else { "" }
            );
            for s in &plan.changes {
                print_setting(s, "CHANGE");
            }
            print_others(&others);
            if plan
                .retention
                .as_ref()
                .is_some_and(|r| r.mode == "COMPLIANCE")
            {
                outln!(
                    "  Note: COMPLIANCE retention cannot be shortened or removed for objects written under it, by anyone, including the account's root user."
                );
            }
        }
    }
    let compliance = plan
        .retention
        .as_ref()
        .is_some_and(|r| r.mode == "COMPLIANCE");
    if !dry_run && compliance && !yes {
        super::restore::ask(
            "setting COMPLIANCE retention (irreversible for every object written under it)",
        )?;
    }
    if !dry_run {
        if plan.enable_versioning {
            admin.enable_versioning().await?;
        }
        if let Some(rules) = &plan.lifecycle {
            admin.put_lifecycle(rules).await?;
        }
        if let Some(retention) = &plan.retention {
            admin.put_default_retention(retention).await?;
        }
    }
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "location": location,
            "applicable": true,
            "dry_run": dry_run,
            "changes": plan.changes,
            "applied": !dry_run && !plan.is_empty(),
            "other_rules": others,
        }));
    } else if !plan.is_empty() {
        if dry_run {
            outln!("Dry run: nothing was changed.");
        } else {
            outln!(
                "Applied {} change{}. S3 may take a few minutes to report new lifecycle rules everywhere; `drctl repo status` compares again.",
                plan.changes.len(),
                if plan.changes.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ExitCode;
    use super::*;

    #[test]
    fn drift_exits_1_and_archived_exits_5() {
        let drift = Error::BucketDrift {
            location: "s3://b/p".into(),
            settings: vec!["versioning".into()],
        };
        assert_eq!(ExitCode::of(&drift), ExitCode::Failed);
        assert_eq!(
            drift.to_string(),
            "bucket settings of s3://b/p differ from drctl.toml: versioning; `drctl repo apply` sets them"
        );
        assert_eq!(
            ExitCode::of(&Error::Archived("later".into())),
            ExitCode::Unavailable
        );
    }
}
