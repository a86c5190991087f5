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
