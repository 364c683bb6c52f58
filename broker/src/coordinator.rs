//! The group coordinator: committed offsets of consumer groups, kept as records in the
//! internal topic `__consumer_offsets` (Kafka's design). A group belongs to partition
//! `hash(group) % N` of that topic (Java's `String.hashCode`, as Kafka computes it), and the
//! leader of that partition is the group's coordinator: it materialises the partition's
//! records in memory ([`state::ShardState`]), loading them when it becomes leader, and writes
//! every commit as one batch through the partition's Raft group with `acks=all`, so an
//! acknowledged commit survives the loss of any single broker and the next leader of the
//! partition takes the groups over with their offsets.
//!
//! The core knows nothing of gRPC: it takes the partition's [`Replica`] and plain values,
//! so Kafka's own group APIs can sit on it too (see docs/DESIGN.md, consumer groups).
//!
//! - `state`: the materialised offsets, applied by log offset.
//! - `records`: their form in the log.
//! - `membership`: members, their heartbeats and the incremental assignment (in memory).

mod membership;
mod records;
mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::acks;

use crate::error::{Error, Result};
use crate::replica::group::Replica;
pub(crate) use membership::{Answer, Heartbeat, Timeouts};
use membership::{Membership, Refused};
use state::ShardState;
pub(crate) use state::{Committed, TopicPartition};

/// The internal topic of committed offsets.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How much of the offsets partition one read during a load brings.
const LOAD_READ_BYTES: usize = 4 << 20;

/// A partition's offsets are rewritten (and the records before deleted) once this many
/// records were written since the last rewrite, or twice the offsets held if more.
const REWRITE_MIN_RECORDS: usize = 10_000;

/// Largest batch of a rewrite (below the topic's default max.message.bytes).
const REWRITE_BATCH_BYTES: usize = 512 * 1024;

/// The `__consumer_offsets` partition of `group` among `partitions`: Kafka's
/// `Utils.abs(groupId.hashCode()) % partitions`, so a group lands where Kafka puts it.
pub(crate) fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    (hash & 0x7fff_ffff) % partitions.max(1)
}

/// Limits of the coordinator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoordinatorConfig {
    pub offset_metadata_max_bytes: usize,
    /// How long a new leader of an offsets partition waits for its log to be committed
    /// before it answers COORDINATOR_LOAD_IN_PROGRESS.
    pub load_timeout: Duration,
    /// Largest decompressed batch read back while loading.
    pub max_batch_bytes: usize,
    /// Members not heard from for this long are gone (also for what describe shows), and
    /// how long one may take to give up a partition.
    pub timeouts: membership::Timeouts,
}

/// One offsets partition as this broker leads it in one term.
#[derive(Debug)]
struct Shard {
    term: u64,
    loaded: tokio::sync::OnceCell<()>,
    state: Mutex<ShardState>,
    /// Commits hold it shared from their write until their state is applied; a rewrite
    /// holds it alone, so it copies a state no commit is changing.
    writes: tokio::sync::RwLock<()>,
    /// Records in the log since the last rewrite (since the log start after a load).
    since_rewrite: std::sync::atomic::AtomicUsize,
    rewriting: std::sync::atomic::AtomicBool,
    /// The members of its groups (in memory only: after a failover they rejoin).
    members: Mutex<HashMap<String, Membership>>,
    /// Commits waiting for the writer, and whether one is writing.
    queue: Mutex<std::collections::VecDeque<Queued>>,
    flushing: std::sync::atomic::AtomicBool,
    /// Writes of commit batches in flight (see [`MAX_WRITES_IN_FLIGHT`]).
    write_slots: Arc<tokio::sync::Semaphore>,
}

/// The groups of the offsets partitions this broker leads.
#[derive(Debug)]
pub(crate) struct Coordinator {
    config: CoordinatorConfig,
    shards: Mutex<HashMap<i32, Arc<Shard>>>,
}

/// A group name's checks (Kafka: non-empty).
pub(crate) fn validate_group(group: &str) -> Result<()> {
    if group.is_empty() {
        return Err(Error::InvalidGroupId(
            "the group name is empty: name the group (e.g. --group billing)".into(),
        ));
    }
    if group.len() > 255 || group.chars().any(char::is_control) {
        return Err(Error::InvalidGroupId(format!(
            "group '{}' is not a valid name: at most 255 bytes, no control characters",
            group.escape_debug()
        )));
    }
    Ok(())
}

impl Coordinator {
    pub(crate) fn new(config: CoordinatorConfig) -> Self {
        Coordinator {
            config,
            shards: Mutex::default(),
        }
    }

    /// The loaded state of the offsets partition `replica` leads, for `group`'s errors.
    async fn shard(&self, group: &str, replica: &Arc<Replica>) -> Result<Arc<Shard>> {
        let not_coordinator = || Error::NotCoordinator {
            group: group.to_string(),
            partition: replica.id,
            node: replica.node_id(),
            leader: replica.leader().filter(|l| *l != replica.node_id()),
        };
        let term = replica.leader_term().ok_or_else(not_coordinator)?;
        let shard = {
            let mut shards = self.shards.lock();
            match shards.get(&replica.id) {
                Some(s) if s.term == term => s.clone(),
                _ => {
                    let s = Arc::new(Shard {
                        term,
                        loaded: tokio::sync::OnceCell::new(),
                        state: Mutex::default(),
                        writes: tokio::sync::RwLock::new(()),
                        since_rewrite: Default::default(),
                        rewriting: Default::default(),
                        members: Mutex::default(),
                        queue: Mutex::default(),
                        flushing: Default::default(),
                        write_slots: Arc::new(tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT)),
                    });
                    shards.insert(replica.id, s.clone());
                    s
                }
            }
        };
        shard
            .loaded
            .get_or_try_init(|| self.load(group, replica, &shard))
            .await?;
        if replica.leader_term() != Some(term) {
            return Err(not_coordinator());
        }
        Ok(shard)
    }

    /// Reads the whole offsets partition into `shard`, once everything in the leader's log
    /// is committed (a new leader commits its predecessors' entries with its first one).
    async fn load(&self, group: &str, replica: &Arc<Replica>, shard: &Shard) -> Result<()> {
        let started = std::time::Instant::now();
        let end = replica.offsets().log_end;
        let mut hw = replica.subscribe_high_watermark();
        let committed = tokio::time::timeout(self.config.load_timeout, async {
            while *hw.borrow_and_update() < end {
                if hw.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        if committed != Ok(true) {
            return Err(Error::CoordinatorLoading {
                group: group.to_string(),
                partition: replica.id,
            });
        }
        let mut at = replica.offsets().log_start;
        let mut state = ShardState::default();
        let (mut skipped, mut records) = (0, 0);
        while at < end {
            let r = replica.clone();
            let bytes = tokio::task::spawn_blocking(move || r.read(at, LOAD_READ_BYTES))
                .await
                .map_err(|e| Error::Internal(format!("loading offsets: {e}")))??;
            if bytes.is_empty() {
                break;
            }
            let applied = records::apply_batches(&mut state, bytes, self.config.max_batch_bytes)
                .map_err(|e| {
                    Error::Internal(format!(
                        "{OFFSETS_TOPIC}-{}: a batch at or after offset {at} cannot be read: {e}",
                        replica.id
                    ))
                })?;
            skipped += applied.skipped;
            records += applied.records;
            match applied.next {
                Some(n) if n > at => at = n,
                _ => break,
            }
        }
        let groups = state.groups().count();
        *shard.state.lock() = state;
        shard
            .since_rewrite
            .store(records, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            partition = replica.id,
            groups,
            records,
            records_skipped = skipped,
            up_to = at,
            took_ms = started.elapsed().as_millis() as u64,
            "loaded group offsets"
        );
        Ok(())
    }

    /// Commits `offsets` for `group`, acknowledged once written through the offsets
    /// partition with acks=all; the group's state changes only then. Commits arriving
    /// while one is being written are written together in the next batch (group commit:
    /// one Raft entry for many commits).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit(
        &self,
        replica: &Arc<Replica>,
        cluster: &Arc<crate::controller::ClusterState>,
        group: &str,
        member: Option<(&str, i32)>,
        offsets: Vec<(TopicPartition, Committed)>,
        timeout: Duration,
    ) -> Result<()> {
        validate_group(group)?;
        if offsets.is_empty() {
            return Ok(());
        }
        for ((topic, partition), c) in &offsets {
            if c.metadata.len() > self.config.offset_metadata_max_bytes {
                return Err(Error::OffsetMetadataTooLarge(format!(
                    "group '{group}', {topic}-{partition}: the offset's metadata is {} bytes, more than offset.metadata.max.bytes ({}); nothing was committed",
                    c.metadata.len(),
                    self.config.offset_metadata_max_bytes
                )));
            }
            if c.offset < 0 {
                return Err(Error::InvalidRequest(format!(
                    "group '{group}', {topic}-{partition}: offset {} is negative; commit the next offset to read (0 or more); nothing was committed",
                    c.offset
                )));
            }
        }
        let shard = self.shard(group, replica).await?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut queue = shard.queue.lock();
            if queue.len() >= MAX_QUEUED_COMMITS {
                return Err(Error::CoordinatorNotAvailable(format!(
                    "group '{group}': its coordinator has {MAX_QUEUED_COMMITS} commits waiting to be written; retry shortly"
                )));
            }
            queue.push_back(Queued {
                group: group.to_string(),
                member: member.map(|(id, epoch)| (id.to_string(), epoch)),
                offsets,
                reply,
            });
        }
        // The first to find no writer starts one, in a task of its own (a request that is
        // cancelled must not stop the writes of the others).
        if !shard
            .flushing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(write_queued(Writer {
                shard: shard.clone(),
                replica: replica.clone(),
                cluster: cluster.clone(),
                timeouts: self.config.timeouts,
                timeout,
            }));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "group '{group}': the write of this commit stopped before it was answered; it may or may not have been written; retry"
            )))
        })
    }

    /// Sets `group`'s committed offsets from outside it, also while it has members: the
    /// members owning (or about to own) those partitions are told at their next heartbeat
    /// and read them from the new offsets; their commits for them until then are dropped.
    /// Returns how many members were told.
    pub(crate) async fn reset(
        &self,
        replica: &Arc<Replica>,
        cluster: &crate::controller::ClusterState,
        group: &str,
        offsets: Vec<(TopicPartition, Committed)>,
        timeout: Duration,
    ) -> Result<usize> {
        validate_group(group)?;
        if let Some(((topic, partition), c)) = offsets.iter().find(|(_, c)| c.offset < 0) {
            return Err(Error::InvalidRequest(format!(
                "group '{group}', {topic}-{partition}: offset {} is negative; nothing was reset",
                c.offset
            )));
        }
        if offsets.is_empty() {
            return Ok(0);
        }
        let shard = self.shard(group, replica).await?;
        let alone = shard.writes.write().await;
        let batch = records::commit_batch(group, &offsets);
        let (base, _) = replica.produce(cluster, batch, acks::ALL, timeout).await?;
        let partitions: std::collections::BTreeSet<TopicPartition> =
            offsets.iter().map(|(tp, _)| tp.clone()).collect();
        {
            let mut state = shard.state.lock();
            for (i, (tp, c)) in offsets.into_iter().enumerate() {
                state.apply(group, tp, Some(c), base + i as i64);
            }
        }
        let told = shard
            .members
            .lock()
            .get_mut(group)
            .map_or(0, |m| m.reset(&partitions));
        drop(alone);
        shard
            .since_rewrite
            .fetch_add(partitions.len(), std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            group,
            partitions = partitions.len(),
            members_told = told,
            "reset committed offsets"
        );
        Ok(told)
    }

    /// Deletes `group`: its committed offsets (written as deletions, so a new leader of the
    /// partition does not bring them back) and, with `force`, its members. Returns (offsets
    /// deleted, members removed); GROUP_ID_NOT_FOUND when it has neither.
    pub(crate) async fn delete_group(
        &self,
        replica: &Arc<Replica>,
        cluster: &crate::controller::ClusterState,
        group: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<(usize, usize)> {
        validate_group(group)?;
        let shard = self.shard(group, replica).await?;
        let alone = shard.writes.write().await;
        let members = {
            let mut groups = shard.members.lock();
            match groups.get_mut(group) {
                Some(m) => {
                    m.expire(std::time::Instant::now(), self.config.timeouts);
                    if !m.members.is_empty() && !force {
                        return Err(Error::NonEmptyGroup {
                            group: group.to_string(),
                            members: m.members.len(),
                        });
                    }
                    let n = m.remove_all();
                    groups.remove(group);
                    n
                }
                None => 0,
            }
        };
        let partitions: Vec<TopicPartition> = shard
            .state
            .lock()
            .offsets(group, None)
            .into_iter()
            .map(|(tp, _)| tp)
            .collect();
        if partitions.is_empty() {
            return if members > 0 {
                Ok((0, members))
            } else {
                Err(Error::GroupNotFound(group.to_string()))
            };
        }
        let (base, _) = replica
            .produce(
                cluster,
                records::deletion_batch(group, &partitions),
                acks::ALL,
                timeout,
            )
            .await?;
        {
            let mut state = shard.state.lock();
            for (i, tp) in partitions.iter().enumerate() {
                state.apply(group, tp.clone(), None, base + i as i64);
            }
        }
        drop(alone);
        tracing::info!(
            group,
            offsets = partitions.len(),
            members_removed = members,
            "deleted group"
        );
        Ok((partitions.len(), members))
    }

    /// The offsets `group` has committed: of `wanted`, or all of them.
    pub(crate) async fn fetch(
        &self,
        replica: &Arc<Replica>,
        group: &str,
        wanted: Option<&[TopicPartition]>,
    ) -> Result<Vec<(TopicPartition, Committed)>> {
        validate_group(group)?;
        let shard = self.shard(group, replica).await?;
        let offsets = shard.state.lock().offsets(group, wanted);
        Ok(offsets)
    }

    /// Forgets members not heard from within the session timeout, in every group of
    /// `shard` (heartbeats do it for their own group; this is for groups nobody heartbeats
    /// to any more).
    fn expire_members(&self, shard: &Shard) {
        let now = std::time::Instant::now();
        let mut groups = shard.members.lock();
        for m in groups.values_mut() {
            m.expire(now, self.config.timeouts);
        }
        groups.retain(|_, m| !m.members.is_empty());
    }

    /// Every group of the offsets partition `replica` leads: with offsets, members, or both.
    pub(crate) async fn groups(&self, replica: &Arc<Replica>) -> Result<Vec<GroupView>> {
        let shard = self.shard("", replica).await?;
        self.expire_members(&shard);
        let names: std::collections::BTreeSet<String> = {
            let state = shard.state.lock();
            let members = shard.members.lock();
            state
                .groups()
                .map(str::to_string)
                .chain(
                    members
                        .iter()
                        .filter(|(_, m)| !m.members.is_empty())
                        .map(|(g, _)| g.clone()),
                )
                .collect()
        };
        Ok(names.into_iter().map(|g| view(&shard, &g)).collect())
    }

    /// `group` as its coordinator sees it; `None` when it has neither offsets nor members.
    pub(crate) async fn describe(
        &self,
        replica: &Arc<Replica>,
        group: &str,
    ) -> Result<Option<GroupView>> {
        validate_group(group)?;
        let shard = self.shard(group, replica).await?;
        self.expire_members(&shard);
        let v = view(&shard, group);
        Ok((!v.offsets.is_empty() || !v.members.is_empty()).then_some(v))
    }

    /// A member's heartbeat (see [`membership`]); `partitions` says how many partitions a
    /// topic has now.
    pub(crate) async fn heartbeat(
        &self,
        replica: &Arc<Replica>,
        group: &str,
        hb: Heartbeat,
        partitions: &(dyn Fn(&str) -> Option<i32> + Sync),
    ) -> Result<Answer> {
        validate_group(group)?;
        let shard = self.shard(group, replica).await?;
        let mut members = shard.members.lock();
        let m = members
            .entry(group.to_string())
            .or_insert_with(|| Membership::new(group));
        let answer = m
            .heartbeat(
                hb,
                std::time::Instant::now(),
                self.config.timeouts,
                partitions,
            )
            .map_err(|r| refused(group, r));
        if m.members.is_empty() {
            members.remove(group);
        }
        answer
    }
}

/// Bounds the offsets partition: once enough was written since the last rewrite, every
/// offset held is written again (the same values, later in the log) and every replica
/// is told it may delete the records before the first of them (whole segments, at
/// their next retention pass): nothing before holds a latest value. A rewrite that
/// fails part way deletes nothing and is tried again after the next commit.
async fn rewrite_if_due(
    replica: &Arc<Replica>,
    cluster: &crate::controller::ClusterState,
    shard: &Shard,
    timeout: Duration,
) {
    use std::sync::atomic::Ordering;
    let due = |shard: &Shard| {
        let held = shard.state.lock().len();
        shard.since_rewrite.load(Ordering::Relaxed) >= REWRITE_MIN_RECORDS.max(2 * held)
    };
    if !due(shard) || shard.rewriting.swap(true, Ordering::AcqRel) {
        return;
    }
    let alone = shard.writes.write().await;
    if due(shard) {
        let started = std::time::Instant::now();
        match rewrite(replica, cluster, shard, timeout).await {
            Ok((held, floor)) => {
                shard.since_rewrite.store(0, Ordering::Relaxed);
                tracing::debug!(
                    partition = replica.id,
                    offsets = held,
                    delete_before = floor,
                    took_ms = started.elapsed().as_millis() as u64,
                    "rewrote group offsets"
                );
            }
            Err(e) => {
                tracing::warn!(partition = replica.id, cause = %e, "rewriting group offsets to bound {OFFSETS_TOPIC} failed; trying again after the next commit");
            }
        }
    }
    drop(alone);
    shard.rewriting.store(false, Ordering::Release);
}

/// Writes every offset `shard` holds again, then deletes what precedes them. Returns
/// how many offsets and the offset records were deleted before.
async fn rewrite(
    replica: &Arc<Replica>,
    cluster: &crate::controller::ClusterState,
    shard: &Shard,
    timeout: Duration,
) -> Result<(usize, i64)> {
    let entries = shard.state.lock().entries();
    let mut floor = None;
    let mut chunk: Vec<&(String, TopicPartition, Committed)> = Vec::new();
    let mut bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        chunk.push(e);
        bytes += e.0.len() + e.1.0.len() + e.2.metadata.len() + 96;
        if bytes < REWRITE_BATCH_BYTES && i + 1 < entries.len() {
            continue;
        }
        let batch = records::offsets_batch(chunk.iter().map(|(g, tp, c)| (g.as_str(), tp, c)));
        let (base, _) = replica.produce(cluster, batch, acks::ALL, timeout).await?;
        {
            let mut state = shard.state.lock();
            for (j, (g, tp, c)) in chunk.drain(..).enumerate() {
                state.apply(g, tp.clone(), Some(c.clone()), base + j as i64);
            }
        }
        floor.get_or_insert(base);
        bytes = 0;
    }
    let floor = floor.unwrap_or_else(|| replica.offsets().log_end);
    replica
        .delete_records_before(cluster, floor, timeout)
        .await?;
    Ok((entries.len(), floor))
}

/// Writes of commit batches in flight at once per partition.
const MAX_WRITES_IN_FLIGHT: usize = 4;

/// Most commits a coordinator's partition holds waiting for its writer.
const MAX_QUEUED_COMMITS: usize = 10_000;

/// Most bytes of commits written in one batch (below the topic's default
/// max.message.bytes).
const COMMIT_BATCH_BYTES: usize = 512 * 1024;

/// A commit waiting for its partition's writer.
#[derive(Debug)]
struct Queued {
    group: String,
    member: Option<(String, i32)>,
    offsets: Vec<(TopicPartition, Committed)>,
    reply: tokio::sync::oneshot::Sender<Result<()>>,
}

impl Queued {
    fn bytes(&self) -> usize {
        self.offsets
            .iter()
            .map(|((t, _), c)| self.group.len() + t.len() + c.metadata.len() + 96)
            .sum()
    }
}

/// What a partition's commit writer needs.
struct Writer {
    shard: Arc<Shard>,
    replica: Arc<Replica>,
    cluster: Arc<crate::controller::ClusterState>,
    timeouts: membership::Timeouts,
    timeout: Duration,
}

/// Held by the writer task: when it ends (or panics), commits queued meanwhile get a new
/// writer task, or the writer flag is cleared when there are none.
struct HandOff(Option<Writer>);

impl Drop for HandOff {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let Some(w) = self.0.take() else {
            return;
        };
        if w.shard.queue.lock().is_empty() {
            w.shard.flushing.store(false, Ordering::Release);
            // A commit queued after the check found the flag set and did not start a
            // writer: take it on, unless another writer already has.
            if w.shard.queue.lock().is_empty() || w.shard.flushing.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        tokio::spawn(write_queued(w));
    }
}

/// The next batch of queued commits: at least one, at most [`COMMIT_BATCH_BYTES`].
fn take_batch(shard: &Shard) -> Vec<Queued> {
    let mut queue = shard.queue.lock();
    let mut bytes = 0;
    let mut batch = Vec::new();
    while let Some(q) = queue.front() {
        if !batch.is_empty() && bytes + q.bytes() > COMMIT_BATCH_BYTES {
            break;
        }
        bytes += q.bytes();
        batch.extend(queue.pop_front());
    }
    batch
}

/// Writes the commits queued on a partition until none is left: a batch per write, up to
/// [`MAX_WRITES_IN_FLIGHT`] writes at once (Raft pipelines them); while they are all busy,
/// commits gather into the next batch.
async fn write_queued(w: Writer) {
    let handoff = HandOff(Some(w));
    loop {
        let w = handoff.0.as_ref().expect("held until the end");
        let Ok(slot) = w.shard.write_slots.clone().acquire_owned().await else {
            return;
        };
        let batch = take_batch(&w.shard);
        if batch.is_empty() {
            // The hand-off clears the flag (or starts a writer for a late commit).
            return;
        }
        let (shard, replica, cluster) = (w.shard.clone(), w.replica.clone(), w.cluster.clone());
        let (timeouts, timeout) = (w.timeouts, w.timeout);
        tokio::spawn(async move {
            write_commits(&shard, &replica, &cluster, timeouts, timeout, batch).await;
            drop(slot);
            rewrite_if_due(&replica, &cluster, &shard, timeout).await;
        });
    }
}

/// Whether a commit for `group` from `member` (or from outside, `None`) is admitted; the
/// partitions it must leave out (reset and not re-read yet by the member).
fn admit(
    groups: &mut HashMap<String, Membership>,
    group: &str,
    member: Option<(&str, i32)>,
    now: std::time::Instant,
    timeouts: membership::Timeouts,
) -> Result<std::collections::BTreeSet<TopicPartition>> {
    match (member, groups.get_mut(group)) {
        (Some((id, epoch)), Some(m)) => {
            m.check_commit(id, epoch, now, timeouts)
                .map_err(|r| refused(group, r))?;
            // Positions from before a reset the member has not applied yet would undo it.
            Ok(m.resetting(id))
        }
        (Some((id, _)), None) => Err(Error::UnknownMember {
            group: group.to_string(),
            member: id.to_string(),
        }),
        (None, Some(m)) => {
            m.expire(now, timeouts);
            if m.members.is_empty() {
                Ok(Default::default())
            } else {
                Err(Error::InvalidRequest(format!(
                    "group '{group}' has {} active member(s); offsets are committed by its members while it has any. Stop them first (or commit as a member); nothing was committed",
                    m.members.len()
                )))
            }
        }
        (None, None) => Ok(Default::default()),
    }
}

/// Writes `batch` (commits of any groups of `shard`) as one Raft entry and answers each.
/// Each commit's checks and its write happen under the shard's shared lock, so a reset
/// (which holds it alone) never falls between them.
async fn write_commits(
    shard: &Shard,
    replica: &Arc<Replica>,
    cluster: &crate::controller::ClusterState,
    timeouts: membership::Timeouts,
    timeout: Duration,
    batch: Vec<Queued>,
) {
    let _writing = shard.writes.read().await;
    let mut admitted: Vec<(Queued, Vec<(TopicPartition, Committed)>)> = Vec::new();
    {
        let mut groups = shard.members.lock();
        let now = std::time::Instant::now();
        for q in batch {
            let member = q.member.as_ref().map(|(id, e)| (id.as_str(), *e));
            match admit(&mut groups, &q.group, member, now, timeouts) {
                Ok(resetting) => {
                    let offsets = q
                        .offsets
                        .iter()
                        .filter(|(tp, _)| !resetting.contains(tp))
                        .cloned()
                        .collect();
                    admitted.push((q, offsets));
                }
                Err(e) => {
                    let _ = q.reply.send(Err(e));
                }
            }
        }
    }
    let records: Vec<(&str, &TopicPartition, &Committed)> = admitted
        .iter()
        .flat_map(|(q, offsets)| offsets.iter().map(move |(tp, c)| (q.group.as_str(), tp, c)))
        .collect();
    if records.is_empty() {
        for (q, _) in admitted {
            let _ = q.reply.send(Ok(()));
        }
        return;
    }
    let written = records.len();
    let bytes = records::offsets_batch(records);
    match replica.produce(cluster, bytes, acks::ALL, timeout).await {
        Ok((base, _)) => {
            {
                let mut state = shard.state.lock();
                let mut at = base;
                for (q, offsets) in &admitted {
                    for (tp, c) in offsets {
                        state.apply(&q.group, tp.clone(), Some(c.clone()), at);
                        at += 1;
                    }
                }
            }
            shard
                .since_rewrite
                .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
            for (q, _) in admitted {
                let _ = q.reply.send(Ok(()));
            }
        }
        Err(e) => {
            for (q, _) in admitted {
                let _ = q.reply.send(Err(commit_failed(&e, &q.group, replica)));
            }
        }
    }
}

/// A failed write, as each commit of the batch reports it.
fn commit_failed(e: &Error, group: &str, replica: &Replica) -> Error {
    match e {
        Error::NotLeader { leader, .. } => Error::NotCoordinator {
            group: group.to_string(),
            partition: replica.id,
            node: replica.node_id(),
            leader: Some(*leader),
        },
        Error::LeaderNotAvailable { .. } => Error::NotCoordinator {
            group: group.to_string(),
            partition: replica.id,
            node: replica.node_id(),
            leader: None,
        },
        Error::NotEnoughReplicas {
            topic,
            partition,
            in_sync,
            required,
        } => Error::NotEnoughReplicas {
            topic: topic.clone(),
            partition: *partition,
            in_sync: in_sync.clone(),
            required: *required,
        },
        Error::NotEnoughReplicasAfterAppend {
            topic,
            partition,
            holding,
            required,
        } => Error::NotEnoughReplicasAfterAppend {
            topic: topic.clone(),
            partition: *partition,
            holding: *holding,
            required: *required,
        },
        Error::Timeout(m) => Error::Timeout(format!("group '{group}': {m}")),
        Error::ShuttingDown => Error::ShuttingDown,
        other => Error::Internal(format!("group '{group}': writing the commit: {other}")),
    }
}

fn refused(group: &str, r: Refused) -> Error {
    match r {
        Refused::UnknownMember(member) => Error::UnknownMember {
            group: group.to_string(),
            member,
        },
        Refused::FencedEpoch {
            member,
            sent,
            current,
        } => Error::FencedMemberEpoch {
            group: group.to_string(),
            member,
            sent,
            current,
        },
    }
}

/// A group as `describe` and `list` show it.
#[derive(Debug, Clone)]
pub(crate) struct GroupView {
    pub group: String,
    pub epoch: i32,
    pub offsets: Vec<(TopicPartition, Committed)>,
    pub members: Vec<MemberView>,
    /// Empty, Stable or Reconciling.
    pub state: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub epoch: i32,
    pub owned: Vec<TopicPartition>,
    pub target: Vec<TopicPartition>,
}

fn view(shard: &Shard, group: &str) -> GroupView {
    let offsets = shard.state.lock().offsets(group, None);
    let members = shard.members.lock();
    let (epoch, members): (i32, Vec<MemberView>) = match members.get(group) {
        None => (0, Vec::new()),
        Some(m) => (
            m.epoch,
            m.members
                .values()
                .map(|m| MemberView {
                    member_id: m.id.clone(),
                    client_id: m.client_id.clone(),
                    epoch: m.epoch,
                    owned: m.owned.iter().cloned().collect(),
                    target: m.target.iter().cloned().collect(),
                })
                .collect(),
        ),
    };
    let state = if members.is_empty() {
        "Empty"
    } else if members.iter().all(|m| m.owned == m.target) {
        "Stable"
    } else {
        "Reconciling"
    };
    GroupView {
        group: group.to_string(),
        epoch,
        offsets,
        members,
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_land_where_kafka_puts_them() {
        // Java: Math.abs("my-group".hashCode()) % 50, with Kafka's Utils.abs.
        assert_eq!("my-group".encode_utf16().count(), 8);
        let java_hash = |s: &str| {
            s.encode_utf16()
                .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
        };
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("ab"), 97 * 31 + 98);
        // "polygenelubricants".hashCode() is Integer.MIN_VALUE in Java.
        assert_eq!(java_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        for g in ["a", "billing", "my-group", "x"] {
            let p = partition_for(g, 50);
            assert!((0..50).contains(&p));
            assert_eq!(p, (java_hash(g) & 0x7fff_ffff) % 50);
        }
    }
}
