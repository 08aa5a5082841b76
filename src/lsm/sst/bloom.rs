//! The table's bloom filter over user keys, and the 64-bit hash it is built on.
//!
//! One filter covers a whole table. A point lookup asks it first and skips the table when
//! the answer is "definitely absent". The hash is specified bit for bit in
//! `format-spec/sst.md`, because it is part of the file format: changing it would make
//! every existing filter answer wrongly.
//!
//! ```text
//! filter block := bits[num_bits / 8] | num_probes u8
//! probe i (0 <= i < num_probes): bit (h + i * rotl(h, 32)) mod num_bits, wrapping u64
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

/// Iterates the bit positions a key's hash probes.
fn probes(h: u64, num_probes: u8, num_bits: u64) -> impl Iterator<Item = u64> {
    let delta = h.rotate_left(32);
    (0..u64::from(num_probes)).map(move |i| h.wrapping_add(i.wrapping_mul(delta)) % num_bits)
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
    chunks: Vec<Vec<u64>>,
}

impl BloomBuilder {
    /// A builder for `bits_per_key` (must be > 0; 0 means the table has no filter).
    pub fn new(bits_per_key: u32) -> Self {
        BloomBuilder {
            bits_per_key: bits_per_key.max(1),
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
        let num_bits = want.max(MIN_FILTER_BITS).div_ceil(8) * 8;
        let k = num_probes(self.bits_per_key);
        let num_bytes = usize::try_from(num_bits / 8).expect("filter size fits in memory");
        let mut out = ByteBuf::zeroed(num_bytes + 1);
        for &h in self.chunks.iter().flatten() {
            for bit in probes(h, k, num_bits) {
                // bit < num_bits, so bit / 8 < num_bytes.
                out[(bit / 8) as usize] |= 1 << (bit % 8);
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
}

impl<'a> BloomFilter<'a> {
    /// Validates a filter block: at least one byte of bits and a probe count in
    /// `1..=MAX_PROBES`.
    #[deny(clippy::indexing_slicing)]
    pub fn parse(block: &'a [u8]) -> Result<Self, String> {
        let (&k, bits) = block
            .split_last()
            .ok_or_else(|| "filter block is empty".to_string())?;
        if bits.is_empty() {
            return Err("filter block has no bits".into());
        }
        if k == 0 || k > MAX_PROBES {
            return Err(format!(
                "filter probe count {k} is outside 1..={MAX_PROBES}"
            ));
        }
        Ok(BloomFilter {
            bits,
            num_probes: k,
        })
    }

    /// False when `user_key` is certainly not in the table.
    #[deny(clippy::indexing_slicing)]
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        let num_bits = self.bits.len() as u64 * 8;
        probes(hash64(user_key), self.num_probes, num_bits).all(|bit| {
            self.bits
                .get((bit / 8) as usize)
                .is_some_and(|b| b & (1 << (bit % 8)) != 0)
        })
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

    /// Keys spanning several hash chunks give the filter of the format's definition: the
    /// bits of every key's probes over `keys * bits_per_key` bits, then the probe count.
    #[test]
    fn a_filter_over_many_chunks_is_the_one_the_format_defines() {
        let n = 3 * HASH_CHUNK + 5;
        let key = |i: usize| format!("key{i:09}").into_bytes();
        let mut b = BloomBuilder::new(10);
        for i in 0..n {
            b.add_key(&key(i));
        }
        assert_eq!(b.num_keys(), n);
        assert_eq!(b.chunks.len(), 4);
        let num_bits = (n as u64 * 10).div_ceil(8) * 8;
        let mut want = vec![0u8; (num_bits / 8) as usize + 1];
        for i in 0..n {
            for bit in probes(hash64(&key(i)), num_probes(10), num_bits) {
                want[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        *want.last_mut().unwrap() = num_probes(10);
        let got = b.finish();
        assert_eq!(&got[..], &want[..]);
        let f = BloomFilter::parse(&got).unwrap();
        assert!((0..n).all(|i| f.may_contain(&key(i))));
    }

    #[test]
    fn no_false_negatives_and_rate_near_configured() {
        let mut b = BloomBuilder::new(10);
        for i in 0..10_000u32 {
            b.add_key(format!("user-key-{i}").as_bytes());
        }
        let block = b.finish();
        let f = BloomFilter::parse(&block).unwrap();
        for i in 0..10_000u32 {
            assert!(f.may_contain(format!("user-key-{i}").as_bytes()));
        }
        let fp = (0..10_000u32)
            .filter(|i| f.may_contain(format!("other-key-{i}").as_bytes()))
            .count();
        // 10 bits per key with 7 probes gives about 0.8%.
        assert!(fp < 200, "false positives {fp} / 10000");
    }

    #[test]
    fn fewer_bits_give_more_false_positives() {
        let rate = |bpk| {
            let mut b = BloomBuilder::new(bpk);
            for i in 0..5000u32 {
                b.add_key(&i.to_le_bytes());
            }
            let block = b.finish();
            let f = BloomFilter::parse(&block).unwrap();
            (5000..15000u32)
                .filter(|i| f.may_contain(&i.to_le_bytes()))
                .count()
        };
        let (r4, r16) = (rate(4), rate(16));
        assert!(r4 > r16, "{r4} vs {r16}");
        assert!(r4 < 2000, "{r4}"); // ~14.6% expected at 4 bits per key
    }

    #[test]
    fn malformed_filter_blocks_are_rejected() {
        assert!(BloomFilter::parse(&[]).is_err());
        assert!(BloomFilter::parse(&[6]).is_err());
        assert!(BloomFilter::parse(&[0xff, 0]).is_err());
        assert!(BloomFilter::parse(&[0xff, MAX_PROBES + 1]).is_err());
        assert!(BloomFilter::parse(&[0xff, 1]).is_ok());
    }
}
