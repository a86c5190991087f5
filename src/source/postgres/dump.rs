//! Taking a logical backup: pg_dump (custom format, uncompressed) reading
//! the snapshot drctl exported, streamed into the seal while a second
//! thread parses the archive as it passes: for the fingerprint, and in any
//! case to check that the archive is complete.

use std::io::Write;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

use super::dumpscan::{DumpPrint, DumpScanner};
use crate::error::{Error, Result};
use crate::repo::manifest::PostgresInfo;
use crate::source::{Capture, Captured, process};

/// Bytes read from pg_dump at a time.
/// pg_dump chunks queued for the fingerprint thread.
const SCAN_CHUNKS: usize = 8;

/// Copies pg_dump's output into the pipe, fingerprinting the table data on
/// the way (see `source::fingerprint`), and checks how pg_dump ended.
fn dump_into(
    policy: &str,
    mut child: process::Supervised,
    out: &mut dyn Write,
    counter: &AtomicU64,
    scan: bool,
) -> Result<Option<DumpPrint>> {
    let mut stdout = child.child.stdout.take().expect("pg_dump stdout is piped");
    // The archive is parsed on a thread of its own from shared chunks, so it
    // runs beside compression instead of in front of it. Without a
    // fingerprint it still checks that the archive is complete: pg_dump can
    // exit 0 after a short write, and such a dump must not become a backup.
    let (scan_tx, scanner) = {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(SCAN_CHUNKS);
        let handle = std::thread::Builder::new()
            .name("drctl-fingerprint".into())
            .spawn(move || {
                let mut scanner = match scan {
                    true => DumpScanner::new(),
                    false => DumpScanner::structure_only(),
                };
                for chunk in rx {
                    let _ = scanner.write_all(&chunk);
                }
                scanner.finish()
            })
            .map_err(|e| Error::io("starting the fingerprint thread", e))?;
        (tx, handle)
    };
    let copied = crate::source::process::tee(&mut stdout, &scan_tx, out, counter, || {});
    drop(scan_tx);
    if let Err(e) = copied {
        let stderr = child.kill();
        return Err(pipe_error(policy, e, &stderr));
    }
    let (status, stderr) = child
        .wait()
        .map_err(|e| Error::io("waiting for pg_dump", e))?;
    if !status.success() {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "pg_dump failed ({}): {}",
                process::describe(status),
                if stderr.is_empty() {
                    "no message"
                } else {
                    &stderr
                }
            ),
        });
    }
    let print = scanner
        .join()
        .expect("the fingerprint thread panicked")
        .map_err(|e| Error::Source {
            policy: policy.into(),
            message: format!(
                "pg_dump exited 0 but its output is not a complete archive ({e}); it was not kept as a backup. \
                 Look for the cause in pg_dump's environment (disk, memory, a killed pipe) and run the backup again"
            ),
        })?;
    Ok(scan.then_some(print))
}

fn pipe_error(policy: &str, e: std::io::Error, stderr: &str) -> Error {
    match e.kind() {
        _ if crate::pipeline::channel::is_cancelled(&e) => {
            Error::Interrupted("the backup was cancelled".into())
        }
        std::io::ErrorKind::BrokenPipe => Error::io("the upload stopped", e),
        _ => Error::Source {
            policy: policy.into(),
            message: format!("reading pg_dump output: {e} {stderr}"),
        },
    }
}

/// Takes a pg_dump of the database at `url` from a snapshot drctl exports
/// and holds until pg_dump is done with it; the snapshot's time is the
/// backup's point in time.
///
/// # Errors
/// `Database` when the server cannot be reached, `Source` when pg_dump
/// cannot run, fails, or writes an incomplete archive.
pub async fn capture(
    cx: &Capture<'_>,
    url: &str,
    pg_dump_args: &[String],
    bin_dir: Option<&std::path::Path>,
    take_print: bool,
) -> Result<Captured> {
    let pg = super::resolve(url)?;
    let target = super::describe(&pg);
    let client = super::connect(&pg).await?;
    let snap = super::begin_snapshot(&client, &target).await?;
    let bin = super::bin_dir(bin_dir, snap.server_version_num / 10000);
    let program = super::program(bin.as_deref(), "pg_dump");
    let pg_dump_version = super::check_tool(cx.policy, &program, snap.server_version_num)?;
    let mut cmd = super::pg_dump_command(&program, url, &snap.id, pg_dump_args);
    if let Some(pw) = pg.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref());
    }
    let child = process::spawn(cmd, "pg_dump").map_err(|e| Error::Source {
        policy: cx.policy.to_string(),
        message: format!("cannot start {}: {e}", program.display()),
    })?;
    let name = cx.policy.to_string();
    let counter = cx.counter.clone();
    let produce = move |out: &mut dyn Write| dump_into(&name, child, out, &counter, take_print);
    let key = format!("{}data.pgdump.zst.age", cx.dir);
    let data = crate::sealed::store_sealed(
        cx.repo,
        &key,
        cx.recipients,
        cx.level,
        cx.cancel.clone(),
        produce,
    )
    .await;
    // The snapshot stayed exported until pg_dump had finished with it.
    let _ = client.batch_execute("COMMIT").await;
    let ((stored, digests), print) = data?;
    Ok(Captured {
        key,
        content: "pg_dump-custom",
        stored,
        digests,
        fingerprint: print.map(|p| serde_json::to_vec(&p).expect("fingerprint serialises")),
        point_in_time: snap.point_in_time,
        postgres: Some(PostgresInfo {
            server_version: snap.server_version.clone(),
            pg_dump_version,
            database: pg.get_dbname().unwrap_or_default().to_string(),
            snapshot: snap.id.clone(),
        }),
        cluster: None,
        warnings: Vec::new(),
    })
}
