//! Drills of `postgres-cluster` policies: point-in-time recovery into a
//! fresh directory under `[drill] scratch_dir`, with the same choice of
//! base backup and the same WAL check as `drctl restore`, a throwaway
//! server that replays the archive, and checks of what it recovered: the
//! base backup's files against `backup_manifest`, `bt_index_check` on every
//! btree index, and the policy's SQL checks.
//!
//! The throwaway server listens on a Unix socket inside its own 0700 data
//! directory only, trusts that socket (only its owner can reach it), runs
//! no logical replication workers and does not archive: nothing outside
//! the drill sees it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::record::{self, DrillRecord};
use super::{Choice, DrillOptions, step};
use crate::config::{Drill, Policy, SourceConfig};
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::repo::manifest::Manifest;
use crate::source::pgcluster::check;
use crate::source::pgcluster::recover::{self, Action, Settings, Start, Target};

/// The longest path of a Unix socket PostgreSQL accepts (sun_path less the
/// terminating NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// How long the throwaway server may take to replay before the drill gives
/// up and fails: generous, since replaying a week of WAL takes hours, but
/// bounded so a stuck server cannot hold the policy's drill lease forever.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The directory a drill restores into: `<scratch_dir>/<policy>-<drill id>`.
pub fn scratch_path(scratch_dir: &Path, policy: &str, drill_id: &str) -> PathBuf {
    scratch_dir.join(format!("{policy}-{drill_id}"))
}

/// Whether a directory name is what [`scratch_path`] makes for `policy`
/// (and not for another policy whose name starts the same way).
fn is_scratch_name(policy: &str, name: &str) -> bool {
    name.strip_prefix(policy)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(is_record_id)
}

/// `20261127T030000123Z-5c1e9a07`, as [`super::record_id`] makes them.
fn is_record_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 28
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..18].iter().all(u8::is_ascii_digit)
        && b[18] == b'Z'
        && b[19] == b'-'
        && b[20..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// When the newest segment of the archive was stored, per timeline's
/// newest segment (what `drctl wal status` reports as the lag's start).
pub fn newest_archived_at(inventory: &recover::Inventory) -> Option<DateTime<Utc>> {
    let mut newest: std::collections::BTreeMap<u32, Option<DateTime<Utc>>> = Default::default();
    for (segment, meta) in &inventory.segments {
        newest.insert(segment.timeline, meta.last_modified);
    }
    newest.into_values().flatten().max()
}

/// A time in the recoverable window: after the oldest base backup is
/// consistent and before the newest archived segment was stored; `r` in
/// `[0, 1)` says where. `None` when the window is empty.
pub fn time_in_window(
    backups: &[Manifest],
    newest_archived: Option<DateTime<Utc>>,
    r: f64,
) -> Option<DateTime<Utc>> {
    let from = backups
        .iter()
        .filter_map(|m| m.cluster.as_ref().map(|c| c.end_time))
        .min()?;
    let until = newest_archived?;
    let span = (until - from).num_milliseconds();
    (span > 0).then(|| from + chrono::Duration::milliseconds((span as f64 * r) as i64))
}

/// A cluster drill's recovery in one line, for the drill's output and the
/// report: the target and where replay stopped.
pub fn describe_recovery(r: &record::Recovery) -> String {
    let fmt = |t: DateTime<Utc>| format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"));
    let target = match (r.target.as_str(), r.target_time) {
        ("time", Some(t)) => format!("to {}", fmt(t)),
        ("latest", _) => "to latest (the end of the archive)".to_string(),
        (other, _) => format!("to {other}"),
    };
    match (&r.stopped_at_lsn, r.last_transaction_at) {
        (Some(lsn), Some(t)) => {
            format!(
                "{target}: stopped at LSN {lsn}, last transaction {}",
                fmt(t)
            )
        }
        (Some(lsn), None) => format!("{target}: stopped at LSN {lsn}, no transaction replayed"),
        (None, _) => format!("{target}: did not finish"),
    }
}

/// The OS user drctl runs as, for messages.
fn os_user() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid returns null or a
    // pointer to static storage, read at once.
    unsafe {
        let uid = libc::geteuid();
        let entry = libc::getpwuid(uid);
        if entry.is_null() {
            return format!("uid {uid}");
        }
        let name = std::ffi::CStr::from_ptr((*entry).pw_name).to_string_lossy();
        format!("`{name}` (uid {uid})")
    }
}

/// The PostgreSQL programs for a data directory: the policy's `bin_dir`,
/// else those of the version in its `PG_VERSION`.
fn bin_dir_for(configured: Option<&Path>, data_dir: &Path) -> Option<PathBuf> {
    let major = std::fs::read_to_string(data_dir.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(15);
    crate::source::postgres::bin_dir(configured, major)
}

/// Stops the servers and removes the directories that earlier drills of
/// `policy` left in `scratch_dir` (killed, or kept with `--keep`). The
/// policy's drill lease is held, so none of them is still running a drill.
async fn clear_leftovers(
    policy: &Policy,
    configured_bin: Option<&Path>,
    scratch_dir: &Path,
) -> Result<()> {
    let entries = match std::fs::read_dir(scratch_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::io(
                format!("reading [drill] scratch_dir {}", scratch_dir.display()),
                e,
            ));
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_scratch_name(&policy.name, &name) {
            continue;
        }
        let path = entry.path();
        tracing::warn!(event = "drill_leftover_removed", policy = %policy.name, dir = %path.display(), "Stopping and removing the scratch server an earlier drill left (killed, or kept with --keep).");
        let bin = bin_dir_for(configured_bin, &path);
        recover::stop_immediate(&policy.name, bin.as_deref(), &path).await?;
        std::fs::remove_dir_all(&path).map_err(|e| {
            Error::io(
                format!("removing {} (left by an earlier drill)", path.display()),
                e,
            )
        })?;
    }
    Ok(())
}

/// Creates the drill's own directory (0700), refusing clearly when the
/// user who will run the server cannot.
fn create_scratch(scratch_dir: &Path, dir: &Path) -> Result<()> {
    let refuse = |e: std::io::Error| {
        Error::Refused(format!(
            "[drill] scratch_dir {}: cannot create the drill's data directory {} as {}, who runs the scratch server: {e}. \
             Make scratch_dir writable by that user (e.g. `chown postgres: {}`) or choose another",
            scratch_dir.display(),
            dir.display(),
            os_user(),
            scratch_dir.display()
        ))
    };
    std::fs::create_dir_all(scratch_dir).map_err(refuse)?;
    std::fs::create_dir(dir).map_err(refuse)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))
}

/// Runs a cluster drill into `record`; the caller appends the record.
pub(super) async fn run(
    repo: &Repo,
    policy: &Policy,
    drill: &Drill,
    opts: &DrillOptions,
    record: &mut DrillRecord,
    clock: Instant,
    hold: &mut Option<crate::repo::lease::Lease>,
) -> Result<()> {
    let SourceConfig::PostgresCluster { bin_dir, .. } = &policy.source else {
        unreachable!("called for postgres-cluster policies");
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Err(Error::Refused(format!(
            "PostgreSQL refuses to run as root, and a cluster drill starts a server: run the drill (or the daemon) \
             as the user the scratch server should run as, e.g. `sudo -u postgres drctl drill {}`",
            policy.name
        )));
    }
    let scratch_dir = drill.scratch_dir.as_deref().ok_or_else(|| {
        Error::Refused(
            "[drill] has no scratch_dir (a directory where the cluster is restored and its throwaway server runs)"
                .into(),
        )
    })?;
    // The server resolves relative paths (its socket directory, hba_file)
    // from its data directory, not from where drctl runs.
    let scratch_dir = &std::path::absolute(scratch_dir).map_err(|e| {
        Error::io(
            format!("finding [drill] scratch_dir {}", scratch_dir.display()),
            e,
        )
    })?;
    let dir = scratch_path(scratch_dir, &policy.name, &record.id);
    let socket = dir.join(".s.PGSQL.65535");
    if socket.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        return Err(Error::Refused(format!(
            "[drill] scratch_dir {} is too long: the scratch server's socket {} would pass the {MAX_SOCKET_PATH_BYTES}-byte \
             limit of Unix socket paths; choose a shorter scratch_dir",
            scratch_dir.display(),
            socket.display()
        )));
    }
    let t = Instant::now();
    clear_leftovers(policy, bin_dir.as_deref(), scratch_dir).await?;
    create_scratch(scratch_dir, &dir)?;
    step(record, "prepare scratch directory", t, true);

    let identities = crate::pipeline::crypto::read_identities(opts.identity_file.as_deref())?;
    let mut server = None;
    let result = recover_and_check(
        repo,
        policy,
        drill,
        opts,
        record,
        clock,
        hold,
        &identities,
        &dir,
        &mut server,
    )
    .await;
    if opts.keep {
        if let Some((port, user)) = &server {
            tracing::warn!(event = "drill_server_kept", policy = %policy.name, dir = %dir.display(), port, user = %user,
                "Kept the drill's scratch server running (--keep): connect with `psql -h DIR -p PORT -U USER`; the policy's next drill stops it and removes the directory.");
        }
        return result;
    }
    let t = Instant::now();
    let bin = bin_dir_for(bin_dir.as_deref(), &dir);
    let cleaned = async {
        recover::stop_immediate(&policy.name, bin.as_deref(), &dir).await?;
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Error::io(format!("removing {}", dir.display()), e))
    }
    .await;
    step(
        record,
        "stop server, remove scratch directory",
        t,
        cleaned.is_ok(),
    );
    match (result, cleaned) {
        (Ok(()), Err(e)) => Err(e),
        (Err(e), Err(c)) => {
            tracing::error!(event = "drill_cleanup_failed", policy = %policy.name, dir = %dir.display(), error = %c, "The failed drill's scratch server or directory could not be cleaned up; the next drill tries again.");
            Err(e)
        }
        (result, Ok(())) => result,
    }
}

#[allow(clippy::too_many_arguments)]
async fn recover_and_check(
    repo: &Repo,
    policy: &Policy,
    drill: &Drill,
    opts: &DrillOptions,
    record: &mut DrillRecord,
    clock: Instant,
    hold: &mut Option<crate::repo::lease::Lease>,
    identities: &[age::x25519::Identity],
    dir: &Path,
    server: &mut Option<(u16, String)>,
) -> Result<()> {
    let SourceConfig::PostgresCluster { url, bin_dir, .. } = &policy.source else {
        unreachable!("called for postgres-cluster policies");
    };
    let name = policy.name.as_str();

    // Choose as `drctl restore` does, and check the WAL before writing.
    let t = Instant::now();
    let catalog = crate::repo::catalog::load(repo, name).await?;
    let segment_bytes = crate::wal::check::segment_bytes(&catalog.backups);
    let inventory = crate::wal::check::inventory(repo, name, segment_bytes).await?;
    let histories = crate::wal::check::histories(repo, identities, name, &inventory).await?;
    let marks = crate::wal::marks::load(repo, name).await?;
    let archive = recover::Archive {
        inventory: &inventory,
        histories: &histories,
        marks: &marks,
    };
    let newest_at = newest_archived_at(&inventory);
    // RPO: what a disaster now would lose, the commits after the newest
    // archived segment.
    record.rpo.measured_seconds =
        newest_at.map(|at| ((record.started_at - at).num_milliseconds().max(0)) as f64 / 1000.0);
    let target = match &opts.choice {
        Choice::Random => time_in_window(&catalog.backups, newest_at, rand::random::<f64>())
            .map_or(Target::Latest, Target::Time),
        Choice::Newest | Choice::Id(_) => Target::Latest,
    };
    record.recovery = Some(record::Recovery {
        target: match target {
            Target::Time(_) => "time".into(),
            _ => "latest".into(),
        },
        target_time: match target {
            Target::Time(t) => Some(t),
            _ => None,
        },
        newest_archived_at: newest_at,
        ..record::Recovery::default()
    });
    let chosen = match &opts.choice {
        Choice::Id(id) => catalog.find(name, id).and_then(|m| {
            if m.cluster.is_some() {
                Ok(m)
            } else {
                Err(Error::Integrity {
                    object: crate::repo::manifest_key(name, &m.id),
                    reason: "a backup of a postgres-cluster policy without its cluster details"
                        .into(),
                })
            }
        }),
        _ => recover::choose(name, &catalog.backups, &target, &archive),
    };
    let manifest = match chosen {
        Ok(m) => m,
        Err(e) => {
            step(record, "choose base backup", t, false);
            return Err(e);
        }
    };
    record.backup_id = Some(manifest.id.clone());
    record.backup_point_in_time = Some(manifest.point_in_time);
    // Holding the base backup keeps it, and so the WAL from its start,
    // from prune while the drill reads them.
    *hold = crate::repo::lease::hold_backup(repo, name, &manifest.id, "drill").await;
    let info = manifest.cluster.clone().expect("checked above");
    let wal = match recover::check_wal(name, manifest, &archive, &target) {
        Ok(w) => w,
        Err(e) => {
            step(record, "choose base backup, check WAL archived", t, false);
            return Err(e);
        }
    };
    if let Some(r) = record.recovery.as_mut() {
        r.wal_first = Some(wal.first.clone());
        r.wal_last = Some(wal.last.clone());
        r.wal_segments = wal.segments;
    }
    step(record, "choose base backup, check WAL archived", t, true);

    let t = Instant::now();
    if let Err(e) = crate::restore::thaw(
        repo,
        manifest,
        &[&manifest.data],
        &crate::restore::ThawOptions::check_only(),
        &mut |_| {},
    )
    .await
    {
        step(record, "check storage class", t, false);
        return Err(e);
    }
    let into = dir.to_path_buf();
    let unpacked = crate::sealed::stream_object(
        repo,
        identities,
        &manifest.data,
        opts.meter.clone(),
        move |r| recover::unpack(r, &into),
    )
    .await;
    step(
        record,
        "fetch, decrypt, decompress and unpack",
        t,
        unpacked.is_ok(),
    );
    unpacked.map_err(|e| match e {
        Error::Integrity { object, reason } if object.is_empty() => Error::Integrity {
            object: format!("{}/{}", repo.store.location(), manifest.data.key),
            reason,
        },
        other => other,
    })?;

    // Before anything writes into the directory: the manifest lists
    // postgresql.auto.conf, and a started server changes files.
    let t = Instant::now();
    let bin = crate::source::postgres::bin_dir(bin_dir.as_deref(), info.server_version_num / 10000);
    let verified = {
        let (policy, bin, dir, recorded) = (
            name.to_string(),
            bin.clone(),
            dir.to_path_buf(),
            info.backup_manifest_checksum.clone(),
        );
        tokio::task::spawn_blocking(move || {
            check::verify_backup(&policy, bin.as_deref(), &dir, recorded.as_deref())
        })
        .await
        .expect("pg_verifybackup thread")?
    };
    step(record, "pg_verifybackup", t, verified.ok);
    record.checks.push(record::Check {
        name: "backup_manifest".into(),
        ok: verified.ok,
        detail: verified.detail,
    });

    let t = Instant::now();
    let settings = Settings {
        restore_command: recover::wal_fetch_command(
            &opts.config_path,
            opts.identity_file.as_deref(),
            repo.copy_name.as_deref(),
            name,
        )?,
        target: target.clone(),
        action: Action::Promote,
        keep_archiving: false,
    };
    recover::configure(dir, &settings, &manifest.id)?;
    let hba = dir.join("drctl-drill-hba.conf");
    // Only the socket in the 0700 data directory is open, so only its
    // owner can connect: trust is as safe as the directory.
    std::fs::write(&hba, "local all all trust\n")
        .map_err(|e| Error::io(format!("writing {}", hba.display()), e))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free port for the scratch server", e))?;
    let source = crate::source::postgres::resolve(url)?;
    let login = source.get_user().unwrap_or("postgres").to_string();
    let home_db = source.get_dbname().unwrap_or("postgres").to_string();
    let start = Start {
        bin_dir: bin.clone(),
        port,
        user: &login,
        password: None,
        action: Action::Promote,
        timeout: RECOVERY_TIMEOUT,
        settings: vec![
            "listen_addresses=".into(),
            format!("hba_file={}", hba.display()),
            // A restored subscription must not pull from the live publisher.
            "max_logical_replication_workers=0".into(),
        ],
        // Ctrl-C, or the daemon's shutdown: the drill fails and its
        // server is stopped and removed like any failed drill's.
        cancel: Some(opts.meter.cancel.clone()),
    };
    *server = Some((port, login.clone()));
    let mut stopped = recover::start_and_watch(name, dir, &start).await;
    if let (Target::Time(_), Err(Error::Source { message, .. })) = (&target, &stopped)
        && message.contains("before configured recovery target was reached")
    {
        // No commit after the random time was archived: the end of the
        // archive is that point, and replaying it all is the honest drill.
        tracing::info!(event = "drill_step", policy = %name, "No commit after the drill's target time is archived; replaying to the end of the archive.");
        recover::clear_time_target(dir)?;
        stopped = recover::start_and_watch(name, dir, &start).await;
    }
    step(record, "start server and replay WAL", t, stopped.is_ok());
    let stopped = stopped?;
    let reached = match (&target, stopped.last_transaction_at) {
        (Target::Time(at), Some(last)) => last <= *at,
        _ => true,
    };
    if let Some(r) = record.recovery.as_mut() {
        r.stopped_at_lsn = stopped.replay_lsn.clone();
        r.last_transaction_at = stopped.last_transaction_at;
        r.stop_line = stopped
            .stop_line
            .clone()
            .or(stopped.last_completed_line.clone());
    }
    record.checks.push(record::Check {
        name: "recovery".into(),
        ok: stopped.promoted && reached,
        detail: format!(
            "replayed {} to {}{}; stopped at LSN {}, last transaction replayed at {}",
            recover::segment_count_text(&wal),
            target.describe(),
            if reached {
                ""
            } else {
                " but replayed a transaction after it"
            },
            stopped.replay_lsn.as_deref().unwrap_or("?"),
            stopped
                .last_transaction_at
                .map(|t| format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S%.3f")))
                .unwrap_or_else(|| "(none replayed)".into())
        ),
    });

    // The checks run as the bootstrap superuser: amcheck needs it, and the
    // server is a throwaway only its owner can reach.
    let connect = |user: String, db: String| {
        let mut c = tokio_postgres::Config::new();
        c.host_path(dir)
            .port(port)
            .user(&user)
            .dbname(&db)
            .connect_timeout(Duration::from_secs(10));
        async move { crate::source::postgres::connect(&c).await }
    };
    let t = Instant::now();
    let superuser = async {
        let client = connect(login.clone(), home_db.clone()).await?;
        let row = client
            .query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
            .await
            .map_err(|e| Error::Database {
                target: format!("the drill's scratch server in {}", dir.display()),
                message: crate::source::postgres::error_text(&e),
            })?;
        Ok::<String, Error>(row.get(0))
    }
    .await?;
    let amcheck = check::amcheck(&home_db, |db| connect(superuser.clone(), db)).await;
    let (ok, detail) = match amcheck {
        Ok(f) => (f.ok, f.detail),
        Err(e) => (false, e.to_string()),
    };
    step(record, "amcheck (bt_index_check)", t, ok);
    record.checks.push(record::Check {
        name: "amcheck".into(),
        ok,
        detail,
    });

    let t = Instant::now();
    let checks = super::run_checks_on(
        connect(superuser.clone(), home_db.clone()).await,
        &drill.checks,
    )
    .await;
    if !checks.is_empty() {
        let all_ok = checks.iter().all(|c| c.ok);
        record.checks.extend(checks);
        step(record, "checks", t, all_ok);
    }
    record.rto.measured_seconds = Some(clock.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_directories_are_told_apart_by_policy() {
        let id = super::super::record_id(Utc::now());
        let dir = scratch_path(Path::new("/s"), "orders", &id);
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert!(is_scratch_name("orders", name), "{name}");
        assert!(!is_scratch_name("orders-db", name));
        let other = format!("orders-db-{id}");
        assert!(!is_scratch_name("orders", &other));
        assert!(is_scratch_name("orders-db", &other));
        assert!(!is_scratch_name("orders", "orders-notes"));
    }

    #[test]
    fn a_random_time_falls_in_the_recoverable_window() {
        let backups: Vec<Manifest> = Vec::new();
        assert_eq!(time_in_window(&backups, Some(Utc::now()), 0.5), None);
    }
}
