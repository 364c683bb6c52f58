//! What a producer counts: Kafka's producer metrics by the same names.

use super::*;

/// What a producer has done since it started, Kafka's producer metrics by the same names:
/// where a record's time goes (waiting in its batch vs. the produce request) and how large
/// batches are. From [`Producer::metrics`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProducerMetrics {
    /// Batches sent (first attempts).
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Encoded bytes of those batches.
    pub batch_bytes: u64,
    /// Produce requests answered (retries included; timeouts not).
    pub requests: u64,
    /// Resends after a failed attempt.
    pub retries: u64,
    /// `request-latency-avg` / `-max`: from sending a produce request to its answer.
    pub request_latency_avg: Duration,
    pub request_latency_max: Duration,
    /// `record-queue-time-avg` / `-max`: how long a batch's first record waited before the
    /// batch was sent.
    pub record_queue_time_avg: Duration,
    pub record_queue_time_max: Duration,
}

/// The counters behind [`ProducerMetrics`].
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) batches: AtomicU64,
    pub(super) records: AtomicU64,
    pub(super) batch_bytes: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) request_micros: AtomicU64,
    pub(super) request_micros_max: AtomicU64,
    pub(super) queue_micros: AtomicU64,
    pub(super) queue_micros_max: AtomicU64,
}

impl Stats {
    pub(super) fn sent(&self, records: usize, bytes: usize, queued: Duration) {
        let q = queued.as_micros() as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.batch_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.queue_micros.fetch_add(q, Ordering::Relaxed);
        self.queue_micros_max.fetch_max(q, Ordering::Relaxed);
    }

    pub(super) fn answered(&self, took: Duration) {
        let t = took.as_micros() as u64;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.request_micros.fetch_add(t, Ordering::Relaxed);
        self.request_micros_max.fetch_max(t, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> ProducerMetrics {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let avg = |sum: u64, n: u64| Duration::from_micros(sum.checked_div(n).unwrap_or(0));
        let (batches, requests) = (get(&self.batches), get(&self.requests));
        ProducerMetrics {
            batches,
            records: get(&self.records),
            batch_bytes: get(&self.batch_bytes),
            requests,
            retries: get(&self.retries),
            request_latency_avg: avg(get(&self.request_micros), requests),
            request_latency_max: Duration::from_micros(get(&self.request_micros_max)),
            record_queue_time_avg: avg(get(&self.queue_micros), batches),
            record_queue_time_max: Duration::from_micros(get(&self.queue_micros_max)),
        }
    }
}
