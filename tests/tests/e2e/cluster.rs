//! Several brokers: the controller quorum, placement across brokers, and routing.

use std::time::Duration;

use sluice_client::{Admin, ErrorCode, NewTopic, ProducerConfig, ProducerRecord};
use sluice_proto::{ErrorDetailExt, RecordBatchBuilder, pb};
use sluice_tests::{Cluster, eventually};

#[tokio::test]
async fn partitions_spread_over_brokers_and_clients_follow_the_leaders() {
    let cluster = Cluster::start(3);
    let meta = cluster.wait_ready().await;
    assert_eq!(meta.brokers.len(), 3);
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("spread", 6, 1), false)
        .await
        .unwrap();
    let meta = admin.metadata().await.unwrap();
    let topic = meta.topics.iter().find(|t| t.name == "spread").unwrap();
    let mut leaders: Vec<i32> = topic.partitions.iter().map(|p| p.leader).collect();
    leaders.sort();
    assert_eq!(
        leaders,
        vec![1, 1, 2, 2, 3, 3],
        "6 partitions over 3 brokers, 2 each"
    );

    // A producer that knows only one broker reaches every partition's leader.
    let mut only_one = cluster.client();
    only_one.bootstrap = vec![cluster.brokers[1].address.clone()];
    let producer = sluice_client::Producer::connect(only_one, ProducerConfig::default())
        .await
        .unwrap();
    let mut ds = Vec::new();
    for i in 0..300 {
        ds.push(
            producer
                .send(ProducerRecord::new("spread", format!("v{i}")).key(format!("k{}", i % 30)))
                .await
                .unwrap(),
        );
    }
    let mut partitions = std::collections::HashSet::new();
    for d in ds {
        partitions.insert(d.await.unwrap().partition);
    }
    assert_eq!(partitions.len(), 6);
    let records = cluster.brokers[2].read_all("spread").await;
    assert_eq!(records.len(), 300);

    // Describe gathers every partition's figures from the broker that holds it.
    let d = admin.describe_topic("spread").await.unwrap();
    assert_eq!(
        d.partitions.iter().map(|p| p.log_end_offset).sum::<i64>(),
        300
    );
    assert!(d.partitions.iter().all(|p| p.leader > 0));
}

/// A new topic's partitions are each won by their preferred replica in a single election
/// (term 1): only that replica starts a new group, so no split vote leaves a partition
/// without a leader while a producer starts on the topic, and its first writes need no
/// retry.
#[tokio::test]
async fn a_new_topics_partitions_elect_their_preferred_leaders_once() {
    let cluster = Cluster::start_logged(3, &[], "info");
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("fresh", 6, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let described = admin.describe_topic("fresh").await.unwrap();
    for p in &described.partitions {
        assert_eq!(
            p.leader, p.replicas[0],
            "partition {} is led by its preferred replica",
            p.partition
        );
    }
    let producer = sluice_client::Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    for p in 0..6 {
        producer
            .send(ProducerRecord::new("fresh", format!("v{p}")).partition(p))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(
        producer.metrics().retries,
        0,
        "the first acks=all write to each new partition succeeds at once"
    );
    let logs: String = cluster.brokers.iter().map(|b| b.log()).collect();
    for p in 0..6 {
        let field = format!("topic=fresh partition={p} ");
        let won: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("leading the partition") && l.contains(&field))
            .collect();
        assert_eq!(won.len(), 1, "partition {p} had one election: {won:#?}");
        assert!(won[0].ends_with("term=1"), "partition {p}: {}", won[0]);
    }
}

#[tokio::test]
async fn a_broker_that_does_not_lead_a_partition_names_the_leader() {
    let cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("one", 1, 1), false)
        .await
        .unwrap();
    let meta = admin.metadata().await.unwrap();
    let leader = meta
        .topics
        .iter()
        .find(|t| t.name == "one")
        .unwrap()
        .partitions[0]
        .leader;
    let other = cluster
        .brokers
        .iter()
        .enumerate()
        .find(|(i, _)| *i as i32 + 1 != leader)
        .unwrap()
        .1;
    let leader_address = &cluster.brokers[(leader - 1) as usize].address;
    let cluster_client = sluice_client::cluster::Cluster::new(cluster.client()).unwrap();
    let mut client = cluster_client.log_client(&other.address).unwrap();
    let mut b = RecordBatchBuilder::new(Default::default());
    b.append(1, None, b"x", &[]);
    let status = client
        .produce(pb::ProduceRequest {
            topic: "one".into(),
            partition: 0,
            acks: -1,
            timeout_ms: 1000,
            batch: b.build(),
        })
        .await
        .unwrap_err();
    let detail = pb::ErrorDetail::from_status(&status).unwrap();
    assert_eq!(detail.error_code(), ErrorCode::NotLeader);
    assert_eq!(detail.leader_id, leader);
    assert_eq!(&detail.leader_address, leader_address);
}

#[tokio::test]
async fn losing_the_controller_leader_keeps_metadata_and_topic_creation() {
    let mut cluster = Cluster::start(3);
    let meta = cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("before", 3, 1).config("retention.ms", "3600000"),
            false,
        )
        .await
        .unwrap();
    let old_leader = meta.controller_id;
    cluster.node(old_leader).kill();

    let admin = Admin::new(cluster.client()).unwrap();
    let meta = eventually(
        "a new controller leader",
        Duration::from_secs(20),
        || async {
            admin
                .metadata()
                .await
                .ok()
                .filter(|m| m.controller_id > 0 && m.controller_id != old_leader)
        },
    )
    .await;
    assert!(
        meta.topics.iter().any(|t| t.name == "before"),
        "metadata survived: {meta:?}"
    );
    // Its port refuses connections, so the crash is certain: the survivor with the most
    // up-to-date metadata log campaigns without waiting for its election timer, and only
    // that one (two candidates would split the vote). Its timer may still beat it on a
    // loaded machine, so which broker won is not asserted here (the partition test is
    // deterministic: its followers' timers are stopped).
    let campaigners: Vec<i32> = (1..=3)
        .filter(|b| *b != old_leader)
        .filter(|b| {
            cluster.brokers[(*b - 1) as usize]
                .log()
                .contains("campaigning for the controller leadership")
        })
        .collect();
    assert!(
        campaigners.len() <= 1,
        "both survivors campaigned: {campaigners:?}"
    );
    admin
        .create_topic(NewTopic::new("after", 2, 1), false)
        .await
        .expect("topic creation works without the old leader");
    let d = admin.describe_topic("before").await.unwrap();
    assert_eq!(d.config["retention.ms"], "3600000");

    // The old leader comes back and catches up on what it missed.
    cluster.node(old_leader).restart();
    let returned = Admin::new(cluster.node(old_leader).client()).unwrap();
    eventually(
        "the restarted broker to learn about 'after'",
        Duration::from_secs(20),
        || async {
            returned
                .list_topics()
                .await
                .ok()
                .filter(|t| t.iter().any(|t| t.name == "after"))
        },
    )
    .await;
}

#[tokio::test]
async fn cluster_status_shows_a_down_broker_and_its_offline_partitions() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    Admin::new(cluster.client())
        .unwrap()
        .create_topic(NewTopic::new("health", 3, 1), false)
        .await
        .unwrap();
    let out = sluice_tests::run_cli(
        &cluster.bootstrap(),
        &["cluster", "status", "-o", "json"],
        "",
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        s["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["up"] == true),
        "{s}"
    );
    assert_eq!(s["offline_partitions"].as_array().unwrap().len(), 0);

    let victim = if s["controller_leader"] == 3 { 2 } else { 3 };
    cluster.node(victim).kill();
    let out = sluice_tests::run_cli(
        &cluster.bootstrap(),
        &["cluster", "status", "-o", "json"],
        "",
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let down: Vec<_> = s["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["up"] == false)
        .map(|b| b["node_id"].clone())
        .collect();
    assert_eq!(down, vec![serde_json::json!(victim)], "{s}");
    // Killed, so nothing listens on its port: the status says so, not just "down".
    let row = s["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["node_id"] == victim)
        .unwrap();
    assert_eq!(
        row["down_reason"], "not running (connection refused)",
        "{s}"
    );
    assert_eq!(
        s["offline_partitions"].as_array().unwrap().len(),
        1,
        "the down broker led one of 3 partitions: {s}"
    );
    let table = sluice_tests::run_cli(&cluster.bootstrap(), &["cluster", "status"], "");
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("DOWN: not running (connection refused)"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
}

/// A broker down shows in its peers' logs as a warning per peer and interval with the error,
/// not as openraft's ERROR line per Raft call of every group replicating to it (about 30 a
/// second with a few partitions under load); its return is logged too.
#[tokio::test]
async fn a_down_broker_is_logged_per_interval_not_per_raft_call() {
    // The brokers' default filter (`sluice_broker::server::DEFAULT_LOG_FILTER`).
    let mut cluster = Cluster::start_logged(3, &[], "info,openraft=error");
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("quiet", 6, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    cluster.node(3).kill();
    let config = ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    };
    let producer = sluice_client::Producer::connect(cluster.client(), config)
        .await
        .unwrap();
    let warned = |log: &str| {
        log.lines()
            .filter(|l| l.contains("Raft calls to a broker are") && l.contains("broker=3"))
            .count()
    };
    // Writes go on with two of three replicas; every partition that had broker 3 as a
    // follower keeps calling it, and the controller leader keeps heartbeating it.
    let started = std::time::Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < Duration::from_secs(3) {
        for p in 0..6 {
            let d = producer
                .send(ProducerRecord::new("quiet", format!("{sent}")).partition(p))
                .await
                .unwrap();
            d.await.expect("acks=all with two of three replicas");
            sent += 1;
        }
    }
    eventually(
        "a peer warning that Raft calls to broker 3 fail",
        Duration::from_secs(10),
        || async { (warned(&cluster.log(1)) + warned(&cluster.log(2)) > 0).then_some(()) },
    )
    .await;
    let down_for = started.elapsed();
    let mut warners = Vec::new();
    for id in [1, 2] {
        let log = cluster.log(id);
        let per_call: Vec<&str> = log.lines().filter(|l| l.contains("RPCError")).collect();
        assert!(
            per_call.is_empty(),
            "broker {id} logged {} per-call Raft errors, e.g. {:?}",
            per_call.len(),
            per_call.first()
        );
        // One line when the failures start, one per interval (10 s) after.
        let lines = warned(&log);
        assert!(
            lines <= 1 + (down_for.as_secs() / 10) as usize,
            "broker {id} warned {lines} times in {down_for:?}:\n{log}"
        );
        if lines > 0 {
            warners.push(id);
        }
        assert!(
            log.lines()
                .any(|l| l.contains("broker refuses connections") && l.contains("broker=3")),
            "broker {id} reports broker 3 down:\n{log}"
        );
    }
    cluster.node(3).restart();
    for id in [1, 2] {
        let ended = if warners.contains(&id) {
            "Raft calls to a broker succeed again"
        } else {
            "broker answers again"
        };
        eventually(
            "the survivor logging that broker 3 is back",
            Duration::from_secs(20),
            || async {
                let log = cluster.log(id);
                log.lines()
                    .any(|l| l.contains(ended) && l.contains("broker=3"))
                    .then_some(())
            },
        )
        .await;
    }
}

/// The ERROR lines of a broker's log (an operator alerting on ERROR is paged by each).
fn errors(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

/// Expected conditions are not errors: a clean restart of every broker, and two of three
/// brokers down for a while (the survivor campaigns for the controller and its partitions
/// over and over, each vote request to a dead peer failing), log no ERROR line. openraft
/// used to log `Can not initialize` for every group on every restart and `while requesting
/// vote` for every failed vote request.
#[tokio::test]
async fn restarts_and_lost_quorums_log_no_errors() {
    // The brokers' default filter (`sluice_broker::server::DEFAULT_LOG_FILTER`).
    let mut cluster = Cluster::start_logged(3, &[], "info,openraft=error");
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("calm", 6, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    for id in 1..=3 {
        let status = cluster.node(id).terminate();
        assert!(status.success(), "broker {id}: {status}");
    }
    let before: Vec<usize> = (1..=3).map(|id| cluster.log(id).len()).collect();
    for id in 1..=3 {
        cluster.node(id).restart();
    }
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    eventually(
        "every partition led again",
        Duration::from_secs(20),
        || async {
            let d = admin.describe_topic("calm").await.ok()?;
            d.partitions.iter().all(|p| p.leader > 0).then_some(())
        },
    )
    .await;
    for id in 1..=3 {
        let log = cluster.log(id);
        let restart = &log[before[id as usize - 1]..];
        assert_eq!(
            errors(restart),
            Vec::<&str>::new(),
            "broker {id} after a clean restart"
        );
    }

    let survivor = 1;
    let from = cluster.log(survivor).len();
    cluster.node(2).kill();
    cluster.node(3).kill();
    // Long enough for several election rounds of the controller and the partitions.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    eventually(
        "the survivor campaigning (failed vote requests reported per peer)",
        Duration::from_secs(20),
        || async {
            let log = cluster.log(survivor);
            (std::time::Instant::now() >= deadline
                && log[from..].contains("Raft calls to a broker are failing"))
            .then_some(())
        },
    )
    .await;
    let log = cluster.log(survivor);
    assert_eq!(
        errors(&log[from..]),
        Vec::<&str>::new(),
        "the survivor with two peers down"
    );
}

/// A broker whose metadata is behind (it was paused while a topic was created through the
/// others, as a broker that just restarted is) never calls that topic unknown: asked for it
/// by name, it first catches up with the controller. A producer and an admin that know only
/// that broker use the topic at once.
#[tokio::test]
async fn a_broker_behind_on_metadata_catches_up_before_calling_a_topic_unknown() {
    use nix::sys::signal::Signal;

    let mut cluster = Cluster::start(3);
    let meta = cluster.wait_ready().await;
    let late = (1..=3).find(|id| *id != meta.controller_id).unwrap();
    let late_address = cluster.node(late).address.clone();
    let mut others = cluster.client();
    others.bootstrap.retain(|a| *a != late_address);

    for round in 0..3 {
        let topic = format!("fresh{round}");
        cluster.node(late).signal(Signal::SIGSTOP);
        Admin::new(others.clone())
            .unwrap()
            .create_topic(NewTopic::new(&topic, 3, 1), false)
            .await
            .unwrap();
        cluster.node(late).signal(Signal::SIGCONT);

        let only_late = cluster.node(late).client();
        let d = Admin::new(only_late.clone())
            .unwrap()
            .describe_topic(&topic)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "describe {topic} at broker {late}: {e}\n{}",
                    cluster.log(late)
                )
            });
        assert_eq!(d.partitions.len(), 3);
        let producer = sluice_client::Producer::connect(only_late, ProducerConfig::default())
            .await
            .unwrap();
        let delivered = producer
            .send(ProducerRecord::new(&topic, "v").partition(round))
            .await
            .unwrap_or_else(|e| panic!("send to {topic} through broker {late}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("deliver to {topic} through broker {late}: {e}"));
        assert_eq!(delivered.offset, 0);
    }
    // A topic nobody created is still unknown, at once and with the hint.
    let err = Admin::new(cluster.node(late).client())
        .unwrap()
        .describe_topic("never-created")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::UnknownTopicOrPartition),
        "{err}"
    );
}
