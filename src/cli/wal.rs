//! `wal-push` and `wal-fetch`: the commands PostgreSQL runs as its
//! `archive_command` and `restore_command`. Their exit codes are
//! PostgreSQL's contract (see [`crate::wal`]); what they print on stderr
//! goes to the server's log.

use std::path::Path;

use super::Ctx;
use crate::config::{Config, Policy, SourceConfig};
use crate::error::{Error, Result};
use crate::wal::{fetch::Fetched, push::Pushed};

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

pub async fn push(ctx: &Ctx, policy: &str, path: &Path) -> Result<()> {
    let config = ctx.config()?;
    let policy = cluster_policy(&config, policy)?;
    let repo = ctx.repo(&config).await?;
    let pushed = crate::wal::push::push(
        &repo,
        &policy.name,
        &config.recipients,
        policy.compression_level,
        path,
    )
    .await?;
    match pushed {
        Pushed::Stored { key, stored_bytes } => {
            tracing::info!(policy = %policy.name, key = %key, stored_bytes, "Archived a WAL file.")
        }
        Pushed::AlreadyArchived { key } => tracing::warn!(
            policy = %policy.name,
            key = %key,
            "This WAL file was archived before with the same content; nothing was written."
        ),
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
