//! Unit tests of the report's figures and renderings, on fixed data.

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::*;
use crate::drill::record::{Check, DrillRecord, Objective, RECORD_FORMAT, record_sha256};
use crate::pipeline::Digests;
use crate::repo::manifest::{Compression, ObjectRecord};

const RECIPIENT_A: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
const RECIPIENT_B: &str = "age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg";

fn t(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn manifest(policy: &str, at: DateTime<Utc>, size: u64) -> Manifest {
    Manifest {
        format: 1,
        id: format!("{}-0000abcd", at.format("%Y%m%dT%H%M%SZ")),
        policy: policy.into(),
        kind: "postgres".into(),
        point_in_time: at,
        started_at: at,
        finished_at: at + Duration::seconds(40),
        host: "db1".into(),
        tool_version: "0.1.0".into(),
        compression: Compression {
            algorithm: "zstd".into(),
            level: 3,
        },
        recipients: vec![RECIPIENT_A.into()],
        data: ObjectRecord {
            key: "k".into(),
            version_id: None,
            content: "pg_dump-custom".into(),
            digests: Digests {
                plaintext_size: size * 4,
                plaintext_sha256: "0".repeat(64),
                size,
                sha256: Some("1".repeat(64)),
                ..Default::default()
            },
        },
        fingerprint: None,
        postgres: None,
        warnings: Vec::new(),
        cluster: None,
    }
}

fn drill(policy: &str, at: DateTime<Utc>, passed: bool, rto: Option<f64>) -> DrillRecord {
    DrillRecord {
        format: RECORD_FORMAT,
        id: format!("{}-0000beef", at.format("%Y%m%dT%H%M%SZ")),
        policy: policy.into(),
        kind: "postgres".into(),
        backup_id: Some(format!(
            "{}-0000abcd",
            (at - Duration::hours(3)).format("%Y%m%dT%H%M%SZ")
        )),
        backup_point_in_time: Some(at - Duration::hours(3)),
        started_at: at,
        finished_at: at + Duration::seconds(rto.unwrap_or(5.0) as i64),
        host: "drill1".into(),
        tool_version: "0.1.0".into(),
        passed,
        failure: (!passed).then(|| "checks failed: orders-count".to_string()),
        steps: vec![],
        rto: Objective {
            measured_seconds: rto,
            target_seconds: Some(3600.0),
        },
        rpo: Objective {
            measured_seconds: Some(3.0 * 3600.0),
            target_seconds: Some(26.0 * 3600.0),
        },
        checks: vec![
            Check {
                name: "fingerprint".into(),
                ok: true,
                detail: "3 tables, 1200 rows matched the backup".into(),
            },
            Check {
                name: "orders-count".into(),
                ok: passed,
                detail: "returned `1200`, expected `1200`".into(),
            },
        ],
        recovery: None,
        sample: None,
        previous_sha256: None,
    }
}

/// Records linked into a chain, as `drill::append` stores them.
fn chain(records: Vec<DrillRecord>) -> Vec<StoredRecord> {
    let mut out: Vec<StoredRecord> = Vec::new();
    for mut r in records {
        r.previous_sha256 = out.last().map(|s| s.sha256.clone());
        let bytes = serde_json::to_vec_pretty(&r).unwrap();
        out.push(StoredRecord {
            key: format!("drills/{}/{}.json", r.policy, r.id),
            sha256: record_sha256(&bytes),
            record: Ok(r),
        });
    }
    out
}

fn failed_run(policy: &str, at: DateTime<Utc>, class: &str) -> StoredRun {
    let id = format!("{}-0000abcd", at.format("%Y%m%dT%H%M%SZ"));
    StoredRun {
        key: crate::repo::runs::run_key(policy, &id),
        record: Ok(crate::repo::runs::RunRecord {
            format: 1,
            id,
            policy: policy.into(),
            kind: "postgres".into(),
            host: "db1".into(),
            tool_version: "0.1.0".into(),
            started_at: at,
            finished_at: at + Duration::seconds(3),
            result: "failed".into(),
            error_class: class.into(),
            error_sealed: Some("YWdlLWVuY3J5cHRpb24ub3JnL3YxCg==".into()),
        }),
    }
}

fn policy(name: &str, kind: &str) -> PolicyInput {
    PolicyInput {
        name: name.into(),
        kind: kind.into(),
        rpo_target_seconds: None,
        rpo_target_from: None,
        rto_target_seconds: None,
        drill_configured: false,
        retention: Retention::default(),
        backups: vec![],
        damaged_manifests: vec![],
        records: vec![],
        runs: vec![],
        copies: vec![],
    }
}

/// Three policies over the week 2026-11-20 to 2026-11-27: one drilled with
/// targets, one files policy without drills, one whose drills are all older
/// than the period.
fn input() -> ReportInput {
    let mut orders = policy("orders-db", "postgres");
    orders.rpo_target_seconds = Some(26.0 * 3600.0);
    orders.rpo_target_from = Some("[drill] rpo_target".into());
    orders.rto_target_seconds = Some(3600.0);
    orders.drill_configured = true;
    orders.retention = Retention {
        keep_last: Some(3),
        keep_daily: Some(14),
        ..Retention::default()
    };
    // Newest first, as the catalog gives them; a 48 h gap from the 22nd to
    // the 24th; the 19th is before the period.
    orders.backups = [19, 20, 21, 22, 24, 25, 26]
        .iter()
        .rev()
        .map(|d| {
            manifest(
                "orders-db",
                t(*d, 2),
                40_000_000 + u64::from(*d) * 1_000_000,
            )
        })
        .collect();
    orders.records = chain(vec![
        drill("orders-db", t(10, 5), true, Some(500.0)),
        drill("orders-db", t(21, 5), true, Some(600.0)),
        drill("orders-db", t(23, 5), false, Some(900.0)),
        drill("orders-db", t(25, 5), true, Some(1200.0)),
        drill("orders-db", t(26, 5), true, Some(300.0)),
    ]);
    // The failure of the 23rd is the 48 h gap's cause; the 19th is before
    // the period.
    orders.runs = vec![
        failed_run("orders-db", t(19, 2), "database"),
        failed_run("orders-db", t(23, 2), "storage"),
    ];

    let mut nginx = policy("nginx-config", "files");
    nginx.backups = vec![
        manifest("nginx-config", t(26, 1), 20_000),
        manifest("nginx-config", t(23, 1), 18_000),
    ];

    let mut ledger = policy("ledger", "postgres");
    ledger.drill_configured = true;
    ledger.rto_target_seconds = Some(1800.0);
    ledger.backups = vec![manifest("ledger", t(26, 3), 1_000_000)];
    ledger.records = chain(vec![drill("ledger", t(2, 5), true, Some(100.0))]);

    ReportInput {
        since: t(20, 0),
        until: t(27, 0),
        generated_at: t(27, 0),
        tool_version: "0.1.0".into(),
        repository: "s3://acme-backups/drctl".into(),
        protection: Ok(Protection {
            applicable: true,
            versioning: Some("Enabled".into()),
            object_lock: None,
        }),
        recipients: vec![RECIPIENT_A.into(), RECIPIENT_B.into()],
        lifecycle: Lifecycle {
            archive_after_days: Some(30),
            archive_class: Some("GLACIER".into()),
            noncurrent_expire_days: Some(90),
            ..Lifecycle::default()
        },
        policies: vec![orders, nginx, ledger],
    }
}

fn find<'a>(r: &'a Report, name: &str) -> &'a PolicyReport {
    r.policies.iter().find(|p| p.name == name).unwrap()
}

#[test]
fn figures_for_a_drilled_policy() {
    let r = build(&input());
    let p = find(&r, "orders-db");
    assert_eq!(p.backups.taken, 6, "the 19th is before the period");
    assert_eq!(p.backups.failed, 1, "the failure of the 19th is outside");
    assert_eq!(p.backups.failures[0].error_class, "storage");
    assert_eq!(
        p.backups.success_rate_percent,
        Some(6.0 * 100.0 / 7.0),
        "6 of 7 attempts succeeded"
    );
    assert_eq!(p.backups.failed_note, None, "the policy has run records");
    assert_eq!(r.totals.backups_failed, 1);
    let gap = p.backups.largest_gap.as_ref().unwrap();
    assert_eq!(gap.seconds, 48.0 * 3600.0);
    assert_eq!((gap.from, gap.to, gap.open), (t(22, 2), t(24, 2), false));
    assert_eq!(
        p.backups.rpo_met,
        Some(false),
        "48 h is over the 26 h target"
    );
    assert_eq!(p.backups.measured_from, Some(t(20, 0)));
    let d = &p.drills;
    assert_eq!(
        (d.run, d.passed, d.failed),
        (4, 3, 1),
        "the drill of the 10th is outside"
    );
    assert_eq!(d.pass_rate_percent, Some(75.0));
    assert_eq!(d.rto_samples, 3, "a failed drill's time is not an RTO");
    assert_eq!(d.rto_median_seconds, Some(600.0));
    assert_eq!(d.rto_worst_seconds, Some(1200.0));
    assert_eq!(d.rto_met, Some(true));
    assert_eq!(d.latest_passed, Some(true));
    assert_eq!(d.data_verified, 3);
    assert!(p.chain.ok && p.chain.records == 5);
    assert_eq!(r.evidence.records.len(), 4);
}

#[test]
fn a_period_without_drills_shows_no_rate() {
    let r = build(&input());
    let p = find(&r, "ledger");
    assert_eq!(p.drills.run, 0);
    assert_eq!(p.drills.pass_rate_percent, None);
    assert_eq!(p.drills.rto_met, None);
    assert!(
        p.notes
            .iter()
            .any(|n| n == "No drills were run in this period.")
    );
    let md = render_markdown(&r);
    let section = md
        .split("## Policy `ledger`")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    assert!(
        section.contains("- **Drills:** none in this period"),
        "{section}"
    );
    let drill_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("Drills") || l.contains("RTO"))
            .map(str::to_string)
            .collect()
    };
    assert!(
        drill_lines(section).iter().all(|l| !l.contains('%')),
        "{section}"
    );
    assert!(md.contains("| `ledger` (postgres) | 1 | 0 |"), "{md}");
    assert!(
        find(&r, "ledger")
            .backups
            .failed_note
            .as_deref()
            .is_some_and(|n| n.contains("no run records")),
        "0 failures without any run record says why"
    );
    assert!(
        md.contains("| `orders-db` (postgres) | 6 | 1 (85 % succeeded) |"),
        "{md}"
    );
    assert!(drill_lines(&md).iter().all(|l| !l.contains("100 %")));

    // With no drills anywhere, the testing controls are not shown.
    let mut only = input();
    only.policies.retain(|p| p.name == "ledger");
    let r = build(&only);
    let a13 = r.controls.iter().find(|c| c.id == "soc2-a1.3").unwrap();
    assert_eq!(a13.coverage, Coverage::NotShown);
    assert_eq!(a13.shows[0], "No restore drills were run in the period.");
    // The backups' success rate may be 100 %; a drill pass rate never is
    // without drills.
    let html = render_html(&r)
        .replace("attempt succeeded (100 %)", "")
        .replace("attempt succeeded, 100 %", "");
    assert!(!html.contains("100 %"), "{html}");
}

#[test]
fn gap_definition() {
    let mut p = policy("p", "files");
    p.rpo_target_seconds = Some(30.0 * 3600.0);
    let since = t(20, 0);
    let until = t(27, 0);
    let summary = |p: &PolicyInput| backup_summary(p, since, until);

    // Nothing at all: no gap, and a target cannot be met.
    let s = summary(&p);
    assert_eq!(
        (s.largest_gap, s.rpo_met, s.measured_from),
        (None, Some(false), None)
    );

    // Only a backup before the period: the whole period is one open gap.
    p.backups = vec![manifest("p", t(19, 0), 1)];
    let g = summary(&p).largest_gap.unwrap();
    assert_eq!((g.seconds, g.open, g.to), (8.0 * 86_400.0, true, until));

    // The gap that crosses the period's start counts in full.
    p.backups = vec![
        manifest("p", t(18, 0), 1),
        manifest("p", t(21, 0), 1),
        manifest("p", t(26, 12), 1),
    ];
    let g = summary(&p).largest_gap.unwrap();
    assert_eq!((g.from, g.to), (t(21, 0), t(26, 12)));
    p.backups.push(manifest("p", t(23, 0), 1));
    p.backups.push(manifest("p", t(25, 0), 1));
    let g = summary(&p).largest_gap.unwrap();
    assert_eq!(
        (g.from, g.to, g.seconds),
        (t(18, 0), t(21, 0), 72.0 * 3600.0)
    );

    // Without an earlier backup the measure starts at the first one.
    p.backups = vec![manifest("p", t(23, 0), 1), manifest("p", t(24, 0), 1)];
    let s = summary(&p);
    assert_eq!(s.measured_from, Some(t(23, 0)));
    let g = s.largest_gap.unwrap();
    assert_eq!((g.from, g.open, g.seconds), (t(24, 0), true, 72.0 * 3600.0));
    assert_eq!(s.rpo_met, Some(false));

    // Backups after the period are ignored.
    p.backups.push(manifest("p", t(28, 0), 1));
    assert_eq!(summary(&p).taken, 2);
}

#[test]
fn median_of_even_and_odd_samples() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0]), Some(3.0));
    assert_eq!(median(&[1.0, 2.0, 10.0]), Some(2.0));
    assert_eq!(median(&[1.0, 2.0, 4.0, 10.0]), Some(3.0));
}

#[test]
fn durations_read_short() {
    assert_eq!(fmt_seconds(0.84), "0.8 s");
    assert_eq!(fmt_seconds(42.0), "42 s");
    assert_eq!(fmt_seconds(100.0), "1 min 40 s");
    assert_eq!(fmt_seconds(600.0), "10 min");
    assert_eq!(fmt_seconds(3600.0), "1 h");
    assert_eq!(fmt_seconds(3900.0), "1 h 05 min");
    assert_eq!(fmt_seconds(26.0 * 3600.0), "1 d 2 h");
    assert_eq!(fmt_seconds(2.0 * 86_400.0), "2 d");
}

#[test]
fn a_rate_below_100_never_shows_100() {
    assert_eq!(fmt_percent(99.9), "99 %");
    assert_eq!(fmt_percent(100.0), "100 %");
    assert_eq!(fmt_percent(66.67), "66 %");
}

#[test]
fn a_broken_chain_is_reported_everywhere() {
    let mut inp = input();
    // Edit the second record of orders-db in place.
    if let Ok(r) = &mut inp.policies[0].records[1].record {
        r.passed = false;
    }
    inp.policies[0].records[1].sha256 = "f".repeat(64);
    let r = build(&inp);
    assert!(!r.totals.chains_intact && !r.evidence.chains_intact);
    let p = find(&r, "orders-db");
    assert!(!p.chain.ok);
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("chain of drill records is broken"))
    );
    let a13 = r.controls.iter().find(|c| c.id == "soc2-a1.3").unwrap();
    assert_eq!(a13.coverage, Coverage::Partial);
    assert!(
        a13.shows
            .iter()
            .any(|s| s.contains("BROKEN for: orders-db"))
    );
    let md = render_markdown(&r);
    assert!(md.contains("chain BROKEN"), "{md}");
    assert!(md.contains(&inp.policies[0].records[2].key));
}

#[test]
fn unreadable_records_in_the_period_are_listed() {
    let mut inp = input();
    inp.policies[2].records.push(StoredRecord {
        key: "drills/ledger/20261124T050000Z-0000dead.json".into(),
        sha256: "a".repeat(64),
        record: Err("expected value at line 1 column 1".into()),
    });
    let r = build(&inp);
    let p = find(&r, "ledger");
    assert_eq!((p.drills.unreadable, p.drills.run), (1, 0));
    assert!(!p.chain.ok);
    assert!(
        r.evidence
            .records
            .iter()
            .any(|e| !e.readable && e.key.ends_with("0000dead.json"))
    );
}

#[test]
fn unreadable_run_records_are_noted_not_counted() {
    let mut inp = input();
    inp.policies[2].runs.push(StoredRun {
        key: "runs/ledger/20261124T050000Z-0000dead.json".into(),
        record: Err("expected value at line 1 column 1".into()),
    });
    let r = build(&inp);
    let b = &find(&r, "ledger").backups;
    assert_eq!((b.failed, b.unreadable_run_records), (0, 1));
    assert_eq!(b.failed_note, None, "a run record exists, if unreadable");
    assert!(
        find(&r, "ledger")
            .notes
            .iter()
            .any(|n| n.starts_with("1 run record in the period cannot be read"))
    );
}

#[test]
fn html_is_self_contained_and_escaped() {
    let mut inp = input();
    if let Ok(r) = &mut inp.policies[0].records[2].record {
        r.failure = Some("<script>alert(1)</script> & more".into());
    }
    let html = render_html(&build(&inp));
    assert!(html.starts_with("<!DOCTYPE html>"));
    for banned in [
        "<script", "src=", "<link", "@import", "url(", "http://", "https://",
    ] {
        assert!(!html.contains(banned), "the HTML contains {banned}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
    assert!(html.contains("<svg class=\"chart\""));
    assert!(html.contains("@media print"));
    assert!(html.contains("RTO target 1 h"));
}

#[test]
fn controls_follow_the_evidence() {
    let r = build(&input());
    let by_id = |id: &str| r.controls.iter().find(|c| c.id == id).unwrap();
    // orders-db missed its RPO target: backups only partly shown.
    assert_eq!(by_id("soc2-a1.2").coverage, Coverage::Partial);
    // nginx-config has no drills: testing only partly shown.
    assert_eq!(by_id("soc2-a1.3").coverage, Coverage::Partial);
    assert!(
        by_id("soc2-a1.3")
            .does_not_show
            .iter()
            .any(|s| s.contains("nginx-config"))
    );
    assert_eq!(r.controls.len(), 6);
    for c in &r.controls {
        assert!(
            !c.shows.is_empty() && !c.does_not_show.is_empty(),
            "{}",
            c.id
        );
    }
}

/// `DRCTL_REPORT_SAMPLE_DIR=/tmp/x cargo test --lib report::tests::sample`
/// writes this fixture's report in every format there, to look at.
#[test]
fn sample() {
    let Some(dir) = std::env::var_os("DRCTL_REPORT_SAMPLE_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let r = build(&input());
    std::fs::write(dir.join("report.html"), render_html(&r)).unwrap();
    std::fs::write(dir.join("report.md"), render_markdown(&r)).unwrap();
    std::fs::write(dir.join("report.json"), render_json(&r)).unwrap();
}

#[test]
fn markdown_snapshot() {
    insta::assert_snapshot!(render_markdown(&build(&input())));
}

#[test]
fn json_snapshot() {
    insta::assert_snapshot!(render_json(&build(&input())));
}

/// A report must not overstate: the backups of a policy without an RPO
/// target, or with failed attempts, do not evidence the backup control,
/// and no drill records is grey ("no records"), not a green "0 intact".
#[test]
fn a_control_is_not_evidenced_without_a_target_or_with_failures() {
    let mut only = input();
    only.policies.retain(|p| p.name == "nginx-config");
    let coverage = |input: &ReportInput| {
        let r = build(input);
        r.controls
            .iter()
            .find(|c| c.id == "soc2-a1.2")
            .unwrap()
            .coverage
    };
    assert_eq!(coverage(&only), Coverage::Partial, "no RPO target");
    only.policies[0].rpo_target_seconds = Some(7.0 * 86400.0);
    assert_eq!(coverage(&only), Coverage::Shown, "a target, met");
    only.policies[0].runs = vec![failed_run("nginx-config", t(24, 1), "storage")];
    assert_eq!(coverage(&only), Coverage::Partial, "a failed attempt");

    let r = build(&only);
    let html = render_html(&r);
    assert!(!html.contains("0 intact"), "{html}");
    assert!(html.contains("badge na\">no records"), "{html}");
    let md = render_markdown(&r);
    assert!(!md.contains("chain intact"), "{md}");
    assert!(md.contains("no drill records"), "{md}");
}
