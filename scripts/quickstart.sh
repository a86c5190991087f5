#!/usr/bin/env bash
# drctl in ten minutes, on a fresh Debian (bookworm) machine, as root.
#
# Installs what is missing (and only that), builds drctl, starts a throwaway
# PostgreSQL 15 cluster on a free loopback port, fills it with sample data,
# and then does what you would do by hand: generate a key, write drctl.toml
# and a policy, init, check, backup, list, restore into a new database with
# --verify, and compare the restored rows with the source.
#
# The key, drctl.toml, the policy and the repository stay in ./demo (or
# $DRCTL_DEMO_DIR) so you can look at them afterwards; the PostgreSQL cluster
# is stopped and removed on exit. Safe to run again: the key and repository
# are reused and each run adds one backup.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
checkout=$PWD
demo=${DRCTL_DEMO_DIR:-$checkout/demo}

say() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }

pg_bin=/usr/lib/postgresql/15/bin

# --- what is missing -----------------------------------------------------------
missing=()
[[ -x $pg_bin/initdb && -x $pg_bin/pg_ctl && -x $pg_bin/pg_dump && -x $pg_bin/pg_restore && -x $pg_bin/psql ]] ||
  missing+=(postgresql-15)
command -v zstd >/dev/null || missing+=(zstd)
command -v cc >/dev/null || missing+=(build-essential)
if ! command -v cargo >/dev/null && [[ ! -x $HOME/.cargo/bin/cargo ]]; then
  command -v curl >/dev/null || missing+=(curl ca-certificates)
fi
if ((${#missing[@]})); then
  ((EUID == 0)) || die "missing ${missing[*]}; run as root to install them, or install them yourself"
  say "Installing with apt: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "System packages: all present (PostgreSQL 15 in $pg_bin, zstd, a C compiler)"
fi

# Rust: Debian's cargo is too old for edition 2024, so rustup when cargo is missing.
if ! command -v cargo >/dev/null; then
  if [[ ! -x $HOME/.cargo/bin/cargo ]]; then
    say "Installing Rust with rustup (minimal profile, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# --- build -----------------------------------------------------------------------
say "Building drctl (cargo build --release; the first build takes about ten minutes on 2 cores)"
cargo build --release
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -x $target_dir/release/drctl ]] || die "cargo built no $target_dir/release/drctl"
bin=$(cd "$target_dir/release" && pwd -P)/drctl
note "binary: $bin"

# --- a throwaway PostgreSQL cluster ---------------------------------------------
# PostgreSQL refuses to run as root; as root the cluster belongs to `postgres`.
if ((EUID == 0)); then
  id postgres >/dev/null 2>&1 || die "no \`postgres\` OS user; install postgresql-15"
  as_pg() { (cd "$work" && runuser -u postgres -- "$@"); }
else
  as_pg() { (cd "$work" && "$@"); }
fi

work=$(mktemp -d /tmp/drctl-quickstart.XXXXXX)
cleanup() {
  if [[ -f $work/data/postmaster.pid ]]; then
    as_pg "$pg_bin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
((EUID == 0)) && chown postgres: "$work"

password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
say "Starting a throwaway PostgreSQL 15 cluster in $work"
printf '%s\n' "$password" >"$work/pwfile"
((EUID == 0)) && chown postgres: "$work/pwfile"
as_pg env LC_ALL=C "$pg_bin/initdb" -D "$work/data" -U postgres --pwfile="$work/pwfile" \
  --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$work/initdb.log" 2>&1 ||
  { cat "$work/initdb.log" >&2; die "initdb failed"; }
rm -f "$work/pwfile"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=
for _ in $(seq 1 20); do
  candidate=$((20000 + RANDOM % 30000))
  port_in_use "$candidate" && continue
  if as_pg "$pg_bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -t 60 \
    -o "-p $candidate -k $work -c listen_addresses=127.0.0.1" start >/dev/null; then
    port=$candidate
    break
  fi
  grep -q "Address already in use" "$work/postgres.log" 2>/dev/null || { cat "$work/postgres.log" >&2; die "PostgreSQL did not start"; }
done
[[ -n $port ]] || die "found no free port for PostgreSQL"
note "listening on 127.0.0.1:$port, superuser \`postgres\`, a random password in PGPASSWORD"

# Passwords reach drctl (and pg_dump, pg_restore) through the environment or a
# pgpass file, never through drctl.toml or a policy.
export PGPASSWORD=$password
psql=("$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres)

say "Loading sample data into database \`shop\` (4 tables, 22,500 rows)"
"${psql[@]}" -d postgres -c "CREATE DATABASE shop"
"${psql[@]}" -d shop <<'SQL'
CREATE TABLE customers (
  id int PRIMARY KEY,
  name text NOT NULL,
  email text UNIQUE NOT NULL,
  created_at timestamptz NOT NULL
);
INSERT INTO customers
SELECT g, 'Customer ' || g, 'customer' || g || '@example.com',
       timestamptz '2026-01-01 00:00:00+00' + g * interval '37 minutes'
FROM generate_series(1, 2000) g;

CREATE TABLE products (
  id int PRIMARY KEY,
  sku text UNIQUE NOT NULL,
  title text NOT NULL,
  price numeric(10, 2) NOT NULL
);
INSERT INTO products
SELECT g, 'SKU-' || lpad(g::text, 5, '0'), 'Product ' || g, (g % 97) + 0.99
FROM generate_series(1, 500) g;

CREATE TABLE orders (
  id int PRIMARY KEY,
  customer_id int NOT NULL REFERENCES customers,
  placed_at timestamptz NOT NULL,
  status text NOT NULL
);
INSERT INTO orders
SELECT g, 1 + (g * 7) % 2000,
       timestamptz '2026-06-01 00:00:00+00' + g * interval '11 minutes',
       (ARRAY['new', 'paid', 'shipped'])[1 + g % 3]
FROM generate_series(1, 5000) g;

CREATE TABLE order_items (
  order_id int REFERENCES orders,
  product_id int REFERENCES products,
  quantity int NOT NULL,
  PRIMARY KEY (order_id, product_id)
);
INSERT INTO order_items
SELECT o, 1 + (o * 13 + k * 17) % 500, 1 + (o + k) % 4
FROM generate_series(1, 5000) o, generate_series(1, 3) k;
SQL

# --- drctl, step by step -----------------------------------------------------------
mkdir -p "$demo/policies"
cd "$demo"
# Show each command the way you would type it in $demo.
drctl() {
  printf '\n    $ drctl %s\n' "$*"
  "$bin" --config "$demo/drctl.toml" "$@"
}

say "1. A key: the public half encrypts backups, the secret half restores them"
if [[ -f identity.age ]]; then
  recipient=$(sed -n 's/^# public key: //p' identity.age)
  [[ -n $recipient ]] || die "$demo/identity.age has no '# public key:' line; move it away and run again"
  note "reusing $demo/identity.age (public key $recipient)"
else
  printf '\n    $ drctl key generate --out identity.age\n'
  recipient=$("$bin" key generate --out identity.age)
  note "public key: $recipient"
fi

say "2. drctl.toml (a local-directory repository) and a policy"
cat >drctl.toml <<EOF
# Written by scripts/quickstart.sh.
[repository]
url = "file://repo"

[encryption]
recipients = ["$recipient"]
identity_file = "identity.age"
EOF
cat >policies/shop.toml <<EOF
# Written by scripts/quickstart.sh. No password here: drctl reads PGPASSWORD.
[source]
type = "postgres"
url = "postgres://postgres@127.0.0.1:$port/shop"
EOF
note "$demo/drctl.toml:"
sed 's/^/      /' drctl.toml
note "$demo/policies/shop.toml:"
sed 's/^/      /' policies/shop.toml

say "3. init, check"
drctl init
drctl check

say "4. backup"
drctl backup shop

say "5. list"
drctl list shop

say "6. restore the latest backup into a new database, checking its fingerprint"
drctl restore shop --to latest --target "postgres://postgres@127.0.0.1:$port/shop_restored" --yes --verify

say "7. verify every stored byte of every backup"
drctl verify --read-data

say "8. Comparing row counts and contents: shop vs shop_restored"
counts_sql="SELECT t, n, h FROM (
  SELECT 'customers' AS t, count(*) AS n, md5(string_agg(c::text, ',' ORDER BY id)) AS h FROM customers c
  UNION ALL SELECT 'products', count(*), md5(string_agg(p::text, ',' ORDER BY id)) FROM products p
  UNION ALL SELECT 'orders', count(*), md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o
  UNION ALL SELECT 'order_items', count(*), md5(string_agg(i::text, ',' ORDER BY order_id, product_id)) FROM order_items i
) s ORDER BY t"
source_counts=$("${psql[@]}" -d shop -c "$counts_sql")
restored_counts=$("${psql[@]}" -d shop_restored -c "$counts_sql")
printf '    %-12s %8s  %-32s  %s\n' TABLE ROWS "MD5 OF ROWS (SOURCE)" RESTORED
paste -d'|' <(printf '%s\n' "$source_counts") <(printf '%s\n' "$restored_counts") |
  while IFS='|' read -r t n h _ rn rh; do
    [[ $n == "$rn" && $h == "$rh" ]] && verdict=same || verdict="DIFFERENT ($rn rows, $rh)"
    printf '    %-12s %8s  %s  %s\n' "$t" "$n" "$h" "$verdict"
  done
[[ $source_counts == "$restored_counts" ]] || die "the restored database differs from the source"

backups=$(find "$demo/repo/backups/shop" -name manifest.json | wc -l)
say "Done: the restored database matches the source."
cat <<EOF
    Kept in $demo:
      identity.age        the secret key (mode 0600); without it no backup can be restored
      drctl.toml          repository and recipients
      policies/shop.toml  what to back up
      repo/               the repository: repo.json, backups/shop/<id>/ ($backups backup(s) so far)
    Removed on exit: the PostgreSQL cluster in $work (and shop_restored with it).

    Look around:
      cd $demo
      $bin --config drctl.toml list
      cat repo/backups/shop/*/manifest.json
    Reading the repository without drctl (age, zstd, pg_restore): $checkout/docs/manual-recovery.md
EOF
