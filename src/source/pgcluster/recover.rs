//! Recovery of a `postgres-cluster` policy to a point: choose the base
//! backup, check that the archive holds every WAL segment replay will ask
//! for (before anything is written), unpack the base backup into an empty
//! data directory, write the recovery settings with `drctl wal-fetch` as
//! the `restore_command`, and optionally start the server, wait for
//! recovery to end and read where it really stopped.
//!
//! Choosing and checking are pure functions over the catalog and a listing
//! of the archive; only [`unpack`], [`configure`] and [`start_and_watch`]
//! touch the disk and processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::repo::manifest::Manifest;
use crate::storage::ObjectMeta;
use crate::wal::{Lsn, Segment, WalKind};

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Replay everything archived.
    Latest,
    /// Stop as soon as the base backup is consistent.
    Immediate,
    Time(DateTime<Utc>),
    Lsn(Lsn),
    Xid(u64),
    /// A restore point made with `pg_create_restore_point` (`drctl mark`).
    Name(String),
}

impl Target {
    /// How the target reads in a plan.
    pub fn describe(&self) -> String {
        match self {
            Target::Latest => "latest (the end of the archived WAL)".into(),
            Target::Immediate => "the base backup's consistent point".into(),
            Target::Time(t) => format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S%.f")),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Xid(x) => format!("transaction {x}"),
            Target::Name(n) => format!("restore point `{n}`"),
        }
    }
}

/// What the server does when it reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// End recovery and open read-write on a new timeline.
    Promote,
    /// Stay in recovery, read-only; `SELECT pg_wal_replay_resume()` ends it.
    Pause,
    /// Stop the server; starting it again replays to the target again.
    Shutdown,
}

impl Action {
    fn setting(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Shutdown => "shutdown",
        }
    }
}

/// The cluster backups of a policy that can serve `target`, newest first.
///
/// # Errors
/// `NoBackup` saying why none can: no base backup at all, or all of them
/// consistent only after the target.
pub fn choose<'a>(policy: &str, backups: &'a [Manifest], target: &Target) -> Result<&'a Manifest> {
    let cluster: Vec<&Manifest> = backups.iter().filter(|m| m.cluster.is_some()).collect();
    let info = |m: &Manifest| m.cluster.clone().expect("filtered");
    let fits = |m: &&Manifest| match target {
        Target::Time(t) => info(m).end_time <= *t,
        Target::Lsn(l) => info(m).end_lsn <= *l,
        // A transaction id or a name says nothing about time: the newest
        // base backup replays the most WAL that could hold it.
        Target::Latest | Target::Immediate | Target::Xid(_) | Target::Name(_) => true,
    };
    if let Some(m) = cluster.iter().copied().find(|m| fits(m)) {
        return Ok(m);
    }
    Err(Error::NoBackup(match cluster.last() {
        None => {
            format!("policy `{policy}` has no base backup yet; run `drctl backup {policy}` first")
        }
        Some(first) => format!(
            "{} is before the first base backup of `{policy}` is consistent ({} at {} UTC, backup {}); \
             recovery cannot stop inside a base backup. Choose a later target",
            target.describe(),
            info(first).end_lsn,
            info(first).end_time.format("%Y-%m-%d %H:%M:%S"),
            first.id
        ),
    }))
}

/// The archive of one policy, by timeline and segment number.
#[derive(Debug, Default)]
pub struct Inventory {
    pub segments: BTreeMap<Segment, ObjectMeta>,
}

impl Inventory {
    /// Sorts a listing of `wal/<policy>/` (keys that are not WAL objects
    /// are ignored; two contents for one segment are refused by
    /// `wal-fetch` when replay asks for it).
    pub fn from_listing(policy: &str, objects: Vec<ObjectMeta>, segment_bytes: u64) -> Inventory {
        let mut inventory = Inventory::default();
        for o in objects {
            if let Some((name, _)) = crate::wal::parse_key(policy, &o.key)
                && name.kind == WalKind::Segment
                && let Some(seg) = Segment::from_name(&name, segment_bytes)
            {
                inventory.segments.insert(seg, o);
            }
        }
        inventory
    }
}

/// The WAL a recovery will replay: checked present, without gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPlan {
    pub first: String,
    pub last: String,
    pub segments: u64,
    pub stored_bytes: u64,
    /// When the last segment of the plan was archived: nothing committed
    /// after it can be replayed.
    pub archived_until: Option<DateTime<Utc>>,
}

/// Checks that the archive holds every segment from the backup's start to
/// what the target needs, on the backup's timeline.
///
/// # Errors
/// `NoBackup` naming the first missing segment, or saying that the target
/// is beyond the archived WAL.
pub fn check_wal(
    policy: &str,
    backup: &Manifest,
    inventory: &Inventory,
    target: &Target,
) -> Result<WalPlan> {
    let info = backup.cluster.as_ref().expect("a cluster backup");
    let bytes = info.wal_segment_bytes;
    let first = Segment::of(info.timeline, info.start_lsn, bytes);
    let consistent = Segment::of(info.timeline, info.end_lsn, bytes);
    let newest = inventory
        .segments
        .range(first..)
        .take_while(|(s, _)| s.timeline == info.timeline)
        .last()
        .map(|(s, _)| *s);
    let Some(newest) = newest else {
        return Err(Error::NoBackup(format!(
            "the WAL of base backup {} of `{policy}` is not in the archive (its first segment {} is missing); \
             the backup cannot be made consistent",
            backup.id,
            first.name(bytes)
        )));
    };
    // The last segment replay needs: for a time, the first one archived at
    // or after it (it holds the first commit after the target); otherwise
    // the end of the archive, or the target LSN's segment.
    let last = match target {
        Target::Time(t) => {
            let found = inventory
                .segments
                .range(first..=newest)
                .find(|(s, o)| *s >= &consistent && o.last_modified.is_some_and(|m| m >= *t))
                .map(|(s, _)| *s);
            match found {
                Some(s) => s,
                None => {
                    let at = inventory.segments[&newest].last_modified;
                    return Err(Error::NoBackup(format!(
                        "the target {} is after the newest archived WAL of `{policy}` ({}, archived {}); \
                         commits after that are not in the archive. Choose an earlier time, or --to latest \
                         to replay everything there is",
                        target.describe(),
                        newest.name(bytes),
                        at.map(|t| format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S")))
                            .unwrap_or_else(|| "at an unknown time".into())
                    )));
                }
            }
        }
        Target::Lsn(l) => Segment::of(info.timeline, *l, bytes),
        Target::Immediate => consistent,
        Target::Latest | Target::Xid(_) | Target::Name(_) => newest,
    };
    let last = last.max(consistent);
    let mut seg = first;
    let mut stored_bytes = 0;
    let mut count = 0;
    while seg <= last {
        match inventory.segments.get(&seg) {
            Some(o) => stored_bytes += o.size,
            None => {
                return Err(Error::NoBackup(format!(
                    "WAL segment {} of `{policy}` is missing from the archive, and recovery from base backup {} \
                     to {} needs it (segments {} to {}); nothing was restored. `drctl verify {policy}` lists \
                     every gap; a target before the gap can still be reached",
                    seg.name(bytes),
                    backup.id,
                    target.describe(),
                    first.name(bytes),
                    last.name(bytes)
                )));
            }
        }
        count += 1;
        seg = seg.next();
    }
    Ok(WalPlan {
        first: first.name(bytes),
        last: last.name(bytes),
        segments: count,
        stored_bytes,
        archived_until: inventory.segments[&last].last_modified,
    })
}

/// The lines drctl adds to `postgresql.auto.conf` (which PostgreSQL reads
/// last, so they win over postgresql.conf).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `restore_command`, whole.
    pub restore_command: String,
    pub target: Target,
    pub action: Action,
    /// Leave `archive_mode` as the backup had it. Off by default: a restored
    /// copy must not push its WAL into the archive it is restored from.
    pub keep_archiving: bool,
}

/// Quotes a value for postgresql.conf.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Quotes one word for the shell that runs `restore_command`.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:@+,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The recovery settings as `postgresql.auto.conf` lines.
pub fn settings_text(s: &Settings, backup_id: &str) -> String {
    let mut lines = vec![
        format!(
            "# Added by drctl: recovery from base backup {backup_id} to {}",
            s.target.describe()
        ),
        format!("restore_command = {}", conf_quote(&s.restore_command)),
        "recovery_target_timeline = 'latest'".to_string(),
    ];
    match &s.target {
        Target::Latest => {}
        Target::Immediate => lines.push("recovery_target = 'immediate'".into()),
        Target::Time(t) => lines.push(format!(
            // A numeric offset: PostgreSQL refuses zone abbreviations here.
            "recovery_target_time = '{}'",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00")
        )),
        Target::Lsn(l) => lines.push(format!("recovery_target_lsn = '{l}'")),
        Target::Xid(x) => lines.push(format!("recovery_target_xid = '{x}'")),
        Target::Name(n) => lines.push(format!("recovery_target_name = {}", conf_quote(n))),
    }
    if s.target != Target::Latest {
        lines.push(format!("recovery_target_action = '{}'", s.action.setting()));
    }
    if !s.keep_archiving {
        lines.push("archive_mode = 'off'".to_string());
    }
    lines.join("\n") + "\n"
}

/// Refuses a data directory that is not empty, and creates it (mode 0700,
/// as PostgreSQL requires).
///
/// # Errors
/// `Refused` for a non-empty directory; I/O errors naming it.
pub fn prepare_data_dir(dir: &Path) -> Result<()> {
    crate::restore::check_empty_dir(dir)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))
}

/// Unpacks a base backup's tar into `dir`. Refuses entries that would land
/// outside it.
///
/// # Errors
/// I/O and tar errors, as `Integrity` naming nothing (the caller names the
/// object) when the stream is not a tar.
pub fn unpack(from: &mut dyn std::io::Read, dir: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(from);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        // `unpack_in` refuses paths with `..` or a root.
        let placed = entry.unpack_in(dir).map_err(tar_error)?;
        if !placed {
            return Err(Error::Integrity {
                object: String::new(),
                reason: "the base backup holds a path outside the data directory".into(),
            });
        }
    }
    // pg_basebackup -X none leaves pg_wal out of the tar on some versions.
    for sub in ["pg_wal", "pg_wal/archive_status"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p)
            .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    }
    Ok(())
}

fn tar_error(e: std::io::Error) -> Error {
    Error::Integrity {
        object: String::new(),
        reason: format!("unpacking the base backup: {e}"),
    }
}

/// Writes the recovery settings and `recovery.signal`.
///
/// # Errors
/// I/O errors naming the file.
pub fn configure(dir: &Path, settings: &Settings, backup_id: &str) -> Result<()> {
    use std::io::Write;
    let auto = dir.join("postgresql.auto.conf");
    let mut file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&auto)
        .map_err(|e| Error::io(format!("opening {}", auto.display()), e))?;
    file.write_all(format!("\n{}", settings_text(settings, backup_id)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("writing {}", auto.display()), e))?;
    let signal = dir.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(|e| Error::io(format!("writing {}", signal.display()), e))
}

/// Where recovery really stopped, read from the server and its log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stopped {
    /// `pg_last_xact_replay_timestamp()`: the last transaction replayed.
    pub last_transaction_at: Option<DateTime<Utc>>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<String>,
    /// The log's `recovery stopping before commit of transaction …` line.
    pub stop_line: Option<String>,
    /// The log's `last completed transaction was at log time …` line.
    pub last_completed_line: Option<String>,
    /// Whether the server left recovery (promoted) or stays in it (paused).
    pub promoted: bool,
}

/// Log lines that say where recovery stopped, or why it failed.
pub fn read_log(log: &str) -> (Option<String>, Option<String>, Option<String>) {
    let find = |needle: &str| {
        log.lines().rev().find(|l| l.contains(needle)).map(|l| {
            l.split_once(needle)
                .map(|(_, rest)| format!("{needle}{rest}"))
                .unwrap_or_default()
        })
    };
    let fatal = log
        .lines()
        .filter(|l| !l.contains("not yet accepting connections") && !l.contains("is starting up"))
        .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        .map(|l| {
            l.split_once("FATAL:")
                .or_else(|| l.split_once("PANIC:"))
                .map(|(_, m)| m.trim().to_string())
                .unwrap_or_default()
        });
    (
        find("recovery stopping "),
        find("last completed transaction was at log time "),
        fatal,
    )
}

/// How to start the restored server.
pub struct Start<'a> {
    pub bin_dir: Option<PathBuf>,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<Vec<u8>>,
    pub action: Action,
    /// Give up when the server has not finished recovery in this long.
    pub timeout: Duration,
}

/// Whether the postmaster of `dir` is alive, by the pid in its pid file.
fn postmaster_running(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.trim().parse::<libc::pid_t>().ok())
        })
        // SAFETY: signal 0 only checks that the process exists.
        .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
}

/// The file the restored server logs to while drctl watches it.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("drctl-recovery.log")
}

/// Starts the server on the restored data directory and waits until
/// recovery has ended (promoted), paused, or the server has stopped
/// (`shutdown`), then reads where it stopped.
///
/// # Errors
/// `Source` with the server's own FATAL message when recovery failed
/// (a target after the archived WAL, a missing segment); `Database` when
/// it cannot be reached.
pub async fn start_and_watch(policy: &str, dir: &Path, start: &Start<'_>) -> Result<Stopped> {
    let pg_ctl = crate::source::postgres::program(start.bin_dir.as_deref(), "pg_ctl");
    let log = log_path(dir);
    let socket_dir = dir.to_path_buf();
    let out = tokio::process::Command::new(&pg_ctl)
        .arg("start")
        .arg("--pgdata")
        .arg(dir)
        .arg("--log")
        .arg(&log)
        .arg("--no-wait")
        .arg("-o")
        .arg(format!(
            "-p {} -c unix_socket_directories={}",
            start.port,
            shell_quote(&socket_dir.display().to_string())
        ))
        .output()
        .await
        .map_err(|e| Error::Source {
            policy: policy.into(),
            message: format!("cannot run {}: {e}", pg_ctl.display()),
        })?;
    if !out.status.success() {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&socket_dir)
        .port(start.port)
        .user(start.user)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    if let Some(pw) = &start.password {
        config.password(pw.clone());
    }
    let deadline = tokio::time::Instant::now() + start.timeout;
    let failed = |log_text: &str, why: &str| {
        let (_, _, fatal) = read_log(log_text);
        Error::Source {
            policy: policy.into(),
            message: format!(
                "recovery did not finish: {}; the server's log is {}",
                fatal.unwrap_or_else(|| why.to_string()),
                log.display()
            ),
        }
    };
    loop {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        // The log also has FATAL lines for clients refused during start-up
        // (drctl's own polls), so only a server that is gone has failed.
        if !postmaster_running(dir) {
            if start.action == Action::Shutdown && log_text.contains("database system is shut down")
            {
                let (stop_line, last_completed_line, _) = read_log(&log_text);
                return Ok(Stopped {
                    stop_line,
                    last_completed_line,
                    ..Stopped::default()
                });
            }
            // pg_ctl --no-wait returns before the postmaster writes its pid.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !postmaster_running(dir) {
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(failed(&log_text, "the server stopped"));
            }
        }
        if let Ok(client) = crate::source::postgres::connect(&config).await {
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), \
                            CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END, \
                            pg_last_xact_replay_timestamp(), pg_last_wal_replay_lsn()::text",
                    &[],
                )
                .await;
            if let Ok(row) = row {
                let in_recovery: bool = row.get(0);
                let pause: String = row.get(1);
                let done = !in_recovery || (start.action == Action::Pause && pause == "paused");
                if done {
                    let at: Option<std::time::SystemTime> = row.get(2);
                    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                    let (stop_line, last_completed_line, _) = read_log(&log_text);
                    return Ok(Stopped {
                        last_transaction_at: at.map(Into::into),
                        replay_lsn: row.get(3),
                        stop_line,
                        last_completed_line,
                        promoted: !in_recovery,
                    });
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(failed(
                &log_text,
                "it was still replaying when drctl stopped waiting",
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The WAL range of a plan, for people.
pub fn segment_count_text(plan: &WalPlan) -> String {
    format!(
        "{} to {} ({} segment{}, {} stored)",
        plan.first,
        plan.last,
        plan.segments,
        if plan.segments == 1 { "" } else { "s" },
        crate::progress::bytes(plan.stored_bytes)
    )
}
