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

use super::ClusterInfo;
use crate::error::{Error, Result};
use crate::repo::manifest::Manifest;
pub use crate::wal::archive::Inventory;
use crate::wal::history::{self, Switch};
use crate::wal::marks::Mark;
use crate::wal::{Lsn, Segment};

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

/// The path recovery follows through the timelines, from a base backup to
/// the newest timeline (`recovery_target_timeline = 'latest'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePath {
    /// `(timeline, first segment number read from it, LSN where it was
    /// left)`, the backup's timeline first, the target timeline last (with
    /// no end).
    pub legs: Vec<(u32, u64, Option<Lsn>)>,
}

impl TimelinePath {
    pub fn target_timeline(&self) -> u32 {
        self.legs.last().expect("a path has a leg").0
    }

    /// The timeline segment `number` is read from. PostgreSQL reads a
    /// segment from the newest timeline of the path that begins at or
    /// before it, so the segment where a timeline branched comes from the
    /// new timeline (it holds the old one's WAL up to the switch).
    pub fn segment(&self, number: u64) -> Segment {
        let timeline = self
            .legs
            .iter()
            .rev()
            .find(|(_, from, _)| *from <= number)
            .unwrap_or(&self.legs[0])
            .0;
        Segment { timeline, number }
    }

    /// For plans: `1`, or `1 (left at 0/5000000) → 2`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, (t, _, end)) in self.legs.iter().enumerate() {
            if i > 0 {
                out.push_str(" → ");
            }
            out.push_str(&t.to_string());
            if let Some(at) = end {
                out.push_str(&format!(" (left at {at})"));
            }
        }
        out
    }
}

/// The path from a base backup on `timeline`, started at `start`, to the
/// newest timeline PostgreSQL will find in the archive (`archived` holds
/// the timelines whose history file is archived, `histories` the ones
/// read).
///
/// # Errors
/// A description when the backup is not an ancestor of that timeline
/// (PostgreSQL's "requested timeline is not a child of this server's
/// history"), or when the history file of the newest timeline was not read.
pub fn timeline_path(
    timeline: u32,
    start: Lsn,
    archived: &BTreeMap<u32, ()>,
    histories: &BTreeMap<u32, Vec<Switch>>,
    segment_bytes: u64,
) -> std::result::Result<TimelinePath, String> {
    let target = history::newest_timeline(timeline, archived);
    let start_segment = start.0 / segment_bytes;
    if target == timeline {
        return Ok(TimelinePath {
            legs: vec![(timeline, start_segment, None)],
        });
    }
    let switches = histories.get(&target).ok_or_else(|| {
        format!("the history file of timeline {target} ({target:08X}.history) could not be read")
    })?;
    // Ancestors with where each was left, then the target itself.
    let mut all: Vec<(u32, Option<Lsn>)> =
        switches.iter().map(|s| (s.parent, Some(s.at))).collect();
    all.push((target, None));
    let Some(i) = all.iter().position(|(t, _)| *t == timeline) else {
        return Err(format!(
            "timeline {target}, the newest in the archive, does not descend from timeline {timeline} \
             (its history: {})",
            switches
                .iter()
                .map(|s| format!("{} until {}", s.parent, s.at))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if let (_, Some(left)) = all[i]
        && start >= left
    {
        return Err(format!(
            "the base backup started at {start} on timeline {timeline}, after timeline {target} branched \
             off it at {left}; recovery follows timeline {target}, which does not contain this backup"
        ));
    }
    let mut legs = vec![(timeline, start_segment, all[i].1)];
    for w in i + 1..all.len() {
        let from = all[w - 1].1.expect("every ancestor has an end").0 / segment_bytes;
        legs.push((all[w].0, from.max(start_segment), all[w].1));
    }
    Ok(TimelinePath { legs })
}

/// What is known about the archive when choosing a backup and checking WAL.
pub struct Archive<'a> {
    pub inventory: &'a Inventory,
    /// Parsed history files, by the timeline each one starts.
    pub histories: &'a BTreeMap<u32, Vec<Switch>>,
    /// The policy's `drctl mark` records, oldest first.
    pub marks: &'a [Mark],
}

impl Archive<'_> {
    pub fn path(&self, info: &ClusterInfo) -> std::result::Result<TimelinePath, String> {
        let archived: BTreeMap<u32, ()> =
            self.inventory.histories.keys().map(|t| (*t, ())).collect();
        timeline_path(
            info.timeline,
            info.start_lsn,
            &archived,
            self.histories,
            info.wal_segment_bytes,
        )
    }

    /// The mark a recovery from a backup consistent at `end` stops at:
    /// PostgreSQL stops at the first restore point of the name it replays.
    pub fn mark_after(&self, name: &str, end: Lsn) -> Option<&Mark> {
        self.marks
            .iter()
            .filter(|m| m.name == name && m.lsn >= end)
            .min_by_key(|m| m.lsn)
    }

    /// The newest mark of a name.
    fn newest_mark(&self, name: &str) -> Option<&Mark> {
        self.marks
            .iter()
            .filter(|m| m.name == name)
            .max_by_key(|m| m.lsn)
    }
}

/// The cluster backups of a policy that can serve `target`, newest first.
///
/// # Errors
/// `NoBackup` saying why none can: no base backup at all, all of them
/// consistent only after the target, or none an ancestor of the newest
/// timeline.
pub fn choose<'a>(
    policy: &str,
    backups: &'a [Manifest],
    target: &Target,
    archive: &Archive<'_>,
) -> Result<&'a Manifest> {
    let cluster: Vec<&Manifest> = backups.iter().filter(|m| m.cluster.is_some()).collect();
    let info = |m: &Manifest| m.cluster.clone().expect("filtered");
    let mark = match target {
        Target::Name(n) => archive.newest_mark(n),
        _ => None,
    };
    let fits = |m: &&Manifest| match target {
        Target::Time(t) => info(m).end_time <= *t,
        Target::Lsn(l) => info(m).end_lsn <= *l,
        // A restore point drctl recorded has an LSN; one made by hand, or a
        // transaction id, says nothing of where it is: the newest base
        // backup replays the most WAL that could hold it.
        Target::Name(_) => mark.is_none_or(|mark| info(m).end_lsn <= mark.lsn),
        Target::Latest | Target::Immediate | Target::Xid(_) => true,
    };
    let mut unrelated = None;
    for m in cluster.iter().copied().filter(|m| fits(m)) {
        match archive.path(&info(m)) {
            Ok(_) => return Ok(m),
            Err(why) => {
                unrelated.get_or_insert(why);
            }
        }
    }
    if let Some(why) = unrelated {
        return Err(Error::NoBackup(format!(
            "no base backup of `{policy}` consistent before {} can be recovered along the archived timelines: \
             {why}. Take a new base backup (`drctl backup {policy}`)",
            target.describe()
        )));
    }
    Err(Error::NoBackup(match cluster.last() {
        None => {
            format!("policy `{policy}` has no base backup yet; run `drctl backup {policy}` first")
        }
        Some(first) => format!(
            "{} is before the first base backup of `{policy}` is consistent ({} at {} UTC, backup {}); \
             recovery cannot stop inside a base backup. Choose a later target",
            match mark {
                Some(mark) => format!(
                    "{} (marked at {} UTC, LSN {})",
                    target.describe(),
                    mark.time.format("%Y-%m-%d %H:%M:%S"),
                    mark.lsn
                ),
                None => target.describe(),
            },
            info(first).end_lsn,
            info(first).end_time.format("%Y-%m-%d %H:%M:%S"),
            first.id
        ),
    }))
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
    /// The timelines replay follows.
    pub path: TimelinePath,
}

/// Checks that the archive holds every segment from the backup's start to
/// what the target needs, along the timelines recovery follows.
///
/// # Errors
/// `NoBackup` naming the first missing segment, saying that the target is
/// beyond the archived WAL, or that the backup is not on the path to the
/// newest timeline.
pub fn check_wal(
    policy: &str,
    backup: &Manifest,
    archive: &Archive<'_>,
    target: &Target,
) -> Result<WalPlan> {
    let info = backup.cluster.as_ref().expect("a cluster backup");
    let inventory = archive.inventory;
    let bytes = info.wal_segment_bytes;
    let path = archive.path(info).map_err(|why| {
        Error::NoBackup(format!(
            "base backup {} of `{policy}` cannot be recovered: {why}",
            backup.id
        ))
    })?;
    let first = info.start_lsn.0 / bytes;
    let consistent = info.end_lsn.0 / bytes;
    // The newest segment archived along the path: on each timeline, within
    // the stretch read from it.
    let newest = path
        .legs
        .iter()
        .enumerate()
        .filter_map(|(i, &(timeline, from, _))| {
            let until = path.legs.get(i + 1).map_or(u64::MAX, |l| l.1);
            inventory
                .segments
                .range(
                    Segment {
                        timeline,
                        number: from,
                    }..Segment {
                        timeline,
                        number: until,
                    },
                )
                .last()
                .map(|(s, _)| s.number)
        })
        .max();
    let Some(newest) = newest else {
        return Err(Error::NoBackup(format!(
            "the WAL of base backup {} of `{policy}` is not in the archive (its first segment {} is missing); \
             the backup cannot be made consistent",
            backup.id,
            path.segment(first).name(bytes)
        )));
    };
    let at = |n: u64| {
        inventory
            .segments
            .get(&path.segment(n))
            .and_then(|o| o.last_modified)
    };
    // The last segment replay needs: for a time, the first one archived at
    // or after it (it holds the first commit after the target); otherwise
    // the end of the archive, or the target's segment.
    let last = match target {
        Target::Time(t) => match (consistent..=newest).find(|&n| at(n).is_some_and(|m| m >= *t)) {
            Some(n) => n,
            None => {
                return Err(Error::NoBackup(format!(
                    "the target {} is after the newest archived WAL of `{policy}` ({}, archived {}); \
                     commits after that are not in the archive. Choose an earlier time, or --to latest \
                     to replay everything there is",
                    target.describe(),
                    path.segment(newest).name(bytes),
                    at(newest)
                        .map(|t| format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S")))
                        .unwrap_or_else(|| "at an unknown time".into())
                )));
            }
        },
        Target::Lsn(l) => l.0 / bytes,
        Target::Immediate => consistent,
        Target::Name(n) => match archive.mark_after(n, info.end_lsn) {
            Some(mark) => mark.lsn.0 / bytes,
            None => newest,
        },
        Target::Latest | Target::Xid(_) => newest,
    };
    let last = last.max(consistent);
    let mut stored_bytes = 0;
    for n in first..=last {
        let seg = path.segment(n);
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
                    path.segment(first).name(bytes),
                    path.segment(last).name(bytes)
                )));
            }
        }
    }
    Ok(WalPlan {
        first: path.segment(first).name(bytes),
        last: path.segment(last).name(bytes),
        segments: last - first + 1,
        stored_bytes,
        archived_until: at(last),
        path,
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
pub fn conf_quote(value: &str) -> String {
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

/// The `restore_command` that fetches from `policy`'s archive: this drctl
/// executable with absolute paths to the configuration and, when one was
/// given, the identity (the server runs it from the data directory), and
/// `--repo COPY` when recovering from a copy.
///
/// # Errors
/// I/O errors finding the executable, the configuration or the identity.
pub fn wal_fetch_command(
    config: &Path,
    identity: Option<&Path>,
    copy: Option<&str>,
    policy: &str,
) -> Result<String> {
    let absolute = |path: &Path, what: &str| {
        std::fs::canonicalize(path)
            .map_err(|e| Error::io(format!("finding the {what} {}", path.display()), e))
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the drctl executable", e))?;
    let mut command = vec![
        shell_quote(&exe.display().to_string()),
        "--config".into(),
        shell_quote(&absolute(config, "configuration")?.display().to_string()),
    ];
    if let Some(id) = identity {
        command.push("--identity".into());
        command.push(shell_quote(
            &absolute(id, "identity file")?.display().to_string(),
        ));
    }
    if let Some(copy) = copy {
        command.push("--repo".into());
        command.push(shell_quote(copy));
    }
    command.extend([
        "wal-fetch".into(),
        policy.to_string(),
        "%f".into(),
        "%p".into(),
    ]);
    Ok(command.join(" "))
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
    /// More `-c name=value` settings for the server's command line, which
    /// win over every configuration file (a drill's throwaway server
    /// listens on its socket only and trusts its owner).
    pub settings: Vec<String>,
    /// Stop waiting (`Interrupted`) once this is set; the server is left
    /// to the caller.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Whether the postmaster of `dir` is alive, by the pid in its pid file.
pub fn postmaster_running(dir: &Path) -> bool {
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
            "-p {} -c unix_socket_directories={}{}",
            start.port,
            shell_quote(&socket_dir.display().to_string()),
            start
                .settings
                .iter()
                .map(|s| format!(" -c {}", shell_quote(s)))
                .collect::<String>()
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
        if start
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(Error::Interrupted(format!(
                "stopped while the server in {} was replaying WAL",
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Stops the server of `dir` at once (`pg_ctl stop -m immediate`), when
/// one runs there: for throwaway servers, whose data is not kept.
///
/// # Errors
/// `Source` with pg_ctl's message when a running server did not stop.
pub async fn stop_immediate(policy: &str, bin_dir: Option<&Path>, dir: &Path) -> Result<()> {
    if !postmaster_running(dir) {
        return Ok(());
    }
    let pg_ctl = crate::source::postgres::program(bin_dir, "pg_ctl");
    let out = tokio::process::Command::new(&pg_ctl)
        .arg("stop")
        .arg("--pgdata")
        .arg(dir)
        .args(["--mode", "immediate", "--wait", "--timeout", "60"])
        .output()
        .await
        .map_err(|e| Error::Source {
            policy: policy.into(),
            message: format!("cannot run {}: {e}", pg_ctl.display()),
        })?;
    if !out.status.success() && postmaster_running(dir) {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "the server in {} did not stop: {}; stop it with `pg_ctl stop -D {} -m immediate`",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim(),
                dir.display()
            ),
        });
    }
    Ok(())
}

/// Takes back a time target from the recovery settings of `dir`, so that
/// the next start replays to the end of the archive. For a server that
/// stopped with "recovery ended before configured recovery target was
/// reached": no commit after the target was archived, so the end of the
/// archive is the same point.
///
/// # Errors
/// I/O errors naming the file.
pub fn clear_time_target(dir: &Path) -> Result<()> {
    use std::io::Write;
    let auto = dir.join("postgresql.auto.conf");
    let mut file = std::fs::File::options()
        .append(true)
        .open(&auto)
        .map_err(|e| Error::io(format!("opening {}", auto.display()), e))?;
    // An empty value unsets the target; the last line of a name wins.
    file.write_all(
        b"# Added by drctl: no commit after the target was archived; replay it all
recovery_target_time = ''
",
    )
    .and_then(|()| file.sync_all())
    .map_err(|e| Error::io(format!("writing {}", auto.display()), e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Digests;
    use crate::repo::manifest::{Compression, ObjectRecord};
    use crate::storage::ObjectMeta;
    use crate::wal::DEFAULT_SEGMENT_BYTES as MB16;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    fn time(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// A base backup on `timeline` from `start` to `end`, consistent at `at`.
    fn backup(id: &str, timeline: u32, start: &str, end: &str, at: &str) -> Manifest {
        Manifest {
            format: 1,
            id: id.into(),
            policy: "db".into(),
            kind: "postgres-cluster".into(),
            point_in_time: time(at),
            started_at: time(at),
            finished_at: time(at),
            host: "h".into(),
            tool_version: "0".into(),
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            recipients: vec![],
            data: ObjectRecord {
                key: "k".into(),
                version_id: None,
                content: "pg_basebackup-tar".into(),
                digests: Digests {
                    plaintext_size: 1,
                    plaintext_sha256: "0".repeat(64),
                    size: 1,
                    sha256: Some("1".repeat(64)),
                    ..Default::default()
                },
            },
            fingerprint: None,
            postgres: None,
            warnings: vec![],
            cluster: Some(ClusterInfo {
                system_identifier: None,
                server_version: "15".into(),
                server_version_num: 150000,
                pg_basebackup_version: "15".into(),
                timeline,
                start_lsn: lsn(start),
                end_lsn: lsn(end),
                start_time: time(at),
                end_time: time(at),
                wal_segment_bytes: MB16,
                backup_manifest_checksum: None,
            }),
        }
    }

    /// An archive of `names`, the n-th archived at minute n.
    fn inventory(names: &[&str]) -> Inventory {
        let listing = names
            .iter()
            .enumerate()
            .map(|(i, n)| ObjectMeta {
                key: format!("wal/db/{}/{n}-{}.zst.age", &n[..8], "a".repeat(64)),
                size: 10,
                etag: None,
                version_id: None,
                last_modified: Some(time(&format!("2026-11-30T18:{i:02}:00Z"))),
                storage_class: None,
            })
            .collect();
        Inventory::from_listing("db", listing, MB16)
    }

    fn two_timelines() -> (Inventory, BTreeMap<u32, Vec<Switch>>) {
        // Timeline 1 ran to segment 6; timeline 2 branched at 0/5000100
        // (so it reads segment 5 from timeline 2) and ran to segment 7.
        let inv = inventory(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "00000002.history",
            "000000020000000000000005",
            "000000020000000000000006",
            "000000020000000000000007",
        ]);
        let histories = [(
            2,
            crate::wal::history::parse(2, "1\t0/5000100\tno recovery target specified\n").unwrap(),
        )]
        .into();
        (inv, histories)
    }

    #[test]
    fn recovery_follows_the_newest_timeline_from_its_branch_segment() {
        let (inv, histories) = two_timelines();
        let archive = Archive {
            inventory: &inv,
            histories: &histories,
            marks: &[],
        };
        let b = backup("b1", 1, "0/2000028", "0/2000100", "2026-11-30T17:59:00Z");
        let plan = check_wal("db", &b, &archive, &Target::Latest).unwrap();
        assert_eq!(plan.path.target_timeline(), 2);
        assert_eq!(plan.first, "000000010000000000000002");
        assert_eq!(plan.last, "000000020000000000000007");
        assert_eq!(plan.segments, 6);
        assert_eq!(plan.path.segment(4).timeline, 1);
        assert_eq!(plan.path.segment(5).timeline, 2);
        assert_eq!(plan.path.describe(), "1 (left at 0/5000100) → 2");
        // A time after timeline 1's segment 6 was archived (minute 4) is
        // reached on timeline 2: its segment 6 was archived at minute 7.
        let plan = check_wal(
            "db",
            &b,
            &archive,
            &Target::Time(time("2026-11-30T18:06:30Z")),
        )
        .unwrap();
        assert_eq!(plan.last, "000000020000000000000006");
    }

    #[test]
    fn a_missing_segment_on_the_path_is_named_and_one_off_it_does_not_matter() {
        let (mut inv, histories) = two_timelines();
        // Timeline 1's segment 5 is not on the path: timeline 2's is read.
        inv.segments.remove(&Segment {
            timeline: 1,
            number: 5,
        });
        let archive = Archive {
            inventory: &inv,
            histories: &histories,
            marks: &[],
        };
        let b = backup("b1", 1, "0/2000028", "0/2000100", "2026-11-30T17:59:00Z");
        check_wal("db", &b, &archive, &Target::Latest).unwrap();
        let (mut inv, histories) = two_timelines();
        inv.segments.remove(&Segment {
            timeline: 2,
            number: 6,
        });
        let archive = Archive {
            inventory: &inv,
            histories: &histories,
            marks: &[],
        };
        let err = check_wal("db", &b, &archive, &Target::Latest)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("000000020000000000000006 of `db` is missing"),
            "{err}"
        );
        // A target before the gap is still reachable.
        check_wal("db", &b, &archive, &Target::Lsn(lsn("0/5800000"))).unwrap();
    }

    #[test]
    fn a_backup_taken_after_the_branch_on_the_old_timeline_is_not_chosen() {
        let (inv, histories) = two_timelines();
        let archive = Archive {
            inventory: &inv,
            histories: &histories,
            marks: &[],
        };
        let before = backup(
            "before",
            1,
            "0/2000028",
            "0/2000100",
            "2026-11-30T17:59:00Z",
        );
        let after = backup("after", 1, "0/6000028", "0/6000100", "2026-11-30T18:04:00Z");
        let backups = vec![after.clone(), before];
        let chosen = choose("db", &backups, &Target::Latest, &archive).unwrap();
        assert_eq!(chosen.id, "before");
        let err = check_wal("db", &after, &archive, &Target::Latest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("after timeline 2 branched"), "{err}");
        let err = choose("db", &[after], &Target::Latest, &archive)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("recovered along the archived timelines"),
            "{err}"
        );
    }

    #[test]
    fn an_unread_history_or_an_unrelated_timeline_is_refused() {
        let (inv, _) = two_timelines();
        let none = BTreeMap::new();
        let b = backup("b1", 1, "0/2000028", "0/2000100", "2026-11-30T17:59:00Z");
        let archive = Archive {
            inventory: &inv,
            histories: &none,
            marks: &[],
        };
        let err = check_wal("db", &b, &archive, &Target::Latest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("00000002.history"), "{err}");
        let archived: BTreeMap<u32, ()> = [(2, ()), (3, ())].into();
        let h: BTreeMap<u32, Vec<Switch>> = [(
            3,
            crate::wal::history::parse(3, "1\t0/5000000\tx\n").unwrap(),
        )]
        .into();
        let err = timeline_path(2, lsn("0/6000000"), &archived, &h, MB16).unwrap_err();
        assert!(err.contains("does not descend from timeline 2"), "{err}");
    }

    #[test]
    fn without_history_the_backup_timeline_is_the_path() {
        let inv = inventory(&["000000010000000000000002", "000000010000000000000004"]);
        let none = BTreeMap::new();
        let archive = Archive {
            inventory: &inv,
            histories: &none,
            marks: &[],
        };
        let b = backup("b1", 1, "0/2000028", "0/2000100", "2026-11-30T17:59:00Z");
        let err = check_wal("db", &b, &archive, &Target::Latest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("000000010000000000000003"), "{err}");
        let plan = check_wal("db", &b, &archive, &Target::Immediate).unwrap();
        assert_eq!((plan.segments, plan.path.target_timeline()), (1, 1));
        let err = check_wal(
            "db",
            &b,
            &archive,
            &Target::Time(time("2026-11-30T19:00:00Z")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("after the newest archived WAL"), "{err}");
    }

    #[test]
    fn a_mark_picks_the_newest_backup_consistent_before_it() {
        let inv = inventory(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
        ]);
        let none = BTreeMap::new();
        let mark = |name: &str, at: &str| Mark {
            policy: "db".into(),
            name: name.into(),
            lsn: lsn(at),
            timeline: 1,
            wal_file: String::new(),
            time: time("2026-11-30T18:00:00Z"),
            host: "h".into(),
        };
        let marks = vec![mark("m", "0/3000500"), mark("other", "0/5000000")];
        let archive = Archive {
            inventory: &inv,
            histories: &none,
            marks: &marks,
        };
        let old = backup("old", 1, "0/2000028", "0/2000100", "2026-11-30T17:59:00Z");
        let new = backup("new", 1, "0/4000028", "0/4000100", "2026-11-30T18:03:00Z");
        let backups = vec![new.clone(), old];
        let target = Target::Name("m".into());
        let chosen = choose("db", &backups, &target, &archive).unwrap();
        assert_eq!(chosen.id, "old");
        let plan = check_wal("db", chosen, &archive, &target).unwrap();
        assert_eq!(plan.last, "000000010000000000000003");
        // A name drctl has no record of: the newest backup, all the WAL.
        let target = Target::Name("by-hand".into());
        assert_eq!(choose("db", &backups, &target, &archive).unwrap().id, "new");
        let err = choose("db", &[new], &Target::Name("m".into()), &archive)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("before the first base backup") && err.contains("marked at"),
            "{err}"
        );
    }
}
