#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian (bookworm) machine as root:
# installs what is missing, and only that, then `cargo test --all-targets`
# from the repository root. Safe to run again: a second run installs nothing.
# `scripts/test.sh --setup-only` installs and stops (CI runs fmt and clippy
# in between).
#
# The tests use real parts (docs/ARCHITECTURE.md, "Tests use real
# parts"): PostgreSQL 15 binaries for throwaway clusters, the moto S3 server,
# the `age`, `zstd` and `aws` command-line tools, and Chromium (headless) to
# load the HTML report.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }

export DEBIAN_FRONTEND=noninteractive
apt_updated=false
apt_install() {
  if ! $apt_updated; then
    say "apt-get update"
    apt-get update -q
    apt_updated=true
  fi
  say "installing with apt: $*"
  apt-get install -y -q --no-install-recommends "$@"
}

# --- system packages ---------------------------------------------------------
missing=()
pg_bin=/usr/lib/postgresql/15/bin
pg_ext=/usr/share/postgresql/15/extension
# On bookworm the server package also ships the contrib extensions (citext,
# hstore, ...); `postgresql-contrib` is only a metapackage pointing at it.
if [[ ! -x $pg_bin/initdb || ! -x $pg_bin/pg_ctl || ! -x $pg_bin/pg_dump || ! -x $pg_bin/pg_basebackup || ! -x $pg_bin/pgbench || ! -f $pg_ext/citext.control || ! -f $pg_ext/hstore.control ]]; then
  missing+=(postgresql-15 postgresql-contrib)
fi
command -v psql >/dev/null || missing+=(postgresql-client-15)
command -v age >/dev/null || missing+=(age)
command -v zstd >/dev/null || missing+=(zstd)
# tests/manual_recovery.rs follows docs/manual-recovery.md, which reads manifests with jq.
command -v jq >/dev/null || missing+=(jq)
# tests/deploy.rs checks the kit in deploy/: promtool (Debian's prometheus
# package) for the alert rules, systemd-analyze for the unit.
command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)
# ... and builds the container image with podman (runc, since crun refuses
# hybrid cgroups) on a Debian base image made with debootstrap.
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# tests/report.rs loads the HTML report in headless Chromium.
command -v chromium >/dev/null || missing+=(chromium)
command -v cc >/dev/null || missing+=(build-essential)
command -v python3 >/dev/null || missing+=(python3)
if ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
if ! command -v cargo >/dev/null && [[ ! -x $HOME/.cargo/bin/cargo ]]; then
  command -v curl >/dev/null || missing+=(curl ca-certificates)
fi
if ((${#missing[@]})); then
  apt_install "${missing[@]}"
else
  say "system packages: all present"
fi

# --- Rust toolchain (edition 2024 needs a newer cargo than Debian ships) ----
if ! command -v cargo >/dev/null; then
  if [[ ! -x $HOME/.cargo/bin/cargo ]]; then
    say "installing Rust with rustup (minimal profile, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# --- moto server and the aws CLI ----------------------------------------------
pip_packages=()
# moto before 5.2.5 answers CompleteMultipartUpload with a root element the
# AWS SDK for Rust rejects, so older installs are upgraded.
python3 - <<'PY' >/dev/null 2>&1 || pip_packages+=('moto[server]>=5.2.5,<6')
import moto.server, moto
major, minor, patch = (int(x) for x in moto.__version__.split(".")[:3])
assert (major, minor, patch) >= (5, 2, 5) and major < 6
PY
command -v aws >/dev/null || pip_packages+=(awscli)
# tests/daemon.rs checks /metrics with the Prometheus project's own parsers.
python3 -c 'import prometheus_client' >/dev/null 2>&1 || pip_packages+=(prometheus_client)
# tests/deploy.rs validates deploy/kubernetes offline against the schemas.
command -v kubernetes-validate >/dev/null || pip_packages+=(kubernetes-validate)
if ((${#pip_packages[@]})); then
  pip_flags=()
  # Debian's own python3 refuses system-wide pip installs (PEP 668).
  if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
  fi
  say "installing with pip: ${pip_packages[*]}"
  python3 -m pip install --quiet "${pip_flags[@]}" "${pip_packages[@]}"
  command -v pyenv >/dev/null && pyenv rehash || true
  python3 -c 'import moto.server' || { echo "moto is still not importable after pip install" >&2; exit 1; }
else
  say "moto and awscli: present"
fi

# --- versions, for the log ------------------------------------------------------
say "versions"
printf '    %s\n' \
  "$("$pg_bin/postgres" --version)" \
  "moto $(python3 -c 'import moto; print(moto.__version__)')" \
  "age $(age --version)" \
  "$(zstd --version)" \
  "$(chromium --version 2>/dev/null || echo 'chromium: not found')" \
  "$(aws --version 2>&1)" \
  "$(cargo --version)"

# --- the suite -------------------------------------------------------------------
if [[ ${1:-} == --setup-only ]]; then
  say "set-up done (--setup-only: no tests run)"
  exit 0
fi
say "cargo test --all-targets"
exec cargo test --all-targets
