//! gRPC handlers: one file per service, thin: decode, call the [`Broker`] (or, for the
//! inter-broker `raft` service, the Raft group), encode.
//! Errors become statuses through `From<Error> for tonic::Status` only.

mod admin;
mod fetch;
mod groups;
mod list_offsets;
mod produce;
pub(crate) mod raft;

use std::sync::Arc;

use crate::broker::Broker;

pub(crate) use admin::AdminService;
pub(crate) use groups::GroupsService;

/// The `Log` service: produce, fetch, list offsets.
#[derive(Debug, Clone)]
pub(crate) struct LogService {
    broker: Arc<Broker>,
}

impl LogService {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        LogService { broker }
    }
}

#[tonic::async_trait]
impl sluice_proto::pb::log_server::Log for LogService {
    async fn produce(
        &self,
        request: tonic::Request<sluice_proto::pb::ProduceRequest>,
    ) -> Result<tonic::Response<sluice_proto::pb::ProduceResponse>, tonic::Status> {
        let req = request.into_inner();
        let (acks, bytes) = (crate::metrics::acks_label(req.acks), req.batch.len());
        let started = std::time::Instant::now();
        let result = produce::handle(&self.broker, req).await;
        let m = &self.broker.metrics;
        let took = started.elapsed();
        m.request("produce", acks, took, code(&result));
        m.stage(crate::metrics::Stage::ProduceRequest, took);
        if result.is_ok() {
            m.produced(bytes);
        }
        Ok(tonic::Response::new(result?))
    }

    async fn fetch(
        &self,
        request: tonic::Request<sluice_proto::pb::FetchRequest>,
    ) -> Result<tonic::Response<sluice_proto::pb::FetchResponse>, tonic::Status> {
        let started = std::time::Instant::now();
        let result = fetch::handle(&self.broker, request.into_inner()).await;
        let m = &self.broker.metrics;
        m.request("fetch", "", started.elapsed(), code(&result));
        if let Ok(r) = &result {
            m.fetched(r.partitions.iter().map(|p| p.records.len()).sum());
        }
        Ok(tonic::Response::new(result?))
    }

    async fn init_producer_id(
        &self,
        _request: tonic::Request<sluice_proto::pb::InitProducerIdRequest>,
    ) -> Result<tonic::Response<sluice_proto::pb::InitProducerIdResponse>, tonic::Status> {
        let producer_id = self.broker.allocate_producer_id().await?;
        Ok(tonic::Response::new(
            sluice_proto::pb::InitProducerIdResponse {
                producer_id,
                producer_epoch: 0,
            },
        ))
    }

    async fn list_offsets(
        &self,
        request: tonic::Request<sluice_proto::pb::ListOffsetsRequest>,
    ) -> Result<tonic::Response<sluice_proto::pb::ListOffsetsResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            list_offsets::handle(&self.broker, request.into_inner()).await?,
        ))
    }
}

/// The Kafka error name of a failed request, for the metrics.
fn code<T>(result: &crate::error::Result<T>) -> Option<&'static str> {
    result.as_ref().err().map(|e| e.code().name())
}

/// Runs blocking work (disk, CPU-heavy checks) off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::error::Error::Internal(format!("blocking task failed: {e}")))?
}
