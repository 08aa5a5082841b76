//! Write batches: a group of puts and deletes applied atomically, and their encoding, which
//! is also the payload of a WAL record (see `format-spec/wal.md`, "Write batch payload").
//!
//! ```text
//! batch   := first_seq: u64 LE | count: u32 LE | op * count
//! op      := 0x01 (put)    | varint key_len | key | varint value_len | value
//!          | 0x00 (delete) | varint key_len | key
//! ```
//! Op `i` gets sequence number `first_seq + i`.

use std::path::Path;

use super::types::{SeqNo, ValueKind};
use crate::codec::{put_length_prefixed, Decoder};
use crate::error::{Error, Result};

/// Largest user key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 256 << 20;
/// Bytes of the batch header (first sequence number and count).
pub const BATCH_HEADER_BYTES: usize = 12;

/// An atomic group of writes. Either all of them become visible (and durable, per the
/// sync mode) or none does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    rep: Vec<u8>,
    count: u32,
}

impl Default for WriteBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch {
            rep: vec![0; BATCH_HEADER_BYTES],
            count: 0,
        }
    }

    /// Adds a put. Keys above [`MAX_KEY_BYTES`] and values above [`MAX_VALUE_BYTES`] are
    /// rejected when the batch is written.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.rep.push(ValueKind::Put as u8);
        put_length_prefixed(&mut self.rep, key.as_ref());
        put_length_prefixed(&mut self.rep, value.as_ref());
        self.count += 1;
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.rep.push(ValueKind::Delete as u8);
        put_length_prefixed(&mut self.rep, key.as_ref());
        self.count += 1;
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Removes every operation.
    pub fn clear(&mut self) {
        self.rep.truncate(BATCH_HEADER_BYTES);
        self.count = 0;
    }

    /// Size of the encoded batch in bytes.
    pub fn encoded_size(&self) -> usize {
        self.rep.len()
    }

    /// Sets the first sequence number and count into the header; returns the encoding.
    pub(crate) fn encode_with_seq(&mut self, first_seq: SeqNo) -> &[u8] {
        self.rep[..8].copy_from_slice(&first_seq.0.to_le_bytes());
        self.rep[8..12].copy_from_slice(&self.count.to_le_bytes());
        &self.rep
    }

    /// Checks the limits on keys and values before the batch is logged.
    pub(crate) fn validate(&self) -> Result<()> {
        for op in BatchOps::new(&self.rep[BATCH_HEADER_BYTES..], self.count, SeqNo(0), 0) {
            let op = op.map_err(|e| Error::InvalidArgument(e.reason))?;
            if op.key.len() > MAX_KEY_BYTES {
                return Err(Error::InvalidArgument(format!(
                    "key of {} bytes exceeds the limit of {MAX_KEY_BYTES}",
                    op.key.len()
                )));
            }
            if op.value.len() > MAX_VALUE_BYTES {
                return Err(Error::InvalidArgument(format!(
                    "value of {} bytes exceeds the limit of {MAX_VALUE_BYTES}",
                    op.value.len()
                )));
            }
        }
        Ok(())
    }

    /// The operations, numbered from `first_seq`.
    pub fn iter(&self, first_seq: SeqNo) -> impl Iterator<Item = BatchOp<'_>> {
        BatchOps::new(&self.rep[BATCH_HEADER_BYTES..], self.count, first_seq, 0)
            .map_while(|r| r.ok())
    }
}

/// One operation of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOp<'a> {
    /// Its sequence number.
    pub seq: SeqNo,
    /// Put or delete.
    pub kind: ValueKind,
    /// The user key.
    pub key: &'a [u8],
    /// The value (empty for a delete).
    pub value: &'a [u8],
}

/// Decodes the operations of a batch body.
struct BatchOps<'a> {
    dec: Decoder<'a>,
    left: u32,
    seq: SeqNo,
    failed: bool,
}

impl<'a> BatchOps<'a> {
    fn new(body: &'a [u8], count: u32, first_seq: SeqNo, base: u64) -> Self {
        BatchOps {
            dec: Decoder::new(body, base),
            left: count,
            seq: first_seq,
            failed: false,
        }
    }
}

impl<'a> Iterator for BatchOps<'a> {
    type Item = std::result::Result<BatchOp<'a>, crate::codec::DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            if !self.dec.is_empty() {
                self.failed = true;
                return Some(Err(self.dec.error("bytes after the last operation")));
            }
            return None;
        }
        let r = (|| {
            let kind_byte = self.dec.u8("operation kind")?;
            let kind = ValueKind::from_u8(kind_byte).ok_or_else(|| {
                self.dec
                    .error(format!("unknown operation kind {kind_byte}"))
            })?;
            let key = self.dec.length_prefixed("key")?;
            let value = match kind {
                ValueKind::Put => self.dec.length_prefixed("value")?,
                ValueKind::Delete => &[][..],
            };
            Ok(BatchOp {
                seq: self.seq,
                kind,
                key,
                value,
            })
        })();
        match r {
            Ok(op) => {
                self.left -= 1;
                self.seq = SeqNo(self.seq.0 + 1);
                Some(Ok(op))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// A batch decoded from a WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBatch<'a> {
    /// Sequence number of the first operation.
    pub first_seq: SeqNo,
    /// The operations.
    pub ops: Vec<BatchOp<'a>>,
}

/// Decodes a WAL record payload found at `offset` of `path`. Every length is checked
/// against the record; sequence numbers may not pass [`SeqNo::MAX`].
pub fn decode_batch<'a>(payload: &'a [u8], path: &Path, offset: u64) -> Result<DecodedBatch<'a>> {
    let mut dec = Decoder::new(payload, offset);
    let first_seq = dec.u64("batch sequence").map_err(|e| e.into_error(path))?;
    let count = dec.u32("batch count").map_err(|e| e.into_error(path))?;
    // Each operation takes at least 2 bytes (kind + key length).
    if count as usize > dec.remaining() / 2 {
        return Err(Error::corruption(
            path,
            offset + 8,
            format!(
                "batch count {count} is more than its {} bytes can hold",
                dec.remaining()
            ),
        ));
    }
    if first_seq
        .checked_add(u64::from(count))
        .is_none_or(|end| end > SeqNo::MAX.0)
    {
        return Err(Error::corruption(
            path,
            offset,
            format!("batch sequence {first_seq} + {count} passes the largest sequence number"),
        ));
    }
    let body = &payload[BATCH_HEADER_BYTES..];
    let mut ops = Vec::with_capacity(count as usize);
    for op in BatchOps::new(
        body,
        count,
        SeqNo(first_seq),
        offset + BATCH_HEADER_BYTES as u64,
    ) {
        ops.push(op.map_err(|e| e.into_error(path))?);
    }
    Ok(DecodedBatch {
        first_seq: SeqNo(first_seq),
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrips_through_its_encoding() {
        let mut b = WriteBatch::new();
        b.put(b"a", b"1").delete(b"b").put(b"", b"");
        let enc = b.encode_with_seq(SeqNo(10)).to_vec();
        let d = decode_batch(&enc, Path::new("x.wal"), 0).unwrap();
        assert_eq!(d.first_seq, SeqNo(10));
        let ops: Vec<_> = d
            .ops
            .iter()
            .map(|o| (o.seq.0, o.kind, o.key, o.value))
            .collect();
        assert_eq!(
            ops,
            vec![
                (10, ValueKind::Put, &b"a"[..], &b"1"[..]),
                (11, ValueKind::Delete, &b"b"[..], &b""[..]),
                (12, ValueKind::Put, &b""[..], &b""[..]),
            ]
        );
    }

    #[test]
    fn encoding_matches_the_worked_example_in_the_spec() {
        let mut b = WriteBatch::new();
        b.put(b"a", b"1").delete(b"b");
        let want: &[u8] = &[
            0x0a, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0x01, 0x01, 0x61, 0x01, 0x31, 0x00, 0x01,
            0x62,
        ];
        assert_eq!(b.encode_with_seq(SeqNo(10)), want);
    }

    #[test]
    fn hostile_batches_are_corruption_naming_file() {
        let mut b = WriteBatch::new();
        b.put(b"key", b"value");
        let good = b.encode_with_seq(SeqNo(1)).to_vec();
        for cut in 0..good.len() {
            let e = decode_batch(&good[..cut], Path::new("/d/000003.wal"), 100).unwrap_err();
            assert!(e.to_string().contains("000003.wal"), "{e}");
        }
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&huge, Path::new("w"), 0).is_err());
        let mut seq = good.clone();
        seq[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_batch(&seq, Path::new("w"), 0).is_err());
        let mut kind = good;
        kind[12] = 9;
        assert!(decode_batch(&kind, Path::new("w"), 0).is_err());
    }

    #[test]
    fn oversized_key_is_rejected_before_logging() {
        let mut b = WriteBatch::new();
        b.put(vec![0u8; MAX_KEY_BYTES + 1], b"v");
        assert!(matches!(b.validate(), Err(Error::InvalidArgument(_))));
    }
}
