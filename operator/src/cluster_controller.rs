//! Reconciling a `SluiceCluster`: its objects (`resources`) applied with server-side apply
//! (only those that differ from what the API holds), then, one step per reconcile:
//! - **scale-down**: the brokers that leave are drained first (their partitions moved to
//!   the others through the brokers' `DrainBrokers`); the StatefulSet shrinks only once no
//!   replica is left on them. Never below the controller voters (the first three).
//! - **scale-up**: the drained set is cleared, then the StatefulSet grows.
//! - **rolling change** (the StatefulSet is `OnDelete`): when every broker is ready, the
//!   next pod of an old revision is deleted, once its broker says it may stop
//!   (`/ready-to-stop`: no partition would fall below `min.insync.replicas`); the
//!   controller leader goes last. One broker at a time: the next waits for the restarted
//!   one to be ready again.
//! - **status**: ready brokers from the pods, controller leader and under-replicated
//!   partitions from the brokers' `/metrics`, conditions Ready / Progressing / Degraded.
//!
//! Deletion runs inside the finalizer `sluice.io/cluster-cleanup`: the objects go with the
//! cluster (owner references); the brokers' volume claims are deleted only with
//! `deletionPolicy: Delete`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use serde_json::Value;
use sluice_manifest::DeletionPolicy;

use crate::cluster::{SluiceCluster, SluiceClusterStatus};
use crate::conditions::{condition, find};
use crate::controller::{Context, MANAGER};
use crate::resources::{self, Children};

/// The finalizer on every SluiceCluster the operator has seen.
pub const FINALIZER: &str = "sluice.io/cluster-cleanup";
/// Controller voters: the first brokers, which a scale-down never removes.
const MAX_VOTERS: i32 = 3;
/// How soon a cluster is looked at again while something is in progress.
pub const PROGRESS_RECHECK: Duration = Duration::from_secs(5);
/// How soon a settled cluster is looked at again (status freshness, drift).
pub const RESYNC: Duration = Duration::from_secs(60);
/// The pod label with the StatefulSet revision the pod was made from.
const REVISION_LABEL: &str = "controller-revision-hash";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] resources::Error),
    #[error("SluiceCluster {object}: {what}: {source}")]
    Api {
        object: String,
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("SluiceCluster finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short name of the kind of failure, for logs and counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Spec(_) => "invalid_spec",
            Error::Api { .. } => "api_call",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// `namespace/name`, for messages.
pub fn object_name(c: &SluiceCluster) -> String {
    format!(
        "{}/{}",
        c.namespace().unwrap_or_else(|| "default".into()),
        c.name_any()
    )
}

fn api_error(c: &SluiceCluster, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let object = object_name(c);
    let what = what.into();
    move |source| Error::Api {
        object,
        what,
        source: Box::new(source),
    }
}

/// A pod of the cluster as the reconcile needs it.
#[derive(Debug, Clone)]
struct BrokerPod {
    ordinal: i32,
    name: String,
    ready: bool,
    deleting: bool,
    revision: Option<String>,
}

fn broker_pods(pods: &[Pod], cluster: &str) -> Vec<BrokerPod> {
    let mut out: Vec<BrokerPod> = pods
        .iter()
        .filter_map(|p| {
            let name = p.name_any();
            let ordinal = name.strip_prefix(&format!("{cluster}-"))?.parse().ok()?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some(BrokerPod {
                ordinal,
                ready,
                deleting: p.metadata.deletion_timestamp.is_some(),
                revision: p.labels().get(REVISION_LABEL).cloned(),
                name,
            })
        })
        .collect();
    out.sort_by_key(|p| p.ordinal);
    out
}

/// What this reconcile found in progress or wrong, for the conditions.
#[derive(Debug, Default)]
struct Notes {
    progressing: Option<(&'static str, String)>,
    degraded: Option<(&'static str, String)>,
}

/// Whether `live` already holds everything `desired` says (what the API server adds, such
/// as defaults and status, is ignored).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| contains(lv, v))),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(l, d)| contains(l, d))
        }
        (l, d) => l == d,
    }
}

/// Applies each of `children` that differs from the API's copy; the `Kind/name` of each
/// one written.
async fn apply_children(
    ctx: &Context,
    c: &SluiceCluster,
    children: &Children,
) -> Result<Vec<String>, Error> {
    let ns = c.namespace().unwrap_or_default();
    let params = PatchParams::apply(MANAGER).force();
    let mut written = Vec::new();
    let objects = children.objects().map_err(|e| resources::Error::Invalid {
        name: c.name_any(),
        what: e.to_string(),
    })?;
    for desired in objects {
        let kind = desired["kind"].as_str().unwrap_or_default().to_string();
        let name = desired["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api_version = desired["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
        let resource = kube::api::ApiResource::from_gvk(&gvk);
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ns, &resource);
        let what = format!("{kind} {name}");
        let live = api
            .get_opt(&name)
            .await
            .map_err(api_error(c, format!("reading {what}")))?;
        let live = live.map(|l| serde_json::to_value(l).unwrap_or_default());
        if live.as_ref().is_some_and(|l| contains(l, &desired)) {
            continue;
        }
        api.patch(&name, &params, &Patch::Apply(&desired))
            .await
            .map_err(api_error(c, format!("applying {what}")))?;
        written.push(format!("{kind}/{name}"));
    }
    Ok(written)
}

/// The broker count the StatefulSet gets now: `want`, or `current` while the brokers a
/// scale-down removes are drained (or when it is refused).
async fn scale(
    ctx: &Context,
    c: &SluiceCluster,
    want: i32,
    current: i32,
    notes: &mut Notes,
) -> i32 {
    let was_draining = c
        .status
        .as_ref()
        .and_then(|s| find(&s.conditions, "Progressing"))
        .is_some_and(|p| p.status == "True" && p.reason == "DrainingBrokers");
    if want >= current {
        if want > current || was_draining {
            // Brokers coming (back) take replicas again.
            if let Err(e) = ctx.brokers.drain(c, &[]).await {
                tracing::warn!(object = %object_name(c), cause = %e, "clearing the drained brokers before scaling up; will retry");
                notes.progressing = Some((
                    "UndrainingBrokers",
                    format!("clearing the drained brokers first: {e}"),
                ));
                return current;
            }
        }
        return want;
    }
    let voters = current.min(MAX_VOTERS);
    if want < voters {
        notes.degraded = Some((
            "ScaleDownRefused",
            format!(
                "spec.brokers {want} is below the {voters} controller voters (brokers 1-{voters}), which cannot leave; keeping {current} brokers"
            ),
        ));
        return current;
    }
    let leaving: Vec<i32> = (want + 1..=current).collect();
    match ctx.brokers.drain(c, &leaving).await {
        Ok(d) if d.replicas_left == 0 => {
            ctx.event(
                c,
                EventType::Normal,
                "ScalingDown",
                format!("brokers {leaving:?} hold no replicas; removing them ({current} -> {want} brokers)"),
            )
            .await;
            notes.progressing = Some((
                "ScalingDown",
                format!("removing drained brokers {leaving:?}"),
            ));
            want
        }
        Ok(d) => {
            if !was_draining {
                ctx.event(
                    c,
                    EventType::Normal,
                    "DrainingBrokers",
                    format!("moving every replica off brokers {leaving:?} before removing them"),
                )
                .await;
            }
            notes.progressing = Some((
                "DrainingBrokers",
                format!(
                    "moving {} replica(s) off brokers {leaving:?} before removing them ({} partition(s) moving)",
                    d.replicas_left, d.moving
                ),
            ));
            current
        }
        Err(e) => {
            notes.degraded = Some((
                "ScaleDownBlocked",
                format!(
                    "brokers {leaving:?} cannot be drained, so the cluster keeps {current} brokers: {e}"
                ),
            ));
            current
        }
    }
}

/// One step of a rolling change: the next outdated broker's pod deleted when every broker
/// is ready and it may stop.
async fn roll(
    ctx: &Context,
    c: &SluiceCluster,
    pods: &[BrokerPod],
    replicas: i32,
    revision: Option<&str>,
    controller_leader: Option<i32>,
    notes: &mut Notes,
) -> Result<(), Error> {
    let Some(revision) = revision else {
        return Ok(());
    };
    let mut outdated: Vec<&BrokerPod> = pods
        .iter()
        .filter(|p| p.ordinal < replicas && p.revision.as_deref() != Some(revision))
        .collect();
    let waiting: Vec<String> = (0..replicas)
        .filter(|o| {
            !pods
                .iter()
                .any(|p| p.ordinal == *o && p.ready && !p.deleting)
        })
        .map(|o| format!("broker {}", o + 1))
        .collect();
    if outdated.is_empty() {
        let was_rolling = c
            .status
            .as_ref()
            .and_then(|s| find(&s.conditions, "Progressing"))
            .is_some_and(|p| p.status == "True" && p.reason == "RollingUpdate");
        if was_rolling && !waiting.is_empty() && notes.progressing.is_none() {
            notes.progressing = Some((
                "RollingUpdate",
                format!(
                    "last broker restarted; waiting for {} to be ready",
                    waiting.join(", ")
                ),
            ));
        }
        return Ok(());
    }
    // The controller leader last (one election, not one per broker), then from the top.
    outdated.sort_by_key(|p| (Some(p.ordinal + 1) == controller_leader, -p.ordinal));
    // A scale step in progress goes first: the roll waits for it.
    if notes.progressing.is_some() {
        return Ok(());
    }
    if !waiting.is_empty() {
        notes.progressing = Some((
            "RollingUpdate",
            format!(
                "{} broker(s) to restart; waiting for {} to be ready",
                outdated.len(),
                waiting.join(", ")
            ),
        ));
        return Ok(());
    }
    let next = outdated[0];
    let broker = next.ordinal + 1;
    match ctx.brokers.ready_to_stop(c, broker).await {
        Ok(()) => {
            let pods: Api<Pod> =
                Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
            pods.delete(&next.name, &DeleteParams::default())
                .await
                .map_err(api_error(
                    c,
                    format!("deleting pod {} to restart it", next.name),
                ))?;
            ctx.event(
                c,
                EventType::Normal,
                "RestartingBroker",
                format!(
                    "restarting broker {broker} (pod {}) for the new spec; {} to go after it",
                    next.name,
                    outdated.len() - 1
                ),
            )
            .await;
            notes.progressing = Some((
                "RollingUpdate",
                format!(
                    "restarting broker {broker}; {} more after it",
                    outdated.len() - 1
                ),
            ));
        }
        Err(why) => {
            notes.progressing = Some((
                "WaitingForInSync",
                format!("broker {broker} is next to restart but may not stop yet: {why}"),
            ));
        }
    }
    Ok(())
}

async fn apply(c: Arc<SluiceCluster>, ctx: &Context) -> Result<Action, Error> {
    let name = c.name_any();
    let ns = c.namespace().unwrap_or_default();
    let want = c.spec.brokers;
    let mut children = resources::children(&c)?;
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let live = sets
        .get_opt(&name)
        .await
        .map_err(api_error(&c, format!("reading StatefulSet {name}")))?;
    let current = live
        .as_ref()
        .and_then(|s| s.spec.as_ref()?.replicas)
        .unwrap_or(want);
    let mut notes = Notes::default();
    let replicas = scale(ctx, &c, want, current, &mut notes).await;
    if let Some(spec) = children.stateful_set.spec.as_mut() {
        spec.replicas = Some(replicas);
    }
    let written = apply_children(ctx, &c, &children).await?;
    if !written.is_empty() {
        let verb = if live.is_none() { "created" } else { "updated" };
        ctx.event(
            &*c,
            EventType::Normal,
            "Applied",
            format!("{verb} {}", written.join(", ")),
        )
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = resources::selector(&name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error(&c, "listing its pods"))?;
    let pods = broker_pods(&listed.items, &name);
    let ready: Vec<i32> = pods
        .iter()
        .filter(|p| p.ready && !p.deleting && p.ordinal < replicas)
        .map(|p| p.ordinal + 1)
        .collect();
    let health = if ready.is_empty() {
        Err("no broker is ready".to_string())
    } else {
        ctx.brokers.health(&c, &ready).await
    };
    let leader = health.as_ref().ok().and_then(|h| h.controller_leader);
    // The StatefulSet's revision for the spec just applied: what the StatefulSet controller
    // reports (a pod of another revision is outdated).
    let revision = sets
        .get_opt(&name)
        .await
        .map_err(api_error(&c, format!("reading StatefulSet {name}")))?
        .and_then(|s| s.status?.update_revision);
    roll(
        ctx,
        &c,
        &pods,
        replicas,
        revision.as_deref(),
        leader,
        &mut notes,
    )
    .await?;
    if notes.progressing.is_none() && (ready.len() as i32) < replicas {
        let waiting: Vec<String> = (1..=replicas)
            .filter(|b| !ready.contains(b))
            .map(|b| format!("broker {b}"))
            .collect();
        notes.progressing = Some((
            "BrokersStarting",
            format!("waiting for {} to be ready", waiting.join(", ")),
        ));
    }
    let now = Time(k8s_openapi::chrono::Utc::now());
    let status = status(&c, &notes, ready.len() as i32, &health, &now);
    let api: Api<SluiceCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": "sluice.io/v1alpha1",
        "kind": "SluiceCluster",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(api_error(&c, "writing its status"))?;
    Ok(
        if notes.progressing.is_some() || ready.len() as i32 != want {
            Action::requeue(PROGRESS_RECHECK)
        } else {
            Action::requeue(RESYNC)
        },
    )
}

fn status(
    c: &SluiceCluster,
    notes: &Notes,
    ready: i32,
    health: &Result<crate::brokers::Health, String>,
    now: &Time,
) -> SluiceClusterStatus {
    let want = c.spec.brokers;
    let generation = c.metadata.generation;
    let previous: &[Condition] = c.status.as_ref().map_or(&[], |s| s.conditions.as_slice());
    let under = health.as_ref().ok().map(|h| h.under_replicated);
    let degraded = notes.degraded.clone().or_else(|| match (under, health) {
        (Some(n), _) if n > 0 => Some((
            "UnderReplicated",
            format!("{n} partition(s) have replicas out of sync"),
        )),
        (_, Err(e)) if ready > 0 => Some(("BrokersUnreachable", e.clone())),
        _ => None,
    });
    let progressing = notes.progressing.clone();
    let (is_ready, reason, message) = if let Some((r, m)) = &notes.degraded {
        (false, *r, m.clone())
    } else if ready < want {
        (
            false,
            "BrokersNotReady",
            format!("{ready} of {want} brokers ready"),
        )
    } else if let Some((r, m)) = &progressing {
        (false, *r, m.clone())
    } else if let Some((r, m)) = &degraded {
        (false, *r, m.clone())
    } else {
        (
            true,
            "AllBrokersReady",
            format!("{want} brokers ready, every partition in sync"),
        )
    };
    let (p_reason, p_message) = progressing
        .clone()
        .unwrap_or(("Settled", "nothing in progress".into()));
    let (d_reason, d_message) = degraded
        .clone()
        .unwrap_or(("Healthy", "nothing wrong".into()));
    SluiceClusterStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                previous, "Ready", is_ready, reason, message, generation, now,
            ),
            condition(
                previous,
                "Progressing",
                progressing.is_some(),
                p_reason,
                p_message,
                generation,
                now,
            ),
            condition(
                previous,
                "Degraded",
                degraded.is_some(),
                d_reason,
                d_message,
                generation,
                now,
            ),
        ],
        ready_brokers: Some(ready),
        controller_leader: health.as_ref().ok().and_then(|h| h.controller_leader),
        under_replicated_partitions: under,
    }
}

/// On deletion: the volume claims go with `deletionPolicy: Delete`; every other object
/// goes with the cluster through its owner reference.
async fn cleanup(c: Arc<SluiceCluster>, ctx: &Context) -> Result<Action, Error> {
    if c.spec.deletion_policy.unwrap_or_default() != DeletionPolicy::Delete {
        ctx.event(
            &*c,
            EventType::Normal,
            "VolumesRetained",
            "the brokers' volume claims are kept (deletionPolicy: Retain)".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let name = c.name_any();
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let selector = resources::selector(&name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = claims
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error(&c, "listing its volume claims"))?;
    let mut deleted = Vec::new();
    for claim in listed.items {
        let claim_name = claim.name_any();
        // Only the claims of this cluster's StatefulSet (`data-<cluster>-<ordinal>`).
        if !claim_name.starts_with(&format!("data-{name}-")) {
            continue;
        }
        claims
            .delete(&claim_name, &DeleteParams::default())
            .await
            .map_err(api_error(&c, format!("deleting volume claim {claim_name}")))?;
        deleted.push(claim_name);
    }
    ctx.event(
        &*c,
        EventType::Normal,
        "VolumesDeleted",
        format!(
            "deleted the brokers' volume claims (deletionPolicy: Delete): {}",
            deleted.join(", ")
        ),
    )
    .await;
    Ok(Action::await_change())
}

/// One reconcile as the controller runs it: inside the finalizer, apply or clean up.
pub async fn reconcile(c: Arc<SluiceCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<SluiceCluster> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let key = format!("SluiceCluster {}", object_name(&c));
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, c, |event| async {
        match event {
            Event::Apply(c) => apply(c, &ctx).await,
            Event::Cleanup(c) => cleanup(c, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(
        "SluiceCluster",
        started.elapsed(),
        result.as_ref().err().map(Error::kind),
    );
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

fn error_policy(c: Arc<SluiceCluster>, e: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("SluiceCluster {}", object_name(&c));
    let (n, delay) = ctx.failed(&key);
    tracing::warn!(object = %object_name(&c), kind = e.kind(), attempt = n, retry_in = ?delay, cause = %e, "reconciling a SluiceCluster failed; will retry");
    Action::requeue(delay)
}

/// Watches every SluiceCluster (and the StatefulSets and Services it owns) and reconciles
/// each until the stream ends.
pub async fn run(
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;
    use kube::runtime::controller::Controller;
    use kube::runtime::watcher;
    let api: Api<SluiceCluster> = Api::all(ctx.client.clone());
    let sets: Api<StatefulSet> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .owns(sets, watcher::Config::default())
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
    use serde_json::json;

    #[test]
    fn an_object_holding_more_than_desired_needs_no_write() {
        let desired = json!({"spec": {"replicas": 3, "ports": [{"port": 1}]}});
        let live = json!({"spec": {"replicas": 3, "ports": [{"port": 1, "protocol": "TCP"}], "x": 1}, "status": {}});
        assert!(contains(&live, &desired));
        assert!(!contains(
            &json!({"spec": {"replicas": 4, "ports": [{"port": 1}]}}),
            &desired
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 3, "ports": []}}),
            &desired
        ));
    }
}
