#!/usr/bin/env bash
# What signing costs: `drctl list` over N manifests, and a backup and a
# restore of one file of random bytes, each with and without `[signing]`,
# on two local-directory repositories side by side.
#
#   scripts/bench-signing.sh [DRCTL]   # default: the debug build in $CARGO_TARGET_DIR or ../drctl-target
#
#   environment: N (default 300)     manifests listed
#                MB (default 256)    size of the file backed up and restored
#                RUNS (default 5)    timed runs per command (the median is reported)
#
# Only a local directory is used: the signature travels inside the manifest,
# so signing adds no request on S3 either, and a local store leaves the CPU
# cost of signing and checking as large a share of the time as it can be.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${CARGO_TARGET_DIR:-../drctl-target}
DRCTL=${1:-$target/debug/drctl}
N=${N:-300}
MB=${MB:-256}
RUNS=${RUNS:-5}
[[ -x $DRCTL ]] || { echo "bench-signing: no drctl at $DRCTL (cargo build first)" >&2; exit 1; }
DRCTL=$(realpath "$DRCTL")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# once MODE CMD…: runs it once in MODE's directory, prints wall seconds.
once() {
  local mode=$1; shift
  local t0; t0=$(now)
  (cd "$work/$mode" && "$@" >/dev/null 2>&1) || { echo "failed: $*" >&2; exit 1; }
  echo "$(now) - $t0" | bc
}
# time_both NAME CMD…: RUNS runs in each mode, alternating so that load
# from elsewhere on the machine falls on both alike; medians into
# $NAME[unsigned] and $NAME[signed].
time_both() {
  local name=$1; shift
  local u=() s=()
  for _ in $(seq "$RUNS"); do
    u+=("$(once unsigned "$@")")
    s+=("$(once signed "$@")")
  done
  # shellcheck disable=SC2034 # a nameref to the caller's associative array
  local -n medians=$name
  medians["unsigned"]=$(printf '%s\n' "${u[@]}" | median)
  # shellcheck disable=SC2034
  medians["signed"]=$(printf '%s\n' "${s[@]}" | median)
}

mkdir -p "$work/data/small"
echo hello >"$work/data/small/a"
mkdir -p "$work/data/big" && head -c "$((MB * 1024 * 1024))" /dev/urandom >"$work/data/big/blob"
for mode in unsigned signed; do
  d=$work/$mode
  mkdir -p "$d/policies"
  "$DRCTL" key generate --out "$d/identity.age" >"$d/recipient" 2>/dev/null
  cat >"$d/drctl.toml" <<TOML
[repository]
url = "file://repo"
[encryption]
recipients = ["$(cat "$d/recipient")"]
identity_file = "identity.age"
TOML
  if [[ $mode == signed ]]; then
    public=$("$DRCTL" key generate --signing --out "$d/signing.key" 2>/dev/null)
    printf '[signing]\nkey_file = "signing.key"\ntrusted = ["%s"]\n' "$public" >>"$d/drctl.toml"
  fi
  printf '[source]\ntype = "files"\npaths = ["%s"]\n' "$work/data/small" >"$d/policies/small.toml"
  printf 'compression_level = 1\n[source]\ntype = "files"\npaths = ["%s"]\n' "$work/data/big" >"$d/policies/big.toml"
  (cd "$d" && "$DRCTL" --config drctl.toml init >/dev/null 2>&1)
  for _ in $(seq "$N"); do
    (cd "$d" && "$DRCTL" --config drctl.toml backup small >/dev/null 2>&1)
  done
done

declare -A list backup restore
time_both list "$DRCTL" --config drctl.toml --quiet list small --json
time_both backup "$DRCTL" --config drctl.toml --quiet backup big
time_both restore bash -c "rm -rf out && $DRCTL --config drctl.toml --quiet restore big --to latest --into out"
pct() { echo "scale=2; ($2 - $1) * 100 / $1" | bc; }
printf '| operation | unsigned (s) | signed (s) | difference |\n| --- | ---: | ---: | ---: |\n'
printf '| `list` of %d manifests | %.3f | %.3f | %s %% |\n' "$N" "${list[unsigned]}" "${list[signed]}" "$(pct "${list[unsigned]}" "${list[signed]}")"
printf '| `backup` of %d MiB | %.3f | %.3f | %s %% |\n' "$MB" "${backup[unsigned]}" "${backup[signed]}" "$(pct "${backup[unsigned]}" "${backup[signed]}")"
printf '| `restore` of %d MiB | %.3f | %.3f | %s %% |\n' "$MB" "${restore[unsigned]}" "${restore[signed]}" "$(pct "${restore[unsigned]}" "${restore[signed]}")"
