//! Hostile and oversized input through both APIs' whole request path (parse → validate →
//! render), in process: never a panic, every answer bounded in time, and any error names a
//! field. Sizes go up to the gRPC decode limit. Prints the slowest answer.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use stagetime_proto::{revisionrun as compat_pb, stagetime::v1 as pb};
use stagetime_server::{DEFAULT_MAX_REQUEST_BYTES, Error, compat, convert, render};

/// Text that is sometimes tiny, sometimes huge, often full of the grammar's separators.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9=,;._ -]{0,40}",
        4 => ".{0,40}",
        1 => (1usize..20_000, "[a-z=,;]{1,4}").prop_map(|(n, unit)| unit.repeat(n)),
        1 => (1usize..150_000).prop_map(|n| (0..n).map(|i| format!("k{i}=")).collect::<Vec<_>>().join(",")),
    ]
}

fn compat_run() -> impl Strategy<Value = compat_pb::Pipelinerun> {
    (
        text(),
        any::<bool>(),
        prop_oneof![
            Just(0.0),
            Just(1.0),
            Just(-1.0),
            Just(0.5),
            Just(f64::NAN),
            Just(1e300),
            0.0..1e7
        ],
        text(),
        text(),
        text(),
        text(),
        text(),
    )
        .prop_map(
            |(name, canfail, stage, params, resolver_params, listparams, workspaces, vct)| {
                compat_pb::Pipelinerun {
                    name,
                    canfail,
                    stage,
                    params,
                    resolver_params,
                    listparams,
                    workspaces,
                    volume_claim_templates: vct,
                }
            },
        )
}

fn typed_run() -> impl Strategy<Value = pb::RunSpec> {
    (
        text(),
        0u32..2_000_000,
        text(),
        proptest::collection::vec((text(), text()), 0..40),
        text(),
        any::<u32>(),
    )
        .prop_map(
            |(name, stage, reference, params, namespace, timeout_seconds)| pb::RunSpec {
                name,
                stage,
                pipeline_ref: Some(pb::PipelineRef {
                    r#ref: Some(pb::pipeline_ref::Ref::Name(reference)),
                }),
                params: params
                    .into_iter()
                    .map(|(name, value)| pb::Param {
                        name,
                        value: Some(pb::param::Value::StringValue(value)),
                    })
                    .collect(),
                namespace,
                timeout_seconds,
                ..Default::default()
            },
        )
}

/// Checks the shape of one answer.
fn answer(result: Result<render::Rendered, Error>) -> Result<(), TestCaseError> {
    match result {
        Ok(rendered) => {
            prop_assert!(!rendered.manifests.is_empty());
            for (name, _) in &rendered.manifests {
                prop_assert!(name.len() <= 63, "{name}");
            }
        }
        Err(Error::InvalidArgument { field, reason }) => {
            prop_assert!(!field.is_empty());
            prop_assert!(
                reason.len() < 1000,
                "error text echoes input: {} bytes",
                reason.len()
            );
        }
        Err(Error::NamespaceNotAllowed { field, .. }) => prop_assert!(field.ends_with("namespace")),
        Err(other) => prop_assert!(false, "unexpected error {other}"),
    }
    Ok(())
}

const NOW: &str = "2026-11-29T00:00:00Z";

fn run_cases<S: Strategy>(
    api: &str,
    strategy: S,
    case: impl Fn(S::Value) -> Result<Duration, TestCaseError>,
) {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        max_global_rejects: 10_000,
        // Shrinking megabyte inputs takes minutes; the first failing input is reported as is.
        max_shrink_iters: 50,
        ..ProptestConfig::default()
    });
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let result = runner.run(&strategy, |value| {
        let took = case(value)?;
        slowest.set(slowest.get().max(took));
        prop_assert!(took < Duration::from_secs(2), "took {took:?}");
        Ok(())
    });
    println!(
        "{api}: 128 hostile requests up to the decode limit, slowest answer {:?}",
        slowest.get()
    );
    if let Err(error) = result {
        panic!("{api}: {error}");
    }
}

#[test]
fn compat_requests_never_panic_and_answer_fast() {
    let strategy = (
        proptest::collection::vec(compat_run(), 0..5),
        text(),
        text(),
    );
    run_cases("compat", strategy, |(runs, repo, commit)| {
        let req = compat_pb::CreateRevisionRunRequest {
            repo_name: repo,
            commit_id: commit,
            pipelineruns: runs,
            ..Default::default()
        };
        prop_assume!(prost::Message::encoded_len(&req) <= DEFAULT_MAX_REQUEST_BYTES);
        let started = Instant::now();
        let result = compat::parse(&req).and_then(|r| {
            render::render(&r, &render::RenderSettings::default(), "pipelineruns", NOW)
        });
        let took = started.elapsed();
        answer(result)?;
        Ok(took)
    });
}

#[test]
fn typed_requests_never_panic_and_answer_fast() {
    let strategy = (
        proptest::collection::vec(typed_run(), 0..5),
        text(),
        prop_oneof![text(), "[0-9a-f]{7,40}"],
    );
    run_cases("typed", strategy, |(runs, repo, commit)| {
        let req = pb::CreateRequest {
            repo_name: repo,
            commit_id: commit,
            runs,
            ..Default::default()
        };
        prop_assume!(prost::Message::encoded_len(&req) <= DEFAULT_MAX_REQUEST_BYTES);
        let started = Instant::now();
        let result = convert::request(&req)
            .and_then(|r| render::render(&r, &render::RenderSettings::default(), "runs", NOW));
        let took = started.elapsed();
        answer(result)?;
        Ok(took)
    });
}
