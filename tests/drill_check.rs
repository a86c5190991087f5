//! The drill's fingerprint check: a changed row fails the full check and is
//! named; scheduled drills with `[drill] sample_percent` check a sample of
//! rows between full checks and record it as a sample, never as a full
//! check.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Postgres;
use common::workspace::Workspace;
use serde_json::Value;
use sha2::{Digest, Sha256};

const EXIT_FAILED: i32 = 1;
const EXIT_CONFIG: i32 = 2;

/// Two tables large enough to be sampled (10,000 rows and more), whose
/// first columns need COPY's escapes and include NULLs, so the sample's
/// buckets must agree between pg_dump's text and the server's `format()`;
/// and one small table that is always read whole.
fn shop(pg: &Postgres) {
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE notes(note text, id int); \
         INSERT INTO notes SELECT CASE WHEN g % 97 = 0 THEN NULL \
           ELSE E'n\\t' || g || E'\\\\x\\n' || repeat('é', g % 5) END, g FROM generate_series(1, 12000) g; \
         CREATE TABLE amounts(amount numeric(12,3), at timestamptz, flag bool); \
         INSERT INTO amounts SELECT CASE WHEN g % 101 = 0 THEN NULL ELSE g * 1.125 END, \
           timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute', g % 2 = 0 \
           FROM generate_series(1, 11000) g; \
         CREATE TABLE small(id int PRIMARY KEY, label text); \
         INSERT INTO small SELECT g, 'row ' || g FROM generate_series(1, 50) g;",
    );
}

fn workspace(pg: &Postgres, extra: &str) -> Workspace {
    let mut ws = Workspace::local();
    ws.postgres_policy("shop", pg, "shop");
    let policy = std::fs::read_to_string(ws.path().join("policies/shop.toml")).unwrap();
    ws.write(
        "policies/shop.toml",
        &format!(
            "{policy}\n[drill]\nscratch_url = \"{}\"\n{extra}",
            pg.url("postgres")
        ),
    );
    ws
}

fn drill(ws: &Workspace, args: &[&str]) -> Value {
    let mut all = vec!["drill", "shop", "--json"];
    all.extend_from_slice(args);
    let out: Value = serde_json::from_str(&ws.ok(&all)).expect("drill --json");
    out["drills"][0].clone()
}

fn check<'a>(record: &'a Value, name: &str) -> Option<&'a Value> {
    record["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed");
    out.stdout
}

/// Rewrites backup `id`'s data object with `edit` applied to the pg_dump
/// archive inside (with age and zstd, as a person with the key could), and
/// its manifest's sizes and digests to match, so that only the fingerprint
/// can tell.
fn rewrite_dump(ws: &Workspace, id: &str, edit: impl Fn(&mut Vec<u8>)) {
    let dir = ws.repo_dir().join(format!("backups/shop/{id}"));
    let data = dir.join("data.pgdump.zst.age");
    let identity = ws.path().join("identity.age");
    let sealed = std::fs::read(&data).unwrap();
    let zst = pipe("age", &["-d", "-i", identity.to_str().unwrap()], &sealed);
    let mut dump = pipe("zstd", &["-d", "-c"], &zst);
    edit(&mut dump);
    let zst = pipe("zstd", &["-3", "-c"], &dump);
    let resealed = pipe("age", &["-r", &ws.recipient], &zst);
    std::fs::write(&data, &resealed).unwrap();
    let manifest_path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["data"]["plaintext_size"] = dump.len().into();
    m["data"]["plaintext_sha256"] = hex::encode(Sha256::digest(&dump)).into();
    m["data"]["size"] = resealed.len().into();
    m["data"]["sha256"] = hex::encode(Sha256::digest(&resealed)).into();
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn a_changed_row_fails_the_full_check_naming_its_table() {
    let pg = Postgres::start();
    shop(&pg);
    let ws = workspace(&pg, "");
    let id = ws.backup("shop");
    // One row of `small` changes, same length: the archive stays valid.
    rewrite_dump(&ws, &id, |dump| {
        let at = dump
            .windows(8)
            .position(|w| w == b"\trow 17\n")
            .expect("row 17 is in the dump");
        dump[at + 6] = b'9';
    });

    let err = ws.fails(&["drill", "shop"], EXIT_FAILED);
    assert!(
        err.contains("table \"public\".\"small\": row contents differ (50 rows)"),
        "{err}"
    );
    let listed: Value = serde_json::from_str(&ws.ok(&["drills", "shop", "--json"])).unwrap();
    let r = &listed["drills"][0]["record"];
    assert_eq!(r["passed"], false, "{r:#}");
    assert!(
        r["failure"]
            .as_str()
            .unwrap()
            .contains("does not match the backup's fingerprint"),
        "{r:#}"
    );
    assert!(r.get("sample").is_none(), "a full check: {r:#}");
}

/// Tables above `DRCTL_CHECK_SPLIT_KIB` are read in block ranges by every
/// check connection at once: the sums over the ranges are the table's, and
/// a changed row in a range still fails the check, naming the table.
#[test]
fn large_tables_read_in_block_ranges_give_the_same_verdict() {
    let pg = Postgres::start();
    shop(&pg);
    let mut ws = workspace(&pg, "");
    ws.set_env("DRCTL_CHECK_SPLIT_KIB", "64");
    let id = ws.backup("shop");
    let record = drill(&ws, &[]);
    assert_eq!(record["passed"], true, "{record:#}");
    let detail = check(&record, "fingerprint").expect("a full check")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("3 tables, 23050 rows matched")
            && detail.contains("2 large tables read in block ranges"),
        "{detail}"
    );
    rewrite_dump(&ws, &id, |dump| {
        let at = dump
            .windows(7)
            .position(|w| w == b"\t11999\n")
            .expect("row 11999 of notes is in the dump");
        dump[at + 5] = b'8';
    });
    let err = ws.fails(&["drill", "shop"], EXIT_FAILED);
    assert!(
        err.contains("table \"public\".\"notes\": row contents differ (12000 rows)"),
        "{err}"
    );
}

#[test]
fn scheduled_drills_check_a_sample_between_full_checks_and_say_so() {
    let pg = Postgres::start();
    shop(&pg);
    let ws = workspace(&pg, "sample_percent = 10\nfull_check_every = \"7d\"\n");
    ws.backup("shop");

    // A drill by hand checks everything, whatever the policy says.
    let by_hand = drill(&ws, &[]);
    assert_eq!(by_hand["passed"], true, "{by_hand:#}");
    assert!(check(&by_hand, "fingerprint").is_some(), "{by_hand:#}");
    assert!(by_hand.get("sample").is_none(), "{by_hand:#}");

    // With a passed full check less than 7 days old, the scheduled check
    // reads a sample: 4 of 32 buckets (10 % rounded up) of both large
    // tables; the small table whole; every table's rows counted.
    let sampled = drill(&ws, &["--scheduled-check"]);
    assert_eq!(sampled["passed"], true, "{sampled:#}");
    assert!(check(&sampled, "fingerprint").is_none(), "{sampled:#}");
    let c = check(&sampled, "fingerprint-sample").expect("a sample check");
    assert_eq!(c["ok"], true);
    assert!(c["detail"].as_str().unwrap().starts_with("SAMPLE"), "{c:#}");
    let s = &sampled["sample"];
    assert_eq!(s["buckets"].as_array().unwrap().len(), 4, "{s:#}");
    assert_eq!(s["of_buckets"], 32);
    assert_eq!(s["tables_sampled"], 2, "{s:#}");
    assert_eq!(s["tables_full"], 1, "{s:#}");
    assert_eq!(s["rows_total"], 12000 + 11000 + 50);
    let hashed = s["rows_hashed"].as_u64().unwrap();
    assert!(hashed > 50 && hashed < 23050 / 2, "{s:#}");

    // The report shows it as sampled and does not count it as a data check.
    let report: Value = serde_json::from_str(&ws.ok(&["report", "--format", "json"])).unwrap();
    let drills = &report["policies"][0]["drills"];
    assert_eq!(drills["data_verified"], 1, "{drills:#}");
    assert_eq!(drills["data_sampled"], 1, "{drills:#}");
    let md = ws.ok(&["report", "--format", "md"]);
    assert!(md.contains("(sampled)"), "{md}");

    // Several sampled drills in a row pick their own buckets, and every
    // bucket matches: backup side and server agree on each row's bucket.
    for _ in 0..3 {
        let again = drill(&ws, &["--scheduled-check"]);
        assert_eq!(again["passed"], true, "{again:#}");
        assert!(again.get("sample").is_some());
    }
}

#[test]
fn a_due_full_check_is_run_in_full() {
    let pg = Postgres::start();
    shop(&pg);
    // Full checks are due after 1 second: the first scheduled drill has no
    // full check before it, the second finds it too old.
    let ws = workspace(&pg, "sample_percent = 10\nfull_check_every = \"1s\"\n");
    ws.backup("shop");
    let first = drill(&ws, &["--scheduled-check"]);
    assert!(check(&first, "fingerprint").is_some(), "{first:#}");
    assert!(first.get("sample").is_none());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = drill(&ws, &["--scheduled-check"]);
    assert!(check(&second, "fingerprint").is_some(), "{second:#}");
}

#[test]
fn a_bad_sample_percent_is_refused_with_its_line() {
    let pg = Postgres::start();
    let ws = workspace(&pg, "sample_percent = 0\n");
    let err = ws.fails(&["check"], EXIT_CONFIG);
    assert!(
        err.contains("shop.toml") && err.contains("`sample_percent` = 0"),
        "{err}"
    );
    let ws = workspace(&pg, "sample_percent = 150\n");
    let err = ws.fails(&["check"], EXIT_CONFIG);
    assert!(err.contains("at most 100"), "{err}");
}
