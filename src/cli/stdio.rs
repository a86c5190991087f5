//! stdout and stderr for people and pipes: writes that never panic.
//!
//! `println!` and `eprintln!` panic when a write fails: `drctl list | head
//! -0`, or a stderr whose reader has gone, ended in exit 101. drctl keeps
//! SIGPIPE ignored (Rust's default) and handles EPIPE itself rather than
//! letting SIGPIPE kill the process as classic Unix filters do: a backup,
//! a restore or the daemon whose log reader goes away must still finish
//! its job (or abort its upload and write no manifest) rather than die
//! part-way, and a restore to a pipe must report that its reader stopped.
//!
//! So: once stdout's reader is gone, what drctl would print there is
//! dropped and the command ends with its own exit code, as ripgrep does; a
//! stdout that fails otherwise (a full disk) is an error at the end, since
//! the result was not delivered. What cannot be written to stderr is
//! dropped: there is nowhere left to say so.
//!
//! A closed descriptor (`drctl list 2>&-`) needs nothing here: Rust's
//! runtime opens `/dev/null` on a closed 0, 1 or 2 before `main`, so no file
//! or connection drctl opens later can take its number.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout's reader has gone (EPIPE): nothing more is written there.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// The first failure writing stdout other than its reader going away.
static STDOUT_FAILED: Mutex<Option<std::io::Error>> = Mutex::new(None);

/// Writes to stdout; see the module's description for failures.
pub fn out(args: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let mut failed = STDOUT_FAILED.lock().unwrap_or_else(|p| p.into_inner());
            failed.get_or_insert(e);
        }
    }
}

/// Writes to stderr, dropping what cannot be written.
pub fn err(args: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(args);
    let _ = stderr.flush();
}

/// Flushes stdout at the end of the command and returns the failure that
/// kept its output from being delivered, if any. A reader that went away is
/// not one: it had what it wanted.
pub fn finish() -> Option<std::io::Error> {
    if !STDOUT_GONE.load(Ordering::Relaxed)
        && let Err(e) = std::io::stdout().lock().flush()
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Some(e);
    }
    STDOUT_FAILED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
}
