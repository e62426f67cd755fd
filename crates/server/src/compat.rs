//! The compatibility request (`revisionrun.CreateRevisionRunRequest`) parsed into the typed model.

use stagetime_common::request::{PipelineRef, RevisionRequest, RunSpec};
use stagetime_proto::revisionrun::{CreateRevisionRunRequest, Pipelinerun};

use stagetime_common::validate::MAX_STAGE;

use crate::{error::Error, grammar};

/// Resolver used when a compat run carries `resolverParams` (the original always used git).
pub const COMPAT_RESOLVER: &str = "git";

/// Parses the compat request; every malformed value is `InvalidArgument` naming field and item.
pub fn parse(req: &CreateRevisionRunRequest) -> Result<RevisionRequest, Error> {
    let runs = req
        .pipelineruns
        .iter()
        .enumerate()
        .map(|(i, pr)| parse_run(i, pr))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RevisionRequest {
        repo_name: req.repo_name.trim().to_string(),
        repo_url: req.repo_url.trim().to_string(),
        commit_id: req.commit_id.trim().to_string(),
        author: req.author.trim().to_string(),
        pushed_at: req.pushed_at.trim().to_string(),
        runs,
        // The original API has no timeouts: the server's defaults apply.
        stage_timeout_seconds: None,
        timeout_seconds: None,
        concurrency_group: None,
        max_concurrent: None,
        concurrency_policy: None,
        request_id: None,
        retention: None,
        fail_fast: None,
    })
}

fn parse_run(i: usize, pr: &Pipelinerun) -> Result<RunSpec, Error> {
    let field = |f: &str| format!("pipelineruns[{i}].{f}");
    let item = |f: &str| {
        let path = field(f);
        move |e: grammar::ItemError| Error::InvalidArgument {
            field: path,
            reason: e.to_string(),
        }
    };
    let stage = parse_stage(pr.stage).map_err(|reason| Error::InvalidArgument {
        field: field("stage"),
        reason,
    })?;
    let resolver_params = grammar::params(&pr.resolver_params).map_err(item("resolverParams"))?;
    let pipeline_ref = if resolver_params.is_empty() {
        PipelineRef::Name(pr.name.trim().to_string())
    } else {
        PipelineRef::Resolver {
            resolver: COMPAT_RESOLVER.to_string(),
            params: resolver_params,
        }
    };
    let mut params = grammar::params(&pr.params).map_err(item("params"))?;
    let list = grammar::list_params(&pr.listparams).map_err(item("listparams"))?;
    let names: std::collections::HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    if let Some(dup) = list.iter().find(|l| names.contains(l.name.as_str())) {
        return Err(Error::InvalidArgument {
            field: field("listparams"),
            reason: format!("param {:?} is also in params", dup.name),
        });
    }
    params.extend(list);
    Ok(RunSpec {
        name: pr.name.trim().to_string(),
        stage,
        canfail: pr.canfail,
        pipeline_ref,
        params,
        workspaces: grammar::workspaces(&pr.workspaces).map_err(item("workspaces"))?,
        volume_claim_templates: grammar::volume_claim_templates(&pr.volume_claim_templates)
            .map_err(item("volumeClaimTemplates"))?,
        timeout_seconds: None,
        namespace: None,
    })
}

/// `stage` is a double on the wire; it must be a whole number in `0..=MAX_STAGE`.
pub fn parse_stage(stage: f64) -> Result<u32, String> {
    if !stage.is_finite() {
        return Err(format!("must be a whole number >= 0, got {stage}"));
    }
    if stage < 0.0 || stage.fract() != 0.0 {
        return Err(format!("must be a whole number >= 0, got {stage}"));
    }
    if stage > f64::from(MAX_STAGE) {
        return Err(format!("must be at most {MAX_STAGE}, got {stage}"));
    }
    Ok(stage as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_must_be_whole_and_non_negative() {
        assert_eq!(parse_stage(0.0), Ok(0));
        assert_eq!(parse_stage(3.0), Ok(3));
        assert!(parse_stage(-1.0).is_err());
        assert!(parse_stage(1.5).is_err());
        assert!(parse_stage(f64::NAN).is_err());
        assert!(parse_stage(f64::INFINITY).is_err());
        assert!(parse_stage(1e12).is_err());
    }
}
