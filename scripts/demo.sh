#!/usr/bin/env bash
# End-to-end demo: starts the local stack (scripts/stack.sh), applies examples/revisionrun.yaml
# (a Repo, three PipelineRunTemplates and a RevisionRun of three stages, one run allowed to
# fail), follows the revision run live, and ends with `kubectl get revisionruns`.
# STAGETIME_TEKTON=real runs it on the real Tekton controller (examples/revisionrun-tekton.yaml)
# and ends with `kubectl get pipelineruns` and `kubectl get taskruns` too.
# Everything runs on loopback and stops when the script exits.
set -euo pipefail
# shellcheck source=stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
start_stack

example=examples/revisionrun.yaml
[ "${STAGETIME_TEKTON:-sim}" = real ] && example=examples/revisionrun-tekton.yaml
echo "==> kubectl apply -f $example"
kubectl apply -n "$namespace" -f "$example"
rr_field() { kubectl get revisionrun -n "$namespace" three-stages -o "jsonpath={.status.$1}"; }
has() { [ -n "$(rr_field "$1")" ]; }
wait_for "the operator to submit the RevisionRun" 60 has revisionRunId
id=$(rr_field revisionRunId)
echo "revision run: $id"
if [ -n "${STAGETIME_WEB:-}" ]; then echo "in the browser: $STAGETIME_WEB/runs/$id"; fi
status=0
target/debug/stagetime watch "$id" || status=$?

# The status mirror writes the final phase right after the run ends.
wait_for "the RevisionRun's final phase" 30 has completionTime
echo
echo "==> kubectl get revisionruns"
kubectl get revisionruns -n "$namespace" -o wide
echo
echo "==> kubectl get pipelineruns -L stagetime/stage"
kubectl get pipelineruns -n "$namespace" -L stagetime/stage --sort-by=.metadata.labels.stagetime/stage
if [ "${STAGETIME_TEKTON:-sim}" = real ]; then
  echo
  echo "==> kubectl get taskruns"
  kubectl get taskruns -n "$namespace"
fi
echo
target/debug/stagetime status "$id"
echo "RevisionRun phase: $(rr_field phase)"
exit "$status"
