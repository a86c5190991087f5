//! Point-in-time recovery of a `postgres-cluster` policy against a real
//! PostgreSQL 15 whose `archive_command` is `drctl wal-push`: base backups,
//! WAL archived and fetched back by `drctl wal-fetch`, and `restore --to`
//! replaying to the second, checked by what the restored server holds.
//!
//! The server runs as the `postgres` OS user, and so does its
//! archive_command, so every drctl command here runs as that user too
//! (`Workspace::hand_to_pg_owner`), as it would on a database host.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::workspace::{Backend, COMMAND_TIMEOUT, Workspace};
use common::{
    Postgres, S3Server, block_on, free_port, output_within, unique_bucket_name, wait_for,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A cluster archiving into `ws`'s repository under policy `cluster`.
struct World {
    pg: Postgres,
    ws: Workspace,
    /// Kept alive for S3 worlds.
    _s3: Option<S3Server>,
}

impl World {
    fn new(on_s3: bool) -> World {
        let (s3, backend) = if on_s3 {
            let s3 = S3Server::start();
            let bucket = unique_bucket_name("pitr");
            block_on(s3.create_bucket(&bucket, true));
            let endpoint = s3.endpoint();
            (Some(s3), Backend::S3 { endpoint, bucket })
        } else {
            (None, Backend::Local)
        };
        let mut ws = Workspace::new(backend);
        ws.hand_to_pg_owner();
        let archive_command = format!(
            "env {} {} --config {} wal-push cluster %p",
            ws.env_words(),
            env!("CARGO_BIN_EXE_drctl"),
            ws.path().join("drctl.toml").display()
        );
        let pg = Postgres::start_with(&format!(
            "wal_level = replica\narchive_mode = on\narchive_command = '{archive_command}'\n"
        ));
        ws.set_env("PGPASSWORD", pg.password());
        ws.write(
            "policies/cluster.toml",
            &format!(
                "[source]\ntype = \"postgres-cluster\"\nurl = \"{}\"\nwal_wait = \"60s\"\n",
                pg.url("postgres")
            ),
        );
        common::chown_to_pg_owner(&ws.path().join("policies/cluster.toml"));
        World { pg, ws, _s3: s3 }
    }

    /// Switches to a new segment and waits until the old one is archived.
    fn switch_and_wait(&self) -> String {
        let segment = self
            .pg
            .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
        wait_for(
            &format!("{segment} to be archived"),
            Duration::from_secs(60),
            || {
                let archived = self.pg.psql(
                    "postgres",
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                );
                (archived.as_str() >= segment.as_str()).then_some(())
            },
        );
        segment
    }
}

/// A restored server, stopped when dropped.
struct Restored {
    dir: PathBuf,
    port: u16,
}

impl Restored {
    fn psql(&self, sql: &str) -> String {
        let mut cmd = Command::new(common::pg_bin("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ]);
        common::run_as_pg_owner(&mut cmd);
        let out = output_within(&mut cmd, b"", Duration::from_secs(60));
        assert!(
            out.status.success(),
            "psql on the restored server: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let mut cmd = Command::new(common::pg_bin("pg_ctl"));
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate"]);
        common::run_as_pg_owner(&mut cmd);
        let _ = output_within(&mut cmd, b"", Duration::from_secs(60));
    }
}

fn restore(world: &World, dir: &Path, args: &[&str]) -> (std::process::Output, Restored) {
    let port = free_port();
    let mut all = vec![
        "restore",
        "cluster",
        "--data-dir",
        dir.to_str().unwrap(),
        "--start",
        "--recovery-timeout-seconds",
        "120",
    ];
    let port_text = port.to_string();
    all.extend(["--port", &port_text]);
    all.extend(args);
    let out = output_within(&mut world.ws.cmd(&all), b"", COMMAND_TIMEOUT);
    (
        out,
        Restored {
            dir: dir.to_path_buf(),
            port,
        },
    )
}

/// The honest test: rows before T come back, rows after T do not, and the
/// stop point drctl reports is before T.
fn restore_to_a_time_replays_to_the_second(on_s3: bool) {
    let world = World::new(on_s3);
    let pg = &world.pg;
    pg.psql(
        "postgres",
        "CREATE TABLE t(id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    let backup = world.ws.ok(&["backup", "cluster"]);
    assert!(backup.contains("cluster"), "{backup}");
    for id in 1..=3 {
        pg.psql("postgres", &format!("INSERT INTO t(id) VALUES ({id})"));
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

    let dir = world.ws.path().join("restored");
    let (out, server) = restore(&world, &dir, &["--to", &target]);
    assert!(
        out.status.success(),
        "restore --to {target} failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Restore plan:") && stderr.contains("WAL to replay"),
        "{stderr}"
    );
    assert!(
        stdout.contains("recovery stopping before commit"),
        "{stdout}"
    );
    assert_eq!(
        server.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2,3"
    );
    assert_eq!(
        server.psql(&format!("SELECT max(at) < '{target}' FROM t")),
        "t",
        "a row from after the target was restored"
    );
    assert_eq!(
        server.psql(&format!(
            "SELECT pg_last_xact_replay_timestamp() < '{target}'"
        )),
        "t"
    );
    assert_eq!(
        server.psql("SELECT pg_is_in_recovery()"),
        "f",
        "not promoted"
    );
}

#[test]
fn restore_to_a_time_replays_to_the_second_local() {
    restore_to_a_time_replays_to_the_second(false);
}

#[test]
fn restore_to_a_time_replays_to_the_second_s3() {
    restore_to_a_time_replays_to_the_second(true);
}
