//! Secrets the operator may use: only those their owner labelled as credentials, never a
//! ServiceAccount token — for Git, the forge's API and webhook signatures alike.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

/// Why a Secret may not be used (a condition's reason and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What is wrong, naming the Secret.
    pub message: String,
}

/// The label a Secret must carry (value `"true"`) to be used as Git or forge credentials.
pub const CREDENTIALS_LABEL: &str = "stagetime.sthings.tiab.ssc.sva.de/credentials";

/// The non-empty fields of Secret `name` in `ns` — only when its owner marked it as
/// credentials and it is no ServiceAccount token; else why not.
pub async fn opted_in(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Result<BTreeMap<String, String>, Refused>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match api.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Ok(Err(Refused {
                reason: "SecretNotFound",
                message: format!("credentials Secret {name:?} not found in namespace {ns:?}"),
            }));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Ok(Err(Refused {
                reason: "SecretForbidden",
                message: format!("the operator may not read Secret {name:?} in {ns:?}"),
            }));
        }
        Err(e) => return Err(e),
    };
    // A Secret is credentials only where its owner said so: otherwise anyone who may create a
    // Repo could have any Secret of the namespace (a ServiceAccount's token, say) sent to the
    // Repo's URL.
    let opted_in = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CREDENTIALS_LABEL))
        .is_some_and(|v| v == "true");
    if !opted_in {
        return Ok(Err(Refused {
            reason: "SecretNotOptedIn",
            message: format!(
                "Secret {name:?} lacks the label {CREDENTIALS_LABEL}=\"true\" that marks it as Git credentials"
            ),
        }));
    }
    if secret.type_.as_deref() == Some("kubernetes.io/service-account-token") {
        return Ok(Err(Refused {
            reason: "SecretNotAllowed",
            message: format!(
                "Secret {name:?} is a ServiceAccount token; it is never sent to a Git host"
            ),
        }));
    }
    Ok(Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).trim().to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect()))
}
