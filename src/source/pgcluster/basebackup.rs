//! A base backup: `pg_basebackup -D - -Ft -X none` streamed through the
//! seal into one object, with `backup_label` and `backup_manifest` read
//! from the tar as it passes (for the start and end LSN), then a wait until
//! the WAL from start to end is in the archive: a base backup without that
//! WAL cannot be made consistent, so it is not a backup until then.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;

use super::{ClusterInfo, Label, ManifestSummary, parse_backup_manifest, parse_label};
use crate::error::{Error, Result};
use crate::source::{Capture, Captured};
use crate::source::{postgres, process};
use crate::wal::{Segment, WalName};

/// Bytes read from pg_basebackup at a time.
/// Chunks queued for the thread that reads the tar's headers.
const TAP_CHUNKS: usize = 8;
/// How often the archive is listed while waiting for the backup's WAL.
const WAL_POLL: Duration = Duration::from_millis(500);
/// The file pg_basebackup sends last before the server waits for its WAL
/// to be archived: after it, silence means archiving is stuck.
const LAST_DATA_FILE: &str = "global/pg_control";

/// What the server is, asked before the backup starts.
struct Server {
    version: String,
    version_num: u32,
    system_identifier: Option<String>,
    wal_segment_bytes: u64,
}

/// Checks that the server can give a restorable base backup and says what
/// it is.
async fn inspect(policy: &str, pg: &tokio_postgres::Config) -> Result<Server> {
    let target = postgres::describe(pg);
    let client = postgres::connect(pg).await?;
    let db = |e: tokio_postgres::Error| Error::Database {
        target: target.clone(),
        message: postgres::error_text(&e),
    };
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                    current_setting('archive_mode'), current_setting('archive_command'), \
                    (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))",
            &[],
        )
        .await
        .map_err(db)?;
    let archive_mode: String = row.get(3);
    let archive_command: String = row.get(4);
    let tablespaces: i64 = row.get(5);
    if archive_mode == "off" {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "archive_mode is off on {target}: a base backup cannot be restored without the WAL archive. \
                 Set the lines `drctl pitr setup {policy}` prints in postgresql.conf and restart the server"
            ),
        });
    }
    if !archive_command.contains("wal-push") || !archive_command.contains(policy) {
        tracing::warn!(event = "archive_command_unexpected", policy, server = %target, archive_command = %archive_command, "archive_command does not look like `drctl wal-push` for this policy; the base backup waits for its WAL to reach this policy's archive.");
    }
    if tablespaces > 0 {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "{target} has {tablespaces} tablespace(s) besides pg_default and pg_global; pg_basebackup can stream \
                 only a cluster without them. Move their tables to pg_default (ALTER TABLE … SET TABLESPACE pg_default) \
                 or back the databases up with `postgres` policies"
            ),
        });
    }
    // pg_control_system() needs a superuser or pg_monitor on some set-ups;
    // the identifier is a safeguard, not a requirement.
    let system_identifier = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .ok()
        .map(|r| r.get::<_, String>(0));
    Ok(Server {
        version: row.get(0),
        version_num: row.get::<_, i32>(1) as u32,
        system_identifier,
        wal_segment_bytes: row.get::<_, i64>(2) as u64,
    })
}

/// What the tar tap found.
#[derive(Default)]
struct Found {
    label: Option<String>,
    manifest: Option<String>,
}

/// Reads chunks of a tar stream from a channel, for the `tar` crate.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Follows the tar stream: keeps `backup_label` and `backup_manifest` and
/// notes when the last data file has passed.
fn tap(mut reader: ChunkReader, data_done: &AtomicBool) -> std::io::Result<Found> {
    let mut found = Found::default();
    {
        let mut archive = tar::Archive::new(&mut reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            match path.as_str() {
                "backup_label" | "backup_manifest" => {
                    let mut text = String::new();
                    entry.read_to_string(&mut text)?;
                    match path.as_str() {
                        "backup_label" => found.label = Some(text),
                        _ => found.manifest = Some(text),
                    }
                }
                LAST_DATA_FILE => data_done.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
    }
    // Whatever follows the end-of-archive blocks is drained so that the
    // sender never blocks on a full channel.
    std::io::copy(&mut reader, &mut std::io::sink())?;
    Ok(found)
}

/// Takes a base backup into the backup's directory and waits for its WAL.
///
/// # Errors
/// `Source` when the server cannot give a restorable backup (archiving
/// off, tablespaces), pg_basebackup fails or its WAL does not reach the
/// archive in time; storage and pipeline errors otherwise.
pub async fn capture(
    cx: &Capture<'_>,
    url: &str,
    bin_dir: Option<&std::path::Path>,
    wal_wait: Duration,
) -> Result<Captured> {
    let pg = postgres::resolve(url)?;
    let server = inspect(cx.policy, &pg).await?;
    let bin = postgres::bin_dir(bin_dir, server.version_num / 10000);
    let program = postgres::program(bin.as_deref(), "pg_basebackup");
    let tool_version = postgres::check_tool(cx.policy, &program, server.version_num)?;
    let mut cmd = std::process::Command::new(&program);
    cmd.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--no-password",
    ])
    .arg(format!("--label=drctl {}", cx.id))
    .arg(format!("--dbname={url}"))
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped());
    if let Some(pw) = pg.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref());
    }
    let start_time = Utc::now();
    let child = process::spawn(cmd, "pg_basebackup").map_err(|e| Error::Source {
        policy: cx.policy.into(),
        message: format!("cannot start {}: {e}", program.display()),
    })?;
    let policy = cx.policy.to_string();
    let counter = cx.counter.clone();
    let key = format!("{}data.basebackup.tar.zst.age", cx.dir);
    let produce = move |out: &mut dyn Write| stream(&policy, child, out, &counter, wal_wait);
    let ((stored, digests), found) = crate::sealed::store_sealed(
        cx.repo,
        &key,
        cx.recipients,
        cx.level,
        cx.cancel.clone(),
        produce,
    )
    .await?;
    let end_time = Utc::now();
    let bad = |message: String| Error::Source {
        policy: cx.policy.into(),
        message,
    };
    let label: Label = parse_label(
        found
            .label
            .as_deref()
            .ok_or_else(|| bad("pg_basebackup's tar has no backup_label".into()))?,
    )
    .map_err(bad)?;
    let summary: ManifestSummary = parse_backup_manifest(
        found
            .manifest
            .as_deref()
            .ok_or_else(|| bad("pg_basebackup's tar has no backup_manifest".into()))?,
    )
    .map_err(bad)?;
    let &(_, _, end_lsn) = summary
        .wal_ranges
        .last()
        .expect("parse checks it is not empty");
    wait_for_wal(cx, wal_wait, &summary, server.wal_segment_bytes).await?;
    let info = ClusterInfo {
        system_identifier: server.system_identifier,
        server_version: server.version,
        server_version_num: server.version_num,
        pg_basebackup_version: tool_version,
        timeline: label.timeline,
        start_lsn: label.start_lsn,
        end_lsn,
        start_time,
        end_time,
        wal_segment_bytes: server.wal_segment_bytes,
        backup_manifest_checksum: summary.checksum,
    };
    Ok(Captured {
        key,
        content: "basebackup-tar",
        stored,
        digests,
        fingerprint: None,
        point_in_time: info.end_time,
        postgres: None,
        cluster: Some(info),
        warnings: Vec::new(),
    })
}

/// Copies pg_basebackup's tar into the seal while the tap reads its
/// headers; stops pg_basebackup when the server has sent every file and
/// then waits longer than `wal_wait` (for WAL archiving that is stuck:
/// PostgreSQL would wait forever).
fn stream(
    policy: &str,
    mut child: process::Supervised,
    out: &mut dyn Write,
    counter: &AtomicU64,
    wal_wait: Duration,
) -> Result<Found> {
    let mut stdout = child.child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(TAP_CHUNKS);
    let data_done = Arc::new(AtomicBool::new(false));
    let tap_thread = {
        let data_done = data_done.clone();
        std::thread::Builder::new()
            .name("drctl-tar-tap".into())
            .spawn(move || {
                tap(
                    ChunkReader {
                        rx,
                        current: Bytes::new(),
                    },
                    &data_done,
                )
            })
            .map_err(|e| Error::io("starting the tar reader thread", e))?
    };
    // A watchdog, because a blocking read cannot time out.
    let last_read = Arc::new(std::sync::Mutex::new(Instant::now()));
    let finished = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(AtomicBool::new(false));
    let pid = child.child.id() as libc::pid_t;
    let watchdog = {
        let (last_read, finished, stalled, data_done) = (
            last_read.clone(),
            finished.clone(),
            stalled.clone(),
            data_done.clone(),
        );
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let idle = last_read.lock().expect("clock poisoned").elapsed();
                if data_done.load(Ordering::Relaxed) && idle > wal_wait {
                    stalled.store(true, Ordering::Relaxed);
                    // SAFETY: signalling our own child, not yet reaped
                    // (`finished` is set before it is waited for).
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    return;
                }
            }
        })
    };
    let copied = crate::source::process::tee(&mut stdout, &tx, out, counter, || {
        *last_read.lock().expect("clock poisoned") = Instant::now();
    });
    drop(tx);
    let found = tap_thread.join().expect("the tar reader thread panicked");
    let waited = if let Err(e) = copied {
        finished.store(true, Ordering::Relaxed);
        let stderr = child.kill();
        let _ = watchdog.join();
        return Err(if crate::pipeline::channel::is_cancelled(&e) {
            Error::Interrupted("the backup was cancelled".into())
        } else {
            Error::Source {
                policy: policy.into(),
                message: format!("reading pg_basebackup's output: {e} {stderr}"),
            }
        });
    } else {
        child.wait()
    };
    finished.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let (status, stderr) = waited.map_err(|e| Error::io("waiting for pg_basebackup", e))?;
    if stalled.load(Ordering::Relaxed) {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "the server sent every file but then waited more than {} s for its WAL to be archived, \
                 so pg_basebackup was stopped. Is archive_command `drctl wal-push {policy} %p` working? \
                 (`SELECT * FROM pg_stat_archiver` shows its failures; `wal_wait` in the policy sets the wait)",
                wal_wait.as_secs()
            ),
        });
    }
    if !status.success() {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "pg_basebackup failed ({}): {}",
                process::describe(status),
                if stderr.is_empty() {
                    "no message"
                } else {
                    &stderr
                }
            ),
        });
    }
    found.map_err(|e| Error::Source {
        policy: policy.into(),
        message: format!("pg_basebackup's output is not a readable tar: {e}"),
    })
}

/// Waits until every segment of the backup's WAL ranges is in the archive.
async fn wait_for_wal(
    cx: &Capture<'_>,
    wal_wait: Duration,
    summary: &ManifestSummary,
    segment_bytes: u64,
) -> Result<()> {
    let mut needed: Vec<String> = Vec::new();
    for &(timeline, start, end) in &summary.wal_ranges {
        let mut seg = Segment::of(timeline, start, segment_bytes);
        let last = Segment::of(timeline, end, segment_bytes);
        while seg <= last {
            needed.push(seg.name(segment_bytes));
            seg = seg.next();
        }
    }
    let deadline = Instant::now() + wal_wait;
    loop {
        let mut missing = Vec::new();
        for name in &needed {
            let parsed = WalName::parse(name).expect("segment names parse");
            if crate::wal::fetch::locate(cx.repo, cx.policy, &parsed)
                .await?
                .is_none()
            {
                missing.push(name.as_str());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline || cx.cancel.load(Ordering::Relaxed) {
            return Err(Error::Source {
                policy: cx.policy.into(),
                message: format!(
                    "the base backup needs WAL {} to be consistent, and {} not in the archive after {} s \
                     ({}); the backup was not kept. Check that archive_command is `drctl wal-push {} %p` \
                     and that it can reach the repository (`SELECT * FROM pg_stat_archiver` shows its failures)",
                    needed.join(", "),
                    if missing.len() == 1 {
                        "it is"
                    } else {
                        "they are"
                    },
                    wal_wait.as_secs(),
                    missing.join(", "),
                    cx.policy
                ),
            });
        }
        tokio::time::sleep(WAL_POLL).await;
    }
}
