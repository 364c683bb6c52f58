//! Measures the two partition Raft log layouts of docs/DESIGN.md on this machine: three
//! replicas (threads, one directory each) write the same stream of 256 KiB batches, as
//! three brokers on one machine would, syncing every 4 batches (one AppendEntries round).
//!
//! - (a) the segment store is the Raft log: append to the segment log, fsync.
//! - (b) a rolling sled Raft log applied into segments: sled insert + flush (the Raft log),
//!   then append to the segment log (the state machine, flushed in the background), and
//!   purge sled entries older than 1,000.
//!
//! `cargo run --release -p sluice-broker --example raft_log_layout -- [MIB_PER_REPLICA]`

use std::time::Instant;

use bytes::BytesMut;
use sluice_broker::storage::{LogOptions, LogStorage, SegmentLog};
use sluice_proto::RecordBatchBuilder;

const BATCH_RECORDS: usize = 256;
const RECORD_BYTES: usize = 1024;
const BATCHES_PER_SYNC: usize = 4;

fn batch() -> BytesMut {
    let mut b = RecordBatchBuilder::new(Default::default());
    for i in 0..BATCH_RECORDS {
        b.append(i as i64, None, &[(i % 251) as u8; RECORD_BYTES], &[]);
    }
    BytesMut::from(&b.build()[..])
}

fn replica_a(dir: &std::path::Path, batches: usize) {
    let mut log = SegmentLog::open(dir, LogOptions::default(), 0).expect("open log");
    let template = batch();
    for i in 0..batches {
        let mut b = template.clone();
        log.append(&mut b, 1, 0).expect("append");
        if (i + 1) % BATCHES_PER_SYNC == 0 {
            log.flush().expect("fsync");
        }
    }
    log.flush().expect("fsync");
}

fn replica_b(dir: &std::path::Path, batches: usize) {
    let db = sled::Config::new()
        .path(dir.join("raft"))
        .cache_capacity(64 << 20)
        .open()
        .expect("sled");
    let tree = db.open_tree("log").expect("tree");
    let mut log =
        SegmentLog::open(&dir.join("segments"), LogOptions::default(), 0).expect("open log");
    let template = batch();
    for i in 0..batches {
        tree.insert((i as u64).to_be_bytes(), &template[..])
            .expect("sled insert");
        if (i + 1) % BATCHES_PER_SYNC == 0 {
            db.flush().expect("sled flush");
            for j in (i + 1 - BATCHES_PER_SYNC)..=i {
                let mut b = template.clone();
                log.append(&mut b, 1, 0).expect("apply");
                if j >= 1000 {
                    tree.remove(((j - 1000) as u64).to_be_bytes())
                        .expect("purge");
                }
            }
        }
    }
    db.flush().expect("sled flush");
    log.flush().expect("fsync");
}

fn run(name: &str, batches: usize, f: fn(&std::path::Path, usize)) {
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
        .expect("temp dir");
    let started = Instant::now();
    std::thread::scope(|s| {
        for r in 0..3 {
            let d = dir.path().join(format!("replica-{r}"));
            s.spawn(move || f(&d, batches));
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let bytes = (batches * batch().len()) as f64;
    println!(
        "{name}: {:.1} MB/s of produced data ({:.1} MB/s written per replica), {secs:.2}s",
        bytes / secs / 1e6,
        bytes / secs / 1e6
    );
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let batches = mib * 1024 * 1024 / batch().len();
    println!(
        "3 replicas x {mib} MiB, {} KiB batches, fsync every {BATCHES_PER_SYNC} batches",
        batch().len() / 1024
    );
    run("(a) segment store is the Raft log", batches, replica_a);
    run("(b) rolling sled Raft log + segments", batches, replica_b);
}
