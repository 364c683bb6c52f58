//! Orders into SQLite, once per record across crashes: the seeds' "duplicates after a
//! consumer restarts" answered with the record id as the idempotency key.
//!
//! A consumer in group `orders-to-sqlite` reads `orders`, whose values are JSON orders
//! (`{"order_id": "o-1", "customer": "alice", "amount_cents": 1250}`), and writes each in
//! one SQLite transaction: the order's row, its customer's totals, and the record's id in
//! `processed`. Offsets are committed after, and only below each partition's lowest
//! unfinished record ([`Processor`]). A crash between a transaction and the next commit
//! delivers those records again; their ids are found in `processed` (same database, same
//! transaction as the effects, so there is no window where one is written without the
//! other) and they are skipped, counted in `processed.redeliveries`. So no order is written
//! twice, and none is skipped.
//!
//! A value that is not an order (a poison record) is tried `--max-attempts` times and then
//! goes to the dead-letter topic (`orders.dlq`, created if missing) while the rest go on. A
//! database that fails (disk full, locked past the busy timeout) is not the record's fault:
//! the consumer stops with the error instead, commits nothing past that record, and reads
//! it again when restarted.
//!
//! ```sh
//! cargo run --release --bin sluice -- dev           # one terminal: a local cluster
//! echo 'alice|{"order_id":"o-1","customer":"alice","amount_cents":1250}' \
//!   | cargo run -q --release --bin sluice -- produce orders --key-separator '|'
//! cargo run --release -p sluice-example-orders-sqlite -- --db orders.db --exit-when-idle 5s
//! sqlite3 orders.db 'SELECT customer, orders, total_cents FROM customers'
//! ```
//!
//! (The tour's `orders` records, like `alice:cart`, are not JSON orders: they end up in
//! `orders.dlq`, with headers saying why.)

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rusqlite::{Connection, TransactionBehavior, params};
use serde::Deserialize;
use sluice_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, Ordering,
    Processor, ProcessorConfig, Producer, ProducerConfig,
};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    name = "orders-to-sqlite",
    about = "Consume orders in a group into SQLite, once per record across crashes"
)]
struct Args {
    /// Brokers to start from.
    #[arg(long, env = "SLUICE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "orders")]
    topic: String,
    #[arg(long, default_value = "orders-to-sqlite")]
    group: String,
    /// `group.instance.id`: an instance restarted with the same id gets its partitions
    /// back at once, instead of after the session timeout.
    #[arg(long)]
    instance_id: Option<String>,
    /// The SQLite database (created with its tables if missing).
    #[arg(long, default_value = "orders.db")]
    db: PathBuf,
    /// Records handled at once (same customer key: one after another, in order).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// How often finished records' offsets are committed.
    #[arg(long, default_value = "1s")]
    commit_interval: humantime::Duration,
    /// Tries for a value that is not an order before it is dead-lettered.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Where values that are not orders go [default: TOPIC.dlq].
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Stop once no record came for this long [default: run until Ctrl-C or SIGTERM].
    #[arg(long)]
    exit_when_idle: Option<humantime::Duration>,
}

#[derive(Debug, Deserialize)]
struct Order {
    order_id: String,
    customer: String,
    amount_cents: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id     TEXT    NOT NULL,
    customer     TEXT    NOT NULL,
    amount_cents INTEGER NOT NULL,
    record_id    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS customers (
    customer    TEXT    PRIMARY KEY,
    orders      INTEGER NOT NULL,
    total_cents INTEGER NOT NULL
);
-- One row per record whose effects are written, in the same transaction as they are.
CREATE TABLE IF NOT EXISTS processed (
    record_id        TEXT    PRIMARY KEY,
    record_partition INTEGER NOT NULL,
    record_offset    INTEGER NOT NULL,
    redeliveries     INTEGER NOT NULL DEFAULT 0
);
";

/// Tries of one transaction before the database is declared failing.
const DB_ATTEMPTS: u32 = 5;

fn open(path: &std::path::Path) -> anyhow::Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    // WAL lets readers (sqlite3, a test) look while this writes; FULL makes every commit
    // durable against power loss, not only a crash of this process.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "database {}: journal mode is {mode}, not wal",
            path.display()
        );
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("creating the tables in {}", path.display()))?;
    Ok(conn)
}

/// Whether a record was written now or had been before.
enum Outcome {
    Written,
    AlreadyProcessed,
}

/// Writes `order` from `record` with its processed-id marker, in one transaction, unless
/// the marker is there already.
fn write(
    conn: &mut Connection,
    record: &ConsumerRecord,
    order: &Order,
) -> rusqlite::Result<Outcome> {
    let id = record.id.to_string();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let again = tx.execute(
        "UPDATE processed SET redeliveries = redeliveries + 1 WHERE record_id = ?1",
        params![id],
    )?;
    if again > 0 {
        tx.commit()?;
        return Ok(Outcome::AlreadyProcessed);
    }
    tx.execute(
        "INSERT INTO orders (order_id, customer, amount_cents, record_id) VALUES (?1, ?2, ?3, ?4)",
        params![order.order_id, order.customer, order.amount_cents, id],
    )?;
    tx.execute(
        "INSERT INTO customers (customer, orders, total_cents) VALUES (?1, 1, ?2)
         ON CONFLICT (customer) DO UPDATE
         SET orders = orders + 1, total_cents = total_cents + excluded.total_cents",
        params![order.customer, order.amount_cents],
    )?;
    tx.execute(
        "INSERT INTO processed (record_id, record_partition, record_offset) VALUES (?1, ?2, ?3)",
        params![id, record.partition, record.offset],
    )?;
    tx.commit()?;
    Ok(Outcome::Written)
}

/// What the handler shares.
struct Sink {
    db: Mutex<Connection>,
    written: AtomicU64,
    skipped: AtomicU64,
    last_record: Mutex<Instant>,
    /// A database failure: stops the run.
    fatal: watch::Sender<Option<String>>,
}

impl Sink {
    async fn handle(self: Arc<Self>, record: ConsumerRecord) -> Result<(), String> {
        *self
            .last_record
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        // A poison record: its error goes to the dead-letter headers.
        let order: Order = serde_json::from_slice(&record.value).map_err(|e| {
            format!(
                "not an order ({e}): expected JSON {{\"order_id\": ..., \"customer\": ..., \"amount_cents\": ...}}"
            )
        })?;
        let sink = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut backoff = Duration::from_millis(50);
            let mut attempt = 1;
            loop {
                let result = {
                    let mut db = sink.db.lock().unwrap_or_else(PoisonError::into_inner);
                    write(&mut db, &record, &order)
                };
                match result {
                    Ok(outcome) => return Ok(outcome),
                    Err(e) if attempt >= DB_ATTEMPTS => {
                        return Err(format!(
                            "writing record {} ({}-{} offset {}) failed {attempt} times: {e}",
                            record.id, record.topic, record.partition, record.offset
                        ));
                    }
                    Err(_) => {
                        std::thread::sleep(backoff);
                        backoff *= 2;
                        attempt += 1;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the database writer panicked: {e}")));
        match written {
            Ok(Outcome::Written) => {
                self.written.fetch_add(1, AtomicOrdering::Relaxed);
                Ok(())
            }
            Ok(Outcome::AlreadyProcessed) => {
                self.skipped.fetch_add(1, AtomicOrdering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Not the record's fault: stop, and never finish it (so it is not
                // committed, and is read again after a restart).
                self.fatal.send_replace(Some(e));
                std::future::pending().await
            }
        }
    }
}

/// Resolves on Ctrl-C, SIGTERM, a database failure, or `idle` without records.
async fn stop_signal(
    sink: Arc<Sink>,
    mut fatal: watch::Receiver<Option<String>>,
    idle: Option<Duration>,
) {
    let idle = async {
        match idle {
            Some(idle) => loop {
                let last = *sink
                    .last_record
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.elapsed() >= idle {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            None => std::future::pending().await,
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = fatal.wait_for(Option::is_some) => {}
        _ = idle => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The client's warnings (a commit that failed and will be tried again, a broker
    // down) on stderr; RUST_LOG=info for more.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let conn = open(&args.db)?;
    let client = ClientConfig::new(&args.bootstrap);
    let dlq = args
        .dead_letter_topic
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", args.topic));

    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            group_id: Some(args.group.clone()),
            group_instance_id: args.instance_id.clone(),
            enable_auto_commit: false,
            auto_offset_reset: AutoOffsetReset::Earliest,
            client_id: "orders-to-sqlite".into(),
            ..ConsumerConfig::default()
        },
    )?;
    consumer
        .subscribe(vec![args.topic.clone()])
        .await
        .with_context(|| format!("joining group '{}' on '{}'", args.group, args.topic))?;
    let config = ProcessorConfig {
        workers: args.workers,
        ordering: Ordering::Key,
        max_attempts: args.max_attempts,
        commit_interval: args.commit_interval.into(),
        shutdown_timeout: Duration::from_secs(10),
        ..ProcessorConfig::default()
    };
    Admin::new(client.clone())?
        .ensure_dead_letter_topic(&dlq, &args.topic)
        .await
        .with_context(|| format!("creating the dead-letter topic '{dlq}'"))?;
    let producer = Producer::connect(client, ProducerConfig::default()).await?;
    let processor = Processor::new(consumer, config)?.dead_letters(producer, dlq.clone());

    let (fatal, fatal_rx) = watch::channel(None);
    let sink = Arc::new(Sink {
        db: Mutex::new(conn),
        written: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        last_record: Mutex::new(Instant::now()),
        fatal,
    });
    let stop = stop_signal(
        sink.clone(),
        fatal_rx.clone(),
        args.exit_when_idle.map(Into::into),
    );
    let handler = {
        let sink = sink.clone();
        move |record: ConsumerRecord| sink.clone().handle(record)
    };
    let report = processor.run(handler, stop).await?;
    eprintln!(
        "orders-to-sqlite: {} orders written to {}, {} records already written before (skipped), {} dead-lettered to '{dlq}'",
        sink.written.load(AtomicOrdering::Relaxed),
        args.db.display(),
        sink.skipped.load(AtomicOrdering::Relaxed),
        report.dead_lettered,
    );
    if let Some(e) = fatal_rx.borrow().clone() {
        bail!("stopped: the database {} failed: {e}", args.db.display());
    }
    Ok(())
}
