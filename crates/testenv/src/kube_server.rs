//! etcd + kube-apiserver on loopback (a real control plane, as envtest runs it), or an existing
//! cluster when `KUBECONFIG` and `STAGETIME_USE_EXISTING_CLUSTER=1` are set.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
};

use crate::process::{Supervised, free_port, scratch_dir, tool};

const FIELD_MANAGER: &str = "stagetime-testenv";
const TOKEN: &str = "stagetime-test-admin-token";

/// The control plane processes we started.
struct ControlPlane {
    dir: PathBuf,
    _etcd: Supervised,
    apiserver: Mutex<Option<Supervised>>,
    apiserver_args: Vec<String>,
}

/// Access to a Kubernetes API server for tests.
pub struct KubeEnv {
    kubeconfig: PathBuf,
    plane: Option<ControlPlane>,
}

impl KubeEnv {
    /// Uses the cluster of `KUBECONFIG` when `STAGETIME_USE_EXISTING_CLUSTER=1`, else starts
    /// etcd and kube-apiserver.
    pub async fn from_env_or_start() -> anyhow::Result<Self> {
        if std::env::var("STAGETIME_USE_EXISTING_CLUSTER").as_deref() == Ok("1") {
            let kubeconfig = std::env::var_os("KUBECONFIG")
                .map(PathBuf::from)
                .context("STAGETIME_USE_EXISTING_CLUSTER=1 needs KUBECONFIG")?;
            let env = Self {
                kubeconfig,
                plane: None,
            };
            env.client().await?.apiserver_version().await?;
            return Ok(env);
        }
        Self::start().await
    }

    /// Starts etcd and kube-apiserver on free loopback ports and waits until the API answers.
    pub async fn start() -> anyhow::Result<Self> {
        let etcd_bin = tool("etcd", "etcd")?;
        let apiserver_bin = tool("kube-apiserver", "kube-apiserver")?;
        let dir = scratch_dir("kube")?;
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        let etcd = Supervised::spawn("etcd", &etcd_bin, &etcd_args, &dir.join("etcd.log"), None)?;
        write_auth_files(&dir)?;
        let port = free_port()?;
        let apiserver_args = apiserver_args(&dir, &client_url, port);
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(port))?;
        let env = Self {
            kubeconfig,
            plane: Some(ControlPlane {
                dir,
                _etcd: etcd,
                apiserver: Mutex::new(None),
                apiserver_args,
            }),
        };
        env.start_apiserver(&apiserver_bin).await?;
        Ok(env)
    }

    async fn start_apiserver(&self, bin: &Path) -> anyhow::Result<()> {
        let plane = self.plane.as_ref().context("not a local control plane")?;
        let process = Supervised::spawn(
            "kube-apiserver",
            bin,
            &plane.apiserver_args,
            &plane.dir.join("kube-apiserver.log"),
            None,
        )?;
        let ready = self.wait_ready(Duration::from_secs(90)).await;
        if let Err(error) = ready {
            let tail = process.log_tail();
            return Err(error.context(tail));
        }
        *plane
            .apiserver
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = Some(process);
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_for(
            "kube-apiserver to serve the default namespace",
            timeout,
            || async {
                let client = self.client().await.ok()?;
                Api::<Namespace>::all(client).get("default").await.ok()
            },
        )
        .await
        .map(|_| ())
    }

    /// Stops the API server (etcd keeps the data); [`KubeEnv::restart_apiserver`] brings it back.
    pub fn stop_apiserver(&self) -> anyhow::Result<()> {
        let plane = self.plane.as_ref().context("not a local control plane")?;
        if let Some(mut p) = plane
            .apiserver
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .take()
        {
            p.stop();
        }
        Ok(())
    }

    /// Starts the API server again on the same port with the same data.
    pub async fn restart_apiserver(&self) -> anyhow::Result<()> {
        self.stop_apiserver()?;
        self.start_apiserver(&tool("kube-apiserver", "kube-apiserver")?)
            .await
    }

    /// Path of a kubeconfig for this API server (for child processes and kubectl).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client on the caller's runtime.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The API server's address (host and port of the kubeconfig's server URL).
    pub fn apiserver_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let server = kubeconfig
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .ok_or_else(|| anyhow::anyhow!("kubeconfig names no server"))?;
        let authority = server
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default();
        authority
            .parse()
            .map_err(|e| anyhow::anyhow!("server {server:?} is not https://<ip>:<port>: {e}"))
    }

    /// A client that reaches the API server through `addr` (e.g. a [`crate::proxy::SlowProxy`]).
    pub async fn client_via(&self, addr: std::net::SocketAddr) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        config.cluster_url = format!("https://{addr}").parse()?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A kubeconfig file (beside [`Self::kubeconfig`]) whose server is `addr` — e.g. a
    /// [`crate::proxy::SlowProxy`] in front of this API server — for child processes.
    pub fn kubeconfig_via(&self, addr: std::net::SocketAddr) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let server = format!("https://{}", self.apiserver_addr()?);
        anyhow::ensure!(text.contains(&server), "kubeconfig does not name {server}");
        let path = self
            .kubeconfig
            .with_file_name(format!("kubeconfig-via-{}", addr.port()));
        std::fs::write(&path, text.replace(&server, &format!("https://{addr}")))?;
        Ok(path)
    }

    /// Applies CRDs and waits until each is established and its resource is served.
    pub async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for crd in crds {
            let name = crd.name_any();
            let mut body = crd.clone();
            body.metadata.managed_fields = None;
            body.metadata.resource_version = None;
            api.patch(&name, &params, &Patch::Apply(&body))
                .await
                .with_context(|| format!("apply CRD {name}"))?;
            for version in crd.spec.versions.iter().filter(|v| v.served) {
                let gvk =
                    GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
                let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
                let dynamic: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
                crate::wait_for(
                    &format!("CRD {name} to be served"),
                    Duration::from_secs(30),
                    || {
                        let dynamic = dynamic.clone();
                        async move { dynamic.list(&ListParams::default().limit(1)).await.ok() }
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Creates (or keeps) a namespace.
    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client().await?);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        api.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&ns))
            .await
            .with_context(|| format!("create namespace {name}"))?;
        Ok(())
    }
}

fn write_auth_files(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{TOKEN},stagetime-admin,stagetime-admin,system:masters\n"),
    )?;
    let key = dir.join("sa.key");
    let status = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .context("run openssl (install it with: apt-get install -y openssl)")?;
    if !status.success() {
        bail!("openssl genrsa failed: {status}");
    }
    Ok(())
}

fn apiserver_args(dir: &Path, etcd_url: &str, port: u16) -> Vec<String> {
    let key = dir.join("sa.key").display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--cert-dir={}", dir.join("certs").display()),
        format!("--secure-port={port}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--token-auth-file={}", dir.join("tokens.csv").display()),
        "--authorization-mode=RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={key}"),
        format!("--service-account-signing-key-file={key}"),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--allow-privileged=true".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        "--enable-priority-and-fairness=false".into(),
        "--endpoint-reconciler-type=none".into(),
        "--profiling=false".into(),
        "-v=0".into(),
    ]
}

fn kubeconfig_yaml(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: stagetime-test
  cluster:
    server: https://127.0.0.1:{port}
    insecure-skip-tls-verify: true
users:
- name: stagetime-admin
  user:
    token: {TOKEN}
contexts:
- name: stagetime-test
  context:
    cluster: stagetime-test
    user: stagetime-admin
    namespace: default
current-context: stagetime-test
"
    )
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        if let Some(plane) = self.plane.take() {
            drop(plane.apiserver.lock().map(|mut p| p.take()));
            let dir = plane.dir.clone();
            drop(plane);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
