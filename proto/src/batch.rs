//! Record batches: the unit that is appended, replicated, stored and fetched.
//!
//! The layout is Kafka's record batch v2, so the format is well understood and tooling can
//! read it. All integers are big-endian; record fields are zig-zag varints.
//!
//! ```text
//! 0  base_offset        i64   assigned by the broker       (not covered by the CRC)
//! 8  batch_length       i32   bytes after this field        (not covered by the CRC)
//! 12 leader_epoch       i32   set by the broker             (not covered by the CRC)
//! 16 magic              i8    = 2
//! 17 crc                u32   CRC-32C of bytes 21..end
//! 21 attributes         i16   bits 0-2 compression, bit 3 timestamp type
//! 23 last_offset_delta  i32
//! 27 base_timestamp     i64
//! 35 max_timestamp      i64
//! 43 producer_id        i64
//! 51 producer_epoch     i16
//! 53 base_sequence      i32
//! 57 record_count       i32
//! 61 records            (compressed as a whole when compression is set)
//! ```

use std::io::Read;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// The only batch format version Sluice reads and writes.
pub const MAGIC: i8 = 2;
/// Bytes before `batch_length` counts: base_offset and batch_length itself.
pub const LOG_OVERHEAD: usize = 12;
/// Where the CRC-covered part starts.
const CRC_START: usize = 21;
/// Attribute bit of a control batch (Kafka's bit 5).
pub const CONTROL_ATTRIBUTE: i16 = 0x20;
/// Default bound on one batch's decompressed records, against decompression bombs.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// Why a batch cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("batch has magic {0}, only {MAGIC} is supported")]
    BadMagic(i8),
    #[error("batch length {0} is invalid")]
    BadLength(i64),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch is malformed: {0}")]
    Malformed(String),
    #[error(
        "batch uses compression codec {0}, which Sluice does not support (supported: none, lz4, zstd)"
    )]
    UnsupportedCompression(u8),
    #[error("batch records cannot be decompressed: {0}")]
    Decompress(String),
}

impl BatchError {
    /// True for errors that mean the bytes were damaged rather than built wrong.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            BatchError::CrcMismatch { .. }
                | BatchError::Truncated { .. }
                | BatchError::BadLength(_)
        )
    }
}

/// Compression codec of a batch's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec id in the batch attributes (Kafka's numbering).
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec for an attribute id.
    pub fn from_id(id: u8) -> Result<Self, BatchError> {
        match id {
            0 => Ok(Compression::None),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnsupportedCompression(other)),
        }
    }

    /// The `compression.type` name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses `none`/`uncompressed`, `lz4` or `zstd`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" | "uncompressed" => Some(Compression::None),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Lz4 => {
                let mut enc =
                    lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len() / 2));
                std::io::Write::write_all(&mut enc, data).expect("writing into a Vec cannot fail");
                enc.finish()
                    .expect("finishing an lz4 frame into a Vec cannot fail")
            }
            Compression::Zstd => {
                zstd::bulk::compress(data, 3).expect("zstd compression into memory cannot fail")
            }
        }
    }

    fn decompress(self, data: &[u8], limit: usize) -> Result<Bytes, BatchError> {
        let out = match self {
            Compression::None => return Ok(Bytes::copy_from_slice(data)),
            Compression::Lz4 => {
                let mut out = Vec::new();
                lz4_flex::frame::FrameDecoder::new(data)
                    .take(limit as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| BatchError::Decompress(format!("lz4: {e}")))?;
                out
            }
            Compression::Zstd => {
                let mut out = Vec::new();
                zstd::stream::read::Decoder::new(data)
                    .map_err(|e| BatchError::Decompress(format!("zstd: {e}")))?
                    .take(limit as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| BatchError::Decompress(format!("zstd: {e}")))?;
                out
            }
        };
        if out.len() > limit {
            return Err(BatchError::Decompress(format!(
                "records decompress to more than {limit} bytes"
            )));
        }
        Ok(Bytes::from(out))
    }
}

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf` and checks the fields that locate the batch
    /// (length, magic). Does not check the CRC.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        let mut b = &buf[..HEADER_LEN];
        let header = BatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            record_count: b.get_i32(),
        };
        if (header.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::BadLength(header.batch_length as i64));
        }
        if header.magic != MAGIC {
            return Err(BatchError::BadMagic(header.magic));
        }
        Ok(header)
    }

    /// Bytes of the whole batch, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// The offset after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Whether this is a control batch (Raft entries that are not records); consumers skip
    /// control batches, whose offsets they never see.
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_ATTRIBUTE != 0
    }

    /// The records' compression codec.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_id((self.attributes & 0x07) as u8)
    }
}

/// CRC-32C of the part of `batch` the checksum covers.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Parses the header of `batch`, which must be exactly one batch, and checks its length and
/// CRC. This is what the broker does on append and what readers do before trusting bytes.
pub fn verify(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_len() != batch.len() {
        return Err(BatchError::Malformed(format!(
            "batch_length says {} bytes, the batch has {}",
            header.total_len(),
            batch.len()
        )));
    }
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.record_count < 1 || header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::Malformed(format!(
            "record_count {} does not match last_offset_delta {}",
            header.record_count, header.last_offset_delta
        )));
    }
    header.compression()?;
    Ok(header)
}

/// Writes the broker-assigned fields, which the CRC does not cover.
pub fn set_base_offset_and_epoch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Rewrites a sealed batch's producer id, epoch and base sequence, and its CRC (which
/// covers them). A producer renumbers batches this way when they must be sent again under
/// a new epoch.
pub fn set_producer(batch: &mut [u8], fields: ProducerFields) {
    batch[43..51].copy_from_slice(&fields.producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&fields.producer_epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&fields.base_sequence.to_be_bytes());
    let crc = compute_crc(batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Builds a control batch: one uncompressed record with `key` and `value`.
pub fn control_batch(key: &[u8], value: &[u8]) -> BytesMut {
    let mut b = RecordBatchBuilder::new(Compression::None);
    b.append(-1, Some(key), value, &[]);
    let mut out = BytesMut::from(&b.build()[..]);
    let attributes = i16::from_be_bytes([out[21], out[22]]) | CONTROL_ATTRIBUTE;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = compute_crc(&out);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Splits concatenated batches. Stops with an error at the first batch that is incomplete
/// or whose header is invalid; does not check CRCs.
pub fn split_batches(mut buf: Bytes) -> impl Iterator<Item = Result<Bytes, BatchError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let result = BatchHeader::parse(&buf).and_then(|h| {
            if h.total_len() > buf.len() {
                Err(BatchError::Truncated {
                    needed: h.total_len(),
                    available: buf.len(),
                })
            } else {
                Ok(buf.split_to(h.total_len()))
            }
        });
        if result.is_err() {
            buf.clear();
        }
        Some(result)
    })
}

/// A record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

/// Verifies `batch` (one whole batch) and decodes its records. Slices of `batch` are shared,
/// not copied, when the batch is uncompressed.
pub fn decode(
    batch: &Bytes,
    max_decompressed: usize,
) -> Result<(BatchHeader, Vec<Record>), BatchError> {
    let header = verify(batch)?;
    let body = match header.compression()? {
        Compression::None => batch.slice(HEADER_LEN..),
        c => c.decompress(&batch[HEADER_LEN..], max_decompressed)?,
    };
    let mut records = Vec::with_capacity((header.record_count as usize).min(body.len()));
    let mut pos = 0;
    for i in 0..header.record_count {
        let raw = parse_record(&body, &mut pos)?;
        if raw.offset_delta != i {
            return Err(BatchError::Malformed(format!(
                "record {i} has offset delta {}",
                raw.offset_delta
            )));
        }
        records.push(Record {
            offset: header.base_offset + i as i64,
            timestamp: header.base_timestamp + raw.timestamp_delta,
            key: raw.key.map(|r| body.slice(r)),
            value: raw.value.map(|r| body.slice(r)).unwrap_or_default(),
            headers: raw
                .headers
                .into_iter()
                .map(|(k, v)| {
                    Ok(Header {
                        key: String::from_utf8(body[k].to_vec()).map_err(|_| {
                            BatchError::Malformed("record header key is not UTF-8".into())
                        })?,
                        value: v.map(|r| body.slice(r)),
                    })
                })
                .collect::<Result<_, BatchError>>()?,
        });
    }
    if pos != body.len() {
        return Err(BatchError::Malformed(format!(
            "{} bytes left after the last record",
            body.len() - pos
        )));
    }
    Ok((header, records))
}

/// Checks the record structure of an uncompressed batch without allocating: what the broker
/// runs before it stores a batch. Compressed batches are checked by their CRC only.
pub fn validate_records(batch: &[u8]) -> Result<(), BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.compression()? != Compression::None {
        return Ok(());
    }
    let body = &batch[HEADER_LEN..];
    let mut pos = 0;
    for i in 0..header.record_count {
        let raw = parse_record(body, &mut pos)?;
        if raw.offset_delta != i {
            return Err(BatchError::Malformed(format!(
                "record {i} has offset delta {}",
                raw.offset_delta
            )));
        }
    }
    if pos != body.len() {
        return Err(BatchError::Malformed(format!(
            "{} bytes left after the last record",
            body.len() - pos
        )));
    }
    Ok(())
}

type Span = std::ops::Range<usize>;

struct RawRecord {
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<Span>,
    value: Option<Span>,
    headers: Vec<(Span, Option<Span>)>,
}

fn parse_record(buf: &[u8], pos: &mut usize) -> Result<RawRecord, BatchError> {
    let len = read_varint(buf, pos)?;
    if len < 0 || *pos + len as usize > buf.len() {
        return Err(BatchError::Malformed(format!(
            "record length {len} exceeds the batch"
        )));
    }
    let end = *pos + len as usize;
    let rec = &buf[..end];
    let _attributes = read_u8(rec, pos)?;
    let timestamp_delta = read_varlong(rec, pos)?;
    let offset_delta = read_varint(rec, pos)?;
    let key = read_span(rec, pos)?;
    let value = read_span(rec, pos)?;
    let header_count = read_varint(rec, pos)?;
    if header_count < 0 || header_count as usize > rec.len() {
        return Err(BatchError::Malformed(format!(
            "header count {header_count} is invalid"
        )));
    }
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let k = read_span(rec, pos)?
            .ok_or_else(|| BatchError::Malformed("record header key is null".into()))?;
        headers.push((k, read_span(rec, pos)?));
    }
    if *pos != end {
        return Err(BatchError::Malformed(
            "record length does not match its fields".into(),
        ));
    }
    Ok(RawRecord {
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers,
    })
}

fn read_u8(buf: &[u8], pos: &mut usize) -> Result<u8, BatchError> {
    let b = *buf
        .get(*pos)
        .ok_or_else(|| BatchError::Malformed("record is truncated".into()))?;
    *pos += 1;
    Ok(b)
}

fn read_span(buf: &[u8], pos: &mut usize) -> Result<Option<Span>, BatchError> {
    let len = read_varint(buf, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let start = *pos;
    let end = start
        .checked_add(len as usize)
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| BatchError::Malformed(format!("field length {len} exceeds the record")))?;
    *pos = end;
    Ok(Some(start..end))
}

fn read_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = read_u8(buf, pos)?;
        value |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(BatchError::Malformed(
        "varint is longer than 10 bytes".into(),
    ))
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<i32, BatchError> {
    let v = read_varlong(buf, pos)?;
    i32::try_from(v).map_err(|_| BatchError::Malformed(format!("varint {v} overflows i32")))
}

fn put_varlong(out: &mut impl BufMut, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.put_u8((u as u8) | 0x80);
        u >>= 7;
    }
    out.put_u8(u as u8);
}

fn varlong_len(v: i64) -> usize {
    let u = ((v << 1) ^ (v >> 63)) as u64;
    (64 - u.leading_zeros() as usize).max(1).div_ceil(7)
}

fn bytes_field_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varlong_len(-1),
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn put_bytes_field(out: &mut impl BufMut, b: Option<&[u8]>) {
    match b {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

/// Builds one batch record by record; [`RecordBatchBuilder::build`] seals it with its CRC.
#[derive(Debug)]
pub struct RecordBatchBuilder {
    records: BytesMut,
    compression: Compression,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
    producer: ProducerFields,
}

/// The idempotent-producer fields of a batch header: who wrote it and its first record's
/// sequence number. Brokers use them to drop a retried batch they already hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerFields {
    /// A batch from a producer without idempotence.
    pub const NONE: ProducerFields = ProducerFields {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

impl BatchHeader {
    /// The producer fields, or `None` if the batch is not from an idempotent producer.
    pub fn producer(&self) -> Option<ProducerFields> {
        (self.producer_id >= 0).then_some(ProducerFields {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
        })
    }

    /// The sequence number of the batch's last record (sequences wrap at `i32::MAX`, as in
    /// Kafka).
    pub fn last_sequence(&self) -> i32 {
        sequence_plus(self.base_sequence, self.last_offset_delta)
    }
}

/// `sequence` advanced by `n` records: producer sequences wrap from `i32::MAX` to 0, as in
/// Kafka.
pub fn sequence_plus(sequence: i32, n: i32) -> i32 {
    let next = sequence as i64 + n as i64;
    if next > i32::MAX as i64 {
        (next - i32::MAX as i64 - 1) as i32
    } else {
        next as i32
    }
}

impl RecordBatchBuilder {
    /// An empty batch whose records will be compressed with `compression`.
    pub fn new(compression: Compression) -> Self {
        RecordBatchBuilder {
            records: BytesMut::new(),
            compression,
            base_timestamp: 0,
            max_timestamp: -1,
            count: 0,
            producer: ProducerFields::NONE,
        }
    }

    /// Marks the batch as written by an idempotent producer.
    pub fn producer(&mut self, fields: ProducerFields) -> &mut Self {
        self.producer = fields;
        self
    }

    /// Records appended so far.
    pub fn record_count(&self) -> i32 {
        self.count
    }

    /// The uncompressed size of the batch so far, header included.
    pub fn size(&self) -> usize {
        HEADER_LEN + self.records.len()
    }

    /// The encoded size of one more record, for deciding whether it still fits.
    pub fn record_size(
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(String, Option<Bytes>)],
    ) -> usize {
        let body = Self::body_len(timestamp_delta, 0, key, value, headers);
        varlong_len(body as i64) + body
    }

    fn body_len(
        ts_delta: i64,
        offset_delta: i32,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(String, Option<Bytes>)],
    ) -> usize {
        1 + varlong_len(ts_delta)
            + varlong_len(offset_delta as i64)
            + bytes_field_len(key)
            + bytes_field_len(Some(value))
            + varlong_len(headers.len() as i64)
            + headers
                .iter()
                .map(|(k, v)| bytes_field_len(Some(k.as_bytes())) + bytes_field_len(v.as_deref()))
                .sum::<usize>()
    }

    /// Appends a record with a timestamp in ms since the epoch.
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(String, Option<Bytes>)],
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let ts_delta = timestamp - self.base_timestamp;
        let body = Self::body_len(ts_delta, self.count, key, value, headers);
        let out = &mut self.records;
        out.reserve(body + 5);
        put_varlong(out, body as i64);
        out.put_u8(0);
        put_varlong(out, ts_delta);
        put_varlong(out, self.count as i64);
        put_bytes_field(out, key);
        put_bytes_field(out, Some(value));
        put_varlong(out, headers.len() as i64);
        for (k, v) in headers {
            put_bytes_field(out, Some(k.as_bytes()));
            put_bytes_field(out, v.as_deref());
        }
        self.count += 1;
    }

    /// Seals the batch: compresses the records and writes the header and CRC. The base
    /// offset is 0 until the broker assigns one.
    pub fn build(self) -> Bytes {
        assert!(self.count > 0, "a batch holds at least one record");
        let compressed;
        let records: &[u8] = if self.compression == Compression::None {
            &self.records
        } else {
            compressed = self.compression.compress(&self.records);
            &compressed
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + records.len());
        out.put_i64(0);
        out.put_i32((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32);
        out.put_i32(-1);
        out.put_i8(MAGIC);
        out.put_u32(0);
        out.put_i16(self.compression.id() as i16);
        out.put_i32(self.count - 1);
        out.put_i64(self.base_timestamp);
        out.put_i64(self.max_timestamp);
        out.put_i64(self.producer.producer_id);
        out.put_i16(self.producer.producer_epoch);
        out.put_i32(self.producer.base_sequence);
        out.put_i32(self.count);
        out.put_slice(records);
        let crc = compute_crc(&out);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(compression: Compression) -> Bytes {
        let mut b = RecordBatchBuilder::new(compression);
        b.append(1_000, Some(b"k1"), b"v1", &[]);
        b.append(
            1_005,
            None,
            b"",
            &[
                ("h".into(), Some(Bytes::from_static(b"x"))),
                ("n".into(), None),
            ],
        );
        b.append(999, Some(b""), &[7u8; 300], &[]);
        b.build()
    }

    #[test]
    fn round_trip_every_codec() {
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let mut batch = BytesMut::from(&sample(c)[..]);
            set_base_offset_and_epoch(&mut batch, 40, 3);
            let batch = batch.freeze();
            let (h, recs) = decode(&batch, DEFAULT_MAX_DECOMPRESSED).unwrap();
            assert_eq!(h.compression().unwrap(), c);
            assert_eq!((h.base_offset, h.leader_epoch, h.record_count), (40, 3, 3));
            assert_eq!(h.max_timestamp, 1_005);
            assert_eq!(recs[0].offset, 40);
            assert_eq!(recs[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(recs[1].key, None);
            assert_eq!(recs[1].timestamp, 1_005);
            assert_eq!(recs[1].headers[0].value.as_deref(), Some(&b"x"[..]));
            assert_eq!(recs[1].headers[1].value, None);
            assert_eq!(recs[2].timestamp, 999);
            assert_eq!(recs[2].value.len(), 300);
            validate_records(&batch).unwrap();
        }
    }

    #[test]
    fn sequences_wrap_to_zero_after_i32_max() {
        assert_eq!(sequence_plus(5, 3), 8);
        assert_eq!(sequence_plus(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(sequence_plus(i32::MAX - 1, 2), 0);
        assert_eq!(sequence_plus(i32::MAX, 10), 9);
    }

    #[test]
    fn renumbering_a_batch_keeps_it_valid() {
        for c in [Compression::None, Compression::Zstd] {
            let mut batch = BytesMut::from(&sample(c)[..]);
            let fields = ProducerFields {
                producer_id: 77,
                producer_epoch: 3,
                base_sequence: 1_000,
            };
            set_producer(&mut batch, fields);
            let h = verify(&batch).expect("the CRC covers the new fields");
            assert_eq!(h.producer(), Some(fields));
            let (_, recs) = decode(&batch.freeze(), DEFAULT_MAX_DECOMPRESSED).unwrap();
            assert_eq!(recs.len(), 3);
            assert_eq!(recs[2].value.len(), 300);
        }
    }

    #[test]
    fn every_flipped_byte_in_the_covered_part_is_detected() {
        let batch = sample(Compression::None);
        for i in CRC_START..batch.len() {
            let mut bad = batch.to_vec();
            bad[i] ^= 0x01;
            assert!(verify(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncation_is_reported() {
        let batch = sample(Compression::None);
        let mut two = BytesMut::from(&batch[..]);
        two.extend_from_slice(&batch[..batch.len() - 5]);
        let parts: Vec<_> = split_batches(two.freeze()).collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].is_ok());
        assert!(matches!(parts[1], Err(BatchError::Truncated { .. })));
    }

    #[test]
    fn decompression_is_bounded() {
        let mut b = RecordBatchBuilder::new(Compression::Zstd);
        b.append(0, None, &vec![0u8; 1 << 20], &[]);
        let err = decode(&b.build(), 1000).unwrap_err();
        assert!(matches!(err, BatchError::Decompress(_)), "{err}");
    }

    proptest! {
        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(read_varlong(&buf, &mut pos).unwrap(), v);
        }

        #[test]
        fn records_round_trip(recs in proptest::collection::vec(
            (any::<i64>().prop_map(|t| t >> 20), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), proptest::collection::vec(any::<u8>(), 0..200)),
            1..20)) {
            let mut b = RecordBatchBuilder::new(Compression::None);
            for (ts, k, v) in &recs {
                b.append(*ts, k.as_deref(), v, &[]);
            }
            let size = b.size();
            let batch = b.build();
            prop_assert_eq!(batch.len(), size);
            let (_, out) = decode(&batch, DEFAULT_MAX_DECOMPRESSED).unwrap();
            for ((ts, k, v), r) in recs.iter().zip(&out) {
                prop_assert_eq!(r.timestamp, *ts);
                prop_assert_eq!(r.key.as_deref(), k.as_deref());
                prop_assert_eq!(&r.value[..], &v[..]);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let b = Bytes::from(bytes);
            let _ = decode(&b, 4096);
            let _ = validate_records(&b);
            let _ = split_batches(b).count();
        }
    }
}
