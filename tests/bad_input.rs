//! Bad input gets a clear error and changes nothing (docs/ARCHITECTURE.md, invariant 7).
//!
//! Every test checks three things: the exit code (src/cli/mod.rs `ExitCode`),
//! that the message on stderr names what failed (file and line, policy,
//! database, bucket, key file…), and that nothing was changed or lost:
//! backups listed before are still listed and every byte of them still
//! authenticates, a restore target is untouched, no new backup appears.

mod common;

use std::path::Path;
use std::process::Output;

use common::workspace::{Backend, Workspace};
use common::{Postgres, S3Server, block_on, free_port, unique_bucket_name};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code and returns stderr.
fn expect_exit(out: &Output, code: i32, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn assert_mentions(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected the message to mention {needle:?}; it was:\n{haystack}"
    );
}

fn ids(ws: &Workspace, policy: &str) -> Vec<String> {
    ws.backups(policy)
        .iter()
        .map(|b| b["id"].as_str().expect("backup id").to_string())
        .collect()
}

/// The backups of `policy` are exactly `expected`, and every byte of them
/// still decrypts and matches its manifest.
fn assert_intact(ws: &Workspace, policy: &str, expected: &[String]) {
    assert_eq!(ids(ws, policy), expected, "backups of `{policy}` changed");
    ws.ok(&["verify", policy, "--read-data"]);
}

fn database_exists(pg: &Postgres, db: &str) -> bool {
    pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{}'",
            db.replace('\'', "''")
        ),
    ) == "1"
}

/// Databases a restore creates while it works (`<target>_drctl_<tag>`);
/// none may be left behind by a refused or failed restore.
fn scratch_databases(pg: &Postgres) -> String {
    pg.psql(
        "postgres",
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE '%\\_drctl\\_%'",
    )
}

/// A cluster with database `shop` (100 orders), a workspace with policy
/// `shop` for it, and one backup.
fn shop() -> (Postgres, Workspace, String) {
    let pg = Postgres::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders(id int PRIMARY KEY, note text); \
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 100) g;",
    );
    let mut ws = Workspace::local();
    ws.postgres_policy("shop", &pg, "shop");
    let id = ws.backup("shop");
    (pg, ws, id)
}

/// A files policy `etc` over a small directory, with one backup.
fn files_backup(ws: &Workspace) -> String {
    let src = ws.path().join("etc-src");
    std::fs::create_dir_all(src.join("app")).expect("create the source dir");
    std::fs::write(src.join("app/app.conf"), "listen = 8080\n").expect("write a file");
    std::fs::write(src.join("hosts"), "127.0.0.1 localhost\n").expect("write a file");
    ws.files_policy("etc", &[&src]);
    ws.backup("etc")
}

fn repo_toml(ws: &Workspace, repository: &str) -> String {
    format!(
        "[repository]\n{repository}\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.age\"\n",
        ws.recipient
    )
}

fn dir_listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let rel = path
                .strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string();
            if path.is_dir() {
                out.push((rel + "/", Vec::new()));
                stack.push(path);
            } else {
                out.push((rel, std::fs::read(&path).expect("read file")));
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Policy files
// ---------------------------------------------------------------------------

#[test]
fn malformed_policy_toml_names_file_and_line_and_nothing_runs() {
    let (pg, ws, id) = shop();
    let good = std::fs::read_to_string(ws.path().join("policies/shop.toml")).unwrap();
    // Line 3 opens a string that never closes.
    let broken = format!(
        "[source]\ntype = \"postgres\"\nurl = \"{}\n",
        pg.url("shop")
    );
    ws.write("policies/shop.toml", &broken);

    for args in [&["check"][..], &["backup", "shop"][..]] {
        let err = ws.fails(args, 2);
        assert_mentions(&err, "policies/shop.toml:3");
        assert!(err.starts_with("error: "), "{err}");
    }

    ws.write("policies/shop.toml", &good);
    assert_intact(&ws, "shop", &[id]);
    assert!(
        !ws.repo_dir().join("locks/shop").exists(),
        "a refused backup left its lease behind"
    );
}

#[test]
fn unknown_policy_key_suggests_the_right_one() {
    let (_pg, ws, id) = shop();
    let good = std::fs::read_to_string(ws.path().join("policies/shop.toml")).unwrap();
    assert_eq!(good.lines().count(), 3, "{good}");
    // Lines 4–7: a blank line, [retention], keep_last, then the typo on line 7.
    ws.write(
        "policies/shop.toml",
        &format!("{good}\n[retention]\nkeep_last = 3\nkeep_dayly = 7\n"),
    );

    for args in [&["check"][..], &["backup", "shop"][..]] {
        let err = ws.fails(args, 2);
        assert_mentions(&err, "policies/shop.toml:7");
        assert_mentions(&err, "keep_dayly");
        assert_mentions(&err, "did you mean `keep_daily`");
    }

    ws.write("policies/shop.toml", &good);
    assert_intact(&ws, "shop", &[id]);
}

/// A wrong type named no key ("invalid type: string \"7\", expected u32")
/// and hid every later problem of the file; each is now listed, by key.
#[test]
fn every_wrong_type_in_a_policy_is_listed_with_its_key() {
    let ws = Workspace::local();
    let id = files_backup(&ws);
    let good = std::fs::read_to_string(ws.path().join("policies/etc.toml")).unwrap();
    ws.write(
        "policies/etc.toml",
        &format!("{good}[retention]\nkeep_last = -1\nkeep_daily = \"7\"\n"),
    );
    for args in [&["check"][..], &["backup", "etc"][..]] {
        let err = ws.fails(args, 2);
        assert_mentions(
            &err,
            "policies/etc.toml:5: `retention.keep_last` must be a non-negative integer, not -1",
        );
        assert_mentions(
            &err,
            "policies/etc.toml:6: `retention.keep_daily` must be a non-negative integer, not the string \"7\"",
        );
    }
    ws.write("policies/etc.toml", &good);
    assert_intact(&ws, "etc", &[id]);
}

#[test]
fn password_in_policy_url_is_refused_without_showing_it() {
    let (pg, ws, id) = shop();
    let good = std::fs::read_to_string(ws.path().join("policies/shop.toml")).unwrap();
    const SECRET: &str = "Sup3r-Secret-Pa55word";
    ws.write(
        "policies/shop.toml",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"postgres://postgres:{SECRET}@127.0.0.1:{}/shop\"\n",
            pg.port()
        ),
    );

    for args in [&["check"][..], &["backup", "shop"][..]] {
        let out = ws.run(args);
        let err = expect_exit(&out, 2, &format!("drctl {args:?}"));
        assert_mentions(&err, "policies/shop.toml:3");
        assert_mentions(&err, "password");
        for stream in [text(&out.stdout), err] {
            assert!(
                !stream.contains(SECRET),
                "the password from the policy file was printed:\n{stream}"
            );
        }
    }

    ws.write("policies/shop.toml", &good);
    assert_intact(&ws, "shop", &[id]);
}

#[test]
fn unknown_policy_name_lists_the_known_ones() {
    let (pg, ws, id) = shop();
    let id_etc = files_backup(&ws);
    let target = pg.url("shop_restored");
    let commands: [&[&str]; 4] = [
        &["backup", "shpo"],
        &["list", "shpo"],
        &["verify", "shpo"],
        &[
            "restore", "shpo", "--to", "latest", "--target", &target, "--yes",
        ],
    ];
    for args in commands {
        let err = ws.fails(args, 2);
        assert_mentions(&err, "`shpo`");
        assert_mentions(&err, "etc, shop");
    }
    assert!(!database_exists(&pg, "shop_restored"));
    assert_intact(&ws, "shop", &[id]);
    assert_intact(&ws, "etc", &[id_etc]);
}

// ---------------------------------------------------------------------------
// Restore times
// ---------------------------------------------------------------------------

#[test]
fn bad_restore_times_are_refused_and_restore_nothing() {
    let (pg, ws, id) = shop();
    let target = pg.url("shop_restored");
    let output = ws.path().join("shop.dump");
    let output_arg = output.to_str().unwrap();
    let future = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let first = ws.backups("shop")[0]["point_in_time"]
        .as_str()
        .unwrap()
        .to_string();
    // Messages print times as `2026-11-30 17:44:00 UTC`.
    let first = first[..16].replace('T', " ");

    let cases: [(&str, &[&str]); 3] = [
        (
            "yesterday",
            &["cannot understand time `yesterday`", "latest"],
        ),
        (&future, &["in the future"]),
        (
            "2000-01-01T00:00:00Z",
            &["2000-01-01", "the first one is from", &first],
        ),
    ];
    for (to, expected) in cases {
        for destination in [["--target", &target], ["--output", output_arg]] {
            let mut args = vec!["restore", "shop", "--to", to, "--yes"];
            args.extend(destination);
            let err = ws.fails(&args, 2);
            for needle in expected {
                assert_mentions(&err, needle);
            }
            assert!(
                !database_exists(&pg, "shop_restored"),
                "--to {to}: the target database was created"
            );
            assert!(!output.exists(), "--to {to}: the output file was created");
            assert!(
                !ws.path().join("shop.dump.drctl-partial").exists(),
                "--to {to}: a partial output file was left"
            );
        }
    }
    assert_eq!(scratch_databases(&pg), "");
    assert_intact(&ws, "shop", &[id]);
}

// ---------------------------------------------------------------------------
// The database
// ---------------------------------------------------------------------------

#[test]
fn unreachable_database_fails_with_unavailable_naming_it() {
    let (mut pg, ws, id) = shop();
    let port = pg.port();
    pg.stop();

    let err = ws.fails(&["backup", "shop"], 5);
    assert_mentions(&err, &format!("127.0.0.1:{port}/shop"));
    assert_mentions(&err, "cannot connect");

    let target = pg.url("shop_restored");
    let err = ws.fails(
        &[
            "restore", "shop", "--to", "latest", "--target", &target, "--yes",
        ],
        5,
    );
    // drctl first connects to the server's `postgres` database to look at
    // the target, so it names that one; host and port are what matter.
    assert_mentions(&err, &format!("127.0.0.1:{port}/"));
    assert_mentions(&err, "cannot connect");

    assert!(
        !ws.repo_dir().join("locks/shop").exists(),
        "the failed backup left its lease behind"
    );
    assert_intact(&ws, "shop", &[id]);
}

#[test]
fn wrong_database_password_is_refused_without_printing_passwords() {
    let (pg, mut ws, id) = shop();
    const WRONG: &str = "Not-The-Password-7731";
    ws.set_env("PGPASSWORD", WRONG);

    let out = ws.run(&["backup", "shop"]);
    assert!(
        !out.status.success(),
        "a backup with a wrong password succeeded:\n{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert_mentions(&err, &format!("127.0.0.1:{}/shop", pg.port()));
    assert_mentions(&err, "login refused");
    for stream in [text(&out.stdout), err] {
        for secret in [WRONG, pg.password()] {
            assert!(
                !stream.contains(secret),
                "a password was printed:\n{stream}"
            );
        }
    }

    ws.set_env("PGPASSWORD", pg.password());
    assert_intact(&ws, "shop", &[id]);
}

// ---------------------------------------------------------------------------
// The bucket
// ---------------------------------------------------------------------------

fn s3_workspace(s3: &S3Server) -> (Workspace, String) {
    let bucket = unique_bucket_name("bad-input");
    block_on(s3.create_bucket(&bucket, true));
    let ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: bucket.clone(),
    });
    (ws, bucket)
}

#[test]
fn missing_bucket_is_named_and_not_created() {
    let s3 = S3Server::start();
    let (ws, bucket) = s3_workspace(&s3);
    let id = files_backup(&ws);
    let keys_before = block_on(s3.list_keys(&bucket, ""));

    let missing = unique_bucket_name("no-such-bucket");
    ws.write(
        "drctl.toml",
        &repo_toml(
            &ws,
            &format!(
                "url = \"s3://{missing}/drctl\"\nendpoint = \"{}\"\npath_style = true\n",
                s3.endpoint()
            ),
        ),
    );
    // drctl answers 1 ("failed"): a missing bucket is a permanent storage
    // error, not a temporary one.
    for args in [&["init"][..], &["backup", "etc"][..]] {
        let err = ws.fails(args, 1);
        assert_mentions(&err, &format!("bucket `{missing}` does not exist"));
    }
    let head = block_on(s3.client().head_bucket().bucket(&missing).send());
    assert!(head.is_err(), "drctl created the bucket `{missing}`");

    ws.write(
        "drctl.toml",
        &repo_toml(
            &ws,
            &format!(
                "url = \"s3://{bucket}/drctl\"\nendpoint = \"{}\"\npath_style = true\n",
                s3.endpoint()
            ),
        ),
    );
    assert_eq!(block_on(s3.list_keys(&bucket, "")), keys_before);
    assert_intact(&ws, "etc", &[id]);
}

/// moto (5.x, as the harness starts it) does not check signatures: it accepts
/// any access key and secret unless `INITIAL_NO_AUTH_ACTION_COUNT` is set, so
/// wrong credentials cannot be tested against it. What is tested instead is
/// an endpoint where nothing listens. drctl retries that as a transient error
/// (`MAX_ATTEMPTS` attempts with jittered backoff, src/storage/s3.rs), so
/// this test waits for the whole backoff.
#[test]
fn unreachable_s3_endpoint_is_unavailable_and_named() {
    let s3 = S3Server::start();
    let (ws, bucket) = s3_workspace(&s3);
    let id = files_backup(&ws);
    let keys_before = block_on(s3.list_keys(&bucket, ""));

    let dead = format!("127.0.0.1:{}", free_port());
    ws.write(
        "drctl.toml",
        &repo_toml(
            &ws,
            &format!(
                "url = \"s3://{bucket}/drctl\"\nendpoint = \"http://{dead}\"\npath_style = true\n"
            ),
        ),
    );
    let err = ws.fails(&["backup", "etc"], 5);
    assert_mentions(&err, "cannot reach");
    assert_mentions(&err, &bucket);
    assert_mentions(&err, &dead);

    ws.write(
        "drctl.toml",
        &repo_toml(
            &ws,
            &format!(
                "url = \"s3://{bucket}/drctl\"\nendpoint = \"{}\"\npath_style = true\n",
                s3.endpoint()
            ),
        ),
    );
    assert_eq!(block_on(s3.list_keys(&bucket, "")), keys_before);
    assert_intact(&ws, "etc", &[id]);
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

#[test]
fn missing_or_wrong_identity_is_refused_and_target_untouched() {
    let (pg, ws, id) = shop();
    let target = pg.url("shop_restored");
    let output = ws.path().join("shop.dump");

    // The identity file does not exist.
    let err = ws.fails(
        &[
            "--identity",
            "nowhere.age",
            "restore",
            "shop",
            "--to",
            "latest",
            "--target",
            &target,
            "--yes",
        ],
        2,
    );
    assert_mentions(&err, "cannot read identity file");
    assert_mentions(&err, "nowhere.age");
    assert!(!database_exists(&pg, "shop_restored"));

    // An identity that is not one of the backup's recipients.
    let other = ws.ok(&["key", "generate", "--out", "other.age"]);
    assert!(other.trim().starts_with("age1"), "{other}");
    for destination in [
        ["--target", &target],
        ["--output", output.to_str().unwrap()],
    ] {
        let mut args = vec![
            "--identity",
            "other.age",
            "restore",
            "shop",
            "--to",
            "latest",
            "--yes",
        ];
        args.extend(destination);
        let err = ws.fails(&args, 2);
        assert_mentions(&err, "matches none of the backup's recipients");
        // Named before anything is fetched: the backup and the recipients
        // it needs.
        assert_mentions(&err, &format!("backup {id} of `shop`"));
        assert_mentions(&err, &ws.recipient);
        assert!(!database_exists(&pg, "shop_restored"));
        assert!(!output.exists(), "an output file was written");
        assert!(!ws.path().join("shop.dump.drctl-partial").exists());
    }
    assert_eq!(scratch_databases(&pg), "", "a scratch database was left");
    assert_intact(&ws, "shop", &[id]);
}

/// `verify --read-data` with the wrong key is a key problem (exit 2, the
/// recipients named), not a repository full of damaged backups (exit 4).
#[test]
fn verify_with_the_wrong_identity_names_the_recipients_not_damage() {
    let (_pg, ws, id) = shop();
    ws.ok(&["key", "generate", "--out", "other.age"]);
    let out = ws.run(&["--identity", "other.age", "verify", "--read-data"]);
    let err = expect_exit(&out, 2, "verify --read-data with another key");
    assert_mentions(&err, "matches none of the backup's recipients");
    assert_mentions(&err, &ws.recipient);
    assert_mentions(&err, &id);
    assert!(
        !text(&out.stdout).contains("FAILED"),
        "backups were reported as damaged:\n{}",
        text(&out.stdout)
    );
    assert_intact(&ws, "shop", &[id]);
}

/// A wrong key is a key problem everywhere (exit 2, the recipients the
/// backup needs named), found before anything is fetched: in a restore's
/// dry run, and in a drill, which records the failed drill first.
#[test]
fn a_wrong_key_is_named_before_a_restore_or_in_a_drill() {
    let ws = Workspace::local();
    let id = files_backup(&ws);
    let scratch = ws.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let policy = std::fs::read_to_string(ws.path().join("policies/etc.toml")).unwrap();
    ws.write(
        "policies/etc.toml",
        &format!(
            "{policy}\n[drill]\nscratch_dir = \"{}\"\n",
            scratch.display()
        ),
    );
    ws.ok(&["key", "generate", "--out", "other.age"]);

    let err = ws.fails(
        &[
            "--identity",
            "other.age",
            "restore",
            "etc",
            "--to",
            "latest",
            "--into",
            "out",
            "--dry-run",
        ],
        2,
    );
    assert_mentions(&err, "matches none of the backup's recipients");
    assert_mentions(&err, &ws.recipient);
    assert_mentions(&err, "not damaged");
    assert!(!err.contains("Restore plan"), "{err}");
    assert!(!ws.path().join("out").exists());

    let out = ws.run(&["--identity", "other.age", "drill", "etc"]);
    let err = expect_exit(&out, 2, "a drill with another key");
    assert_mentions(&err, "matches none of the backup's recipients");
    assert_mentions(&err, &ws.recipient);
    assert_mentions(&err, &id);
    let drills: serde_json::Value =
        serde_json::from_str(&ws.ok(&["drills", "etc", "--json"])).unwrap();
    assert_eq!(drills["drills"][0]["record"]["passed"], false, "{drills}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    assert_intact(&ws, "etc", &[id]);
}

/// An identity others can read is used, with a warning; one protected by
/// a passphrase, or not text at all, is named for what it is.
#[test]
fn identity_files_readable_by_others_or_encrypted_are_named() {
    use std::os::unix::fs::PermissionsExt;
    let (pg, ws, id) = shop();
    let identity = ws.path().join("identity.age");
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ws.run(&["verify", "--read-data"]);
    let err = expect_exit(&out, 0, "verify with a 0644 identity");
    assert_mentions(&err, "can be read by other users");
    assert_mentions(&err, "chmod 600");

    // What `age --passphrase --armor` writes for an encrypted identity.
    ws.write(
        "locked.age",
        "-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IHNjcnlwdCBhYmMgMTgK\n-----END AGE ENCRYPTED FILE-----\n",
    );
    std::fs::write(
        ws.path().join("binary.age"),
        b"age-encryption.org/v1\n-> scrypt \xff\xfe\n",
    )
    .unwrap();
    std::fs::write(ws.path().join("garbage.age"), b"\xff\xfe\x00\x01").unwrap();
    let target = pg.url("shop_restored");
    for (file, expected) in [
        ("locked.age", "passphrase-protected"),
        ("binary.age", "passphrase-protected"),
        ("garbage.age", "is not text"),
    ] {
        let err = ws.fails(
            &[
                "--identity",
                file,
                "restore",
                "shop",
                "--to",
                "latest",
                "--target",
                &target,
                "--yes",
            ],
            2,
        );
        assert_mentions(&err, file);
        assert_mentions(&err, expected);
        assert!(!err.contains("valid UTF-8"), "{err}");
        assert!(!database_exists(&pg, "shop_restored"));
    }
    assert_intact(&ws, "shop", &[id]);
}

/// Asking for a verification that cannot be done fails before anything is
/// restored; it never passes quietly.
#[test]
fn restore_verify_without_a_fingerprint_fails_and_restores_nothing() {
    let (pg, mut ws, with_print) = shop();
    let output = ws.path().join("shop.dump");
    let out = ws.run(&[
        "restore",
        "shop",
        "--backup",
        &with_print,
        "--output",
        output.to_str().unwrap(),
        "--verify",
    ]);
    let err = expect_exit(&out, 6, "restore --verify --output");
    assert_mentions(&err, "--output");
    assert!(!output.exists(), "a file was written");

    ws.write(
        "policies/shop.toml",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\nfingerprint = false\n",
            pg.url("shop")
        ),
    );
    ws.set_env("PGPASSWORD", pg.password());
    let without = ws.backup("shop");
    let target = pg.url("shop_restored");
    let out = ws.run(&[
        "restore", "shop", "--to", "latest", "--target", &target, "--yes", "--verify",
    ]);
    let err = expect_exit(
        &out,
        6,
        "restore --verify of a backup without a fingerprint",
    );
    assert_mentions(&err, "has no fingerprint");
    assert_mentions(&err, &without);
    assert!(
        !database_exists(&pg, "shop_restored"),
        "the database was restored"
    );
    assert_eq!(scratch_databases(&pg), "", "a scratch database was left");
    // The same restore without --verify works, and says what it checked.
    let done = ws.ok(&[
        "restore", "shop", "--to", "latest", "--target", &target, "--yes",
    ]);
    assert_mentions(&done, "every byte authenticated");
    assert_eq!(
        pg.psql("shop_restored", "SELECT count(*) FROM orders"),
        "100"
    );
    assert_intact(&ws, "shop", &[without, with_print]);
}

#[test]
fn key_generate_never_overwrites_a_key() {
    let ws = Workspace::local();
    let key = ws.path().join("identity.age");
    let before = std::fs::read(&key).unwrap();
    let out = ws.run(&["key", "generate", "--out", "identity.age"]);
    let err = expect_exit(&out, 3, "key generate onto an existing file");
    assert_mentions(&err, "identity.age already exists");
    assert_eq!(
        text(&out.stdout),
        "",
        "a recipient was printed for a key that was not written"
    );
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key file changed");
}

// ---------------------------------------------------------------------------
// Restore destinations
// ---------------------------------------------------------------------------

#[test]
fn restore_refuses_a_non_empty_database_unless_clean() {
    let (pg, ws, id) = shop();
    pg.createdb("live");
    pg.psql(
        "live",
        "CREATE TABLE precious(x int); INSERT INTO precious VALUES (1), (2), (3);",
    );
    let live = pg.url("live");

    let err = ws.fails(
        &[
            "restore", "shop", "--to", "latest", "--target", &live, "--yes",
        ],
        3,
    );
    assert_mentions(&err, "`live`");
    assert_mentions(&err, &format!("127.0.0.1:{}", pg.port()));
    assert_mentions(&err, "--clean");
    assert_eq!(
        pg.psql(
            "live",
            "SELECT string_agg(x::text, ',' ORDER BY x) FROM precious"
        ),
        "1,2,3"
    );
    assert_eq!(
        pg.psql(
            "live",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'"
        ),
        "0"
    );
    assert_eq!(scratch_databases(&pg), "");

    ws.ok(&[
        "restore", "shop", "--to", "latest", "--target", &live, "--clean", "--yes",
    ]);
    assert_eq!(
        pg.psql("live", "SELECT count(*), sum(id) FROM orders"),
        "100|5050"
    );
    assert_eq!(
        pg.psql(
            "live",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'precious'"
        ),
        "0",
        "--clean did not replace the database"
    );
    assert_eq!(scratch_databases(&pg), "");
    assert_intact(&ws, "shop", &[id]);
}

#[test]
fn restore_into_a_database_without_a_terminal_needs_yes() {
    let (pg, ws, id) = shop();
    let target = pg.url("shop_restored");
    // `ws.run` feeds stdin from a pipe: no terminal to ask on.
    let err = ws.fails(
        &["restore", "shop", "--to", "latest", "--target", &target],
        3,
    );
    assert_mentions(&err, "--yes");
    assert!(!database_exists(&pg, "shop_restored"));
    assert_eq!(scratch_databases(&pg), "");
    assert_intact(&ws, "shop", &[id]);
}

#[test]
fn restore_never_overwrites_a_file_or_a_non_empty_directory() {
    let (_pg, ws, id) = shop();
    let id_etc = files_backup(&ws);

    let existing = ws.path().join("existing.dump");
    std::fs::write(&existing, b"keep me").unwrap();
    let err = ws.fails(
        &[
            "restore",
            "shop",
            "--to",
            "latest",
            "--output",
            existing.to_str().unwrap(),
        ],
        3,
    );
    assert_mentions(&err, &existing.display().to_string());
    assert_mentions(&err, "already exists");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let dir = ws.path().join("restore-here");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/mine.txt"), b"mine").unwrap();
    std::fs::write(dir.join("hosts"), b"not the backup's").unwrap();
    let before = dir_listing(&dir);
    let err = ws.fails(
        &[
            "restore",
            "etc",
            "--to",
            "latest",
            "--into",
            dir.to_str().unwrap(),
        ],
        3,
    );
    assert_mentions(&err, &dir.display().to_string());
    assert_mentions(&err, "not empty");
    assert_eq!(dir_listing(&dir), before, "the directory changed");
    assert!(!ws.path().join("restore-here.drctl-partial").exists());

    assert_intact(&ws, "shop", &[id]);
    assert_intact(&ws, "etc", &[id_etc]);
}

// ---------------------------------------------------------------------------
// The repository
// ---------------------------------------------------------------------------

#[test]
fn uninitialised_repository_says_to_run_init() {
    let ws = Workspace::local();
    let src = ws.path().join("etc-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    ws.files_policy("etc", &[&src]);
    std::fs::create_dir(ws.path().join("empty")).unwrap();
    ws.write("drctl.toml", &repo_toml(&ws, "url = \"file://empty\"\n"));

    for args in [
        &["list"][..],
        &["backup", "etc"][..],
        &["verify"][..],
        &["restore", "etc", "--to", "latest", "--into", "out"][..],
    ] {
        let err = ws.fails(args, 2);
        assert_mentions(&err, "not initialised");
        assert_mentions(&err, "empty");
        assert_mentions(&err, "drctl init");
    }
    assert_eq!(
        std::fs::read_dir(ws.path().join("empty")).unwrap().count(),
        0,
        "drctl wrote into a repository that is not initialised"
    );
    assert!(!ws.path().join("out").exists());
}

/// `check` said ok with the repository missing and the database down: it
/// now tries the repository, each source and the identity, lists every
/// failure at once, and `--offline` keeps the files-only check.
#[test]
fn check_tries_the_repository_the_database_and_the_key() {
    let (mut pg, ws, id) = shop();
    let out = ws.ok(&["check"]);
    assert_mentions(&out, "ok      repository: file://");
    assert_mentions(&out, "readable and writable");
    assert_mentions(&out, "ok      source shop:");
    assert_mentions(&out, "pg_dump 15.");
    assert_mentions(&out, "ok      identity:");

    pg.stop();
    ws.ok(&["key", "generate", "--out", "other.age"]);
    std::fs::rename(ws.repo_dir(), ws.path().join("repo.moved")).unwrap();
    let out = ws.run(&["--identity", "other.age", "check"]);
    // The first failure (the repository) sets the exit code; every one is listed.
    let err = expect_exit(&out, 2, "check with nothing in place");
    let stdout = text(&out.stdout);
    assert_mentions(&stdout, "FAILED  repository:");
    assert_mentions(&stdout, "not initialised");
    assert_mentions(&stdout, "FAILED  source shop:");
    assert_mentions(&stdout, "cannot connect");
    assert_mentions(&stdout, "FAILED  identity:");
    assert_mentions(&stdout, "not in `encryption.recipients`");
    assert_mentions(&err, "not initialised");
    std::fs::rename(ws.path().join("repo.moved"), ws.repo_dir()).unwrap();

    // Only the database down: unavailable, 5.
    let out = ws.run(&["check"]);
    expect_exit(&out, 5, "check with the database down");
    assert_mentions(&text(&out.stdout), "FAILED  source shop:");
    // The files alone are fine.
    let out = ws.ok(&["check", "--offline"]);
    assert!(
        !out.contains("FAILED") && !out.contains("ok      repository"),
        "{out}"
    );

    pg.start_again();
    let v: serde_json::Value = serde_json::from_str(&ws.ok(&["check", "--json"])).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{v}"
    );
    // The write probe leaves nothing behind.
    let stray: Vec<_> = std::fs::read_dir(ws.repo_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("check-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    assert_intact(&ws, "shop", &[id]);
}

/// `list --since/--last` narrow the listing; `forget POLICY ID` deletes one
/// backup, only with confirmation, never the newest good one, and an
/// unknown id deletes nothing.
#[test]
fn list_since_and_last_and_forget_one_backup() {
    let ws = Workspace::local();
    let mut all = vec![files_backup(&ws)];
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        all.insert(0, ws.backup("etc"));
    }
    assert_eq!(ids(&ws, "etc"), all);
    let listed = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["list", "etc", "--json"];
        a.extend(args);
        let v: serde_json::Value = serde_json::from_str(&ws.ok(&a)).unwrap();
        v["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(&["--last", "2"]), all[..2]);
    let second = ws.backups("etc")[1]["point_in_time"]
        .as_str()
        .unwrap()
        .to_string();
    let second = format!("{}Z", &second[..19]);
    assert_eq!(listed(&["--since", &second]), all[..2]);
    assert_eq!(listed(&["--since", "1h", "--last", "1"]), all[..1]);
    let err = ws.fails(&["list", "--since", "soon"], 2);
    assert_mentions(&err, "--since");

    let oldest = all[2].clone();
    let err = ws.fails(&["forget", "etc", &oldest], 3);
    assert_mentions(&err, "needs confirmation");
    assert_mentions(&err, "--yes");
    let err = ws.fails(&["forget", "etc", &all[0], "--yes"], 3);
    assert_mentions(&err, "newest good backup");
    let err = ws.fails(&["forget", "etc", "20991231T000000Z", "--yes"], 2);
    assert_mentions(&err, "20991231T000000Z");
    let out = ws.ok(&["forget", "etc", &oldest, "--dry-run"]);
    assert_mentions(&out, "nothing was deleted");
    assert_eq!(
        ids(&ws, "etc"),
        all,
        "a refused or dry-run forget deleted something"
    );

    ws.ok(&["forget", "etc", &oldest, "--yes"]);
    let dir = ws.repo_dir().join(format!("backups/etc/{oldest}"));
    assert!(
        !dir.exists() || dir_listing(&dir).iter().all(|(n, _)| n.ends_with('/')),
        "the forgotten backup's objects are still there: {:?}",
        dir_listing(&dir)
    );
    assert_intact(&ws, "etc", &all[..2]);
}

/// `[drill]` and `[schedule]` could both set an RPO target, and `status`
/// read one while `report` read the other. A policy has one: a conflict is
/// refused with both lines, and a target set only under `[drill]` is the
/// one `status` and the report judge by.
#[test]
fn one_rpo_target_per_policy_and_a_conflict_is_refused() {
    let ws = Workspace::local();
    let id = files_backup(&ws);
    let good = std::fs::read_to_string(ws.path().join("policies/etc.toml")).unwrap();
    ws.write(
        "policies/etc.toml",
        &format!("{good}[schedule]\nrpo_target = \"24h\"\n[drill]\nrpo_target = \"26h\"\n"),
    );
    for args in [&["check"][..], &["status"][..], &["report"][..]] {
        let err = ws.fails(args, 2);
        assert_mentions(&err, "policies/etc.toml:7");
        assert_mentions(
            &err,
            "disagrees with `[schedule] rpo_target` = \"24h\" (line 5)",
        );
    }
    // The same value twice is one target.
    ws.write(
        "policies/etc.toml",
        &format!("{good}[schedule]\nrpo_target = \"24h\"\n[drill]\nrpo_target = \"24h\"\n"),
    );
    ws.ok(&["check", "--offline"]);
    // Only under [drill]: status judges by it (it said "no target").
    ws.write(
        "policies/etc.toml",
        &format!("{good}[drill]\nrpo_target = \"26h\"\n"),
    );
    let v: serde_json::Value = serde_json::from_str(&ws.ok(&["status", "--json"])).unwrap();
    assert_eq!(v["policies"][0]["rpo_target_seconds"], 26 * 3600, "{v}");
    assert_eq!(v["policies"][0]["rpo"], "ok", "{v}");
    let report: serde_json::Value =
        serde_json::from_str(&ws.ok(&["report", "--format", "json"])).unwrap();
    let text = report.to_string();
    assert!(text.contains("93600"), "the report's RPO target: {text}");
    ws.write("policies/etc.toml", &good);
    assert_intact(&ws, "etc", &[id]);
}

/// A repository on a volume that did not mount: "run `drctl init`" would
/// create an empty repository on the disk beneath the mount point. drctl
/// says what is missing and that the parent looks like an unmounted volume.
#[test]
fn a_repository_under_an_empty_unmounted_directory_is_named_as_such() {
    let ws = Workspace::local();
    let id = files_backup(&ws);
    let good = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    std::fs::create_dir(ws.path().join("backupvol")).unwrap();
    ws.write(
        "drctl.toml",
        &repo_toml(&ws, "url = \"file://backupvol/drctl\"\n"),
    );
    for args in [&["list"][..], &["backup", "etc"][..], &["verify"][..]] {
        let err = ws.fails(args, 2);
        assert_mentions(&err, "not initialised");
        assert_mentions(&err, "backupvol/drctl does not exist");
        assert_mentions(
            &err,
            "backupvol is an empty directory with nothing mounted on it",
        );
        assert_mentions(&err, "mount it");
        assert!(!err.contains("run `drctl init`"), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(ws.path().join("backupvol"))
            .unwrap()
            .count(),
        0,
        "drctl wrote under the unmounted volume"
    );
    // `init` is what the operator asked for, so it goes ahead, with a warning.
    let out = ws.run(&["init"]);
    let err = expect_exit(&out, 0, "init under an empty directory");
    assert_mentions(
        &err,
        "backupvol is an empty directory with nothing mounted on it",
    );
    ws.write("drctl.toml", &good);
    assert_intact(&ws, "etc", &[id]);
}

/// A repository whose repo.json was lost still holds backups: `init` there
/// would start a second history over them, so it refuses (on a local
/// directory and on an S3 prefix), and every other command says not to run it.
#[test]
fn init_refuses_a_place_that_holds_backups_without_repo_json() {
    let s3 = S3Server::start();
    let (s3_ws, bucket) = s3_workspace(&s3);
    let local_ws = Workspace::local();
    for (ws, on_s3) in [(&local_ws, false), (&s3_ws, true)] {
        let id = files_backup(ws);
        let marker = match on_s3 {
            false => {
                let path = ws.repo_dir().join("repo.json");
                let bytes = std::fs::read(&path).unwrap();
                std::fs::remove_file(&path).unwrap();
                bytes
            }
            true => block_on(async {
                let client = s3.client();
                let got = client
                    .get_object()
                    .bucket(&bucket)
                    .key("drctl/repo.json")
                    .send()
                    .await
                    .unwrap();
                let bytes = got.body.collect().await.unwrap().into_bytes().to_vec();
                client
                    .delete_object()
                    .bucket(&bucket)
                    .key("drctl/repo.json")
                    .send()
                    .await
                    .unwrap();
                bytes
            }),
        };
        let err = ws.fails(&["list"], 2);
        assert_mentions(&err, "no repo.json");
        assert_mentions(&err, &format!("backups/etc/{id}/"));
        assert_mentions(&err, "do not run `drctl init` here");

        let err = ws.fails(&["init"], 3);
        assert_mentions(&err, "but no repo.json");
        assert_mentions(&err, "does not create a repository over them");
        assert_mentions(&err, &format!("backups/etc/{id}/"));
        // Nothing was written: still no repo.json.
        let err = ws.fails(&["list"], 2);
        assert_mentions(&err, "no repo.json");

        match on_s3 {
            false => std::fs::write(ws.repo_dir().join("repo.json"), &marker).unwrap(),
            true => block_on(async {
                s3.client()
                    .put_object()
                    .bucket(&bucket)
                    .key("drctl/repo.json")
                    .body(marker.into())
                    .send()
                    .await
                    .unwrap();
            }),
        }
        assert_intact(ws, "etc", &[id]);
    }
}

/// A `.drctl-partial` name beside the destination is never written through
/// or replaced: a symbolic link there would send the plaintext wherever it
/// points, and a leftover of an interrupted restore may be someone's only
/// copy of that plaintext. Each is refused with the way to clear it.
#[test]
fn restore_refuses_a_leftover_partial_file_or_symlink() {
    use std::os::unix::fs::symlink;

    let (_pg, ws, id) = shop();
    let id_etc = files_backup(&ws);
    let out = |name: &str| ws.path().join(name);
    let arg = |p: &Path| p.to_str().unwrap().to_string();

    // A regular file left by a killed restore.
    std::fs::write(out("left.dump.drctl-partial"), b"half a dump").unwrap();
    // A link to a file that exists, and one to a file that does not.
    std::fs::write(out("victim"), b"not drctl's").unwrap();
    symlink(out("victim"), out("linked.dump.drctl-partial")).unwrap();
    symlink(out("elsewhere"), out("dangling.dump.drctl-partial")).unwrap();
    for name in ["left.dump", "linked.dump", "dangling.dump"] {
        let partial = format!("{name}.drctl-partial");
        let err = ws.fails(
            &[
                "restore",
                "shop",
                "--to",
                "latest",
                "--output",
                &arg(&out(name)),
            ],
            3,
        );
        assert_mentions(&err, &out(&partial).display().to_string());
        assert_mentions(&err, "remove it");
        assert!(!out(name).exists(), "{name} was created");
    }
    assert_eq!(
        std::fs::read(out("left.dump.drctl-partial")).unwrap(),
        b"half a dump"
    );
    assert_eq!(std::fs::read(out("victim")).unwrap(), b"not drctl's");
    assert!(!out("elsewhere").exists(), "drctl wrote through a link");
    for link in ["linked.dump.drctl-partial", "dangling.dump.drctl-partial"] {
        assert!(
            std::fs::symlink_metadata(out(link))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{link} is no longer the link it was"
        );
    }

    // The same for --into: a link to a directory, and a leftover directory.
    std::fs::create_dir(out("other-dir")).unwrap();
    std::fs::write(out("other-dir/keep.txt"), b"keep").unwrap();
    symlink(out("other-dir"), out("linked-dir.drctl-partial")).unwrap();
    std::fs::create_dir(out("left-dir.drctl-partial")).unwrap();
    std::fs::write(out("left-dir.drctl-partial/hosts"), b"half").unwrap();
    for name in ["linked-dir", "left-dir"] {
        let err = ws.fails(
            &[
                "restore",
                "etc",
                "--to",
                "latest",
                "--into",
                &arg(&out(name)),
            ],
            3,
        );
        assert_mentions(
            &err,
            &out(&format!("{name}.drctl-partial")).display().to_string(),
        );
        assert_mentions(&err, "remove it");
        assert!(!out(name).exists(), "{name} was created");
    }
    assert_eq!(
        dir_listing(&out("other-dir")),
        vec![("keep.txt".to_string(), b"keep".to_vec())]
    );
    assert_eq!(
        dir_listing(&out("left-dir.drctl-partial")),
        vec![("hosts".to_string(), b"half".to_vec())]
    );

    assert_intact(&ws, "shop", &[id]);
    assert_intact(&ws, "etc", &[id_etc]);
}

/// chrono reads an unknown `TZ` as UTC (or the system's zone), which would
/// silently move a `--to` local time by hours.
#[test]
fn an_unknown_tz_is_refused_for_local_times() {
    let (_pg, mut ws, id) = shop();
    ws.set_env("TZ", "Bogus/Zone");
    let output = ws.path().join("shop.dump");
    let err = ws.fails(
        &[
            "restore",
            "shop",
            "--to",
            "2026-01-01 10:00",
            "--output",
            output.to_str().unwrap(),
        ],
        2,
    );
    assert_mentions(&err, "TZ");
    assert_mentions(&err, "Bogus/Zone");
    assert_mentions(&err, "Europe/Berlin");
    assert!(!output.exists(), "the output file was created");
    assert!(!ws.path().join("shop.dump.drctl-partial").exists());

    let err = ws.fails(&["report", "--since", "2026-01-01"], 2);
    assert_mentions(&err, "TZ");
    assert_mentions(&err, "Bogus/Zone");

    // Times that do not need the local zone still work.
    ws.ok(&[
        "restore",
        "shop",
        "--to",
        "latest",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(output.exists());
    assert_intact(&ws, "shop", &[id]);
}

#[test]
fn an_invalid_bucket_name_is_refused_by_check_with_its_line() {
    let ws = Workspace::local();
    let good = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    for bucket in [
        "bad bucket",
        "Upper",
        "ab",
        "-dash",
        "dot.",
        &"a".repeat(64),
    ] {
        ws.write(
            "drctl.toml",
            &repo_toml(&ws, &format!("url = \"s3://{bucket}/x\"")),
        );
        for args in [&["check"][..], &["list"][..]] {
            let err = ws.fails(args, 2);
            assert_mentions(&err, "drctl.toml:2");
            assert_mentions(&err, &format!("`{bucket}`"));
            assert_mentions(&err, "3 to 63");
        }
    }
    ws.write("drctl.toml", &good);
    ws.ok(&["check"]);
}

/// The cron crate says "Minutes must be less than 59" for 60, although 59 is
/// valid; the message must say what the field takes.
#[test]
fn an_out_of_range_schedule_field_says_what_is_valid() {
    let ws = Workspace::local();
    let id = files_backup(&ws);
    let good = std::fs::read_to_string(ws.path().join("policies/etc.toml")).unwrap();
    let cases = [
        ("60 3 * * *", "minute", "0-59"),
        ("0 24 * * *", "hour", "0-23"),
        ("0 3 32 * *", "day of month", "1-31"),
        ("0 3 * 13 *", "month", "1-12"),
        ("0 3 * * 8", "day of week", "0-7"),
    ];
    for (expr, field, range) in cases {
        ws.write(
            "policies/etc.toml",
            &format!("{good}[schedule]\nbackup = \"{expr}\"\n"),
        );
        let err = ws.fails(&["check"], 2);
        assert_mentions(&err, "policies/etc.toml:5");
        assert_mentions(&err, field);
        assert_mentions(&err, range);
        assert!(!err.contains("less than"), "{err}");
    }
    ws.write("policies/etc.toml", &good);
    assert_intact(&ws, "etc", &[id]);
}
