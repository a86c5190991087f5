//! The operations kit in `deploy/`: the Prometheus rules pass promtool's
//! checks and unit tests, every metric the rules name is exported by a
//! running daemon, the systemd unit passes `systemd-analyze verify`, and the
//! container image builds and backs up a real database.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, output_within, wait_for};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `program args…` must succeed; scripts/test.sh installs the tools.
fn run_ok(program: &str, args: &[&str], dir: &Path) -> String {
    let out = output_within(
        Command::new(program).args(args).current_dir(dir),
        b"",
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy("prometheus");
    let out = run_ok("promtool", &["check", "rules", "drctl.rules.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok("promtool", &["test", "rules", "drctl.rules.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A unit test that expects the wrong alert must fail: promtool really
/// evaluates the rules.
#[test]
fn promtool_rule_tests_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        deploy("prometheus/drctl.rules.yml"),
        dir.path().join("drctl.rules.yml"),
    )
    .unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/drctl.rules.test.yml")).unwrap();
    // The spool is at 90 %: expecting no alert is wrong.
    let broken = tests.replacen(
        "      - eval_time: 5m\n        alertname: DrctlWalSpoolFilling\n        exp_alerts:\n",
        "      - eval_time: 5m\n        alertname: DrctlWalSpoolFilling\n        exp_alerts: []\n        unused:\n",
        1,
    );
    assert_ne!(broken, tests, "the test file changed shape");
    std::fs::write(dir.path().join("t.yml"), broken).unwrap();
    let out = output_within(
        Command::new("promtool")
            .args(["test", "rules", "t.yml"])
            .current_dir(dir.path()),
        b"",
        Duration::from_secs(120),
    );
    assert!(!out.status.success(), "{}", text(&out.stdout));
}

/// `drctl_*` names in a rules or dashboard file, without the `_total` a
/// counter's sample adds to its family name.
fn metric_names(file: &Path) -> BTreeSet<String> {
    let body = std::fs::read_to_string(file).unwrap();
    let mut names = BTreeSet::new();
    let bytes = body.as_bytes();
    let mut i = 0;
    while let Some(at) = body[i..].find("drctl_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            let name = &body[start..end];
            names.insert(name.strip_suffix("_total").unwrap_or(name).to_string());
        }
        i = end;
    }
    names
}

#[test]
fn every_metric_the_rules_name_is_exported_by_a_running_daemon() {
    let mut named = metric_names(&deploy("prometheus/drctl.rules.yml"));
    named.extend(metric_names(&deploy("grafana/drctl.json")));
    assert!(named.len() > 10, "{named:?}");

    // A real cluster archiving to S3 (bucket settings are only compared
    // there), so the WAL and server families have samples; a files policy
    // the daemon backs up and drills every few seconds, for the job ones.
    let mut world = common::cluster::World::new(true, "\n[schedule]\nrpo_target = \"1h\"\n");
    world.switch_and_wait();
    let ws_path = world.ws.path().to_path_buf();
    let data = ws_path.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.conf"), "x = 1\n").unwrap();
    std::fs::create_dir_all(ws_path.join("scratch")).unwrap();
    std::fs::create_dir_all(ws_path.join("spool/cluster")).unwrap();
    world.ws.write(
        "policies/etc.toml",
        &format!(
            "[source]\ntype = \"files\"\npaths = [\"{}\"]\n\n[schedule]\nbackup = \"*/3 * * * * *\"\nrpo_target = \"1d\"\n\n\
             [drill]\nschedule = \"*/2 * * * * *\"\nscratch_dir = \"{}\"\nrto_target = \"1h\"\n",
            data.display(),
            ws_path.join("scratch").display()
        ),
    );
    let base = std::fs::read_to_string(ws_path.join("drctl.toml")).unwrap();
    let port = free_port();
    world.ws.write(
        "daemon.toml",
        &format!(
            "{base}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\ncheck_interval = \"1s\"\n\n[[copies]]\nname = \"dr\"\nurl = \"file://copy\"\nafter_backup = true\n"
        ),
    );
    world.ws.hand_to_pg_owner();
    let mut child = world
        .ws
        .cmd_with_config("daemon.toml", &["daemon"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wanted = [
        "drctl_wal_spool_bytes{",
        "drctl_wal_archive_lag_segments{",
        "drctl_drill_last_passed{",
        "drctl_backup_last_size_bytes{",
        "drctl_bucket_drift_settings",
        "drctl_copy_newest_backup_timestamp_seconds{",
    ];
    let metrics = wait_for("the daemon's /metrics", Duration::from_secs(60), || {
        let body = common::http_get(port, "/metrics")?.1;
        wanted.iter().all(|m| body.contains(m)).then_some(body)
    });
    let _ = child.kill();
    let _ = child.wait();
    // Sample names: a family without a sample is not exported at all.
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| n.strip_suffix("_total").unwrap_or(n).to_string())
        .collect();
    let missing: Vec<&String> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\n{metrics}"
    );
}

/// Every query of the Grafana dashboard parses: promtool checks them as
/// recording rules, with the dashboard's variables filled in.
#[test]
fn the_grafana_dashboards_queries_parse() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/drctl.json")).unwrap())
            .unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut count = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$policy", ".*");
            count += 1;
            rules.push_str(&format!(
                "      - record: dashboard_query_{count}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    assert!(count >= 10, "{count} queries");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yml"), rules).unwrap();
    let out = run_ok(
        "promtool",
        &["check", "rules", "dashboard.rules.yml"],
        dir.path(),
    );
    assert!(out.contains(&format!("{count} rules found")), "{out}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(deploy("systemd/drctl.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/drctl "), "{unit}");
    for setting in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "User=drctl",
        "ReadWritePaths=/var/lib/drctl",
    ] {
        assert!(unit.contains(setting), "{setting} is missing");
    }
    // Verified with the binary under test in place of the installed one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drctl.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/drctl", env!("CARGO_BIN_EXE_drctl")),
    )
    .unwrap();
    let Some(analyze) = which("systemd-analyze") else {
        println!("NOTE: systemd-analyze is not installed; the unit was checked statically only");
        return;
    };
    let out = output_within(
        Command::new(analyze).arg("verify").arg(&path),
        b"",
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn kubernetes_dir() -> PathBuf {
    deploy("kubernetes")
}

/// Every Kubernetes manifest validates against the Kubernetes schemas
/// offline (`kubernetes-validate --strict`, from PyPI, installed by
/// scripts/test.sh); the PodMonitor (a Prometheus Operator CRD, which has no
/// schema there) selects the Deployment's pods and names its port.
#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let dir = kubernetes_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml" && f != "podmonitor.yaml")
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    let mut args = vec!["-k", "1.30.0", "--strict"];
    args.extend(files.iter().map(String::as_str));
    let out = run_ok("kubernetes-validate", &args, &dir);
    for f in &files {
        assert!(out.contains(&format!("{f} passed")), "{f}: {out}");
    }
    // The kustomization lists files that exist.
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    for line in kustomization.lines() {
        if let Some(f) = line
            .trim()
            .strip_prefix("- ")
            .filter(|f| f.ends_with(".yaml"))
        {
            assert!(dir.join(f).is_file(), "kustomization.yaml lists {f}");
        }
    }
    let monitor = std::fs::read_to_string(dir.join("podmonitor.yaml")).unwrap();
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    for needle in [
        "app.kubernetes.io/component: daemon",
        "port: http",
        "path: /metrics",
    ] {
        assert!(monitor.contains(needle), "podmonitor.yaml: {needle}");
    }
    assert!(deployment.contains("- name: http\n              containerPort: 9187"));
    assert!(deployment.contains("replicas: 2"));
}

/// The ConfigMap's drctl.toml and policy, with the placeholders filled in
/// as its comments say, pass `drctl check`.
#[test]
fn the_kubernetes_configmap_passes_drctl_check() {
    let py = "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))['data']))";
    let data = run_ok("python3", &["-c", py, "configmap.yaml"], &kubernetes_dir());
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.age");
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_drctl"))
            .args(["key", "generate", "--out"])
            .arg(&key),
        b"",
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recipient = text(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .expect("the public key is printed")
        .to_string();
    let config = data["drctl.toml"]
        .as_str()
        .unwrap()
        .replace(
            "age1-REPLACE-WITH-THE-KEY-PRINTED-BY-drctl-key-generate",
            &recipient,
        )
        .replace("REPLACE-WITH-YOUR-BUCKET", "example-backups")
        .replace("/var/run/secrets/drctl/identity.age", key.to_str().unwrap());
    assert!(!config.contains("REPLACE"), "{config}");
    std::fs::write(dir.path().join("drctl.toml"), config).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let mut policies = 0;
    for (name, body) in data.as_object().unwrap() {
        if let Some(file) = name.strip_prefix("policies.") {
            std::fs::write(
                dir.path().join("policies").join(file),
                body.as_str().unwrap(),
            )
            .unwrap();
            policies += 1;
        }
    }
    assert!(policies >= 1);
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_drctl"))
            .arg("--config")
            .arg(dir.path().join("drctl.toml"))
            // Offline: the ConfigMap names the cluster's bucket and
            // database, which this machine cannot reach.
            .args(["check", "--offline"]),
        b"",
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "drctl check of the ConfigMap failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn drctl(args: &[&str]) -> std::process::Output {
    output_within(
        Command::new(env!("CARGO_BIN_EXE_drctl")).args(args),
        b"",
        Duration::from_secs(30),
    )
}

/// Completion scripts for bash, zsh and fish come from the same clap
/// definitions as the commands: they name every subcommand, and bash's
/// parses; an unknown shell is refused with the valid ones listed.
#[test]
fn shell_completions_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = drctl(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for sub in ["backup", "restore", "wal-push", "drill", "completions"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("drctl.bash");
            std::fs::write(&path, &script).unwrap();
            run_ok("bash", &["-n", path.to_str().unwrap()], dir.path());
        }
    }
    let out = drctl(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bash") && stderr.contains("zsh"),
        "{stderr}"
    );
}

/// `drctl man --out DIR` writes a page per command; a directory that cannot
/// be made is a clear error.
#[test]
fn man_pages_are_written_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let out = drctl(&["man", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let restore = std::fs::read_to_string(out_dir.join("drctl-restore.1")).unwrap();
    assert!(
        restore.contains(".TH") && restore.contains("to\\-lsn"),
        "{restore}"
    );
    assert!(out_dir.join("drctl.1").is_file());
    assert!(out_dir.join("drctl-wal-status.1").is_file() || out_dir.join("drctl-wal.1").is_file());

    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let out = drctl(&["man", "--out", blocker.join("man1").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("man1"), "{}", text(&out.stderr));
}

/// Flags for `podman` on this kind of machine: its cgroups are a hybrid of
/// v1 and v2, which crun refuses (runc takes them); there is no container
/// network plugin (the host's network, where the test's PostgreSQL listens
/// on loopback, is what the container needs anyway); and root lacks
/// CAP_SYS_RESOURCE, so limits may only be lowered.
const PODMAN_FLAGS: &[&str] = &[
    "--runtime",
    "runc",
    "--network",
    "host",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

/// Removes the test's container and image however the test ends.
struct Podman {
    image: String,
    container: String,
}

impl Podman {
    fn run(&self, args: &[&str]) -> std::process::Output {
        output_within(
            Command::new("podman").args(args),
            b"",
            Duration::from_secs(300),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-f", "-t", "0", &self.container]);
        let _ = self.run(&["rmi", "-f", &self.image]);
        // The untagged image of the `prebuilt` stage (the binary alone).
        let _ = self.run(&["image", "prune", "-f"]);
    }
}

#[test]
fn the_container_image_builds_and_backs_up_a_real_database_as_a_non_root_user() {
    let recipe = std::fs::read_to_string(deploy("container/Containerfile")).unwrap();
    let froms = recipe.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 3, "a build stage and a runtime stage:\n{recipe}");
    for needle in [
        "FROM ${RUST_IMAGE} AS build",
        "cargo build --release --locked",
        "postgresql-client-${PG_MAJOR}",
        "ca-certificates",
        "USER 10001:10001",
        "/health",
        "ENTRYPOINT [\"drctl\"]",
        "CMD [\"--log-format\", \"json\", \"daemon\"]",
    ] {
        assert!(
            recipe.contains(needle),
            "{needle} is missing from the recipe"
        );
    }
    // The Kubernetes manifests run the image as the same user.
    let deployment = std::fs::read_to_string(kubernetes_dir().join("deployment.yaml")).unwrap();
    assert!(deployment.contains("runAsUser: 10001"), "{deployment}");

    if std::env::var("DRCTL_TEST_CONTAINER").as_deref() == Ok("static") {
        println!(
            "NOTE: DRCTL_TEST_CONTAINER=static (no container runtime here); the container recipe was checked statically only"
        );
        return;
    }
    // scripts/test.sh installs these; a missing one is a failure, not a skip.
    for tool in ["podman", "runc", "debootstrap"] {
        assert!(
            which(tool).is_some(),
            "{tool} is not installed (scripts/test.sh installs it; set DRCTL_TEST_CONTAINER=static where containers cannot run)"
        );
    }
    let podman = Podman {
        image: format!("localhost/drctl-test:{}", std::process::id()),
        container: format!("drctl-test-{}", std::process::id()),
    };
    let build = output_within(
        Command::new(deploy("container/build-local.sh"))
            .args([
                "--binary",
                env!("CARGO_BIN_EXE_drctl"),
                "--tag",
                &podman.image,
            ])
            .env("CONTAINER_BUILD_FLAGS", PODMAN_FLAGS.join(" ")),
        b"",
        Duration::from_secs(900),
    );
    assert!(
        build.status.success(),
        "building the image failed:\n{}",
        text(&build.stderr)
    );

    // A real database, a local repository on a volume, and drctl in the
    // container as uid 10001 doing a backup.
    let pg = common::Postgres::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 5000) g",
    );
    let mut ws = common::workspace::Workspace::local();
    ws.postgres_policy("shop", &pg, "shop");
    let port = free_port();
    let config = std::fs::read_to_string(ws.path().join("drctl.toml")).unwrap();
    ws.write(
        "drctl.toml",
        &format!("{config}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let chown = Command::new("chown")
        .args(["-R", "10001:10001"])
        .arg(ws.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let volume = format!("{}:/var/lib/drctl/ws", ws.path().display());
    let mut run: Vec<&str> = vec!["run", "--rm"];
    run.extend(PODMAN_FLAGS);
    run.extend([
        "-v",
        &volume,
        "-e",
        "DRCTL_CONFIG=/var/lib/drctl/ws/drctl.toml",
        "-e",
        "PGPASSWORD",
    ]);
    let mut backup = run.clone();
    backup.extend([podman.image.as_str(), "backup", "shop"]);
    let out = output_within(
        Command::new("podman")
            .args(&backup)
            .env("PGPASSWORD", pg.password()),
        b"",
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "backup in the container failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    // The repository's files belong to the container's user, and the host
    // reads the backup back in full.
    let backups = ws.backups("shop");
    assert_eq!(backups.len(), 1, "{backups:?}");
    let mut owners = BTreeSet::new();
    let mut stack = vec![ws.repo_dir().join("backups")];
    while let Some(p) = stack.pop() {
        use std::os::unix::fs::MetadataExt;
        owners.insert(std::fs::metadata(&p).unwrap().uid());
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert_eq!(
        owners,
        BTreeSet::from([10001]),
        "files written as uid 10001"
    );
    ws.ok(&["verify", "shop", "--read-data"]);

    // The default command is the daemon; its health check passes and it
    // stops cleanly on SIGTERM.
    let mut daemon: Vec<&str> = vec!["run", "-d", "--name", &podman.container];
    daemon.extend(PODMAN_FLAGS);
    let health_port = format!("DRCTL_HEALTH_PORT={port}");
    daemon.extend([
        "-v",
        &volume,
        "-e",
        "DRCTL_CONFIG=/var/lib/drctl/ws/drctl.toml",
        "-e",
        &health_port,
        &podman.image,
    ]);
    podman.ok(&daemon);
    wait_for(
        "the daemon in the container to answer",
        Duration::from_secs(60),
        || common::http_get(port, "/health"),
    );
    let health = podman.run(&["healthcheck", "run", &podman.container]);
    assert!(
        health.status.success(),
        "the image's health check failed: {}{}",
        text(&health.stdout),
        text(&health.stderr)
    );
    podman.ok(&["stop", "-t", "30", &podman.container]);
    let code = podman.ok(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &podman.container,
    ]);
    assert_eq!(code.trim(), "0", "the daemon's exit code after SIGTERM");
}
