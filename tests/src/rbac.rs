//! ServiceAccounts with real tokens and Roles on RevisionRuns, for the tests of who may call.

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
    rbac::v1::{Role, RoleBinding},
};
use kube::{Api, api::PostParams};
use serde_json::json;

/// Creates ServiceAccount `name` in `ns` and returns a token the API server issued for it for
/// stageTime's audience (valid for ten minutes).
pub async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<String> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}}))?,
    )
    .await?;
    token(
        client,
        ns,
        name,
        &[stagetime_server::auth::DEFAULT_AUDIENCE],
    )
    .await
}

/// A token of existing ServiceAccount `ns/name` for the API server's own audience (what a pod's
/// default token is): stageTime must refuse it.
pub async fn api_server_token(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<String> {
    token(client, ns, name, &[]).await
}

/// A ten-minute token of ServiceAccount `ns/name` for `audiences` (none: the API server's).
async fn token(
    client: &kube::Client,
    ns: &str,
    name: &str,
    audiences: &[&str],
) -> anyhow::Result<String> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let issued = sas
        .create_token_request(
            name,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(600),
                    audiences: audiences.iter().map(|a| a.to_string()).collect(),
                    ..TokenRequestSpec::default()
                },
                ..TokenRequest::default()
            },
        )
        .await?;
    Ok(issued.status.map(|s| s.token).unwrap_or_default())
}

/// Lets ServiceAccount `sa_ns/sa` `verbs` RevisionRuns in namespace `ns` (a Role and a
/// RoleBinding named `<sa>-revisionruns`).
pub async fn grant(
    client: &kube::Client,
    ns: &str,
    (sa_ns, sa): (&str, &str),
    verbs: &[&str],
) -> anyhow::Result<()> {
    let name = format!("{sa}-revisionruns");
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name},
                "rules": [{"apiGroups": ["stagetime.sthings.tiab.ssc.sva.de"],
                           "resources": ["revisionruns"], "verbs": verbs}]}))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}]}))?,
        )
        .await?;
    Ok(())
}

/// `message` as a call of `token`'s holder (`authorization: Bearer <token>`).
pub fn as_caller<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}
