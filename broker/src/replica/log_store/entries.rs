//! Entries in the segments: reading one back as openraft's entry, writing one (a record
//! batch at its offset, a control entry into `raft.json`), and placing control entries back
//! between the batches after a restart.

use super::*;

impl Inner {
    pub(super) fn persist_meta(&mut self) -> std::io::Result<()> {
        // Never a commit past what is fsynced here: a leader acknowledges its own appends
        // before their fsync, and after a power loss the log may end before it.
        self.meta.committed = crate::raft::transport::capped_commit(
            *self.committed.lock(),
            self.durable.borrow().last,
        );
        let data = serde_json::to_vec(&self.meta).map_err(std::io::Error::other)?;
        crate::storage::replace_file(&self.dir.join(META_FILE), &data, true)
    }

    /// The last entry's log id, or the last purged one when the log is empty.
    pub(super) fn last_log_id(&self) -> Option<LogId<NodeId>> {
        match self.last_index() {
            Some(i) => self.log_id(i).ok(),
            None => self.meta.last_purged,
        }
    }

    /// Writes `entries` (no fsync), and `raft.json` if they change it: the proposal token
    /// and place of each of the leader's own batches.
    pub(super) fn append_all(
        &mut self,
        entries: Vec<Entry<PartitionRaft>>,
    ) -> SResult<Vec<(u64, Appended)>> {
        let mut meta_changed = false;
        let mut appended = Vec::new();
        for e in entries {
            let token = match &e.payload {
                EntryPayload::Normal(Payload(_, token)) => *token,
                _ => 0,
            };
            let (changed, at) = self.append_one(e)?;
            meta_changed |= changed;
            if token != 0 {
                appended.push((token, at));
            }
        }
        if meta_changed {
            self.persist_meta()
                .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        }
        Ok(appended)
    }

    pub(super) fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.meta.first_index + self.offsets.len() as u64 - 1)
    }

    pub(super) fn leader_at(&self, index: u64) -> Option<CommittedLeaderId<NodeId>> {
        let i = self.meta.epochs.partition_point(|e| e.first_index <= index);
        (i > 0).then(|| self.meta.epochs[i - 1].leader)
    }

    pub(super) fn log_id(&self, index: u64) -> SResult<LogId<NodeId>> {
        let leader = self
            .leader_at(index)
            .ok_or_else(|| io_err(StorageIOError::read_logs, format!("no leader recorded for Raft index {index} (runs: {:?}, first index {}, last purged {:?})", self.meta.epochs, self.meta.first_index, self.meta.last_purged)))?;
        Ok(LogId::new(leader, index))
    }

    /// Reads the entry at `index`.
    pub(super) fn entry(&self, index: u64) -> SResult<Entry<PartitionRaft>> {
        if let Ok(i) = self.meta.controls.binary_search_by_key(&index, |c| c.index) {
            let payload = match &self.meta.controls[i].kind {
                ControlKind::Blank => EntryPayload::Blank,
                ControlKind::Membership(m) => EntryPayload::Membership(m.clone()),
            };
            return Ok(Entry {
                log_id: self.log_id(index)?,
                payload,
            });
        }
        let pos = (index - self.meta.first_index) as usize;
        let offset = self.offsets[pos];
        let bytes = self
            .log
            .read(offset, 1, i64::MAX)
            .map_err(|e| io_err(StorageIOError::read_logs, e))?;
        let header =
            BatchHeader::parse(&bytes).map_err(|e| io_err(StorageIOError::read_logs, e))?;
        if header.base_offset != offset {
            return Err(io_err(
                StorageIOError::read_logs,
                format!(
                    "Raft index {index} should be at offset {offset}, found {}",
                    header.base_offset
                ),
            ));
        }
        let whole = bytes.slice(..header.total_len());
        let payload = if header.is_control() {
            let (_, records) =
                batch::decode(&whole, 1 << 20).map_err(|e| io_err(StorageIOError::read_logs, e))?;
            let r = records
                .first()
                .ok_or_else(|| io_err(StorageIOError::read_logs, "empty control batch"))?;
            match r.key.as_deref() {
                // A blank entry of a log from before control entries left the segments: it
                // took an offset there, so it goes out as the batch it is, and a follower
                // writes it as such, at the same offset (a no-op to Raft either way;
                // consumers skip control batches).
                Some(BLANK_KEY) => EntryPayload::Normal(Payload::batch(whole)),
                // Ours, not Raft's: data that every replica applies.
                Some(super::super::types::DELETE_BEFORE_KEY) => {
                    EntryPayload::Normal(Payload::batch(whole))
                }
                Some(MEMBERSHIP_KEY) => EntryPayload::Membership(
                    serde_json::from_slice::<Membership<NodeId, openraft::BasicNode>>(&r.value)
                        .map_err(|e| io_err(StorageIOError::read_logs, e))?,
                ),
                other => {
                    return Err(io_err(
                        StorageIOError::read_logs,
                        format!("unknown control batch {other:?} at offset {offset}"),
                    ));
                }
            }
        } else {
            EntryPayload::Normal(Payload::batch(whole))
        };
        Ok(Entry {
            log_id: self.log_id(index)?,
            payload,
        })
    }

    /// The batch to write for a normal entry at offset `log_end`. A batch this leader
    /// proposed was checked when it arrived; a batch from a leader is checked here, and must
    /// land at the offset the leader gave it (its base offset as the leader wrote it; 0 is
    /// also what an unwritten batch says, so it is not held against it): replicas that
    /// disagree on offsets (a broker of a build where Raft's control entries took offsets)
    /// must stop rather than serve a record at another offset than the leader. A batch
    /// nobody else holds is written in place, not copied.
    pub(super) fn encode(
        log_id: &LogId<NodeId>,
        Payload(b, token): Payload,
        log_end: i64,
    ) -> SResult<BytesMut> {
        if token == 0 {
            batch::verify(&b)
                .map_err(|e| io_err(StorageIOError::write_logs, format!("entry {log_id}: {e}")))?;
            let base = BatchHeader::parse(&b)
                .map_err(|e| io_err(StorageIOError::write_logs, format!("entry {log_id}: {e}")))?
                .base_offset;
            if base != 0 && base != log_end {
                return Err(io_err(
                    StorageIOError::write_logs,
                    format!(
                        "entry {log_id}: the leader wrote this batch at offset {base}, but this replica's log ends at offset {log_end}: the replicas disagree on offsets (is every broker of the cluster the same build?); this replica stops rather than serve records at other offsets"
                    ),
                ));
            }
        }
        Ok(b.try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..])))
    }

    /// Appends one entry; says whether the metadata changed (and still has to be saved)
    /// and where the batch landed (a control entry: at the log end, holding no offset).
    pub(super) fn append_one(&mut self, entry: Entry<PartitionRaft>) -> SResult<(bool, Appended)> {
        let index = entry.log_id.index;
        // An empty log takes any first index (Raft picks it); after that entries are dense.
        if let Some(last) = self.last_index()
            && index != last + 1
        {
            return Err(io_err(
                StorageIOError::write_logs,
                format!("appending Raft index {index}, expected {}", last + 1),
            ));
        }
        let mut meta_changed = false;
        if self.offsets.is_empty() {
            // Runs recorded past a new first entry (e.g. by a purge) no longer apply.
            self.meta.epochs.retain(|e| e.first_index < index);
        }
        if self
            .meta
            .epochs
            .last()
            .is_none_or(|e| e.leader != entry.log_id.leader_id)
        {
            self.meta.epochs.push(Epoch {
                first_index: index,
                leader: entry.log_id.leader_id,
            });
            meta_changed = true;
        }
        let Entry { log_id, payload } = entry;
        let control = !matches!(payload, EntryPayload::Normal(_));
        let (base_offset, last_offset, payload, size) = match payload {
            EntryPayload::Normal(p) => {
                let mut bytes = Self::encode(&log_id, p, self.log.offsets().log_end)?;
                let term = i32::try_from(log_id.leader_id.term).unwrap_or(i32::MAX);
                let info = self
                    .log
                    .append(&mut bytes, term, now_ms())
                    .map_err(|e| io_err(StorageIOError::write_logs, e))?;
                let size = bytes.len();
                // As a read would return it: base offset and epoch filled in, no token.
                let payload = EntryPayload::Normal(Payload::batch(bytes.freeze()));
                (info.base_offset, info.last_offset, payload, size)
            }
            payload => {
                let at = self.log.offsets().log_end;
                let kind = match &payload {
                    EntryPayload::Membership(m) => ControlKind::Membership(m.clone()),
                    _ => ControlKind::Blank,
                };
                self.meta.controls.push(Control {
                    index,
                    next_offset: at,
                    kind,
                });
                if self.offsets.is_empty() {
                    self.meta.first_index = index;
                    self.meta.first_offset = Some(at);
                }
                // Durable before any batch after it is written: a restart must never find
                // that batch without the entry before it (it would take the entry's index).
                self.persist_meta()
                    .map_err(|e| io_err(StorageIOError::write_logs, e))?;
                meta_changed = false;
                (at, at - 1, payload, CONTROL_SIZE)
            }
        };
        if self.offsets.is_empty() && !control {
            self.meta.first_index = index;
            self.meta.first_offset = Some(base_offset);
            meta_changed = true;
        }
        self.offsets.push(base_offset);
        self.tail
            .lock()
            .push(index, Entry { log_id, payload }, size);
        Ok((
            meta_changed,
            Appended {
                base_offset,
                last_offset,
            },
        ))
    }

    /// Rebuilds the entry-to-offset map from the batches' base offsets (from
    /// `meta.first_offset` on) and the control entries in `meta`, which go between them
    /// where their `next_offset` says. A control entry past the batches (its append, or
    /// the batches before it, never became durable) is dropped; one that contradicts a
    /// batch after it means `raft.json` and the segments disagree, and the log is not
    /// opened.
    pub(super) fn place_controls(&mut self, bases: Vec<i64>) -> std::io::Result<()> {
        let log_end = self.log.offsets().log_end;
        let first = self.meta.first_index;
        self.meta.controls.retain(|c| c.index >= first);
        if self.meta.controls.is_empty() {
            self.offsets = bases;
            return Ok(());
        }
        let mut offsets = Vec::with_capacity(bases.len() + self.meta.controls.len());
        let (mut b, mut c, mut index) = (0, 0, first);
        loop {
            if let Some(control) = self.meta.controls.get(c)
                && control.index == index
            {
                let at = bases.get(b).copied().unwrap_or(log_end);
                if at != control.next_offset {
                    if b < bases.len() {
                        return Err(std::io::Error::other(format!(
                            "raft.json has a control entry at Raft index {index} before offset {}, but the batch at that index starts at offset {at}: the Raft metadata and the segments of {} disagree",
                            control.next_offset,
                            self.dir.display()
                        )));
                    }
                    break;
                }
                offsets.push(at);
                c += 1;
            } else if let Some(&base) = bases.get(b) {
                offsets.push(base);
                b += 1;
            } else {
                break;
            }
            index += 1;
        }
        if c < self.meta.controls.len() {
            tracing::info!(dir = %self.dir.display(), from_index = self.meta.controls[c].index,
                dropped = self.meta.controls.len() - c, "dropped control entries whose append was not durable");
            self.meta.controls.truncate(c);
        }
        self.offsets = offsets;
        Ok(())
    }

    /// Forgets the leader runs that start past the last entry: a crash can lose the newest
    /// batches after `raft.json` recorded the run they began, and a run left there would
    /// sit out of order once the next leader's entries take those indexes.
    pub(super) fn forget_runs_past_the_end(&mut self) {
        let next = self.meta.first_index + self.offsets.len() as u64;
        self.meta.epochs.retain(|e| e.first_index < next);
    }
}
