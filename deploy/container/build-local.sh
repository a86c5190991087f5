#!/usr/bin/env bash
# Builds the drctl image where no registry is reachable: the Debian base
# image is made here with debootstrap (from Debian's own mirror) and drctl
# is a binary built on this host (a bookworm host, so its glibc matches).
#
#   deploy/container/build-local.sh [--binary PATH] [--tag TAG] [--pg-major N]
#
# Extra flags for `podman build` go in CONTAINER_BUILD_FLAGS, e.g. on a host
# whose cgroups crun cannot use:
#   CONTAINER_BUILD_FLAGS="--runtime runc --network host" deploy/container/build-local.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=""
tag="localhost/drctl:local"
pg_major=15
base="localhost/debian:bookworm-minbase"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

while (($#)); do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --pg-major) pg_major=$2; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build-local.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "==> $*" >&2; }

command -v podman >/dev/null || { echo "build-local.sh: podman is not installed (apt-get install podman)" >&2; exit 1; }
if [[ -z $binary ]]; then
  say "building drctl (release)"
  (cd "$root" && cargo build --release --locked --bin drctl)
  binary="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/drctl"
fi
[[ -x $binary ]] || { echo "build-local.sh: $binary is not an executable" >&2; exit 1; }

read -r -a flags <<<"${CONTAINER_BUILD_FLAGS:-}"

if ! podman image exists "$base"; then
  command -v debootstrap >/dev/null || { echo "build-local.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  say "debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2
  # What debian:bookworm-slim also has: the security and updates suites.
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  say "importing it as $base"
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
fi

context=$(mktemp -d)
trap 'rm -rf "$context" ${rootfs:+"$rootfs"}' EXIT
install -D -m 0755 "$binary" "$context/bin/drctl"
say "building $tag (PostgreSQL $pg_major client tools)"
# --format docker keeps HEALTHCHECK, which the OCI format has no field for.
podman build "${flags[@]}" --format docker \
  -f "$here/Containerfile" \
  --build-arg DRCTL_FROM=prebuilt \
  --build-arg DEBIAN_IMAGE="$base" \
  --build-arg PG_MAJOR="$pg_major" \
  -t "$tag" "$context" >&2
echo "$tag"
