#!/usr/bin/env bash
# Key rotation: the bytes `drctl key rotate` moves through this host for a
# backup of MB random bytes, on a moto S3 server on 127.0.0.1 and on a local
# directory, against the size of what it rotates (which is what downloading,
# re-encrypting and uploading every object would move each way), and the
# time it takes.
#
#   scripts/bench-rotate.sh [DRCTL]   # default: the debug build in $CARGO_TARGET_DIR or ../drctl-target
#
#   environment: MB (default 200)   size of the file backed up (random bytes, so the object is as big)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${CARGO_TARGET_DIR:-../drctl-target}
DRCTL=${1:-$target/debug/drctl}
MB=${MB:-200}
[[ -x $DRCTL ]] || { echo "bench-rotate: no drctl at $DRCTL (cargo build first)" >&2; exit 1; }
command -v aws >/dev/null || { echo "bench-rotate: no aws CLI (python3 -m pip install awscli)" >&2; exit 1; }
command -v jq >/dev/null || { echo "bench-rotate: no jq (apt-get install jq)" >&2; exit 1; }
DRCTL=$(realpath "$DRCTL")

# shellcheck source=scripts/bench-moto.sh
source scripts/bench-moto.sh
aws --endpoint-url "$endpoint" s3 mb s3://rot >/dev/null
aws --endpoint-url "$endpoint" s3api put-bucket-versioning --bucket rot \
  --versioning-configuration Status=Enabled

mkdir -p "$work/data" "$work/policies"
head -c "$((MB * 1024 * 1024))" /dev/urandom >"$work/data/blob"
old=$("$DRCTL" key generate --out "$work/old.age" 2>/dev/null)
new=$("$DRCTL" key generate --out "$work/new.age" 2>/dev/null)
cat "$work/old.age" "$work/new.age" >"$work/both.age"
chmod 600 "$work/both.age"
printf 'compression_level = 1\n[source]\ntype = "files"\npaths = ["%s"]\n' "$work/data" >"$work/policies/big.toml"

now() { date +%s.%N; }
echo
echo "Key rotation of one backup of $MB MiB of random bytes (\`key rotate --add NEW --remove OLD\`):"
echo
echo '| repository | stored MiB | MiB through this host (down / up) | MiB copied inside the store | seconds |'
echo '| --- | ---: | ---: | ---: | ---: |'
for repo in s3 local; do
  if [[ $repo == s3 ]]; then
    url="url = \"s3://rot/drctl\"
endpoint = \"$endpoint\"
path_style = true"
  else
    url='url = "file://repo"'
  fi
  write_config() { # write_config RECIPIENT IDENTITY
    printf '[repository]\n%s\n[encryption]\nrecipients = ["%s"]\nidentity_file = "%s"\n' "$url" "$1" "$2" >"$work/drctl.toml"
  }
  write_config "$old" old.age
  (cd "$work" && "$DRCTL" --config drctl.toml --quiet init >/dev/null && "$DRCTL" --config drctl.toml --quiet backup big >/dev/null)
  write_config "$new" both.age
  t0=$(now)
  report=$(cd "$work" && "$DRCTL" --config drctl.toml --quiet --json key rotate --add "$new" --remove "$old" --yes)
  t=$(echo "$(now) - $t0" | bc)
  write_config "$new" new.age
  (cd "$work" && "$DRCTL" --config drctl.toml --quiet verify big --read-data >/dev/null) ||
    { echo "bench-rotate: verify --read-data with the new key failed ($repo)" >&2; exit 1; }
  mib() { echo "scale=1; $1 / 1048576" | bc; }
  r=$(jq '.reports[0]' <<<"$report")
  printf '| %s | %s | %s / %s | %s | %.2f |\n' "$repo" \
    "$(mib "$(jq .bytes_of_objects <<<"$r")")" \
    "$(mib "$(jq .bytes_downloaded <<<"$r")")" "$(mib "$(jq .bytes_uploaded <<<"$r")")" \
    "$(mib "$(jq .bytes_copied_in_store <<<"$r")")" "$t"
done
