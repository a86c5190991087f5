//! Retention and prune (DESIGN invariant 5), end to end with the real
//! binary: on a versioned bucket on the moto S3 server (delete markers, then
//! `list --deleted` and `restore --backup` of a pruned backup) and on a
//! local directory (held backups, damaged manifests, leftovers of failed
//! backups, bad input). Backups here are seconds apart, so the policies use
//! `keep_last`; the calendar rules are property-tested in `src/retention.rs`.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

use common::workspace::{Backend, Workspace};
use common::{ObjectVersion, S3Server, block_on, unique_bucket_name};

/// Where the workspace puts the repository inside the bucket.
const S3_PREFIX: &str = "drctl";
/// `ExitCode::BadInput`.
const EXIT_BAD_INPUT: i32 = 2;

/// A files policy `name` over one directory whose single file says which
/// backup it is, with `retention` as the policy's `[retention]` body.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(ws: &Workspace, name: &str, retention: &str) -> Files {
        let dir = ws.path().join(format!("data-{name}"));
        std::fs::create_dir_all(&dir).expect("create data dir");
        ws.files_policy(name, &[&dir]);
        if !retention.is_empty() {
            let path = ws.path().join(format!("policies/{name}.toml"));
            let mut text = std::fs::read_to_string(&path).expect("read policy");
            text.push_str(&format!("\n[retention]\n{retention}\n"));
            std::fs::write(&path, text).expect("write policy");
        }
        Files { dir }
    }

    /// Writes `content` and backs it up; returns the backup's id.
    fn backup(&self, ws: &Workspace, name: &str, content: &str) -> String {
        std::fs::write(self.dir.join("state.txt"), content).expect("write state");
        ws.backup(name)
    }
}

fn ids(ws: &Workspace, policy: &str) -> Vec<String> {
    ws.backups(policy)
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_string())
        .collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The prune report of `policy` from `prune --json` output.
fn report<'a>(v: &'a Value, policy: &str) -> &'a Value {
    v["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .find(|r| r["policy"] == policy)
        .unwrap_or_else(|| panic!("no report for {policy} in {v}"))
}

fn decision<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("no decision for {id} in {report}"))
}

/// Every file under `dir`, relative, for comparing trees.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn find_file(dir: &Path, name: &str) -> PathBuf {
    let rel = files_under(dir)
        .into_iter()
        .find(|f| f.ends_with(name))
        .unwrap_or_else(|| panic!("no {name} under {}", dir.display()));
    dir.join(rel)
}

#[test]
fn prune_on_a_versioned_bucket_leaves_delete_markers_and_a_pruned_backup_still_restores() {
    let server = S3Server::start();
    let bucket = unique_bucket_name("prune");
    block_on(server.create_bucket(&bucket, true));
    let ws = Workspace::new(Backend::S3 {
        endpoint: server.endpoint(),
        bucket: bucket.clone(),
    });
    let files = Files::new(&ws, "etc", "keep_last = 2");
    let made: Vec<String> = (1..=4)
        .map(|i| files.backup(&ws, "etc", &format!("version {i}\n")))
        .collect();
    let (oldest, newest_two) = (&made[0], &made[2..]);

    // A dry run shows the plan and writes nothing at all: no lease, no probe.
    let before = block_on(server.list_versions(&bucket, ""));
    let plan = ws.ok(&["prune", "etc", "--dry-run"]);
    assert!(plan.contains("keep_last 2"), "{plan}");
    for id in newest_two {
        assert!(
            plan.lines()
                .any(|l| l.contains(id.as_str()) && l.contains("keep") && l.contains("last")),
            "{plan}"
        );
    }
    for id in &made[..2] {
        assert!(
            plan.lines()
                .any(|l| l.contains(id.as_str()) && l.contains("forget")),
            "{plan}"
        );
    }
    assert!(plan.contains("nothing was deleted"), "{plan}");
    assert_eq!(block_on(server.list_versions(&bucket, "")), before);
    assert_eq!(ids(&ws, "etc").len(), 4);

    let v = json(&ws.ok(&["prune", "etc", "--json"]));
    let r = report(&v, "etc");
    assert_eq!(r["dry_run"], false);
    assert_eq!(r["versioning"], "Enabled");
    let mut deleted: Vec<&str> = r["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    deleted.sort();
    let mut pruned = vec![made[0].as_str(), made[1].as_str()];
    pruned.sort();
    assert_eq!(deleted, pruned);
    assert_eq!(
        decision(r, &made[3])["reasons"],
        serde_json::json!(["last"])
    );
    assert_eq!(decision(r, &made[0])["outcome"], "deleted");
    assert!(r["clock_skew_seconds"].as_i64().unwrap().abs() < 5, "{r}");
    let mut listed = ids(&ws, "etc");
    listed.sort();
    let mut want = newest_two.to_vec();
    want.sort();
    assert_eq!(listed, want);

    // Deletion without a version id: every object of a pruned backup has a
    // delete marker on top and its data versions are still there; the kept
    // backups are untouched; the lease and clock probe are gone.
    let versions = block_on(server.list_versions(&bucket, &format!("{S3_PREFIX}/backups/etc/")));
    let under = |id: &str| -> Vec<&ObjectVersion> {
        versions
            .iter()
            .filter(|v| v.key.contains(&format!("/{id}/")))
            .collect()
    };
    for id in &made[..2] {
        let vs = under(id);
        let keys: std::collections::BTreeSet<&str> = vs.iter().map(|v| v.key.as_str()).collect();
        assert!(keys.iter().any(|k| k.ends_with("/manifest.json")), "{vs:?}");
        for key in keys {
            let of_key: Vec<_> = vs.iter().filter(|v| v.key == key).collect();
            assert!(
                of_key.iter().any(|v| v.is_delete_marker && v.is_latest),
                "{key} has no delete marker on top: {of_key:?}"
            );
            assert!(
                of_key.iter().any(|v| !v.is_delete_marker),
                "{key} lost its data version: {of_key:?}"
            );
        }
    }
    for id in newest_two {
        assert!(under(id).iter().all(|v| !v.is_delete_marker));
    }
    let current = block_on(server.list_keys(&bucket, &format!("{S3_PREFIX}/locks/")));
    assert!(current.is_empty(), "left in locks/: {current:?}");

    // `list --deleted` finds them by their manifests' noncurrent versions.
    let v = json(&ws.ok(&["list", "--deleted", "etc", "--json"]));
    let rows = v["deleted"].as_array().unwrap();
    let mut found: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    found.sort();
    assert_eq!(found, pruned);
    assert!(
        rows.iter()
            .all(|r| r["restorable"] == true
                && !r["manifest_version_id"].as_str().unwrap().is_empty())
    );
    let text = ws.ok(&["list", "--deleted", "etc"]);
    assert!(
        text.contains("2 pruned backups") && text.contains(oldest.as_str()),
        "{text}"
    );

    // And the oldest, pruned, restores by id, says so, and verifies.
    let into = ws.path().join("restored");
    let out = ws.run(&[
        "restore",
        "etc",
        "--backup",
        oldest,
        "--into",
        into.to_str().unwrap(),
        "--verify",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("was pruned"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(find_file(&into, "state.txt")).unwrap(),
        "version 1\n"
    );

    // Pruning again changes nothing.
    let v = json(&ws.ok(&["prune", "--json"]));
    assert_eq!(report(&v, "etc")["deleted"], serde_json::json!([]));
}

#[test]
fn prune_on_a_local_repository_removes_old_backups_and_leftovers_of_failed_ones() {
    let ws = Workspace::local();
    let files = Files::new(&ws, "etc", "keep_last = 1");
    let made: Vec<String> = (1..=3)
        .map(|i| files.backup(&ws, "etc", &format!("version {i}\n")))
        .collect();
    let repo = ws.repo_dir();
    // A failed backup from two days ago (no manifest), and one from now
    // that may still be running elsewhere.
    let old = repo.join("backups/etc/20200101T000000Z-0000dead");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("data.tar.zst.age"), b"partial").unwrap();
    let status = std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(old.join("data.tar.zst.age"))
        .status()
        .unwrap();
    assert!(status.success());
    let fresh = repo.join("backups/etc/20991231T000000Z-0000beef");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("data.tar.zst.age"), b"partial").unwrap();

    let plan = ws.ok(&["prune"]);
    assert!(
        plan.contains("20200101T000000Z-0000dead") && plan.contains("delete"),
        "{plan}"
    );
    assert!(plan.contains("younger than a day"), "{plan}");
    assert!(
        plan.contains("deleted 2 backups, kept 1, removed 1 leftover"),
        "{plan}"
    );
    assert_eq!(ids(&ws, "etc"), [made[2].clone()]);
    for id in &made[..2] {
        assert!(
            files_under(&repo.join(format!("backups/etc/{id}"))).is_empty(),
            "{id} still has objects"
        );
    }
    assert!(!old.join("data.tar.zst.age").exists());
    assert!(fresh.join("data.tar.zst.age").exists());
    assert!(!repo.join("locks/etc").exists());

    // A local directory keeps no versions: `list --deleted` says so.
    let out = ws.run(&["list", "--deleted"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keeps no versions"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And `restore --backup` of a pruned id there is a clear bad input.
    let err = ws.fails(
        &["restore", "etc", "--backup", &made[0], "--into", "x"],
        EXIT_BAD_INPUT,
    );
    assert!(err.contains("no backup with id"), "{err}");
}

#[test]
fn a_backup_held_by_a_running_restore_is_kept_and_an_expired_hold_is_not() {
    let ws = Workspace::local();
    let files = Files::new(&ws, "etc", "keep_last = 1");
    let made: Vec<String> = (1..=3)
        .map(|i| files.backup(&ws, "etc", &format!("version {i}\n")))
        .collect();
    let holds = ws.repo_dir().join("locks/etc@holds");
    std::fs::create_dir_all(&holds).unwrap();
    let hold = |id: &str, expires: &str| {
        serde_json::json!({
            "holder": "recovery-host:4242",
            "job": "restore",
            "acquired_at": "2026-01-01T00:00:00Z",
            "expires_at": expires,
            "backup_id": id,
        })
        .to_string()
    };
    std::fs::write(
        holds.join(format!("{}.0000000000000001", made[0])),
        hold(&made[0], "2999-01-01T00:00:00Z"),
    )
    .unwrap();
    std::fs::write(
        holds.join(format!("{}.0000000000000002", made[1])),
        hold(&made[1], "2001-01-01T00:00:00Z"),
    )
    .unwrap();

    let v = json(&ws.ok(&["prune", "etc", "--json"]));
    let r = report(&v, "etc");
    assert_eq!(r["deleted"], serde_json::json!([made[1]]));
    assert_eq!(r["held"], serde_json::json!([made[0]]));
    assert_eq!(
        decision(r, &made[0])["reasons"],
        serde_json::json!(["held by restore on recovery-host"])
    );
    let mut left = ids(&ws, "etc");
    left.sort();
    let mut want = vec![made[0].clone(), made[2].clone()];
    want.sort();
    assert_eq!(left, want);
    // The expired hold (its restore died) is cleared; the live one stays.
    assert_eq!(r["expired_holds_removed"], 1);
    assert_eq!(files_under(&holds).len(), 1);

    // A real restore takes a hold and removes it when done.
    let into = ws.path().join("restored");
    ws.ok(&[
        "restore",
        "etc",
        "--backup",
        &made[2],
        "--into",
        into.to_str().unwrap(),
    ]);
    assert_eq!(files_under(&holds).len(), 1);
}

#[test]
fn damaged_manifests_are_reported_never_deleted_and_never_the_newest_good_backup() {
    let ws = Workspace::local();
    let files = Files::new(&ws, "etc", "keep_last = 1");
    let made: Vec<String> = (1..=2)
        .map(|i| files.backup(&ws, "etc", &format!("version {i}\n")))
        .collect();
    let damaged = ws
        .repo_dir()
        .join("backups/etc/20991231T000000Z-0000bad0/manifest.json");
    std::fs::create_dir_all(damaged.parent().unwrap()).unwrap();
    std::fs::write(&damaged, b"{ not json").unwrap();

    let v = json(&ws.ok(&["prune", "etc", "--json"]));
    let r = report(&v, "etc");
    assert_eq!(r["deleted"], serde_json::json!([made[0]]));
    assert_eq!(decision(r, &made[1])["action"], "keep");
    assert!(
        r["damaged"][0]["key"]
            .as_str()
            .unwrap()
            .contains("20991231T000000Z-0000bad0"),
        "{r}"
    );
    assert!(damaged.exists());
    assert_eq!(r["leftovers"], serde_json::json!([]));
}

#[test]
fn without_retention_rules_prune_keeps_everything() {
    let ws = Workspace::local();
    let files = Files::new(&ws, "etc", "");
    for i in 1..=3 {
        files.backup(&ws, "etc", &format!("version {i}\n"));
    }
    let out = ws.ok(&["prune", "etc"]);
    assert!(
        out.contains("no retention rules: everything is kept"),
        "{out}"
    );
    assert!(out.contains("deleted 0 backups, kept 3"), "{out}");
    assert_eq!(ids(&ws, "etc").len(), 3);
}

#[test]
fn prune_of_an_unknown_policy_is_bad_input_and_deletes_nothing() {
    let ws = Workspace::local();
    let files = Files::new(&ws, "etc", "keep_last = 1");
    for i in 1..=2 {
        files.backup(&ws, "etc", &format!("version {i}\n"));
    }
    for args in [&["prune", "etcc"][..], &["prune", "etcc", "--dry-run"][..]] {
        let err = ws.fails(args, EXIT_BAD_INPUT);
        assert!(
            err.contains("no policy named `etcc`") && err.contains("etc"),
            "{err}"
        );
    }
    assert_eq!(ids(&ws, "etc").len(), 2);
}

/// On a bucket with Object Lock, a delete without a version id is allowed: it
/// only adds a delete marker, and the locked versions stay until their
/// retention ends. Prune succeeds; nothing is reported as a failure.
#[test]
fn prune_on_an_object_lock_bucket_leaves_the_locked_versions() {
    let server = S3Server::start();
    let bucket = unique_bucket_name("prune-locked");
    block_on(server.create_bucket_object_lock(&bucket));
    // moto accepts a default retention only on an empty bucket.
    let retention = aws_sdk_s3::types::ObjectLockConfiguration::builder()
        .object_lock_enabled(aws_sdk_s3::types::ObjectLockEnabled::Enabled)
        .rule(
            aws_sdk_s3::types::ObjectLockRule::builder()
                .default_retention(
                    aws_sdk_s3::types::DefaultRetention::builder()
                        .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Governance)
                        .days(30)
                        .build(),
                )
                .build(),
        )
        .build();
    block_on(
        server
            .client()
            .put_object_lock_configuration()
            .bucket(&bucket)
            .object_lock_configuration(retention)
            .send(),
    )
    .expect("set a default retention");
    let ws = Workspace::new(Backend::S3 {
        endpoint: server.endpoint(),
        bucket: bucket.clone(),
    });
    let files = Files::new(&ws, "etc", "keep_last = 1");
    let made: Vec<String> = (1..=2)
        .map(|i| files.backup(&ws, "etc", &format!("version {i}\n")))
        .collect();
    let v = json(&ws.ok(&["prune", "etc", "--json"]));
    let r = report(&v, "etc");
    assert_eq!(r["deleted"], serde_json::json!([made[0]]), "{r}");
    assert_eq!(r["retained"], serde_json::json!([]), "{r}");
    assert_eq!(ids(&ws, "etc"), [made[1].clone()]);
    let versions =
        block_on(server.list_versions(&bucket, &format!("{S3_PREFIX}/backups/etc/{}/", made[0])));
    assert!(versions.iter().any(|v| v.is_delete_marker && v.is_latest));
    assert!(versions.iter().any(|v| !v.is_delete_marker));
    let v = json(&ws.ok(&["list", "--deleted", "--json"]));
    assert_eq!(v["deleted"][0]["id"], made[0].as_str());
    assert_eq!(v["deleted"][0]["restorable"], true);
}

/// A real restore holds the backup it reads: stopped (SIGSTOP) part-way,
/// its backup survives a prune that would otherwise delete it; once the
/// restore has finished and removed its hold, the next prune deletes it.
#[test]
fn a_running_restore_holds_its_backup_against_prune() {
    let ws = Workspace::local();
    let files = Files::new(&ws, "etc", "keep_last = 1");
    // Big enough that the restore is still reading when it is stopped.
    let mut noise = vec![0u8; 96 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(files.dir.join("noise.bin"), &noise).unwrap();
    let old = files.backup(&ws, "etc", "version 1\n");
    std::fs::remove_file(files.dir.join("noise.bin")).unwrap();
    let new = files.backup(&ws, "etc", "version 2\n");

    let holds = ws.repo_dir().join("locks/etc@holds");
    let out = ws.path().join("old.tar");
    let mut restore = ws
        .cmd(&[
            "restore",
            "etc",
            "--backup",
            &old,
            "--output",
            out.to_str().unwrap(),
            "-q",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start drctl restore");
    let pid = restore.id() as libc::pid_t;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if std::fs::read_dir(&holds).is_ok_and(|mut d| d.next().is_some()) {
            // SAFETY: our own child, not yet reaped.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
            break;
        }
        assert!(
            restore.try_wait().unwrap().is_none(),
            "the restore finished before its hold was seen"
        );
        assert!(std::time::Instant::now() < deadline, "no hold appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }

    let v = json(&ws.ok(&["prune", "etc", "--json"]));
    let r = report(&v, "etc");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(r["deleted"], serde_json::json!([]), "{r}");
    assert_eq!(r["held"], serde_json::json!([old]), "{r}");
    let reasons = decision(r, &old)["reasons"].as_array().unwrap().clone();
    assert!(
        reasons.len() == 1
            && reasons[0]
                .as_str()
                .unwrap()
                .starts_with("held by restore on "),
        "{reasons:?}"
    );

    let status = restore.wait().unwrap();
    assert!(status.success(), "the restore failed: {status}");
    assert!(out.exists());
    assert!(files_under(&holds).is_empty(), "the restore left its hold");
    let v = json(&ws.ok(&["prune", "etc", "--json"]));
    assert_eq!(report(&v, "etc")["deleted"], serde_json::json!([old]));
    assert_eq!(ids(&ws, "etc"), [new]);
}

/// Prune takes the policy's lease: while a backup holds it elsewhere, prune
/// refuses (exit 3) and deletes nothing; the dry run, which writes nothing,
/// still shows the plan.
#[test]
fn prune_refuses_while_a_job_of_the_policy_runs() {
    let ws = Workspace::local();
    let files = Files::new(&ws, "etc", "keep_last = 1");
    for i in 1..=2 {
        files.backup(&ws, "etc", &format!("version {i}\n"));
    }
    let lease = serde_json::json!({
        "holder": "other-host:77",
        "job": "backup",
        "acquired_at": "2026-01-01T00:00:00Z",
        "expires_at": "2999-01-01T00:00:00Z",
    });
    std::fs::create_dir_all(ws.repo_dir().join("locks")).unwrap();
    std::fs::write(ws.repo_dir().join("locks/etc"), lease.to_string()).unwrap();
    let err = ws.fails(&["prune", "etc"], 3);
    assert!(err.contains("busy") && err.contains("other-host"), "{err}");
    assert_eq!(ids(&ws, "etc").len(), 2);
    let plan = ws.ok(&["prune", "etc", "--dry-run"]);
    assert!(plan.contains("forget"), "{plan}");
    assert_eq!(ids(&ws, "etc").len(), 2);
}

#[test]
fn prune_removes_run_records_older_than_400_days_only() {
    let ws = Workspace::local();
    let files = Files::new(&ws, "etc", "keep_last = 1");
    files.backup(&ws, "etc", "version 1\n");
    let runs = ws.repo_dir().join("runs/etc");
    std::fs::create_dir_all(&runs).unwrap();
    let old = "20240101T000000Z-00000001";
    let recent = drctl_id_now();
    for id in [old, recent.as_str()] {
        std::fs::write(runs.join(format!("{id}.json")), "{}").unwrap();
    }
    let v = json(&ws.ok(&["prune", "etc", "--json"]));
    assert_eq!(report(&v, "etc")["run_records_removed"], 1);
    assert_eq!(files_under(&runs), [format!("{recent}.json")]);
    // A dry run removes none.
    std::fs::write(runs.join(format!("{old}.json")), "{}").unwrap();
    let v = json(&ws.ok(&["prune", "etc", "--dry-run", "--json"]));
    assert_eq!(report(&v, "etc")["run_records_removed"], 0);
    assert_eq!(files_under(&runs).len(), 2);
}

fn drctl_id_now() -> String {
    format!("{}-00000002", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"))
}
