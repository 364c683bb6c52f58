//! The `Admin` service: topics and cluster metadata.

use std::sync::Arc;

use sluice_proto::pb::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::broker::{Broker, Topic};

#[derive(Debug, Clone)]
pub struct AdminService {
    broker: Arc<Broker>,
}

impl AdminService {
    pub fn new(broker: Arc<Broker>) -> Self {
        AdminService { broker }
    }

    fn describe(&self, topic: &Topic) -> pb::TopicDescription {
        let node = self.broker.config.node_id;
        pb::TopicDescription {
            name: topic.record.name.clone(),
            replication_factor: topic.record.replication_factor,
            config: topic.config.to_map().into_iter().collect(),
            partitions: topic
                .partitions
                .iter()
                .map(|p| {
                    let o = p.offsets();
                    pb::PartitionDescription {
                        partition: p.id,
                        leader: node,
                        replicas: vec![node],
                        isr: vec![node],
                        log_start_offset: o.log_start,
                        high_watermark: p.high_watermark(),
                        log_end_offset: o.log_end,
                        size_bytes: o.size_bytes,
                        segments: o.segments,
                    }
                })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().name))]
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let req = request.into_inner();
        let topic = self
            .broker
            .create_topic(
                req.name,
                req.partitions,
                req.replication_factor,
                req.config.into_iter().collect(),
                req.validate_only,
            )
            .await?;
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(self.describe(&topic)),
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().name))]
    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        self.broker.delete_topic(&request.into_inner().name).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self
            .broker
            .topics()
            .iter()
            .map(|t| pb::TopicSummary {
                name: t.record.name.clone(),
                partitions: t.record.partitions,
                replication_factor: t.record.replication_factor,
            })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let topic = self.broker.topic(&request.into_inner().name)?;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(self.describe(&topic)),
        }))
    }

    async fn metadata(
        &self,
        request: Request<pb::MetadataRequest>,
    ) -> Result<Response<pb::MetadataResponse>, Status> {
        let wanted = request.into_inner().topics;
        let node = self.broker.config.node_id;
        let topics = self
            .broker
            .topics()
            .iter()
            .filter(|t| wanted.is_empty() || wanted.contains(&t.record.name))
            .map(|t| pb::TopicMetadata {
                name: t.record.name.clone(),
                max_message_bytes: t.config.max_message_bytes,
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| pb::PartitionMetadata {
                        partition: p.id,
                        leader: node,
                        replicas: vec![node],
                        isr: vec![node],
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::MetadataResponse {
            cluster_id: self.broker.cluster_id.clone(),
            controller_id: node,
            brokers: vec![pb::BrokerInfo {
                node_id: node,
                address: self.broker.advertised_address.clone(),
            }],
            topics,
        }))
    }
}
