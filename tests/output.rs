//! Where drctl's output goes when nobody reads it: a closed or broken stdout
//! or stderr never makes drctl panic. A stdout whose reader went away (`drctl
//! list | head -0`) ends the output quietly and the command keeps its own
//! exit code; a stderr that cannot be written is not an error of the job.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::workspace::{COMMAND_TIMEOUT, Workspace};

/// A workspace with a files policy `etc` and one backup, so that `list` has
/// something to print.
fn etc() -> (Workspace, String) {
    let ws = Workspace::local();
    let src = ws.path().join("etc-src");
    std::fs::create_dir_all(&src).expect("create the source dir");
    std::fs::write(src.join("hosts"), "127.0.0.1 localhost\n").expect("write a file");
    ws.files_policy("etc", &[&src]);
    let id = ws.backup("etc");
    (ws, id)
}

/// stderr without the warning every command of an unsigned repository
/// gives (these tests are about the pipes, not about signing).
fn complaints(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("unsigned mode"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What a run left: its status and whatever could be read from the pipes
/// the test kept (empty for the streams it closed or broke).
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with the given stdout and stderr, closing the descriptors in
/// `close` in the child first (as the shell's `2>&-` does), and waits for
/// it within the harness's command timeout.
fn run(mut cmd: Command, stdout: Stdio, stderr: Stdio, close: &'static [i32]) -> Run {
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    // SAFETY: close(2) is async-signal-safe and touches nothing but the
    // child's own descriptor table.
    unsafe {
        cmd.pre_exec(move || {
            for fd in close {
                libc::close(*fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start drctl");
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for drctl") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("drctl did not finish within {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// The write end of a pipe whose read end is already closed: writing to it
/// fails with EPIPE.
fn broken_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("create a pipe");
    drop(reader);
    Stdio::from(writer)
}

/// Rust's runtime opens `/dev/null` on a closed 0, 1 or 2 before `main`;
/// this holds drctl to it, since otherwise the next descriptor it opens
/// (the runtime's epoll, a connection to S3, a file being restored) would
/// receive what it prints.
#[test]
fn a_closed_stderr_does_not_make_drctl_panic() {
    let (ws, id) = etc();
    // An error to report on a stderr that is not there: the exit code still
    // says what happened.
    let r = run(
        ws.cmd(&["list", "nosuch"]),
        Stdio::piped(),
        Stdio::inherit(),
        &[2],
    );
    assert_eq!(r.status.code(), Some(2), "stdout:\n{}", r.stdout);

    // A listing still works and still lands on stdout.
    let r = run(
        ws.cmd(&["list", "etc"]),
        Stdio::piped(),
        Stdio::inherit(),
        &[2],
    );
    assert_eq!(r.status.code(), Some(0), "stdout:\n{}", r.stdout);
    assert!(r.stdout.contains(&id), "{}", r.stdout);
}

#[test]
fn stderr_into_a_broken_pipe_does_not_make_drctl_panic() {
    let (ws, id) = etc();
    let r = run(
        ws.cmd(&["list", "nosuch"]),
        Stdio::piped(),
        broken_pipe(),
        &[],
    );
    assert_eq!(r.status.code(), Some(2), "stdout:\n{}", r.stdout);

    let r = run(ws.cmd(&["list", "etc"]), Stdio::piped(), broken_pipe(), &[]);
    assert_eq!(r.status.code(), Some(0), "stdout:\n{}", r.stdout);
    assert!(r.stdout.contains(&id), "{}", r.stdout);
}

/// `drctl list | head -0`: the reader is gone before drctl writes. drctl
/// stops writing, says nothing about it and exits as the command went.
#[test]
fn stdout_into_a_broken_pipe_ends_quietly() {
    let (ws, _id) = etc();
    for args in [&["list"][..], &["list", "--json"][..], &["check"][..]] {
        let r = run(ws.cmd(args), broken_pipe(), Stdio::piped(), &[]);
        assert_eq!(r.status.code(), Some(0), "drctl {args:?}:\n{}", r.stderr);
        assert_eq!(complaints(&r.stderr), "", "drctl {args:?} complained");
    }
    // The command's own failure keeps its exit code and its message.
    let r = run(
        ws.cmd(&["list", "nosuch"]),
        broken_pipe(),
        Stdio::piped(),
        &[],
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("no policy named `nosuch`"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let (ws, _id) = etc();
    let r = run(ws.cmd(&["list"]), Stdio::inherit(), Stdio::piped(), &[1]);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert_eq!(complaints(&r.stderr), "");
}

/// Two backups of `etc` a second or more apart, listed in New York time
/// (UTC-5, so the local date and clock differ from UTC's): `(older id,
/// newer id, the older one's row of `list`)`.
fn two_backups_in_new_york() -> (Workspace, String, String, Vec<String>) {
    let (mut ws, older) = etc();
    std::thread::sleep(Duration::from_millis(1100));
    let newer = ws.backup("etc");
    ws.set_env("TZ", "America/New_York");
    let listing = ws.ok(&["list", "etc"]);
    assert!(listing.contains("LOCAL (New_York)"), "{listing}");
    let row: Vec<String> = listing
        .lines()
        .find(|l| l.contains(&older))
        .unwrap_or_else(|| panic!("no row for {older}:\n{listing}"))
        .split_whitespace()
        .map(String::from)
        .collect();
    (ws, older, newer, row)
}

/// The plan's value for `key`, from `restore --dry-run`'s stderr, with the
/// lines a long value wraps onto (indented under it) joined again.
fn plan_line(stderr: &str, key: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no `{key}` in the plan:\n{stderr}"));
    let mut value = lines[at].trim_start()[key.len()..].trim().to_string();
    for more in lines[at + 1..]
        .iter()
        .take_while(|l| l.starts_with(&" ".repeat(20)))
    {
        value.push(' ');
        value.push_str(more.trim());
    }
    value
}

/// `list` showed UTC while `--to "YYYY-MM-DD HH:MM"` was read as local time,
/// so a time pasted from `list` picked another backup or was "in the
/// future". Now the UTC column carries its `Z`, the local clock stands
/// beside it, and either one pasted picks the backup on that row; the plan
/// says how a local time was read.
#[test]
fn a_time_pasted_from_either_list_column_picks_that_backup() {
    let (ws, older, newer, row) = two_backups_in_new_york();
    // ID, UTC, local date, local clock, …
    let (utc, local) = (row[1].clone(), format!("{} {}", row[2], row[3]));
    assert!(utc.ends_with('Z'), "{row:?}");
    for pasted in [utc.as_str(), local.as_str(), row[3].as_str()] {
        let out = ws.run(&[
            "restore",
            "etc",
            "--to",
            pasted,
            "--into",
            "out",
            "--dry-run",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "--to {pasted}:\n{stderr}");
        assert_eq!(
            plan_line(&stderr, "backup"),
            older,
            "--to {pasted}:\n{stderr}"
        );
        // On-call terminals are often 80 columns: long values wrap.
        for line in stderr.lines() {
            assert!(line.chars().count() <= 80, "wider than 80 columns: {line}");
        }
        // The plan names what the target could not reach, and what it is.
        let next = plan_line(&stderr, "next backup");
        assert!(next.starts_with(&newer), "{stderr}");
        assert!(
            plan_line(&stderr, "restores").contains("snapshot"),
            "{stderr}"
        );
        let point = plan_line(&stderr, "point in time");
        assert!(
            point.contains("America/New_York") && point.contains(&row[3]),
            "{point:?} {row:?}\n{stderr}"
        );
        let target = plan_line(&stderr, "target time");
        if pasted.ends_with('Z') {
            assert!(!target.contains("read as"), "{stderr}");
        } else {
            assert!(
                target.contains(&format!("`{pasted}` read as"))
                    && target.contains("America/New_York (UTC-05:00) = ")
                    && target.contains(&format!(
                        "{} UTC",
                        utc.replace('T', " ").trim_end_matches('Z')
                    )),
                "{stderr}"
            );
        }
    }
    assert!(!ws.path().join("out").exists());
}

/// A bare date is its local midnight, echoed as read; times in messages
/// are to the second.
#[test]
fn a_bare_date_is_read_as_local_midnight_and_times_have_no_fractions() {
    let (ws, _older, _newer, row) = two_backups_in_new_york();
    let err = ws.fails(
        &[
            "restore",
            "etc",
            "--to",
            &row[2],
            "--into",
            "out",
            "--dry-run",
        ],
        2,
    );
    assert!(
        err.contains(&format!(
            "`{}` read as {} 00:00:00 America/New_York (UTC-05:00) = ",
            row[2], row[2]
        )),
        "{err}"
    );
    assert!(err.contains("no backup of `etc` is at or before"), "{err}");
    let err = ws.fails(
        &[
            "restore",
            "etc",
            "--to",
            "2099-01-01 10:00",
            "--into",
            "out",
        ],
        2,
    );
    let now = err
        .split("now is ")
        .nth(1)
        .unwrap_or_else(|| panic!("{err}"));
    // `2026-11-30 17:44:00 UTC)`: no fraction of a second, no offset.
    assert_eq!(&now[19..24], " UTC)", "{err}");
    assert!(!ws.path().join("out").exists());
}

/// Under `--json` a script gets the error as one JSON object on stderr
/// (with the exit code's name), and the restore plan's keys are snake_case.
#[test]
fn under_json_errors_and_plans_are_json_with_snake_case_keys() {
    let (ws, id) = etc();
    let out = ws.run(&["list", "nosuch", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the error is not JSON ({e}): {stderr}"));
    assert_eq!(v["error"]["kind"], "bad_input", "{v}");
    assert_eq!(v["error"]["exit_code"], 2, "{v}");
    assert_eq!(v["error"]["temporary"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no policy named `nosuch`")),
        "{v}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());

    let out = ws.run(&[
        "restore",
        "etc",
        "--to",
        "latest",
        "--into",
        "out",
        "--dry-run",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let plan: serde_json::Value = stderr
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON plan on stderr: {stderr}"));
    let keys: Vec<&String> = plan["plan"]
        .as_object()
        .expect("a plan object")
        .keys()
        .collect();
    assert!(
        keys.iter()
            .all(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')),
        "{keys:?}"
    );
    assert_eq!(plan["plan"]["backup"], id.as_str());
    assert!(plan["plan"]["point_in_time"].is_string(), "{plan}");
}

/// On a terminal a restore's bar counts the data it hands on, not the
/// stored bytes it fetches: 64 MiB of zeros are stored in a few KiB, and
/// the bar's total says 64 MiB. Run under `script`, which gives drctl a
/// pseudo-terminal of 80 columns.
#[test]
fn a_restore_on_a_terminal_counts_data_bytes() {
    let ws = common::workspace::Workspace::local();
    let dir = ws.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("zeros.bin"), vec![0u8; 64 << 20]).unwrap();
    ws.files_policy("zeros", &[&dir]);
    let id = ws.backup("zeros");
    let stored = ws.backups("zeros")[0]["size_bytes"].as_u64().unwrap();
    assert!(
        stored < 1 << 20,
        "the zeros compress: {stored} bytes stored"
    );
    let into = ws.path().join("restored");
    let command = format!(
        "stty cols 80; {} --config {} restore zeros --backup {id} --into {}",
        env!("CARGO_BIN_EXE_drctl"),
        ws.path().join("drctl.toml").display(),
        into.display()
    );
    let out = common::output_within(
        std::process::Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .env("TERM", "xterm"),
        b"",
        std::time::Duration::from_secs(120),
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("/64.00 MiB"),
        "the bar's total is the data's size, not the {stored} stored bytes:\n{shown:?}"
    );
    assert_eq!(
        std::fs::metadata(into.join(dir.strip_prefix("/").unwrap()).join("zeros.bin"))
            .unwrap()
            .len(),
        64 << 20
    );
}
