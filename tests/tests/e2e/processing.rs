//! Processing records safely (the seeds' four production questions): record ids stable
//! across re-delivery and failover, key order under parallel workers, no commit past an
//! unfinished record (also across SIGKILL), poison records to a dead-letter topic and
//! back, and a clear stop without one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use sluice_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, NewTopic,
    Ordering, Processor, ProcessorConfig, Producer, ProducerConfig, ProducerRecord, RecordId,
};
use sluice_tests::{CliProcess, Cluster, eventually, read_all, run_cli};

use crate::groups::group_cluster;

/// Sends `values` (key, value) to `topic` and waits for every acknowledgement.
async fn produce(
    client: ClientConfig,
    config: ProducerConfig,
    topic: &str,
    values: &[(String, String)],
) {
    let producer = Producer::connect(client, config).await.unwrap();
    let mut acked = Vec::new();
    for (k, v) in values {
        acked.push(
            producer
                .send(ProducerRecord::new(topic, v.clone()).key(k.clone()))
                .await
                .unwrap(),
        );
    }
    for d in acked {
        d.await.unwrap();
    }
    producer.close().await;
}

/// A one-broker cluster (session timeout `session`, else the default) with `topic`
/// (`partitions`, factor 1) holding `values` (key, value).
async fn one_broker_with(
    topic: &str,
    partitions: i32,
    values: &[(String, String)],
    session: Option<&str>,
) -> (Cluster, Admin) {
    let (cluster, admin) = group_cluster(1, 1, session).await;
    admin
        .create_topic(NewTopic::new(topic, partitions, 1), false)
        .await
        .unwrap();
    produce(cluster.client(), ProducerConfig::default(), topic, values).await;
    (cluster, admin)
}

/// The high watermark of each partition of `topic`.
async fn ends(admin: &Admin, topic: &str) -> BTreeMap<i32, i64> {
    admin
        .describe_topic(topic)
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect()
}

fn group_consumer(client: ClientConfig, group: &str) -> Consumer {
    Consumer::new(
        client,
        ConsumerConfig {
            group_id: Some(group.into()),
            enable_auto_commit: false,
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    )
    .unwrap()
}

/// The group's committed offset of each partition of `topic` (-1: none).
async fn committed(admin: &Admin, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    admin
        .committed_offsets(group)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.topic == topic)
        .map(|c| (c.partition, c.offset))
        .collect()
}

/// Ids come from the idempotent producer's sequence (else the offset), are the same when
/// a record is read again and when it is read from another replica after its leader died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_ids_are_stable_across_redelivery_and_failover() {
    let (mut cluster, admin) = group_cluster(3, 1, None).await;
    admin
        .create_topic(NewTopic::new("ids", 1, 3), false)
        .await
        .unwrap();
    let values: Vec<(String, String)> = (0..20)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    produce(cluster.client(), ProducerConfig::default(), "ids", &values).await;
    let plain = ProducerConfig {
        enable_idempotence: false,
        acks: sluice_client::Acks::Leader,
        ..ProducerConfig::default()
    };
    produce(cluster.client(), plain, "ids", &values[..5]).await;
    let first: Vec<RecordId> = read_all(cluster.client(), "ids")
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(first.len(), 25);
    // The idempotent producer's records: one producer, consecutive sequences from 0.
    let mut producer_ids = BTreeSet::new();
    for (i, id) in first[..20].iter().enumerate() {
        match id {
            RecordId::Producer {
                producer_id,
                sequence,
                ..
            } => {
                producer_ids.insert(*producer_id);
                assert_eq!(*sequence, i as i32, "{id}");
            }
            other => panic!("record {i} has {other:?}, not a producer id"),
        }
    }
    assert_eq!(producer_ids.len(), 1);
    for (i, id) in first[20..].iter().enumerate() {
        assert_eq!(id.to_string(), format!("ids-0@{}", 20 + i));
    }
    let distinct: BTreeSet<String> = first.iter().map(ToString::to_string).collect();
    assert_eq!(distinct.len(), 25, "ids are distinct");
    // The leader dies; the new leader (another replica) serves the same ids.
    let leader = admin.describe_topic("ids").await.unwrap().partitions[0].leader;
    cluster.node(leader).kill();
    eventually("a new leader", Duration::from_secs(20), || async {
        let d = admin.describe_topic("ids").await.ok()?;
        let l = d.partitions[0].leader;
        (l > 0 && l != leader).then_some(())
    })
    .await;
    let second: Vec<RecordId> = read_all(cluster.client(), "ids")
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(first, second);
}

/// 16 workers with random per-record delays keep each key's records in offset order,
/// handle every record once (nothing fails, nothing moves), and commit to the end; over
/// several seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_with_16_workers_under_random_delays() {
    let keys = 24;
    let per_key = 40;
    let mut values = Vec::new();
    for seq in 0..per_key {
        for k in 0..keys {
            values.push((format!("key{k}"), format!("key{k}:{seq}")));
        }
    }
    let (cluster, admin) = one_broker_with("orders", 4, &values, None).await;
    let total = values.len();
    for seed in 1..=4u64 {
        let group = format!("order-{seed}");
        let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Default::default();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        let mut consumer = group_consumer(cluster.client(), &group);
        consumer.subscribe(vec!["orders".into()]).await.unwrap();
        let processor = Processor::new(
            consumer,
            ProcessorConfig {
                workers: 16,
                ordering: Ordering::Key,
                commit_interval: Duration::from_millis(200),
                ..ProcessorConfig::default()
            },
        )
        .unwrap();
        let handler = {
            let (seen, count, done) = (seen.clone(), count.clone(), done.clone());
            move |r: ConsumerRecord| {
                let (seen, count, done) = (seen.clone(), count.clone(), done.clone());
                async move {
                    let text = String::from_utf8(r.value.to_vec()).unwrap();
                    let (key, seq) = text.split_once(':').unwrap();
                    // A pseudo-random delay of 0-3 ms per record and seed.
                    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        ^ (r.offset as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9)
                        ^ r.partition as u64;
                    x ^= x >> 31;
                    tokio::time::sleep(Duration::from_micros(x % 3000)).await;
                    seen.lock()
                        .unwrap()
                        .entry(key.to_string())
                        .or_default()
                        .push(seq.parse().unwrap());
                    if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == total {
                        done.notify_one();
                    }
                    Ok::<(), String>(())
                }
            }
        };
        let stop = {
            let done = done.clone();
            async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), done.notified()).await;
            }
        };
        let report = processor.run(handler, stop).await.unwrap();
        assert_eq!(report.processed as usize, total, "seed {seed}");
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(seen.len(), keys);
        for (key, seqs) in seen.iter() {
            let expected: Vec<u32> = (0..per_key as u32).collect();
            assert_eq!(
                seqs, &expected,
                "seed {seed}: {key} out of order or repeated"
            );
        }
        // Everything finished is committed: the group is at the end of each partition.
        assert_eq!(
            committed(&admin, &group, "orders").await,
            ends(&admin, "orders").await,
            "seed {seed}"
        );
    }
}

/// A record whose handler never finishes holds its partition's commit below it while the
/// records after it are handled on the other workers; stopped, the processor leaves it unfinished,
/// and the next processor of the group gets it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_past_an_unfinished_record() {
    let values: Vec<(String, String)> =
        (0..30).map(|i| (format!("k{i}"), format!("{i}"))).collect();
    let (cluster, admin) = one_broker_with("jobs", 1, &values, None).await;
    let handled = Arc::new(Mutex::new(BTreeSet::new()));
    let mut consumer = group_consumer(cluster.client(), "stuck");
    consumer.subscribe(vec!["jobs".into()]).await.unwrap();
    let processor = Processor::new(
        consumer,
        ProcessorConfig {
            workers: 8,
            // Each record to the least busy worker: the stuck one holds only itself.
            ordering: Ordering::None,
            commit_interval: Duration::from_millis(100),
            shutdown_timeout: Duration::from_millis(500),
            ..ProcessorConfig::default()
        },
    )
    .unwrap();
    let handler = {
        let handled = handled.clone();
        move |r: ConsumerRecord| {
            let handled = handled.clone();
            async move {
                if r.offset == 7 {
                    std::future::pending::<()>().await;
                }
                handled.lock().unwrap().insert(r.offset);
                Ok::<(), String>(())
            }
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(processor.run(handler, async move {
        let _ = stop_rx.await;
    }));
    eventually(
        "the other 29 records handled",
        Duration::from_secs(20),
        || async { (handled.lock().unwrap().len() == 29).then_some(()) },
    )
    .await;
    eventually(
        "the commit held at the unfinished record",
        Duration::from_secs(10),
        || async { (committed(&admin, "stuck", "jobs").await.get(&0) == Some(&7)).then_some(()) },
    )
    .await;
    let _ = stop_tx.send(());
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.processed, 29);
    assert_eq!(committed(&admin, "stuck", "jobs").await.get(&0), Some(&7));
    // The next member starts at the unfinished record.
    let mut next = group_consumer(cluster.client(), "stuck");
    next.subscribe(vec!["jobs".into()]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let records = loop {
        let r = next.poll(Duration::from_millis(500)).await.unwrap();
        if !r.is_empty() {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the next member got nothing"
        );
    };
    assert_eq!(records[0].offset, 7);
    next.close().await.unwrap();
}

fn exec_cli(cluster: &Cluster, args: &[&str]) -> CliProcess {
    CliProcess::spawn(&cluster.bootstrap(), args)
}

/// `--exec` SIGKILLed at several points, then run to the end: every record was handled at
/// least once (the ids it printed), none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_killed_midstream_skips_nothing() {
    let values: Vec<(String, String)> = (0..400)
        .map(|i| (format!("k{}", i % 10), format!("{i}")))
        .collect();
    // A killed member keeps its partitions until its session times out.
    let (cluster, admin) = one_broker_with("tasks", 3, &values, Some("1s")).await;
    let all: BTreeSet<String> = read_all(cluster.client(), "tasks")
        .await
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    let mut seen = BTreeSet::new();
    let args = [
        "consume",
        "tasks",
        "--group",
        "crew",
        "--from-beginning",
        "--parallel",
        "4",
        "--exec",
        "sleep 0.05; echo \"done $SLUICE_ID\"",
        "--timeout",
        "6s",
    ];
    let collect = |out: &str, seen: &mut BTreeSet<String>| {
        for line in out.lines() {
            if let Some(id) = line.strip_prefix("done ") {
                seen.insert(id.to_string());
            }
        }
    };
    // Killed at different points of a run: after 10, 40 and 25 records it printed (each
    // run takes ~0.5 s per 40 records, far from the end of the 400).
    for kill_after in [10usize, 40, 25] {
        let p = exec_cli(&cluster, &args);
        p.wait_for_output(
            "records handled before the kill",
            Duration::from_secs(30),
            |out, _| out.lines().filter(|l| l.starts_with("done ")).count() >= kill_after,
        );
        p.signal(Signal::SIGKILL);
        let (_, out, _) = p.wait(Duration::from_secs(10));
        collect(&out, &mut seen);
    }
    assert!(seen.len() < all.len(), "the kills came before the end");
    let p = exec_cli(&cluster, &args);
    let (status, out, err) = p.wait(Duration::from_secs(60));
    assert!(status.success(), "{err}");
    collect(&out, &mut seen);
    let missing: Vec<&String> = all.difference(&seen).collect();
    assert!(missing.is_empty(), "never handled: {missing:?}");
    // And the group is at the end.
    assert_eq!(
        committed(&admin, "crew", "tasks").await,
        ends(&admin, "tasks").await
    );
}

/// A poison record is tried --max-attempts times, then lands in the dead-letter topic with
/// headers naming where it came from and why, while the records behind it are handled;
/// `--redrive-to` sends it back with its original id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_redriven() {
    let mut values: Vec<(String, String)> = (0..20)
        .map(|i| (format!("k{i}"), format!("ok{i}")))
        .collect();
    values.insert(5, ("k5".into(), "poison".into()));
    let (cluster, admin) = one_broker_with("payments", 2, &values, None).await;
    let poison = read_all(cluster.client(), "payments")
        .await
        .into_iter()
        .find(|r| &r.value[..] == b"poison")
        .unwrap();
    let p = exec_cli(
        &cluster,
        &[
            "consume",
            "payments",
            "--group",
            "pay",
            "--from-beginning",
            "--exec",
            "v=$(cat); if [ \"$v\" = poison ]; then echo \"bad payment $v\" >&2; exit 3; fi; echo \"paid $v\"",
            "--max-attempts",
            "2",
            "--dead-letter-topic",
            "payments.dlq",
            "--timeout",
            "3s",
        ],
    );
    let (status, out, err) = p.wait(Duration::from_secs(60));
    assert!(status.success(), "{err}");
    let paid = out.lines().filter(|l| l.starts_with("paid ok")).count();
    assert_eq!(paid, 20, "every other record handled: {out}");
    assert!(err.contains("1 dead-lettered"), "{err}");
    let dead = read_all(cluster.client(), "payments.dlq").await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(&d.value[..], b"poison");
    assert_eq!(d.key.as_deref(), Some(&b"k5"[..]));
    let header = |k: &str| {
        d.headers
            .iter()
            .find(|h| h.key == k)
            .and_then(|h| h.value.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("no header {k}: {:?}", d.headers))
    };
    assert_eq!(header("sluice.dlq.topic"), "payments");
    assert_eq!(header("sluice.dlq.partition"), poison.partition.to_string());
    assert_eq!(header("sluice.dlq.offset"), poison.offset.to_string());
    assert_eq!(header("sluice.dlq.id"), poison.id.to_string());
    assert_eq!(header("sluice.dlq.attempts"), "2");
    let error = header("sluice.dlq.error");
    assert!(
        error.contains("exit status 3") && error.contains("bad payment poison"),
        "{error}"
    );
    // The committed offsets are past the poison record: it is not handled again.
    assert_eq!(
        committed(&admin, "pay", "payments").await,
        ends(&admin, "payments").await
    );
    // The cause fixed, it goes back, with the id it had.
    let out = run_cli(
        &cluster.bootstrap(),
        &[
            "consume",
            "payments.dlq",
            "--redrive-to",
            "payments",
            "--timeout",
            "2s",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back: Vec<ConsumerRecord> = read_all(cluster.client(), "payments")
        .await
        .into_iter()
        .filter(|r| &r.value[..] == b"poison")
        .collect();
    assert_eq!(back.len(), 2, "the original and the redriven copy");
    assert_eq!(
        back[1].id.to_string(),
        poison.id.to_string(),
        "the copy keeps the original's id"
    );
    assert!(
        back[1]
            .headers
            .iter()
            .all(|h| !h.key.starts_with("sluice.dlq."))
    );
    let ids = run_cli(
        &cluster.bootstrap(),
        &[
            "consume",
            "payments",
            "--from-beginning",
            "--timeout",
            "2s",
            "--format",
            "{id} {value}",
        ],
        "",
    );
    let text = String::from_utf8_lossy(&ids.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| *l == format!("{} poison", poison.id))
            .count(),
        2,
        "{text}"
    );
}

/// Without a dead-letter topic, a record failing every try stops processing with an error
/// naming it, and the group's offset stays on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_a_failing_record_stops_processing() {
    let values: Vec<(String, String)> = (0..10)
        .map(|i| ("same".to_string(), format!("m{i}")))
        .collect();
    let (cluster, admin) = one_broker_with("mail", 1, &values, None).await;
    let p = exec_cli(
        &cluster,
        &[
            "consume",
            "mail",
            "--group",
            "mailer",
            "--from-beginning",
            "--exec",
            "[ \"$SLUICE_OFFSET\" != 4 ]",
            "--max-attempts",
            "2",
            "--timeout",
            "20s",
        ],
    );
    let (status, _, err) = p.wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        err.contains("mail-0@4") && err.contains("failed 2 time(s)") && err.contains("dead-letter"),
        "{err}"
    );
    assert_eq!(committed(&admin, "mailer", "mail").await.get(&0), Some(&4));
}

/// A consumer restarted after a crash gets again what it handled and did not commit; with
/// its processed ids in the embedded store (`SledIds`), it skips them. Here the whole topic
/// comes again (a new group), and nothing is handled twice, across a reopen of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_skips_what_its_store_marked_processed() {
    use sluice_client::dedup::{SkipProcessed, SledIds};
    let values: Vec<(String, String)> = (0..40)
        .map(|i| (format!("k{i}"), format!("order {i}")))
        .collect();
    let (cluster, admin) = one_broker_with("orders", 2, &values, None).await;
    let dir = tempfile::tempdir().unwrap();
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (run, group) in ["first", "again"].into_iter().enumerate() {
        let store = Arc::new(SledIds::open(dir.path().join("ids"), 10_000).unwrap());
        let mut consumer = group_consumer(cluster.client(), group);
        consumer.subscribe(vec!["orders".into()]).await.unwrap();
        let processor = Processor::new(
            consumer,
            ProcessorConfig {
                workers: 4,
                commit_interval: Duration::from_millis(100),
                ..ProcessorConfig::default()
            },
        )
        .unwrap();
        let handler = {
            let handled = handled.clone();
            move |_: ConsumerRecord| {
                let handled = handled.clone();
                async move {
                    handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<(), String>(())
                }
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(processor.run(
            SkipProcessed::new(store.clone(), handler),
            async move {
                let _ = stop_rx.await;
            },
        ));
        // Both runs go through all 40 (the second skipping each).
        eventually("every record through", Duration::from_secs(20), || async {
            let c = committed(&admin, group, "orders").await;
            (c.values().sum::<i64>() == 40).then_some(())
        })
        .await;
        let _ = stop_tx.send(());
        let report = task.await.unwrap().unwrap();
        assert_eq!(report.processed, 40, "run {run}");
        assert_eq!(
            handled.load(std::sync::atomic::Ordering::SeqCst),
            40,
            "run {run}: each record handled once over both runs"
        );
        assert_eq!(store.len(), 40);
    }
}

/// `topics repartition` copies a topic into one with more partitions, each key's records
/// complete and in order with their original ids; run again after more records arrive, it
/// copies only those (its progress is a group); `--follow` copies new records as they
/// come until Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartition_keeps_key_order_resumes_and_follows() {
    let batch = |from: u32, n: u32| -> Vec<(String, String)> {
        (from..from + n)
            .map(|i| (format!("k{}", i % 20), format!("{}:{i}", i % 20)))
            .collect()
    };
    let (cluster, _admin) = one_broker_with("backlog", 2, &batch(0, 300), None).await;
    let source_ids: BTreeMap<String, String> = read_all(cluster.client(), "backlog")
        .await
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(&r.value).into_owned(),
                r.id.to_string(),
            )
        })
        .collect();
    let copy = |extra: &[&str]| {
        let mut args = vec![
            "topics",
            "repartition",
            "backlog",
            "--to",
            "wide",
            "--partitions",
            "6",
        ];
        args.extend_from_slice(extra);
        run_cli(&cluster.bootstrap(), &args, "")
    };
    let out = copy(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Copied 300 records"), "{text}");
    // Per key: every record, in the order produced, each with its source id.
    let check = |records: &[ConsumerRecord], total: u32| {
        let mut per_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for r in records {
            let v = String::from_utf8_lossy(&r.value).into_owned();
            let (k, i) = v.split_once(':').unwrap();
            per_key
                .entry(k.to_string())
                .or_default()
                .push(i.parse().unwrap());
            if let Some(id) = source_ids.get(&v) {
                assert_eq!(&r.id.to_string(), id, "{v} keeps its id");
            }
        }
        assert_eq!(
            per_key.values().map(Vec::len).sum::<usize>(),
            total as usize
        );
        for (k, seqs) in per_key {
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(seqs, sorted, "key {k} in order, once each");
        }
    };
    let wide = read_all(cluster.client(), "wide").await;
    check(&wide, 300);
    let partitions: BTreeSet<i32> = wide.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() > 2,
        "spread over the new partitions: {partitions:?}"
    );
    // More records: a second run copies only them.
    produce(
        cluster.client(),
        ProducerConfig::default(),
        "backlog",
        &batch(300, 100),
    )
    .await;
    let out = copy(&["-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["copied"], 100, "{report}");
    assert_eq!(report["created"], false);
    check(&read_all(cluster.client(), "wide").await, 400);
    // --follow picks up records produced while it runs; Ctrl-C ends it cleanly.
    let p = CliProcess::spawn(
        &cluster.bootstrap(),
        &[
            "topics",
            "repartition",
            "backlog",
            "--to",
            "wide",
            "--partitions",
            "6",
            "--follow",
        ],
    );
    produce(
        cluster.client(),
        ProducerConfig::default(),
        "backlog",
        &batch(400, 50),
    )
    .await;
    eventually(
        "the new records copied",
        Duration::from_secs(20),
        || async { (read_all(cluster.client(), "wide").await.len() == 450).then_some(()) },
    )
    .await;
    p.signal(Signal::SIGINT);
    let (status, _, err) = p.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    check(&read_all(cluster.client(), "wide").await, 450);
}

/// Rows in `table` of the SQLite database at `path` (0 before it has the table).
fn sqlite_count(path: &std::path::Path, table: &str) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap_or(0)
}

/// The seeds' shape (examples/orders-sqlite): orders written into SQLite with their record
/// ids marked processed in the same transaction, offsets committed after. SIGKILLed
/// mid-stream three times, then run to the end: every order is in the table exactly once,
/// the customers' totals add up, the redelivered records were skipped (not rewritten), and
/// the one value that is not an order went to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_into_sqlite_once_each_across_sigkills() {
    const ORDERS: usize = 3000;
    const POISON_AT: usize = 1100;
    let customers = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];
    let mut values: Vec<(String, String)> = (0..ORDERS)
        .map(|i| {
            let c = customers[i % customers.len()];
            let order = format!(r#"{{"order_id":"o-{i}","customer":"{c}","amount_cents":{i}}}"#);
            (c.to_string(), order)
        })
        .collect();
    values.insert(POISON_AT, ("alice".into(), "alice:cart".into()));
    let (cluster, admin) = one_broker_with("orders", 3, &values, None).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let bootstrap = cluster.bootstrap();
    let args = [
        "--bootstrap",
        &bootstrap,
        "--db",
        db.to_str().unwrap(),
        // Restarted with the same id, it gets its partitions back at once.
        "--instance-id",
        "orders-1",
        "--commit-interval",
        "100ms",
        "--exit-when-idle",
        "4s",
    ];
    // Killed after 400, 1200 and 2000 orders were written in all: each run commits a few
    // times and is killed with up to 100 ms of written and uncommitted records.
    for kill_at in [400, 1200, 2000] {
        let p = CliProcess::spawn_bin("orders-to-sqlite", &args);
        sluice_tests::wait_until(
            &format!("{kill_at} orders in the table"),
            Duration::from_secs(60),
            || (sqlite_count(&db, "orders") >= kill_at).then_some(()),
        );
        p.signal(Signal::SIGKILL);
        p.wait(Duration::from_secs(10));
    }
    let before_end = sqlite_count(&db, "orders");
    assert!(
        before_end < ORDERS as i64,
        "the kills came before the end ({before_end} orders written)"
    );
    let resumed_from: i64 = committed(&admin, "orders-to-sqlite", "orders")
        .await
        .values()
        .filter(|o| **o > 0)
        .sum();
    assert!(
        resumed_from > 0,
        "the killed runs committed offsets, so the next run did not start over"
    );
    let p = CliProcess::spawn_bin("orders-to-sqlite", &args);
    let (status, _, err) = p.wait(Duration::from_secs(120));
    assert!(status.success(), "{err}");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut per_order = conn
        .prepare("SELECT order_id, count(*) FROM orders GROUP BY order_id")
        .unwrap();
    let written: BTreeMap<String, i64> = per_order
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let twice: Vec<_> = written.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "orders written more than once: {twice:?}");
    let expected: BTreeSet<String> = (0..ORDERS).map(|i| format!("o-{i}")).collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|o| !written.contains_key(*o))
        .collect();
    assert!(missing.is_empty(), "orders never written: {missing:?}");
    assert_eq!(written.len(), ORDERS);
    for (n, c) in customers.iter().enumerate() {
        let (count, total): (i64, i64) = conn
            .query_row(
                "SELECT orders, total_cents FROM customers WHERE customer = ?1",
                [c],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let mine: Vec<i64> = (0..ORDERS as i64)
            .filter(|i| *i as usize % customers.len() == n)
            .collect();
        assert_eq!(
            (count, total),
            (mine.len() as i64, mine.iter().sum::<i64>()),
            "totals of {c}"
        );
    }
    let redelivered: i64 = conn
        .query_row("SELECT sum(redeliveries) FROM processed", [], |r| r.get(0))
        .unwrap();
    assert!(
        redelivered > 0,
        "the kills left written, uncommitted records that came again and were skipped"
    );
    let dead: Vec<String> = read_all(cluster.client(), "orders.dlq")
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert!(
        !dead.is_empty() && dead.iter().all(|v| v == "alice:cart"),
        "the poison record, and only it, was dead-lettered: {dead:?}"
    );
    assert_eq!(
        committed(&admin, "orders-to-sqlite", "orders").await,
        ends(&admin, "orders").await
    );
}
