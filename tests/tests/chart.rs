//! The Helm chart, rendered by helmfile as users deploy it, is accepted by the real API server
//! (server-side dry-run apply with kubectl).

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use stagetime_testenv::{TestEnv, process::tool};

/// helmfile from the repository root, finding the installed helm first on `PATH`.
fn helmfile() -> anyhow::Result<Command> {
    let helm = tool("helm", "helm")?;
    let path = format!(
        "{}:{}",
        helm.parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(tool("helmfile", "helmfile")?);
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("PATH", path)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("stagetime-helm-cache"),
        );
    Ok(cmd)
}

#[tokio::test]
async fn helmfile_template_renders_manifests_the_api_server_accepts() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    env.kube.create_namespace("stagetime").await?;
    // The creator's Role lives where its PipelineRuns go (env/defaults.yaml).
    env.kube.create_namespace("tekton-pipelines").await?;
    let rendered = helmfile()?
        .args(["--file", "helmfile.yaml", "template", "--skip-deps"])
        .output()?;
    anyhow::ensure!(
        rendered.status.success(),
        "helmfile template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let yaml = String::from_utf8(rendered.stdout)?;
    for kind in [
        "Deployment",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
    ] {
        assert!(
            yaml.contains(&format!("kind: {kind}")),
            "no {kind} rendered"
        );
    }
    assert!(
        yaml.contains("/usr/local/bin/stagetime-creator")
            && yaml.contains("name: INFORMING_NAMESPACE")
            && yaml.contains("/usr/local/bin/stagetime-operator")
            && yaml.contains("resources: [\"revisionruns/status\"]")
    );

    let kubectl_ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    anyhow::ensure!(
        kubectl_ok,
        "kubectl is missing (install it with: apt-get install -y kubectl)"
    );
    let mut child = Command::new("kubectl")
        .args(["apply", "--dry-run=server", "-f", "-"])
        .env("KUBECONFIG", env.kube.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("deployment.apps/stagetime-creator created (server dry run)"),
        "{stdout}"
    );
    Ok(())
}

fn helm_template(sets: &[&str]) -> anyhow::Result<std::process::Output> {
    let helm = tool("helm", "helm")?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut cmd = Command::new(&helm);
    cmd.args([
        "template",
        "st",
        "charts/stagetime",
        "--namespace",
        "stagetime",
    ])
    .current_dir(root)
    .env(
        "HELM_CACHE_HOME",
        std::env::temp_dir().join("stagetime-helm-cache"),
    );
    for set in sets {
        cmd.args(["--set", set]);
    }
    Ok(cmd.output()?)
}

/// Nothing insecure renders unless asked for by name: no Redis password, an unauthenticated
/// API, token auth without tokens are refused with a message saying what to set. The server's
/// ServiceAccount mounts a token only for Kubernetes authentication.
#[test]
fn the_chart_refuses_insecure_values_unless_asked_for() -> anyhow::Result<()> {
    for (sets, says) in [
        (&[][..], "redis.existingSecret is required"),
        (
            &["redis.existingSecret=r", "server.auth=none"][..],
            "server.allowUnauthenticated=true",
        ),
        (
            &["redis.existingSecret=r", "server.auth=token"][..],
            "server.tokenSecret",
        ),
        // values.schema.json: bad values fail before anything renders.
        (
            &["redis.existingSecret=r", "server.auth=kerberos"][..],
            "server.auth must be one of",
        ),
        (
            &["redis.existingSecret=r", "creator.replicas=-1"][..],
            "creator.replicas",
        ),
        (
            &["redis.existingSecret=r", "sever.auth=none"][..],
            "Additional property sever is not allowed",
        ),
        // Unknown keys are refused at every level: a typo never silently allows everything.
        (
            &["redis.existingSecret=r", "server.allowedResolver={git}"][..],
            "Additional property allowedResolver is not allowed",
        ),
        (
            &["redis.existingSecret=r", "tekton.namespace=x"][..],
            "Additional property namespace is not allowed",
        ),
        // An informer watch narrower than the namespaces runs may use would never see some
        // runs finish: the default namespace, a listed one, the creator's override.
        (
            &[
                "redis.existingSecret=r",
                "tekton.namespaces={team-a}",
                "tekton.informingNamespace=team-a",
            ][..],
            "tekton.informingNamespace=team-a is narrower",
        ),
        (
            &["redis.existingSecret=r", "server.tls.generate=false"][..],
            "server.tls.insecurePlaintext=true",
        ),
        (
            &["redis.existingSecret=r", "operator.readRepoSecrets=true"][..],
            "operator.readRepoSecrets needs operator.secretNamespaces",
        ),
        (
            &[
                "redis.existingSecret=r",
                "tekton.pipelineNamespace=team-a",
                "tekton.namespaceOverride=team-b",
                "tekton.informingNamespace=team-a",
            ][..],
            "team-b is one",
        ),
    ] {
        let out = helm_template(sets)?;
        assert!(!out.status.success(), "{sets:?} rendered");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{sets:?}: {stderr}");
    }
    let local = helm_template(&[
        "redis.insecureLocalDevelopment=true",
        "server.auth=none",
        "server.allowUnauthenticated=true",
    ])?;
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let local = String::from_utf8(local.stdout)?;
    assert!(local.contains("automountServiceAccountToken: false"));
    assert!(!local.contains("system:auth-delegator"));
    // TLS by default: a generated certificate, the operator on https verifying it with a
    // token of stageTime's audience.
    for expected in [
        "name: st-stagetime-server-tls",
        "https://stagetime-server:50051",
        "/etc/stagetime/server-ca/ca.crt",
        "audience: \"stagetime\"",
        "name: STAGETIME_AUTH_AUDIENCE",
    ] {
        assert!(local.contains(expected), "{expected} missing by default");
    }
    let plaintext = helm_template(&[
        "redis.existingSecret=r",
        "server.tls.generate=false",
        "server.tls.insecurePlaintext=true",
    ])?;
    let plaintext = String::from_utf8(plaintext.stdout)?;
    assert!(plaintext.contains("http://stagetime-server:50051"));
    assert!(!plaintext.contains("stagetime-server-tls"));
    let secure = helm_template(&[
        "redis.existingSecret=r",
        "server.tls.secretName=tls",
        "server.tls.caSecretName=ca",
        "serviceMonitor.enabled=true",
    ])?;
    assert!(
        secure.status.success(),
        "{}",
        String::from_utf8_lossy(&secure.stderr)
    );
    let secure = String::from_utf8(secure.stdout)?;
    for expected in [
        "automountServiceAccountToken: true",
        "name: system:auth-delegator",
        "value: \"kubernetes\"",
        "https://stagetime-server:50051",
        "/etc/stagetime/tls/tls.crt",
        "kind: ServiceMonitor",
    ] {
        assert!(secure.contains(expected), "{expected} missing");
    }
    Ok(())
}

fn run_tool(
    program: &std::path::Path,
    args: &[&str],
    kubeconfig: &std::path::Path,
) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("stagetime-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("stagetime-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("stagetime-helm-data"),
        )
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "{} {args:?}: {text}",
        program.display()
    );
    Ok(text)
}

/// `kubectl auth can-i` as a ServiceAccount: "yes" or "no".
fn can_i(
    kubeconfig: &std::path::Path,
    ns: &str,
    sa: &str,
    verb: &str,
    resource: &str,
    target: &str,
) -> anyhow::Result<bool> {
    // `resource#sub` asks about a subresource.
    let (resource, sub) = resource.split_once('#').unwrap_or((resource, ""));
    let mut cmd = Command::new("kubectl");
    cmd.args(["auth", "can-i", verb, resource, "-n", target])
        .arg(format!("--as=system:serviceaccount:{ns}:{sa}"));
    if !sub.is_empty() {
        cmd.arg(format!("--subresource={sub}"));
    }
    let out = cmd.env("KUBECONFIG", kubeconfig).output()?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    anyhow::ensure!(
        matches!(answer.as_str(), "yes" | "no"),
        "can-i {verb} {resource}: {answer:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(answer == "yes")
}

/// A real `helm install` against the API server with RBAC on: every object is created, each
/// ServiceAccount can do exactly what its service needs (checked with `kubectl auth can-i`),
/// `helm upgrade` changes it and `helm uninstall` removes it.
#[tokio::test]
async fn helm_install_creates_every_object_with_least_privilege() -> anyhow::Result<()> {
    use k8s_openapi::api::{apps::v1::Deployment, rbac::v1::ClusterRole};
    let env = TestEnv::shared().await?;
    let ns = env.namespace("helm").await?;
    let runs = env.namespace("helm-runs").await?;
    let kubeconfig = env.kube.kubeconfig();
    let helm = tool("helm", "helm")?;
    let release = ns.clone();
    run_tool(
        &helm,
        &[
            "install",
            &release,
            "charts/stagetime",
            "--namespace",
            &ns,
            "--set",
            "redis.existingSecret=stagetime-redis",
            "--set",
            &format!("tekton.pipelineNamespace={runs}"),
        ],
        kubeconfig,
    )?;
    let client = env.kube_client().await?;
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
    let mut names: Vec<String> = deployments
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "stagetime-creator",
            "stagetime-informer",
            "stagetime-operator",
            "stagetime-server",
            "stagetime-web"
        ]
    );
    let sa = |name: &str| name.to_string();
    let kube_system = "kube-system".to_string();
    for (who, verb, resource, target, allowed) in [
        (
            sa("stagetime-creator"),
            "create",
            "pipelineruns.tekton.dev",
            &runs,
            true,
        ),
        (
            sa("stagetime-creator"),
            "patch",
            "pipelineruns.tekton.dev",
            &runs,
            true,
        ),
        (
            sa("stagetime-creator"),
            "delete",
            "pipelineruns.tekton.dev",
            &runs,
            false,
        ),
        (sa("stagetime-creator"), "get", "secrets", &runs, false),
        (
            sa("stagetime-creator"),
            "create",
            "pipelineruns.tekton.dev",
            &kube_system,
            false,
        ),
        (
            sa("stagetime-creator"),
            "create",
            "pipelineruns.tekton.dev",
            &ns,
            false,
        ),
        (
            sa("stagetime-informer"),
            "watch",
            "pipelineruns.tekton.dev",
            &runs,
            true,
        ),
        (
            sa("stagetime-informer"),
            "create",
            "pipelineruns.tekton.dev",
            &runs,
            false,
        ),
        // Housekeeping removes PipelineRuns by label selector only: deletecollection, no delete.
        (
            sa("stagetime-informer"),
            "deletecollection",
            "pipelineruns.tekton.dev",
            &runs,
            true,
        ),
        (
            sa("stagetime-informer"),
            "delete",
            "pipelineruns.tekton.dev",
            &runs,
            false,
        ),
        (
            sa("stagetime-informer"),
            "get",
            "taskruns.tekton.dev",
            &runs,
            true,
        ),
        (
            sa("stagetime-creator"),
            "get",
            "taskruns.tekton.dev",
            &runs,
            false,
        ),
        (
            sa("stagetime-informer"),
            "create",
            "leases.coordination.k8s.io",
            &ns,
            true,
        ),
        (sa("stagetime-informer"), "get", "secrets", &ns, false),
        (
            sa("stagetime-server"),
            "create",
            "tokenreviews.authentication.k8s.io",
            &ns,
            true,
        ),
        (
            sa("stagetime-server"),
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            &ns,
            true,
        ),
        (
            sa("stagetime-server"),
            "create",
            "pipelineruns.tekton.dev",
            &runs,
            false,
        ),
        (sa("stagetime-server"), "get", "secrets", &ns, false),
        // Logs: the runs' pods and their logs, nowhere else.
        (sa("stagetime-server"), "get", "pods#log", &runs, true),
        (sa("stagetime-server"), "list", "pods", &runs, true),
        (
            sa("stagetime-server"),
            "get",
            "pods#log",
            &kube_system,
            false,
        ),
        (sa("stagetime-server"), "delete", "pods", &runs, false),
        (sa("stagetime-informer"), "get", "pods#log", &runs, true),
        (sa("stagetime-creator"), "get", "pods#log", &runs, false),
        (sa("stagetime-web"), "get", "pods#log", &runs, false),
        (
            sa("stagetime-web"),
            "list",
            "revisionruns.stagetime.sthings.tiab.ssc.sva.de",
            &runs,
            false,
        ),
        (
            sa("stagetime-operator"),
            "patch",
            "revisionruns.stagetime.sthings.tiab.ssc.sva.de#status",
            &runs,
            true,
        ),
        (
            sa("stagetime-operator"),
            "update",
            "revisionruns.stagetime.sthings.tiab.ssc.sva.de#finalizers",
            &runs,
            true,
        ),
        (
            sa("stagetime-operator"),
            "list",
            "pipelineruntemplates.stagetime.sthings.tiab.ssc.sva.de",
            &runs,
            true,
        ),
        // Deletes the RevisionRuns its webhook receiver made once retention removed their
        // runs (it may patch them anyway).
        (
            sa("stagetime-operator"),
            "delete",
            "revisionruns.stagetime.sthings.tiab.ssc.sva.de",
            &runs,
            true,
        ),
        (
            sa("stagetime-operator"),
            "delete",
            "repos.stagetime.sthings.tiab.ssc.sva.de",
            &runs,
            false,
        ),
        (sa("stagetime-operator"), "get", "secrets", &runs, false),
        (
            sa("stagetime-operator"),
            "create",
            "pipelineruns.tekton.dev",
            &runs,
            false,
        ),
        (
            sa("stagetime-operator"),
            "update",
            "leases.coordination.k8s.io/stagetime-operator",
            &ns,
            true,
        ),
        (
            sa("stagetime-operator"),
            "update",
            "leases.coordination.k8s.io/someone-elses",
            &ns,
            false,
        ),
    ] {
        let answer = can_i(kubeconfig, &ns, &who, verb, resource, target)?;
        // The matrix, as `cargo test -- --nocapture` shows it.
        println!(
            "can-i {who:<20} {verb:<7} {resource:<60} -n {target:<24} {}",
            if answer { "yes" } else { "no" }
        );
        assert_eq!(answer, allowed, "{who} {verb} {resource} in {target}");
    }

    run_tool(
        &helm,
        &[
            "upgrade",
            &release,
            "charts/stagetime",
            "--namespace",
            &ns,
            "--set",
            "redis.existingSecret=stagetime-redis",
            "--set",
            &format!("tekton.pipelineNamespace={runs}"),
            "--set",
            "creator.replicas=3",
            "--set",
            "operator.readRepoSecrets=true",
            "--set",
            &format!("operator.secretNamespaces={{{runs}}}"),
            "--set",
            "networkPolicy.enabled=true",
        ],
        kubeconfig,
    )?;
    let creator = deployments.get("stagetime-creator").await?;
    assert_eq!(creator.spec.and_then(|s| s.replicas), Some(3));
    assert!(can_i(
        kubeconfig,
        &ns,
        "stagetime-operator",
        "get",
        "secrets",
        &runs
    )?);
    // Only there: Secrets are read per namespace, never cluster-wide.
    assert!(!can_i(
        kubeconfig,
        &ns,
        "stagetime-operator",
        "get",
        "secrets",
        &ns
    )?);
    let policies: kube::Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        kube::Api::namespaced(client.clone(), &ns);
    assert!(policies.get_opt("stagetime-server").await?.is_some());

    let roles: kube::Api<ClusterRole> = kube::Api::all(client.clone());
    let creator_roles: kube::Api<k8s_openapi::api::rbac::v1::Role> =
        kube::Api::namespaced(client, &runs);
    let informer_role = format!("{release}-stagetime-informer");
    let creator_role = format!("{release}-stagetime-creator");
    assert!(roles.get_opt(&informer_role).await?.is_some());
    assert!(creator_roles.get_opt(&creator_role).await?.is_some());
    assert!(
        roles.get_opt(&creator_role).await?.is_none(),
        "the creator has Roles in its namespaces, no ClusterRole"
    );
    run_tool(
        &helm,
        &["uninstall", &release, "--namespace", &ns],
        kubeconfig,
    )?;
    assert!(
        deployments
            .list(&Default::default())
            .await?
            .items
            .is_empty()
    );
    assert!(roles.get_opt(&informer_role).await?.is_none());
    assert!(creator_roles.get_opt(&creator_role).await?.is_none());
    Ok(())
}

/// With pods that really get scheduled and become Ready (kube-controller-manager, kube-scheduler
/// and a kwok node), `helm install --wait` returns only once every Deployment is available, and
/// `helmfile sync` of the `local` environment installs the same chart (and the optional Redis
/// release) as a user runs it.
#[tokio::test]
async fn helm_install_wait_sees_every_deployment_available() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    let env = TestEnv::shared().await?;
    let _workloads = stagetime_testenv::workloads::Workloads::start(&env.kube).await?;
    let ns = env.namespace("helm-wait").await?;
    let runs = env.namespace("helm-wait-runs").await?;
    let kubeconfig = env.kube.kubeconfig();
    let helm = tool("helm", "helm")?;
    let started = std::time::Instant::now();
    run_tool(
        &helm,
        &[
            "install",
            &ns,
            "charts/stagetime",
            "--namespace",
            &ns,
            "--set",
            "redis.existingSecret=stagetime-redis",
            "--set",
            &format!("tekton.pipelineNamespace={runs}"),
            "--wait",
            "--timeout",
            "3m",
        ],
        kubeconfig,
    )?;
    println!(
        "helm install --wait: every Deployment available after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let client = env.kube_client().await?;
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
    let listed = deployments.list(&Default::default()).await?.items;
    assert_eq!(listed.len(), 5, "server, creator, informer, operator, web");
    for d in &listed {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let available = d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        assert_eq!(available, want, "{:?} not available", d.metadata.name);
    }

    // helmfile, as the README tells a user to deploy (the local environment, with its Redis),
    // on a cluster where Tekton's namespace exists.
    env.kube.create_namespace("tekton-pipelines").await?;
    let synced = helmfile()?
        .args(["--file", "helmfile.yaml", "-e", "local", "sync", "--wait"])
        .env("KUBECONFIG", kubeconfig)
        .output()?;
    anyhow::ensure!(
        synced.status.success(),
        "helmfile sync: {}{}",
        String::from_utf8_lossy(&synced.stdout),
        String::from_utf8_lossy(&synced.stderr)
    );
    let stagetime: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), "stagetime");
    assert_eq!(stagetime.list(&Default::default()).await?.items.len(), 5);
    let redis: kube::Api<StatefulSet> = kube::Api::namespaced(client, "stagetime-redis");
    let redis = redis.get("redis-stack").await?;
    assert_eq!(redis.status.and_then(|s| s.ready_replicas), Some(1));
    Ok(())
}
