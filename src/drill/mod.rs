//! Restore drills: restore a backup somewhere harmless, prove the data is
//! what was backed up, measure how long it took against the RTO and how old
//! the newest backup is against the RPO, and record it all in the repository
//! as a hash-chained record (see [`record`]).

pub mod cluster;
pub mod record;

use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::source::postgres::fingerprint::Scope;
use crate::storage::PutMode;
use record::{DrillRecord, StoredRecord, record_sha256};

pub fn drills_prefix(policy: &str) -> String {
    format!("drills/{policy}/")
}

pub fn record_key(policy: &str, id: &str) -> String {
    format!("drills/{policy}/{id}.json")
}

/// Every drill record of a policy, oldest first (ids sort by time), with
/// the exact bytes' sha256 for chain checking.
///
/// # Errors
/// Storage errors from listing or reading.
pub async fn load_records(repo: &Repo, policy: &str) -> Result<Vec<StoredRecord>> {
    Ok(crate::repo::read_json_objects(repo, &drills_prefix(policy))
        .await?
        .into_iter()
        .map(|(key, bytes)| StoredRecord {
            sha256: record_sha256(&bytes),
            record: repo.check_signature(&key, &bytes).and_then(|()| {
                serde_json::from_slice::<DrillRecord>(&bytes).map_err(|e| e.to_string())
            }),
            key,
        })
        .collect())
}

/// Appends a record to the policy's chain: links it to the newest stored
/// record and writes it with a conditional create, so a record is never
/// overwritten.
///
/// # Errors
/// Storage errors; the record is returned as stored on success.
pub async fn append(repo: &Repo, mut record: DrillRecord) -> Result<DrillRecord> {
    let existing = load_records(repo, &record.policy).await?;
    // A record planted without the signing key is no link of the chain.
    record.previous_sha256 = existing
        .iter()
        .rfind(|r| !record::is_untrusted(r))
        .map(|r| r.sha256.clone());
    let key = record_key(&record.policy, &record.id);
    let body = serde_json::to_vec_pretty(&record).expect("drill record serialises");
    repo.store
        .put(&key, repo.sign(&key, body)?, PutMode::Create)
        .await?;
    Ok(record)
}

/// A drill id: the start time to the millisecond, so that keys sort in the
/// order the chain links them even for drills a second apart, and a random
/// suffix (`20261127T030000123Z-5c1e9a07`).
pub fn record_id(now: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}-{:08x}",
        now.format("%Y%m%dT%H%M%S%3fZ"),
        rand::random::<u32>()
    )
}

/// Which backup a drill restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Newest,
    Id(String),
    /// A uniformly random one, so over time every age of backup is tested.
    Random,
}

pub struct DrillOptions {
    pub choice: Choice,
    /// Leave the scratch database or directory in place for inspection.
    pub keep: bool,
    pub identity_file: Option<std::path::PathBuf>,
    pub meter: crate::progress::Meter,
    /// When another drill of the policy is running (another daemon's, on
    /// the same schedule), return `Locked` and record nothing, instead of a
    /// failed drill. Scheduled drills set it; a person asking for a drill
    /// gets the refusal recorded.
    pub skip_if_busy: bool,
    /// The configuration file, for the `restore_command` of a cluster
    /// drill's server (`drctl --config … wal-fetch`).
    pub config_path: std::path::PathBuf,
    /// Use the policy's sampled check (`[drill] sample_percent`) unless a
    /// full check is due. Scheduled drills set it.
    pub allow_sample: bool,
}

/// Prefix of every scratch database a drill of `policy` creates; a leftover
/// from a killed drill is recognised by it and dropped by the next drill.
pub fn scratch_prefix(policy: &str) -> String {
    format!("drctl_drill_{}_", policy.replace(['-', '.'], "_"))
}

/// Runs one drill and appends its record, passed or failed. A drill that
/// cannot run (no scratch target, no identity, scratch equal to the source)
/// is recorded as failed with the reason, never skipped.
///
/// # Errors
/// When the record itself cannot be written, or (with `skip_if_busy`)
/// `Locked`; the drill's own failure is in the returned record
/// (`passed == false`, `failure`).
pub async fn run(
    repo: &Repo,
    policy: &crate::config::Policy,
    opts: &DrillOptions,
) -> Result<DrillRecord> {
    repo.require_signing_key(&format!("drill of policy `{}`", policy.name))?;
    let started = chrono::Utc::now();
    let clock = std::time::Instant::now();
    let mut record = DrillRecord {
        format: record::RECORD_FORMAT,
        id: record_id(started),
        policy: policy.name.clone(),
        kind: policy.source.kind().to_string(),
        backup_id: None,
        backup_point_in_time: None,
        started_at: started,
        finished_at: started,
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        passed: false,
        failure: None,
        steps: Vec::new(),
        rto: record::Objective {
            measured_seconds: None,
            target_seconds: policy
                .drill
                .as_ref()
                .and_then(|d| d.rto_target)
                .map(|d| d.num_milliseconds() as f64 / 1000.0),
        },
        rpo: record::Objective {
            measured_seconds: None,
            target_seconds: policy
                .rpo_target()
                .map(|(d, _)| d.num_milliseconds() as f64 / 1000.0),
        },
        checks: Vec::new(),
        recovery: None,
        sample: None,
        previous_sha256: None,
    };
    // One drill per policy at a time, across hosts, so that dropping an
    // earlier drill's leftovers cannot hit a drill still running. ('@' is
    // not allowed in policy names, so this never names a policy's lease.)
    let outcome = match crate::repo::lease::Lease::acquire(
        repo.store.clone(),
        &format!("{}@drill", policy.name),
        "drill",
    )
    .await
    {
        Ok(lease) => {
            let mut hold = None;
            let outcome = drill_steps(repo, policy, opts, &mut record, clock, &mut hold).await;
            if let Some(hold) = hold {
                hold.release().await;
            }
            lease.release().await;
            outcome
        }
        Err(e @ Error::Locked { .. }) if opts.skip_if_busy => return Err(e),
        Err(e) => Err(e),
    };
    record.finished_at = chrono::Utc::now();
    match outcome {
        Ok(()) => {
            let failed: Vec<&str> = record
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            record.passed = failed.is_empty();
            if !failed.is_empty() {
                record.failure = Some(format!("checks failed: {}", failed.join(", ")));
            }
        }
        Err(e) => {
            record.passed = false;
            record.failure = Some(e.to_string());
            record.rto.measured_seconds = None;
        }
    }
    append(repo, record).await
}

fn step(record: &mut DrillRecord, name: &str, since: std::time::Instant, ok: bool) {
    record.steps.push(record::Step {
        name: name.to_string(),
        seconds: since.elapsed().as_secs_f64(),
        ok,
    });
}

async fn drill_steps(
    repo: &Repo,
    policy: &crate::config::Policy,
    opts: &DrillOptions,
    record: &mut DrillRecord,
    clock: std::time::Instant,
    hold: &mut Option<crate::repo::lease::Lease>,
) -> Result<()> {
    use crate::config::SourceConfig;
    use crate::error::Error;
    let drill = policy.drill.as_ref().ok_or_else(|| {
        Error::Refused(format!(
            "policy `{}` has no [drill] section saying where to restore",
            policy.name
        ))
    })?;
    if let SourceConfig::PostgresCluster { .. } = &policy.source {
        return cluster::run(repo, policy, drill, opts, record, clock, hold).await;
    }

    let t = std::time::Instant::now();
    let catalog = crate::repo::catalog::load(repo, &policy.name).await?;
    let newest = catalog.backups.first().ok_or_else(|| {
        Error::NoBackup(format!("policy `{}` has no backups to drill", policy.name))
    })?;
    record.rpo.measured_seconds =
        Some((record.started_at - newest.point_in_time).num_milliseconds() as f64 / 1000.0);
    let manifest = match &opts.choice {
        Choice::Newest => newest,
        Choice::Id(id) => catalog.find(&policy.name, id)?,
        Choice::Random => &catalog.backups[rand::random_range(0..catalog.backups.len())],
    };
    record.backup_id = Some(manifest.id.clone());
    record.backup_point_in_time = Some(manifest.point_in_time);
    // Prune must not remove the backup while the drill reads it.
    *hold = crate::repo::lease::hold_backup(repo, &policy.name, &manifest.id, "drill").await;
    step(record, "choose backup", t, true);

    // An archived backup cannot be read; say so, as restore would, rather
    // than fail half-way. A drill never starts a (billed) retrieval.
    let t = std::time::Instant::now();
    let objects: Vec<_> = manifest.objects().collect();
    if let Err(e) = crate::restore::thaw(
        repo,
        manifest,
        &objects,
        &crate::restore::ThawOptions::check_only(),
        &mut |_| {},
    )
    .await
    {
        step(record, "check storage class", t, false);
        return Err(e);
    }

    let identities = crate::pipeline::crypto::read_identities(opts.identity_file.as_deref())?;
    crate::restore::check_identity(&identities, manifest)?;
    match &policy.source {
        SourceConfig::Postgres {
            url: source_url, ..
        } => {
            let scratch_url = drill.scratch_url.as_deref().ok_or_else(|| {
                Error::Refused("[drill] has no scratch_url (a server to restore into)".into())
            })?;
            let scratch_name = format!(
                "{}{}",
                scratch_prefix(&policy.name),
                record.id.rsplit('-').next().unwrap_or("x")
            );
            let source = crate::source::postgres::resolve(source_url)?;
            let scratch_server = crate::source::postgres::resolve(scratch_url)?;
            let same_server = crate::source::postgres::describe(&source)
                .rsplit_once('/')
                .map(|(s, _)| s.to_string())
                == crate::source::postgres::describe(&scratch_server)
                    .rsplit_once('/')
                    .map(|(s, _)| s.to_string());
            if same_server && source.get_dbname() == Some(scratch_name.as_str()) {
                return Err(Error::Refused(
                    "the drill's scratch database is the source database".into(),
                ));
            }
            let t = std::time::Instant::now();
            let admin = crate::source::postgres::Admin::connect(scratch_url).await?;
            for leftover in admin
                .databases_with_prefix(&scratch_prefix(&policy.name))
                .await?
            {
                tracing::warn!(event = "drill_step", database = %leftover, "Dropping a scratch database left by an earlier drill.");
                admin.drop(&leftover).await?;
            }
            let target_url = crate::source::postgres::with_dbname(scratch_url, &scratch_name);
            let target = crate::source::postgres::restore::DbTarget {
                url: target_url.clone(),
                describe: format!("{}/{scratch_name}", admin.server),
                dbname: scratch_name.clone(),
                existing_objects: None,
            };
            let scope = check_scope(repo, policy, drill, opts).await?;
            let restore_opts = crate::source::postgres::restore::DbRestoreOptions {
                clean: false,
                verify: true,
                scope: scope.clone(),
                pg_restore_args: Vec::new(),
            };
            let restored = crate::source::postgres::restore::to_database(
                repo,
                &identities,
                manifest,
                &target,
                &restore_opts,
                opts.meter.clone(),
            )
            .await;
            let restored = match restored {
                Ok(r) => r,
                Err(e) => {
                    step(record, "restore and verify", t, false);
                    return Err(e);
                }
            };
            record.steps.push(record::Step {
                name: "fetch, decrypt, decompress and pg_restore".into(),
                seconds: restored.restore_seconds,
                ok: true,
            });
            record.steps.push(record::Step {
                name: "verify fingerprint".into(),
                seconds: restored.verify_seconds,
                ok: true,
            });
            record.rto.measured_seconds = Some(clock.elapsed().as_secs_f64());
            let sampled = match (&scope, &restored.verified) {
                (Scope::Sample(buckets), Some(v)) if v.tables_sampled > 0 => Some(record::Sample {
                    percent: drill.sample_percent.unwrap_or_default(),
                    buckets: buckets.clone(),
                    of_buckets: crate::source::postgres::sample::BUCKETS,
                    tables_sampled: v.tables_sampled,
                    tables_full: v.tables_full,
                    rows_hashed: v.rows_hashed,
                    rows_total: restored.rows,
                }),
                _ => None,
            };
            record.checks.push(record::Check {
                name: if sampled.is_some() {
                    "fingerprint-sample".into()
                } else {
                    "fingerprint".into()
                },
                ok: restored.diffs.is_some(),
                detail: match (&restored.diffs, &sampled) {
                    (Some(_), Some(s)) => format!(
                        "SAMPLE: row counts of all {} tables ({} rows) matched; {} of {} rows hashed \
                         ({} of {} buckets of {} large tables, {} small tables whole) matched the backup",
                        restored.tables,
                        restored.rows,
                        s.rows_hashed,
                        restored.rows,
                        s.buckets.len(),
                        s.of_buckets,
                        s.tables_sampled,
                        s.tables_full
                    ),
                    (Some(_), None) => format!(
                        "{} tables, {} rows matched the backup{}",
                        restored.tables,
                        restored.rows,
                        match restored.verified.as_ref().map_or(0, |v| v.tables_split) {
                            0 => String::new(),
                            n => format!(" ({n} large tables read in block ranges by every connection)"),
                        }
                    ),
                    (None, _) => "the backup has no fingerprint (fingerprint = false)".into(),
                },
            });
            record.sample = sampled;
            let t = std::time::Instant::now();
            let checks = run_checks(&target_url, &drill.checks).await;
            let all_ok = checks.iter().all(|c| c.ok);
            record.checks.extend(checks);
            step(record, "checks", t, all_ok);
            if !opts.keep {
                let t = std::time::Instant::now();
                admin.drop(&scratch_name).await?;
                step(record, "drop scratch database", t, true);
            }
        }
        SourceConfig::PostgresCluster { .. } => unreachable!("cluster drills return above"),
        SourceConfig::Files { .. } => {
            let dir = drill.scratch_dir.as_ref().ok_or_else(|| {
                Error::Refused("[drill] has no scratch_dir (a directory to restore into)".into())
            })?;
            let into = dir.join(&record.id);
            let t = std::time::Instant::now();
            let diffs = crate::source::files::to_directory(
                repo,
                &identities,
                manifest,
                &into,
                true,
                opts.meter.clone(),
            )
            .await;
            let ok = diffs.is_ok();
            step(
                record,
                "fetch, decrypt, decompress, unpack and compare",
                t,
                ok,
            );
            let diffs = diffs?;
            record.rto.measured_seconds = Some(clock.elapsed().as_secs_f64());
            record.checks.push(record::Check {
                name: "files".into(),
                ok: diffs.is_some(),
                detail: match diffs {
                    Some(_) => "every path's content, mode and link target matched".into(),
                    None => "the backup has no files fingerprint".into(),
                },
            });
            if !opts.keep {
                std::fs::remove_dir_all(&into)
                    .map_err(|e| Error::io(format!("removing {}", into.display()), e))?;
            }
        }
    }
    Ok(())
}

/// The fingerprint check a drill runs: in full unless the caller allows a
/// sample, the policy sets `sample_percent`, and a passed full check of the
/// policy is newer than `full_check_every`.
///
/// # Errors
/// Storage errors from reading the policy's drill records.
async fn check_scope(
    repo: &Repo,
    policy: &crate::config::Policy,
    drill: &crate::config::Drill,
    opts: &DrillOptions,
) -> Result<Scope> {
    let Some(percent) = drill.sample_percent.filter(|_| opts.allow_sample) else {
        return Ok(Scope::Full);
    };
    let since = chrono::Utc::now() - drill.full_check_every;
    let records = load_records(repo, &policy.name).await?;
    let full_recently = records
        .iter()
        .filter_map(|r| r.record.as_ref().ok())
        .any(|r| {
            r.passed
                && r.started_at >= since
                && r.checks.iter().any(|c| c.name == "fingerprint" && c.ok)
        });
    if !full_recently {
        tracing::info!(policy = %policy.name, "A full fingerprint check is due; this drill checks every row.");
        return Ok(Scope::Full);
    }
    Ok(Scope::Sample(sample_buckets(percent)))
}

/// A random set of buckets covering at least `percent` of them.
pub fn sample_buckets(percent: f64) -> Vec<usize> {
    use crate::source::postgres::sample::BUCKETS;
    let want = ((percent / 100.0 * BUCKETS as f64).ceil() as usize).clamp(1, BUCKETS);
    let mut all: Vec<usize> = (0..BUCKETS).collect();
    for i in 0..want {
        let j = rand::random_range(i..BUCKETS);
        all.swap(i, j);
    }
    let mut chosen = all[..want].to_vec();
    chosen.sort_unstable();
    chosen
}

/// Runs each `[[drill.checks]]` query on the restored database and compares
/// the first column of the first row, as text, with `expect`.
async fn run_checks(url: &str, checks: &[crate::config::DrillCheck]) -> Vec<record::Check> {
    if checks.is_empty() {
        return Vec::new();
    }
    let client = match crate::source::postgres::resolve(url) {
        Ok(c) => crate::source::postgres::connect(&c).await,
        Err(e) => Err(e),
    };
    run_checks_on(client, checks).await
}

/// As [`run_checks`], on a connection already made (or the reason it
/// could not be), so every check is recorded either way.
async fn run_checks_on(
    client: Result<tokio_postgres::Client>,
    checks: &[crate::config::DrillCheck],
) -> Vec<record::Check> {
    if checks.is_empty() {
        return Vec::new();
    }
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            return checks
                .iter()
                .map(|c| record::Check {
                    name: c.name.clone(),
                    ok: false,
                    detail: e.to_string(),
                })
                .collect();
        }
    };
    let mut out = Vec::new();
    for check in checks {
        let result = client.simple_query(&check.sql).await;
        let (ok, detail) = match result {
            Ok(messages) => {
                let value = messages.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some(r.get(0).map(str::to_string))
                    }
                    _ => None,
                });
                match value {
                    Some(Some(v)) => (
                        v == check.expect,
                        format!("returned `{v}`, expected `{}`", check.expect),
                    ),
                    Some(None) => (false, format!("returned NULL, expected `{}`", check.expect)),
                    None => (
                        false,
                        format!("returned no rows, expected `{}`", check.expect),
                    ),
                }
            }
            Err(e) => (
                false,
                format!("query failed: {}", crate::source::postgres::error_text(&e)),
            ),
        };
        out.push(record::Check {
            name: check.name.clone(),
            ok,
            detail,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: ids with whole seconds and a random suffix sorted two
    /// drills of the same second at random, linking the chain backwards.
    #[test]
    fn a_sample_covers_at_least_the_share_asked_for() {
        assert_eq!(sample_buckets(1.0).len(), 1);
        assert_eq!(sample_buckets(5.0).len(), 2);
        assert_eq!(sample_buckets(100.0).len(), 32);
        let b = sample_buckets(50.0);
        assert_eq!(b.len(), 16);
        assert!(
            b.windows(2).all(|w| w[0] < w[1]),
            "distinct and sorted: {b:?}"
        );
    }

    #[test]
    fn record_ids_sort_in_start_order_within_a_second() {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for ms in 0..999 {
            let a = record_id(t + chrono::Duration::milliseconds(ms));
            let b = record_id(t + chrono::Duration::milliseconds(ms + 1));
            assert!(a < b, "{a} !< {b}");
        }
    }
}
