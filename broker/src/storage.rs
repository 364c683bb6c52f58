//! Partition log storage.
//!
//! [`LogStorage`] is the seam between a partition and its bytes: append, read a range,
//! truncate a suffix, delete a prefix, flush. Writes and flushes are separate calls, so every
//! caller decides about durability explicitly. [`SegmentLog`] is the implementation: Kafka's
//! layout of append-only segment files with a sparse offset index and a time index each.
//!
//! # Layout
//! - [`segment`]: one segment: its `.log`, `.index` and `.timeindex` files.
//! - [`log`]: [`SegmentLog`], a partition directory of segments, with recovery on open.

mod log;
mod segment;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

pub use self::log::{LogOptions, SegmentLog};

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data in {path} at byte {position} (offset {offset}): {detail}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        offset: i64,
        detail: String,
    },
    #[error("offset {requested} is outside the log's range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("offset {0} is not the start of a batch")]
    NotBatchBoundary(i64),
}

impl StorageError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io { op, path, source }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

/// A log's bounds and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOffsets {
    /// The first offset still stored.
    pub log_start: i64,
    /// The next offset to assign.
    pub log_end: i64,
    /// Everything below this offset has been flushed to stable storage.
    pub flushed: i64,
    pub size_bytes: u64,
    pub segments: u32,
}

/// A closed or active segment's summary, for retention decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size_bytes: u64,
    /// Newest record timestamp in the segment (-1 if empty).
    pub max_timestamp: i64,
    pub active: bool,
}

/// Replaces the file at `path` with `data` atomically (a temporary file renamed over it).
/// With `durable`, the file and its directory are fsynced first, so the new content survives
/// a power loss; without, a crash leaves the old or the new content, never a mix.
pub fn replace_file(path: &std::path::Path, data: &[u8], durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if durable && let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the creations, renames and deletions of files in `dir` durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Where retention cuts a log: the end of the last whole segment that `retention.ms`
/// (newest record older than that) or `retention.bytes` (the log is larger without it) no
/// longer keeps, or `None`. The active segment always stays. Negative limits are off.
pub fn retention_cut(
    segments: &[SegmentInfo],
    retention_ms: i64,
    retention_bytes: i64,
    now_ms: i64,
) -> Option<i64> {
    let mut total: u64 = segments.iter().map(|s| s.size_bytes).sum();
    let mut cut = None;
    for s in segments.iter().filter(|s| !s.active) {
        let expired = retention_ms >= 0 && s.max_timestamp < now_ms.saturating_sub(retention_ms);
        let oversized =
            retention_bytes >= 0 && total.saturating_sub(s.size_bytes) >= retention_bytes as u64;
        if !(expired || oversized) {
            break;
        }
        total -= s.size_bytes;
        cut = Some(s.next_offset);
    }
    cut
}

/// Files to fsync so that everything below `end_offset` is durable. Obtained under the
/// partition lock, synced outside it, so appends continue during the fsync.
#[derive(Debug, Default)]
pub struct FlushTarget {
    pub files: Vec<(Arc<File>, PathBuf)>,
    pub end_offset: i64,
}

impl FlushTarget {
    /// fdatasync every file.
    pub fn sync(&self) -> Result<()> {
        for (file, path) in &self.files {
            file.sync_data().map_err(StorageError::io("fsync", path))?;
        }
        Ok(())
    }
}

/// A partition's log, as a Raft group or a single leader will drive it.
pub trait LogStorage: Send + Sync + std::fmt::Debug {
    /// Appends one verified batch at the log end: assigns its base offset and leader epoch
    /// in place and writes it. Not durable until flushed.
    fn append(&mut self, batch: &mut [u8], leader_epoch: i32, now_ms: i64) -> Result<AppendInfo>;

    /// Whole batches starting with the one that holds `offset`, at most `max_bytes` (but at
    /// least one batch), none at or above `upper_bound`. Every batch returned passed its CRC
    /// check; a corrupt first batch is an error, never data.
    fn read(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<Bytes>;

    /// The first offset whose record timestamp is >= `timestamp`, with that timestamp.
    fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>>;

    /// Removes every batch at or after `offset`, which must start a batch.
    fn truncate_suffix(&mut self, offset: i64) -> Result<()>;

    /// Deletes whole segments that end at or below `offset`; the active segment stays.
    fn delete_segments_before(&mut self, offset: i64) -> Result<()>;

    fn offsets(&self) -> LogOffsets;

    fn segments(&self) -> Vec<SegmentInfo>;

    /// What to fsync to make the current log end durable.
    fn flush_target(&mut self) -> FlushTarget;

    /// Calls `f` with the header of every batch from `from` (a batch start) to the log end,
    /// in order. Blocking (reads each batch).
    fn scan_headers(
        &self,
        from: i64,
        f: &mut dyn FnMut(&sluice_proto::batch::BatchHeader),
    ) -> Result<()> {
        let end = self.offsets().log_end;
        let mut offset = from;
        while offset < end {
            let bytes = self.read(offset, 1, i64::MAX)?;
            let h = sluice_proto::batch::BatchHeader::parse(&bytes)
                .map_err(|_| StorageError::NotBatchBoundary(offset))?;
            f(&h);
            offset = h.next_offset();
        }
        Ok(())
    }

    /// Records that a [`FlushTarget`] was synced.
    fn mark_flushed(&mut self, end_offset: i64);

    /// Flushes everything now (the simple path: holds the caller's lock during the fsync).
    fn flush(&mut self) -> Result<()> {
        let target = self.flush_target();
        target.sync()?;
        self.mark_flushed(target.end_offset);
        Ok(())
    }

    /// Flushes and writes what makes the next open fast (indexes, clean-shutdown marker).
    fn close(&mut self) -> Result<()>;

    /// Changes segment settings (a topic config change): the active segment rolls by the
    /// new `segment.bytes` / `segment.ms` from the next append on.
    fn set_options(&mut self, options: LogOptions);
}
