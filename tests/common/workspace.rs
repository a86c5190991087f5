//! A drctl set-up for one test: a temporary directory with `drctl.toml`, a
//! fresh age identity, `policies/`, and a repository that is either a local
//! directory or a bucket on the test S3 server. Commands run the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{Postgres, drctl, output_within, s3_env};

/// Long enough for a backup or restore of the fixtures on a slow CI machine.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

pub enum Backend {
    Local,
    /// Endpoint (moto or a fault proxy) and bucket; the bucket must exist.
    S3 {
        endpoint: String,
        bucket: String,
    },
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub recipient: String,
    env: Vec<(String, String)>,
    /// Commands run as the cluster owner (see [`Workspace::hand_to_pg_owner`]).
    as_pg_owner: bool,
}

impl Workspace {
    /// Creates the directory, an identity, `drctl.toml` for `backend`, and
    /// runs `drctl init`.
    pub fn new(backend: Backend) -> Workspace {
        let dir = tempfile::tempdir().expect("create workspace dir");
        std::fs::create_dir(dir.path().join("policies")).expect("create policies dir");
        let mut ws = Workspace {
            dir,
            recipient: String::new(),
            env: Vec::new(),
            as_pg_owner: false,
        };
        let out = ws.ok(&["key", "generate", "--out", "identity.age"]);
        ws.recipient = out.trim().to_string();
        let repo = match &backend {
            Backend::Local => "url = \"file://repo\"\n".to_string(),
            Backend::S3 { endpoint, bucket } => {
                for (k, v) in s3_env() {
                    ws.env.push((k.to_string(), v));
                }
                format!(
                    "url = \"s3://{bucket}/drctl\"\nendpoint = \"{endpoint}\"\npath_style = true\n"
                )
            }
        };
        ws.write(
            "drctl.toml",
            &format!("[repository]\n{repo}\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.age\"\n", ws.recipient),
        );
        ws.ok(&["init"]);
        ws
    }

    pub fn local() -> Workspace {
        Workspace::new(Backend::Local)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The local repository directory (only for `Backend::Local`).
    pub fn repo_dir(&self) -> PathBuf {
        self.path().join("repo")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// Gives the workspace (configuration, identity, local repository) to
    /// the OS user PostgreSQL runs as, and runs every later command as that
    /// user: `archive_command` runs as the server's user, so `wal-push` and
    /// the commands beside it must be able to share the repository, as on a
    /// database host.
    pub fn hand_to_pg_owner(&mut self) {
        let mut stack = vec![self.path().to_path_buf()];
        while let Some(p) = stack.pop() {
            super::chown_to_pg_owner(&p);
            if p.is_dir() && !p.is_symlink() {
                for entry in std::fs::read_dir(&p).expect("read workspace dir") {
                    stack.push(entry.expect("dir entry").path());
                }
            }
        }
        self.as_pg_owner = true;
    }

    /// Adds an environment variable for every drctl command.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// A postgres policy named `name` for database `db` on `pg`, with the
    /// password in PGPASSWORD (never in the file).
    pub fn postgres_policy(&mut self, name: &str, pg: &Postgres, db: &str) {
        self.write(
            &format!("policies/{name}.toml"),
            &format!("[source]\ntype = \"postgres\"\nurl = \"{}\"\n", pg.url(db)),
        );
        self.set_env("PGPASSWORD", pg.password());
    }

    /// A files policy named `name` protecting `paths`.
    pub fn files_policy(&self, name: &str, paths: &[&Path]) {
        let list: Vec<String> = paths
            .iter()
            .map(|p| format!("\"{}\"", p.display()))
            .collect();
        self.write(
            &format!("policies/{name}.toml"),
            &format!(
                "[source]\ntype = \"files\"\npaths = [{}]\n",
                list.join(", ")
            ),
        );
    }

    /// `drctl --config <ws>/drctl.toml ARGS…`, run in the workspace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_with_config("drctl.toml", args)
    }

    /// As [`Workspace::cmd`] with another configuration file of the
    /// workspace, e.g. a second daemon's.
    pub fn cmd_with_config(&self, config: &str, args: &[&str]) -> Command {
        let mut c = drctl();
        c.current_dir(self.path())
            .arg("--config")
            .arg(self.path().join(config))
            .args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if self.as_pg_owner {
            super::run_as_pg_owner(&mut c);
        }
        c
    }

    /// The environment drctl commands of this workspace get, as `K=V`
    /// words for a shell line such as `archive_command`.
    pub fn env_words(&self) -> String {
        self.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        output_within(&mut self.cmd(args), b"", COMMAND_TIMEOUT)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "drctl {args:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts exit code `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "drctl {args:?}: expected exit {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `list --json` for a policy: the backups, newest first.
    pub fn backups(&self, policy: &str) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["list", policy, "--json"]))
            .expect("list --json is JSON");
        v["backups"].as_array().cloned().unwrap_or_default()
    }

    /// Backs up `policy` and returns the new backup's id.
    pub fn backup(&self, policy: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["backup", policy, "--json"]))
            .expect("backup --json is JSON");
        v["results"][0]["manifest"]["id"]
            .as_str()
            .expect("backup id")
            .to_string()
    }
}
