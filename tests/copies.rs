//! Copies to a second repository (`[[copies]]`, `drctl copy`): backups
//! copied as stored bytes into a local directory or another bucket at
//! another endpoint, checked by SHA-256 there, the manifest last; list,
//! restore, drill and verify from the copy when the primary is gone; a
//! copy under faults is complete or absent, never listed half-copied.

mod common;

use std::path::{Path, PathBuf};

use common::workspace::{Backend, Workspace};
use common::{FaultProxy, Faults, S3Op, S3Server, block_on, unique_bucket_name};
use serde_json::Value;

const EXIT_BAD_INPUT: i32 = 2;
const EXIT_REFUSED: i32 = 3;
const EXIT_INTEGRITY: i32 = 4;
const EXIT_UNTRUSTED: i32 = 7;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn append(ws: &Workspace, rel: &str, text: &str) {
    let old = std::fs::read_to_string(ws.path().join(rel)).unwrap();
    ws.write(rel, &format!("{old}{text}"));
}

/// A files policy `etc` over `<ws>/src` holding `blob.bin` of `size` bytes,
/// with a drill that unpacks into `<ws>/scratch`.
fn files_policy(ws: &Workspace, size: usize) -> PathBuf {
    let src = ws.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("blob.bin"), common::noise(size, 7)).unwrap();
    ws.write(
        "policies/etc.toml",
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n[drill]\nscratch_dir = \"scratch\"\n",
            src.display()
        ),
    );
    src
}

fn ids(listing: &Value) -> Vec<String> {
    listing["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("no backups in {listing:#}"))
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

fn list_ids(ws: &Workspace, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["list", "etc", "--json"];
    args.extend_from_slice(extra);
    ids(&json(&ws.ok(&args)))
}

/// Restores the newest backup of `etc` (from `extra`'s repository) into a
/// fresh directory and returns the restored `blob.bin`.
fn restored_blob(ws: &Workspace, src: &Path, extra: &[&str]) -> Vec<u8> {
    let into = tempfile::tempdir().unwrap();
    let mut args = vec!["restore", "etc", "--to", "latest", "--into"];
    let into_arg = into.path().join("out");
    let into_str = into_arg.to_str().unwrap().to_string();
    args.push(&into_str);
    args.extend_from_slice(extra);
    ws.ok(&args);
    let rel = src.strip_prefix("/").unwrap().join("blob.bin");
    std::fs::read(into_arg.join(rel)).expect("restored blob")
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_local_copy_holds_every_backup_and_restores_when_the_primary_is_gone() {
    let ws = Workspace::local();
    let src = files_policy(&ws, 300_000);
    let first = ws.backup("etc");
    std::fs::write(src.join("blob.bin"), common::noise(200_000, 9)).unwrap();
    let second = ws.backup("etc");
    ws.ok(&["drill", "etc"]);
    append(
        &ws,
        "drctl.toml",
        "\n[[copies]]\nname = \"dr\"\nurl = \"file://copy\"\n",
    );
    let copy_dir = ws.path().join("copy");

    // The plan, and nothing written.
    let plan = json(&ws.ok(&["copy", "--dry-run", "--json"]));
    let planned: Vec<&str> = plan["reports"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["action"].as_str().unwrap())
        .collect();
    assert_eq!(planned, ["planned", "planned"], "{plan:#}");
    assert!(!copy_dir.exists(), "a dry run writes nothing");

    let out = ws.run(&["copy"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("copying backup {second}")),
        "progress on stderr: {stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 backup(s) copied"),
        "{out:?}"
    );

    // The copy lists what the primary lists, with the records beside it.
    assert_eq!(
        list_ids(&ws, &["--repo", "dr"]),
        [second.clone(), first.clone()]
    );
    let drills = json(&ws.ok(&["drills", "etc", "--json", "--repo", "dr"]));
    assert_eq!(
        drills["drills"].as_array().map(Vec::len),
        Some(1),
        "{drills:#}"
    );
    assert_eq!(
        std::fs::read(ws.repo_dir().join("repo.json")).unwrap(),
        std::fs::read(copy_dir.join("repo.json")).unwrap(),
        "the copy's marker is the primary's"
    );

    // The report shows the copy beside the primary.
    let report = json(&ws.ok(&["report", "--json"]));
    let copy = &report["policies"][0]["copies"][0];
    assert_eq!(copy["name"], "dr", "{report:#}");
    assert_eq!(copy["newest_backup"], second.as_str(), "{report:#}");
    assert_eq!(copy["lag_seconds"], 0.0, "{report:#}");
    let markdown = ws.ok(&["report", "--format", "md"]);
    assert!(
        markdown.contains("- **Copy:** dr (file://") && markdown.contains("up to date"),
        "{markdown}"
    );

    // A second run copies nothing.
    let again = json(&ws.ok(&["copy", "--json"]));
    assert_eq!(again["reports"][0]["bytes"], 0, "{again:#}");
    assert!(
        again["reports"][0]["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["action"] == "present"),
        "{again:#}"
    );
    assert_eq!(again["reports"][0]["records_copied"], 0, "{again:#}");

    // The primary is gone: list, restore, verify and drill from the copy.
    std::fs::rename(ws.repo_dir(), ws.path().join("lost")).unwrap();
    ws.fails(&["list", "etc"], EXIT_BAD_INPUT);
    assert_eq!(
        restored_blob(&ws, &src, &["--from", "dr"]),
        common::noise(200_000, 9)
    );
    let verified = ws.ok(&["verify", "--repo", "dr"]);
    assert!(verified.contains("2 backups checked"), "{verified}");
    ws.ok(&["verify", "--repo", "dr", "--read-data"]);
    ws.ok(&["drill", "etc", "--from", "dr"]);
    let drills = json(&ws.ok(&["drills", "etc", "--json", "--repo", "dr"]));
    assert_eq!(
        drills["drills"].as_array().map(Vec::len),
        Some(2),
        "{drills:#}"
    );
    ws.ok(&["report", "--verify", "--repo", "dr"]);
}

#[test]
fn a_copy_that_differs_by_one_byte_is_caught_by_verify() {
    let ws = Workspace::local();
    files_policy(&ws, 100_000);
    let id = ws.backup("etc");
    append(
        &ws,
        "drctl.toml",
        "\n[[copies]]\nname = \"dr\"\nurl = \"copy\"\n",
    );
    ws.ok(&["copy", "etc", "--to", "dr"]);
    ws.ok(&["verify", "--repo", "dr"]);

    let data = ws
        .path()
        .join(format!("copy/backups/etc/{id}/data.tar.zst.age"));
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&data, &bytes).unwrap();

    let out = ws.run(&["verify", "--repo", "dr", "--json"]);
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY), "{out:?}");
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let problems = report["backups"][0]["problems"].to_string();
    assert!(
        problems.contains("data.tar.zst.age") && problems.contains("SHA-256"),
        "the object and the digest are named: {report:#}"
    );
    // The primary is untouched and still verifies.
    ws.ok(&["verify", "--read-data"]);
}

/// Turns signing on for a fresh local workspace.
fn sign(ws: &Workspace) {
    let public = ws.ok(&["key", "generate", "--signing", "--out", "signing.key"]);
    append(
        ws,
        "drctl.toml",
        &format!(
            "\n[signing]\nkey_file = \"signing.key\"\ntrusted = [\"{}\"]\n",
            public.trim()
        ),
    );
    std::fs::remove_file(ws.repo_dir().join("repo.json")).unwrap();
    ws.ok(&["init"]);
}

#[test]
fn signed_backups_verify_in_the_copy_and_a_planted_manifest_there_is_ignored() {
    let ws = Workspace::local();
    sign(&ws);
    let src = files_policy(&ws, 50_000);
    let real = ws.backup("etc");
    append(
        &ws,
        "drctl.toml",
        "\n[[copies]]\nname = \"dr\"\nurl = \"file://copy\"\n",
    );
    ws.ok(&["copy"]);
    assert_eq!(
        list_ids(&ws, &["--repo", "dr"]),
        std::slice::from_ref(&real)
    );

    // Someone who can write to the copy plants a newer backup: the real
    // one's objects under a new id, with an unsigned manifest.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let now = chrono::Utc::now();
    let planted = format!("{}-0badf00d", now.format("%Y%m%dT%H%M%SZ"));
    let planted = planted.as_str();
    let copy = ws.path().join("copy/backups/etc");
    std::fs::create_dir_all(copy.join(planted)).unwrap();
    std::fs::copy(
        copy.join(&real).join("data.tar.zst.age"),
        copy.join(planted).join("data.tar.zst.age"),
    )
    .unwrap();
    let mut manifest =
        json(&std::fs::read_to_string(copy.join(&real).join("manifest.json")).unwrap());
    manifest.as_object_mut().unwrap().remove("signature");
    manifest["id"] = planted.into();
    manifest["data"]["key"] = format!("backups/etc/{planted}/data.tar.zst.age").into();
    manifest["point_in_time"] = now.to_rfc3339().into();
    std::fs::write(
        copy.join(planted).join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();

    let out = ws.run(&["list", "etc", "--json", "--repo", "dr"]);
    assert_eq!(out.status.code(), Some(EXIT_UNTRUSTED), "{out:?}");
    let listed = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(ids(&listed), std::slice::from_ref(&real));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(planted),
        "the planted manifest is named: {stderr}"
    );
    // Restore refuses rather than pick around a planted newest backup.
    let into = ws.path().join("out");
    let err = ws.fails(
        &[
            "restore",
            "etc",
            "--to",
            "latest",
            "--into",
            into.to_str().unwrap(),
            "--from",
            "dr",
        ],
        EXIT_UNTRUSTED,
    );
    assert!(err.contains(planted), "{err}");
    assert!(!into.exists());
    // The real backup is still restorable by id.
    assert_eq!(
        restored_blob_by_id(&ws, &src, &real, &["--from", "dr"]),
        common::noise(50_000, 7)
    );
}

fn restored_blob_by_id(ws: &Workspace, src: &Path, id: &str, extra: &[&str]) -> Vec<u8> {
    let into = tempfile::tempdir().unwrap();
    let out = into.path().join("out");
    let mut args = vec![
        "restore",
        "etc",
        "--backup",
        id,
        "--into",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ws.ok(&args);
    std::fs::read(out.join(src.strip_prefix("/").unwrap().join("blob.bin"))).unwrap()
}

#[test]
fn bad_copy_settings_and_destinations_are_refused_with_nothing_changed() {
    let ws = Workspace::local();
    files_policy(&ws, 10_000);
    ws.backup("etc");

    // No [[copies]] at all, then an unknown name.
    let err = ws.fails(&["copy"], EXIT_BAD_INPUT);
    assert!(err.contains("no [[copies]]"), "{err}");
    append(
        &ws,
        "drctl.toml",
        "\n[[copies]]\nname = \"dr\"\nurl = \"file://copy\"\n",
    );
    let err = ws.fails(&["copy", "--to", "dr-typo"], EXIT_BAD_INPUT);
    assert!(
        err.contains("no copy named `dr-typo`") && err.contains("the copies are: dr"),
        "{err}"
    );
    let err = ws.fails(&["list", "--repo", "nowhere"], EXIT_BAD_INPUT);
    assert!(err.contains("no copy named `nowhere`"), "{err}");
    // A copy is read from, never backed up into.
    let err = ws.fails(&["backup", "etc", "--repo", "dr"], EXIT_BAD_INPUT);
    assert!(err.contains("works on the primary repository"), "{err}");
    // Reading a copy never written says what to do.
    let err = ws.fails(&["list", "--repo", "dr"], EXIT_BAD_INPUT);
    assert!(err.contains("drctl copy --to dr"), "{err}");
    assert!(!ws.path().join("copy").exists());

    // A destination that holds another repository.
    let other = Workspace::local();
    std::fs::rename(other.repo_dir(), ws.path().join("copy")).unwrap();
    let before = tree(&ws.path().join("copy"));
    let err = ws.fails(&["copy"], EXIT_REFUSED);
    assert!(
        err.contains("holds another drctl repository") && err.contains("copy `dr`"),
        "{err}"
    );
    assert_eq!(tree(&ws.path().join("copy")), before, "nothing written");

    // A directory with other things in it.
    std::fs::remove_dir_all(ws.path().join("copy")).unwrap();
    ws.write("copy/notes.txt", "not a repository\n");
    let err = ws.fails(&["copy"], EXIT_REFUSED);
    assert!(
        err.contains("not a drctl repository") && err.contains("notes.txt"),
        "{err}"
    );
    assert_eq!(tree(&ws.path().join("copy")), ["notes.txt"]);

    // check: line-numbered errors for duplicate names, the primary itself,
    // a bad url.
    let good = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    for (extra, expected) in [
        (
            "\n[[copies]]\nname = \"dr\"\nurl = \"file://elsewhere\"\n",
            "a second copy named `dr`",
        ),
        (
            "\n[[copies]]\nname = \"self\"\nurl = \"file://repo\"\n",
            "is the primary repository itself",
        ),
        (
            "\n[[copies]]\nname = \"s3\"\nurl = \"s3://bad bucket/x\"\n",
            "contains a space",
        ),
        (
            "\n[[copies]]\nname = \"Bad Name\"\nurl = \"file://x\"\n",
            "copy name `Bad Name`",
        ),
        (
            "\n[[copies]]\nname = \"keys\"\nurl = \"s3://bucket-x/p\"\naccess_key_id_env = \"DR_KEY\"\n",
            "go together",
        ),
    ] {
        ws.write("drctl.toml", &format!("{good}{extra}"));
        let err = ws.fails(&["check"], EXIT_BAD_INPUT);
        assert!(
            err.contains(expected) && err.contains("drctl.toml:"),
            "{extra}: {err}"
        );
    }
    ws.write(
        "drctl.toml",
        &format!(
            "{good}\n[[copies]]\nname = \"eu\"\nurl = \"s3://dr-bucket/drctl\"\nendpoint = \"http://127.0.0.1:1\"\nafter_backup = true\n[copies.retention]\nkeep_daily = 90\n"
        ),
    );
    let checked = json(&ws.ok(&["check", "--offline", "--json"]));
    assert_eq!(checked["copies"][1]["name"], "eu", "{checked:#}");
    assert_eq!(
        checked["copies"][1]["retention"], "keep_daily 90",
        "{checked:#}"
    );
}

#[test]
fn copies_between_s3_endpoints_and_a_local_directory_restore_with_the_primary_gone() {
    let primary = S3Server::start();
    let second = S3Server::start();
    let bucket = unique_bucket_name("copy-primary");
    let dr_bucket = unique_bucket_name("copy-dr");
    block_on(primary.create_bucket(&bucket, true));
    block_on(second.create_bucket(&dr_bucket, true));
    let ws = Workspace::new(Backend::S3 {
        endpoint: primary.endpoint(),
        bucket: bucket.clone(),
    });
    // Big enough for several multipart parts at the destination.
    let src = files_policy(&ws, 14 * 1024 * 1024);
    let id = ws.backup("etc");
    append(
        &ws,
        "drctl.toml",
        &format!(
            "\n[[copies]]\nname = \"eu\"\nurl = \"s3://{dr_bucket}/dr\"\nendpoint = \"{}\"\npath_style = true\naccess_key_id_env = \"DR_KEY_ID\"\nsecret_access_key_env = \"DR_SECRET\"\n\n[[copies]]\nname = \"disk\"\nurl = \"file://copy\"\n",
            second.endpoint()
        ),
    );
    // The second endpoint's credentials come from the variables named.
    let err = ws.fails(&["copy", "--to", "eu"], 1);
    assert!(err.contains("DR_KEY_ID"), "{err}");
    let mut ws = ws;
    ws.set_env("DR_KEY_ID", "testing");
    ws.set_env("DR_SECRET", "testing");
    ws.ok(&["copy"]);
    assert_eq!(list_ids(&ws, &["--repo", "eu"]), std::slice::from_ref(&id));
    assert_eq!(
        list_ids(&ws, &["--repo", "disk"]),
        std::slice::from_ref(&id)
    );
    let keys = block_on(second.list_keys(&dr_bucket, "dr/"));
    assert!(keys.contains(&"dr/repo.json".to_string()), "{keys:?}");
    assert!(
        keys.contains(&format!("dr/backups/etc/{id}/manifest.json")),
        "{keys:?}"
    );

    // The primary region is down: restore from each copy.
    drop(primary);
    assert_eq!(
        restored_blob(&ws, &src, &["--from", "eu"]),
        common::noise(14 * 1024 * 1024, 7)
    );
    assert_eq!(
        restored_blob(&ws, &src, &["--from", "disk"]),
        common::noise(14 * 1024 * 1024, 7)
    );
    ws.ok(&["verify", "--repo", "eu", "--read-data"]);

    // local → S3: a local primary copied to a bucket at the second endpoint.
    let mut local = Workspace::local();
    local.set_env("AWS_ACCESS_KEY_ID", "testing");
    local.set_env("AWS_SECRET_ACCESS_KEY", "testing");
    local.set_env("AWS_REGION", "us-east-1");
    local.set_env("AWS_EC2_METADATA_DISABLED", "true");
    local.set_env("AWS_CONFIG_FILE", "/dev/null");
    local.set_env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    let src2 = files_policy(&local, 40_000);
    local.backup("etc");
    append(
        &local,
        "drctl.toml",
        &format!(
            "\n[[copies]]\nname = \"cloud\"\nurl = \"s3://{dr_bucket}/from-local\"\nendpoint = \"{}\"\npath_style = true\n",
            second.endpoint()
        ),
    );
    local.ok(&["copy", "--to", "cloud"]);
    std::fs::rename(local.repo_dir(), local.path().join("lost")).unwrap();
    assert_eq!(
        restored_blob(&local, &src2, &["--from", "cloud"]),
        common::noise(40_000, 7)
    );
}

#[test]
fn a_copy_under_faults_is_complete_or_absent_and_a_rerun_completes_it() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("copy-faults");
    block_on(s3.create_bucket(&bucket, false));
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let mut ws = Workspace::local();
    for (k, v) in common::s3_env() {
        ws.set_env(k, &v);
    }
    let src = files_policy(&ws, 7 * 1024 * 1024);
    let mut all = Vec::new();
    for n in 0..3u64 {
        std::fs::write(src.join("blob.bin"), common::noise(7 * 1024 * 1024, n + 1)).unwrap();
        all.insert(0, ws.backup("etc"));
    }
    append(
        &ws,
        "drctl.toml",
        &format!(
            "\n[[copies]]\nname = \"dr\"\nurl = \"s3://{bucket}/dr\"\nendpoint = \"{}\"\npath_style = true\n",
            proxy.endpoint()
        ),
    );

    // The manifest's PUT takes effect but its answer is lost: the retry
    // finds the same bytes there and goes on.
    proxy.lose_response(S3Op::PutObject, "manifest.json");
    // Then heavy faults: every run either copies a backup whole or leaves
    // it unlisted.
    proxy.set_faults(Faults {
        slowdown_503: 0.35,
        drop_connection: 0.25,
        seed: 11,
    });
    let mut runs = 0;
    loop {
        runs += 1;
        let out = ws.run(&["copy", "--json"]);
        proxy.set_faults(Faults::none());
        let listed = list_ids(&ws, &["--repo", "dr"]);
        assert!(listed.iter().all(|id| all.contains(id)), "{listed:?}");
        ws.ok(&["verify", "--repo", "dr"]);
        if out.status.success() {
            break;
        }
        assert!(runs < 15, "the copy never completed: {out:?}");
        proxy.set_faults(Faults {
            slowdown_503: 0.35,
            drop_connection: 0.25,
            seed: 11 + runs,
        });
    }
    assert!(
        proxy.injected_503() + proxy.injected_drops() > 0,
        "faults were injected"
    );
    assert_eq!(
        proxy.lost_responses(),
        1,
        "the manifest's answer was lost once"
    );
    eprintln!("the copy completed in {runs} run(s)");
    assert_eq!(list_ids(&ws, &["--repo", "dr"]), all);

    // A copy stopped while its data upload hangs: killed, nothing listed
    // for that backup; the next run completes it.
    std::fs::write(src.join("blob.bin"), common::noise(7 * 1024 * 1024, 99)).unwrap();
    let newest = ws.backup("etc");
    // A short lease, so the killed copy's lease expires before the re-run.
    ws.set_env("DRCTL_LEASE_TTL_SECONDS", "3");
    proxy.hold(S3Op::CompleteMultipartUpload);
    let child = ws
        .cmd(&["copy"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for(
        "the copy's upload to hang",
        std::time::Duration::from_secs(60),
        || (proxy.held() > 0).then_some(()),
    );
    // SAFETY: our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = common::collect_within(child, "killed copy", std::time::Duration::from_secs(30));
    proxy.release();
    assert!(!list_ids(&ws, &["--repo", "dr"]).contains(&newest));
    let manifests = block_on(s3.list_keys(&bucket, &format!("dr/backups/etc/{newest}/")));
    assert!(
        !manifests.iter().any(|k| k.ends_with("manifest.json")),
        "{manifests:?}"
    );
    common::wait_for(
        "the copy to complete",
        std::time::Duration::from_secs(120),
        || ws.run(&["copy"]).status.success().then_some(()),
    );
    assert_eq!(list_ids(&ws, &["--repo", "dr"])[0], newest);
    ws.ok(&["verify", "--repo", "dr"]);
}

#[test]
fn each_repository_is_pruned_by_its_own_retention() {
    let ws = Workspace::local();
    let src = files_policy(&ws, 20_000);
    append(&ws, "policies/etc.toml", "\n[retention]\nkeep_last = 1\n");
    append(
        &ws,
        "drctl.toml",
        "\n[[copies]]\nname = \"long\"\nurl = \"file://long\"\n[copies.retention]\nkeep_last = 3\n\n[[copies]]\nname = \"same\"\nurl = \"file://same\"\n",
    );
    let mut made = Vec::new();
    for n in 0..3u64 {
        std::fs::write(src.join("blob.bin"), common::noise(20_000, n + 1)).unwrap();
        made.insert(0, ws.backup("etc"));
    }
    // The copy that keeps what the policy keeps gets only that.
    let report = json(&ws.ok(&["copy", "--json"]));
    let same = report["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["copy"] == "same")
        .unwrap();
    let actions: Vec<&str> = same["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["copied", "not kept", "not kept"], "{report:#}");
    assert_eq!(list_ids(&ws, &["--repo", "long"]), made);

    ws.ok(&["prune"]);
    assert_eq!(list_ids(&ws, &[]), made[..1]);
    assert_eq!(
        list_ids(&ws, &["--repo", "long"]),
        made,
        "the long copy keeps 3"
    );
    assert_eq!(list_ids(&ws, &["--repo", "same"]), made[..1]);

    std::fs::write(src.join("blob.bin"), common::noise(20_000, 9)).unwrap();
    made.insert(0, ws.backup("etc"));
    ws.ok(&["copy"]);
    // A dry run of one copy plans and deletes nothing.
    let plan = json(&ws.ok(&["prune", "--repo", "long", "--dry-run", "--json"]));
    assert_eq!(
        plan["reports"].as_array().map(Vec::len),
        Some(1),
        "{plan:#}"
    );
    assert_eq!(list_ids(&ws, &["--repo", "long"]).len(), 4);
    ws.ok(&["prune"]);
    assert_eq!(list_ids(&ws, &[]), made[..1]);
    assert_eq!(list_ids(&ws, &["--repo", "long"]), made[..3]);
    assert_eq!(list_ids(&ws, &["--repo", "same"]), made[..1]);
    // What prune removed from a copy is not copied back.
    let again = json(&ws.ok(&["copy", "--json"]));
    assert!(
        again["reports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["bytes"] == 0),
        "{again:#}"
    );
}

/// The value of a sample of `/metrics` whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn the_daemon_copies_each_new_backup_and_a_failed_copy_never_fails_the_backup() {
    let ws = Workspace::local();
    let src = ws.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.conf"), "listen = 80\n").unwrap();
    ws.write(
        "policies/etc.toml",
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n[schedule]\nbackup = \"*/2 * * * * *\"\nrpo_target = \"1h\"\n",
            src.display()
        ),
    );
    // `broken` holds something else: every copy there is refused.
    ws.write("broken/notes.txt", "not a repository\n");
    let port = common::free_port();
    let base = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    ws.write(
        "daemon.toml",
        &format!(
            "{base}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\ncheck_interval = \"1s\"\n\n\
             [[copies]]\nname = \"dr\"\nurl = \"file://copy\"\nafter_backup = true\n[copies.retention]\nkeep_last = 2\n\n\
             [[copies]]\nname = \"broken\"\nurl = \"file://broken\"\nafter_backup = true\n"
        ),
    );
    let mut child = ws
        .cmd_with_config("daemon.toml", &["daemon"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = common::wait_for(
        "three backups, each copied to dr",
        std::time::Duration::from_secs(60),
        || {
            let (_, body) = common::http_get(port, "/metrics")?;
            let ok = sample(&body, "drctl_backup_successes_total{policy=\"etc\"}")? >= 3.0
                && sample(
                    &body,
                    "drctl_copy_failures_total{policy=\"etc\",repository=\"broken\"}",
                )? >= 3.0
                && sample(
                    &body,
                    "drctl_copy_newest_backup_timestamp_seconds{policy=\"etc\",repository=\"dr\"}",
                )
                .is_some();
            ok.then_some(body)
        },
    );
    let (code, health) = common::http_get(port, "/health").unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        sample(&metrics, "drctl_backup_failures_total{policy=\"etc\"}") == Some(0.0),
        "a failed copy is not a failed backup:\n{metrics}"
    );
    let lag = sample(
        &metrics,
        "drctl_copy_lag_seconds{policy=\"etc\",repository=\"dr\"}",
    )
    .unwrap();
    assert!(lag < 3600.0, "{metrics}");
    assert_eq!(code, 503, "{health}");
    let health = json(&health);
    let checks = health["checks"].to_string();
    assert!(
        checks.contains("copy:etc:broken") && checks.contains("not a drctl repository"),
        "{health:#}"
    );
    assert_eq!(tree(&ws.path().join("broken")), ["notes.txt"]);
    // The copy holds the newest backups, by its retention.
    let daemon_config = std::fs::read_to_string(ws.path().join("daemon.toml")).unwrap();
    ws.write("drctl.toml", &daemon_config);
    let copied = list_ids(&ws, &["--repo", "dr"]);
    assert!(!copied.is_empty() && copied.len() <= 2, "{copied:?}");
    let status = json(&ws.ok(&["status", "--json"]));
    let copies = status["policies"][0]["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{status:#}");
}

#[test]
fn a_cluster_copy_holds_base_backups_and_their_wal_and_recovers_from_it() {
    let world = common::cluster::World::new(false, "");
    let pg = &world.pg;
    pg.psql("postgres", "CREATE TABLE t(id int)");
    pg.psql("postgres", "INSERT INTO t VALUES (1), (2)");
    let id = world.ws.backup("cluster");
    pg.psql("postgres", "INSERT INTO t VALUES (3)");
    world.switch_and_wait();
    append(
        &world.ws,
        "drctl.toml",
        "\n[[copies]]\nname = \"dr\"\nurl = \"file://copy\"\n",
    );
    let report = json(&world.ws.ok(&["copy", "--json"]));
    assert!(
        report["reports"][0]["wal_copied"].as_u64().unwrap() >= 2,
        "{report:#}"
    );
    let wal_before = report["reports"][0]["wal_copied"].as_u64().unwrap();
    // New WAL only, on the next run.
    pg.psql("postgres", "INSERT INTO t VALUES (4)");
    world.switch_and_wait();
    let again = json(&world.ws.ok(&["copy", "--json"]));
    assert_eq!(again["reports"][0]["wal_copied"], 1, "{again:#}");
    assert_eq!(
        again["reports"][0]["wal_present"].as_u64().unwrap(),
        wal_before,
        "{again:#}"
    );
    let listed = json(&world.ws.ok(&["list", "cluster", "--json", "--repo", "dr"]));
    assert_eq!(ids(&listed), [id]);

    // The primary is gone: recovery fetches WAL from the copy too.
    std::fs::rename(world.ws.repo_dir(), world.ws.path().join("lost")).unwrap();
    let dir = world.ws.path().join("restored");
    let (out, server) = world.restore(&dir, &["--to", "latest", "--from", "dr"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        common::cluster::text(&out.stdout),
        common::cluster::text(&out.stderr)
    );
    assert_eq!(
        server.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3,4"
    );
}
