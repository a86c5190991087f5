//! Checks of a restored cluster, for drills: the base backup's files
//! against the checksums the server wrote into `backup_manifest` at backup
//! time (`pg_verifybackup`), and every btree index of every database with
//! `amcheck`'s `bt_index_check`.

use std::path::Path;

use crate::error::{Error, Result};

/// What one check found: passed or not, and a sentence that names no
/// table, index or row (drill records are stored unencrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub ok: bool,
    pub detail: String,
}

/// Runs `pg_verifybackup --no-parse-wal` on a data directory just unpacked
/// from a base backup, before recovery settings are written or the server
/// starts (either changes files the manifest lists). WAL is left out: a
/// `-X none` base backup holds none, the archive's continuity is checked
/// before the restore, and replay itself reads every record. The manifest's
/// own checksum must be the one recorded when the backup was taken.
///
/// # Errors
/// `Source` when pg_verifybackup cannot be run at all; a check that runs
/// and fails is a `Found` with `ok == false`.
pub fn verify_backup(
    policy: &str,
    bin_dir: Option<&Path>,
    dir: &Path,
    recorded_checksum: Option<&str>,
) -> Result<Found> {
    let manifest_path = dir.join("backup_manifest");
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(t) => t,
        Err(e) => {
            return Ok(Found {
                ok: false,
                detail: format!("the base backup has no readable backup_manifest: {e}"),
            });
        }
    };
    if let Some(recorded) = recorded_checksum {
        let found = super::parse_backup_manifest(&text)
            .ok()
            .and_then(|m| m.checksum);
        if found.as_deref() != Some(recorded) {
            return Ok(Found {
                ok: false,
                detail: format!(
                    "backup_manifest's checksum is {}, but {recorded} was recorded when the backup was taken",
                    found.as_deref().unwrap_or("missing")
                ),
            });
        }
    }
    let files = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["Files"].as_array().map(Vec::len))
        .unwrap_or(0);
    let program = crate::source::postgres::program(bin_dir, "pg_verifybackup");
    let out = std::process::Command::new(&program)
        .arg("--no-parse-wal")
        .arg("--exit-on-error")
        .arg(dir)
        .output()
        .map_err(|e| Error::Source {
            policy: policy.into(),
            message: format!(
                "cannot run {}: {e}; install the PostgreSQL client tools of the server's version, or set `bin_dir` in the policy's [source]",
                program.display()
            ),
        })?;
    if out.status.success() {
        Ok(Found {
            ok: true,
            detail: format!(
                "pg_verifybackup: {files} files match the checksums of backup_manifest"
            ),
        })
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Ok(Found {
            ok: false,
            detail: format!(
                "pg_verifybackup failed ({}): {}",
                out.status,
                stderr.lines().take(3).collect::<Vec<_>>().join("; ")
            ),
        })
    }
}

/// The btree indexes of one database that `bt_index_check` can check:
/// ready and valid, and not another session's temporary index.
const INDEXES_SQL: &str = "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
     JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE a.amname = 'btree' AND i.indisready AND i.indisvalid AND c.relpersistence <> 't' \
     ORDER BY c.oid";

/// Runs `bt_index_check` on every btree index of every database that
/// accepts connections, creating the `amcheck` extension where it is
/// missing (the server is a throwaway). `connect` opens a superuser
/// connection to the named database; `first_db` is one that exists. Corrupt indexes are logged by name
/// (the log is not stored in the repository); the result only counts them.
///
/// # Errors
/// When the first connection fails; later failures are counted in the
/// result.
pub async fn amcheck<F, Fut>(first_db: &str, connect: F) -> Result<Found>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<tokio_postgres::Client>>,
{
    let first = connect(first_db.to_string()).await?;
    let databases: Vec<String> = first
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await
        .map_err(|e| Error::Database {
            target: "the drill's scratch server".into(),
            message: crate::source::postgres::error_text(&e),
        })?
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(first);
    let (mut checked, mut corrupt, mut problems) = (0usize, 0usize, Vec::new());
    for db in &databases {
        let client = match connect(db.clone()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(event = "drill_database_unreachable", database = %db, error = %e, "amcheck could not connect to a database of the drill's server.");
                problems.push("a database could not be connected to".to_string());
                continue;
            }
        };
        if let Err(e) = client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .await
        {
            let why = crate::source::postgres::error_text(&e);
            tracing::error!(event = "amcheck_unavailable", database = %db, error = %why, "CREATE EXTENSION amcheck failed on the drill's server.");
            problems.push(format!("CREATE EXTENSION amcheck failed: {why}"));
            continue;
        }
        let indexes = match client.query(INDEXES_SQL, &[]).await {
            Ok(rows) => rows,
            Err(e) => {
                problems.push(format!(
                    "listing indexes failed: {}",
                    crate::source::postgres::error_text(&e)
                ));
                continue;
            }
        };
        for row in indexes {
            let oid: u32 = row.get(0);
            let name: String = row.get(1);
            checked += 1;
            if let Err(e) = client
                .batch_execute(&format!("SELECT bt_index_check({oid}::regclass)"))
                .await
            {
                corrupt += 1;
                tracing::error!(event = "drill_step", database = %db, index = %name, error = %crate::source::postgres::error_text(&e), "bt_index_check found a corrupt index on the drill's server.");
            }
        }
    }
    let ok = corrupt == 0 && problems.is_empty();
    let mut detail = format!(
        "bt_index_check on {checked} btree index{} in {} database{}",
        if checked == 1 { "" } else { "es" },
        databases.len(),
        if databases.len() == 1 { "" } else { "s" }
    );
    if corrupt > 0 {
        detail.push_str(&format!(
            ": {corrupt} corrupt (named in drctl's log, not here: records are not encrypted)"
        ));
    }
    if !problems.is_empty() {
        problems.dedup();
        detail.push_str(&format!("; {}", problems.join("; ")));
    }
    Ok(Found { ok, detail })
}
