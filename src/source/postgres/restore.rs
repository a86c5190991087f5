//! Restoring a logical backup into a database: pg_restore into a scratch
//! database on the target server, an optional comparison with the
//! backup's fingerprint, then a rename into place. The target is never
//! half-restored: on any failure the scratch database is dropped.

use crate::error::{Error, Result};
use crate::progress::Meter;
use crate::repo::Repo;
use crate::repo::manifest::Manifest;
use crate::sealed::{copy_out, name_object, read_sealed, stream_object};
use crate::source::postgres::dumpscan::DumpPrint;
use crate::source::postgres::{self as postgres, fingerprint};
use crate::source::process;

/// How to restore into a database.
#[derive(Debug, Clone, Default)]
pub struct DbRestoreOptions {
    /// Replace a target database that is not empty.
    pub clean: bool,
    /// Compare the restored database with the backup's fingerprint.
    pub verify: bool,
    /// With `verify`: the whole data, or a sample (scheduled drills).
    pub scope: fingerprint::Scope,
    pub pg_restore_args: Vec<String>,
}

/// What a finished restore into a database did.
#[derive(Debug, Clone, Default)]
pub struct DbRestored {
    /// With `verify`: one line per difference from the fingerprint (empty
    /// when it matched); `None` when nothing was compared.
    pub diffs: Option<Vec<String>>,
    /// Fetching, decrypting, decompressing and pg_restore, which stream
    /// together and so are timed together.
    pub restore_seconds: f64,
    pub verify_seconds: f64,
    /// Tables and rows the fingerprint covered.
    pub tables: usize,
    pub rows: u64,
    /// What the check read: tables whole or sampled, rows hashed.
    pub verified: Option<fingerprint::Verified>,
}

/// What a restore into a database found and will do.
#[derive(Debug, Clone)]
pub struct DbTarget {
    pub url: String,
    pub describe: String,
    pub dbname: String,
    /// Relations (tables, views, sequences…) and large objects already there,
    /// or `None` if the database does not exist.
    pub existing_objects: Option<i64>,
}

/// Looks at the target database without changing it.
///
/// # Errors
/// `Database` when the server cannot be reached.
pub async fn inspect_target(url: &str) -> Result<DbTarget> {
    let pg = postgres::resolve(url)?;
    let describe = postgres::describe(&pg);
    let dbname = pg
        .get_dbname()
        .ok_or_else(|| Error::Database {
            target: describe.clone(),
            message: "the target names no database".into(),
        })?
        .to_string();
    let exists = postgres::Admin::connect(url).await?.exists(&dbname).await?;
    let db = |e: tokio_postgres::Error| Error::Database {
        target: describe.clone(),
        message: postgres::error_text(&e),
    };
    let existing_objects = if exists {
        let client = postgres::connect(&pg).await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') \
                 + (SELECT count(*) FROM pg_largeobject_metadata)",
                &[],
            )
            .await
            .map_err(db)?;
        Some(row.get::<_, i64>(0))
    } else {
        None
    };
    Ok(DbTarget {
        url: url.to_string(),
        describe,
        dbname,
        existing_objects,
    })
}

/// Restores a postgres backup into `target`: pg_restore into a fresh scratch
/// database on the same server, optional fingerprint check, then a rename
/// into place (replacing an empty, or with `clean` any, existing database).
/// On any failure the scratch database is dropped and the target is as it was.
///
/// # Errors
/// `Refused` for a non-empty target without `clean`; pipeline, pg_restore
/// and database errors otherwise.
pub async fn to_database(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    manifest: &Manifest,
    target: &DbTarget,
    opts: &DbRestoreOptions,
    meter: Meter,
) -> Result<DbRestored> {
    if let Some(n) = target.existing_objects.filter(|n| *n > 0)
        && !opts.clean
    {
        return Err(Error::Refused(format!(
            "database `{}` on {} is not empty ({n} objects); restore into a new database, or pass --clean to replace it",
            target.dbname, target.describe
        )));
    }
    let tag = manifest.id.rsplit('-').next().unwrap_or(&manifest.id);
    let scratch = postgres::db_name_with(&target.dbname, &format!("_drctl_{tag}"));
    let admin = postgres::Admin::connect(&target.url).await?;
    admin.drop(&scratch).await?;
    admin.create(&scratch).await?;
    let outcome = restore_into_scratch(
        repo,
        identities,
        manifest,
        &target.url,
        &scratch,
        opts,
        meter,
    )
    .await;
    let outcome = match outcome {
        Ok(done) if done.diffs.as_ref().is_some_and(|d| !d.is_empty()) => Err(Error::Integrity {
            object: format!("{}/{}", repo.store.location(), manifest.data.key),
            reason: format!(
                "the restored data does not match the backup's fingerprint: {}",
                done.diffs.unwrap_or_default().join("; ")
            ),
        }),
        other => other,
    };
    let outcome = match outcome {
        Ok(done) => swap_into_place(&admin, &scratch, target, tag)
            .await
            .map(|()| done),
        Err(e) => Err(e),
    };
    if outcome.is_err()
        && let Err(drop) = admin.drop(&scratch).await
    {
        tracing::error!(event = "scratch_database_not_dropped", database = %scratch, error = %drop, "Could not drop the scratch database of a failed restore; drop it by hand.");
    }
    outcome
}

/// Renames the finished scratch database to the target's name. An existing
/// target is moved aside first and dropped only once the new one is in
/// place; if that fails it is moved back.
async fn swap_into_place(
    admin: &postgres::Admin,
    scratch: &str,
    target: &DbTarget,
    tag: &str,
) -> Result<()> {
    if target.existing_objects.is_none() {
        return admin.rename(scratch, &target.dbname).await;
    }
    let old = postgres::db_name_with(&target.dbname, &format!("_drctl_{tag}_old"));
    admin.rename(&target.dbname, &old).await?;
    if let Err(e) = admin.rename(scratch, &target.dbname).await {
        if let Err(back) = admin.rename(&old, &target.dbname).await {
            tracing::error!(event = "database_not_moved_back", database = %old, error = %back, "Could not move the original database back; it is intact under this name.");
        }
        return Err(e);
    }
    admin.drop(&old).await
}

async fn restore_into_scratch(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    manifest: &Manifest,
    target_url: &str,
    scratch: &str,
    opts: &DbRestoreOptions,
    meter: Meter,
) -> Result<DbRestored> {
    let started = std::time::Instant::now();
    let scratch_url = postgres::with_dbname(target_url, scratch);
    let pg = postgres::resolve(&scratch_url)?;
    let server = {
        let c = postgres::connect(&pg).await?;
        let row = c
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| Error::Database {
                target: postgres::describe(&pg),
                message: postgres::error_text(&e),
            })?;
        row.get::<_, i32>(0) as u32
    };
    let bin = postgres::bin_dir(None, server / 10000);
    let program = postgres::program(bin.as_deref(), "pg_restore");
    postgres::check_tool(&manifest.policy, &program, server)?;
    let mut cmd = postgres::pg_restore_command(&program, &scratch_url);
    cmd.args(&opts.pg_restore_args);
    if let Some(pw) = pg.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref());
    }
    let mut child = process::spawn(cmd, "pg_restore").map_err(|e| Error::Source {
        policy: manifest.policy.clone(),
        message: format!("cannot start {}: {e}", program.display()),
    })?;
    let object = format!("{}/{}", repo.store.location(), manifest.data.key);
    let streamed = stream_object(repo, identities, &manifest.data, meter, move |r| {
        let mut stdin = child.child.stdin.take().expect("pg_restore stdin is piped");
        let copied = copy_out(r, &mut stdin, "pg_restore");
        drop(stdin);
        if let Err(e) = copied {
            let stderr = child.kill();
            return Err(match e {
                Error::Io { .. } => Error::Database {
                    target: "pg_restore".into(),
                    message: format!("pg_restore stopped reading: {stderr}"),
                },
                other => other,
            });
        }
        let (status, stderr) = child
            .wait()
            .map_err(|e| Error::io("waiting for pg_restore", e))?;
        if !status.success() {
            return Err(Error::Database {
                target: "pg_restore".into(),
                message: format!(
                    "pg_restore failed ({}): {stderr}",
                    process::describe(status)
                ),
            });
        }
        Ok(())
    })
    .await
    .map_err(|e| name_object(e, &object));
    streamed?;
    let mut done = DbRestored {
        restore_seconds: started.elapsed().as_secs_f64(),
        ..DbRestored::default()
    };
    if !opts.verify {
        return Ok(done);
    }
    let Some(record) = &manifest.fingerprint else {
        return Ok(done);
    };
    let verify_started = std::time::Instant::now();
    let json = read_sealed(repo, identities, record).await?;
    let expected: DumpPrint = serde_json::from_slice(&json).map_err(|e| Error::Integrity {
        object: record.key.clone(),
        reason: format!("not a fingerprint: {e}"),
    })?;
    let describe = postgres::describe(&pg);
    let verified = fingerprint::verify(
        &pg,
        &describe,
        &expected,
        &opts.scope,
        fingerprint::default_connections(),
    )
    .await?;
    done.verify_seconds = verify_started.elapsed().as_secs_f64();
    done.tables = expected.tables.len();
    done.rows = expected.tables.iter().map(|t| t.rows).sum();
    done.diffs = Some(verified.problems.clone());
    done.verified = Some(verified);
    Ok(done)
}
