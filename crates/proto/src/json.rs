//! The original JSON request format: protobuf JSON of `revisionrun.CreateRevisionRunRequest`
//! (lowerCamelCase names; the proto field names are accepted too, as protobuf JSON parsers do).

use crate::revisionrun::{CreateRevisionRunRequest, Pipelinerun};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FileRequest {
    #[serde(rename = "repoName", alias = "repo_name")]
    repo_name: String,
    #[serde(rename = "pushedAt", alias = "pushed_at")]
    pushed_at: String,
    author: String,
    #[serde(rename = "repoUrl", alias = "repo_url")]
    repo_url: String,
    #[serde(rename = "commitId", alias = "commit_id")]
    commit_id: String,
    pipelineruns: Vec<FileRun>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FileRun {
    name: String,
    canfail: bool,
    stage: f64,
    params: String,
    #[serde(rename = "resolverParams", alias = "resolver_params")]
    resolver_params: String,
    listparams: String,
    workspaces: String,
    #[serde(rename = "volumeClaimTemplates", alias = "volume_claim_templates")]
    volume_claim_templates: String,
}

/// Parses a request in the original JSON format (unknown fields are an error).
pub fn parse(text: &str) -> Result<CreateRevisionRunRequest, serde_json::Error> {
    let file: FileRequest = serde_json::from_str(text)?;
    Ok(CreateRevisionRunRequest {
        repo_name: file.repo_name,
        pushed_at: file.pushed_at,
        author: file.author,
        repo_url: file.repo_url,
        commit_id: file.commit_id,
        pipelineruns: file
            .pipelineruns
            .into_iter()
            .map(|r| Pipelinerun {
                name: r.name,
                canfail: r.canfail,
                stage: r.stage,
                params: r.params,
                resolver_params: r.resolver_params,
                listparams: r.listparams,
                workspaces: r.workspaces,
                volume_claim_templates: r.volume_claim_templates,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_name_styles() -> Result<(), serde_json::Error> {
        let camel = parse(
            r#"{"repoName":"r","commitId":"c","pipelineruns":[{"name":"a","stage":1,"resolverParams":"x=y"}]}"#,
        )?;
        let snake = parse(
            r#"{"repo_name":"r","commit_id":"c","pipelineruns":[{"name":"a","stage":1,"resolver_params":"x=y"}]}"#,
        )?;
        assert_eq!(camel, snake);
        assert_eq!(camel.pipelineruns[0].resolver_params, "x=y");
        assert!(parse(r#"{"repoName":"r","bogus":1}"#).is_err());
        Ok(())
    }
}
