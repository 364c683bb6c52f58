//! Consumer-side de-duplication by [`RecordId`]: "have I processed this record already?"
//! A group delivers a record again when a consumer stopped after handling it and before
//! committing it; a handler wrapped in [`SkipProcessed`] skips the ones its store marked.
//!
//! Two stores: [`MemoryIds`] (bounded, for one process: it forgets on restart) and, with
//! the `sled` feature, [`SledIds`] (an embedded store on disk, flushed at every mark, so
//! a restarted consumer skips what it finished before a crash). Both keep at most
//! `capacity` ids, forgetting the oldest: size it above the records a consumer can have
//! handled and not committed (the processor's `max_in_flight` plus a commit interval's
//! worth). For side effects in a database, mark the id in the same transaction as the
//! effect instead (see `examples/`), which no separate store can match.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;

#[cfg(feature = "sled")]
use crate::Error;
use crate::consumer::RecordId;
use crate::consumer::processor::Handler;
use crate::{ConsumerRecord, Result};

/// Where processed ids are kept.
pub trait ProcessedIds: Send + Sync + 'static {
    /// Whether `id` was marked processed.
    fn seen(&self, id: &RecordId) -> Result<bool>;
    /// Marks `id` processed (durably, for a durable store, before it returns).
    fn mark(&self, id: &RecordId) -> Result<()>;
}

/// The last `capacity` ids marked, in memory.
#[derive(Debug)]
pub struct MemoryIds {
    capacity: usize,
    ids: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl MemoryIds {
    pub fn new(capacity: usize) -> Self {
        MemoryIds {
            capacity: capacity.max(1),
            ids: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Ids held now.
    pub fn len(&self) -> usize {
        self.ids.lock().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ProcessedIds for MemoryIds {
    fn seen(&self, id: &RecordId) -> Result<bool> {
        Ok(self.ids.lock().0.contains(&id.to_string()))
    }

    fn mark(&self, id: &RecordId) -> Result<()> {
        let id = id.to_string();
        let mut guard = self.ids.lock();
        let (set, order) = &mut *guard;
        if set.insert(id.clone()) {
            order.push_back(id);
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
        Ok(())
    }
}

/// The last `capacity` ids marked, in a sled database on disk.
#[cfg(feature = "sled")]
#[derive(Debug)]
pub struct SledIds {
    db: sled::Db,
    /// id -> its mark's sequence number.
    ids: sled::Tree,
    /// sequence number (big-endian) -> id, oldest first.
    order: sled::Tree,
    capacity: usize,
    next: std::sync::atomic::AtomicU64,
    /// Marks are made one at a time (the count and the eviction stay consistent).
    marking: Mutex<()>,
}

#[cfg(feature = "sled")]
impl SledIds {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<std::path::Path>, capacity: usize) -> Result<Self> {
        let path = path.as_ref();
        let err = |what: &str, e: sled::Error| {
            Error::Store(format!(
                "{what} the processed-ids store at {}: {e}",
                path.display()
            ))
        };
        let db = sled::open(path).map_err(|e| err("opening", e))?;
        let ids = db.open_tree("ids").map_err(|e| err("opening", e))?;
        let order = db.open_tree("order").map_err(|e| err("opening", e))?;
        let next = match order.last().map_err(|e| err("reading", e))? {
            Some((k, _)) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[..8.min(k.len())]);
                u64::from_be_bytes(b) + 1
            }
            None => 0,
        };
        Ok(SledIds {
            db,
            ids,
            order,
            capacity: capacity.max(1),
            next: std::sync::atomic::AtomicU64::new(next),
            marking: Mutex::new(()),
        })
    }

    /// Ids held now.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(feature = "sled")]
impl ProcessedIds for SledIds {
    fn seen(&self, id: &RecordId) -> Result<bool> {
        self.ids
            .contains_key(id.to_string().as_bytes())
            .map_err(|e| Error::Store(format!("reading the processed-ids store: {e}")))
    }

    fn mark(&self, id: &RecordId) -> Result<()> {
        let err = |e: sled::Error| Error::Store(format!("writing the processed-ids store: {e}"));
        let _one = self.marking.lock();
        let key = id.to_string();
        if self.ids.contains_key(key.as_bytes()).map_err(err)? {
            return Ok(());
        }
        let seq = self
            .next
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .to_be_bytes();
        self.ids.insert(key.as_bytes(), &seq).map_err(err)?;
        self.order.insert(seq, key.as_bytes()).map_err(err)?;
        while self.ids.len() > self.capacity {
            match self.order.pop_min().map_err(err)? {
                Some((_, old)) => {
                    self.ids.remove(old).map_err(err)?;
                }
                None => break,
            }
        }
        self.db.flush().map_err(err)?;
        Ok(())
    }
}

/// A handler that skips records whose id its store marked, and marks each record it
/// handled successfully.
pub struct SkipProcessed<S, H> {
    store: Arc<S>,
    handler: H,
}

impl<S, H> std::fmt::Debug for SkipProcessed<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkipProcessed").finish_non_exhaustive()
    }
}

impl<S, H> SkipProcessed<S, H> {
    pub fn new(store: Arc<S>, handler: H) -> Self {
        SkipProcessed { store, handler }
    }
}

impl<S: ProcessedIds, H: Handler> Handler for SkipProcessed<S, H> {
    fn handle(
        &self,
        record: ConsumerRecord,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send {
        let id = record.id.clone();
        let store = self.store.clone();
        let seen = store.seen(&id);
        let run = match seen {
            Ok(true) => None,
            Ok(false) => Some(self.handler.handle(record)),
            Err(_) => None,
        };
        async move {
            match (seen, run) {
                (Err(e), _) => Err(format!("record {id}: {e}")),
                (Ok(true), _) | (_, None) => Ok(()),
                (Ok(false), Some(run)) => {
                    run.await?;
                    store.mark(&id).map_err(|e| format!("record {id}: {e}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(offset: i64) -> RecordId {
        RecordId::Offset {
            topic: Arc::from("orders"),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn memory_ids_keep_the_last_capacity_marks() {
        let m = MemoryIds::new(3);
        for o in 0..5 {
            m.mark(&id(o)).unwrap();
        }
        m.mark(&id(4)).unwrap();
        assert_eq!(m.len(), 3);
        assert!(!m.seen(&id(1)).unwrap());
        assert!(m.seen(&id(2)).unwrap() && m.seen(&id(4)).unwrap());
    }

    #[cfg(feature = "sled")]
    #[test]
    fn sled_ids_survive_a_reopen_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledIds::open(dir.path(), 100).unwrap();
            for o in 0..150 {
                s.mark(&id(o)).unwrap();
            }
            assert_eq!(s.len(), 100);
        }
        let s = SledIds::open(dir.path(), 100).unwrap();
        assert!(!s.seen(&id(49)).unwrap(), "the oldest are forgotten");
        assert!(s.seen(&id(50)).unwrap() && s.seen(&id(149)).unwrap());
        s.mark(&id(150)).unwrap();
        assert_eq!(s.len(), 100);
        assert!(!s.seen(&id(50)).unwrap());
    }
}
