//! `wal-fetch` with prefetch (`[wal] prefetch`): a detached worker keeps
//! the next archived segments in a directory outside the data directory,
//! and later calls hand them to PostgreSQL only after checking them against
//! the digest in their key.
//!
//! What must hold: recovery that uses prefetched segments reaches its
//! target with exactly the right rows; a prefetched file that was changed
//! or truncated is never handed over (the archived copy is); exit codes
//! keep PostgreSQL's contract (1 only for "not archived", 126 when the
//! repository cannot be read) with prefetch on; and the worker removes
//! what it fetched once recovery stops asking.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{World, text};
use common::workspace::{Backend, Workspace};
use common::{FaultProxy, Faults, S3Server, block_on, unique_bucket_name, wait_for};

const POLICY: &str = "cluster";
/// Long enough for the worker's idle exit ([`drctl::wal::prefetch::IDLE_EXIT`]).
const WORKER_WAIT: Duration = Duration::from_secs(60);

fn segment(n: u32) -> String {
    format!("0000000100000000{n:08X}")
}

struct Rig {
    ws: Workspace,
    s3: Option<(S3Server, FaultProxy)>,
    files: tempfile::TempDir,
}

impl Rig {
    /// A `postgres-cluster` policy with prefetch of 3 segments into
    /// `prefetch/` of the workspace, and segments 1 to `segments`
    /// archived (1 MiB each: wal-push does not look inside).
    fn new(on_s3: bool, segments: u32) -> Rig {
        let (s3, backend) = if on_s3 {
            let s3 = S3Server::start();
            let bucket = unique_bucket_name("prefetch");
            block_on(s3.create_bucket(&bucket, false));
            let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
            let endpoint = proxy.endpoint();
            (Some((s3, proxy)), Backend::S3 { endpoint, bucket })
        } else {
            (None, Backend::Local)
        };
        let ws = Workspace::new(backend);
        let config = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
        ws.write(
            "drctl.toml",
            &format!(
                "{config}\n[wal]\nspool_dir = \"spool\"\nprefetch = 3\nprefetch_dir = \"prefetch\"\n\
                 store_timeout = \"5s\"\n"
            ),
        );
        ws.write(
            &format!("policies/{POLICY}.toml"),
            "[source]\ntype = \"postgres-cluster\"\nurl = \"postgres://postgres@127.0.0.1:1/postgres\"\n",
        );
        let files = tempfile::tempdir().unwrap();
        let pg_wal = files.path().join("pg_wal");
        std::fs::create_dir_all(&pg_wal).unwrap();
        let rig = Rig { ws, s3, files };
        for n in 1..=segments {
            let path = pg_wal.join(segment(n));
            std::fs::write(&path, rig.bytes(n)).unwrap();
            let out = rig.ws.run(&["wal-push", POLICY, path.to_str().unwrap()]);
            assert!(out.status.success(), "wal-push: {}", text(&out.stderr));
        }
        rig
    }

    fn bytes(&self, n: u32) -> Vec<u8> {
        common::noise(1 << 20, u64::from(n) + 7)
    }

    fn dir(&self) -> PathBuf {
        self.ws.path().join("prefetch").join(POLICY)
    }

    /// Segment names waiting in the prefetch directory.
    fn prefetched(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let f = e.file_name().to_string_lossy().into_owned();
                        let (name, sha) = f.split_once('-')?;
                        (sha.len() == 64).then(|| name.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn file_of(&self, name: &str) -> PathBuf {
        std::fs::read_dir(self.dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
            })
            .unwrap_or_else(|| panic!("{name} is not prefetched: {:?}", self.prefetched()))
    }

    fn fetch(&self, name: &str, dest: &Path) -> (Option<i32>, String) {
        let out = self
            .ws
            .run(&["wal-fetch", POLICY, name, dest.to_str().unwrap()]);
        (out.status.code(), text(&out.stderr))
    }

    fn wait_prefetched(&self, want: &[String]) {
        wait_for("the worker to prefetch", WORKER_WAIT, || {
            let have = self.prefetched();
            want.iter().all(|w| have.contains(w)).then_some(())
        });
    }
}

fn prefetched_segments_are_checked_before_they_are_handed_over(on_s3: bool) {
    let rig = Rig::new(on_s3, 6);
    let dest = rig.files.path().join("RECOVERYXLOG");

    let (code, stderr) = rig.fetch(&segment(1), &dest);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), rig.bytes(1));
    rig.wait_prefetched(&[segment(2), segment(3), segment(4)]);
    assert!(
        !rig.prefetched().contains(&segment(5)),
        "only 3 ahead: {:?}",
        rig.prefetched()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rig.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    // An intact prefetched file is handed over and removed.
    let (code, stderr) = rig.fetch(&segment(2), &dest);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), rig.bytes(2));
    wait_for("the worker to move on", WORKER_WAIT, || {
        (!rig.prefetched().contains(&segment(2)) && rig.prefetched().contains(&segment(5)))
            .then_some(())
    });

    // Truncated and changed files: never handed over; the archived copy is.
    let truncated = rig.file_of(&segment(3));
    std::fs::write(&truncated, &rig.bytes(3)[..4096]).unwrap();
    let (code, stderr) = rig.fetch(&segment(3), &dest);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), rig.bytes(3));
    assert!(!truncated.exists(), "the damaged file is deleted");

    rig.wait_prefetched(&[segment(4)]);
    let changed = rig.file_of(&segment(4));
    let mut bytes = rig.bytes(4);
    bytes[1000] ^= 0xFF;
    std::fs::write(&changed, &bytes).unwrap();
    let (code, stderr) = rig.fetch(&segment(4), &dest);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), rig.bytes(4));
    assert!(
        stderr.contains("does not match the sha256"),
        "the damaged file is reported: {stderr}"
    );

    // Past the end of the archive: still a definite "not archived".
    rig.wait_prefetched(&[segment(5), segment(6)]);
    let missing = rig.files.path().join("missing");
    let (code, stderr) = rig.fetch(&segment(9), &missing);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not in the archive"), "{stderr}");
    assert!(!missing.exists());

    // Recovery stops asking: the worker removes what it fetched and exits.
    wait_for("the worker to clean up", WORKER_WAIT, || {
        rig.prefetched().is_empty().then_some(())
    });
}

#[test]
fn prefetched_segments_are_checked_before_they_are_handed_over_local() {
    prefetched_segments_are_checked_before_they_are_handed_over(false);
}

#[test]
fn prefetched_segments_are_checked_before_they_are_handed_over_s3() {
    prefetched_segments_are_checked_before_they_are_handed_over(true);
}

#[test]
fn with_prefetch_on_s3_down_still_stops_recovery_and_a_missing_segment_exits_1() {
    let rig = Rig::new(true, 3);
    let proxy = &rig.s3.as_ref().unwrap().1;
    let dest = rig.files.path().join("RECOVERYXLOG");
    let (code, stderr) = rig.fetch(&segment(1), &dest);
    assert_eq!(code, Some(0), "{stderr}");
    rig.wait_prefetched(&[segment(2), segment(3)]);

    proxy.set_faults(Faults {
        drop_connection: 1.0,
        ..Faults::none()
    });
    // What was fetched ahead and checks out is archived: it is handed over.
    let (code, stderr) = rig.fetch(&segment(2), &dest);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), rig.bytes(2));
    // Anything that needs the repository stops recovery, never exit 1.
    let other = rig.files.path().join("other");
    let (code, stderr) = rig.fetch(&segment(4), &other);
    assert!(code.is_some_and(|c| c >= 126), "exit {code:?}: {stderr}");
    assert!(!other.exists());
    // A damaged prefetched file with the repository down: not handed over,
    // and recovery stops rather than ends.
    std::fs::write(rig.file_of(&segment(3)), b"garbage").unwrap();
    let (code, stderr) = rig.fetch(&segment(3), &other);
    assert!(code.is_some_and(|c| c >= 126), "exit {code:?}: {stderr}");
    assert!(!other.exists());

    proxy.set_faults(Faults::none());
    let (code, stderr) = rig.fetch(&segment(4), &other);
    assert_eq!(code, Some(1), "{stderr}");
    let (code, stderr) = rig.fetch(&segment(3), &other);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&other).unwrap(), rig.bytes(3));
}

#[test]
fn recovery_with_prefetch_replays_to_the_target_with_exactly_the_right_rows() {
    let mut world = World::new(true, "");
    let prefetch_dir = world.ws.path().join("prefetch");
    std::fs::create_dir_all(&prefetch_dir).unwrap();
    let config = std::fs::read_to_string(world.ws.path().join("drctl.toml")).unwrap();
    world.ws.write(
        "drctl.toml",
        &format!(
            "{config}prefetch = 4\nprefetch_dir = \"{}\"\n",
            prefetch_dir.display()
        ),
    );
    world.ws.hand_to_pg_owner();
    let pg = &world.pg;
    pg.psql(
        "postgres",
        "CREATE TABLE t(id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    let out = world.ws.run(&["backup", "cluster"]);
    assert!(
        out.status.success(),
        "backup failed: {}\n--- server log ---\n{}",
        text(&out.stderr),
        std::fs::read_to_string(pg.log_path()).unwrap_or_default()
    );
    // Rows 1..=3 spread over several segments, so that replay needs more
    // segments than one call fetches.
    for id in 1..=3 {
        pg.psql(
            "postgres",
            &format!(
                "INSERT INTO t(id) VALUES ({id}); CREATE TABLE pad{id} AS SELECT g FROM generate_series(1, 100000) g"
            ),
        );
        world.switch_and_wait();
    }
    let target = pg.psql(
        "postgres",
        "SELECT pg_sleep(1); SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'); SELECT pg_sleep(1);",
    );
    let target = target.lines().find(|l| !l.is_empty()).unwrap().to_string();
    for id in 4..=6 {
        pg.psql("postgres", &format!("INSERT INTO t(id) VALUES ({id})"));
    }
    world.switch_and_wait();

    world.ws.set_env("DRCTL_LOG", "info");
    let dir = world.ws.path().join("restored");
    let (out, server) = world.restore(&dir, &["--to", &target]);
    assert!(
        out.status.success(),
        "restore --to {target} failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        server.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3"
    );
    let log = std::fs::read_to_string(dir.join("drctl-recovery.log")).unwrap_or_default();
    assert!(
        log.contains("Restored a WAL file fetched ahead"),
        "recovery did not use a prefetched segment; server log:\n{log}"
    );
    assert!(
        !prefetch_dir.starts_with(&dir),
        "the prefetch directory is outside the data directory"
    );
    wait_for("the worker to clean up", WORKER_WAIT, || {
        let left = std::fs::read_dir(prefetch_dir.join("cluster"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("0000"))
                    .count()
            })
            .unwrap_or(0);
        (left == 0).then_some(())
    });
}
