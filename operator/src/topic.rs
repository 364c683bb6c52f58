//! Reconciling one `SluiceTopic` with the cluster, through the admin API and with the plan
//! `sluice apply` uses (`sluice_manifest::plan`, `sluice_client::declarative`): the spec is
//! checked with the same rules, the topic is created or changed to match (drift is
//! reverted: Kubernetes -> cluster), and a change the cluster cannot make (fewer
//! partitions) leaves the topic untouched with Ready=False and the reason. The status says
//! what was found. The kube plumbing (watch, finalizer, status patch) calls these.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sluice_client::{Admin, declarative};
use sluice_manifest::plan::{self, Action, TopicPlan};
use sluice_manifest::status::SluiceTopicStatus;
use sluice_manifest::{
    DeletionPolicy, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ObjectMeta, SluiceTopic, TopicManifest,
};

/// A reconcile that could not finish; the caller requeues with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("topic '{topic}' ({object}): {source}")]
    Admin {
        topic: String,
        object: String,
        #[source]
        source: sluice_client::Error,
    },
}

/// Annotations Kubernetes tools add that are not the topic's own.
fn tool_annotation(key: &str) -> bool {
    key.starts_with("kubectl.kubernetes.io/") || key.starts_with("meta.helm.sh/")
}

/// `namespace/name` of the object, for messages.
pub fn object_name(t: &SluiceTopic) -> String {
    format!(
        "{}/{}",
        t.metadata.namespace.as_deref().unwrap_or("default"),
        t.metadata.name.as_deref().unwrap_or("")
    )
}

/// The object as the manifest `sluice apply` would read.
pub fn manifest(t: &SluiceTopic) -> TopicManifest {
    TopicManifest {
        api_version: sluice_manifest::API_VERSION.to_string(),
        kind: sluice_manifest::TOPIC_KIND.to_string(),
        metadata: ObjectMeta {
            name: t.metadata.name.clone().unwrap_or_default(),
            namespace: t.metadata.namespace.clone(),
            labels: t.metadata.labels.clone().unwrap_or_default(),
            annotations: t
                .metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| !tool_annotation(k))
                .collect(),
        },
        spec: t.spec.clone(),
        status: None,
    }
}

fn condition(
    previous: Option<&SluiceTopicStatus>,
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let previous = previous.map_or(&[][..], |s| s.conditions.as_slice());
    crate::conditions::condition(previous, "Ready", ready, reason, message, generation, now)
}

/// What one reconcile found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    /// The status to write.
    pub status: SluiceTopicStatus,
    /// The change made to the cluster's topic, in words (for an Event); None: none.
    pub change: Option<String>,
}

/// The change `p` makes, in words.
pub fn describe(p: &TopicPlan) -> String {
    let mut parts = Vec::new();
    if let Some((before, after)) = p.partitions
        && before != after
    {
        parts.push(format!("partitions {before} -> {after}"));
    }
    if let Some((before, after)) = p.replication_factor
        && before != after
        && p.action != Action::Create
    {
        parts.push(format!("replication factor {before} -> {after}"));
    }
    for c in &p.config {
        parts.push(format!(
            "{} {} -> {}",
            c.key,
            c.old.as_deref().unwrap_or("(default)"),
            c.new.as_deref().unwrap_or("(default)")
        ));
    }
    if !p.labels.is_empty() {
        parts.push("labels/annotations".into());
    }
    let verb = match p.action {
        Action::Create => "created",
        Action::Delete => "deleted",
        _ => "changed",
    };
    if parts.is_empty() {
        format!("{verb} topic '{}'", p.topic)
    } else {
        format!("{verb} topic '{}': {}", p.topic, parts.join(", "))
    }
}

/// Brings the cluster's topic in line with `t`. `Err` only when the cluster could not be
/// asked or changed (requeue); a spec it refuses is a status.
pub async fn reconcile(admin: &Admin, t: &SluiceTopic, now: &Time) -> Result<Reconciled, Error> {
    let m = manifest(t);
    let object = object_name(t);
    let topic = m.topic_name().to_string();
    let generation = t.metadata.generation;
    let previous = t.status.as_ref();
    let not_ready = |reason: &str, message: String| Reconciled {
        status: SluiceTopicStatus {
            observed_generation: generation,
            conditions: vec![condition(previous, false, reason, message, generation, now)],
            topic_name: Some(topic.clone()),
            ..previous.cloned().unwrap_or_default()
        },
        change: None,
    };
    // The same checks as `sluice apply`, on the object as JSON.
    let json = serde_json::to_string(&m).unwrap_or_default();
    if let Err(problems) = sluice_manifest::parse(&[(object.clone(), json)]) {
        let text: Vec<String> = problems
            .0
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        return Ok(not_ready("InvalidSpec", text.join("; ")));
    }
    let fail = |source| Error::Admin {
        topic: topic.clone(),
        object: object.clone(),
        source,
    };
    let live = declarative::live_topics(admin).await.map_err(fail)?;
    let p = plan::plan_topic(&m, &object, live.get(&topic));
    if p.action == Action::Refused {
        return Ok(not_ready("ChangeRefused", p.refused.join("; ")));
    }
    if p.writes() {
        // What the brokers would refuse is a status, not a retry.
        if let Err(e) = declarative::execute(admin, &p, true).await {
            if e.is_retriable() {
                return Err(fail(e));
            }
            return Ok(not_ready(
                "ChangeRefused",
                format!("the cluster refuses it: {e}"),
            ));
        }
        declarative::execute(admin, &p, false).await.map_err(fail)?;
    }
    let change = p.changes().then(|| describe(&p));
    let d = admin.describe_topic(&topic).await.map_err(fail)?;
    let moving = d
        .partitions
        .iter()
        .filter(|p| !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
        .count();
    let under = d
        .partitions
        .iter()
        .filter(|p| p.isr.len() < p.replicas.len())
        .count();
    let (ready, reason, message) = if moving > 0 {
        (
            false,
            "ReplicasMoving",
            format!("{moving} partition(s) are moving to their new replicas"),
        )
    } else {
        (true, "Applied", format!("topic '{topic}' is as declared"))
    };
    Ok(Reconciled {
        status: SluiceTopicStatus {
            observed_generation: generation,
            conditions: vec![condition(previous, ready, reason, message, generation, now)],
            topic_name: Some(topic),
            partitions: Some(d.partitions.len() as i32),
            replication_factor: Some(d.replication_factor),
            under_replicated_partitions: Some(under as i32),
        },
        change,
    })
}

/// What deleting `t` does to its topic: with `deletionPolicy: Delete`, deletes it (only a
/// topic the operator or `sluice apply` manages); with Retain (the default), nothing.
/// Returns whether a topic was deleted.
pub async fn cleanup(admin: &Admin, t: &SluiceTopic) -> Result<bool, Error> {
    if t.spec.deletion_policy.unwrap_or_default() != DeletionPolicy::Delete {
        return Ok(false);
    }
    let m = manifest(t);
    let topic = m.topic_name().to_string();
    let object = object_name(t);
    let fail = |source| Error::Admin {
        topic: topic.clone(),
        object: object.clone(),
        source,
    };
    let live = declarative::live_topics(admin).await.map_err(fail)?;
    let managed = live.get(&topic).is_some_and(|l| {
        l.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
    });
    if !managed {
        return Ok(false);
    }
    admin.delete_topic(&topic).await.map_err(fail)?;
    Ok(true)
}
