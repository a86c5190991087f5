//! Faults: damaged objects, processes killed mid-backup, and an S3 endpoint
//! that throttles, drops connections and loses answers.
//!
//! What must hold (docs/ARCHITECTURE.md, invariants 1 and 3): a damaged object gives an
//! integrity error (exit 4) naming it and never a partial restore; a backup
//! that dies at any moment leaves nothing that `list` or `restore` treat as a
//! backup, no multipart upload left open when drctl could abort it, and the
//! older backups intact; transient S3 errors are retried.
//!
//! Sizes: the "big" database of the kill tests is about 135 MB of poorly
//! compressible text, so that a backup runs for a second or two and, on S3,
//! opens a multipart upload (parts of 5 MiB and more) well before it ends.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::workspace::{Backend, COMMAND_TIMEOUT, Workspace};
use common::{
    FaultProxy, Faults, Postgres, S3Op, S3Server, block_on, unique_bucket_name, wait_for,
};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_mentions(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected the message to mention {needle:?}; it was:\n{haystack}"
    );
}

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

fn ids(ws: &Workspace, policy: &str) -> Vec<String> {
    ws.backups(policy)
        .iter()
        .map(|b| b["id"].as_str().expect("backup id").to_string())
        .collect()
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

/// Where a workspace's repository lives, to reach past drctl to its objects.
enum Objects<'a> {
    Local(PathBuf),
    S3 { s3: &'a S3Server, bucket: String },
}

impl Objects<'_> {
    /// Workspace repositories on S3 live under the prefix `drctl/`.
    fn full(key: &str) -> String {
        format!("drctl/{key}")
    }

    fn read(&self, key: &str) -> Vec<u8> {
        match self {
            Objects::Local(root) => std::fs::read(root.join(key)).expect("read object"),
            Objects::S3 { s3, bucket } => block_on(s3.get_object(bucket, &Self::full(key))),
        }
    }

    fn write(&self, key: &str, bytes: Vec<u8>) {
        match self {
            Objects::Local(root) => std::fs::write(root.join(key), bytes).expect("write object"),
            Objects::S3 { s3, bucket } => block_on(s3.put_object(bucket, &Self::full(key), bytes)),
        }
    }

    fn delete(&self, key: &str) {
        match self {
            Objects::Local(root) => std::fs::remove_file(root.join(key)).expect("delete object"),
            Objects::S3 { s3, bucket } => {
                block_on(
                    s3.client()
                        .delete_object()
                        .bucket(bucket)
                        .key(Self::full(key))
                        .send(),
                )
                .expect("delete object");
            }
        }
    }

    fn exists(&self, key: &str) -> bool {
        match self {
            Objects::Local(root) => root.join(key).exists(),
            Objects::S3 { s3, bucket } => block_on(s3.list_keys(bucket, &Self::full(key)))
                .iter()
                .any(|k| *k == Self::full(key)),
        }
    }
}

/// A drctl command running in the background.
struct Running {
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let mut out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        Running {
            child: Some(child),
            stdout: Some(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = out.read_to_end(&mut buf);
                buf
            })),
            stderr: Some(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf);
                buf
            })),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped (we hold it), so
        // the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Whether it has exited (and then it stays reaped).
    fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))))
    }

    /// Waits for exit, reaps the process, and returns what it printed and
    /// how long the wait took.
    fn wait_within(mut self, timeout: Duration) -> (Output, Duration) {
        let started = Instant::now();
        let mut child = self.child.take().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                let err = self.stderr.take().unwrap().join().unwrap_or_default();
                panic!(
                    "drctl did not exit within {timeout:?}\n--- stderr ---\n{}",
                    text(&err)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let waited = started.elapsed();
        let output = Output {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap_or_default(),
            stderr: self.stderr.take().unwrap().join().unwrap_or_default(),
        };
        (output, waited)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pids of the processes named `name` whose parent is `parent`, from /proc.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if comm == name && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// A database `shop` with 100 orders, and one small backup of it taken
/// before `noise` makes it big.
const SMALL_SQL: &str = "CREATE TABLE orders(id int PRIMARY KEY, note text); \
     INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 100) g;";

/// Rows in one block of [`add_noise`]: about 5.6 MB in the dump.
const NOISE_BLOCK_ROWS: u32 = 40_000;

/// Adds table `noise`: `blocks` copies of one block of base64 text made
/// from sha256 digests (about 140 bytes a row in the dump, of which zstd
/// saves only a quarter). Hashing is the slow part, so it is done once; a
/// copy repeats 5.6 MB further on, beyond zstd's 2 MiB window at the level
/// drctl uses, so the repetition does not compress either.
fn add_noise(pg: &Postgres, db: &str, blocks: u32) {
    pg.psql(
        db,
        &format!(
            "CREATE TABLE noise(id int, payload text); \
             CREATE TEMP TABLE block AS SELECT g AS n, encode(sha256(('a' || g)::bytea) \
               || sha256(('b' || g)::bytea) || sha256(('c' || g)::bytea), 'base64') AS payload \
               FROM generate_series(1, {NOISE_BLOCK_ROWS}) g; \
             DO $$ BEGIN FOR r IN 0..{last} LOOP \
               INSERT INTO noise SELECT r * {NOISE_BLOCK_ROWS} + n, payload FROM block ORDER BY n; \
             END LOOP; END $$;",
            last = blocks - 1
        ),
    );
}

/// Blocks of `noise` for the kill tests: about 135 MB in the dump, 100 MB
/// stored, a backup of a second or two. The test strikes once the data object
/// is being written (8 MiB stored locally; on S3 once the multipart upload
/// is open, which happens only when the second part is full, as the first is
/// held back). pg_dump is still running then only if it has more to write
/// than drctl buffers (the channel, zstd's jobs, the parts in flight): that
/// is what the size is for.
const BIG_BLOCKS: u32 = 24;

/// A fingerprint of the `noise` table's content.
fn noise_digest(pg: &Postgres, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(*) || ':' || md5(string_agg(payload, '' ORDER BY id)) FROM noise",
    )
}

/// The small backup restores (with its fingerprint checked) to the 100
/// orders, without the big table that was added after it.
fn assert_small_backup_restores(ws: &Workspace, pg: &Postgres, small: &str, into: &str) {
    let target = pg.url(into);
    ws.ok(&[
        "restore", "shop", "--backup", small, "--target", &target, "--yes", "--verify",
    ]);
    assert_eq!(
        pg.psql(into, "SELECT count(*), sum(id) FROM orders"),
        "100|5050"
    );
    assert_eq!(
        pg.psql(
            into,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'noise'"
        ),
        "0"
    );
}

/// pg_dump connections still open on `pg`; a killed job must not leave one.
fn wait_for_no_pg_dump(pg: &Postgres) {
    wait_for("pg_dump to be gone", Duration::from_secs(20), || {
        (pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'",
        ) == "0")
            .then_some(())
    });
}

/// The repository of a workspace, as a test watching a backup sees it.
enum Watch<'a> {
    Local(&'a Workspace),
    S3 { s3: &'a S3Server, bucket: &'a str },
}

impl Watch<'_> {
    /// Waits until the data object is being written: on S3 a multipart
    /// upload is open (so an abort has something to do); locally at least
    /// 8 MiB have reached the repository's temporary file.
    fn wait_mid_upload(&self, backup: &mut Running) {
        wait_for("the backup to be mid-upload", COMMAND_TIMEOUT, || {
            assert!(
                !backup.exited(),
                "the backup ended before the test could interrupt it"
            );
            let busy = match self {
                Watch::S3 { s3, bucket } => block_on(s3.list_multipart_uploads(bucket)) > 0,
                Watch::Local(ws) => std::fs::read_dir(ws.repo_dir().join(".tmp"))
                    .map(|entries| {
                        entries
                            .flatten()
                            .any(|e| e.metadata().is_ok_and(|m| m.len() >= 8 * 1024 * 1024))
                    })
                    .unwrap_or(false),
            };
            busy.then_some(())
        });
    }

    fn assert_no_open_upload(&self) {
        if let Watch::S3 { s3, bucket } = self {
            assert_eq!(
                block_on(s3.list_multipart_uploads(bucket)),
                0,
                "a multipart upload was left open in {bucket}"
            );
        }
    }

    fn lease_exists(&self, policy: &str) -> bool {
        match self {
            Watch::Local(ws) => ws.repo_dir().join("locks").join(policy).exists(),
            Watch::S3 { s3, bucket } => {
                !block_on(s3.list_keys(bucket, &format!("drctl/locks/{policy}"))).is_empty()
            }
        }
    }

    /// Keys of the run records (failed attempts) of `policy`, relative to
    /// the repository.
    fn run_records(&self, policy: &str) -> Vec<String> {
        match self {
            Watch::Local(ws) => {
                let mut keys: Vec<String> =
                    std::fs::read_dir(ws.repo_dir().join("runs").join(policy))
                        .map(|entries| {
                            entries
                                .flatten()
                                .map(|e| {
                                    format!("runs/{policy}/{}", e.file_name().to_string_lossy())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                keys.sort();
                keys
            }
            Watch::S3 { s3, bucket } => {
                block_on(s3.list_keys(bucket, &format!("drctl/runs/{policy}/")))
                    .into_iter()
                    .map(|k| k.trim_start_matches("drctl/").to_string())
                    .collect()
            }
        }
    }

    /// No manifest of any backup other than `keep`.
    fn assert_no_other_manifest(&self, keep: &str) {
        let keys: Vec<String> = match self {
            Watch::Local(ws) => {
                let dir = ws.repo_dir().join("backups/shop");
                std::fs::read_dir(&dir)
                    .map(|entries| {
                        entries
                            .flatten()
                            .filter(|e| e.path().join("manifest.json").exists())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Watch::S3 { s3, bucket } => block_on(s3.list_keys(bucket, "drctl/backups/shop/"))
                .into_iter()
                .filter(|k| k.ends_with("/manifest.json"))
                .map(|k| k.split('/').nth(3).unwrap_or_default().to_string())
                .collect(),
        };
        assert_eq!(
            keys,
            [keep],
            "a manifest was written for an interrupted backup"
        );
    }
}

fn s3_bucket(s3: &S3Server, prefix: &str, versioned: bool) -> String {
    let bucket = unique_bucket_name(prefix);
    block_on(s3.create_bucket(&bucket, versioned));
    bucket
}

// ---------------------------------------------------------------------------
// Damaged objects
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// One byte flipped in the middle of the data object.
    Flip,
    /// The data object without its last 100 bytes.
    Truncate,
    /// The data object gone.
    Delete,
    /// The manifest replaced by something that is not JSON.
    Manifest,
    /// The manifest's data key edited to climb out of its backup
    /// (`backups/escape/../../repo.json`).
    Escape,
    /// The manifest's data key edited to an absolute path.
    Absolute,
}

impl Damage {
    const ALL: [Damage; 6] = [
        Damage::Flip,
        Damage::Truncate,
        Damage::Delete,
        Damage::Manifest,
        Damage::Escape,
        Damage::Absolute,
    ];

    fn policy(self) -> &'static str {
        match self {
            Damage::Flip => "flip",
            Damage::Truncate => "truncate",
            Damage::Delete => "delete",
            Damage::Manifest => "manifest",
            Damage::Escape => "escape",
            Damage::Absolute => "absolute",
        }
    }

    /// The object the damage is done to, which every error must name.
    fn key(self, id: &str) -> String {
        let file = match self {
            Damage::Manifest | Damage::Escape | Damage::Absolute => "manifest.json",
            _ => "data.tar.zst.age",
        };
        format!("backups/{}/{id}/{file}", self.policy())
    }

    fn apply(self, objects: &Objects, id: &str) {
        let key = self.key(id);
        match self {
            Damage::Flip => {
                let mut bytes = objects.read(&key);
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x01;
                objects.write(&key, bytes);
            }
            Damage::Truncate => {
                let mut bytes = objects.read(&key);
                bytes.truncate(bytes.len() - 100);
                objects.write(&key, bytes);
            }
            Damage::Delete => objects.delete(&key),
            Damage::Manifest => objects.write(&key, b"{ this is not JSON".to_vec()),
            Damage::Escape | Damage::Absolute => {
                let mut manifest: serde_json::Value =
                    serde_json::from_slice(&objects.read(&key)).expect("the manifest is JSON");
                manifest["data"]["key"] = match self {
                    Damage::Escape => "backups/escape/../../repo.json".into(),
                    _ => "/etc/passwd".into(),
                };
                objects.write(&key, serde_json::to_vec(&manifest).expect("JSON"));
            }
        }
    }
}

/// One files backup per kind of damage plus an `intact` one, all of the same
/// ~600 KB of incompressible data (about ten of age's 64 KiB chunks).
fn damage_fixture(ws: &Workspace) -> Vec<(String, String)> {
    let src = ws.path().join("src");
    std::fs::create_dir_all(src.join("conf")).unwrap();
    std::fs::write(src.join("conf/blob.bin"), common::noise(600_000, 7)).unwrap();
    std::fs::write(src.join("conf/app.conf"), "listen = 8080\n").unwrap();
    let policies = Damage::ALL.iter().map(|d| d.policy()).chain(["intact"]);
    policies
        .map(|policy| {
            ws.files_policy(policy, &[&src]);
            (policy.to_string(), ws.backup(policy))
        })
        .collect()
}

fn check_damage_is_caught(ws: &Workspace, objects: &Objects) {
    let backups = damage_fixture(ws);
    let id_of = |policy: &str| {
        backups
            .iter()
            .find(|(p, _)| p == policy)
            .map(|(_, id)| id.clone())
            .expect("a backup of the policy")
    };
    for damage in Damage::ALL {
        damage.apply(objects, &id_of(damage.policy()));
    }

    for damage in Damage::ALL {
        let policy = damage.policy();
        let key = damage.key(&id_of(policy));
        let what = format!("{damage:?} ({key})");

        if matches!(damage, Damage::Manifest | Damage::Escape | Damage::Absolute) {
            // `list` shows the backup as damaged rather than hiding it.
            assert_mentions(&ws.ok(&["list", policy]), &key);
        }

        let output = ws.path().join(format!("restored-{policy}.tar"));
        let out = ws.run(&[
            "restore",
            policy,
            "--to",
            "latest",
            "--output",
            output.to_str().unwrap(),
        ]);
        let err = expect_exit(&out, 4, &format!("restore --output of {what}"));
        assert_mentions(&err, &key);
        assert!(!output.exists(), "{what}: an output file was left");
        assert!(
            !ws.path()
                .join(format!("restored-{policy}.tar.drctl-partial"))
                .exists(),
            "{what}: a .drctl-partial file was left"
        );

        let out = ws.run(&["verify", policy, "--read-data"]);
        let err = expect_exit(&out, 4, &format!("verify --read-data of {what}"));
        assert_mentions(&(text(&out.stdout) + &err), &key);

        // Without --read-data verify compares sizes only: it must see a
        // missing or shortened object and an unreadable manifest. (A
        // same-size flip needs --read-data.)
        if !matches!(damage, Damage::Flip) {
            let out = ws.run(&["verify", policy]);
            let err = expect_exit(&out, 4, &format!("verify of {what}"));
            assert_mentions(&(text(&out.stdout) + &err), &key);
        }
    }

    // The undamaged backup of the same data is untouched by all this.
    let intact = id_of("intact");
    assert_eq!(ids(ws, "intact"), [intact.as_str()]);
    ws.ok(&["verify", "intact", "--read-data"]);
    let output = ws.path().join("restored-intact.tar");
    ws.ok(&[
        "restore",
        "intact",
        "--to",
        "latest",
        "--output",
        output.to_str().unwrap(),
    ]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&objects.read(&format!("backups/intact/{intact}/manifest.json")))
            .expect("the manifest is JSON");
    assert_eq!(
        sha256_file(&output),
        manifest["data"]["plaintext_sha256"].as_str().unwrap()
    );
}

#[test]
fn damaged_objects_are_caught_in_a_local_repository() {
    let ws = Workspace::local();
    check_damage_is_caught(&ws, &Objects::Local(ws.repo_dir()));
}

/// On an unversioned bucket an overwrite replaces the only copy, so the
/// damage is what drctl reads. (On a versioned bucket the manifest pins the
/// version ids; see the next test.)
#[test]
fn damaged_objects_are_caught_in_an_unversioned_bucket() {
    let s3 = S3Server::start();
    let bucket = s3_bucket(&s3, "damage", false);
    let ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: bucket.clone(),
    });
    check_damage_is_caught(&ws, &Objects::S3 { s3: &s3, bucket });
}

/// On a versioned bucket the manifest records each object's version id and
/// restore reads that version (invariant 2): overwriting or deleting the key
/// changes nothing for the backup. Only removing the pinned version itself
/// damages it, and that is caught like a missing object.
#[test]
fn versioned_bucket_restores_the_pinned_versions_despite_overwrites() {
    let s3 = S3Server::start();
    let bucket = s3_bucket(&s3, "pinned", true);
    let ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: bucket.clone(),
    });
    let backups = damage_fixture(&ws);
    let id = &backups[0].1;
    let policy = &backups[0].0;
    let objects = Objects::S3 {
        s3: &s3,
        bucket: bucket.clone(),
    };
    let data_key = format!("backups/{policy}/{id}/data.tar.zst.age");
    let print_key = format!("backups/{policy}/{id}/fingerprint.json.zst.age");
    let manifest: serde_json::Value =
        serde_json::from_slice(&objects.read(&format!("backups/{policy}/{id}/manifest.json")))
            .unwrap();
    let pinned = manifest["data"]["version_id"]
        .as_str()
        .expect("the manifest pins the data object's version")
        .to_string();

    Damage::Flip.apply(&objects, id);
    objects.delete(&print_key);
    assert!(
        !objects.exists(&print_key),
        "the key is still listed after its delete"
    );

    ws.ok(&["verify", policy, "--read-data"]);
    let output = ws.path().join("pinned.tar");
    ws.ok(&[
        "restore",
        policy,
        "--to",
        "latest",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(
        sha256_file(&output),
        manifest["data"]["plaintext_sha256"].as_str().unwrap()
    );

    // Now remove the very version the manifest names.
    block_on(
        s3.client()
            .delete_object()
            .bucket(&bucket)
            .key(Objects::full(&data_key))
            .version_id(&pinned)
            .send(),
    )
    .expect("delete the pinned version");
    let output = ws.path().join("pinned-again.tar");
    let out = ws.run(&[
        "restore",
        policy,
        "--to",
        "latest",
        "--output",
        output.to_str().unwrap(),
    ]);
    let err = expect_exit(&out, 4, "restore of a backup whose pinned version is gone");
    assert_mentions(&err, &data_key);
    assert!(!output.exists());
    for args in [
        &["verify", policy][..],
        &["verify", policy, "--read-data"][..],
    ] {
        let out = ws.run(args);
        let err = expect_exit(&out, 4, &format!("drctl {args:?}"));
        assert_mentions(&(text(&out.stdout) + &err), &data_key);
    }
}

// ---------------------------------------------------------------------------
// Killed mid-backup
// ---------------------------------------------------------------------------

/// Database `shop` with a small backup, then made big, on either backend.
struct KillSetup {
    pg: Postgres,
    s3: Option<S3Server>,
    bucket: String,
    ws: Workspace,
    small: String,
}

impl KillSetup {
    fn new(on_s3: bool) -> KillSetup {
        let pg = Postgres::start();
        pg.createdb("shop");
        pg.psql("shop", SMALL_SQL);
        let (s3, bucket, mut ws) = if on_s3 {
            let s3 = S3Server::start();
            let bucket = s3_bucket(&s3, "killed", true);
            let ws = Workspace::new(Backend::S3 {
                endpoint: s3.endpoint(),
                bucket: bucket.clone(),
            });
            (Some(s3), bucket, ws)
        } else {
            (None, String::new(), Workspace::local())
        };
        ws.postgres_policy("shop", &pg, "shop");
        let small = ws.backup("shop");
        add_noise(&pg, "shop", BIG_BLOCKS);
        KillSetup {
            pg,
            s3,
            bucket,
            ws,
            small,
        }
    }

    fn watch(&self) -> Watch<'_> {
        match &self.s3 {
            Some(s3) => Watch::S3 {
                s3,
                bucket: &self.bucket,
            },
            None => Watch::Local(&self.ws),
        }
    }

    /// Starts `drctl backup shop` and returns once it is mid-upload.
    fn start_backup(&self) -> Running {
        let started = Instant::now();
        let mut backup = Running::start(self.ws.cmd(&["backup", "shop"]));
        self.watch().wait_mid_upload(&mut backup);
        eprintln!("the backup was mid-upload after {:?}", started.elapsed());
        backup
    }

    /// What every kill must leave: no manifest and no listed backup but the
    /// small one, no pg_dump still reading the database, the small backup
    /// restorable.
    fn assert_nothing_but_the_small_backup(&self, into: &str) {
        let watch = self.watch();
        watch.assert_no_other_manifest(&self.small);
        assert_eq!(
            ids(&self.ws, "shop"),
            [self.small.as_str()],
            "a backup of a killed job is listed"
        );
        wait_for_no_pg_dump(&self.pg);
        assert_small_backup_restores(&self.ws, &self.pg, &self.small, into);
    }
}

fn pg_dump_killed_mid_stream(on_s3: bool) {
    let t = KillSetup::new(on_s3);
    let backup = t.start_backup();
    let dumps = children_named(backup.pid(), "pg_dump");
    assert_eq!(
        dumps.len(),
        1,
        "expected one pg_dump child, found {dumps:?}"
    );
    // SAFETY: kill(2) on a pid just read from /proc as drctl's child; drctl
    // has not reaped it, since it is still reading its output.
    assert_eq!(
        unsafe { libc::kill(dumps[0] as libc::pid_t, libc::SIGKILL) },
        0
    );

    let (out, _) = backup.wait_within(COMMAND_TIMEOUT);
    assert!(
        !out.status.success(),
        "the backup succeeded although pg_dump was killed:\n{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert_mentions(&err, "pg_dump");
    assert_mentions(&err, "`shop`");

    let watch = t.watch();
    watch.assert_no_open_upload();
    assert!(
        !watch.lease_exists("shop"),
        "the failed backup kept its lease"
    );
    assert_eq!(
        watch.run_records("shop").len(),
        1,
        "a failed attempt leaves one run record"
    );
    t.assert_nothing_but_the_small_backup("shop_restored");
}

#[test]
fn pg_dump_killed_mid_stream_leaves_no_backup_local() {
    pg_dump_killed_mid_stream(false);
}

#[test]
fn pg_dump_killed_mid_stream_leaves_no_backup_s3() {
    pg_dump_killed_mid_stream(true);
}

/// SIGKILL gives drctl no chance to clean up: its lease stays behind (and on
/// S3 its multipart upload stays open until the bucket's lifecycle rule
/// removes it). The next backup must not be blocked for the lease's TTL:
/// drctl takes over a lease whose holder ran on this host and is gone.
fn drctl_killed_mid_backup(on_s3: bool) {
    let t = KillSetup::new(on_s3);
    let backup = t.start_backup();
    backup.signal(libc::SIGKILL);
    let (out, _) = backup.wait_within(Duration::from_secs(10));
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    }
    let watch = t.watch();
    assert!(
        watch.lease_exists("shop"),
        "premise: a drctl killed with SIGKILL leaves its lease behind"
    );
    t.assert_nothing_but_the_small_backup("shop_restored");

    let started = Instant::now();
    let out = t.ws.run(&["backup", "shop", "--json"]);
    eprintln!("the next backup took {:?}", started.elapsed());
    let err = expect_exit(&out, 0, "the backup after a killed one");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup --json");
    let next = v["results"][0]["manifest"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!err.contains("error"), "{err}");
    assert_eq!(ids(&t.ws, "shop"), [next, t.small.clone()]);
    assert!(!watch.lease_exists("shop"), "the lease was not released");
}

#[test]
fn drctl_killed_mid_backup_leaves_no_backup_and_does_not_block_the_next_local() {
    drctl_killed_mid_backup(false);
}

#[test]
fn drctl_killed_mid_backup_leaves_no_backup_and_does_not_block_the_next_s3() {
    drctl_killed_mid_backup(true);
}

/// SIGTERM asks the job to stop: it must abort its upload, write no
/// manifest, release its lease and exit within a few seconds.
fn drctl_terminated_mid_backup(on_s3: bool) {
    let t = KillSetup::new(on_s3);
    let backup = t.start_backup();
    backup.signal(libc::SIGTERM);
    let (out, waited) = backup.wait_within(Duration::from_secs(10));
    assert!(
        waited < Duration::from_secs(5),
        "drctl took {waited:?} to stop after SIGTERM\n{}",
        text(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "a terminated backup exited successfully:\n{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert_mentions(&err, "interrupted");

    let watch = t.watch();
    watch.assert_no_open_upload();
    assert!(
        !watch.lease_exists("shop"),
        "the stopped backup kept its lease"
    );
    assert_eq!(
        watch.run_records("shop"),
        Vec::<String>::new(),
        "a backup stopped on purpose is not a failed attempt"
    );
    t.assert_nothing_but_the_small_backup("shop_restored");
}

#[test]
fn drctl_terminated_mid_backup_stops_cleanly_local() {
    drctl_terminated_mid_backup(false);
}

#[test]
fn drctl_terminated_mid_backup_stops_cleanly_s3() {
    drctl_terminated_mid_backup(true);
}

// ---------------------------------------------------------------------------
// A flaky S3 endpoint
// ---------------------------------------------------------------------------

/// About 28 MB in the dump and 20 MB stored: at least three multipart parts.
const FLAKY_BLOCKS: u32 = 5;

#[test]
fn s3_throttling_and_dropped_connections_are_retried() {
    let pg = Postgres::start();
    let s3 = S3Server::start();
    let bucket = s3_bucket(&s3, "flaky", true);
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    pg.createdb("shop");
    add_noise(&pg, "shop", FLAKY_BLOCKS);
    let mut ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket: bucket.clone(),
    });
    ws.postgres_policy("shop", &pg, "shop");

    proxy.set_faults(Faults {
        slowdown_503: 0.10,
        drop_connection: 0.05,
        // A seed whose first decisions include both kinds of fault.
        seed: 18,
    });
    let started = Instant::now();
    let id = ws.backup("shop");
    eprintln!("backup through the fault proxy: {:?}", started.elapsed());
    let manifest_key = format!("drctl/backups/shop/{id}/manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&block_on(s3.get_object(&bucket, &manifest_key))).unwrap();
    let data_key = format!("drctl/{}", manifest["data"]["key"].as_str().unwrap());
    let head = block_on(
        s3.client()
            .head_object()
            .bucket(&bucket)
            .key(&data_key)
            .send(),
    )
    .expect("the data object is in the bucket");
    let parts: u32 = head
        .e_tag()
        .and_then(|etag| etag.trim_matches('"').rsplit_once('-'))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1);
    assert!(
        parts >= 3,
        "expected a multipart upload of several parts; ETag {:?}",
        head.e_tag()
    );

    let started = Instant::now();
    ws.ok(&["verify", "shop", "--read-data"]);
    eprintln!(
        "verify --read-data through the fault proxy: {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let dump = ws.path().join("shop.dump");
    ws.ok(&[
        "restore",
        "shop",
        "--to",
        "latest",
        "--output",
        dump.to_str().unwrap(),
    ]);
    eprintln!("restore through the fault proxy: {:?}", started.elapsed());
    assert_eq!(
        sha256_file(&dump),
        manifest["data"]["plaintext_sha256"].as_str().unwrap(),
        "the restored dump differs from what was backed up"
    );
    // And the dump holds the source's rows: load it without drctl.
    pg.createdb("shop_check");
    let mut pg_restore = Command::new("/usr/lib/postgresql/15/bin/pg_restore");
    pg_restore
        .args(["--exit-on-error", "--no-owner", "--dbname"])
        .arg(pg.url("shop_check"))
        .arg(&dump)
        .env("PGPASSWORD", pg.password());
    let out = common::output_within(&mut pg_restore, b"", COMMAND_TIMEOUT);
    expect_exit(&out, 0, "pg_restore of the restored dump");
    assert_eq!(noise_digest(&pg, "shop_check"), noise_digest(&pg, "shop"));

    eprintln!(
        "fault proxy: {} answered 503, {} dropped, {} forwarded",
        proxy.injected_503(),
        proxy.injected_drops(),
        proxy.forwarded()
    );
    assert!(
        proxy.injected_503() > 0 && proxy.injected_drops() > 0,
        "no faults were injected (503: {}, drops: {}, forwarded: {})",
        proxy.injected_503(),
        proxy.injected_drops(),
        proxy.forwarded()
    );
    assert_eq!(block_on(s3.list_multipart_uploads(&bucket)), 0);
    assert_eq!(ids(&ws, "shop"), [id]);
}

/// Every request is answered `503 SlowDown`, so the very first one (reading
/// `repo.json`) fails after all its attempts and nothing is written. drctl
/// makes `MAX_ATTEMPTS` attempts per request with jittered backoff from
/// 200 ms up to 20 s (src/storage/s3.rs); there is no setting to shorten it,
/// so this test waits for the whole backoff (about ten seconds with 6
/// attempts).
#[test]
fn s3_always_throttled_fails_cleanly_after_retries() {
    let s3 = S3Server::start();
    let bucket = s3_bucket(&s3, "throttled", true);
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket: bucket.clone(),
    });
    let src = ws.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("blob.bin"), common::noise(100_000, 3)).unwrap();
    ws.files_policy("etc", &[&src]);
    let id = ws.backup("etc");
    let keys_before = block_on(s3.list_keys(&bucket, ""));

    proxy.set_faults(Faults {
        slowdown_503: 1.0,
        ..Faults::none()
    });
    let started = Instant::now();
    let out = ws.run(&["backup", "etc"]);
    let took = started.elapsed();
    eprintln!("the always-throttled backup gave up after {took:?}");
    let err = expect_exit(&out, 5, "a backup against an always-throttling endpoint");
    assert_mentions(&err, "SlowDown");
    assert_mentions(&err, &bucket);
    assert_eq!(
        proxy.injected_503(),
        u64::from(drctl::storage::s3::MAX_ATTEMPTS),
        "drctl should give up after exactly its attempts of the first request"
    );

    // Checked against moto directly, not through the proxy.
    assert_eq!(block_on(s3.list_keys(&bucket, "")), keys_before);
    assert_eq!(block_on(s3.list_multipart_uploads(&bucket)), 0);
    proxy.set_faults(Faults::none());
    assert_eq!(ids(&ws, "etc"), [id]);
}

/// pg_dump exiting 0 after a short write (a full disk under a wrapper, a
/// signal eaten by a shell) must not become a listed, "good" backup that
/// pg_restore cannot read, even when the policy takes no fingerprint.
#[test]
fn pg_dump_exiting_0_after_a_truncated_archive_leaves_no_backup() {
    let pg = Postgres::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders(id int PRIMARY KEY, note text); \
         INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
    );
    let mut ws = Workspace::local();
    let bin = ws.path().join("short-pg_dump");
    std::fs::create_dir(&bin).expect("create bin dir");
    let wrapper = bin.join("pg_dump");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\n\
         if [ \"$1\" = --version ]; then exec /usr/lib/postgresql/15/bin/pg_dump \"$@\"; fi\n\
         /usr/lib/postgresql/15/bin/pg_dump \"$@\" | head -c 200000\n\
         exit 0\n",
    )
    .expect("write wrapper");
    let mut perms = std::fs::metadata(&wrapper).expect("wrapper").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).expect("chmod wrapper");
    ws.postgres_policy("shop", &pg, "shop");
    ws.write(
        "policies/shop.toml",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\nfingerprint = false\nbin_dir = \"{}\"\n",
            pg.url("shop"),
            bin.display()
        ),
    );
    let out = ws.run(&["backup", "shop"]);
    let err = expect_exit(&out, 1, "backup of a truncated archive");
    assert_mentions(&err, "not a complete archive");
    assert_mentions(&err, "`shop`");
    assert!(ids(&ws, "shop").is_empty(), "a truncated dump was listed");
    let mut left = Vec::new();
    let mut dirs = vec![ws.repo_dir().join("backups")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type().expect("file type").is_dir() {
                true => dirs.push(entry.path()),
                false => left.push(entry.path()),
            }
        }
    }
    assert!(left.is_empty(), "the failed backup left objects: {left:?}");
}

// ---------------------------------------------------------------------------
// Answers lost after the write was done
// ---------------------------------------------------------------------------

/// A files workspace on a versioned bucket reached through a fault proxy,
/// with one file of `size` incompressible bytes to back up.
fn lossy_world(prefix: &str, size: usize) -> (S3Server, String, FaultProxy, Workspace) {
    let s3 = S3Server::start();
    let bucket = s3_bucket(&s3, prefix, true);
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket: bucket.clone(),
    });
    let src = ws.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("blob.bin"), common::noise(size, 11)).unwrap();
    ws.files_policy("etc", &[&src]);
    (s3, bucket, proxy, ws)
}

/// Each create-only write (lease, data object, fingerprint, manifest) is
/// stored but its answer lost; the SDK's retry is then refused with 412
/// because the object exists. The object holds what was sent, so each
/// write is drctl's own and the backup goes on.
#[test]
fn lost_answers_to_create_only_writes_do_not_fail_the_backup() {
    let (s3, bucket, proxy, ws) = lossy_world("lostput", 100_000);
    for key in [
        "locks/etc",
        "/data.tar.zst.age",
        "/fingerprint.json.zst.age",
        "/manifest.json",
    ] {
        proxy.lose_response(S3Op::PutObject, key);
    }

    let id = ws.backup("etc");
    assert_eq!(proxy.lost_responses(), 4, "every planned loss happened");
    assert_eq!(ids(&ws, "etc"), [id]);
    ws.ok(&["verify", "etc", "--read-data"]);
    // The lease was recognised as this job's own and removed at its end.
    assert_eq!(
        block_on(s3.list_keys(&bucket, "drctl/locks/")),
        Vec::<String>::new()
    );
    assert_eq!(block_on(s3.list_multipart_uploads(&bucket)), 0);
}

/// A lost answer to CreateMultipartUpload makes the SDK start a second
/// upload; the first, known only to the bucket, is aborted when the backup
/// ends. A lost answer to CompleteMultipartUpload is recognised by the
/// object's size and multipart ETag.
#[test]
fn lost_answers_to_multipart_writes_leave_no_upload_open() {
    // Three parts of 6 MiB or less.
    let (s3, bucket, proxy, ws) = lossy_world("lostmpu", 14 * 1024 * 1024);
    proxy.lose_response(S3Op::CreateMultipartUpload, "/data.tar.zst.age");
    proxy.lose_response(S3Op::CompleteMultipartUpload, "/data.tar.zst.age");

    let id = ws.backup("etc");
    assert_eq!(proxy.lost_responses(), 2, "every planned loss happened");
    assert_eq!(
        block_on(s3.list_multipart_uploads(&bucket)),
        0,
        "the upload whose start was retried is still open"
    );
    assert_eq!(ids(&ws, "etc"), [id]);
    ws.ok(&["verify", "etc", "--read-data"]);
}
