//! The real Tekton Pipelines controller on the test API server (with [`crate::workloads`]: its
//! TaskRun pods are scheduled onto the kwok node, which completes or fails them by task name —
//! see `tools/kwok/tekton-stages.yaml`).
//!
//! Installed from the pinned Tekton module (`scripts/install-tools.sh tekton`): every Tekton CRD
//! (server-side apply; conversion webhooks dropped — there is no webhook, so only `tekton.dev/v1`
//! is usable, as on a cluster that never served older versions), the `config-*` ConfigMaps in
//! `tekton-pipelines`, and the controller out of cluster with our kubeconfig. Tekton's admission
//! webhook is not run: the API server could only reach it through a Service whose Endpoints are
//! not loopback addresses, so PipelineRuns are validated by the CRD schema alone. The remote
//! resolvers run too (built with `tools/tekton/resolvers-no-health-probes.patch`), so a
//! PipelineRun can name its Pipeline in a Git repository — on a loopback Git server.
//!
//! knative opens a health-probe port (8080) that no flag moves: one controller per machine, so
//! the tests that need it live in one test binary.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use k8s_openapi::{
    api::core::v1::ConfigMap,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};

use crate::{
    kube_server::KubeEnv,
    process::{Supervised, free_port, scratch_dir, tool, tools_dir},
    wait_for,
};

/// Tekton's system namespace.
pub const SYSTEM_NAMESPACE: &str = "tekton-pipelines";
/// The resolvers' namespace.
pub const RESOLVERS_NAMESPACE: &str = "tekton-pipelines-resolvers";

/// The running Tekton controller and resolvers (stopped on drop).
pub struct Tekton {
    controller: Supervised,
    resolvers: Supervised,
}

fn config_dir() -> PathBuf {
    tools_dir().join("../tekton")
}

/// Tekton's CRDs from the pinned module, without conversion webhooks.
pub fn crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    tool("tekton-controller", "tekton")?;
    let dir = config_dir().join("crds");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            let mut crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
                .with_context(|| format!("parse {}", path.display()))?;
            crd.spec.conversion = None;
            out.push(crd);
        }
    }
    Ok(out)
}

/// Tekton's `config-*` ConfigMaps, with the affinity assistant off (`coschedule: disabled`: no
/// StatefulSet per PipelineRun with workspaces).
fn config_maps(dir: &std::path::Path) -> anyhow::Result<Vec<ConfigMap>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.contains("config") && name.ends_with(".yaml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for doc in text.split("\n---") {
            if doc
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                continue;
            }
            let mut cm: ConfigMap =
                serde_saphyr::from_str(doc).with_context(|| format!("parse {}", path.display()))?;
            if cm.metadata.name.as_deref() == Some("feature-flags") {
                cm.data
                    .get_or_insert_with(Default::default)
                    .insert("coschedule".into(), "disabled".into());
            }
            out.push(cm);
        }
    }
    Ok(out)
}

impl Tekton {
    /// Installs Tekton's CRDs and configuration, starts the controller and waits until a probe
    /// PipelineRun succeeds (so the controller, scheduler and kwok all work).
    pub async fn start(kube: &KubeEnv) -> anyhow::Result<Self> {
        kube.install_crds(&crds()?).await?;
        kube.create_namespace(SYSTEM_NAMESPACE).await?;
        kube.create_namespace(RESOLVERS_NAMESPACE).await?;
        let client = kube.client().await?;
        let mut maps = config_maps(&config_dir())?;
        maps.extend(config_maps(&config_dir().join("resolvers"))?);
        for cm in maps {
            let name = cm.metadata.name.clone().unwrap_or_default();
            let namespace = cm
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| SYSTEM_NAMESPACE.to_string());
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            api.patch(
                &name,
                &PatchParams::apply("stagetime-testenv").force(),
                &Patch::Apply(&cm),
            )
            .await
            .with_context(|| format!("apply ConfigMap {name}"))?;
        }
        let dir = scratch_dir("tekton")?;
        let image_flags = [
            "-entrypoint-image",
            "-nop-image",
            "-sidecarlogresults-image",
            "-workingdirinit-image",
            "-shell-image",
            "-shell-image-win",
        ];
        // Images are never pulled (kwok runs no containers); any name will do.
        let mut args = vec![
            format!("-kubeconfig={}", kube.kubeconfig().display()),
            "-disable-ha".into(),
        ];
        for flag in image_flags {
            args.push(flag.into());
            args.push("stagetime.invalid/none".into());
        }
        let env = [
            ("SYSTEM_NAMESPACE", SYSTEM_NAMESPACE),
            ("KUBERNETES_MIN_VERSION", "v1.28.0"),
            ("CONFIG_DEFAULTS_NAME", "config-defaults"),
            ("CONFIG_LOGGING_NAME", "config-logging"),
            ("CONFIG_OBSERVABILITY_NAME", "config-observability"),
            ("CONFIG_FEATURE_FLAGS_NAME", "feature-flags"),
            (
                "CONFIG_LEADERELECTION_NAME",
                "config-leader-election-controller",
            ),
            ("CONFIG_SPIRE", "config-spire"),
            ("METRICS_DOMAIN", "tekton.dev/pipeline"),
        ];
        let controller = Supervised::spawn_with_env(
            "tekton-controller",
            &tool("tekton-controller", "tekton")?,
            &env,
            &args,
            &dir.join("tekton-controller.log"),
        )?;
        // The resolvers: another knative binary, so its metrics and profiling ports move to free
        // ones (knative reads them from the environment; they bind every interface).
        let metrics_port = free_port()?.to_string();
        let profiling_port = free_port()?.to_string();
        let env = [
            ("SYSTEM_NAMESPACE", RESOLVERS_NAMESPACE),
            ("KUBERNETES_MIN_VERSION", "v1.28.0"),
            ("CONFIG_LOGGING_NAME", "config-logging"),
            ("CONFIG_OBSERVABILITY_NAME", "config-observability"),
            ("CONFIG_FEATURE_FLAGS_NAME", "feature-flags"),
            (
                "CONFIG_LEADERELECTION_NAME",
                "config-leader-election-resolvers",
            ),
            ("METRICS_DOMAIN", "tekton.dev/resolution"),
            ("METRICS_PROMETHEUS_PORT", metrics_port.as_str()),
            ("PROFILING_PORT", profiling_port.as_str()),
        ];
        let resolvers = Supervised::spawn_with_env(
            "tekton-resolvers",
            &tool("tekton-resolvers", "tekton")?,
            &env,
            &[format!("-kubeconfig={}", kube.kubeconfig().display())],
            &dir.join("tekton-resolvers.log"),
        )?;
        let tekton = Self {
            controller,
            resolvers,
        };
        probe(kube).await.map_err(|e| {
            e.context(format!(
                "{}\n{}",
                tekton.controller.log_tail(),
                tekton.resolvers.log_tail()
            ))
        })?;
        Ok(tekton)
    }
}

/// A one-task PipelineRun in its own namespace must succeed.
async fn probe(kube: &KubeEnv) -> anyhow::Result<()> {
    let ns = "tekton-probe";
    kube.create_namespace(ns).await?;
    let client = kube.client().await?;
    let api = stagetime_common::tekton::pipelinerun_api(client, "tekton.dev/v1", ns);
    let name = format!("probe-{}", std::process::id());
    let pr: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": { "name": name },
        "spec": { "pipelineSpec": { "tasks": [{
            "name": "probe",
            "taskSpec": { "steps": [{ "name": "probe", "image": "busybox", "command": ["true"] }] },
        }]}},
    }))?;
    match api.create(&PostParams::default(), &pr).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("create the probe PipelineRun"),
    }
    wait_for(
        "Tekton to run a probe PipelineRun",
        Duration::from_secs(120),
        || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let pr = api.get(&name).await.ok()?;
                let status = pr.data["status"]["conditions"][0]["status"].as_str()?;
                (status == "True").then_some(())
            }
        },
    )
    .await
}
