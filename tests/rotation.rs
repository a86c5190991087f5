//! `drctl key rotate`: every object re-encrypted to a new key set by a new
//! age header over the unchanged payload. After `--remove old`, the old
//! identity reads no current object drctl knows of and the new one reads
//! all; on S3 the payload is copied inside the bucket; an interrupted
//! rotation leaves every backup readable by one key set, and a second run
//! finishes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::World;
use common::workspace::{Backend, Workspace};
use common::{FaultProxy, Faults, S3Op, S3Server, block_on, unique_bucket_name};
use serde_json::Value;

const EXIT_BAD_INPUT: i32 = 2;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn set_config(ws: &Workspace, from: &str, to: &str) {
    let config = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    assert!(config.contains(from), "{from} not in drctl.toml:\n{config}");
    ws.write("drctl.toml", &config.replace(from, to));
}

/// A second identity in the workspace and a file holding both, as an
/// operator keeps them until a rotation is done. Returns the new recipient.
fn new_identity(ws: &Workspace) -> String {
    let new = ws
        .ok(&["key", "generate", "--out", "new.age"])
        .trim()
        .to_string();
    let both = format!(
        "{}{}",
        std::fs::read_to_string(ws.path().join("identity.age")).unwrap(),
        std::fs::read_to_string(ws.path().join("new.age")).unwrap()
    );
    std::fs::write(ws.path().join("both.age"), both).unwrap();
    std::fs::set_permissions(
        ws.path().join("both.age"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    common::chown_to_pg_owner(&ws.path().join("new.age"));
    common::chown_to_pg_owner(&ws.path().join("both.age"));
    new
}

/// Whether the age command-line tool decrypts `bytes` with `identity`.
fn age_reads(bytes: &[u8], identity: &Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("object");
    std::fs::write(&file, bytes).unwrap();
    Command::new("age")
        .arg("--decrypt")
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg("/dev/null")
        .arg(&file)
        .output()
        .expect("run age")
        .status
        .success()
}

fn version_bytes(s3: &S3Server, bucket: &str, key: &str, version: &str) -> Vec<u8> {
    let out = block_on(
        s3.client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .version_id(version)
            .send(),
    )
    .unwrap_or_else(|e| panic!("get {key} ({version}): {e:?}"));
    block_on(out.body.collect()).unwrap().into_bytes().to_vec()
}

fn files_policy(ws: &Workspace, size: usize, seed: u64) -> PathBuf {
    let src = ws.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("blob.bin"), common::noise(size, seed)).unwrap();
    ws.write(
        "policies/etc.toml",
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n",
            src.display()
        ),
    );
    src
}

fn restored_blob(ws: &Workspace, src: &Path, id: &str) -> Vec<u8> {
    let into = tempfile::tempdir().unwrap();
    let out = into.path().join("out");
    ws.ok(&[
        "restore",
        "etc",
        "--backup",
        id,
        "--into",
        out.to_str().unwrap(),
    ]);
    std::fs::read(out.join(src.strip_prefix("/").unwrap()).join("blob.bin")).unwrap()
}

#[test]
fn rotation_on_s3_retires_the_old_key_copies_the_payload_in_the_bucket_and_resumes() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("rotate");
    block_on(s3.create_bucket(&bucket, true));
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let mut ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket: bucket.clone(),
    });
    let public = ws.ok(&["key", "generate", "--signing", "--out", "signing.key"]);
    let config = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    ws.write(
        "drctl.toml",
        &format!(
            "{config}\n[signing]\nkey_file = \"signing.key\"\ntrusted = [\"{}\"]\n",
            public.trim()
        ),
    );
    let old = ws.recipient.clone();
    // Large enough that the data object is spliced: a first part through
    // this host, the rest copied inside the bucket.
    let src = files_policy(&ws, 24 * 1024 * 1024, 1);
    let first = ws.backup("etc");
    std::fs::write(src.join("blob.bin"), common::noise(300_000, 2)).unwrap();
    let second = ws.backup("etc");
    let new = new_identity(&ws);
    let objects = || block_on(s3.list_keys(&bucket, "drctl/backups/"));
    let before = objects();

    // Bad input first: nothing changes.
    let err = ws.fails(
        &["key", "rotate", "--remove", &old, "--add", &new, "--yes"],
        EXIT_BAD_INPUT,
    );
    assert!(
        err.contains("still lists")
            && err.contains("Remove it there first")
            && err.contains("nothing was changed"),
        "{err}"
    );
    let err = ws.fails(
        &["key", "rotate", "--remove", "age1nope", "--yes"],
        EXIT_BAD_INPUT,
    );
    assert!(
        err.contains("age1nope") && err.contains("age X25519 public key"),
        "{err}"
    );
    let err = ws.fails(&["key", "rotate", "--yes"], EXIT_BAD_INPUT);
    assert!(err.contains("--add RECIPIENT, --remove RECIPIENT"), "{err}");
    assert_eq!(objects(), before);

    set_config(
        &ws,
        &format!("recipients = [\"{old}\"]"),
        &format!("recipients = [\"{new}\"]"),
    );
    set_config(
        &ws,
        "identity_file = \"identity.age\"",
        "identity_file = \"both.age\"",
    );

    // The plan: both backups, nothing written.
    let plan = json(&ws.ok(&[
        "key",
        "rotate",
        "--remove",
        &old,
        "--add",
        &new,
        "--dry-run",
        "--json",
    ]));
    let r = &plan["reports"][0];
    assert_eq!(r["rotated"].as_array().unwrap().len(), 2, "{plan:#}");
    assert_eq!(objects(), before);

    // Interrupted: a small object's PutObject hangs, and the process is
    // killed. Every backup is still listed and readable with the old key.
    ws.set_env("DRCTL_LEASE_TTL_SECONDS", "3");
    proxy.hold(S3Op::PutObject);
    let child = ws
        .cmd(&["key", "rotate", "--remove", &old, "--add", &new, "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for(
        "the rotation to hang",
        std::time::Duration::from_secs(60),
        || (proxy.held() > 0).then_some(()),
    );
    // SAFETY: our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = common::collect_within(child, "killed rotation", std::time::Duration::from_secs(30));
    proxy.release();
    let listed: Vec<String> = ws
        .backups("etc")
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, vec![second.clone(), first.clone()]);
    set_config(
        &ws,
        "identity_file = \"both.age\"",
        "identity_file = \"identity.age\"",
    );
    assert_eq!(restored_blob(&ws, &src, &second), common::noise(300_000, 2));
    set_config(
        &ws,
        "identity_file = \"identity.age\"",
        "identity_file = \"both.age\"",
    );
    std::thread::sleep(std::time::Duration::from_secs(4));

    // Resumed: finished, and far fewer bytes moved than the objects hold.
    let done = json(&ws.ok(&[
        "key", "rotate", "--remove", &old, "--add", &new, "--yes", "--json",
    ]));
    let r = &done["reports"][0];
    let of_objects = r["bytes_of_objects"].as_u64().unwrap();
    let down = r["bytes_downloaded"].as_u64().unwrap();
    let up = r["bytes_uploaded"].as_u64().unwrap();
    let in_store = r["bytes_copied_in_store"].as_u64().unwrap();
    eprintln!(
        "rotation moved {down} bytes down, {up} up, {in_store} copied in the bucket, for {of_objects} bytes of objects"
    );
    assert!(in_store > 10 * 1024 * 1024, "{done:#}");
    assert!(down < of_objects / 2 && up < of_objects / 2, "{done:#}");

    // The old identity reads no current object; the new one reads all.
    let keys = objects();
    let sealed: Vec<&String> = keys.iter().filter(|k| k.ends_with(".zst.age")).collect();
    assert_eq!(
        sealed.len(),
        4,
        "data and fingerprint of two backups: {keys:?}"
    );
    for k in &sealed {
        assert!(k.contains(".k2."), "{k}");
        let bytes = block_on(s3.get_object(&bucket, k));
        assert!(
            !age_reads(&bytes, &ws.path().join("identity.age")),
            "old key reads {k}"
        );
        assert!(
            age_reads(&bytes, &ws.path().join("new.age")),
            "new key cannot read {k}"
        );
    }
    // Without --purge-versions the bucket still keeps the old versions,
    // which the old key reads until they expire (operations.md says so).
    let kept: Vec<_> = block_on(s3.list_versions(&bucket, "drctl/backups/"))
        .into_iter()
        .filter(|v| !v.is_delete_marker && v.key.ends_with("/data.tar.zst.age"))
        .collect();
    assert_eq!(kept.len(), 2, "the old data objects' versions are kept");
    let bytes = version_bytes(&s3, &bucket, &kept[0].key, &kept[0].version_id);
    assert!(age_reads(&bytes, &ws.path().join("identity.age")));
    for id in [&first, &second] {
        let m: Value = serde_json::from_slice(&block_on(
            s3.get_object(&bucket, &format!("drctl/backups/etc/{id}/manifest.json")),
        ))
        .unwrap();
        assert_eq!(m["recipients"], serde_json::json!([new]), "{m:#}");
        assert_eq!(m["format"], 2);
        assert!(
            m["data"]["sha256"].is_null() && m["data"]["payload_sha256"].is_string(),
            "{m:#}"
        );
    }
    let marker: Value =
        serde_json::from_slice(&block_on(s3.get_object(&bucket, "drctl/repo.json"))).unwrap();
    assert_eq!(marker["format"], 2);
    assert_eq!(marker["recipients"], serde_json::json!([new]));

    // With the new identity alone: listed (signed), verified, restored.
    set_config(
        &ws,
        "identity_file = \"both.age\"",
        "identity_file = \"new.age\"",
    );
    ws.ok(&["verify", "etc", "--read-data"]);
    assert_eq!(
        restored_blob(&ws, &src, &first),
        common::noise(24 * 1024 * 1024, 1)
    );
    // With the old identity alone: named as the wrong key.
    set_config(
        &ws,
        "identity_file = \"new.age\"",
        "identity_file = \"identity.age\"",
    );
    let err = ws.fails(&["verify", "etc", "--read-data"], EXIT_BAD_INPUT);
    assert!(err.contains("identity"), "{err}");
    set_config(
        &ws,
        "identity_file = \"identity.age\"",
        "identity_file = \"new.age\"",
    );

    // Nothing left to do.
    let again = ws.ok(&["key", "rotate", "--remove", &old, "--add", &new, "--yes"]);
    assert!(again.contains("Nothing to rotate"), "{again}");
}

#[test]
fn rotation_of_a_local_cluster_repository_covers_its_wal_and_recovery_reads_it() {
    rotation_of_a_cluster_repository(false);
}

#[test]
fn rotation_of_a_cluster_repository_on_s3_covers_its_wal_and_recovery_reads_it() {
    rotation_of_a_cluster_repository(true);
}

fn rotation_of_a_cluster_repository(on_s3: bool) {
    let w = World::new(on_s3, "");
    if !on_s3 {
        w.sign();
    }
    w.pg.psql(
        "postgres",
        "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 1000)",
    );
    w.ws.ok(&["backup", "cluster"]);
    w.pg.psql(
        "postgres",
        "INSERT INTO t SELECT generate_series(1001, 2000)",
    );
    let segment = w.switch_and_wait();
    let old = w.ws.recipient.clone();
    let new = new_identity(&w.ws);
    set_config(
        &w.ws,
        &format!("recipients = [\"{old}\"]"),
        &format!("recipients = [\"{new}\"]"),
    );
    set_config(
        &w.ws,
        "identity_file = \"identity.age\"",
        "identity_file = \"both.age\"",
    );
    let mut args = vec![
        "key", "rotate", "--remove", &old, "--add", &new, "--yes", "--json",
    ];
    if on_s3 {
        args.push("--purge-versions");
    }
    let report = json(&w.ws.ok(&args));
    let r = &report["reports"][0];
    assert_eq!(r["rotated"].as_array().unwrap().len(), 1, "{report:#}");
    assert!(r["wal_rotated"].as_u64().unwrap() >= 2, "{report:#}");

    // Every archived WAL object and backup object: the new key only.
    let mut sealed = w.keys("wal/cluster/");
    sealed.extend(
        w.keys("backups/cluster/")
            .into_iter()
            .filter(|k| k.ends_with(".zst.age")),
    );
    assert!(sealed.len() >= 3, "{sealed:?}");
    for k in &sealed {
        let bytes = w.get(k);
        assert!(
            !age_reads(&bytes, &w.ws.path().join("identity.age")),
            "old key reads {k}"
        );
        assert!(
            age_reads(&bytes, &w.ws.path().join("new.age")),
            "new key cannot read {k}"
        );
    }
    assert!(
        w.keys("rotation/").is_empty(),
        "the WAL position is removed when done"
    );
    if let Some((s3, bucket)) = &w.s3 {
        // --purge-versions: no version the bucket keeps is readable by the
        // old key either.
        assert!(r["versions_purged"].as_u64().unwrap() >= 4, "{report:#}");
        let mut real = 0;
        for prefix in ["drctl/wal/", "drctl/backups/"] {
            for v in block_on(s3.list_versions(bucket, prefix)) {
                if v.is_delete_marker || !v.key.ends_with(".zst.age") {
                    continue;
                }
                real += 1;
                let bytes = version_bytes(s3, bucket, &v.key, &v.version_id);
                assert!(
                    !age_reads(&bytes, &w.ws.path().join("identity.age")),
                    "old key reads {} ({})",
                    v.key,
                    v.version_id
                );
            }
        }
        assert_eq!(real, sealed.len(), "one version per object is left");
    }

    // Recovery with the new identity alone replays the rotated WAL.
    set_config(
        &w.ws,
        "identity_file = \"both.age\"",
        "identity_file = \"new.age\"",
    );
    let target = w.ws.path().join("restored");
    let (out, restored) = w.restore(&target, &["--to", "latest"]);
    assert!(
        out.status.success(),
        "restore after rotation ({segment} archived): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "2000");
    drop(restored);
    if on_s3 {
        // The manifest names the version it wrote; see the local case.
        return;
    }

    // A payload changed after the rotation is caught by its digest.
    let data = w
        .keys("backups/cluster/")
        .into_iter()
        .find(|k| k.contains("/data.") && k.ends_with(".k2.zst.age"))
        .expect("the rotated data object");
    let mut bytes = w.get(&data);
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    w.put(&data, bytes);
    let out = w.ws.run(&["verify", "cluster", "--read-data"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&data)
            || String::from_utf8_lossy(&out.stderr).contains(&data)
    );
}

/// What a user can get wrong is refused with a clear message, and the
/// repository is left exactly as it was.
#[test]
fn bad_rotations_are_refused_and_change_nothing() {
    let ws = Workspace::local();
    files_policy(&ws, 50_000, 3);
    let id = ws.backup("etc");
    let old = ws.recipient.clone();
    let new = new_identity(&ws);
    let manifest = ws
        .repo_dir()
        .join(format!("backups/etc/{id}/manifest.json"));
    let before = std::fs::read(&manifest).unwrap();
    set_config(
        &ws,
        &format!("recipients = [\"{old}\"]"),
        &format!("recipients = [\"{new}\"]"),
    );

    let err = ws.fails(
        &["key", "rotate", "--add", &new, "--remove", &new, "--yes"],
        EXIT_BAD_INPUT,
    );
    assert!(err.contains("is both added and removed"), "{err}");

    let err = ws.fails(
        &["key", "rotate", "--remove", &old, "--yes"],
        EXIT_BAD_INPUT,
    );
    assert!(
        err.contains(&format!("backup {id} of `etc` is encrypted to {old} only"))
            && err.contains("add a recipient with --add"),
        "{err}"
    );

    // An identity of neither key: named before anything is written.
    ws.ok(&["key", "generate", "--out", "stranger.age"]);
    set_config(
        &ws,
        "identity_file = \"identity.age\"",
        "identity_file = \"stranger.age\"",
    );
    let err = ws.fails(
        &["key", "rotate", "--add", &new, "--remove", &old, "--yes"],
        EXIT_BAD_INPUT,
    );
    assert!(
        err.contains("the identity file reads none of the recipients")
            && err.contains("data.tar.zst.age"),
        "{err}"
    );
    assert_eq!(std::fs::read(&manifest).unwrap(), before);
    let mut dir: Vec<String> = std::fs::read_dir(manifest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dir.sort();
    assert_eq!(
        dir,
        [
            "data.tar.zst.age",
            "fingerprint.json.zst.age",
            "manifest.json"
        ]
    );

    // Without a terminal and without --yes: the plan, then a refusal.
    set_config(
        &ws,
        "identity_file = \"stranger.age\"",
        "identity_file = \"both.age\"",
    );
    let out = ws.run(&["key", "rotate", "--add", &new, "--remove", &old]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Key rotation plan") && stdout.contains("1 of 1 backup(s) to rotate"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --yes"),
        "{out:?}"
    );
    assert_eq!(std::fs::read(&manifest).unwrap(), before);
}

/// A backup whose data moved to GLACIER cannot be read until retrieved: it
/// is named and left as it was, and the others are rotated.
#[test]
fn archived_backups_are_named_and_left_as_they_are() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("rotarch");
    block_on(s3.create_bucket(&bucket, false));
    let ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: bucket.clone(),
    });
    let src = files_policy(&ws, 50_000, 4);
    let archived = ws.backup("etc");
    std::fs::write(src.join("blob.bin"), common::noise(50_000, 5)).unwrap();
    let fresh = ws.backup("etc");
    let key = format!("drctl/backups/etc/{archived}/data.tar.zst.age");
    block_on(
        s3.client()
            .copy_object()
            .bucket(&bucket)
            .key(&key)
            .copy_source(format!("{bucket}/{key}"))
            .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
            .send(),
    )
    .expect("move the data object to GLACIER");
    let manifest_key = format!("drctl/backups/etc/{archived}/manifest.json");
    let before = block_on(s3.get_object(&bucket, &manifest_key));
    let old = ws.recipient.clone();
    let new = new_identity(&ws);
    set_config(
        &ws,
        &format!("recipients = [\"{old}\"]"),
        &format!("recipients = [\"{new}\"]"),
    );
    set_config(
        &ws,
        "identity_file = \"identity.age\"",
        "identity_file = \"both.age\"",
    );

    let out = ws.ok(&["key", "rotate", "--add", &new, "--remove", &old, "--yes"]);
    assert!(
        out.contains(&format!(
            "NOT rotated, archived (GLACIER or DEEP_ARCHIVE) without a retrieved copy: {archived}"
        )) && out.contains("drctl verify etc --read-data"),
        "{out}"
    );
    assert_eq!(block_on(s3.get_object(&bucket, &manifest_key)), before);
    let r = json(&ws.ok(&[
        "key", "rotate", "--add", &new, "--remove", &old, "--yes", "--json",
    ]));
    assert_eq!(
        r["reports"][0]["archived"],
        serde_json::json!([archived]),
        "{r:#}"
    );
    assert_eq!(
        r["reports"][0]["already"], 1,
        "{fresh} was rotated the first time: {r:#}"
    );
}
