//! One partition's queue: batching, the in-flight window, retries in order and idempotent
//! sequence numbers.

use super::*;

/// Owns one partition's queue: fills a batch, sends it, and keeps up to
/// `max.in.flight.requests.per.connection` batches on their way (one without idempotence).
/// Acknowledgements are handled in send order; after a failure every batch behind it is
/// resent in order, one at a time, before sending goes on.
pub(super) struct Worker {
    pub(super) inner: Arc<Inner>,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) rx: mpsc::UnboundedReceiver<Msg>,
    /// Idempotence: this partition's producer id, epoch and next sequence number.
    pub(super) sequence: Option<Sequence>,
    /// Set when the epochs of the producer id ran out: ask for a new id.
    pub(super) fresh_id: bool,
    /// Batches sent and not yet answered, oldest first, with their first attempts.
    pub(super) window: VecDeque<Sent>,
    /// Batches sealed and batches resolved so far (flushes wait for a count).
    pub(super) sealed: u64,
    pub(super) resolved: u64,
    /// Flush requests: answered once `resolved` reaches the number.
    pub(super) flushes: Vec<(u64, oneshot::Sender<()>)>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Sequence {
    pub(super) producer_id: i64,
    pub(super) epoch: i16,
    pub(super) next: i32,
}

/// A batch being filled.
pub(super) struct Open {
    pub(super) builder: RecordBatchBuilder,
    pub(super) records: Vec<Pending>,
    pub(super) max_bytes: usize,
    /// No more records fit.
    pub(super) full: bool,
    /// linger.ms after its first record was queued.
    pub(super) due: tokio::time::Instant,
}

/// A sealed batch on its way.
pub(super) struct Sent {
    pub(super) batch: Bytes,
    pub(super) records: Vec<Pending>,
    /// delivery.timeout.ms after its oldest record was queued.
    pub(super) deadline: Instant,
    /// Sent while earlier batches were in flight: a refusal as out of sequence may only
    /// mean it overtook them.
    pub(super) overtaking: bool,
}

pub(super) type Attempt = Pin<Box<dyn Future<Output = Result<pb::ProduceResponse>> + Send>>;

impl Worker {
    pub(super) fn new(
        inner: Arc<Inner>,
        topic: &str,
        partition: i32,
        rx: mpsc::UnboundedReceiver<Msg>,
    ) -> Self {
        Worker {
            inner,
            topic: topic.to_string(),
            partition,
            rx,
            sequence: None,
            fresh_id: false,
            window: VecDeque::new(),
            sealed: 0,
            resolved: 0,
            flushes: Vec::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let max_in_flight = self.inner.config.max_in_flight();
        let mut open: Option<Open> = None;
        // A record that did not fit the open batch: it starts the next one.
        let mut carry: Option<Pending> = None;
        let mut closed = false;
        // The first attempts of the batches in `window`, in the same order (kept out of
        // `self`, which is shared across awaits and so must be `Sync`).
        let mut attempts: FuturesOrdered<Attempt> = FuturesOrdered::new();
        loop {
            // A full batch goes out while the window has room; one that is not full goes out
            // once linger.ms has passed and nothing else is in flight. While a batch is on
            // its way, records gather into the next one: fewer, larger batches, which is
            // what a replicated partition commits fastest (each batch is one Raft entry).
            if let Some(o) = &open
                && self.window.len() < max_in_flight
                && (o.full
                    || closed
                    || self.flushes.iter().any(|(n, _)| *n > self.sealed)
                    || (self.window.is_empty() && o.due <= tokio::time::Instant::now()))
                && let Some(o) = open.take()
            {
                self.send(o, &mut attempts).await;
                if let Some(p) = carry.take() {
                    open = Some(self.open(p).await);
                }
                continue;
            }
            if closed && open.is_none() && self.window.is_empty() {
                self.answer_flushes();
                return;
            }
            let idle = self.window.is_empty();
            let due = open.as_ref().map(|o| o.due);
            let receiving = !closed && open.as_ref().is_none_or(|o| !o.full);
            tokio::select! {
                biased;
                Some(result) = attempts.next(), if !attempts.is_empty() => {
                    self.settle(result, &mut attempts).await;
                }
                m = self.rx.recv(), if receiving => match m {
                    None => closed = true,
                    Some(Msg::Flush(tx)) => {
                        // Everything queued before the flush is in the open batch and
                        // the record carried over to the next.
                        let upto =
                            self.sealed + u64::from(open.is_some()) + u64::from(carry.is_some());
                        self.flushes.push((upto, tx));
                        self.answer_flushes();
                    }
                    Some(Msg::Record(p)) => match &mut open {
                        None => open = Some(self.open(p).await),
                        Some(o) => carry = o.push(p),
                    },
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                    if idle && due.is_some() => {}
            }
        }
    }

    /// Starts a batch with `first`.
    pub(super) async fn open(&self, first: Pending) -> Open {
        // linger.ms counts from the batch's first record, as in Kafka: records that queued
        // while the window was full do not wait again.
        let due = tokio::time::Instant::from_std(first.enqueued) + self.inner.config.linger;
        let mut o = Open {
            builder: RecordBatchBuilder::new(self.inner.config.compression),
            records: Vec::new(),
            max_bytes: self.max_batch_bytes().await,
            full: false,
            due,
        };
        // The first record always fits (the broker refuses it if it is too large).
        let _ = o.push(first);
        o
    }

    pub(super) async fn max_batch_bytes(&self) -> usize {
        let limit = match self.inner.cluster.topic(&self.topic).await {
            Ok(route) => route.max_message_bytes.max(1) as usize,
            Err(_) => usize::MAX,
        };
        self.inner.config.batch_size.min(limit)
    }

    /// Seals the batch and sends its first attempt.
    pub(super) async fn send(&mut self, o: Open, attempts: &mut FuturesOrdered<Attempt>) {
        let deadline = o.records[0].enqueued + self.inner.config.delivery_timeout;
        let queued = o.records[0].enqueued.elapsed();
        self.sealed += 1;
        let batch = match self.await_producer_id(deadline).await {
            Ok(id) => self.seal(o.builder, id),
            Err(e) => {
                self.resolve(o.records, Err(e));
                return;
            }
        };
        self.inner.stats.sent(o.records.len(), batch.len(), queued);
        attempts.push_back(Box::pin(attempt(
            self.inner.clone(),
            self.topic.clone(),
            self.partition,
            batch.clone(),
            deadline,
        )));
        let overtaking = !self.window.is_empty();
        self.window.push_back(Sent {
            batch,
            records: o.records,
            deadline,
            overtaking,
        });
    }

    /// The oldest batch in flight was answered.
    pub(super) async fn settle(
        &mut self,
        result: Result<pb::ProduceResponse>,
        attempts: &mut FuturesOrdered<Attempt>,
    ) {
        let Some(first) = self.window.pop_front() else {
            return;
        };
        let err = match result {
            Ok(resp) => {
                self.resolve(first.records, Ok(resp));
                return;
            }
            Err(e) => e,
        };
        // The batches behind it are on their way too: collect their answers before sending
        // anything again, so that the partition gets every batch in order.
        let mut behind = Vec::new();
        while let Some(r) = attempts.next().await {
            behind.push(r);
        }
        let later: Vec<Sent> = self.window.drain(..).collect();
        // Everything before it is acknowledged now: if it was refused for a gap while
        // those were still on their way, it only arrived first.
        let overtook = first.overtaking && err.code() == Some(ErrorCode::OutOfOrderSequenceNumber);
        let queue = std::iter::once((first, Err(err), overtook))
            .chain(later.into_iter().zip(behind).map(|(s, r)| (s, r, true)));
        // The last batch that finally failed, and whether the partition refused it on sight.
        let mut failed: Option<(Error, bool)> = None;
        for (mut sent, result, behind_failure) in queue {
            let result = match (result, &failed) {
                (Ok(resp), _) => Ok(resp),
                // Behind a batch that may have been stored: resending could put these ahead
                // of it.
                (Err(_), Some((cause, false))) => Err(Error::Abandoned {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    cause: cause.to_string(),
                }),
                // Behind a batch the partition refused: it was not stored, and neither was
                // this one (a gap in the old epoch's sequence). Renumber it in the new epoch
                // and send it again, as Kafka's producer does; a bad record costs only its
                // own batch.
                (Err(e), Some((cause, true))) => match self.renumber(&sent.batch) {
                    Some(batch) => {
                        sent.batch = batch;
                        self.retry(&sent, e, true).await
                    }
                    None => Err(Error::Abandoned {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        cause: cause.to_string(),
                    }),
                },
                // A batch behind a failed one was refused for that (out of sequence, or
                // the same lost leader): it gets sent again whatever the error.
                (Err(e), None) => self.retry(&sent, e, behind_failure).await,
            };
            if let Err(e) = &result
                && !matches!(failed, Some((_, false)))
            {
                failed = Some((e.clone(), e.refused_unstored()));
                self.restart_sequence();
            }
            self.resolve(sent.records, result);
        }
    }

    /// `batch` numbered as the next one of the current producer epoch, or `None` if the
    /// producer has no sequence now (its epochs ran out and it must ask for a new id).
    pub(super) fn renumber(&mut self, batch: &Bytes) -> Option<Bytes> {
        let seq = self.sequence?;
        let header = sluice_proto::batch::BatchHeader::parse(batch).ok()?;
        let mut out = bytes::BytesMut::from(&batch[..]);
        sluice_proto::batch::set_producer(
            &mut out,
            sluice_proto::batch::ProducerFields {
                producer_id: seq.producer_id,
                producer_epoch: seq.epoch,
                base_sequence: seq.next,
            },
        );
        self.sequence = Some(Sequence {
            next: sluice_proto::batch::sequence_plus(seq.next, header.record_count),
            ..seq
        });
        Some(out.freeze())
    }

    /// Sends `sent` again after `last` until it succeeds, fails for good, or its delivery
    /// timeout passes.
    pub(super) async fn retry(
        &self,
        sent: &Sent,
        mut last: Error,
        mut resend_anyway: bool,
    ) -> Result<pb::ProduceResponse> {
        let config = &self.inner.config;
        let cluster = &self.inner.cluster;
        let mut backoff = config.retry_backoff;
        let mut attempts = 1u32;
        let mut hinted = false;
        loop {
            if !(last.is_retriable() || resend_anyway) {
                return Err(last);
            }
            if Instant::now() + backoff >= sent.deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "delivery to {}-{} ({attempts} attempts)",
                        self.topic, self.partition
                    ),
                    after: config.delivery_timeout,
                    last: last.to_string(),
                });
            }
            tracing::warn!(topic = %self.topic, partition = self.partition, attempts, cause = %last, "retrying produce");
            if !resend_anyway {
                // A leader the error names is tried at once (once in a row: two brokers
                // with stale views must not ping-pong); otherwise wait out the backoff,
                // but no longer than until metadata names another leader than the one
                // that failed, so a failover is followed when it completes, not at the
                // next backoff step.
                let named = last
                    .detail()
                    .filter(|d| {
                        d.error_code() == ErrorCode::NotLeader && !d.leader_address.is_empty()
                    })
                    .map(|d| d.leader_address.clone());
                let failed_at = cluster.cached_leader(&self.topic, self.partition);
                match named {
                    Some(leader) if !hinted && Some(&leader) != failed_at.as_ref() => {
                        hinted = true;
                        cluster.note_leader(&self.topic, self.partition, leader);
                    }
                    _ => {
                        hinted = false;
                        let until = tokio::time::Instant::now() + backoff;
                        cluster
                            .await_other_leader(
                                &self.topic,
                                self.partition,
                                failed_at.as_deref(),
                                until,
                            )
                            .await;
                        backoff = (backoff * 2).min(config.retry_backoff_max);
                    }
                }
            }
            resend_anyway = false;
            attempts += 1;
            self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
            match attempt(
                self.inner.clone(),
                self.topic.clone(),
                self.partition,
                sent.batch.clone(),
                sent.deadline,
            )
            .await
            {
                Ok(resp) => return Ok(resp),
                Err(e) => last = e,
            }
        }
    }

    /// Resolves every record's future of one batch, in order.
    pub(super) fn resolve(&mut self, records: Vec<Pending>, result: Result<pb::ProduceResponse>) {
        for (i, p) in records.into_iter().enumerate() {
            let r = match &result {
                Ok(resp) => Ok(RecordMetadata {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    offset: if resp.base_offset < 0 {
                        -1
                    } else {
                        resp.base_offset + i as i64
                    },
                    timestamp: p.timestamp,
                }),
                Err(e) => Err(e.clone()),
            };
            p.delivery.deliver(r);
        }
        self.resolved += 1;
        self.answer_flushes();
    }

    pub(super) fn answer_flushes(&mut self) {
        let resolved = self.resolved;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(n, _)| *n <= resolved);
        self.flushes = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// The producer id, asked of the partition's leader once per producer.
    pub(super) async fn producer_id(&self) -> Result<i64> {
        let mut id = self.inner.producer_id.lock().await;
        if let Some(id) = *id
            && !self.fresh_id
        {
            return Ok(id);
        }
        let cluster = &self.inner.cluster;
        let address = cluster.leader(&self.topic, self.partition).await?;
        let mut client = cluster.log_client(&address)?;
        let got = tokio::time::timeout(
            cluster.config.request_timeout,
            client.init_producer_id(pb::InitProducerIdRequest {}),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: format!("asking {address} for a producer id"),
            after: cluster.config.request_timeout,
            last: "no answer".into(),
        })?
        .map_err(|status| Error::from_status(&address, status))?
        .into_inner()
        .producer_id;
        *id = Some(got);
        Ok(got)
    }

    /// Numbers the batch (idempotence) with `producer_id` on first use.
    pub(super) fn seal(
        &mut self,
        mut builder: RecordBatchBuilder,
        producer_id: Option<i64>,
    ) -> Bytes {
        let seq = match (self.sequence, producer_id) {
            (Some(s), _) => s,
            (None, Some(producer_id)) => Sequence {
                producer_id,
                epoch: 0,
                next: 0,
            },
            (None, None) => return builder.build(),
        };
        let count = builder.record_count();
        builder.producer(sluice_proto::batch::ProducerFields {
            producer_id: seq.producer_id,
            producer_epoch: seq.epoch,
            base_sequence: seq.next,
        });
        self.sequence = Some(Sequence {
            next: sluice_proto::batch::sequence_plus(seq.next, count),
            ..seq
        });
        builder.build()
    }

    /// The producer id for idempotence, if this partition needs one yet; retried within the
    /// delivery timeout.
    pub(super) async fn await_producer_id(&mut self, deadline: Instant) -> Result<Option<i64>> {
        if !self.inner.config.idempotent() || self.sequence.is_some() {
            return Ok(None);
        }
        let mut backoff = self.inner.config.retry_backoff;
        loop {
            match self.producer_id().await {
                Ok(id) => {
                    self.fresh_id = false;
                    return Ok(Some(id));
                }
                Err(e) if e.is_retriable() && Instant::now() + backoff < deadline => {
                    self.inner.cluster.invalidate(&self.topic);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.inner.config.retry_backoff_max);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a batch finally failed, perhaps stored and perhaps not: later batches start a
    /// new epoch at sequence 0, so the partition never takes one of them for that batch.
    pub(super) fn restart_sequence(&mut self) {
        if let Some(s) = &mut self.sequence {
            if s.epoch == i16::MAX {
                self.sequence = None;
                self.fresh_id = true;
            } else {
                s.epoch += 1;
                s.next = 0;
            }
        }
    }
}

impl Open {
    /// Adds a record, or gives it back (and the batch is full) if it has no room for it.
    pub(super) fn push(&mut self, p: Pending) -> Option<Pending> {
        let first = self.records.first().map_or(p.timestamp, |f| f.timestamp);
        let size = RecordBatchBuilder::record_size(
            p.timestamp - first,
            p.key.as_deref(),
            &p.value,
            &p.headers,
        );
        if !self.records.is_empty() && self.builder.size() + size > self.max_bytes {
            self.full = true;
            return Some(p);
        }
        self.builder
            .append(p.timestamp, p.key.as_deref(), &p.value, &p.headers);
        self.records.push(p);
        if self.builder.size() >= self.max_bytes {
            self.full = true;
        }
        None
    }
}

/// One produce request for `batch` to the partition's leader (as the metadata has it),
/// within the request timeout and what is left of the delivery timeout.
pub(super) async fn attempt(
    inner: Arc<Inner>,
    topic: String,
    partition: i32,
    batch: Bytes,
    deadline: Instant,
) -> Result<pb::ProduceResponse> {
    let cluster = &inner.cluster;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let timeout = cluster
        .config
        .request_timeout
        .min(remaining)
        .max(Duration::from_millis(1));
    let address = cluster.leader(&topic, partition).await?;
    let mut client = cluster.log_client(&address)?;
    let req = pb::ProduceRequest {
        topic: topic.clone(),
        partition,
        acks: inner.config.acks.wire(),
        timeout_ms: timeout.as_millis() as u32,
        batch,
    };
    let sent = Instant::now();
    let call = tokio::time::timeout(timeout, client.produce(req));
    // A leader that went silent (paused, hung, cut off) is replaced by an election while
    // this request waits: with idempotence the batch can be resent to the new leader
    // safely, so watch for one rather than wait out the whole request timeout.
    let moved = async {
        if !inner.config.idempotent() {
            return std::future::pending().await;
        }
        tokio::time::sleep(inner.config.leader_move_check).await;
        let until = tokio::time::Instant::from_std(sent + timeout);
        match cluster
            .await_other_leader(&topic, partition, Some(&address), until)
            .await
        {
            Some(leader) => leader,
            None => std::future::pending().await,
        }
    };
    let answer = tokio::select! {
        answer = call => answer,
        leader = moved => {
            let mut detail = pb::ErrorDetail::new(
                ErrorCode::NotLeader,
                format!(
                    "{topic}-{partition}: no answer from {address} within {:?} while metadata names {leader} as the leader; resending there",
                    sent.elapsed()
                ),
            );
            detail.leader_address = leader;
            cluster.drop_channel(&address);
            return Err(Error::broker(detail));
        }
    };
    if answer.is_ok() {
        inner.stats.answered(sent.elapsed());
    }
    match answer {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => {
            let err = Error::from_status(&address, status);
            if matches!(err, Error::Rpc { .. }) {
                cluster.drop_channel(&address);
            }
            Err(err)
        }
        Err(_) => Err(Error::Timeout {
            what: format!("produce to {address}"),
            after: timeout,
            last: "no answer".into(),
        }),
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish()
    }
}
