//! `wal-push` and `wal-fetch` against real parts: the moto S3 server behind
//! the fault proxy (to take S3 down and bring it back), a local directory
//! repository, and a real PostgreSQL 15 whose `archive_command` is
//! `drctl wal-push`, under pgbench load.
//!
//! What is checked is PostgreSQL's contract and drctl's invariant 9: WAL
//! is reported archived only once it is stored, in the repository or
//! sealed in the local spool; a spool that is full makes `wal-push` fail
//! so that PostgreSQL keeps the WAL; and afterwards the archive has every
//! segment, without a gap.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::workspace::{Backend, COMMAND_TIMEOUT, Workspace};
use common::{
    FaultProxy, Faults, Postgres, S3Op, S3Server, block_on, output_within, unique_bucket_name,
    wait_for,
};

const POLICY: &str = "cluster";
/// Generous bounds for waits on PostgreSQL's archiver, which retries a
/// failed segment after a second and, after three failures, waits for the
/// next WAL switch or a minute.
const ARCHIVE_WAIT: Duration = Duration::from_secs(180);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every connection the proxy gets is closed without an answer: S3 is down.
fn s3_down() -> Faults {
    Faults {
        drop_connection: 1.0,
        ..Faults::none()
    }
}

/// A workspace with a `postgres-cluster` policy, a spool under the
/// workspace, and (for S3) moto behind a fault proxy.
struct Rig {
    ws: Workspace,
    s3: Option<(S3Server, FaultProxy, String)>,
}

impl Rig {
    fn new(on_s3: bool, wal_settings: &str) -> Rig {
        let (s3, backend) = if on_s3 {
            let s3 = S3Server::start();
            let bucket = unique_bucket_name("wal");
            block_on(s3.create_bucket(&bucket, false));
            let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
            let endpoint = proxy.endpoint();
            (
                Some((s3, proxy, bucket.clone())),
                Backend::S3 { endpoint, bucket },
            )
        } else {
            (None, Backend::Local)
        };
        let ws = Workspace::new(backend);
        let config = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
        ws.write(
            "drctl.toml",
            &format!("{config}\n[wal]\nspool_dir = \"spool\"\n{wal_settings}"),
        );
        // wal-push never connects to the database; the URL only has to parse.
        ws.write(
            &format!("policies/{POLICY}.toml"),
            "[source]\ntype = \"postgres-cluster\"\nurl = \"postgres://postgres@127.0.0.1:1/postgres\"\n",
        );
        Rig { ws, s3 }
    }

    fn proxy(&self) -> &FaultProxy {
        &self.s3.as_ref().expect("an S3 rig").1
    }

    fn queue_dir(&self) -> PathBuf {
        self.ws.path().join("spool").join(POLICY).join("queue")
    }

    /// Files waiting in the spool.
    fn spooled(&self) -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(self.queue_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Keys under `wal/<policy>/`, relative to the repository, sorted.
    fn wal_keys(&self) -> Vec<String> {
        match &self.s3 {
            Some((s3, _, bucket)) => {
                block_on(s3.list_keys(bucket, &format!("drctl/wal/{POLICY}/")))
                    .into_iter()
                    .map(|k| k.trim_start_matches("drctl/").to_string())
                    .collect()
            }
            None => {
                let root = self.ws.repo_dir();
                let mut keys = Vec::new();
                let mut stack = vec![root.join("wal")];
                while let Some(dir) = stack.pop() {
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        let path = entry.path();
                        if path.is_dir() {
                            stack.push(path);
                        } else {
                            let rel = path.strip_prefix(&root).unwrap();
                            keys.push(rel.to_string_lossy().into_owned());
                        }
                    }
                }
                keys.sort();
                keys
            }
        }
    }

    fn push(&self, path: &Path) -> std::process::Output {
        self.ws.run(&["wal-push", POLICY, path.to_str().unwrap()])
    }

    /// `wal-fetch` into `dest`: exit code and stderr.
    fn fetch(&self, name: &str, dest: &Path) -> (Option<i32>, String) {
        let out = self
            .ws
            .run(&["wal-fetch", POLICY, name, dest.to_str().unwrap()]);
        (out.status.code(), text(&out.stderr))
    }
}

/// The segment name in a WAL key.
fn segment_of(key: &str) -> Option<String> {
    let file = key.rsplit('/').next()?;
    let (name, _) = file.split_once('-')?;
    (name.len() == 24).then(|| name.to_string())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn the_same_segment_twice_is_one_object_and_other_content_is_refused() {
    let rig = Rig::new(true, "");
    let dir = tempfile::tempdir().unwrap();
    let name = "000000010000000000000007";
    let first = dir.path().join("a").join(name);
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    let bytes = common::noise(3 << 20, 7);
    std::fs::write(&first, &bytes).unwrap();

    for attempt in 1..=2 {
        let out = rig.push(&first);
        assert!(
            out.status.success(),
            "push {attempt}: {}",
            text(&out.stderr)
        );
    }
    let keys = rig.wal_keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let digest = sha256_hex(&bytes);
    assert!(
        keys[0].ends_with(&format!("{name}-{digest}.zst.age")),
        "{keys:?}"
    );

    let other = dir.path().join("b").join(name);
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    let other_bytes = common::noise(3 << 20, 8);
    std::fs::write(&other, &other_bytes).unwrap();
    let out = rig.push(&other);
    let code = out.status.code().expect("an exit code, not a signal");
    assert!((1..=125).contains(&code), "exit {code}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&digest) && stderr.contains(&sha256_hex(&other_bytes)),
        "the refusal names both digests: {stderr}"
    );
    assert_eq!(rig.wal_keys(), keys, "nothing was changed");
    assert!(rig.spooled().is_empty(), "a refusal is not spooled");
    let restored = dir.path().join("restored");
    let (code, stderr) = rig.fetch(name, &restored);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&restored).unwrap(), bytes);
}

#[test]
fn wal_fetch_says_not_archived_with_1_and_anything_else_with_126_or_more() {
    let rig = Rig::new(true, "");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYXLOG");
    let (code, stderr) = rig.fetch("00000001000000000000002A", &dest);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not in the archive"), "{stderr}");

    rig.proxy().set_faults(s3_down());
    let (code, stderr) = rig.fetch("00000001000000000000002A", &dest);
    assert!(code.is_some_and(|c| c >= 126), "exit {code:?}: {stderr}");
    assert!(stderr.contains("stops recovery"), "{stderr}");
    assert!(!dest.exists());
}

/// A `pg_wal` of our own: segments with `.ready` files, as PostgreSQL
/// leaves them for its archiver.
fn fake_pg_wal(root: &Path, names: &[&str]) -> PathBuf {
    let pg_wal = root.join("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(pg_wal.join(name), common::noise(1 << 20, i as u64 + 100)).unwrap();
        std::fs::write(
            pg_wal.join("archive_status").join(format!("{name}.ready")),
            "",
        )
        .unwrap();
    }
    pg_wal
}

#[test]
fn look_ahead_stores_ready_segments_and_their_calls_need_no_network() {
    let rig = Rig::new(true, "store_timeout = \"3s\"\n");
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "000000010000000000000010",
        "000000010000000000000011",
        "000000010000000000000012",
    ];
    let pg_wal = fake_pg_wal(dir.path(), &names);
    let out = rig.push(&pg_wal.join(names[0]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored: Vec<String> = rig
        .wal_keys()
        .iter()
        .filter_map(|k| segment_of(k))
        .collect();
    assert_eq!(stored, names, "the .ready segments were stored ahead");
    let done = rig.ws.path().join("spool").join(POLICY).join("done");
    assert!(done.join(names[1]).is_file() && done.join(names[2]).is_file());

    // With S3 down, the calls for them are answered from the markers.
    rig.proxy().set_faults(s3_down());
    let forwarded = rig.proxy().forwarded();
    let drops = rig.proxy().injected_drops();
    let out = rig.push(&pg_wal.join(names[1]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        (rig.proxy().forwarded(), rig.proxy().injected_drops()),
        (forwarded, drops),
        "no request was made"
    );
    assert!(rig.spooled().is_empty());
    assert!(!done.join(names[1]).exists(), "a used marker goes");

    // A marker is only trusted for the same content, and other content
    // is refused even while S3 cannot be asked.
    std::fs::write(pg_wal.join(names[2]), common::noise(1 << 20, 999)).unwrap();
    let out = rig.push(&pg_wal.join(names[2]));
    let code = out.status.code().expect("an exit code");
    assert!(
        (1..=125).contains(&code),
        "exit {code}: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("stored ahead"),
        "{}",
        text(&out.stderr)
    );
    assert!(rig.spooled().is_empty());
}

/// Two configurations archiving one policy into two repositories with one
/// spool: the look-ahead markers of the first would answer the second's
/// calls, and segments would be missing from the second repository. The
/// second is refused until it has a spool of its own.
#[test]
fn a_spool_shared_by_two_repositories_is_refused() {
    let rig = Rig::new(false, "");
    let dir = tempfile::tempdir().unwrap();
    let names = ["000000010000000000000010", "000000010000000000000011"];
    let pg_wal = fake_pg_wal(dir.path(), &names);
    let out = rig.push(&pg_wal.join(names[0]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let config = std::fs::read_to_string(rig.ws.path().join("drctl.toml")).unwrap();
    let other_repo = rig.ws.path().join("other-repo");
    assert!(config.contains("url = \"file://repo\""), "{config}");
    let other = config.replace("url = \"file://repo\"", "url = \"file://other-repo\"");
    rig.ws.write("other.toml", &other);
    let init = output_within(
        &mut rig.ws.cmd_with_config("other.toml", &["init"]),
        b"",
        COMMAND_TIMEOUT,
    );
    assert!(init.status.success(), "{}", text(&init.stderr));
    let path = pg_wal.join(names[1]);
    let out = output_within(
        &mut rig
            .ws
            .cmd_with_config("other.toml", &["wal-push", POLICY, path.to_str().unwrap()]),
        b"",
        COMMAND_TIMEOUT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("belongs to the repository")
            && stderr.contains("its own `[wal] spool_dir`"),
        "{stderr}"
    );
    assert!(
        !other_repo.join("wal").exists(),
        "nothing was stored in the second repository"
    );

    // With its own spool the second configuration archives normally.
    rig.ws.write(
        "other.toml",
        &other.replace("spool_dir = \"spool\"", "spool_dir = \"spool-other\""),
    );
    let out = output_within(
        &mut rig
            .ws
            .cmd_with_config("other.toml", &["wal-push", POLICY, path.to_str().unwrap()]),
        b"",
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A PostgreSQL archiving through the rig's `wal-push`.
fn start_postgres(rig: &mut Rig) -> Postgres {
    let spool = rig.ws.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    rig.ws.hand_to_pg_owner();
    let archive_command = format!(
        "env {} {} --config {} wal-push {POLICY} %p",
        rig.ws.env_words(),
        env!("CARGO_BIN_EXE_drctl"),
        rig.ws.path().join("drctl.toml").display()
    );
    Postgres::start_with(&format!(
        "wal_level = replica\narchive_mode = on\narchive_command = '{archive_command}'\n"
    ))
}

fn last_archived(pg: &Postgres) -> String {
    pg.psql(
        "postgres",
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    )
}

/// Writes a little and switches to a new segment; returns the one it
/// closed. (A switch with nothing written since the last one closes no
/// segment and wakes no archiver.)
fn switch(pg: &Postgres) -> String {
    pg.psql(
        "postgres",
        "CREATE TABLE IF NOT EXISTS tick(at timestamptz); INSERT INTO tick VALUES (now()); \
         SELECT pg_walfile_name(pg_switch_wal())",
    )
}

fn wait_archived(pg: &Postgres, segment: &str) {
    wait_for(&format!("{segment} to be archived"), ARCHIVE_WAIT, || {
        (last_archived(pg).as_str() >= segment).then_some(())
    });
}

fn pgbench(pg: &Postgres, args: &[&str]) {
    let mut cmd = Command::new(common::pg_bin("pgbench"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port().to_string(),
        "-U",
        "postgres",
    ])
    .args(args)
    .arg("postgres")
    .env("PGPASSWORD", pg.password());
    let out = output_within(&mut cmd, b"", Duration::from_secs(300));
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        text(&out.stderr)
    );
}

#[test]
fn an_s3_outage_under_load_fills_the_spool_which_drains_without_a_gap() {
    let mut rig = Rig::new(true, "store_timeout = \"3s\"\n");
    let pg = start_postgres(&mut rig);
    pgbench(&pg, &["-i", "-s", "1", "-q"]);
    let first = switch(&pg);
    wait_archived(&pg, &first);

    rig.proxy().set_faults(s3_down());
    let mut last = first.clone();
    for _ in 0..4 {
        pgbench(&pg, &["-n", "-c", "2", "-t", "300"]);
        last = switch(&pg);
    }
    wait_archived(&pg, &last);
    let spooled = rig.spooled();
    assert!(
        spooled.len() >= 4,
        "the outage's segments are spooled: {spooled:?}"
    );
    assert_eq!(
        pg.psql("postgres", "SELECT 1"),
        "1",
        "PostgreSQL keeps running"
    );
    let during: Vec<String> = rig.wal_keys();
    assert!(
        !during
            .iter()
            .any(|k| segment_of(k).is_some_and(|s| s.as_str() > first.as_str())),
        "nothing reached S3 while it was down: {during:?}"
    );

    rig.proxy().set_faults(Faults::none());
    let after = switch(&pg);
    wait_archived(&pg, &after);
    wait_for("the spool to drain", ARCHIVE_WAIT, || {
        rig.spooled().is_empty().then_some(())
    });

    let mut segments: Vec<String> = rig
        .wal_keys()
        .iter()
        .filter_map(|k| segment_of(k))
        .collect();
    segments.sort();
    segments.dedup();
    let number = |s: &str| u64::from_str_radix(&s[16..], 16).unwrap();
    assert!(
        segments
            .first()
            .is_some_and(|s| s.as_str() <= first.as_str())
    );
    assert!(
        segments
            .last()
            .is_some_and(|s| s.as_str() >= after.as_str())
    );
    for pair in segments.windows(2) {
        assert_eq!(
            number(&pair[1]),
            number(&pair[0]) + 1,
            "a gap between {} and {}: {segments:?}",
            pair[0],
            pair[1]
        );
    }
    // What was spooled is what would have been uploaded: it decrypts to
    // the segment PostgreSQL wrote (checked against the digest in its key).
    let dest = rig.ws.path().join("fetched");
    let (code, stderr) = rig.fetch(&spooled[0][..24], &dest);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_full_spool_fails_the_push_and_postgres_keeps_the_wal() {
    let mut rig = Rig::new(true, "store_timeout = \"2s\"\nspool_max_bytes = 1\n");
    let pg = start_postgres(&mut rig);
    let warm = switch(&pg);
    wait_archived(&pg, &warm);

    rig.proxy().set_faults(s3_down());
    let failed_before: i64 = pg
        .psql("postgres", "SELECT failed_count FROM pg_stat_archiver")
        .parse()
        .unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT generate_series(1, 10000) AS id",
    );
    let kept = switch(&pg);
    wait_for("a failed archive attempt", ARCHIVE_WAIT, || {
        let failed: i64 = pg
            .psql("postgres", "SELECT failed_count FROM pg_stat_archiver")
            .parse()
            .unwrap();
        (failed > failed_before).then_some(())
    });
    assert!(
        pg.data_dir().join("pg_wal").join(&kept).is_file(),
        "{kept} is kept in pg_wal"
    );
    assert!(
        pg.data_dir()
            .join("pg_wal/archive_status")
            .join(format!("{kept}.ready"))
            .is_file(),
        "{kept} is still waiting to be archived"
    );
    assert!(last_archived(&pg).as_str() < kept.as_str());
    assert!(rig.spooled().is_empty(), "nothing fits a spool of one byte");
    assert!(
        std::fs::read_to_string(pg.log_path())
            .unwrap()
            .contains("spool_max_bytes"),
        "the server log says why"
    );

    rig.proxy().set_faults(Faults::none());
    // The archiver waits for the next switch after three failures.
    let next = switch(&pg);
    wait_archived(&pg, &next);
    let segments: Vec<String> = rig
        .wal_keys()
        .iter()
        .filter_map(|k| segment_of(k))
        .collect();
    assert!(segments.contains(&kept), "{kept} reached S3: {segments:?}");
}

#[test]
fn a_push_killed_mid_upload_leaves_no_object_on_s3_and_the_next_push_stores_it() {
    let rig = Rig::new(true, "store_timeout = \"60s\"\n");
    let dir = tempfile::tempdir().unwrap();
    let name = "000000010000000000000042";
    let path = dir.path().join(name);
    // Incompressible and over two S3 parts: a multipart upload.
    let bytes = common::noise(16 << 20, 42);
    std::fs::write(&path, &bytes).unwrap();

    rig.proxy().hold(S3Op::UploadPart);
    let mut child = rig
        .ws
        .cmd(&["wal-push", POLICY, path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("an upload part in flight", COMMAND_TIMEOUT, || {
        (rig.proxy().held() > 0).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    rig.proxy().release();

    assert!(rig.wal_keys().is_empty(), "no object: {:?}", rig.wal_keys());
    let (s3, _, bucket) = rig.s3.as_ref().unwrap();
    assert!(
        block_on(s3.list_multipart_uploads(bucket)) >= 1,
        "the multipart upload was never completed"
    );
    let dest = dir.path().join("fetched");
    let (code, stderr) = rig.fetch(name, &dest);
    assert_eq!(code, Some(1), "not archived: {stderr}");

    let out = rig.push(&path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(rig.spooled().is_empty());
    let (code, stderr) = rig.fetch(name, &dest);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

#[test]
fn a_push_killed_mid_write_leaves_no_object_in_a_local_repository() {
    let rig = Rig::new(false, "");
    let dir = tempfile::tempdir().unwrap();
    let name = "000000010000000000000043";
    let path = dir.path().join(name);
    let bytes = common::noise(64 << 20, 43);
    std::fs::write(&path, &bytes).unwrap();

    let tmp = rig.ws.repo_dir().join(".tmp");
    let mut child = rig
        .ws
        .cmd(&["wal-push", POLICY, path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = wait_for("the store's temporary file", COMMAND_TIMEOUT, || {
        let writing = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 0));
        let finished = child.try_wait().unwrap().is_some();
        (writing || finished).then_some(writing)
    });
    let _ = child.kill();
    let status = child.wait().unwrap();

    let dest = dir.path().join("fetched");
    let (code, stderr) = rig.fetch(name, &dest);
    if started && !status.success() {
        assert_eq!(code, Some(1), "a killed push leaves nothing: {stderr}");
        assert!(rig.wal_keys().is_empty(), "{:?}", rig.wal_keys());
    } else {
        // It finished first: then the object is whole.
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    }

    let out = rig.push(&path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, stderr) = rig.fetch(name, &dest);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(rig.wal_keys().len(), 1);
}

#[test]
fn wal_drain_stores_what_was_spooled_and_a_second_push_is_answered_from_the_spool() {
    let rig = Rig::new(true, "store_timeout = \"2s\"\n");
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "000000010000000000000021",
        "000000010000000000000022",
        "000000010000000000000023",
    ];
    rig.proxy().set_faults(s3_down());
    for (i, name) in names.iter().enumerate() {
        let path = dir.path().join(name);
        std::fs::write(&path, common::noise(1 << 20, i as u64)).unwrap();
        let out = rig.push(&path);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
    assert_eq!(rig.spooled().len(), 3);
    // Pushing a spooled segment again is answered from the spool.
    let out = rig.push(&dir.path().join(names[0]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(rig.spooled().len(), 3);
    let out = rig.ws.run(&["wal", "drain", POLICY]);
    assert!(
        !out.status.success(),
        "nothing can be drained while S3 is down"
    );
    assert_eq!(rig.spooled().len(), 3);

    rig.proxy().set_faults(Faults::none());
    let stdout = rig.ws.ok(&["wal", "drain", POLICY]);
    assert!(stdout.contains("stored 3"), "{stdout}");
    assert!(rig.spooled().is_empty());
    let stored: Vec<String> = rig
        .wal_keys()
        .iter()
        .filter_map(|k| segment_of(k))
        .collect();
    assert_eq!(stored, names);
    for (i, name) in names.iter().enumerate() {
        let dest = dir.path().join(format!("fetched-{i}"));
        let (code, stderr) = rig.fetch(name, &dest);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            common::noise(1 << 20, i as u64)
        );
    }
}

/// A push the repository takes never needs the spool: with a spool
/// directory that cannot be created (its parent is a file), the segment is
/// still stored, and nothing is created.
#[test]
fn a_push_the_repository_takes_does_not_need_the_spool_directory() {
    let rig = Rig::new(false, "");
    let config = std::fs::read_to_string(rig.ws.path().join("drctl.toml")).unwrap();
    let blocker = rig.ws.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    rig.ws.write(
        "drctl.toml",
        &config.replace(
            "spool_dir = \"spool\"",
            &format!("spool_dir = \"{}\"", blocker.join("spool").display()),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let name = "000000010000000000000041";
    let path = dir.path().join(name);
    std::fs::write(&path, common::noise(1 << 20, 41)).unwrap();
    let out = rig.push(&path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored: Vec<String> = rig
        .wal_keys()
        .iter()
        .filter_map(|k| segment_of(k))
        .collect();
    assert_eq!(stored, [name]);
    assert!(std::fs::metadata(&blocker).unwrap().is_file());
}
