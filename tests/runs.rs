//! Run records: a failed backup attempt leaves `runs/<policy>/<id>.json`
//! with its error message sealed (readable with `age` alone, invisible
//! without the key, even when PostgreSQL's error names a table), a busy
//! policy leaves none, a record that cannot be
//! written never hides the backup's own error, and `drctl report` counts
//! the failures and gives a success rate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::Value;

use common::workspace::Workspace;

const POLICY: &str = "app-config";
/// In the error text, never in plaintext in the repository.
const SECRET_NAME: &str = "secret_orders";
const EXIT_FAILED: i32 = 1;
const EXIT_REFUSED: i32 = 3;

/// A workspace whose files policy protects `<ws>/secret_orders`, which
/// exists (so one backup can complete) until the test removes it.
fn workspace() -> (Workspace, PathBuf) {
    let ws = Workspace::local();
    let dir = ws.path().join(SECRET_NAME);
    std::fs::create_dir(&dir).expect("create source dir");
    std::fs::write(dir.join("app.conf"), b"listen = 127.0.0.1\n").expect("write");
    ws.files_policy(POLICY, &[&dir]);
    (ws, dir)
}

fn run_records(ws: &Workspace) -> Vec<PathBuf> {
    let dir = ws.repo_dir().join("runs").join(POLICY);
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.expect("dir entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// `base64 -d | age -d -i identity.age`, as docs/FORMAT.md tells a reader.
fn open_with_age_cli(ws: &Workspace, sealed_b64: &str) -> String {
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(sealed_b64)
        .expect("error_sealed is base64");
    let file = ws.path().join("error.age");
    std::fs::write(&file, sealed).expect("write sealed error");
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(ws.path().join("identity.age"))
        .arg(&file)
        .output()
        .expect("run age");
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the message is UTF-8")
}

fn lease_body(holder: &str) -> String {
    let now = chrono::Utc::now();
    serde_json::json!({
        "holder": holder,
        "job": "backup",
        "acquired_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
        "expires_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
    })
    .to_string()
}

fn policy<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("policy {name} in the report"))
}

#[test]
fn a_failed_backup_is_recorded_sealed_and_counted_by_the_report() {
    let (ws, dir) = workspace();
    ws.backup(POLICY);
    assert!(
        run_records(&ws).is_empty(),
        "a good backup writes no run record"
    );

    // Before any failure, 0 failed says why it may mean little.
    let report: Value = serde_json::from_str(&ws.ok(&["report", "--format", "json"])).unwrap();
    let b = &policy(&report, POLICY)["backups"];
    assert_eq!(b["failed"], 0, "{b:#}");
    assert!(
        b["failed_note"]
            .as_str()
            .is_some_and(|n| n.contains("no run records")),
        "{b:#}"
    );

    // The source is gone: the backup fails and names the path.
    std::fs::remove_dir_all(&dir).expect("remove source dir");
    let stderr = ws.fails(&["backup", POLICY], EXIT_FAILED);
    assert!(
        stderr.contains(SECRET_NAME),
        "the error names the path:\n{stderr}"
    );

    let records = run_records(&ws);
    assert_eq!(
        records.len(),
        1,
        "one failed attempt, one record: {records:?}"
    );
    let bytes = std::fs::read(&records[0]).expect("read run record");
    assert!(
        !String::from_utf8_lossy(&bytes).contains(SECRET_NAME),
        "the error text is not in plaintext:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    let record: Value = serde_json::from_slice(&bytes).expect("run record is JSON");
    let id = record["id"].as_str().unwrap();
    assert_eq!(
        records[0].file_name().unwrap().to_string_lossy(),
        format!("{id}.json")
    );
    assert_eq!(record["format"], 1);
    assert_eq!(record["policy"], POLICY);
    assert_eq!(record["kind"], "files");
    assert_eq!(record["result"], "failed");
    assert_eq!(record["error_class"], "source");
    for field in ["host", "tool_version", "started_at", "finished_at"] {
        assert!(record[field].is_string(), "{field} in {record:#}");
    }
    let message = open_with_age_cli(&ws, record["error_sealed"].as_str().unwrap());
    assert!(message.contains(SECRET_NAME), "{message}");
    assert!(
        stderr.contains(&message),
        "the sealed message is the error the user saw:\n{message}\n---\n{stderr}"
    );

    // Another job holds the policy: nothing was attempted, nothing recorded.
    let lock = ws.repo_dir().join("locks").join(POLICY);
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, lease_body("otherhost:1")).unwrap();
    let stderr = ws.fails(&["backup", POLICY], EXIT_REFUSED);
    assert!(stderr.contains("is busy"), "{stderr}");
    assert_eq!(
        run_records(&ws).len(),
        1,
        "a refused (locked) backup is not a failure"
    );
    std::fs::remove_file(&lock).unwrap();

    let out = ws.ok(&["report", "--format", "json"]);
    assert!(!out.contains(SECRET_NAME), "the report shows no error text");
    let report: Value = serde_json::from_str(&out).unwrap();
    let b = &policy(&report, POLICY)["backups"];
    assert_eq!(
        (b["taken"].as_u64(), b["failed"].as_u64()),
        (Some(1), Some(1)),
        "{b:#}"
    );
    assert_eq!(b["success_rate_percent"].as_f64(), Some(50.0), "{b:#}");
    assert!(
        b["failed_note"].is_null(),
        "the policy has run records: {b:#}"
    );
    assert_eq!(b["failures"][0]["id"], id);
    assert_eq!(b["failures"][0]["error_class"], "source");
    assert_eq!(report["totals"]["backups_failed"], 1);

    let md = ws.ok(&["report"]);
    for expected in [
        &format!("| `{POLICY}` (files) | 1 | 1 (50 % succeeded) |"),
        "- **Backups failed:** 1 (source 1); 1 of 2 attempts succeeded (50 %)",
    ] {
        assert!(md.contains(expected), "missing {expected:?} in\n{md}");
    }
    assert!(!md.contains(SECRET_NAME));

    // Run records need no chain: the evidence check is unaffected.
    ws.ok(&["report", "--verify"]);
}

#[test]
fn a_run_record_that_cannot_be_written_does_not_hide_the_error() {
    let (ws, dir) = workspace();
    std::fs::remove_dir_all(&dir).expect("remove source dir");
    // `runs` as a file: the store cannot create `runs/<policy>/`.
    std::fs::write(ws.repo_dir().join("runs"), b"not a directory").unwrap();
    let stderr = ws.fails(&["backup", POLICY], EXIT_FAILED);
    assert!(
        stderr.contains(&format!("error: policy `{POLICY}`")) && stderr.contains(SECRET_NAME),
        "the backup's own error is what the user sees:\n{stderr}"
    );
    assert!(
        stderr.contains("Cannot write the run record"),
        "a warning says the failure is not recorded:\n{stderr}"
    );
    assert!(Path::new(&ws.repo_dir().join("runs")).is_file());
}

/// pg_dump's (or the fingerprint's) "permission denied for table …" names
/// the table: the record keeps it sealed.
#[test]
fn a_postgres_error_naming_a_table_stays_sealed() {
    let pg = common::Postgres::start();
    pg.createdb("app");
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE {SECRET_NAME} (id int); INSERT INTO {SECRET_NAME} VALUES (1); \
             CREATE ROLE limited LOGIN PASSWORD '{}'; \
             REVOKE ALL ON {SECRET_NAME} FROM PUBLIC;",
            pg.password()
        ),
    );
    let mut ws = Workspace::local();
    ws.postgres_policy("orders-db", &pg, "app");
    ws.write(
        "policies/orders-db.toml",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"postgres://limited@127.0.0.1:{}/app\"\n",
            pg.port()
        ),
    );
    let stderr = ws.fails(&["backup", "orders-db"], EXIT_FAILED);
    assert!(
        stderr.contains(&format!("permission denied for table {SECRET_NAME}")),
        "{stderr}"
    );

    let dir = ws.repo_dir().join("runs").join("orders-db");
    let records: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("runs/orders-db/ exists")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let bytes = std::fs::read(&records[0]).unwrap();
    assert!(
        !String::from_utf8_lossy(&bytes).contains(SECRET_NAME),
        "a table name in plaintext:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    let record: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(record["kind"], "postgres");
    assert!(
        ["source", "database"].contains(&record["error_class"].as_str().unwrap()),
        "{record:#}"
    );
    let message = open_with_age_cli(&ws, record["error_sealed"].as_str().unwrap());
    assert!(message.contains(SECRET_NAME), "{message}");

    let out = ws.ok(&["report", "--format", "json"]);
    assert!(!out.contains(SECRET_NAME), "the report shows no error text");
    let report: Value = serde_json::from_str(&out).unwrap();
    let b = &policy(&report, "orders-db")["backups"];
    assert_eq!(
        (b["taken"].as_u64(), b["failed"].as_u64()),
        (Some(0), Some(1)),
        "{b:#}"
    );
    assert_eq!(b["success_rate_percent"].as_f64(), Some(0.0), "{b:#}");
}
