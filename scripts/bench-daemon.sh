#!/usr/bin/env bash
# Idle cost of `drctl daemon`: CPU per hour and memory with many policies.
#
#   scripts/bench-daemon.sh [POLICIES] [SECONDS]     (defaults: 200, 600)
#
# Makes a throwaway workspace with a local repository and POLICIES files
# policies (each backing up one small file, schedule @daily, RPO 26h), starts
# two daemons on it:
#   - "idle": nobody talks to it;
#   - "scraped": GET /metrics and /health every 15 s, as Prometheus and a
#     load balancer would;
# waits until the start-up catch-up backups are done, then measures each
# daemon's user+system CPU over SECONDS from /proc/PID/stat, and its RSS
# (VmRSS now, VmHWM peak). Prints a Markdown table for docs/benchmarks.md.
#
# Both daemons share the repository; their backups at start-up take turns
# through the policies' leases, which is part of what start-up costs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

POLICIES=${1:-200}
SECONDS_TO_MEASURE=${2:-600}

cargo build --release --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
DRCTL=$target_dir/release/drctl

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cd "$work"
mkdir -p policies data
echo "listen 8080" > data/app.conf
recipient=$("$DRCTL" key generate --out identity.age 2>/dev/null)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
idle_port=$(free_port)
scraped_port=$(free_port)
for name in idle scraped; do
  port_var=${name}_port
  cat > "$name.toml" <<EOF
[repository]
url = "file://repo"
[encryption]
recipients = ["$recipient"]
identity_file = "identity.age"
[daemon]
listen = "127.0.0.1:${!port_var}"
EOF
done
for i in $(seq -w 1 "$POLICIES"); do
  cat > "policies/p$i.toml" <<EOF
[source]
type = "files"
paths = ["$work/data"]
[schedule]
backup = "@daily"
rpo_target = "26h"
[retention]
keep_daily = 7
EOF
done
"$DRCTL" --config idle.toml init >/dev/null

"$DRCTL" --config idle.toml daemon 2> idle.log &
pids+=($!); idle_pid=$!
"$DRCTL" --config scraped.toml daemon 2> scraped.log &
pids+=($!); scraped_pid=$!

echo "waiting for the start-up backups of $POLICIES policies..." >&2
started=$(date +%s)
until [[ $(find repo/backups -name manifest.json 2>/dev/null | wc -l) -ge $POLICIES ]] &&
  curl -sf "127.0.0.1:$idle_port/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(any(p["backup"]["running"] for p in s["policies"].values()))' &&
  curl -sf "127.0.0.1:$scraped_port/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(any(p["backup"]["running"] for p in s["policies"].values()))'; do
  sleep 1
  if (($(date +%s) - started > 600)); then echo "start-up did not finish in 10 minutes" >&2; exit 1; fi
done
startup=$(($(date +%s) - started))
sleep 5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)
i0=$(cpu_ticks "$idle_pid")
s0=$(cpu_ticks "$scraped_pid")
echo "measuring for $SECONDS_TO_MEASURE s..." >&2
end=$(($(date +%s) + SECONDS_TO_MEASURE))
while (($(date +%s) < end)); do
  curl -sf -o /dev/null "127.0.0.1:$scraped_port/metrics"
  curl -s -o /dev/null "127.0.0.1:$scraped_port/health"
  sleep 15
done
i1=$(cpu_ticks "$idle_pid")
s1=$(cpu_ticks "$scraped_pid")
per_hour() { python3 -c "print(f'{($2 - $1) / $hz * 3600 / $SECONDS_TO_MEASURE:.2f}')"; }
mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }

series=$(curl -sf "127.0.0.1:$scraped_port/metrics" | grep -vc '^#')
echo
echo "$POLICIES policies, measured over $SECONDS_TO_MEASURE s after a start-up of ${startup} s; /metrics has $series series."
echo
echo "| daemon | CPU per hour (user+sys) | RSS now | RSS peak |"
echo "| --- | --- | --- | --- |"
echo "| idle | $(per_hour "$i0" "$i1") s | $(mib "$(kib "$idle_pid" VmRSS)") MiB | $(mib "$(kib "$idle_pid" VmHWM)") MiB |"
echo "| scraped every 15 s | $(per_hour "$s0" "$s1") s | $(mib "$(kib "$scraped_pid" VmRSS)") MiB | $(mib "$(kib "$scraped_pid" VmHWM)") MiB |"
