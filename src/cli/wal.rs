//! `wal-push` and `wal-fetch`: the commands PostgreSQL runs as its
//! `archive_command` and `restore_command`. Their exit codes are
//! PostgreSQL's contract (see [`crate::wal`]); what they print on stderr
//! goes to the server's log.

use std::path::Path;

use super::Ctx;
use crate::config::{Config, Policy, SourceConfig};
use crate::error::{Error, Result};
use crate::wal::fetch::Fetched;
use crate::wal::push::{Archiver, Outcome, Pushed};
use crate::wal::spool::Spool;

fn cluster_policy<'c>(config: &'c Config, name: &str) -> Result<&'c Policy> {
    let policy = config.policy(name)?;
    match policy.source {
        SourceConfig::PostgresCluster { .. } => Ok(policy),
        _ => Err(Error::Usage(format!(
            "policy `{name}` is a `{}` policy; WAL is archived for `postgres-cluster` policies only",
            policy.source.kind()
        ))),
    }
}

fn spool_of(config: &Config, policy: &Policy) -> Spool {
    Spool::new(
        &config.wal.spool_dir,
        &policy.name,
        config.wal.spool_max_bytes,
    )
}

pub async fn push(ctx: &Ctx, policy: &str, path: &Path) -> Result<()> {
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    // Not `ctx.repo`: opening the repository reads it, and a repository
    // that does not answer is what the spool is for.
    let store = crate::storage::open(&config.repository).await?;
    let archiver = Archiver {
        store,
        policy: &policy.name,
        recipients: &config.recipients,
        level: policy.compression_level,
        spool: spool_of(&config, policy),
        timeout: config.wal.store_timeout,
    };
    let report = crate::wal::push::archive(&archiver, path).await?;
    let (drained, ahead) = (report.drained, report.ahead);
    match report.outcome {
        Outcome::Pushed(Pushed::Stored { key, stored_bytes }) => tracing::info!(
            policy = %policy.name, key = %key, stored_bytes, drained, ahead, "Archived a WAL file."
        ),
        Outcome::Pushed(Pushed::AlreadyArchived { key }) => tracing::warn!(
            policy = %policy.name,
            key = %key,
            "This WAL file was archived before with the same content; nothing was written."
        ),
        Outcome::Spooled {
            file,
            queued_bytes,
            reason,
        } => tracing::warn!(
            policy = %policy.name,
            file = %file.display(),
            queued_bytes,
            max_bytes = config.wal.spool_max_bytes,
            reason = %reason,
            "The repository did not take this WAL file; it is sealed in the local spool and will be \
             stored by the next wal-push or `drctl wal drain`."
        ),
        Outcome::AlreadySpooled { file } => tracing::warn!(
            policy = %policy.name,
            file = %file.display(),
            "This WAL file is in the local spool already with the same content; nothing was written."
        ),
        Outcome::StoredAhead => tracing::info!(
            policy = %policy.name,
            "An earlier wal-push stored this WAL file ahead; nothing was written."
        ),
    }
    Ok(())
}

/// `drctl wal drain POLICY`: stores what waits in the spool.
pub async fn drain(ctx: &Ctx, policy: &str) -> Result<()> {
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    let spool = spool_of(&config, policy);
    let repo = ctx.repo(&config).await?;
    let drained = crate::wal::push::drain(&repo, &spool, &policy.name).await?;
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "policy": policy.name,
            "spool": spool.dir(),
            "stored": drained.stored,
            "left": drained.left,
            "busy": drained.busy,
        }));
    } else if drained.busy {
        outln!(
            "{}: another drctl is draining {} now; nothing was done",
            policy.name,
            spool.dir().display()
        );
    } else {
        outln!(
            "{}: stored {} spooled WAL file(s); {} left in {}",
            policy.name,
            drained.stored,
            drained.left,
            spool.dir().display()
        );
    }
    Ok(())
}

pub async fn fetch(ctx: &Ctx, policy: &str, name: &str, path: &Path) -> Result<()> {
    let fetched = async {
        let config = ctx.config()?;
        let policy = cluster_policy(&config, policy)?;
        let identities = ctx.identities(&config)?;
        let repo = ctx.repo(&config).await?;
        crate::wal::fetch::fetch(&repo, &identities, &policy.name, name, path).await
    }
    .await;
    match fetched {
        Ok(Fetched::Restored { .. }) => Ok(()),
        Ok(Fetched::NotArchived) => Err(Error::NotArchived(format!(
            "{name} is not in the archive of `{policy}`"
        ))),
        Err(e) => Err(Error::StopRecovery(Box::new(e))),
    }
}
