#!/usr/bin/env bash
# Copy throughput: `drctl copy` of one backup between two buckets of a
# moto S3 server on 127.0.0.1, against the aws CLI copying the same
# objects between the same buckets, two ways:
#
#   aws s3 cp --recursive   server-side CopyObject/UploadPartCopy: the bytes
#                           never leave the S3 server (possible only when
#                           both buckets are at one endpoint and one account)
#   aws s3 cp - | aws s3 cp -   the bytes through this host, as drctl must
#                           when the copy is at another endpoint or provider
#
# drctl streams each object part by part from the source into the
# destination, then reads it back there to check its SHA-256 against the
# manifest before it writes the manifest: about twice the destination's
# traffic of a plain copy.
#
#   scripts/bench-copy.sh [DRCTL]   # default: the debug build in $CARGO_TARGET_DIR or ../drctl-target
#
#   environment: MB (default 256)   size of the file backed up (random bytes, so the object is as big)
#                RUNS (default 3)   timed runs per command (the median is reported)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${CARGO_TARGET_DIR:-../drctl-target}
DRCTL=${1:-$target/debug/drctl}
MB=${MB:-256}
RUNS=${RUNS:-3}
[[ -x $DRCTL ]] || { echo "bench-copy: no drctl at $DRCTL (cargo build first)" >&2; exit 1; }
command -v aws >/dev/null || { echo "bench-copy: no aws CLI (python3 -m pip install awscli)" >&2; exit 1; }
DRCTL=$(realpath "$DRCTL")

# shellcheck source=scripts/bench-moto.sh
source scripts/bench-moto.sh
s3() { aws --endpoint-url "$endpoint" s3 "$@"; }
s3 mb s3://src >/dev/null
s3 mb s3://dst >/dev/null

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timed() {
  local t0; t0=$(now)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  echo "$(now) - $t0" | bc
}

mkdir -p "$work/data" "$work/policies"
head -c "$((MB * 1024 * 1024))" /dev/urandom >"$work/data/blob"
"$DRCTL" key generate --out "$work/identity.age" >"$work/recipient" 2>/dev/null
config() { # config DEST_PREFIX: drctl.toml with one copy at s3://dst/DEST_PREFIX
  cat >"$work/drctl.toml" <<TOML
[repository]
url = "s3://src/drctl"
endpoint = "$endpoint"
path_style = true
[encryption]
recipients = ["$(cat "$work/recipient")"]
identity_file = "identity.age"
[[copies]]
name = "dr"
url = "s3://dst/$1"
endpoint = "$endpoint"
path_style = true
TOML
}
config unused
printf 'compression_level = 1\n[source]\ntype = "files"\npaths = ["%s"]\n' "$work/data" >"$work/policies/big.toml"
(cd "$work" && "$DRCTL" --config drctl.toml init >/dev/null 2>&1 && "$DRCTL" --config drctl.toml backup big >/dev/null 2>&1)
bytes=$(aws --endpoint-url "$endpoint" s3api list-objects-v2 --bucket src --prefix drctl/backups/ \
  --query 'sum(Contents[].Size)' --output text)
data_key=$(aws --endpoint-url "$endpoint" s3api list-objects-v2 --bucket src --prefix drctl/backups/ \
  --query 'Contents[].Key' --output text | tr '\t' '\n' | grep 'data\.tar')

drctl_t=() server_t=() stream_t=()
for run in $(seq "$RUNS"); do
  config "drctl-$run"
  drctl_t+=("$(cd "$work" && timed "$DRCTL" --config drctl.toml --quiet copy --to dr)")
  server_t+=("$(timed aws --endpoint-url "$endpoint" s3 cp --recursive --quiet s3://src/drctl/ "s3://dst/aws-$run/")")
  stream_t+=("$(timed bash -c "aws --endpoint-url $endpoint s3 cp --quiet s3://src/$data_key - | aws --endpoint-url $endpoint s3 cp --quiet - s3://dst/pipe-$run/data")")
done
# The copy is listed in full at the destination.
(cd "$work" && "$DRCTL" --config drctl.toml --quiet list --repo dr big | grep -q big) \
  || { echo "bench-copy: the last copy is not listed at the destination" >&2; exit 1; }

row() { # row NAME TIMES…
  local name=$1; shift
  local m; m=$(printf '%s\n' "$@" | median)
  printf '| %s | %.2f | %.0f |\n' "$name" "$m" "$(echo "$bytes / 1048576 / $m" | bc -l)"
}
echo
echo "Copy of one backup ($((bytes / 1048576)) MiB stored) between two buckets of one moto server; median of $RUNS runs:"
echo
echo '| command | seconds | MiB/s |'
echo '| --- | ---: | ---: |'
# shellcheck disable=SC2016 # the names are Markdown with backquotes, not expansions
{
row "\`drctl copy --to dr\` (stream through this host, read back and SHA-256 at the destination)" "${drctl_t[@]}"
row '`aws s3 cp --recursive` bucket to bucket (server-side copy)' "${server_t[@]}"
row '`aws s3 cp - \| aws s3 cp -` (the data object through this host)' "${stream_t[@]}"
}
