//! `report`: a compliance report (Markdown, HTML or JSON) built from the
//! repository's backups, run records and drill records, and `report --verify`, which
//! checks every policy's chain of drill records.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};

use super::Ctx;
use crate::config::Config;
use crate::drill;
use crate::drill::record::{ChainReport, check_chain};
use crate::error::{Error, Result};
use crate::repo::{catalog, runs};
use crate::report::{self, PolicyInput, ReportInput};
use crate::timespec::{LocalZone, TimeSpec, parse_timespec_local, resolve};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One self-contained HTML file (inline CSS and SVG charts).
    Html,
    /// Markdown, for wikis and tickets.
    #[value(alias = "markdown")]
    Md,
    /// JSON, for other tools (schema in docs/reports.md).
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Start of the period: a duration ago (90d), a date (2026-07-01, its
    /// midnight in local time) or a time.
    #[arg(long, default_value = "90d")]
    pub since: String,
    /// End of the period: `now`, a duration ago, a date or a time.
    #[arg(long, default_value = "now")]
    pub until: String,
    /// Output format [default: md, or json with --json].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write the report to FILE instead of stdout; an existing file is
    /// never overwritten.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Only check every policy's chain of drill records; exit 1 if a record
    /// was altered or removed.
    #[arg(long, conflicts_with_all = ["format", "output", "since", "until"])]
    pub verify: bool,
}

pub async fn report(ctx: &Ctx, args: &ReportArgs) -> Result<()> {
    let config = ctx.config()?;
    if args.verify {
        return verify(ctx, &config).await;
    }
    let now = Utc::now();
    let since = period_bound(&args.since, now)?;
    let until = period_bound(&args.until, now)?;
    if since >= until {
        return Err(Error::Usage(format!(
            "--since ({}) must be before --until ({})",
            report::fmt_time(since),
            report::fmt_time(until)
        )));
    }
    if let Some(path) = &args.output
        && path.exists()
    {
        return Err(refuse_existing(path));
    }
    let format = args.format.unwrap_or(if ctx.cli.json {
        Format::Json
    } else {
        Format::Md
    });

    let repo = ctx.repo(&config).await?;
    let protection = repo.store.protection().await.map_err(|e| {
        tracing::warn!(error = %e, "Cannot read the bucket's versioning and Object Lock settings; the report says so.");
        e.to_string()
    });
    // Copies are read only for the primary's report: a report of a copy
    // (`--repo`) is about that copy alone.
    let mut copies = Vec::new();
    if ctx.cli.repo.is_none() {
        for c in &config.copies {
            let opened = crate::copy::open_copy(c, repo.signing.clone()).await;
            copies.push((c, opened));
        }
    }
    let mut policies = Vec::new();
    // (key, warning) of every object set aside for its signature: the
    // report is built from the rest, and the exit status says so.
    let mut untrusted: Vec<(String, String)> = Vec::new();
    for p in &config.policies {
        let catalog = catalog::load(&repo, &p.name).await?;
        untrusted.extend(catalog.untrusted.iter().cloned());
        let (records, set_aside): (Vec<_>, Vec<_>) = drill::load_records(&repo, &p.name)
            .await?
            .into_iter()
            .partition(|r| !drill::record::is_untrusted(r));
        untrusted.extend(
            set_aside
                .into_iter()
                .map(|r| (r.key, r.record.unwrap_err())),
        );
        let (runs, set_aside): (Vec<_>, Vec<_>) = runs::load(&repo, &p.name)
            .await?
            .into_iter()
            .partition(|r| {
                !r.record
                    .as_ref()
                    .is_err_and(|e| e.starts_with(crate::signing::UNTRUSTED))
            });
        untrusted.extend(
            set_aside
                .into_iter()
                .map(|r| (r.key, r.record.unwrap_err())),
        );
        let mut input = PolicyInput::new(p, catalog, records, runs);
        for (c, opened) in &copies {
            let newest = match opened {
                Ok(r) => catalog::newest(r, &p.name).await.map_err(|e| e.to_string()),
                // Never copied to: it holds nothing yet.
                Err(Error::Usage(_)) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            input.copies.push(crate::report::CopyInput {
                name: c.name.clone(),
                location: c.repository.describe(),
                newest,
            });
        }
        policies.push(input);
    }
    let input = ReportInput {
        since,
        until,
        generated_at: now,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        repository: repo.store.location(),
        protection,
        recipients: config.recipients.clone(),
        lifecycle: config.lifecycle.clone(),
        policies,
    };
    let built = report::build(&input);
    let text = match format {
        Format::Html => report::render_html(&built),
        Format::Md => report::render_markdown(&built),
        Format::Json => report::render_json(&built),
    };
    match &args.output {
        Some(path) => {
            write_new(path, &text)?;
            if !ctx.cli.quiet {
                errln!("Wrote the report to {}.", path.display());
            }
        }
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("writing the report to stdout", e))?,
    }
    let broken: Vec<&str> = built
        .policies
        .iter()
        .filter(|p| !p.chain.ok)
        .map(|p| p.name.as_str())
        .collect();
    if !broken.is_empty() {
        errln!(
            "warning: the chain of drill records is broken for {}; `drctl report --verify` lists the problems",
            broken.join(", ")
        );
    }
    refuse_untrusted(&untrusted)
}

/// Names each object set aside for its signature and fails with
/// `Untrusted` when there is one.
fn refuse_untrusted(untrusted: &[(String, String)]) -> Result<()> {
    for (_, reason) in untrusted {
        errln!("warning: {reason}");
    }
    catalog::untrusted_summary(untrusted.iter().map(|(k, _)| k.as_str()))
}

/// A period bound: a date (its local midnight), or anything `restore --to`
/// accepts.
fn period_bound(input: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let invalid = |reason: String| Error::InvalidTime {
        input: input.to_string(),
        reason,
    };
    let spec = match NaiveDate::parse_from_str(input.trim(), "%Y-%m-%d") {
        Ok(date) => {
            let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
            let local = LocalZone::from_env()
                .map_err(invalid)?
                .earliest(&midnight)
                .ok_or_else(|| {
                    invalid("that midnight does not exist in the local time zone".into())
                })?;
            TimeSpec::At(local)
        }
        Err(_) => parse_timespec_local(input).map_err(|reason| {
            invalid(format!(
                "{reason}; a date such as 2026-07-01 also works for a report"
            ))
        })?,
    };
    resolve(&spec, now).map_err(invalid)
}

fn refuse_existing(path: &Path) -> Error {
    Error::Refused(format!(
        "{} already exists; drctl does not overwrite a report (choose another --output or remove the file)",
        path.display()
    ))
}

/// Creates `path` (which must not exist) with `text`; removes it again if
/// writing fails, so a half-written report never stays behind.
fn write_new(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => refuse_existing(path),
            _ => Error::io(format!("creating {}", path.display()), e),
        })?;
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(())
}

/// Checks the chain of every configured policy, and of any policy that has
/// records but is no longer configured.
async fn verify(ctx: &Ctx, config: &Config) -> Result<()> {
    let repo = ctx.repo(config).await?;
    let mut names: Vec<String> = config.policies.iter().map(|p| p.name.clone()).collect();
    for object in repo.store.list("drills/").await? {
        if let Some(name) = object
            .key
            .strip_prefix("drills/")
            .and_then(|k| k.split_once('/'))
            .map(|(name, _)| name)
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    let mut reports: Vec<ChainReport> = Vec::new();
    let mut untrusted = Vec::new();
    for name in &names {
        let records = drill::load_records(&repo, name).await?;
        untrusted.extend(
            records
                .iter()
                .filter(|r| drill::record::is_untrusted(r))
                .map(|r| (r.key.clone(), r.record.clone().unwrap_err())),
        );
        reports.push(check_chain(name, &records));
    }
    let ok = reports.iter().all(|r| r.ok);
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({ "ok": ok, "chains": reports }));
    } else {
        for r in &reports {
            let count = format!("{} drill record{}", r.records, report::plural(r.records));
            if r.ok {
                outln!("ok      {}: {count}, chain intact", r.policy);
            } else {
                outln!("BROKEN  {}: {count}", r.policy);
                for problem in &r.problems {
                    outln!("        {problem}");
                }
            }
        }
    }
    refuse_untrusted(&untrusted)?;
    if ok {
        Ok(())
    } else {
        Err(Error::ChainBroken {
            problems: reports.into_iter().flat_map(|r| r.problems).collect(),
        })
    }
}
