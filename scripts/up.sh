#!/usr/bin/env bash
# `./taskw up`: the whole local stack (see scripts/stack.sh), kept running until Ctrl-C or
# SIGTERM, then stopped completely. Try `kubectl apply` and `grpcurl` by hand meanwhile.
set -euo pipefail
# shellcheck source=stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
start_stack
cat <<MSG

stageTime is up (namespace $namespace). In another shell:

export KUBECONFIG=$KUBECONFIG
export STAGETIME_SERVER=$STAGETIME_SERVER

  kubectl apply -n $namespace -f examples/revisionrun.yaml && kubectl get rr -n $namespace -w
  grpcurl -plaintext -d @ ${STAGETIME_SERVER#http://} stagetime.v1.RevisionRuns/Create < examples/typed-create.json
  target/debug/stagetime list

Ctrl-C stops everything.
MSG
while true; do
  # Idle until a signal ends the script (the trap stops every service).
  sleep 3600 &
  wait $! || true
done
