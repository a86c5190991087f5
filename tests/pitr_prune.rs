//! Retention of a `postgres-cluster` policy against a real PostgreSQL 15
//! archiving through `drctl wal-push`: the retention rules choose among base
//! backups as among other backups, and prune then deletes the WAL before the
//! start of the oldest kept base backup (never one a held backup needs),
//! after which the kept backup still restores to the end of the archive.
//! On a local directory and on the S3 server.

mod common;

use common::block_on;
use common::cluster::{World, text};
use serde_json::Value;

const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The name of the segment holding `lsn` (`0/5000028`) on `timeline`.
fn segment_of(timeline: u64, lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').expect("an LSN");
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let n = lsn / SEGMENT_BYTES;
    let per_log = 0x1_0000_0000 / SEGMENT_BYTES;
    format!("{timeline:08X}{:08X}{:08X}", n / per_log, n % per_log)
}

fn start_segment(world: &World, id: &str) -> String {
    let m = world.manifest(id);
    segment_of(
        m["cluster"]["timeline"].as_u64().expect("timeline"),
        m["cluster"]["start_lsn"].as_str().expect("start_lsn"),
    )
}

/// The names of `names` that lie before `segment` on its timeline or an
/// earlier one (what prune may delete), `.history` files aside.
fn before(names: &[String], segment: &str) -> Vec<String> {
    names
        .iter()
        .filter(|n| !n.ends_with(".history") && n[..8] <= segment[..8] && n[8..24] < segment[8..24])
        .cloned()
        .collect()
}

fn report(v: &Value) -> &Value {
    &v["reports"][0]
}

fn decision<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("no decision for {id} in {report}"))
}

/// Writes a live hold on backup `id`, as a restore reading it would.
fn hold(world: &World, id: &str) -> String {
    let key = format!("locks/cluster@holds/{id}.0000000000000001");
    let body = serde_json::json!({
        "holder": "recovery-host:4242",
        "job": "restore",
        "acquired_at": "2026-01-01T00:00:00Z",
        "expires_at": "2999-01-01T00:00:00Z",
        "backup_id": id,
    })
    .to_string();
    match &world.s3 {
        Some((s3, bucket)) => block_on(s3.put_object(bucket, &format!("drctl/{key}"), body)),
        None => {
            let path = world.ws.repo_dir().join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
            common::chown_to_pg_owner(path.parent().unwrap());
            common::chown_to_pg_owner(&path);
        }
    }
    key
}

fn unhold(world: &World, key: &str) {
    match &world.s3 {
        Some((s3, bucket)) => {
            block_on(
                s3.client()
                    .delete_object()
                    .bucket(bucket)
                    .key(format!("drctl/{key}"))
                    .send(),
            )
            .expect("delete the hold");
        }
        None => std::fs::remove_file(world.ws.repo_dir().join(key)).expect("remove the hold"),
    }
}

fn keep_last_one_deletes_the_older_base_backup_and_the_wal_before_the_newer(on_s3: bool) {
    let world = World::new(on_s3, "\n[retention]\nkeep_last = 1\n");
    let pg = &world.pg;
    pg.psql("postgres", "CREATE TABLE t(id int PRIMARY KEY)");
    let older = world.ws.backup("cluster");
    pg.psql("postgres", "INSERT INTO t VALUES (1)");
    world.switch_and_wait();
    pg.psql("postgres", "INSERT INTO t VALUES (2)");
    world.switch_and_wait();
    let newer = world.ws.backup("cluster");
    pg.psql("postgres", "INSERT INTO t VALUES (3)");
    world.switch_and_wait();

    let horizon = start_segment(&world, &newer);
    let archived = world.archived();
    let doomed = before(&archived, &horizon);
    // The older backup's start, its .backup file and the two switched
    // segments at least.
    assert!(doomed.len() >= 4, "{doomed:?} of {archived:?}");
    assert!(doomed.iter().any(|n| n.ends_with(".backup")), "{doomed:?}");

    // The plan: the rules treat base backups as any backups, and the WAL
    // range before the kept one's start is shown, deleting nothing.
    let plan = world.ws.ok(&["prune", "cluster", "--dry-run"]);
    let (first, last) = (&doomed[0], doomed.last().unwrap());
    assert!(
        plan.contains(&format!("WAL: delete {} files", doomed.len()))
            && plan.contains(&format!("{first} to {last}"))
            && plan.contains(&format!(
                "before {horizon}, where base backup {newer} starts"
            )),
        "{plan}"
    );
    let v = json(&world.ws.ok(&["prune", "cluster", "--dry-run", "--json"]));
    let r = report(&v);
    assert_eq!(decision(r, &older)["action"], "forget", "{r}");
    assert_eq!(decision(r, &newer)["action"], "keep", "{r}");
    assert_eq!(decision(r, &newer)["reasons"], serde_json::json!(["last"]));
    assert_eq!(r["wal"]["files"], doomed.len(), "{r}");
    assert_eq!(r["wal"]["first"], first.as_str());
    assert_eq!(r["wal"]["last"], last.as_str());
    assert_eq!(r["wal"]["horizon"], horizon.as_str());
    assert_eq!(world.archived(), archived, "a dry run deleted WAL");

    // A restore holding the older backup keeps it, and the WAL from its
    // start on.
    let held = hold(&world, &older);
    let v = json(&world.ws.ok(&["prune", "cluster", "--json"]));
    let r = report(&v);
    assert_eq!(r["held"], serde_json::json!([older]), "{r}");
    let older_start = start_segment(&world, &older);
    assert_eq!(r["wal"]["horizon"], older_start.as_str(), "{r}");
    let before_older = before(&archived, &older_start);
    assert_eq!(
        world.archived(),
        archived
            .iter()
            .filter(|n| !before_older.contains(n))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(world.archived().iter().any(|n| n[..24] == older_start));
    unhold(&world, &held);

    let v = json(&world.ws.ok(&["prune", "cluster", "--json"]));
    let r = report(&v);
    assert_eq!(r["deleted"], serde_json::json!([older]), "{r}");
    let left = world.archived();
    assert!(
        left.iter()
            .all(|n| n.ends_with(".history") || n[8..24] >= horizon[8..24]),
        "WAL before {horizon} is left: {left:?}"
    );
    assert_eq!(
        left,
        archived
            .iter()
            .filter(|n| !doomed.contains(n))
            .cloned()
            .collect::<Vec<_>>(),
        "prune deleted WAL at or after {horizon}"
    );
    assert_eq!(r["wal"]["deleted_files"], doomed.len() - before_older.len());
    let ids: Vec<Value> = world
        .ws
        .backups("cluster")
        .iter()
        .map(|b| b["id"].clone())
        .collect();
    assert_eq!(ids, vec![Value::from(newer.clone())]);

    // The kept backup still restores to the end of the archive.
    let dir = world.ws.path().join("restored");
    let (out, server) = world.restore(&dir, &["--to", "latest"]);
    assert!(
        out.status.success(),
        "restore --to latest failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains(&newer), "{}", text(&out.stderr));
    assert_eq!(
        server.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3"
    );
}

#[test]
fn keep_last_one_deletes_the_older_base_backup_and_the_wal_before_the_newer_local() {
    keep_last_one_deletes_the_older_base_backup_and_the_wal_before_the_newer(false);
}

#[test]
fn keep_last_one_deletes_the_older_base_backup_and_the_wal_before_the_newer_s3() {
    keep_last_one_deletes_the_older_base_backup_and_the_wal_before_the_newer(true);
}

/// With signing on, a base backup whose manifest is not trusted (one from
/// before signing was turned on, or by a key since removed from `trusted`)
/// may be genuine: prune deletes no WAL while it stands, and says why.
#[test]
fn prune_keeps_the_wal_while_an_untrusted_base_backup_may_need_it() {
    let world = World::new(false, "\n[retention]\nkeep_last = 1\n");
    world.sign();
    let pg = &world.pg;
    pg.psql("postgres", "CREATE TABLE t(id int PRIMARY KEY)");
    let older = world.ws.backup("cluster");
    pg.psql("postgres", "INSERT INTO t VALUES (1)");
    world.switch_and_wait();
    let newer = world.ws.backup("cluster");
    pg.psql("postgres", "INSERT INTO t VALUES (2)");
    world.switch_and_wait();

    // The older manifest loses its signature, as an unsigned one from
    // before signing would look.
    let path = world
        .ws
        .repo_dir()
        .join(format!("backups/cluster/{older}/manifest.json"));
    let signed = std::fs::read_to_string(&path).unwrap();
    let at = signed.rfind("\"signature\"").expect("a signed manifest");
    let comma = signed[..at].rfind(',').unwrap();
    let unsigned = format!("{}\n}}\n", &signed[..comma]);
    serde_json::from_str::<Value>(&unsigned).expect("still a manifest");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, unsigned).unwrap();
    common::chown_to_pg_owner(&path);

    let archived = world.archived();
    assert!(!before(&archived, &start_segment(&world, &newer)).is_empty());
    let out = world.ws.run(&["prune", "cluster", "--json"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let v = json(&stdout);
    let r = report(&v);
    assert_eq!(r["wal"]["deleted_files"].as_u64().unwrap_or(0), 0, "{r}");
    assert!(
        r["wal"].to_string().contains("not signed by a trusted key"),
        "{r}"
    );
    assert_eq!(world.archived(), archived, "no WAL was deleted");
}
