//! `key generate`, `init`, `check`, `list`, `verify`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::Ctx;
use crate::config::RepositoryConfig;
use crate::error::{Error, Result};
use crate::pipeline::crypto;
use crate::progress::bytes;
use crate::repo::{Repo, catalog};
use crate::timespec::LocalZone;

/// Writes a new secret key file: mode 0600, refused if anything is there.
fn write_key_file(out: &Path, text: &str, what: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Refused(format!(
                "{} already exists; drctl never overwrites a key ({what})",
                out.display()
            )),
            _ => Error::io(format!("creating {}", out.display()), e),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("writing {}", out.display()), e))
}

pub fn key_generate(ctx: &Ctx, out: &Path) -> Result<()> {
    let (secret, public) = crypto::generate();
    write_key_file(out, &secret, "it may be the only way to read your backups")?;
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({ "identity_file": out, "recipient": public }));
    } else {
        errln!(
            "Wrote the secret identity to {} (mode 0600). Keep a copy off this host: without it no backup can be restored.",
            out.display()
        );
        errln!("Add this public key to `encryption.recipients` in drctl.toml:");
        outln!("{public}");
    }
    Ok(())
}

pub fn signing_key_generate(ctx: &Ctx, out: &Path) -> Result<()> {
    let key = crate::signing::SecretKey::generate()?;
    write_key_file(
        out,
        &key.to_file_text(chrono::Utc::now()),
        "the backups signed with it are trusted only as long as its public key is",
    )?;
    let public = key.public();
    if ctx.cli.json {
        ctx.print_json(
            &serde_json::json!({ "signing_key_file": out, "public_key": public.to_string() }),
        );
    } else {
        errln!(
            "Wrote the signing key to {} (mode 0600). It stays on the hosts that write backups and drill records; never put it in the bucket.",
            out.display()
        );
        errln!(
            "Add this public key to `[signing] trusted` in the drctl.toml of every host that reads the repository:"
        );
        outln!("{public}");
    }
    Ok(())
}

pub fn signing_key_public(ctx: &Ctx, file: &Path) -> Result<()> {
    let public = crate::signing::SecretKey::read(file)?.public();
    if ctx.cli.json {
        ctx.print_json(
            &serde_json::json!({ "signing_key_file": file, "public_key": public.to_string() }),
        );
    } else {
        outln!("{public}");
    }
    Ok(())
}

pub async fn init(ctx: &Ctx) -> Result<()> {
    let config = ctx.config()?;
    if let RepositoryConfig::Local { path } = &config.repository {
        if let Some(hint) = crate::repo::unmounted_hint(path) {
            errln!(
                "warning: {hint}; if a backup volume belongs there, it is not mounted and this repository is being created on the disk beneath it"
            );
        }
        std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    }
    let store = crate::storage::open(&config.repository).await?;
    let signing = crate::signing::for_config(&config)?;
    if signing.as_ref().is_some_and(|s| s.key.is_none()) {
        return Err(Error::Key(
            "`[signing]` has no `key_file`: `drctl init` signs repo.json, so run it on a host that writes backups".into(),
        ));
    }
    let created = Repo::init(&store, &config.recipients, signing.as_deref()).await?;
    let repo = Repo::open(store).await?.with_signing(signing).await?;
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({ "location": repo.store.location(), "created": created, "marker": repo.marker }));
    } else if created {
        outln!("Initialised repository {}.", repo.store.location());
    } else {
        outln!(
            "Repository {} already exists; left unchanged.",
            repo.store.location()
        );
        if repo.marker.recipients != config.recipients {
            errln!(
                "note: drctl.toml lists different recipients from the ones recorded at init; new backups use drctl.toml's."
            );
        }
    }
    if let Some(why) = &repo.marker_untrusted {
        errln!("warning: {why}");
    }
    Ok(())
}

pub async fn check(ctx: &Ctx, offline: bool) -> Result<()> {
    let config = ctx.config()?;
    let mut warnings = Vec::new();
    match (&ctx.cli.identity, &config.identity_file) {
        (Some(p), _) | (None, Some(p)) if !p.exists() => warnings.push(format!(
            "identity file {} does not exist; restores will fail until it does",
            p.display()
        )),
        (None, None) => {
            warnings.push("no `encryption.identity_file`; restores need --identity".to_string())
        }
        _ => {}
    }
    let signing = match &config.signing {
        None => {
            warnings.push("unsigned mode: drctl.toml has no [signing], so anyone who can write to the repository can plant a backup that drctl would list and restore; see \"Signing\" in docs/operations.md".to_string());
            serde_json::json!({ "mode": "unsigned" })
        }
        Some(s) => {
            let loaded = crate::signing::Signing::load_quietly(s)?;
            warnings.extend(
                s.key_file
                    .as_deref()
                    .and_then(crate::signing::key_file_warning),
            );
            serde_json::json!({
                "mode": "signed",
                "trusted": s.trusted.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "signs_with": loaded.key.as_ref().map(|k| k.public().to_string()),
            })
        }
    };
    for (n, hook) in config.alerts.iter().enumerate() {
        if let crate::config::WebhookUrl::Env(var) = &hook.url
            && std::env::var_os(var).is_none()
        {
            warnings.push(format!(
                "alert webhook {} reads its URL from ${var}, which is not set here; the daemon sends nothing there unless its environment has it",
                n + 1
            ));
        }
    }
    for p in &config.policies {
        let scheduled = p.schedule.as_ref().is_some_and(|s| s.backup.is_some());
        if p.rpo_target().is_some() && !scheduled {
            warnings.push(format!(
                "policy {} has an rpo_target but no [schedule] backup; the daemon will report it late unless backups come from elsewhere",
                p.name
            ));
        }
    }
    let probes = match offline {
        true => Vec::new(),
        false => super::check::run(ctx, &config).await,
    };
    let failed = probes.iter().filter(|p| !p.ok).count();
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "ok": failed == 0,
            "offline": offline,
            "checks": probes,
            "config": config.path,
            "repository": config.repository.describe(),
            "signing": signing,
            "policies": config.policies.iter().map(|p| serde_json::json!({"name": p.name, "kind": p.source.kind(), "file": p.file})).collect::<Vec<_>>(),
            "copies": config.copies.iter().map(|c| serde_json::json!({"name": c.name, "url": c.repository.describe(), "after_backup": c.after_backup, "retention": c.retention.as_ref().map(crate::retention::describe)})).collect::<Vec<_>>(),
            "warnings": warnings,
        }));
    } else {
        outln!("{}: ok", config.path.display());
        outln!("repository: {}", config.repository.describe());
        match &signing["signs_with"] {
            _ if signing["mode"] == "unsigned" => outln!("signing: off (unsigned mode)"),
            serde_json::Value::String(k) => outln!(
                "signing: on; {} trusted key(s); this host signs with {k}",
                signing["trusted"].as_array().map_or(0, Vec::len)
            ),
            _ => outln!(
                "signing: on; {} trusted key(s); this host only reads (no key_file)",
                signing["trusted"].as_array().map_or(0, Vec::len)
            ),
        }
        for p in &config.policies {
            outln!(
                "policy {} ({}): ok  [{}]",
                p.name,
                p.source.kind(),
                p.file.display()
            );
        }
        for c in &config.copies {
            outln!(
                "copy {}: {}{}; retention: {}",
                c.name,
                c.repository.describe(),
                if c.after_backup {
                    ", after every backup"
                } else {
                    ""
                },
                c.retention
                    .as_ref()
                    .map_or_else(|| "each policy's".to_string(), crate::retention::describe)
            );
        }
        for p in &probes {
            match p.ok {
                true => outln!("ok      {}: {}", p.name, p.detail),
                false => outln!("FAILED  {}: {}", p.name, p.detail),
            }
        }
        for w in warnings {
            errln!("warning: {w}");
        }
    }
    // Every probe is reported above; the first failure is the error and
    // decides the exit code (5 for something unreachable, 2 for a key or a
    // repository that is not initialised).
    match probes.into_iter().find_map(|p| p.error) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(super) fn selected<'a>(
    config: &'a crate::config::Config,
    policy: Option<&str>,
) -> Result<Vec<&'a crate::config::Policy>> {
    match policy {
        Some(name) => Ok(vec![config.policy(name)?]),
        None => Ok(config.policies.iter().collect()),
    }
}

#[derive(Serialize)]
struct ListRow<'a> {
    policy: &'a str,
    id: &'a str,
    kind: &'a str,
    point_in_time: chrono::DateTime<chrono::Utc>,
    size_bytes: u64,
    plaintext_bytes: u64,
    duration_seconds: f64,
    host: &'a str,
}

pub async fn list(
    ctx: &Ctx,
    policy: Option<&str>,
    since: Option<&str>,
    last: Option<usize>,
) -> Result<()> {
    let config = ctx.config()?;
    let policies = selected(&config, policy)?;
    let since = match since {
        Some(input) => {
            let invalid = |reason: String| Error::InvalidTime {
                input: input.to_string(),
                reason: format!("--since: {reason}"),
            };
            let now = chrono::Utc::now();
            let spec = crate::timespec::read_timespec_local(input, now).map_err(invalid)?;
            Some(crate::timespec::resolve(&spec.spec, now).map_err(invalid)?)
        }
        None => None,
    };
    let repo = ctx.repo(&config).await?;
    let mut catalogs = Vec::new();
    for p in &policies {
        let mut c = catalog::load(&repo, &p.name).await?;
        // Compared to the second, as `list` shows them and `--to` picks.
        if let Some(t) = since {
            c.backups
                .retain(|m| chrono::SubsecRound::trunc_subsecs(m.point_in_time, 0) >= t);
        }
        if let Some(n) = last {
            c.backups.truncate(n);
        }
        catalogs.push((p.name.clone(), c));
    }
    if ctx.cli.json {
        let rows: Vec<ListRow> = catalogs
            .iter()
            .flat_map(|(_, c)| c.backups.iter())
            .map(|m| ListRow {
                policy: &m.policy,
                id: &m.id,
                kind: &m.kind,
                point_in_time: m.point_in_time,
                size_bytes: m.data.digests.size,
                plaintext_bytes: m.data.digests.plaintext_size,
                duration_seconds: m.duration_seconds(),
                host: &m.host,
            })
            .collect();
        let damaged: Vec<_> = catalogs
            .iter()
            .flat_map(|(_, c)| c.damaged.iter())
            .map(|(k, r)| serde_json::json!({"key": k, "reason": r}))
            .collect();
        let untrusted: Vec<_> = catalogs
            .iter()
            .flat_map(|(_, c)| c.untrusted.iter())
            .map(|(k, r)| serde_json::json!({"key": k, "reason": r}))
            .collect();
        ctx.print_json(
            &serde_json::json!({ "backups": rows, "damaged": damaged, "untrusted": untrusted }),
        );
        return refuse_untrusted(&catalogs);
    }
    // `restore --to` reads a time without an offset as local time, so the
    // local clock is shown beside UTC (which carries its `Z`) wherever the
    // two differ: a time pasted from either column picks the backup it shows.
    let zone = match LocalZone::from_env() {
        Ok(z) => Some(z),
        Err(why) => {
            errln!("warning: {why}; local times are not shown");
            None
        }
    };
    let local = zone.filter(|z| {
        catalogs
            .iter()
            .flat_map(|(_, c)| &c.backups)
            .any(|m| z.offset_seconds(m.point_in_time) != 0)
    });
    for (name, c) in &catalogs {
        outln!(
            "{name}: {} backup{}",
            c.backups.len(),
            if c.backups.len() == 1 { "" } else { "s" }
        );
        if !c.backups.is_empty() {
            outln!(
                "  {:<27} {:<20} {}{:>10} {:>10} {:>9}",
                "ID",
                "POINT IN TIME (UTC)",
                local.map_or(String::new(), |z| format!(
                    "{:<20} ",
                    local_header(&z.name())
                )),
                "STORED",
                "DATA",
                "DURATION"
            );
        }
        for m in &c.backups {
            outln!(
                "  {:<27} {:<20} {}{:>10} {:>10} {:>8.1}s",
                m.id,
                // With its `Z`, so that pasted into `--to` it is read as UTC.
                m.point_in_time.format("%Y-%m-%dT%H:%M:%SZ"),
                local.map_or(String::new(), |z| format!(
                    "{:<20} ",
                    z.clock(m.point_in_time)
                )),
                bytes(m.data.digests.size),
                bytes(m.data.digests.plaintext_size),
                m.duration_seconds()
            );
        }
        for (key, reason) in &c.damaged {
            outln!("  DAMAGED {key}: {reason}");
        }
    }
    refuse_untrusted(&catalogs)
}

/// The local-time column's header, cut to its width: a long zone name
/// keeps its last part (`LOCAL (Indianapolis)`).
fn local_header(zone: &str) -> String {
    let full = format!("LOCAL ({zone})");
    if full.len() <= 20 {
        return full;
    }
    let last = zone.rsplit('/').next().unwrap_or(zone);
    let short = format!("LOCAL ({last})");
    if short.len() <= 20 {
        short
    } else {
        "LOCAL TIME".into()
    }
}

/// Names every manifest set aside for its signature, one warning line
/// each, and fails with `Untrusted` when there was any.
fn refuse_untrusted(catalogs: &[(String, catalog::Catalog)]) -> Result<()> {
    for (_, reason) in catalogs.iter().flat_map(|(_, c)| &c.untrusted) {
        errln!("warning: {reason}");
    }
    catalog::untrusted_summary(
        catalogs
            .iter()
            .flat_map(|(_, c)| c.untrusted.iter().map(|(k, _)| k.as_str())),
    )
}

pub async fn verify(ctx: &Ctx, policy: Option<&str>, read_data: bool) -> Result<()> {
    let config = ctx.config()?;
    let policies = selected(&config, policy)?;
    let identities = if read_data {
        Some(ctx.identities(&config)?)
    } else {
        None
    };
    let repo = ctx.repo(&config).await?;
    let mut reports = Vec::new();
    let mut damaged = Vec::new();
    let mut wal = Vec::new();
    let mut catalogs = Vec::new();
    for p in &policies {
        let c = catalog::load(&repo, &p.name).await?;
        damaged.extend(c.damaged.iter().map(|(k, r)| format!("{k}: {r}")));
        for m in &c.backups {
            let r = crate::restore::verify(&repo, identities.as_deref(), m).await?;
            if !ctx.cli.json {
                match r.ok {
                    true if !r.archived.is_empty() => outln!(
                        "ARCHIVED {} {}: not read: {}",
                        r.policy,
                        r.id,
                        r.archived.join(", ")
                    ),
                    true => outln!("ok      {} {}", r.policy, r.id),
                    false => outln!("FAILED  {} {}: {}", r.policy, r.id, r.problems.join("; ")),
                }
            }
            reports.push(r);
        }
        if let crate::config::SourceConfig::PostgresCluster { .. } = p.source {
            let ids = identities.clone().or_else(|| ctx.identities(&config).ok());
            let v = crate::wal::check::verify(&repo, &p.name, &c.backups, ids.as_deref()).await?;
            if !ctx.cli.json {
                for line in v.lines() {
                    outln!("{line}");
                }
            }
            wal.push(v);
        }
        catalogs.push((p.name.clone(), c));
    }
    if let Some(why) = &repo.marker_untrusted {
        errln!("warning: {why}");
    }
    let untrusted: Vec<String> = repo
        .marker_untrusted
        .iter()
        .cloned()
        .chain(
            catalogs
                .iter()
                .flat_map(|(_, c)| c.untrusted.iter().map(|(_, r)| r.clone())),
        )
        .collect();
    let wal_gaps: Vec<&String> = wal.iter().flat_map(|v| &v.gaps).collect();
    if !ctx.cli.json {
        for d in &damaged {
            outln!("DAMAGED {d}");
        }
    }
    let failed: Vec<_> = reports.iter().filter(|r| !r.ok).collect();
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({ "read_data": read_data, "backups": reports, "damaged_manifests": damaged, "untrusted": untrusted, "wal": wal }));
    } else {
        outln!(
            "{} backup{} checked{}, {} failed",
            reports.len(),
            if reports.len() == 1 { "" } else { "s" },
            if read_data {
                " (every byte read)"
            } else if repo.copy_name.is_some() {
                " (stored bytes' SHA-256; --read-data also decrypts)"
            } else {
                " (sizes only; --read-data reads every byte)"
            },
            failed.len()
        );
    }
    // A planted or altered object outranks every other finding: someone
    // who should not has written to the repository.
    refuse_untrusted(&catalogs)?;
    if repo.marker_untrusted.is_some() {
        catalog::untrusted_summary(std::iter::once(crate::repo::MARKER_KEY))?;
    }
    let archived: Vec<_> = reports.iter().filter(|r| !r.archived.is_empty()).collect();
    if failed.is_empty() && damaged.is_empty() && wal_gaps.is_empty() {
        return match archived.first() {
            None => Ok(()),
            Some(first) => Err(Error::Archived(format!(
                "{} of {} backups could not be read: their data is in an archive storage class without a retrieved copy (first: backup {} of `{}`: {}); `drctl restore POLICY --backup ID --wait` retrieves one, or verify without --read-data checks sizes only",
                archived.len(),
                reports.len(),
                first.id,
                first.policy,
                first.archived.join(", ")
            ))),
        };
    }
    let first = match failed.first() {
        Some(r) => format!(
            "backup {} of `{}`: {}",
            r.id,
            r.policy,
            r.problems.join("; ")
        ),
        None if !damaged.is_empty() => format!("damaged manifest {}", damaged[0]),
        None => wal_gaps[0].clone(),
    };
    Err(Error::VerifyFailed {
        failed: failed.len() + damaged.len() + wal_gaps.len(),
        total: reports.len() + damaged.len() + wal_gaps.len(),
        first,
    })
}
