//! Restore drills: each one restores into a scratch target, proves the data
//! against the backup's fingerprint, measures RTO and RPO, and leaves a
//! hash-chained record in the repository, passed or failed.

mod common;

use std::time::Duration;

use common::workspace::Workspace;
use common::{Postgres, wait_for};
use serde_json::Value;

const EXIT_FAILED: i32 = 1;

fn shop(pg: &Postgres) {
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders(id int PRIMARY KEY, created_at timestamptz NOT NULL, total numeric(10,2)); \
         INSERT INTO orders SELECT g, now() - g * interval '1 minute', g * 1.25 FROM generate_series(1, 3000) g;",
    );
}

/// A workspace with policy `shop` whose drill restores into `pg`.
fn workspace(pg: &Postgres, drill_toml: &str) -> Workspace {
    let mut ws = Workspace::local();
    ws.postgres_policy("shop", pg, "shop");
    let policy = std::fs::read_to_string(ws.path().join("policies/shop.toml")).unwrap();
    ws.write("policies/shop.toml", &format!("{policy}\n{drill_toml}"));
    ws
}

fn drill_section(pg: &Postgres) -> String {
    format!(
        "[drill]\nscratch_url = \"{}\"\nrto_target = \"30m\"\nrpo_target = \"1d\"\n\n\
         [[drill.checks]]\nname = \"recent orders\"\nsql = \"SELECT count(*) > 0 FROM orders WHERE created_at > now() - interval '2 days'\"\nexpect = \"t\"\n",
        pg.url("postgres")
    )
}

fn drills(ws: &Workspace) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&ws.ok(&["drills", "shop", "--json"])).expect("drills --json");
    v["drills"].as_array().cloned().unwrap_or_default()
}

fn scratch_databases(pg: &Postgres) -> String {
    pg.psql("postgres", "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'drctl%' OR datname LIKE '%drctl%'")
}

#[test]
fn a_drill_restores_verifies_measures_and_records() {
    let pg = Postgres::start();
    shop(&pg);
    let ws = workspace(&pg, &drill_section(&pg));
    let backup = ws.backup("shop");

    let out: Value =
        serde_json::from_str(&ws.ok(&["drill", "shop", "--json"])).expect("drill --json");
    let r = &out["drills"][0];
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["backup_id"], backup.as_str());
    let checks = r["checks"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["name"] == "fingerprint"
            && c["ok"] == true
            && c["detail"].as_str().unwrap().contains("3000 rows")),
        "{r:#}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "recent orders" && c["ok"] == true),
        "{r:#}"
    );
    let rto = r["rto"]["measured_seconds"].as_f64().expect("RTO measured");
    assert!(rto > 0.0 && r["rto"]["target_seconds"] == 1800.0, "{r:#}");
    assert!(r["rpo"]["measured_seconds"].as_f64().expect("RPO measured") >= 0.0);
    assert!(
        r["previous_sha256"].is_null(),
        "the first record starts the chain"
    );
    assert_eq!(
        scratch_databases(&pg),
        "",
        "the scratch database is dropped"
    );

    // A second drill links to the first.
    ws.ok(&["drill", "shop"]);
    let listed = drills(&ws);
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0]["record"]["previous_sha256"], listed[1]["sha256"],
        "newest first, linked to the one before"
    );
    let text = ws.ok(&["drills"]);
    assert_eq!(text.matches("passed").count(), 2, "{text}");
}

#[test]
fn a_failing_check_fails_the_drill_and_is_recorded() {
    let pg = Postgres::start();
    shop(&pg);
    let section = drill_section(&pg).replace("expect = \"t\"", "expect = \"f\"");
    let ws = workspace(&pg, &section);
    ws.backup("shop");
    let err = ws.fails(&["drill", "shop"], EXIT_FAILED);
    assert!(
        err.contains("drill of `shop` failed") && err.contains("recent orders"),
        "{err}"
    );
    let listed = drills(&ws);
    assert_eq!(listed[0]["record"]["passed"], false);
    assert_eq!(scratch_databases(&pg), "");
}

#[test]
fn altered_backup_data_fails_the_drill_naming_the_object() {
    let pg = Postgres::start();
    shop(&pg);
    let ws = workspace(&pg, &drill_section(&pg));
    let id = ws.backup("shop");
    let data = ws
        .repo_dir()
        .join(format!("backups/shop/{id}/data.pgdump.zst.age"));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&data, bytes).unwrap();

    let err = ws.fails(&["drill", "shop"], EXIT_FAILED);
    assert!(
        err.contains(&format!("backups/shop/{id}/data.pgdump.zst.age")),
        "{err}"
    );
    let r = &drills(&ws)[0]["record"];
    assert_eq!(r["passed"], false);
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .contains("data.pgdump.zst.age"),
        "{r:#}"
    );
    assert!(
        r["rto"]["measured_seconds"].is_null(),
        "no RTO is claimed for a failed restore"
    );
    assert_eq!(
        scratch_databases(&pg),
        "",
        "the scratch database of the failed drill is dropped"
    );
}

#[test]
fn refusals_are_failed_drills_with_a_reason() {
    let pg = Postgres::start();
    shop(&pg);
    // No scratch target at all.
    let ws = workspace(&pg, "[drill]\nrto_target = \"30m\"\n");
    ws.backup("shop");
    let err = ws.fails(&["drill", "shop"], EXIT_FAILED);
    assert!(err.contains("scratch_url"), "{err}");
    assert_eq!(drills(&ws)[0]["record"]["passed"], false);

    // The identity is missing.
    let ws = workspace(&pg, &drill_section(&pg));
    ws.backup("shop");
    std::fs::remove_file(ws.path().join("identity.age")).unwrap();
    // A key problem exits 2 as everywhere, after the failed drill is recorded.
    let err = ws.fails(&["drill", "shop"], 2);
    assert!(err.contains("identity"), "{err}");
    assert!(
        drills(&ws)[0]["record"]["failure"]
            .as_str()
            .unwrap()
            .contains("identity")
    );

    // The scratch server is unreachable.
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        common::free_port()
    );
    let ws = workspace(&pg, &format!("[drill]\nscratch_url = \"{dead}\"\n"));
    ws.backup("shop");
    let err = ws.fails(&["drill", "shop"], EXIT_FAILED);
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(drills(&ws)[0]["record"]["passed"], false);
}

#[test]
fn a_killed_drill_claims_nothing_and_the_next_one_cleans_up() {
    let pg = Postgres::start();
    pg.createdb("shop");
    // Big enough that the restore is still running when we kill drctl.
    pg.psql(
        "shop",
        "CREATE TABLE orders(id int PRIMARY KEY, created_at timestamptz NOT NULL, total numeric(10,2), note text); \
         INSERT INTO orders SELECT g, now(), g, md5(g::text) || md5((g+1)::text) FROM generate_series(1, 600000) g;",
    );
    let ws = workspace(&pg, &drill_section(&pg));
    ws.backup("shop");
    let mut child = ws
        .cmd(&["drill", "shop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the drill's scratch database",
        Duration::from_secs(60),
        || (!scratch_databases(&pg).is_empty()).then_some(()),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !scratch_databases(&pg).is_empty(),
        "the killed drill left its scratch database"
    );
    assert!(
        drills(&ws).iter().all(|d| d["record"]["passed"] != true),
        "no record claims success"
    );

    let out = ws.ok(&["drill", "shop"]);
    assert!(out.contains("PASSED"), "{out}");
    assert_eq!(
        scratch_databases(&pg),
        "",
        "leftovers of the killed drill were dropped"
    );
}

#[test]
fn a_files_drill_compares_every_path() {
    let pg = Postgres::start();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("nginx.conf"), "worker_processes 2;\n").unwrap();
    std::os::unix::fs::symlink("nginx.conf", src.path().join("current")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ws = Workspace::local();
    ws.files_policy("conf", &[src.path()]);
    let policy = std::fs::read_to_string(ws.path().join("policies/conf.toml")).unwrap();
    ws.write(
        "policies/conf.toml",
        &format!(
            "{policy}\n[drill]\nscratch_dir = \"{}\"\n",
            scratch.path().display()
        ),
    );
    ws.backup("conf");
    let out = ws.ok(&["drill", "conf"]);
    assert!(
        out.contains("PASSED") && out.contains("every path"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "the scratch directory is emptied"
    );
    drop(pg);
}

#[test]
fn older_or_random_backups_can_be_drilled() {
    let pg = Postgres::start();
    shop(&pg);
    let ws = workspace(&pg, &drill_section(&pg));
    let first = ws.backup("shop");
    std::thread::sleep(Duration::from_millis(1100));
    ws.backup("shop");
    let out: Value =
        serde_json::from_str(&ws.ok(&["drill", "shop", "--backup", &first, "--json"])).unwrap();
    assert_eq!(out["drills"][0]["backup_id"], first.as_str());
    let out: Value =
        serde_json::from_str(&ws.ok(&["drill", "shop", "--random", "--json"])).unwrap();
    assert_eq!(out["drills"][0]["passed"], true);
}
