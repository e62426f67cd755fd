//! The one validation of a revision run request, whichever API it came through, with limits on
//! every size so no request can cost unbounded memory or CPU (docs/design.md §4, 8).
//!
//! Every check is linear in the request size: duplicates are found with hash sets, never by
//! comparing every item with every other.

use std::collections::{HashMap, HashSet};

use crate::{
    names::{dns_label, sanitize_label},
    request::{Param, ParamValue, PipelineRef, RevisionRequest, RunSpec, WorkspaceKind},
};

/// Highest stage number accepted.
pub const MAX_STAGE: u32 = 1_000_000;

/// Size limits of a request (server flags; the defaults suit any real pipeline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Runs in one request.
    pub max_runs: usize,
    /// Runs in one stage.
    pub max_runs_per_stage: usize,
    /// Params (and list params) of one run, and resolver params.
    pub max_params: usize,
    /// Items of one array param.
    pub max_array_items: usize,
    /// Workspaces plus volume claim templates of one run.
    pub max_workspaces: usize,
    /// Bytes of one string value (param value, URL, name…).
    pub max_string_bytes: usize,
    /// Longest pipeline timeout, in seconds (Tekton's `0s` — no timeout — is never accepted).
    pub max_timeout_seconds: u32,
    /// Bytes of one rendered PipelineRun manifest.
    pub max_manifest_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_runs: 500,
            max_runs_per_stage: 200,
            max_params: 200,
            max_array_items: 1000,
            max_workspaces: 50,
            max_string_bytes: 64 * 1024,
            max_timeout_seconds: 7 * 24 * 3600,
            max_manifest_bytes: 256 * 1024,
        }
    }
}

/// A field that failed validation and why; both APIs answer `INVALID_ARGUMENT` with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the field, e.g. `runs[2].params[0].name`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `s` is a Git object name (abbreviated or full SHA-1/SHA-256, hex).
pub fn is_git_object_name(s: &str) -> bool {
    (4..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `s` is a name Tekton accepts for a param or workspace: letters, digits, `-`, `_`,
/// `.`, starting with a letter or `_`.
pub fn is_param_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `s` is a DNS-1123 subdomain (object names such as a Pipeline or Secret).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Checks a whole request; `runs_field` is how the API calls the run list.
pub fn request(req: &RevisionRequest, limits: &Limits, runs_field: &str) -> Result<(), FieldError> {
    let text = |field: &str, value: &str, required: bool| -> Result<(), FieldError> {
        if required && value.trim().is_empty() {
            return Err(bad(field, "required"));
        }
        if value.len() > limits.max_string_bytes {
            return Err(bad(
                field,
                format!(
                    "{} bytes, more than the limit of {}",
                    value.len(),
                    limits.max_string_bytes
                ),
            ));
        }
        Ok(())
    };
    text("repo_name", &req.repo_name, true)?;
    text("commit_id", &req.commit_id, true)?;
    text("repo_url", &req.repo_url, false)?;
    text("author", &req.author, false)?;
    text("pushed_at", &req.pushed_at, false)?;
    if let Some(request_id) = &req.request_id {
        if request_id.is_empty() || request_id.len() > 512 {
            return Err(bad("request_id", "must be 1 to 512 bytes"));
        }
        if request_id.chars().any(char::is_control) {
            return Err(bad("request_id", "must not contain control characters"));
        }
    }
    if !is_git_object_name(&req.commit_id) {
        return Err(bad(
            "commit_id",
            format!(
                "{:?} is not a Git object name (4 to 64 hex digits)",
                clip(&req.commit_id)
            ),
        ));
    }
    for (field, value) in [
        ("stage_timeout_seconds", req.stage_timeout_seconds),
        ("timeout_seconds", req.timeout_seconds),
    ] {
        match value {
            Some(0) => return Err(bad(field, "must be positive")),
            Some(t) if t > limits.max_timeout_seconds => {
                return Err(bad(
                    field,
                    format!("must be at most {}", limits.max_timeout_seconds),
                ));
            }
            _ => {}
        }
    }
    if let Some(retention) = &req.retention {
        for (field, value, max) in [
            ("retention.keep_last", retention.keep_last, MAX_KEEP_LAST),
            (
                "retention.failed_keep_last",
                retention.failed_keep_last,
                MAX_KEEP_LAST,
            ),
            (
                "retention.ttl_seconds",
                retention.ttl_seconds,
                MAX_TTL_SECONDS,
            ),
            (
                "retention.failed_ttl_seconds",
                retention.failed_ttl_seconds,
                MAX_TTL_SECONDS,
            ),
        ] {
            if value.is_some_and(|v| v > max) {
                return Err(bad(field, format!("must be at most {max}")));
            }
        }
    }
    if let Some(group) = &req.concurrency_group
        && (group.is_empty()
            || group.len() > 253
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(bad(
            "concurrency_group",
            format!(
                "{:?} is not a group key (letters, digits, '-', '_', '.', '/')",
                clip(group)
            ),
        ));
    }
    if req.runs.is_empty() {
        return Err(bad(runs_field, "at least one run is required"));
    }
    if req.runs.len() > limits.max_runs {
        return Err(bad(
            runs_field,
            format!(
                "{} runs, more than the limit of {}",
                req.runs.len(),
                limits.max_runs
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut per_stage: HashMap<u32, usize> = HashMap::new();
    for (i, run) in req.runs.iter().enumerate() {
        let at = |f: &str| format!("{runs_field}[{i}].{f}");
        run_spec(run, limits, &at)?;
        if !names.insert((run.stage, dns_label(&[&run.name]))) {
            return Err(bad(
                at("name"),
                format!("{:?} appears twice in stage {}", clip(&run.name), run.stage),
            ));
        }
        let count = per_stage.entry(run.stage).or_default();
        *count += 1;
        if *count > limits.max_runs_per_stage {
            return Err(bad(
                at("stage"),
                format!(
                    "stage {} has more than the limit of {} runs",
                    run.stage, limits.max_runs_per_stage
                ),
            ));
        }
    }
    Ok(())
}

fn run_spec(run: &RunSpec, limits: &Limits, at: &dyn Fn(&str) -> String) -> Result<(), FieldError> {
    if run.name.trim().is_empty() {
        return Err(bad(at("name"), "required"));
    }
    if run.name.len() > limits.max_string_bytes {
        return Err(bad(at("name"), "too long"));
    }
    if sanitize_label(&run.name, 63).is_empty() {
        return Err(bad(
            at("name"),
            format!("{:?} has no letters or digits", clip(&run.name)),
        ));
    }
    if run.stage > MAX_STAGE {
        return Err(bad(at("stage"), format!("must be at most {MAX_STAGE}")));
    }
    match &run.pipeline_ref {
        PipelineRef::Name(n) if !is_dns_subdomain(n) => {
            return Err(bad(
                at("pipeline_ref.name"),
                format!("{:?} is not a Pipeline name (DNS-1123 subdomain)", clip(n)),
            ));
        }
        PipelineRef::Name(_) => {}
        PipelineRef::Resolver { resolver, params } => {
            if !is_param_name(resolver) || resolver.len() > 63 {
                return Err(bad(
                    at("pipeline_ref.resolver"),
                    format!("{:?} is not a resolver name", clip(resolver)),
                ));
            }
            param_list(params, limits, &at("pipeline_ref.resolver.params"))?;
        }
    }
    param_list(&run.params, limits, &at("params"))?;
    let total = run.workspaces.len() + run.volume_claim_templates.len();
    if total > limits.max_workspaces {
        return Err(bad(
            at("workspaces"),
            format!(
                "{total} workspaces, more than the limit of {}",
                limits.max_workspaces
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (j, w) in run.workspaces.iter().enumerate() {
        let field = at(&format!("workspaces[{j}]"));
        workspace_name(&w.name, &field, &mut seen)?;
        match w.kind {
            WorkspaceKind::EmptyDir => {}
            _ if !is_dns_subdomain(&w.reference) => {
                return Err(bad(
                    format!("{field}.ref"),
                    format!(
                        "{:?} is not the name of a {}",
                        clip(&w.reference),
                        w.kind.as_str()
                    ),
                ));
            }
            _ => {}
        }
    }
    for (j, v) in run.volume_claim_templates.iter().enumerate() {
        let field = at(&format!("volume_claim_templates[{j}]"));
        workspace_name(&v.name, &field, &mut seen)?;
        if !v.storage_class.is_empty() && !is_dns_subdomain(&v.storage_class) {
            return Err(bad(
                format!("{field}.storage_class"),
                format!("{:?} is not a storage class name", clip(&v.storage_class)),
            ));
        }
        if !is_quantity(&v.size) {
            return Err(bad(
                format!("{field}.size"),
                format!("{:?} is not a quantity such as 1Gi", clip(&v.size)),
            ));
        }
    }
    match run.timeout_seconds {
        Some(0) => return Err(bad(at("timeout_seconds"), "must be positive")),
        Some(t) if t > limits.max_timeout_seconds => {
            return Err(bad(
                at("timeout_seconds"),
                format!("must be at most {}", limits.max_timeout_seconds),
            ));
        }
        _ => {}
    }
    if let Some(ns) = &run.namespace
        && (ns.len() > 63 || dns_label(&[ns]) != *ns)
    {
        return Err(bad(
            at("namespace"),
            format!("{:?} is not a DNS-1123 label", clip(ns)),
        ));
    }
    Ok(())
}

fn workspace_name<'a>(
    name: &'a str,
    field: &str,
    seen: &mut HashSet<&'a str>,
) -> Result<(), FieldError> {
    if !is_param_name(name) || name.len() > 253 {
        return Err(bad(
            format!("{field}.name"),
            format!("{:?} is not a workspace name", clip(name)),
        ));
    }
    if !seen.insert(name) {
        return Err(bad(
            format!("{field}.name"),
            format!("workspace {name:?} appears twice"),
        ));
    }
    Ok(())
}

fn param_list(params: &[Param], limits: &Limits, field: &str) -> Result<(), FieldError> {
    if params.len() > limits.max_params {
        return Err(bad(
            field,
            format!(
                "{} params, more than the limit of {}",
                params.len(),
                limits.max_params
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if !is_param_name(&p.name) || p.name.len() > 253 {
            return Err(bad(
                format!("{at}.name"),
                format!(
                    "{:?} is not a param name (letters, digits, '-', '_', '.')",
                    clip(&p.name)
                ),
            ));
        }
        if !seen.insert(p.name.as_str()) {
            return Err(bad(
                format!("{at}.name"),
                format!("duplicate param {:?}", p.name),
            ));
        }
        let too_long = |v: &String| v.len() > limits.max_string_bytes;
        match &p.value {
            ParamValue::String(v) if too_long(v) => {
                return Err(bad(
                    format!("{at}.value"),
                    format!("longer than the limit of {} bytes", limits.max_string_bytes),
                ));
            }
            ParamValue::Array(items) if items.len() > limits.max_array_items => {
                return Err(bad(
                    format!("{at}.value"),
                    format!(
                        "{} items, more than the limit of {}",
                        items.len(),
                        limits.max_array_items
                    ),
                ));
            }
            ParamValue::Array(items) if items.iter().any(too_long) => {
                return Err(bad(
                    format!("{at}.value"),
                    format!(
                        "an item is longer than the limit of {} bytes",
                        limits.max_string_bytes
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A plain Kubernetes quantity: digits (optional fraction) and an optional binary/decimal suffix.
pub fn is_quantity(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.len() <= 32
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    number_ok
        && matches!(
            suffix,
            "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E" | "m"
        )
}

/// Largest retention count a request may ask for.
pub const MAX_KEEP_LAST: u32 = 100_000;
/// Longest retention a request may ask for: ten years.
pub const MAX_TTL_SECONDS: u32 = 10 * 365 * 24 * 3600;

/// At most 64 characters of a value, for error messages (a 1 MB value is not echoed back).
pub fn clip(s: &str) -> String {
    clip_to(s, 64)
}

/// At most `max` characters of `s`, with `…` where it was cut.
pub fn clip_to(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{AccessMode, VolumeClaimTemplate, Workspace};

    fn run(name: &str, stage: u32) -> RunSpec {
        RunSpec {
            name: name.into(),
            stage,
            canfail: false,
            pipeline_ref: PipelineRef::Name("build".into()),
            params: vec![],
            workspaces: vec![],
            volume_claim_templates: vec![],
            timeout_seconds: None,
            namespace: None,
        }
    }

    fn req(runs: Vec<RunSpec>) -> RevisionRequest {
        RevisionRequest {
            repo_name: "repo".into(),
            repo_url: String::new(),
            commit_id: "c0ffee12".into(),
            author: String::new(),
            pushed_at: String::new(),
            runs,
            stage_timeout_seconds: None,
            timeout_seconds: None,
            concurrency_group: None,
            max_concurrent: None,
            concurrency_policy: None,
            request_id: None,
            fail_fast: None,
            retention: None,
        }
    }

    fn field_of(r: &RevisionRequest, limits: &Limits) -> String {
        request(r, limits, "runs")
            .err()
            .map(|e| e.field)
            .unwrap_or_default()
    }

    #[test]
    fn accepts_a_good_request() {
        assert_eq!(
            request(
                &req(vec![run("a", 0), run("a", 1)]),
                &Limits::default(),
                "runs"
            ),
            Ok(())
        );
    }

    #[test]
    fn names_the_field_of_each_rule() {
        let l = Limits::default();
        let mut r = req(vec![run("a", 0)]);
        r.commit_id = "main".into();
        assert_eq!(field_of(&r, &l), "commit_id");
        let mut r = req(vec![run("a", 0)]);
        r.runs[0].pipeline_ref = PipelineRef::Name(String::new());
        assert_eq!(field_of(&r, &l), "runs[0].pipeline_ref.name");
        let mut r = req(vec![run("a", 0)]);
        r.runs[0].params = vec![Param {
            name: "x y".into(),
            value: ParamValue::String(String::new()),
        }];
        assert_eq!(field_of(&r, &l), "runs[0].params[0].name");
        let mut r = req(vec![run("a", 0)]);
        r.runs[0].workspaces = vec![Workspace {
            name: "ws".into(),
            kind: WorkspaceKind::Secret,
            reference: String::new(),
        }];
        assert_eq!(field_of(&r, &l), "runs[0].workspaces[0].ref");
        let mut r = req(vec![run("a", 0)]);
        r.runs[0].volume_claim_templates = vec![VolumeClaimTemplate {
            name: "ws".into(),
            storage_class: String::new(),
            access_mode: AccessMode::ReadWriteOnce,
            size: "lots".into(),
        }];
        assert_eq!(field_of(&r, &l), "runs[0].volume_claim_templates[0].size");
        let mut r = req(vec![run("a", 0)]);
        r.runs[0].timeout_seconds = Some(l.max_timeout_seconds + 1);
        assert_eq!(field_of(&r, &l), "runs[0].timeout_seconds");
        assert_eq!(
            field_of(&req(vec![run("a", 0), run("A", 0)]), &l),
            "runs[1].name"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let l = Limits {
            max_runs: 2,
            max_runs_per_stage: 1,
            max_params: 1,
            ..Limits::default()
        };
        assert_eq!(
            field_of(&req(vec![run("a", 0), run("b", 1), run("c", 2)]), &l),
            "runs"
        );
        assert_eq!(
            field_of(&req(vec![run("a", 0), run("b", 0)]), &l),
            "runs[1].stage"
        );
        let mut r = req(vec![run("a", 0)]);
        let p = |n: &str| Param {
            name: n.into(),
            value: ParamValue::String(String::new()),
        };
        r.runs[0].params = vec![p("x"), p("y")];
        assert_eq!(field_of(&r, &l), "runs[0].params");
        let mut r = req(vec![run("a", 0)]);
        r.repo_url = "x".repeat(l.max_string_bytes + 1);
        assert_eq!(field_of(&r, &l), "repo_url");
    }

    #[test]
    fn a_duplicate_after_many_params_is_found_and_named() {
        // 200,000 distinct params, then one duplicate at the very end: found, and named.
        let l = Limits {
            max_params: usize::MAX,
            ..Limits::default()
        };
        let mut r = req(vec![run("a", 0)]);
        r.runs[0].params = (0..200_000)
            .map(|i| Param {
                name: format!("p{i}"),
                value: ParamValue::String(String::new()),
            })
            .collect();
        assert_eq!(request(&r, &l, "runs"), Ok(()));
        r.runs[0].params.push(Param {
            name: "p7".into(),
            value: ParamValue::String(String::new()),
        });
        assert_eq!(field_of(&r, &l), "runs[0].params[200000].name");
    }

    #[test]
    fn messages_do_not_echo_huge_values() {
        let mut r = req(vec![run("a", 0)]);
        r.commit_id = "z".repeat(10_000);
        let e = request(
            &r,
            &Limits {
                max_string_bytes: usize::MAX,
                ..Limits::default()
            },
            "runs",
        );
        assert!(e.is_err_and(|e| e.reason.len() < 200));
    }
}
