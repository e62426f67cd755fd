# Sourced by up.sh and demo.sh: starts the whole local stack on loopback — Redis with RedisJSON,
# etcd, kube-apiserver with Tekton's PipelineRun CRD and stageTime's CRDs, the stageTime server,
# creator, informer and operator, and the Tekton simulator — and stops it all on exit.
# SIM_DELAY_MS sets the simulator's run time per PipelineRun (default 1500).
# STAGETIME_TEKTON=real replaces the simulator with the real Tekton controller, plus
# kube-controller-manager, kube-scheduler and a kwok node for its pods (built once, cached).
# STAGETIME_FORGE=gitea also starts a Gitea on loopback (GITEA_URL, GITEA_USER, GITEA_TOKEN).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
namespace=stagetime-demo

scripts/install-tools.sh redis etcd kube-apiserver tekton-crds
if [ "${STAGETIME_TEKTON:-sim}" = real ]; then
  scripts/install-tools.sh kube-controller-manager kube-scheduler kwok tekton
fi
if [ "${STAGETIME_FORGE:-}" = gitea ]; then
  scripts/install-tools.sh gitea
fi
echo "==> building stageTime"
cargo build --quiet --bins

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/stagetime-local.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # what, timeout seconds, command...
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what" >&2; tail -n 20 "$run_dir"/*.log >&2; exit 1; fi
    sleep 0.2
  done
}
start() { # name, binary, args...
  local name=$1; shift
  "$@" >"$run_dir/$name.log" 2>&1 &
  pids+=($!)
}

start_stack() {
  echo "==> starting the local environment"
  start devenv target/debug/stagetime-devenv --env-file "$run_dir/env" --namespace "$namespace"
  wait_for "local environment" 180 test -f "$run_dir/env"
  # shellcheck disable=SC1091
  . "$run_dir/env"
  export REDIS_URL KUBECONFIG PIPELINE_WORKSPACE=$namespace
  if [ -n "${GITEA_URL:-}" ]; then export GITEA_URL GITEA_USER GITEA_TOKEN; fi
  grpc_port=$(free_port)
  export STAGETIME_SERVER="http://127.0.0.1:$grpc_port"
  # Local development only: no authentication on loopback.
  start server target/debug/stagetime-server --auth none --port "$grpc_port" --bind 127.0.0.1 --admin-addr "127.0.0.1:$(free_port)"
  start creator target/debug/stagetime-creator --consumer local-creator --admin-addr "127.0.0.1:$(free_port)"
  start informer target/debug/stagetime-informer --admin-addr "127.0.0.1:$(free_port)"
  # Branch heads only from loopback Git servers: nothing here talks to another host.
  hooks_port=$(free_port)
  export STAGETIME_HOOKS="http://127.0.0.1:$hooks_port"
  start operator target/debug/stagetime-operator --admin-addr "127.0.0.1:$(free_port)" \
    --lease-namespace "$namespace" --git-allowed-hosts 127.0.0.1,localhost \
    --hooks-addr "127.0.0.1:$hooks_port"
  web_port=$(free_port)
  export STAGETIME_WEB="http://127.0.0.1:$web_port"
  start web target/debug/stagetime-web --bind 127.0.0.1 --port "$web_port"
  if [ "${STAGETIME_TEKTON:-sim}" != real ]; then
    start tekton-sim target/debug/stagetime-tekton-sim --delay-ms "${SIM_DELAY_MS:-1500}"
  fi
  wait_for "stagetime-server" 30 target/debug/stagetime list --limit 1
  echo "    logs: $run_dir/*.log"
}
