//! The SluiceCluster reconciler against the in-memory API (`memory_api`), with the test
//! playing the StatefulSet controller and kubelet (pods, readiness, revisions), and the
//! brokers' side scripted ([`Script`]) or real (the scale-down and roll-guard tests start
//! real brokers): children created with owner references, only changed ones written,
//! status following readiness, a rolling change one broker at a time that waits for
//! readiness and `/ready-to-stop`, scale-down after the drain, deletion with both policies.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::runtime::controller::Action;
use parking_lot::Mutex;
use serde_json::{Value, json};
use sluice_operator::brokers::{Brokers, Drain, Health, LiveBrokers};
use sluice_operator::cluster_controller::{FINALIZER, reconcile};
use sluice_operator::controller::Context;
use sluice_operator::memory_api::MemoryApi;
use sluice_operator::{SluiceCluster, resources};

const NS: &str = "data";
const NAME: &str = "main";

/// The brokers' answers, scripted; the calls made, recorded.
#[derive(Debug, Default)]
struct Script {
    /// Brokers whose `/ready-to-stop` says yes.
    stoppable: Mutex<BTreeSet<i32>>,
    /// Replicas left on the drained brokers, one per drain call (the last repeats).
    drain_left: Mutex<VecDeque<i32>>,
    /// Refuse drains with this.
    drain_error: Mutex<Option<String>>,
    drains: Mutex<Vec<Vec<i32>>>,
    asked_to_stop: Mutex<Vec<i32>>,
    controller_leader: Mutex<Option<i32>>,
    under_replicated: Mutex<i32>,
}

impl Brokers for Script {
    fn ready_to_stop<'a>(
        &'a self,
        _: &'a SluiceCluster,
        broker: i32,
    ) -> BoxFuture<'a, Result<(), String>> {
        self.asked_to_stop.lock().push(broker);
        let ok = self.stoppable.lock().contains(&broker);
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "broker {broker}: orders-0 would have 1 in sync, below min.insync.replicas 2"
                ))
            }
        })
    }

    fn drain<'a>(
        &'a self,
        _: &'a SluiceCluster,
        brokers: &'a [i32],
    ) -> BoxFuture<'a, Result<Drain, String>> {
        self.drains.lock().push(brokers.to_vec());
        let error = self.drain_error.lock().clone();
        let left = {
            let mut q = self.drain_left.lock();
            if q.len() > 1 {
                q.pop_front()
            } else {
                q.front().copied()
            }
        }
        .unwrap_or(0);
        Box::pin(async move {
            match error {
                Some(e) => Err(e),
                None => Ok(Drain {
                    replicas_left: if brokers.is_empty() { 0 } else { left },
                    moving: left,
                }),
            }
        })
    }

    fn health<'a>(
        &'a self,
        _: &'a SluiceCluster,
        _: &'a [i32],
    ) -> BoxFuture<'a, Result<Health, String>> {
        let h = Health {
            controller_leader: *self.controller_leader.lock(),
            under_replicated: *self.under_replicated.lock(),
        };
        Box::pin(async move { Ok(h) })
    }
}

fn cluster(brokers: i32, extra: Value) -> Value {
    let mut c = json!({
        "apiVersion": "sluice.io/v1alpha1",
        "kind": "SluiceCluster",
        "metadata": {"name": NAME, "namespace": NS, "generation": 1},
        "spec": {"brokers": brokers, "storage": {"size": "10Gi"}},
    });
    if let (Some(spec), Some(extra)) = (c["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    c
}

struct Env {
    mem: MemoryApi,
    ctx: Arc<Context>,
}

impl Env {
    fn new(brokers: Arc<dyn Brokers>, object: Value) -> Env {
        let (mem, client) = MemoryApi::new();
        mem.put("sluiceclusters", object);
        let ctx = Arc::new(Context::with_brokers(client, None, brokers));
        Env { mem, ctx }
    }

    fn object(&self) -> Option<SluiceCluster> {
        self.mem
            .get("sluiceclusters", NS, NAME)
            .map(|v| serde_json::from_value(v).unwrap())
    }

    /// One reconcile of the cluster as the API holds it now.
    async fn reconcile(&self) -> Action {
        let c = self.object().expect("the SluiceCluster exists");
        reconcile(Arc::new(c), self.ctx.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Edits the cluster's spec (as `kubectl edit` would: the generation moves).
    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut c = self.mem.get("sluiceclusters", NS, NAME).unwrap();
        f(&mut c["spec"]);
        let g = c["metadata"]["generation"].as_i64().unwrap_or(1);
        c["metadata"]["generation"] = json!(g + 1);
        self.mem.put("sluiceclusters", c);
    }

    fn stateful_set(&self) -> Value {
        self.mem
            .get("statefulsets", NS, NAME)
            .expect("the StatefulSet")
    }

    fn replicas(&self) -> i64 {
        self.stateful_set()["spec"]["replicas"].as_i64().unwrap()
    }

    /// The StatefulSet controller's part: the update revision (from the pod template),
    /// and a pod per missing ordinal made from it; `ready` decides their readiness.
    fn play_statefulset(&self, ready: bool) {
        let mut set = self.stateful_set();
        // A revision per pod template, as the StatefulSet controller names them.
        let template = set["spec"]["template"].to_string();
        let revision = format!(
            "r-{:x}",
            template
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b))
                    .wrapping_mul(0x0100_0000_01b3))
        );
        set["status"] = json!({"updateRevision": revision});
        self.mem.put("statefulsets", set);
        let replicas = self.replicas();
        for o in 0..replicas {
            let name = format!("{NAME}-{o}");
            if self.mem.get("pods", NS, &name).is_none() {
                self.pod(o, &revision, ready);
            }
        }
        for p in self.mem.list("pods") {
            let name = p["metadata"]["name"].as_str().unwrap().to_string();
            let o: i64 = name.rsplit('-').next().unwrap().parse().unwrap();
            if o >= replicas {
                self.mem.remove("pods", NS, &name);
            }
        }
    }

    fn pod(&self, ordinal: i64, revision: &str, ready: bool) {
        let mut labels = json!(resources::selector(NAME));
        labels["controller-revision-hash"] = json!(revision);
        self.mem.put(
            "pods",
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{NAME}-{ordinal}"), "namespace": NS, "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }),
        );
    }

    fn set_all_ready(&self) {
        for mut p in self.mem.list("pods") {
            p["status"]["conditions"][0]["status"] = json!("True");
            self.mem.put("pods", p);
        }
    }

    fn pod_revisions(&self) -> Vec<(String, String)> {
        self.mem
            .list("pods")
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    p["metadata"]["labels"]["controller-revision-hash"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    }

    fn condition(&self, type_: &str) -> (String, String, String) {
        let c = self.object().unwrap();
        let s = c.status.expect("a status");
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn event_reasons(&self) -> Vec<String> {
        self.mem
            .list("events")
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Reconciles until the finalizer is on and the objects exist.
    async fn created(&self) {
        self.reconcile().await;
        assert_eq!(
            self.object().unwrap().metadata.finalizers,
            Some(vec![FINALIZER.to_string()])
        );
        self.reconcile().await;
    }
}

/// A new cluster gets every object, each owned by it; a reconcile with nothing changed
/// writes nothing but the status; the status follows the pods' readiness and the
/// brokers' figures.
#[tokio::test]
async fn a_new_cluster_gets_its_objects_and_a_status_that_follows_the_brokers() {
    let script = Arc::new(Script::default());
    *script.controller_leader.lock() = Some(2);
    let env = Env::new(script.clone(), cluster(3, json!({})));
    env.created().await;
    for (plural, name) in [
        ("configmaps", "main-config"),
        ("services", "main-brokers"),
        ("services", "main"),
        ("statefulsets", "main"),
        ("poddisruptionbudgets", "main"),
    ] {
        let o = env
            .mem
            .get(plural, NS, name)
            .unwrap_or_else(|| panic!("{plural}/{name} created"));
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "SluiceCluster", "{plural}/{name}");
        assert_eq!(owner["name"], NAME);
        assert_eq!(owner["controller"], true);
    }
    assert_eq!(env.replicas(), 3);
    assert!(env.event_reasons().contains(&"Applied".to_string()));
    // No pods yet: not ready, and why.
    let (status, reason, message) = env.condition("Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BrokersNotReady")
    );
    assert!(message.contains("0 of 3"), "{message}");

    env.play_statefulset(false);
    env.mem.clear_writes();
    env.reconcile().await;
    let writes: Vec<_> = env
        .mem
        .writes()
        .into_iter()
        .filter(|(_, plural, _)| plural != "events")
        .collect();
    assert_eq!(writes, [], "nothing is written when nothing changed");

    env.set_all_ready();
    let action = env.reconcile().await;
    let (status, reason, _) = env.condition("Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "AllBrokersReady")
    );
    assert_eq!(env.condition("Progressing").0, "False");
    assert_eq!(env.condition("Degraded").0, "False");
    let s = env.object().unwrap().status.unwrap();
    assert_eq!(s.ready_brokers, Some(3));
    assert_eq!(s.controller_leader, Some(2));
    assert_eq!(s.under_replicated_partitions, Some(0));
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));

    // Partitions out of sync: Degraded, not Ready.
    *script.under_replicated.lock() = 4;
    env.reconcile().await;
    let (status, reason, message) = env.condition("Degraded");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "UnderReplicated")
    );
    assert!(message.contains('4'), "{message}");
    assert_eq!(env.condition("Ready").0, "False");
}

/// A config change updates the ConfigMap and the StatefulSet and nothing else, then rolls
/// the brokers one at a time: each pod is deleted only when every broker is ready and its
/// broker may stop; the controller leader goes last.
#[tokio::test]
async fn a_config_change_rolls_one_broker_at_a_time_when_each_may_stop() {
    let script = Arc::new(Script::default());
    *script.controller_leader.lock() = Some(3);
    script.stoppable.lock().extend([1, 2, 3]);
    let env = Env::new(script.clone(), cluster(3, json!({})));
    env.created().await;
    env.play_statefulset(true);
    env.reconcile().await;
    assert_eq!(env.condition("Ready").0, "True");
    let old: Vec<String> = env.pod_revisions().into_iter().map(|p| p.1).collect();

    env.edit(|spec| spec["config"] = json!({"group_session_timeout": "30s"}));
    env.mem.clear_writes();
    env.reconcile().await;
    let changed: BTreeSet<(String, String)> = env
        .mem
        .writes()
        .into_iter()
        .filter(|(verb, plural, _)| {
            verb == "patch" && plural != "sluiceclusters" && plural != "events"
        })
        .map(|(_, p, n)| (p, n))
        .collect();
    assert_eq!(
        changed,
        BTreeSet::from([
            ("configmaps".to_string(), "main-config".to_string()),
            ("statefulsets".to_string(), "main".to_string())
        ])
    );
    // The new revision is known only once the StatefulSet controller has seen it.
    env.play_statefulset(true);
    let mut order = Vec::new();
    for _ in 0..20 {
        let before: BTreeSet<String> = env.pod_revisions().into_iter().map(|p| p.0).collect();
        env.reconcile().await;
        let after: BTreeSet<String> = env.pod_revisions().into_iter().map(|p| p.0).collect();
        let deleted: Vec<&String> = before.difference(&after).collect();
        assert!(deleted.len() <= 1, "one broker at a time: {deleted:?}");
        if let Some(d) = deleted.first() {
            order.push(d.to_string());
            // While the restarted broker is not back, nothing else is touched.
            env.reconcile().await;
            assert_eq!(
                env.pod_revisions().len(),
                2,
                "waits for the restarted broker"
            );
            let (status, reason, message) = env.condition("Progressing");
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("True", "RollingUpdate")
            );
            assert!(message.contains("waiting for broker"), "{message}");
            env.play_statefulset(false);
            env.reconcile().await;
            assert_eq!(env.pod_revisions().len(), 3);
            env.set_all_ready();
        }
        if env.pod_revisions().iter().all(|(_, r)| !old.contains(r)) {
            break;
        }
    }
    // Highest ordinal first, the controller leader (broker 3 = pod main-2) last.
    assert_eq!(order, ["main-1", "main-0", "main-2"]);
    env.reconcile().await;
    assert_eq!(env.condition("Ready").0, "True");
    assert_eq!(env.condition("Progressing").0, "False");
    // One Event per restart (repeats of a reason are one Event with a series count, as
    // kubectl shows them).
    let restarts: i64 = env
        .mem
        .list("events")
        .iter()
        .filter(|e| e["reason"] == "RestartingBroker")
        .map(|e| e["series"]["count"].as_i64().unwrap_or(1))
        .sum();
    assert_eq!(restarts, 3);
}

/// A broker that may not stop (`/ready-to-stop` says no) holds the roll, and the status
/// says why; once it may, the roll goes on.
#[tokio::test]
async fn a_roll_waits_while_the_next_broker_may_not_stop() {
    let script = Arc::new(Script::default());
    let env = Env::new(script.clone(), cluster(3, json!({})));
    env.created().await;
    env.play_statefulset(true);
    env.edit(|spec| spec["image"] = json!("ghcr.io/sluice-io/sluice:0.2.0"));
    env.reconcile().await;
    env.play_statefulset(true);
    for _ in 0..3 {
        env.reconcile().await;
        assert_eq!(env.pod_revisions().len(), 3, "no pod deleted");
    }
    assert!(script.asked_to_stop.lock().iter().all(|b| *b == 3));
    let (status, reason, message) = env.condition("Progressing");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "WaitingForInSync")
    );
    assert!(message.contains("min.insync.replicas"), "{message}");
    script.stoppable.lock().insert(3);
    env.reconcile().await;
    assert_eq!(env.pod_revisions().len(), 2);
    assert!(env.mem.get("pods", NS, "main-2").is_none());
}

/// Scale-down: the leaving brokers are drained first and the StatefulSet keeps them until
/// no replica is left; never below the three controller voters; a drain the brokers refuse
/// keeps the size and says why. Scale-up clears the drained set first.
#[tokio::test]
async fn a_scale_down_drains_the_leaving_brokers_first() {
    let script = Arc::new(Script::default());
    script.drain_left.lock().extend([12, 5, 0]);
    let env = Env::new(script.clone(), cluster(5, json!({})));
    env.created().await;
    env.play_statefulset(true);
    env.reconcile().await;
    assert!(
        script.drains.lock().is_empty(),
        "no drain call while nothing scales"
    );

    env.edit(|spec| spec["brokers"] = json!(3));
    env.reconcile().await;
    assert_eq!(
        env.replicas(),
        5,
        "kept while replicas are on brokers 4 and 5"
    );
    let (status, reason, message) = env.condition("Progressing");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "DrainingBrokers")
    );
    assert!(
        message.contains("12 replica(s)") && message.contains("[4, 5]"),
        "{message}"
    );
    env.reconcile().await;
    assert_eq!(env.replicas(), 5);
    env.reconcile().await;
    assert_eq!(env.replicas(), 3, "shrunk once drained");
    assert_eq!(*script.drains.lock(), [vec![4, 5], vec![4, 5], vec![4, 5]]);
    env.play_statefulset(true);
    env.reconcile().await;
    assert_eq!(env.condition("Ready").0, "True");
    let events = env.event_reasons();
    assert!(
        events.contains(&"DrainingBrokers".to_string())
            && events.contains(&"ScalingDown".to_string()),
        "{events:?}"
    );

    // Below the controller voters: refused, size kept.
    env.edit(|spec| spec["brokers"] = json!(2));
    env.reconcile().await;
    assert_eq!(env.replicas(), 3);
    let (status, reason, message) = env.condition("Degraded");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ScaleDownRefused")
    );
    assert!(message.contains("controller voters"), "{message}");

    // Growing clears the drained set before the StatefulSet grows.
    script.drains.lock().clear();
    env.edit(|spec| spec["brokers"] = json!(4));
    env.reconcile().await;
    assert_eq!(*script.drains.lock(), [Vec::<i32>::new()]);
    assert_eq!(env.replicas(), 4);

    // A drain the brokers refuse: size kept, Degraded with their reason.
    env.play_statefulset(true);
    *script.drain_error.lock() = Some("topic 'wide' has replication factor 4".into());
    env.edit(|spec| spec["brokers"] = json!(3));
    env.reconcile().await;
    assert_eq!(env.replicas(), 4);
    let (status, reason, message) = env.condition("Degraded");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ScaleDownBlocked")
    );
    assert!(message.contains("'wide'"), "{message}");
}

/// Deleting a cluster: with Retain the volume claims stay; with Delete they go; either
/// way the finalizer comes off only after that, and then the object is gone.
#[tokio::test]
async fn deletion_keeps_or_deletes_the_volumes_by_policy() {
    for (policy, kept) in [("Retain", true), ("Delete", false)] {
        let script = Arc::new(Script::default());
        let env = Env::new(script, cluster(3, json!({"deletionPolicy": policy})));
        env.created().await;
        for o in 0..3 {
            let mut labels = json!(resources::selector(NAME));
            labels["extra"] = json!("x");
            env.mem.put(
                "persistentvolumeclaims",
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": format!("data-{NAME}-{o}"), "namespace": NS, "labels": labels}}),
            );
        }
        // Another cluster's claim is never touched.
        env.mem.put(
            "persistentvolumeclaims",
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data-other-0", "namespace": NS, "labels": resources::selector("other")}}),
        );
        let mut c = env.mem.get("sluiceclusters", NS, NAME).unwrap();
        c["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        env.mem.put("sluiceclusters", c);
        env.reconcile().await;
        assert!(
            env.object().is_none(),
            "{policy}: the finalizer came off and it went"
        );
        let claims = env.mem.list("persistentvolumeclaims").len();
        assert_eq!(claims, if kept { 4 } else { 1 }, "{policy}");
        let reason = if kept {
            "VolumesRetained"
        } else {
            "VolumesDeleted"
        };
        assert!(
            env.event_reasons().contains(&reason.to_string()),
            "{policy}"
        );
    }
}

/// With real brokers behind it: scaling 4 -> 3 drains broker 4 through the brokers'
/// `DrainBrokers` and shrinks only once no replica is left on it; and a roll does not
/// restart a broker while another is down (its `/ready-to-stop` says no).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_real_brokers_scale_down_drains_and_a_roll_waits_for_in_sync() {
    use sluice_client::{Admin, NewTopic};
    use sluice_tests::{Cluster, eventually};
    let mut brokers = Cluster::start(4);
    brokers.wait_ready().await;
    let admin = Admin::new(brokers.client()).unwrap();
    let mut topic = NewTopic::new("orders", 8, 3);
    topic
        .config
        .insert("min.insync.replicas".into(), "2".into());
    admin.create_topic(topic, false).await.unwrap();
    let urls: Vec<String> = brokers.brokers.iter().map(|b| b.http_url()).collect();
    let live = LiveBrokers::new(
        Some(brokers.bootstrap()),
        Some(Box::new(move |_, id| urls.get((id - 1) as usize).cloned())),
    );
    let env = Env::new(Arc::new(live), cluster(4, json!({})));
    env.created().await;
    env.play_statefulset(true);
    env.reconcile().await;
    let s = env.object().unwrap().status.unwrap();
    assert_eq!(s.ready_brokers, Some(4));
    assert!(s.controller_leader.is_some(), "{s:?}");

    env.edit(|spec| spec["brokers"] = json!(3));
    env.reconcile().await;
    let replicas_on_4 = |d: &sluice_client::pb::TopicDescription| {
        d.partitions
            .iter()
            .filter(|p| p.replicas.contains(&4))
            .count()
    };
    eventually(
        "the StatefulSet shrinks to 3",
        Duration::from_secs(60),
        || async {
            env.reconcile().await;
            (env.replicas() == 3).then_some(())
        },
    )
    .await;
    let d = admin.describe_topic("orders").await.unwrap();
    assert_eq!(replicas_on_4(&d), 0, "{d:?}");
    env.play_statefulset(true);

    // Broker 1 down: a roll may not restart broker 2 or 3 (every partition of orders is on
    // 1, 2 and 3 now, with min.insync.replicas 2).
    brokers.node(1).kill();
    let url2 = brokers.brokers[1].http_url();
    eventually("broker 2 may not stop", Duration::from_secs(30), || {
        let url2 = url2.clone();
        async move {
            let (code, _) = sluice_operator::brokers::http_get(&url2, "/ready-to-stop")
                .await
                .ok()?;
            (code == 503).then_some(())
        }
    })
    .await;
    env.edit(|spec| spec["image"] = json!("ghcr.io/sluice-io/sluice:0.2.0"));
    env.reconcile().await;
    env.play_statefulset(true);
    env.reconcile().await;
    let (status, reason, message) = env.condition("Progressing");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "WaitingForInSync"),
        "{message}"
    );
    assert!(message.contains("may not stop yet"), "{message}");
    assert_eq!(env.pod_revisions().len(), 3, "no pod deleted");
}
