//! CRDs the harness installs that are not ours: Tekton's real `PipelineRun` CRD (from the
//! pinned Tekton module, see `scripts/install-tools.sh tekton-crds`), or a minimal one.

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::process::tool;

/// Tekton's own `pipelineruns.tekton.dev` CRD with its full OpenAPI schema, so the API server
/// validates every PipelineRun we create as a cluster with Tekton would. Its conversion webhook
/// is dropped: no webhook runs here, and `v1` (the storage version) never needs conversion.
pub fn tekton_pipelinerun_real() -> anyhow::Result<CustomResourceDefinition> {
    let path = tool("tekton-pipelinerun-crd.yaml", "tekton-crds")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut crd: CustomResourceDefinition =
        serde_saphyr::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    crd.spec.conversion = None;
    Ok(crd)
}

/// A minimal `pipelineruns.tekton.dev` CRD (`v1`, served and stored), like Tekton's own:
/// the schema preserves unknown fields and status is a subresource, so the controller (here the
/// simulator) writes conditions through `/status` exactly as Tekton does.
pub fn tekton_pipelinerun() -> CustomResourceDefinition {
    let crd = serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "pipelineruns.tekton.dev"},
        "spec": {
            "group": "tekton.dev",
            "names": {
                "kind": "PipelineRun",
                "plural": "pipelineruns",
                "singular": "pipelinerun",
                "listKind": "PipelineRunList",
                "shortNames": ["pr", "prs"],
                "categories": ["tekton", "tekton-pipelines"]
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true
                }},
                "additionalPrinterColumns": [
                    {"name": "Succeeded", "type": "string",
                     "jsonPath": ".status.conditions[?(@.type==\"Succeeded\")].status"},
                    {"name": "Reason", "type": "string",
                     "jsonPath": ".status.conditions[?(@.type==\"Succeeded\")].reason"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ]
            }]
        }
    });
    // The literal above is a valid CRD; a failure here is a bug in this file, caught by every test.
    serde_json::from_value(crd).expect("static Tekton CRD literal is valid")
}
