//! [`SegmentLog`]: one partition directory of segments.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sluice_proto::batch::{self, BatchHeader};

use super::segment::{Segment, log_file_name};
use super::{AppendInfo, FlushTarget, LogOffsets, LogStorage, Result, SegmentInfo, StorageError};

/// Written after a clean close, removed on open: its absence means the last run crashed.
const CLEAN_SHUTDOWN_MARKER: &str = ".clean-shutdown";

/// Per-log settings (from the topic config and the broker config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// `segment.bytes`.
    pub segment_bytes: u64,
    /// `segment.ms`.
    pub segment_ms: i64,
    /// Bytes between sparse index entries (Kafka's `index.interval.bytes`).
    pub index_interval_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
        }
    }
}

#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    options: LogOptions,
    /// Sorted by base offset; the last one is active. Never empty.
    segments: Vec<Segment>,
    flushed: i64,
    /// Files written since the last flush target was taken, beyond the active one
    /// (segments rolled in between).
    unsynced: Vec<(Arc<File>, PathBuf)>,
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`, recovering from a crash if the last run
    /// did not close it cleanly.
    pub fn open(dir: &Path, options: LogOptions, now_ms: i64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(StorageError::io("create directory", dir))?;
        let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
        let clean = marker.exists();
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(StorageError::io("list", dir))? {
            let entry = entry.map_err(StorageError::io("list", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                match stem.parse::<i64>() {
                    Ok(base) if name == log_file_name(base) => bases.push(base),
                    _ => {
                        tracing::warn!(file = %entry.path().display(), "ignoring unexpected file in a partition directory")
                    }
                }
            }
        }
        bases.sort_unstable();
        let interval = options.index_interval_bytes;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for (i, &base) in bases.iter().enumerate() {
            if let Some(&next) = bases.get(i + 1) {
                segments.push(Segment::open_closed(dir, base, next, interval, now_ms)?);
            } else {
                let (seg, report) = Segment::open_active(dir, base, clean, interval, now_ms)?;
                if !clean || report.truncated_bytes > 0 || !report.corrupt_batches.is_empty() {
                    tracing::info!(dir = %dir.display(), clean, batches = report.batches,
                        truncated_bytes = report.truncated_bytes, corrupt_batches = report.corrupt_batches.len(),
                        next_offset = seg.next_offset, "recovered partition log");
                }
                segments.push(seg);
            }
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0, interval, now_ms)?);
        }
        if clean {
            std::fs::remove_file(&marker).map_err(StorageError::io("remove", &marker))?;
        }
        let log_end = segments.last().map_or(0, |s| s.next_offset);
        Ok(SegmentLog {
            dir: dir.to_path_buf(),
            options,
            segments,
            flushed: log_end,
            unsynced: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The base offset of every batch from `from` (a batch boundary) to the end, in order.
    /// Closed segments answer from their saved `.entries` lists (written the first time one
    /// is listed), so this costs a scan of the active segment and of closed segments never
    /// listed before, not of the whole log.
    pub fn batch_bases(&self, from: i64) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        let last = self.segments.len() - 1;
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.next_offset <= from {
                continue;
            }
            let bases = seg.batch_bases(i < last)?;
            let skip = bases.partition_point(|b| *b < from);
            out.extend_from_slice(&bases[skip..]);
        }
        Ok(out)
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    fn roll(&mut self, now_ms: i64) -> Result<()> {
        let next = self.active().next_offset;
        let old = self.active_mut();
        old.write_indexes()?;
        old.release_indexes();
        let file = old.file();
        self.unsynced.push(file);
        let seg = Segment::create(&self.dir, next, self.options.index_interval_bytes, now_ms)?;
        tracing::debug!(dir = %self.dir.display(), base_offset = next, "rolled a new segment");
        self.segments.push(seg);
        Ok(())
    }

    /// Empties the log and makes it continue at `next_offset` (a follower that installed a
    /// snapshot past its own end: what came before is gone from the leader too). The new
    /// segment is created before the old ones are deleted.
    pub fn reset_to(&mut self, next_offset: i64, now_ms: i64) -> Result<()> {
        let seg = Segment::create(
            &self.dir,
            next_offset,
            self.options.index_interval_bytes,
            now_ms,
        )?;
        for old in std::mem::replace(&mut self.segments, vec![seg]) {
            if old.base_offset != next_offset {
                old.delete_files()?;
            }
        }
        self.unsynced.clear();
        self.flushed = next_offset;
        tracing::info!(dir = %self.dir.display(), next_offset, "log restarted at a snapshot of the leader");
        Ok(())
    }

    fn segment_for(&self, offset: i64) -> &Segment {
        let i = self.segments.partition_point(|s| s.base_offset <= offset);
        &self.segments[i.saturating_sub(1)]
    }
}

impl LogStorage for SegmentLog {
    fn set_options(&mut self, options: LogOptions) {
        self.options = options;
    }

    fn append(&mut self, bytes: &mut [u8], leader_epoch: i32, now_ms: i64) -> Result<AppendInfo> {
        let active = self.active();
        let len = bytes.len() as u64;
        if active.size > 0
            && (active.size + len > self.options.segment_bytes
                || now_ms - active.created_ms >= self.options.segment_ms)
        {
            self.roll(now_ms)?;
        }
        let base_offset = self.active().next_offset;
        batch::set_base_offset_and_epoch(bytes, base_offset, leader_epoch);
        let header = BatchHeader::parse(bytes).map_err(|e| StorageError::Corrupt {
            path: self.dir.clone(),
            position: 0,
            offset: base_offset,
            detail: format!("refusing to append an unparsable batch: {e}"),
        })?;
        self.active_mut().append(bytes, &header)?;
        Ok(AppendInfo {
            base_offset,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
        })
    }

    fn read(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<Bytes> {
        let offsets = self.offsets();
        if offset < offsets.log_start || offset > offsets.log_end {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start: offsets.log_start,
                log_end: offsets.log_end,
            });
        }
        if offset >= upper_bound.min(offsets.log_end) {
            return Ok(Bytes::new());
        }
        self.segment_for(offset)
            .read(offset, max_bytes, upper_bound)
    }

    fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        for seg in &self.segments {
            if seg.max_timestamp >= timestamp
                && let Some(found) = seg.find_timestamp(timestamp)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn truncate_suffix(&mut self, offset: i64) -> Result<()> {
        let offsets = self.offsets();
        if offset < offsets.log_start || offset > offsets.log_end {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start: offsets.log_start,
                log_end: offsets.log_end,
            });
        }
        while self.segments.len() > 1 && self.active().base_offset >= offset {
            let seg = self.segments.pop().expect("more than one segment");
            seg.delete_files()?;
        }
        let now = self.active().created_ms;
        if self.active().base_offset > offset {
            // Only when the log start itself is cut: start over at `offset`.
            let seg = self.segments.pop().expect("one segment");
            seg.delete_files()?;
            self.segments.push(Segment::create(
                &self.dir,
                offset,
                self.options.index_interval_bytes,
                now,
            )?);
        } else {
            self.active_mut().truncate_to(offset)?;
        }
        self.flushed = self.flushed.min(offset);
        Ok(())
    }

    fn delete_segments_before(&mut self, offset: i64) -> Result<()> {
        while self.segments.len() > 1 && self.segments[0].next_offset <= offset {
            let seg = self.segments.remove(0);
            seg.delete_files()?;
            tracing::info!(dir = %self.dir.display(), base_offset = seg.base_offset, next_offset = seg.next_offset,
                bytes = seg.size, "deleted segment");
        }
        Ok(())
    }

    fn offsets(&self) -> LogOffsets {
        let active = self.active();
        LogOffsets {
            log_start: self.segments[0].base_offset,
            log_end: active.next_offset,
            flushed: self.flushed,
            size_bytes: self.segments.iter().map(|s| s.size).sum(),
            segments: self.segments.len() as u32,
        }
    }

    fn segments(&self) -> Vec<SegmentInfo> {
        let last = self.segments.len() - 1;
        self.segments
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentInfo {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size_bytes: s.size,
                max_timestamp: s.max_timestamp,
                active: i == last,
            })
            .collect()
    }

    fn flush_target(&mut self) -> FlushTarget {
        let mut files = std::mem::take(&mut self.unsynced);
        files.push(self.active().file());
        FlushTarget {
            files,
            end_offset: self.active().next_offset,
        }
    }

    fn mark_flushed(&mut self, end_offset: i64) {
        self.flushed = self.flushed.max(end_offset);
    }

    fn close(&mut self) -> Result<()> {
        self.flush()?;
        self.active().write_indexes()?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_MARKER);
        let f = File::create(&marker).map_err(StorageError::io("create", &marker))?;
        f.sync_all().map_err(StorageError::io("fsync", &marker))?;
        let dir = File::open(&self.dir).map_err(StorageError::io("open", &self.dir))?;
        dir.sync_all()
            .map_err(StorageError::io("fsync", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use sluice_proto::RecordBatchBuilder;
    use sluice_proto::batch::Compression;

    fn batch(ts: i64, n: usize, size: usize) -> BytesMut {
        let mut b = RecordBatchBuilder::new(Compression::None);
        for i in 0..n {
            b.append(
                ts + i as i64,
                Some(format!("k{i}").as_bytes()),
                &vec![b'v'; size],
                &[],
            );
        }
        BytesMut::from(&b.build()[..])
    }

    fn opts(segment_bytes: u64) -> LogOptions {
        LogOptions {
            segment_bytes,
            segment_ms: i64::MAX,
            index_interval_bytes: 256,
        }
    }

    fn offsets_in(bytes: Bytes) -> Vec<i64> {
        batch::split_batches(bytes)
            .flat_map(|b| {
                let (_, recs) = batch::decode(&b.unwrap(), 1 << 20).unwrap();
                recs.into_iter().map(|r| r.offset)
            })
            .collect()
    }

    /// The batch listing a Raft log rebuilds at open: the same as reading header by header,
    /// from saved `.entries` files for closed segments after the first listing; a damaged
    /// or outdated file is not trusted; a truncated segment loses its file.
    #[test]
    fn batch_bases_come_from_saved_lists_that_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), opts(3000), 0).unwrap();
        for i in 0..200 {
            // Batches of 1 to 3 records, some large enough to span the scan's reads.
            let size = if i % 50 == 7 { 5000 } else { 40 };
            log.append(&mut batch(i, 1 + (i as usize % 3), size), 0, 0)
                .unwrap();
        }
        let mut expected = Vec::new();
        log.scan_headers(0, &mut |h| expected.push(h.base_offset))
            .unwrap();
        assert!(log.offsets().segments > 5);
        assert_eq!(log.batch_bases(0).unwrap(), expected);
        let saved = |dir: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "entries"))
                .collect();
            v.sort();
            v
        };
        let files = saved(dir.path());
        assert_eq!(
            files.len(),
            log.offsets().segments as usize - 1,
            "one list per closed segment"
        );
        // From the middle of the log.
        let from = expected[77];
        assert_eq!(log.batch_bases(from).unwrap(), expected[77..].to_vec());

        // A damaged list is not trusted (and the answer is still right).
        let mut data = std::fs::read(&files[1]).unwrap();
        let n = data.len();
        data[n - 3] ^= 0x40;
        std::fs::write(&files[1], &data).unwrap();
        assert_eq!(log.batch_bases(0).unwrap(), expected);
        // Nor one describing another size of its segment.
        let first = &files[0];
        let mut data = std::fs::read(first).unwrap();
        data[8] ^= 1;
        std::fs::write(first, &data).unwrap();
        assert_eq!(log.batch_bases(0).unwrap(), expected);
        log.close().unwrap();
        let log = SegmentLog::open(dir.path(), opts(3000), 0).unwrap();
        assert_eq!(log.batch_bases(0).unwrap(), expected);

        // Truncating into a closed segment removes its list.
        let mut log = log;
        let cut = expected[40];
        log.truncate_suffix(cut).unwrap();
        assert_eq!(log.batch_bases(0).unwrap(), expected[..40].to_vec());
        for i in 0..5 {
            log.append(&mut batch(i, 2, 40), 0, 0).unwrap();
        }
        let mut now = Vec::new();
        log.scan_headers(0, &mut |h| now.push(h.base_offset))
            .unwrap();
        assert_eq!(log.batch_bases(0).unwrap(), now);
    }

    #[test]
    fn append_read_roll_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), opts(2000), 0).unwrap();
        for i in 0..50 {
            let info = log.append(&mut batch(1000 + i * 10, 3, 50), 0, 0).unwrap();
            assert_eq!(info.base_offset, i * 3);
        }
        let o = log.offsets();
        assert_eq!((o.log_start, o.log_end), (0, 150));
        assert!(
            o.segments > 5,
            "expected rolls, got {} segments",
            o.segments
        );
        // A read from the middle of a batch starts at that batch and stays in one segment.
        let got = offsets_in(log.read(31, 1 << 20, 150).unwrap());
        assert_eq!(got[0], 30);
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
        // The upper bound hides what is above it.
        assert_eq!(offsets_in(log.read(3, 1 << 20, 6).unwrap()), vec![3, 4, 5]);
        assert!(log.read(150, 100, 150).unwrap().is_empty());
        assert!(matches!(
            log.read(151, 100, 150),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            log.offset_for_timestamp(1000 + 250).unwrap(),
            Some((75, 1250))
        );
        assert_eq!(log.offset_for_timestamp(1251).unwrap(), Some((76, 1251)));
        assert_eq!(log.offset_for_timestamp(99_999).unwrap(), None);
        log.close().unwrap();

        let log = SegmentLog::open(dir.path(), opts(2000), 0).unwrap();
        assert_eq!(log.offsets().log_end, 150);
        assert_eq!(
            offsets_in(log.read(148, 1 << 20, 150).unwrap()),
            vec![147, 148, 149]
        );
        assert_eq!(
            log.offset_for_timestamp(1000 + 250).unwrap(),
            Some((75, 1250))
        );
    }

    /// A clean reopen finds the active segment's max timestamp (what retention.ms and
    /// timestamp lookups go by) from its indexes and a bounded read, whatever the
    /// timestamps did: a maximum reached just after the last time index entry, then never
    /// passed again, still counts.
    #[test]
    fn a_reopen_keeps_the_max_timestamp_of_timestamps_that_stop_rising() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), opts(1 << 20), 0).unwrap();
        log.append(&mut batch(1000, 1, 100), 0, 0).unwrap();
        // Within index_interval_bytes (256) of the first batch: no time index entry of its own.
        log.append(&mut batch(5000, 1, 20), 0, 0).unwrap();
        for _ in 0..100 {
            log.append(&mut batch(10, 1, 100), 0, 0).unwrap();
        }
        let before = log.segments()[0].max_timestamp;
        assert_eq!(before, 5000);
        log.close().unwrap();
        let log = SegmentLog::open(dir.path(), opts(1 << 20), 0).unwrap();
        assert_eq!(log.segments()[0].max_timestamp, before);
        assert_eq!(log.offsets().log_end, 102);
        assert_eq!(log.offset_for_timestamp(4000).unwrap(), Some((1, 5000)));
    }

    #[test]
    fn crash_recovery_cuts_a_torn_tail_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), opts(1 << 20), 0).unwrap();
        for i in 0..10 {
            log.append(&mut batch(i, 2, 100), 0, 0).unwrap();
        }
        let len = std::fs::metadata(dir.path().join(log_file_name(0)))
            .unwrap()
            .len();
        drop(log); // no close: a crash
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(log_file_name(0)))
            .unwrap();
        f.set_len(len - 7).unwrap();
        let mut log = SegmentLog::open(dir.path(), opts(1 << 20), 0).unwrap();
        assert_eq!(log.offsets().log_end, 18);
        assert_eq!(offsets_in(log.read(0, 1 << 20, 18).unwrap()).len(), 18);
        assert_eq!(
            log.append(&mut batch(0, 1, 1), 0, 0).unwrap().base_offset,
            18
        );
    }

    #[test]
    fn a_flipped_byte_is_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), opts(1 << 20), 0).unwrap();
        let mut sizes = Vec::new();
        for i in 0..5 {
            let mut b = batch(i, 2, 100);
            sizes.push(b.len() as u64);
            log.append(&mut b, 0, 0).unwrap();
        }
        drop(log);
        let path = dir.path().join(log_file_name(0));
        let mut data = std::fs::read(&path).unwrap();
        let third = (sizes[0] + sizes[1]) as usize;
        data[third + 100] ^= 0x40;
        std::fs::write(&path, &data).unwrap();
        let log = SegmentLog::open(dir.path(), opts(1 << 20), 0).unwrap();
        assert_eq!(
            log.offsets().log_end,
            10,
            "corruption in the middle must not truncate"
        );
        assert_eq!(
            offsets_in(log.read(0, 1 << 20, 10).unwrap()),
            vec![0, 1, 2, 3]
        );
        match log.read(4, 1 << 20, 10) {
            Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, 4),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(
            offsets_in(log.read(6, 1 << 20, 10).unwrap()),
            vec![6, 7, 8, 9]
        );
    }

    #[test]
    fn truncate_suffix_and_delete_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), opts(1500), 0).unwrap();
        for i in 0..30 {
            log.append(&mut batch(i * 100, 2, 60), 0, 0).unwrap();
        }
        let before = log.offsets();
        log.truncate_suffix(40).unwrap();
        assert_eq!(log.offsets().log_end, 40);
        assert!(matches!(
            log.truncate_suffix(39),
            Err(StorageError::NotBatchBoundary(39))
        ));
        assert_eq!(
            log.append(&mut batch(5, 1, 1), 0, 0).unwrap().base_offset,
            40
        );
        assert!(log.offsets().segments < before.segments);
        let segs = log.segments();
        let cut = segs[2].base_offset;
        log.delete_segments_before(cut).unwrap();
        assert_eq!(log.offsets().log_start, cut);
        assert!(
            matches!(log.read(0, 100, 41), Err(StorageError::OffsetOutOfRange { log_start, .. }) if log_start == cut)
        );
        // A segment's max timestamp survives truncation correctly.
        assert_eq!(log.offset_for_timestamp(1900).unwrap(), Some((38, 1900)));
        assert_eq!(log.offset_for_timestamp(1901).unwrap(), Some((39, 1901)));
        assert_eq!(log.offset_for_timestamp(1902).unwrap(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            records: usize,
            size: usize,
        },
        /// Truncate at the start of the n-th batch from the end.
        Truncate(usize),
        Reopen {
            clean: bool,
        },
        Roll,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (1usize..6, 0usize..300).prop_map(|(records, size)| Op::Append { records, size }),
            1 => (0usize..4).prop_map(Op::Truncate),
            1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
            1 => Just(Op::Roll),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The log against a model (a list of batches): after any sequence of appends,
        /// truncations, rolls, clean and unclean reopens, every batch reads back at its
        /// offset, byte for byte, and offsets stay dense.
        #[test]
        fn behaves_like_a_list_of_batches(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut options = opts(1500);
            let mut log = SegmentLog::open(dir.path(), options, 0).unwrap();
            let mut model: Vec<(i64, Vec<u8>)> = Vec::new();
            let mut next = 0i64;
            for op in ops {
                match op {
                    Op::Append { records, size } => {
                        let mut b = batch(next, records, size);
                        let info = log.append(&mut b, 0, 0).unwrap();
                        proptest::prop_assert_eq!(info.base_offset, next);
                        model.push((next, b.to_vec()));
                        next += records as i64;
                    }
                    Op::Truncate(back) if back < model.len() => {
                        let at = model.len() - 1 - back;
                        let offset = model[at].0;
                        log.truncate_suffix(offset).unwrap();
                        model.truncate(at);
                        next = offset;
                    }
                    Op::Truncate(_) => {}
                    Op::Reopen { clean } => {
                        if clean {
                            log.close().unwrap();
                        }
                        drop(log);
                        log = SegmentLog::open(dir.path(), options, 0).unwrap();
                    }
                    Op::Roll => {
                        options.segment_bytes = if options.segment_bytes == 1500 { 600 } else { 1500 };
                        log.set_options(options);
                    }
                }
                proptest::prop_assert_eq!(log.offsets().log_end, next);
            }
            for (offset, bytes) in &model {
                let got = log.read(*offset, 1, next).unwrap();
                proptest::prop_assert_eq!(&got[..], &bytes[..], "batch at offset {}", offset);
            }
        }
    }
}
