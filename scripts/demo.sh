#!/usr/bin/env bash
# End-to-end demo: starts the local environment (Redis + RedisJSON, etcd, kube-apiserver with
# Tekton's PipelineRun CRD from the pinned Tekton module), the stageTime server, creator and
# informer, and the Tekton simulator; submits examples/three-stages.json, follows it live, and
# shows the PipelineRuns it created.
# Everything runs on loopback and stops when the script exits.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/install-tools.sh redis etcd kube-apiserver tekton-crds
echo "==> building stageTime"
cargo build --quiet --bins

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/stagetime-demo.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # what, timeout seconds, command...
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what" >&2; tail -n 20 "$run_dir"/*.log >&2; exit 1; fi
    sleep 0.2
  done
}

echo "==> starting the local environment"
target/debug/stagetime-devenv --env-file "$run_dir/env" --namespace stagetime-demo >"$run_dir/devenv.log" 2>&1 &
pids+=($!)
wait_for "local environment" 180 test -f "$run_dir/env"
# shellcheck disable=SC1091
. "$run_dir/env"
export REDIS_URL KUBECONFIG PIPELINE_WORKSPACE=stagetime-demo

grpc_port=$(free_port)
export STAGETIME_SERVER="http://127.0.0.1:$grpc_port"
start() { # name, binary, args...
  local name=$1; shift
  "$@" >"$run_dir/$name.log" 2>&1 &
  pids+=($!)
}
start server target/debug/stagetime-server --port "$grpc_port" --bind 127.0.0.1 --admin-addr "127.0.0.1:$(free_port)"
start creator target/debug/stagetime-creator --consumer demo-creator --admin-addr "127.0.0.1:$(free_port)"
start informer target/debug/stagetime-informer --admin-addr "127.0.0.1:$(free_port)"
start tekton-sim target/debug/stagetime-tekton-sim --delay-ms "${SIM_DELAY_MS:-1500}"
wait_for "stagetime-server" 30 target/debug/stagetime list --limit 1

echo "==> submitting examples/three-stages.json"
id=$(target/debug/stagetime submit -f examples/three-stages.json)
echo "revision run: $id"
status=0
target/debug/stagetime watch "$id" || status=$?

echo
echo "==> kubectl get pipelineruns -L stagetime/stage"
kubectl get pipelineruns -n stagetime-demo -L stagetime/stage --sort-by=.metadata.labels.stagetime/stage
echo
target/debug/stagetime status "$id"
exit "$status"
