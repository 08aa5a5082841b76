//! Byte-level framing shared by every on-disk format: little-endian fixed integers,
//! LEB128 varints, masked crc32c, and a bounds-checked [`Decoder`].
//!
//! Decoders here never index a slice without checking its length and never trust a length
//! read from disk before comparing it with the bytes that remain, so that hostile input
//! produces a [`DecodeError`], never a panic or an outsized allocation.

use std::fmt;

/// Added to a rotated crc32c so that a crc stored inside checksummed data does not
/// checksum to a fixed point (the LevelDB/RocksDB mask).
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// crc32c (Castagnoli) of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Extends a crc32c with more data.
#[inline]
pub fn crc32c_extend(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// Masks a crc before it is stored: rotated right by 15 bits, plus `0xa282ead8`.
#[inline]
pub fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

/// Inverse of [`mask_crc`].
#[inline]
pub fn unmask_crc(masked: u32) -> u32 {
    masked.wrapping_sub(CRC_MASK_DELTA).rotate_left(15)
}

/// Appends `v` as 4 little-endian bytes.
#[inline]
pub fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends `v` as 8 little-endian bytes.
#[inline]
pub fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Longest varint [`put_varint`] writes.
pub const MAX_VARINT_LEN: usize = 10;

/// `v` as an unsigned LEB128 varint: the bytes and how many of them are used.
#[inline]
pub fn encode_varint(mut v: u64) -> ([u8; MAX_VARINT_LEN], usize) {
    let mut out = [0u8; MAX_VARINT_LEN];
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    (out, n + 1)
}

/// Appends `v` as an unsigned LEB128 varint (at most 10 bytes).
#[inline]
pub fn put_varint(buf: &mut Vec<u8>, v: u64) {
    let (bytes, len) = encode_varint(v);
    buf.extend_from_slice(&bytes[..len]);
}

/// Appends a varint length followed by the bytes.
#[inline]
pub fn put_length_prefixed(buf: &mut Vec<u8>, data: &[u8]) {
    put_varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// Number of bytes [`put_varint`] writes for `v`.
#[inline]
pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Reads a little-endian u32 at `pos`, if the bytes are there.
#[inline]
pub fn get_u32(data: &[u8], pos: usize) -> Option<u32> {
    let end = pos.checked_add(4)?;
    let b = data.get(pos..end)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a little-endian u64 at `pos`, if the bytes are there.
#[inline]
pub fn get_u64(data: &[u8], pos: usize) -> Option<u64> {
    let end = pos.checked_add(8)?;
    let b = data.get(pos..end)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// Decodes a varint at the start of `data`: the value and the bytes it used.
#[inline]
pub fn get_varint(data: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &b) in data.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return None; // would overflow 64 bits
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// What a [`Decoder`] found wrong, with the offset relative to the decoder's base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset (base + position) where decoding failed.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.reason)
    }
}

impl DecodeError {
    /// Turns this into a corruption error naming `path`.
    pub fn into_error(self, path: impl AsRef<std::path::Path>) -> crate::Error {
        crate::Error::corruption(path, self.offset, self.reason)
    }
}

/// A bounds-checked cursor over bytes read from disk.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Decoder<'a> {
    /// A decoder over `data`, whose first byte sits at `base` in its file.
    pub fn new(data: &'a [u8], base: u64) -> Self {
        Decoder { data, pos: 0, base }
    }

    /// Current position as a file offset.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// An error at the current position.
    pub fn error(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.offset(),
            reason: reason.into(),
        }
    }

    /// Consumes `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "{what}: needs {n} bytes, only {} remain",
                self.remaining()
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Consumes one byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, what)?[0])
    }

    /// Consumes a little-endian u32.
    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Consumes a little-endian u64.
    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Consumes a varint.
    pub fn varint(&mut self, what: &str) -> Result<u64, DecodeError> {
        match get_varint(&self.data[self.pos..]) {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(self.error(format!("{what}: bad varint"))),
        }
    }

    /// Consumes a varint that must fit in `usize` and be at most `max`.
    pub fn varint_bounded(&mut self, what: &str, max: u64) -> Result<usize, DecodeError> {
        let at = self.offset();
        let v = self.varint(what)?;
        if v > max {
            return Err(DecodeError {
                offset: at,
                reason: format!("{what}: {v} exceeds the limit {max}"),
            });
        }
        usize::try_from(v).map_err(|_| DecodeError {
            offset: at,
            reason: format!("{what}: {v} does not fit in memory"),
        })
    }

    /// Consumes a varint length (bounded by the bytes remaining) and that many bytes.
    pub fn length_prefixed(&mut self, what: &str) -> Result<&'a [u8], DecodeError> {
        let n = self.varint_bounded(what, self.remaining() as u64)?;
        self.bytes(n, what)
    }

    /// Consumes a varint length and that many bytes of UTF-8 text.
    pub fn length_prefixed_str(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        let at = self.offset();
        let b = self.length_prefixed(what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError {
            offset: at,
            reason: format!("{what} is not UTF-8"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrip_and_limits() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(get_varint(&b), Some((v, b.len())));
        }
        // eleven continuation bytes never decode
        assert_eq!(get_varint(&[0xff; 11]), None);
        // a tenth byte above 1 would overflow
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over), None);
        assert_eq!(get_varint(&[]), None);
    }

    #[test]
    fn crc_mask_roundtrip() {
        let c = crc32c(b"hello");
        assert_ne!(mask_crc(c), c);
        assert_eq!(unmask_crc(mask_crc(c)), c);
    }

    #[test]
    fn decoder_rejects_hostile_lengths() {
        let mut b = Vec::new();
        put_varint(&mut b, 1 << 40);
        b.extend_from_slice(b"abc");
        let mut d = Decoder::new(&b, 100);
        let e = d.length_prefixed("key").unwrap_err();
        assert_eq!(e.offset, 100);
        let mut d = Decoder::new(&[1, 2], 0);
        assert!(d.u32("x").is_err());
        assert_eq!(d.u8("y").unwrap(), 1);
    }
}
