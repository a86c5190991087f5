//! `restore POLICY --to TIME`: resolve the time, pick the backup, print the
//! plan, confirm, then restore into a database, a file or a directory.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use chrono::Utc;

use super::Ctx;
use crate::archive::{DEFAULT_RESTORE_DAYS, Tier};
use crate::config::SourceConfig;
use crate::error::{Error, Result};
use crate::progress::{Progress, bytes};
use crate::repo::catalog;
use crate::restore as job;
use crate::source::postgres::restore as pg_restore;
use crate::timespec::{self, TimeSpec, human_duration};

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Policy to restore.
    pub policy: String,
    /// Point in time: `latest`, RFC 3339, `YYYY-MM-DD HH:MM[:SS]` (local time), or `2h`/`3d` ago.
    #[arg(long, value_name = "TIME", required_unless_present_any = ["backup", "to_lsn", "to_xid", "to_name"])]
    pub to: Option<String>,
    /// A backup id (or unique prefix) instead of a time. For a
    /// `postgres-cluster` policy: that base backup, recovered only to its
    /// consistent point.
    #[arg(long, value_name = "ID", conflicts_with_all = ["to", "to_lsn", "to_xid", "to_name"])]
    pub backup: Option<String>,
    /// `postgres-cluster`: recover to this WAL location (e.g. 0/5000028).
    #[arg(long, value_name = "LSN", conflicts_with_all = ["to", "to_xid", "to_name"])]
    pub to_lsn: Option<String>,
    /// `postgres-cluster`: recover up to this transaction id.
    #[arg(long, value_name = "XID", conflicts_with_all = ["to", "to_lsn", "to_name"])]
    pub to_xid: Option<u64>,
    /// `postgres-cluster`: recover to this restore point (`pg_create_restore_point`).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["to", "to_lsn", "to_xid"])]
    pub to_name: Option<String>,
    /// `postgres-cluster`: the new or empty data directory to restore into.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["target", "into", "output"])]
    pub data_dir: Option<PathBuf>,
    /// `postgres-cluster`: start the restored server, wait for recovery to
    /// finish and report where it stopped.
    #[arg(long, requires = "data_dir")]
    pub start: bool,
    /// `postgres-cluster`: the port the restored server listens on with --start.
    #[arg(long, value_name = "PORT", default_value_t = 5433)]
    pub port: u16,
    /// `postgres-cluster`: what the server does at the target.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = crate::source::pgcluster::recover::Action::Promote)]
    pub target_action: crate::source::pgcluster::recover::Action,
    /// `postgres-cluster`: keep `archive_mode` as backed up; by default the
    /// restored server does not archive into the repository it came from.
    #[arg(long)]
    pub keep_archiving: bool,
    /// `postgres-cluster` with --start: seconds to wait for recovery to end.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub recovery_timeout_seconds: u64,
    /// PostgreSQL connection string of the database to restore into (created if missing).
    #[arg(long, value_name = "URL", conflicts_with_all = ["output", "into"])]
    pub target: Option<String>,
    /// Write the plaintext (custom-format dump or tar) to this new file, or
    /// with `-` to stdout (for a pipe: `--output - | pg_restore …`).
    #[arg(long, value_name = "FILE", conflicts_with = "into")]
    pub output: Option<PathBuf>,
    /// Unpack a files backup into this new or empty directory.
    #[arg(long, value_name = "DIR")]
    pub into: Option<PathBuf>,
    /// Replace a target database that is not empty.
    #[arg(long)]
    pub clean: bool,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    pub yes: bool,
    /// Print the plan (and any refusal) and stop: nothing is fetched,
    /// written or held.
    #[arg(long)]
    pub dry_run: bool,
    /// After restoring, compare the result (rows, or files) with the backup's fingerprint.
    #[arg(long)]
    pub verify: bool,
    /// Extra pg_restore arguments, e.g. --pg-restore-arg=--no-owner.
    #[arg(
        long = "pg-restore-arg",
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    pub pg_restore_args: Vec<String>,
    /// Retrieval tier when the backup is in GLACIER or DEEP_ARCHIVE
    /// (default: `[lifecycle] restore_tier`, else standard).
    #[arg(long, value_enum, value_name = "TIER")]
    pub archive_tier: Option<Tier>,
    /// When the backup is archived, wait for its retrieval (minutes to
    /// hours) and then restore, instead of asking for it and exiting with 5.
    #[arg(long)]
    pub wait: bool,
    /// Seconds between checks while waiting for a retrieval.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "DRCTL_ARCHIVE_POLL_SECONDS",
        default_value_t = 60.0
    )]
    pub archive_poll_seconds: f64,
}

enum Destination {
    Database(pg_restore::DbTarget),
    File(PathBuf),
    /// `--output -`: stdout carries the plaintext and nothing else.
    Stdout,
    Directory(PathBuf),
}

pub async fn restore(ctx: &Ctx, args: &RestoreArgs) -> Result<()> {
    let config = ctx.config()?;
    let policy = config.policy(&args.policy)?;
    if let SourceConfig::PostgresCluster { .. } = policy.source {
        return super::recover::restore_cluster(ctx, &config, policy, args).await;
    }
    if args.to_lsn.is_some()
        || args.to_xid.is_some()
        || args.to_name.is_some()
        || args.data_dir.is_some()
    {
        return Err(Error::Usage(format!(
            "--to-lsn, --to-xid, --to-name and --data-dir are for `postgres-cluster` policies; `{}` is a `{}` policy",
            policy.name,
            policy.source.kind()
        )));
    }
    let now = Utc::now();
    let mut read_as = None;
    let (spec, target_time) = match &args.to {
        Some(to) => {
            let reading =
                timespec::read_timespec_local(to, now).map_err(|reason| Error::InvalidTime {
                    input: to.clone(),
                    reason,
                })?;
            read_as = reading.local;
            let spec = reading.spec;
            let t = timespec::resolve(&spec, now).map_err(|reason| Error::InvalidTime {
                input: to.clone(),
                reason: match &read_as {
                    Some(read) => format!("{read}, and {reason}"),
                    None => reason,
                },
            })?;
            (Some(spec), Some(t))
        }
        None => (None, None),
    };
    let destination = match (&policy.source, &args.target, &args.output, &args.into) {
        (_, None, None, None) => {
            return Err(Error::Usage(match policy.source {
                SourceConfig::Postgres { .. } => "say where to restore: --target postgres://…/NEW_DB, or --output FILE for a custom-format dump".into(),
                SourceConfig::Files { .. } => "say where to restore: --into DIR (a new or empty directory), or --output FILE for the tar stream".into(),
                SourceConfig::PostgresCluster { .. } => unreachable!("cluster restores return above"),
            }));
        }
        (SourceConfig::Files { .. }, Some(_), _, _) => {
            return Err(Error::Usage(format!(
                "policy `{}` backs up files; use --into DIR",
                policy.name
            )));
        }
        (SourceConfig::Postgres { .. }, _, _, Some(_)) => {
            return Err(Error::Usage(format!(
                "policy `{}` backs up a database; use --target URL or --output FILE",
                policy.name
            )));
        }
        (_, _, Some(out), _) if out.as_os_str() == "-" => {
            if ctx.cli.json {
                return Err(Error::Usage(
                    "--json with --output -: stdout carries the backup's plaintext, and a JSON summary would be mixed into it; drop --json (the plan and summary go to stderr)".into(),
                ));
            }
            if std::io::stdout().is_terminal() {
                return Err(Error::Usage(
                    "--output - writes the backup's plaintext to stdout, which is a terminal; pipe it into a program (`drctl restore POLICY --output - | pg_restore …`) or give a file name".into(),
                ));
            }
            Destination::Stdout
        }
        (_, _, Some(out), _) => {
            job::check_new_file(out)?;
            Destination::File(out.clone())
        }
        (_, _, _, Some(dir)) => {
            job::check_empty_dir(dir)?;
            job::check_no_partial(dir)?;
            Destination::Directory(dir.clone())
        }
        (_, Some(url), _, _) => Destination::Database(pg_restore::inspect_target(url).await?),
    };
    let identities = ctx.identities(&config)?;
    let repo = ctx.repo(&config).await?;
    let catalog = catalog::load(&repo, &policy.name).await?;
    // A backup pruned on a versioned bucket, found by its id.
    let pruned: Option<catalog::DeletedBackup>;
    let (manifest, gap) = match (&args.backup, target_time) {
        (Some(id), _) => match catalog.find(&policy.name, id) {
            Ok(m) => {
                pruned = None;
                (m, None)
            }
            Err(e @ Error::NoBackup(_)) => {
                pruned = Some(find_pruned(&repo, &policy.name, id, e).await?);
                (&pruned.as_ref().expect("just set").manifest, None)
            }
            Err(e) => return Err(e),
        },
        (None, Some(t)) => {
            pruned = None;
            let s = catalog
                .select(&policy.name, t)
                .map_err(|e| match (e, &read_as) {
                    (Error::NoBackup(why), Some(read)) => {
                        Error::NoBackup(format!("{why} ({read})"))
                    }
                    (e, _) => e,
                })?;
            (s.backup, Some(s.gap))
        }
        (None, None) => unreachable!("clap requires --to or --backup"),
    };

    if args.verify {
        check_verifiable(manifest, &destination)?;
    }
    job::check_identity(&identities, manifest)?;

    // The plan, before anything is touched.
    let zone = timespec::LocalZone::from_env().unwrap_or(timespec::LocalZone::System);
    let mut plan = vec![("policy", policy.name.clone())];
    if let (Some(spec), Some(t)) = (&spec, target_time) {
        let asked = match (spec, &read_as) {
            (TimeSpec::Latest, _) => "latest".to_string(),
            (_, Some(read)) => read.clone(),
            _ => zone.beside_utc(t),
        };
        plan.push(("target time", asked));
    }
    plan.push(("backup", manifest.id.clone()));
    plan.push(("point in time", zone.beside_utc(manifest.point_in_time)));
    if target_time.is_some() && args.backup.is_none() {
        // What else the target could have reached: an operator who sees
        // the next backup is minutes after the target may pick that instead.
        let chosen = catalog.backups.iter().position(|b| b.id == manifest.id);
        let after = chosen
            .and_then(|i| i.checked_sub(1))
            .map(|i| &catalog.backups[i])
            .map_or_else(
                || "none after the target time".to_string(),
                |b| {
                    format!(
                        "{} at {} (after the target time, so not chosen)",
                        b.id,
                        zone.beside_utc(b.point_in_time)
                    )
                },
            );
        plan.push(("next backup", after));
    }
    plan.push((
        "restores",
        match policy.source {
            SourceConfig::Files { .. } => {
                "a snapshot of the files at its point in time (no replay to the target time)".to_string()
            }
            _ => "a pg_dump snapshot at its point in time, not a replay to the target time (that needs a postgres-cluster policy with WAL archiving)".to_string(),
        },
    ));
    if let Some(g) = gap {
        if matches!(spec, Some(TimeSpec::Latest)) {
            plan.push((
                "data-loss window",
                format!(
                    "changes in the last {} (since this backup) are not in it",
                    human_duration(g)
                ),
            ));
        } else {
            plan.push((
                "data-loss window",
                format!(
                    "{} before the target time; changes in between are not in this backup",
                    human_duration(g)
                ),
            ));
        }
    }
    if let Some(p) = &pruned {
        plan.push((
            "note",
            format!(
                "this backup was pruned{}; it is read from manifest version {} and the object versions it records",
                p.deleted_at
                    .map(|t| format!(" on {} UTC", t.format(timespec::SECONDS)))
                    .unwrap_or_default(),
                p.manifest_version_id
            ),
        ));
    }
    plan.push((
        "size",
        format!(
            "{} stored, {} of data",
            bytes(manifest.data.digests.size),
            bytes(manifest.data.digests.plaintext_size)
        ),
    ));
    let destructive = match &destination {
        Destination::Database(t) => {
            let state = match t.existing_objects {
                None => "does not exist; it will be created".to_string(),
                Some(0) => "exists and is empty; it will be replaced".to_string(),
                Some(n) if args.clean => {
                    format!("exists with {n} objects; --clean: IT WILL BE REPLACED")
                }
                Some(n) => format!("exists with {n} objects; refusing without --clean"),
            };
            plan.push((
                "destination",
                format!("database `{}` on {} ({state})", t.dbname, t.describe),
            ));
            plan.push((
                "method",
                "pg_restore into a scratch database, renamed into place only when complete".into(),
            ));
            true
        }
        Destination::File(p) => {
            plan.push((
                "destination",
                format!("file {} (plaintext {})", p.display(), manifest.data.content),
            ));
            false
        }
        Destination::Stdout => {
            plan.push((
                "destination",
                format!("standard output (plaintext {})", manifest.data.content),
            ));
            false
        }
        Destination::Directory(p) => {
            plan.push(("destination", format!("directory {}", p.display())));
            false
        }
    };
    if ctx.cli.json {
        errln!("{}", serde_json::to_string(&serde_json::json!({ "plan": plan.iter().map(|(k, v)| (k.replace([' ', '-'], "_"), v.clone())).collect::<std::collections::BTreeMap<_, _>>() })).expect("plan serialises"));
    } else {
        errln!("Restore plan:");
        for (k, v) in &plan {
            errln!("{}", plan_line(k, v));
        }
    }
    if let Destination::Database(t) = &destination
        && t.existing_objects.is_some_and(|n| n > 0)
        && !args.clean
    {
        return Err(Error::Refused(format!(
            "database `{}` on {} is not empty; restore into a new database, or pass --clean to replace it",
            t.dbname, t.describe
        )));
    }
    if args.dry_run {
        errln!("dry run: nothing was restored");
        return Ok(());
    }
    // An archived backup: without --wait, ask for the retrieval and stop
    // before any question is asked or anything is touched; with it, confirm
    // first so that nobody has to be there when the retrieval is done.
    let poll = std::time::Duration::try_from_secs_f64(args.archive_poll_seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::Usage(format!(
                "--archive-poll-seconds {}: expected a positive number of seconds",
                args.archive_poll_seconds
            ))
        })?;
    let thaw = job::ThawOptions {
        request: true,
        tier: args
            .archive_tier
            .or(config.lifecycle.restore_tier)
            .unwrap_or_default(),
        days: config
            .lifecycle
            .restore_days
            .unwrap_or(DEFAULT_RESTORE_DAYS),
        wait: args.wait,
        poll,
        cancel: ctx.cancel.clone(),
    };
    let mut needed = vec![&manifest.data];
    if args.verify {
        needed.extend(manifest.fingerprint.as_ref());
    }
    let quiet = ctx.cli.quiet;
    let mut report = |line: &str| {
        if !quiet {
            errln!("{line}");
        }
    };
    // Prune must not remove the backup while it is read, nor while its
    // archived objects are being retrieved (archived backups are old ones,
    // exactly what retention forgets). A pruned one is read by version id
    // and needs no hold.
    let hold = match pruned {
        Some(_) => None,
        None => crate::repo::lease::hold_backup(&repo, &policy.name, &manifest.id, "restore").await,
    };
    let result = async {
        if !args.wait {
            job::thaw(&repo, manifest, &needed, &thaw, &mut report).await?;
        }
        if destructive && !args.yes {
            confirm()?;
        }
        if args.wait {
            job::thaw(&repo, manifest, &needed, &thaw, &mut report).await?;
        }
        let progress = Progress::start_finishing(
            &format!("restore {}", policy.name),
            Some(manifest.data.digests.plaintext_size),
            ctx.progress(),
            match destination {
                Destination::Database(_) => "pg_restore is building indexes",
                Destination::Directory(_) => "writing the last files",
                Destination::File(_) | Destination::Stdout => "flushing the output",
            },
        );
        let received = crate::progress::Meter {
            bytes: progress.counter.clone(),
            cancel: ctx.cancel.clone(),
            count_plaintext: true,
        };
        let started = std::time::Instant::now();
        let diffs = restore_into(&repo, &identities, manifest, &destination, args, received).await;
        Ok::<_, Error>((diffs, progress, started))
    }
    .await;
    if let Some(hold) = hold {
        hold.release().await;
    }
    let (result, mut progress, started) = result?;
    let fingerprint_diffs = result?;
    progress.finish();

    let elapsed = started.elapsed().as_secs_f64();
    let verified = match fingerprint_diffs {
        Some(_) => "fingerprint matched",
        None => "every byte authenticated; sha256 matched",
    };
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "policy": policy.name,
            "backup": manifest.id,
            "point_in_time": manifest.point_in_time,
            "gap_seconds": gap.map(|g| g.num_seconds()),
            "seconds": elapsed,
            "verified": verified,
        }));
    } else {
        let summary = format!(
            "Restored {} backup {} ({} of data) in {elapsed:.1}s; {verified}.",
            policy.name,
            manifest.id,
            bytes(manifest.data.digests.plaintext_size)
        );
        // With `--output -` stdout is the data; a line after it would
        // become part of the dump.
        match destination {
            Destination::Stdout => errln!("{summary}"),
            _ => outln!("{summary}"),
        }
    }
    Ok(())
}

/// `--verify` promises a comparison with the backup's fingerprint; refuse
/// before anything is touched when there is nothing to compare.
fn check_verifiable(
    manifest: &crate::repo::manifest::Manifest,
    destination: &Destination,
) -> Result<()> {
    let file = match destination {
        Destination::File(p) => Some(p.display().to_string()),
        Destination::Stdout => Some("standard output".to_string()),
        _ => None,
    };
    if let Some(p) = file {
        return Err(Error::Unverifiable(format!(
            "--verify compares a restored database or directory with the backup's fingerprint, and a file written with --output ({p}) is neither; \
             nothing was restored. Drop --verify (the file's bytes are still authenticated and their sha256 checked) or restore with --target or --into"
        )));
    }
    if manifest.fingerprint.is_none() {
        return Err(Error::Unverifiable(format!(
            "backup {} of `{}` has no fingerprint (taken with `fingerprint = false`), so --verify has nothing to compare; \
             nothing was restored. Restore without --verify (every byte is still authenticated and its sha256 checked), or choose a backup that has one",
            manifest.id, manifest.policy
        )));
    }
    Ok(())
}

async fn restore_into(
    repo: &crate::repo::Repo,
    identities: &[age::x25519::Identity],
    manifest: &crate::repo::manifest::Manifest,
    destination: &Destination,
    args: &RestoreArgs,
    received: crate::progress::Meter,
) -> Result<Option<Vec<String>>> {
    let mut fingerprint_diffs = None;
    match destination {
        Destination::Database(t) => {
            fingerprint_diffs = pg_restore::to_database(
                repo,
                identities,
                manifest,
                t,
                &pg_restore::DbRestoreOptions {
                    clean: args.clean,
                    verify: args.verify,
                    scope: Default::default(),
                    pg_restore_args: args.pg_restore_args.clone(),
                },
                received,
            )
            .await?
            .diffs;
        }
        Destination::File(p) => job::to_file(repo, identities, &manifest.data, p, received).await?,
        Destination::Stdout => job::to_stdout(repo, identities, &manifest.data, received).await?,
        Destination::Directory(p) => {
            fingerprint_diffs = crate::source::files::to_directory(
                repo,
                identities,
                manifest,
                p,
                args.verify,
                received,
            )
            .await?
        }
    }
    Ok(fingerprint_diffs)
}

/// Looks for `id` among the backups pruned on a versioned bucket, or gives
/// back `not_found`.
async fn find_pruned(
    repo: &crate::repo::Repo,
    policy: &str,
    id: &str,
    not_found: Error,
) -> Result<catalog::DeletedBackup> {
    let deleted = match catalog::load_deleted(repo, policy).await {
        Ok(deleted) => {
            for (_, reason) in &deleted.untrusted {
                errln!("warning: {reason}");
            }
            deleted.backups
        }
        Err(e) => {
            tracing::debug!(error = %e, "Could not list object versions to look for a pruned backup.");
            return Err(not_found);
        }
    };
    let mut matches: Vec<catalog::DeletedBackup> = deleted
        .into_iter()
        .filter(|d| d.manifest.id.starts_with(id))
        .collect();
    match matches.len() {
        0 => Err(not_found),
        1 => {
            let d = matches.remove(0);
            if d.missing.is_empty() {
                Ok(d)
            } else {
                Err(Error::NoBackup(format!(
                    "backup {} of `{policy}` was pruned and the bucket no longer has the versions of {} (the lifecycle rule expired them); it cannot be restored",
                    d.manifest.id,
                    d.missing.join(", ")
                )))
            }
        }
        n => Err(Error::NoBackup(format!(
            "`{id}` matches {n} pruned backups of `{policy}`; give more of the id (`drctl list --deleted {policy}` shows them)"
        ))),
    }
}

/// Terminals and on-call laptops are often 80 columns wide.
const PLAN_WIDTH: usize = 80;

/// One line of a plan, `  key               value`, with a long value
/// wrapped at word boundaries under itself so that every line fits
/// [`PLAN_WIDTH`] (a single word longer than that, a path, stays whole).
pub(super) fn plan_line(key: &str, value: &str) -> String {
    let indent = 20;
    let mut out = format!("  {key:<17} ");
    let mut width = out.chars().count();
    let mut first = true;
    for word in value.split(' ') {
        let len = word.chars().count();
        if !first && width + 1 + len > PLAN_WIDTH {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            width = indent;
        } else if !first {
            out.push(' ');
            width += 1;
        }
        out.push_str(word);
        width += len;
        first = false;
    }
    out
}

fn confirm() -> Result<()> {
    ask("restoring into a database")
}

/// Asks on the terminal; without one, refuses and names `--yes`.
pub(super) fn ask(what: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Refused(format!(
            "{what} needs confirmation; pass --yes when running without a terminal"
        )));
    }
    errp!("Proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the answer", e))?;
    if matches!(line.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(())
    } else {
        Err(Error::Refused("not confirmed; nothing was changed".into()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plan_lines_fit_80_columns_and_wrap_under_the_value() {
        let line = super::plan_line(
            "next backup",
            "20261201T002939Z-900fc6ec at 2026-12-01 00:29:39 UTC (2026-11-30 19:29:39 America/New_York) (after the target time, so not chosen)",
        );
        assert!(line.lines().all(|l| l.chars().count() <= 80), "{line}");
        assert!(
            line.starts_with("  next backup       20261201T002939Z-900fc6ec at"),
            "{line}"
        );
        assert!(
            line.lines().skip(1).all(|l| l.starts_with(&" ".repeat(20))),
            "{line}"
        );
        assert_eq!(super::plan_line("policy", "etc"), "  policy            etc");
    }
}
