//! A replica leader's write path: the in-sync check, validation, proposing (idempotent batches de-duplicated first) and waiting for `acks`.

use super::*;

impl Replica {
    /// Appends a batch through Raft (one entry) and answers as `acks` asks: `0` once
    /// proposed, `1` once durable in this leader's log, `all` once committed by a quorum and
    /// held by `min.insync.replicas` replicas. `acks=all` is refused up front with too few
    /// in-sync replicas (NOT_ENOUGH_REPLICAS) and fails if too few hold the batch after the
    /// commit (NOT_ENOUGH_REPLICAS_AFTER_APPEND). A retry of an idempotent producer's batch
    /// that this partition holds or is committing is not appended again: it gets the
    /// original's offsets.
    pub(crate) async fn produce(
        &self,
        state: &crate::controller::ClusterState,
        batch: Bytes,
        acks_level: i32,
        timeout: Duration,
    ) -> Result<(i64, i64)> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.await_candidacy(deadline).await;
        self.check_leader(state)?;
        // Counted before `handing_over` is read, so that a hand-over (which sets it, then
        // waits for the count to drain) never misses a write on its way into the log.
        let _proposing = loop {
            let counted = Counted::new(&self.proposing);
            if !self.handing_over.load(std::sync::atomic::Ordering::SeqCst) {
                break counted;
            }
            drop(counted);
            // Leadership is moving: wait for the move (bounded), then answer NOT_LEADER
            // with the new leader, which the producer follows at once.
            while self.handing_over.load(std::sync::atomic::Ordering::SeqCst)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(HAND_OVER_POLL).await;
            }
            self.check_leader(state)?;
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::LeaderNotAvailable {
                    topic: self.topic.to_string(),
                    partition: self.id,
                });
            }
        };
        let config = self.config.get();
        let min_isr = config.min_insync_replicas as usize;
        if acks_level == acks::ALL {
            self.await_in_sync(min_isr, deadline).await?;
        }
        self.wake();
        let batch = if validates_quickly(&batch, &config) {
            // A CRC pass and a walk over the records: cheaper than a hop to the blocking pool
            // and back, which is latency every acks=all write pays.
            validate_batch(&self.topic, self.id, &config, batch)?
        } else {
            let (topic, id, config) = (self.topic.clone(), self.id, config.clone());
            tokio::task::spawn_blocking(move || validate_batch(&topic, id, &config, batch))
                .await
                .map_err(|e| Error::Internal(format!("validating a batch: {e}")))??
        }
        .freeze();
        let batch_id = sluice_proto::batch::BatchHeader::parse(&batch)
            .ok()
            .and_then(|h| BatchId::of(&h));
        let progress = match batch_id {
            None => self.propose(batch).await?.1,
            Some(batch_id) => match self
                .propose_idempotent(state, batch, batch_id, deadline)
                .await?
            {
                Ok(progress) => progress,
                Err(stored) => {
                    if acks_level == acks::ALL {
                        self.check_in_sync(min_isr)?;
                    }
                    return Ok((stored.base_offset, stored.last_offset));
                }
            },
        };
        if acks_level == acks::NONE {
            return Ok((-1, -1));
        }
        let (at, index) = self
            .await_progress(state, progress, acks_level == acks::ALL, deadline)
            .await?;
        // A commit means a majority holds the batch; only a min.insync.replicas above the
        // majority needs more (watched on the replication metrics, not polled).
        let majority = self.voters() / 2 + 1;
        if acks_level == acks::ALL && min_isr > majority {
            let held = self
                .watch_metrics(deadline, |m| {
                    (holding(m, self.node_id, index) >= min_isr).then_some(())
                })
                .await;
            if held.is_none() {
                return Err(Error::NotEnoughReplicasAfterAppend {
                    topic: self.topic.to_string(),
                    partition: self.id,
                    holding: self.holding(index),
                    required: min_isr,
                });
            }
        }
        Ok((at.base_offset, at.last_offset))
    }

    /// Kafka's DeleteRecords: commits a control batch saying that every replica may delete
    /// its records below `offset` (each does, whole segments at a time, at its next
    /// retention pass). Returns once committed. The batch itself takes one offset.
    pub(crate) async fn delete_records_before(
        &self,
        state: &crate::controller::ClusterState,
        offset: i64,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.check_leader(state)?;
        let batch = sluice_proto::batch::control_batch(
            super::super::types::DELETE_BEFORE_KEY,
            offset.to_string().as_bytes(),
        )
        .freeze();
        let (_, progress) = self.propose(batch).await?;
        self.await_progress(state, progress, true, deadline).await?;
        Ok(())
    }

    /// Waits until `f` has an answer from the group's metrics, up to `deadline`; `None` on
    /// timeout or when the group stops.
    pub(super) async fn watch_metrics<T>(
        &self,
        deadline: tokio::time::Instant,
        mut f: impl FnMut(&openraft::RaftMetrics<u64, BasicNode>) -> Option<T>,
    ) -> Option<T> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(t) = f(&metrics.borrow_and_update()) {
                return Some(t);
            }
            if !matches!(
                tokio::time::timeout_at(deadline, metrics.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
    }

    /// `NOT_ENOUGH_REPLICAS` unless `min_isr` replicas are in sync. A leadership younger
    /// than [`NEW_LEADER_GRACE`] may not have heard its followers yet (a new topic, a
    /// failover): it waits for them, on the replication metrics and within the request's
    /// deadline, before it refuses. An established leader refuses at once, as Kafka does.
    pub(super) async fn await_in_sync(
        &self,
        min_isr: usize,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        if self.in_sync().len() >= min_isr {
            return Ok(());
        }
        let age = {
            let l = self.leadership.lock();
            (l.term == self.raft.metrics().borrow().current_term).then(|| l.since.elapsed())
        };
        if let Some(remaining) = age.and_then(|a| NEW_LEADER_GRACE.checked_sub(a)) {
            let until = deadline.min(tokio::time::Instant::now() + remaining);
            let mut metrics = self.raft.metrics();
            loop {
                if self.in_sync().len() >= min_isr {
                    return Ok(());
                }
                if !matches!(
                    tokio::time::timeout_at(until, metrics.changed()).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
        }
        self.check_in_sync(min_isr)
    }

    pub(super) fn check_in_sync(&self, min_isr: usize) -> Result<()> {
        let isr = self.in_sync();
        if isr.len() < min_isr {
            return Err(Error::NotEnoughReplicas {
                topic: self.topic.to_string(),
                partition: self.id,
                in_sync: isr,
                required: min_isr,
            });
        }
        Ok(())
    }

    /// Hands a batch to Raft; a task reports its commit (or failure) to its waiters.
    pub(super) async fn propose(&self, batch: Bytes) -> Result<(u64, watch::Receiver<Progress>)> {
        let (token, progress) = self.proposals.register();
        let proposed = std::time::Instant::now();
        let responder = match self.raft.client_write_ff(Payload(batch, token)).await {
            Ok(r) => r,
            Err(e) => {
                self.proposals.advance(
                    token,
                    Progress::Failed {
                        not_leader: false,
                        message: e.to_string(),
                    },
                );
                return Err(Error::Internal(format!("{}-{}: {e}", self.topic, self.id)));
            }
        };
        let proposals = self.proposals.clone();
        let metrics = self.raft_metrics.get().cloned();
        tokio::spawn(async move {
            let outcome = match responder.await {
                Ok(Ok(r)) => {
                    if let Some(m) = &metrics {
                        m.committed(proposed.elapsed());
                    }
                    Progress::Committed {
                        at: r.data,
                        index: r.log_id.index,
                    }
                }
                Ok(Err(ClientWriteError::ForwardToLeader(_))) => Progress::Failed {
                    not_leader: true,
                    message: "leadership moved".into(),
                },
                Ok(Err(e)) => Progress::Failed {
                    not_leader: false,
                    message: e.to_string(),
                },
                Err(_) => Progress::Failed {
                    not_leader: true,
                    message: "the Raft group stopped".into(),
                },
            };
            proposals.advance(token, outcome);
        });
        Ok((token, progress))
    }

    /// Proposes an idempotent producer's batch unless it is a duplicate: `Err(stored)` for
    /// a batch committed already; the original's progress for one still in flight.
    pub(super) async fn propose_idempotent(
        &self,
        state: &crate::controller::ClusterState,
        batch: Bytes,
        id: BatchId,
        deadline: tokio::time::Instant,
    ) -> Result<std::result::Result<watch::Receiver<Progress>, crate::producer_state::StoredBatch>>
    {
        let term = self.await_ready(state, deadline).await?;
        // A producer keeps several batches in flight; one may get here before the batch
        // ahead of it: it waits (a little) for that one to be proposed.
        let patience = (tokio::time::Instant::now() + self.sequence_wait).min(deadline);
        loop {
            let mut inflight = self.inflight.lock().await;
            if inflight.term != term {
                // Batches of an earlier leadership were committed (and are in `producers`)
                // or dropped by now: `await_ready` saw this term's first entry applied.
                *inflight = Inflight {
                    term,
                    ..Default::default()
                };
            }
            let queue = inflight.by_producer.entry(id.producer_id).or_default();
            // Committed batches leave from the front only (their completions are told in
            // any order), so the back stays the newest batch proposed; failed ones were not
            // stored by this leader.
            queue.retain(|b| !matches!(*b.progress.borrow(), Progress::Failed { .. }));
            while queue
                .front()
                .is_some_and(|b| matches!(*b.progress.borrow(), Progress::Committed { .. }))
            {
                queue.pop_front();
            }
            if let Some(b) = queue.iter().find(|b| b.id == id) {
                tracing::debug!(topic = %self.topic, partition = self.id, producer = id.producer_id, "a retry joins its batch in flight");
                return Ok(Ok(b.progress.clone()));
            }
            let pending = queue.back().map(|b| Latest {
                epoch: b.id.epoch,
                last_seq: b.id.last_seq,
            });
            let (early, verdict) = {
                let producers = self.producers.lock();
                (
                    producers.is_early(&id, pending),
                    producers.check(&id, pending),
                )
            };
            if early && tokio::time::Instant::now() < patience {
                let proposed = self.proposed.notified();
                tokio::pin!(proposed);
                proposed.as_mut().enable();
                drop(inflight);
                let _ = tokio::time::timeout_at(patience, proposed).await;
                continue;
            }
            let verdict = verdict.map_err(|source| Error::Sequence {
                topic: self.topic.to_string(),
                partition: self.id,
                source,
            })?;
            if let Verdict::Duplicate(stored) = verdict {
                tracing::debug!(topic = %self.topic, partition = self.id, producer = id.producer_id, base_offset = stored.base_offset, "dropped a duplicate batch");
                return Ok(Err(stored));
            }
            let (_, progress) = self.propose(batch).await?;
            queue.push_back(InflightBatch {
                id,
                progress: progress.clone(),
            });
            if inflight.by_producer.len() > crate::producer_state::MAX_PRODUCERS {
                inflight.by_producer.retain(|_, q| !q.is_empty());
            }
            self.proposed.notify_waiters();
            return Ok(Ok(progress));
        }
    }

    /// Waits until this leader has applied everything earlier leaders left in its log (its
    /// own term's first entry is applied), so its producer state is complete. Returns the term.
    pub(super) async fn await_ready(
        &self,
        state: &crate::controller::ClusterState,
        deadline: tokio::time::Instant,
    ) -> Result<u64> {
        let ready = self
            .watch_metrics(deadline, |m| {
                if m.state != ServerState::Leader {
                    Some(None)
                } else if m
                    .last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term)
                {
                    Some(Some(m.current_term))
                } else {
                    None
                }
            })
            .await;
        match ready {
            Some(Some(term)) => Ok(term),
            Some(None) => Err(self.not_leader(state)),
            None => Err(Error::Timeout(format!(
                "{}-{}: the new leader did not finish applying its log in time",
                self.topic, self.id
            ))),
        }
    }

    /// Waits until the batch is durable here (`committed` false) or committed, and returns
    /// where it landed and its Raft index (0 if only appended).
    pub(super) async fn await_progress(
        &self,
        state: &crate::controller::ClusterState,
        mut progress: watch::Receiver<Progress>,
        committed: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(Appended, u64)> {
        loop {
            match &*progress.borrow_and_update() {
                Progress::Committed { at, index } => return Ok((*at, *index)),
                Progress::Appended(at) if !committed => return Ok((*at, 0)),
                Progress::Failed {
                    not_leader: true, ..
                } => return Err(self.not_leader(state)),
                Progress::Failed { message, .. } => {
                    return Err(Error::Internal(format!(
                        "{}-{}: {message}",
                        self.topic, self.id
                    )));
                }
                _ => {}
            }
            let waited = tokio::time::timeout_at(deadline, progress.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return Err(Error::Timeout(format!(
                    "{}-{}: the batch was not {} within the request timeout; an idempotent producer's retry will not duplicate it",
                    self.topic,
                    self.id,
                    if committed {
                        "committed by a quorum"
                    } else {
                        "written by the leader"
                    },
                )));
            }
        }
    }

    /// Resumes heartbeats if the group was quiesced; notes the write.
    pub(super) fn wake(&self) {
        *self.last_write.lock() = Instant::now();
        if self
            .quiesced
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.raft.runtime_config().tick(true);
            self.raft.runtime_config().heartbeat(true);
        }
    }
}
