//! The compatibility API, wire-identical to the original (docs/design.md §4.1).

use stagetime_proto::revisionrun::{
    self as compat, CreateRevisionRunRequest, StatusGetReply, StatusGetRequest,
    stage_time_application_service_server::StageTimeApplicationService, statuses_server::Statuses,
};
use tonic::{Request, Response, Status};

use super::Api;
use crate::{compat::parse, error::Error};

#[tonic::async_trait]
impl StageTimeApplicationService for Api {
    async fn create_revision_run(
        &self,
        request: Request<CreateRevisionRunRequest>,
    ) -> Result<Response<compat::Response>, Status> {
        let timer = self.metrics.start("CreateRevisionRun");
        let result = async {
            let caller = self.caller(request.metadata()).await?;
            let req = parse(request.get_ref())?;
            let (id, _) = self.create(&caller, &req, "pipelineruns").await?;
            Ok::<_, Error>(Response::new(compat::Response {
                result: compat::response::Result::Success as i32,
                success: Some(compat::response::Success {
                    data: id.into_bytes(),
                }),
                error: None,
            }))
        }
        .await
        .map_err(Status::from);
        timer.finish(&result);
        result
    }
}

#[tonic::async_trait]
impl Statuses for Api {
    async fn get_status(
        &self,
        request: Request<StatusGetRequest>,
    ) -> Result<Response<StatusGetReply>, Status> {
        let timer = self.metrics.start("GetStatus");
        let key = request.get_ref().revision_run_id.trim().to_string();
        let result = if key.is_empty() {
            Err(Status::invalid_argument("revision_run_id: required"))
        } else {
            async {
                let caller = self.caller(request.metadata()).await?;
                self.by_id_or_commit(&caller, &key).await
            }
            .await
            .map(|rr| {
                Response::new(StatusGetReply {
                    status: Some(compat::Status {
                        id: rr.id.clone(),
                        updated: rr.updated_at.clone(),
                        status: rr.summary(),
                    }),
                })
            })
            .map_err(Status::from)
        };
        timer.finish(&result);
        result
    }
}
