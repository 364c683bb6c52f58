//! The consumer's requests: offset lookups and fetches, one per leader, in the background;
//! their answers (records, errors, a leader that moved) applied to each partition's state.

use super::*;

impl Consumer {
    /// Starts an offset lookup for every pending partition and, with `fetch`, a fetch for
    /// every positioned one, one request per leader, skipping partitions with a request in
    /// flight or in backoff. Fails only when metadata says a topic or partition is gone.
    pub(super) async fn start_work(&mut self, fetch: bool) -> Result<()> {
        let now = Instant::now();
        let idle: Vec<TopicPartition> = self
            .assigned
            .iter()
            .filter(|(_, a)| !a.busy && a.retry_at.is_none_or(|t| t <= now))
            .filter(|(_, a)| fetch || matches!(a.position, Position::Pending(_)))
            // Paused: positioned, but not fetched.
            .filter(|(_, a)| !a.paused || matches!(a.position, Position::Pending(_)))
            .map(|(tp, _)| tp.clone())
            .collect();
        let mut fetches: HashMap<String, Vec<(TopicPartition, i64, u64)>> = HashMap::new();
        // One failed metadata lookup per topic and round, not one per partition.
        let mut failed_topics: HashMap<String, Error> = HashMap::new();
        for tp in idle {
            let leader = match failed_topics.get(&tp.topic) {
                Some(e) => Err(e.clone()),
                None => self.cluster.leader(&tp.topic, tp.partition).await,
            };
            let address = match leader {
                Ok(address) => address,
                Err(e) if e.code() == Some(ErrorCode::UnknownTopicOrPartition) => return Err(e),
                Err(e) => {
                    if !matches!(e, Error::Broker { .. }) {
                        failed_topics.insert(tp.topic.clone(), e.clone());
                    }
                    self.unavailable_for(&tp, None, &e);
                    continue;
                }
            };
            let a = self
                .assigned
                .get_mut(&tp)
                .expect("idle partitions are assigned");
            a.busy = true;
            match a.position {
                Position::At(o) => fetches.entry(address).or_default().push((tp, o, a.epoch)),
                Position::Pending(start) => {
                    let cluster = self.cluster.clone();
                    let epoch = a.epoch;
                    self.lookups += 1;
                    self.inflight.spawn(async move {
                        let query = match start {
                            Offset::Earliest => list_offsets::EARLIEST,
                            Offset::Latest => list_offsets::LATEST,
                            Offset::Timestamp(ts) => ts,
                            Offset::At(o) => o,
                        };
                        let result = list_offset_at(&cluster, &address, &tp, query).await;
                        Done::Offset {
                            partition: tp,
                            epoch,
                            address,
                            start,
                            result,
                        }
                    });
                }
            }
        }
        for (address, asked) in fetches {
            self.spawn_fetch(address, asked);
        }
        Ok(())
    }

    pub(super) fn spawn_fetch(&mut self, address: String, asked: Vec<(TopicPartition, i64, u64)>) {
        let cluster = self.cluster.clone();
        let config = self.config.clone();
        self.inflight.spawn(async move {
            let req = pb::FetchRequest {
                max_wait_ms: config.fetch_max_wait.as_millis() as u32,
                min_bytes: config.fetch_min_bytes,
                max_bytes: config.fetch_max_bytes,
                partitions: asked
                    .iter()
                    .map(|(tp, offset, _)| pb::FetchPartition {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        fetch_offset: *offset,
                        partition_max_bytes: config.max_partition_fetch_bytes,
                    })
                    .collect(),
            };
            let timeout = cluster.config.request_timeout + config.fetch_max_wait;
            let result = match cluster.log_client(&address) {
                Err(e) => Err(e),
                Ok(mut client) => match tokio::time::timeout(timeout, client.fetch(req)).await {
                    Ok(Ok(resp)) => Ok(resp.into_inner()),
                    Ok(Err(status)) => Err(Error::from_status(&address, status)),
                    Err(_) => Err(Error::Timeout {
                        what: format!("fetch from {address}"),
                        after: timeout,
                        last: "no answer".into(),
                    }),
                },
            };
            Done::Fetch {
                address,
                asked,
                result,
            }
        });
    }

    pub(super) async fn handle(
        &mut self,
        done: std::result::Result<Done, tokio::task::JoinError>,
    ) -> Result<()> {
        let done = match done {
            Ok(done) => done,
            Err(e) if e.is_cancelled() => return Ok(()),
            Err(e) => return Err(Error::InvalidArgument(format!("fetch task failed: {e}"))),
        };
        match done {
            Done::Offset {
                partition,
                epoch,
                address,
                start,
                result,
            } => {
                self.lookups -= 1;
                let Some(a) = self
                    .assigned
                    .get_mut(&partition)
                    .filter(|a| a.epoch == epoch)
                else {
                    return Ok(());
                };
                a.busy = false;
                match (result, start) {
                    // No record at or after the time: start at the end.
                    (Ok(-1), Offset::Timestamp(_)) => {
                        a.position = Position::Pending(Offset::Latest);
                    }
                    (Ok(offset), _) => {
                        a.position = Position::At(offset);
                        self.answered(&partition);
                    }
                    (Err(e), _) => self.request_failed(&partition, &address, e),
                }
            }
            Done::Fetch {
                address,
                asked,
                result,
            } => {
                let mut current = BTreeMap::new();
                for (tp, offset, epoch) in asked {
                    if let Some(a) = self.assigned.get_mut(&tp).filter(|a| a.epoch == epoch) {
                        a.busy = false;
                        current.insert(tp, offset);
                    }
                }
                match result {
                    Err(e) => {
                        for tp in current.keys() {
                            self.request_failed(tp, &address, e.clone());
                        }
                    }
                    Ok(resp) => {
                        // Fetch again from this broker before decoding, so its read and
                        // transfer overlap the decoding. Positions come from batch headers.
                        if self.advance_positions(&resp, &current) {
                            self.start_work(true).await?;
                        }
                        self.absorb(resp, &current, &address).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// A partition's request failed: follow a leader the error names, else retry after a
    /// backoff on fresh metadata (reporting the outage once); an error no retry can fix
    /// goes to the application.
    pub(super) fn request_failed(&mut self, tp: &TopicPartition, address: &str, e: Error) {
        let hint = e
            .detail()
            .filter(|d| d.error_code() == ErrorCode::NotLeader)
            .map(|d| d.leader_address.clone())
            .filter(|l| !l.is_empty() && l != address);
        if let Some(leader) = hint
            && let Some(a) = self.assigned.get_mut(tp)
            && !a.hinted
        {
            a.hinted = true;
            self.cluster.note_leader(&tp.topic, tp.partition, leader);
            return;
        }
        if !matches!(e, Error::Broker { .. }) {
            self.cluster.drop_channel(address);
        }
        // A broker whose metadata is behind may not know a topic yet: metadata from the
        // cluster decides (start_work fails if it has no such topic).
        if e.is_retriable() || e.code() == Some(ErrorCode::UnknownTopicOrPartition) {
            self.unavailable_for(tp, Some(address), &e);
        } else {
            self.error.get_or_insert(e);
        }
    }

    /// Backs a partition off and reports it unavailable, once per outage.
    pub(super) fn unavailable_for(&mut self, tp: &TopicPartition, leader: Option<&str>, e: &Error) {
        self.cluster.invalidate(&tp.topic);
        let Some(a) = self.assigned.get_mut(tp) else {
            return;
        };
        let now = Instant::now();
        a.retry_at = Some(now + a.backoff);
        a.backoff = (a.backoff * 2).min(self.config.retry_backoff_max);
        if a.outage.is_some() {
            return;
        }
        let reason = match leader {
            Some(address) => format!("its leader at {address} did not answer: {e}"),
            None => format!("no leader to read from: {e}"),
        };
        tracing::warn!(partition = %tp, %reason, "partition unavailable; reading the others and retrying");
        a.outage = Some((now, reason.clone()));
        self.event(PartitionEvent::Unavailable {
            partition: tp.clone(),
            reason,
        });
    }

    /// A partition's leader answered: clear its backoff and end its outage.
    pub(super) fn answered(&mut self, tp: &TopicPartition) {
        let Some(a) = self.assigned.get_mut(tp) else {
            return;
        };
        a.retry_at = None;
        a.hinted = false;
        a.backoff = self.config.retry_backoff;
        if let Some((since, _)) = a.outage.take() {
            let after = since.elapsed();
            tracing::info!(partition = %tp, ?after, "partition readable again");
            self.event(PartitionEvent::Available {
                partition: tp.clone(),
                after,
            });
        }
    }

    pub(super) fn event(&mut self, e: PartitionEvent) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Moves positions past the batches in `resp`; true when every partition answered
    /// cleanly and some brought data (then the next fetch can start right away).
    pub(super) fn advance_positions(
        &mut self,
        resp: &pb::FetchResponse,
        asked: &BTreeMap<TopicPartition, i64>,
    ) -> bool {
        let mut moves = Vec::new();
        for part in &resp.partitions {
            if part.error.is_some() {
                return false;
            }
            let mut next = None;
            for b in batch::split_batches(part.records.clone()) {
                match b.as_deref().map(batch::BatchHeader::parse) {
                    Ok(Ok(h)) => next = Some(h.next_offset()),
                    _ => return false,
                }
            }
            if let Some(next) = next {
                moves.push((
                    TopicPartition::new(part.topic.clone(), part.partition),
                    next,
                ));
            }
        }
        let mut any = false;
        for (tp, next) in moves {
            if !asked.contains_key(&tp) {
                continue;
            }
            if let Some(a) = self.assigned.get_mut(&tp)
                && let Position::At(pos) = &mut a.position
                && next > *pos
            {
                *pos = next;
                any = true;
            }
        }
        any
    }

    /// Decodes a fetch answer into the buffer and handles per-partition errors.
    pub(super) async fn absorb(
        &mut self,
        resp: pb::FetchResponse,
        asked: &BTreeMap<TopicPartition, i64>,
        address: &str,
    ) {
        for part in resp.partitions {
            let tp = TopicPartition::new(part.topic.clone(), part.partition);
            let Some(&position) = asked.get(&tp) else {
                continue;
            };
            if let Some(err) = part.error {
                self.partition_error(&tp, address, err);
                continue;
            }
            self.answered(&tp);
            let topic: Arc<str> = Arc::from(part.topic.as_str());
            let mut next = position;
            let mut damaged = None;
            for b in batch::split_batches(part.records) {
                let (header, records) =
                    match b.and_then(|b| batch::decode(&b, batch::DEFAULT_MAX_DECOMPRESSED)) {
                        // Control batches (Raft bookkeeping) take offsets that consumers
                        // never see.
                        Ok((h, _)) if h.is_control() => {
                            next = next.max(h.next_offset());
                            continue;
                        }
                        Ok((h, records)) => (h, records),
                        Err(source) => {
                            damaged = Some(source);
                            break;
                        }
                    };
                for r in records {
                    if r.offset < next {
                        continue;
                    }
                    next = r.offset + 1;
                    let id = RecordId::of(&topic, tp.partition, &header, r.offset, &r.headers);
                    self.buffered.push_back(ConsumerRecord {
                        topic: topic.clone(),
                        partition: tp.partition,
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                        id,
                    });
                }
            }
            let Some(a) = self.assigned.get_mut(&tp) else {
                continue;
            };
            a.high_watermark = Some(part.high_watermark);
            match damaged {
                // Stay on the first record not handed out: the next poll fetches it again
                // (wire damage heals) or reports it again (stored damage). A fetch already
                // started past it is dropped, so nothing after it is skipped. Records
                // before the damage are handed out first; the error comes next.
                Some(source) => {
                    a.position = Position::At(next);
                    a.epoch += 1;
                    a.busy = false;
                    self.error.get_or_insert(Error::Corrupt {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        offset: next,
                        source,
                    });
                }
                None => {
                    if let Position::At(pos) = &mut a.position {
                        *pos = (*pos).max(next);
                    }
                }
            }
        }
    }

    pub(super) fn partition_error(
        &mut self,
        tp: &TopicPartition,
        address: &str,
        err: pb::ErrorDetail,
    ) {
        match err.error_code() {
            ErrorCode::OffsetOutOfRange => {
                let target = match self.config.auto_offset_reset {
                    AutoOffsetReset::Earliest => Offset::Earliest,
                    AutoOffsetReset::Latest => Offset::Latest,
                    AutoOffsetReset::None => {
                        self.error.get_or_insert(Error::broker(err));
                        return;
                    }
                };
                if let Some(a) = self.assigned.get_mut(tp) {
                    tracing::warn!(partition = %tp, position = ?a.position, reset = ?target, "offset out of range; resetting");
                    a.position = Position::Pending(target);
                }
            }
            // Damage stored on the broker: reported, never skipped.
            ErrorCode::CorruptMessage => {
                self.error.get_or_insert(Error::broker(err));
            }
            _ => self.request_failed(tp, address, Error::broker(err)),
        }
    }
}

/// One ListOffsets call to the broker at `address`.
pub(super) async fn list_offset_at(
    cluster: &Cluster,
    address: &str,
    tp: &TopicPartition,
    query: i64,
) -> Result<i64> {
    let mut client = cluster.log_client(address)?;
    let req = pb::ListOffsetsRequest {
        partitions: vec![pb::ListOffsetsPartition {
            topic: tp.topic.clone(),
            partition: tp.partition,
            timestamp: query,
        }],
    };
    let timeout = cluster.config.request_timeout;
    let resp = tokio::time::timeout(timeout, client.list_offsets(req))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("list offsets of {tp}"),
            after: timeout,
            last: "no answer".into(),
        })?
        .map_err(|s| Error::from_status(address, s))?
        .into_inner();
    let entry = resp
        .partitions
        .into_iter()
        .next()
        .ok_or_else(|| Error::InvalidArgument(format!("empty ListOffsets answer for {tp}")))?;
    match entry.error {
        Some(e) => Err(Error::broker(e)),
        None => Ok(entry.offset),
    }
}
