//! One job per policy at a time (DESIGN invariant 6): the lease at
//! `locks/<policy>`, on a local directory and on a versioned S3 bucket.
//!
//! A live lease held elsewhere refuses a backup and is left alone; an expired
//! one is taken over and removed afterwards; two backups started together
//! end with exactly one backup and one refusal.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::thread;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::Value;

use common::workspace::{Backend, COMMAND_TIMEOUT, Workspace};
use common::{FaultProxy, Faults, Postgres, S3Op, S3Server, block_on, unique_bucket_name};

/// Where the workspace puts the repository inside the bucket.
const S3_PREFIX: &str = "drctl";
/// `ExitCode::Refused`.
const EXIT_REFUSED: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Local,
    S3,
}

/// A workspace on `kind`, with for S3 its own moto server and versioned bucket.
struct World {
    s3: Option<(S3Server, String)>,
    ws: Workspace,
}

impl World {
    fn new(kind: Kind) -> World {
        match kind {
            Kind::Local => World {
                s3: None,
                ws: Workspace::new(Backend::Local),
            },
            Kind::S3 => {
                let server = S3Server::start();
                let bucket = unique_bucket_name("lease");
                block_on(server.create_bucket(&bucket, true));
                let ws = Workspace::new(Backend::S3 {
                    endpoint: server.endpoint(),
                    bucket: bucket.clone(),
                });
                World {
                    s3: Some((server, bucket)),
                    ws,
                }
            }
        }
    }

    /// Writes the repository object `key` behind drctl's back.
    fn put_object(&self, key: &str, body: &[u8]) {
        match &self.s3 {
            None => {
                let path = self.ws.repo_dir().join(key);
                std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
                std::fs::write(&path, body).unwrap_or_else(|e| panic!("write {key}: {e}"));
            }
            Some((server, bucket)) => {
                block_on(server.put_object(bucket, &format!("{S3_PREFIX}/{key}"), body.to_vec()))
            }
        }
    }

    /// The current bytes of `key`, or `None` if there is no such object.
    fn object(&self, key: &str) -> Option<Vec<u8>> {
        match &self.s3 {
            None => match std::fs::read(self.ws.repo_dir().join(key)) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("read {key}: {e}"),
            },
            Some((server, bucket)) => {
                let full = format!("{S3_PREFIX}/{key}");
                block_on(server.list_keys(bucket, &full))
                    .contains(&full)
                    .then(|| block_on(server.get_object(bucket, &full)))
            }
        }
    }

    /// Every object key under `prefix` (relative to the repository root).
    fn keys(&self, prefix: &str) -> Vec<String> {
        match &self.s3 {
            None => {
                let mut out = Vec::new();
                walk(&self.ws.repo_dir(), &self.ws.repo_dir(), &mut out);
                out.retain(|k| k.starts_with(prefix));
                out
            }
            Some((server, bucket)) => block_on(server.list_keys(bucket, &format!("{S3_PREFIX}/")))
                .into_iter()
                .map(|k| k[S3_PREFIX.len() + 1..].to_string())
                .filter(|k| k.starts_with(prefix))
                .collect(),
        }
    }

    /// What a failed or refused job must not leave behind: temporary files
    /// of the local store, open multipart uploads in the bucket.
    fn assert_no_leftovers(&self) {
        match &self.s3 {
            None => {
                let tmp = self.ws.repo_dir().join(".tmp");
                let left: Vec<_> = std::fs::read_dir(&tmp)
                    .map(|entries| entries.map(|e| e.expect("entry").file_name()).collect())
                    .unwrap_or_default();
                assert!(left.is_empty(), "temporary files left in {tmp:?}: {left:?}");
            }
            Some((server, bucket)) => assert_eq!(
                block_on(server.list_multipart_uploads(bucket)),
                0,
                "multipart uploads left open"
            ),
        }
    }

    /// On S3, how many versions (and delete markers) `key` has.
    fn versions(&self, key: &str) -> Option<usize> {
        let (server, bucket) = self.s3.as_ref()?;
        let full = format!("{S3_PREFIX}/{key}");
        Some(
            block_on(server.list_versions(bucket, &full))
                .iter()
                .filter(|v| v.key == full)
                .count(),
        )
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    out.sort();
}

fn lease_body(
    holder: &str,
    acquired_ago: chrono::Duration,
    expires_in: chrono::Duration,
) -> Vec<u8> {
    let now = Utc::now();
    serde_json::to_vec_pretty(&serde_json::json!({
        "holder": holder,
        "job": "backup",
        "acquired_at": (now - acquired_ago).to_rfc3339_opts(SecondsFormat::Secs, true),
        "expires_at": (now + expires_in).to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
    .expect("lease JSON")
}

/// A small files policy named `policy`; returns the directory it protects.
fn small_files_policy(ws: &Workspace, policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("app.conf"), b"listen = 127.0.0.1\n").expect("write");
    ws.files_policy(policy, &[dir.path()]);
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------
// 1. A live lease held elsewhere refuses the backup and is left alone.
// ---------------------------------------------------------------------------

fn live_lease_refuses_backup(kind: Kind) {
    let w = World::new(kind);
    let _source = small_files_policy(&w.ws, "conf");
    let lease = lease_body(
        "otherhost:1",
        chrono::Duration::minutes(2),
        chrono::Duration::hours(1),
    );
    w.put_object("locks/conf", &lease);
    let versions_before = w.versions("locks/conf");

    let err = w.ws.fails(&["backup", "conf"], EXIT_REFUSED);
    assert!(
        err.contains("otherhost:1"),
        "the refusal names the holder:\n{err}"
    );
    assert!(
        err.contains("policy `conf` is busy"),
        "the refusal names the policy:\n{err}"
    );

    assert!(w.ws.backups("conf").is_empty(), "no backup was listed");
    assert_eq!(
        w.keys("backups/"),
        Vec::<String>::new(),
        "nothing was written for a refused backup"
    );
    assert_eq!(
        w.object("locks/conf").as_deref(),
        Some(lease.as_slice()),
        "the lease is unchanged"
    );
    assert_eq!(
        w.versions("locks/conf"),
        versions_before,
        "the lease was not even rewritten with the same bytes"
    );
    w.assert_no_leftovers();

    // `backup --all` does not get past it either.
    let out = w.ws.run(&["backup", "--all"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "backup --all succeeded:\n{err}");
    assert!(err.contains("otherhost:1"), "{err}");
    assert!(w.ws.backups("conf").is_empty());
    assert_eq!(w.object("locks/conf").as_deref(), Some(lease.as_slice()));
}

// ---------------------------------------------------------------------------
// 2. An expired lease is taken over, and removed when the job ends.
// ---------------------------------------------------------------------------

fn expired_lease_is_taken_over(kind: Kind) {
    let w = World::new(kind);
    let _source = small_files_policy(&w.ws, "conf");
    w.put_object(
        "locks/conf",
        &lease_body(
            "otherhost:1",
            chrono::Duration::hours(2),
            -chrono::Duration::hours(1),
        ),
    );

    let id = w.ws.backup("conf");
    let listed: Vec<Value> = w.ws.backups("conf");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(
        w.object("locks/conf"),
        None,
        "the lease is removed when the backup ends"
    );
    assert_eq!(w.keys("locks/"), Vec::<String>::new());
    w.assert_no_leftovers();
    // And the next backup finds no lease at all.
    w.ws.backup("conf");
    assert_eq!(w.ws.backups("conf").len(), 2);
    assert_eq!(w.object("locks/conf"), None);
}

// ---------------------------------------------------------------------------
// 3. Two backups of one policy started together: one runs, one is refused.
// ---------------------------------------------------------------------------

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the hostname")
        .trim()
        .to_string()
}

fn concurrent_backups_one_wins(kind: Kind) {
    let mut w = World::new(kind);
    let pg = Postgres::start();
    pg.createdb("busy");
    // Enough incompressible text that a backup takes about a second: the
    // second process starts once the first holds the lease, well before it
    // can have finished.
    pg.psql(
        "busy",
        "CREATE EXTENSION pgcrypto; \
         CREATE TABLE noise(id int PRIMARY KEY, t text NOT NULL); \
         INSERT INTO noise SELECT g, encode(gen_random_bytes(768), 'base64') \
         FROM generate_series(1, 60000) g;",
    );
    w.ws.postgres_policy("busy", &pg, "busy");

    let spawn = || {
        let mut cmd = w.ws.cmd(&["backup", "busy", "--json"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("start drctl backup")
    };
    let a = spawn();
    common::wait_for(
        "the first backup to take the lease",
        Duration::from_secs(60),
        || (!w.keys("locks/").is_empty()).then_some(()),
    );
    let b = spawn();
    let pids = [a.id(), b.id()];
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| common::collect_within(a, "drctl backup", COMMAND_TIMEOUT));
        let b = s.spawn(|| common::collect_within(b, "drctl backup", COMMAND_TIMEOUT));
        (a.join().expect("join"), b.join().expect("join"))
    });
    let describe = |o: &Output| {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        )
    };
    let codes = [a.status.code(), b.status.code()];
    let (winner, loser, winner_pid) = match codes {
        [Some(0), Some(EXIT_REFUSED)] => (&a, &b, pids[0]),
        [Some(EXIT_REFUSED), Some(0)] => (&b, &a, pids[1]),
        _ => panic!(
            "expected one success and one refusal (exit {EXIT_REFUSED}), got {codes:?}\n=== first ===\n{}\n=== second ===\n{}",
            describe(&a),
            describe(&b)
        ),
    };
    let err = text(&loser.stderr);
    assert!(
        err.contains("policy `busy` is busy"),
        "the refusal says the policy is busy:\n{err}"
    );
    assert!(
        err.contains(&format!("{}:{winner_pid}", hostname())),
        "the refusal names the winner ({}:{winner_pid}) as the holder:\n{err}",
        hostname()
    );
    let result: Value = serde_json::from_slice(&winner.stdout)
        .unwrap_or_else(|e| panic!("backup --json prints JSON ({e}):\n{}", describe(winner)));
    let id = result["results"][0]["manifest"]["id"]
        .as_str()
        .expect("the winner's backup id");
    let listed = w.ws.backups("busy");
    assert_eq!(listed.len(), 1, "exactly one new backup: {listed:?}");
    assert_eq!(listed[0]["id"], id);
    assert_eq!(
        w.keys("backups/")
            .iter()
            .filter(|k| !k.starts_with(&format!("backups/busy/{id}/")))
            .collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "the refused job wrote nothing"
    );
    assert_eq!(w.object("locks/busy"), None, "the lease is gone afterwards");
    w.assert_no_leftovers();
    // The backup that won is whole.
    w.ws.ok(&["verify", "busy", "--read-data"]);
    // The password the workspace passes in PGPASSWORD appears nowhere.
    assert!(!err.contains(pg.password()), "{err}");
}

// ---------------------------------------------------------------------------
// 4. Answers lost on the way back from S3.
// ---------------------------------------------------------------------------

/// A lost answer makes the SDK send the same conditional write again, and
/// the retry is refused (412) when the first attempt was stored. drctl then
/// looks: a lease holding exactly what it sent is its own; anyone else's
/// still refuses the backup.
#[test]
fn lost_answers_to_lease_writes_s3() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("leaselost");
    block_on(s3.create_bucket(&bucket, true));
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket: bucket.clone(),
    });
    let _source = small_files_policy(&ws, "conf");
    let full = format!("{S3_PREFIX}/locks/conf");
    let current = || {
        block_on(s3.list_keys(&bucket, &full))
            .contains(&full)
            .then(|| block_on(s3.get_object(&bucket, &full)))
    };

    // Someone else's live lease: the refusal whose answer was lost is
    // still a refusal, and the lease is left as it was.
    let theirs = lease_body(
        "otherhost:1",
        chrono::Duration::minutes(2),
        chrono::Duration::hours(1),
    );
    block_on(s3.put_object(&bucket, &full, theirs.clone()));
    proxy.lose_response(S3Op::PutObject, "/locks/conf");
    let err = ws.fails(&["backup", "conf"], EXIT_REFUSED);
    assert!(err.contains("otherhost:1"), "{err}");
    assert_eq!(proxy.lost_responses(), 1);
    assert_eq!(current().as_deref(), Some(theirs.as_slice()));

    // An expired lease: the refused create and the takeover that replaced
    // it both lose their answers; the takeover is recognised as this job's.
    block_on(s3.put_object(
        &bucket,
        &full,
        lease_body(
            "otherhost:1",
            chrono::Duration::hours(2),
            -chrono::Duration::hours(1),
        ),
    ));
    proxy.lose_response(S3Op::PutObject, "/locks/conf");
    proxy.lose_response(S3Op::PutObject, "/locks/conf");
    ws.backup("conf");
    assert_eq!(proxy.lost_responses(), 3);
    assert_eq!(ws.backups("conf").len(), 1);
    assert_eq!(current(), None, "the lease is removed when the backup ends");

    // No lease: the create that lost its answer made this job's lease.
    proxy.lose_response(S3Op::PutObject, "/locks/conf");
    ws.backup("conf");
    assert_eq!(proxy.lost_responses(), 4);
    assert_eq!(ws.backups("conf").len(), 2);
    assert_eq!(current(), None, "the lease is removed when the backup ends");
}

// ---------------------------------------------------------------------------
// One test per (case, backend).
// ---------------------------------------------------------------------------

#[test]
fn live_lease_refuses_backup_local() {
    live_lease_refuses_backup(Kind::Local);
}

#[test]
fn live_lease_refuses_backup_s3() {
    live_lease_refuses_backup(Kind::S3);
}

#[test]
fn expired_lease_is_taken_over_local() {
    expired_lease_is_taken_over(Kind::Local);
}

#[test]
fn expired_lease_is_taken_over_s3() {
    expired_lease_is_taken_over(Kind::S3);
}

#[test]
fn concurrent_backups_one_wins_local() {
    concurrent_backups_one_wins(Kind::Local);
}

#[test]
fn concurrent_backups_one_wins_s3() {
    concurrent_backups_one_wins(Kind::S3);
}
