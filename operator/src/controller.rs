//! The kube plumbing of SluiceTopics: a watch on every SluiceTopic, each reconciled by
//! [`crate::topic::reconcile`] inside a finalizer (so deleting one runs
//! [`crate::topic::cleanup`] first), the status written with server-side apply, drift
//! checked again every few minutes, failures requeued with a growing delay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use sluice_client::{Admin, ClientConfig};
use sluice_manifest::SluiceTopic;

use crate::brokers::{Brokers, LiveBrokers};
use crate::resources::CLIENT_PORT;
use crate::telemetry::Metrics;
use crate::topic;

/// The finalizer on every SluiceTopic the operator has seen.
pub const FINALIZER: &str = "sluice.io/topic-cleanup";
/// The field manager of the status the operator writes.
pub const MANAGER: &str = "sluice-operator";
/// How often a topic is checked again for drift when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Delay after a failed reconcile: doubles per consecutive failure, up to the maximum.
const BACKOFF_START: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What the reconciles share: the API client, the brokers' side, the event recorder, the
/// operator's metrics and the per-object failure counts behind the backoff.
pub struct Context {
    pub client: Client,
    /// Brokers to use for every cluster (running outside Kubernetes); else each
    /// SluiceTopic's `clusterRef` names the cluster's client Service.
    pub bootstrap: Option<String>,
    /// What SluiceCluster reconciles ask the brokers.
    pub brokers: Arc<dyn Brokers>,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    admins: parking_lot::Mutex<HashMap<String, Admin>>,
    failures: parking_lot::Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("bootstrap", &self.bootstrap)
            .field("clusters", &self.admins.lock().len())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context whose brokers are reached at their Kubernetes names (or `bootstrap`).
    pub fn new(client: Client, bootstrap: Option<String>) -> Self {
        let brokers = Arc::new(LiveBrokers::new(bootstrap.clone(), None));
        Context::with_brokers(client, bootstrap, brokers)
    }

    /// A context with its own way to the brokers (tests; running outside the cluster).
    pub fn with_brokers(
        client: Client,
        bootstrap: Option<String>,
        brokers: Arc<dyn Brokers>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            bootstrap,
            brokers,
            metrics: Arc::new(Metrics::default()),
            admins: Default::default(),
            failures: Default::default(),
        }
    }

    /// Publishes a Kubernetes Event about `object` (`kubectl describe` shows it). Failing
    /// to is logged, never fatal: the change it reports is made.
    pub async fn event<K>(&self, object: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(reason, cause = %e, "publishing a Kubernetes Event");
        }
        self.metrics.event(reason);
    }

    /// Forgets the failures of `key` after a reconcile that succeeded.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// Counts a failure of `key`: the consecutive count and the delay before the retry.
    pub fn failed(&self, key: &str) -> (u32, Duration) {
        let n = {
            let mut f = self.failures.lock();
            let n = f.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        (n, backoff(n - 1))
    }

    /// The admin client of the cluster `t` belongs to.
    fn admin_for(&self, t: &SluiceTopic) -> Result<Admin, Error> {
        let bootstrap = bootstrap_for(t, self.bootstrap.as_deref())?;
        let mut admins = self.admins.lock();
        if let Some(a) = admins.get(&bootstrap) {
            return Ok(a.clone());
        }
        let admin = Admin::new(ClientConfig::new(&bootstrap)).map_err(|e| Error::Admin {
            object: topic::object_name(t),
            source: Box::new(e),
        })?;
        admins.insert(bootstrap, admin.clone());
        Ok(admin)
    }
}

/// Where the brokers of `t`'s cluster are: `override` when given, else the client Service
/// of its `clusterRef` in its namespace.
pub fn bootstrap_for(t: &SluiceTopic, over: Option<&str>) -> Result<String, Error> {
    if let Some(b) = over {
        return Ok(b.to_string());
    }
    let cluster = t
        .spec
        .cluster_ref
        .as_ref()
        .map(|c| c.name.clone())
        .ok_or_else(|| Error::NoCluster(topic::object_name(t)))?;
    let ns = t.namespace().unwrap_or_else(|| "default".into());
    Ok(format!("{cluster}.{ns}.svc:{CLIENT_PORT}"))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SluiceTopic {0} has no spec.clusterRef: name the SluiceCluster it belongs to")]
    NoCluster(String),
    #[error("SluiceTopic {object}: {source}")]
    Admin {
        object: String,
        #[source]
        source: Box<sluice_client::Error>,
    },
    #[error(transparent)]
    Topic(#[from] Box<topic::Error>),
    #[error("SluiceTopic {object}: writing its status: {source}")]
    Status {
        object: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("SluiceTopic finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short name of the kind of failure, for logs and counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoCluster(_) => "no_cluster",
            Error::Admin { .. } | Error::Topic(_) => "cluster_call",
            Error::Status { .. } => "status_write",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

async fn apply(t: Arc<SluiceTopic>, ctx: &Context) -> Result<Action, Error> {
    let admin = ctx.admin_for(&t)?;
    let now = Time(k8s_openapi::chrono::Utc::now());
    let done = topic::reconcile(&admin, &t, &now).await.map_err(Box::new)?;
    if let Some(change) = done.change {
        ctx.event(&*t, EventType::Normal, "TopicChanged", change)
            .await;
    }
    if let Some(c) = done
        .status
        .conditions
        .iter()
        .find(|c| c.status == "False" && c.reason != "ReplicasMoving")
    {
        let was = t
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|p| p.type_ == "Ready"))
            .is_some_and(|p| p.reason == c.reason && p.message == c.message);
        if !was {
            ctx.event(&*t, EventType::Warning, &c.reason, c.message.clone())
                .await;
        }
    }
    let status = done.status;
    let api: Api<SluiceTopic> =
        Api::namespaced(ctx.client.clone(), &t.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": sluice_manifest::API_VERSION,
        "kind": sluice_manifest::TOPIC_KIND,
        "status": status,
    });
    api.patch_status(
        &t.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status {
        object: topic::object_name(&t),
        source: Box::new(source),
    })?;
    Ok(Action::requeue(RESYNC))
}

async fn cleanup(t: Arc<SluiceTopic>, ctx: &Context) -> Result<Action, Error> {
    let admin = ctx.admin_for(&t)?;
    if topic::cleanup(&admin, &t).await.map_err(Box::new)? {
        tracing::info!(object = %topic::object_name(&t), "deleted the topic of a deleted SluiceTopic (deletionPolicy: Delete)");
        ctx.event(
            &*t,
            EventType::Normal,
            "TopicDeleted",
            format!(
                "deleted topic '{}' (deletionPolicy: Delete)",
                topic::manifest(&t).topic_name()
            ),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// One reconcile as the controller runs it: inside the finalizer, apply or clean up.
pub async fn reconcile(t: Arc<SluiceTopic>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<SluiceTopic> =
        Api::namespaced(ctx.client.clone(), &t.namespace().unwrap_or_default());
    let key = format!("SluiceTopic {}", topic::object_name(&t));
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, t, |event| async {
        match event {
            Event::Apply(t) => apply(t, &ctx).await,
            Event::Cleanup(t) => cleanup(t, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(
        "SluiceTopic",
        started.elapsed(),
        result.as_ref().err().map(Error::kind),
    );
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

/// The delay before the `n`th consecutive retry.
pub fn backoff(n: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX)
}

fn error_policy(t: Arc<SluiceTopic>, e: &Error, ctx: Arc<Context>) -> Action {
    let (n, delay) = ctx.failed(&format!("SluiceTopic {}", topic::object_name(&t)));
    tracing::warn!(object = %topic::object_name(&t), kind = e.kind(), attempt = n, retry_in = ?delay, cause = %e, "reconciling a SluiceTopic failed; will retry");
    Action::requeue(delay)
}

/// Watches and reconciles every SluiceTopic until `stop`.
pub async fn run_topics(
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<SluiceTopic> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(cause = %e, "reconcile stream");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(yaml: &str) -> SluiceTopic {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_topic_finds_its_cluster_by_its_client_service() {
        let t = topic(
            "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata: {name: orders, namespace: shop}\nspec: {partitions: 3, clusterRef: {name: main}}\n",
        );
        assert_eq!(bootstrap_for(&t, None).unwrap(), "main.shop.svc:9092");
        assert_eq!(
            bootstrap_for(&t, Some("127.0.0.1:9092")).unwrap(),
            "127.0.0.1:9092"
        );
        let lost = topic(
            "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata: {name: orders, namespace: shop}\nspec: {partitions: 3}\n",
        );
        let e = bootstrap_for(&lost, None).unwrap_err().to_string();
        assert!(e.contains("shop/orders") && e.contains("clusterRef"), "{e}");
    }

    #[test]
    fn retries_back_off_up_to_a_limit() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(1), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(64));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
