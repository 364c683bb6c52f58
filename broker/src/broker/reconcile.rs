//! The reconciler: opens, grows, reconfigures and drops this broker's partitions as the committed metadata changes.

use super::*;

impl Broker {
    /// Applies every new metadata version to the local partitions.
    pub(super) async fn run_reconciler(self: Arc<Self>) {
        let mut rx = self.controller.subscribe();
        let mut seen = rx.borrow_and_update().clone();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let next = rx.borrow_and_update().clone();
            let this = self.clone();
            let prev = seen.clone();
            let n = next.clone();
            match tokio::task::spawn_blocking(move || this.reconcile(&prev, &n)).await {
                Ok(pending) => self.start_replicas(pending).await,
                Err(e) => tracing::error!(cause = %e, "reconciling partitions failed"),
            }
            seen = next;
        }
    }

    /// Opens partitions newly assigned here; closes and deletes those of topics that are
    /// gone. Blocking.
    pub(super) fn reconcile(
        &self,
        prev: &ClusterState,
        next: &ClusterState,
    ) -> Vec<PendingReplica> {
        let mut pending = Vec::new();
        let me = self.node_id();
        for (name, record) in &next.topics {
            let current = self.local.read().get(name).cloned();
            if let Some(t) = current
                .as_ref()
                .filter(|t| t.record.topic_id == record.topic_id)
            {
                self.update_config(t, record);
                if record.partitions > t.record.partitions {
                    pending.extend(self.add_partitions(t, record));
                }
                if record.replicas != t.record.replicas
                    || record.reassigning != t.record.reassigning
                {
                    // Partitions added just now are opened already (above).
                    let existing = t.record.partitions;
                    let t = self.local_topic(name).unwrap_or_else(|| t.clone());
                    pending.extend(self.reassign_replicas(&t, record, existing));
                }
                continue;
            }
            if let Some(stale) = current {
                self.drop_topic(&stale);
            }
            let assigned = record.partitions_on(me, 0..record.partitions);
            match self.open_topic(record.clone(), &assigned, None) {
                Ok((topic, replicas)) => {
                    self.local.write().insert(name.clone(), Arc::new(topic));
                    pending.extend(replicas);
                }
                Err(e) => {
                    tracing::error!(topic = %name, cause = %e, "cannot open the topic's partitions")
                }
            }
        }
        let gone: Vec<Arc<LocalTopic>> = self
            .local
            .read()
            .values()
            .filter(|t| {
                next.topics
                    .get(&t.record.name)
                    .is_none_or(|r| r.topic_id != t.record.topic_id)
            })
            .cloned()
            .collect();
        for t in gone {
            if prev.topics.contains_key(&t.record.name) || !next.topics.contains_key(&t.record.name)
            {
                self.drop_topic(&t);
            }
        }
        pending
    }

    /// Opens the partitions added to a topic that are assigned here, and puts the topic
    /// with them in place of `topic` (the partitions it has stay as they are).
    pub(super) fn add_partitions(
        &self,
        topic: &Arc<LocalTopic>,
        record: &TopicRecord,
    ) -> Vec<PendingReplica> {
        let added =
            record.partitions_on(self.node_id(), topic.record.partitions..record.partitions);
        let (opened, pending) =
            match self.open_topic(record.clone(), &added, Some(topic.config.clone())) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(topic = %record.name, partitions = ?added, cause = %e,
                        "cannot open the topic's new partitions");
                    return Vec::new();
                }
            };
        let mut partitions = topic.partitions.clone();
        partitions.extend(opened.partitions);
        let grown = LocalTopic {
            record: record.clone(),
            config: topic.config.clone(),
            partitions,
            replicas: RwLock::new(topic.replicas.read().clone()),
        };
        self.local
            .write()
            .insert(record.name.clone(), Arc::new(grown));
        tracing::info!(topic = %record.name, partitions = record.partitions, opened_here = ?added,
            "partitions added to topic");
        pending
    }

    /// Follows a topic's replica changes here (a replication factor change): opens the
    /// replicas this broker is to join (empty; the group's leader catches them up), stops
    /// and deletes the ones it no longer has once the group has moved on without them, and
    /// notes each partition's preferred leader.
    pub(super) fn reassign_replicas(
        &self,
        topic: &Arc<LocalTopic>,
        record: &TopicRecord,
        existing: i32,
    ) -> Vec<PendingReplica> {
        let me = self.node_id();
        let wanted = record.partitions_on(me, 0..existing.min(record.partitions));
        let open: Vec<i32> = topic.replicas.read().keys().copied().collect();
        let (joined, pending) = {
            let join: Vec<i32> = wanted
                .iter()
                .copied()
                .filter(|p| !open.contains(p) && !topic.partitions.contains_key(p))
                .collect();
            if join.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                match self.open_topic(record.clone(), &join, Some(topic.config.clone())) {
                    Ok((_, pending)) => (join, pending),
                    Err(e) => {
                        tracing::error!(topic = %record.name, partitions = ?join, cause = %e,
                            "cannot open the replicas this broker is to join");
                        (Vec::new(), Vec::new())
                    }
                }
            }
        };
        let left: Vec<Arc<Replica>> = {
            let mut replicas = topic.replicas.write();
            let gone: Vec<i32> = replicas
                .keys()
                .copied()
                .filter(|p| *p < existing && !wanted.contains(p))
                .collect();
            gone.iter().filter_map(|p| replicas.remove(p)).collect()
        };
        for r in topic.replicas.read().values() {
            if let Some(first) = record.replicas.get(r.id as usize).and_then(|r| r.first()) {
                r.set_preferred(*first);
            }
        }
        let updated = LocalTopic {
            record: record.clone(),
            config: topic.config.clone(),
            partitions: topic.partitions.clone(),
            replicas: RwLock::new(topic.replicas.read().clone()),
        };
        self.local
            .write()
            .insert(record.name.clone(), Arc::new(updated));
        if !joined.is_empty() {
            tracing::info!(topic = %record.name, partitions = ?joined, "joining partitions as a new replica");
        }
        for r in left {
            let group = record.group(r.id);
            self.groups.remove(group);
            let dir = self.partition_dir(&record.name, r.id);
            let partition = r.id;
            let name = record.name.clone();
            // The group stops first (it may be writing), then its files go.
            self.tasks.spawn(async move {
                r.shutdown().await;
                match tokio::task::spawn_blocking(move || {
                    std::fs::remove_dir_all(&dir).map(|()| dir)
                })
                .await
                {
                    Ok(Ok(dir)) => tracing::info!(topic = %name, partition, dir = %dir.display(),
                        "no longer a replica of the partition: deleted its data"),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Ok(Err(e)) => tracing::error!(topic = %name, partition, cause = %e,
                        "no longer a replica of the partition, but cannot delete its data"),
                    Err(e) => tracing::error!(topic = %name, partition, cause = %e,
                        "deleting the data of a partition no longer here"),
                }
            });
        }
        pending
    }

    /// Applies an altered topic config to this broker's partitions of the topic: at once
    /// for what requests and retention read, from the next append on for segment rolls.
    pub(super) fn update_config(&self, topic: &LocalTopic, record: &TopicRecord) {
        let config = match TopicConfig::from_map(&record.config, record.replication_factor) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %record.name, cause = %e, "the topic's committed config is invalid; keeping the previous one");
                return;
            }
        };
        let options = self.log_options(&config);
        if !topic.config.set(config) {
            return;
        }
        for p in topic.partitions.values() {
            p.set_log_options(options);
        }
        for r in topic.replicas.read().values() {
            r.set_log_options(options);
        }
        tracing::info!(topic = %record.name, config = ?record.config, "topic config changed");
    }

    /// Starts the Raft groups of replicas opened by `reconcile`, and reports their
    /// leaderships to the controller.
    pub(super) async fn start_replicas(self: &Arc<Self>, pending: Vec<PendingReplica>) {
        let state = self.controller.state();
        for p in pending {
            let Some(replicas) = p.record.replicas.get(p.partition as usize) else {
                continue;
            };
            let members = replicas
                .iter()
                .filter_map(|id| {
                    state
                        .brokers
                        .get(id)
                        .map(|b| (*id as u64, openraft::BasicNode::new(&b.raft_address)))
                })
                .collect::<BTreeMap<_, _>>();
            if members.len() != replicas.len() {
                tracing::error!(topic = %p.record.name, partition = p.partition, ?replicas,
                    "a replica's broker is not registered; the partition stays closed");
                continue;
            }
            let group = p.record.group(p.partition);
            let joining = p.joining;
            let started = Replica::start(
                Arc::from(p.record.name.as_str()),
                p.record.topic_id.clone(),
                p.partition,
                p.config.clone(),
                self.node_id(),
                members,
                group,
                p.stores,
                self.peers.clone(),
                ReplicaTiming {
                    lag_time_max: self.config.replica_lag_time_max,
                    producer_expiration: self.config.producer_id_expiration,
                    ..ReplicaTiming::default()
                },
                replicas.first().copied().unwrap_or(self.node_id()),
                joining,
            )
            .await;
            match started {
                Ok(replica) => {
                    replica.record_into(self.metrics.raft());
                    self.groups
                        .insert(group, replica.raft.clone(), replica.log());
                    if let Some(t) = self.local_topic(&p.record.name) {
                        t.replicas.write().insert(p.partition, replica.clone());
                    }
                    self.tasks
                        .spawn(replica.report_leadership(self.controller.clone()));
                }
                Err(e) => {
                    tracing::error!(topic = %p.record.name, partition = p.partition, cause = %e, "cannot start the replica")
                }
            }
        }
    }

    /// Stops every partition Raft group (at shutdown).
    pub(crate) async fn stop_replicas(&self) {
        for t in self.local_topics() {
            let replicas: Vec<_> = t.replicas.read().values().cloned().collect();
            for r in replicas {
                self.groups.remove(t.record.group(r.id));
                r.shutdown().await;
            }
        }
    }

    /// Stops serving a deleted topic and removes its data.
    pub(super) fn drop_topic(&self, topic: &LocalTopic) {
        {
            let mut local = self.local.write();
            if local
                .get(&topic.record.name)
                .is_some_and(|t| t.record.topic_id == topic.record.topic_id)
            {
                local.remove(&topic.record.name);
            }
        }
        let replicas: Vec<Arc<Replica>> = topic.replicas.read().values().cloned().collect();
        for r in &replicas {
            self.groups.remove(topic.record.group(r.id));
            let raft = r.raft.clone();
            // The group stops in the background; its files are removed below.
            self.tasks.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
        let ids: Vec<i32> = topic
            .partitions
            .keys()
            .copied()
            .chain(replicas.iter().map(|r| r.id))
            .collect();
        for p in &ids {
            let dir = self.partition_dir(&topic.record.name, *p);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "deleted the partition of a deleted topic")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(dir = %dir.display(), cause = %e, "cannot delete a deleted topic's partition")
                }
            }
        }
    }

    pub(super) fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.config
            .data_dir
            .join("logs")
            .join(format!("{topic}-{partition}"))
    }

    /// Segment settings from a topic's config.
    pub(super) fn log_options(&self, config: &TopicConfig) -> LogOptions {
        LogOptions {
            segment_bytes: config.segment_bytes as u64,
            segment_ms: config.segment_ms,
            index_interval_bytes: self.config.index_interval_bytes,
        }
    }

    /// Opens the partitions `assigned` here of a topic; they read `config` if given (the
    /// topic's partitions already open here), else a config of their own.
    pub(super) fn open_topic(
        &self,
        record: TopicRecord,
        assigned: &[i32],
        config: Option<LiveConfig>,
    ) -> Result<(LocalTopic, Vec<PendingReplica>)> {
        let settings =
            TopicConfig::from_map(&record.config, record.replication_factor).map_err(|e| {
                Error::Internal(format!(
                    "stored config of topic '{}' is invalid: {e}",
                    record.name
                ))
            })?;
        let options = self.log_options(&settings);
        let config = config.unwrap_or_else(|| LiveConfig::new(settings));
        let topic_name: Arc<str> = Arc::from(record.name.as_str());
        let mut partitions = BTreeMap::new();
        let mut pending = Vec::new();
        for &p in assigned {
            let dir = self.partition_dir(&record.name, p);
            self.claim_dir(&dir, &record.topic_id)?;
            if record.replicated() {
                let stores = ReplicaStores::open(
                    &dir,
                    options,
                    self.config.producer_limits(),
                    self.raft_tails.clone(),
                    self.metrics.stages(),
                )
                .map_err(|e| {
                    Error::Internal(format!("{}-{p}: opening the replica: {e}", record.name))
                })?;
                // A replica the group does not have yet (it is being added) joins it.
                let joining = record
                    .replicas
                    .get(p as usize)
                    .is_some_and(|r| !r.contains(&self.node_id()));
                pending.push(PendingReplica {
                    record: record.clone(),
                    config: config.clone(),
                    partition: p,
                    stores,
                    joining,
                });
                continue;
            }
            let log =
                SegmentLog::open(&dir, options, now_ms()).map_err(|source| Error::Storage {
                    topic: record.name.clone(),
                    partition: p,
                    source,
                })?;
            let partition = Partition::open(
                topic_name.clone(),
                p,
                config.clone(),
                Box::new(log),
                self.config.flush,
                &dir,
                self.config.producer_limits(),
            )?;
            partitions.insert(p, Arc::new(partition));
        }
        Ok((
            LocalTopic {
                record,
                config,
                partitions,
                replicas: RwLock::new(BTreeMap::new()),
            },
            pending,
        ))
    }

    /// Makes `dir` belong to topic incarnation `topic_id`: a directory left by an earlier
    /// topic of the same name (deleted while this broker was down) is removed first.
    pub(super) fn claim_dir(&self, dir: &std::path::Path, topic_id: &str) -> Result<()> {
        let meta = dir.join(PARTITION_META_FILE);
        let io = |e: std::io::Error| {
            Error::Internal(format!("partition directory {}: {e}", dir.display()))
        };
        match std::fs::read_to_string(&meta) {
            Ok(owner) if owner.trim() == topic_id => return Ok(()),
            Ok(owner) => {
                tracing::warn!(dir = %dir.display(), old = %owner.trim(), new = %topic_id,
                    "removing the data of an earlier topic with the same name");
                std::fs::remove_dir_all(dir).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(&meta, topic_id).map_err(io)?;
        Ok(())
    }
}
