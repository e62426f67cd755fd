//! The typed API, `stagetime.v1.RevisionRuns`.

use std::pin::Pin;

use futures::Stream;
use stagetime_common::store::ListFilter;
use stagetime_proto::stagetime::v1::{self as pb, revision_runs_server::RevisionRuns};
use tonic::{Request, Response, Status};

use super::Api;
use crate::{convert, error::Error};

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RevisionRuns for Api {
    async fn create(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        let timer = self.metrics.start("Create");
        let result = async {
            let req = convert::request(request.get_ref())?;
            let (id, created) = Api::create(self, &req, "runs").await?;
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
            self.store
                .get(id)
                .await
                .map(|rr| Response::new(convert::revision_run(&rr)))
                .map_err(|e| Status::from(Error::from(e)))
        };
        timer.finish(&result);
        result
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let timer = self.metrics.start("List");
        let req = request.get_ref();
        let result = match pb::Phase::try_from(req.phase) {
            Err(_) => Err(Status::invalid_argument(format!(
                "phase: unknown value {}",
                req.phase
            ))),
            Ok(phase) => {
                let filter = ListFilter {
                    repo: Some(req.repo_name.clone()).filter(|r| !r.is_empty()),
                    phase: convert::phase_filter(phase),
                    page_size: req.page_size as usize,
                    page_token: Some(req.page_token.clone()).filter(|t| !t.is_empty()),
                };
                self.store
                    .list(&filter)
                    .await
                    .map(|page| {
                        Response::new(pb::ListResponse {
                            revision_runs: page.items.iter().map(convert::revision_run).collect(),
                            next_page_token: page.next_page_token.unwrap_or_default(),
                        })
                    })
                    .map_err(|e| Status::from(Error::from(e)))
            }
        };
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
            let hub = self.hub().await?;
            crate::watch::start(&self.store, hub, request.into_inner()).await
        }
        .await
        .map(|s| Response::new(Box::pin(s) as WatchStream))
        .map_err(Status::from);
        timer.finish(&result);
        result
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::RevisionRun>, Status> {
        let timer = self.metrics.start("Cancel");
        let result = self
            .cancel_run(request.get_ref().id.trim())
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
        let result = self
            .retry_run(request.get_ref().id.trim())
            .await
            .map(|rr| Response::new(convert::revision_run(&rr)))
            .map_err(Status::from);
        timer.finish(&result);
        result
    }
}
