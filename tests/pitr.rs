//! Point-in-time recovery of a `postgres-cluster` policy against a real
//! PostgreSQL 15 whose `archive_command` is `drctl wal-push`: base backups,
//! WAL archived and fetched back by `drctl wal-fetch`, and `restore --to`
//! replaying to the second, checked by what the restored server holds.
//!
//! The server runs as the `postgres` OS user, and so does its
//! archive_command, so every drctl command here runs as that user too
//! (`Workspace::hand_to_pg_owner`), as it would on a database host.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{Restored, World, text};
use common::wait_for;

/// The honest test: rows before T come back, rows after T do not, and the
/// stop point drctl reports is before T.
fn restore_to_a_time_replays_to_the_second(on_s3: bool) {
    let world = World::new(on_s3, "");
    let pg = &world.pg;
    pg.psql(
        "postgres",
        "CREATE TABLE t(id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    let backup = world.ws.ok(&["backup", "cluster"]);
    assert!(backup.contains("cluster"), "{backup}");
    for id in 1..=3 {
        pg.psql("postgres", &format!("INSERT INTO t(id) VALUES ({id})"));
    }
    let target = pg.psql(
        "postgres",
        "SELECT pg_sleep(1); SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'); SELECT pg_sleep(1);",
    );
    let target = target.lines().find(|l| !l.is_empty()).unwrap().to_string();
    for id in 4..=6 {
        pg.psql("postgres", &format!("INSERT INTO t(id) VALUES ({id})"));
    }
    world.switch_and_wait();

    let dir = world.ws.path().join("restored");
    let (out, server) = world.restore(&dir, &["--to", &target]);
    assert!(
        out.status.success(),
        "restore --to {target} failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Restore plan:") && stderr.contains("WAL to replay"),
        "{stderr}"
    );
    assert!(
        stdout.contains("recovery stopping before commit"),
        "{stdout}"
    );
    assert_eq!(
        server.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3"
    );
    assert_eq!(
        server.psql(&format!("SELECT max(at) < '{target}' FROM t")),
        "t",
        "a row from after the target was restored"
    );
    assert_eq!(
        server.psql(&format!(
            "SELECT pg_last_xact_replay_timestamp() < '{target}'"
        )),
        "t"
    );
    assert_eq!(
        server.psql("SELECT pg_is_in_recovery()"),
        "f",
        "not promoted"
    );
}

#[test]
fn restore_to_a_time_replays_to_the_second_local() {
    restore_to_a_time_replays_to_the_second(false);
}

#[test]
fn restore_to_a_time_replays_to_the_second_s3() {
    restore_to_a_time_replays_to_the_second(true);
}

impl World {
    fn insert(&self, ids: std::ops::RangeInclusive<i32>) {
        for id in ids {
            self.pg
                .psql("postgres", &format!("INSERT INTO t(id) VALUES ({id})"));
        }
    }

    /// The server's clock as RFC 3339 UTC, for `--to`.
    fn now(&self) -> String {
        self.pg.psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
    }

    fn create_table(&self) {
        self.pg.psql(
            "postgres",
            "CREATE TABLE t(id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
        );
    }
}

/// Restores, starts and asserts that recovery finished.
fn restore_ok(world: &World, dir: &Path, args: &[&str]) -> Restored {
    let (out, server) = world.restore(dir, args);
    assert!(
        out.status.success(),
        "restore {args:?} failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    server
}

fn ids(server: &Restored) -> String {
    server.psql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t")
}

/// Asserts a restore is refused with `code`, before anything is written;
/// returns stderr.
fn refused(world: &World, dir: &Path, args: &[&str], code: i32) -> String {
    let existed = dir.exists();
    let (out, server) = world.restore(dir, args);
    // Nothing was started, so there is nothing to stop.
    std::mem::forget(server);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "restore {args:?}: expected exit {code}\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        text(&out.stdout)
    );
    assert!(
        !stderr.contains("Restore plan:"),
        "refused after the plan: {stderr}"
    );
    if !existed {
        assert!(!dir.exists(), "{} was created", dir.display());
    }
    stderr
}

/// Every kind of target, each checked by the exact rows the restored
/// server holds: the end of the archive, an LSN, a transaction id and a
/// restore point made with `drctl mark`.
fn restore_to_each_kind_of_target(on_s3: bool, kinds: &[&str]) {
    let world = World::new(on_s3, "");
    let pg = &world.pg;
    world.create_table();
    world.ws.ok(&["backup", "cluster"]);
    world.insert(1..=3);
    let lsn = pg.psql("postgres", "SELECT pg_current_wal_lsn()");
    world.insert(4..=4);
    let xid = pg.psql(
        "postgres",
        "INSERT INTO t(id) VALUES (5) RETURNING txid_current()",
    );
    world.insert(6..=6);
    let marked = world.ws.ok(&["mark", "cluster", "before-7"]);
    let marked = marked.trim();
    assert!(marked.contains('/'), "mark prints the LSN: {marked}");
    world.insert(7..=7);
    world.switch_and_wait();

    for kind in kinds {
        let dir = world.ws.path().join(format!("restored-{kind}"));
        let (args, expected): (Vec<&str>, &str) = match *kind {
            "latest" => (vec!["--to", "latest"], "1,2,3,4,5,6,7"),
            "lsn" => (vec!["--to-lsn", &lsn], "1,2,3"),
            "xid" => (vec!["--to-xid", &xid], "1,2,3,4,5"),
            "name" => (vec!["--to-name", "before-7"], "1,2,3,4,5,6"),
            other => panic!("{other}"),
        };
        let (out, server) = world.restore(&dir, &args);
        assert!(
            out.status.success(),
            "restore {args:?} failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        if *kind == "name" {
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("restore point") && stderr.contains(marked),
                "the plan says where the mark is: {stderr}"
            );
        }
        assert_eq!(
            ids(&server),
            expected,
            "restore to {kind}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(server.psql("SELECT pg_is_in_recovery()"), "f");
    }
}

#[test]
fn restore_to_latest_lsn_xid_and_name_local() {
    restore_to_each_kind_of_target(false, &["latest", "lsn", "xid", "name"]);
}

#[test]
fn restore_to_lsn_and_name_s3() {
    restore_to_each_kind_of_target(true, &["lsn", "name"]);
}

/// Targets that cannot be reached are refused before anything is written,
/// each with what to do; a lost segment is named by restore, verify and
/// wal status.
fn refusals(on_s3: bool) {
    let world = World::new(on_s3, "");
    world.create_table();
    let before_backup = world.now();
    world.pg.psql("postgres", "SELECT pg_sleep(1)");
    world.ws.ok(&["backup", "cluster"]);
    let mut switched = Vec::new();
    for id in 1..=3 {
        world.insert(id..=id);
        switched.push(world.switch_and_wait());
    }
    world.pg.psql("postgres", "SELECT pg_sleep(1)");
    let after_archive = world.now();
    let dir = world.ws.path().join("restored");

    let err = refused(&world, &dir, &["--to", &after_archive], 2);
    assert!(
        err.contains("after the newest archived WAL") && err.contains(&switched[2]),
        "{err}"
    );
    let err = refused(&world, &dir, &["--to", &before_backup], 2);
    assert!(
        err.contains("before the first base backup of `cluster` is consistent"),
        "{err}"
    );

    let busy = world.ws.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), "mine").unwrap();
    common::chown_to_pg_owner(&busy);
    let err = refused(&world, &busy, &["--to", "latest"], 3);
    assert!(err.contains("is not empty"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&busy).unwrap().collect();
    assert_eq!(left.len(), 1, "only the file that was there");
    assert_eq!(std::fs::read_to_string(busy.join("keep")).unwrap(), "mine");

    assert!(world.ws.ok(&["verify", "cluster"]).contains("no gap"));
    world.ws.ok(&["wal", "status", "cluster"]);
    let lost = &switched[1];
    world.delete_wal(lost);
    let err = refused(&world, &dir, &["--to", "latest"], 2);
    assert!(
        err.contains(&format!("WAL segment {lost} of `cluster` is missing")),
        "{err}"
    );
    let out = world.ws.run(&["verify", "cluster"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("GAP") && stdout.contains(lost.as_str()),
        "{stdout}"
    );
    let out = world.ws.run(&["wal", "status", "cluster", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["timelines"][0]["gaps"][0]["first"], lost.as_str());
    assert_eq!(status["ok"], false);
}

#[test]
fn refusals_local() {
    refusals(false);
}

#[test]
fn refusals_s3() {
    refusals(true);
}

/// `wal status` and `pitr setup` against a server that archives.
#[test]
fn wal_status_and_pitr_setup_read_the_server() {
    let world = World::new(false, "");
    world.create_table();
    world.ws.ok(&["backup", "cluster"]);
    world.insert(1..=1);
    let segment = world.switch_and_wait();
    let status: serde_json::Value =
        serde_json::from_str(&world.ws.ok(&["wal", "status", "cluster", "--json"])).unwrap();
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["timelines"][0]["newest"], segment.as_str());
    assert_eq!(status["timelines"][0]["gaps"].as_array().unwrap().len(), 0);
    assert_eq!(status["server"]["reachable"], true);
    assert_eq!(
        status["server"]["archiver"]["last_archived_wal"],
        segment.as_str()
    );
    assert_eq!(status["server"]["archiver"]["failed_count"], 0);
    assert!(status["lag_seconds"].as_i64().is_some());

    // The test server archives with archive_timeout at 0: setup says so.
    let out = world.ws.run(&["pitr", "setup", "cluster"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("archive_mode = on")
            && stdout.contains("wal_level = replica")
            && stdout.contains("archive_timeout = 60")
            && stdout.contains(&format!(
                "{} --config {} wal-push cluster %p",
                // current_exe() is canonical; the build's path may hold `..`.
                Path::new(env!("CARGO_BIN_EXE_drctl"))
                    .canonicalize()
                    .unwrap()
                    .display(),
                world
                    .ws
                    .path()
                    .canonicalize()
                    .unwrap()
                    .join("drctl.toml")
                    .display()
            )),
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("DIFFERS archive_timeout") && stderr.contains("ok      archive_command"),
        "{stderr}"
    );
}

/// A restore that keeps archiving and promotes starts timeline 2 in the
/// same repository; a later restore to a time on timeline 2 follows the
/// archived history file and gets timeline 2's rows.
fn restore_follows_a_new_timeline(on_s3: bool) {
    let mut world = World::new(on_s3, "");
    world.create_table();
    world.ws.ok(&["backup", "cluster"]);
    world.insert(1..=3);
    world.switch_and_wait();
    // The old primary is gone; its archive is what is left.
    world.pg.stop();

    let first = world.ws.path().join("promoted");
    let promoted = restore_ok(&world, &first, &["--to", "latest", "--keep-archiving"]);
    assert_eq!(ids(&promoted), "1,2,3");
    assert_eq!(
        promoted.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );
    for id in 10..=12 {
        promoted.psql(&format!("INSERT INTO t(id) VALUES ({id})"));
    }
    let target = promoted.psql(
        "SELECT pg_sleep(1); SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'); SELECT pg_sleep(1);",
    );
    let target = target.lines().find(|l| !l.is_empty()).unwrap().to_string();
    for id in 13..=15 {
        promoted.psql(&format!("INSERT INTO t(id) VALUES ({id})"));
    }
    let segment = promoted.psql("SELECT pg_walfile_name(pg_switch_wal())");
    assert!(segment.starts_with("00000002"), "{segment}");
    wait_for(
        &format!("{segment} to be archived by the promoted server"),
        Duration::from_secs(60),
        || {
            let archived =
                promoted.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            (archived.len() == 24 && archived.as_str() >= segment.as_str()).then_some(())
        },
    );
    drop(promoted);

    let status: serde_json::Value =
        serde_json::from_str(&world.ws.ok(&["wal", "status", "cluster", "--json"])).unwrap();
    let timelines: Vec<u64> = status["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(timelines, vec![1, 2], "{status}");
    assert_eq!(status["timelines"][1]["history_archived"], true);
    assert!(world.ws.ok(&["verify", "cluster"]).contains("timeline 2"));

    let second = world.ws.path().join("on-timeline-2");
    let (out, server) = world.restore(&second, &["--to", &target]);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "restore --to {target} failed\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("1 (left at"),
        "the plan names the timelines: {stderr}"
    );
    assert_eq!(ids(&server), "1,2,3,10,11,12");
}

#[test]
fn restore_follows_a_new_timeline_local() {
    restore_follows_a_new_timeline(false);
}

#[test]
fn restore_follows_a_new_timeline_s3() {
    restore_follows_a_new_timeline(true);
}

/// With signing on, a base backup planted without the signing key (here a
/// signed manifest copied under a newer id, so its signature does not
/// match) does not block point-in-time recovery: the base backup only sets
/// where replay starts, so it is named as a security warning and replay
/// starts from the newest trusted base backup, reaching the same rows.
#[test]
fn a_planted_base_backup_is_named_and_passed_over() {
    let world = World::new(false, "");
    world.sign();
    world.create_table();
    let id = world.ws.ok(&["backup", "cluster"]);
    let id = id
        .split_whitespace()
        .find(|w| w.len() > 20)
        .unwrap_or(id.trim())
        .to_string();
    world.insert(1..=3);
    world.switch_and_wait();

    let real = world.ws.repo_dir().join("backups/cluster");
    let real_id = std::fs::read_dir(&real)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .next()
        .expect("one backup");
    let planted_id = format!("2099{}", &real_id[4..]);
    let planted = real.join(&planted_id);
    std::fs::create_dir(&planted).unwrap();
    std::fs::copy(
        real.join(&real_id).join("manifest.json"),
        planted.join("manifest.json"),
    )
    .unwrap();
    common::chown_to_pg_owner(&planted);
    common::chown_to_pg_owner(&planted.join("manifest.json"));

    let dir = world.ws.path().join("restored");
    // A dry run prints the plan, warning included, and touches nothing.
    let out = world.ws.run(&[
        "restore",
        "cluster",
        "--to",
        "latest",
        "--data-dir",
        dir.to_str().unwrap(),
        "--dry-run",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Restore plan") && stderr.contains("dry run") && stderr.contains(&real_id),
        "{stderr}"
    );
    assert!(!dir.exists(), "a dry run created {}", dir.display());
    let (out, server) = world.restore(&dir, &["--to", "latest"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr} ({id})");
    assert!(
        stderr.contains("warning: security") && stderr.contains(&planted_id),
        "{stderr}"
    );
    assert!(
        stderr.contains(&real_id),
        "the plan names the trusted one: {stderr}"
    );
    assert_eq!(ids(&server), "1,2,3");
}
