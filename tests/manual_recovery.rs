//! docs/manual-recovery.md works: backups made by drctl are recovered with
//! only `aws`, `sha256sum`, `age`, `zstd`, `createdb`/`pg_restore` and `tar`,
//! using the very command lines the document shows (each one is checked to
//! appear in it verbatim, so the document and this test cannot drift apart).
//! The manifest fields the document reads with `jq` are read here with
//! serde_json, and with the document's `jq` lines too when `jq` is installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::workspace::{Backend, Workspace};
use common::{Postgres, S3Server, block_on, output_within, s3_env, unique_bucket_name};
use sha2::{Digest, Sha256};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

// --- the document's commands, verbatim -----------------------------------------

const S3_FIND: &str = r#"aws "${EP[@]}" s3 ls --recursive "s3://$BUCKET/${P}backups/$POLICY/" | grep '/manifest.json$'"#;
const S3_GET_MANIFEST: &str =
    r#"aws "${EP[@]}" s3 cp "s3://$BUCKET/${P}backups/$POLICY/$ID/manifest.json" manifest.json"#;
const S3_DOWNLOAD: &str = "aws \"${EP[@]}\" s3api get-object --bucket \"$BUCKET\" --key \"$P$KEY\" \\\n  ${VERSION:+--version-id \"$VERSION\"} data.zst.age";
const CHECK_CIPHERTEXT: &str = r#"echo "$SHA256  data.zst.age" | sha256sum -c -"#;
const DECRYPT: &str = "age -d -i identity.age data.zst.age | zstd -d > data.plain";
const CHECK_PLAINTEXT: &str = r#"echo "$PLAIN_SHA256  data.plain" | sha256sum -c -"#;
const CREATEDB: &str =
    "createdb -h db1.example.internal -p 5432 -U postgres -T template0 orders_restored";
const PG_RESTORE: &str = "pg_restore --exit-on-error --single-transaction --no-password \\\n  -h db1.example.internal -p 5432 -U postgres -d orders_restored data.plain";
const S3_FINGERPRINT_DOWNLOAD: &str = "aws \"${EP[@]}\" s3api get-object --bucket \"$BUCKET\" --key \"$P$FKEY\" \\\n  ${FVERSION:+--version-id \"$FVERSION\"} fingerprint.zst.age";
const CHECK_FINGERPRINT: &str = r#"echo "$FSHA256  fingerprint.zst.age" | sha256sum -c -"#;
const DECRYPT_FINGERPRINT: &str = "age -d -i identity.age fingerprint.zst.age | zstd -d";
const S3_JQ_FIELDS: &str = r#"KEY=$(jq -r .data.key manifest.json)
VERSION=$(jq -r '.data.version_id // empty' manifest.json)
SHA256=$(jq -r .data.sha256 manifest.json)
PLAIN_SHA256=$(jq -r .data.plaintext_sha256 manifest.json)"#;

const LOCAL_FIND: &str = r#"ls "$REPO"/backups/"$POLICY"/*/manifest.json"#;
const LOCAL_MANIFEST: &str = r#"M="$REPO/backups/$POLICY/$ID/manifest.json""#;
const LOCAL_JQ_FIELDS: &str = r#"KEY=$(jq -r .data.key "$M")
SHA256=$(jq -r .data.sha256 "$M")
PLAIN_SHA256=$(jq -r .data.plaintext_sha256 "$M")"#;
const LOCAL_CHECK_CIPHERTEXT: &str = r#"echo "$SHA256  $REPO/$KEY" | sha256sum -c -"#;
const LOCAL_DECRYPT: &str = r#"age -d -i identity.age "$REPO/$KEY" | zstd -d > data.plain"#;
const UNTAR: &str = "mkdir restored\ntar -x -p --numeric-owner -f data.plain -C restored";

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/manual-recovery.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_in_doc(doc: &str, commands: &[&str]) {
    for c in commands {
        assert!(
            doc.contains(c),
            "docs/manual-recovery.md no longer shows this command; update the document or this test:\n{c}"
        );
    }
}

// --- running them ------------------------------------------------------------------

/// A recovery session: an empty directory holding a copy of the identity,
/// and the environment an operator would have (no drctl on PATH).
struct Session {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Shell variable assignments run before every step.
    vars: String,
}

impl Session {
    fn new(ws: &Workspace) -> Session {
        let dir = tempfile::tempdir().expect("recovery dir");
        std::fs::copy(
            ws.path().join("identity.age"),
            dir.path().join("identity.age"),
        )
        .expect("copy the identity");
        let path = format!(
            "{PG_BIN}:{}",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        let mut env: Vec<(String, String)> = s3_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.push(("PATH".into(), path));
        Session {
            dir,
            env,
            vars: String::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn set(&mut self, assignment: &str) {
        self.vars.push_str(assignment);
        self.vars.push('\n');
    }

    /// Runs `script` with bash, `set -euo pipefail`, after the variables.
    fn run(&self, script: &str) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("set -euo pipefail\n{}{script}", self.vars))
            .current_dir(self.path())
            .env_remove("DRCTL_CONFIG")
            .env_remove("DRCTL_IDENTITY");
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        output_within(&mut cmd, b"", STEP_TIMEOUT)
    }

    /// Runs and asserts success; returns stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "step failed ({})\n--- script ---\n{script}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn has(program: &str) -> bool {
        Command::new("bash")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

fn sha256_file(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(Sha256::digest(&data))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The object fields the document reads from a manifest.
struct Record {
    key: String,
    version_id: Option<String>,
    sha256: String,
    plaintext_sha256: String,
}

fn record(manifest: &serde_json::Value, which: &str) -> Record {
    let r = &manifest[which];
    let s = |f: &str| {
        r[f].as_str()
            .unwrap_or_else(|| panic!("manifest {which}.{f} missing: {manifest}"))
            .to_string()
    };
    Record {
        key: s("key"),
        version_id: r["version_id"].as_str().map(str::to_string),
        sha256: s("sha256"),
        plaintext_sha256: s("plaintext_sha256"),
    }
}

const ORDERS_QUERY: &str = "SELECT count(*), sum(id), md5(string_agg(id || ':' || note || ':' || placed_at, ',' ORDER BY id)) FROM orders";

#[test]
fn database_recovered_from_s3_with_aws_age_zstd_and_pg_restore() {
    let doc = doc();
    assert_in_doc(
        &doc,
        &[
            S3_FIND,
            S3_GET_MANIFEST,
            S3_JQ_FIELDS,
            S3_DOWNLOAD,
            CHECK_CIPHERTEXT,
            DECRYPT,
            CHECK_PLAINTEXT,
            CREATEDB,
            PG_RESTORE,
            S3_FINGERPRINT_DOWNLOAD,
            CHECK_FINGERPRINT,
            DECRYPT_FINGERPRINT,
            "P=drctl/",
            "EP=(--endpoint-url https://s3.example.com)",
        ],
    );

    let pg = Postgres::start();
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("manual-recovery");
    block_on(s3.create_bucket(&bucket, true));
    let mut ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: bucket.clone(),
    });
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders(id int PRIMARY KEY, note text, placed_at timestamptz);
         INSERT INTO orders SELECT g, 'note ' || g, timestamptz '2026-11-01 00:00+00' + g * interval '1 minute' FROM generate_series(1, 500) g;",
    );
    ws.postgres_policy("shop", &pg, "shop");
    let first = ws.backup("shop");
    // Ids carry the start second; the document's "last line is the newest"
    // needs the two backups in different seconds.
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql(
        "shop",
        "INSERT INTO orders SELECT g, 'later ' || g, now() FROM generate_series(501, 700) g;
         UPDATE orders SET note = 'changed' WHERE id = 7;",
    );
    let newest = ws.backup("shop");
    assert!(newest > first, "{newest} should sort after {first}");
    let expected = pg.psql("shop", ORDERS_QUERY);
    assert!(expected.starts_with("700|"), "{expected}");

    let mut rec = Session::new(&ws);
    rec.set(&format!("BUCKET={}", shell_quote(&bucket)));
    rec.set("P=drctl/");
    rec.set("POLICY=shop");
    rec.set(&format!(
        "EP=(--endpoint-url {})",
        shell_quote(&s3.endpoint())
    ));

    // 1. Find the backup: the last manifest listed is the newest.
    let listing = rec.ok(S3_FIND);
    let keys: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        keys,
        [
            format!("drctl/backups/shop/{first}/manifest.json"),
            format!("drctl/backups/shop/{newest}/manifest.json")
        ],
        "{listing}"
    );
    let id = keys
        .last()
        .unwrap()
        .split('/')
        .nth(3)
        .expect("id in the key")
        .to_string();
    rec.set(&format!("ID={}", shell_quote(&id)));

    // 2. Read its manifest.
    rec.ok(S3_GET_MANIFEST);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(rec.path().join("manifest.json")).expect("manifest.json downloaded"),
    )
    .expect("manifest.json is JSON");
    assert_eq!(manifest["id"], id.as_str());
    let data = record(&manifest, "data");
    let print = record(&manifest, "fingerprint");
    let version = data
        .version_id
        .clone()
        .expect("a versioned bucket records the data object's version id");
    if Session::has("jq") {
        let got = rec.ok(&format!(
            "{S3_JQ_FIELDS}\nprintf '%s\\n' \"$KEY\" \"$VERSION\" \"$SHA256\" \"$PLAIN_SHA256\""
        ));
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            [
                data.key.as_str(),
                version.as_str(),
                data.sha256.as_str(),
                data.plaintext_sha256.as_str()
            ],
            "the document's jq lines read other values than the manifest holds"
        );
    } else {
        eprintln!("jq is not installed; reading the manifest with serde_json only");
    }
    rec.set(&format!("KEY={}", shell_quote(&data.key)));
    rec.set(&format!("VERSION={}", shell_quote(&version)));
    rec.set(&format!("SHA256={}", shell_quote(&data.sha256)));
    rec.set(&format!(
        "PLAIN_SHA256={}",
        shell_quote(&data.plaintext_sha256)
    ));

    // Something is put over the data key after the backup. Without the version
    // id the download is that, and the checksum step catches it.
    block_on(s3.put_object(
        &bucket,
        &format!("drctl/{}", data.key),
        b"not what the backup stored".to_vec(),
    ));
    let unversioned = rec.run(&format!(
        "aws \"${{EP[@]}}\" s3api get-object --bucket \"$BUCKET\" --key \"$P$KEY\" data.zst.age >/dev/null\n{CHECK_CIPHERTEXT}"
    ));
    assert!(
        !unversioned.status.success()
            && String::from_utf8_lossy(&unversioned.stdout).contains("data.zst.age: FAILED"),
        "sha256sum -c accepted the wrong object:\n{}\n{}",
        String::from_utf8_lossy(&unversioned.stdout),
        String::from_utf8_lossy(&unversioned.stderr)
    );
    std::fs::remove_file(rec.path().join("data.zst.age")).expect("remove the wrong download");

    // 3 and 4. Download the exact version, check, decrypt, decompress, check.
    let checked = rec.ok(&format!(
        "{S3_DOWNLOAD} >/dev/null\n{CHECK_CIPHERTEXT}\n{DECRYPT}\n{CHECK_PLAINTEXT}"
    ));
    assert!(checked.contains("data.zst.age: OK"), "{checked}");
    assert!(checked.contains("data.plain: OK"), "{checked}");
    assert_eq!(sha256_file(&rec.path().join("data.zst.age")), data.sha256);
    assert_eq!(
        sha256_file(&rec.path().join("data.plain")),
        data.plaintext_sha256
    );

    // 5. Restore into a new database with createdb and pg_restore.
    rec.env.push(("PGPASSWORD".into(), pg.password().into()));
    let port = pg.port().to_string();
    let local = |cmd: &str| {
        cmd.replace("db1.example.internal", pg.host())
            .replace("5432", &port)
            .replace("orders_restored", "shop_manual")
    };
    rec.ok(&format!("{}\n{}", local(CREATEDB), local(PG_RESTORE)));
    assert_eq!(
        pg.psql("shop_manual", ORDERS_QUERY),
        expected,
        "the manually restored database differs from the source"
    );

    // 6. The fingerprint, fetched and checked the same way.
    rec.set(&format!("FKEY={}", shell_quote(&print.key)));
    rec.set(&format!(
        "FVERSION={}",
        shell_quote(print.version_id.as_deref().unwrap_or(""))
    ));
    rec.set(&format!("FSHA256={}", shell_quote(&print.sha256)));
    let out = rec.ok(&format!(
        "{S3_FINGERPRINT_DOWNLOAD} >/dev/null\n{CHECK_FINGERPRINT}\n{DECRYPT_FINGERPRINT} > fingerprint.json"
    ));
    assert!(out.contains("fingerprint.zst.age: OK"), "{out}");
    let json = std::fs::read(rec.path().join("fingerprint.json")).expect("fingerprint.json");
    assert_eq!(hex::encode(Sha256::digest(&json)), print.plaintext_sha256);
    let fp: serde_json::Value = serde_json::from_slice(&json).expect("fingerprint is JSON");
    let orders = fp["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["schema"] == "public" && t["table"] == "orders")
        .unwrap_or_else(|| panic!("no public.orders in the fingerprint: {fp}"));
    assert_eq!(orders["rows"], 700, "{fp}");
    assert_eq!(
        pg.psql("shop_manual", "SELECT count(*) FROM public.orders"),
        orders["rows"].to_string(),
        "the fingerprint's row count matches the manually restored table"
    );
    assert!(
        orders["hash"].is_u64(),
        "the row hash is a 64-bit number: {fp}"
    );
    assert!(
        orders["columns"].is_string(),
        "the COPY column list is recorded: {fp}"
    );
}

#[test]
fn files_recovered_from_a_local_directory_with_age_zstd_and_tar() {
    let doc = doc();
    assert_in_doc(
        &doc,
        &[
            LOCAL_FIND,
            LOCAL_MANIFEST,
            LOCAL_JQ_FIELDS,
            LOCAL_CHECK_CIPHERTEXT,
            LOCAL_DECRYPT,
            CHECK_PLAINTEXT,
            UNTAR,
        ],
    );

    let src = tempfile::tempdir().expect("source dir");
    let conf = src.path().join("nginx");
    std::fs::create_dir_all(conf.join("sites-available")).unwrap();
    std::fs::write(conf.join("nginx.conf"), "worker_processes 4;\n").unwrap();
    std::fs::write(
        conf.join("sites-available/default"),
        "server { listen 80; }\n",
    )
    .unwrap();
    std::fs::create_dir(conf.join("sites-enabled")).unwrap();
    std::os::unix::fs::symlink(
        "../sites-available/default",
        conf.join("sites-enabled/default"),
    )
    .unwrap();
    let secret = conf.join("htpasswd");
    std::fs::write(&secret, "admin:$apr1$x$y\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let ws = Workspace::local();
    ws.files_policy("nginx", &[&conf]);
    let id = ws.backup("nginx");

    let mut rec = Session::new(&ws);
    rec.set(&format!(
        "REPO={}",
        shell_quote(&ws.repo_dir().display().to_string())
    ));
    rec.set("POLICY=nginx");
    let listing = rec.ok(LOCAL_FIND);
    let newest = PathBuf::from(listing.lines().last().expect("a manifest is listed"));
    assert_eq!(
        newest,
        ws.repo_dir()
            .join(format!("backups/nginx/{id}/manifest.json"))
    );
    rec.set(&format!("ID={}", shell_quote(&id)));
    rec.set(LOCAL_MANIFEST);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&newest).unwrap()).expect("manifest is JSON");
    assert_eq!(manifest["kind"], "files");
    let data = record(&manifest, "data");
    assert_eq!(data.version_id, None, "a local repository has no versions");
    if Session::has("jq") {
        let got = rec.ok(&format!(
            "{LOCAL_JQ_FIELDS}\nprintf '%s\\n' \"$KEY\" \"$SHA256\" \"$PLAIN_SHA256\""
        ));
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            [
                data.key.as_str(),
                data.sha256.as_str(),
                data.plaintext_sha256.as_str()
            ]
        );
    }
    rec.set(&format!("KEY={}", shell_quote(&data.key)));
    rec.set(&format!("SHA256={}", shell_quote(&data.sha256)));
    rec.set(&format!(
        "PLAIN_SHA256={}",
        shell_quote(&data.plaintext_sha256)
    ));

    let out = rec.ok(&format!(
        "{LOCAL_CHECK_CIPHERTEXT}\n{LOCAL_DECRYPT}\n{CHECK_PLAINTEXT}\n{UNTAR}"
    ));
    assert!(out.contains(": OK\n"), "{out}");
    assert!(out.contains("data.plain: OK"), "{out}");

    // Entry names are the absolute paths without the leading `/`.
    let restored = rec
        .path()
        .join("restored")
        .join(conf.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read_to_string(restored.join("nginx.conf")).unwrap(),
        "worker_processes 4;\n"
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("sites-available/default")).unwrap(),
        "server { listen 80; }\n"
    );
    assert_eq!(
        std::fs::read_link(restored.join("sites-enabled/default")).unwrap(),
        PathBuf::from("../sites-available/default")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(restored.join("htpasswd"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
}
