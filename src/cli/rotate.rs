//! `key rotate`: the plan (what is rotated and the bytes it moves), then
//! the rotation, policy by policy.

use std::sync::Arc;

use super::Ctx;
use super::inspect::selected;
use crate::error::{Error, Result};
use crate::rotate::{self as job, RotateOptions, RotateReport};

pub struct Flags {
    pub dry_run: bool,
    pub purge_versions: bool,
    pub yes: bool,
}

pub async fn rotate(
    ctx: &Ctx,
    add: &[String],
    remove: &[String],
    policy: Option<&str>,
    flags: Flags,
) -> Result<()> {
    let Flags {
        dry_run,
        purge_versions,
        yes,
    } = flags;
    let config = ctx.config()?;
    if add.is_empty() && remove.is_empty() {
        return Err(Error::Usage(
            "key rotate needs --add RECIPIENT, --remove RECIPIENT or both".into(),
        ));
    }
    for k in add.iter().chain(remove) {
        crate::pipeline::crypto::parse_recipients(std::slice::from_ref(k)).map_err(|e| {
            Error::Usage(format!("{e} (expected an age X25519 public key, `age1…`)"))
        })?;
    }
    if let Some(both) = add.iter().find(|k| remove.contains(k)) {
        return Err(Error::Usage(format!("{both} is both added and removed")));
    }
    if let Some(still) = remove.iter().find(|k| config.recipients.contains(k)) {
        return Err(Error::Usage(format!(
            "[encryption] recipients in drctl.toml still lists {still}: new backups and WAL would be encrypted to \
             the key being removed. Remove it there first (on every host that takes backups or archives WAL), \
             then run key rotate; nothing was changed"
        )));
    }
    for k in add.iter().filter(|k| !config.recipients.contains(k)) {
        errln!(
            "warning: {k} is not in [encryption] recipients of drctl.toml, so backups taken from now on will not be encrypted to it"
        );
    }
    let policies = selected(&config, policy)?;
    let repo = ctx.repo(&config).await?;
    let json = ctx.cli.json;
    let mut opts = RotateOptions {
        add: add.to_vec(),
        remove: remove.to_vec(),
        dry_run: true,
        purge_versions,
        cancel: ctx.cancel.clone(),
        say: None,
    };
    let wal_recipients = opts.target(&config.recipients);
    let identities = if dry_run {
        Vec::new()
    } else {
        repo.require_signing_key("key rotate")?;
        let ids = ctx.identities(&config)?;
        let public: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
        if !public.iter().any(|p| wal_recipients.contains(p)) {
            errln!(
                "warning: the identity file holds no identity of the new recipients; after the rotation this host \
                 cannot read the backups (make sure an identity of {} is kept safe)",
                wal_recipients.join(", ")
            );
        }
        ids
    };

    let mut plans = Vec::new();
    for p in &policies {
        plans.push(job::rotate_policy(&repo, &p.name, &[], &wal_recipients, &opts).await?);
    }
    if !json {
        print_plan(&plans, &repo.store.location());
        let versioned = match repo.store.protection().await {
            Ok(p) => p.versioning.as_deref() == Some("Enabled"),
            Err(_) => false,
        };
        if versioned {
            outln!(
                "  {}",
                if purge_versions {
                    "The bucket keeps old versions: those of the objects rotated away are deleted for good (--purge-versions)."
                } else {
                    "The bucket keeps old versions: the old key reads those of the objects rotated away until the \
                     bucket's noncurrent-version expiry (--purge-versions deletes them now)."
                }
            );
        }
    }
    let work = plans
        .iter()
        .any(|r| !r.rotated.is_empty() || r.wal_rotated > 0);
    if dry_run || !work {
        if json {
            ctx.print_json(&serde_json::json!({ "dry_run": dry_run, "reports": plans }));
        } else if !work {
            outln!(
                "Nothing to rotate: every backup and WAL object is encrypted to the new key set."
            );
        }
        return Ok(());
    }
    if !yes {
        super::restore::ask("re-encrypting these backups to the new key set")?;
    }
    opts.dry_run = false;
    if ctx.progress() {
        opts.say = Some(Arc::new(|line| errln!("{line}")));
    }
    let mut reports = Vec::new();
    for p in &policies {
        let report =
            job::rotate_policy(&repo, &p.name, &identities, &wal_recipients, &opts).await?;
        if !json {
            print_outcome(&report);
        }
        reports.push(report);
    }
    job::update_marker(&repo, policy.is_none().then_some(wal_recipients.as_slice())).await?;
    if json {
        ctx.print_json(&serde_json::json!({ "dry_run": false, "reports": reports }));
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn print_plan(plans: &[RotateReport], location: &str) {
    outln!("Key rotation plan for {location}:");
    for r in plans {
        outln!(
            "  {}: {} of {} backup(s) to rotate, {} already on the new keys; {} WAL object(s) to rotate",
            r.policy,
            r.rotated.len(),
            r.backups,
            r.already,
            r.wal_rotated
        );
        let rest = if r.bytes_downloaded < r.bytes_of_objects {
            ", the rest copied inside the store"
        } else {
            ""
        };
        outln!(
            "    {} of objects; about {} through this host each way{rest}",
            mib(r.bytes_of_objects),
            mib(r.bytes_downloaded)
        );
        for k in &r.untrusted {
            outln!(
                "    not rotated (untrusted manifest, see the warning): {}",
                crate::signing::printable(k)
            );
        }
    }
}

fn print_outcome(r: &RotateReport) {
    outln!(
        "{}: rotated {} backup(s) and {} WAL object(s); {} old object(s) removed",
        r.policy,
        r.rotated.len(),
        r.wal_rotated,
        r.old_objects_removed
    );
    outln!(
        "  moved {} down and {} up for {} of objects; {} copied inside the store",
        mib(r.bytes_downloaded),
        mib(r.bytes_uploaded),
        mib(r.bytes_of_objects),
        mib(r.bytes_copied_in_store)
    );
    if !r.archived.is_empty() {
        outln!(
            "  NOT rotated, archived (GLACIER or DEEP_ARCHIVE) without a retrieved copy: {}; retrieve them \
             (`drctl verify {} --read-data` requests the retrievals) and run key rotate again once they are done",
            r.archived.join(", "),
            r.policy
        );
    }
    if r.versions_purged > 0 || !r.versions_retained.is_empty() {
        outln!(
            "  {} old version(s) deleted for good; {} kept by the store",
            r.versions_purged,
            r.versions_retained.len()
        );
        for v in &r.versions_retained {
            outln!("    kept: {v}");
        }
    }
    if !r.held.is_empty() {
        outln!(
            "  old objects kept while a restore or drill holds backup(s) {}; run key rotate again when it ends",
            r.held.join(", ")
        );
    }
}
