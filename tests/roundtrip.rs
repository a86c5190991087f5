//! Round trips through both kinds of repository (a local directory, and a
//! versioned bucket on the moto S3 server): what is restored is what was
//! backed up, byte for byte and attribute for attribute.
//!
//! Every case is one function taking a [`Kind`]; each (case, backend) pair is
//! its own `#[test]` at the bottom of the file.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::workspace::{Backend, COMMAND_TIMEOUT, Workspace};
use common::{Postgres, S3Server, block_on, fixture, output_within, unique_bucket_name};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// drctl's first S3 part size (`storage::s3::FIRST_PART_BYTES`).
const S3_FIRST_PART_BYTES: u64 = 8 * 1024 * 1024;
/// Where the workspace puts the repository inside the bucket.
const S3_PREFIX: &str = "drctl";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Local,
    S3,
    /// An S3 bucket without versioning.
    S3Unversioned,
}

/// One test's world: its own PostgreSQL cluster, for S3 its own moto server
/// with a versioned bucket, and a workspace whose repository is on `kind`.
struct World {
    pg: Postgres,
    s3: Option<(S3Server, String)>,
    ws: Workspace,
}

impl World {
    fn new(kind: Kind) -> World {
        let pg = Postgres::start();
        let (s3, backend) = match kind {
            Kind::Local => (None, Backend::Local),
            Kind::S3 | Kind::S3Unversioned => {
                let server = S3Server::start();
                let bucket = unique_bucket_name("roundtrip");
                block_on(server.create_bucket(&bucket, matches!(kind, Kind::S3)));
                let backend = Backend::S3 {
                    endpoint: server.endpoint(),
                    bucket: bucket.clone(),
                };
                (Some((server, bucket)), backend)
            }
        };
        let ws = Workspace::new(backend);
        World { pg, s3, ws }
    }

    /// The bytes of the repository object at `key` (relative to the
    /// repository root), read behind drctl's back.
    fn read_object(&self, key: &str) -> Vec<u8> {
        match &self.s3 {
            None => {
                let path = self.ws.repo_dir().join(key);
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            }
            Some((server, bucket)) => {
                block_on(server.get_object(bucket, &format!("{S3_PREFIX}/{key}")))
            }
        }
    }

    fn manifest(&self, policy: &str, id: &str) -> Value {
        let bytes = self.read_object(&format!("backups/{policy}/{id}/manifest.json"));
        serde_json::from_slice(&bytes).expect("manifest.json is JSON")
    }

    /// A postgres policy named `policy` for database `db` on this world's cluster.
    fn postgres_policy(&mut self, policy: &str, db: &str) {
        let World { ws, pg, .. } = self;
        ws.postgres_policy(policy, pg, db);
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs drctl in the workspace, asserts success, and returns (stdout, stderr).
fn ok_with_stderr(ws: &Workspace, args: &[&str]) -> (String, String) {
    let out = ws.run(args);
    assert!(
        out.status.success(),
        "drctl {args:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout_of(&out),
        stderr_of(&out)
    );
    (stdout_of(&out), stderr_of(&out))
}

/// A PostgreSQL 15 client tool talking to `pg` over TCP as the superuser,
/// with no inherited `PG*` settings.
fn pg_tool(pg: &Postgres, program: &str) -> Command {
    let mut cmd = Command::new(Path::new(PG_BIN).join(program));
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(&key);
        }
    }
    cmd.args([
        "-h",
        pg.host(),
        "-p",
        &pg.port().to_string(),
        "-U",
        pg.user(),
    ])
    .env("PGPASSWORD", pg.password())
    .env("PGSSLMODE", "disable");
    cmd
}

fn run_tool(mut cmd: Command) -> String {
    let out = output_within(&mut cmd, b"", COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout_of(&out),
        stderr_of(&out)
    );
    stdout_of(&out)
}

/// A plain-format `pg_dump` of `db`, with the lines that legitimately differ
/// between two dumps removed: PostgreSQL 15.14+ brackets a dump in
/// `\restrict KEY` / `\unrestrict KEY` with a fresh random key each time. The
/// database name appears nowhere else in a dump made without `--create`.
fn comparable_dump(pg: &Postgres, db: &str) -> String {
    let mut cmd = pg_tool(pg, "pg_dump");
    cmd.args(["--format=plain", "--dbname", db]);
    let dump = run_tool(cmd);
    assert!(
        dump.len() > 1000,
        "pg_dump of {db} is suspiciously short:\n{dump}"
    );
    dump.lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts two texts are equal, showing where they first differ.
fn assert_same_text(what: &str, left: &str, right: &str) {
    if left == right {
        return;
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (left.lines().collect(), right.lines().collect());
    let first = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let from = first.saturating_sub(5);
    let show = |lines: &[&str]| {
        lines
            .iter()
            .enumerate()
            .skip(from)
            .take(15)
            .map(|(i, l)| format!("{:>6}{} {l}", i + 1, if i == first { '>' } else { ' ' }))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{what}: they differ first at line {} ({} vs {} lines)\n--- left ---\n{}\n--- right ---\n{}",
        first + 1,
        a.len(),
        b.len(),
        show(&a),
        show(&b)
    );
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn list_json(ws: &Workspace, policy: Option<&str>) -> Value {
    let mut args = vec!["list"];
    args.extend(policy);
    args.push("--json");
    serde_json::from_str(&ws.ok(&args)).expect("list --json prints JSON")
}

fn point_in_time(row: &Value) -> DateTime<Utc> {
    let text = row["point_in_time"]
        .as_str()
        .unwrap_or_else(|| panic!("point_in_time is a string in {row}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("point_in_time {text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// `20261127T013051Z-4a94e8f0`
fn is_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 25
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
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

// ---------------------------------------------------------------------------
// 1. The awkward database, restored into a new database and compared.
// ---------------------------------------------------------------------------

fn awkward_database_round_trip(kind: Kind) {
    let mut w = World::new(kind);
    w.pg.createdb("awkward");
    w.pg.psql_file("awkward", fixture("awkward.sql"));
    w.postgres_policy("awkward", "awkward");
    let id = w.ws.backup("awkward");

    let target = w.pg.url("awkward_restored");
    let (stdout, stderr) = ok_with_stderr(
        &w.ws,
        &[
            "restore", "awkward", "--to", "latest", "--target", &target, "--yes", "--verify",
        ],
    );
    assert!(
        stdout.contains("fingerprint matched"),
        "restore --verify should say the fingerprint matched:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(&id), "restore names backup {id}:\n{stdout}");

    let source_dump = comparable_dump(&w.pg, "awkward");
    // The comparison means something only if the dump holds the awkward parts.
    for expected in [
        "COPY app.measurements (id, sensor, label, value, recorded_at, extra) FROM stdin;",
        "SELECT pg_catalog.lo_create('424242');",
        "COMMENT ON LARGE OBJECT 424242 IS '256 KiB of deadbeef';",
        "SELECT pg_catalog.setval('app.ticket_seq', 123456, true);",
        "CREATE SCHEMA \"we\"\"ird schema.name\";",
        "CREATE TABLE app.no_columns (\n);",
    ] {
        assert!(
            source_dump.contains(expected),
            "the source dump contains {expected:?}"
        );
    }
    assert_same_text(
        "pg_dump of the source (left) and of the restored database (right)",
        &source_dump,
        &comparable_dump(&w.pg, "awkward_restored"),
    );

    // The things a dump comparison could hide behind identical text.
    for db in ["awkward", "awkward_restored"] {
        assert_eq!(
            w.pg.psql(
                db,
                "SELECT (SELECT count(*) FROM app.measurements), (SELECT count(*) FROM app.everything), \
                 (SELECT count(*) FROM app.events), (SELECT count(*) FROM \"Über Schema\".\"Tåble ☃ Mixed\"), \
                 (SELECT count(*) FROM pg_largeobject_metadata), (SELECT count(*) FROM app.no_columns)"
            ),
            "5000|4|9|3|3|3",
            "row counts in {db}"
        );
    }
    let large_object = "SELECT octet_length(lo_get(424242)), \
                        md5(lo_get(424242)) = md5(decode(repeat('deadbeef', 65536), 'hex')), \
                        obj_description(424242, 'pg_largeobject'), \
                        (SELECT string_agg(name || '=' || md5(lo_get(content)), ',' ORDER BY id) FROM app.documents)";
    let source_lo = w.pg.psql("awkward", large_object);
    assert!(
        source_lo.starts_with("262144|t|256 KiB of deadbeef|hello.txt="),
        "source large objects: {source_lo}"
    );
    assert_eq!(
        w.pg.psql("awkward_restored", large_object),
        source_lo,
        "large objects (size, content, comment) after restore"
    );
    let sequences = "SELECT last_value, is_called FROM app.ticket_seq; \
                     SELECT last_value, is_called FROM app.not_called_seq; \
                     SELECT last_value, is_called FROM \"Über Schema\".\"Zähler\"; \
                     SELECT nextval('app.ticket_seq'), nextval('app.not_called_seq')";
    let source_seq = w.pg.psql("awkward", sequences);
    assert_eq!(
        source_seq, "123456|t\n50|f\n-94|t\n123463|50",
        "source sequences"
    );
    assert_eq!(
        w.pg.psql("awkward_restored", sequences),
        source_seq,
        "sequences continue where the source's did"
    );
    assert_eq!(
        w.pg.psql(
            "awkward_restored",
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
        ),
        "UTF8"
    );
    // No scratch database is left behind.
    assert_eq!(
        w.pg.psql(
            "postgres",
            "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE '%drctl%'"
        ),
        "",
        "scratch databases left behind"
    );
}

// ---------------------------------------------------------------------------
// 2. restore --output: a custom-format dump that plain pg_restore accepts.
// ---------------------------------------------------------------------------

fn output_file_is_a_custom_format_dump(kind: Kind) {
    let mut w = World::new(kind);
    w.pg.createdb("awkward");
    w.pg.psql_file("awkward", fixture("awkward.sql"));
    w.postgres_policy("awkward", "awkward");
    let id = w.ws.backup("awkward");

    let out_dir = tempfile::tempdir().expect("temp dir for --output");
    let file = out_dir.path().join("awkward.pgdump");
    let file_arg = file.to_str().expect("UTF-8 temp path");
    let (stdout, _) = ok_with_stderr(
        &w.ws,
        &["restore", "awkward", "--to", "latest", "--output", file_arg],
    );
    assert!(stdout.contains(&id), "restore names backup {id}:\n{stdout}");
    let entries: Vec<_> = std::fs::read_dir(out_dir.path())
        .expect("read output dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("awkward.pgdump")],
        "exactly the output file, no partial file beside it"
    );

    let data = std::fs::read(&file).expect("read the restored dump");
    assert!(
        data.starts_with(b"PGDMP"),
        "a custom-format dump starts with PGDMP"
    );
    let manifest = w.manifest("awkward", &id);
    assert_eq!(
        Value::String(sha256_hex(&data)),
        manifest["data"]["plaintext_sha256"],
        "sha256 of --output equals the manifest's data.plaintext_sha256"
    );
    assert_eq!(
        Value::from(data.len() as u64),
        manifest["data"]["plaintext_size"]
    );

    let mut list = Command::new(Path::new(PG_BIN).join("pg_restore"));
    list.arg("--list").arg(&file);
    let toc = run_tool(list);
    for expected in [
        "TABLE DATA app measurements",
        "BLOB - 424242",
        "SEQUENCE SET app ticket_seq",
    ] {
        assert!(
            toc.contains(expected),
            "pg_restore --list shows `{expected}`:\n{toc}"
        );
    }

    w.pg.createdb("from_file");
    let mut restore = pg_tool(&w.pg, "pg_restore");
    restore
        .args(["--exit-on-error", "--dbname", "from_file"])
        .arg(&file);
    run_tool(restore);
    assert_same_text(
        "pg_dump of the source (left) and of the database pg_restore made from --output (right)",
        &comparable_dump(&w.pg, "awkward"),
        &comparable_dump(&w.pg, "from_file"),
    );
}

/// `--output -` is the plaintext on stdout and nothing else: the plan and the
/// summary go to stderr, no file named `-` appears, and pg_restore can read
/// the dump from the pipe.
fn output_dash_streams_to_stdout(kind: Kind) {
    let mut w = World::new(kind);
    w.pg.createdb("shop");
    w.pg.psql(
        "shop",
        "CREATE TABLE orders(id int PRIMARY KEY, note text); \
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 1000) g;",
    );
    w.postgres_policy("shop", "shop");
    let id = w.ws.backup("shop");

    let out =
        w.ws.run(&["restore", "shop", "--to", "latest", "--output", "-"]);
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "restore --output - failed:\n{stderr}");
    assert!(
        !w.ws.path().join("-").exists(),
        "a file named `-` was written"
    );
    assert!(
        out.stdout.starts_with(b"PGDMP"),
        "stdout is not a custom-format dump; stderr:\n{stderr}"
    );
    let manifest = w.manifest("shop", &id);
    assert_eq!(
        Value::String(sha256_hex(&out.stdout)),
        manifest["data"]["plaintext_sha256"],
        "stdout is exactly the backup's plaintext, nothing printed around it"
    );
    assert!(stderr.contains("Restore plan"), "{stderr}");
    assert!(stderr.contains("standard output"), "{stderr}");
    assert!(
        stderr.contains(&format!("Restored shop backup {id}")),
        "{stderr}"
    );

    w.pg.createdb("from_pipe");
    let mut restore = pg_tool(&w.pg, "pg_restore");
    restore.args(["--exit-on-error", "--dbname", "from_pipe"]);
    let piped = output_within(&mut restore, &out.stdout, COMMAND_TIMEOUT);
    assert!(piped.status.success(), "{}", stderr_of(&piped));
    assert_eq!(
        w.pg.psql("from_pipe", "SELECT count(*) FROM orders"),
        "1000"
    );

    // A JSON summary on stdout would be mixed into the dump.
    let err = w.ws.fails(
        &[
            "restore", "shop", "--to", "latest", "--output", "-", "--json",
        ],
        2,
    );
    assert!(
        err.contains("--json") && err.contains("--output -"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// 3. Files: modes, owners, mtimes, symlinks, odd names, sizes.
// ---------------------------------------------------------------------------

/// Everything a files restore must reproduce about one path.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        size: u64,
        sha256: String,
    },
    Symlink {
        target: Vec<u8>,
        uid: u32,
        gid: u32,
        mtime: i64,
    },
}

/// Every path under `root` (and `root` itself, as ""), by raw bytes.
fn snapshot_tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .as_os_str()
            .as_bytes()
            .to_vec();
        let (uid, gid, mtime) = (meta.uid(), meta.gid(), meta.mtime());
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        let node = if ft.is_symlink() {
            let target = std::fs::read_link(&path).expect("readlink");
            Node::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
                uid,
                gid,
                mtime,
            }
        } else if ft.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                stack.push(entry.expect("dir entry").path());
            }
            Node::Dir {
                mode,
                uid,
                gid,
                mtime,
            }
        } else if ft.is_file() {
            let data = std::fs::read(&path).expect("read file");
            Node::File {
                mode,
                uid,
                gid,
                mtime,
                size: data.len() as u64,
                sha256: sha256_hex(&data),
            }
        } else {
            panic!("unexpected file type at {}", path.display());
        };
        out.insert(rel, node);
    }
    out
}

fn assert_same_tree(expected: &BTreeMap<Vec<u8>, Node>, restored: &Path) {
    let got = snapshot_tree(restored);
    let mut problems = Vec::new();
    for (path, want) in expected {
        let name = String::from_utf8_lossy(path);
        match got.get(path) {
            None => problems.push(format!("{name:?} is missing")),
            Some(have) if have != want => {
                problems.push(format!("{name:?}: restored {have:?}, expected {want:?}"))
            }
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !expected.contains_key(*p)) {
        problems.push(format!(
            "{:?} was not in the source",
            String::from_utf8_lossy(path)
        ));
    }
    assert!(
        problems.is_empty(),
        "restored tree {} differs from the source:\n{}",
        restored.display(),
        problems.join("\n")
    );
}

fn set_mtime(path: &Path, seconds: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let time = libc::timespec {
        tv_sec: seconds as libc::time_t,
        tv_nsec: 123_456_789,
    };
    let times = [time, time];
    // SAFETY: a valid NUL-terminated path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Builds the awkward tree under `root` and returns it as the source saw it.
fn build_awkward_tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    use std::os::unix::fs::symlink;
    let file = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let dir = |rel: &str, mode: u32| {
        let p = root.join(rel);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    std::fs::create_dir(root).expect("create tree root");
    dir("sub", 0o755);
    dir("empty", 0o700);
    dir("shared-tmp", 0o1777);
    dir("private", 0o750);
    file("secret.key", b"-----BEGIN NOT A KEY-----\n", 0o600);
    file("run.sh", b"#!/bin/sh\necho hello\n", 0o755);
    file("app.conf", b"[app]\nlisten = 127.0.0.1\n", 0o640);
    file("readonly.txt", b"do not edit\n", 0o444);
    file("odd-mode", b"odd\n", 0o604);
    file("private/notes", b"private notes\n", 0o640);
    file("sub/file.txt", b"the target of several links\n", 0o644);
    file("zero-bytes", b"", 0o644);
    file(
        "big.bin",
        &common::noise(3 * 1024 * 1024 + 12_345, 0x9e37_79b9_7f4a_7c15),
        0o644,
    );
    file("ünï côdé ☃ name.txt", "unicode name\n".as_bytes(), 0o644);
    // A name that is not UTF-8: "café" in Latin-1.
    let latin1 = root.join(OsStr::from_bytes(b"caf\xe9"));
    std::fs::write(&latin1, b"latin-1 name\n").expect("write non-UTF-8 name");
    // A path far beyond ustar's 100-byte name field.
    let mut deep = PathBuf::from("deep");
    for level in 1..=12 {
        deep.push(format!(
            "level-{level:02}-with-a-rather-long-directory-name"
        ));
    }
    std::fs::create_dir_all(root.join(&deep)).expect("create deep dirs");
    let deep_file = deep.join("deep file.txt");
    std::fs::write(root.join(&deep_file), b"deep down\n").expect("write deep file");
    symlink("sub/file.txt", root.join("link-relative")).expect("symlink");
    symlink("../tree/sub", root.join("link-dotdot")).expect("symlink");
    symlink(root.join("sub/file.txt"), root.join("link-absolute")).expect("symlink");
    symlink("no/such/file", root.join("link-dangling")).expect("symlink");
    // A link target longer than ustar's 100-byte link field.
    symlink(root.join(&deep_file), root.join("link-long")).expect("symlink");

    if unsafe { libc::geteuid() } == 0 {
        // Owners are kept when running as root: give two entries odd ones.
        std::os::unix::fs::chown(root.join("app.conf"), Some(4321), Some(8765)).expect("chown");
        std::os::unix::fs::lchown(root.join("link-relative"), Some(4322), Some(8766))
            .expect("lchown");
    }

    // Distinct whole-second mtimes on everything, set last so that creating
    // children does not move a directory's mtime again.
    let mut all: Vec<PathBuf> = snapshot_tree(root)
        .into_keys()
        .map(|rel| root.join(OsStr::from_bytes(&rel)))
        .collect();
    all.sort();
    for (i, path) in all.iter().enumerate() {
        set_mtime(path, 1_600_000_000 + 1000 * i as i64);
    }
    snapshot_tree(root)
}

fn files_round_trip(kind: Kind) {
    let w = World::new(kind);
    let source = tempfile::tempdir().expect("source temp dir");
    let root = source.path().join("tree");
    let expected = build_awkward_tree(&root);
    assert!(expected.len() > 30, "the tree has its entries");
    w.ws.files_policy("conf", &[&root]);
    let id = w.ws.backup("conf");

    let restores = tempfile::tempdir().expect("restore temp dir");
    let relative_root = root.strip_prefix("/").expect("absolute temp path");

    // Into an existing, empty directory.
    let existing = restores.path().join("existing");
    std::fs::create_dir(&existing).expect("create empty target dir");
    let (stdout, _) = ok_with_stderr(
        &w.ws,
        &[
            "restore",
            "conf",
            "--to",
            "latest",
            "--into",
            existing.to_str().expect("UTF-8 temp path"),
        ],
    );
    assert!(stdout.contains(&id), "restore names backup {id}:\n{stdout}");
    assert_same_tree(&expected, &existing.join(relative_root));
    let top: Vec<_> = std::fs::read_dir(&existing)
        .expect("read restore dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    let first_component = relative_root.components().next().expect("a component");
    assert_eq!(
        top,
        vec![first_component.as_os_str().to_os_string()],
        "only the restored path's first component at the top of --into"
    );

    // Into a directory that does not exist yet, below one that does not either.
    let fresh = restores.path().join("not-yet/there");
    ok_with_stderr(
        &w.ws,
        &[
            "restore",
            "conf",
            "--to",
            "latest",
            "--into",
            fresh.to_str().expect("UTF-8 temp path"),
        ],
    );
    assert_same_tree(&expected, &fresh.join(relative_root));
    let mut left: Vec<_> = std::fs::read_dir(restores.path())
        .expect("read restores dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["existing", "not-yet"],
        "no partial directories left beside the targets"
    );

    // The source itself is untouched by backup and restore.
    assert_same_tree(&expected, &root);
}

// ---------------------------------------------------------------------------
// 4. --to picks the right backup; --backup takes an id prefix.
// ---------------------------------------------------------------------------

fn to_selection(kind: Kind) {
    let mut w = World::new(kind);
    w.pg.createdb("shop");
    w.pg.psql(
        "shop",
        "CREATE TABLE state(k int PRIMARY KEY, v text); INSERT INTO state VALUES (1, 'first');",
    );
    w.postgres_policy("shop", "shop");
    // Each backup sees every row say what the latest change was.
    let mut ids = vec![w.ws.backup("shop")];
    for (k, v) in [(2, "second"), (3, "third")] {
        // Points in time a whole second apart at least.
        std::thread::sleep(Duration::from_millis(1100));
        w.pg.psql(
            "shop",
            &format!("UPDATE state SET v = '{v}'; INSERT INTO state VALUES ({k}, '{v}')"),
        );
        ids.push(w.ws.backup("shop"));
    }
    let list = list_json(&w.ws, Some("shop"));
    let rows = list["backups"].as_array().expect("backups array");
    let listed: Vec<&str> = rows.iter().map(|r| r["id"].as_str().expect("id")).collect();
    assert_eq!(
        listed,
        [&ids[2], &ids[1], &ids[0]].map(String::as_str),
        "newest first"
    );
    let (p3, p2, p1) = (
        point_in_time(&rows[0]),
        point_in_time(&rows[1]),
        point_in_time(&rows[2]),
    );
    assert!(
        p1 < p2 && p2 < p3,
        "points in time increase: {p1} {p2} {p3}"
    );
    // The first backup's point in time as `list` shows it, to the second:
    // it picks that backup (times are compared to the second), and the
    // second backup, at least 1.1 s later, shows a later second.
    let second = |t: DateTime<Utc>| {
        t.duration_trunc(chrono::Duration::seconds(1))
            .expect("trunc")
    };
    let between = second(p1);
    assert!(between < second(p2), "{p1} {between} {p2}");
    let between_text = between.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let state = |db: &str| {
        w.pg.psql(
            db,
            "SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM state",
        )
    };
    let (_, plan) = ok_with_stderr(
        &w.ws,
        &[
            "restore",
            "shop",
            "--to",
            &between_text,
            "--target",
            &w.pg.url("at_first"),
            "--yes",
        ],
    );
    assert_eq!(
        state("at_first"),
        "1=first",
        "--to {between_text} restores the first backup"
    );
    assert!(plan.contains("Restore plan:"), "plan on stderr:\n{plan}");
    assert!(
        plan.lines()
            .any(|l| l.trim_start().starts_with("backup") && l.contains(&ids[0])),
        "the plan names backup {}:\n{plan}",
        ids[0]
    );
    assert!(
        plan.contains(&format!("{} UTC", between.format("%Y-%m-%d %H:%M:%S"))),
        "the plan states the target time:\n{plan}"
    );
    let window = plan
        .lines()
        .find(|l| l.contains("data-loss window"))
        .unwrap_or_else(|| panic!("the plan states the data-loss window:\n{plan}"));
    assert!(
        window.contains("before the target time"),
        "the data-loss window is relative to the target time: {window}"
    );
    // The next backup is named as the one the target did not reach; the
    // one after it is not.
    assert!(
        plan.lines()
            .any(|l| l.trim_start().starts_with("next backup") && l.contains(&ids[1])),
        "the plan names the next backup {}:\n{plan}",
        ids[1]
    );
    assert!(!plan.contains(&ids[2]), "{plan}");

    // An id prefix, unique by its time part.
    let prefix = &ids[1][..ids[1].len() - 4];
    let (stdout, plan) = ok_with_stderr(
        &w.ws,
        &[
            "restore",
            "shop",
            "--backup",
            prefix,
            "--target",
            &w.pg.url("by_id"),
            "--yes",
        ],
    );
    assert_eq!(state("by_id"), "1=second,2=second", "--backup {prefix}");
    assert!(plan.contains(&ids[1]), "the plan names {}:\n{plan}", ids[1]);
    assert!(stdout.contains(&ids[1]), "{stdout}");

    let (_, plan) = ok_with_stderr(
        &w.ws,
        &[
            "restore",
            "shop",
            "--to",
            "latest",
            "--target",
            &w.pg.url("latest"),
            "--yes",
        ],
    );
    assert_eq!(state("latest"), "1=third,2=third,3=third");
    assert!(plan.contains(&ids[2]), "{plan}");
    assert!(plan.contains("data-loss window"), "{plan}");

    // Before the first backup: bad input, and nothing is created.
    let early =
        (p1 - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let err = w.ws.fails(
        &[
            "restore",
            "shop",
            "--to",
            &early,
            "--target",
            &w.pg.url("too_early"),
            "--yes",
        ],
        2,
    );
    assert!(err.contains("no backup of `shop` is at or before"), "{err}");
    assert!(
        !database_exists(&w.pg, "too_early"),
        "nothing created for a refused restore"
    );

    // An ambiguous prefix is refused, naming how many match.
    let ambiguous = &ids[0][..4];
    let err = w.ws.fails(
        &[
            "restore",
            "shop",
            "--backup",
            ambiguous,
            "--target",
            &w.pg.url("ambiguous"),
            "--yes",
        ],
        2,
    );
    assert!(err.contains("matches 3 backups"), "{err}");
    assert!(!database_exists(&w.pg, "ambiguous"));
}

// ---------------------------------------------------------------------------
// 5. list --json and verify on healthy backups.
// ---------------------------------------------------------------------------

fn list_and_verify(kind: Kind) {
    let mut w = World::new(kind);
    w.pg.createdb("shop");
    w.pg.psql(
        "shop",
        "CREATE TABLE orders(id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
    );
    w.postgres_policy("shop", "shop");
    let files = tempfile::tempdir().expect("files temp dir");
    std::fs::write(files.path().join("a.conf"), b"a = 1\n").expect("write");
    w.ws.files_policy("conf", &[files.path()]);

    let shop: Vec<String> = (0..3).map(|_| w.ws.backup("shop")).collect();
    let conf = w.ws.backup("conf");

    let all = list_json(&w.ws, None);
    let keys: Vec<&String> = all.as_object().expect("an object").keys().collect();
    assert_eq!(
        keys,
        ["backups", "damaged", "untrusted"],
        "list --json top level"
    );
    assert_eq!(all["damaged"], serde_json::json!([]));
    assert_eq!(all["untrusted"], serde_json::json!([]));
    let rows = all["backups"].as_array().expect("backups array");
    assert_eq!(rows.len(), 4, "every backup of every policy:\n{all:#}");
    for row in rows {
        let fields: Vec<&String> = row.as_object().expect("row object").keys().collect();
        let mut sorted = fields.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "duration_seconds",
                "host",
                "id",
                "kind",
                "plaintext_bytes",
                "point_in_time",
                "policy",
                "size_bytes"
            ],
            "fields of a list row: {row}"
        );
        let id = row["id"].as_str().expect("id is a string");
        assert!(is_backup_id(id), "id {id:?} has the documented form");
        let policy = row["policy"].as_str().expect("policy");
        let manifest = w.manifest(policy, id);
        assert_eq!(row["kind"], manifest["kind"]);
        assert_eq!(
            row["kind"],
            if policy == "shop" {
                "postgres"
            } else {
                "files"
            }
        );
        assert_eq!(row["size_bytes"], manifest["data"]["size"]);
        assert_eq!(row["plaintext_bytes"], manifest["data"]["plaintext_size"]);
        assert!(row["size_bytes"].as_u64().is_some_and(|n| n > 0), "{row}");
        assert!(
            row["plaintext_bytes"].as_u64().is_some_and(|n| n > 0),
            "{row}"
        );
        assert!(
            row["duration_seconds"].as_f64().is_some_and(|s| s >= 0.0),
            "{row}"
        );
        assert!(row["host"].as_str().is_some_and(|h| !h.is_empty()), "{row}");
        assert_eq!(point_in_time(row), {
            let text = manifest["point_in_time"]
                .as_str()
                .expect("manifest point_in_time");
            DateTime::parse_from_rfc3339(text)
                .expect("RFC 3339")
                .with_timezone(&Utc)
        });
    }
    let policy_ids = |policy: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["policy"] == policy)
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect()
    };
    let newest_first: Vec<String> = shop.iter().rev().cloned().collect();
    assert_eq!(policy_ids("shop"), newest_first, "newest first");
    assert_eq!(policy_ids("conf"), std::slice::from_ref(&conf));

    let only_shop = list_json(&w.ws, Some("shop"));
    let only: Vec<&str> = only_shop["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        only,
        newest_first.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let times: Vec<DateTime<Utc>> = only_shop["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(point_in_time)
        .collect();
    assert!(
        times.windows(2).all(|p| p[0] > p[1]),
        "points in time strictly decrease: {times:?}"
    );

    let human = w.ws.ok(&["list"]);
    assert!(human.contains("shop: 3 backups"), "{human}");
    assert!(human.contains("conf: 1 backup"), "{human}");

    for read_data in [false, true] {
        let mut args = vec!["verify"];
        if read_data {
            args.push("--read-data");
        }
        let out = w.ws.ok(&args);
        for id in shop.iter().chain([&conf]) {
            assert!(
                out.lines()
                    .any(|l| l.starts_with("ok ") && l.ends_with(id.as_str())),
                "verify reports {id} ok:\n{out}"
            );
        }
        let summary = if read_data {
            "4 backups checked (every byte read), 0 failed"
        } else {
            "4 backups checked (sizes only; --read-data reads every byte), 0 failed"
        };
        assert!(out.contains(summary), "{out}");
        args.push("--json");
        let json: Value = serde_json::from_str(&w.ws.ok(&args)).expect("verify --json is JSON");
        assert_eq!(json["read_data"], read_data);
        assert_eq!(json["damaged_manifests"], serde_json::json!([]));
        let reports = json["backups"].as_array().expect("backups");
        assert_eq!(reports.len(), 4, "{json:#}");
        assert!(
            reports
                .iter()
                .all(|r| r["ok"] == true && r["problems"] == serde_json::json!([])),
            "{json:#}"
        );
    }
    let one = w.ws.ok(&["verify", "conf", "--read-data"]);
    assert!(
        one.contains("1 backup checked (every byte read), 0 failed"),
        "{one}"
    );
}

// ---------------------------------------------------------------------------
// 6. A backup big enough for several S3 multipart parts.
// ---------------------------------------------------------------------------

fn multipart_backup(kind: Kind) {
    let versioned = matches!(kind, Kind::S3);
    let mut w = World::new(kind);
    w.pg.createdb("big");
    // Random base64 text: zstd cannot squeeze it below 6 bits a character,
    // so ~23 MiB of it (plus pg_dump's framing) stays above 16 MiB once
    // compressed and encrypted: three parts of 8 MiB. Base64 rather than
    // bytea because pg_dump writes bytea as hex, twice the bytes to push
    // through the pipeline for the same stored size.
    w.pg.psql(
        "big",
        "CREATE EXTENSION pgcrypto; \
         CREATE TABLE noise(id int PRIMARY KEY, t text NOT NULL); \
         INSERT INTO noise SELECT g, translate(encode(gen_random_bytes(768), 'base64'), E'\\n', '') \
         FROM generate_series(1, 23000) g;",
    );
    w.postgres_policy("big", "big");
    let id = w.ws.backup("big");
    let manifest = w.manifest("big", &id);
    let size = manifest["data"]["size"].as_u64().expect("data.size");
    let parts = size.div_ceil(S3_FIRST_PART_BYTES);
    assert!(
        parts >= 3,
        "the encrypted dump ({size} bytes) should need at least 3 parts of {S3_FIRST_PART_BYTES}"
    );

    if let Some((server, bucket)) = &w.s3 {
        let key = format!(
            "{S3_PREFIX}/{}",
            manifest["data"]["key"].as_str().expect("data.key")
        );
        let version = manifest["data"]["version_id"].as_str();
        if versioned {
            assert!(
                version.is_some(),
                "a versioned bucket records data.version_id: {manifest:#}"
            );
        } else {
            assert_eq!(
                version, None,
                "an unversioned bucket has no version ids: {manifest:#}"
            );
        }
        let head = block_on(
            server
                .client()
                .head_object()
                .bucket(bucket)
                .key(&key)
                .set_version_id(version.map(str::to_string))
                .send(),
        )
        .unwrap_or_else(|e| panic!("head {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
        assert_eq!(head.content_length(), Some(size as i64), "stored size");
        let etag = head
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        assert!(
            etag.ends_with(&format!("-{parts}")),
            "a multipart object of {parts} parts has an ETag ending in -{parts}: {etag}"
        );
        assert_eq!(
            block_on(server.list_multipart_uploads(bucket)),
            0,
            "no multipart upload left open"
        );
    }

    let target = w.pg.url("big_restored");
    let (stdout, _) = ok_with_stderr(
        &w.ws,
        &[
            "restore", "big", "--backup", &id, "--target", &target, "--yes", "--verify",
        ],
    );
    assert!(stdout.contains("fingerprint matched"), "{stdout}");
    let digest =
        "SELECT count(*), sum(length(t)), md5(string_agg(md5(t), '' ORDER BY id)) FROM noise";
    let source = w.pg.psql("big", digest);
    assert!(source.starts_with("23000|23552000|"), "{source}");
    assert_eq!(w.pg.psql("big_restored", digest), source);
    if let Some((server, bucket)) = &w.s3 {
        assert_eq!(block_on(server.list_multipart_uploads(bucket)), 0);
    }
}

// ---------------------------------------------------------------------------
// One test per (case, backend).
// ---------------------------------------------------------------------------

#[test]
fn awkward_database_round_trip_local() {
    awkward_database_round_trip(Kind::Local);
}

#[test]
fn awkward_database_round_trip_s3() {
    awkward_database_round_trip(Kind::S3);
}

#[test]
fn output_file_is_a_custom_format_dump_local() {
    output_file_is_a_custom_format_dump(Kind::Local);
}

#[test]
fn output_file_is_a_custom_format_dump_s3() {
    output_file_is_a_custom_format_dump(Kind::S3);
}

#[test]
fn output_dash_streams_to_stdout_local() {
    output_dash_streams_to_stdout(Kind::Local);
}

#[test]
fn files_round_trip_local() {
    files_round_trip(Kind::Local);
}

#[test]
fn files_round_trip_s3() {
    files_round_trip(Kind::S3);
}

#[test]
fn to_selection_local() {
    to_selection(Kind::Local);
}

#[test]
fn to_selection_s3() {
    to_selection(Kind::S3);
}

#[test]
fn list_and_verify_local() {
    list_and_verify(Kind::Local);
}

#[test]
fn list_and_verify_s3() {
    list_and_verify(Kind::S3);
}

#[test]
fn multipart_backup_s3() {
    multipart_backup(Kind::S3);
}

/// Regression: moto answers CompleteMultipartUpload on an unversioned bucket
/// with `x-amz-version-id: null`, which drctl once recorded and then asked
/// for, failing every multipart backup there.
#[test]
fn multipart_backup_s3_unversioned_bucket() {
    multipart_backup(Kind::S3Unversioned);
}
