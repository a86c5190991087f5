//! `restore` of a `postgres-cluster` policy: point-in-time recovery into a
//! data directory. The plan (base backup, WAL range, destination, the
//! settings written) is printed before anything is written, and the WAL is
//! checked complete first, so a gap is a refusal rather than a FATAL line
//! in a server log.

use chrono::Utc;

use super::Ctx;
use super::restore::RestoreArgs;
use crate::config::{Config, Policy, SourceConfig};
use crate::error::{Error, Result};
use crate::progress::{Meter, Progress, bytes};
use crate::repo::catalog;
use crate::source::pgcluster::recover::{self, Settings, Start, Target};
use crate::timespec::{self, TimeSpec};

/// Reads the target from the flags; `--backup ID` alone is its consistent
/// point. A local `--to` also says how it was read, for the plan.
fn target(args: &RestoreArgs) -> Result<(Option<Target>, Option<String>)> {
    if let Some(to) = &args.to {
        let reading =
            timespec::read_timespec_local(to, Utc::now()).map_err(|reason| Error::InvalidTime {
                input: to.clone(),
                reason,
            })?;
        let target = match reading.spec {
            TimeSpec::Latest => Target::Latest,
            spec => Target::Time(timespec::resolve(&spec, Utc::now()).map_err(|reason| {
                Error::InvalidTime {
                    input: to.clone(),
                    reason: match &reading.local {
                        Some(read) => format!("{read}, and {reason}"),
                        None => reason,
                    },
                }
            })?),
        };
        return Ok((Some(target), reading.local));
    }
    Ok((target_other(args)?, None))
}

/// The targets that are not times.
fn target_other(args: &RestoreArgs) -> Result<Option<Target>> {
    if let Some(lsn) = &args.to_lsn {
        return Ok(Some(Target::Lsn(
            lsn.parse()
                .map_err(|reason| Error::Usage(format!("--to-lsn: {reason}")))?,
        )));
    }
    if let Some(xid) = args.to_xid {
        return Ok(Some(Target::Xid(xid)));
    }
    if let Some(name) = &args.to_name {
        if name.is_empty() || name.len() > 63 {
            return Err(Error::Usage(
                "--to-name: a restore point name has 1 to 63 characters".into(),
            ));
        }
        return Ok(Some(Target::Name(name.clone())));
    }
    Ok(None)
}

pub async fn restore_cluster(
    ctx: &Ctx,
    config: &Config,
    policy: &Policy,
    args: &RestoreArgs,
) -> Result<()> {
    let SourceConfig::PostgresCluster { url, bin_dir, .. } = &policy.source else {
        unreachable!("called for cluster policies");
    };
    if args.target.is_some() || args.into.is_some() {
        return Err(Error::Usage(format!(
            "policy `{}` backs up a whole cluster; restore it with --data-dir DIR (a new or empty data directory)",
            policy.name
        )));
    }
    let Some(data_dir) = &args.data_dir else {
        return Err(Error::Usage(format!(
            "say where to restore: --data-dir DIR (a new or empty directory) for policy `{}`",
            policy.name
        )));
    };
    if args.verify {
        return Err(Error::Unverifiable(
            "--verify compares rows with a logical backup's fingerprint, and a base backup has none; \
             nothing was restored. `drctl drill` checks a restored cluster"
                .into(),
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if args.start && unsafe { libc::geteuid() } == 0 {
        return Err(Error::Usage(
            "PostgreSQL refuses to run as root: run the restore as the server's user \
             (e.g. `sudo -u postgres drctl restore …`) so the data directory is theirs"
                .into(),
        ));
    }
    let (wanted, read_as) = target(args)?;
    crate::restore::check_empty_dir(data_dir)?;
    let identities = ctx.identities(config)?;
    let repo = ctx.repo(config).await?;
    let catalog = catalog::load(&repo, &policy.name).await?;
    let segment_bytes = crate::wal::check::segment_bytes(&catalog.backups);
    let inventory = crate::wal::check::inventory(&repo, &policy.name, segment_bytes).await?;
    let histories =
        crate::wal::check::histories(&repo, &identities, &policy.name, &inventory).await?;
    let marks = crate::wal::marks::load(&repo, &policy.name).await?;
    let archive = recover::Archive {
        inventory: &inventory,
        histories: &histories,
        marks: &marks,
    };
    let (manifest, target) = match (&args.backup, wanted) {
        (Some(id), _) => (catalog.find(&policy.name, id)?, Target::Immediate),
        (None, Some(t)) => (
            recover::choose(&policy.name, &catalog.backups, &t, &archive)?,
            t,
        ),
        (None, None) => unreachable!("clap requires a target or --backup"),
    };
    // Unlike a dump, a base backup only sets where replay starts: the
    // archived WAL decides what is recovered. An untrusted manifest newer
    // than the chosen one costs replay time, not data, so it is named and
    // passed over; refusing would let anyone who can write to the bucket
    // block every point-in-time recovery.
    if args.backup.is_none()
        && let Err(e) = catalog.refuse_untrusted_newer(&manifest.id)
    {
        errln!(
            "warning: security: {e}; recovering from the newest trusted base backup {} instead \
             (replay starts earlier; the target is the same)",
            manifest.id
        );
    }
    crate::restore::check_identity(&identities, manifest)?;
    let info = manifest.cluster.as_ref().ok_or_else(|| Error::Integrity {
        object: crate::repo::manifest_key(&policy.name, &manifest.id),
        reason: "a backup of a postgres-cluster policy without its cluster details".into(),
    })?;
    let wal = recover::check_wal(&policy.name, manifest, &archive, &target)?;
    let mark = match &target {
        Target::Name(n) => archive.mark_after(n, info.end_lsn),
        _ => None,
    };

    let restore_command = recover::wal_fetch_command(
        &crate::config::Config::resolve_path(ctx.cli.config.as_deref()),
        ctx.cli
            .identity
            .as_deref()
            .or(config.identity_file.as_deref()),
        repo.copy_name.as_deref(),
        &policy.name,
    )?;
    let settings = Settings {
        restore_command,
        target: target.clone(),
        action: args.target_action,
        keep_archiving: args.keep_archiving,
    };

    let fmt_time = |t: chrono::DateTime<Utc>| format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"));
    let mut plan: Vec<(&str, String)> = vec![
        ("policy", policy.name.clone()),
        ("target", target.describe()),
        ("target time", read_as.unwrap_or_default()),
        (
            "base backup",
            format!(
                "{} (consistent at {}, {}; timeline {})",
                manifest.id,
                info.end_lsn,
                fmt_time(info.end_time),
                info.timeline
            ),
        ),
        ("WAL to replay", recover::segment_count_text(&wal)),
        ("timelines", wal.path.describe()),
    ];
    plan.retain(|(_, v)| !v.is_empty());
    if let Target::Name(n) = &target {
        plan.push((
            "restore point",
            match mark {
                Some(m) => format!(
                    "`{n}` marked at {} on timeline {} (LSN {}, in {})",
                    fmt_time(m.time),
                    m.timeline,
                    m.lsn,
                    m.wal_file
                ),
                None => format!(
                    "`{n}` has no `drctl mark` record after this base backup; replay stops at the first \
                     restore point of that name, and fails at the end of the archive if there is none"
                ),
            },
        ));
    }
    if let Some(t) = wal.archived_until {
        plan.push((
            "data-loss window",
            match &target {
                Target::Time(_) => {
                    "none before the target: replay stops at the first commit after it".into()
                }
                _ => format!(
                    "commits after {} (the last archived segment) are not in the archive",
                    fmt_time(t)
                ),
            },
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
    plan.push((
        "destination",
        format!(
            "data directory {} (new or empty; mode 0700)",
            data_dir.display()
        ),
    ));
    plan.push(("restore_command", settings.restore_command.clone()));
    plan.push((
        "then",
        if args.start {
            format!(
                "start the server on port {} and wait for recovery ({} at the target){}",
                args.port,
                match args.target_action {
                    recover::Action::Promote => "promote",
                    recover::Action::Pause => "pause",
                    recover::Action::Shutdown => "shut down",
                },
                if args.keep_archiving {
                    ""
                } else {
                    "; archive_mode off"
                }
            )
        } else {
            format!(
                "start it yourself (pg_ctl -D {} start); recovery.signal is written{}",
                data_dir.display(),
                if args.keep_archiving {
                    ""
                } else {
                    "; archive_mode off"
                }
            )
        },
    ));
    if ctx.cli.json {
        errln!(
            "{}",
            serde_json::json!({ "plan": plan.iter().map(|(k, v)| (k.replace([' ', '-'], "_"), v.clone())).collect::<std::collections::BTreeMap<_, _>>() })
        );
    } else {
        errln!("Restore plan:");
        for (k, v) in &plan {
            errln!("{}", super::restore::plan_line(k, v));
        }
    }
    if args.dry_run {
        errln!(
            "dry run: nothing was restored; {} was not touched",
            data_dir.display()
        );
        return Ok(());
    }

    let objects = vec![&manifest.data];
    let thaw = crate::restore::ThawOptions {
        request: true,
        wait: args.wait,
        cancel: ctx.cancel.clone(),
        ..crate::restore::ThawOptions::check_only()
    };
    let hold = crate::repo::lease::hold_backup(&repo, &policy.name, &manifest.id, "restore").await;
    let result = async {
        crate::restore::thaw(&repo, manifest, &objects, &thaw, &mut |line| {
            errln!("{line}")
        })
        .await?;
        recover::prepare_data_dir(data_dir)?;
        let progress = Progress::start(
            &format!("restore {}", policy.name),
            Some(manifest.data.digests.plaintext_size),
            ctx.progress(),
        );
        let started = std::time::Instant::now();
        let dir = data_dir.clone();
        let unpacked = crate::sealed::stream_object(
            &repo,
            &identities,
            &manifest.data,
            Meter {
                bytes: progress.counter.clone(),
                cancel: ctx.cancel.clone(),
                count_plaintext: true,
            },
            move |r| recover::unpack(r, &dir),
        )
        .await;
        let mut progress = progress;
        progress.finish();
        if let Err(e) = unpacked {
            // Nothing half-restored is left to be started by mistake.
            let _ = std::fs::remove_dir_all(data_dir);
            return Err(match e {
                Error::Integrity { object, reason } if object.is_empty() => Error::Integrity {
                    object: format!("{}/{}", repo.store.location(), manifest.data.key),
                    reason,
                },
                other => other,
            });
        }
        recover::configure(data_dir, &settings, &manifest.id)?;
        let restore_seconds = started.elapsed().as_secs_f64();
        let stopped = if args.start {
            let pg = crate::source::postgres::resolve(url)?;
            let start = Start {
                bin_dir: crate::source::postgres::bin_dir(
                    bin_dir.as_deref(),
                    info.server_version_num / 10000,
                ),
                port: args.port,
                user: pg.get_user().unwrap_or("postgres"),
                password: pg.get_password().map(<[u8]>::to_vec),
                action: args.target_action,
                timeout: std::time::Duration::from_secs(args.recovery_timeout_seconds),
                settings: Vec::new(),
                cancel: None,
            };
            Some(recover::start_and_watch(&policy.name, data_dir, &start).await?)
        } else {
            None
        };
        Ok((restore_seconds, stopped, started.elapsed().as_secs_f64()))
    }
    .await;
    if let Some(hold) = hold {
        hold.release().await;
    }
    let (restore_seconds, stopped, total_seconds) = result?;
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "policy": policy.name,
            "backup": manifest.id,
            "target": target.describe(),
            "data_dir": data_dir,
            "wal_first": wal.first,
            "wal_last": wal.last,
            "wal_segments": wal.segments,
            "timelines": wal.path.legs.iter().map(|l| l.0).collect::<Vec<_>>(),
            "restore_point": mark,
            "restore_seconds": restore_seconds,
            "total_seconds": total_seconds,
            "stopped": stopped,
        }));
    } else {
        outln!(
            "Restored base backup {} of {} into {} in {restore_seconds:.1}s.",
            manifest.id,
            policy.name,
            data_dir.display()
        );
        match &stopped {
            Some(s) => {
                outln!(
                    "Recovery {} after {total_seconds:.1}s; last transaction replayed at {}.",
                    if s.promoted {
                        "ended (promoted)"
                    } else {
                        "stopped"
                    },
                    s.last_transaction_at
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                        .unwrap_or_else(|| "(none replayed)".into())
                );
                for line in s.stop_line.iter().chain(&s.last_completed_line) {
                    outln!("  server: {line}");
                }
            }
            None => outln!(
                "Start it with `pg_ctl -D {} start`; it replays WAL with `drctl wal-fetch` to {}.",
                data_dir.display(),
                target.describe()
            ),
        }
    }
    Ok(())
}
