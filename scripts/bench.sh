#!/usr/bin/env bash
# Benchmarks drctl against the plain tools it replaces, on a fresh Debian
# (bookworm) machine as root:
#
#   scripts/bench.sh [SCALE]          # SCALE: pgbench scale, default 100
#   scripts/bench.sh --pitr [SCALE]   # physical base backups, WAL archiving and restore
#                                     # to a time, beside pg_basebackup | zstd | age and
#                                     # pgBackRest (installed with apt when missing)
#
#   environment: RANDOM_MB (default 1024)  size of the less compressible table
#                RUNS (default 3)          timed runs per command, after a warm-up
#                OUT                       results file (default TARGET_DIR/bench-results-SCALE.md)
#                BENCH_TIMEOUT (default 7200) seconds any one command may take
#                S3_VERSIONING (default on)  on: a versioned bucket, as operations.md
#                                          recommends; off: an unversioned one
#                BENCH_DBS (default "bench_pgbench bench_random")  databases to build and measure
#                BENCH_ROWS (default all)  row ids to measure, e.g. "f2 d f5 g g2" for the
#                                          large case: RUNS=1 WARMUP=0 BENCH_DBS=bench_pgbench
#                WARMUP (default 1)        0: no warm-up run (large databases)
#   --pitr only: PITR_RUNS (default 2)     rounds of base backups, in alternating order
#                PITR_WAL_MB (default 1024) WAL written between the backups and the target
#                ARCHIVE_SECONDS (default 180) pgbench -c 8 time per archive_command
#
# Installs what is missing (and only that), builds drctl with --release,
# starts a throwaway PostgreSQL 15 cluster and a moto S3 server on 127.0.0.1,
# builds two databases (pgbench, and one table of random rows), then times
# pg_dump, the equivalent shell pipelines (pg_dump | zstd | age [| aws s3 cp])
# and drctl backup, and the matching restores. Every timed command is printed
# exactly as run, and the results are written as Markdown to $OUT.
#
# Measured with GNU time (`/usr/bin/time -f '%e %U %S %M'`): wall seconds,
# user+sys CPU of the command and all its children, and max RSS. hyperfine is
# not used: it reports neither RSS nor the CPU of a whole process tree.
# Everything is removed on exit. Nothing talks to anything but 127.0.0.1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
checkout=$PWD

say() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

MODE=logical
if [[ ${1:-} == --pitr ]]; then
  MODE=pitr
  shift
fi
SCALE=${1:-${SCALE:-100}}
PITR_RUNS=${PITR_RUNS:-2}
PITR_WAL_MB=${PITR_WAL_MB:-1024}
ARCHIVE_SECONDS=${ARCHIVE_SECONDS:-180}
RANDOM_MB=${RANDOM_MB:-1024}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
BENCH_DBS=${BENCH_DBS:-bench_pgbench bench_random}
BENCH_ROWS=${BENCH_ROWS:-}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-7200}
S3_VERSIONING=${S3_VERSIONING:-on}
[[ $S3_VERSIONING == on || $S3_VERSIONING == off ]] || die "S3_VERSIONING must be on or off, not '$S3_VERSIONING'"
for v in SCALE RANDOM_MB RUNS BENCH_TIMEOUT PITR_RUNS PITR_WAL_MB ARCHIVE_SECONDS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done

pg_bin=/usr/lib/postgresql/15/bin
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_script=$SECONDS

# --- what is missing -------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
missing=()
[[ -x $pg_bin/initdb && -x $pg_bin/pg_ctl && -x $pg_bin/postgres && -x $pg_bin/pgbench ]] ||
  missing+=(postgresql-15)
[[ -x $pg_bin/pg_dump && -x $pg_bin/pg_restore && -x $pg_bin/psql ]] || missing+=(postgresql-client-15)
[[ -x /usr/bin/time ]] || missing+=(time)
command -v age >/dev/null || missing+=(age)
command -v age-keygen >/dev/null || missing+=(age)
command -v zstd >/dev/null || missing+=(zstd)
[[ $MODE != pitr ]] || command -v pgbackrest >/dev/null || missing+=(pgbackrest)
[[ -x $pg_bin/pg_basebackup ]] || missing+=(postgresql-15)
command -v cc >/dev/null || missing+=(build-essential)
command -v python3 >/dev/null || missing+=(python3)
command -v timeout >/dev/null || missing+=(coreutils)
command -v pgrep >/dev/null || missing+=(procps)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ! command -v cargo >/dev/null && [[ ! -x $HOME/.cargo/bin/cargo ]]; then
  command -v curl >/dev/null || missing+=(curl ca-certificates)
fi
if ((${#missing[@]})); then
  ((EUID == 0)) || die "missing ${missing[*]}; run as root to install them, or install them yourself"
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "Installing with apt: ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "System packages: all present"
fi

# Rust: Debian's cargo is too old for edition 2024, so rustup when cargo is missing.
if ! command -v cargo >/dev/null; then
  if [[ ! -x $HOME/.cargo/bin/cargo ]]; then
    say "Installing Rust with rustup (minimal profile, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# moto and the aws CLI, as scripts/test.sh installs them.
pip_packages=()
python3 - <<'PY' >/dev/null 2>&1 || pip_packages+=('moto[server]>=5.2.5,<6')
import moto.server, moto
major, minor, patch = (int(x) for x in moto.__version__.split(".")[:3])
assert (major, minor, patch) >= (5, 2, 5) and major < 6
PY
command -v aws >/dev/null || pip_packages+=(awscli)
if ((${#pip_packages[@]})); then
  pip_flags=()
  if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
  fi
  say "Installing with pip: ${pip_packages[*]}"
  python3 -m pip install --quiet "${pip_flags[@]}" "${pip_packages[@]}"
  command -v pyenv >/dev/null && pyenv rehash || true
  python3 -c 'import moto.server' || die "moto is still not importable after pip install"
else
  say "moto and awscli: present"
fi
if command -v moto_server >/dev/null; then
  moto_cmd=(moto_server)
else
  moto_cmd=(python3 -m moto.server)
fi

# --- build -------------------------------------------------------------------------
say "Building drctl: cargo build --release"
t0=$SECONDS
cargo build --release
build_seconds=$((SECONDS - t0))
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
target_dir=$(cd "$target_dir" && pwd -P)
[[ -x $target_dir/release/drctl ]] || die "cargo built no $target_dir/release/drctl"
drctl_bin=$(cd "$target_dir/release" && pwd -P)/drctl
note "binary: $drctl_bin"
if [[ $MODE == pitr ]]; then
  OUT=${OUT:-$target_dir/bench-results-pitr-$SCALE.md}
else
  OUT=${OUT:-$target_dir/bench-results-$SCALE.md}
fi
mkdir -p "$(dirname "$OUT")" 2>/dev/null || OUT=/tmp/bench-results-$SCALE.md

# --- a scratch directory, and cleanup ---------------------------------------------
# PostgreSQL refuses to run as root; as root the cluster belongs to `postgres`.
work=$(mktemp -d "${TMPDIR:-/tmp}/drctl-bench.XXXXXX")
if ((EUID == 0)); then
  id postgres >/dev/null 2>&1 || die "no \`postgres\` OS user; install postgresql-15"
  as_pg() { (cd "$work/pg" && runuser -u postgres -- "$@"); }
else
  as_pg() { (cd "$work/pg" && "$@"); }
fi
moto_pid=
cleanup() {
  set +e
  # BENCH_KEEP_LOGS=DIR keeps the logs of a run (they go with $work).
  if [[ -n ${BENCH_KEEP_LOGS:-} ]]; then
    mkdir -p "$BENCH_KEEP_LOGS" && cp -r "$work/logs" "$BENCH_KEEP_LOGS/" 2>/dev/null
    cp "$work"/pitr/*.log "$work"/pitr/results.txt "$BENCH_KEEP_LOGS/" 2>/dev/null
  fi
  if [[ -n $moto_pid ]] && kill -0 "$moto_pid" 2>/dev/null; then
    kill "$moto_pid"
    for _ in $(seq 1 50); do kill -0 "$moto_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$moto_pid" 2>/dev/null
  fi
  if [[ -f $work/pg/data/postmaster.pid ]]; then
    as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
      as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate -w -t 30 stop >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 0711 "$work"
mkdir -p "$work/pg" "$work/keys" "$work/out" "$work/policies" "$work/results" "$work/logs"
chmod 0700 "$work/keys"
((EUID == 0)) && chown postgres: "$work/pg"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  die "found no free port on 127.0.0.1"
}

# --- PostgreSQL ------------------------------------------------------------------------
say "Starting a throwaway PostgreSQL 15 cluster in $work/pg"
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$password" >"$work/pg/pwfile"
((EUID == 0)) && chown postgres: "$work/pg/pwfile"
as_pg env LC_ALL=C timeout 300 "$pg_bin/initdb" -D "$work/pg/data" -U postgres --pwfile="$work/pg/pwfile" \
  --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$work/logs/initdb.log" 2>&1 ||
  { cat "$work/logs/initdb.log" >&2; die "initdb failed"; }
rm -f "$work/pg/pwfile"
# Benchmark settings: no fsync (nothing here must survive a crash), few
# checkpoints, no autovacuum (VACUUM ANALYZE runs once after loading), and
# memory for index builds on restore. wal_level stays `replica`, as on a
# production server.
pg_settings=(
  "fsync = off"
  "synchronous_commit = off"
  "full_page_writes = off"
  "shared_buffers = 512MB"
  "maintenance_work_mem = 512MB"
  "work_mem = 64MB"
  "max_wal_size = 16GB"
  "checkpoint_timeout = 1h"
  "autovacuum = off"
  "listen_addresses = '127.0.0.1'"
  "unix_socket_directories = '$work/pg'"
)
printf '%s\n' "" "# scripts/bench.sh" "${pg_settings[@]}" >>"$work/pg/data/postgresql.conf"
pg_port=
for _ in $(seq 1 10); do
  candidate=$(free_port)
  if as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/postgres.log" -w -t 60 \
    -o "-p $candidate" start >/dev/null; then
    pg_port=$candidate
    break
  fi
  grep -q "Address already in use" "$work/pg/postgres.log" 2>/dev/null ||
    { cat "$work/pg/postgres.log" >&2; die "PostgreSQL did not start"; }
done
[[ -n $pg_port ]] || die "found no free port for PostgreSQL"
pm_pid=$(head -n1 "$work/pg/data/postmaster.pid")
note "listening on 127.0.0.1:$pg_port; superuser postgres, random password in PGPASSWORD"
note "settings: ${pg_settings[*]:0:9}"
note "fsync=off: fine for a throwaway benchmark cluster, and the same for every restore row"

export PATH="$pg_bin:$PATH"
export PGHOST=127.0.0.1 PGPORT=$pg_port PGUSER=postgres PGPASSWORD=$password PGCONNECT_TIMEOUT=10
psql_() { timeout "$BENCH_TIMEOUT" psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
pg_url() { echo "postgres://postgres@127.0.0.1:$pg_port/$1"; }

# CPU time of PostgreSQL backends that have exited: the postmaster's reaped
# children (cutime + cstime in /proc/PID/stat), in clock ticks.
clk_tck=$(getconf CLK_TCK)
server_ticks() { awk '{print $16 + $17}' "/proc/$pm_pid/stat"; }
# Waits (at most 30 s) until no client backend is left, not even as a zombie,
# so that its CPU time has been reaped. Auxiliary processes (checkpointer,
# ...) do not count.
wait_backends() {
  for _ in $(seq 1 300); do
    ps --ppid "$pm_pid" -o stat=,args= |
      awk '$1 ~ /^Z/ || /127\.0\.0\.1\(|\[local\]/ { busy = 1 } END { exit !busy }' || return 0
    sleep 0.1
  done
  note "warning: PostgreSQL client backends still running after 30 s; server CPU may be off"
}

# --- moto S3 server ------------------------------------------------------------------------
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
  AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null \
  AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_PAGER=
moto_port=$(free_port)
s3=http://127.0.0.1:$moto_port
say "Starting moto on $s3: ${moto_cmd[*]} -H 127.0.0.1 -p $moto_port"
(cd "$work" && exec "${moto_cmd[@]}" -H 127.0.0.1 -p "$moto_port" >"$work/logs/moto.log" 2>&1) &
moto_pid=$!
for i in $(seq 1 300); do
  port_in_use "$moto_port" && break
  kill -0 "$moto_pid" 2>/dev/null || { cat "$work/logs/moto.log" >&2; die "moto exited during start-up"; }
  ((i < 300)) || { cat "$work/logs/moto.log" >&2; die "moto did not listen within 30 s"; }
  sleep 0.1
done
aws_() { timeout "$BENCH_TIMEOUT" aws --endpoint-url "$s3" --cli-connect-timeout 10 --cli-read-timeout 300 "$@"; }
bucket=drctl-bench
aws_ s3 mb "s3://$bucket" >/dev/null
if [[ $S3_VERSIONING == on ]]; then
  aws_ s3api put-bucket-versioning --bucket "$bucket" --versioning-configuration Status=Enabled
fi
note "bucket s3://$bucket, versioning $S3_VERSIONING"
# purge-s3 PREFIX: removes every object version and delete marker under
# PREFIX, so that moto holds one copy of each benchmark object at a time.
cat >"$work/purge-s3" <<PURGE
#!/usr/bin/env bash
set -euo pipefail
aws="timeout $BENCH_TIMEOUT aws --endpoint-url $s3 --cli-connect-timeout 10 --cli-read-timeout 300"
\$aws s3api list-object-versions --bucket $bucket --prefix "\$1" --output json |
  python3 -c '
import json, sys
d = json.loads(sys.stdin.read() or "{}")
objs = [{"Key": o["Key"], "VersionId": o["VersionId"]} for o in (d.get("Versions") or []) + (d.get("DeleteMarkers") or [])]
for i in range(0, len(objs), 1000):
    print(json.dumps({"Objects": objs[i:i + 1000], "Quiet": True}))
' |
  while IFS= read -r batch; do
    \$aws s3api delete-objects --bucket $bucket --delete "\$batch" >/dev/null
  done
PURGE
chmod +x "$work/purge-s3"

# --- PITR (scripts/bench.sh --pitr) ----------------------------------------------------------------
# Physical base backups, WAL archiving and restore to a time, beside
# pg_basebackup | zstd | age and pgBackRest, on one cluster. Runs instead of
# the logical benchmarks above; see docs/benchmarks.md for the figures.
if [[ $MODE == pitr ]]; then
  pitr=$work/pitr
  mkdir -p "$pitr"
  ((EUID == 0)) && chown postgres: "$pitr"
  chmod 0700 "$pitr"
  # drctl and pgBackRest run as the server's OS user, as in production.
  if ((EUID == 0)); then
    as_srv() { (cd "$pitr" && runuser -u postgres -- "$@"); }
  else
    as_srv() { (cd "$pitr" && "$@"); }
  fi
  results=$pitr/results.txt
  : >"$results"
  ((EUID == 0)) && chown postgres: "$results"
  record() { printf '%s\n' "$*" >>"$results"; }

  say "PITR: loading bench (pgbench -i -s $SCALE)"
  psql_ -d postgres -c "CREATE DATABASE bench"
  timeout "$BENCH_TIMEOUT" pgbench -i -q -s "$SCALE" bench >"$work/logs/pgbench.log" 2>&1 ||
    { tail -n 20 "$work/logs/pgbench.log" >&2; die "pgbench -i failed"; }
  db_bytes=$(psql_ -d bench -c "SELECT pg_database_size('bench')")
  note "bench: $((db_bytes / 1048576)) MiB"

  # --- keys, drctl and pgBackRest configuration
  age_key=$pitr/age.key
  age-keygen -o "$age_key" 2>/dev/null
  age_recipient=$(age-keygen -y "$age_key")
  as_srv mkdir -p "$pitr/keys" "$pitr/policies" "$pitr/pgbr-log" "$pitr/pgbr-lock" "$pitr/pgbr-spool" "$pitr/pgbr-repo"
  drctl_recipient=$(as_srv "$drctl_bin" key generate --out "$pitr/keys/drctl.age")
  # write_cfg NAME URL-LINES PREFETCH. Each configuration has its own spool:
  # look-ahead markers say "stored", not where, so two repositories must
  # never share one.
  write_cfg() {
    as_srv tee "$pitr/$1.toml" >/dev/null <<EOF
policies_dir = "$pitr/policies"

[repository]
$2

[encryption]
recipients = ["$drctl_recipient"]
identity_file = "$pitr/keys/drctl.age"

[wal]
spool_dir = "$pitr/spool-$1"
prefetch_dir = "$pitr/prefetch-$1"
prefetch = $3
EOF
  }
  local_repo="url = \"file://$pitr/repo-local\""
  s3_repo=$(printf 'url = "s3://%s/drctl"\nendpoint = "%s"\nregion = "us-east-1"\npath_style = true' "$bucket" "$s3")
  write_cfg local "$local_repo" 8
  write_cfg local-nopf "$local_repo" 0
  write_cfg s3 "$s3_repo" 8
  write_cfg s3-nopf "$s3_repo" 0
  as_srv tee "$pitr/policies/cluster.toml" >/dev/null <<EOF
[source]
type = "postgres-cluster"
url = "$(pg_url postgres)"
wal_wait = "600s"
EOF
  as_srv "$drctl_bin" --config "$pitr/local.toml" --quiet init >/dev/null
  as_srv "$drctl_bin" --config "$pitr/s3.toml" --quiet init >/dev/null
  pgbr_conf=$pitr/pgbackrest.conf
  as_srv tee "$pgbr_conf" >/dev/null <<EOF
[global]
repo1-path=$pitr/pgbr-repo
repo1-retention-full=9
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
compress-type=zst
compress-level=3
process-max=2
start-fast=y
archive-timeout=600
log-path=$pitr/pgbr-log
lock-path=$pitr/pgbr-lock
spool-path=$pitr/pgbr-spool
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$work/pg/data
pg1-port=$pg_port
pg1-socket-path=$work/pg
pg1-user=postgres
EOF
  pgbr="pgbackrest --config=$pgbr_conf --stanza=bench"
  drctl_l="$drctl_bin --config $pitr/local.toml --quiet"
  drctl_s="$drctl_bin --config $pitr/s3.toml --quiet"
  push_rss=$pitr/wal-push-rss.txt
  as_srv touch "$push_rss"
  timed_push() { echo "/usr/bin/time -a -o $push_rss -f %M $1 wal-push cluster %p"; }
  # All three repositories get every segment while backups and the WAL to
  # replay are made, so that each tool restores from its own repository.
  all_three="$(timed_push "$drctl_l") && $(timed_push "$drctl_s") && $pgbr archive-push %p"
  set_archive() {
    psql_ -d postgres -c "ALTER SYSTEM SET archive_command = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
    sleep 1
  }
  psql_ -d postgres -c "ALTER SYSTEM SET archive_mode = on" -c "ALTER SYSTEM SET archive_command = '$all_three'" >/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/postgres.log" -w -t 120 -o "-p $pg_port" restart >/dev/null
  pm_pid=$(head -n1 "$work/pg/data/postmaster.pid")
  as_srv $pgbr stanza-create >"$work/logs/pgbr-stanza.log" 2>&1 || { cat "$work/logs/pgbr-stanza.log" >&2; die "pgbackrest stanza-create failed"; }
  as_srv $pgbr check >"$work/logs/pgbr-check.log" 2>&1 || { cat "$work/logs/pgbr-check.log" >&2; die "pgbackrest check failed"; }
  note "pgBackRest $(pgbackrest version | awk '{print $2}'), repository $pitr/pgbr-repo (zst level 3, aes-256-cbc, process-max=2)"

  seg_no() { echo $((16#${1:8:8} * 256 + 16#${1:16:8})); }
  wait_archived_to() {
    local want=$1 got
    for _ in $(seq 1 3000); do
      got=$(psql_ -d postgres -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
      [[ $got > $want || $got == "$want" ]] && return 0
      sleep 0.2
    done
    die "WAL $want was not archived within 10 minutes"
  }
  # timed ID LABEL CMD: one timed run as the server's user; records wall, cpu, max RSS MiB.
  timed() {
    local id=$1 what=$2 cmd=$3 tf=$pitr/$1.time
    printf '\n  [%s] %s\n    $ %s\n' "$id" "$what" "$cmd"
    as_srv /usr/bin/time -o "$tf" -f '%e %U %S %M' bash -o pipefail -c "$cmd" >>"$work/logs/pitr-$id.log" 2>&1 ||
      { tail -n 30 "$work/logs/pitr-$id.log" >&2; die "$id failed: $cmd"; }
    read -r wall user sys rss < <(tail -n1 "$tf")
    local cpu; cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    printf '    %ss wall, %ss cpu, %d MiB max rss\n' "$wall" "$cpu" "$((rss / 1024))"
    record "$id|$what|$wall|$cpu|$((rss / 1024))|$cmd"
  }

  # --- base backups, paired rounds in alternating order
  say "PITR: base backups ($PITR_RUNS rounds, alternating order)"
  shell_out=$pitr/base.tar.zst.age
  bb_shell="pg_basebackup -d '$(pg_url postgres)' -D - -Ft -X none | zstd -3 -T0 | age -r $age_recipient > $shell_out"
  for ((r = 1; r <= PITR_RUNS; r++)); do
    if ((r % 2)); then ids=(b1 b2 b3 b4); else ids=(b4 b3 b2 b1); fi
    for id in "${ids[@]}"; do
      case $id in
        b1) timed "b1-$r" "base backup: pg_basebackup -Ft -X none | zstd -3 -T0 | age > file" "rm -f $shell_out; $bb_shell" ;;
        b2) timed "b2-$r" "base backup: drctl backup, local directory" "$drctl_l backup cluster" ;;
        b3) timed "b3-$r" "base backup: pgBackRest backup --type=full, local repository" "$pgbr --type=full backup" ;;
        b4) timed "b4-$r" "base backup: drctl backup, S3 (moto)" "$drctl_s backup cluster" ;;
      esac
    done
  done
  record "size|shell base backup bytes|$(stat -c %s "$shell_out")"

  # --- WAL to replay, archived into all three repositories
  say "PITR: writing about $PITR_WAL_MB MB of WAL to replay"
  start_lsn=$(psql_ -d bench -c "SELECT pg_current_wal_lsn()")
  psql_ -d bench -c "CREATE TABLE marker(id int); CREATE TABLE filler(id bigint, pad text)"
  while :; do
    written=$(psql_ -d bench -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start_lsn')::bigint / 1048576")
    ((written >= PITR_WAL_MB)) && break
    psql_ -d bench -c "INSERT INTO filler SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 500000) g"
  done
  psql_ -d bench -c "INSERT INTO marker VALUES (1)"
  # pgBackRest takes no RFC 3339 "T"/"Z"; both take this form.
  target=$(psql_ -d bench -c "SELECT pg_sleep(1)" -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')" -c "SELECT pg_sleep(1)" | grep -v '^$')
  psql_ -d bench -c "INSERT INTO marker VALUES (2)"
  last=$(psql_ -d bench -c "SELECT pg_walfile_name(pg_switch_wal())")
  wal_mb=$(psql_ -d bench -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start_lsn')::bigint / 1048576")
  note "WAL written: $wal_mb MB; target $target; waiting for $last to be archived in all three repositories"
  wait_archived_to "$last"
  record "wal|WAL to replay, MB|$wal_mb"

  # --- restores to the target
  say "PITR: restores to $target"
  hwm=$pitr/fetch-hwm.txt
  sample_fetch_rss() {
    set +e
    : >"$hwm"
    while :; do
      for p in $(pgrep -f 'drctl.*wal-(fetch|prefetch)' || true); do
        { awk -v n="$(tr '\0' ' ' <"/proc/$p/cmdline" | grep -o 'wal-[a-z]*' | head -1)" '/VmHWM/ { print n, $2 }' "/proc/$p/status" >>"$hwm"; } 2>/dev/null
      done
      sleep 0.05
    done
  }
  # redo_seconds LOG: PostgreSQL's own measure of replay ("redo done at ... elapsed: N s").
  redo_seconds() { grep -o 'redo done at .*elapsed: [0-9.]* s' "$1" | grep -o 'elapsed: [0-9.]*' | awk '{print $2}' | tail -1; }
  check_marker() {
    local got
    got=$(psql -X -A -t -h 127.0.0.1 -p "$2" -U postgres -d bench -c "SELECT string_agg(id::text, ',') FROM marker") ||
      die "cannot query the restored server in $1 on port $2"
    [[ $got == 1 ]] || die "restored server has marker rows '$got', expected exactly 1"
  }
  restore_drctl() {
    local id=$1 cfg=$2 what=$3 dir=$pitr/restore-$1 port
    port=$(free_port)
    sample_fetch_rss & local sampler=$!
    timed "$id" "$what" "$drctl_bin --config $pitr/$cfg.toml --quiet restore cluster --to '$target' --data-dir $dir --start --port $port --recovery-timeout-seconds 3600"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    check_marker "$dir" "$port"
    cp "$dir/drctl-recovery.log" "$pitr/$id-recovery.log" 2>/dev/null || true
    record "$id-redo|replay seconds (server log)|$(redo_seconds "$dir/drctl-recovery.log" || true)"
    record "$id-fetch-rss|max VmHWM KiB of wal-fetch / wal-prefetch processes sampled|$(sort -k2 -n "$hwm" | awk '{m[$1] = $2} END {for (k in m) printf "%s %d MiB; ", k, m[k] / 1024}')"
    as_pg "$pg_bin/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
  }
  restore_pgbr() {
    local id=$1 dir=$pitr/restore-$1 port
    port=$(free_port)
    as_srv mkdir -m 0700 "$dir"
    timed "$id-base" "pgBackRest restore --type=time (files only)" "$pgbr --pg1-path=$dir --type=time '--target=$target' --target-action=promote restore"
    timed "$id-replay" "pgBackRest: start the restored server and wait for recovery to end" "$pg_bin/pg_ctl -D $dir -l $dir/recovery.log -o '-p $port -c archive_mode=off -c unix_socket_directories=$dir' -w -t 3600 start && until [ \"\$(psql -X -A -t -h 127.0.0.1 -p $port -U postgres -d postgres -c 'SELECT pg_is_in_recovery()')\" = f ]; do sleep 0.1; done"
    check_marker "$dir" "$port"
    cp "$dir/recovery.log" "$pitr/$id-recovery.log" 2>/dev/null || true
    record "$id-redo|replay seconds (server log)|$(redo_seconds "$dir/recovery.log" || true)"
    as_pg "$pg_bin/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
  }
  restore_drctl r1 local "restore --to: drctl, local directory, prefetch 8"
  restore_pgbr r2
  restore_drctl r3 local-nopf "restore --to: drctl, local directory, prefetch off"
  restore_drctl r4 s3 "restore --to: drctl, S3 (moto), prefetch 8"
  restore_drctl r5 s3-nopf "restore --to: drctl, S3 (moto), prefetch off"
  # One wal-fetch call on its own, from moto, without prefetch: its peak.
  timed f1 "one wal-fetch of a segment from S3 (moto), prefetch off" "$drctl_bin --config $pitr/s3-nopf.toml --quiet wal-fetch cluster $(ls "$pitr/repo-local/wal/cluster/00000001" | grep -E '^[0-9A-F]{24}-' | sed -n '40s/-.*//p') $pitr/one-segment"

  # --- wal-push peak memory with look-ahead: 17 incompressible segments
  say "PITR: wal-push peak memory, one call storing its segment and 16 .ready ones ahead"
  for repo in local s3; do
    synth=$pitr/synth-$repo/pg_wal
    as_srv mkdir -p "$synth/archive_status"
    for i in $(seq 1 17); do
      n=$(printf '0000000100000000%08X' "$i")
      head -c 16M /dev/urandom >"$synth/$n"
      touch "$synth/archive_status/$n.ready"
    done
    ((EUID == 0)) && chown -R postgres: "$pitr/synth-$repo"
    printf '[source]\ntype = "postgres-cluster"\nurl = "postgres://postgres@127.0.0.1:1/postgres"\n' |
      as_srv tee "$pitr/policies/synth-$repo.toml" >/dev/null
    timed "m-$repo" "wal-push with look-ahead, 16 MiB incompressible segments, $repo" \
      "$drctl_bin --config $pitr/$repo.toml --quiet wal-push synth-$repo $synth/000000010000000000000001"
  done

  # --- archiving under pgbench -c 8, one archive_command at a time
  say "PITR: WAL archiving under pgbench -c 8 -j 2 for $ARCHIVE_SECONDS s per archive_command"
  archive_run() {
    local id=$1 what=$2 command=$3
    set_archive "$command"
    local sw; sw=$(psql_ -d postgres -c "SELECT pg_walfile_name(pg_switch_wal())")
    wait_archived_to "$sw"
    local count0 lsn0 t0 maxlag=0 cur arch lag
    count0=$(psql_ -d postgres -c "SELECT archived_count FROM pg_stat_archiver")
    lsn0=$(psql_ -d postgres -c "SELECT pg_current_wal_lsn()")
    t0=$(date +%s.%N)
    printf '\n  [%s] %s\n    archive_command = %s\n' "$id" "$what" "$command"
    pgbench -c 8 -j 2 -T "$ARCHIVE_SECONDS" -n bench >"$work/logs/pitr-$id-pgbench.log" 2>&1 &
    local bench_pid=$!
    while kill -0 "$bench_pid" 2>/dev/null; do
      read -r cur arch < <(psql_ -F ' ' -d postgres -c "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, '') FROM pg_stat_archiver")
      lag=$(($(seg_no "$cur") - $(seg_no "$arch") - 1))
      ((lag > maxlag)) && maxlag=$lag
      sleep 1
    done
    wait "$bench_pid" || die "pgbench failed; see $work/logs/pitr-$id-pgbench.log"
    local t1 tps; t1=$(date +%s.%N)
    tps=$(grep -o 'tps = [0-9.]*' "$work/logs/pitr-$id-pgbench.log" | head -1 | awk '{print $3}')
    local end; end=$(psql_ -d postgres -c "SELECT pg_walfile_name(pg_switch_wal())")
    wait_archived_to "$end"
    local t2 count1 mb
    t2=$(date +%s.%N)
    count1=$(psql_ -d postgres -c "SELECT archived_count FROM pg_stat_archiver")
    mb=$(psql_ -d postgres -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint / 1048576")
    local n=$((count1 - count0))
    local rate; rate=$(awk -v n="$n" -v a="$t0" -v b="$t2" 'BEGIN { printf "%.2f", n / (b - a) }')
    local catch; catch=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.1f", b - a }')
    printf '    %d segments (%s MB WAL, pgbench %s tps) in %.0f s: %s segments/s; largest lag %d segments; caught up %s s after the load\n' \
      "$n" "$mb" "$tps" "$(awk -v a="$t0" -v b="$t2" 'BEGIN { print b - a }')" "$rate" "$maxlag" "$catch"
    record "$id|$what|$n|$mb|$tps|$rate|$maxlag|$catch|$command"
  }
  : >"$push_rss"
  archive_run a1 "drctl wal-push, local directory" "$(timed_push "$drctl_l")"
  archive_run a2 "pgBackRest archive-push (sync)" "$pgbr archive-push %p"
  archive_run a3 "drctl wal-push, S3 (moto)" "$(timed_push "$drctl_s")"
  archive_run a4 "pgBackRest archive-push --archive-async (process-max 2)" "$pgbr --archive-async archive-push %p"
  record "push-rss|max RSS of wal-push during the archiving runs, MiB|$(sort -n "$push_rss" | tail -1 | awk '{printf "%d", $1 / 1024}')|calls: $(wc -l <"$push_rss")"
  set_archive "/bin/true"

  {
    echo "## PITR run ($(date -u +%Y-%m-%d), scripts/bench.sh --pitr $SCALE)"
    echo
    echo "- Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB; load average at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- $(postgres --version), pgBackRest $(pgbackrest version | awk '{print $2}'), $(zstd --version | head -1), age $(age --version)"
    echo "- drctl $(git -C "$checkout" rev-parse --short HEAD 2>/dev/null || echo '?'), cargo build --release; database bench: pgbench -i -s $SCALE, $((db_bytes / 1048576)) MiB"
    echo "- Whole run: $((SECONDS - t_script)) s"
    echo
    echo "Raw results (id | what | figures | command):"
    echo
    echo '```'
    cat "$results"
    echo '```'
  } >"$pitr/report.md"
  cat "$pitr/report.md"
  cp "$pitr/report.md" "$OUT"
  say "Written to $OUT"
  exit 0
fi

# --- data ------------------------------------------------------------------------------------------
read -r -a dbs <<<"$BENCH_DBS"
for db in "${dbs[@]}"; do
  [[ $db == bench_pgbench || $db == bench_random ]] || die "BENCH_DBS: unknown database $db"
done
has_db() { [[ " ${dbs[*]} " == *" $1 "* ]]; }
# want ID: whether row ID is measured (BENCH_ROWS empty: every row).
want() { [[ -z $BENCH_ROWS || " $BENCH_ROWS " == *" $1 "* ]]; }
if has_db bench_pgbench; then
  say "Loading bench_pgbench: pgbench -i -s $SCALE"
  t0=$SECONDS
  psql_ -d postgres -c "CREATE DATABASE bench_pgbench"
  timeout "$BENCH_TIMEOUT" pgbench -i -q -s "$SCALE" bench_pgbench >"$work/logs/pgbench.log" 2>&1 ||
    { tail -n 20 "$work/logs/pgbench.log" >&2; die "pgbench -i failed"; }
  note "took $((SECONDS - t0)) s"
fi

if has_db bench_random; then
  say "Loading bench_random: about $RANDOM_MB MB of less compressible rows"
  t0=$SECONDS
  psql_ -d postgres -c "CREATE DATABASE bench_random"
  psql_ -d bench_random <<'SQL'
CREATE TABLE bench_random (
  id bigint NOT NULL,
  payload text NOT NULL,
  doc jsonb NOT NULL,
  amount numeric(14, 4) NOT NULL,
  happened_at timestamptz NOT NULL
);
CREATE FUNCTION bench_fill(lo bigint, hi bigint) RETURNS void LANGUAGE sql AS $$
  INSERT INTO bench_random
  SELECT g,
         -- 48 random-ish bytes as 64 base64 characters (6 bits each, unlike hex's 4)
         encode(decode(md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex'), 'base64'),
         jsonb_build_object(
           'k', md5(random()::text),
           'n', (random() * 1e12)::bigint,
           'f', random(),
           'tags', jsonb_build_array(substr(md5(random()::text), 1, 8), substr(md5(random()::text), 1, 12)),
           'ok', random() < 0.5),
         round((random() * 1e9)::numeric, 4),
         timestamptz '2020-01-01 00:00:00+00' + random() * interval '2000 days'
  FROM generate_series(lo, hi) g
$$;
SQL
  # A sample to learn the bytes per row, then the rest in parallel chunks.
  sample=20000
  psql_ -d bench_random -c "SELECT bench_fill(1, $sample)" >/dev/null
  row_bytes=$(psql_ -d bench_random -c "SELECT pg_relation_size('bench_random') / $sample")
  rows=$((RANDOM_MB * 1024 * 1024 / row_bytes))
  ((rows > sample)) || rows=$sample
  jobs=$(nproc)
  ((jobs > 8)) && jobs=8
  note "~$row_bytes bytes per row: $rows rows, filled by $jobs sessions"
  remaining=$((rows - sample))
  pids=()
  if ((remaining > 0)); then
    per=$(((remaining + jobs - 1) / jobs))
    for ((j = 0; j < jobs; j++)); do
      lo=$((sample + 1 + j * per))
      hi=$((sample + (j + 1) * per))
      ((hi > rows)) && hi=$rows
      ((lo > hi)) && continue
      psql_ -d bench_random -c "SELECT bench_fill($lo, $hi)" >/dev/null &
      pids+=($!)
    done
  fi
  for p in "${pids[@]}"; do wait "$p" || die "filling bench_random failed"; done
  psql_ -d bench_random <<'SQL'
DROP FUNCTION bench_fill(bigint, bigint);
ALTER TABLE bench_random ADD PRIMARY KEY (id);
CREATE INDEX bench_random_happened_at ON bench_random (happened_at);
CREATE INDEX bench_random_doc_k ON bench_random ((doc ->> 'k'));
SQL
  note "took $((SECONDS - t0)) s"
fi

say "VACUUM ANALYZE both databases"
for db in "${dbs[@]}"; do psql_ -d "$db" -c "VACUUM ANALYZE"; done
declare -A db_size db_pretty main_table main_rows
main_table[bench_pgbench]=pgbench_accounts
main_table[bench_random]=bench_random
for db in "${dbs[@]}"; do
  db_size[$db]=$(psql_ -d "$db" -c "SELECT pg_database_size(current_database())")
  db_pretty[$db]=$(psql_ -d "$db" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")
  main_rows[$db]=$(psql_ -d "$db" -c "SELECT count(*) FROM ${main_table[$db]}")
  note "$db: pg_database_size ${db_size[$db]} bytes (${db_pretty[$db]}); ${main_table[$db]}: ${main_rows[$db]} rows"
done

# --- keys and drctl configuration ----------------------------------------------------------------
say "Keys and drctl configuration in $work"
age_key=$work/keys/age.key
age-keygen -o "$age_key" 2>/dev/null
age_recipient=$(age-keygen -y "$age_key")
drctl_identity=$work/keys/drctl-identity.age
drctl_recipient=$("$drctl_bin" key generate --out "$drctl_identity")
note "age-keygen recipient (shell pipelines): $age_recipient"
note "drctl key generate recipient (drctl):   $drctl_recipient"
local_cfg=$work/drctl-local.toml
s3_cfg=$work/drctl-s3.toml
cat >"$local_cfg" <<EOF
policies_dir = "$work/policies"

[repository]
url = "file://$work/repo-local"

[encryption]
recipients = ["$drctl_recipient"]
identity_file = "$drctl_identity"
EOF
cat >"$s3_cfg" <<EOF
policies_dir = "$work/policies"

[repository]
url = "s3://$bucket/drctl"
endpoint = "$s3"
region = "us-east-1"
path_style = true

[encryption]
recipients = ["$drctl_recipient"]
identity_file = "$drctl_identity"
EOF
for db in "${dbs[@]}"; do
  # The drill section lets row g time a restore drill of the same backup.
  printf '[source]\ntype = "postgres"\nurl = "%s"\n\n[drill]\nscratch_url = "%s"\nsample_percent = 5\n' "$(pg_url "$db")" "$(pg_url postgres)" >"$work/policies/$db.toml"
  # The same without the fingerprint, to show what the fingerprint costs.
  printf '[source]\ntype = "postgres"\nurl = "%s"\nfingerprint = false\n' "$(pg_url "$db")" >"$work/policies/${db}_nofp.toml"
done
for cfg in "$local_cfg" "$s3_cfg"; do
  note "$cfg:"
  sed 's/^/      /' "$cfg"
done
note "$work/policies/bench_pgbench.toml:"
sed 's/^/      /' "$work/policies/bench_pgbench.toml"
timeout 120 "$drctl_bin" --config "$local_cfg" --quiet init >/dev/null
timeout 120 "$drctl_bin" --config "$s3_cfg" --quiet init >/dev/null
timeout 300 "$drctl_bin" --config "$local_cfg" --quiet check >"$work/logs/check.log" 2>&1 ||
  { cat "$work/logs/check.log" >&2; die "drctl check failed"; }

# --- measuring ------------------------------------------------------------------------------------------
drctl_local="$drctl_bin --config $local_cfg --quiet"
drctl_s3="$drctl_bin --config $s3_cfg --quiet"
restore_db=bench_restore
# drctl restore runs `pg_restore --exit-on-error --single-transaction`; the
# pg_restore rows that are compared with it use the same flags.
pg_restore_flags="--exit-on-error --single-transaction"

declare -A label cmd_of prep_of after_of size_of
order=()
queued=()

# measure DB ID LABEL PREP CMD [AFTER]: queues row ID (PREP untimed before
# each run, CMD timed, AFTER untimed after each run) for the next `run_queued`.
measure() {
  local db=$1 id=$2
  want "$id" || return 0
  mkdir -p "$work/results/$db"
  : >"$work/results/$db/$id"
  label[$db/$id]=$3
  cmd_of[$db/$id]=$5
  prep_of[$db/$id]=$4
  after_of[$db/$id]=${6:-}
  order+=("$db/$id")
  queued+=("$db/$id")
}

# run_queued: runs the queued rows in turn, one run of each per round (a
# warm-up round, then RUNS rounds), starting each round one row further on,
# so that rows compared with each other see the same machine: on a shared VM
# the speed drifts by tens of percent over minutes, and rows measured one
# after the other in blocks would carry that drift into their ratio. Results
# go to $work/results/DB/ID, one run a line: wall, user+sys CPU, server CPU,
# max RSS KiB.
run_queued() {
  local n=${#queued[@]} i r k key
  ((n)) || return 0
  for key in "${queued[@]}"; do
    printf '\n  [%s] %s\n' "${key/\// }" "${label[$key]}"
    [[ -z ${prep_of[$key]} ]] || printf '    untimed before each run: %s\n' "${prep_of[$key]}"
    printf '    $ %s\n' "${cmd_of[$key]}"
  done
  for ((i = 1 - WARMUP, r = 0; i <= RUNS; i++, r++)); do
    printf '\n    round %s\n' "$( ((i > 0)) && echo "$i of $RUNS" || echo "(warm-up)")"
    for ((k = 0; k < n; k++)); do
      run_once "${queued[(r + k) % n]}" "$i"
    done
  done
  queued=()
}

# run_once DB/ID I: one run of a queued row (I = 0: the warm-up, not recorded).
run_once() {
  local key=$1 i=$2 db=${1%%/*} id=${1#*/}
  local res=$work/results/$key tf=$work/results/$key.time log=$work/logs/$db-$id.log
  local prep=${prep_of[$key]} cmd=${cmd_of[$key]} after=${after_of[$key]}
  local before after_ticks wall user sys rss
  if [[ -n $prep ]]; then
    timeout -k 10 900 bash -o pipefail -c "$prep" >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "$db $id: preparing failed: $prep"; }
  fi
  wait_backends
  before=$(server_ticks)
  if ! timeout -k 30 "$BENCH_TIMEOUT" /usr/bin/time -o "$tf" -f '%e %U %S %M' \
    bash -o pipefail -c "$cmd" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    cat "$tf" >&2 2>/dev/null || true
    die "$db $id failed (run $i): $cmd"
  fi
  wait_backends
  after_ticks=$(server_ticks)
  [[ -z $after ]] || eval "$after"
  read -r wall user sys rss < <(tail -n1 "$tf")
  if ((i <= 0)); then
    printf '    %-3s warm-up: %ss\n' "$id" "$wall"
    return 0
  fi
  awk -v w="$wall" -v u="$user" -v s="$sys" -v d="$((after_ticks - before))" -v t="$clk_tck" -v r="$rss" \
    'BEGIN { printf "%.2f %.2f %.2f %d\n", w, u + s, d / t, r }' >>"$res"
  printf '    %-3s run %d: %ss wall, %ss cpu, %ss server cpu, %d MiB max rss\n' "$id" "$i" "$wall" \
    "$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')" \
    "$(awk -v d="$((after_ticks - before))" -v t="$clk_tck" 'BEGIN { printf "%.2f", d / t }')" "$((rss / 1024))"
}

# median FILE COLUMN
median() {
  sort -g -k"$2,$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

checkpoint="psql -X -q -d postgres -c CHECKPOINT"
recreate_restore_db="psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'DROP DATABASE IF EXISTS $restore_db WITH (FORCE)' -c 'CREATE DATABASE $restore_db'"
check_restored() {
  local db=$1 id=$2 n
  n=$(psql_ -d "$restore_db" -c "SELECT count(*) FROM ${main_table[$db]}")
  [[ $n == "${main_rows[$db]}" ]] ||
    die "$db $id: restored ${main_table[$db]} has $n rows, the source ${main_rows[$db]}"
}
s3_size() {
  aws_ s3api head-object --bucket "$bucket" --key "$1" --query ContentLength --output text
}

for db in "${dbs[@]}"; do
  say "Measuring $db (${db_pretty[$db]}): one warm-up run, then $RUNS timed runs per command"
  dump=$work/out/$db.dump
  sealed=$work/out/$db.dump.zst.age
  s3_key=shell/$db.dump.zst.age

  # The uncompressed dump that pg_restore reads below; its size bounds the others.
  if want f1 || want f2 || want f3 || want f4 || want c || want a; then
    timeout "$BENCH_TIMEOUT" pg_dump -Fc -Z0 -d "$db" >"$dump"
    plain=$(stat -c %s "$dump")
    size_of[$db/a]=$plain
  else
    plain=0
  fi
  # aws needs an upper bound to pick part sizes for a stream (above 80 GB).
  expected=$((plain + plain / 100 + 1048576))

  # Rows that are compared with each other run in turn (run_queued): the
  # backups to a local file, the backups to S3, the local restores and
  # drills, the restores from S3.
  measure "$db" a "pg_dump to /dev/null (the input limit)" "" \
    "pg_dump -Fc -Z0 -d $db > /dev/null"
  measure "$db" b "shell: pg_dump | zstd | age > file" "rm -f $sealed" \
    "pg_dump -Fc -Z0 -d $db | zstd -3 -T0 | age -r $age_recipient > $sealed"
  # Earlier runs' backups are removed before each run (untimed), so every run
  # starts from the same repository and moto holds one backup at a time.
  measure "$db" d "drctl backup, local directory" "rm -rf $work/repo-local/backups/$db" \
    "$drctl_local backup $db"
  measure "$db" d2 "drctl backup, local directory, fingerprint = false" "rm -rf $work/repo-local/backups/${db}_nofp" \
    "$drctl_local backup ${db}_nofp"
  run_queued
  ! want b || size_of[$db/b]=$(stat -c %s "$sealed")
  if want d; then
    obj=$(find "$work/repo-local/backups/$db" -name 'data.pgdump.zst.age' -print -quit)
    size_of[$db/d]=$(stat -c %s "$obj")
  fi
  if want d2; then
    obj=$(find "$work/repo-local/backups/${db}_nofp" -name 'data.pgdump.zst.age' -print -quit)
    size_of[$db/d2]=$(stat -c %s "$obj")
  fi

  measure "$db" c "shell: pg_dump | zstd | age | aws s3 cp (moto)" "$work/purge-s3 $s3_key" \
    "pg_dump -Fc -Z0 -d $db | zstd -3 -T0 | age -r $age_recipient | aws --endpoint-url $s3 s3 cp --expected-size $expected - s3://$bucket/$s3_key"
  measure "$db" e "drctl backup, S3 (moto)" \
    "$work/purge-s3 drctl/backups/$db/" \
    "$drctl_s3 backup $db"
  run_queued
  ! want c || size_of[$db/c]=$(s3_size "$s3_key")
  if want e; then
    key=$(aws_ s3api list-objects-v2 --bucket "$bucket" --prefix "drctl/backups/$db/" \
      --query "Contents[?ends_with(Key, 'data.pgdump.zst.age')].Key | [0]" --output text)
    size_of[$db/e]=$(s3_size "$key")
  fi

  # Every restore is checked (untimed) before the next run replaces it.
  measure "$db" f1 "pg_restore from the uncompressed dump file (plain flags)" "$recreate_restore_db" \
    "pg_restore -d $restore_db $dump" "check_restored $db f1"
  measure "$db" f2 "pg_restore from the uncompressed dump file (drctl's flags)" "$recreate_restore_db" \
    "pg_restore $pg_restore_flags -d $restore_db $dump" "check_restored $db f2"
  measure "$db" f3 "shell: age -d | zstd -d | pg_restore (local file)" "$recreate_restore_db" \
    "age -d -i $age_key $sealed | zstd -d | pg_restore $pg_restore_flags -d $restore_db" "check_restored $db f3"
  measure "$db" f5 "drctl restore, local directory" "$recreate_restore_db" \
    "$drctl_local restore $db --to latest --target $(pg_url $restore_db) --yes" "check_restored $db f5"
  # A restore drill of the same backup: pg_restore into a scratch database,
  # then the fingerprint check; each drill's record gives the split. A
  # checkpoint first, as the restores get from their DROP DATABASE: a run
  # must not start with the previous run's dirty buffers to write out.
  measure "$db" g "drctl drill, local directory (restore, then fingerprint check)" "$checkpoint" \
    "$drctl_local --json drill $db > $work/results/$db/drill-\$(date +%s%N).json"
  # The same drill as the daemon runs it with `[drill] sample_percent = 5`:
  # row counts of every table, the rows of 2 of 32 buckets of each large
  # table (row g's full checks, which run first, make a full check not due).
  measure "$db" g2 "drctl drill --scheduled-check, local directory (restore, then sampled check)" "$checkpoint" \
    "$drctl_local --json drill $db --scheduled-check > $work/results/$db/sampled-\$(date +%s%N).json"
  run_queued

  measure "$db" f4 "shell: aws s3 cp | age -d | zstd -d | pg_restore (moto)" "$recreate_restore_db" \
    "aws --endpoint-url $s3 s3 cp s3://$bucket/$s3_key - | age -d -i $age_key | zstd -d | pg_restore $pg_restore_flags -d $restore_db" "check_restored $db f4"
  measure "$db" f6 "drctl restore, S3 (moto)" "$recreate_restore_db" \
    "$drctl_s3 restore $db --to latest --target $(pg_url $restore_db) --yes" "check_restored $db f6"
  run_queued
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $restore_db WITH (FORCE)"
  rm -f "$dump" "$sealed"
done

# --- report ------------------------------------------------------------------------------------------------
say "Results"
ended_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
drctl_rev=$(git -C "$checkout" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$checkout" status --porcelain --untracked-files=no 2>/dev/null) ]] && drctl_rev="$drctl_rev (with uncommitted changes)"

# ratio_line TEXT: prints TEXT unless a ratio in it is missing (a row not
# measured with BENCH_ROWS).
ratio_line() { [[ $* == *nan* ]] || echo "$*"; }

# ratio A B COLUMN: median of A / median of B, or n/a.
ratio() {
  local a b
  a=$(median "$work/results/$1" "$3")
  b=$(median "$work/results/$2" "$3")
  awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
}

report=$work/report.md
{
  echo "# drctl benchmark"
  echo
  echo "Produced by \`scripts/bench.sh $SCALE\` (RANDOM_MB=$RANDOM_MB RUNS=$RUNS WARMUP=$WARMUP BENCH_DBS=\"$BENCH_DBS\" BENCH_ROWS=\"$BENCH_ROWS\"), $started_at to $ended_at."
  echo
  echo "- Machine: $(nproc) CPUs ($cpu_model), $mem_total memory, Linux $(uname -r)"
  echo "- Load average at start: $load_start; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- $(postgres --version), $(pg_dump --version)"
  echo "- $(zstd --version | sed 's/^\*\*\* //; s/ \*\*\*$//'), age $(age --version), $(aws --version 2>&1 | cut -d' ' -f1), moto $(python3 -c 'import moto; print(moto.__version__)')"
  echo "- drctl $("$drctl_bin" --version | cut -d' ' -f2) at $drctl_rev, \`cargo build --release\`"
  echo "- SCALE=$SCALE (pgbench), RANDOM_MB=$RANDOM_MB, RUNS=$RUNS"
  echo "- Databases: bench_pgbench (\`pgbench -i -s $SCALE\`) ${db_size[bench_pgbench]:-} bytes (${db_pretty[bench_pgbench]:-}); bench_random (one table of random base64 text, jsonb, numeric, timestamptz; primary key and 2 indexes) ${db_size[bench_random]:-} bytes (${db_pretty[bench_random]:-}), by pg_database_size after VACUUM ANALYZE"
  echo "- PostgreSQL 15 on 127.0.0.1 with: \`$(printf '%s; ' "${pg_settings[@]:0:9}" | sed 's/; $//')\`. fsync=off is not crash safe; fine for a throwaway cluster, and the same for every row."
  echo "- S3 is moto $(python3 -c 'import moto; print(moto.__version__)') on 127.0.0.1 (bucket versioning $S3_VERSIONING), a Python server: the S3 rows measure moto at least as much as the client."
  echo
  echo "How it is measured:"
  echo
  if ((WARMUP)); then
    echo "- Each command runs once to warm up (the OS page cache is warm), then $RUNS times; the table shows medians. Commands compared with each other run in turn, one run of each per round (backups to a file: a, b, d, d2; to S3: c, e; local restores and drills: f1, f2, f3, f5, g, g2; restores from S3: f4, f6), so that a machine whose speed drifts affects both sides of a ratio alike."
  else
    echo "- No warm-up run (WARMUP=0); each command runs $RUNS times, in turn with the commands it is compared with; the table shows medians. Rows measured: ${BENCH_ROWS:-all}."
  fi
  echo "- Each run is \`/usr/bin/time -f '%e %U %S %M' bash -o pipefail -c 'COMMAND'\`, with the environment \`PATH=$pg_bin:\$PATH PGHOST=127.0.0.1 PGPORT=$pg_port PGUSER=postgres PGPASSWORD=(random) AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1\`. Untimed preparation before each run: restores go into a freshly created empty database \`$restore_db\`; drctl backups start from a repository without earlier backups of the policy; drills start after a \`CHECKPOINT\` (which the restores get from \`DROP DATABASE\`), so that no run writes out the dirty buffers of the run before it."
  echo "- **CPU s** is user+sys of the command and every child process (pg_dump, zstd, age, aws, or the pg_dump/pg_restore drctl starts). **Server CPU s** is the CPU time of the PostgreSQL backends that served the command (measured from the postmaster's reaped-children times); it is not in CPU s."
  echo "- **Max RSS** is GNU time's %M: the largest single process of the tree, not the sum. For a shell pipeline it is the biggest of pg_dump, zstd, age and aws; for drctl it is drctl or its pg_dump/pg_restore, whichever is larger. PostgreSQL and moto are not included."
  echo "- **Output bytes**: a: the uncompressed custom-format dump; b, d, d2: the encrypted file on disk; c, e: the S3 object (for drctl the data object; its small fingerprint object and manifest are not counted)."
  echo "- zstd: the shell pipelines use \`zstd -3 -T0\` ($(nproc) threads here); drctl uses level 3 with 2 worker threads."
  echo "- drctl backup also fingerprints the table data (row count and a hash of every row) from pg_dump's output as it streams, without reading the database again; row d2 is the same backup with \`fingerprint = false\`."
  echo "- drctl restore runs \`pg_restore $pg_restore_flags\` into a scratch database and renames it; rows f2 to f4 use the same pg_restore flags, row f1 plain \`pg_restore -d\`."
  for db in "${dbs[@]}"; do
    echo
    echo "## $db (${db_pretty[$db]})"
    echo
    echo "| | command | wall s | CPU s | server CPU s | max RSS MiB | output bytes |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for key in "${order[@]}"; do
      [[ $key == "$db/"* ]] || continue
      id=${key#*/}
      f=$work/results/$key
      printf '| %s | %s | %.2f | %.2f | %.2f | %.0f | %s |\n' "$id" "${label[$key]//|/\\|}" \
        "$(median "$f" 1)" "$(median "$f" 2)" "$(median "$f" 3)" \
        "$(awk -v k="$(median "$f" 4)" 'BEGIN { print k / 1024 }')" "${size_of[$key]:-}"
    done
    echo
    echo "Ratios of medians (wall, CPU; below 1 means drctl is faster or uses less):"
    echo
    ratio_line "- backup: drctl local (d) / pg_dump to /dev/null (a): wall $(ratio "$db/d" "$db/a" 1), CPU $(ratio "$db/d" "$db/a" 2)"
    ratio_line "- backup: drctl local (d) / shell pipeline to a file (b): wall $(ratio "$db/d" "$db/b" 1), CPU $(ratio "$db/d" "$db/b" 2), output size $(awk -v a="${size_of[$db/d]:-0}" -v b="${size_of[$db/b]:-0}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }')"
    ratio_line "- backup: drctl local without fingerprint (d2) / shell pipeline to a file (b): wall $(ratio "$db/d2" "$db/b" 1), CPU $(ratio "$db/d2" "$db/b" 2)"
    ratio_line "- backup: drctl S3 (e) / shell pipeline to S3 (c): wall $(ratio "$db/e" "$db/c" 1), CPU $(ratio "$db/e" "$db/c" 2)"
    ratio_line "- restore: drctl local (f5) / pg_restore from an uncompressed file, same flags (f2): wall $(ratio "$db/f5" "$db/f2" 1), CPU $(ratio "$db/f5" "$db/f2" 2)"
    ratio_line "- restore: drctl local (f5) / plain pg_restore from an uncompressed file (f1): wall $(ratio "$db/f5" "$db/f1" 1)"
    ratio_line "- restore: drctl local (f5) / shell pipeline from a local file (f3): wall $(ratio "$db/f5" "$db/f3" 1), CPU $(ratio "$db/f5" "$db/f3" 2)"
    ratio_line "- restore: drctl S3 (f6) / shell pipeline from S3 (f4): wall $(ratio "$db/f6" "$db/f4" 1), CPU $(ratio "$db/f6" "$db/f4" 2)"
    ratio_line "- drill: drctl drill (g) / pg_restore from an uncompressed file, same flags (f2): wall $(ratio "$db/g" "$db/f2" 1)"
    ratio_line "- drill: sampled drill (g2) / pg_restore from an uncompressed file, same flags (f2): wall $(ratio "$db/g2" "$db/f2" 1)"
    ratio_line "- drill: drctl drill (g) / drctl restore (f5): wall $(ratio "$db/g" "$db/f5" 1); sampled (g2) / f5: wall $(ratio "$db/g2" "$db/f5" 1)"
    python3 - "$work/results/$db" <<'PY'
import glob, json, statistics, sys
restore, check = [], []
for path in glob.glob(sys.argv[1] + "/drill-*.json"):
    steps = {s["name"]: s["seconds"] for s in json.load(open(path))["drills"][0]["steps"]}
    restore.append(steps["fetch, decrypt, decompress and pg_restore"])
    check.append(steps["verify fingerprint"])
if restore:
    r, c = statistics.median(restore), statistics.median(check)
    print(f"- drill (g), from its records (median of {len(restore)} drills): restore {r:.2f} s, fingerprint check {c:.2f} s; the check adds {100 * c / r:.0f} % to the restore")
restore, check, share = [], [], []
for path in glob.glob(sys.argv[1] + "/sampled-*.json"):
    d = json.load(open(path))["drills"][0]
    steps = {s["name"]: s["seconds"] for s in d["steps"]}
    restore.append(steps["fetch, decrypt, decompress and pg_restore"])
    check.append(steps["verify fingerprint"])
    if d.get("sample"):
        share.append(100 * d["sample"]["rows_hashed"] / max(d["sample"]["rows_total"], 1))
if restore:
    r, c = statistics.median(restore), statistics.median(check)
    hashed = f"{statistics.median(share):.1f} % of rows hashed" if share else "no sample taken (a full check was due)"
    print(f"- sampled drill (g2), from its records (median of {len(restore)} drills): restore {r:.2f} s, sampled check {c:.2f} s ({hashed}, every row counted); the check adds {100 * c / r:.0f} % to the restore")
PY
    echo
    echo "Commands, exactly as timed:"
    echo
    echo '```'
    for key in "${order[@]}"; do
      [[ $key == "$db/"* ]] && printf '%-3s %s\n' "${key#*/}" "${cmd_of[$key]}"
    done
    echo '```'
  done
  echo
  echo "Whole run: $((SECONDS - t_script)) s, of which cargo build --release $build_seconds s."
} >"$report"
cat "$report"
cp "$report" "$OUT"
say "Written to $OUT"
