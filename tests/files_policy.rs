//! Files policies on a live system: a path that cannot be read, and a file
//! that changes while it is archived.
//!
//! By default one unreadable path fails the backup (nothing is left that
//! looks like a backup); with `on_unreadable = "skip"` the backup goes on and
//! says what it left out, on stderr and in the manifest's `warnings`. A file
//! rewritten while it was read is archived as read, with a warning naming it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use common::workspace::{COMMAND_TIMEOUT, Workspace};
use common::{collect_within, wait_for};

/// Each level of the deep tree: 200 bytes of name and a slash.
const LEVEL_NAME_BYTES: usize = 200;
/// Enough levels that the deepest path is longer than PATH_MAX (4096).
const LEVELS: usize = 21;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `root` holding `hosts` and a chain of directories whose deepest path is
/// longer than PATH_MAX, so that no path-based call can reach it. Made with
/// `mkdirat` and `openat`, relative to the directory above, which have no
/// such limit. Returns the path that cannot be read: the directory at the
/// last level.
fn tree_with_a_path_over_path_max(root: &Path) -> PathBuf {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    std::fs::create_dir_all(root).expect("create the source dir");
    std::fs::write(root.join("hosts"), "127.0.0.1 localhost\n").expect("write a file");
    let name = "d".repeat(LEVEL_NAME_BYTES);
    let c_name = std::ffi::CString::new(name.clone()).unwrap();
    let mut dir: OwnedFd = std::fs::File::open(root)
        .expect("open the source dir")
        .into();
    for _ in 0..LEVELS {
        // SAFETY: a valid directory descriptor and a NUL-terminated name;
        // the new descriptor is owned at once.
        unsafe {
            assert_eq!(
                libc::mkdirat(dir.as_raw_fd(), c_name.as_ptr(), 0o755),
                0,
                "mkdirat: {}",
                std::io::Error::last_os_error()
            );
            let next = libc::openat(
                dir.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            );
            assert!(next >= 0, "openat: {}", std::io::Error::last_os_error());
            dir = OwnedFd::from_raw_fd(next);
        }
    }
    let mut deepest = root.to_path_buf();
    for _ in 0..LEVELS {
        deepest.push(&name);
    }
    assert!(deepest.as_os_str().len() > 4096);
    deepest
}

fn policy(ws: &Workspace, name: &str, root: &Path, extra: &str) {
    ws.write(
        &format!("policies/{name}.toml"),
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n{extra}",
            root.display()
        ),
    );
}

fn manifest(ws: &Workspace, policy: &str, id: &str) -> Value {
    let path = ws
        .repo_dir()
        .join(format!("backups/{policy}/{id}/manifest.json"));
    serde_json::from_slice(&std::fs::read(path).expect("read manifest.json"))
        .expect("manifest.json is JSON")
}

/// The names in the tar stream of the newest backup of `policy`.
fn archived_names(ws: &Workspace, policy: &str) -> Vec<String> {
    let out = ws.path().join(format!("{policy}.tar"));
    ws.ok(&[
        "restore",
        policy,
        "--to",
        "latest",
        "--output",
        out.to_str().unwrap(),
    ]);
    let mut archive = tar::Archive::new(std::fs::File::open(&out).expect("open the tar"));
    let names = archive
        .entries()
        .expect("read the tar")
        .map(|e| text(&e.expect("tar entry").path_bytes()))
        .collect();
    std::fs::remove_file(&out).expect("remove the tar");
    names
}

#[test]
fn an_unreadable_path_fails_the_backup_by_default_and_says_how_to_go_on() {
    let ws = Workspace::local();
    let root = ws.path().join("src");
    let deepest = tree_with_a_path_over_path_max(&root);
    policy(&ws, "etc", &root, "");

    let err = ws.fails(&["backup", "etc"], 1);
    assert!(err.contains("policy `etc`"), "{err}");
    assert!(err.contains(&deepest.display().to_string()), "{err}");
    assert!(err.contains("on_unreadable = \"skip\""), "{err}");
    assert!(ws.backups("etc").is_empty(), "a failed backup is listed");
}

#[test]
fn on_unreadable_skip_backs_up_the_rest_and_records_a_warning() {
    let ws = Workspace::local();
    let root = ws.path().join("src");
    let deepest = tree_with_a_path_over_path_max(&root);
    policy(&ws, "etc", &root, "on_unreadable = \"skip\"\n");
    ws.ok(&["check"]);

    let out = ws.run(&["backup", "etc"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let deepest_text = deepest.display().to_string();
    assert!(stderr.contains("warning"), "{stderr}");
    assert!(stderr.contains(&deepest_text), "{stderr}");

    let backups = ws.backups("etc");
    assert_eq!(backups.len(), 1);
    let id = backups[0]["id"].as_str().unwrap();
    let warnings = manifest(&ws, "etc", id)["warnings"].clone();
    let warnings = warnings.as_array().expect("the manifest has warnings");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = warnings[0].as_str().unwrap();
    assert!(warning.contains(&deepest_text), "{warning}");
    assert!(warning.contains("skipped"), "{warning}");

    ws.ok(&["verify", "etc", "--read-data"]);
    let names = archived_names(&ws, "etc");
    let rel = |p: &Path| p.strip_prefix("/").unwrap().display().to_string();
    assert!(names.contains(&rel(&root.join("hosts"))), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with(&rel(&deepest))),
        "the unreadable path is in the archive"
    );
    // One level up was readable and is there.
    assert!(
        names.contains(&format!("{}/", rel(deepest.parent().unwrap())))
            || names.contains(&rel(deepest.parent().unwrap())),
        "the readable levels are missing"
    );
}

/// A backup without problems writes no `warnings` at all, so manifests of
/// older drctl versions and new ones look the same.
#[test]
fn a_clean_backup_has_no_warnings_field() {
    let ws = Workspace::local();
    let root = ws.path().join("src");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    policy(&ws, "etc", &root, "");
    let id = ws.backup("etc");
    assert!(manifest(&ws, "etc", &id).get("warnings").is_none());
}

/// `restore --dry-run` prints the plan and touches nothing: the directory
/// is not created; a refusal (an existing file) is still reported.
#[test]
fn restore_dry_run_prints_the_plan_and_creates_nothing() {
    let ws = Workspace::local();
    let root = ws.path().join("src");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    policy(&ws, "etc", &root, "");
    let id = ws.backup("etc");
    let into = ws.path().join("restored");
    let out = ws.run(&[
        "restore",
        "etc",
        "--to",
        "latest",
        "--into",
        into.to_str().unwrap(),
        "--dry-run",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Restore plan") && stderr.contains(&id) && stderr.contains("dry run"),
        "{stderr}"
    );
    assert!(!into.exists(), "a dry run created {}", into.display());

    let file = ws.path().join("taken.tar");
    std::fs::write(&file, "mine").unwrap();
    let out = ws.run(&[
        "restore",
        "etc",
        "--to",
        "latest",
        "--output",
        file.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(
        !out.status.success(),
        "an existing file is refused even in a dry run"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
}

/// The read position of `pid`'s descriptor open on `file`, if it has one.
fn read_position(pid: u32, file: &Path) -> Option<u64> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let entry = entry.ok()?;
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(file) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_str()?
        ))
        .ok()?;
        return info
            .lines()
            .find_map(|l| l.strip_prefix("pos:"))
            .and_then(|p| p.trim().parse().ok());
    }
    None
}

/// The state letters of `pid`'s threads (`R`, `S`, `T` stopped, `Z`…),
/// empty once it is gone.
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit_once(')')?.1.trim_start().chars().next())
        .collect()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {sig}");
}

/// A file rewritten in place while it is archived is archived torn; the
/// backup says so. The test stops drctl while it is part-way through the
/// file (its read position is below the size), rewrites the start of the
/// file and moves its mtime, and lets drctl go on. If drctl had already read
/// all of the file when it was stopped, that attempt proves nothing and the
/// test tries again.
#[test]
fn a_file_changed_while_it_is_read_is_named_in_a_warning() {
    const SIZE: usize = 64 * 1024 * 1024;
    const ATTEMPTS: usize = 5;
    let ws = Workspace::local();
    let root = ws.path().join("src");
    std::fs::create_dir_all(&root).unwrap();
    let big = root.join("big.db");
    let mut data = Vec::with_capacity(SIZE);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    while data.len() < SIZE {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        data.extend_from_slice(&seed.to_le_bytes());
    }
    std::fs::write(&big, &data).unwrap();
    drop(data);
    policy(&ws, "etc", &root, "");

    for attempt in 1..=ATTEMPTS {
        let mut cmd = ws.cmd(&["backup", "etc"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("start drctl backup");
        let pid = child.id();
        let caught = wait_for("drctl to open big.db", COMMAND_TIMEOUT, || {
            if read_position(pid, &big).is_some() {
                return Some(true);
            }
            // Finished before it was seen reading.
            let states = thread_states(pid);
            (states.is_empty() || states.contains(&'Z')).then_some(false)
        });
        let mut changed = false;
        if caught {
            signal(pid, libc::SIGSTOP);
            wait_for("drctl to stop", COMMAND_TIMEOUT, || {
                let states = thread_states(pid);
                states.iter().all(|s| matches!(s, 'T' | 'Z')).then_some(())
            });
            if read_position(pid, &big).is_some_and(|pos| pos < SIZE as u64) {
                let file = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
                file.write_all_at(b"rewritten in place", 0).unwrap();
                let old = file.metadata().unwrap().modified().unwrap();
                file.set_modified(old + Duration::from_secs(17)).unwrap();
                changed = true;
            }
            signal(pid, libc::SIGCONT);
        }
        let out = collect_within(child, "drctl backup etc", COMMAND_TIMEOUT);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        if !changed {
            eprintln!("attempt {attempt}: drctl was not caught reading big.db; trying again");
            continue;
        }
        let big_text = big.display().to_string();
        assert!(stderr.contains("warning"), "{stderr}");
        assert!(stderr.contains(&big_text), "{stderr}");
        assert!(stderr.contains("changed while"), "{stderr}");
        let id = ws.backups("etc")[0]["id"].as_str().unwrap().to_string();
        let warnings = manifest(&ws, "etc", &id)["warnings"].clone();
        assert!(
            warnings
                .as_array()
                .is_some_and(|w| w.len() == 1 && w[0].as_str().unwrap().contains(&big_text)),
            "{warnings}"
        );
        return;
    }
    panic!("drctl was never caught part-way through big.db in {ATTEMPTS} attempts");
}
