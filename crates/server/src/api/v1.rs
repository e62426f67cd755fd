//! The typed API, `stagetime.v1.RevisionRuns`.

use std::pin::Pin;

use futures::Stream;
use stagetime_common::store::ListFilter;
use stagetime_proto::stagetime::v1::{self as pb, revision_runs_server::RevisionRuns};
use tonic::{Request, Response, Status};

use super::Api;
use crate::{auth::Resource, convert, error::Error, logs};

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl RevisionRuns for Api {
    async fn create(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        let timer = self.metrics.start("Create");
        let result = async {
            let caller = self.caller(request.metadata()).await?;
            let req = convert::request(request.get_ref())?;
            let (id, created) = Api::create(self, &caller, &req, "runs").await?;
            Ok::<_, Error>(Response::new(pb::CreateResponse { id, created }))
        }
        .await
        .map_err(Status::from);
        timer.finish(&result);
        result
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::RevisionRun>, Status> {
        let timer = self.metrics.start("Get");
        let id = request.get_ref().id.trim();
        let result = if id.is_empty() {
            Err(Status::invalid_argument("id: required"))
        } else {
            async {
                let caller = self.caller(request.metadata()).await?;
                self.get_for(&caller, id).await
            }
            .await
            .map(|rr| Response::new(convert::revision_run(&rr)))
            .map_err(Status::from)
        };
        timer.finish(&result);
        result
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let timer = self.metrics.start("List");
        let result = async {
            let caller = self.caller(request.metadata()).await?;
            let req = request.get_ref();
            let phase = pb::Phase::try_from(req.phase).map_err(|_| Error::InvalidArgument {
                field: "phase".into(),
                reason: format!("unknown value {}", req.phase),
            })?;
            let filter = ListFilter {
                repo: Some(req.repo_name.clone()).filter(|r| !r.is_empty()),
                phase: convert::phase_filter(phase),
                page_size: req.page_size as usize,
                page_token: Some(req.page_token.clone()).filter(|t| !t.is_empty()),
            };
            let page = self.store.list(&filter).await?;
            // Only runs in namespaces the caller may list, as kubectl would show them; a page
            // can come back shorter than asked (the token still continues after it).
            let mut visible = Vec::with_capacity(page.items.len());
            for rr in &page.items {
                if self.may(&caller, "list", rr).await? {
                    visible.push(convert::revision_run(rr));
                }
            }
            Ok::<_, Error>(Response::new(pb::ListResponse {
                revision_runs: visible,
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        }
        .await
        .map_err(Status::from);
        timer.finish(&result);
        result
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let timer = self.metrics.start("Watch");
        let result = async {
            let caller = self.caller(request.metadata()).await?;
            super::check_id(request.get_ref().id.trim())?;
            // The stream reads the run itself; check RBAC first where there is any to check.
            if !caller.is_unrestricted() {
                self.get_for(&caller, request.get_ref().id.trim()).await?;
            }
            let hub = self.hub().await?;
            crate::watch::start(&self.store, hub, request.into_inner()).await
        }
        .await
        .map(|s| Response::new(Box::pin(s) as WatchStream))
        .map_err(Status::from);
        timer.finish(&result);
        result
    }

    type LogsStream = LogsStream;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let timer = self.metrics.start("Logs");
        let result = async {
            let caller = self.caller(request.metadata()).await?;
            let req = request.get_ref();
            let rr = self.get_for(&caller, req.id.trim()).await?;
            let wanted = req.run.trim();
            let runs: Vec<(u32, stagetime_common::model::Run)> = rr
                .stages
                .iter()
                .flat_map(|s| s.runs.iter().map(|r| (s.number, r.clone())))
                .filter(|(_, r)| wanted.is_empty() || r.name == wanted)
                .collect();
            if runs.is_empty() {
                return Err(Error::InvalidArgument {
                    field: "run".into(),
                    reason: format!("revision run {} has no run named {wanted:?}", rr.id),
                });
            }
            let namespaces = super::namespaces_of(runs.iter().map(|(_, r)| r));
            self.auth
                .authorize_on(&caller, Resource::POD_LOGS, "get", &namespaces)
                .await
                .map_err(Error::Access)?;
            let client = self.kube.clone().ok_or_else(|| {
                Error::Access(Status::failed_precondition(
                    "this server has no Kubernetes access to read logs with",
                ))
            })?;
            Ok(logs::stream(
                client,
                self.store.clone(),
                self.log_limits,
                logs::Request {
                    id: rr.id.clone(),
                    runs,
                    follow: req.follow,
                    tail_lines: Some(i64::from(req.tail_lines)).filter(|n| *n > 0),
                },
            ))
        }
        .await
        .map(|s| Response::new(Box::pin(s) as LogsStream))
        .map_err(Status::from);
        timer.finish(&result);
        result
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::RevisionRun>, Status> {
        let timer = self.metrics.start("Cancel");
        let result = async {
            let caller = self.caller(request.metadata()).await?;
            self.cancel_run(&caller, request.get_ref().id.trim()).await
        }
        .await
        .map(|rr| Response::new(convert::revision_run(&rr)))
        .map_err(Status::from);
        timer.finish(&result);
        result
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RevisionRun>, Status> {
        let timer = self.metrics.start("Retry");
        let result = async {
            let caller = self.caller(request.metadata()).await?;
            self.retry_run(&caller, request.get_ref().id.trim()).await
        }
        .await
        .map(|rr| Response::new(convert::revision_run(&rr)))
        .map_err(Status::from);
        timer.finish(&result);
        result
    }
}
