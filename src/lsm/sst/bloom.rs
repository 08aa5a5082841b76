//! The table's bloom filter over user keys, and the 64-bit hash it is built on.
//!
//! One filter covers a whole table. A point lookup asks it first and skips the table when
//! the answer is "definitely absent". The hash and both layouts are specified bit for bit
//! in `format-spec/sst.md`, because they are part of the file format: changing either
//! would make every existing filter answer wrongly.
//!
//! Tables of format version 2 (written today) keep every key's probes within one 64-byte
//! line, so a lookup touches one cache line of the filter, not one per probe; version 1
//! tables spread the probes over the whole filter and are still read:
//!
//! ```text
//! filter block := bits[num_bits / 8] | num_probes u8
//! version 1 (Spread):  probe i: bit (h + i * rotl(h, 32)) mod num_bits, wrapping u64
//! version 2 (Blocked): num_bits = 512 * lines; line = ((h >> 32) * lines) >> 32;
//!                      g = low 32 bits of h; probe i: bit line * 512 + (g >> 23), then
//!                      g = g * 0x9E3779B9 (wrapping u32)
//! bit b lives in byte b / 8, at mask 1 << (b % 8)
//! ```

use crate::lsm::anon::ByteBuf;

/// Multipliers and offset of [`hash64`] (the xxHash64 primes 1, 2 and 5).
const P1: u64 = 0x9E37_79B9_7F4A_7C15;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;

/// Fewest bits a filter has, so that tiny tables still get a useful filter.
const MIN_FILTER_BITS: u64 = 64;

/// Most probes a filter may ask for; more is never useful and a larger byte is corruption.
pub const MAX_PROBES: u8 = 30;

#[inline]
fn mix_word(h: u64, w: u64) -> u64 {
    let k = w.wrapping_mul(P2).rotate_left(31).wrapping_mul(P1);
    (h ^ k).rotate_left(27).wrapping_mul(P1).wrapping_add(P3)
}

/// The table format's 64-bit key hash: 8-byte little-endian words mixed in turn (a short
/// last word padded with zero bytes), the length mixed in first so that the padding is
/// unambiguous, and murmur3's 64-bit finalizer at the end.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h = P3 ^ (data.len() as u64).wrapping_mul(P1);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix_word(h, u64::from_le_bytes(w));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w.iter_mut().zip(tail).for_each(|(d, s)| *d = *s);
        h = mix_word(h, u64::from_le_bytes(w));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The probe count for a bits-per-key setting: `round(bits_per_key * ln 2)`, within
/// `1..=MAX_PROBES`.
pub fn num_probes(bits_per_key: u32) -> u8 {
    let k = (u64::from(bits_per_key) * 69 + 50) / 100;
    k.clamp(1, u64::from(MAX_PROBES)) as u8
}

/// Bytes of one line of a [`FilterLayout::Blocked`] filter: a cache line.
pub const LINE_BYTES: usize = 64;

/// Bits of one line of a [`FilterLayout::Blocked`] filter.
const LINE_BITS: u64 = LINE_BYTES as u64 * 8;

/// Multiplier that mixes a blocked filter's probe state before the next probe (the 32-bit
/// golden ratio). A mixing step, not a guarantee: two probes of a key may share a bit
/// (always, for the one key in 2^29 whose low 29 bits are zero), which costs a little
/// false-positive rate and never a false negative.
const LINE_STEP: u32 = 0x9E37_79B9;

/// Where a filter puts a key's probes: fixed by the table's format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterLayout {
    /// Format version 1: probes anywhere in the filter (double hashing over all bits).
    Spread,
    /// Format version 2: all of a key's probes in one 64-byte line chosen by the hash.
    Blocked,
}

impl FilterLayout {
    /// The layout of a table of format `version`, or `None` for a version without a filter
    /// layout of its own.
    pub fn of_version(version: u32) -> Option<FilterLayout> {
        match version {
            1 => Some(FilterLayout::Spread),
            2 => Some(FilterLayout::Blocked),
            _ => None,
        }
    }
}

/// Asks the processor to bring the cache line holding `p` closer, without waiting.
#[inline]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and never faults,
    // whatever the address; `p` points into a live filter anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Iterates the bit positions a key's hash probes in a version 1 filter of `num_bits`.
fn spread_probes(h: u64, num_probes: u8, num_bits: u64) -> impl Iterator<Item = u64> {
    let delta = h.rotate_left(32);
    (0..u64::from(num_probes)).map(move |i| h.wrapping_add(i.wrapping_mul(delta)) % num_bits)
}

/// The line a key's hash selects in a version 2 filter of `lines` lines (< 2^32): the
/// hash's upper half scaled to `0..lines`, with no division.
#[inline]
fn blocked_line(h: u64, lines: u64) -> u64 {
    ((h >> 32) * lines) >> 32
}

/// Iterates the bit positions, within its line (`0..512`), a key's hash probes in a
/// version 2 filter.
#[inline]
fn blocked_probes(h: u64, num_probes: u8) -> impl Iterator<Item = u32> {
    let mut g = h as u32;
    (0..num_probes).map(move |_| {
        let bit = g >> 23;
        g = g.wrapping_mul(LINE_STEP);
        bit
    })
}

/// Hashes per chunk of a [`BloomBuilder`]: 64 KiB, below the size from which the C
/// allocator maps and unmaps memory of its own.
const HASH_CHUNK: usize = 8192;

/// Collects the hashes of a table's user keys and builds its filter block.
///
/// The hashes (8 bytes a key: about 9 MiB for a 64 MiB table) are kept in chunks of
/// `HASH_CHUNK`, each allocated at its full size once, not in one vector that doubles: a
/// doubling vector holds up to twice what it needs, and freeing its multi-MiB buffers
/// raises glibc's mmap threshold, after which such buffers come from heap arenas that
/// keep their memory (measured: 28 MiB more peak RSS while loading 8M keys).
#[derive(Debug)]
pub(crate) struct BloomBuilder {
    bits_per_key: u32,
    layout: FilterLayout,
    chunks: Vec<Vec<u64>>,
}

impl BloomBuilder {
    /// A builder for `bits_per_key` (must be > 0; 0 means the table has no filter) and the
    /// layout of the table's format version.
    pub fn new(bits_per_key: u32, layout: FilterLayout) -> Self {
        BloomBuilder {
            bits_per_key: bits_per_key.max(1),
            layout,
            chunks: Vec::new(),
        }
    }

    /// Records a user key. Adding a key twice only costs space.
    pub fn add_key(&mut self, user_key: &[u8]) {
        let h = hash64(user_key);
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < HASH_CHUNK => chunk.push(h),
            _ => {
                let mut chunk = Vec::with_capacity(HASH_CHUNK);
                chunk.push(h);
                self.chunks.push(chunk);
            }
        }
    }

    /// Keys recorded so far.
    pub fn num_keys(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// The filter block's bytes.
    pub fn finish(&self) -> ByteBuf {
        let want = (self.num_keys() as u64).saturating_mul(u64::from(self.bits_per_key));
        let k = num_probes(self.bits_per_key);
        let num_bits = match self.layout {
            FilterLayout::Spread => want.max(MIN_FILTER_BITS).div_ceil(8) * 8,
            FilterLayout::Blocked => want.div_ceil(LINE_BITS).max(1) * LINE_BITS,
        };
        let num_bytes = usize::try_from(num_bits / 8).expect("filter size fits in memory");
        let mut out = ByteBuf::zeroed(num_bytes + 1);
        let hashes = self.chunks.iter().flatten().copied();
        match self.layout {
            FilterLayout::Spread => {
                for h in hashes {
                    for bit in spread_probes(h, k, num_bits) {
                        // bit < num_bits, so bit / 8 < num_bytes.
                        out[(bit / 8) as usize] |= 1 << (bit % 8);
                    }
                }
            }
            FilterLayout::Blocked => {
                let lines = num_bits / LINE_BITS;
                for h in hashes {
                    // line < lines, so the line's bytes lie within num_bytes.
                    let base = (blocked_line(h, lines) * LINE_BYTES as u64) as usize;
                    for bit in blocked_probes(h, k) {
                        out[base + (bit / 8) as usize] |= 1 << (bit % 8);
                    }
                }
            }
        }
        out[num_bytes] = k;
        out
    }
}

/// A filter block read from disk, validated.
#[derive(Debug, Clone, Copy)]
pub struct BloomFilter<'a> {
    bits: &'a [u8],
    num_probes: u8,
    layout: FilterLayout,
}

impl<'a> BloomFilter<'a> {
    /// Validates a filter block of `layout`: a probe count in `1..=MAX_PROBES` and at
    /// least one byte of bits (version 1) or a whole number of 64-byte lines, at least one
    /// and fewer than 2^32 (version 2).
    #[deny(clippy::indexing_slicing)]
    pub fn parse(block: &'a [u8], layout: FilterLayout) -> Result<Self, String> {
        let (&k, bits) = block
            .split_last()
            .ok_or_else(|| "filter block is empty".to_string())?;
        if bits.is_empty() {
            return Err("filter block has no bits".into());
        }
        if layout == FilterLayout::Blocked
            && (bits.len() % LINE_BYTES != 0
                || (bits.len() / LINE_BYTES) as u64 > u64::from(u32::MAX))
        {
            return Err(format!(
                "filter has {} bytes of bits, not a whole number of {LINE_BYTES}-byte lines \
                 (at most 2^32 - 1)",
                bits.len()
            ));
        }
        if k == 0 || k > MAX_PROBES {
            return Err(format!(
                "filter probe count {k} is outside 1..={MAX_PROBES}"
            ));
        }
        Ok(BloomFilter {
            bits,
            num_probes: k,
            layout,
        })
    }

    /// False when `user_key` is certainly not in the table.
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        self.may_contain_hash(hash64(user_key))
    }

    /// Starts loading the cache line that [`BloomFilter::may_contain_hash`] will read for
    /// `h` (version 2 filters; nothing for version 1, whose probes are spread), without
    /// waiting for it: a lookup that will ask several tables' filters issues all their
    /// loads at once instead of one after another.
    #[inline]
    pub fn prefetch_hash(&self, h: u64) {
        if self.layout != FilterLayout::Blocked {
            return;
        }
        let lines = (self.bits.len() / LINE_BYTES) as u64;
        let start = (blocked_line(h, lines) * LINE_BYTES as u64) as usize;
        if let Some(line) = self.bits.get(start..start + LINE_BYTES) {
            // A filter in memory that is not 64-byte aligned (a small one, on the heap)
            // has lines that span two cache lines: ask for both ends.
            prefetch(line.as_ptr());
            if let Some(last) = line.last() {
                prefetch(last);
            }
        }
    }

    /// [`BloomFilter::may_contain`] for a key whose [`hash64`] is `h` (a lookup through
    /// several tables hashes its key once).
    #[deny(clippy::indexing_slicing)]
    #[inline]
    pub fn may_contain_hash(&self, h: u64) -> bool {
        let set = |byte: Option<&u8>, bit: u64| byte.is_some_and(|b| b & (1 << (bit % 8)) != 0);
        match self.layout {
            FilterLayout::Spread => {
                let num_bits = self.bits.len() as u64 * 8;
                spread_probes(h, self.num_probes, num_bits)
                    .all(|bit| set(self.bits.get((bit / 8) as usize), bit))
            }
            FilterLayout::Blocked => {
                let lines = (self.bits.len() / LINE_BYTES) as u64;
                let start = (blocked_line(h, lines) * LINE_BYTES as u64) as usize;
                let Some(line) = self.bits.get(start..start + LINE_BYTES) else {
                    return true; // cannot happen for a parsed filter; "maybe" is safe
                };
                blocked_probes(h, self.num_probes)
                    .all(|bit| set(line.get((bit / 8) as usize), u64::from(bit)))
            }
        }
    }
}

/// A table's filter block as the table keeps it while open: its bytes, parsed once at
/// open, so that a lookup reads the filter without checking the block again.
#[derive(Debug)]
pub(crate) struct TableFilter {
    /// The filter block (bits, then the probe count).
    block: ByteBuf,
    num_probes: u8,
    layout: FilterLayout,
}

impl TableFilter {
    /// Validates a filter block of `layout` (as [`BloomFilter::parse`]) and keeps a copy.
    pub fn parse(block: &[u8], layout: FilterLayout) -> Result<TableFilter, String> {
        let num_probes = BloomFilter::parse(block, layout)?.num_probes;
        Ok(TableFilter {
            block: ByteBuf::from(block),
            num_probes,
            layout,
        })
    }

    /// The filter, to ask.
    pub fn view(&self) -> BloomFilter<'_> {
        let bits = self.block.len().saturating_sub(1);
        BloomFilter {
            bits: self.block.get(..bits).unwrap_or_default(),
            num_probes: self.num_probes,
            layout: self.layout,
        }
    }

    /// Bytes of memory the filter holds.
    pub fn memory_bytes(&self) -> usize {
        self.block.len()
    }

    /// Whether the filter lives in a mapping of its own (see [`ByteBuf`]).
    #[cfg(test)]
    pub fn is_mapped(&self) -> bool {
        self.block.is_mapped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_the_values_in_the_format_spec() {
        // Part of the file format: format-spec/sst.md lists the same values.
        let known: [(&[u8], u64); 5] = [
            (b"", 0xf490_368a_ba8b_feac),
            (b"a", 0x80fa_b60d_a747_dbb5),
            (b"abcdefgh", 0x6508_08f0_a708_5bcf),
            (b"abcdefghi", 0x2abf_0dca_eadd_5153),
            (b"tidemark", 0xc4ef_4e41_80c9_308e),
        ];
        for (k, h) in known {
            assert_eq!(hash64(k), h, "{}", k.escape_ascii());
        }
        assert_ne!(hash64(b"a"), hash64(b"a\0"));
    }

    const LAYOUTS: [FilterLayout; 2] = [FilterLayout::Spread, FilterLayout::Blocked];

    /// The filter the format defines, computed from the spec's words alone: every key's
    /// probes set, then the probe count.
    fn filter_by_the_spec(keys: &[Vec<u8>], bits_per_key: u64, layout: FilterLayout) -> Vec<u8> {
        let k = num_probes(bits_per_key as u32);
        let want_bits = keys.len() as u64 * bits_per_key;
        let num_bits = match layout {
            FilterLayout::Spread => want_bits.max(64).div_ceil(8) * 8,
            FilterLayout::Blocked => want_bits.div_ceil(512).max(1) * 512,
        };
        let mut out = vec![0u8; (num_bits / 8) as usize + 1];
        for key in keys {
            let h = hash64(key);
            let bits: Vec<u64> = match layout {
                FilterLayout::Spread => (0..u64::from(k))
                    .map(|i| h.wrapping_add(i.wrapping_mul(h.rotate_left(32))) % num_bits)
                    .collect(),
                FilterLayout::Blocked => {
                    let line = ((h >> 32) * (num_bits / 512)) >> 32;
                    let mut g = h as u32;
                    (0..k)
                        .map(|_| {
                            let bit = line * 512 + u64::from(g >> 23);
                            g = g.wrapping_mul(0x9E37_79B9);
                            bit
                        })
                        .collect()
                }
            };
            for bit in bits {
                out[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        *out.last_mut().unwrap() = k;
        out
    }

    /// Keys spanning several hash chunks give the filter of the format's definition, in
    /// both layouts.
    #[test]
    fn a_filter_over_many_chunks_is_the_one_the_format_defines() {
        let n = 3 * HASH_CHUNK + 5;
        let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("key{i:09}").into_bytes()).collect();
        for layout in LAYOUTS {
            let mut b = BloomBuilder::new(10, layout);
            for key in &keys {
                b.add_key(key);
            }
            assert_eq!(b.num_keys(), n);
            assert_eq!(b.chunks.len(), 4);
            let got = b.finish();
            assert_eq!(
                &got[..],
                &filter_by_the_spec(&keys, 10, layout)[..],
                "{layout:?}"
            );
            let f = BloomFilter::parse(&got, layout).unwrap();
            assert!(keys.iter().all(|k| f.may_contain(k)), "{layout:?}");
            assert!(
                keys.iter().all(|k| f.may_contain_hash(hash64(k))),
                "{layout:?}"
            );
        }
    }

    /// A blocked filter has a whole number of 64-byte lines, at least one; each key sets
    /// at most `k` bits, all in the line its hash selects (filter_by_the_spec computes
    /// them, and the builder's output equals it).
    #[test]
    fn a_blocked_filter_is_whole_lines_and_each_key_touches_one() {
        let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k{i}").into_bytes()).collect();
        let build = |keys: &[Vec<u8>]| {
            let mut b = BloomBuilder::new(10, FilterLayout::Blocked);
            keys.iter().for_each(|k| b.add_key(k));
            b.finish()
        };
        assert_eq!(build(&keys[..1]).len(), 64 + 1);
        assert_eq!(build(&keys[..51]).len(), 64 + 1, "510 bits fit one line");
        assert_eq!(build(&keys[..52]).len(), 128 + 1, "520 bits need two");
        let all = build(&keys);
        assert_eq!(all.len(), 4 * 64 + 1);
        let f = BloomFilter::parse(&all, FilterLayout::Blocked).unwrap();
        for key in &keys {
            let h = hash64(key);
            let line = blocked_line(h, 4) as usize;
            let bits: Vec<u32> = blocked_probes(h, num_probes(10)).collect();
            assert!(bits.iter().all(|&b| b < 512));
            let line_bytes = &all[line * 64..(line + 1) * 64];
            assert!(bits
                .iter()
                .all(|&b| line_bytes[(b / 8) as usize] & (1 << (b % 8)) != 0));
            assert!(f.may_contain(key));
        }
    }

    #[test]
    fn no_false_negatives_and_rate_near_configured() {
        for layout in LAYOUTS {
            let mut b = BloomBuilder::new(10, layout);
            for i in 0..10_000u32 {
                b.add_key(format!("user-key-{i}").as_bytes());
            }
            let block = b.finish();
            let f = BloomFilter::parse(&block, layout).unwrap();
            for i in 0..10_000u32 {
                assert!(f.may_contain(format!("user-key-{i}").as_bytes()));
            }
            let fp = (0..100_000u32)
                .filter(|i| f.may_contain(format!("other-key-{i}").as_bytes()))
                .count();
            // 10 bits per key with 7 probes: about 0.8% spread, about 1% blocked.
            assert!(
                (300..1500).contains(&fp),
                "{layout:?}: false positives {fp} / 100000"
            );
        }
    }

    #[test]
    fn fewer_bits_give_more_false_positives() {
        for layout in LAYOUTS {
            let rate = |bpk| {
                let mut b = BloomBuilder::new(bpk, layout);
                for i in 0..5000u32 {
                    b.add_key(&i.to_le_bytes());
                }
                let block = b.finish();
                let f = BloomFilter::parse(&block, layout).unwrap();
                (5000..15000u32)
                    .filter(|i| f.may_contain(&i.to_le_bytes()))
                    .count()
            };
            let (r4, r16) = (rate(4), rate(16));
            assert!(r4 > r16, "{layout:?}: {r4} vs {r16}");
            assert!(r4 < 2000, "{layout:?}: {r4}"); // ~14.6% expected at 4 bits per key
        }
    }

    #[test]
    fn malformed_filter_blocks_are_rejected() {
        for layout in LAYOUTS {
            assert!(BloomFilter::parse(&[], layout).is_err());
            assert!(BloomFilter::parse(&[6], layout).is_err());
            let mut line = vec![0xff; 65];
            line[64] = 0;
            assert!(BloomFilter::parse(&line, layout).is_err());
            line[64] = MAX_PROBES + 1;
            assert!(BloomFilter::parse(&line, layout).is_err());
            line[64] = 1;
            assert!(BloomFilter::parse(&line, layout).is_ok());
        }
        assert!(BloomFilter::parse(&[0xff, 1], FilterLayout::Spread).is_ok());
        for bytes in [1, 63, 65, 127] {
            let mut block = vec![0xff; bytes + 1];
            block[bytes] = 7;
            let e = BloomFilter::parse(&block, FilterLayout::Blocked).unwrap_err();
            assert!(e.contains("64-byte lines"), "{e}");
        }
    }

    #[test]
    fn layouts_follow_the_format_version() {
        assert_eq!(FilterLayout::of_version(1), Some(FilterLayout::Spread));
        assert_eq!(FilterLayout::of_version(2), Some(FilterLayout::Blocked));
        assert_eq!(FilterLayout::of_version(0), None);
        assert_eq!(FilterLayout::of_version(3), None);
    }
}
