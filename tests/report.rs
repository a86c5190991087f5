//! `drctl report`: the figures auditors read (backups, largest gap against
//! the RPO target, drills passed and failed, RTO median and worst), a
//! period without drills, the evidence chain (`--verify`) after a record is
//! edited or removed, `--output` never overwriting, bucket protection on S3,
//! and the HTML loading cleanly in headless Chromium.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::workspace::{Backend, Workspace};
use common::{S3Server, block_on, unique_bucket_name};
use drctl::drill::record::{Check, DrillRecord, Objective, RECORD_FORMAT, Step};

const POLICY: &str = "app-config";

/// A workspace with two files policies (`app-config` drilled, with RPO 1 h
/// and RTO 2 min targets; `notes` without a [drill] section), real backups,
/// and four drill records of `app-config` 10, 6, 4 and 2 days ago: passed
/// in 40 s, passed in 60 s, failed (500 s), passed in 100 s.
struct Fixture {
    ws: Workspace,
    /// `list --json` rows of `app-config`, oldest first.
    backups: Vec<Value>,
    /// Record keys, oldest first.
    records: Vec<String>,
}

fn open_repo(ws: &Workspace) -> drctl::repo::Repo {
    let config = drctl::config::Config::load(&ws.path().join("drctl.toml")).expect("config loads");
    block_on(async {
        let store = drctl::storage::open(&config.repository)
            .await
            .expect("open store");
        drctl::repo::Repo::open(store).await.expect("open repo")
    })
}

fn record(started: DateTime<Utc>, passed: bool, rto: f64, backup: &Value) -> DrillRecord {
    DrillRecord {
        format: RECORD_FORMAT,
        id: drctl::repo::new_backup_id(started),
        policy: POLICY.into(),
        kind: "files".into(),
        backup_id: backup["id"].as_str().map(str::to_string),
        backup_point_in_time: None,
        started_at: started,
        finished_at: started + Duration::milliseconds((rto * 1000.0) as i64),
        host: "drill-host".into(),
        tool_version: "test".into(),
        passed,
        failure: (!passed).then(|| "checks failed: files".to_string()),
        steps: vec![Step {
            name: "fetch, decrypt, decompress, unpack and compare".into(),
            seconds: rto,
            ok: passed,
        }],
        rto: Objective {
            measured_seconds: Some(rto),
            target_seconds: Some(120.0),
        },
        rpo: Objective {
            measured_seconds: Some(1800.0),
            target_seconds: Some(3600.0),
        },
        checks: vec![Check {
            name: "files".into(),
            ok: passed,
            detail: "every path's content, mode and link target matched".into(),
        }],
        recovery: None,
        sample: None,
        previous_sha256: None,
    }
}

fn fixture() -> Fixture {
    let ws = Workspace::local();
    ws.write("data/app.conf", "listen = 8080\nworkers = 4\n");
    ws.write("notes-data/readme.txt", "hello\n");
    ws.write(
        &format!("policies/{POLICY}.toml"),
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n\n[retention]\nkeep_last = 5\nkeep_daily = 7\n\n[drill]\nscratch_dir = \"scratch\"\nrto_target = \"2m\"\nrpo_target = \"1h\"\n",
            ws.path().join("data").display()
        ),
    );
    ws.files_policy("notes", &[&ws.path().join("notes-data")]);
    ws.backup(POLICY);
    ws.backup(POLICY);
    // The gap before the third backup is the largest.
    std::thread::sleep(StdDuration::from_millis(1100));
    ws.backup(POLICY);
    ws.backup("notes");
    let mut backups = ws.backups(POLICY);
    backups.reverse();

    let repo = open_repo(&ws);
    let now = Utc::now();
    let mut records = Vec::new();
    for (days_ago, passed, rto) in [
        (10, true, 40.0),
        (6, true, 60.0),
        (4, false, 500.0),
        (2, true, 100.0),
    ] {
        let r = record(now - Duration::days(days_ago), passed, rto, &backups[0]);
        let stored = block_on(drctl::drill::append(&repo, r)).expect("append a drill record");
        records.push(drctl::drill::record_key(POLICY, &stored.id));
    }
    Fixture {
        ws,
        backups,
        records,
    }
}

fn time_of(row: &Value) -> DateTime<Utc> {
    row["point_in_time"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .expect("point_in_time")
        .with_timezone(&Utc)
}

fn policy<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("policy {name} in {report:#}"))
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read record")))
}

/// Every file under `dir` with the sha256 of its content.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let hash = sha256_hex(&path);
                out.insert(path, hash);
            }
        }
    }
    out
}

#[test]
fn json_and_markdown_show_the_figures() {
    let f = fixture();
    let ws = &f.ws;
    let (b1, b2, b3) = (&f.backups[0], &f.backups[1], &f.backups[2]);
    // The period ends at the newest backup, so no open gap runs to "now".
    let until = b3["point_in_time"].as_str().unwrap();
    let out = ws.ok(&[
        "report", "--format", "json", "--since", "30d", "--until", until,
    ]);
    let report: Value = serde_json::from_str(&out).expect("report is JSON");
    assert_eq!(report["format"], 1);

    let p = policy(&report, POLICY);
    let b = &p["backups"];
    assert_eq!(b["taken"], 3, "{b:#}");
    assert_eq!(b["failed"], 0, "no failed attempt: {b:#}");
    assert_eq!(b["success_rate_percent"].as_f64(), Some(100.0), "{b:#}");
    assert!(
        b["failed_note"]
            .as_str()
            .unwrap()
            .contains("no run records"),
        "0 failed without any run record says why: {b:#}"
    );
    let gap = &b["largest_gap"];
    let expected = [(b1, b2), (b2, b3)]
        .iter()
        .map(|(a, c)| (time_of(c) - time_of(a)).num_milliseconds() as f64 / 1000.0)
        .fold(0.0, f64::max);
    assert!(
        (gap["seconds"].as_f64().unwrap() - expected).abs() < 0.002,
        "largest gap {gap:#}, expected {expected} s"
    );
    assert_eq!(gap["from_backup"], b2["id"], "{gap:#}");
    assert_eq!(gap["to_backup"], b3["id"], "{gap:#}");
    assert_eq!(gap["open"], false);
    assert_eq!(
        b["measured_from"], b1["point_in_time"],
        "no backup before the period"
    );
    assert_eq!(b["rpo_target_seconds"], 3600.0);
    assert_eq!(b["rpo_met"], true);

    let d = &p["drills"];
    assert_eq!(
        (
            d["run"].as_u64(),
            d["passed"].as_u64(),
            d["failed"].as_u64()
        ),
        (Some(4), Some(3), Some(1)),
        "{d:#}"
    );
    assert_eq!(d["pass_rate_percent"], 75.0);
    assert_eq!(d["rto_samples"], 3, "a failed drill's time is not an RTO");
    assert_eq!(d["rto_median_seconds"], 60.0);
    assert_eq!(d["rto_worst_seconds"], 100.0);
    assert_eq!(d["rto_target_seconds"], 120.0);
    assert_eq!(d["rto_met"], true);
    assert_eq!(p["chain"]["ok"], true);
    assert_eq!(p["chain"]["records"], 4);

    let notes = policy(&report, "notes");
    assert_eq!(notes["drills"]["configured"], false);
    assert!(notes["drills"]["pass_rate_percent"].is_null());
    assert_eq!(
        notes["backups"]["taken"], 0,
        "its backup came after --until"
    );

    assert_eq!(report["repository"]["protection"]["applicable"], false);
    assert_eq!(report["recipients"].as_array().unwrap().len(), 1);
    // The appendix carries the sha256 of every record as stored.
    let evidence = report["evidence"]["records"].as_array().unwrap();
    assert_eq!(evidence.len(), 4);
    for (e, key) in evidence.iter().zip(&f.records) {
        assert_eq!(e["key"], key.as_str());
        assert_eq!(e["sha256"], sha256_hex(&ws.repo_dir().join(key)).as_str());
    }
    assert_eq!(report["evidence"]["chains_intact"], true);
    let controls: Vec<&str> = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        controls,
        [
            "A1.2",
            "A1.3",
            "A.8.13",
            "164.308(a)(7)(ii)(A)",
            "164.308(a)(7)(ii)(B)",
            "164.308(a)(7)(ii)(D)"
        ]
    );

    // Markdown is the default, on stdout.
    let md = ws.ok(&["report"]);
    for expected in [
        "# Backup and recovery evidence",
        "| `app-config` (files) | 3 | 0 |",
        "3 of 4 passed (75 %)",
        "- **RTO:** median 1 min, worst 1 min 40 s over 3 passed drills; target 2 min: met",
        "- **Backups failed:** 0; 3 of 3 attempts succeeded (100 %) — no run records for this policy",
        "- **Versioning:** not applicable: local directory",
        "### SOC 2 (Trust Services Criteria, Availability) A1.3 — Recovery plan testing",
        "### ISO/IEC 27001:2022 Annex A A.8.13 — Information backup",
        "### HIPAA Security Rule 164.308(a)(7)(ii)(D)",
        "What it does not show:",
        "Policies without a [drill] section are not tested by drctl: notes.",
    ] {
        assert!(md.contains(expected), "missing {expected:?} in\n{md}");
    }
    for key in &f.records {
        let line = format!("| `{key}` |");
        assert!(md.contains(&line), "appendix lacks {key}\n{md}");
        assert!(md.contains(&sha256_hex(&ws.repo_dir().join(key))));
    }
}

#[test]
fn a_period_without_drills_says_so_and_shows_no_rate() {
    let f = fixture();
    let md = f.ws.ok(&["report", "--since", "1d"]);
    assert!(md.contains("No drills were run in this period."), "{md}");
    assert!(md.contains("- **Drills:** none in this period"), "{md}");
    // The backups' success rate is a percentage; no drill figure is.
    let drill_lines: Vec<&str> = md
        .lines()
        .filter(|l| l.to_lowercase().contains("drill") || l.contains("RTO"))
        .collect();
    assert!(
        drill_lines.iter().all(|l| !l.contains('%')),
        "a percentage without drills:\n{md}"
    );
    assert!(
        md.contains("No restore drills were run in the period."),
        "{md}"
    );
    assert!(md.contains("**Evidence: not shown.**"), "{md}");

    let report: Value =
        serde_json::from_str(&f.ws.ok(&["report", "--since", "1d", "--json"])).unwrap();
    let d = &policy(&report, POLICY)["drills"];
    assert_eq!(d["run"], 0);
    assert!(
        d["pass_rate_percent"].is_null()
            && d["rto_median_seconds"].is_null()
            && d["rto_met"].is_null(),
        "{d:#}"
    );
    // The backups of today still count.
    assert_eq!(policy(&report, POLICY)["backups"]["taken"], 3);
    // The chain is checked over every record, not only the period's.
    assert_eq!(policy(&report, POLICY)["chain"]["records"], 4);
}

#[test]
fn verify_passes_then_names_an_edited_record() {
    let f = fixture();
    let ws = &f.ws;
    let out = ws.ok(&["report", "--verify"]);
    assert!(
        out.contains("ok      app-config: 4 drill records, chain intact"),
        "{out}"
    );
    assert!(out.contains("ok      notes: 0 drill records"), "{out}");

    // The classic edit: turn the failed drill into a passed one.
    let failed = ws.repo_dir().join(&f.records[2]);
    let text = std::fs::read_to_string(&failed).unwrap();
    assert!(text.contains("\"passed\": false"), "{text}");
    std::fs::write(
        &failed,
        text.replace("\"passed\": false", "\"passed\": true"),
    )
    .unwrap();
    let before = tree(&ws.repo_dir());

    let out = ws.run(&["report", "--verify"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("BROKEN  app-config: 4 drill records"),
        "{stdout}"
    );
    assert!(
        stderr.contains("drill records were altered or removed"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&f.records[3])
            && stderr.contains(&f.records[2])
            && stderr.contains("edited"),
        "the record after the edited one, and the edited one, are named: {stderr}"
    );
    let out = ws.run(&["report", "--verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("--verify --json is JSON");
    assert_eq!(json["ok"], false);
    assert_eq!(json["chains"][0]["policy"], POLICY);

    // The report itself still renders, and says so.
    let out = ws.run(&["report"]);
    assert!(out.status.success());
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("chain BROKEN"), "{md}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: the chain of drill records is broken for app-config")
    );
    assert_eq!(
        tree(&ws.repo_dir()),
        before,
        "checking changed the repository"
    );
}

#[test]
fn verify_notices_a_removed_record() {
    let f = fixture();
    let ws = &f.ws;
    std::fs::remove_file(ws.repo_dir().join(&f.records[1])).unwrap();
    let stderr = ws.fails(&["report", "--verify"], 1);
    assert!(
        stderr.contains(&f.records[2])
            && stderr.contains(&f.records[0])
            && stderr.contains("removed"),
        "names the records around the gap: {stderr}"
    );

    // Removing the first record leaves a successor pointing at nothing.
    std::fs::remove_file(ws.repo_dir().join(&f.records[0])).unwrap();
    let stderr = ws.fails(&["report", "--verify"], 1);
    assert!(
        stderr.contains(&f.records[2]) && stderr.contains("not there"),
        "{stderr}"
    );
}

#[test]
fn output_never_overwrites_and_bad_periods_are_refused() {
    let ws = Workspace::local();
    ws.files_policy("etc", &[&ws.path().join("policies")]);
    ws.write("existing.md", "keep me\n");
    let stderr = ws.fails(&["report", "--output", "existing.md"], 3);
    assert!(stderr.contains("existing.md already exists"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("existing.md")).unwrap(),
        "keep me\n"
    );

    let out = ws.run(&["report", "--format", "html", "--output", "new.html"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the report went to the file only");
    let html = std::fs::read_to_string(ws.path().join("new.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));

    let stderr = ws.fails(&["report", "--since", "1d", "--until", "2d"], 2);
    assert!(stderr.contains("must be before"), "{stderr}");
    let stderr = ws.fails(&["report", "--since", "last tuesday"], 2);
    assert!(
        stderr.contains("cannot understand time `last tuesday`"),
        "{stderr}"
    );
    assert!(!ws.path().join("report.md").exists());
}

#[test]
fn s3_report_states_versioning_and_object_lock() {
    let s3 = S3Server::start();
    let versioned = unique_bucket_name("report-versioned");
    block_on(s3.create_bucket(&versioned, true));
    let ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: versioned,
    });
    ws.files_policy("etc", &[&ws.path().join("policies")]);
    ws.backup("etc");
    let report: Value = serde_json::from_str(&ws.ok(&["report", "--json"])).unwrap();
    let p = &report["repository"]["protection"];
    assert_eq!(p["applicable"], true, "{p:#}");
    assert_eq!(p["versioning"], "Enabled", "{p:#}");
    assert!(p["object_lock"].is_null() && p["error"].is_null(), "{p:#}");
    assert_eq!(policy(&report, "etc")["backups"]["taken"], 1);
    let md = ws.ok(&["report"]);
    assert!(
        md.contains("- **Versioning:** Enabled\n- **Object Lock:** off"),
        "{md}"
    );
    assert!(md.contains("The bucket keeps versions"), "{md}");

    // moto accepts a default retention only on an empty bucket.
    let locked = unique_bucket_name("report-locked");
    block_on(s3.create_bucket_object_lock(&locked));
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
        s3.client()
            .put_object_lock_configuration()
            .bucket(&locked)
            .object_lock_configuration(retention)
            .send(),
    )
    .expect("set a default retention");
    let ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: locked,
    });
    let report: Value = serde_json::from_str(&ws.ok(&["report", "--json"])).unwrap();
    let p = &report["repository"]["protection"];
    assert_eq!(p["versioning"], "Enabled", "{p:#}");
    assert_eq!(
        p["object_lock"], "Enabled, default GOVERNANCE retention of 30 days",
        "{p:#}"
    );
    let md = ws.ok(&["report"]);
    assert!(
        md.contains("- **Object Lock:** Enabled, default GOVERNANCE retention of 30 days"),
        "{md}"
    );
}

#[test]
fn html_loads_in_headless_chromium_without_errors() {
    let f = fixture();
    let ws = &f.ws;
    ws.ok(&["report", "--format", "html", "--output", "report.html"]);
    let html_path = ws.path().join("report.html");
    let dom = common::chromium::dump_dom(&format!("file://{}", html_path.display()));
    assert!(
        dom.contains("<h1>Backup and recovery evidence</h1>"),
        "DOM:\n{dom}"
    );
    assert!(
        dom.contains("RTO per drill of app-config"),
        "the RTO chart is in the DOM"
    );
}
