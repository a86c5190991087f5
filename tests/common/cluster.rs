//! A PostgreSQL 15 cluster whose `archive_command` is `drctl wal-push` into a
//! workspace's repository (policy `cluster`), on a local directory or on the
//! S3 server; and servers restored from it. The server runs as the
//! `postgres` OS user, and so does its archive_command, so every drctl
//! command runs as that user too (`Workspace::hand_to_pg_owner`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::workspace::{Backend, COMMAND_TIMEOUT, Workspace};
use super::{Postgres, S3Server, block_on, free_port, output_within, unique_bucket_name, wait_for};

/// Where the workspace puts the repository inside the bucket.
const S3_PREFIX: &str = "drctl";

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub struct World {
    pub pg: Postgres,
    pub ws: Workspace,
    /// The server and bucket of an S3 world.
    pub s3: Option<(S3Server, String)>,
}

impl World {
    /// A cluster archiving under policy `cluster`, whose policy file ends
    /// with `policy_extra` (e.g. a `[retention]` table).
    pub fn new(on_s3: bool, policy_extra: &str) -> World {
        let (s3, backend) = if on_s3 {
            let s3 = S3Server::start();
            let bucket = unique_bucket_name("pitr");
            block_on(s3.create_bucket(&bucket, true));
            let endpoint = s3.endpoint();
            (Some((s3, bucket.clone())), Backend::S3 { endpoint, bucket })
        } else {
            (None, Backend::Local)
        };
        let mut ws = Workspace::new(backend);
        // The spool (and prefetch) under the workspace, never the default
        // /var/lib/drctl, which another run may have made as root. The
        // `[wal]` table is last, so a test may append keys to it.
        let config = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
        ws.write(
            "drctl.toml",
            &format!("{config}\n[wal]\nspool_dir = \"spool\"\n"),
        );
        ws.hand_to_pg_owner();
        let archive_command = format!(
            "env {} {} --config {} wal-push cluster %p",
            ws.env_words(),
            env!("CARGO_BIN_EXE_drctl"),
            ws.path().join("drctl.toml").display()
        );
        // synchronous_commit as in production (the harness turns it off):
        // pg_current_wal_lsn() after a commit is then past that commit.
        let pg = Postgres::start_with(&format!(
            "wal_level = replica\narchive_mode = on\narchive_command = '{archive_command}'\n\
             synchronous_commit = on\n"
        ));
        ws.set_env("PGPASSWORD", pg.password());
        ws.write(
            "policies/cluster.toml",
            &format!(
                "[source]\ntype = \"postgres-cluster\"\nurl = \"{}\"\nwal_wait = \"60s\"\n{policy_extra}",
                pg.url("postgres")
            ),
        );
        super::chown_to_pg_owner(&ws.path().join("policies/cluster.toml"));
        World { pg, ws, s3 }
    }

    /// Turns signing on (local repository): a signing key, `[signing]` in
    /// drctl.toml, and `repo.json` written again, signed.
    pub fn sign(&self) {
        let public = self
            .ws
            .ok(&["key", "generate", "--signing", "--out", "signing.key"]);
        let config = std::fs::read_to_string(self.ws.path().join("drctl.toml")).unwrap();
        self.ws.write(
            "drctl.toml",
            &format!(
                "{config}\n[signing]\nkey_file = \"signing.key\"\ntrusted = [\"{}\"]\n",
                public.trim()
            ),
        );
        std::fs::remove_file(self.ws.repo_dir().join("repo.json")).unwrap();
        self.ws.ok(&["init"]);
    }

    /// Switches to a new segment and waits until the old one is archived;
    /// returns the old one's name.
    pub fn switch_and_wait(&self) -> String {
        let segment = self
            .pg
            .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
        self.wait_archived(&segment);
        segment
    }

    pub fn wait_archived(&self, segment: &str) {
        wait_for(
            &format!("{segment} to be archived"),
            Duration::from_secs(60),
            || {
                let archived = self.pg.psql(
                    "postgres",
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                );
                (archived.as_str() >= segment).then_some(())
            },
        );
    }

    /// Every key under `prefix` of the repository, relative to it.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = match &self.s3 {
            Some((s3, bucket)) => block_on(s3.list_keys(bucket, &format!("{S3_PREFIX}/{prefix}")))
                .into_iter()
                .map(|k| k[S3_PREFIX.len() + 1..].to_string())
                .collect(),
            None => {
                let root = self.ws.repo_dir();
                let mut out = Vec::new();
                let mut stack = vec![root.join(prefix)];
                while let Some(d) = stack.pop() {
                    let Ok(entries) = std::fs::read_dir(&d) else {
                        continue;
                    };
                    for e in entries {
                        let p = e.expect("dir entry").path();
                        if p.is_dir() {
                            stack.push(p);
                        } else {
                            out.push(p.strip_prefix(&root).unwrap().display().to_string());
                        }
                    }
                }
                out
            }
        };
        keys.sort();
        keys
    }

    /// Stores `bytes` under `key` (relative to the repository), past drctl.
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        match &self.s3 {
            Some((s3, bucket)) => {
                block_on(s3.put_object(bucket, &format!("{S3_PREFIX}/{key}"), bytes))
            }
            None => std::fs::write(self.ws.repo_dir().join(key), bytes)
                .unwrap_or_else(|e| panic!("write {key}: {e}")),
        }
    }

    /// The stored bytes of `key` (relative to the repository).
    pub fn get(&self, key: &str) -> Vec<u8> {
        match &self.s3 {
            Some((s3, bucket)) => block_on(s3.get_object(bucket, &format!("{S3_PREFIX}/{key}"))),
            None => std::fs::read(self.ws.repo_dir().join(key))
                .unwrap_or_else(|e| panic!("read {key}: {e}")),
        }
    }

    /// Deletes `key` (relative to the repository), as a lost object would be.
    pub fn delete(&self, key: &str) {
        match &self.s3 {
            Some((s3, bucket)) => {
                block_on(
                    s3.client()
                        .delete_object()
                        .bucket(bucket)
                        .key(format!("{S3_PREFIX}/{key}"))
                        .send(),
                )
                .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
            }
            None => std::fs::remove_file(self.ws.repo_dir().join(key))
                .unwrap_or_else(|e| panic!("remove {key}: {e}")),
        }
    }

    /// The WAL file names archived under policy `cluster`, sorted.
    pub fn archived(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .keys("wal/cluster/")
            .iter()
            .filter_map(|k| {
                let file = k.rsplit('/').next()?;
                let stem = file.strip_suffix(".zst.age")?;
                Some(stem.rsplit_once('-')?.0.to_string())
            })
            .collect();
        names.sort();
        names
    }

    /// Deletes the archived copy of a WAL file, as a lost object would be.
    pub fn delete_wal(&self, name: &str) {
        let prefix = format!("wal/cluster/{}/{name}-", &name[..8]);
        match &self.s3 {
            Some((s3, bucket)) => {
                let keys = block_on(s3.list_keys(bucket, &format!("drctl/{prefix}")));
                assert_eq!(keys.len(), 1, "{keys:?}");
                block_on(
                    s3.client()
                        .delete_object()
                        .bucket(bucket)
                        .key(&keys[0])
                        .send(),
                )
                .expect("delete a WAL object");
            }
            None => {
                let dir = self
                    .ws
                    .repo_dir()
                    .join(format!("wal/cluster/{}", &name[..8]));
                let found: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with(&format!("{name}-"))
                    })
                    .collect();
                assert_eq!(found.len(), 1, "{found:?}");
                std::fs::remove_file(&found[0]).unwrap();
            }
        }
    }

    /// The manifest of a backup of policy `cluster`, read from the store.
    pub fn manifest(&self, id: &str) -> serde_json::Value {
        let key = format!("backups/cluster/{id}/manifest.json");
        let bytes = match &self.s3 {
            Some((s3, bucket)) => block_on(s3.get_object(bucket, &format!("{S3_PREFIX}/{key}"))),
            None => std::fs::read(self.ws.repo_dir().join(&key)).expect("read manifest"),
        };
        serde_json::from_slice(&bytes).expect("manifest is JSON")
    }

    /// Restores policy `cluster` into `dir` and starts it on a free port.
    pub fn restore(&self, dir: &Path, args: &[&str]) -> (Output, Restored) {
        let port = free_port();
        let port_text = port.to_string();
        let mut all = vec![
            "restore",
            "cluster",
            "--data-dir",
            dir.to_str().unwrap(),
            "--start",
            "--recovery-timeout-seconds",
            "120",
            "--port",
            &port_text,
        ];
        all.extend(args);
        let out = output_within(&mut self.ws.cmd(&all), b"", COMMAND_TIMEOUT);
        (
            out,
            Restored {
                dir: dir.to_path_buf(),
                port,
            },
        )
    }
}

/// A restored server, stopped when dropped.
pub struct Restored {
    pub dir: PathBuf,
    pub port: u16,
}

impl Restored {
    pub fn psql(&self, sql: &str) -> String {
        let mut cmd = Command::new(super::pg_bin("psql"));
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
        super::run_as_pg_owner(&mut cmd);
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
        let mut cmd = Command::new(super::pg_bin("pg_ctl"));
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate"]);
        super::run_as_pg_owner(&mut cmd);
        let _ = output_within(&mut cmd, b"", Duration::from_secs(60));
    }
}
