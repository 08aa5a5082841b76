//! Block handles and the fixed-size footer that ends every table.
//!
//! The footer is the only part of a table found without reading anything else: it sits in
//! the last [`FOOTER_LEN`] bytes and points at the filter, properties and index blocks. Its
//! layout is fixed so that a reader can find it from the file length alone; every offset
//! below is derived from the one before it.

use crate::codec::{self, DecodeError, Decoder};

/// The table format version tables are written in: 2, whose filter keeps each key's
/// probes in one 64-byte line.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest table format version still read: 1, whose filter spreads each key's probes
/// over the whole filter. Versions 1 and 2 differ only there.
pub const OLDEST_READABLE_FORMAT_VERSION: u32 = 1;

/// Identifies a tidemark table: the bytes `tidemSST` read as a little-endian u64.
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"tidemSST");

/// Bytes of one fixed-width handle in the footer (offset u64 + size u64).
const FIXED_HANDLE_LEN: usize = 8 + 8;

/// Offset of the filter block handle within the footer.
pub const FILTER_HANDLE_OFFSET: usize = 0;
/// Offset of the properties block handle within the footer.
pub const PROPERTIES_HANDLE_OFFSET: usize = FILTER_HANDLE_OFFSET + FIXED_HANDLE_LEN;
/// Offset of the index block handle within the footer.
pub const INDEX_HANDLE_OFFSET: usize = PROPERTIES_HANDLE_OFFSET + FIXED_HANDLE_LEN;
/// Offset of the format version (u32) within the footer.
pub const VERSION_OFFSET: usize = INDEX_HANDLE_OFFSET + FIXED_HANDLE_LEN;
/// Offset of the magic number (u64) within the footer.
pub const MAGIC_OFFSET: usize = VERSION_OFFSET + 4;
/// Offset of the masked crc32c (u32) over every footer byte before it.
pub const CRC_OFFSET: usize = MAGIC_OFFSET + 8;
/// Total length of the footer in bytes.
pub const FOOTER_LEN: usize = CRC_OFFSET + 4;

// The footer layout is part of format version 1: it must never change size silently.
const _: () = assert!(FOOTER_LEN == 64);

/// Where a block sits in a table: its offset and its stored size, the block trailer
/// excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockHandle {
    /// Offset of the block's first byte in the file.
    pub offset: u64,
    /// Stored (possibly compressed) size of the block, without its trailer.
    pub size: u64,
}

impl BlockHandle {
    /// The longest varint encoding of a handle (two 10-byte varints).
    pub const MAX_VARINT_LEN: usize = 20;

    /// Appends the handle as two varints (offset, size), as index entries store it.
    pub fn encode_varint_to(&self, buf: &mut Vec<u8>) {
        codec::put_varint(buf, self.offset);
        codec::put_varint(buf, self.size);
    }

    /// Decodes a handle written by [`BlockHandle::encode_varint_to`].
    pub fn decode_varint(d: &mut Decoder<'_>) -> Result<BlockHandle, DecodeError> {
        let offset = d.varint("block handle offset")?;
        let size = d.varint("block handle size")?;
        Ok(BlockHandle { offset, size })
    }

    /// Offset one past the block's trailer, or `None` on overflow.
    pub fn end_with_trailer(&self) -> Option<u64> {
        self.offset
            .checked_add(self.size)?
            .checked_add(super::block::BLOCK_TRAILER_LEN as u64)
    }
}

/// The decoded footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// The filter block; `{0, 0}` when the table has no filter.
    pub filter: BlockHandle,
    /// The properties block.
    pub properties: BlockHandle,
    /// The index block.
    pub index: BlockHandle,
    /// The table's format version.
    pub format_version: u32,
}

impl Footer {
    /// True when the footer records a filter block.
    pub fn has_filter(&self) -> bool {
        self.filter != BlockHandle::default()
    }

    /// The footer's bytes, crc included.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut buf = Vec::with_capacity(FOOTER_LEN);
        for h in [self.filter, self.properties, self.index] {
            codec::put_u64(&mut buf, h.offset);
            codec::put_u64(&mut buf, h.size);
        }
        codec::put_u32(&mut buf, self.format_version);
        codec::put_u64(&mut buf, TABLE_MAGIC);
        debug_assert_eq!(buf.len(), CRC_OFFSET);
        let crc = codec::mask_crc(codec::crc32c(&buf));
        codec::put_u32(&mut buf, crc);
        let mut out = [0u8; FOOTER_LEN];
        out.copy_from_slice(&buf);
        out
    }

    /// Decodes the footer from exactly [`FOOTER_LEN`] bytes whose first byte sits at
    /// `base` in the file. Checks, in order: the length, the crc, the magic and the
    /// version (the crc first, so that a damaged footer is reported as damaged).
    #[deny(clippy::indexing_slicing)]
    pub fn decode(bytes: &[u8], base: u64) -> Result<Footer, DecodeError> {
        let mut d = Decoder::new(bytes, base);
        if bytes.len() != FOOTER_LEN {
            return Err(d.error(format!(
                "footer must be {FOOTER_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let covered = d.bytes(CRC_OFFSET, "footer")?;
        let stored = codec::unmask_crc(d.u32("footer crc")?);
        let actual = codec::crc32c(covered);
        if stored != actual {
            return Err(DecodeError {
                offset: base,
                reason: format!(
                    "footer checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
                ),
            });
        }
        let mut d = Decoder::new(covered, base);
        let mut handle = |what: &str| -> Result<BlockHandle, DecodeError> {
            let offset = d.u64(what)?;
            let size = d.u64(what)?;
            Ok(BlockHandle { offset, size })
        };
        let filter = handle("filter handle")?;
        let properties = handle("properties handle")?;
        let index = handle("index handle")?;
        let format_version = d.u32("format version")?;
        let magic = d.u64("magic")?;
        if magic != TABLE_MAGIC {
            return Err(DecodeError {
                offset: base + MAGIC_OFFSET as u64,
                reason: format!("bad table magic {magic:#018x}, expected {TABLE_MAGIC:#018x}"),
            });
        }
        if !(OLDEST_READABLE_FORMAT_VERSION..=FORMAT_VERSION).contains(&format_version) {
            return Err(DecodeError {
                offset: base + VERSION_OFFSET as u64,
                reason: format!(
                    "unsupported table format version {format_version} (this build reads \
                     {OLDEST_READABLE_FORMAT_VERSION} to {FORMAT_VERSION})"
                ),
            });
        }
        Ok(Footer {
            filter,
            properties,
            index,
            format_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Footer {
        Footer {
            filter: BlockHandle {
                offset: 100,
                size: 20,
            },
            properties: BlockHandle {
                offset: 125,
                size: 90,
            },
            index: BlockHandle {
                offset: 220,
                size: 30,
            },
            format_version: FORMAT_VERSION,
        }
    }

    #[test]
    fn footer_round_trips() {
        let f = sample();
        let bytes = f.encode();
        assert_eq!(Footer::decode(&bytes, 255).unwrap(), f);
        assert_eq!(&bytes[MAGIC_OFFSET..CRC_OFFSET], b"tidemSST");
    }

    #[test]
    fn any_flipped_footer_bit_is_rejected() {
        let bytes = sample().encode();
        for bit in 0..FOOTER_LEN * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            let e = Footer::decode(&b, 1000).unwrap_err();
            assert!(e.offset >= 1000, "{e}");
        }
    }

    #[test]
    fn short_footer_is_rejected() {
        let bytes = sample().encode();
        assert!(Footer::decode(&bytes[1..], 0).is_err());
    }

    #[test]
    fn varint_handle_round_trips() {
        let h = BlockHandle {
            offset: u64::MAX,
            size: 4096,
        };
        let mut buf = Vec::new();
        h.encode_varint_to(&mut buf);
        assert!(buf.len() <= BlockHandle::MAX_VARINT_LEN);
        let mut d = Decoder::new(&buf, 0);
        assert_eq!(BlockHandle::decode_varint(&mut d).unwrap(), h);
        assert!(d.is_empty());
        assert_eq!(h.end_with_trailer(), None);
    }
}
