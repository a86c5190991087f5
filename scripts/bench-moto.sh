# shellcheck shell=bash
# Sourced by the small benchmarks (bench-copy.sh, bench-rotate.sh): a work
# directory and a moto S3 server on a free port of 127.0.0.1, both removed
# on exit. Sets `work` and `endpoint`, and exports the AWS CLI's settings
# for that server.

work=$(mktemp -d)
moto_pid=
cleanup() {
  if [[ -n $moto_pid ]]; then kill "$moto_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
  AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null \
  AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_PAGER='' NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endpoint=http://127.0.0.1:$port
if command -v moto_server >/dev/null; then moto=(moto_server); else moto=(python3 -m moto.server); fi
"${moto[@]}" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 100); do curl -fsS "$endpoint" >/dev/null 2>&1 && break; sleep 0.2; done
