//! The `drctl` binary: parse arguments, set up logging, run, map the error
//! to an exit code.

use std::io::IsTerminal;

use clap::Parser;
use drctl::cli::{Cli, Command, ExitCode, LogFormat};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A daemon's log is its record: job starts and ends (info) with times.
    // Interactive commands show only warnings, and the terminal has a clock.
    let daemon = matches!(cli.command, Command::Daemon);
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRCTL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match (cli.log_format, daemon) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.init(),
        (LogFormat::Text, false) => builder.without_time().init(),
    }
    // The commands PostgreSQL runs for every WAL file run several uploads
    // or downloads on threads of their own; two arenas cut their peak
    // (73 to 63 MiB measured for wal-push with look-ahead on S3).
    let wal_command = matches!(
        cli.command,
        Command::WalPush { .. } | Command::WalFetch { .. } | Command::WalPrefetch { .. }
    );
    if daemon || wal_command {
        drctl::malloc::limit_arenas();
    }
    drctl::malloc::fix_thresholds();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let json = cli.json;
    let result = runtime.block_on(drctl::cli::run(cli));
    let undelivered = drctl::cli::stdio::finish();
    match (result, undelivered) {
        (Ok(()), None) => std::process::ExitCode::SUCCESS,
        (Ok(()), Some(e)) => {
            drctl::cli::stdio::err(format_args!(
                "error: writing the output to stdout failed: {e}\n"
            ));
            std::process::ExitCode::from(ExitCode::Failed as u8)
        }
        (Err(e), _) => {
            let code = ExitCode::of(&e);
            if json {
                // One object on one line, so that a script reading stderr
                // under --json gets the reason without parsing prose.
                let error = serde_json::json!({ "error": {
                    "message": e.to_string(),
                    "kind": code.name(),
                    "exit_code": code as u8,
                    "temporary": e.persistence() == drctl::error::Persistence::Temporary,
                }});
                drctl::cli::stdio::err(format_args!("{error}\n"));
            } else {
                drctl::cli::stdio::err(format_args!("error: {e}\n"));
            }
            std::process::ExitCode::from(code as u8)
        }
    }
}
