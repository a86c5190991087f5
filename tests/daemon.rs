//! `drctl daemon` as a real process: schedules fire on time, missed runs are
//! caught up once, two daemons share one lease, SIGTERM aborts cleanly,
//! SIGHUP keeps a good configuration over a broken one, `/health` follows
//! the repository, `/metrics` parses, and alerts reach a webhook.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use common::workspace::{Backend, Workspace};
use common::{
    FaultProxy, Faults, S3Server, block_on, free_port, http_get, http_raw, unique_bucket_name,
    wait_for,
};

/// A `drctl daemon` child with its log in a file, killed on drop.
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts `drctl --config <config> daemon --log-format json` and waits
    /// until it answers on `port`.
    fn start(ws: &Workspace, config: &str, port: u16) -> Daemon {
        let log = ws.path().join(format!("{config}.log"));
        let file = std::fs::File::create(&log).expect("create daemon log");
        let child = ws
            .cmd_with_config(config, &["--log-format", "json", "daemon"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start drctl daemon");
        let mut d = Daemon { child, port, log };
        wait_for(
            "the daemon to answer /status",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = d.child.try_wait() {
                    panic!("the daemon exited at start-up ({status}):\n{}", d.log());
                }
                d.try_get("/status").map(|_| ())
            },
        );
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every log line, each of which must be a JSON object.
    fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    fn get_raw(&self, path: &str) -> String {
        http_raw(self.port, path)
            .unwrap_or_else(|| panic!("GET {path} got no answer\n{}", self.log()))
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} got no answer\n{}", self.log()))
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status").1).expect("/status is JSON")
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for exit; panics (with the log) after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait for daemon") {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "the daemon did not exit within {timeout:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(ws: &Workspace, name: &str, port: u16, extra: &str) {
    let base = std::fs::read_to_string(ws.path().join("drctl.toml")).expect("read drctl.toml");
    // Keep [repository] and [encryption]; replace any daemon settings.
    let base = base.split("\n[daemon]").next().unwrap().to_string();
    ws.write(
        name,
        &format!(
            "{base}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\ncheck_interval = \"1s\"\n{extra}"
        ),
    );
}

fn data_dir(ws: &Workspace) -> PathBuf {
    let d = ws.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("app.conf"), "listen = 8080\n").unwrap();
    d
}

fn files_policy(ws: &Workspace, name: &str, paths: &[&Path], schedule: &str, extra: &str) {
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    ws.write(
        &format!("policies/{name}.toml"),
        &format!(
            "[source]\ntype = \"files\"\npaths = [{}]\n\n[schedule]\nbackup = \"{schedule}\"\n{extra}",
            list.join(", ")
        ),
    );
}

fn time(backup: &serde_json::Value, field: &str) -> DateTime<Utc> {
    backup[field]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("backup without {field}: {backup}"))
}

/// Manifests of a local repository's policy, read from disk (so this works
/// while the configuration is broken).
fn local_manifests(ws: &Workspace, policy: &str) -> usize {
    let dir = ws.repo_dir().join("backups").join(policy);
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().join("manifest.json").exists())
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn schedules_fire_on_time_and_logs_metrics_and_health_are_well_formed() {
    let ws = Workspace::local();
    let data = data_dir(&ws);
    files_policy(
        &ws,
        "etc",
        &[&data],
        "*/2 * * * * *",
        "rpo_target = \"1h\"\n",
    );
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "");
    let mut d = Daemon::start(&ws, "daemon.toml", port);

    // One catch-up run at start (there is no backup), then one per slot.
    let backups = wait_for("4 backups", Duration::from_secs(30), || {
        let b = ws.backups("etc");
        (b.len() >= 4).then_some(b)
    });
    let mut scheduled: Vec<DateTime<Utc>> =
        backups.iter().map(|b| time(b, "point_in_time")).collect();
    scheduled.sort();
    // Skip the catch-up run. `*/2` fires on even seconds: each run starts
    // soon after one (1.5 s of slack for a loaded CI machine), and the runs
    // take consecutive slots, none twice and none skipped.
    let slots: Vec<DateTime<Utc>> = scheduled[1..]
        .iter()
        .map(|t| {
            let s = t.with_nanosecond(0).unwrap();
            s - chrono::Duration::seconds(i64::from(s.second() % 2))
        })
        .collect();
    for (t, slot) in scheduled[1..].iter().zip(&slots) {
        assert!(
            *t - *slot < chrono::Duration::milliseconds(1500),
            "a backup started at {t}, {} after its slot {slot}",
            *t - *slot
        );
    }
    for w in slots.windows(2) {
        assert_eq!(
            w[1] - w[0],
            chrono::Duration::seconds(2),
            "slots not consecutive: {scheduled:?}"
        );
    }

    let (code, body) = d.get("/health");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "healthy");
    for check in ["repository", "rpo:etc", "last_run:etc"] {
        assert_eq!(health["checks"][check]["ok"], true, "{body}");
    }

    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    for series in [
        "drctl_build_info{",
        "drctl_backup_last_success_timestamp_seconds{policy=\"etc\"}",
        "drctl_backup_last_duration_seconds{policy=\"etc\"}",
        "drctl_backup_last_size_bytes{policy=\"etc\"}",
        "drctl_backup_failures_total{policy=\"etc\"} 0",
        "drctl_backup_running{policy=\"etc\"}",
        "drctl_backup_newest_age_seconds{policy=\"etc\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    // The Prometheus project's own parsers (text format and OpenMetrics)
    // must accept the exposition.
    let parsed = common::output_within(
        std::process::Command::new("python3").args([
            "-c",
            "import sys\n\
             from prometheus_client.parser import text_string_to_metric_families as prom\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families as om\n\
             t = sys.stdin.read()\n\
             a = [f.name for f in prom(t)]\n\
             b = [f.name for f in om(t)]\n\
             print(len(a), len(b))",
        ]),
        metrics.as_bytes(),
        Duration::from_secs(60),
    );
    assert!(
        parsed.status.success(),
        "prometheus_client rejected /metrics: {}\n{metrics}",
        String::from_utf8_lossy(&parsed.stderr)
    );

    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "daemon exit: {status}\n{}", d.log());

    // One JSON line per job start and end, with its run id; no secrets.
    let lines = d.log_lines();
    let started: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["event"] == "job_started")
        .collect();
    let finished: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["event"] == "job_finished")
        .collect();
    assert!(started.len() >= 4, "{}", d.log());
    for l in started.iter().chain(&finished) {
        assert_eq!(l["fields"]["policy"], "etc");
        assert!(l["fields"]["run"].as_str().is_some_and(|r| !r.is_empty()));
    }
    assert!(finished.iter().all(|l| l["fields"]["result"] == "ok"));
    assert_log_is_well_formed(&d);
    let identity = std::fs::read_to_string(ws.path().join("identity.age")).unwrap();
    let secret = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY"))
        .unwrap();
    assert!(
        !d.log().contains(secret),
        "the identity leaked into the log"
    );
}

#[test]
fn the_status_page_shows_every_policy_and_its_last_error_and_renders_in_chromium() {
    let ws = Workspace::local();
    let data = data_dir(&ws);
    // Both are caught up at start (neither has a backup); `gone` fails.
    files_policy(&ws, "etc", &[&data], "0 0 3 * * *", "rpo_target = \"1h\"\n");
    let missing = ws.path().join("not-there");
    files_policy(&ws, "gone", &[&missing], "0 0 3 * * *", "");
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "");
    let d = Daemon::start(&ws, "daemon.toml", port);
    wait_for("both catch-up runs", Duration::from_secs(60), || {
        let s = d.status();
        ["etc", "gone"]
            .iter()
            .all(|p| s["policies"][p]["backup"]["last_run"].is_object())
            .then_some(())
    });
    let newest = ws.backups("etc");
    assert_eq!(newest.len(), 1, "{}", d.log());
    let id = newest[0]["id"].as_str().unwrap().to_string();

    let raw = d.get_raw("/");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    // The browser itself refuses anything from elsewhere.
    assert!(
        head.contains("content-security-policy: default-src 'none'; style-src 'unsafe-inline'"),
        "{head}"
    );
    for needle in ["<script", "<link", "src=", "http://", "https://", "url("] {
        assert!(!body.contains(needle), "{needle} in the page:\n{body}");
    }

    let dom = common::chromium::dump_dom(&format!("http://127.0.0.1:{port}/"));
    let row = |policy: &str| -> String {
        let start = dom
            .find(&format!("<tr data-policy=\"{policy}\">"))
            .unwrap_or_else(|| panic!("no row for {policy}:\n{dom}"));
        dom[start..start + dom[start..].find("</tr>").unwrap()].to_string()
    };
    let etc = row("etc");
    assert!(
        etc.contains(&id),
        "the newest backup's id is on the page:\n{etc}"
    );
    assert!(etc.contains("met"), "RPO state:\n{etc}");
    assert!(etc.contains("03:00:00"), "the next run:\n{etc}");
    assert!(etc.contains("no drills scheduled"), "{etc}");
    let gone = row("gone");
    assert!(gone.contains("none yet"), "{gone}");
    assert!(gone.contains("no target set"), "{gone}");
    assert!(gone.contains("backup failed"), "{gone}");
    assert!(
        gone.contains("not-there"),
        "the error names the path:\n{gone}"
    );
    assert!(
        dom.contains("Unhealthy."),
        "the verdict leads the page:\n{dom}"
    );
    assert!(
        dom.contains("last_run:gone"),
        "the failing check is named:\n{dom}"
    );
}

/// Every line a daemon logs names its event in snake_case (the names
/// docs/operations.md lists), carries no Rust debug formatting, and
/// PostgreSQL's notices stay at debug: a drill check's `DROP TABLE IF
/// EXISTS` ("does not exist, skipping") is not an operator's concern.
fn assert_log_is_well_formed(d: &Daemon) {
    let documented =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    for line in d.log_lines() {
        let fields = &line["fields"];
        let event = fields["event"]
            .as_str()
            .unwrap_or_else(|| panic!("a log line without an event: {line}"));
        assert!(
            !event.is_empty()
                && event
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "event {event:?} is not snake_case: {line}"
        );
        assert!(
            documented.contains(&format!("`{event}`")),
            "event `{event}` is not listed in docs/operations.md"
        );
        let text = line.to_string();
        for debug in ["Some(", "None", "Error {", "kind:"] {
            assert!(
                !text.contains(debug),
                "Rust debug formatting ({debug}) in: {line}"
            );
        }
        let message = fields["message"].as_str().unwrap_or("");
        assert!(
            !message.contains("NOTICE") && !message.contains("skipping"),
            "a PostgreSQL notice above debug: {line}"
        );
    }
}

#[test]
fn daemon_logs_name_their_events_and_keep_postgresql_notices_at_debug() {
    let pg = common::Postgres::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 100) g",
    );
    let mut ws = Workspace::local();
    ws.postgres_policy("shop", &pg, "shop");
    let policy = std::fs::read_to_string(ws.path().join("policies/shop.toml")).unwrap();
    ws.write(
        "policies/shop.toml",
        &format!(
            "{policy}\n[schedule]\nbackup = \"@yearly\"\n\n[drill]\nschedule = \"*/2 * * * * *\"\nscratch_url = \"{}\"\n\n\
             [[drill.checks]]\nname = \"tidy\"\nsql = \"DROP TABLE IF EXISTS no_such_table; SELECT 1\"\nexpect = \"1\"\n",
            pg.url("postgres")
        ),
    );
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "");
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    wait_for("a passed drill", Duration::from_secs(60), || {
        (d.status()["policies"]["shop"]["drill"]["last_run"]["result"] == "ok").then_some(())
    });
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        d.log()
    );
    let events: BTreeSet<String> = d
        .log_lines()
        .iter()
        .filter_map(|l| l["fields"]["event"].as_str().map(str::to_string))
        .collect();
    for e in [
        "daemon_started",
        "job_started",
        "job_finished",
        "daemon_stopped",
    ] {
        assert!(events.contains(e), "no {e} in {events:?}\n{}", d.log());
    }
    assert_log_is_well_formed(&d);
}

#[test]
fn missed_runs_are_caught_up_once_at_start_and_not_when_recent() {
    let ws = Workspace::local();
    let data = data_dir(&ws);
    files_policy(&ws, "etc", &[&data], "@daily", "");
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "");

    // No backup at all: one run at start, and only one.
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    wait_for("the catch-up backup", Duration::from_secs(30), || {
        (ws.backups("etc").len() == 1).then_some(())
    });
    thread::sleep(Duration::from_secs(2));
    assert_eq!(ws.backups("etc").len(), 1, "more than one catch-up run");
    let status = d.status();
    let next = status["policies"]["etc"]["backup"]["next_run"]
        .as_str()
        .expect("next_run in /status");
    assert!(next.ends_with("T00:00:00Z"), "@daily next run: {next}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());

    // A backup younger than a day: a restart does not run another.
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        ws.backups("etc").len(),
        1,
        "a restart re-ran a recent backup"
    );
    assert!(!d.log().contains("running one now"), "{}", d.log());
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
}

/// A file of `mb` MiB of random bytes (incompressible, so the backup takes
/// a while on the S3 server).
fn random_file(dir: &Path, mb: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("blob.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut rng = std::fs::File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mb {
        rng.read_exact(&mut buf).unwrap();
        f.write_all(&buf).unwrap();
    }
    path
}

#[test]
fn two_daemons_on_one_repository_never_run_the_same_backup_at_once() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("two-daemons");
    block_on(s3.create_bucket(&bucket, false));
    let ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: bucket.clone(),
    });
    let data = ws.path().join("data");
    random_file(&data, 24);
    files_policy(&ws, "blob", &[&data], "*/2 * * * * *", "");
    let (p1, p2) = (free_port(), free_port());
    write_config(&ws, "a.toml", p1, "");
    write_config(&ws, "b.toml", p2, "");
    let mut a = Daemon::start(&ws, "a.toml", p1);
    let mut b = Daemon::start(&ws, "b.toml", p2);

    let skipped = |d: &Daemon| {
        d.log_lines()
            .iter()
            .filter(|l| l["fields"]["result"] == "skipped")
            .count()
    };
    wait_for(
        "both daemons to find the lease held at least once",
        Duration::from_secs(60),
        || (skipped(&a) + skipped(&b) >= 2 && ws.backups("blob").len() >= 3).then_some(()),
    );
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(60)).success());
    assert!(b.wait_exit(Duration::from_secs(60)).success());

    // No two backups of the policy overlapped in time.
    let keys = block_on(s3.list_keys(&bucket, "drctl/backups/blob/"));
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>, String)> = keys
        .iter()
        .filter(|k| k.ends_with("/manifest.json"))
        .map(|k| {
            let m: serde_json::Value =
                serde_json::from_slice(&block_on(s3.get_object(&bucket, k))).unwrap();
            (
                time(&m, "started_at"),
                time(&m, "finished_at"),
                m["id"].to_string(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "backups overlapped: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    let ok = |d: &Daemon| {
        d.log_lines()
            .iter()
            .filter(|l| l["fields"]["result"] == "ok")
            .count()
    };
    assert_eq!(
        ok(&a) + ok(&b),
        spans.len(),
        "every backup comes from exactly one daemon's successful run"
    );
    let left = block_on(s3.list_keys(&bucket, "drctl/locks/"));
    assert!(left.is_empty(), "leases left behind: {left:?}");
}

#[test]
fn sigterm_waits_out_the_grace_period_then_aborts_without_leaving_a_backup() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("daemon-term");
    block_on(s3.create_bucket(&bucket, false));
    let ws = Workspace::new(Backend::S3 {
        endpoint: s3.endpoint(),
        bucket: bucket.clone(),
    });
    let data = ws.path().join("data");
    random_file(&data, 160);
    // @yearly: the only run is the catch-up at start.
    files_policy(&ws, "blob", &[&data], "@yearly", "");
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "shutdown_grace_seconds = 1\n");
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    wait_for("an open multipart upload", Duration::from_secs(60), || {
        (block_on(s3.list_multipart_uploads(&bucket)) > 0).then_some(())
    });
    let asked = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", d.log());
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "did not wait for the grace period"
    );
    let log = d.log();
    assert!(log.contains("grace period over"), "{log}");
    assert_eq!(
        block_on(s3.list_multipart_uploads(&bucket)),
        0,
        "upload left open"
    );
    assert!(ws.backups("blob").is_empty(), "a backup exists");
    let objects = block_on(s3.list_keys(&bucket, "drctl/backups/"));
    assert!(objects.is_empty(), "objects left: {objects:?}");
    assert!(block_on(s3.list_keys(&bucket, "drctl/locks/")).is_empty());
}

#[test]
fn sighup_with_a_broken_policy_keeps_the_running_configuration() {
    let ws = Workspace::local();
    let data = data_dir(&ws);
    files_policy(&ws, "etc", &[&data], "*/2 * * * * *", "");
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "");
    let mut d = Daemon::start(&ws, "daemon.toml", port);

    ws.write(
        "policies/etc.toml",
        "[source]\ntype = \"files\"\npaths = [\"/etc/hostname\"]\n[schedule]\nbackup = \"61 * * * *\"\n",
    );
    let before = local_manifests(&ws, "etc");
    d.signal(libc::SIGHUP);
    let error = wait_for("the reload to be refused", Duration::from_secs(20), || {
        d.status()["last_reload_error"].as_str().map(str::to_string)
    });
    assert!(
        error.contains("etc.toml:5") && error.contains("61"),
        "the refusal names the file, line and value: {error}"
    );
    assert!(d.log().contains("NOT reloaded"), "{}", d.log());
    // Still running the old schedule.
    wait_for("backups to continue", Duration::from_secs(20), || {
        (local_manifests(&ws, "etc") >= before + 2).then_some(())
    });

    // Fixed, plus a new policy: both take effect.
    files_policy(&ws, "etc", &[&data], "@yearly", "");
    files_policy(&ws, "more", &[&data], "@yearly", "rpo_target = \"2d\"\n");
    d.signal(libc::SIGHUP);
    let status = wait_for("the reload", Duration::from_secs(20), || {
        let s = d.status();
        s["policies"]["more"].is_object().then_some(s)
    });
    assert!(status["last_reload_error"].is_null(), "{status}");
    assert_eq!(status["policies"]["etc"]["backup"]["schedule"], "@yearly");
    assert_eq!(status["policies"]["more"]["rpo_target_seconds"], 2 * 86400);

    // A policy removed by a reload leaves /status (and /health, /metrics).
    std::fs::remove_file(ws.path().join("policies/more.toml")).unwrap();
    d.signal(libc::SIGHUP);
    wait_for("`more` to go", Duration::from_secs(20), || {
        d.status()["policies"]["more"].is_null().then_some(())
    });
    assert!(!d.get("/metrics").1.contains("policy=\"more\""));
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn health_turns_503_while_the_repository_is_unreachable() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("daemon-health");
    block_on(s3.create_bucket(&bucket, false));
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket,
    });
    let data = data_dir(&ws);
    files_policy(&ws, "etc", &[&data], "@yearly", "");
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "");
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    // The catch-up backup must be over before the faults start, or it fails
    // and /health rightly reports that too.
    wait_for("the catch-up backup", Duration::from_secs(30), || {
        (ws.backups("etc").len() == 1).then_some(())
    });
    wait_for("healthy", Duration::from_secs(30), || {
        (d.get("/health").0 == 200).then_some(())
    });
    // The bucket was never given drctl's settings (`repo apply`): the daemon
    // reports the drift without failing /health.
    let drift = wait_for("the bucket drift check", Duration::from_secs(30), || {
        d.status()["bucket_drift"].as_array().cloned()
    });
    assert!(
        drift
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("versioning")),
        "{drift:?}"
    );
    assert!(
        d.get("/metrics").1.contains("drctl_bucket_drift_settings "),
        "no drift metric"
    );
    assert!(d.log().contains("bucket settings differ"), "{}", d.log());

    proxy.set_faults(Faults {
        drop_connection: 1.0,
        ..Faults::none()
    });
    let body = wait_for("503", Duration::from_secs(60), || {
        let (code, body) = d.get("/health");
        (code == 503).then_some(body)
    });
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(
        health["failing"],
        serde_json::json!(["repository"]),
        "{body}\n{}",
        d.log()
    );
    assert_eq!(health["checks"]["repository"]["ok"], false);

    proxy.set_faults(Faults::none());
    let recovered = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = d.get("/health");
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < recovered,
            "still unhealthy after the faults stopped: {body}\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}

/// An HTTP receiver on loopback that records request bodies and answers
/// 500 to the first `fail_first` requests, 200 after.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        thread::spawn(move || {
            let mut count = 0;
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count += 1;
                let mut reader = BufReader::new(stream);
                let mut path = String::new();
                let mut len = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if path.is_empty() {
                        path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                let code = if count <= fail_first { 500 } else { 200 };
                if code == 200 {
                    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    seen.lock().unwrap().push((path, v));
                }
                let mut s = reader.into_inner();
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, bodies }
    }

    fn bodies(&self) -> Vec<(String, serde_json::Value)> {
        self.bodies.lock().unwrap().clone()
    }
}

#[test]
fn alerts_reach_generic_and_slack_webhooks_with_retries() {
    let hook = Receiver::start(2);
    let mut ws = Workspace::local();
    let data = data_dir(&ws);
    // Backs up a path that does not exist: every run fails.
    let gone = ws.path().join("gone");
    files_policy(&ws, "broken", &[&gone], "@yearly", "");
    // Succeeds once at start, then breaches its 2 s RPO.
    files_policy(&ws, "late", &[&data], "@yearly", "rpo_target = \"2s\"\n");
    let port = free_port();
    ws.set_env("DRCTL_ALERT_BACKOFF_MS", "100");
    ws.set_env(
        "TEST_SLACK_URL",
        &format!("http://127.0.0.1:{}/slack", hook.port),
    );
    write_config(
        &ws,
        "daemon.toml",
        port,
        &format!(
            "\n[[alerts.webhook]]\nurl = \"http://127.0.0.1:{}/generic\"\n\n[[alerts.webhook]]\nurl_env = \"TEST_SLACK_URL\"\nformat = \"slack\"\n",
            hook.port
        ),
    );
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    let bodies = wait_for("four alerts", Duration::from_secs(60), || {
        let b = hook.bodies();
        (b.len() >= 4).then_some(b)
    });
    let generic: Vec<&serde_json::Value> = bodies
        .iter()
        .filter(|(p, _)| p == "/generic")
        .map(|(_, v)| v)
        .collect();
    let slack: Vec<&serde_json::Value> = bodies
        .iter()
        .filter(|(p, _)| p == "/slack")
        .map(|(_, v)| v)
        .collect();
    let failed = generic
        .iter()
        .find(|v| v["event"] == "backup_failed")
        .unwrap_or_else(|| panic!("no backup_failed alert: {bodies:?}"));
    assert_eq!(failed["policy"], "broken");
    assert_eq!(failed["source"], "drctl");
    assert!(
        failed["summary"].as_str().unwrap().contains("gone"),
        "{failed}"
    );
    let late = generic
        .iter()
        .find(|v| v["event"] == "rpo_breached")
        .unwrap_or_else(|| panic!("no rpo_breached alert: {bodies:?}"));
    assert_eq!(late["policy"], "late");
    assert_eq!(late["details"]["rpo_target_seconds"], 2);
    assert!(
        slack
            .iter()
            .all(|v| v["text"].is_string() && v.as_object().unwrap().len() == 1)
    );
    assert!(
        slack.iter().any(|v| v["text"]
            .as_str()
            .unwrap()
            .contains("backup failed for policy broken")),
        "{slack:?}"
    );
    // The first two deliveries got 500 and were retried.
    assert!(d.log().contains("retrying"), "{}", d.log());
    // The webhook URL is a secret: never logged.
    assert!(!d.log().contains("/slack"), "{}", d.log());

    let (code, body) = d.get("/health");
    assert_eq!(code, 503);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        health["failing"],
        serde_json::json!(["last_run:broken", "rpo:late"]),
        "{body}"
    );
    let metrics = d.get("/metrics").1;
    assert!(
        metrics.contains("drctl_backup_failures_total{policy=\"broken\"} 1"),
        "{metrics}"
    );

    // `status` says the same (the last error comes from the daemon), and
    // exits 1.
    let out = common::output_within(
        &mut ws.cmd_with_config("daemon.toml", &["status", "--json"]),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status["daemon_reachable"], true);
    let by_name = |n: &str| {
        status["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == n)
            .cloned()
            .unwrap()
    };
    assert!(
        by_name("broken")["last_error"]
            .as_str()
            .unwrap()
            .contains("gone")
    );
    assert_eq!(by_name("late")["rpo"], "breached");
    // Where `status --json` and the daemon's /status say the same thing,
    // they say it in the same shape.
    let from_daemon = d.status();
    for name in ["broken", "late"] {
        let (cli, daemon) = (by_name(name), &from_daemon["policies"][name]);
        assert_eq!(
            cli["rpo_target_seconds"], daemon["rpo_target_seconds"],
            "{name}"
        );
        assert_eq!(
            cli["backup"]["schedule"], daemon["backup"]["schedule"],
            "{name}"
        );
        assert_eq!(
            cli["backup"]["next_run"].is_string(),
            daemon["backup"]["next_run"].is_string(),
            "{name}"
        );
        assert_eq!(
            cli["backup"]["last_run"], daemon["backup"]["last_run"],
            "{name}"
        );
        if daemon["newest_backup"].is_object() {
            assert_eq!(cli["newest_backup"], daemon["newest_backup"], "{name}");
        }
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken") && err.contains("late"), "{err}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn retention_runs_after_each_scheduled_backup() {
    let ws = Workspace::local();
    let data = data_dir(&ws);
    files_policy(
        &ws,
        "etc",
        &[&data],
        "*/2 * * * * *",
        "\n[retention]\nkeep_last = 2\n",
    );
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "");
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    let pruned = |d: &Daemon| -> u64 {
        d.log_lines()
            .iter()
            .filter(|l| l["fields"]["message"] == "prune finished")
            .filter_map(|l| l["fields"]["deleted"].as_u64())
            .sum()
    };
    wait_for(
        "prune to delete two backups",
        Duration::from_secs(30),
        || (pruned(&d) >= 2).then_some(()),
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
    let left = ws.backups("etc");
    assert_eq!(left.len(), 2, "keep_last = 2 left {left:?}");
}

#[test]
fn scheduled_drills_run_and_a_failed_one_alerts() {
    let hook = Receiver::start(0);
    let mut ws = Workspace::local();
    let data = data_dir(&ws);
    files_policy(
        &ws,
        "etc",
        &[&data],
        "@yearly",
        "\n[drill]\nschedule = \"*/2 * * * * *\"\nscratch_dir = \"scratch\"\n",
    );
    let port = free_port();
    ws.set_env("DRCTL_ALERT_BACKOFF_MS", "100");
    write_config(
        &ws,
        "daemon.toml",
        port,
        &format!(
            "\n[[alerts.webhook]]\nurl = \"http://127.0.0.1:{}/generic\"\n",
            hook.port
        ),
    );
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    let drill_result = |d: &Daemon| {
        d.status()["policies"]["etc"]["drill"]["last_run"]["result"]
            .as_str()
            .map(str::to_string)
    };
    wait_for("a passed drill", Duration::from_secs(30), || {
        (drill_result(&d).as_deref() == Some("ok")).then_some(())
    });

    // Damage the backup: the next drill fails, is recorded, and alerts.
    let backup = ws.backups("etc")[0]["id"].as_str().unwrap().to_string();
    let dir = ws.repo_dir().join("backups/etc").join(&backup);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "manifest.json" {
            let mut bytes = std::fs::read(&path).unwrap();
            let n = bytes.len();
            bytes[n / 2] ^= 0x40;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let alert = wait_for("a drill_failed alert", Duration::from_secs(30), || {
        hook.bodies()
            .into_iter()
            .map(|(_, v)| v)
            .find(|v| v["event"] == "drill_failed")
    });
    assert_eq!(alert["policy"], "etc");
    assert_eq!(alert["details"]["backup"], backup.as_str());
    let metrics = d.get("/metrics").1;
    assert!(
        !metrics.contains("drctl_drill_failures_total{policy=\"etc\"} 0"),
        "{metrics}"
    );
    assert_eq!(d.get("/health").0, 503);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    let drills: serde_json::Value =
        serde_json::from_str(&ws.ok(&["drills", "etc", "--json"])).unwrap();
    let passed: Vec<bool> = drills["drills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["record"]["passed"].as_bool().unwrap())
        .collect();
    assert!(
        passed.contains(&true) && passed.contains(&false),
        "{drills}"
    );
}

#[test]
fn max_concurrent_jobs_holds_across_policies() {
    let ws = Workspace::local();
    let mut dirs = Vec::new();
    for name in ["a", "b", "c"] {
        let dir = ws.path().join(format!("data-{name}"));
        random_file(&dir, 16);
        dirs.push((name, dir));
    }
    for (name, dir) in &dirs {
        files_policy(&ws, name, &[dir], "*/2 * * * * *", "");
    }
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "max_concurrent_jobs = 1\n");
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    wait_for(
        "two backups of each policy",
        Duration::from_secs(60),
        || {
            dirs.iter()
                .all(|(n, _)| local_manifests(&ws, n) >= 2)
                .then_some(())
        },
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(60)).success());
    let mut spans = Vec::new();
    for (name, _) in &dirs {
        let dir = ws.repo_dir().join("backups").join(name);
        for e in std::fs::read_dir(dir).unwrap() {
            let m = e.unwrap().path().join("manifest.json");
            if let Ok(bytes) = std::fs::read(&m) {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                spans.push((
                    time(&v, "started_at"),
                    time(&v, "finished_at"),
                    name.to_string(),
                ));
            }
        }
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "two backups ran at once: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn a_repository_unreachable_at_start_is_waited_for_and_an_uninitialised_one_is_refused() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("daemon-boot");
    block_on(s3.create_bucket(&bucket, false));
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket,
    });
    let data = data_dir(&ws);
    files_policy(&ws, "etc", &[&data], "@yearly", "");
    let port = free_port();
    write_config(&ws, "daemon.toml", port, "");

    // As at boot before the network is up: the daemon waits, /health says why.
    proxy.set_faults(Faults {
        drop_connection: 1.0,
        ..Faults::none()
    });
    let mut d = Daemon::start(&ws, "daemon.toml", port);
    let body = wait_for("503 naming the repository", Duration::from_secs(60), || {
        let (code, body) = d.get("/health");
        (code == 503).then_some(body)
    });
    assert!(body.contains("\"repository\""), "{body}");
    // The store's own retries give up first; then the daemon waits and retries.
    wait_for(
        "the daemon to wait for the repository",
        Duration::from_secs(120),
        || d.log().contains("waiting for it").then_some(()),
    );
    proxy.set_faults(Faults::none());
    // Once it answers, the daemon goes on: the catch-up backup is taken.
    wait_for("the catch-up backup", Duration::from_secs(120), || {
        (ws.backups("etc").len() == 1).then_some(())
    });
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());

    // No repo.json at all is not something waiting fixes: exit 2 at once.
    let empty = Workspace::local();
    std::fs::remove_file(empty.repo_dir().join("repo.json")).unwrap();
    write_config(&empty, "daemon.toml", free_port(), "");
    let out = common::output_within(
        &mut empty.cmd_with_config("daemon.toml", &["daemon"]),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("drctl init"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_warns_about_an_unset_webhook_variable_and_an_rpo_without_a_schedule() {
    let ws = Workspace::local();
    let data = data_dir(&ws);
    ws.write(
        "policies/etc.toml",
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n[schedule]\nrpo_target = \"26h\"\n",
            data.display()
        ),
    );
    write_config(
        &ws,
        "daemon.toml",
        free_port(),
        "\n[[alerts.webhook]]\nurl_env = \"DRCTL_TEST_UNSET_WEBHOOK\"\nformat = \"slack\"\n",
    );
    let out = common::output_within(
        &mut ws.cmd_with_config("daemon.toml", &["check"]),
        b"",
        Duration::from_secs(60),
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("$DRCTL_TEST_UNSET_WEBHOOK, which is not set"),
        "{err}"
    );
    assert!(
        err.contains("policy etc has an rpo_target but no [schedule] backup"),
        "{err}"
    );
}

#[test]
fn a_listen_address_in_use_is_refused_with_the_setting_to_change() {
    let ws = Workspace::local();
    let data = data_dir(&ws);
    // Without a backup, a daemon that started would take one at once.
    files_policy(&ws, "etc", &[&data], "@yearly", "");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    write_config(&ws, "daemon.toml", port, "");
    let out = common::output_within(
        &mut ws.cmd_with_config("daemon.toml", &["daemon"]),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("[daemon] listen"),
        "{err}"
    );
    // Nothing was started: no backup.
    assert_eq!(local_manifests(&ws, "etc"), 0);
}

/// The value of `name{policy="<policy>"}` in a `/metrics` text.
fn metric(text: &str, name: &str, policy: &str) -> Option<f64> {
    let prefix = format!("{name}{{policy=\"{policy}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A real PostgreSQL archiving through `drctl wal-push`, watched by the
/// daemon: the WAL metrics come from the repository and the server and are
/// sane while archiving works; with archive_command failing and a small RPO
/// target, the lag shows in the metrics and /health and alerts once.
#[test]
fn wal_archiving_of_a_real_cluster_shows_in_metrics_and_a_stalled_archive_alerts() {
    let hook = Receiver::start(0);
    let t0 = Utc::now();
    let world = common::cluster::World::new(false, "\n[schedule]\nrpo_target = \"1h\"\n");
    let segment = world.switch_and_wait();
    let port = free_port();
    write_config(
        &world.ws,
        "daemon.toml",
        port,
        &format!(
            "\n[[alerts.webhook]]\nurl = \"http://127.0.0.1:{}/generic\"\n",
            hook.port
        ),
    );
    let d = Daemon::start(&world.ws, "daemon.toml", port);
    let wal = wait_for(
        &format!("the daemon to see {segment} archived"),
        Duration::from_secs(60),
        || {
            let wal = d.status()["policies"]["cluster"]["wal"].clone();
            (wal["last_archived"].as_str() >= Some(segment.as_str()) && wal["server"].is_object())
                .then_some(wal)
        },
    );
    assert_eq!(
        wal["server"]["last_archived_wal"],
        segment.as_str(),
        "{wal}"
    );

    let text = d.get("/metrics").1;
    let m =
        |name: &str| metric(&text, name, "cluster").unwrap_or_else(|| panic!("no {name}:\n{text}"));
    let stored = m("drctl_wal_last_archived_timestamp_seconds");
    assert!(
        stored >= (t0.timestamp() - 1) as f64 && stored <= (Utc::now().timestamp() + 1) as f64,
        "{stored} is not between the test's start and now"
    );
    assert!(m("drctl_wal_archive_lag_seconds") >= 0.0, "{text}");
    assert_eq!(m("drctl_wal_archive_lag_segments"), 0.0, "{text}");
    assert_eq!(m("drctl_wal_archive_failures_total"), 0.0, "{text}");
    assert_eq!(m("drctl_wal_server_up"), 1.0, "{text}");
    let health: serde_json::Value = serde_json::from_str(&d.get("/health").1).unwrap();
    assert_eq!(
        health["checks"]["wal_archive:cluster"]["ok"], true,
        "{health}"
    );
    // A cluster policy's RPO is its archive's, not its base backups' age.
    assert!(health["checks"].get("rpo:cluster").is_none(), "{health}");

    // Archiving stops: the server keeps the WAL and counts failures.
    world
        .pg
        .psql("postgres", "ALTER SYSTEM SET archive_command = 'false'");
    world.pg.psql("postgres", "SELECT pg_reload_conf()");
    world.pg.psql("postgres", "CREATE TABLE t(id int)");
    for id in 1..=3 {
        world.pg.psql(
            "postgres",
            &format!("INSERT INTO t VALUES ({id}); SELECT pg_switch_wal()"),
        );
    }
    wait_for("archive_command to fail", Duration::from_secs(60), || {
        let failed = world
            .pg
            .psql("postgres", "SELECT failed_count FROM pg_stat_archiver");
        (failed != "0").then_some(())
    });
    let policy = world.ws.path().join("policies/cluster.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace("rpo_target = \"1h\"", "rpo_target = \"2s\""),
    )
    .unwrap();
    d.signal(libc::SIGHUP);

    let alert = wait_for(
        "a wal_archive_lagging alert",
        Duration::from_secs(60),
        || {
            hook.bodies()
                .into_iter()
                .map(|(_, v)| v)
                .find(|v| v["event"] == "wal_archive_lagging")
        },
    );
    assert_eq!(alert["policy"], "cluster", "{alert}");
    assert_eq!(alert["details"]["rpo_target_seconds"], 2, "{alert}");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains(segment.as_str()),
        "{alert}"
    );
    let text = wait_for(
        "the metrics to show the stall",
        Duration::from_secs(60),
        || {
            let text = d.get("/metrics").1;
            (metric(&text, "drctl_wal_archive_failures_total", "cluster") >= Some(1.0)
                && metric(&text, "drctl_wal_archive_lag_segments", "cluster") >= Some(1.0))
            .then_some(text)
        },
    );
    assert!(
        metric(&text, "drctl_wal_archive_lag_seconds", "cluster") > Some(2.0),
        "{text}"
    );
    let (code, body) = d.get("/health");
    assert_eq!(code, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        health["failing"],
        serde_json::json!(["wal_archive:cluster"]),
        "{body}"
    );
    let detail = health["checks"]["wal_archive:cluster"]["detail"]
        .as_str()
        .unwrap();
    assert!(
        detail.contains("over the RPO target of 2s") && detail.contains("failed archive attempt"),
        "{detail}"
    );
    // One alert per episode, however many checks see it.
    let lagging = hook
        .bodies()
        .iter()
        .filter(|(_, v)| v["event"] == "wal_archive_lagging")
        .count();
    assert_eq!(lagging, 1);
}

/// `wal-push` on the daemon's host spools while S3 is down: the spool shows
/// in `/metrics` and `/health`, a spool past 80 % of its limit alerts once,
/// and the episode ends when `wal drain` empties it.
#[test]
fn a_filling_wal_spool_shows_in_metrics_and_health_and_alerts_once() {
    const LIMIT: u64 = 2_500_000;
    let hook = Receiver::start(0);
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("spool");
    block_on(s3.create_bucket(&bucket, false));
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let ws = Workspace::new(Backend::S3 {
        endpoint: proxy.endpoint(),
        bucket,
    });
    let base = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    ws.write(
        "drctl.toml",
        &format!(
            "{base}\n[wal]\nspool_dir = \"spool\"\nspool_max_bytes = {LIMIT}\nstore_timeout = \"2s\"\n"
        ),
    );
    std::fs::create_dir_all(ws.path().join("spool")).unwrap();
    // wal-push never connects to the database; the daemon's questions to
    // this server fail, which only takes the server's side out of the view.
    ws.write(
        "policies/pg.toml",
        "[source]\ntype = \"postgres-cluster\"\nurl = \"postgres://postgres@127.0.0.1:1/postgres\"\n\
         [schedule]\nrpo_target = \"1h\"\n",
    );
    let port = free_port();
    write_config(
        &ws,
        "daemon.toml",
        port,
        &format!(
            "\n[[alerts.webhook]]\nurl = \"http://127.0.0.1:{}/generic\"\n",
            hook.port
        ),
    );
    let d = Daemon::start(&ws, "daemon.toml", port);
    let spool_metrics = |text: &str| {
        (
            metric(text, "drctl_wal_spool_bytes", "pg"),
            metric(text, "drctl_wal_spool_segments", "pg"),
            metric(text, "drctl_wal_spool_max_bytes", "pg"),
        )
    };
    wait_for(
        "the daemon to read the spool",
        Duration::from_secs(30),
        || {
            let text = d.get("/metrics").1;
            (spool_metrics(&text) == (Some(0.0), Some(0.0), Some(LIMIT as f64))).then_some(())
        },
    );
    let spool_check = || -> serde_json::Value {
        let health: serde_json::Value = serde_json::from_str(&d.get("/health").1).unwrap();
        health["checks"]["wal_spool:pg"].clone()
    };
    assert_eq!(spool_check()["ok"], true, "{}", spool_check());

    // S3 goes down; each pushed segment (1 MiB, incompressible) is spooled.
    proxy.set_faults(Faults {
        drop_connection: 1.0,
        ..Faults::none()
    });
    let wal_dir = ws.path().join("pg_wal");
    let names = ["000000010000000000000031", "000000010000000000000032"];
    let push = |name: &str| {
        let path = wal_dir.join(name);
        std::fs::rename(random_file(&wal_dir.join("tmp"), 1), &path).unwrap();
        let out = ws.run(&["wal-push", "pg", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    push(names[0]);
    let text = wait_for(
        "one segment in the metrics",
        Duration::from_secs(30),
        || {
            let text = d.get("/metrics").1;
            (spool_metrics(&text).1 == Some(1.0)).then_some(text)
        },
    );
    let bytes = metric(&text, "drctl_wal_spool_bytes", "pg").unwrap();
    assert!(bytes > 1_048_576.0 && bytes < 0.8 * LIMIT as f64, "{text}");
    assert_eq!(spool_check()["ok"], true, "under 80 %: {}", spool_check());

    push(names[1]);
    let alert = wait_for("a wal_spool_filling alert", Duration::from_secs(30), || {
        hook.bodies()
            .into_iter()
            .map(|(_, v)| v)
            .find(|v| v["event"] == "wal_spool_filling")
    });
    assert_eq!(alert["policy"], "pg", "{alert}");
    assert_eq!(alert["details"]["spool_segments"], 2, "{alert}");
    assert_eq!(alert["details"]["spool_max_bytes"], LIMIT, "{alert}");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("spool_max_bytes"),
        "{alert}"
    );
    let check = spool_check();
    assert_eq!(check["ok"], false, "{check}");
    assert!(
        check["detail"].as_str().unwrap().contains("2 segment(s)"),
        "{check}"
    );
    let (code, body) = d.get("/health");
    assert_eq!(code, 503, "{body}");

    // S3 is back; `wal status` shows what waits and calls it a problem,
    // then a drain empties the spool and the episode ends.
    proxy.set_faults(Faults::none());
    let out = ws.run(&["wal", "status", "pg", "--json"]);
    assert!(!out.status.success(), "a filling spool is a problem");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["spool"]["segments"], 2, "{status}");
    assert!(
        status["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("wal drain pg")),
        "{status}"
    );
    let out = ws.ok(&["wal", "drain", "pg"]);
    assert!(out.contains("stored 2"), "{out}");
    wait_for(
        "the spool check to pass again",
        Duration::from_secs(30),
        || (spool_check()["ok"] == true).then_some(()),
    );
    let text = d.get("/metrics").1;
    assert_eq!(spool_metrics(&text).0, Some(0.0), "{text}");
    let filling = hook
        .bodies()
        .iter()
        .filter(|(_, v)| v["event"] == "wal_spool_filling")
        .count();
    assert_eq!(filling, 1, "one alert per episode");

    // `drctl status` judges a cluster by its WAL archive, not by its base
    // backups: there is none, and the RPO is met.
    let out = ws.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{status}");
    let pg = &status["policies"][0];
    assert_eq!(pg["newest_backup"], serde_json::Value::Null, "{status}");
    assert_eq!(pg["rpo"], "ok", "{status}");
    assert_eq!(pg["wal"]["last_archived"], names[1], "{status}");
    assert!(pg["wal"]["lag_seconds"].as_i64().unwrap() < 120, "{status}");
}
