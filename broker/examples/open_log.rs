//! What opening a partition Raft log costs as it grows: a log of single-record 1 KiB
//! batches (the worst case: one Raft entry per record) is written once, then opened as a
//! restarting replica does, and its batch list rebuilt three ways:
//!
//! - `read each`: a checked read per batch (what every open did before `.entries` files);
//! - `first list`: the sequential header scan that writes the closed segments' `.entries`;
//! - `listed`: later opens, from the `.entries` files plus a scan of the active segment.
//!
//! Each figure is the median of 3 opens, clean (after a close) and after a crash (no close:
//! the last segment is recovered with CRC checks first).
//!
//! `cargo run --release -p sluice-broker --example open_log -- [ENTRIES] [SEGMENT_MIB]`

use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_broker::storage::{LogOptions, LogStorage, SegmentLog};
use sluice_proto::RecordBatchBuilder;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: usize = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("ENTRIES"));
    let segment_mib: u64 = args
        .next()
        .map_or(1024, |a| a.parse().expect("SEGMENT_MIB"));
    let options = LogOptions {
        segment_bytes: segment_mib << 20,
        ..LogOptions::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p-0");
    let mut template = RecordBatchBuilder::new(Default::default());
    template.append(0, None, &[7u8; 1024], &[]);
    let template = BytesMut::from(&template.build()[..]);
    let started = Instant::now();
    let mut log = SegmentLog::open(&path, options, 0).expect("open");
    for _ in 0..entries {
        log.append(&mut template.clone(), 1, 0).expect("append");
    }
    log.close().expect("close");
    let o = log.offsets();
    println!(
        "{entries} entries, {} segments of {segment_mib} MiB, {:.2} GiB, written in {:.1?}",
        o.segments,
        o.size_bytes as f64 / (1u64 << 30) as f64,
        started.elapsed()
    );
    drop(log);

    for crashed in [false, true] {
        let mut read_each = Vec::new();
        let mut first = Vec::new();
        let mut listed = Vec::new();
        for _ in 0..3 {
            for f in std::fs::read_dir(&path).expect("list") {
                let f = f.expect("entry").path();
                if f.extension().is_some_and(|x| x == "entries") {
                    std::fs::remove_file(f).expect("remove");
                }
            }
            let t = Instant::now();
            let mut log = SegmentLog::open(&path, options, 0).expect("open");
            let mut n = 0usize;
            log.scan_headers(0, &mut |_| n += 1).expect("scan");
            assert_eq!(n, entries);
            read_each.push(t.elapsed());
            log.close().expect("close");
            drop(log);
            for (runs, _) in [(&mut first, 0), (&mut listed, 1)] {
                let t = Instant::now();
                let log = SegmentLog::open(&path, options, 0).expect("open");
                let opened = t.elapsed();
                assert_eq!(log.batch_bases(0).expect("list").len(), entries);
                runs.push(t.elapsed());
                if std::env::var_os("OPEN_LOG_DETAIL").is_some() {
                    eprintln!(
                        "  open {opened:.1?}, then list {:.1?}",
                        t.elapsed() - opened
                    );
                }
                // Without a close, the next open recovers the last segment as after a crash.
                if crashed {
                    drop(log);
                } else {
                    let mut log = log;
                    log.close().expect("close");
                }
            }
        }
        println!(
            "{}: read each {:.1?}, first list {:.1?}, listed {:.1?}",
            if crashed { "after a crash" } else { "clean" },
            median(read_each),
            median(first),
            median(listed)
        );
    }
}
