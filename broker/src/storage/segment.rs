//! One segment: `{base_offset:020}.log` holds whole batches back to back; `.index` maps
//! offsets to positions and `.timeindex` timestamps to positions, sparsely (one entry per
//! `index_interval` bytes), so a lookup reads a few KiB instead of scanning.
//!
//! Index files are written when a segment is closed (rolled, or at a clean shutdown). The
//! active segment keeps its indexes in memory; after a crash they are rebuilt by the
//! recovery scan, which also checks every batch's CRC and cuts a torn tail.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes, BytesMut};
use sluice_proto::batch::{self, BatchHeader, HEADER_LEN};

use super::{Result, StorageError};

/// `rel_offset` -> `position`, both relative to the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OffsetEntry {
    rel: u32,
    pos: u32,
}

/// The running max timestamp of the segment, up to and including the batch at `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeEntry {
    ts: i64,
    pos: u32,
}

#[derive(Debug, Default, Clone)]
struct Indexes {
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    /// Position of the batch of the last offset entry and the last time entry.
    last_offset_pos: u64,
    last_time_pos: u64,
}

impl Indexes {
    /// Adds entries for a batch at `pos` when `interval` bytes passed since the last one.
    fn observe(
        &mut self,
        base_offset: i64,
        header: &BatchHeader,
        pos: u64,
        running_max_ts: i64,
        interval: u64,
    ) {
        if pos >= self.last_offset_pos + interval || (self.offsets.is_empty() && pos >= interval) {
            self.offsets.push(OffsetEntry {
                rel: (header.base_offset - base_offset) as u32,
                pos: pos as u32,
            });
            self.last_offset_pos = pos;
        }
        let max_so_far = self.times.last().map_or(-1, |t| t.ts);
        if running_max_ts > max_so_far
            && (self.times.is_empty() || pos >= self.last_time_pos + interval)
        {
            self.times.push(TimeEntry {
                ts: running_max_ts,
                pos: pos as u32,
            });
            self.last_time_pos = pos;
        }
    }

    /// Position to start scanning for `offset`.
    fn position_for_offset(&self, rel: u32) -> u64 {
        let i = self.offsets.partition_point(|e| e.rel <= rel);
        if i == 0 {
            0
        } else {
            self.offsets[i - 1].pos as u64
        }
    }

    /// Position to start scanning for the first batch with max timestamp >= `ts`.
    fn position_for_timestamp(&self, ts: i64) -> u64 {
        let i = self.times.partition_point(|e| e.ts < ts);
        if i == 0 {
            0
        } else {
            self.times[i - 1].pos as u64
        }
    }

    fn truncate(&mut self, pos: u64) {
        self.offsets.retain(|e| (e.pos as u64) < pos);
        self.times.retain(|e| (e.pos as u64) < pos);
        self.last_offset_pos = self.offsets.last().map_or(0, |e| e.pos as u64);
        self.last_time_pos = self.times.last().map_or(0, |e| e.pos as u64);
    }

    fn encode(&self) -> (Vec<u8>, Vec<u8>) {
        let mut o = Vec::with_capacity(self.offsets.len() * 8);
        for e in &self.offsets {
            o.extend_from_slice(&e.rel.to_be_bytes());
            o.extend_from_slice(&e.pos.to_be_bytes());
        }
        let mut t = Vec::with_capacity(self.times.len() * 12);
        for e in &self.times {
            t.extend_from_slice(&e.ts.to_be_bytes());
            t.extend_from_slice(&e.pos.to_be_bytes());
        }
        (o, t)
    }

    /// Decodes index files, or `None` when they are missing or inconsistent with a
    /// segment of `size` bytes (then the caller rebuilds them).
    fn decode(offsets: &[u8], times: &[u8], size: u64) -> Option<Indexes> {
        if !offsets.len().is_multiple_of(8) || !times.len().is_multiple_of(12) {
            return None;
        }
        let mut ix = Indexes::default();
        let mut b = offsets;
        while b.has_remaining() {
            let e = OffsetEntry {
                rel: b.get_u32(),
                pos: b.get_u32(),
            };
            if (e.pos as u64) >= size
                || ix
                    .offsets
                    .last()
                    .is_some_and(|l| l.rel >= e.rel || l.pos >= e.pos)
            {
                return None;
            }
            ix.offsets.push(e);
        }
        let mut b = times;
        while b.has_remaining() {
            let e = TimeEntry {
                ts: b.get_i64(),
                pos: b.get_u32(),
            };
            if (e.pos as u64) >= size
                || ix
                    .times
                    .last()
                    .is_some_and(|l| l.ts >= e.ts || l.pos > e.pos)
            {
                return None;
            }
            ix.times.push(e);
        }
        ix.last_offset_pos = ix.offsets.last().map_or(0, |e| e.pos as u64);
        ix.last_time_pos = ix.times.last().map_or(0, |e| e.pos as u64);
        Some(ix)
    }
}

/// What a recovery scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ScanReport {
    pub batches: u64,
    pub truncated_bytes: u64,
    pub corrupt_batches: Vec<(u64, i64)>,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    pub max_timestamp: i64,
    pub created_ms: i64,
    log_path: PathBuf,
    index_path: PathBuf,
    time_path: PathBuf,
    file: Arc<File>,
    /// Loaded on first use for closed segments; always present for the active one.
    indexes: OnceLock<Indexes>,
    interval: u64,
}

const ENTRIES_MAGIC: &[u8; 8] = b"SLENTRS1";
const ENTRIES_HEADER: usize = 28;

pub(crate) fn log_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}.log")
}

impl Segment {
    fn paths(dir: &Path, base: i64) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join(log_file_name(base)),
            dir.join(format!("{base:020}.index")),
            dir.join(format!("{base:020}.timeindex")),
        )
    }

    fn open_file(path: &Path, create: bool) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(StorageError::io("open", path))
    }

    fn new(dir: &Path, base: i64, file: File, size: u64, interval: u64, now_ms: i64) -> Self {
        let (log_path, index_path, time_path) = Self::paths(dir, base);
        Segment {
            base_offset: base,
            next_offset: base,
            size,
            max_timestamp: -1,
            created_ms: now_ms,
            log_path,
            index_path,
            time_path,
            file: Arc::new(file),
            indexes: OnceLock::new(),
            interval,
        }
    }

    /// A new, empty active segment.
    pub(crate) fn create(dir: &Path, base: i64, interval: u64, now_ms: i64) -> Result<Self> {
        let (log_path, ..) = Self::paths(dir, base);
        let file = Self::open_file(&log_path, true)?;
        file.set_len(0)
            .map_err(StorageError::io("truncate", &log_path))?;
        let seg = Self::new(dir, base, file, 0, interval, now_ms);
        let _ = seg.indexes.set(Indexes::default());
        Ok(seg)
    }

    /// Opens a closed segment; its indexes load on first use. Rebuilds them now if the
    /// time index, which gives the segment's newest timestamp, is missing or damaged.
    pub(crate) fn open_closed(
        dir: &Path,
        base: i64,
        next_offset: i64,
        interval: u64,
        now_ms: i64,
    ) -> Result<Self> {
        let (log_path, ..) = Self::paths(dir, base);
        let file = Self::open_file(&log_path, false)?;
        let size = file
            .metadata()
            .map_err(StorageError::io("stat", &log_path))?
            .len();
        let mut seg = Self::new(dir, base, file, size, interval, now_ms);
        seg.next_offset = next_offset;
        match seg.read_index_files() {
            Some(ix) => seg.max_timestamp = ix.times.last().map_or(-1, |t| t.ts),
            None => {
                tracing::warn!(segment = %seg.log_path.display(), "index files missing or damaged; rebuilding");
                seg.rebuild(false)?;
            }
        }
        Ok(seg)
    }

    /// Opens the last segment of a log. After a clean shutdown the indexes are trusted and
    /// only the bytes after the last index entry are scanned; otherwise every batch is read,
    /// checked, and a torn tail is cut off.
    pub(crate) fn open_active(
        dir: &Path,
        base: i64,
        clean: bool,
        interval: u64,
        now_ms: i64,
    ) -> Result<(Self, ScanReport)> {
        let (log_path, ..) = Self::paths(dir, base);
        let file = Self::open_file(&log_path, false)?;
        let size = file
            .metadata()
            .map_err(StorageError::io("stat", &log_path))?
            .len();
        let mut seg = Self::new(dir, base, file, size, interval, now_ms);
        if clean && let Some(ix) = seg.read_index_files() {
            let _ = seg.indexes.set(ix);
            match seg.resume_tail(true) {
                Ok(report) if report.truncated_bytes == 0 && report.corrupt_batches.is_empty() => {
                    return Ok((seg, report));
                }
                _ => tracing::warn!(segment = %seg.log_path.display(),
                        "tail after the last index entry is inconsistent; scanning the whole segment"),
            }
            seg.size = size;
        }
        let report = seg.rebuild(true)?;
        Ok((seg, report))
    }

    fn read_index_files(&self) -> Option<Indexes> {
        let offsets = std::fs::read(&self.index_path).ok()?;
        let times = std::fs::read(&self.time_path).ok()?;
        Indexes::decode(&offsets, &times, self.size)
    }

    /// Rebuilds the indexes, `next_offset` and `max_timestamp` from the log file. With
    /// `repair`, a torn tail is truncated; without, it is an error.
    fn rebuild(&mut self, repair: bool) -> Result<ScanReport> {
        self.indexes = OnceLock::new();
        let _ = self.indexes.set(Indexes::default());
        self.max_timestamp = -1;
        let report = self.scan_from(0, self.base_offset, true, repair)?;
        if !repair && report.truncated_bytes > 0 {
            return Err(StorageError::Corrupt {
                path: self.log_path.clone(),
                position: self.size,
                offset: self.next_offset,
                detail: "a closed segment ends in an incomplete batch".into(),
            });
        }
        Ok(report)
    }

    /// Re-derives `next_offset` and `max_timestamp` from the last offset index entry on,
    /// after the indexes were loaded or cut. Time entries only under-state the running
    /// maximum timestamp, but by little: a batch that raised it past the last time entry
    /// gets an entry of its own unless it starts within `interval` bytes of that entry (the
    /// next batch beyond that window would carry the raised maximum into a new entry). So
    /// besides the tail after the last offset entry, only the batch headers in that window
    /// are read, however old the last time entry is (timestamps that never rise used to
    /// make a clean open read the whole active segment).
    fn resume_tail(&mut self, verify: bool) -> Result<ScanReport> {
        let ix = self.indexes();
        let from = ix.offsets.last().map_or(0, |e| e.pos as u64);
        let time_pos = ix.times.last().map_or(0, |t| t.pos as u64);
        self.max_timestamp = ix.times.last().map_or(-1, |t| t.ts);
        let window_end = from.min(time_pos + self.interval);
        let mut pos = time_pos;
        while pos < window_end {
            let head = self.read_exact(pos, HEADER_LEN)?;
            let h = BatchHeader::parse(&head).map_err(|e| self.corrupt(pos, -1, e.to_string()))?;
            self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
            pos += h.total_len() as u64;
        }
        let offset = if from == 0 {
            self.base_offset
        } else {
            let head = self.read_exact(from, HEADER_LEN)?;
            BatchHeader::parse(&head)
                .map_err(|e| self.corrupt(from, -1, e.to_string()))?
                .base_offset
        };
        self.scan_from(from, offset, verify, false)
    }

    /// Walks batches from `pos` (which starts the batch of `offset`), extending the
    /// in-memory indexes and, with `verify`, checking CRCs. A bad batch followed by a good
    /// one is kept and reported (readers get CORRUPT_MESSAGE for it); bad bytes that run to
    /// the end of the file are a torn write and, with `repair`, are cut off.
    fn scan_from(
        &mut self,
        mut pos: u64,
        mut expected: i64,
        verify: bool,
        repair: bool,
    ) -> Result<ScanReport> {
        let mut report = ScanReport::default();
        let file_len = self.size;
        while pos < file_len {
            let bad = match self.check_batch_at(pos, Some(expected), file_len, verify) {
                Ok(header) => {
                    self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
                    let (base, max_ts, interval) =
                        (self.base_offset, self.max_timestamp, self.interval);
                    if let Some(ix) = self.indexes.get_mut() {
                        ix.observe(base, &header, pos, max_ts, interval);
                    }
                    report.batches += 1;
                    pos += header.total_len() as u64;
                    expected = header.next_offset();
                    continue;
                }
                Err(bad) => bad,
            };
            if let Some(h) = bad.header {
                let next = pos + h.total_len() as u64;
                if next < file_len
                    && let Ok(following) = self.check_batch_at(next, None, file_len, true)
                {
                    tracing::error!(segment = %self.log_path.display(), position = pos, offset = expected,
                            reason = %bad.reason, "corrupt batch kept in place; readers will get CORRUPT_MESSAGE for it");
                    report.corrupt_batches.push((pos, expected));
                    pos = next;
                    expected = following.base_offset;
                    continue;
                }
            }
            let cut = file_len - pos;
            tracing::warn!(segment = %self.log_path.display(), position = pos, offset = expected,
                bytes = cut, reason = %bad.reason, repair, "torn write at the end of the log");
            report.truncated_bytes = cut;
            if repair {
                self.file
                    .set_len(pos)
                    .map_err(StorageError::io("truncate", &self.log_path))?;
                self.file
                    .sync_all()
                    .map_err(StorageError::io("fsync", &self.log_path))?;
            }
            break;
        }
        self.size = pos;
        self.next_offset = expected;
        Ok(report)
    }

    fn check_batch_at(
        &self,
        pos: u64,
        expected: Option<i64>,
        file_len: u64,
        verify: bool,
    ) -> std::result::Result<BatchHeader, BadBatch> {
        let bad = |header, reason: String| BadBatch { header, reason };
        if pos + HEADER_LEN as u64 > file_len {
            return Err(bad(
                None,
                format!(
                    "{} bytes left, a batch header needs {HEADER_LEN}",
                    file_len - pos
                ),
            ));
        }
        let head = self
            .read_exact(pos, HEADER_LEN)
            .map_err(|e| bad(None, e.to_string()))?;
        let header = BatchHeader::parse(&head).map_err(|e| bad(None, e.to_string()))?;
        if pos + header.total_len() as u64 > file_len {
            return Err(bad(
                None,
                format!(
                    "batch of {} bytes runs past the end of the file",
                    header.total_len()
                ),
            ));
        }
        if verify {
            let whole = self
                .read_exact(pos, header.total_len())
                .map_err(|e| bad(Some(header), e.to_string()))?;
            batch::verify(&whole).map_err(|e| bad(Some(header), e.to_string()))?;
        }
        if let Some(expected) = expected.filter(|&e| e != header.base_offset) {
            return Err(bad(
                Some(header),
                format!(
                    "batch says offset {}, expected {expected}",
                    header.base_offset
                ),
            ));
        }
        Ok(header)
    }

    fn read_exact(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, pos)
            .map_err(StorageError::io("read", &self.log_path))?;
        Ok(buf)
    }

    fn indexes(&self) -> &Indexes {
        self.indexes.get_or_init(|| {
            self.read_index_files().unwrap_or_else(|| {
                tracing::warn!(segment = %self.log_path.display(), "index unreadable; scanning from the segment start");
                Indexes::default()
            })
        })
    }

    /// Appends a verified batch whose base offset is already set to `next_offset`.
    pub(crate) fn append(&mut self, bytes: &[u8], header: &BatchHeader) -> Result<()> {
        debug_assert_eq!(header.base_offset, self.next_offset);
        self.file
            .write_all_at(bytes, self.size)
            .map_err(StorageError::io("write", &self.log_path))?;
        let pos = self.size;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        let (base, max_ts, interval) = (self.base_offset, self.max_timestamp, self.interval);
        self.indexes.get_or_init(Indexes::default);
        if let Some(ix) = self.indexes.get_mut() {
            ix.observe(base, header, pos, max_ts, interval);
        }
        self.size += bytes.len() as u64;
        self.next_offset = header.next_offset();
        Ok(())
    }

    /// Position and header of the batch that holds `offset`, or `None` past the data.
    fn locate(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>> {
        let mut pos = self
            .indexes()
            .position_for_offset((offset - self.base_offset) as u32);
        while pos + HEADER_LEN as u64 <= self.size {
            let head = self.read_exact(pos, HEADER_LEN)?;
            let header =
                BatchHeader::parse(&head).map_err(|e| self.corrupt(pos, offset, e.to_string()))?;
            if header.next_offset() > offset {
                return Ok(Some((pos, header)));
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    fn corrupt(&self, position: u64, offset: i64, detail: String) -> StorageError {
        StorageError::Corrupt {
            path: self.log_path.clone(),
            position,
            offset,
            detail,
        }
    }

    /// See [`super::LogStorage::read`]; stays within this segment.
    pub(crate) fn read(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<Bytes> {
        let Some((pos, first)) = self.locate(offset)? else {
            return Ok(Bytes::new());
        };
        if first.base_offset >= upper_bound {
            return Ok(Bytes::new());
        }
        let available = (self.size - pos) as usize;
        let want = available.min(max_bytes.max(first.total_len()));
        let mut buf = BytesMut::zeroed(want);
        self.file
            .read_exact_at(&mut buf, pos)
            .map_err(StorageError::io("read", &self.log_path))?;
        let mut p = 0;
        let mut expected = first.base_offset;
        while p + HEADER_LEN <= buf.len() {
            let checked = BatchHeader::parse(&buf[p..])
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    if h.base_offset >= upper_bound || p + h.total_len() > buf.len() {
                        return Ok(None);
                    }
                    batch::verify(&buf[p..p + h.total_len()]).map_err(|e| e.to_string())?;
                    if h.base_offset != expected {
                        return Err(format!(
                            "batch says offset {}, expected {expected}",
                            h.base_offset
                        ));
                    }
                    Ok(Some(h))
                });
            match checked {
                Ok(Some(h)) => {
                    p += h.total_len();
                    expected = h.next_offset();
                }
                Ok(None) => break,
                Err(detail) if p == 0 => {
                    tracing::error!(segment = %self.log_path.display(), position = pos, offset, %detail, "corrupt batch refused to a reader");
                    return Err(self.corrupt(pos, first.base_offset, detail));
                }
                Err(_) => break,
            }
        }
        buf.truncate(p);
        Ok(buf.freeze())
    }

    /// The first record at or after `timestamp` in this segment.
    pub(crate) fn find_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        if self.max_timestamp < timestamp {
            return Ok(None);
        }
        let mut pos = self.indexes().position_for_timestamp(timestamp);
        while pos + HEADER_LEN as u64 <= self.size {
            let head = self.read_exact(pos, HEADER_LEN)?;
            let header =
                BatchHeader::parse(&head).map_err(|e| self.corrupt(pos, -1, e.to_string()))?;
            if header.max_timestamp >= timestamp {
                let whole = Bytes::from(self.read_exact(pos, header.total_len())?);
                let (_, records) = batch::decode(&whole, batch::DEFAULT_MAX_DECOMPRESSED)
                    .map_err(|e| self.corrupt(pos, header.base_offset, e.to_string()))?;
                return Ok(records
                    .iter()
                    .find(|r| r.timestamp >= timestamp)
                    .map(|r| (r.offset, r.timestamp)));
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    /// Cuts the segment so that `offset` is its next offset; `offset` must start a batch.
    pub(crate) fn truncate_to(&mut self, offset: i64) -> Result<()> {
        let pos = match self.locate(offset)? {
            Some((pos, h)) if h.base_offset == offset => pos,
            None if offset == self.next_offset => return Ok(()),
            _ => return Err(StorageError::NotBatchBoundary(offset)),
        };
        // A saved list of its batches no longer describes it (and must not match again
        // once the segment grows back to the same size).
        match std::fs::remove_file(self.entries_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("delete", &self.entries_path())(e)),
        }
        self.file
            .set_len(pos)
            .map_err(StorageError::io("truncate", &self.log_path))?;
        self.indexes();
        if let Some(ix) = self.indexes.get_mut() {
            ix.truncate(pos);
        }
        self.size = pos;
        self.resume_tail(false)?;
        Ok(())
    }

    /// Writes the index files (replacing old ones atomically) and fsyncs them.
    pub(crate) fn write_indexes(&self) -> Result<()> {
        let (o, t) = self.indexes().encode();
        for (path, data) in [(&self.index_path, o), (&self.time_path, t)] {
            let tmp = path.with_extension("tmp");
            let mut f = File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
            f.write_all(&data)
                .map_err(StorageError::io("write", &tmp))?;
            f.sync_all().map_err(StorageError::io("fsync", &tmp))?;
            std::fs::rename(&tmp, path).map_err(StorageError::io("rename", path))?;
        }
        Ok(())
    }

    fn entries_path(&self) -> PathBuf {
        self.log_path.with_extension("entries")
    }

    /// The base offset of every batch in the segment, in order: from its `.entries` file
    /// when that is valid for the segment as it is now (same size, CRC), else by reading
    /// the batch headers through the file sequentially (1 MiB reads, 12 bytes parsed per
    /// batch: what a Raft log rebuilds at open, instead of a checked read per batch). With
    /// `keep`, a scan's result is saved as the `.entries` file for the next open; only for
    /// closed segments, which do not change (truncation and deletion remove the file).
    /// The segment's batches were checked when it was written or recovered; readers check
    /// each batch's CRC again.
    pub(crate) fn batch_bases(&self, keep: bool) -> Result<Vec<i64>> {
        if let Some(bases) = self.read_entries() {
            return Ok(bases);
        }
        let bases = self.scan_bases()?;
        if keep && let Err(e) = self.write_entries(&bases) {
            tracing::warn!(segment = %self.log_path.display(), cause = %e, "cannot save the segment's batch offsets; the next open scans it again");
        }
        Ok(bases)
    }

    fn scan_bases(&self) -> Result<Vec<i64>> {
        const CHUNK: usize = 1 << 20;
        let mut bases: Vec<i64> = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        while pos < self.size {
            let want = (CHUNK as u64).min(self.size - pos) as usize;
            self.file
                .read_exact_at(&mut buf[..want], pos)
                .map_err(StorageError::io("read", &self.log_path))?;
            let mut at = 0usize;
            // Headers that start in this chunk; one that straddles its end is read again
            // at the start of the next.
            while at + 12 <= want {
                let base = i64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
                let len = i32::from_be_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                let total = 12 + u64::try_from(len).unwrap_or(0);
                if len < (HEADER_LEN - 12) as i32
                    || pos + at as u64 + total > self.size
                    || bases.last().is_some_and(|b| *b >= base)
                {
                    return Err(StorageError::Corrupt {
                        path: self.log_path.clone(),
                        position: pos + at as u64,
                        offset: base,
                        detail: format!(
                            "no batch header here (length {len}) while listing the segment's batches"
                        ),
                    });
                }
                bases.push(base);
                at += total as usize;
            }
            if at == 0 {
                return Err(StorageError::Corrupt {
                    path: self.log_path.clone(),
                    position: pos,
                    offset: bases.last().copied().unwrap_or(self.base_offset),
                    detail: "a partial batch header at the end of the segment".into(),
                });
            }
            pos += at as u64;
        }
        Ok(bases)
    }

    /// `.entries`: magic, the segment size it describes, the count, CRC-32C of the offsets,
    /// then the offsets (i64 little-endian).
    fn read_entries(&self) -> Option<Vec<i64>> {
        let data = std::fs::read(self.entries_path()).ok()?;
        let (head, body) = data.split_at_checked(ENTRIES_HEADER)?;
        let size = u64::from_le_bytes(head[8..16].try_into().ok()?);
        let count = u64::from_le_bytes(head[16..24].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(head[24..28].try_into().ok()?);
        let valid = head[..8] == *ENTRIES_MAGIC
            && size == self.size
            && body.len() == count * 8
            && crc32c::crc32c(body) == crc;
        if !valid {
            return None;
        }
        let bases: Vec<i64> = body
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunks")))
            .collect();
        (bases.first().is_none_or(|b| *b == self.base_offset)
            && bases.windows(2).all(|w| w[0] < w[1]))
        .then_some(bases)
    }

    fn write_entries(&self, bases: &[i64]) -> std::io::Result<()> {
        let mut body = Vec::with_capacity(bases.len() * 8);
        for b in bases {
            body.extend_from_slice(&b.to_le_bytes());
        }
        let mut data = Vec::with_capacity(ENTRIES_HEADER + body.len());
        data.extend_from_slice(ENTRIES_MAGIC);
        data.extend_from_slice(&self.size.to_le_bytes());
        data.extend_from_slice(&(bases.len() as u64).to_le_bytes());
        data.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        data.extend_from_slice(&body);
        // No fsync: a torn file fails its checks and the segment is scanned again.
        let path = self.entries_path();
        let tmp = path.with_extension("entries.tmp");
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, &path)
    }

    pub(crate) fn delete_files(&self) -> Result<()> {
        let entries = self.entries_path();
        for path in [&self.log_path, &self.index_path, &self.time_path, &entries] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("delete", path)(e)),
            }
        }
        Ok(())
    }

    pub(crate) fn file(&self) -> (Arc<File>, PathBuf) {
        (self.file.clone(), self.log_path.clone())
    }

    /// Drops the in-memory indexes of a closed segment; they reload on next use.
    pub(crate) fn release_indexes(&mut self) {
        self.indexes = OnceLock::new();
    }
}

#[derive(Debug)]
struct BadBatch {
    header: Option<BatchHeader>,
    reason: String,
}
