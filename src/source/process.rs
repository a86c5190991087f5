//! Child processes (pg_dump, pg_restore): spawned so that they die with us,
//! their stderr kept (the tail of it) for error messages, their exit status
//! always checked.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The last bytes of stderr kept for an error message.
pub const STDERR_TAIL_BYTES: usize = 16 * 1024;

pub struct Supervised {
    pub child: Child,
    pub name: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

/// Spawns `cmd` with stderr captured. On Linux the child gets SIGKILL if
/// drctl dies, so a killed backup never leaves a pg_dump behind.
///
/// # Errors
/// When the program cannot be started.
pub fn spawn(mut cmd: Command, name: &str) -> std::io::Result<Supervised> {
    cmd.stderr(Stdio::piped());
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let sink = stderr.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut s = sink.lock().expect("stderr buffer poisoned");
            s.extend_from_slice(&buf[..n]);
            if s.len() > STDERR_TAIL_BYTES {
                let cut = s.len() - STDERR_TAIL_BYTES;
                s.drain(..cut);
            }
        }
    });
    Ok(Supervised {
        child,
        name: name.to_string(),
        stderr,
        reader: Some(reader),
    })
}

impl Supervised {
    /// Waits for exit and returns the status with the stderr tail.
    pub fn wait(mut self) -> std::io::Result<(ExitStatus, String)> {
        let status = self.child.wait()?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let text = String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer poisoned"))
            .trim()
            .to_string();
        Ok((status, text))
    }

    /// Kills the child (it may already be gone) and reaps it.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        self.wait().map(|(_, s)| s).unwrap_or_default()
    }
}

/// `exit status 1` or `killed by signal 9`, for messages.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The `X.Y` version a PostgreSQL client tool prints with `--version`.
///
/// # Errors
/// When it cannot be run or prints no version.
pub fn tool_version(program: &std::path::Path) -> Result<String, String> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (install the PostgreSQL client, or set `source.bin_dir`)",
                program.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| format!("{} --version printed `{}`", program.display(), text.trim()))
}

pub fn major_of(version: &str) -> u32 {
    version
        .split(['.', ' '])
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// How much a child's stdout is read at a time.
const READ_BYTES: usize = 256 * 1024;

/// Copies a child's stdout into `out` until end of file, handing each chunk
/// also to `tap` (a parser on its own thread; it only stops early if it
/// panicked, which its `join` reports) and counting bytes in `counter`.
/// `on_read` runs after every read (a watchdog's clock).
///
/// # Errors
/// The read's or the write's error.
pub fn tee(
    stdout: &mut impl Read,
    tap: &std::sync::mpsc::SyncSender<bytes::Bytes>,
    out: &mut dyn std::io::Write,
    counter: &std::sync::atomic::AtomicU64,
    mut on_read: impl FnMut(),
) -> std::io::Result<()> {
    loop {
        let mut buf = bytes::BytesMut::zeroed(READ_BYTES);
        let n = stdout.read(&mut buf)?;
        on_read();
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        let chunk = buf.freeze();
        let _ = tap.send(chunk.clone());
        out.write_all(&chunk)?;
        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}
