//! The Helm chart, rendered by helmfile as users deploy it, is accepted by the real API server
//! (server-side dry-run apply with kubectl).

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use stagetime_testenv::{TestEnv, process::tool};

#[tokio::test]
async fn helmfile_template_renders_manifests_the_api_server_accepts() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    env.kube.create_namespace("stagetime").await?;
    let helmfile = tool("helmfile", "helmfile")?;
    let helm = tool("helm", "helm")?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let path = format!(
        "{}:{}",
        helm.parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let rendered = Command::new(&helmfile)
        .args(["--file", "helmfile.yaml", "template", "--skip-deps"])
        .current_dir(root)
        .env("PATH", &path)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("stagetime-helm-cache"),
        )
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
        .args(["apply", "--dry-run=server", "-n", "stagetime", "-f", "-"])
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
    let secure = helm_template(&[
        "redis.existingSecret=r",
        "server.tls.secretName=tls",
        "server.tls.caSecretName=ca",
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
    ] {
        assert!(secure.contains(expected), "{expected} missing");
    }
    Ok(())
}
