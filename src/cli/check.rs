//! `check` beyond the files (`--offline` skips this): what a backup and a
//! restore will need, tried for real. The repository is opened and written
//! to, each source is reached with its client tool's version matched, each
//! drill's scratch server or directory is reached, and the identity is one
//! of the recipients. A check that only parses files says "ok" with the
//! repository unmounted and the database down.

use serde::Serialize;

use super::Ctx;
use crate::config::{Config, Policy, SourceConfig};
use crate::error::{Error, Result};

/// One thing tried, and what came of it.
#[derive(Serialize)]
pub struct Probe {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    #[serde(skip)]
    pub error: Option<Error>,
}

impl Probe {
    fn of(name: String, result: Result<String>) -> Probe {
        match result {
            Ok(detail) => Probe {
                name,
                ok: true,
                detail,
                error: None,
            },
            Err(e) => Probe {
                name,
                ok: false,
                detail: e.to_string(),
                error: Some(e),
            },
        }
    }
}

/// Runs every probe; one that fails does not stop the others, so that one
/// run lists everything to fix.
pub async fn run(ctx: &Ctx, config: &Config) -> Vec<Probe> {
    let mut probes = vec![Probe::of(
        "repository".into(),
        repository(ctx, config).await,
    )];
    if let Some(p) = identity(ctx, config) {
        probes.push(Probe::of("identity".into(), p));
    }
    for policy in &config.policies {
        probes.push(Probe::of(
            format!("source {}", policy.name),
            source(policy).await,
        ));
        if let Some(d) = &policy.drill {
            if let Some(url) = &d.scratch_url {
                probes.push(Probe::of(
                    format!("drill {} scratch server", policy.name),
                    crate::source::postgres::Admin::connect(url)
                        .await
                        .map(|a| format!("{} reachable", a.server)),
                ));
            }
            if let Some(dir) = &d.scratch_dir {
                probes.push(Probe::of(
                    format!("drill {} scratch directory", policy.name),
                    writable_dir(dir),
                ));
            }
        }
    }
    probes
}

/// The repository answers, has its repo.json, and takes a write: a probe
/// object written, read back and deleted (outside every prefix that holds
/// backups, records or leases).
async fn repository(ctx: &Ctx, config: &Config) -> Result<String> {
    let repo = ctx.repo(config).await?;
    let key = format!("check-{:016x}", rand::random::<u64>());
    let body = bytes::Bytes::from_static(b"drctl check: a write probe, deleted at once\n");
    repo.store
        .put(&key, body.clone(), crate::storage::PutMode::Create)
        .await?;
    let read = repo.store.get(&key, None).await;
    let deleted = repo.store.delete(&key).await;
    if read?.0 != body {
        return Err(Error::Integrity {
            object: format!("{}/{key}", repo.store.location()),
            reason: "the probe object read back differs from what was written".into(),
        });
    }
    deleted?;
    Ok(format!(
        "{} is readable and writable",
        repo.store.location()
    ))
}

/// The identity (when this host has one) decrypts what is written to the
/// configured recipients.
fn identity(ctx: &Ctx, config: &Config) -> Option<Result<String>> {
    let path = ctx
        .cli
        .identity
        .as_deref()
        .or(config.identity_file.as_deref())?;
    if !path.exists() {
        // `check` warns about it already; a backup-only host has none.
        return None;
    }
    Some(ctx.identities(config).and_then(|ids| {
        let have: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
        match have.iter().find(|h| config.recipients.contains(h)) {
            Some(h) => Ok(format!("{} is for recipient {h}", path.display())),
            None => Err(Error::Key(format!(
                "identity file {} is for {}, which is not in `encryption.recipients` ({}); \
                 new backups could not be restored with it: use the identity of one of the recipients",
                path.display(),
                have.join(", "),
                config.recipients.join(", ")
            ))),
        }
    }))
}

/// The source answers, and the client tool a backup runs is there and
/// new enough for the server.
async fn source(policy: &Policy) -> Result<String> {
    use crate::source::postgres as pg;
    let (url, bin_dir, tool) = match &policy.source {
        SourceConfig::Postgres { url, bin_dir, .. } => (url, bin_dir, "pg_dump"),
        SourceConfig::PostgresCluster { url, bin_dir, .. } => (url, bin_dir, "pg_basebackup"),
        SourceConfig::Files { paths, .. } => {
            for p in paths {
                std::fs::symlink_metadata(p).map_err(|e| Error::Source {
                    policy: policy.name.clone(),
                    message: format!("cannot read {}: {e}", p.display()),
                })?;
            }
            return Ok(format!("{} path(s) present", paths.len()));
        }
    };
    let config = pg::resolve(url)?;
    let target = pg::describe(&config);
    let client = pg::connect(&config).await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| Error::Database {
            target: target.clone(),
            message: format!("reading the server version: {e}"),
        })?
        .get(0);
    let version = u32::try_from(version).unwrap_or(0);
    let program = pg::program(
        pg::bin_dir(bin_dir.as_deref(), version / 10000).as_deref(),
        tool,
    );
    let tool_version = pg::check_tool(&policy.name, &program, version)?;
    Ok(format!(
        "{target} (server {}) reachable; {tool} {tool_version}",
        version / 10000
    ))
}

/// A directory a drill can create its scratch copy in.
fn writable_dir(dir: &std::path::Path) -> Result<String> {
    let probe = dir.join(format!(".drctl-check-{:016x}", rand::random::<u64>()));
    std::fs::create_dir(&probe)
        .and_then(|()| std::fs::remove_dir(&probe))
        .map_err(|e| Error::io(format!("creating a directory in {}", dir.display()), e))?;
    Ok(format!("{} is writable", dir.display()))
}
