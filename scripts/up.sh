#!/usr/bin/env bash
# `./taskw up`: the whole local stack (see scripts/stack.sh), kept running until Ctrl-C or
# SIGTERM, then stopped completely. Try `kubectl apply` and `grpcurl` by hand meanwhile.
set -euo pipefail
# shellcheck source=stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
start_stack
# A registry on loopback for `./taskw image` (blobs kept in .tools/registry across runs).
registry=${STAGETIME_REGISTRY:-127.0.0.1:5001}
"$root/scripts/install-tools.sh" crane >/dev/null 2>&1 || true
if [ -x "$root/.tools/bin/crane" ] && ! "$root/.tools/bin/crane" catalog --insecure "$registry" >/dev/null 2>&1; then
  mkdir -p "$root/.tools/registry"
  start registry "$root/.tools/bin/crane" registry serve --address "$registry" --disk "$root/.tools/registry"
fi
forge_lines=""
if [ -n "${GITEA_URL:-}" ]; then
  forge_lines="export GITEA_URL=$GITEA_URL
export GITEA_USER=$GITEA_USER
export GITEA_TOKEN=$GITEA_TOKEN
"
fi
cat <<MSG

stageTime is up (namespace $namespace). In another shell:

export KUBECONFIG=$KUBECONFIG
export STAGETIME_SERVER=$STAGETIME_SERVER
export STAGETIME_HOOKS=$STAGETIME_HOOKS
export STAGETIME_WEB=$STAGETIME_WEB
${forge_lines}
  kubectl apply -n $namespace -f examples/revisionrun.yaml && kubectl get rr -n $namespace -w
  grpcurl -plaintext -d @ ${STAGETIME_SERVER#http://} stagetime.v1.RevisionRuns/Create < examples/typed-create.json
  target/debug/stagetime list
  # the web view (no sign-in: this local server runs with --auth none): $STAGETIME_WEB
  STAGETIME_REGISTRY=$registry ./taskw image    # the OCI image, pushed to the registry here
MSG
if [ -n "${GITEA_URL:-}" ]; then
  cat <<MSG
  # commit statuses on Gitea: a repository, a token Secret, a Repo with spec.provider
  # (docs/forge.md walks through it)
  curl -s -H "authorization: token \$GITEA_TOKEN" -H content-type:application/json \\
    -d '{"name":"app","auto_init":true}' \$GITEA_URL/api/v1/user/repos
  # pushes that start runs: a webhook to \$STAGETIME_HOOKS/hooks/gitea/$namespace/app
MSG
fi
cat <<MSG

Ctrl-C stops everything.
MSG
while true; do
  # Idle until a signal ends the script (the trap stops every service).
  sleep 3600 &
  wait $! || true
done
