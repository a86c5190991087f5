//! Debian's headless Chromium (installed by scripts/test.sh) as the judge of
//! whether a page drctl serves or writes really renders.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .expect("`chromium` is not on PATH; scripts/test.sh installs Debian's chromium package")
}

/// Loads `url` and returns the DOM after load, panicking with Chromium's log
/// if it fails or the page logged an error (a script error, a resource that
/// did not load, a Content-Security-Policy violation).
pub fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg("--dump-dom")
    .arg(url);
    let out = super::output_within(&mut cmd, b"", TIMEOUT);
    let (dom, log) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "chromium failed on {url} ({}):\n{log}",
        out.status
    );
    let page_errors: Vec<&str> = log
        .lines()
        // Page messages look like `[…:INFO:CONSOLE:12] "Uncaught …", source: file://…`.
        .filter(|l| {
            l.contains(":CONSOLE")
                || l.contains("Uncaught")
                || l.contains("Failed to load resource")
                || l.contains("Content Security Policy")
        })
        .collect();
    assert!(
        page_errors.is_empty(),
        "{url} logged errors in Chromium:\n{}\nDOM:\n{dom}",
        page_errors.join("\n")
    );
    dom
}
