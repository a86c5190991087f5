//! Shared harness for integration tests: throwaway PostgreSQL clusters, a moto
//! S3 server, a fault-injecting HTTP proxy, and the `drctl` binary.
//!
//! Each integration test file says `mod common;` and uses the subset it needs.
//! Everything binds to 127.0.0.1 on a free port, lives in a temporary
//! directory and is torn down on `Drop`. Long-running children (postgres,
//! moto) are spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so
//! they die with the test process even when it is killed. Every wait has a
//! deadline and panics with a message (and the child's log) when it expires.
//!
//! The S3 helpers are async. Sync tests can drive them with [`block_on`],
//! which uses one runtime shared by the whole test process, so a client made
//! in one `block_on` call stays usable in the next.
#![allow(dead_code)]

pub mod chromium;
pub mod cluster;
pub mod workspace;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------
// General helpers
// ---------------------------------------------------------------------------

/// How often bounded waits poll.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Upper bound for a psql invocation made by the harness.
const PSQL_TIMEOUT: Duration = Duration::from_secs(120);

/// The `drctl` binary under test, with a clean environment for it.
///
/// `RUST_LOG` is removed and `NO_COLOR=1` set. Inherited `AWS_*`, `PG*` and
/// `DRCTL_*` variables are removed too, so a developer's credentials, profile
/// or database never leak into a test; tests set what they need with
/// [`s3_env`] and `.env(..)` afterwards.
pub fn drctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drctl"));
    for (key, _) in std::env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        if name.starts_with("AWS_") || name.starts_with("PG") || name.starts_with("DRCTL_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd
}

/// Deterministic bytes that zstd cannot shrink (xorshift64*), the same for
/// the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A minimal HTTP/1.1 GET on loopback (the daemon's endpoints): the whole
/// response, head and body; `None` when nothing answers.
pub fn http_raw(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    Some(raw)
}

/// [`http_raw`]'s status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let raw = http_raw(port, path)?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A loopback TCP port that was free a moment ago.
///
/// The port is found by binding port 0; the listener is closed before
/// returning, so another process could take it in between. Callers that start
/// servers retry with a fresh port when the bind fails. A port is never handed
/// out twice within one test process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("free_port: 100 attempts returned only ports already handed out");
}

/// Runs `cmd` with `stdin` fed to it, capturing stdout and stderr, and kills it
/// if it has not finished within `timeout`.
///
/// Panics if the command cannot be started or times out (with what it printed
/// so far). The exit status is returned, not checked.
pub fn output_within(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut child_stdin = child.stdin.take().expect("piped stdin");
    let input = stdin.to_vec();
    // Writing and reading happen on their own threads so a child that fills a
    // pipe while we are still writing cannot deadlock us.
    let writer = thread::spawn(move || {
        // A child that exits without reading its input is not our failure.
        let _ = child_stdin.write_all(&input);
    });
    let output = collect_within(child, &format!("{cmd:?}"), timeout);
    let _ = writer.join();
    output
}

/// Waits for `child` (stdout and stderr piped) and collects what it prints,
/// killing it and panicking (with its output, naming `what`) if it has not
/// finished within `timeout`.
pub fn collect_within(mut child: Child, what: &str, timeout: Duration) -> Output {
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_reader.join().unwrap_or_default();
                let stderr = err_reader.join().unwrap_or_default();
                panic!(
                    "{what} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what`
/// once `timeout` has passed. For tests that wait on something themselves.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits for `child` to exit, up to `timeout`. `None` if it is still running.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(_) => return None,
        }
    }
}

/// Spawns `cmd` so that the child receives `signal` when this test process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and
/// the test harness runs every test on its own short-lived thread. So all such
/// children are forked by one thread that lives as long as the process; a
/// server kept in a `static` and shared between tests therefore survives the
/// test that started it.
fn spawn_tied(mut cmd: Command, signal: libc::c_int) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure only calls async-signal-safe functions (prctl,
    // getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the harness spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .expect("harness spawner thread is running");
    reply_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("harness spawner thread answered within 30s")
}

/// Text appended to `path` since byte `from`, for error messages.
fn read_log_from(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(from));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    // Keep panic messages readable: the tail is what matters.
    const MAX: usize = 8000;
    if text.len() > MAX {
        let mut cut = text.len() - MAX;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = format!("[…]{}", &text[cut..]);
    }
    text
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// 64-bit FNV-1a: a hash that is stable across Rust versions, for cache keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_SUPERUSER: &str = "postgres";
const PG_PASSWORD: &str = "drctl-test-secret";
const PG_START_TIMEOUT: Duration = Duration::from_secs(60);
const PG_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Settings baked into the template cluster. Durability is off: these
/// clusters live for one test. `drctl-cluster.conf` holds what differs per
/// cluster (port, socket directory) and the caller's extra settings.
const PG_TEMPLATE_CONF: &str = "
# --- drctl test harness ---
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 40
dynamic_shared_memory_type = mmap
log_min_messages = warning
log_line_prefix = '%m [%p] '
timezone = 'UTC'
log_timezone = 'UTC'
include_if_exists = 'drctl-cluster.conf'
";

/// A PostgreSQL 15 program.
pub fn pg_bin(program: &str) -> PathBuf {
    Path::new(PG_BIN).join(program)
}

/// The OS user that owns clusters when the tests run as root (PostgreSQL
/// refuses to run as root); `None` when running as an ordinary user.
fn pg_owner() -> Option<(u32, u32)> {
    static OWNER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *OWNER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new(PG_SUPERUSER).expect("no NUL in user name");
        // SAFETY: getpwnam returns null or a pointer to static storage, read
        // immediately; OnceLock serialises this call within the process.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !entry.is_null(),
            "running as root, so PostgreSQL must run as the `postgres` OS user, which does not exist; \
             install postgresql-15 (scripts/test.sh does)"
        );
        // SAFETY: checked non-null above.
        let entry = unsafe { &*entry };
        Some((entry.pw_uid, entry.pw_gid))
    })
}

/// Makes `cmd` run as the OS user that owns clusters (when running as root).
pub fn run_as_pg_owner(cmd: &mut Command) {
    if let Some((uid, gid)) = pg_owner() {
        cmd.uid(uid).gid(gid);
    }
}

/// Hands `path` to the OS user that owns clusters (when running as root).
pub fn chown_to_pg_owner(path: &Path) {
    if let Some((uid, gid)) = pg_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

fn run_checked(cmd: &mut Command, timeout: Duration) -> Output {
    let output = output_within(cmd, b"", timeout);
    if !output.status.success() {
        panic!(
            "{cmd:?} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

fn copy_tree(from: &Path, to: &Path) {
    run_checked(
        Command::new("cp").arg("-a").arg(from).arg(to),
        Duration::from_secs(120),
    );
}

/// A freshly initialised data directory to copy for each cluster.
///
/// initdb runs at most once per test process; its result is also cached under
/// `CARGO_TARGET_TMPDIR`, keyed by server version and settings, so later test
/// processes (one per `tests/*.rs` file) skip it too.
fn pg_template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(build_pg_template)
}

fn build_pg_template() -> PathBuf {
    let version = run_checked(
        Command::new(pg_bin("postgres")).arg("--version"),
        Duration::from_secs(30),
    );
    let key = fnv1a(
        format!(
            "{}\n{PG_PASSWORD}\n{PG_TEMPLATE_CONF}",
            String::from_utf8_lossy(&version.stdout)
        )
        .as_bytes(),
    );
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let template = cache.join(format!("drctl-pg15-template-{key:016x}"));
    if template.join("PG_VERSION").is_file() {
        return template;
    }

    let work = tempfile::Builder::new()
        .prefix("drctl-pg-initdb-")
        .tempdir()
        .expect("create a temp dir for initdb");
    chown_to_pg_owner(work.path());
    let pwfile = work.path().join("pwfile");
    fs::write(&pwfile, PG_PASSWORD).expect("write initdb password file");
    chown_to_pg_owner(&pwfile);
    let data = work.path().join("data");
    let mut initdb = Command::new(pg_bin("initdb"));
    initdb
        .arg("--pgdata")
        .arg(&data)
        .args([
            "--username",
            PG_SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg("--pwfile")
        .arg(&pwfile)
        .args([
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .current_dir(work.path())
        .env("LC_ALL", "C");
    run_as_pg_owner(&mut initdb);
    run_checked(&mut initdb, Duration::from_secs(120));
    let mut conf = OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .expect("open postgresql.conf");
    conf.write_all(PG_TEMPLATE_CONF.as_bytes())
        .expect("append to postgresql.conf");

    // Publish atomically: copy next to the final name, then rename. If another
    // test process won the race, use its copy and discard ours.
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("create {}: {e}", cache.display()));
    let partial = cache.join(format!(
        "drctl-pg15-template-{key:016x}.partial-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&partial);
    copy_tree(&data, &partial);
    if let Err(e) = fs::rename(&partial, &template) {
        let _ = fs::remove_dir_all(&partial);
        assert!(
            template.join("PG_VERSION").is_file(),
            "publish PostgreSQL template at {}: {e}",
            template.display()
        );
    }
    template
}

/// A throwaway PostgreSQL 15 cluster on 127.0.0.1, removed on drop.
///
/// The superuser is `postgres` with password [`Postgres::password`];
/// TCP connections need it (scram-sha-256), so a wrong password fails as it
/// would in production. The Unix socket lives in [`Postgres::socket_dir`] and
/// trusts local users.
pub struct Postgres {
    /// Root of everything: `data/`, the socket and `postgres.log`.
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Starts a new cluster with the harness defaults.
    pub fn start() -> Postgres {
        Postgres::start_with("")
    }

    /// Starts a new cluster with extra `postgresql.conf` lines, e.g.
    /// `"wal_level = replica\narchive_mode = on\n"`.
    pub fn start_with(extra_conf: &str) -> Postgres {
        let template = pg_template();
        let dir = tempfile::Builder::new()
            .prefix("drctl-pg-")
            .tempdir()
            .expect("create a temp dir for a cluster");
        chown_to_pg_owner(dir.path());
        let mut pg = Postgres {
            dir,
            port: 0,
            child: None,
        };
        copy_tree(template, &pg.data_dir());

        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            pg.port = free_port();
            let conf = format!(
                "port = {}\nunix_socket_directories = '{}'\n{extra_conf}\n",
                pg.port,
                pg.socket_dir().display()
            );
            let conf_path = pg.data_dir().join("drctl-cluster.conf");
            fs::write(&conf_path, conf).expect("write drctl-cluster.conf");
            chown_to_pg_owner(&conf_path);
            match pg.launch() {
                Ok(()) => return pg,
                Err(log) if attempt < ATTEMPTS && log.contains("Address already in use") => {
                    continue;
                }
                Err(log) => panic!("PostgreSQL did not start on port {}:\n{log}", pg.port),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Starts the postmaster and waits until it accepts TCP connections.
    /// On failure returns the log it wrote.
    fn launch(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(pg_bin("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        run_as_pg_owner(&mut cmd);
        // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster takes its
        // backends down with it.
        let child =
            spawn_tied(cmd, libc::SIGQUIT).map_err(|e| format!("cannot run postgres: {e}"))?;
        self.child = Some(child);

        let deadline = Instant::now() + PG_START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "postgres exited with {status}; log:\n{}",
                    read_log_from(&log_path, log_start)
                ));
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "postgres did not accept connections within {PG_START_TIMEOUT:?}; log:\n{}",
                    read_log_from(&log_path, log_start)
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn is_ready(&self) -> bool {
        Command::new(pg_bin("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                PG_SUPERUSER,
                "-d",
                "postgres",
                "-t",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid, which has not been
            // reaped yet (we hold its Child), so the pid cannot be reused.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Immediate shutdown (what `pg_ctl stop -m immediate` does), then SIGKILL
    /// if that does not finish in time.
    fn kill(&mut self) {
        self.signal(libc::SIGQUIT);
        if let Some(mut child) = self.child.take()
            && wait_child(&mut child, Duration::from_secs(10)).is_none()
        {
            let _ = child.kill();
            let _ = wait_child(&mut child, Duration::from_secs(10));
        }
    }

    /// Shuts the server down cleanly (fast shutdown). The data directory and
    /// port stay reserved for [`Postgres::start_again`]. Connections to the
    /// port are refused meanwhile: an unreachable database.
    pub fn stop(&mut self) {
        self.signal(libc::SIGINT);
        if let Some(mut child) = self.child.take()
            && wait_child(&mut child, PG_STOP_TIMEOUT).is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "PostgreSQL on port {} did not stop within {PG_STOP_TIMEOUT:?}; log:\n{}",
                self.port,
                read_log_from(&self.log_path(), 0)
            );
        }
    }

    /// Starts a stopped server again on the same port and data directory.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again: PostgreSQL on port {} is already running",
            self.port
        );
        if let Err(log) = self.launch() {
            panic!(
                "PostgreSQL did not start again on port {}:\n{log}",
                self.port
            );
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host is always 127.0.0.1.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`: no password in it; pass
    /// [`Postgres::password`] through `PGPASSWORD` (see [`Postgres::env`]).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{PG_SUPERUSER}@127.0.0.1:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    pub fn user(&self) -> &'static str {
        PG_SUPERUSER
    }

    pub fn password(&self) -> &'static str {
        PG_PASSWORD
    }

    /// Environment for a client of this cluster: `PGPASSWORD`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("PGPASSWORD", PG_PASSWORD.to_owned())]
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A `psql` command connected over TCP as the superuser, quiet, unaligned,
    /// tuples only, stopping at the first error. Add `-c`/`-f` or feed stdin.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(pg_bin("psql"));
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|name| name.starts_with("PG")) {
                cmd.env_remove(&key);
            }
        }
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(self.port.to_string())
        .args(["-U", PG_SUPERUSER, "-d", db])
        .env("PGPASSWORD", PG_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable");
        cmd
    }

    /// Runs `sql` (any number of statements) in `db`; returns trimmed stdout.
    /// Panics with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = self.psql_command(db);
        let output = output_within(&mut cmd, sql.as_bytes(), PSQL_TIMEOUT);
        if !output.status.success() {
            panic!(
                "psql on port {} db {db:?} failed ({}):\n--- sql ---\n{sql}\n--- stderr ---\n{}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs the SQL script at `path` in `db`; returns trimmed stdout.
    pub fn psql_file(&self, db: &str, path: impl AsRef<Path>) -> String {
        let path = path.as_ref();
        let mut cmd = self.psql_command(db);
        cmd.arg("-f").arg(path);
        let output = output_within(&mut cmd, b"", PSQL_TIMEOUT);
        if !output.status.success() {
            panic!(
                "psql -f {} on port {} db {db:?} failed ({}):\n{}",
                path.display(),
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Creates database `name` (quoted, so any name works).
    pub fn createdb(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        // The TempDir field then removes the directory.
    }
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Path of a file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

// ---------------------------------------------------------------------------
// S3 (moto server)
// ---------------------------------------------------------------------------

const S3_START_TIMEOUT: Duration = Duration::from_secs(60);
const S3_REGION: &str = "us-east-1";

/// Environment for anything that talks to the test S3 server (drctl, the aws
/// CLI, moto itself): static test credentials, a fixed region, no instance
/// metadata, no shared config or credential files, and no HTTP proxy for
/// loopback. Set the endpoint separately.
pub fn s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", S3_REGION.into()),
        ("AWS_DEFAULT_REGION", S3_REGION.into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ("AWS_PAGER", String::new()),
        ("NO_PROXY", "127.0.0.1,localhost".into()),
        ("no_proxy", "127.0.0.1,localhost".into()),
    ]
}

/// A bucket name no other test uses: `prefix` made valid (lowercase letters,
/// digits and hyphens), then process id, a counter and the clock.
pub fn unique_bucket_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    clean = clean.trim_matches('-').to_owned();
    if clean.is_empty() {
        clean = "drctl".into();
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{clean}-{}-{n}-{nanos:08x}", std::process::id())
}

/// Runs a future to completion on a runtime shared by the test process.
///
/// Do not call from inside an async test; `.await` there instead.
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("harness-runtime")
                .enable_all()
                .build()
                .expect("build the harness tokio runtime")
        })
        .block_on(future)
}

/// An S3 client for `endpoint` (moto or a [`FaultProxy`] in front of it):
/// path-style addressing, static test credentials, us-east-1.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let credentials = aws_credential_types::Credentials::new(
        "testing",
        "testing",
        None,
        None,
        "drctl-test-harness",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(S3_REGION))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// One row of [`S3Server::list_versions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub is_delete_marker: bool,
}

/// A moto S3 server on 127.0.0.1, killed on drop. State is in memory and
/// private to this server.
pub struct S3Server {
    port: u16,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl S3Server {
    pub fn start() -> S3Server {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let port = free_port();
            let log = tempfile::Builder::new()
                .prefix("drctl-moto-")
                .suffix(".log")
                .tempfile()
                .expect("create moto log file");
            let mut cmd = match find_on_path("moto_server") {
                Some(path) => Command::new(path),
                None => {
                    let mut cmd = Command::new("python3");
                    cmd.args(["-m", "moto.server"]);
                    cmd
                }
            };
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(s3_env())
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(log.reopen().expect("reopen moto log"))
                .stderr(log.reopen().expect("reopen moto log"));
            let child = spawn_tied(cmd, libc::SIGKILL).unwrap_or_else(|e| {
                panic!("cannot start moto (`moto_server` or `python3 -m moto.server`): {e}; install with `python3 -m pip install 'moto[server]'`")
            });
            let mut server = S3Server {
                port,
                child: Some(child),
                log,
            };
            let deadline = Instant::now() + S3_START_TIMEOUT;
            loop {
                let child = server.child.as_mut().expect("just spawned");
                if let Ok(Some(status)) = child.try_wait() {
                    server.child = None;
                    let log = read_log_from(server.log.path(), 0);
                    if attempt < ATTEMPTS && log.contains("Address already in use") {
                        break;
                    }
                    panic!(
                        "moto server exited with {status} during start-up on port {port}; log:\n{log}"
                    );
                }
                if http_answers(port) {
                    return server;
                }
                if Instant::now() >= deadline {
                    let log = read_log_from(server.log.path(), 0);
                    drop(server);
                    panic!(
                        "moto server did not answer HTTP on port {port} within {S3_START_TIMEOUT:?}; log:\n{log}"
                    );
                }
                thread::sleep(POLL_INTERVAL);
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        read_log_from(self.log.path(), 0)
    }

    /// A client talking straight to this server.
    pub fn client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint())
    }

    pub async fn create_bucket(&self, name: &str, versioned: bool) {
        let client = self.client();
        client
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        if versioned {
            let versioning = aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build();
            client
                .put_bucket_versioning()
                .bucket(name)
                .versioning_configuration(versioning)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "enable versioning on {name}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                });
        }
    }

    /// A bucket with Object Lock enabled (and therefore versioning), without
    /// a default retention rule.
    pub async fn create_bucket_object_lock(&self, name: &str) {
        self.client()
            .create_bucket()
            .bucket(name)
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create object-lock bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
    }

    pub async fn put_object(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
        self.client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.into()))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "put s3://{bucket}/{key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
    }

    pub async fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let response = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "get s3://{bucket}/{key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        let body = response
            .body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("read body of s3://{bucket}/{key}: {e}"));
        body.into_bytes().to_vec()
    }

    /// Current keys under `prefix`, sorted (S3 lists in key order).
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| {
                panic!(
                    "list s3://{bucket}/{prefix}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|object| object.key().map(str::to_owned)),
            );
        }
        keys
    }

    /// Every version and delete marker under `prefix`.
    pub async fn list_versions(&self, bucket: &str, prefix: &str) -> Vec<ObjectVersion> {
        let client = self.client();
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = client
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "list versions s3://{bucket}/{prefix}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                });
            for version in page.versions() {
                out.push(ObjectVersion {
                    key: version.key().unwrap_or_default().to_owned(),
                    version_id: version.version_id().unwrap_or_default().to_owned(),
                    is_latest: version.is_latest().unwrap_or(false),
                    is_delete_marker: false,
                });
            }
            for marker in page.delete_markers() {
                out.push(ObjectVersion {
                    key: marker.key().unwrap_or_default().to_owned(),
                    version_id: marker.version_id().unwrap_or_default().to_owned(),
                    is_latest: marker.is_latest().unwrap_or(false),
                    is_delete_marker: true,
                });
            }
            if page.is_truncated() != Some(true) {
                return out;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
        }
    }

    /// Number of multipart uploads started and neither completed nor aborted.
    pub async fn list_multipart_uploads(&self, bucket: &str) -> usize {
        let client = self.client();
        let mut count = 0;
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let page = client
                .list_multipart_uploads()
                .bucket(bucket)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "list multipart uploads in {bucket}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                });
            count += page.uploads().len();
            if page.is_truncated() != Some(true) {
                return count;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_marker = page.next_upload_id_marker().map(str::to_owned);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_child(&mut child, Duration::from_secs(10));
        }
    }
}

/// Whether something on 127.0.0.1:`port` answers a plain HTTP GET.
fn http_answers(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

// ---------------------------------------------------------------------------
// Fault-injecting HTTP proxy
// ---------------------------------------------------------------------------

/// Shares of requests (0.0 to 1.0, summing to at most 1.0) that the
/// [`FaultProxy`] answers with a fault instead of forwarding.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Answered `503 SlowDown` with a real S3 error body, after reading the
    /// request body.
    pub slowdown_503: f64,
    /// Connection closed without a response, after reading part or all of
    /// the request body.
    pub drop_connection: f64,
    /// The same seed gives the same sequence of decisions.
    pub seed: u64,
}

impl Faults {
    /// Forward everything.
    pub fn none() -> Faults {
        Faults::default()
    }

    fn validate(&self) {
        let share = |name: &str, value: f64| {
            assert!(
                (0.0..=1.0).contains(&value),
                "Faults::{name} must be between 0.0 and 1.0, got {value}"
            );
        };
        share("slowdown_503", self.slowdown_503);
        share("drop_connection", self.drop_connection);
        assert!(
            self.slowdown_503 + self.drop_connection <= 1.0 + f64::EPSILON,
            "Faults: slowdown_503 + drop_connection must be at most 1.0, got {self:?}"
        );
    }
}

/// The S3 error body of a throttled request.
pub const SLOWDOWN_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>drctl-fault-proxy</RequestId></Error>";

/// An S3 operation, as the [`FaultProxy`] tells them apart by method and
/// query, for faults aimed at one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Op {
    PutObject,
    CreateMultipartUpload,
    UploadPart,
    CompleteMultipartUpload,
}

impl S3Op {
    fn of(method: &hyper::Method, query: &str) -> Option<S3Op> {
        let has = |name: &str| {
            query
                .split('&')
                .any(|param| param.split('=').next() == Some(name))
        };
        match *method {
            hyper::Method::PUT if has("partNumber") => Some(S3Op::UploadPart),
            hyper::Method::PUT if !has("tagging") && !has("retention") && !has("legal-hold") => {
                Some(S3Op::PutObject)
            }
            hyper::Method::POST if has("uploads") => Some(S3Op::CreateMultipartUpload),
            hyper::Method::POST if has("uploadId") => Some(S3Op::CompleteMultipartUpload),
            _ => None,
        }
    }
}

/// A request whose response the [`FaultProxy`] loses once: the first
/// request of `op` whose path contains `key` reaches the server and takes
/// effect, then the connection closes without the answer.
#[derive(Clone, Debug)]
struct LoseResponse {
    op: S3Op,
    key: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;
type UpstreamClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    hyper::body::Incoming,
>;

enum Fate {
    SlowDown,
    Drop { read_whole_body: bool },
    Forward,
}

/// splitmix64: tiny, seedable, good enough to pick faults.
struct Dice {
    faults: Faults,
    state: u64,
}

impl Dice {
    fn new(faults: Faults) -> Dice {
        Dice {
            faults,
            state: faults.seed,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn roll(&mut self) -> Fate {
        let x = self.next_unit();
        let read_whole_body = self.next_u64() & 1 == 0;
        if x < self.faults.slowdown_503 {
            Fate::SlowDown
        } else if x < self.faults.slowdown_503 + self.faults.drop_connection {
            Fate::Drop { read_whole_body }
        } else {
            Fate::Forward
        }
    }
}

struct ProxyState {
    upstream: String,
    hold: Mutex<Option<S3Op>>,
    held: AtomicU64,
    dice: Mutex<Dice>,
    lose: Mutex<Vec<LoseResponse>>,
    injected_503: AtomicU64,
    lost_responses: AtomicU64,
    injected_drops: AtomicU64,
    forwarded: AtomicU64,
}

/// An HTTP/1.1 reverse proxy on 127.0.0.1 in front of `upstream` that
/// answers a share of requests with S3 throttling or a dropped connection.
///
/// Runs on its own thread with its own tokio runtime, so sync tests can use
/// it. Forwarded requests keep method, path and query, every header
/// (including `Host`, which SigV4 signs) and the body; responses stream back.
pub struct FaultProxy {
    port: u16,
    state: Arc<ProxyState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        faults.validate();
        let upstream = upstream.trim_end_matches('/').to_owned();
        assert!(
            upstream.starts_with("http://"),
            "FaultProxy upstream must be an http:// endpoint, got {upstream:?}"
        );
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).expect("bind the fault proxy on 127.0.0.1");
        let port = listener.local_addr().expect("fault proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("make the fault proxy listener non-blocking");
        let state = Arc::new(ProxyState {
            upstream,
            hold: Mutex::new(None),
            held: AtomicU64::new(0),
            dice: Mutex::new(Dice::new(faults)),
            lose: Mutex::new(Vec::new()),
            injected_503: AtomicU64::new(0),
            lost_responses: AtomicU64::new(0),
            injected_drops: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || run_proxy(listener, thread_state, shutdown_rx))
            .expect("start the fault proxy thread");
        FaultProxy {
            port,
            state,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the fault shares and restarts the random sequence from the
    /// new seed; counters keep counting.
    pub fn set_faults(&self, faults: Faults) {
        faults.validate();
        *self.state.dice.lock().unwrap_or_else(|p| p.into_inner()) = Dice::new(faults);
    }

    /// Loses the response of the next `op` request whose path contains
    /// `key`, once: the request is forwarded and done, then the connection
    /// closes, as when a network fails after the server acted. Rules queue:
    /// each fires on its own first match.
    pub fn lose_response(&self, op: S3Op, key: &str) {
        self.state
            .lose
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LoseResponse {
                op,
                key: key.to_owned(),
            });
    }

    /// Holds every `op` request, unanswered, until [`FaultProxy::release`]
    /// (or two minutes, so a test that forgets still ends): an upload that
    /// stalls part-way. A released request's connection is closed.
    pub fn hold(&self, op: S3Op) {
        *self.state.hold.lock().unwrap_or_else(|p| p.into_inner()) = Some(op);
    }

    pub fn release(&self) {
        *self.state.hold.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Requests held by [`FaultProxy::hold`] so far.
    pub fn held(&self) -> u64 {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Responses lost by [`FaultProxy::lose_response`] so far.
    pub fn lost_responses(&self) -> u64 {
        self.state.lost_responses.load(Ordering::SeqCst)
    }

    pub fn injected_503(&self) -> u64 {
        self.state.injected_503.load(Ordering::SeqCst)
    }

    pub fn injected_drops(&self) -> u64 {
        self.state.injected_drops.load(Ordering::SeqCst)
    }

    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_proxy(
    listener: TcpListener,
    state: Arc<ProxyState>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the fault proxy runtime");
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("register the fault proxy listener");
        let client: UpstreamClient =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let state = Arc::clone(&state);
                    let client = client.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            proxy_request(request, Arc::clone(&state), client.clone())
                        });
                        // Errors here are the injected drops or a client going
                        // away; neither is the proxy's problem.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    });
    // Dropping the runtime cancels every connection task, closing sockets.
}

/// Removes and reports the first lose-response rule `request` matches.
fn take_lose_rule(state: &ProxyState, request: &hyper::Request<hyper::body::Incoming>) -> bool {
    let op = S3Op::of(request.method(), request.uri().query().unwrap_or(""));
    let mut rules = state.lose.lock().unwrap_or_else(|p| p.into_inner());
    let path = request.uri().path();
    match rules
        .iter()
        .position(|r| Some(r.op) == op && path.contains(&r.key))
    {
        Some(i) => {
            rules.remove(i);
            true
        }
        None => false,
    }
}

async fn proxy_request(
    request: hyper::Request<hyper::body::Incoming>,
    state: Arc<ProxyState>,
    client: UpstreamClient,
) -> Result<hyper::Response<ProxyBody>, BoxError> {
    use http_body_util::BodyExt;

    let op = S3Op::of(request.method(), request.uri().query().unwrap_or(""));
    let holding = || op.is_some() && *state.hold.lock().unwrap_or_else(|p| p.into_inner()) == op;
    if holding() {
        state.held.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(120);
        while holding() && Instant::now() < deadline {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        return Err("fault proxy: a held request was released".into());
    }
    if take_lose_rule(&state, &request) {
        let (mut parts, body) = request.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = format!("{}{path_and_query}", state.upstream).parse()?;
        parts.version = hyper::Version::HTTP_11;
        // The whole answer is read, so the server has finished acting on
        // the request before the client loses it.
        if let Ok(response) = client
            .request(hyper::Request::from_parts(parts, body))
            .await
        {
            let _ = response.into_body().collect().await;
        }
        state.lost_responses.fetch_add(1, Ordering::SeqCst);
        return Err("fault proxy: lost the response on purpose".into());
    }
    let fate = state.dice.lock().unwrap_or_else(|p| p.into_inner()).roll();
    match fate {
        Fate::SlowDown => {
            // Read the body first so the client sees the 503 rather than a
            // reset while it is still sending.
            let _ = request.into_body().collect().await;
            state.injected_503.fetch_add(1, Ordering::SeqCst);
            let body =
                http_body_util::Full::new(bytes::Bytes::from_static(SLOWDOWN_BODY.as_bytes()))
                    .map_err(|never| match never {})
                    .boxed();
            let response = hyper::Response::builder()
                .status(hyper::StatusCode::SERVICE_UNAVAILABLE)
                .header("content-type", "application/xml")
                .header("x-amz-request-id", "drctl-fault-proxy")
                .body(body)
                .expect("a valid 503 response");
            Ok(response)
        }
        Fate::Drop { read_whole_body } => {
            let mut body = request.into_body();
            if read_whole_body {
                let _ = body.collect().await;
            } else {
                let _ = body.frame().await;
            }
            state.injected_drops.fetch_add(1, Ordering::SeqCst);
            // An error from the service makes hyper close the connection
            // without writing a response.
            Err("fault proxy: dropped the connection on purpose".into())
        }
        Fate::Forward => {
            state.forwarded.fetch_add(1, Ordering::SeqCst);
            let (mut parts, body) = request.into_parts();
            let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            parts.uri = format!("{}{path_and_query}", state.upstream).parse()?;
            parts.version = hyper::Version::HTTP_11;
            // The client keeps the Host header it is given; it only adds one
            // when missing.
            match client
                .request(hyper::Request::from_parts(parts, body))
                .await
            {
                Ok(response) => {
                    Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed()))
                }
                Err(e) => {
                    let body = http_body_util::Full::new(bytes::Bytes::from(format!(
                        "fault proxy: upstream error: {e}"
                    )))
                    .map_err(|never| match never {})
                    .boxed();
                    Ok(hyper::Response::builder()
                        .status(hyper::StatusCode::BAD_GATEWAY)
                        .body(body)
                        .expect("a valid 502 response"))
                }
            }
        }
    }
}
