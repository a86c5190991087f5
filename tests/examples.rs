//! The shipped examples work: `drctl.toml.example` with `policies/` passes
//! `drctl check`, every example policy parses, and the settings they show
//! commented out are valid too once uncommented.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{drctl, output_within};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_policies() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("policies"))
        .expect("read policies/")
        .map(|e| e.expect("policies/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// The example's placeholder recipient, which a user must replace.
const PLACEHOLDER: &str = "age1-REPLACE-WITH-THE-KEY-PRINTED-BY-drctl-key-generate";
/// A well-formed public key to stand in for the user's.
const SOME_KEY: &str = "age1dlt76suyf6e7f2jgu8vfyk99m3uy9u4tnfczlpea0md0qjz2vfxqrquvxp";

/// A temporary directory holding `drctl.toml` (with `config_text`, its
/// placeholder key replaced as the user would) and a copy of `policies/`.
fn setup(config_text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(
        config_text.contains(PLACEHOLDER),
        "the example carries the placeholder key"
    );
    std::fs::write(
        dir.path().join("drctl.toml"),
        config_text.replace(PLACEHOLDER, SOME_KEY),
    )
    .expect("write drctl.toml");
    std::fs::create_dir(dir.path().join("policies")).expect("create policies/");
    for file in example_policies() {
        std::fs::copy(
            &file,
            dir.path()
                .join("policies")
                .join(file.file_name().expect("file name")),
        )
        .expect("copy policy");
    }
    dir
}

/// `drctl --config DIR/drctl.toml ARGS…`; returns (exit code, stdout, stderr).
fn run_drctl(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = drctl();
    cmd.current_dir(dir)
        .arg("--config")
        .arg(dir.join("drctl.toml"))
        .args(args);
    let out = output_within(&mut cmd, b"", Duration::from_secs(60));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Uncomments every commented-out setting (`# key = …` or `# [table]`), the
/// form the examples use to show optional settings.
fn uncomment_settings(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line.to_string();
            };
            let is_table = rest.starts_with('[') && rest.trim_end().ends_with(']');
            let is_key = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if is_table || is_key {
                rest.to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn example_config_and_policies_pass_check() {
    let text = std::fs::read_to_string(repo_root().join("drctl.toml.example"))
        .expect("read drctl.toml.example");
    let dir = setup(&text);
    let (code, stdout, stderr) = run_drctl(dir.path(), &["check", "--offline"]);
    assert_eq!(
        code,
        Some(0),
        "drctl check failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    assert!(
        stdout.contains("repository: file:///"),
        "the example defaults to a local-directory repository:\n{stdout}"
    );
    for name in ["orders-db (postgres)", "nginx-config (files)"] {
        assert!(
            stdout.contains(&format!("policy {name}: ok")),
            "`{name}` missing from check output:\n{stdout}"
        );
    }
    assert!(!stderr.contains("error"), "{stderr}");

    let (code, stdout, stderr) = run_drctl(dir.path(), &["check", "--offline", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("check --json is JSON");
    let mut names: Vec<&str> = v["policies"]
        .as_array()
        .expect("policies array")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    names.sort();
    assert_eq!(names, ["nginx-config", "orders-db"]);
}

/// Copying the example without putting in a real key must not produce a
/// configuration that encrypts to nobody's key.
#[test]
fn example_placeholder_key_is_refused_with_its_line() {
    let text = std::fs::read_to_string(repo_root().join("drctl.toml.example"))
        .expect("read drctl.toml.example");
    let dir = setup(&text);
    std::fs::write(dir.path().join("drctl.toml"), &text).expect("write drctl.toml");
    let line = text
        .lines()
        .position(|l| l.contains(PLACEHOLDER))
        .expect("placeholder line")
        + 1;
    let (code, _, stderr) = run_drctl(dir.path(), &["check", "--offline"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("drctl.toml:{line}:"))
            && stderr.contains("not an age X25519 public key"),
        "{stderr}"
    );
}

#[test]
fn example_config_with_commented_settings_enabled_passes_check() {
    let text = std::fs::read_to_string(repo_root().join("drctl.toml.example"))
        .expect("read drctl.toml.example");
    // The S3 variant replaces the local url.
    let without_local: String = text
        .lines()
        .filter(|l| !l.starts_with("url = \"file://"))
        .collect::<Vec<_>>()
        .join("\n");
    let s3 = uncomment_settings(&without_local);
    assert!(
        s3.contains("\nurl = \"s3://") && s3.contains("\n[lifecycle]") && s3.contains("\n[daemon]"),
        "expected a commented S3 url, [lifecycle] and [daemon] in the example:\n{s3}"
    );
    let dir = setup(&s3);
    let (code, stdout, stderr) = run_drctl(dir.path(), &["check", "--offline"]);
    assert_eq!(
        code,
        Some(0),
        "the S3 variant of the example fails check\n--- config ---\n{s3}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    assert!(
        stdout.contains("repository: s3://example-backups/drctl"),
        "{stdout}"
    );
}

#[test]
fn every_example_policy_parses() {
    let files = example_policies();
    assert!(
        files.len() >= 2,
        "expected the example policies in policies/, found {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read policy");
        for (variant, text) in [
            ("as shipped", text.clone()),
            ("uncommented", uncomment_settings(&text)),
        ] {
            let mut errors = Vec::new();
            let policy = drctl::config::parse_policy(&file, &text, &mut errors);
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert!(
                errors.is_empty(),
                "{} ({variant}) does not parse:\n{}",
                file.display(),
                errors.join("\n")
            );
            let policy = policy.expect("a policy without errors");
            let stem = file.file_stem().unwrap().to_string_lossy();
            assert_eq!(
                policy.name,
                stem,
                "{}: name differs from the file name",
                file.display()
            );
            assert!(
                policy.schedule.is_some(),
                "{}: example policies show a [schedule]",
                file.display()
            );
        }
        // Example URLs never carry a password (the parser refuses them too).
        for line in text.lines().filter(|l| l.contains("://")) {
            if let Some(at) = line.find('@') {
                let userinfo = &line[line.find("://").unwrap() + 3..at];
                assert!(
                    !userinfo.contains(':'),
                    "{}: a URL with a password: {line}",
                    file.display()
                );
            }
        }
    }
}
