//! Signed manifests and records: with `[signing]`, what a writer without the
//! signing key puts in the repository (a backup of their own, an edited
//! manifest, a rewritten drill record with its chain recomputed) is not
//! listed, restored or reported, and is named with exit code 7. Without
//! `[signing]` a repository works as before, with a warning.

mod common;

use std::path::Path;

use common::workspace::{Backend, Workspace};
use common::{Postgres, S3Server, block_on, unique_bucket_name};
use serde_json::Value;

const EXIT_BAD_INPUT: i32 = 2;
const EXIT_UNTRUSTED: i32 = 7;

/// Turns signing on for a fresh workspace: a signing key, `[signing]` in
/// drctl.toml, and `repo.json` written again, signed.
fn sign(ws: &Workspace, s3: Option<(&S3Server, &str)>) -> String {
    let public = ws.ok(&["key", "generate", "--signing", "--out", "signing.key"]);
    let public = public.trim().to_string();
    append(
        ws,
        "drctl.toml",
        &format!("\n[signing]\nkey_file = \"signing.key\"\ntrusted = [\"{public}\"]\n"),
    );
    match s3 {
        None => std::fs::remove_file(ws.repo_dir().join("repo.json")).unwrap(),
        Some((server, bucket)) => block_on(async {
            server
                .client()
                .delete_object()
                .bucket(bucket)
                .key("drctl/repo.json")
                .send()
                .await
                .unwrap();
        }),
    }
    ws.ok(&["init"]);
    public
}

fn append(ws: &Workspace, rel: &str, text: &str) {
    let old = std::fs::read_to_string(ws.path().join(rel)).unwrap();
    ws.write(rel, &format!("{old}{text}"));
}

/// A second configuration in the workspace for someone who can write to
/// the same repository but has no trusted signing key: the same
/// repository and public recipients, their own policies directory.
fn attacker_config(ws: &Workspace, policy_toml: &str, signing: Option<&str>) {
    let config = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    let config = config.split("\n[signing]").next().unwrap().to_string();
    let mut text = format!("policies_dir = \"attacker-policies\"\n{config}");
    if let Some(key) = signing {
        text.push_str(&format!(
            "\n[signing]\nkey_file = \"{key}\"\ntrusted = [\"{}\"]\n",
            ws.ok(&["key", "public", key]).trim()
        ));
    }
    ws.write("attacker.toml", &text);
    ws.write("attacker-policies/shop.toml", policy_toml);
}

fn attacker(ws: &Workspace, args: &[&str]) -> String {
    let out = common::output_within(
        &mut ws.cmd_with_config("attacker.toml", args),
        b"",
        common::workspace::COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "attacker's drctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(ws: &Workspace, args: &[&str]) -> (Option<i32>, String, String) {
    let out = ws.run(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The planted backup is a real drctl backup (pg_dump, zstd, age to the
/// repository's public recipients) of the attacker's own database, written
/// without the signing key: on a local directory and on S3 it is not
/// listed, not restored, not drilled on, not counted by prune, and named.
#[test]
fn a_backup_planted_without_the_signing_key_is_not_listed_restored_or_counted() {
    let pg = Postgres::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders(id int); INSERT INTO orders VALUES (1), (2);",
    );
    pg.createdb("evil");
    pg.psql(
        "evil",
        "CREATE TABLE planted(id int); INSERT INTO planted VALUES (666);",
    );
    for s3 in [false, true] {
        let server = s3.then(S3Server::start);
        let bucket = unique_bucket_name("signing");
        let mut ws = match &server {
            None => Workspace::local(),
            Some(server) => {
                block_on(server.create_bucket(&bucket, false));
                Workspace::new(Backend::S3 {
                    endpoint: server.endpoint(),
                    bucket: bucket.clone(),
                })
            }
        };
        sign(&ws, server.as_ref().map(|s| (s, bucket.as_str())));
        ws.postgres_policy("shop", &pg, "shop");
        append(&ws, "policies/shop.toml", "\n[retention]\nkeep_last = 1\n");
        let real = ws.backup("shop");

        attacker_config(
            &ws,
            &format!(
                "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
                pg.url("evil")
            ),
            None,
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let planted = json(&attacker(&ws, &["backup", "shop", "--json"]))["results"][0]["manifest"]
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
        let planted_key = format!("backups/shop/{planted}/manifest.json");

        // list: only the real backup; the planted one named, exit 7.
        let (code, stdout, stderr) = run(&ws, &["list", "shop", "--json"]);
        assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
        let listed = json(&stdout);
        let ids: Vec<&str> = listed["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [real.as_str()], "s3={s3}");
        assert_eq!(listed["untrusted"][0]["key"], planted_key.as_str());
        assert!(
            stderr.contains(&format!(
                "security: `{planted_key}` is ignored: it has no signature"
            )),
            "{stderr}"
        );

        // restore: refuses (it would have been the newest), names it, and
        // creates nothing.
        let target_db = format!("restored_{}", if s3 { "s3" } else { "local" });
        let target = pg.url(&target_db);
        let (code, _, stderr) = run(
            &ws,
            &[
                "restore", "shop", "--to", "latest", "--target", &target, "--yes",
            ],
        );
        assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
        assert!(stderr.contains(&planted_key), "{stderr}");
        assert!(stderr.contains(&format!("--backup {real}")), "{stderr}");
        assert_eq!(
            pg.psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{target_db}'")
            )
            .trim(),
            "0",
            "nothing was restored"
        );
        // Asking for the planted id by name is refused too.
        let (code, _, stderr) = run(
            &ws,
            &[
                "restore", "shop", "--backup", &planted, "--target", &target, "--yes",
            ],
        );
        assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
        // The real backup is still there to restore.
        ws.ok(&[
            "restore", "shop", "--backup", &real, "--target", &target, "--yes",
        ]);
        assert_eq!(
            pg.psql(&target_db, "SELECT count(*) FROM orders").trim(),
            "2"
        );

        // verify and prune name it too; prune's keep_last = 1 keeps the
        // real backup, as the newest good one, and leaves the planted
        // objects alone.
        let stderr = ws.fails(&["verify", "shop"], EXIT_UNTRUSTED);
        assert!(stderr.contains(&planted_key), "{stderr}");
        let (code, stdout, stderr) = run(&ws, &["prune", "shop", "--json"]);
        assert_eq!(code, Some(EXIT_UNTRUSTED), "{stdout}\n{stderr}");
        assert!(stderr.contains(&planted_key), "{stderr}");
        let ids: Vec<String> = ws_backups_ignoring_untrusted(&ws, "shop");
        assert_eq!(ids, [real.as_str()], "prune kept the real backup");

        // A writer with a signing key of their own is no better off.
        ws.ok(&["key", "generate", "--signing", "--out", "attacker.key"]);
        attacker_config(
            &ws,
            &format!(
                "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
                pg.url("evil")
            ),
            Some("attacker.key"),
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        attacker(&ws, &["backup", "shop"]);
        let (code, _, stderr) = run(&ws, &["list", "shop"]);
        assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
        assert!(
            stderr.contains("which is not in `[signing] trusted`"),
            "{stderr}"
        );
        pg.psql("postgres", &format!("DROP DATABASE {target_db}"));
    }
}

/// `list --json` ids, whatever the exit status.
fn ws_backups_ignoring_untrusted(ws: &Workspace, policy: &str) -> Vec<String> {
    let (_, stdout, _) = run(ws, &["list", policy, "--json"]);
    json(&stdout)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// A files workspace with signing on and one signed backup of `etc/`.
fn signed_files_workspace() -> (Workspace, String) {
    let ws = Workspace::local();
    sign(&ws, None);
    let etc = ws.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("app.conf"), "listen = 80\n").unwrap();
    ws.write(
        "policies/etc.toml",
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n[drill]\nscratch_dir = \"scratch\"\n",
            etc.display()
        ),
    );
    let id = ws.backup("etc");
    (ws, id)
}

#[test]
fn an_edited_point_in_time_in_a_signed_manifest_is_caught() {
    let (ws, id) = signed_files_workspace();
    let key = format!("backups/etc/{id}/manifest.json");
    let path = ws.repo_dir().join(&key);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"signature\": \"drctl-ed25519:"), "{text}");
    // jq and every JSON reader still read it as before.
    assert_eq!(json(&text)["id"], id.as_str());

    // repo.json was signed by `init`: no command warns about it.
    let (code, _, stderr) = run(&ws, &["list", "etc"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("repo.json") && !stderr.contains("unsigned"),
        "{stderr}"
    );

    let pit = json(&text)["point_in_time"].as_str().unwrap().to_string();
    let edited = text.replace(&pit, "2099-01-01T00:00:00Z");
    assert_ne!(edited, text);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, edited).unwrap();

    let (code, stdout, stderr) = run(&ws, &["list", "etc"]);
    assert_eq!(code, Some(EXIT_UNTRUSTED), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains(&id),
        "the edited backup is not listed: {stdout}"
    );
    assert!(
        stderr.contains(&format!("`{key}` is ignored: its signature does not match")),
        "{stderr}"
    );
    let out_dir = ws.path().join("out");
    let stderr = ws.fails(
        &[
            "restore",
            "etc",
            "--to",
            "latest",
            "--into",
            out_dir.to_str().unwrap(),
        ],
        EXIT_UNTRUSTED,
    );
    assert!(stderr.contains(&key), "{stderr}");
    assert!(!out_dir.exists(), "nothing was restored");
}

#[test]
fn a_signed_manifest_replayed_under_another_id_is_caught() {
    let (ws, id) = signed_files_workspace();
    // The same signed bytes at another backup's key (with the data copied
    // too): the signature covers the key, so it does not verify there.
    let other = "29991231T000000Z-00000000";
    let from = ws.repo_dir().join(format!("backups/etc/{id}"));
    let to = ws.repo_dir().join(format!("backups/etc/{other}"));
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        let text = std::fs::read(entry.path()).unwrap();
        let text = if entry.file_name() == "manifest.json" {
            String::from_utf8(text)
                .unwrap()
                .replace(&id, other)
                .into_bytes()
        } else {
            text
        };
        std::fs::write(to.join(entry.file_name()), text).unwrap();
    }
    let (code, stdout, stderr) = run(&ws, &["list", "etc"]);
    assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
    assert!(stdout.contains(&id) && !stdout.contains(other), "{stdout}");
    assert!(
        stderr.contains(&format!("backups/etc/{other}/manifest.json")),
        "{stderr}"
    );
    // A drill runs on the newest trusted backup, records it, and says that
    // a newer-looking manifest was passed over.
    let stderr = ws.fails(&["drill", "etc"], EXIT_UNTRUSTED);
    assert!(stderr.contains(other), "{stderr}");
    let drills = json(&ws.ok(&["drills", "etc", "--json"]));
    assert_eq!(
        drills["drills"][0]["record"]["backup_id"],
        id.as_str(),
        "{drills}"
    );
}

#[test]
fn a_drill_record_rewritten_with_a_recomputed_chain_is_caught_by_report() {
    let (ws, _id) = signed_files_workspace();
    ws.ok(&["drill", "etc"]);
    ws.ok(&["drill", "etc"]);
    ws.ok(&["report", "--verify"]);
    let before = json(&ws.ok(&["report", "--format", "json"]));
    assert_eq!(before["totals"]["drills_run"], 2, "{before}");
    let dir = ws.repo_dir().join("drills/etc");
    let mut records: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    records.sort();
    assert_eq!(records.len(), 2);

    // Rewrite the first record (a failed drill made to look passed, say)
    // without the signing key, and recompute the link in the second one.
    let sha = |p: &Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
    };
    let mut first = json(&std::fs::read_to_string(&records[0]).unwrap());
    first["host"] = "attacker".into();
    first.as_object_mut().unwrap().remove("signature");
    std::fs::remove_file(&records[0]).unwrap();
    std::fs::write(&records[0], serde_json::to_vec_pretty(&first).unwrap()).unwrap();
    // The second keeps its signature member, now over other bytes.
    let second = std::fs::read_to_string(&records[1]).unwrap();
    let link = json(&second)["previous_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let second = second.replace(&link, &sha(&records[0]));
    std::fs::remove_file(&records[1]).unwrap();
    std::fs::write(&records[1], second).unwrap();

    let key = |p: &Path| format!("drills/etc/{}", p.file_name().unwrap().to_str().unwrap());
    let stderr = ws.fails(&["report", "--verify"], EXIT_UNTRUSTED);
    assert!(stderr.contains(&key(&records[0])), "{stderr}");
    assert!(stderr.contains(&key(&records[1])), "{stderr}");
    let (code, stdout, stderr) = run(&ws, &["report", "--format", "json"]);
    assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
    assert_eq!(
        json(&stdout)["totals"]["drills_run"],
        0,
        "the report counts neither record: {stdout}"
    );
    assert!(!stdout.contains("attacker"), "{stdout}");
    assert!(stderr.contains("its signature does not match"), "{stderr}");
    assert!(stderr.contains("it has no signature"), "{stderr}");

    // A run record planted to fake (or here, invent) a failure is not
    // counted either.
    let before = json(&run(&ws, &["report", "--format", "json"]).1);
    let failed = before["totals"]["backups_failed"].clone();
    ws.write(
        "repo/runs/etc/20261127T020000Z-9f3a1c2e.json",
        "{\n  \"format\": 1,\n  \"id\": \"20261127T020000Z-9f3a1c2e\",\n  \"policy\": \"etc\",\n  \"kind\": \"files\",\n  \"host\": \"h\",\n  \"tool_version\": \"0.1.0\",\n  \"started_at\": \"2026-11-27T02:00:00Z\",\n  \"finished_at\": \"2026-11-27T02:00:01Z\",\n  \"result\": \"failed\",\n  \"error_class\": \"source\",\n  \"error_sealed\": null\n}",
    );
    let (code, stdout, stderr) = run(
        &ws,
        &["report", "--format", "json", "--since", "2026-11-01"],
    );
    assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
    assert!(
        stderr.contains("runs/etc/20261127T020000Z-9f3a1c2e.json"),
        "{stderr}"
    );
    assert_eq!(
        json(&stdout)["totals"]["backups_failed"],
        failed,
        "{stdout}"
    );
}

/// Unsigned mode is the documented default: `check` and `status` say so,
/// and the commands of a new user's first ten minutes do not repeat it on
/// every run (a warning on every command teaches people to skip warnings).
#[test]
fn an_unsigned_repository_works_and_check_and_status_warn() {
    let ws = Workspace::local();
    let etc = ws.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("a"), "a").unwrap();
    ws.files_policy("etc", &[&etc]);
    let id = ws.backup("etc");
    for args in [
        &["init"][..],
        &["backup", "etc"][..],
        &["list", "etc"][..],
        &["verify", "--read-data"][..],
        &["restore", "etc", "--to", "latest", "--into", "out"][..],
    ] {
        let (code, stdout, stderr) = run(&ws, args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("unsigned mode"), "{args:?}: {stderr}");
        if args[0] == "list" {
            assert!(stdout.contains(&id), "{stdout}");
        }
    }
    let (code, _stdout, stderr) = run(&ws, &["status"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("warning: unsigned mode"), "{stderr}");
    let (code, stdout, stderr) = run(&ws, &["check"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("signing: off (unsigned mode)"), "{stdout}");
    assert!(stderr.contains("unsigned mode"), "{stderr}");
    let text = std::fs::read_to_string(
        ws.repo_dir()
            .join(format!("backups/etc/{id}/manifest.json")),
    )
    .unwrap();
    assert!(!text.contains("signature"), "{text}");
}

#[test]
fn signing_keys_are_made_once_and_their_public_half_printed() {
    let ws = Workspace::local();
    let public = ws.ok(&["key", "generate", "--signing", "--out", "s.key"]);
    let public = public.trim();
    assert!(public.starts_with("drctl-ed25519:"), "{public}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ws.path().join("s.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(ws.ok(&["key", "public", "s.key"]).trim(), public);
    let before = std::fs::read(ws.path().join("s.key")).unwrap();
    let stderr = ws.fails(&["key", "generate", "--signing", "--out", "s.key"], 3);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(ws.path().join("s.key")).unwrap(), before);
    let stderr = ws.fails(&["key", "public", "identity.age"], EXIT_BAD_INPUT);
    assert!(stderr.contains("age identity"), "{stderr}");
}

#[test]
fn check_explains_bad_signing_configuration() {
    let ws = Workspace::local();
    let public = ws.ok(&["key", "generate", "--signing", "--out", "s.key"]);
    let public = public.trim().to_string();
    let other = ws.ok(&["key", "generate", "--signing", "--out", "other.key"]);
    let other = other.trim().to_string();
    let base = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    let with = |signing: &str| ws.write("drctl.toml", &format!("{base}\n[signing]\n{signing}"));

    // Bad key text: the line and what a key looks like.
    with("trusted = [\"age1notasigningkey\"]\n");
    let line = base.lines().count() + 3;
    let stderr = ws.fails(&["check"], EXIT_BAD_INPUT);
    assert!(
        stderr.contains(&format!("drctl.toml:{line}"))
            && stderr.contains("must start with `drctl-ed25519:`"),
        "{stderr}"
    );
    with("trusted = [\"drctl-ed25519:AAAA\"]\n");
    assert!(ws.fails(&["check"], EXIT_BAD_INPUT).contains("32 bytes"));
    with("trusted = []\n");
    assert!(
        ws.fails(&["check"], EXIT_BAD_INPUT)
            .contains("`[signing] trusted` is empty")
    );

    // A key file that is not there, or not trusted.
    with(&format!(
        "key_file = \"missing.key\"\ntrusted = [\"{public}\"]\n"
    ));
    let stderr = ws.fails(&["check"], EXIT_BAD_INPUT);
    assert!(
        stderr.contains("cannot read the signing key file") && stderr.contains("missing.key"),
        "{stderr}"
    );
    with(&format!("key_file = \"s.key\"\ntrusted = [\"{other}\"]\n"));
    let stderr = ws.fails(&["check"], EXIT_BAD_INPUT);
    assert!(
        stderr.contains(&public) && stderr.contains("is not in `[signing] trusted`"),
        "{stderr}"
    );

    // Readable by others: a warning, not a refusal.
    with(&format!(
        "key_file = \"s.key\"\ntrusted = [\"{public}\", \"{other}\"]\n"
    ));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        ws.path().join("s.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, stdout, stderr) = run(&ws, &["check"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "signing: on; 2 trusted key(s); this host signs with {public}"
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains("has mode 0644") && stderr.contains("chmod 600"),
        "{stderr}"
    );

    // A host that only reads needs only `trusted`.
    with(&format!("trusted = [\"{public}\"]\n"));
    let stdout = ws.ok(&["check"]);
    assert!(stdout.contains("this host only reads"), "{stdout}");
}

/// Turning signing on for an old repository: its unsigned objects are
/// ignored until `sign --existing` vouches for them in one signed
/// attestation; one changed afterwards is caught again.
#[test]
fn sign_existing_vouches_for_an_old_repository_and_nothing_later() {
    let ws = Workspace::local();
    let etc = ws.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("a"), "a").unwrap();
    ws.write(
        "policies/etc.toml",
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n[drill]\nscratch_dir = \"scratch\"\n",
            etc.display()
        ),
    );
    let old = ws.backup("etc");
    ws.ok(&["drill", "etc"]);

    let public = ws.ok(&["key", "generate", "--signing", "--out", "signing.key"]);
    append(
        &ws,
        "drctl.toml",
        &format!(
            "\n[signing]\nkey_file = \"signing.key\"\ntrusted = [\"{}\"]\n",
            public.trim()
        ),
    );
    let (code, _, stderr) = run(&ws, &["list", "etc"]);
    assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
    assert!(stderr.contains("repo.json"), "{stderr}");

    let dry = ws.ok(&["sign", "--existing", "--dry-run"]);
    assert!(
        dry.contains(&format!("would vouch backups/etc/{old}/manifest.json")),
        "{dry}"
    );
    assert!(dry.contains("would vouch repo.json"), "{dry}");
    assert!(
        !ws.repo_dir().join("attestations").exists(),
        "a dry run writes nothing"
    );
    let out = ws.ok(&["sign", "--existing"]);
    assert!(
        out.contains("3 unsigned object(s) vouched for in attestations/"),
        "{out}"
    );

    let new = ws.backup("etc");
    let (code, stdout, stderr) = run(&ws, &["list", "etc"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&old) && stdout.contains(&new), "{stdout}");
    ws.ok(&["drill", "etc"]);
    ws.ok(&["report", "--verify"]);
    // Nothing left to vouch for.
    assert!(
        ws.ok(&["sign", "--existing"])
            .contains("0 unsigned object(s)")
    );

    // The old manifest edited after it was vouched for: caught.
    let path = ws
        .repo_dir()
        .join(format!("backups/etc/{old}/manifest.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"host\": \"", "\"host\": \"x");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = run(&ws, &["list", "etc"]);
    assert_eq!(code, Some(EXIT_UNTRUSTED), "{stderr}");
    assert!(!stdout.contains(&old), "{stdout}");
    // And a second `sign --existing` does not approve the edit.
    let (code, stdout, stderr) = run(&ws, &["sign", "--existing"]);
    assert_eq!(code, Some(EXIT_UNTRUSTED), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("altered since"),
        "{stdout}{stderr}"
    );
    let (code, stdout, _) = run(&ws, &["list", "etc"]);
    assert_eq!(code, Some(EXIT_UNTRUSTED));
    assert!(!stdout.contains(&old), "{stdout}");
}

/// A host with `[signing]` but no `key_file` (a restore-only host's
/// configuration) cannot take a backup or run a drill: it is refused before
/// any work, naming the setting, and nothing is written that every reader
/// would then ignore.
#[test]
fn a_host_without_the_signing_key_refuses_to_write_backups_and_records() {
    let (ws, id) = signed_files_workspace();
    let config = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    ws.write(
        "drctl.toml",
        &config.replace("key_file = \"signing.key\"\n", ""),
    );
    let manifests = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(ws.repo_dir().join("backups/etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = manifests();
    for args in [&["backup", "etc"][..], &["drill", "etc"][..]] {
        let (code, _, stderr) = run(&ws, args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no `key_file`") && stderr.contains("[signing] key_file"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(manifests(), before, "no backup was written");
    assert!(
        !ws.repo_dir().join("drills/etc").exists(),
        "no drill record was written"
    );
    // Restores need only `trusted`.
    let out = ws.path().join("restored");
    ws.ok(&[
        "restore",
        "etc",
        "--backup",
        &id,
        "--into",
        out.to_str().unwrap(),
    ]);
    assert!(out.join("app.conf").exists() || std::fs::read_dir(&out).unwrap().count() > 0);
}

/// On a versioned bucket, a pruned backup's manifest keeps its versions. A
/// writer without the signing key adds a version of their own on top (and
/// deletes it again): the genuine pruned backup is still listed and
/// restorable, and the planted version is named, with exit 7.
#[test]
fn a_planted_version_does_not_hide_a_pruned_backup() {
    let server = S3Server::start();
    let bucket = unique_bucket_name("signing-deleted");
    block_on(server.create_bucket(&bucket, true));
    let ws = Workspace::new(Backend::S3 {
        endpoint: server.endpoint(),
        bucket: bucket.clone(),
    });
    sign(&ws, Some((&server, &bucket)));
    let etc = ws.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    ws.files_policy("etc", &[&etc]);
    append(&ws, "policies/etc.toml", "\n[retention]\nkeep_last = 1\n");
    std::fs::write(etc.join("app.conf"), "genuine\n").unwrap();
    let pruned = ws.backup("etc");
    std::fs::write(etc.join("app.conf"), "newer\n").unwrap();
    ws.backup("etc");
    ws.ok(&["prune", "etc"]);

    let rel = format!("backups/etc/{pruned}/manifest.json");
    let key = format!("drctl/{rel}");
    let genuine = block_on(server.list_versions(&bucket, &key))
        .into_iter()
        .find(|v| !v.is_delete_marker)
        .expect("the pruned manifest's version");
    // The attacker's version: the genuine bytes with the time moved (its
    // signature no longer matches), written and deleted again.
    block_on(async {
        let client = server.client();
        let bytes = client
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .version_id(&genuine.version_id)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let forged = text.replacen("\"point_in_time\": \"20", "\"point_in_time\": \"19", 1);
        assert_ne!(forged, text, "the manifest has a point_in_time to move");
        server.put_object(&bucket, &key, forged).await;
        client
            .delete_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
    });

    let (code, stdout, stderr) = run(&ws, &["list", "--deleted", "etc", "--json"]);
    assert_eq!(code, Some(EXIT_UNTRUSTED), "{stdout}{stderr}");
    let rows = json(&stdout)["deleted"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(rows[0]["id"], pruned.as_str());
    assert_eq!(rows[0]["manifest_version_id"], genuine.version_id.as_str());
    assert!(
        stderr.contains(&rel),
        "the planted version is named: {stderr}"
    );

    let into = ws.path().join("restored");
    let (code, _, stderr) = run(
        &ws,
        &[
            "restore",
            "etc",
            "--backup",
            &pruned,
            "--into",
            into.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&rel),
        "the restore names the planted version: {stderr}"
    );
    let restored =
        std::fs::read_to_string(into.join(etc.strip_prefix("/").unwrap()).join("app.conf"))
            .unwrap();
    assert_eq!(restored, "genuine\n");
}

/// A host without `[signing]` reading a repository whose repo.json is
/// signed cannot tell a planted backup from a real one: the commands that
/// act on a manifest say so; the others stay quiet.
#[test]
fn a_host_without_signing_is_warned_when_the_repository_is_signed() {
    let ws = Workspace::local();
    sign(&ws, None);
    let etc = ws.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("a"), "a").unwrap();
    ws.files_policy("etc", &[&etc]);
    ws.backup("etc");
    attacker_config(
        &ws,
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n",
            etc.display()
        ),
        None,
    );
    std::fs::rename(
        ws.path().join("attacker-policies/shop.toml"),
        ws.path().join("attacker-policies/etc.toml"),
    )
    .unwrap();
    for (args, warns) in [
        (&["verify"][..], true),
        (
            &["restore", "etc", "--to", "latest", "--into", "out2"][..],
            true,
        ),
        (&["list"][..], false),
    ] {
        let out = common::output_within(
            &mut ws.cmd_with_config("attacker.toml", args),
            b"",
            common::workspace::COMMAND_TIMEOUT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(
            stderr.contains("its repo.json is signed, but drctl.toml has no [signing]"),
            warns,
            "{args:?}: {stderr}"
        );
    }
}
