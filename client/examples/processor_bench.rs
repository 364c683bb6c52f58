//! Records/s of the parallel [`Processor`] with 1, 4 and 16 workers, on a no-op handler and
//! on one that sleeps 1 ms, keeping key order (checked): `cargo run --release -p
//! sluice-client --example processor_bench -- BOOTSTRAP [RECORDS]` against a running
//! cluster (e.g. `sluice dev`). Writes RECORDS (default 50,000) records with 1,000 keys to
//! a new topic `bench-processor-<pid>` (12 partitions), reads them with each setting in a
//! group of its own (the sleeping handler reads the first 5,000 only), deletes the topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as Atomic};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, NewTopic,
    Ordering, Processor, ProcessorConfig, Producer, ProducerConfig, ProducerRecord,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Processes the first `n` records of `topic` with `workers` workers; records/s.
async fn run(
    client: &ClientConfig,
    topic: &str,
    workers: usize,
    sleep: bool,
    n: usize,
) -> Result<f64> {
    let group = format!("{topic}-{workers}-{sleep}");
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            group_id: Some(group),
            enable_auto_commit: false,
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    )?;
    consumer.subscribe(vec![topic.to_string()]).await?;
    let processor = Processor::new(
        consumer,
        ProcessorConfig {
            workers,
            ordering: Ordering::Key,
            ..ProcessorConfig::default()
        },
    )?;
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    // The last sequence seen per key: each must be the one before this record's.
    let last: Arc<Mutex<HashMap<Vec<u8>, u64>>> = Default::default();
    let started = Arc::new(Mutex::new(None::<Instant>));
    let handler = {
        let (count, done, last, started) =
            (count.clone(), done.clone(), last.clone(), started.clone());
        move |r: ConsumerRecord| {
            let (count, done, last, started) =
                (count.clone(), done.clone(), last.clone(), started.clone());
            async move {
                started
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert_with(Instant::now);
                if sleep {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let seq: u64 = std::str::from_utf8(&r.value[..8])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let key = r.key.as_deref().unwrap_or_default().to_vec();
                let mut l = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let prev = l.insert(key.clone(), seq);
                if prev.is_some_and(|p| p >= seq) {
                    return Err(format!(
                        "key {:?} out of order: {prev:?} then {seq}",
                        String::from_utf8_lossy(&key)
                    ));
                }
                drop(l);
                if count.fetch_add(1, Atomic::SeqCst) + 1 == n {
                    done.notify_one();
                }
                Ok(())
            }
        }
    };
    let stop = {
        let done = done.clone();
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(300), done.notified()).await;
        }
    };
    processor.run(handler, stop).await?;
    let handled = count.load(Atomic::SeqCst).min(n);
    let from = started
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .unwrap_or_else(Instant::now);
    Ok(handled as f64 / from.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50_000);
    let client = ClientConfig::new(&bootstrap);
    let admin = Admin::new(client.clone())?;
    let topic = format!("bench-processor-{}", std::process::id());
    admin
        .create_topic(NewTopic::new(&topic, 12, -1), false)
        .await?;
    let producer = Producer::connect(client.clone(), ProducerConfig::default()).await?;
    let mut acks = Vec::new();
    for i in 0..n {
        // The value starts with the record's sequence within its key.
        let value = format!("{:08}{}", i / 1000, "x".repeat(92));
        acks.push(
            producer
                .send(ProducerRecord::new(&topic, value).key(format!("key-{}", i % 1000)))
                .await?,
        );
    }
    for a in acks {
        a.await?;
    }
    producer.close().await;
    println!("{n} records of 100 B, 1,000 keys, 12 partitions; key order checked");
    for sleep in [false, true] {
        let m = if sleep { n.min(5_000) } else { n };
        let mut line = format!(
            "{:<18}",
            if sleep {
                "handler sleeps 1ms"
            } else {
                "no-op handler"
            }
        );
        let mut one = 0.0;
        for workers in [1, 4, 16] {
            let rate = run(&client, &topic, workers, sleep, m).await?;
            if workers == 1 {
                one = rate;
            }
            line.push_str(&format!(
                "  {workers:>2} workers: {rate:>9.0} records/s ({:.1}x)",
                rate / one
            ));
        }
        println!("{line}");
    }
    admin.delete_topic(&topic).await?;
    Ok(())
}
