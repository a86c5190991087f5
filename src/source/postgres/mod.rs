//! PostgreSQL: connecting the way libpq does (PGPASSWORD, then a pgpass
//! file), exporting a snapshot, finding a pg_dump/pg_restore that can talk
//! to the server, and describing a target without ever showing a password.

pub mod dump;
pub mod dumpscan;
pub mod fingerprint;
pub mod restore;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::source::process;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT_SECONDS: u64 = 10;

/// `host:port/db` for messages; never includes a password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or("?"))
}

/// Parses a connection string and fills in what libpq would from the
/// environment: user, host, port and password (PGPASSWORD, then pgpass).
///
/// # Errors
/// An unparseable connection string.
pub fn resolve(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| Error::Database {
        target: "(connection string)".into(),
        message: format!("cannot parse the connection string: {e}"),
    })?;
    if config.get_user().is_none() {
        let user = std::env::var("PGUSER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "postgres".into());
        config.user(&user);
    }
    if config.get_hosts().is_empty() {
        match std::env::var("PGHOST") {
            Ok(h) => {
                config.host(&h);
            }
            Err(_) if Path::new("/var/run/postgresql").exists() => {
                config.host_path("/var/run/postgresql");
            }
            Err(_) => {
                config.host("localhost");
            }
        }
    }
    if config.get_ports().is_empty()
        && let Some(p) = std::env::var("PGPORT").ok().and_then(|p| p.parse().ok())
    {
        config.port(p);
    }
    if config.get_password().is_none()
        && let Some(pw) = password_from_env(&config)
    {
        config.password(pw);
    }
    config.connect_timeout(std::time::Duration::from_secs(CONNECT_TIMEOUT_SECONDS));
    Ok(config)
}

fn password_from_env(config: &tokio_postgres::Config) -> Option<String> {
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        return Some(pw);
    }
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let meta = std::fs::metadata(&path).ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        // libpq ignores a pgpass file others can read; so do we.
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "Ignoring the password file: its mode must be 0600.");
            return None;
        }
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".into(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    pgpass_lookup(
        &text,
        &host,
        &port,
        config.get_dbname().unwrap_or(""),
        config.get_user().unwrap_or(""),
    )
}

/// Finds the password for a connection in pgpass text
/// (`host:port:database:user:password`, `*` matches anything, `\` escapes).
pub fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(&fields[0], host)
            && matches(&fields[1], port)
            && matches(&fields[2], db)
            && matches(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

/// Connects and drives the connection on a task.
///
/// # Errors
/// `Database` naming the target; the message says whether the server was
/// unreachable or refused the login, never what the password was.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client> {
    let target = describe(config);
    let (client, connection) = config.connect(NoTls).await.map_err(|e| Error::Database {
        target: target.clone(),
        message: connect_hint(&e),
    })?;
    // Driven by hand so that notices (a `DROP … IF EXISTS` that found
    // nothing, pg_restore's chatter) go to debug: left to itself the
    // connection logs them at info, and they crowd the daemon's log.
    let mut connection = connection;
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => tracing::debug!(
                    event = "postgres_notice",
                    severity = n.severity(),
                    notice = n.message(),
                    "PostgreSQL notice."
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL connection closed.");
                    break;
                }
            }
        }
    });
    Ok(client)
}

fn connect_hint(e: &tokio_postgres::Error) -> String {
    let text = error_text(e);
    if let Some(db) = e.as_db_error() {
        match db.code().code() {
            "28P01" | "28000" => {
                return format!(
                    "login refused: {} (check PGPASSWORD or the pgpass file)",
                    db.message()
                );
            }
            "3D000" => return format!("{} (check the database name in the policy)", db.message()),
            _ => {}
        }
    }
    if text.contains("refused") || text.contains("timed out") || text.contains("error connecting") {
        format!("cannot connect: {text} (is the server running and reachable?)")
    } else {
        text
    }
}

/// The full text of a tokio-postgres error, including the server's message.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut cur = std::error::Error::source(e);
            while let Some(c) = cur {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cur = c.source();
            }
            s
        }
    }
}

/// A repeatable-read transaction whose snapshot pg_dump shares.
pub struct Snapshot {
    pub id: String,
    pub point_in_time: DateTime<Utc>,
    pub server_version: String,
    pub server_version_num: u32,
}

/// Opens the snapshot transaction on `client`. It stays open until the
/// client commits or is dropped, which must be after pg_dump has started.
///
/// # Errors
/// Database errors, e.g. on a standby without `hot_standby_feedback`.
pub async fn begin_snapshot(client: &Client, target: &str) -> Result<Snapshot> {
    let db = |e: tokio_postgres::Error| Error::Database {
        target: target.to_string(),
        message: error_text(&e),
    };
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(db)?;
    // The first statement takes the snapshot; statement_timestamp() is when.
    let row = client
        .query_one(
            "SELECT pg_export_snapshot(), statement_timestamp(), current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(db)?;
    let point: std::time::SystemTime = row.get(1);
    Ok(Snapshot {
        id: row.get(0),
        point_in_time: point.into(),
        server_version: row.get(2),
        server_version_num: row.get::<_, i32>(3) as u32,
    })
}

/// The directory holding pg_dump/pg_restore: the policy's `bin_dir`, else
/// Debian's per-version directory for the server's major version, else PATH.
pub fn bin_dir(configured: Option<&Path>, server_major: u32) -> Option<PathBuf> {
    if let Some(d) = configured {
        return Some(d.to_path_buf());
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{server_major}/bin"));
    debian.join("pg_dump").exists().then_some(debian)
}

pub fn program(bin_dir: Option<&Path>, name: &str) -> PathBuf {
    bin_dir
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Checks that a client tool can handle the server: pg_dump must be at least
/// the server's major version.
///
/// # Errors
/// `Source` with the versions and what to install.
pub fn check_tool(policy: &str, program: &Path, server_version_num: u32) -> Result<String> {
    let version = process::tool_version(program).map_err(|m| Error::Source {
        policy: policy.into(),
        message: m,
    })?;
    let server_major = server_version_num / 10000;
    if process::major_of(&version) < server_major {
        return Err(Error::Source {
            policy: policy.into(),
            message: format!(
                "{} is version {version} but the server is {server_major}; install the PostgreSQL {server_major} client or set `source.bin_dir`",
                program.display()
            ),
        });
    }
    Ok(version)
}

/// `pg_dump` in custom format without its own compression (drctl compresses
/// once, later in the pipe), reading the exported snapshot.
pub fn pg_dump_command(program: &Path, url: &str, snapshot: &str, extra: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot}"))
        .args(extra)
        .arg(format!("--dbname={url}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // The fingerprint hashes COPY text; pin the settings pg_dump leaves to
    // the server so that a check elsewhere prints values the same way.
    let options = std::env::var("PGOPTIONS").unwrap_or_default();
    cmd.env("PGTZ", "UTC")
        .env("PGOPTIONS", format!("{options} -c bytea_output=hex").trim());
    cmd
}

/// `pg_restore` reading a custom-format dump on stdin into `url`.
pub fn pg_restore_command(program: &Path, url: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["--exit-on-error", "--no-password", "--single-transaction"])
        .arg(format!("--dbname={url}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    cmd
}

/// A connection string like `url` but naming database `db`. Works for URLs
/// and key=value strings.
pub fn with_dbname(url: &str, db: &str) -> String {
    if (url.starts_with("postgres://") || url.starts_with("postgresql://"))
        && let Ok(mut u) = url::Url::parse(url)
    {
        u.set_path(&format!("/{}", urlencode(db)));
        return u.to_string();
    }
    format!(
        "{url} dbname='{}'",
        db.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Database-level work on one server (create, drop, rename), through a
/// connection to its `postgres` database. Restores and drills use it for
/// their scratch databases.
pub struct Admin {
    client: Client,
    /// `host:port` for messages.
    pub server: String,
}

impl Admin {
    /// Connects to the `postgres` database of the server `url` names.
    ///
    /// # Errors
    /// `Database` when the server cannot be reached or refuses the login.
    pub async fn connect(url: &str) -> Result<Admin> {
        let config = resolve(&with_dbname(url, "postgres"))?;
        let server = describe(&config).trim_end_matches("/postgres").to_string();
        Ok(Admin {
            client: connect(&config).await?,
            server,
        })
    }

    fn fail(&self, e: &tokio_postgres::Error) -> Error {
        Error::Database {
            target: self.server.clone(),
            message: error_text(e),
        }
    }

    /// # Errors
    /// `Database` on a query failure.
    pub async fn exists(&self, db: &str) -> Result<bool> {
        let row = self
            .client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .await
            .map_err(|e| self.fail(&e))?;
        Ok(row.is_some())
    }

    /// Databases whose names start with `prefix`.
    ///
    /// # Errors
    /// `Database` on a query failure.
    pub async fn databases_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1",
                &[&prefix],
            )
            .await
            .map_err(|e| self.fail(&e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Creates an empty database from `template0`.
    ///
    /// # Errors
    /// `Database`, e.g. when it already exists.
    pub async fn create(&self, db: &str) -> Result<()> {
        self.client
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                quote_ident(db)
            ))
            .await
            .map_err(|e| self.fail(&e))
    }

    /// Drops a database if it exists, ending its sessions.
    ///
    /// # Errors
    /// `Database` on failure.
    pub async fn drop(&self, db: &str) -> Result<()> {
        self.client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(db)
            ))
            .await
            .map_err(|e| self.fail(&e))
    }

    /// # Errors
    /// `Database`, e.g. when the database has sessions or `to` exists.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.client
            .batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", quote_ident(from), quote_ident(to)))
            .await
            .map_err(|e| Error::Database {
                target: self.server.clone(),
                message: format!("cannot rename database `{from}` to `{to}`: {} (close its connections and retry)", error_text(&e)),
            })
    }
}

/// `base` with `suffix` appended, shortened to PostgreSQL's 63-byte names.
pub fn db_name_with(base: &str, suffix: &str) -> String {
    let mut keep = base.to_string();
    while keep.len() + suffix.len() > 63 {
        keep.pop();
    }
    format!("{keep}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_matching() {
        let text = "# comment\nother:5432:*:bob:nope\nlocalhost:5432:*:alice:s3cr\\:et\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "localhost", "5432", "orders", "alice").as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            pgpass_lookup(text, "db9", "1", "x", "y").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("h:1:d:u\n", "h", "1", "d", "u"), None);
    }

    #[test]
    fn dbname_replacement() {
        assert_eq!(
            with_dbname("postgres://u@h:5/orders", "orders_restored"),
            "postgres://u@h:5/orders_restored"
        );
        assert_eq!(
            with_dbname("host=h user=u dbname=x", "y"),
            "host=h user=u dbname=x dbname='y'"
        );
        let c: tokio_postgres::Config = with_dbname("host=h user=u dbname=x", "y").parse().unwrap();
        assert_eq!(c.get_dbname(), Some("y"));
    }
}
