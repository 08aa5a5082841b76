//! Key groups: how keyed state is partitioned, so a checkpoint taken with one parallelism
//! can be restored with another (Flink's model).
//!
//! A key's *key group* is a stable hash of its serialized bytes modulo the *max
//! parallelism* (the number of key groups, fixed for the life of a job's state). Subtask
//! `i` of an operator with parallelism `p` owns one contiguous range of key groups, and a
//! rescale moves whole key groups between subtasks. The hash is part of the on-disk format
//! (a restored key must land in the key group it was written under): see
//! `format-spec/state-layout.md`; the tests below pin its values.

use crate::checkpoint::KeyGroupRange;
use crate::error::{Error, Result};

/// Flink's default max parallelism (`pipeline.max-parallelism` when unset): 128 key groups.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// The largest max parallelism Flink accepts (`2^15`).
pub const UPPER_BOUND_MAX_PARALLELISM: u32 = 1 << 15;

/// The number of key groups of an operator's keyed state: `1..=32768`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxParallelism(u32);

impl MaxParallelism {
    /// `n` key groups; an error outside `1..=32768`.
    pub fn new(n: u32) -> Result<MaxParallelism> {
        if n == 0 || n > UPPER_BOUND_MAX_PARALLELISM {
            return Err(Error::InvalidArgument(format!(
                "max parallelism {n} is outside 1..={UPPER_BOUND_MAX_PARALLELISM}"
            )));
        }
        Ok(MaxParallelism(n))
    }

    /// The number of key groups.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Every key group: `0..=max_parallelism - 1`.
    pub fn full_range(self) -> KeyGroupRange {
        // At least one key group: `MaxParallelism::new` refuses 0.
        KeyGroupRange::up_to(self.0 - 1)
    }

    /// The key group of a key, from its serialized bytes.
    pub fn key_group_of(self, key: &[u8]) -> u32 {
        murmur3_32(key, 0) % self.0
    }

    /// Checks that `parallelism` subtasks can share the key groups (each needs one).
    pub fn check_parallelism(self, parallelism: u32) -> Result<()> {
        if parallelism == 0 || parallelism > self.0 {
            return Err(Error::InvalidArgument(format!(
                "parallelism {parallelism} is outside 1..={} (the max parallelism: every \
                 subtask needs at least one key group)",
                self.0
            )));
        }
        Ok(())
    }

    /// The key groups subtask `index` of `parallelism` owns (Flink's
    /// `computeKeyGroupRangeForOperatorIndex`): from `ceil(index * max / parallelism)` to
    /// `ceil((index + 1) * max / parallelism) - 1`.
    pub fn range_for_subtask(self, parallelism: u32, index: u32) -> Result<KeyGroupRange> {
        self.check_parallelism(parallelism)?;
        if index >= parallelism {
            return Err(Error::InvalidArgument(format!(
                "subtask index {index} is not below the parallelism {parallelism}"
            )));
        }
        let (max, p, i) = (u64::from(self.0), u64::from(parallelism), u64::from(index));
        let start = (i * max).div_ceil(p);
        let end = ((i + 1) * max).div_ceil(p) - 1;
        // Both fit: they are below max <= 2^15.
        KeyGroupRange::new(start as u32, end as u32)
    }

    /// The subtask of `parallelism` that owns `key_group` (Flink's
    /// `computeOperatorIndexForKeyGroup`: `key_group * parallelism / max`).
    pub fn subtask_for_key_group(self, parallelism: u32, key_group: u32) -> Result<u32> {
        self.check_parallelism(parallelism)?;
        if key_group >= self.0 {
            return Err(Error::InvalidArgument(format!(
                "key group {key_group} is not below the max parallelism {}",
                self.0
            )));
        }
        Ok((u64::from(key_group) * u64::from(parallelism) / u64::from(self.0)) as u32)
    }
}

impl Default for MaxParallelism {
    fn default() -> Self {
        MaxParallelism(DEFAULT_MAX_PARALLELISM)
    }
}

/// MurmurHash3, x86 32-bit variant (Austin Appleby's public-domain reference), of `data`
/// with `seed`: the key-group hash.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    let mut k = 0u32;
    for (i, &byte) in tail.iter().enumerate() {
        k |= u32::from(byte) << (8 * i);
    }
    if !tail.is_empty() {
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    // The length is mixed in modulo 2^32, as the reference does.
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        // Published test vectors of MurmurHash3_x86_32.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(b"a", 0x9747_b28c), 0x7fa0_9ea6);
        assert_eq!(murmur3_32(b"abc", 0x9747_b28c), 0xc84a_62dd);
        assert_eq!(murmur3_32(b"abcd", 0x9747_b28c), 0xf047_8627);
        assert_eq!(murmur3_32(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    /// The key groups of format-spec/state-layout.md's worked example: they are an on-disk
    /// format and must never change.
    #[test]
    fn key_groups_are_pinned() {
        let m = MaxParallelism::default();
        // Checked against an independent implementation (Python's mmh3).
        assert_eq!(murmur3_32(b"alice", 0), 0x4c51_8edd);
        assert_eq!(m.key_group_of(b"alice"), 93);
        assert_eq!(murmur3_32(b"bob", 0), 0xa85b_7bf2);
        assert_eq!(m.key_group_of(b"bob"), 114);
        assert_eq!(m.key_group_of(b""), 0);
        let big = MaxParallelism::new(32768).unwrap();
        assert_eq!(big.key_group_of(b"alice"), 3805);
        assert_eq!(big.key_group_of(b"bob"), 31730);
    }

    #[test]
    fn subtask_ranges_partition_the_key_groups_as_flink_does() {
        for max in [1u32, 2, 3, 7, 128, 129, 1000, 32768] {
            let m = MaxParallelism::new(max).unwrap();
            for p in [1u32, 2, 3, 4, 5, 7, 16, 127, 128, 1000, 32768] {
                if p > max {
                    assert!(m.range_for_subtask(p, 0).is_err());
                    continue;
                }
                let mut next = 0;
                for i in 0..p {
                    let r = m.range_for_subtask(p, i).unwrap();
                    assert_eq!(r.start(), next, "max {max} p {p} i {i}");
                    assert!(r.end() >= r.start());
                    // Sizes differ by at most one.
                    let len = r.len() as u32;
                    assert!(len == max / p || len == max.div_ceil(p));
                    if p <= 128 {
                        for kg in r {
                            assert_eq!(m.subtask_for_key_group(p, kg).unwrap(), i);
                        }
                    }
                    next = r.end() + 1;
                }
                assert_eq!(next, max, "max {max} p {p}: every key group is owned");
            }
        }
        // Flink's ranges for 128 key groups over 3 subtasks.
        let m = MaxParallelism::default();
        let ranges: Vec<_> = (0..3)
            .map(|i| {
                let r = m.range_for_subtask(3, i).unwrap();
                (r.start(), r.end())
            })
            .collect();
        assert_eq!(ranges, vec![(0, 42), (43, 85), (86, 127)]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(MaxParallelism::new(0).is_err());
        assert!(MaxParallelism::new(32769).is_err());
        let m = MaxParallelism::default();
        assert!(m.range_for_subtask(0, 0).is_err());
        assert!(m.range_for_subtask(2, 2).is_err());
        assert!(m.subtask_for_key_group(2, 128).is_err());
        assert_eq!(m.full_range(), KeyGroupRange::new(0, 127).unwrap());
    }
}
