//! Bucket settings (`repo apply`, `repo status`) and backups in an archive
//! storage class, against the moto S3 server. What drctl set is read back
//! with the aws CLI, an S3 client drctl has no part in.
//!
//! moto stores lifecycle rules but never runs them, so a test that needs an
//! archived object moves it itself: CopyObject onto itself with
//! `--storage-class GLACIER` (tags are copied). On a versioned bucket that
//! makes a new version and the manifest would still name the old, readable
//! one; those tests use an unversioned bucket. moto completes a
//! RestoreObject at once, so for "in progress" a small proxy in front of it
//! rewrites HEAD answers (bottom of the file).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use common::workspace::{Backend, Workspace};
use common::{S3Server, block_on, output_within, s3_env, unique_bucket_name};

/// Where the workspace puts the repository inside the bucket.
const PREFIX: &str = "drctl";

/// One moto server for the whole file; every test has its own bucket.
fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::start)
}

fn aws(args: &[&str]) -> Output {
    let mut cmd = Command::new("aws");
    cmd.arg("--endpoint-url")
        .arg(server().endpoint())
        .args(["--output", "json"])
        .args(args);
    for (k, v) in s3_env() {
        cmd.env(k, v);
    }
    output_within(&mut cmd, b"", Duration::from_secs(60))
}

/// Runs the aws CLI, asserts success and parses its JSON answer.
fn aws_json(args: &[&str]) -> Value {
    let out = aws(args);
    assert!(
        out.status.success(),
        "aws {args:?} failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).expect("aws prints JSON")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A workspace on a new bucket (versioned or not), with `lifecycle` as the
/// `[lifecycle]` section of drctl.toml.
fn workspace(bucket: &str, versioned: bool, lifecycle: &str) -> Workspace {
    block_on(server().create_bucket(bucket, versioned));
    with_lifecycle(
        Workspace::new(Backend::S3 {
            endpoint: server().endpoint(),
            bucket: bucket.to_string(),
        }),
        lifecycle,
    )
}

fn with_lifecycle(ws: Workspace, lifecycle: &str) -> Workspace {
    let path = ws.path().join("drctl.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    if !lifecycle.is_empty() {
        text.push_str(&format!("\n[lifecycle]\n{lifecycle}\n"));
    }
    std::fs::write(&path, text).unwrap();
    ws
}

fn lifecycle_rules(bucket: &str) -> Option<Vec<Value>> {
    let out = aws(&[
        "s3api",
        "get-bucket-lifecycle-configuration",
        "--bucket",
        bucket,
    ]);
    if !out.status.success() {
        assert!(
            stderr_of(&out).contains("NoSuchLifecycleConfiguration"),
            "{}",
            stderr_of(&out)
        );
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rules = v["Rules"].as_array().cloned().unwrap_or_default();
    rules.sort_by_key(|r| r["ID"].as_str().unwrap_or_default().to_string());
    Some(rules)
}

fn versioning(bucket: &str) -> Value {
    aws_json(&["s3api", "get-bucket-versioning", "--bucket", bucket])["Status"].clone()
}

/// Requests that change bucket-level settings (`PUT /bucket/?lifecycle`,
/// `?versioning`, `?object-lock`, or a DELETE of one), from moto's log.
fn setting_writes(bucket: &str) -> usize {
    server()
        .log()
        .lines()
        .filter(|l| {
            l.contains(&format!("\"PUT /{bucket}/?"))
                || l.contains(&format!("\"DELETE /{bucket}/?"))
        })
        .count()
}

const LIFECYCLE: &str = "archive_after_days = 45\narchive_class = \"GLACIER\"\nnoncurrent_expire_days = 14\nabort_incomplete_upload_days = 2";

/// The rules LIFECYCLE asks for, as the aws CLI prints them.
fn expected_rules() -> Vec<Value> {
    vec![
        json!({
            "ID": "drctl-abort-incomplete-uploads@drctl",
            "Filter": {"Prefix": "drctl/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2}
        }),
        json!({
            "ID": "drctl-archive-data@drctl",
            "Filter": {"And": {"Prefix": "drctl/backups/", "Tags": [{"Key": "drctl-kind", "Value": "data"}]}},
            "Status": "Enabled",
            "Transitions": [{"Days": 45, "StorageClass": "GLACIER"}]
        }),
        json!({
            "ID": "drctl-expire-noncurrent@drctl",
            "Filter": {"Prefix": "drctl/"},
            "Status": "Enabled",
            "NoncurrentVersionExpiration": {"NoncurrentDays": 14},
            "Expiration": {"ExpiredObjectDeleteMarker": true}
        }),
    ]
}

#[test]
fn apply_sets_what_drctl_toml_asks_and_applying_twice_changes_nothing() {
    let bucket = unique_bucket_name("bucket-apply");
    let ws = workspace(&bucket, false, LIFECYCLE);

    // A dry run prints the plan and changes nothing.
    let plan = ws.ok(&["repo", "apply", "--dry-run"]);
    assert!(plan.contains("CHANGE versioning"), "{plan}");
    assert!(
        plan.contains(
            "objects under `drctl/backups/` tagged drctl-kind=data: move to GLACIER after 45 days"
        ),
        "{plan}"
    );
    assert!(plan.contains("Dry run: nothing was changed."), "{plan}");
    assert_eq!(setting_writes(&bucket), 0);
    assert_eq!(lifecycle_rules(&bucket), None);

    let out = ws.ok(&["repo", "apply"]);
    assert!(out.contains("Applied 4 changes"), "{out}");
    assert_eq!(versioning(&bucket), "Enabled");
    assert_eq!(lifecycle_rules(&bucket), Some(expected_rules()));

    let writes = setting_writes(&bucket);
    let again = ws.ok(&["repo", "apply"]);
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(
        setting_writes(&bucket),
        writes,
        "a second apply wrote something"
    );

    let status = ws.ok(&["repo", "status"]);
    assert!(status.contains("No drift"), "{status}");
    let v: Value = serde_json::from_str(&ws.ok(&["repo", "status", "--json"])).unwrap();
    assert_eq!(v["drift"], false);
    assert_eq!(v["settings"].as_array().unwrap().len(), 5, "{v}");
    let v: Value = serde_json::from_str(&ws.ok(&["repo", "apply", "--json"])).unwrap();
    assert_eq!(v["applied"], false);
    assert_eq!(v["changes"], json!([]));
}

#[test]
fn status_names_drift_made_behind_drctls_back_and_apply_keeps_others_rules() {
    let bucket = unique_bucket_name("bucket-drift");
    let ws = workspace(&bucket, true, LIFECYCLE);
    ws.ok(&["repo", "apply"]);

    // Someone shortens the grace period and adds a rule of their own.
    let mut rules = expected_rules();
    rules[2]["NoncurrentVersionExpiration"]["NoncurrentDays"] = json!(99);
    let foreign = json!({
        "ID": "logs-expiry",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 7}
    });
    rules.push(foreign.clone());
    let config = json!({ "Rules": rules }).to_string();
    aws_json(&[
        "s3api",
        "put-bucket-lifecycle-configuration",
        "--bucket",
        &bucket,
        "--lifecycle-configuration",
        &config,
    ]);

    let out = ws.run(&["repo", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("DRIFT  lifecycle rule drctl-expire-noncurrent@drctl"),
        "{stdout}"
    );
    assert!(stdout.contains("99 days"), "{stdout}");
    assert!(
        stdout.contains("ok     lifecycle rule drctl-archive-data@drctl"),
        "{stdout}"
    );
    assert!(
        stdout.contains("logs-expiry: objects under `logs/`: expire current versions after 7 days"),
        "{stdout}"
    );
    assert!(
        stderr_of(&out).contains("differ from drctl.toml: lifecycle rule drctl-expire-noncurrent@drctl; `drctl repo apply` sets them"),
        "{}",
        stderr_of(&out)
    );
    let v: Value = serde_json::from_slice(&ws.run(&["repo", "status", "--json"]).stdout).unwrap();
    assert_eq!(v["drift"], true);

    ws.ok(&["repo", "apply"]);
    let mut want = expected_rules();
    want.push(foreign);
    assert_eq!(
        lifecycle_rules(&bucket),
        Some(want),
        "the foreign rule is kept as it was"
    );
    ws.ok(&["repo", "status"]);

    // Versioning suspended behind drctl's back is drift too.
    aws_json(&[
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        &bucket,
        "--versioning-configuration",
        "Status=Suspended",
    ]);
    let err = ws.fails(&["repo", "status"], 1);
    assert!(err.contains("differ from drctl.toml: versioning;"), "{err}");
    ws.ok(&["repo", "apply"]);
    assert_eq!(versioning(&bucket), "Enabled");
}

#[test]
fn object_lock_default_retention_on_an_object_lock_bucket() {
    let bucket = unique_bucket_name("bucket-lock");
    block_on(server().create_bucket_object_lock(&bucket));
    let ws = with_lifecycle(
        Workspace::new(Backend::S3 {
            endpoint: server().endpoint(),
            bucket: bucket.clone(),
        }),
        "object_lock_mode = \"GOVERNANCE\"\nobject_lock_days = 3",
    );
    // moto refuses PutObjectLockConfiguration on a bucket that holds any
    // object (AWS does not): take `drctl init`'s repo.json out again.
    // `repo apply` does not need an initialised repository.
    let versions = block_on(server().list_versions(&bucket, ""));
    for v in &versions {
        aws_json(&[
            "s3api",
            "delete-object",
            "--bucket",
            &bucket,
            "--key",
            &v.key,
            "--version-id",
            &v.version_id,
        ]);
    }
    let plan = ws.ok(&["repo", "apply"]);
    assert!(
        plan.contains("GOVERNANCE retention of 3 days by default"),
        "{plan}"
    );
    let lock = aws_json(&[
        "s3api",
        "get-object-lock-configuration",
        "--bucket",
        &bucket,
    ]);
    let retention = &lock["ObjectLockConfiguration"]["Rule"]["DefaultRetention"];
    assert_eq!(retention["Mode"], "GOVERNANCE");
    assert_eq!(retention["Days"], 3);
    let writes = setting_writes(&bucket);
    assert!(ws.ok(&["repo", "apply"]).contains("nothing to change"));
    assert_eq!(setting_writes(&bucket), writes);
    ws.ok(&["repo", "status"]);

    // Writes under a default retention need a checksum header (moto checks
    // it as S3 does): a backup, its lease and its manifest still go in.
    ws.ok(&["init"]);
    let _src = files_policy(&ws, false);
    let id = ws.backup("etc");
    let data = backup_keys(&bucket)
        .into_iter()
        .find(|k| k.contains(&id) && k.contains("/data."))
        .unwrap();
    let head = aws_json(&["s3api", "head-object", "--bucket", &bucket, "--key", &data]);
    assert_eq!(head["ObjectLockMode"], "GOVERNANCE", "{head}");
}

#[test]
fn compliance_retention_needs_confirmation() {
    let bucket = unique_bucket_name("bucket-compliance");
    block_on(server().create_bucket_object_lock(&bucket));
    let ws = with_lifecycle(
        Workspace::new(Backend::S3 {
            endpoint: server().endpoint(),
            bucket: bucket.clone(),
        }),
        "object_lock_mode = \"COMPLIANCE\"\nobject_lock_days = 1",
    );
    // No terminal and no --yes: refused before any write.
    let err = ws.fails(&["repo", "apply"], 3);
    assert!(err.contains("COMPLIANCE") && err.contains("--yes"), "{err}");
    assert_eq!(setting_writes(&bucket), 0);
    assert_eq!(lifecycle_rules(&bucket), None);
    // The dry run needs no confirmation.
    ws.ok(&["repo", "apply", "--dry-run"]);
    assert_eq!(setting_writes(&bucket), 0);
}

#[test]
fn object_lock_on_a_bucket_without_it_is_refused_and_changes_nothing() {
    let bucket = unique_bucket_name("bucket-nolock");
    let ws = workspace(
        &bucket,
        false,
        "object_lock_mode = \"COMPLIANCE\"\nobject_lock_days = 30",
    );
    let err = ws.fails(&["repo", "apply"], 3);
    assert!(
        err.contains("does not have Object Lock enabled")
            && err.contains("create the bucket with Object Lock"),
        "{err}"
    );
    assert_eq!(setting_writes(&bucket), 0);
    assert_eq!(lifecycle_rules(&bucket), None);
    assert_eq!(versioning(&bucket), Value::Null);
    let err = ws.fails(&["repo", "status"], 1);
    assert!(err.contains("object lock"), "{err}");
}

#[test]
fn a_local_repository_has_no_bucket_settings() {
    let ws = with_lifecycle(Workspace::local(), LIFECYCLE);
    for args in [&["repo", "apply"][..], &["repo", "status"]] {
        let out = ws.ok(args);
        assert!(out.contains("apply to S3 repositories only"), "{out}");
    }
    let v: Value = serde_json::from_str(&ws.ok(&["repo", "status", "--json"])).unwrap();
    assert_eq!(v["applicable"], false);
}

#[test]
fn lifecycle_settings_that_cannot_work_are_caught_by_check() {
    let ws = Workspace::local();
    for (lifecycle, message) in [
        (
            "archive_class = \"GLACIER\"",
            "`archive_class` needs `archive_after_days`",
        ),
        (
            "object_lock_mode = \"GOVERNANCE\"",
            "`object_lock_mode` needs `object_lock_days`",
        ),
        (
            "archive_after_days = 7\narchive_class = \"STANDARD_IA\"",
            "only after 30 days or more",
        ),
        ("noncurrent_expire_days = 0", "`noncurrent_expire_days` = 0"),
        (
            "restore_tier = \"fast\"",
            "expected bulk, standard or expedited",
        ),
    ] {
        let path = ws.path().join("drctl.toml");
        let original = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{original}\n[lifecycle]\n{lifecycle}\n")).unwrap();
        let err = ws.fails(&["check"], 2);
        assert!(err.contains(message), "{lifecycle}: {err}");
        std::fs::write(&path, original).unwrap();
    }
    // The tier's line is named.
    let path = ws.path().join("drctl.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let line = original.lines().count() + 3;
    std::fs::write(
        &path,
        format!("{original}\n[lifecycle]\nrestore_tier = \"fast\"\n"),
    )
    .unwrap();
    let err = ws.fails(&["check"], 2);
    assert!(err.contains(&format!("drctl.toml:{line}:")), "{err}");
}

/// A files policy `etc` protecting a small directory tree, plus a few MiB
/// of random bytes so that the data object goes up in several parts.
fn files_policy(ws: &Workspace, big: bool) -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("app.conf"), "listen = 8080\n").unwrap();
    std::fs::create_dir(src.path().join("conf.d")).unwrap();
    std::fs::write(src.path().join("conf.d/extra.conf"), "debug = false\n").unwrap();
    if big {
        let mut noise = vec![0u8; 7 * 1024 * 1024];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(src.path().join("noise.bin"), noise).unwrap();
    }
    ws.files_policy("etc", &[src.path()]);
    src
}

fn backup_keys(bucket: &str) -> Vec<String> {
    block_on(server().list_keys(bucket, &format!("{PREFIX}/backups/")))
}

fn tags(bucket: &str, key: &str) -> Vec<Value> {
    aws_json(&[
        "s3api",
        "get-object-tagging",
        "--bucket",
        bucket,
        "--key",
        key,
    ])["TagSet"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn data_objects_carry_the_archive_tag_and_manifests_do_not() {
    let bucket = unique_bucket_name("bucket-tags");
    let ws = workspace(&bucket, true, "");
    let _src = files_policy(&ws, true);
    ws.backup("etc");
    let keys = backup_keys(&bucket);
    assert_eq!(keys.len(), 3, "{keys:?}");
    let data_tag = json!([{"Key": "drctl-kind", "Value": "data"}]);
    for key in &keys {
        let tagset = Value::Array(tags(&bucket, key));
        if key.ends_with("manifest.json") {
            assert_eq!(tagset, json!([]), "{key}");
        } else {
            assert_eq!(tagset, data_tag, "{key}");
        }
    }
    let data = keys.iter().find(|k| k.contains("/data.")).unwrap();
    let head = aws_json(&["s3api", "head-object", "--bucket", &bucket, "--key", data]);
    assert!(
        head["ContentLength"].as_u64().unwrap() > 6 * 1024 * 1024,
        "the data object went up in several parts: {head}"
    );
    assert_eq!(
        tags(&bucket, &format!("{PREFIX}/repo.json")),
        Vec::<Value>::new()
    );
}

/// Moves the data objects of backup `id` to `class`, as a lifecycle rule
/// would; returns their keys.
fn archive(bucket: &str, id: &str, class: &str) -> Vec<String> {
    let keys: Vec<String> = backup_keys(bucket)
        .into_iter()
        .filter(|k| k.contains(id) && !k.ends_with("manifest.json"))
        .collect();
    for key in &keys {
        aws_json(&[
            "s3api",
            "copy-object",
            "--bucket",
            bucket,
            "--key",
            key,
            "--copy-source",
            &format!("{bucket}/{key}"),
            "--storage-class",
            class,
        ]);
        let head = aws_json(&["s3api", "head-object", "--bucket", bucket, "--key", key]);
        assert_eq!(head["StorageClass"], class, "{key}");
        // moto refuses GetObjectTagging on an archived object; HEAD's
        // TagCount says the tag was copied with it.
        assert_eq!(head["TagCount"], 1, "{key}: {head}");
    }
    keys
}

fn restore_header(bucket: &str, key: &str) -> Value {
    aws_json(&["s3api", "head-object", "--bucket", bucket, "--key", key])["Restore"].clone()
}

/// The files of `src` came back under `restored` (at their full path, as
/// a files restore puts them).
fn same_tree(src: &Path, restored: &Path) {
    let under = restored.join(src.strip_prefix("/").unwrap());
    for rel in ["app.conf", "conf.d/extra.conf"] {
        assert_eq!(
            std::fs::read(src.join(rel)).unwrap(),
            std::fs::read(under.join(rel)).unwrap(),
            "{rel}"
        );
    }
}

#[test]
fn an_archived_backup_is_retrieved_then_restored_and_verified() {
    let bucket = unique_bucket_name("bucket-glacier");
    let mut ws = workspace(&bucket, false, "");
    let src = files_policy(&ws, false);
    ws.write(
        "policies/etc.toml",
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n[drill]\nscratch_dir = \"scratch\"\n",
            src.path().display()
        ),
    );
    ws.set_env("DRCTL_ARCHIVE_POLL_SECONDS", "0.2");
    let id = ws.backup("etc");
    let archived = archive(&bucket, &id, "GLACIER");
    assert_eq!(archived.len(), 2, "data and fingerprint");

    // Reading what is archived says so and asks for nothing.
    ws.ok(&["verify"]);
    let err = ws.fails(&["verify", "--read-data"], 5);
    assert!(
        err.contains("archive storage class") && err.contains("--wait"),
        "{err}"
    );
    let drill = ws.run(&["drill", "etc", "--json"]);
    assert_eq!(drill.status.code(), Some(1), "{}", stderr_of(&drill));
    let record: Value = serde_json::from_slice(&drill.stdout).unwrap_or(Value::Null);
    let text = format!("{record}{}", stderr_of(&drill));
    assert!(
        text.contains("is archived and cannot be read yet")
            && text.contains("(GLACIER, not retrieved)"),
        "{text}"
    );
    for key in &archived {
        assert_eq!(
            restore_header(&bucket, key),
            Value::Null,
            "nothing was requested"
        );
    }

    // Without --wait: the retrieval is requested, nothing is restored, exit 5.
    let into = ws.path().join("restored");
    let into_arg = into.to_str().unwrap();
    let err = ws.fails(
        &[
            "restore", "etc", "--to", "latest", "--into", into_arg, "--verify",
        ],
        5,
    );
    assert!(
        err.contains(&format!(
            "backup {id} of `etc` is archived; retrieval from S3 (RestoreObject, standard tier"
        )) && err.contains("typically 3–5 hours for GLACIER")
            && err.contains("add --wait"),
        "{err}"
    );
    for key in &archived {
        assert!(
            err.contains(&format!(
                "`s3://{bucket}/{key}` (GLACIER): retrieval requested now"
            )),
            "{key}: {err}"
        );
        assert!(
            restore_header(&bucket, key).is_string(),
            "{key}: RestoreObject was sent"
        );
    }
    assert!(!into.exists(), "nothing was restored");

    // The retrieval is done (moto finishes at once): --wait restores.
    let out = ws.ok(&[
        "restore", "etc", "--to", "latest", "--into", into_arg, "--verify", "--wait",
    ]);
    assert!(out.contains("Restored etc backup"), "{out}");
    same_tree(src.path(), &into);

    // A newer backup, archived, restored in one go with --wait.
    let second = ws.backup("etc");
    let fresh = archive(&bucket, &second, "GLACIER");
    let into2 = ws.path().join("restored2");
    let out = ws.run(&[
        "restore",
        "etc",
        "--backup",
        &second,
        "--into",
        into2.to_str().unwrap(),
        "--verify",
        "--wait",
        "--archive-tier",
        "bulk",
    ]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("bulk tier") && err.contains("typically 5–12 hours for GLACIER"),
        "{err}"
    );
    assert!(err.contains("Retrieved after"), "{err}");
    assert_eq!(fresh.len(), 2);
    same_tree(src.path(), &into2);
}

#[test]
fn expedited_is_refused_for_deep_archive_and_nothing_is_requested() {
    let bucket = unique_bucket_name("bucket-deep");
    let ws = workspace(&bucket, false, "restore_tier = \"bulk\"");
    let _src = files_policy(&ws, false);
    let id = ws.backup("etc");
    let archived = archive(&bucket, &id, "DEEP_ARCHIVE");
    let into = ws.path().join("out");
    let into_arg = into.to_str().unwrap();
    let err = ws.fails(
        &[
            "restore",
            "etc",
            "--to",
            "latest",
            "--into",
            into_arg,
            "--archive-tier",
            "expedited",
        ],
        2,
    );
    assert!(
        err.contains("is in DEEP_ARCHIVE: the expedited tier is not available for DEEP_ARCHIVE"),
        "{err}"
    );
    for key in &archived {
        assert_eq!(restore_header(&bucket, key), Value::Null, "{key}");
    }

    // An unknown tier is a usage error from the argument parser.
    let err = ws.fails(
        &[
            "restore",
            "etc",
            "--to",
            "latest",
            "--into",
            into_arg,
            "--archive-tier",
            "fast",
        ],
        2,
    );
    assert!(
        err.contains("invalid value 'fast'") && err.contains("bulk"),
        "{err}"
    );

    // The tier from drctl.toml, with DEEP_ARCHIVE's times.
    let err = ws.fails(&["restore", "etc", "--to", "latest", "--into", into_arg], 5);
    assert!(
        err.contains("bulk tier") && err.contains("typically within 48 hours for DEEP_ARCHIVE"),
        "{err}"
    );
    assert!(!into.exists());
}

// ---------------------------------------------------------------------------
// A retrieval in progress. moto finishes a RestoreObject at once, so a small
// proxy in front of it answers HEADs of archived objects with
// `x-amz-restore: ongoing-request="true"` a set number of times, and counts
// the RestoreObject requests (POST ?restore) that pass through.
// ---------------------------------------------------------------------------

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;
type UpstreamClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    hyper::body::Incoming,
>;

#[derive(Default)]
struct RetrievalState {
    /// HEADs of archived objects still to be answered "in progress".
    in_progress_heads: std::sync::atomic::AtomicU64,
    restore_requests: std::sync::atomic::AtomicU64,
}

struct RetrievalProxy {
    port: u16,
    state: std::sync::Arc<RetrievalState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RetrievalProxy {
    fn start(upstream: String) -> RetrievalProxy {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let state = std::sync::Arc::new(RetrievalState::default());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let client: UpstreamClient = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let (state, client, upstream) = (shared.clone(), client.clone(), upstream.clone());
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |request| {
                                    forward(request, state.clone(), client.clone(), upstream.clone())
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        RetrievalProxy {
            port,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn answer_in_progress(&self, heads: u64) {
        self.state
            .in_progress_heads
            .store(heads, std::sync::atomic::Ordering::SeqCst);
    }

    fn restore_requests(&self) -> u64 {
        self.state
            .restore_requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RetrievalProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn forward(
    request: hyper::Request<hyper::body::Incoming>,
    state: std::sync::Arc<RetrievalState>,
    client: UpstreamClient,
    upstream: String,
) -> Result<hyper::Response<ProxyBody>, BoxError> {
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering::SeqCst;

    let is_head = request.method() == hyper::Method::HEAD;
    if request.method() == hyper::Method::POST
        && request.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|p| p == "restore" || p.starts_with("restore="))
        })
    {
        state.restore_requests.fetch_add(1, SeqCst);
    }
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = format!("{upstream}{path_and_query}").parse()?;
    parts.version = hyper::Version::HTTP_11;
    let mut response = client
        .request(hyper::Request::from_parts(parts, body))
        .await?;
    let archived = response
        .headers()
        .get("x-amz-storage-class")
        .is_some_and(|c| c == "GLACIER" || c == "DEEP_ARCHIVE");
    if is_head
        && archived
        && state
            .in_progress_heads
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        response.headers_mut().insert(
            "x-amz-restore",
            hyper::header::HeaderValue::from_static("ongoing-request=\"true\""),
        );
    }
    Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
}

#[test]
fn a_retrieval_in_progress_is_waited_for_and_never_asked_for_twice() {
    let bucket = unique_bucket_name("bucket-ongoing");
    block_on(server().create_bucket(&bucket, false));
    let proxy = RetrievalProxy::start(server().endpoint());
    let mut ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket: bucket.clone(),
    });
    ws.set_env("DRCTL_ARCHIVE_POLL_SECONDS", "0.2");
    let src = files_policy(&ws, false);
    let id = ws.backup("etc");
    let archived = archive(&bucket, &id, "GLACIER");
    let data = archived.iter().find(|k| k.contains("/data.")).unwrap();

    // Someone asked for the retrieval before (straight to S3); it is not
    // done yet as far as HEAD says.
    aws_json(&[
        "s3api",
        "restore-object",
        "--bucket",
        &bucket,
        "--key",
        data,
        "--restore-request",
        "{\"Days\":1,\"GlacierJobParameters\":{\"Tier\":\"Standard\"}}",
    ]);
    proxy.answer_in_progress(1000);
    let into = ws.path().join("restored");
    let into_arg = into.to_str().unwrap();
    let err = ws.fails(&["restore", "etc", "--to", "latest", "--into", into_arg], 5);
    assert!(
        err.contains(&format!(
            "`s3://{bucket}/{data}` (GLACIER): asked for earlier, still in progress (not asked again)"
        )),
        "{err}"
    );
    assert_eq!(proxy.restore_requests(), 0, "no second RestoreObject");
    assert!(!into.exists());

    // Two more answers "in progress", then done: --wait waits, then restores.
    proxy.answer_in_progress(2);
    let out = ws.run(&[
        "restore", "etc", "--to", "latest", "--into", into_arg, "--wait",
    ]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Waiting for 1 of 1 object to be retrieved from GLACIER")
            && err.contains("Retrieved after"),
        "{err}"
    );
    assert_eq!(proxy.restore_requests(), 0, "no second RestoreObject");
    same_tree(src.path(), &into);
}

#[test]
fn a_missing_bucket_is_named_and_nothing_is_created() {
    let bucket = unique_bucket_name("bucket-gone");
    let ws = workspace(&bucket, false, "");
    let path = ws.path().join("drctl.toml");
    let missing = unique_bucket_name("bucket-missing");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&bucket, &missing);
    std::fs::write(&path, text).unwrap();
    for args in [&["repo", "status"][..], &["repo", "apply"]] {
        let err = ws.fails(args, 1);
        assert!(
            err.contains(&format!("bucket `{missing}` does not exist")),
            "{args:?}: {err}"
        );
    }
    let buckets = aws_json(&["s3api", "list-buckets"]);
    assert!(!buckets.to_string().contains(&missing), "{buckets}");
}

#[test]
fn two_repositories_in_one_bucket_keep_each_others_rules() {
    let bucket = unique_bucket_name("bucket-shared");
    let prod = workspace(&bucket, true, LIFECYCLE);
    let staging = Workspace::new(Backend::S3 {
        endpoint: server().endpoint(),
        bucket: bucket.clone(),
    });
    let path = staging.path().join("drctl.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("s3://{bucket}/drctl"),
        &format!("s3://{bucket}/staging"),
    );
    std::fs::write(&path, text).unwrap();
    let staging = with_lifecycle(staging, "noncurrent_expire_days = 7");
    staging.ok(&["init"]);

    prod.ok(&["repo", "apply"]);
    staging.ok(&["repo", "apply"]);
    let rules = lifecycle_rules(&bucket).expect("lifecycle rules");
    let mut ids: Vec<&str> = rules.iter().map(|r| r["ID"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "drctl-abort-incomplete-uploads@drctl",
            "drctl-abort-incomplete-uploads@staging",
            "drctl-archive-data@drctl",
            "drctl-expire-noncurrent@drctl",
            "drctl-expire-noncurrent@staging",
        ]
    );
    // Each sees no drift, and the other's rules as someone else's.
    let out = prod.ok(&["repo", "status"]);
    assert!(out.contains("drctl-expire-noncurrent@staging"), "{out}");
    staging.ok(&["repo", "status"]);
    let writes = setting_writes(&bucket);
    assert!(prod.ok(&["repo", "apply"]).contains("nothing to change"));
    assert!(staging.ok(&["repo", "apply"]).contains("nothing to change"));
    assert_eq!(setting_writes(&bucket), writes);
}
