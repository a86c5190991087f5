//! `drill` and `drills`.

use super::Ctx;
use crate::drill::{self, Choice, DrillOptions};
use crate::error::{Error, Result};
use crate::timespec::human_duration;

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Policy to drill.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub policy: Option<String>,
    /// Drill every policy that has a [drill] section, one after another.
    #[arg(long)]
    pub all: bool,
    /// Restore this backup (id or unique prefix) instead of the newest.
    #[arg(long, value_name = "ID", conflicts_with = "random")]
    pub backup: Option<String>,
    /// Restore a randomly chosen backup.
    #[arg(long)]
    pub random: bool,
    /// Leave the scratch database or directory in place afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Check as a scheduled drill does: with `[drill] sample_percent`, a
    /// sample of rows unless a full check is due. Without it a drill by
    /// hand checks every row.
    #[arg(long)]
    pub scheduled_check: bool,
}

fn seconds(s: Option<f64>) -> String {
    s.map(|s| human_duration(chrono::Duration::milliseconds((s * 1000.0) as i64)))
        .unwrap_or_else(|| "-".into())
}

fn against(o: &drill::record::Objective) -> String {
    match (o.measured_seconds, o.target_seconds) {
        (m, Some(t)) => format!(
            "{} (target {}, {})",
            seconds(m),
            seconds(Some(t)),
            if o.met() == Some(true) {
                "met"
            } else {
                "MISSED"
            }
        ),
        (m, None) => format!("{} (no target)", seconds(m)),
    }
}

pub async fn drill(ctx: &Ctx, args: &DrillArgs) -> Result<()> {
    let config = ctx.config()?;
    let policies: Vec<_> = match &args.policy {
        Some(name) => vec![config.policy(name)?],
        None => config
            .policies
            .iter()
            .filter(|p| p.drill.is_some())
            .collect(),
    };
    if policies.is_empty() {
        return Err(Error::Usage("no policy has a [drill] section".into()));
    }
    let repo = ctx.repo(&config).await?;
    let choice = |policy: &crate::config::Policy| match (&args.backup, args.random) {
        (Some(id), _) => Choice::Id(id.clone()),
        (None, true) => Choice::Random,
        // The policy's `choose`, as the daemon's drills do.
        (None, false) if policy.drill.as_ref().is_some_and(|d| d.random) => Choice::Random,
        (None, false) => Choice::Newest,
    };
    let meter = crate::progress::Meter {
        bytes: Default::default(),
        cancel: ctx.cancel.clone(),
        count_plaintext: false,
    };
    let mut opts = DrillOptions {
        choice: Choice::Newest,
        keep: args.keep,
        identity_file: ctx.cli.identity.clone().or(config.identity_file.clone()),
        meter,
        skip_if_busy: false,
        config_path: config.path.clone(),
        allow_sample: args.scheduled_check,
    };
    let mut records = Vec::new();
    let mut untrusted = Vec::new();
    for policy in policies {
        opts.choice = choice(policy);
        let record = drill::run(&repo, policy, &opts).await?;
        // The drill used the newest trusted backup; a manifest without a
        // trusted signature that claims to be newer is named, and makes
        // the exit status say so, though the drill itself stands.
        if repo.signing.is_some() && matches!(opts.choice, Choice::Newest) {
            let catalog = crate::repo::catalog::load(&repo, &policy.name).await?;
            if let Some(id) = &record.backup_id
                && catalog.refuse_untrusted_newer(id).is_err()
            {
                for (key, reason) in &catalog.untrusted {
                    errln!("warning: {reason}");
                    untrusted.push(key.clone());
                }
            }
        }
        if !ctx.cli.json {
            outln!(
                "{}: drill {} {} backup {}",
                record.policy,
                record.id,
                if record.passed { "PASSED" } else { "FAILED" },
                record.backup_id.as_deref().unwrap_or("(none)")
            );
            for step in &record.steps {
                outln!(
                    "  step   {:<48} {:>8.2}s {}",
                    step.name,
                    step.seconds,
                    if step.ok { "ok" } else { "failed" }
                );
            }
            for check in &record.checks {
                outln!(
                    "  check  {:<24} {}  {}",
                    check.name,
                    if check.ok { "ok    " } else { "FAILED" },
                    check.detail
                );
            }
            if let Some(r) = &record.recovery {
                outln!("  PITR   {}", drill::cluster::describe_recovery(r));
                if let Some(line) = &r.stop_line {
                    outln!("  server {line}");
                }
            }
            outln!("  RTO    {}", against(&record.rto));
            outln!(
                "  RPO    {} since {}",
                against(&record.rpo),
                if record.recovery.is_some() {
                    "the newest archived WAL"
                } else {
                    "the newest backup"
                }
            );
            if let Some(f) = &record.failure {
                outln!("  reason {f}");
            }
        }
        records.push(record);
    }
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({ "drills": records }));
    }
    let failed: Vec<_> = records.iter().filter(|r| !r.passed).collect();
    match failed.first() {
        None => crate::repo::catalog::untrusted_summary(untrusted.iter().map(String::as_str)),
        // A wrong key exits as a key error everywhere (2), here after the
        // failed drill was recorded: it is the restore that failed.
        Some(r) => match r.failure.as_deref().and_then(|f| f.strip_prefix("key: ")) {
            Some(why) => Err(Error::Key(format!("drill of `{}`: {why}", r.policy))),
            None => Err(Error::DrillFailed {
                policy: r.policy.clone(),
                reason: r.failure.clone().unwrap_or_else(|| "see the record".into()),
            }),
        },
    }
}

pub async fn drills(ctx: &Ctx, policy: Option<&str>) -> Result<()> {
    let config = ctx.config()?;
    let names: Vec<String> = match policy {
        Some(name) => vec![config.policy(name)?.name.clone()],
        None => config.policies.iter().map(|p| p.name.clone()).collect(),
    };
    let repo = ctx.repo(&config).await?;
    let mut all = Vec::new();
    for name in &names {
        for stored in drill::load_records(&repo, name).await?.into_iter().rev() {
            all.push(stored);
        }
    }
    if ctx.cli.json {
        let rows: Vec<_> = all
            .iter()
            .map(|s| match &s.record {
                Ok(r) => serde_json::json!({ "key": s.key, "sha256": s.sha256, "record": r }),
                Err(e) => serde_json::json!({ "key": s.key, "sha256": s.sha256, "error": e }),
            })
            .collect();
        ctx.print_json(&serde_json::json!({ "drills": rows }));
        return Ok(());
    }
    outln!(
        "{:<14} {:<27} {:<7} {:<27} {:>10} {:>10}",
        "POLICY",
        "DRILL",
        "RESULT",
        "BACKUP",
        "RTO",
        "RPO"
    );
    for s in &all {
        match &s.record {
            Ok(r) => outln!(
                "{:<14} {:<27} {:<7} {:<27} {:>10} {:>10}",
                r.policy,
                r.id,
                if r.passed { "passed" } else { "FAILED" },
                r.backup_id.as_deref().unwrap_or("-"),
                seconds(r.rto.measured_seconds),
                seconds(r.rpo.measured_seconds)
            ),
            Err(e) => outln!("DAMAGED {}: {e}", s.key),
        }
    }
    Ok(())
}
