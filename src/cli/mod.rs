//! The command line: arguments (clap), one function per subcommand, human
//! or `--json` output, and the mapping from errors to exit codes.

/// `println!` that never panics (see [`stdio`]).
macro_rules! outln {
    () => {
        $crate::cli::stdio::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::stdio::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that never panics (see [`stdio`]).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::stdio::err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that never panics (see [`stdio`]).
macro_rules! errp {
    ($($arg:tt)*) => {
        $crate::cli::stdio::err(format_args!($($arg)*))
    };
}

mod backup;
mod check;
mod copy;
mod daemon;
mod drill;
mod inspect;
mod prune;
mod recover;
mod repo;
mod report;
mod restore;
mod rotate;
mod sign;
pub mod stdio;
mod wal;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::error::{Error, Persistence};
use crate::repo::Repo;

#[derive(Debug, Parser)]
#[command(
    name = "drctl",
    version,
    about = "Encrypted, verified backups of PostgreSQL and configuration files, and restores you can trust."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "DRCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Identity file for decryption, instead of `encryption.identity_file`.
    #[arg(long, global = true, env = "DRCTL_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "DRCTL_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// No progress display.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Read from this copy (`[[copies]] name`) instead of the primary
    /// repository: list, restore, drill, drills, verify, report, prune,
    /// wal status and wal-fetch.
    #[arg(
        long = "repo",
        visible_alias = "from",
        global = true,
        env = "DRCTL_REPO",
        value_name = "COPY"
    )]
    pub repo: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage age keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Create the repository named in the configuration (safe to repeat).
    Init,
    /// Validate drctl.toml and every policy (errors carry file and line),
    /// then try what backups and restores need: the repository read and
    /// written, each source reached with a suitable pg_dump, each drill's
    /// scratch server or directory, the identity against the recipients.
    Check {
        /// Only validate the files; reach nothing (e.g. on a build machine
        /// or for a configuration meant for another host).
        #[arg(long)]
        offline: bool,
    },
    /// With `[signing]` turned on for an existing repository: vouch for its
    /// unsigned manifests, records, marks and repo.json in one signed
    /// attestation (verify them first: whatever is there now is trusted).
    Sign {
        /// Sign what the repository already holds (the only mode).
        #[arg(long, required = true)]
        existing: bool,
        /// List what would be vouched for and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Take a backup now.
    Backup {
        /// Policy to back up.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        policy: Option<String>,
        /// Back up every policy, one after another.
        #[arg(long)]
        all: bool,
    },
    /// List backups, newest first.
    List {
        /// Only this policy.
        policy: Option<String>,
        /// Backups pruned on a versioned bucket that can still be restored
        /// with `restore --backup ID` (their manifest carries a delete marker).
        #[arg(long, conflicts_with_all = ["since", "last"])]
        deleted: bool,
        /// Only backups at or after this time: a duration ago (`24h`, `7d`)
        /// or any time `restore --to` takes.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only the newest N backups of each policy.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
    },
    /// Delete one backup, whatever the retention rules say: under the
    /// policy's lease, never one a restore or drill holds, never the newest
    /// good backup; the plan is printed and confirmed first (`--yes`).
    Forget {
        /// The backup's policy.
        policy: String,
        /// The backup's id (or a unique prefix).
        id: String,
        /// Print the plan and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Restore a backup chosen by time (or id).
    Restore(Box<restore::RestoreArgs>),
    /// Run a restore drill: restore into a scratch target, verify, measure, record.
    Drill(drill::DrillArgs),
    /// List drill records, newest first.
    Drills {
        /// Only this policy.
        policy: Option<String>,
    },
    /// A compliance report built from drill records and backups.
    Report(report::ReportArgs),
    /// Check that backups are intact.
    Verify {
        /// Only this policy.
        policy: Option<String>,
        /// Download and authenticate every byte (needs the identity).
        #[arg(long)]
        read_data: bool,
    },
    /// Run every policy's schedules until SIGTERM; serves /health, /metrics and /status.
    Daemon,
    /// Per policy: newest backup and its age against the RPO target, next run, last error.
    Status,
    /// Print a shell completion script (bash: `drctl completions bash > /etc/bash_completion.d/drctl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (drctl.1 and one per subcommand) into a directory.
    Man {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Copy backups the copies lack (`[[copies]]`), as stored, verified by
    /// SHA-256 at the destination; the manifest last.
    Copy(copy::CopyArgs),
    /// Delete the backups the retention rules no longer keep (plan printed first).
    Prune {
        /// Only this policy (default: every policy).
        policy: Option<String>,
        /// Print the plan and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// PostgreSQL's archive_command: archive one WAL file, exit 0 only once
    /// it is stored in the repository or, sealed, in the local spool
    /// (`archive_command = 'drctl wal-push POLICY %p'`).
    WalPush {
        /// A `postgres-cluster` policy.
        policy: String,
        /// The file (`%p`).
        path: PathBuf,
    },
    /// PostgreSQL's restore_command: fetch one archived WAL file; exit 1
    /// only when it is not archived, 126 for any other failure
    /// (`restore_command = 'drctl wal-fetch POLICY %f %p'`).
    WalFetch {
        /// A `postgres-cluster` policy.
        policy: String,
        /// The file name PostgreSQL asks for (`%f`).
        name: String,
        /// Where to write it (`%p`).
        path: PathBuf,
    },
    /// Internal: the detached worker `wal-fetch` starts to download the
    /// next segments ahead of recovery (`[wal] prefetch`).
    #[command(hide = true)]
    WalPrefetch {
        /// A `postgres-cluster` policy.
        policy: String,
    },
    /// The WAL archive of a `postgres-cluster` policy.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Make a named restore point on the policy's server
    /// (`pg_create_restore_point`) and record it, for `restore --to-name`.
    Mark {
        /// A `postgres-cluster` policy.
        policy: String,
        /// The restore point's name (1 to 63 bytes).
        name: String,
    },
    /// Point-in-time recovery set-up.
    Pitr {
        #[command(subcommand)]
        command: PitrCommand,
    },
    /// The bucket's versioning, lifecycle rules and Object Lock defaults.
    Repo {
        #[command(subcommand)]
        command: repo::RepoCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Newest archived segment per timeline, lag against the RPO target,
    /// gaps, and the server's pg_stat_archiver. Exits 1 on a gap or a lag
    /// beyond `[schedule] rpo_target`.
    Status {
        /// A `postgres-cluster` policy.
        policy: String,
    },
    /// Store the WAL that `wal-push` spooled while the repository did not
    /// answer (every `wal-push` does this first too).
    Drain {
        /// A `postgres-cluster` policy.
        policy: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PitrCommand {
    /// Print the postgresql.conf lines that archive into this policy and
    /// check the server's current settings against them (exit 1 when they
    /// differ).
    Setup {
        /// A `postgres-cluster` policy.
        policy: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an identity file and print its public recipient; with
    /// --signing, a signing key and its public key for `[signing] trusted`.
    Generate {
        /// Where to write the secret key (mode 0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// An ed25519 signing key (`[signing] key_file`) instead of an age
        /// identity.
        #[arg(long)]
        signing: bool,
    },
    /// Print the public key of a signing key file (`drctl-ed25519:…`), for
    /// `[signing] trusted`.
    Public {
        /// A file written by `drctl key generate --signing`.
        file: PathBuf,
    },
    /// Re-encrypt every backup and WAL object (of every policy, or one) to
    /// a new set of recipients, so that a removed identity reads none of
    /// them. Only each object's age header is rewritten; the encrypted data
    /// stays as it is (copied inside the bucket on S3). Prints the plan
    /// first. Needs an identity that reads the objects now; run it again
    /// with the same keys to finish an interrupted rotation. With --repo,
    /// rotates that copy.
    Rotate {
        /// A recipient (`age1…`) to add to every object.
        #[arg(long, value_name = "RECIPIENT")]
        add: Vec<String>,
        /// A recipient to remove from every object. Remove it from
        /// `[encryption] recipients` first.
        #[arg(long, value_name = "RECIPIENT")]
        remove: Vec<String>,
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Print the plan and the bytes it would move; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// On a versioned bucket, also delete for good the old versions of
        /// the objects rotated away (which the old key still reads until the
        /// bucket's noncurrent-version expiry), where Object Lock allows.
        #[arg(long)]
        purge_versions: bool,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

/// Exit codes, documented in docs/operations.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// The job ran and failed.
    Failed = 1,
    /// Bad input: configuration, arguments, names, times, keys.
    BadInput = 2,
    /// Refused to act: a non-empty target, a held lease, no confirmation.
    Refused = 3,
    /// Stored data failed authentication or did not match its manifest.
    Integrity = 4,
    /// A store or database could not be reached; trying later may work.
    Unavailable = 5,
    /// A verification was asked for (`restore --verify`) that this backup
    /// or destination cannot give; nothing was restored.
    Unverifiable = 6,
    /// With `[signing]`: a manifest or record the command would have used
    /// has a missing, unknown or bad signature; it was ignored and named.
    Untrusted = 7,
    /// `wal-fetch` failed for a reason other than "not archived" (which is
    /// 1): PostgreSQL stops recovery on an exit status above 125.
    StopRecovery = 126,
}

impl ExitCode {
    /// The snake_case name scripts read in `--json` errors.
    pub fn name(self) -> &'static str {
        match self {
            ExitCode::Ok => "ok",
            ExitCode::Failed => "failed",
            ExitCode::BadInput => "bad_input",
            ExitCode::Refused => "refused",
            ExitCode::Integrity => "integrity",
            ExitCode::Unavailable => "unavailable",
            ExitCode::Unverifiable => "unverifiable",
            ExitCode::Untrusted => "untrusted",
            ExitCode::StopRecovery => "stop_recovery",
        }
    }

    pub fn of(e: &Error) -> ExitCode {
        match e {
            Error::Config(_)
            | Error::ConfigMany(_)
            | Error::UnknownPolicy { .. }
            | Error::InvalidTime { .. }
            | Error::NoBackup(_)
            | Error::NotInitialised { .. }
            | Error::Key(_)
            | Error::Usage(_) => ExitCode::BadInput,
            Error::Refused(_) | Error::Locked { .. } => ExitCode::Refused,
            Error::Integrity { .. } | Error::VerifyFailed { .. } => ExitCode::Integrity,
            Error::Unverifiable(_) => ExitCode::Unverifiable,
            Error::Untrusted(_) => ExitCode::Untrusted,
            Error::StopRecovery(_) => ExitCode::StopRecovery,
            Error::NotArchived(_) => ExitCode::Failed,
            Error::Storage(_) if e.persistence() == Persistence::Temporary => ExitCode::Unavailable,
            Error::Archived(_) | Error::SpoolFull(_) => ExitCode::Unavailable,
            Error::Database { message, .. } if message.starts_with("cannot connect") => {
                ExitCode::Unavailable
            }
            // The contract for `drill` and `report --verify`: exit 1.
            Error::DrillFailed { .. } | Error::ChainBroken { .. } | Error::Unhealthy(_) => {
                ExitCode::Failed
            }
            _ => ExitCode::Failed,
        }
    }
}

/// Process-level settings shared by the subcommands.
pub struct Ctx {
    pub cli: Cli,
    pub cancel: Arc<AtomicBool>,
}

impl Ctx {
    fn config(&self) -> crate::Result<Config> {
        Config::load(&Config::resolve_path(self.cli.config.as_deref()))
    }

    /// Opens the repository with `[signing]` applied, and says once, on
    /// stderr, when its objects cannot be trusted: a `repo.json` without a
    /// trusted signature, or unsigned mode where that informs (see
    /// [`Ctx::warns_unsigned`]).
    async fn repo(&self, config: &Config) -> crate::Result<Repo> {
        let signing = crate::signing::for_config(config)?;
        let repo = match &self.cli.repo {
            Some(name) => crate::copy::open_copy(config.copy(name)?, signing).await?,
            None => {
                let store = crate::storage::open(&config.repository).await?;
                Repo::open(store).await?.with_signing(signing).await?
            }
        };
        for warning in &repo.attestation_warnings {
            errln!("warning: {warning}");
        }
        if let Some(why) = &repo.marker_untrusted {
            errln!("warning: {why}");
        } else if repo.signing.is_none() && !self.cli.quiet && self.warns_unsigned(&repo) {
            errln!("warning: {}", crate::signing::unsigned_warning(&repo));
        }
        Ok(repo)
    }

    /// Unsigned mode is a deliberate, documented default, so saying so on
    /// every command (a new user's `init`, `backup`, `list`) teaches people
    /// to skip warnings. It is said where it informs: `check` and `status`,
    /// which describe the set-up; and the commands that act on a manifest
    /// they trust (`restore`, `verify`, `drill`) when the repository's
    /// repo.json is signed, i.e. some host signs and this one cannot check.
    /// `check` says it in its own report.
    fn warns_unsigned(&self, repo: &Repo) -> bool {
        match &self.cli.command {
            // `check` says it itself, among the rest of the set-up.
            Command::Status => true,
            Command::Restore(_) | Command::Verify { .. } | Command::Drill(_) => {
                repo.marker_is_signed()
            }
            _ => false,
        }
    }

    fn identities(&self, config: &Config) -> crate::Result<Vec<age::x25519::Identity>> {
        crate::pipeline::crypto::read_identities(
            self.cli
                .identity
                .as_deref()
                .or(config.identity_file.as_deref()),
        )
    }

    fn progress(&self) -> bool {
        !self.cli.quiet && !self.cli.json
    }

    fn print_json(&self, value: &impl serde::Serialize) {
        outln!(
            "{}",
            serde_json::to_string_pretty(value).expect("output serialises")
        );
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the subcommand failed with; `main` maps it to an exit code.
pub async fn run(cli: Cli) -> crate::Result<()> {
    let cancel = Arc::new(AtomicBool::new(false));
    // The daemon handles its own signals: SIGTERM drains, SIGHUP reloads.
    if !matches!(cli.command, Command::Daemon) {
        spawn_signal_watch(cancel.clone());
    }
    let ctx = Ctx { cli, cancel };
    if let Some(name) = &ctx.cli.repo {
        copy::refuse_repo_flag(&ctx.cli.command, name)?;
    }
    match &ctx.cli.command {
        Command::Key {
            command:
                KeyCommand::Generate {
                    out,
                    signing: false,
                },
        } => inspect::key_generate(&ctx, out),
        Command::Key {
            command: KeyCommand::Generate { out, signing: true },
        } => inspect::signing_key_generate(&ctx, out),
        Command::Key {
            command: KeyCommand::Public { file },
        } => inspect::signing_key_public(&ctx, file),
        Command::Key {
            command:
                KeyCommand::Rotate {
                    add,
                    remove,
                    policy,
                    dry_run,
                    purge_versions,
                    yes,
                },
        } => {
            let flags = rotate::Flags {
                dry_run: *dry_run,
                purge_versions: *purge_versions,
                yes: *yes,
            };
            rotate::rotate(&ctx, add, remove, policy.as_deref(), flags).await
        }
        Command::Init => inspect::init(&ctx).await,
        Command::Check { offline } => inspect::check(&ctx, *offline).await,
        Command::Sign { dry_run, .. } => sign::sign_existing(&ctx, *dry_run).await,
        Command::Backup { policy, all } => backup::backup(&ctx, policy.as_deref(), *all).await,
        Command::List {
            policy,
            deleted: false,
            since,
            last,
        } => inspect::list(&ctx, policy.as_deref(), since.as_deref(), *last).await,
        Command::List {
            policy,
            deleted: true,
            ..
        } => prune::list_deleted(&ctx, policy.as_deref()).await,
        Command::Forget {
            policy,
            id,
            dry_run,
            yes,
        } => prune::forget(&ctx, policy, id, *dry_run, *yes).await,
        Command::Restore(args) => restore::restore(&ctx, args).await,
        Command::Drill(args) => drill::drill(&ctx, args).await,
        Command::Drills { policy } => drill::drills(&ctx, policy.as_deref()).await,
        Command::Report(args) => report::report(&ctx, args).await,
        Command::Verify { policy, read_data } => {
            inspect::verify(&ctx, policy.as_deref(), *read_data).await
        }
        Command::Daemon => daemon::daemon(&ctx).await,
        Command::Status => daemon::status(&ctx).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "drctl", &mut out);
            outln!("{}", String::from_utf8_lossy(&out).trim_end());
            Ok(())
        }
        Command::Man { out } => {
            std::fs::create_dir_all(out)
                .map_err(|e| crate::Error::io(format!("creating {}", out.display()), e))?;
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::generate_to(cmd, out).map_err(|e| {
                crate::Error::io(format!("writing man pages into {}", out.display()), e)
            })?;
            outln!("man pages written to {}", out.display());
            Ok(())
        }
        Command::Copy(args) => copy::copy(&ctx, args).await,
        Command::Prune { policy, dry_run } => prune::prune(&ctx, policy.as_deref(), *dry_run).await,
        Command::Repo { command } => repo::run(&ctx, command).await,
        Command::WalPush { policy, path } => wal::push(&ctx, policy, path).await,
        Command::WalFetch { policy, name, path } => wal::fetch(&ctx, policy, name, path).await,
        Command::WalPrefetch { policy } => wal::prefetch_worker(&ctx, policy).await,
        Command::Wal {
            command: WalCommand::Status { policy },
        } => wal::status(&ctx, policy).await,
        Command::Mark { policy, name } => wal::mark(&ctx, policy, name).await,
        Command::Pitr {
            command: PitrCommand::Setup { policy },
        } => wal::setup(&ctx, policy).await,
        Command::Wal {
            command: WalCommand::Drain { policy },
        } => wal::drain(&ctx, policy).await,
    }
}

/// SIGINT and SIGTERM ask running jobs to stop cleanly; a second one exits.
fn spawn_signal_watch(cancel: Arc<AtomicBool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        for _ in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if cancel.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
            errln!(
                "drctl: stopping; the running job aborts its upload and writes no manifest (signal again to exit at once)"
            );
        }
    });
}
