//! Drills of `postgres-cluster` policies against a real PostgreSQL 15
//! whose `archive_command` is `drctl wal-push`: the drill recovers the
//! cluster into `[drill] scratch_dir`, starts a throwaway server on it,
//! checks the base backup against `backup_manifest`, every btree index with
//! amcheck and the policy's SQL checks, and records RTO, RPO, the target
//! and where recovery stopped, passed or failed, leaving nothing running.
//!
//! drctl runs as the `postgres` OS user here (`Workspace::hand_to_pg_owner`),
//! as it must to start a server.

mod common;

use std::path::{Path, PathBuf};

use common::cluster::{World, text};
use common::workspace::COMMAND_TIMEOUT;
use common::{chown_to_pg_owner, output_within};
use serde_json::Value;

const EXIT_FAILED: i32 = 1;

/// A `[drill]` section restoring into `scratch`, with one SQL check.
fn drill_section(scratch: &Path, sql: &str, expect: &str) -> String {
    format!(
        "[drill]\nscratch_dir = \"{}\"\nrto_target = \"30m\"\n\n\
         [[drill.checks]]\nname = \"rows\"\nsql = \"{sql}\"\nexpect = \"{expect}\"\n",
        scratch.display()
    )
}

/// A scratch directory the server's user owns.
fn scratch(world: &World) -> PathBuf {
    let dir = world.ws.path().join("scratch");
    std::fs::create_dir(&dir).unwrap();
    chown_to_pg_owner(&dir);
    dir
}

/// A cluster with table `t` (ids 1–3 in the base backup, 4–6 only in the
/// archived WAL after it), backed up and archived.
fn cluster_with_rows(on_s3: bool, drill: impl Fn(&Path) -> String) -> (World, PathBuf, String) {
    let world = World::new(on_s3, "");
    let scratch = scratch(&world);
    let policy = std::fs::read_to_string(world.ws.path().join("policies/cluster.toml")).unwrap();
    world.ws.write(
        "policies/cluster.toml",
        &format!("{policy}\n{}", drill(&scratch)),
    );
    chown_to_pg_owner(&world.ws.path().join("policies/cluster.toml"));
    let pg = &world.pg;
    pg.psql(
        "postgres",
        "CREATE TABLE t(id int PRIMARY KEY, note text); CREATE INDEX t_note ON t(note); \
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 3) g",
    );
    let backup = world.ws.backup("cluster");
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(4, 6) g",
    );
    world.switch_and_wait();
    (world, scratch, backup)
}

/// `drctl drill cluster ARGS --json`: exit code and the record.
fn drill(world: &World, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all = vec!["drill", "cluster", "--json"];
    all.extend(args);
    let out = output_within(&mut world.ws.cmd(&all), b"", COMMAND_TIMEOUT);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("drill --json is not JSON ({e})\n{stdout}\n--- stderr ---\n{stderr}")
    });
    (out.status.code(), v["drills"][0].clone(), stderr)
}

fn check<'a>(record: &'a Value, name: &str) -> &'a Value {
    record["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {record:#}"))
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a postmaster runs on a data directory under `dir`.
fn server_running_under(dir: &Path) -> bool {
    let out = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    text(&out.stdout)
        .lines()
        .any(|l| l.contains("postgres") && l.contains(&dir.display().to_string()))
}

fn a_cluster_drill_recovers_checks_and_records(on_s3: bool) {
    let (world, scratch, backup) = cluster_with_rows(on_s3, |s| {
        drill_section(
            s,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t",
            "1,2,3,4,5,6",
        )
    });
    let (code, r, stderr) = drill(&world, &[]);
    assert_eq!(code, Some(0), "{r:#}\n{stderr}");
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["kind"], "postgres-cluster");
    assert_eq!(r["backup_id"], backup.as_str());
    // The rows inserted after the base backup came from replayed WAL.
    assert_eq!(check(&r, "rows")["ok"], true, "{r:#}");
    let manifest = check(&r, "backup_manifest");
    assert!(
        manifest["ok"] == true && manifest["detail"].as_str().unwrap().contains("files match"),
        "{r:#}"
    );
    let amcheck = check(&r, "amcheck");
    assert!(
        amcheck["ok"] == true && amcheck["detail"].as_str().unwrap().contains("btree index"),
        "{r:#}"
    );
    assert_eq!(check(&r, "recovery")["ok"], true, "{r:#}");
    let rto = r["rto"]["measured_seconds"].as_f64().expect("RTO measured");
    assert!(rto > 0.0 && r["rto"]["target_seconds"] == 1800.0, "{r:#}");
    let rpo = r["rpo"]["measured_seconds"].as_f64().expect("RPO measured");
    assert!((0.0..600.0).contains(&rpo), "{r:#}");
    let recovery = &r["recovery"];
    assert_eq!(recovery["target"], "latest", "{r:#}");
    assert!(recovery["stopped_at_lsn"].is_string(), "{r:#}");
    assert!(recovery["last_transaction_at"].is_string(), "{r:#}");
    assert!(recovery["wal_segments"].as_u64().unwrap() >= 1, "{r:#}");
    // Stopped and removed.
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    assert!(!server_running_under(&scratch));

    // `drctl drills` and the report show it, with where recovery stopped.
    let report = world.ws.ok(&["report", "--format", "md"]);
    assert!(
        report.contains("postgres-cluster") && report.contains("latest"),
        "{report}"
    );
    assert!(report.contains("stopped at LSN"), "{report}");

    if !on_s3 {
        // A random time in the window: replay stops at or before it.
        let (_, r, stderr) = drill(&world, &["--random"]);
        for name in ["backup_manifest", "recovery", "amcheck"] {
            assert_eq!(check(&r, name)["ok"], true, "{name}: {r:#}\n{stderr}");
        }
        // The rows are those committed by the target: the base backup's
        // three and a prefix of the rest (the check expects all six, so it
        // passes only when the target is after the last insert).
        let rows = check(&r, "rows")["detail"].as_str().unwrap();
        assert!(
            ["1,2,3`", "1,2,3,4`", "1,2,3,4,5`", "1,2,3,4,5,6`"]
                .iter()
                .any(|p| rows.starts_with(&format!("returned `{p}"))),
            "{r:#}"
        );
        let recovery = &r["recovery"];
        assert_eq!(recovery["target"], "time", "{r:#}");
        let target: chrono::DateTime<chrono::Utc> =
            recovery["target_time"].as_str().unwrap().parse().unwrap();
        if let Some(last) = recovery["last_transaction_at"].as_str() {
            let last: chrono::DateTime<chrono::Utc> = last.parse().unwrap();
            assert!(last <= target, "{r:#}");
        }
        assert!(entries(&scratch).is_empty());
        // Both records are in one chain.
        world.ws.ok(&["report", "--verify"]);
    }
}

#[test]
fn a_cluster_drill_recovers_checks_and_records_local() {
    a_cluster_drill_recovers_checks_and_records(false);
}

#[test]
fn a_cluster_drill_recovers_checks_and_records_s3() {
    a_cluster_drill_recovers_checks_and_records(true);
}

#[test]
fn a_drill_with_a_missing_segment_fails_names_it_and_leaves_nothing() {
    let (world, scratch, _) = cluster_with_rows(false, |s| drill_section(s, "SELECT 1", "1"));
    let middle = world.switch_and_wait();
    world
        .pg
        .psql("postgres", "INSERT INTO t VALUES (7, 'row 7')");
    world.switch_and_wait();
    world.delete_wal(&middle);

    let (code, r, stderr) = drill(&world, &[]);
    assert_eq!(code, Some(EXIT_FAILED), "{r:#}\n{stderr}");
    assert_eq!(r["passed"], false, "{r:#}");
    let failure = r["failure"].as_str().unwrap();
    assert!(
        failure.contains(&middle) && failure.contains("missing"),
        "{failure}"
    );
    assert!(stderr.contains(&middle), "{stderr}");
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    assert!(!server_running_under(&scratch));
    // It is in the chain, as a failure.
    let listed: Value =
        serde_json::from_str(&world.ws.ok(&["drills", "cluster", "--json"])).unwrap();
    assert_eq!(listed["drills"][0]["record"]["passed"], false);
}

#[test]
fn a_failing_sql_check_fails_the_drill_and_a_kept_server_is_cleared_by_the_next() {
    let (world, scratch, _) = cluster_with_rows(false, |s| {
        drill_section(s, "SELECT count(*) FROM t", "1000")
    });
    let (code, r, stderr) = drill(&world, &["--keep"]);
    assert_eq!(code, Some(EXIT_FAILED), "{r:#}\n{stderr}");
    assert_eq!(r["passed"], false);
    let rows = check(&r, "rows");
    assert!(
        rows["ok"] == false && rows["detail"].as_str().unwrap().contains("returned `6`"),
        "{r:#}"
    );
    assert!(r["failure"].as_str().unwrap().contains("rows"), "{r:#}");
    // Everything else passed: only the check failed.
    assert_eq!(check(&r, "amcheck")["ok"], true, "{r:#}");
    // --keep left the server running in its directory.
    let kept = entries(&scratch);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(server_running_under(&scratch));

    // The next drill (as after a killed one) stops and removes it.
    let (_, r, stderr) = drill(&world, &[]);
    assert!(r["rto"]["measured_seconds"].is_number(), "{r:#}\n{stderr}");
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    assert!(!server_running_under(&scratch));
}

#[test]
fn a_drill_without_a_usable_scratch_dir_is_refused_clearly_and_recorded() {
    let world = World::new(false, "[drill]\nrto_target = \"1h\"\n");
    let (code, r, stderr) = drill(&world, &[]);
    assert_eq!(code, Some(EXIT_FAILED), "{stderr}");
    assert!(
        r["failure"].as_str().unwrap().contains("no scratch_dir"),
        "{r:#}"
    );
    assert!(stderr.contains("scratch_dir"), "{stderr}");

    // A directory the server's user cannot write.
    let root_owned = world.ws.path().join("read-only");
    std::fs::create_dir(&root_owned).unwrap();
    chown_to_pg_owner(&root_owned);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root_owned, std::fs::Permissions::from_mode(0o555)).unwrap();
    let policy = std::fs::read_to_string(world.ws.path().join("policies/cluster.toml")).unwrap();
    world.ws.write(
        "policies/cluster.toml",
        &policy.replace(
            "[drill]\n",
            &format!("[drill]\nscratch_dir = \"{}\"\n", root_owned.display()),
        ),
    );
    chown_to_pg_owner(&world.ws.path().join("policies/cluster.toml"));
    let (code, r, stderr) = drill(&world, &[]);
    assert_eq!(code, Some(EXIT_FAILED), "{stderr}");
    let failure = r["failure"].as_str().unwrap();
    assert!(
        failure.contains("cannot create the drill's data directory")
            && failure.contains("uid")
            && failure.contains("writable"),
        "{failure}"
    );
    assert!(entries(&root_owned).is_empty());
    // Both refusals are recorded, in one chain.
    let listed: Value =
        serde_json::from_str(&world.ws.ok(&["drills", "cluster", "--json"])).unwrap();
    assert_eq!(listed["drills"].as_array().unwrap().len(), 2);
}

/// The daemon runs the policy's drill on its schedule, as the server's
/// user, to a random time (`choose = "random"`): a passed record, and
/// /status and /metrics say so.
#[test]
fn the_daemon_runs_a_scheduled_cluster_drill() {
    let (world, scratch, _) = cluster_with_rows(false, |s| {
        format!(
            "{}\n",
            drill_section(s, "SELECT count(*) >= 3 FROM t", "t").replace(
                "[drill]\n",
                "[drill]\nschedule = \"*/3 * * * * *\"\nchoose = \"random\"\n",
            )
        )
    });
    let port = common::free_port();
    let base = std::fs::read_to_string(world.ws.path().join("drctl.toml")).unwrap();
    world.ws.write(
        "daemon.toml",
        &format!("{base}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\ncheck_interval = \"1s\"\n"),
    );
    chown_to_pg_owner(&world.ws.path().join("daemon.toml"));
    let log = world.ws.path().join("daemon.log");
    let mut daemon = world
        .ws
        .cmd_with_config("daemon.toml", &["daemon"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the daemon");
    let status = common::wait_for(
        "a passed scheduled drill",
        std::time::Duration::from_secs(90),
        || {
            let status: Value = serde_json::from_str(&common::http_get(port, "/status")?.1).ok()?;
            let last = &status["policies"]["cluster"]["drill"]["last_run"];
            (last["result"] == "ok").then(|| status.clone())
        },
    );
    let metrics = common::http_get(port, "/metrics").expect("/metrics").1;
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let _ = daemon.wait();
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        metrics.contains("drctl_drill_last_success_timestamp_seconds{policy=\"cluster\"}"),
        "{metrics}\n{daemon_log}"
    );
    assert!(
        metrics.contains("drctl_drill_failures_total{policy=\"cluster\"} 0"),
        "{metrics}\n{daemon_log}"
    );
    let listed: Value =
        serde_json::from_str(&world.ws.ok(&["drills", "cluster", "--json"])).unwrap();
    let id = status["policies"]["cluster"]["drill"]["last_run"]["id"].clone();
    let record = listed["drills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["record"])
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("the daemon's drill {id} is not recorded: {listed:#}"));
    assert_eq!(record["passed"], true, "{record:#}");
    assert_eq!(check(record, "amcheck")["ok"], true, "{record:#}");
    // `choose = "random"`: a random time in the window, not latest.
    assert_eq!(record["recovery"]["target"], "time", "{record:#}");
    // SIGTERM let the running drill finish: nothing is left behind.
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    assert!(!server_running_under(&scratch), "{daemon_log}");
}

/// An index whose order no longer matches its operator class (the
/// comparison function changed after the index was built, as a collation
/// change in the C library does to text indexes) is found by amcheck, and
/// fails the drill without naming the index in the record.
#[test]
fn a_corrupt_index_fails_the_drill() {
    let (world, scratch, _) = cluster_with_rows(false, |s| drill_section(s, "SELECT 1", "1"));
    world.pg.psql(
        "postgres",
        "CREATE FUNCTION secret_cmp(int4, int4) RETURNS int4 IMMUTABLE LANGUAGE sql AS 'SELECT btint4cmp($1, $2)'; \
         CREATE OPERATOR CLASS secret_ops FOR TYPE int4 USING btree AS \
           OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >, FUNCTION 1 secret_cmp(int4, int4); \
         CREATE TABLE secret_orders(id int4); INSERT INTO secret_orders SELECT generate_series(1, 2000); \
         CREATE INDEX secret_orders_idx ON secret_orders (id secret_ops); \
         CREATE OR REPLACE FUNCTION secret_cmp(int4, int4) RETURNS int4 IMMUTABLE LANGUAGE sql AS 'SELECT btint4cmp($2, $1)';",
    );
    world.switch_and_wait();

    let (code, r, stderr) = drill(&world, &[]);
    assert_eq!(code, Some(EXIT_FAILED), "{r:#}\n{stderr}");
    let amcheck = check(&r, "amcheck");
    let detail = amcheck["detail"].as_str().unwrap();
    assert!(
        amcheck["ok"] == false && detail.contains("1 corrupt"),
        "{r:#}\n{stderr}"
    );
    assert!(r["failure"].as_str().unwrap().contains("amcheck"), "{r:#}");
    // The record names no table or index; the log does.
    let stored = serde_json::to_string(&r).unwrap();
    assert!(!stored.contains("secret"), "{stored}");
    assert!(stderr.contains("secret_orders_idx"), "{stderr}");
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
}
